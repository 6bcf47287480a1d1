//! Sampler tests with a fake GPU (CI has none) and the real host probes.

use std::time::Duration;

use super::gpu::Fake;
use super::status::GpuSample;
use super::*;
use crate::config::Config;
use crate::points::DbOptions;

fn db() -> PointDb {
    let c = Config::embedded().expect("embedded");
    PointDb::new(c.points, c.site, DbOptions::default())
}

fn state(db: &PointDb, id: &str) -> crate::points::PointState {
    db.read(db.lookup(id).expect("point")).expect("state")
}

#[test]
fn gpu_present_path_feeds_points() {
    let db = db();
    let fake = Fake::new(vec![Ok(GpuSample {
        name: "Fake T4".into(),
        util_pct: 42.0,
        mem_used_pct: 10.0,
        temp_c: Some(55.0),
        encoder_util_pct: Some(12.0),
        encoder_sessions: Some(2),
        encoder_latency_ms: Some(7.5),
    })]);
    let mut s = Sampler::new(
        db.clone(),
        TelemetryConfig::default(),
        Box::new(fake),
        ".".into(),
    );
    s.sample_gpu();
    s.derive_statuses();
    assert_eq!(state(&db, "gpu_usage").value, Some(Value::Number(42.0)));
    assert_eq!(state(&db, "gpu_usage").quality, Quality::Ok);
    assert_eq!(
        state(&db, "encoding_latency").value,
        Some(Value::Number(7.5))
    );
    assert_eq!(state(&db, "gpu_status").value, Some(Value::Enum(1)));
}

#[test]
fn missing_gpu_is_unavailable_and_fault_only_when_required() {
    // No GPU: N/A (unavailable) unless one is required (FAULT).
    for (mode, want) in [
        (GpuMode::Auto, None),
        (GpuMode::Required, Some(Value::Enum(3))),
        (GpuMode::None, None),
    ] {
        let db = db();
        let cfg = TelemetryConfig {
            gpu: mode,
            ..TelemetryConfig::default()
        };
        let fake = Fake::new(vec![Err("NVML unavailable: LibloadingError".into())]);
        let mut s = Sampler::new(db.clone(), cfg, Box::new(fake), ".".into());
        s.sample_gpu();
        s.derive_statuses();
        let g = state(&db, "gpu_usage");
        assert_eq!(g.value, None);
        assert_eq!(g.quality, Quality::Unavailable);
        assert!(g.reason.is_some());
        let st = state(&db, "gpu_status");
        assert_eq!(st.value, want, "{mode:?}");
        assert_eq!(
            st.quality == Quality::Unavailable,
            want.is_none(),
            "{mode:?}"
        );
        // A required GPU that is missing makes the whole server FAULT.
        let server = state(&db, "server_status");
        assert_eq!(
            server.value == Some(Value::Enum(3)),
            mode == GpuMode::Required,
            "{mode:?}"
        );
    }
}

#[test]
fn host_probes_give_real_values() {
    let db = db();
    let mut s = Sampler::new(
        db.clone(),
        TelemetryConfig::default(),
        Box::new(gpu::Disabled),
        ".".into(),
    );
    s.sample_mem();
    s.sample_uptime();
    std::thread::sleep(Duration::from_millis(250));
    s.sample_cpu();
    s.sample_disk();
    s.derive_statuses();
    let mem = state(&db, "memory_usage");
    assert_eq!(mem.quality, Quality::Ok);
    let m = mem.value.expect("memory").as_f64();
    assert!(m > 0.0 && m < 100.0, "{m}");
    let cpu = state(&db, "cpu_usage").value.expect("cpu").as_f64();
    assert!((0.0..=100.0).contains(&cpu));
    let up = state(&db, "uptime").value.expect("uptime").as_f64();
    assert!((0.0..0.1).contains(&up), "{up}");
    assert!(state(&db, "server_status").value.is_some());
}

#[test]
fn config_errors_name_keys() {
    for (text, key) in [
        ("gpu = \"sometimes\"\n", "telemetry.gpu"),
        ("cpu_warn = \"high\"\n", "telemetry.cpu_warn"),
        ("cpu_warn = 300\n", "telemetry.cpu_warn"),
        ("bogus = 1\n", "telemetry.bogus"),
        (
            "[periods]\ncpu_usage = \"1ms\"\n",
            "telemetry.periods.cpu_usage",
        ),
    ] {
        let e = crate::config::section_from_str::<TelemetryConfig>("telemetry", text)
            .expect_err("invalid");
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
    let c = crate::config::section_from_str::<TelemetryConfig>(
        "telemetry",
        "gpu = \"required\"\n[periods]\ncpu_usage = \"5s\"\n",
    )
    .expect("valid");
    assert_eq!(c.gpu, GpuMode::Required);
    assert_eq!(c.periods.get("cpu_usage"), Some(&Duration::from_secs(5)));
}

/// A tmpfs mounted on a temporary dir for the test's life (needs root, as
/// in CI); None (the caller skips, saying why) where mounting is refused.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn disk_usage_is_the_data_dirs_own_filesystem() {
    let Some(fs) = Tmpfs::mount("4m") else {
        eprintln!(
            "SKIPPED disk_usage_is_the_data_dirs_own_filesystem: cannot mount a tmpfs (not root?)"
        );
        return;
    };
    let data = fs.0.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    // 3 MiB of the 4 MiB tmpfs: 75 % used, whatever `/` is at.
    std::fs::write(data.join("fill"), vec![1u8; 3 << 20]).expect("fill");
    let mut s = Sampler::new(
        db(),
        TelemetryConfig::default(),
        Box::new(gpu::Disabled),
        data.clone(),
    );
    s.sample_disk();
    let pct = s.disk_pct.expect("disk usage measured");
    assert!(
        (74.0..=77.0).contains(&pct),
        "tmpfs at {pct:.1}%, expected 75%"
    );
    // Filled up: the reading follows the tmpfs, not `/`.
    let _ = std::fs::write(data.join("fill2"), vec![1u8; 2 << 20]);
    s.sample_disk();
    assert!(s.disk_pct.expect("disk") > 99.0, "{:?}", s.disk_pct);
}

//! Telemetry end to end: CPU and memory published by the running server agree with /proc on a loaded machine.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use castpoint::config::Config;
use castpoint::points::{PointDb, Quality};

use crate::util::{loopback, TestApp};

fn proc_mem_pct() -> f64 {
    let m = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let field = |k: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("meminfo field")
    };
    let total = field("MemTotal:");
    (total - field("MemAvailable:")) * 100.0 / total
}

/// (busy, total) jiffies from the aggregate cpu line of /proc/stat.
fn proc_cpu() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").expect("stat");
    let v: Vec<f64> = s
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v[3] + v.get(4).copied().unwrap_or(0.0);
    let total: f64 = v.iter().take(8).sum();
    (total - idle, total)
}

fn num(db: &PointDb, id: &str) -> Option<f64> {
    let st = db.read(db.lookup(id)?)?;
    (st.quality == Quality::Ok).then_some(st.value?.as_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_and_memory_agree_with_proc_under_load() {
    let text = format!(
        "{}\n[telemetry.periods]\ncpu_usage = \"1s\"\nmemory_usage = \"1s\"\n",
        castpoint::config::file::DEFAULT_CONFIG
    );
    let mut cfg = Config::from_text("test.toml", &text, Path::new(".")).expect("config");
    loopback(&mut cfg);
    let app = TestApp::with_config(cfg).await;
    // Load one core so the figure is not just idle noise.
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let burner = std::thread::spawn(move || {
        let mut x = 0u64;
        while !s2.load(Ordering::Relaxed) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        x
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut diffs = Vec::new();
    for _ in 0..3 {
        let (b0, t0) = proc_cpu();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (b1, t1) = proc_cpu();
        let ours = num(&app.db, "cpu_usage").expect("cpu published");
        let theirs = (b1 - b0) * 100.0 / (t1 - t0);
        diffs.push((ours, theirs));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = burner.join();
    // Windows are not aligned to the sampler's, so compare the means.
    let ours: f64 = diffs.iter().map(|d| d.0).sum::<f64>() / 3.0;
    let theirs: f64 = diffs.iter().map(|d| d.1).sum::<f64>() / 3.0;
    assert!(
        (ours - theirs).abs() < 12.0,
        "cpu ours {ours:.1} vs /proc {theirs:.1}: {diffs:?}"
    );
    let mem = num(&app.db, "memory_usage").expect("memory published");
    let pm = proc_mem_pct();
    assert!(
        (mem - pm).abs() < 3.0,
        "memory ours {mem:.1} vs /proc {pm:.1}"
    );
    let up = num(&app.db, "uptime").expect("uptime published");
    assert!(up > 0.0 && up < 0.1);
    app.stop().await;
}

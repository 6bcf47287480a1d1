//! Recordings on a really full disk (a small tmpfs mounted by the test): the output reports ENOSPC, opens no file while full, leaves no 0-byte files, keeps the earlier recording, and resumes once space is back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use castpoint::app::App;
use castpoint::config::Config;
use castpoint::engine::stats::IoSnapshot;
use castpoint::engine::EventKind;
use castpoint::points::{Source, Value};
use tokio::net::UdpSocket;

use crate::util::eventually_true;

/// A tmpfs mounted on `dir` until dropped (needs root, as CI runs).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a failed test may leave the server's files open in it.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Sends TS (PAT, then video packets with running continuity counters) to
/// `to` at about 5 Mbit/s until aborted.
fn source(to: SocketAddr) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let mut cc = 0u8;
        let mut n = 0u64;
        loop {
            let mut d = Vec::with_capacity(7 * 188);
            for _ in 0..7 {
                let mut p = [0xFFu8; 188];
                p[0] = 0x47;
                if n.is_multiple_of(70) {
                    // PAT: program 1 on PMT PID 0x1000.
                    p[1] = 0x40;
                    p[2] = 0;
                    p[3] = 0x10;
                    p[4..21].copy_from_slice(&[
                        0, 0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01, 0xF0, 0x00,
                        0, 0, 0, 0,
                    ]);
                } else {
                    p[1] = 0x01;
                    p[2] = 0x00;
                    p[3] = 0x10 | cc;
                    cc = (cc + 1) & 0x0F;
                }
                n += 1;
                d.extend_from_slice(&p);
            }
            let _ = s.send_to(&d, to).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

fn rec(app: &App) -> IoSnapshot {
    app.engine
        .snapshot()
        .route("r")
        .and_then(|r| r.outputs.iter().find(|o| o.name == "rec"))
        .expect("recording output")
        .clone()
}

/// (name, size) of every file in `dir`, by name.
fn files(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let len = e.metadata().ok()?.len();
                    Some((e.file_name().to_string_lossy().to_string(), len))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_reported_and_never_costs_the_earlier_recording() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let recordings = data.join("recordings");
    std::fs::create_dir_all(&recordings).expect("mkdir");
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    let Some(_fs) = Tmpfs::mount(&recordings, "4m") else {
        eprintln!(
            "SKIPPED full_disk_is_reported_and_never_costs_the_earlier_recording: \
             cannot mount a tmpfs (needs root)"
        );
        return;
    };
    let text = "[[route]]\nname = \"r\"\n[[route.input]]\ntype = \"udp\"\n\
                bind = \"127.0.0.1:0\"\n[[route.output]]\nname = \"rec\"\ntype = \"record\"\n\
                segment = \"1h\"\nkeep = 1\n";
    let mut cfg = Config::from_text("t.toml", text, Path::new(".")).expect("config");
    crate::util::loopback(&mut cfg);
    cfg.server.data_dir = data.clone();
    let app = App::start(cfg).await.expect("starts");
    let input = {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(a) = app
                .engine
                .snapshot()
                .route("r")
                .and_then(|r| r.inputs.first())
                .and_then(|i| i.local)
            {
                break a;
            }
            assert!(Instant::now() < end, "input never bound");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let dir = recordings.join("r");
    // Recording Enable (the only route is the primary one) turns it on.
    let re = app.db.lookup("recording_enable").expect("point");
    app.db
        .write(re, Some(Value::Bool(true)), 10, &Source::internal())
        .expect("write");
    eventually_true("the output enabled", Duration::from_secs(10), || {
        rec(&app).enabled
    })
    .await;

    // 1. A good recording: about a second of data, then a pause closes it.
    let src = source(input);
    eventually_true("300 kB recorded", Duration::from_secs(20), || {
        rec(&app).bytes > 300_000
    })
    .await;
    src.abort();
    eventually_true(
        "the file closed after the pause",
        Duration::from_secs(10),
        || rec(&app).clients == 0,
    )
    .await;
    // The output's byte count leads the file by what is still being
    // written when the file closes: wait for the file to hold it all (a
    // stress run read 261,884 of 300,000+ bytes straight after the close).
    let mut first = files(&dir);
    eventually_true("the first file complete", Duration::from_secs(10), || {
        first = files(&dir);
        first.len() == 1 && first[0].1 > 300_000
    })
    .await;

    // 2. The disk fills up (someone else's file).
    let filler = recordings.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }

    // 3. Data resumes: the recording fails, says why, and stops opening files.
    let mut events = app.engine.subscribe();
    let src = source(input);
    eventually_true(
        "the output down with ENOSPC",
        Duration::from_secs(20),
        || {
            let r = rec(&app);
            !r.up
                && r.error
                    .as_deref()
                    .is_some_and(|e| e.contains("No space left on device"))
        },
    )
    .await;
    let failed = {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.recv()).await {
                Ok(Ok(ev)) => {
                    if let EventKind::OutputFailed { output, error } = ev.kind {
                        break (output, error);
                    }
                }
                _ => panic!("no output_failed event"),
            }
        }
    };
    assert_eq!(failed.0, "rec");
    assert!(failed.1.contains("No space left on device"), "{failed:?}");
    // Past the first retry (10 s) with the disk still full: no new file,
    // no 0-byte file, the earlier recording intact, no byte counted.
    let bytes = rec(&app).bytes;
    let end = Instant::now() + Duration::from_secs(12);
    while Instant::now() < end {
        let now = files(&dir);
        assert_eq!(now, first, "files while the disk is full");
        let r = rec(&app);
        assert!(!r.up, "output reported up on a full disk");
        assert_eq!(r.bytes, bytes, "bytes counted while nothing is written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rec(&app).dropped_chunks > 0);

    // 4. Space is back: the next try (within 10 s) records again.
    std::fs::remove_file(&filler).expect("rm filler");
    eventually_true("recording again", Duration::from_secs(30), || {
        let r = rec(&app);
        r.up && r.bytes > bytes + 100_000
    })
    .await;
    assert!(app.engine.recent_events().iter().any(|e| matches!(
        &e.kind,
        EventKind::OutputRecovered { output } if output == "rec"
    )));
    let now = files(&dir);
    assert!(now.iter().all(|(_, len)| *len > 0), "{now:?}");
    // Until the new file is complete, it does not count against keep = 1.
    assert!(now.contains(&first[0]), "{now:?}");
    src.abort();
    app.stop().await;
}

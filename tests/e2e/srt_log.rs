//! A flood of hostile datagrams at an SRT listener cannot flood castpoint's log: libsrt's lines are rate-limited with a "suppressed" summary.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A handshake control packet with a random body: libsrt rejects each
/// one with a "ROGUE HS RECEIVED" error line.
fn rogue(seed: &mut u64) -> Vec<u8> {
    let mut d = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for _ in 0..48 {
        // xorshift64: any bytes will do.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        d.push(*seed as u8);
    }
    d
}

#[test]
fn hostile_datagram_flood_gives_a_bounded_log_with_a_summary() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_udp_port();
    let cfg = tmp.path().join("c.toml");
    let mut f = std::fs::File::create(&cfg).expect("config");
    write!(
        f,
        "data_dir = \"{}\"\n[http]\nbind = \"127.0.0.1:0\"\n[bacnet]\nenabled = false\n\
         [modbus]\nenabled = false\n[telemetry]\nenabled = false\n[[route]]\nname = \"s\"\n\
         [[route.input]]\ntype = \"srt\"\nmode = \"listener\"\naddr = \"127.0.0.1:{port}\"\n\
         [[route.output]]\nname = \"web\"\ntype = \"http\"\n",
        tmp.path().join("data").display()
    )
    .expect("write");
    drop(f);
    let mut child = Command::new(env!("CARGO_BIN_EXE_castpoint"))
        .args(["run", "--rtmp", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let err = child.stderr.take().expect("stderr");
        let lines = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push(l);
            }
        })
    };
    let out = child.stdout.take().expect("stdout");
    let ready = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .any(|l| l == "ready");
    assert!(ready, "castpoint did not start: {:?}", lines.lock());
    let rogue_lines = |l: &Vec<String>| l.iter().filter(|l| l.contains("ROGUE HS")).count();
    // The listener binds in the route task: wait until libsrt answers.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let end = Instant::now() + Duration::from_secs(10);
    while rogue_lines(&lines.lock().expect("lines")) == 0 {
        assert!(
            Instant::now() < end,
            "libsrt never logged a rejected handshake"
        );
        let _ = sock.send_to(&rogue(&mut seed), ("127.0.0.1", port));
        std::thread::sleep(Duration::from_millis(20));
    }
    // The flood: 20,000 datagrams over about two seconds.
    let t0 = Instant::now();
    for i in 0..20_000u32 {
        let _ = sock.send_to(&rogue(&mut seed), ("127.0.0.1", port));
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // The summary of the last window comes even though the flood stopped.
    let end = Instant::now() + Duration::from_secs(10);
    while !lines
        .lock()
        .expect("lines")
        .iter()
        .any(|l| l.contains("suppressed") && l.contains("libsrt"))
    {
        assert!(Instant::now() < end, "no suppressed-lines summary");
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = t0.elapsed().as_secs() + 3;
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let l = lines.lock().expect("lines");
    let n = rogue_lines(&l);
    // At most 10 a second per level, plus the first window before t0.
    assert!(
        n as u64 <= 10 * (secs + 1),
        "{n} libsrt lines in about {secs} s"
    );
    let suppressed: u64 = l
        .iter()
        .filter_map(|l| l.split("suppressed ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        suppressed > 1000,
        "only {suppressed} lines reported suppressed"
    );
}

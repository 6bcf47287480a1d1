//! End-to-end tests of the ts-source and viewers binaries against each other
//! and against real peers (ffprobe, srt-live-transmit), loopback only.

use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TS_SOURCE: &str = env!("CARGO_BIN_EXE_ts-source");
const VIEWERS: &str = env!("CARGO_BIN_EXE_viewers");

/// A free loopback UDP port (bound then released; fine on a quiet host).
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind")
        .port()
}

/// Whether some socket on this machine is bound to UDP `port` (the
/// kernel's socket tables, IPv4 and IPv6: `local_address` is `ADDR:PORT` in
/// hex).
fn udp_bound(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(1))
                .any(|local| local.ends_with(&want))
        })
    })
}

/// Waits until UDP `port` is bound: a receiver started before its source
/// must be listening before the first datagram, or the chunks it never saw
/// (and any losses among them) are missing from its count. A fixed 300 ms
/// sleep lost that race in CI on a loaded machine.
fn wait_udp_bound(port: u16, who: &str) {
    let end = Instant::now() + Duration::from_secs(20);
    while !udp_bound(port) {
        assert!(Instant::now() < end, "{who} never bound UDP port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn have(tool: &str, arg: &str) -> bool {
    let ok = Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok && std::env::var_os("CASTPOINT_SKIP_PEERS").is_none() {
        panic!("{tool} not installed (set CASTPOINT_SKIP_PEERS=1 to skip peer tests)");
    }
    ok
}

fn spawn_viewers(args: &[&str]) -> Child {
    Command::new(VIEWERS)
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("viewers")
}

fn viewers_result(child: Child) -> Vec<Value> {
    let out = child.wait_with_output().expect("viewers output");
    assert!(
        out.status.success(),
        "viewers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // Listener mode prints a "listening" line before the JSON.
    let json = &text[text.find('[').expect("json array")..];
    serde_json::from_str::<Vec<Value>>(json).expect("viewers json")
}

fn run_source(args: &[&str]) -> Value {
    let out = Command::new(TS_SOURCE)
        .args(args)
        .arg("--json")
        .output()
        .expect("ts-source");
    assert!(
        out.status.success(),
        "ts-source: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().expect("summary");
    serde_json::from_str(line).expect("summary json")
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[test]
fn udp_loss_is_counted_exactly_and_latency_measured() {
    let port = free_port();
    let url = format!("udp://127.0.0.1:{port}");
    // The viewer's clock starts when it does; 6 s leaves a 2.5-s source
    // room to start late on a loaded machine without its tail (and the
    // losses in it) falling after the viewer stopped.
    let v = spawn_viewers(&[&url, "-d", "6"]);
    wait_udp_bound(port, "viewers");
    let s = run_source(&[
        &url,
        "--bitrate",
        "6M",
        "--duration",
        "2.5",
        "--loss",
        "2",
        "--burst",
        "3",
    ]);
    let r = &viewers_result(v)[0];
    let lost = num(&s, "chunks_lost");
    assert!(lost > 0.0);
    // Chunks dropped after the last one sent look like the end of the
    // stream to any receiver.
    assert_eq!(
        num(r, "missing_chunks"),
        lost - num(&s, "chunks_lost_tail"),
        "viewer counts exactly the chunks the source dropped"
    );
    assert!(num(r, "cc_errors") > 0.0, "lost chunks break continuity");
    assert!(
        (num(r, "bitrate_mbps") - 6.0 * (1.0 - lost / num(&s, "chunks_generated"))).abs() < 0.3,
        "{r}"
    );
    let p50 = num(r, "latency_ms_p50");
    assert!((0.0..50.0).contains(&p50), "loopback latency {p50}");
}

#[test]
fn outage_shows_as_a_gap() {
    let port = free_port();
    let url = format!("udp://127.0.0.1:{port}");
    let v = spawn_viewers(&[&url, "-d", "5.5"]);
    wait_udp_bound(port, "viewers");
    let s = run_source(&[
        &url,
        "--bitrate",
        "2M",
        "--duration",
        "3",
        "--outage",
        "1:1",
    ]);
    let r = &viewers_result(v)[0];
    assert!(num(&s, "chunks_outage") > 0.0);
    assert_eq!(num(r, "gaps"), 1.0, "{r}");
    assert!((900.0..1300.0).contains(&num(r, "max_gap_ms")), "{r}");
    assert_eq!(num(r, "missing_chunks"), num(&s, "chunks_outage"));
}

#[test]
fn ffprobe_reads_the_udp_stream() {
    if !have("ffprobe", "-version") {
        return;
    }
    let port = free_port();
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-analyzeduration",
            "1000000",
            "-show_streams",
            "-of",
            "compact",
        ])
        .arg(format!("udp://127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffprobe");
    // The source must not start before ffprobe listens: joined mid-GOP,
    // ffprobe reports the slices before the first SPS/PPS on stderr. A
    // fixed 400 ms wait lost that race in CI on a loaded machine.
    wait_udp_bound(port, "ffprobe");
    run_source(&[&format!("udp://127.0.0.1:{port}"), "--duration", "3"]);
    let out = probe.wait_with_output().expect("ffprobe output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("codec_name=h264") && text.contains("codec_name=aac"),
        "{text}"
    );
    assert!(
        text.contains("width=640") && text.contains("height=360"),
        "{text}"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn slt(input: &str, output: &str) -> Killed {
    Killed(
        Command::new("srt-live-transmit")
            .args(["-q", input, output])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("srt-live-transmit"),
    )
}

#[test]
fn srt_caller_into_libsrt_listener() {
    if !have("srt-live-transmit", "-version") {
        return;
    }
    let (p, q) = (free_port(), free_port());
    let _slt = slt(&format!("srt://:{p}"), &format!("udp://127.0.0.1:{q}"));
    let v = spawn_viewers(&[&format!("udp://127.0.0.1:{q}"), "-d", "5"]);
    wait_udp_bound(p, "srt-live-transmit");
    wait_udp_bound(q, "viewers");
    // 20 Mbit/s: the enlarged send buffer keeps srt-tokio from stalling.
    let s = run_source(&[
        &format!("srt://127.0.0.1:{p}"),
        "--bitrate",
        "20M",
        "--duration",
        "2.5",
    ]);
    let r = &viewers_result(v)[0];
    assert_eq!(num(r, "cc_errors"), 0.0, "{r}");
    assert_eq!(num(r, "missing_chunks"), 0.0, "{r}");
    assert!(num(r, "bitrate_mbps") > 18.0, "{r}");
    assert!(num(&s, "chunks_sent") > 0.0);
}

#[test]
fn srt_listener_serves_libsrt_caller_and_viewer_calls_libsrt() {
    if !have("srt-live-transmit", "-version") {
        return;
    }
    // ts-source (listener) <- srt-live-transmit (caller) -> UDP -> srt-live-transmit
    // (listener) <- viewers (SRT caller): both directions of srt-tokio vs libsrt.
    let (q, r_port) = (free_port(), free_port());
    let mut src = Command::new(TS_SOURCE)
        .args([
            "srt://127.0.0.1:0?mode=listener",
            "--bitrate",
            "4M",
            "--duration",
            "4",
            "--json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ts-source");
    let mut line = String::new();
    {
        use std::io::BufRead;
        let out = src.stdout.as_mut().expect("stdout");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("listening line");
    }
    let addr = line
        .trim()
        .strip_prefix("listening srt ")
        .expect("listening line")
        .to_string();
    // 500 ms of SRT latency per hop (libsrt's default is 120 ms): on a
    // starved machine (the suite runs beside other work) a packet retransmitted
    // later than the latency is dropped by design (too-late drop), which
    // the viewer would count as a CC error that says nothing about either
    // implementation.
    let _out = slt(
        &format!("udp://127.0.0.1:{q}"),
        &format!("srt://:{r_port}?latency=500"),
    );
    wait_udp_bound(r_port, "srt-live-transmit");
    // No wait for the viewer's handshake: a viewer that joins late only
    // misses the first packets (it takes its CC baseline from the first it
    // sees), and the checks below hold either way.
    let v = spawn_viewers(&[&format!("srt://127.0.0.1:{r_port}"), "-d", "5"]);
    let _in = slt(
        &format!("srt://{addr}?latency=500"),
        &format!("udp://127.0.0.1:{q}"),
    );
    let r = &viewers_result(v)[0];
    assert!(src.wait().expect("ts-source").success());
    assert_eq!(num(r, "cc_errors"), 0.0, "{r}");
    assert!(num(r, "bytes") > 1e6, "{r}");
    // Two SRT hops, each holding packets for its latency.
    assert!(num(r, "latency_ms_p50") > 100.0, "{r}");
}

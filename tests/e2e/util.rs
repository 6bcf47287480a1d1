//! Shared helpers for end-to-end tests: `TestApp` (castpoint in-process or the real binary, on ephemeral ports, in a temp dir removed on drop) and `eventually` (wait on a condition, never a fixed sleep).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use castpoint::app::App;
use castpoint::config::Config;
use castpoint::engine::stats::RouteSnapshot;

/// One castpoint under test: in-process (`start*`, derefs to `App`) or the
/// real binary (`spawn`). It owns its temp dir (removed on drop) and stops
/// the app / kills the child on drop, so a failing test leaves nothing
/// behind.
pub struct TestApp {
    app: Option<App>,
    child: Option<Child>,
    /// `listening <what> <addr>` lines the child printed before `ready`.
    pub listening: HashMap<String, SocketAddr>,
    dir: tempfile::TempDir,
}

impl TestApp {
    /// The embedded config, every listener on 127.0.0.1:0, telemetry off.
    pub async fn start() -> TestApp {
        Self::with_config(Config::embedded().expect("embedded config is valid")).await
    }

    /// `castpoint.toml` text (points and maps embedded), moved to loopback.
    pub async fn from_toml(text: &str) -> TestApp {
        let cfg = Config::from_text("test.toml", text, Path::new(".")).expect("valid config");
        Self::with_config(cfg).await
    }

    /// As `from_toml` with telemetry on: the router's counters and statuses
    /// are published only with it.
    pub async fn with_telemetry(text: &str) -> TestApp {
        Self::from_toml(&format!("{text}\n[telemetry]\nenabled = true\n")).await
    }

    /// `cfg` moved to loopback ports and a data dir in a fresh temp dir.
    pub async fn with_config(cfg: Config) -> TestApp {
        Self::try_with_config(cfg).await.expect("app starts")
    }

    /// As `with_config`, returning the start-up error.
    pub async fn try_with_config(cfg: Config) -> anyhow::Result<TestApp> {
        Self::start_in(cfg, temp_dir()).await
    }

    async fn start_in(mut cfg: Config, dir: tempfile::TempDir) -> anyhow::Result<TestApp> {
        loopback_ports(&mut cfg);
        cfg.server.data_dir = dir.path().join("data");
        let app = App::start(cfg).await?;
        Ok(TestApp {
            app: Some(app),
            child: None,
            listening: HashMap::new(),
            dir,
        })
    }

    /// Stops this app and starts `cfg` (moved to loopback) on the same
    /// data dir: the restart tests' "is it still there" step.
    pub async fn restart(mut self, cfg: Config) -> TestApp {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
        let dir = std::mem::replace(&mut self.dir, temp_dir());
        Self::start_in(cfg, dir).await.expect("app restarts")
    }

    /// The real binary, `cmd` with stdout piped: returns once it printed
    /// `ready` (with the addresses it printed), or its exit status and
    /// stderr if it ended first. The temp dir is the caller's to use
    /// (`dir()`); `cmd` should put its data dir there.
    pub fn spawn(mut cmd: Command) -> Result<TestApp, (ExitStatus, String)> {
        Self::spawn_in(&mut cmd, temp_dir())
    }

    fn spawn_in(
        cmd: &mut Command,
        dir: tempfile::TempDir,
    ) -> Result<TestApp, (ExitStatus, String)> {
        // stderr goes to a file in the temp dir: read back if the start
        // fails, and never a pipe that fills up and blocks the server.
        let log = dir.path().join("stderr.log");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("stderr log"))
            .spawn()
            .expect("spawn castpoint");
        let out = child.stdout.take().expect("stdout");
        let mut listening = HashMap::new();
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() == 3 && parts[0] == "listening" {
                if let Ok(a) = parts[2].parse() {
                    listening.insert(parts[1].to_string(), a);
                }
            }
            if line == "ready" {
                return Ok(TestApp {
                    app: None,
                    child: Some(child),
                    listening,
                    dir,
                });
            }
        }
        // stdout closed: the process is ending.
        let status = child.wait().expect("wait");
        let err = std::fs::read_to_string(&log).unwrap_or_default();
        Err((status, err))
    }

    /// The data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The child process (spawned apps only).
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("a spawned castpoint")
    }

    /// `http://<addr>` of the HTTP listener (in-process or spawned).
    pub fn http_base(&self) -> String {
        let a = match &self.app {
            Some(app) => app.addrs.http,
            None => self.listening.get("http").copied(),
        };
        format!("http://{}", a.expect("http bound"))
    }

    /// Stops every part and waits for them; the temp dir goes with `self`.
    pub async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
    }

    /// Waits until every part has finished (after the token is cancelled).
    #[allow(dead_code)] // `App::wait`'s counterpart, for `util::start` callers
    pub async fn wait(mut self) {
        if let Some(app) = self.app.take() {
            app.wait().await;
        }
    }
}

impl Deref for TestApp {
    type Target = App;
    fn deref(&self) -> &App {
        self.app.as_ref().expect("an in-process castpoint")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(app) = &self.app {
            // Parts stop on their own; the runtime ending drops the rest.
            app.shutdown_token().cancel();
        }
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        // `dir` is removed when the field drops, after this.
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("castpoint-test-")
        .tempdir()
        .expect("temp dir")
}

/// `castpoint run` on loopback ephemeral ports with `data` as data dir.
pub fn run_command(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_castpoint"));
    c.args([
        "run",
        "--http",
        "127.0.0.1:0",
        "--bacnet",
        "127.0.0.1:0",
        "--modbus",
        "127.0.0.1:0",
        "--rtmp",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(data);
    c
}

/// The value of one series (its whole name with labels, e.g.
/// `castpoint_x_total{kind="a"}`) in a `/metrics` text.
pub fn metric_value(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until `condition` returns `Some`, polling every 20 ms, and panics
/// naming `what` after `timeout`. The timeout bounds a hang; it is not a
/// performance claim, so make it generous (the suite shares a 2-core
/// machine with other work): 10 s or more.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut condition: impl AsyncFnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = condition().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `eventually` for a plain boolean condition.
pub async fn eventually_true(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    eventually(what, timeout, async || condition().then_some(())).await
}

/// Waits until `route`'s snapshot satisfies `f` (bounded by 15 s, a hang
/// bound) and returns that snapshot; on a timeout the last snapshot is
/// printed beside the panic.
pub async fn until_route(
    app: &App,
    route: &str,
    what: &str,
    f: impl Fn(&RouteSnapshot) -> bool,
) -> RouteSnapshot {
    let last = LastSnapshot(std::cell::RefCell::new(String::new()));
    eventually(
        &format!("{route}: {what}"),
        Duration::from_secs(15),
        async || {
            let s = app.engine.snapshot();
            let r = s.route(route)?;
            *last.0.borrow_mut() = format!("{r:#?}");
            f(r).then(|| r.clone())
        },
    )
    .await
}

/// Prints a route's last snapshot when a wait panics (times out).
struct LastSnapshot(std::cell::RefCell<String>);

impl Drop for LastSnapshot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("last snapshot: {}", self.0.borrow());
        }
    }
}

/// The local address input `i` of `route` bound (waits for the bind).
pub async fn input_addr(app: &App, route: &str, i: usize) -> SocketAddr {
    eventually(
        &format!("input {i} of {route} bound"),
        Duration::from_secs(10),
        async || {
            app.engine
                .snapshot()
                .route(route)
                .and_then(|r| r.inputs.get(i))
                .and_then(|x| x.local)
        },
    )
    .await
}

/// The local address output `name` of `route` bound (waits for the bind).
pub async fn output_addr(app: &App, route: &str, name: &str) -> SocketAddr {
    eventually(
        &format!("output {name} of {route} bound"),
        Duration::from_secs(10),
        async || {
            app.engine
                .snapshot()
                .route(route)
                .and_then(|r| r.outputs.iter().find(|o| o.name == name))
                .and_then(|x| x.local)
        },
    )
    .await
}

/// Starts castpoint in-process with every listener on 127.0.0.1:0 and
/// telemetry off, so tests that set points by hand are not raced by the
/// sampler (telemetry's own tests turn it on). Kept for older callers:
/// `TestApp::start`.
pub async fn start() -> TestApp {
    TestApp::start().await
}

/// Turns telemetry off in a config that has no `[telemetry]` of its own.
pub fn quiet(cfg: &mut Config) {
    if !cfg.server.written.contains("telemetry") {
        cfg.server.telemetry.enabled = false;
    }
}

/// Every listener of `cfg` on an ephemeral loopback port, telemetry off
/// unless configured, the embedded demo route dropped.
fn loopback_ports(cfg: &mut Config) {
    quiet(cfg);
    // The embedded demo route binds a fixed port (its UDP backup input):
    // tests declare the routes they need themselves.
    cfg.server.routes.retain(|r| r.spec.name != "demo");
    if cfg.server.primary_route.as_deref() == Some("demo") {
        cfg.server.primary_route = None;
    }
    let any: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    cfg.server.http.bind = any;
    cfg.server.bacnet.bind = any;
    cfg.server.modbus.bind = any;
    cfg.server.rtmp.bind = any;
}

/// Moves every bind of a config to an ephemeral loopback port, in a fresh
/// data dir, with telemetry off unless the config configures it. Kept for
/// older callers that start `App` themselves; that data dir is not removed
/// afterwards: `TestApp::with_config` does both and cleans up.
pub fn loopback(cfg: &mut Config) {
    loopback_ports(cfg);
    let dir = std::env::temp_dir().join(format!(
        "castpoint-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    cfg.server.data_dir = dir;
}

/// GET a URL and parse the JSON body (the request must succeed).
pub async fn get_json(c: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    c.get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json body")
}

/// The simulators' test stream at `bitrate`, sent to `to` over UDP and
/// paced in real time, until `stop` is cancelled.
pub fn ts_source(
    to: SocketAddr,
    bitrate: u64,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use castpoint_sim::tsgen::{Pacer, TsConfig, TsGenerator};
    tokio::spawn(async move {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut g = TsGenerator::new(TsConfig {
            bitrate,
            ..TsConfig::default()
        })
        .expect("generator");
        let mut pacer = Pacer::new(Instant::now(), g.chunk_duration());
        while !stop.is_cancelled() {
            tokio::time::sleep_until(pacer.next_deadline().into()).await;
            let due = pacer.due(Instant::now()).min(64);
            for _ in 0..due {
                let _ = sock
                    .send_to(&g.next_chunk(std::time::SystemTime::now()), to)
                    .await;
            }
            pacer.mark_sent(due.max(1));
        }
    })
}

/// BACnet ReadProperty Present_Value of multi-state-value `instance` over a
/// raw socket (an application-tagged unsigned in the answer).
pub async fn bacnet_msv(addr: SocketAddr, instance: u32) -> u32 {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let oid = ((19u32 << 22) | instance).to_be_bytes();
    let mut f = vec![0x81, 0x0A, 0, 0, 0x01, 0x04, 0x00, 0x05, 0x11, 12, 0x0C];
    f.extend_from_slice(&oid);
    f.extend_from_slice(&[0x19, 85]);
    let len = f.len() as u16;
    f[2..4].copy_from_slice(&len.to_be_bytes());
    sock.send_to(&f, addr).await.expect("send");
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(3), sock.recv(&mut buf))
        .await
        .expect("reply in time")
        .expect("recv");
    let r = &buf[..n];
    let pos = r.iter().position(|b| *b == 0x3E).expect("opening tag") + 1;
    assert_eq!(r[pos] & 0xF8, 0x20, "unsigned: {r:02x?}");
    let len = usize::from(r[pos] & 0x07);
    r[pos + 1..pos + 1 + len]
        .iter()
        .fold(0u32, |a, b| (a << 8) | u32::from(*b))
}

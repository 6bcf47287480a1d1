//! One supervised ffmpeg child: TS fed on stdin from a bounded queue, TS read from stdout in whole 188-byte packets, stderr parsed for progress and errors, restarts with exponential backoff, tagged so orphans can be found.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::latency::LatencyMeter;
use super::progress::{redact, Line, Progress, ProgressParser};
use crate::mpegts::join::Joiner;
use crate::mpegts::ts::Aligner;

/// Environment variable every child carries: `<castpoint pid>:<label>`.
/// The start-up reaper kills tagged processes whose parent is gone.
pub const TAG_ENV: &str = "CASTPOINT_CHILD";

/// First restart delay; doubles per failure up to `BACKOFF_MAX`.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A child that ran this long was healthy: the backoff starts over.
pub const HEALTHY: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Strings never logged (stream keys): replaced by `***`.
    pub secrets: Vec<String>,
    /// Short label for logs and the tag (e.g. `transcode:main`).
    pub label: String,
    /// Whether stdout carries TS for the caller.
    pub stdout: bool,
}

impl ChildSpec {
    /// The command line as it may be logged (secrets redacted).
    pub fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            if a.contains(' ') || a.contains('|') || a.contains(';') {
                s.push_str(&format!("'{a}'"));
            } else {
                s.push_str(a);
            }
        }
        crate::redact::redact_text(&redact(&s, &self.secrets))
    }
}

/// Counters and state of one supervised child, shared with snapshots.
#[derive(Default, Debug)]
pub struct ChildStats {
    /// Pid of the running child (0: none).
    pub pid: AtomicU32,
    pub running: AtomicBool,
    /// Children started after the first.
    pub restarts: AtomicU64,
    /// Chunks the bounded stdin queue refused (the route never waits).
    pub in_dropped_chunks: AtomicU64,
    /// Output chunks lost because the route's queue was full.
    pub out_dropped_chunks: AtomicU64,
    pub out_bytes: AtomicU64,
    /// Frames ffmpeg dropped in children that already exited.
    drop_base: AtomicU64,
    dup_base: AtomicU64,
    pub last: Mutex<Option<(Progress, Instant)>>,
    pub started: Mutex<Option<Instant>>,
    /// Why the child is not running / last ended (redacted).
    pub fault: Mutex<Option<String>>,
    /// Last free-text stderr line (redacted).
    pub last_log: Mutex<Option<String>>,
    /// Sustained slowness: since when speed < 0.95 or frames were dropped.
    pub overload_since: Mutex<Option<Instant>>,
    pub latency: Mutex<LatencyMeter>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChildSnapshot {
    pub pid: Option<u32>,
    pub running: bool,
    pub restarts: u64,
    pub fps: Option<f64>,
    pub speed: Option<f64>,
    pub drop_frames: u64,
    pub dup_frames: u64,
    pub out_time_ms: Option<i64>,
    /// Milliseconds since the last progress report (None: none yet).
    pub progress_age_ms: Option<u64>,
    pub in_dropped_chunks: u64,
    pub out_dropped_chunks: u64,
    pub out_bytes: u64,
    /// Input-to-output wall-clock delay through the child (ms).
    pub latency_ms: Option<f64>,
    pub overloaded_for_ms: Option<u64>,
    pub error: Option<String>,
    pub last_log: Option<String>,
}

impl ChildStats {
    pub fn drop_frames(&self) -> u64 {
        let cur = self
            .last
            .lock()
            .as_ref()
            .and_then(|(p, _)| p.drop_frames)
            .unwrap_or(0);
        self.drop_base.load(Relaxed) + cur
    }

    pub fn snapshot(&self) -> ChildSnapshot {
        let last = self.last.lock().clone();
        let pid = self.pid.load(Relaxed);
        let dup = self.dup_base.load(Relaxed)
            + last.as_ref().and_then(|(p, _)| p.dup_frames).unwrap_or(0);
        ChildSnapshot {
            pid: (pid != 0).then_some(pid),
            running: self.running.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
            fps: last.as_ref().and_then(|(p, _)| p.fps),
            speed: last.as_ref().and_then(|(p, _)| p.speed),
            drop_frames: self.drop_frames(),
            dup_frames: dup,
            out_time_ms: last
                .as_ref()
                .and_then(|(p, _)| p.out_time_us)
                .map(|u| u / 1000),
            progress_age_ms: last.as_ref().map(|(_, t)| t.elapsed().as_millis() as u64),
            in_dropped_chunks: self.in_dropped_chunks.load(Relaxed),
            out_dropped_chunks: self.out_dropped_chunks.load(Relaxed),
            out_bytes: self.out_bytes.load(Relaxed),
            latency_ms: self.latency.lock().current_ms(),
            overloaded_for_ms: self
                .overload_since
                .lock()
                .map(|t| t.elapsed().as_millis() as u64),
            error: self.fault.lock().clone(),
            last_log: self.last_log.lock().clone(),
        }
    }

    /// Progress reported within `within`.
    pub fn progressing(&self, within: Duration) -> bool {
        self.running.load(Relaxed)
            && self
                .last
                .lock()
                .as_ref()
                .is_some_and(|(_, t)| t.elapsed() <= within)
    }

    pub(crate) fn on_progress(&self, p: Progress) {
        let now = Instant::now();
        let prev_drops = self.last.lock().as_ref().and_then(|(p, _)| p.drop_frames);
        let slow = p.speed.is_some_and(|s| s < 0.95)
            || matches!((prev_drops, p.drop_frames), (Some(a), Some(b)) if b > a);
        {
            let mut o = self.overload_since.lock();
            if slow {
                o.get_or_insert(now);
            } else {
                *o = None;
            }
        }
        *self.last.lock() = Some((p, now));
        *self.fault.lock() = None;
    }

    fn ended(&self) {
        self.running.store(false, Relaxed);
        self.pid.store(0, Relaxed);
        if let Some((p, _)) = self.last.lock().take() {
            self.drop_base
                .fetch_add(p.drop_frames.unwrap_or(0), Relaxed);
            self.dup_base.fetch_add(p.dup_frames.unwrap_or(0), Relaxed);
        }
        *self.overload_since.lock() = None;
        self.latency.lock().reset();
    }
}

/// Starts one child with the tag, its own process group (a terminal's
/// Ctrl-C reaches castpoint, which then stops its children in order) and
/// kill-on-drop as the last safety net.
fn spawn(spec: &ChildSpec) -> std::io::Result<tokio::process::Child> {
    let mut c = tokio::process::Command::new(&spec.program);
    c.args(&spec.args)
        .env(TAG_ENV, format!("{}:{}", std::process::id(), spec.label))
        .stdin(Stdio::piped())
        .stdout(if spec.stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    c.spawn()
}

enum End {
    /// Cancelled or the feeding queue closed: stop for good.
    Stop,
    /// The child ended (or broke a pipe): restart.
    Died(String),
}

/// Runs `spec` until `cancel` (or until `input` closes), restarting it with
/// backoff. `output` receives stdout as chunks of whole TS packets
/// (try_send: a full queue drops the chunk, counted), each child's preceded
/// by an empty chunk.
pub async fn supervise(
    spec: ChildSpec,
    input: &mut mpsc::Receiver<Bytes>,
    output: Option<mpsc::Sender<Bytes>>,
    stats: Arc<ChildStats>,
    cancel: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut first = true;
    // Every run starts its child at a keyframe, PAT and PMT first: a
    // `-c copy` push that starts mid-GOP cannot learn the picture size,
    // and a decoder would only produce errors until the next IDR.
    let mut join = Joiner::new();
    tracing::info!(child = %spec.label, "ffmpeg: {}", spec.display());
    loop {
        if cancel.is_cancelled() {
            break;
        }
        if !first {
            stats.restarts.fetch_add(1, Relaxed);
        }
        first = false;
        let started = Instant::now();
        let end = match spawn(&spec) {
            Err(e) => End::Died(format!(
                "cannot run ffmpeg {:?}: {e}",
                spec.program.display().to_string()
            )),
            Ok(child) => {
                join.rejoin();
                // An empty chunk tells the reader that a new child's
                // stream starts here (its counters, PSI versions and
                // clock restart): the route re-bases the continuity
                // counters of its auto outputs at this point, in order
                // with the old child's last chunks.
                if let Some(out) = &output {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        r = out.send(Bytes::new()) => if r.is_err() { break },
                    }
                }
                let io = Io {
                    input: &mut *input,
                    join: &mut join,
                    output: output.as_ref(),
                };
                run_once(child, &spec, io, &stats, &cancel).await
            }
        };
        stats.ended();
        let why = match end {
            End::Stop => break,
            End::Died(why) => crate::redact::redact_text(&redact(&why, &spec.secrets)),
        };
        tracing::warn!(child = %spec.label, "ffmpeg ended: {why}; restarting in {backoff:?}");
        *stats.fault.lock() = Some(why);
        if started.elapsed() >= HEALTHY {
            backoff = BACKOFF_MIN;
        }
        // Wait out the backoff, discarding what arrives: a restarted child
        // should start from live data, not from a stale backlog.
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = &mut sleep => break,
                c = input.recv() => match c {
                    Some(c) => join.skip(&c),
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A run's pipes on the supervisor's side.
struct Io<'a> {
    input: &'a mut mpsc::Receiver<Bytes>,
    join: &'a mut Joiner,
    output: Option<&'a mpsc::Sender<Bytes>>,
}

async fn run_once(
    mut child: tokio::process::Child,
    spec: &ChildSpec,
    io: Io<'_>,
    stats: &Arc<ChildStats>,
    cancel: &CancellationToken,
) -> End {
    let Io {
        input,
        join,
        output,
    } = io;
    stats.pid.store(child.id().unwrap_or(0), Relaxed);
    stats.running.store(true, Relaxed);
    *stats.started.lock() = Some(Instant::now());
    let (Some(mut stdin), Some(stderr)) = (child.stdin.take(), child.stderr.take()) else {
        let _ = child.start_kill();
        return End::Died("child pipes missing".into());
    };
    let stdout = child.stdout.take();
    let feed = feed_stdin(input, join, &mut stdin, stats);
    let read_out = read_stdout(stdout, output, stats);
    let read_err = read_stderr(stderr, spec, stats);
    tokio::pin!(feed, read_out, read_err);
    let mut out_done = false;
    let mut err_done = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return End::Stop;
            }
            r = &mut feed => match r {
                None => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return End::Stop;
                }
                Some(e) => {
                    // Broken pipe: collect the child's last words below.
                    tracing::debug!(child = %spec.label, "stdin: {e}");
                    break;
                }
            },
            _ = &mut read_out, if !out_done => { out_done = true; if spec.stdout { break } }
            _ = &mut read_err, if !err_done => { err_done = true; if !spec.stdout { break } }
            st = child.wait() => {
                // Let stderr finish so the reason is its last line.
                if !err_done {
                    let _ = tokio::time::timeout(Duration::from_millis(500), &mut read_err).await;
                }
                return End::Died(reason(st.ok(), stats));
            }
        }
    }
    // A pipe closed: the child is exiting (or wedged: kill it after 2 s).
    if !err_done {
        let _ = tokio::time::timeout(Duration::from_millis(500), &mut read_err).await;
    }
    let st = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    };
    End::Died(reason(st, stats))
}

/// Queue -> stdin. Ends when the queue closes (route gone: None) or a
/// write fails (the child is dying: the error).
async fn feed_stdin(
    input: &mut mpsc::Receiver<Bytes>,
    join: &mut Joiner,
    stdin: &mut tokio::process::ChildStdin,
    stats: &ChildStats,
) -> Option<std::io::Error> {
    while let Some(c) = input.recv().await {
        let Some(c) = join.push(c) else { continue };
        stats.latency.lock().input(&c);
        if let Err(e) = stdin.write_all(&c).await {
            return Some(e);
        }
    }
    None
}

/// stdout -> the route's queue, realigned to whole TS packets (a full
/// queue drops the chunk, counted). Without an output it never ends.
async fn read_stdout(
    stdout: Option<tokio::process::ChildStdout>,
    output: Option<&mpsc::Sender<Bytes>>,
    stats: &ChildStats,
) {
    let (Some(mut out), Some(tx)) = (stdout, output) else {
        return std::future::pending::<()>().await;
    };
    let mut al = Aligner::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match out.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = al.push(&buf[..n]);
        if chunk.is_empty() {
            continue;
        }
        stats.latency.lock().output(&chunk);
        stats.out_bytes.fetch_add(chunk.len() as u64, Relaxed);
        if tx.try_send(chunk.freeze()).is_err() {
            stats.out_dropped_chunks.fetch_add(1, Relaxed);
        }
    }
}

/// stderr: progress blocks into the stats, other lines (redacted) as the
/// last log line.
async fn read_stderr(stderr: tokio::process::ChildStderr, spec: &ChildSpec, stats: &ChildStats) {
    let mut r = BufReader::new(stderr);
    let mut p = ProgressParser::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded lines: a child spewing without newlines cannot grow
        // memory without limit.
        match (&mut r).take(4096).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match p.line(&line) {
            Line::Block(b) => stats.on_progress(b),
            Line::Log(s) => {
                // ffmpeg repeats its output URL (and so a key inside it) in
                // error messages.
                let s = crate::redact::redact_text(&redact(&s, &spec.secrets));
                tracing::debug!(child = %spec.label, "ffmpeg: {s}");
                *stats.last_log.lock() = Some(s);
            }
            Line::Key | Line::Empty => {}
        }
    }
}

fn reason(st: Option<std::process::ExitStatus>, stats: &ChildStats) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match st {
        Some(s) if s.signal().is_some() => format!("killed by signal {}", s.signal().unwrap_or(0)),
        Some(s) => format!("exited with status {}", s.code().unwrap_or(-1)),
        None => "ended".to_string(),
    };
    match stats.last_log.lock().as_deref() {
        Some(l) => format!("ffmpeg {how}: {l}"),
        None => format!("ffmpeg {how}"),
    }
}

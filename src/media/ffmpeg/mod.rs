//! Supervised ffmpeg child processes: spawn, progress parsing, restart with backoff, reaping (transcode and RTMP push).
//!
//! `[media] ffmpeg` names the binary, `[[profile]]` tables the output
//! profiles. The engine asks this module for two things: a transcoder (TS
//! in, TS out, one child per transcoding route) and an RTMP push output
//! (TS in, FLV to a CDN, one child per destination so one failing never
//! affects another). Every child carries [`child::TAG_ENV`]; at start-up
//! [`reap_stale`] kills tagged children whose castpoint died.

pub mod child;
pub mod latency;
pub mod matrix;
pub mod profile;
pub mod progress;

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::mpegts::stats::IoStats;
use crate::section::{Problem, Section};
use child::{ChildSnapshot, ChildSpec, ChildStats};
pub use profile::{Encoder, Profile};

/// An output profile chosen by its number (the Output Profile point's
/// value) or its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileRef {
    Number(u32),
    Name(String),
}

/// `[media]`: the ffmpeg binary (path or name looked up in PATH).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSection {
    pub ffmpeg: PathBuf,
}

impl Default for MediaSection {
    fn default() -> Self {
        MediaSection {
            ffmpeg: PathBuf::from("ffmpeg"),
        }
    }
}

impl Section for MediaSection {
    fn validate(&self) -> Vec<Problem> {
        if self.ffmpeg.as_os_str().is_empty() {
            return vec![Problem::new(
                "ffmpeg",
                "expected the ffmpeg binary's path or name",
            )];
        }
        Vec::new()
    }
}

/// The media settings: the ffmpeg binary and the output profiles.
pub struct Media {
    pub ffmpeg: PathBuf,
    pub profiles: Vec<Arc<Profile>>,
    nvenc: tokio::sync::OnceCell<Result<(), String>>,
}

impl Default for Media {
    fn default() -> Self {
        Media {
            ffmpeg: PathBuf::from("ffmpeg"),
            profiles: Vec::new(),
            nvenc: tokio::sync::OnceCell::new(),
        }
    }
}

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Media")
            .field("ffmpeg", &self.ffmpeg)
            .field("profiles", &self.profiles.len())
            .finish()
    }
}

impl Media {
    /// The media settings of `[media]` and the `[[profile]]` tables;
    /// problems name `profile[i].key` (from the file's root).
    pub fn build(
        section: &MediaSection,
        profiles: &[profile::ProfileTable],
    ) -> Result<Media, Vec<Problem>> {
        let mut errs = Vec::new();
        let profiles = profile::parse_profiles(profiles, &mut errs);
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Media {
            ffmpeg: section.ffmpeg.clone(),
            profiles: profiles.into_iter().map(Arc::new).collect(),
            ..Media::default()
        })
    }

    /// The profile a route uses: by number or name; with none given, profile
    /// 1, else the first one defined.
    pub fn resolve(&self, r: Option<&ProfileRef>) -> Result<Arc<Profile>, String> {
        let found = match r {
            Some(ProfileRef::Number(n)) => self.profiles.iter().find(|p| p.number == *n),
            Some(ProfileRef::Name(s)) => self.profiles.iter().find(|p| &p.name == s),
            None => self
                .profiles
                .iter()
                .find(|p| p.number == 1)
                .or_else(|| self.profiles.first()),
        };
        found.cloned().ok_or_else(|| match r {
            Some(ProfileRef::Number(n)) => format!("no [[profile]] with number {n}"),
            Some(ProfileRef::Name(s)) => format!("no [[profile]] named {s:?}"),
            None => "no [[profile]] defined".to_string(),
        })
    }

    /// Whether NVENC can encode here, probed once with a tiny test encode.
    pub async fn nvenc(&self) -> Result<(), String> {
        self.nvenc
            .get_or_init(|| probe_nvenc(self.ffmpeg.clone()))
            .await
            .clone()
    }
}

async fn probe_nvenc(ffmpeg: PathBuf) -> Result<(), String> {
    let mut c = tokio::process::Command::new(&ffmpeg);
    c.args([
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        "color=c=black:s=256x144:d=0.2",
        "-c:v",
        "h264_nvenc",
        "-f",
        "null",
        "-",
    ])
    .env(
        child::TAG_ENV,
        format!("{}:nvenc-probe", std::process::id()),
    )
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .kill_on_drop(true);
    let r = match tokio::time::timeout(Duration::from_secs(15), c.output()).await {
        Err(_) => Err("NVENC test encode timed out".to_string()),
        Ok(Err(e)) => Err(format!(
            "cannot run ffmpeg {:?}: {e}",
            ffmpeg.display().to_string()
        )),
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("failed")
                .trim()
                .to_string();
            Err(format!("NVENC test encode failed: {last}"))
        }
    };
    match &r {
        Ok(()) => {
            tracing::info!("NVENC usable: hardware encoding for profiles with encoder = auto")
        }
        Err(e) => tracing::info!("software encoding (libx264/libx265): {e}"),
    }
    r
}

/// Kills castpoint-tagged processes whose castpoint is gone (a crash left
/// them behind): the tag names the parent pid, and an orphan has been
/// re-parented away from it. Children of live castpoints are left alone.
/// Returns the pids killed.
pub fn reap_stale() -> Vec<u32> {
    let mut killed = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return killed;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let tag = env.split(|b| *b == 0).find_map(|kv| {
            kv.strip_prefix(child::TAG_ENV.as_bytes())
                .and_then(|r| r.strip_prefix(b"="))
        });
        let Some(tag) = tag else { continue };
        let tag = String::from_utf8_lossy(tag);
        let Some(owner) = tag.split(':').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Some(ppid) = parent_of(pid) else { continue };
        if ppid == owner || pid == std::process::id() {
            continue;
        }
        tracing::warn!(
            "killing stale castpoint child {pid} ({tag}): its castpoint {owner} is gone"
        );
        // `kill` keeps this crate free of unsafe libc calls.
        let ok = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            killed.push(pid);
        }
    }
    killed
}

/// Parent pid from `/proc/PID/stat` (field 4, after the parenthesised name).
pub fn parent_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A route's transcoder as snapshots see it.
#[derive(Debug)]
pub struct TranscodeStats {
    pub profile: String,
    pub number: u32,
    pub encoder: Mutex<Option<String>>,
    /// A fault before any child could run (unknown profile).
    pub fault: Mutex<Option<String>>,
    pub child: Arc<ChildStats>,
    started: Instant,
}

impl TranscodeStats {
    pub fn new(profile: &str, number: u32) -> Self {
        TranscodeStats {
            profile: profile.to_string(),
            number,
            encoder: Mutex::new(None),
            fault: Mutex::new(None),
            child: Arc::new(ChildStats::default()),
            started: Instant::now(),
        }
    }

    /// (status, reason): status is "ok", "starting", "overload" or "fault".
    pub fn status(&self) -> (&'static str, Option<String>) {
        if let Some(f) = self.fault.lock().clone() {
            return ("fault", Some(f));
        }
        let c = &self.child;
        if c.progressing(Duration::from_secs(3)) {
            let since = *c.overload_since.lock();
            if let Some(t) = since.filter(|t| t.elapsed() >= Duration::from_secs(3)) {
                let speed = c.last.lock().as_ref().and_then(|(p, _)| p.speed);
                return (
                    "overload",
                    Some(format!(
                        "ffmpeg slower than real time or dropping frames for {} s (speed {})",
                        t.elapsed().as_secs(),
                        speed.map_or("n/a".into(), |s| format!("{s:.2}x"))
                    )),
                );
            }
            return ("ok", None);
        }
        let running = c.running.load(Relaxed);
        let since = (*c.started.lock()).unwrap_or(self.started);
        if running && since.elapsed() < Duration::from_secs(10) {
            return ("starting", None);
        }
        if running {
            return (
                "fault",
                Some("no progress from ffmpeg for 10 s (no input?)".into()),
            );
        }
        let why = c.fault.lock().clone();
        if self.started.elapsed() < Duration::from_secs(2) && why.is_none() {
            return ("starting", None);
        }
        (
            "fault",
            Some(why.unwrap_or_else(|| "ffmpeg is not running".into())),
        )
    }

    pub fn snapshot(&self) -> TranscodeSnapshot {
        let (status, reason) = self.status();
        TranscodeSnapshot {
            profile: self.profile.clone(),
            number: self.number,
            encoder: self.encoder.lock().clone(),
            status,
            reason,
            ffmpeg: self.child.snapshot(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TranscodeSnapshot {
    pub profile: String,
    pub number: u32,
    /// "software (libx264)", "nvenc (h264_nvenc)", ...
    pub encoder: Option<String>,
    pub status: &'static str,
    pub reason: Option<String>,
    pub ffmpeg: ChildSnapshot,
}

/// Runs a route's transcoder until `cancel`: `input` is the route's TS,
/// `output` gets the transcoded TS.
pub async fn run_transcode(
    media: Arc<Media>,
    profile: Result<Arc<Profile>, String>,
    route: String,
    mut input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<Bytes>,
    stats: Arc<TranscodeStats>,
    cancel: CancellationToken,
) {
    let p = match profile {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(route = %route, "transcode: {e}");
            *stats.fault.lock() = Some(e);
            // Keep the queue drained so the route sees no backpressure.
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    c = input.recv() => if c.is_none() { return },
                }
            }
        }
    };
    let enc = if p.encoder == profile::EncoderPref::Software || p.video == profile::VideoCodec::Copy
    {
        Encoder::Software
    } else {
        match media.nvenc().await {
            Ok(()) => Encoder::Nvenc,
            Err(why) => {
                tracing::warn!(
                    route = %route,
                    "profile {:?}: NVENC not usable, encoding in software ({why})",
                    p.name
                );
                Encoder::Software
            }
        }
    };
    let enc = p.encoder_for(enc == Encoder::Nvenc);
    let codec = match (p.video, enc) {
        (profile::VideoCodec::Copy, _) => "copy",
        (profile::VideoCodec::Hevc, Encoder::Nvenc) => "nvenc (hevc_nvenc)",
        (profile::VideoCodec::H264, Encoder::Nvenc) => "nvenc (h264_nvenc)",
        (profile::VideoCodec::Hevc, Encoder::Software) => "software (libx265)",
        (profile::VideoCodec::H264, Encoder::Software) => "software (libx264)",
    };
    *stats.encoder.lock() = Some(codec.to_string());
    let spec = ChildSpec {
        program: media.ffmpeg.clone(),
        args: p.transcode_args(enc),
        secrets: Vec::new(),
        label: format!("transcode:{route}"),
        stdout: true,
    };
    child::supervise(spec, &mut input, Some(output), stats.child.clone(), cancel).await;
}

/// An RTMP(S) push output: one child per destination. `io.up`/`io.error`
/// carry connected/disconnected and the reason, `cs` the child's counters
/// (the engine shows them with the output's). A disabled output runs no
/// child at all (`enabled` false: the child is stopped, and started again
/// when the output is enabled).
#[allow(clippy::too_many_arguments)]
pub async fn run_rtmp_push(
    mut media: tokio::sync::watch::Receiver<Option<Arc<Media>>>,
    mut enabled: tokio::sync::watch::Receiver<bool>,
    target_url: String,
    target: String,
    key: Option<String>,
    label: String,
    mut input: mpsc::Receiver<Bytes>,
    io: Arc<IoStats>,
    cs: Arc<ChildStats>,
    cancel: CancellationToken,
) {
    io.set_error("waiting for the [media] settings");
    let media = tokio::select! {
        _ = cancel.cancelled() => return,
        m = media.wait_for(|m| m.is_some()) => match m.ok().and_then(|m| m.clone()) {
            Some(m) => m,
            None => return,
        },
    };
    // `_secret` (the key file) is kept until the output stops.
    let Some((spec, _secret)) = rtmp_push_spec(&media, target_url, target, key, label, &io) else {
        return;
    };
    loop {
        let on = *enabled.borrow_and_update();
        if !on && !wait_enabled(&mut enabled, &mut input, &io, &cancel).await {
            break;
        }
        io.set_error("connecting");
        let run = cancel.child_token();
        rtmp_push_once(&spec, &mut input, &mut enabled, &io, &cs, &run).await;
        // Ended for good unless only this run was stopped (disabled).
        if cancel.is_cancelled() || !run.is_cancelled() {
            break;
        }
    }
    io.clients.store(0, Relaxed);
    if cancel.is_cancelled() {
        io.set_error("stopped");
    }
}

/// The RTMP push child and the file holding its key, if any (the file is
/// removed when dropped). None when the key cannot be stored (the reason
/// is on `io`).
fn rtmp_push_spec(
    media: &Media,
    target_url: String,
    target: String,
    key: Option<String>,
    label: String,
    io: &IoStats,
) -> Option<(ChildSpec, Option<KeyFile>)> {
    // The key reaches ffmpeg through a preset file in a private directory
    // (0700, file 0600), not its command line, which every local user can
    // read in /proc/PID/cmdline (`ps`). ffmpeg applies the file's
    // `rtmp_playpath=KEY` to the output's RTMP protocol.
    let key = key.filter(|k| !k.is_empty());
    let secret = match &key {
        Some(k) => match KeyFile::create(&label, k) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!("rtmp push {label}: {e}");
                io.set_error(e);
                return None;
            }
        },
        None => None,
    };
    let (url, preset) = match &secret {
        Some(f) => (target_url, Some(f.path.display().to_string())),
        None => (target, None),
    };
    let spec = ChildSpec {
        program: media.ffmpeg.clone(),
        args: profile::rtmp_push_args(&url, preset.as_deref()),
        secrets: key.into_iter().collect(),
        label,
        stdout: false,
    };
    Some((spec, secret))
}

/// Waits, shown as disabled, until a disabled push output is enabled
/// again: true then, false when the output is going away instead.
async fn wait_enabled(
    enabled: &mut tokio::sync::watch::Receiver<bool>,
    input: &mut mpsc::Receiver<Bytes>,
    io: &IoStats,
    cancel: &CancellationToken,
) -> bool {
    io.clients.store(0, Relaxed);
    io.set_error("disabled");
    tokio::select! {
        _ = cancel.cancelled() => return false,
        r = enabled.wait_for(|e| *e) => if r.is_err() { return false },
    }
    // What was queued before the output was disabled is stale.
    while input.try_recv().is_ok() {}
    true
}

/// Runs the push child until it ends for good or `run` is cancelled (here
/// when the output is disabled), keeping `io` up to date meanwhile.
async fn rtmp_push_once(
    spec: &ChildSpec,
    input: &mut mpsc::Receiver<Bytes>,
    enabled: &mut tokio::sync::watch::Receiver<bool>,
    io: &IoStats,
    cs: &Arc<ChildStats>,
    run: &CancellationToken,
) {
    let sup = child::supervise(spec.clone(), input, None, cs.clone(), run.clone());
    tokio::pin!(sup);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_size = 0u64;
    loop {
        tokio::select! {
            _ = &mut sup => break,
            r = enabled.changed(), if !run.is_cancelled() => {
                if r.is_err() || !*enabled.borrow() {
                    // Disabled (or the output is going away): stop the
                    // child; `sup` returns once it is reaped.
                    run.cancel();
                }
            }
            _ = tick.tick() => rtmp_push_progress(io, cs, &mut last_size),
        }
    }
}

/// Shows a push child's state on its output: connected = ffmpeg is
/// writing to the server (its progress keeps coming), counting what it
/// wrote since `last_size`; otherwise the last error is the reason.
fn rtmp_push_progress(io: &IoStats, cs: &ChildStats, last_size: &mut u64) {
    if cs.progressing(Duration::from_secs(3)) {
        if !io.up.load(Relaxed) {
            io.set_up(None);
        }
        io.clients.store(1, Relaxed);
        let size = cs
            .last
            .lock()
            .as_ref()
            .and_then(|(p, _)| p.total_size)
            .unwrap_or(0);
        if size > *last_size {
            io.add((size - *last_size) as usize);
        }
        *last_size = size;
    } else {
        *last_size = 0;
        io.clients.store(0, Relaxed);
        let why = cs
            .fault
            .lock()
            .clone()
            .or_else(|| cs.running.load(Relaxed).then(|| "connecting".to_string()))
            .unwrap_or_else(|| "not running".into());
        io.set_error(why);
    }
}

/// A stream key in a file only castpoint's user can read: a fresh 0700
/// directory under the temp dir holding a 0600 ffmpeg preset file
/// (`rtmp_playpath=KEY`). Removed when dropped (the output stops).
struct KeyFile {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl KeyFile {
    fn create(label: &str, key: &str) -> Result<KeyFile, String> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        // One line `name=value` (ffmpeg reads at most 999 bytes of it).
        if key.contains(['\n', '\r']) || key.len() > 999 {
            return Err("the stream key must be one line of at most 999 bytes".into());
        }
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tag: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dir = std::env::temp_dir().join(format!(
            "castpoint-{}-{tag}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Relaxed)
        ));
        // create (not create_all): fails if it exists, so nobody can have
        // prepared it for us.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create a private directory for the stream key: {e}"))?;
        let path = dir.join("push.ffpreset");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| writeln!(f, "rtmp_playpath={key}"));
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!("cannot write the stream key file: {e}"));
        }
        Ok(KeyFile { dir, path })
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::progress::Progress;
    use super::*;

    fn media(text: &str) -> Result<Media, Vec<crate::config::ConfigError>> {
        let c = crate::config::Config::from_text("t.toml", text, std::path::Path::new("."))
            .map_err(|e| e.0)?;
        Ok(Media::build(&c.server.media, &c.server.profile).expect("validated"))
    }

    #[test]
    fn media_section_and_profile_resolution() {
        let m = media(
            "[media]\nffmpeg = \"/opt/ff/ffmpeg\"\n[[profile]]\nnumber = 3\nname = \"a\"\n[[profile]]\nnumber = 1\nname = \"b\"\n",
        )
        .expect("valid");
        assert_eq!(m.ffmpeg, PathBuf::from("/opt/ff/ffmpeg"));
        assert_eq!(m.resolve(None).map(|p| p.number), Ok(1));
        assert_eq!(
            m.resolve(Some(&ProfileRef::Name("a".into())))
                .map(|p| p.number),
            Ok(3)
        );
        assert_eq!(
            m.resolve(Some(&ProfileRef::Number(9))).map(|p| p.number),
            Err("no [[profile]] with number 9".into())
        );
        assert_eq!(
            Media::default().resolve(None).map(|p| p.number),
            Err("no [[profile]] defined".into())
        );
        let e = media("[media]\nffmpeg = 3\nffprobe = \"x\"\n").expect_err("invalid");
        let mut keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["media.ffmpeg", "media.ffprobe"]);
    }

    fn prog(speed: f64, drops: u64) -> Progress {
        Progress {
            speed: Some(speed),
            drop_frames: Some(drops),
            ..Progress::default()
        }
    }

    #[test]
    fn status_ok_overload_fault() {
        let t = TranscodeStats::new("p", 1);
        assert_eq!(t.status().0, "starting");
        t.child.running.store(true, Relaxed);
        t.child.on_progress(prog(1.0, 0));
        assert_eq!(t.status(), ("ok", None));
        // Slow, but not yet for 3 s: still OK.
        t.child.on_progress(prog(0.5, 0));
        assert_eq!(t.status().0, "ok");
        *t.child.overload_since.lock() = Instant::now().checked_sub(Duration::from_secs(4));
        t.child.on_progress(prog(0.5, 0));
        let (s, why) = t.status();
        assert_eq!(s, "overload");
        assert!(why.unwrap_or_default().contains("speed 0.50x"));
        // Rising drops at full speed count as overload too.
        t.child.on_progress(prog(1.0, 0));
        assert_eq!(t.status().0, "ok");
        t.child.on_progress(prog(1.0, 5));
        assert!(t.child.overload_since.lock().is_some());
        // The child ends: FAULT with its reason; drops are kept.
        t.child.running.store(false, Relaxed);
        *t.child.fault.lock() = Some("ffmpeg exited with status 1: boom".into());
        assert_eq!(
            t.status(),
            ("fault", Some("ffmpeg exited with status 1: boom".into()))
        );
        assert_eq!(t.child.drop_frames(), 5);
        *t.fault.lock() = Some("no [[profile]] named \"x\"".into());
        assert_eq!(t.status().0, "fault");
    }
}

//! Rotating TS recordings: a new file per segment and whenever data resumes; a write error (a full disk) is reported (output down with the error, a log line, an event) and retried with backoff only once free space is back, and rotation never deletes a non-empty recording for an empty one.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::stats::IoStats;
use super::{EngineEvent, EventKind, Events};

/// First wait after a failure before a new file is tried, and the most it
/// grows to: a full disk is not fixed in a second, and each try may leave
/// (and delete) an empty file.
const RETRY_FIRST: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Free space a failed recording waits for before it opens a file again.
pub(crate) const MIN_FREE: u64 = 1 << 20;
/// While failing, a reminder in the log at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Where the recorder writes and what it reports to.
pub(crate) struct Recorder {
    pub dir: PathBuf,
    pub route: String,
    pub output: String,
    pub segment: Duration,
    /// Completed non-empty recordings kept besides the one being written
    /// (0 = all).
    pub keep: usize,
    pub stats: Arc<IoStats>,
    pub events: Events,
}

struct Open {
    w: tokio::io::BufWriter<tokio::fs::File>,
    path: PathBuf,
    opened: Instant,
}

/// A failure in progress: nothing is opened before `next_try`.
struct Failing {
    next_try: Instant,
    wait: Duration,
    dropped_bytes: u64,
    last_log: Instant,
}

/// Free bytes for unprivileged writers on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available().saturating_mul(s.fragment_size()))
}

impl Recorder {
    /// Runs until cancelled or the route drops the queue.
    pub async fn run(self, mut rx: mpsc::Receiver<Bytes>, cancel: CancellationToken) {
        let mut file: Option<Open> = None;
        let mut failing: Option<Failing> = None;
        // Empty leftovers of an earlier run (a crash right after a file was
        // opened) go; completed recordings are trimmed to `keep`.
        if tokio::fs::create_dir_all(&self.dir).await.is_ok() {
            prune(&self.dir, &self.route, self.keep).await;
        }
        self.stats.set_up(None);
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => None,
                r = tokio::time::timeout(Duration::from_secs(1), rx.recv()) => match r {
                    Ok(Some(c)) => Some(Some(c)),
                    Ok(None) => None,
                    Err(_) => Some(None),
                },
            };
            let Some(next) = next else { break };
            let Some(chunk) = next else {
                // A pause: close the file so it is complete on disk.
                if let Some(f) = file.take() {
                    if let Err(e) = self.finish(f).await {
                        self.fail(&mut failing, e);
                    }
                }
                continue;
            };
            if let Some(fl) = failing.as_mut() {
                let now = Instant::now();
                if now < fl.next_try {
                    self.drop_chunk(fl, chunk.len());
                    continue;
                }
                if free_bytes(&self.dir).is_some_and(|f| f < MIN_FREE) {
                    // Still full: no file is opened; looking again costs
                    // one statvfs, so the check does not back off.
                    fl.next_try = now + RETRY_FIRST;
                    self.drop_chunk(fl, chunk.len());
                    continue;
                }
            }
            if file
                .as_ref()
                .is_some_and(|f| f.opened.elapsed() >= self.segment)
            {
                if let Some(f) = file.take() {
                    if let Err(e) = self.finish(f).await {
                        self.fail(&mut failing, e);
                        continue;
                    }
                }
            }
            if file.is_none() {
                match self.open().await {
                    Ok(f) => file = Some(f),
                    Err(e) => {
                        self.fail(&mut failing, e);
                        continue;
                    }
                }
            }
            let Some(f) = file.as_mut() else { continue };
            let mut r = f.w.write_all(&chunk).await;
            if r.is_ok() && failing.is_some() {
                // After a failure, recovery counts only once data reached
                // the disk, not the buffer.
                r = f.w.flush().await;
            }
            match r {
                Ok(()) => {
                    self.stats.add(chunk.len());
                    if failing.take().is_some() {
                        self.stats.set_up(None);
                        tracing::info!(
                            "recording {}/{}: writing again ({})",
                            self.route,
                            self.output,
                            f.path.display()
                        );
                        self.events.emit(EngineEvent::new(
                            &self.route,
                            EventKind::OutputRecovered {
                                output: self.output.clone(),
                            },
                        ));
                    }
                }
                Err(e) => {
                    let msg = format!("{}: {e}", f.path.display());
                    if let Some(f) = file.take() {
                        self.discard(f).await;
                    }
                    self.fail(&mut failing, msg);
                }
            }
        }
        if let Some(f) = file.take() {
            if let Err(e) = self.finish(f).await {
                tracing::warn!("recording {}/{}: {e}", self.route, self.output);
            }
        }
        self.stats.clients.store(0, Relaxed);
    }

    async fn open(&self) -> Result<Open, String> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let name = format!(
            "{}-{}.ts",
            self.route,
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        );
        let path = self.dir.join(name);
        let f = tokio::fs::File::create(&path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        self.stats.clients.store(1, Relaxed);
        Ok(Open {
            w: tokio::io::BufWriter::with_capacity(256 * 1024, f),
            path,
            opened: Instant::now(),
        })
    }

    /// Closes a file whose data is complete, then applies `keep`.
    async fn finish(&self, mut f: Open) -> Result<(), String> {
        self.stats.clients.store(0, Relaxed);
        let r = f.w.flush().await;
        if let Err(e) = r {
            let msg = format!("{}: {e}", f.path.display());
            self.discard(f).await;
            return Err(msg);
        }
        drop(f.w);
        prune(&self.dir, &self.route, self.keep).await;
        Ok(())
    }

    /// Drops a file whose writes failed: an empty one is deleted (it is no
    /// recording), a partial one is kept (its data is good up to the failure).
    async fn discard(&self, f: Open) {
        self.stats.clients.store(0, Relaxed);
        drop(f.w);
        if tokio::fs::metadata(&f.path)
            .await
            .is_ok_and(|m| m.len() == 0)
        {
            let _ = tokio::fs::remove_file(&f.path).await;
        }
    }

    fn drop_chunk(&self, fl: &mut Failing, len: usize) {
        self.stats.dropped(len);
        fl.dropped_bytes += len as u64;
        if fl.last_log.elapsed() >= LOG_EVERY {
            fl.last_log = Instant::now();
            tracing::warn!(
                "recording {}/{}: still failing ({}), {} bytes not recorded so far",
                self.route,
                self.output,
                self.stats.error.lock().as_deref().unwrap_or("?"),
                fl.dropped_bytes
            );
        }
    }

    /// Enters (or extends) the failed state: the output reports the error,
    /// and the first failure of an episode is logged and announced.
    fn fail(&self, failing: &mut Option<Failing>, msg: String) {
        self.stats.set_error(msg.clone());
        let now = Instant::now();
        match failing.as_mut() {
            Some(fl) => {
                fl.wait = (fl.wait * 2).min(RETRY_MAX);
                fl.next_try = now + fl.wait;
            }
            None => {
                tracing::warn!(
                    "recording {}/{} failed: {msg}; not recording, next try in {} s once {} MiB are free",
                    self.route,
                    self.output,
                    RETRY_FIRST.as_secs(),
                    MIN_FREE >> 20
                );
                self.events.emit(EngineEvent::new(
                    &self.route,
                    EventKind::OutputFailed {
                        output: self.output.clone(),
                        error: msg,
                    },
                ));
                *failing = Some(Failing {
                    next_try: now + RETRY_FIRST,
                    wait: RETRY_FIRST,
                    dropped_bytes: 0,
                    last_log: now,
                });
            }
        }
    }
}

/// Deletes the route's empty recordings and keeps the newest `keep`
/// non-empty ones (0 = all). Called with no file open, so only completed
/// recordings count and none is deleted to make room for an empty one.
async fn prune(dir: &Path, route: &str, keep: usize) {
    let mut full = Vec::new();
    let prefix = format!("{route}-");
    if let Ok(mut rd) = tokio::fs::read_dir(dir).await {
        while let Ok(Some(e)) = rd.next_entry().await {
            let n = e.file_name().to_string_lossy().to_string();
            if !(n.starts_with(&prefix) && n.ends_with(".ts")) {
                continue;
            }
            match e.metadata().await {
                Ok(m) if m.is_file() && m.len() == 0 => {
                    let _ = tokio::fs::remove_file(e.path()).await;
                }
                Ok(m) if m.is_file() => full.push(n),
                _ => {}
            }
        }
    }
    if keep == 0 {
        return;
    }
    // Timestamps in the names sort chronologically.
    full.sort();
    if full.len() > keep {
        for n in &full[..full.len() - keep] {
            let _ = tokio::fs::remove_file(dir.join(n)).await;
        }
    }
}

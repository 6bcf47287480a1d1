//! The hand-over from an input to its route: an input task (UDP, HTTP, SRT, or a media adapter's RTMP/RTSP ingest) counts its chunks of whole TS packets, checks their continuity and sends them to the route task.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::mpsc;

use super::stats::IoStats;
use super::ts::CcChecker;

/// A chunk of whole TS packets read by the input with key `idx` (a key is
/// stable for the life of the input task and never reused in a route; the
/// route task maps keys to priority positions, which hot input changes
/// move).
pub struct InputMsg {
    pub idx: usize,
    pub data: BytesMut,
}

/// Shared plumbing of every input: counts, checks continuity, and hands
/// chunks to the route.
pub struct Feed {
    pub idx: usize,
    pub tx: mpsc::Sender<InputMsg>,
    pub stats: Arc<IoStats>,
    pub cc: CcChecker,
    /// The route's read pace in µs (see the engine's `route::read_pace`).
    pub pace: Arc<std::sync::atomic::AtomicU64>,
}

impl Feed {
    pub fn new(
        idx: usize,
        tx: mpsc::Sender<InputMsg>,
        stats: Arc<IoStats>,
        pace: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        Feed {
            idx,
            tx,
            stats,
            cc: CcChecker::default(),
            pace,
        }
    }

    /// How long the input may leave datagrams in its socket before
    /// reading them (see the engine's `route::read_pace`); zero: read at once.
    pub fn pace(&self) -> Duration {
        Duration::from_micros(self.pace.load(Relaxed))
    }

    /// Returns false when the route is gone.
    pub async fn push(&mut self, data: BytesMut) -> bool {
        if data.is_empty() {
            return true;
        }
        self.account(&data);
        self.tx
            .send(InputMsg {
                idx: self.idx,
                data,
            })
            .await
            .is_ok()
    }

    /// Same, from a blocking (libsrt) thread.
    pub fn push_blocking(&mut self, data: BytesMut) -> bool {
        if data.is_empty() {
            return true;
        }
        self.account(&data);
        self.tx
            .blocking_send(InputMsg {
                idx: self.idx,
                data,
            })
            .is_ok()
    }

    fn account(&mut self, data: &[u8]) {
        self.stats.add(data.len());
        let e = self.cc.check(data);
        if e > 0 {
            self.stats.cc_errors.fetch_add(e, Relaxed);
        }
    }
}

//! Audit of refused attempts that never reach `PointDb::write`: REST writes refused while parsing (bad JSON, wrong type, not writable, unknown point) and requests the guard refuses (401/403 on writes, any rejected credential), rate-bounded.
//!
//! The rule (docs/security.md, "Audit of refused attempts"): every refused
//! *write* attempt and every rejected credential is recorded (kind `write`
//! or `auth`, result `refused: <reason>`, with protocol, peer and user);
//! anonymous reads refused for lack of a credential are not (a scanner
//! would flood the log), they are counted in `/metrics` only. At most
//! [`PER_WINDOW`] records per [`WINDOW`] are written individually; the
//! rest are counted and summarised in one `audit` record (and a warning)
//! when the window ends, so a flood cannot grow the log without bound.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::persist::Store;
use crate::points::Source;

/// Individually audited refusals per window.
pub const PER_WINDOW: u32 = 100;
pub const WINDOW: Duration = Duration::from_secs(60);

/// Refusals not audited individually since start (rate bound).
pub static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

struct Budget {
    start: Option<Instant>,
    used: u32,
    dropped: u64,
}

static BUDGET: Mutex<Budget> = Mutex::new(Budget {
    start: None,
    used: 0,
    dropped: 0,
});

/// Takes one record from the budget. Returns whether this one may be
/// written, and the count dropped in the window that just ended (to be
/// summarised), if any.
fn take(now: Instant) -> (bool, u64) {
    let mut b = BUDGET.lock();
    let mut ended = 0;
    if b.start.is_none_or(|s| now.duration_since(s) >= WINDOW) {
        ended = std::mem::take(&mut b.dropped);
        b.start = Some(now);
        b.used = 0;
    }
    if b.used < PER_WINDOW {
        b.used += 1;
        (true, ended)
    } else {
        b.dropped += 1;
        SUPPRESSED.fetch_add(1, Relaxed);
        (false, ended)
    }
}

/// Records one refused attempt: `kind` is `write` (a command refused) or
/// `auth` (a credential or role refused); `target` the point or path.
pub fn record(store: &Store, kind: &str, target: &str, src: &Source, reason: &str, detail: &str) {
    let (ok, ended) = take(Instant::now());
    if ended > 0 {
        tracing::warn!(
            "{ended} refused attempts were not audited individually (more than {PER_WINDOW} a minute)"
        );
        let _ = store.record_event(
            "audit",
            None,
            &Source::internal(),
            "suppressed",
            &format!(
                "{ended} refused attempts not audited individually (rate limit {PER_WINDOW}/min)"
            ),
        );
    }
    if !ok {
        return;
    }
    let result = format!("refused: {reason}");
    if let Err(e) = store.record_event(kind, Some(target), src, &result, detail) {
        tracing::warn!("refused {kind} attempt on {target} not audited: {e}");
    }
}

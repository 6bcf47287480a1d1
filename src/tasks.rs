//! The one place castpoint starts OS threads; async tasks go on the app's `TaskTracker` (`tasks.spawn`, `engine::spawn_on`) so shutdown can wait for them.
//!
//! `tests/tidy.rs` refuses `tokio::spawn`, `thread::spawn` and
//! `thread::Builder` anywhere else in `src/`, so every thread is named here
//! and its owner states how it ends.

use std::io;
use std::thread::JoinHandle;

/// Starts a named OS thread. Threads are for work that must not run on a
/// tokio worker (a route runtime's `block_on`, a timer libsrt's callbacks
/// cannot drive); the caller documents how the thread ends.
pub fn spawn_thread<F, T>(name: impl Into<String>, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new().name(name.into()).spawn(f)
}

/// Starts an async task whose `JoinHandle` its owner keeps and ends itself
/// (aborts or awaits it when the owner stops): a helper task inside a part
/// that is itself on the `TaskTracker` (the MQTT session's event-loop
/// poller, the BACnet transport's receive filter). Never for a task nobody
/// joins: those go on the tracker.
pub fn spawn_owned<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(f)
}

/// The first instant at or after `at` on a process-wide grid of `period`
/// (counted from one epoch, taken at the first call). Periodic looks that
/// start on the same grid expire in the same turn of the runtime's timer
/// (one return from the poller instead of one each; the runtime may still
/// hand the second task to its other worker). Measured on an idle
/// castpoint this was within the noise (docs/routes.md, *What castpoint
/// costs before it relays anything*); it costs nothing either.
pub fn on_grid(at: std::time::Instant, period: std::time::Duration) -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    let period_ns = period.as_nanos().max(1);
    let since = at.saturating_duration_since(epoch).as_nanos();
    let steps = since.div_ceil(period_ns);
    let offset = steps.saturating_mul(period_ns);
    // Beyond u64 nanoseconds (584 years after start) keep `at` itself.
    match u64::try_from(offset) {
        Ok(ns) => (epoch + std::time::Duration::from_nanos(ns)).max(at),
        Err(_) => at,
    }
}

#[cfg(test)]
mod tests {
    use super::on_grid;
    use std::time::{Duration, Instant};

    #[test]
    fn grid_points_are_shared_and_never_early() {
        let q = Duration::from_millis(250);
        let s = Duration::from_secs(1);
        let now = Instant::now();
        for k in 0..20u32 {
            let at = now + Duration::from_millis(37) * k;
            let a = on_grid(at, q);
            let b = on_grid(at, s);
            assert!(a >= at && a - at < q, "{k}: not the next 250-ms point");
            assert!(b >= at && b - at < s, "{k}: not the next 1-s point");
            // Every 1-s point is a 250-ms point: the looks line up.
            assert_eq!(on_grid(b, q), b, "{k}");
            assert_eq!(on_grid(a, q), a, "{k}: a grid point maps to itself");
        }
    }
}

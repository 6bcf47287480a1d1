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

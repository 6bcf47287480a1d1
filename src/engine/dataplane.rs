//! The data plane: one single-threaded tokio runtime per core that routes' input, route and output tasks run on, and `spawn_on` to place a task there.

use super::*;

/// The routes' runtimes: one single-threaded tokio runtime per core, each
/// on its own thread; a route's input, route and output tasks all run on
/// one of them (round robin over routes). On the shared multi-threaded
/// runtime every wake-up of an idle worker woke a second one to look for
/// work to steal, so a lightly loaded route cost two threads' context
/// switches per chunk; here a chunk goes from input to outputs on one
/// thread with no hand-off. The control plane (HTTP, protocols, the
/// engine's own commands) stays on the main runtime.
pub(super) struct DataPlane {
    handles: Vec<tokio::runtime::Handle>,
    next: std::sync::atomic::AtomicUsize,
    /// Ends the runtimes' threads when the engine is dropped.
    stop: CancellationToken,
}

impl DataPlane {
    pub(super) fn new() -> DataPlane {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(64));
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            match Self::start(i, stop.clone()) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    tracing::warn!("route runtime {i}: {e}; routes share the main runtime");
                    break;
                }
            }
        }
        DataPlane {
            handles,
            next: Default::default(),
            stop,
        }
    }

    /// Builds runtime `i` and starts its thread, which runs until `stop`.
    pub(super) fn start(
        i: usize,
        stop: CancellationToken,
    ) -> std::io::Result<tokio::runtime::Handle> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("cp-route{i}-blk"))
            .build()?;
        let h = rt.handle().clone();
        // Ends when `stop` is cancelled (the engine's shutdown).
        crate::tasks::spawn_thread(format!("cp-route{i}"), move || {
            rt.block_on(stop.cancelled())
        })?;
        Ok(h)
    }

    /// The runtime for a new route (None: the caller's).
    pub(super) fn pick(&self) -> Option<tokio::runtime::Handle> {
        if self.handles.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(self.handles[i % self.handles.len()].clone())
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Spawns `fut` on `tracker`, on the route's runtime when it has one.
pub(super) fn spawn_on<F>(
    tracker: &TaskTracker,
    rt: Option<&tokio::runtime::Handle>,
    fut: F,
) -> JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match rt {
        Some(h) => tracker.spawn_on(fut, h),
        None => tracker.spawn(fut),
    }
}

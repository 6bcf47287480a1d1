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
        // The control plane's priority, read here on the thread that
        // builds the data plane: every data-plane thread is set to this
        // plus `DATA_PLANE_NICE`, an absolute value, because a thread
        // inherits its creator's nice and the blocking pool's threads are
        // created by the already lowered runtime thread (a relative step
        // put them at +10).
        let nice = data_plane_nice();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("cp-route{i}-blk"))
            // The blocking pool's threads (recording and HLS file writes)
            // yield to the control plane like the runtime's own thread.
            .on_thread_start(move || set_nice(nice))
            .build()?;
        let h = rt.handle().clone();
        // Ends when `stop` is cancelled (the engine's shutdown).
        crate::tasks::spawn_thread(format!("cp-route{i}"), move || {
            set_nice(nice);
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

/// How much lower than the rest of the process the data plane runs (a
/// nice value, per thread). Media saturating the cores must not starve
/// the BMS: with the data plane at the same priority, 500 routes that
/// kept both cores busy left BACnet at p99 5.2 ms and REST at 9 ms
/// (bench/hls_scale.py, issue 25 item 3). A lower priority only matters
/// when the cores are contended, and then the scheduler still gives a
/// nice-5 thread about a third of a contended core's time: media is
/// delayed by a control-plane burst, never stopped by it.
pub(crate) const DATA_PLANE_NICE: i32 = 5;

/// The nice value for data-plane threads: the calling thread's plus
/// `DATA_PLANE_NICE`, at most 19 (the kernel's lowest priority).
fn data_plane_nice() -> i32 {
    let tid = rustix::thread::gettid();
    let base = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    (base + DATA_PLANE_NICE).min(19)
}

/// Sets the calling thread's nice value (Linux nice values are per
/// thread). Raising it needs no privilege; a refusal (a seccomp filter,
/// say) is logged and the thread runs at the process's priority, as before.
fn set_nice(nice: i32) {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::warn!("data plane thread: cannot lower its priority: {e}");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("getpriority")
    }

    /// Media tasks and their blocking writes run below the control plane,
    /// so that saturated cores still answer the BMS first: both exactly
    /// `DATA_PLANE_NICE` below (the blocking threads are created by the
    /// runtime's thread and once ended up twice as low). Run at a nice of
    /// 10 or more (`nice -n 19 cargo test`) the kernel's cap of 19 hides
    /// the difference; the suite runs at 0.
    #[test]
    fn the_data_plane_runs_below_the_control_plane() {
        let base = nice_of_this_thread();
        let want = (base + DATA_PLANE_NICE).min(19);
        let stop = CancellationToken::new();
        let h = DataPlane::start(0, stop.clone()).expect("data plane runtime");
        let (tx, rx) = std::sync::mpsc::channel();
        h.spawn(async move {
            let on_runtime = nice_of_this_thread();
            let blocking = tokio::task::spawn_blocking(nice_of_this_thread)
                .await
                .expect("blocking task");
            let _ = tx.send((on_runtime, blocking));
        });
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the data plane answered");
        stop.cancel();
        assert_eq!(got, (want, want), "runtime thread, blocking-pool thread");
        // The caller's own priority is left alone.
        assert_eq!(nice_of_this_thread(), base);
    }
}

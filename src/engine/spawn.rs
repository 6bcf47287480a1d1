//! Spawning: how a route, its inputs and its outputs become tasks on the data plane, and how a route is stopped.

use super::*;

impl Engine {
    /// Takes an output's slot out of its running route.
    pub(super) async fn detach(
        &self,
        st: &EngState,
        route: &str,
        name: &str,
    ) -> Option<Box<OutputSlot>> {
        let rt = st.running.get(route)?;
        let (tx, rx) = oneshot::channel();
        rt.cmd
            .send(RouteCmd::RemoveOutput(name.to_string(), tx))
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    pub(super) fn spawn_output(
        &self,
        route: &str,
        spec: OutputSpec,
        cancel: CancellationToken,
        rt: Option<&tokio::runtime::Handle>,
    ) -> (OutputSlot, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(spec.queue.max(1));
        let stats = Arc::new(IoStats::default());
        let (handle, extra) = self.output_task(route, &spec, rx, stats.clone(), cancel.clone(), rt);
        (
            OutputSlot {
                spec,
                tx,
                stats,
                cancel,
                loss: Default::default(),
                direct: extra.direct,
                enabled_tx: extra.enabled_tx,
                child: extra.child,
            },
            handle,
        )
    }

    /// Spawns the task of one output of `route`, by kind, fed from `rx`
    /// (dropped by outputs the route task sends to itself).
    fn output_task(
        &self,
        route: &str,
        spec: &OutputSpec,
        rx: mpsc::Receiver<bytes::Bytes>,
        s: Arc<IoStats>,
        c: CancellationToken,
        rt: Option<&tokio::runtime::Handle>,
    ) -> (JoinHandle<()>, SlotExtras) {
        let t = &self.inner.tasks;
        let mut extra = SlotExtras::default();
        let handle = match &spec.kind {
            OutputKind::Udp { dest, ttl } => {
                extra.direct = udp_direct(*dest, *ttl, &s);
                drop(rx);
                spawn_on(t, rt, output::run_udp(c))
            }
            OutputKind::Http { path } => spawn_on(
                t,
                rt,
                output::run_http(rx, path.clone(), self.inner.http.clone(), spec.queue, s, c),
            ),
            OutputKind::Record { segment, keep } => {
                let rec = self.recorder(route, &spec.name, *segment, *keep, s);
                spawn_on(t, rt, rec.run(rx, c))
            }
            OutputKind::Hls {
                path,
                segment,
                window,
                store,
            } => {
                let dir = (*store == spec::HlsStore::Disk)
                    .then(|| self.inner.data_dir.join("hls").join(path));
                let hls = self.inner.hls.clone();
                let task = hls::run(rx, path.clone(), hls, *segment, *window, dir, s, c);
                spawn_on(t, rt, task)
            }
            OutputKind::Srt(sp) if sp.mode == SrtMode::Listener => {
                let (ev, route, name) = (
                    self.inner.events.clone(),
                    route.to_string(),
                    spec.name.clone(),
                );
                let (out, task) = srt::listener_output(sp.clone(), s, c, ev, route, name);
                extra.direct = out.map(route::Direct::Srt);
                drop(rx);
                spawn_on(t, rt, task)
            }
            OutputKind::Srt(sp) => spawn_on(t, rt, srt::run_caller_output(rx, sp.clone(), s, c)),
            OutputKind::Rtmp { url, key } => {
                let (en_tx, en_rx) = tokio::sync::watch::channel(spec.enabled);
                extra.enabled_tx = Some(en_tx);
                let cs = Arc::new(crate::media::ffmpeg::child::ChildStats::default());
                extra.child = Some(cs.clone());
                let label = format!("rtmp:{route}/{}", spec.name);
                let push = self.rtmp_push(url, key.as_deref(), label, en_rx, rx, s, cs, c);
                spawn_on(t, rt, push)
            }
        };
        (handle, extra)
    }

    /// A recording output's writer: its segments go under
    /// `<data dir>/recordings/<route>`.
    fn recorder(
        &self,
        route: &str,
        output: &str,
        segment: Duration,
        keep: usize,
        stats: Arc<IoStats>,
    ) -> record::Recorder {
        record::Recorder {
            dir: self.inner.data_dir.join("recordings").join(route),
            route: route.to_string(),
            output: output.to_string(),
            segment,
            keep,
            stats,
            events: self.inner.events.clone(),
        }
    }

    /// An RTMP push output's task (`media::ffmpeg::run_rtmp_push`). A key
    /// typed inside `url` (the form CDNs show) is split off so it reaches
    /// ffmpeg through the private preset file too, never its command line.
    #[allow(clippy::too_many_arguments)]
    fn rtmp_push(
        &self,
        url: &str,
        key: Option<&str>,
        label: String,
        enabled: tokio::sync::watch::Receiver<bool>,
        rx: mpsc::Receiver<bytes::Bytes>,
        io: Arc<IoStats>,
        child: Arc<crate::media::ffmpeg::child::ChildStats>,
        cancel: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        use crate::media::ffmpeg::profile::{rtmp_target, split_rtmp_key};
        let (url, key) = match key.filter(|k| !k.is_empty()) {
            Some(k) => (url.to_string(), Some(k.to_string())),
            None => match split_rtmp_key(url) {
                Some((base, k)) => (base, Some(k)),
                None => (url.to_string(), None),
            },
        };
        let target = rtmp_target(&url, key.as_deref());
        let media = self.inner.media.subscribe();
        crate::media::ffmpeg::run_rtmp_push(
            media, enabled, url, target, key, label, rx, io, child, cancel,
        )
    }

    /// Spawns one input task on the route's tracker. `key` identifies the
    /// input's chunks to the route task for as long as it runs, whatever
    /// its position after hot input changes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn spawn_input(
        &self,
        route: &str,
        tracker: &TaskTracker,
        rt: Option<&tokio::runtime::Handle>,
        key: usize,
        inp: &InputSpec,
        tx: mpsc::Sender<route::InputMsg>,
        route_cancel: &CancellationToken,
        pace: &Arc<AtomicU64>,
    ) -> RunningInput {
        let stats = Arc::new(IoStats::default());
        let feed = input::Feed::new(key, tx, stats.clone(), pace.clone());
        let cancel = route_cancel.child_token();
        let c = cancel.clone();
        let handle = match &inp.kind {
            InputKind::Udp {
                bind,
                multicast,
                interface,
            } => {
                let (b, m, i) = (*bind, *multicast, *interface);
                spawn_on(tracker, rt, async move {
                    input::run_udp(feed, b, m, i, c).await
                })
            }
            InputKind::Http { url } => {
                let url = url.clone();
                spawn_on(
                    tracker,
                    rt,
                    async move { input::run_http(feed, url, c).await },
                )
            }
            InputKind::Srt(sp) => {
                let who = srt::InputId {
                    events: self.inner.events.clone(),
                    route: route.to_string(),
                    input: inp.name.clone(),
                };
                let sp = sp.clone();
                tracker.spawn_blocking(move || srt::run_input(feed, sp, who, c))
            }
            InputKind::Generator { bitrate } => {
                let b = *bitrate;
                spawn_on(tracker, rt, async move {
                    input::run_generator(feed, b, c).await
                })
            }
            InputKind::Rtmp(r) => {
                let (r, reg) = (r.clone(), self.inner.rtmp.clone());
                spawn_on(tracker, rt, async move {
                    crate::media::rtmp::run_input(feed, r, reg, c).await
                })
            }
            InputKind::Rtsp(sp) => {
                let sp = sp.clone();
                spawn_on(tracker, rt, async move {
                    crate::media::rtsp::run_input(feed, sp, c).await
                })
            }
        };
        RunningInput {
            key,
            spec: inp.clone(),
            stats,
            cancel,
            handle,
        }
    }

    pub(super) fn start_route(&self, st: &mut EngState, spec: RouteSpec) {
        let rt = self.inner.dp.pick();
        let cancel = self.inner.cancel.child_token();
        let inputs = TaskTracker::new();
        // Room for ~1 s of 10 Mbit/s datagrams if the route task stalls.
        let (data_tx, data_rx) = mpsc::channel(1024);
        // Set by the route task from its outputs (see `RouteShared`).
        let pace = Arc::new(AtomicU64::new(0));
        let running_inputs: Vec<RunningInput> = spec
            .inputs
            .iter()
            .enumerate()
            .map(|(i, inp)| {
                self.spawn_input(
                    &spec.name,
                    &inputs,
                    rt.as_ref(),
                    i,
                    inp,
                    data_tx.clone(),
                    &cancel,
                    &pace,
                )
            })
            .collect();
        inputs.close();
        let slots = self.spawn_outputs(st, &spec, rt.as_ref());
        let ov = st.overlay.get(&spec.name).copied().unwrap_or_default();
        let shared = Arc::new(route_shared(&spec, &running_inputs, pace));
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let task = self.route_task(&spec, &ov, shared.clone(), slots, cancel.clone());
        // Queued before the task runs: it transcodes from its first chunk.
        if let Some(req) = self.transcode_req(&spec, &ov) {
            let _ = cmd_tx.try_send(RouteCmd::SetTranscode(Some(req)));
        }
        let c = cancel.clone();
        let handle = spawn_on(&self.inner.tasks, rt.as_ref(), async move {
            task.run(data_rx, cmd_rx, c).await
        });
        self.inner.shared.write().push(shared.clone());
        st.running.insert(
            spec.name.clone(),
            RunningRoute {
                cmd: cmd_tx,
                cancel,
                inputs,
                task: handle,
                shared,
                next_key: spec.inputs.len(),
                running_inputs,
                data_tx,
                rt,
            },
        );
        self.inner
            .events
            .emit(EngineEvent::new(&spec.name, EventKind::RouteStarted));
    }

    /// Spawns a starting route's outputs; their tasks are kept in
    /// `st.output_tasks`, their slots go to the route task.
    fn spawn_outputs(
        &self,
        st: &mut EngState,
        spec: &RouteSpec,
        rt: Option<&tokio::runtime::Handle>,
    ) -> Vec<OutputSlot> {
        let mut slots = Vec::new();
        let recording = st.overlay.get(&spec.name).and_then(|o| o.recording);
        for o in &spec.outputs {
            let mut o = o.clone();
            // A written Recording Enable outlives a route restart.
            if let (Some(en), OutputKind::Record { .. }) = (recording, &o.kind) {
                o.enabled = en;
            }
            let (slot, h) =
                self.spawn_output(&spec.name, o.clone(), self.inner.cancel.child_token(), rt);
            st.output_tasks
                .insert((spec.name.clone(), o.name.clone()), h);
            slots.push(slot);
        }
        slots
    }

    /// A starting route's task, with the selection and stream state its
    /// overlay `ov` keeps across restarts.
    fn route_task(
        &self,
        spec: &RouteSpec,
        ov: &Overlay,
        shared: Arc<RouteShared>,
        outputs: Vec<OutputSlot>,
        cancel: CancellationToken,
    ) -> RouteTask {
        RouteTask {
            shared,
            timeout: spec.failover_timeout,
            switch_back: spec.switch_back,
            outputs,
            events: self.inner.events.clone(),
            stream_enabled: ov.stream_enabled,
            forced: ov.forced.filter(|&f| f < spec.inputs.len()),
            tasks: self.inner.tasks.clone(),
            cancel,
            tc: Default::default(),
            coalesce: spec.udp_coalesce,
            udp: Default::default(),
        }
    }

    pub(super) async fn stop_route(&self, st: &mut EngState, name: &str) {
        let Some(rt) = st.running.remove(name) else {
            return;
        };
        rt.cancel.cancel();
        let slots = rt.task.await.unwrap_or_default();
        let names: Vec<String> = slots.iter().map(|s| s.spec.name.clone()).collect();
        for s in &slots {
            s.cancel.cancel();
        }
        // Dropping the queues ends outputs blocked on them (SRT threads).
        drop(slots);
        for n in names {
            if let Some(h) = st.output_tasks.remove(&(name.to_string(), n)) {
                let _ = h.await;
            }
        }
        rt.inputs.wait().await;
        self.inner
            .shared
            .write()
            .retain(|s| !Arc::ptr_eq(s, &rt.shared));
        self.inner
            .events
            .emit(EngineEvent::new(name, EventKind::RouteStopped));
    }
}

/// What an output's slot holds besides its queue, for the kinds that have
/// it (see the fields of `OutputSlot`).
#[derive(Default)]
struct SlotExtras {
    direct: Option<route::Direct>,
    enabled_tx: Option<tokio::sync::watch::Sender<bool>>,
    child: Option<Arc<crate::media::ffmpeg::child::ChildStats>>,
}

/// A UDP output's socket, sent to by the route task itself; None (and the
/// output reads as failed) when it cannot be made.
fn udp_direct(dest: std::net::SocketAddr, ttl: Option<u32>, s: &IoStats) -> Option<route::Direct> {
    match output::udp_sender(dest, ttl) {
        Ok(sock) => {
            s.set_up(sock.local_addr().ok());
            s.clients.store(1, std::sync::atomic::Ordering::Relaxed);
            Some(route::Direct::Udp(Box::new(sock)))
        }
        Err(e) => {
            tracing::error!("udp output {dest}: {e}");
            s.set_error(format!("{dest}: {e}"));
            None
        }
    }
}

/// The state a starting route shares with snapshots and the engine, before
/// its task has run.
fn route_shared(spec: &RouteSpec, inputs: &[RunningInput], pace: Arc<AtomicU64>) -> RouteShared {
    let in_stats = input_stats(inputs);
    RouteShared {
        name: spec.name.clone(),
        enabled: spec.enabled,
        inputs: Mutex::new(in_stats),
        outputs: Mutex::new(Vec::new()),
        active: (-1).into(),
        forced: (-1).into(),
        stream_enabled: true.into(),
        switches: 0.into(),
        video_pid: (-1).into(),
        input_frames_lost: 0.into(),
        transcode: Mutex::new(None),
        read_pace_us: pace,
        settings: super::stats::RouteSettings::of(spec),
    }
}

/// (name, type, stats) of running inputs in priority order: what
/// `RouteShared::inputs` holds for snapshots, at start and after a hot
/// change of the inputs.
pub(super) fn input_stats(inputs: &[RunningInput]) -> Vec<(String, &'static str, Arc<IoStats>)> {
    inputs
        .iter()
        .map(|r| {
            (
                r.spec.name.clone(),
                r.spec.kind.type_name(),
                r.stats.clone(),
            )
        })
        .collect()
}

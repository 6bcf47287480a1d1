//! One running route: the single task that picks the active input (failover, switch-back, forced selection), rewrites continuity counters, and fans chunks out to every output's bounded queue without ever waiting on one.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::coalesce::{Coalesce, Coalescer};
use super::spec::{OutputKind, OutputSource, OutputSpec};
use super::stats::{IoSnapshot, IoStats, RouteSnapshot};
use super::ts::{FrameLoss, PsiTracker, VideoGapCounter};
use super::{EngineEvent, EventKind, Events};
use crate::media::ffmpeg::child::ChildStats;
use crate::media::ffmpeg::{Media, Profile, TranscodeStats};

/// What an input sends the route (defined beside `Feed`, in the layer the
/// media adapters share).
pub(crate) use crate::mpegts::feed::InputMsg;

/// The route's end of one output: its queue and counters. The output's task
/// owns the receiving end, so a slot can move between routes while the
/// output (its socket, its clients) keeps running.
pub(crate) struct OutputSlot {
    pub spec: OutputSpec,
    pub tx: mpsc::Sender<Bytes>,
    pub stats: Arc<IoStats>,
    /// Cancels the output's task (remove).
    pub cancel: CancellationToken,
    pub loss: FrameLoss,
    /// Outputs the route task sends to itself; `tx` is unused then.
    pub direct: Option<Direct>,
    /// Tells an output task that runs a process (RTMP push) whether it is
    /// enabled: a disabled output runs no child.
    pub enabled_tx: Option<tokio::sync::watch::Sender<bool>>,
    /// The ffmpeg child's counters of an output that runs one (RTMP push),
    /// shown with the output's in snapshots.
    pub child: Option<Arc<ChildStats>>,
}

/// An output the route task sends to without a queue or a task hop: the
/// socket's own buffer is the bounded queue, and a full one drops (counted).
pub(crate) enum Direct {
    /// A UDP output (see `output::udp_sender`); its share may be held
    /// briefly to batch sends (`coalesce`).
    Udp(Box<super::output::UdpOut>),
    /// An SRT listener output's callers (see `srt::ListenerOut`): a send
    /// only copies into libsrt's buffers, so the chunk costs no wake-up of
    /// an output task (at one caller, that hop was most of our CPU beside
    /// libsrt's own).
    Srt(Arc<super::srt::ListenerOut>),
}

impl OutputSlot {
    fn is_direct_udp(&self) -> bool {
        matches!(self.direct, Some(Direct::Udp(_)))
    }

    /// Stream Enable gates what viewers see; recordings follow Recording
    /// Enable (the slot's own enabled flag) only.
    fn gated_by_stream_enable(&self) -> bool {
        !matches!(self.spec.kind, OutputKind::Record { .. })
    }
}

/// What a transcoding route should run (None in `SetTranscode`: stop).
pub(crate) struct TranscodeReq {
    pub media: Arc<Media>,
    pub profile: Result<Arc<Profile>, String>,
}

impl TranscodeReq {
    /// Same media config and same profile = nothing to restart.
    fn ident(&self) -> String {
        let p = match &self.profile {
            Ok(p) => format!("{:p}", Arc::as_ptr(p)),
            Err(e) => e.clone(),
        };
        format!("{:p}/{p}", Arc::as_ptr(&self.media))
    }
}

/// The running transcoder of a route.
struct Tc {
    ident: String,
    /// The route's TS to the child (bounded; full = chunk dropped, counted).
    tx: mpsc::Sender<Bytes>,
    /// The child's TS back.
    rx: mpsc::Receiver<Bytes>,
    rx_closed: bool,
    cancel: CancellationToken,
    stats: Arc<TranscodeStats>,
}

/// Auto outputs fall back to the original stream when the transcoder has
/// delivered nothing for this long (ffmpeg missing, crashed, restarting).
const TC_STALL: Duration = Duration::from_secs(2);

async fn recv_tc(tc: &mut Option<Tc>) -> Option<Bytes> {
    match tc {
        Some(t) if !t.rx_closed => t.rx.recv().await,
        _ => std::future::pending().await,
    }
}

pub(crate) enum RouteCmd {
    /// Start (or switch the profile of) the transcoder, or stop it.
    SetTranscode(Option<TranscodeReq>),
    AddOutput(Box<OutputSlot>),
    RemoveOutput(String, oneshot::Sender<Option<Box<OutputSlot>>>),
    SetOutputEnabled(String, bool, oneshot::Sender<bool>),
    /// Enables or disables every recording output; answers how many exist.
    /// Record outputs' enabled states (see `Engine::set_recording`).
    SetRecording(Vec<(String, bool)>, oneshot::Sender<usize>),
    SelectInput(Option<usize>),
    SetStreamEnabled(bool),
    /// Hot input change: the keys of the inputs now running, in priority
    /// order (the engine has already started/stopped the tasks).
    SetInputs(Vec<usize>, oneshot::Sender<()>),
}

/// (name, type, enabled, stats, ffmpeg child's stats) of one output, as
/// snapshots see it.
pub(crate) type OutputEntry = (
    String,
    &'static str,
    bool,
    Arc<IoStats>,
    Option<Arc<ChildStats>>,
);

/// What the engine and the stats snapshot see of a running route.
pub(crate) struct RouteShared {
    pub name: String,
    pub enabled: bool,
    /// (name, type, stats) of the inputs in priority order; replaced by
    /// the engine on hot input changes.
    pub inputs: Mutex<Vec<(String, &'static str, Arc<IoStats>)>>,
    /// (name, type, enabled, stats, child) of the outputs, kept by the
    /// route task.
    pub outputs: Mutex<Vec<OutputEntry>>,
    /// -1 = none.
    pub active: AtomicI64,
    pub forced: AtomicI64,
    pub stream_enabled: std::sync::atomic::AtomicBool,
    pub switches: AtomicU64,
    pub video_pid: AtomicI64,
    /// Frames damaged by continuity gaps of the forwarded input.
    pub input_frames_lost: AtomicU64,
    /// The transcoder while transcoding is on.
    pub transcode: Mutex<Option<Arc<TranscodeStats>>>,
    /// How long (µs) inputs that can wait between reads may do so: the
    /// least delay any enabled output tolerates (see `read_pace`).
    pub read_pace_us: Arc<AtomicU64>,
    /// What the route was started with (route keys over `[route_defaults]`).
    pub settings: super::stats::RouteSettings,
}

impl RouteShared {
    /// What snapshots see of the route now; without `outputs` the outputs
    /// and the transcoder are left out (what a look at the inputs' signal
    /// needs: a fraction of the work, done four times a second for every
    /// route).
    pub fn snapshot_with(&self, outputs: bool) -> RouteSnapshot {
        let opt = |v: i64| usize::try_from(v).ok();
        RouteSnapshot {
            name: self.name.clone(),
            enabled: self.enabled,
            active_input: opt(self.active.load(Relaxed)),
            forced_input: opt(self.forced.load(Relaxed)),
            stream_enabled: self.stream_enabled.load(Relaxed),
            switches: self.switches.load(Relaxed),
            video_pid: u16::try_from(self.video_pid.load(Relaxed)).ok(),
            input_frames_lost: self.input_frames_lost.load(Relaxed),
            inputs: self
                .inputs
                .lock()
                .iter()
                .map(|(n, k, s)| IoSnapshot::of(s, n, k, true, None))
                .collect(),
            outputs: match outputs {
                true => self
                    .outputs
                    .lock()
                    .iter()
                    .map(|(n, k, e, s, c)| IoSnapshot::of(s, n, k, *e, c.as_deref()))
                    .collect(),
                false => Vec::new(),
            },
            transcode: match outputs {
                true => self.transcode.lock().as_ref().map(|t| t.snapshot()),
                false => None,
            },
            settings: self.settings,
        }
    }

    pub fn stats_list(&self) -> Vec<Arc<IoStats>> {
        let mut v: Vec<_> = self.inputs.lock().iter().map(|x| x.2.clone()).collect();
        v.extend(self.outputs.lock().iter().map(|x| x.3.clone()));
        v
    }
}

struct InputState {
    last: Option<Instant>,
    /// Start of the current uninterrupted run of data (switch-back waits
    /// for the returning input to be stable for one failover timeout).
    since: Option<Instant>,
}

impl InputState {
    /// Data arrived at `now`: a gap longer than `timeout` starts a new run.
    fn arrived(&mut self, now: Instant, timeout: Duration) {
        if self.last.is_none_or(|l| now.duration_since(l) > timeout) {
            self.since = Some(now);
        }
        self.last = Some(now);
    }

    fn alive(&self, now: Instant, timeout: Duration) -> bool {
        self.last.is_some_and(|l| now.duration_since(l) <= timeout)
    }
}

/// The input a route should forward at `now`: forced if the operator
/// forced one; else the active one while it is alive (data within
/// `timeout`), else the first alive one; with `switch_back`, a better
/// (earlier) input that has been stable for a whole `timeout`. Free of the
/// clock, so its timing rules are unit-tested on synthetic instants.
fn choose_input(
    forced: Option<usize>,
    switch_back: bool,
    timeout: Duration,
    active: Option<usize>,
    inputs: &[InputState],
    now: Instant,
) -> Option<usize> {
    if let Some(f) = forced {
        // Forced: that input or nothing (the operator asked for it).
        return (f < inputs.len()).then_some(f);
    }
    let first_alive = inputs.iter().position(|s| s.alive(now, timeout));
    match active {
        Some(a) if inputs[a].alive(now, timeout) => {
            if switch_back {
                // Return to a better input once it has been stable for a
                // whole failover timeout (no flapping on a single burst).
                if let Some(b) = inputs[..a].iter().position(|s| {
                    s.alive(now, timeout)
                        && s.since.is_some_and(|t| now.duration_since(t) >= timeout)
                }) {
                    return Some(b);
                }
            }
            Some(a)
        }
        _ => first_alive,
    }
}

pub(crate) struct RouteTask {
    pub shared: Arc<RouteShared>,
    pub timeout: Duration,
    pub switch_back: bool,
    pub outputs: Vec<OutputSlot>,
    pub events: Events,
    pub stream_enabled: bool,
    pub forced: Option<usize>,
    /// Where the transcoder task is spawned (the engine's tracker).
    pub tasks: tokio_util::task::TaskTracker,
    pub cancel: CancellationToken,
    pub tc: TcState,
    /// `udp_coalesce` of the route.
    pub coalesce: Coalesce,
    /// The passthrough stream's pending share for direct UDP outputs.
    pub udp: Coalescer,
}

/// Transcoding state of a route task.
#[derive(Default)]
pub(crate) struct TcState {
    tc: Option<Tc>,
    /// Auto outputs currently carry the transcoded stream.
    auto_on_tc: bool,
    /// Auto outputs have diverged from the passthrough stream once: from
    /// then on they get their own copy with their own CC rewriter, so
    /// their counters stay continuous across every switch.
    auto_private: bool,
    rw_auto: Option<super::ts::CcRewriter>,
    psi: PsiTracker,
    last: Option<Instant>,
}

/// The route task's input selection: which inputs are live, which one is
/// forwarded, and the state the forwarded stream carries across switches.
struct Selection {
    /// Input keys by priority position (see `InputMsg`).
    keys: Vec<usize>,
    inputs: Vec<InputState>,
    active: Option<usize>,
    rewriter: super::ts::CcRewriter,
    psi: PsiTracker,
    gaps: VideoGapCounter,
}

impl RouteTask {
    pub async fn run(
        mut self,
        mut data: mpsc::Receiver<InputMsg>,
        mut cmds: mpsc::Receiver<RouteCmd>,
        cancel: CancellationToken,
    ) -> Vec<OutputSlot> {
        let mut sel = self.begin();
        let tick_every = (self.timeout / 5).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch: Vec<InputMsg> = Vec::with_capacity(64);
        let mut inputs_gone = false;
        // Backstop for held UDP data (normally the next chunk sends it).
        let udp_timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(udp_timer);
        // One cancellation future for the whole loop: a fresh one per turn
        // registered and removed a waiter under the token's locks each time,
        // a measurable share of a busy data plane (issue 25).
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        let mut armed: Option<Instant> = None;
        loop {
            let due = self.udp.deadline();
            if due != armed {
                if let Some(d) = due {
                    udp_timer.as_mut().reset(d.into());
                }
                armed = due;
            }
            tokio::select! {
                biased;
                _ = &mut udp_timer, if armed.is_some() => {
                    self.flush_udp();
                    armed = None;
                }
                c = cmds.recv() => match c {
                    Some(c) => self.on_command(c, &mut sel),
                    None => break,
                },
                t = recv_tc(&mut self.tc.tc) => self.on_tc(t, &sel.rewriter),
                got = data.recv_many(&mut batch, 64), if !inputs_gone => {
                    if got == 0 {
                        // Every input task ended (bind failures): keep
                        // serving commands; the stats carry the errors.
                        inputs_gone = true;
                        continue;
                    }
                    self.on_data(&mut batch, &mut sel);
                }
                _ = tick.tick(), if self.time_matters(&sel) => self.on_tick(&mut sel),
                // Last: polled only when nothing else is ready, so once per
                // sleep instead of twice per wake-up (each poll takes the
                // token's lock). A stopping route's inputs stop with it, so
                // its data runs dry and this is reached.
                _ = &mut cancelled => break,
            }
        }
        self.flush_udp();
        self.shared.active.store(-1, Relaxed);
        self.stop_tc();
        // The outputs outlive the route task: the engine stops them (or
        // they were moved away already).
        std::mem::take(&mut self.outputs)
    }

    /// The selection at start (no input live yet), with the outputs and
    /// the overlay's selection published.
    fn begin(&self) -> Selection {
        let n = self.shared.inputs.lock().len();
        let sel = Selection {
            keys: (0..n).collect(),
            inputs: (0..n)
                .map(|_| InputState {
                    last: None,
                    since: None,
                })
                .collect(),
            active: None,
            rewriter: super::ts::CcRewriter::default(),
            psi: PsiTracker::default(),
            gaps: VideoGapCounter::default(),
        };
        self.publish_outputs();
        self.shared
            .stream_enabled
            .store(self.stream_enabled, Relaxed);
        self.shared
            .forced
            .store(self.forced.map_or(-1, |f| f as i64), Relaxed);
        sel
    }

    /// A command from the engine; a hot input change is answered once it
    /// is applied.
    fn on_command(&mut self, c: RouteCmd, sel: &mut Selection) {
        match c {
            RouteCmd::SetInputs(new_keys, reply) => {
                let (keys, inputs) = (&mut sel.keys, &mut sel.inputs);
                self.set_inputs(new_keys, keys, inputs, &mut sel.active, &mut sel.rewriter);
                let _ = reply.send(());
            }
            c => self.command(c, &mut sel.active, &sel.inputs, &mut sel.rewriter),
        }
    }

    /// A chunk from the transcoder, or None once its queue closed.
    fn on_tc(&mut self, t: Option<Bytes>, rewriter: &super::ts::CcRewriter) {
        match t {
            Some(c) => self.forward_tc(c, rewriter),
            None => {
                if let Some(t) = self.tc.tc.as_mut() {
                    t.rx_closed = true;
                }
            }
        }
    }

    /// A batch of input chunks: each marks its input live (which may
    /// switch inputs); the active input's are forwarded.
    fn on_data(&mut self, batch: &mut Vec<InputMsg>, sel: &mut Selection) {
        let now = Instant::now();
        for m in batch.drain(..) {
            // Chunks still queued from a removed input: dropped.
            let Some(pos) = sel.keys.iter().position(|k| *k == m.idx) else {
                continue;
            };
            sel.inputs[pos].arrived(now, self.timeout);
            let want = self.choose(sel.active, &sel.inputs, now);
            if want != sel.active {
                self.switch(&mut sel.active, want, &mut sel.rewriter, "input available");
            }
            if sel.active == Some(pos) {
                let (rw, psi, gaps) = (&mut sel.rewriter, &mut sel.psi, &mut sel.gaps);
                self.forward(m.data, rw, psi, gaps, now);
            }
        }
    }

    /// Whether time alone can change the route: a forwarded input may go
    /// silent (failover) or a better one mature (switch-back), and a
    /// transcoder may stall. Otherwise no input is live (a live one is
    /// made active as its data arrives), so only data or a command can
    /// change anything and the route sleeps until one comes: 500 routes
    /// with no signal woke 5,000 times a second for nothing.
    fn time_matters(&self, sel: &Selection) -> bool {
        sel.active.is_some() || self.tc.auto_on_tc
    }

    /// The periodic check: a stalled transcoder and silent inputs are
    /// noticed here when no data comes to notice them.
    fn on_tick(&mut self, sel: &mut Selection) {
        let now = Instant::now();
        if self.tc.auto_on_tc
            && self
                .tc
                .last
                .is_none_or(|l| now.duration_since(l) > TC_STALL)
        {
            self.auto_back_to_passthrough("transcoder stalled");
        }
        let want = self.choose(sel.active, &sel.inputs, now);
        if want != sel.active {
            let why = if want.is_none() {
                "no data"
            } else {
                "failover: no data on active input"
            };
            self.switch(&mut sel.active, want, &mut sel.rewriter, why);
        }
    }

    /// Applies a hot input change: kept inputs keep their liveness (and
    /// the active one stays active, so viewers see nothing); if the active
    /// input was removed the route fails over like on a dead input.
    fn set_inputs(
        &mut self,
        new_keys: Vec<usize>,
        keys: &mut Vec<usize>,
        inputs: &mut Vec<InputState>,
        active: &mut Option<usize>,
        rw: &mut super::ts::CcRewriter,
    ) {
        self.flush_udp();
        let active_key = active.and_then(|a| keys.get(a).copied());
        let mut states = Vec::with_capacity(new_keys.len());
        for k in &new_keys {
            let st = match keys.iter().position(|x| x == k) {
                Some(p) => std::mem::replace(
                    &mut inputs[p],
                    InputState {
                        last: None,
                        since: None,
                    },
                ),
                None => InputState {
                    last: None,
                    since: None,
                },
            };
            states.push(st);
        }
        *inputs = states;
        *keys = new_keys;
        *active = active_key.and_then(|k| keys.iter().position(|x| *x == k));
        self.shared
            .active
            .store(active.map_or(-1, |x| x as i64), Relaxed);
        let want = self.choose(*active, inputs, Instant::now());
        if want != *active {
            self.switch(active, want, rw, "inputs changed");
        }
    }

    /// The input that should be forwarded now.
    fn choose(&self, active: Option<usize>, inputs: &[InputState], now: Instant) -> Option<usize> {
        choose_input(
            self.forced,
            self.switch_back,
            self.timeout,
            active,
            inputs,
            now,
        )
    }

    fn switch(
        &mut self,
        active: &mut Option<usize>,
        to: Option<usize>,
        rw: &mut super::ts::CcRewriter,
        why: &str,
    ) {
        self.flush_udp();
        let from = *active;
        *active = to;
        rw.switched();
        self.shared
            .active
            .store(to.map_or(-1, |x| x as i64), Relaxed);
        if from.is_some() && to.is_some() {
            self.shared.switches.fetch_add(1, Relaxed);
        }
        let name = |i: Option<usize>| {
            i.and_then(|i| self.shared.inputs.lock().get(i).map(|x| x.0.clone()))
        };
        tracing::info!(
            route = %self.shared.name,
            "input switch {:?} -> {:?} ({why})",
            name(from),
            name(to)
        );
        self.events.emit(EngineEvent::new(
            &self.shared.name,
            EventKind::InputSwitched {
                from,
                to,
                reason: why.to_string(),
            },
        ));
    }

    fn forward(
        &mut self,
        mut data: BytesMut,
        rw: &mut super::ts::CcRewriter,
        psi: &mut PsiTracker,
        gaps: &mut VideoGapCounter,
        now: Instant,
    ) {
        psi.observe(&data);
        let video = psi.video.map(|v| v.0);
        if let Some(v) = video {
            self.shared.video_pid.store(i64::from(v), Relaxed);
            let lost = gaps.observe(&data, v);
            if lost > 0 {
                self.shared.input_frames_lost.fetch_add(lost, Relaxed);
            }
        }
        rw.rewrite(&mut data);
        let chunk = data.freeze();
        if let Some(t) = &self.tc.tc {
            if t.tx.try_send(chunk.clone()).is_err() {
                t.stats.child.in_dropped_chunks.fetch_add(1, Relaxed);
            }
        }
        let stream_on = self.stream_enabled;
        // Auto outputs share the passthrough chunk unless they carry the
        // transcoder's stream, or have their own copy (own CC rewriter)
        // since they first diverged.
        let shared = self.tc.auto_on_tc || !self.tc.auto_private;
        let with_auto = shared && !self.tc.auto_on_tc;
        fan_out(
            &self.events,
            &self.shared.name,
            &mut self.outputs,
            &chunk,
            video,
            stream_on,
            Targets::Now,
            |s| s == OutputSource::Passthrough || with_auto,
        );
        self.fan_out_udp(&chunk, video, with_auto, now);
        if !shared {
            let mut own = BytesMut::from(&chunk[..]);
            if let Some(rw) = self.tc.rw_auto.as_mut() {
                rw.rewrite(&mut own);
            }
            fan_out(
                &self.events,
                &self.shared.name,
                &mut self.outputs,
                &own.freeze(),
                video,
                stream_on,
                Targets::All,
                |s| s == OutputSource::Auto,
            );
        }
    }

    /// The passthrough chunk's share for the direct UDP outputs: sent now,
    /// or held briefly so that one send carries several datagrams (see
    /// `coalesce`). `with_auto`: auto outputs get the passthrough stream.
    fn fan_out_udp(&mut self, chunk: &Bytes, video: Option<u16>, with_auto: bool, now: Instant) {
        let tag = (video, with_auto);
        if self.udp.tag != tag {
            self.flush_udp();
            self.udp.tag = tag;
        }
        let udp_outputs = self
            .outputs
            .iter()
            .filter(|o| o.is_direct_udp() && o.spec.enabled)
            .count();
        if let Some(b) = self.udp.push(chunk, now, self.coalesce.hold(udp_outputs)) {
            self.send_udp(&b);
        }
    }

    /// Sends what the direct UDP outputs have pending. Called before
    /// anything that changes who gets what (commands, switches, the
    /// transcoder), so held data goes where it would have gone at once.
    fn flush_udp(&mut self) {
        if let Some(b) = self.udp.take() {
            self.send_udp(&b);
        }
    }

    fn send_udp(&mut self, b: &Bytes) {
        let (video, with_auto) = self.udp.tag;
        let stream_on = self.stream_enabled;
        fan_out(
            &self.events,
            &self.shared.name,
            &mut self.outputs,
            b,
            video,
            stream_on,
            Targets::Udp,
            |s| s == OutputSource::Passthrough || with_auto,
        );
    }

    /// A chunk of transcoded TS: to the auto outputs.
    fn forward_tc(&mut self, chunk: Bytes, main: &super::ts::CcRewriter) {
        self.flush_udp();
        if chunk.is_empty() {
            // A new ffmpeg child starts (see `child::supervise`): its
            // counters start over, so the auto outputs re-base them even
            // when it delivers within TC_STALL and they never went back
            // to the original stream.
            if let Some(rw) = self.tc.rw_auto.as_mut() {
                rw.switched();
            }
            self.tc.psi = PsiTracker::default();
            return;
        }
        let now = Instant::now();
        self.tc.last = Some(now);
        if !self.tc.auto_on_tc {
            if !self.tc.auto_private {
                // Continue from the counters the auto outputs saw last.
                self.tc.rw_auto = Some(main.clone());
                self.tc.auto_private = true;
            }
            if let Some(rw) = self.tc.rw_auto.as_mut() {
                rw.switched();
            }
            self.tc.auto_on_tc = true;
            tracing::info!(route = %self.shared.name, "auto outputs now carry the transcoded stream");
        }
        let mut data = chunk
            .try_into_mut()
            .unwrap_or_else(|b| BytesMut::from(&b[..]));
        self.tc.psi.observe(&data);
        let video = self.tc.psi.video.map(|v| v.0);
        if let Some(rw) = self.tc.rw_auto.as_mut() {
            rw.rewrite(&mut data);
        }
        let stream_on = self.stream_enabled;
        fan_out(
            &self.events,
            &self.shared.name,
            &mut self.outputs,
            &data.freeze(),
            video,
            stream_on,
            Targets::All,
            |s| s == OutputSource::Auto,
        );
    }

    fn auto_back_to_passthrough(&mut self, why: &str) {
        self.flush_udp();
        if !self.tc.auto_on_tc {
            return;
        }
        self.tc.auto_on_tc = false;
        if let Some(rw) = self.tc.rw_auto.as_mut() {
            rw.switched();
        }
        tracing::info!(route = %self.shared.name, "auto outputs back to the original stream ({why})");
    }

    fn start_tc(&mut self, req: TranscodeReq) {
        let ident = req.ident();
        let (name, number) = match &req.profile {
            Ok(p) => (p.name.clone(), p.number),
            Err(_) => (String::new(), 0),
        };
        // ~1 s of 10 Mbit/s each way.
        let (in_tx, in_rx) = mpsc::channel(1024);
        let (out_tx, out_rx) = mpsc::channel(1024);
        let stats = Arc::new(TranscodeStats::new(&name, number));
        let cancel = self.cancel.child_token();
        self.tasks.spawn(crate::media::ffmpeg::run_transcode(
            req.media,
            req.profile,
            self.shared.name.clone(),
            in_rx,
            out_tx,
            stats.clone(),
            cancel.clone(),
        ));
        *self.shared.transcode.lock() = Some(stats.clone());
        self.tc.psi = PsiTracker::default();
        self.tc.tc = Some(Tc {
            ident,
            tx: in_tx,
            rx: out_rx,
            rx_closed: false,
            cancel,
            stats,
        });
    }

    fn stop_tc(&mut self) {
        if let Some(t) = self.tc.tc.take() {
            t.cancel.cancel();
        }
        *self.shared.transcode.lock() = None;
        self.auto_back_to_passthrough("transcoding off");
    }

    fn publish_outputs(&self) {
        let udp_outputs = self
            .outputs
            .iter()
            .filter(|o| o.is_direct_udp() && o.spec.enabled)
            .count();
        let pace = read_pace(
            self.outputs
                .iter()
                .filter(|o| o.spec.enabled)
                .map(|o| &o.spec.kind),
            self.coalesce.hold(udp_outputs).unwrap_or(Duration::ZERO),
        );
        self.shared
            .read_pace_us
            .store(pace.as_micros() as u64, Relaxed);
        *self.shared.outputs.lock() = self
            .outputs
            .iter()
            .map(|o| {
                (
                    o.spec.name.clone(),
                    o.spec.kind.type_name(),
                    o.spec.enabled,
                    o.stats.clone(),
                    o.child.clone(),
                )
            })
            .collect();
    }

    fn command(
        &mut self,
        c: RouteCmd,
        active: &mut Option<usize>,
        inputs: &[InputState],
        rw: &mut super::ts::CcRewriter,
    ) {
        self.flush_udp();
        match c {
            RouteCmd::SetTranscode(req) => match req {
                None => self.stop_tc(),
                Some(r) => {
                    let same = self.tc.tc.as_ref().is_some_and(|t| t.ident == r.ident());
                    if !same {
                        self.stop_tc();
                        self.start_tc(r);
                    }
                }
            },
            RouteCmd::AddOutput(slot) => {
                self.outputs.push(*slot);
            }
            RouteCmd::RemoveOutput(name, reply) => {
                let pos = self.outputs.iter().position(|o| o.spec.name == name);
                let _ = reply.send(pos.map(|p| Box::new(self.outputs.remove(p))));
            }
            RouteCmd::SetOutputEnabled(name, en, reply) => {
                let mut found = false;
                for o in self.outputs.iter_mut().filter(|o| o.spec.name == name) {
                    o.spec.enabled = en;
                    if let Some(t) = &o.enabled_tx {
                        t.send_replace(en);
                    }
                    found = true;
                }
                let _ = reply.send(found);
            }
            RouteCmd::SetRecording(want, reply) => {
                let mut n = 0;
                for o in self
                    .outputs
                    .iter_mut()
                    .filter(|o| matches!(o.spec.kind, OutputKind::Record { .. }))
                {
                    if let Some((_, en)) = want.iter().find(|(name, _)| *name == o.spec.name) {
                        o.spec.enabled = *en;
                        n += 1;
                    }
                }
                let _ = reply.send(n);
            }
            RouteCmd::SelectInput(f) => {
                self.forced = f;
                self.shared
                    .forced
                    .store(f.map_or(-1, |x| x as i64), Relaxed);
                let want = self.choose(*active, inputs, Instant::now());
                if want != *active {
                    self.switch(active, want, rw, "input select");
                }
            }
            // `run` applies it: it needs the input table mutably.
            RouteCmd::SetInputs(_, reply) => {
                let _ = reply.send(());
            }
            RouteCmd::SetStreamEnabled(en) => {
                self.stream_enabled = en;
                self.shared.stream_enabled.store(en, Relaxed);
            }
        }
        self.publish_outputs();
    }
}

/// The longest an input may leave datagrams in its socket between reads.
const MAX_READ_PACE: Duration = Duration::from_millis(10);

/// How long inputs may wait between reads for these outputs. Every wake-up
/// per datagram costs context switches (ours and libsrt's send thread's),
/// the bulk of a lightly loaded route's CPU; reading several milliseconds'
/// worth at once is what srt-live-transmit does (it polls its UDP input
/// every few ms and hands libsrt what it found). Only when every output
/// tolerates it: an SRT output `srt::burst_window`, queued outputs
/// (HTTP-TS, HLS, recording, RTMP: TCP or files, buffered anyway) 10 ms,
/// UDP outputs the route's `udp_coalesce` hold (`udp_hold`; zero: none).
/// No outputs: no pacing.
pub(crate) fn read_pace<'a>(
    kinds: impl Iterator<Item = &'a OutputKind>,
    udp_hold: Duration,
) -> Duration {
    let mut pace: Option<Duration> = None;
    for k in kinds {
        let t = match k {
            OutputKind::Udp { .. } => udp_hold,
            OutputKind::Srt(sp) => super::srt::burst_window(sp),
            _ => MAX_READ_PACE,
        };
        pace = Some(pace.map_or(t, |p| p.min(t)));
    }
    pace.unwrap_or(Duration::ZERO).min(MAX_READ_PACE)
}

/// Which outputs a `fan_out` serves.
#[derive(Clone, Copy, PartialEq)]
enum Targets {
    All,
    /// Every output served at once: queued ones and direct SRT ones
    /// (direct UDP ones are served apart, possibly held to coalesce).
    Now,
    /// Direct UDP outputs only.
    Udp,
}

/// Hands `chunk` to every enabled output of `targets` whose source `pick`
/// accepts; never waits: a full queue (or socket buffer) drops the chunk
/// for that output.
/// Logs and announces a direct UDP output failing (a refused send) or
/// recovering.
fn udp_health(events: &Events, route: &str, output: &str, change: Result<(), String>) {
    let kind = match change {
        Err(error) => {
            tracing::warn!(route, "udp output {output} failed: {error}");
            EventKind::OutputFailed {
                output: output.to_string(),
                error,
            }
        }
        Ok(()) => {
            tracing::info!(route, "udp output {output} delivers again");
            EventKind::OutputRecovered {
                output: output.to_string(),
            }
        }
    };
    events.emit(EngineEvent::new(route, kind));
}

#[allow(clippy::too_many_arguments)]
fn fan_out(
    events: &Events,
    route: &str,
    outputs: &mut [OutputSlot],
    chunk: &Bytes,
    video: Option<u16>,
    stream_on: bool,
    targets: Targets,
    pick: impl Fn(OutputSource) -> bool,
) {
    for o in outputs.iter_mut() {
        if !o.spec.enabled || (!stream_on && o.gated_by_stream_enable()) || !pick(o.spec.source) {
            continue;
        }
        let wanted = match targets {
            Targets::All => true,
            Targets::Now => !o.is_direct_udp(),
            Targets::Udp => o.is_direct_udp(),
        };
        if !wanted {
            continue;
        }
        if let Some(d) = &mut o.direct {
            let sent = match d {
                Direct::Udp(sock) => {
                    let r = super::output::udp_send_chunk(sock, chunk, &o.stats);
                    if let Some(change) = r.change {
                        udp_health(events, route, &o.spec.name, change);
                    }
                    if r.unsent > 0 {
                        o.stats.dropped(r.unsent);
                    }
                    r.unsent == 0
                }
                // Drops are counted per caller by the send itself.
                Direct::Srt(l) => l.send(chunk),
            };
            if sent {
                if let Some(v) = video {
                    o.loss.delivered(chunk, v);
                }
            } else if let Some(v) = video {
                let n = o.loss.dropped(chunk, v);
                o.stats.frames_lost.fetch_add(n, Relaxed);
            }
            continue;
        }
        match o.tx.try_send(chunk.clone()) {
            Ok(()) => {
                if let Some(v) = video {
                    o.loss.delivered(chunk, v);
                }
            }
            Err(mpsc::error::TrySendError::Full(c)) => {
                o.stats.dropped(c.len());
                if let Some(v) = video {
                    let n = o.loss.dropped(&c, v);
                    o.stats.frames_lost.fetch_add(n, Relaxed);
                }
            }
            // The output's task ended (failed for good or removed):
            // nothing to feed.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::spec::{SrtMode, SrtSpec};

    fn srt(latency_ms: u64) -> OutputKind {
        OutputKind::Srt(SrtSpec {
            mode: SrtMode::Listener,
            addr: "127.0.0.1:0".parse().expect("addr"),
            latency: Duration::from_millis(latency_ms),
            passphrase: None,
            pbkeylen: 0,
            streamid: None,
            allow: Vec::new(),
        })
    }

    const T: Duration = Duration::from_millis(300);

    /// The route's view of its inputs at `at` ms of a synthetic clock: input
    /// `i` sent a datagram every 10 ms over each `[from, to)` of `runs[i]`
    /// (only those up to `at` have arrived); then `choose_input` at `at`.
    fn choose_at(
        runs: &[&[(u64, u64)]],
        switch_back: bool,
        active: Option<usize>,
        at: u64,
    ) -> Option<usize> {
        let t0 = Instant::now();
        let mut inputs: Vec<InputState> = runs
            .iter()
            .map(|_| InputState {
                last: None,
                since: None,
            })
            .collect();
        let mut arrivals: Vec<(u64, usize)> = Vec::new();
        for (i, r) in runs.iter().enumerate() {
            for &(from, to) in r.iter() {
                arrivals.extend((from..to).step_by(10).filter(|&t| t <= at).map(|t| (t, i)));
            }
        }
        arrivals.sort();
        for (t, i) in arrivals {
            inputs[i].arrived(t0 + Duration::from_millis(t), T);
        }
        choose_input(
            None,
            switch_back,
            T,
            active,
            &inputs,
            t0 + Duration::from_millis(at),
        )
    }

    #[test]
    fn failover_waits_one_timeout_then_takes_the_first_live_input() {
        let runs: &[&[(u64, u64)]] = &[&[(0, 1000)], &[(0, 5000)]];
        assert_eq!(choose_at(runs, true, None, 500), Some(0), "primary first");
        // The primary's last datagram came at 990 ms: still alive exactly
        // one timeout later, gone the instant after.
        assert_eq!(choose_at(runs, true, Some(0), 1290), Some(0));
        assert_eq!(choose_at(runs, true, Some(0), 1291), Some(1), "failover");
        // Nothing alive at all: no input.
        assert_eq!(choose_at(runs, true, Some(1), 6000), None);
    }

    #[test]
    fn switch_back_only_after_the_primary_is_stable_for_one_timeout() {
        // The primary returns at 2000 ms after a long gap.
        let runs: &[&[(u64, u64)]] = &[&[(0, 500), (2000, 10_000)], &[(0, 10_000)]];
        assert_eq!(
            choose_at(runs, true, Some(1), 2000),
            Some(1),
            "one burst is not enough"
        );
        assert_eq!(choose_at(runs, true, Some(1), 2290), Some(1));
        assert_eq!(
            choose_at(runs, true, Some(1), 2300),
            Some(0),
            "stable for one timeout: back"
        );
        assert_eq!(
            choose_at(runs, false, Some(1), 9000),
            Some(1),
            "switch_back off: stay"
        );
        // A gap shorter than the timeout keeps the run that started at 2000.
        let short: &[&[(u64, u64)]] = &[&[(2000, 2200), (2450, 3000)], &[(0, 10_000)]];
        assert_eq!(choose_at(short, true, Some(1), 2460), Some(0));
        // A longer one starts a new run at 2600: back only at 2900.
        let long: &[&[(u64, u64)]] = &[&[(2000, 2200), (2600, 3000)], &[(0, 10_000)]];
        assert_eq!(choose_at(long, true, Some(1), 2890), Some(1));
        assert_eq!(choose_at(long, true, Some(1), 2900), Some(0));
    }

    #[test]
    fn a_forced_input_wins_alive_or_not() {
        let t0 = Instant::now();
        let mut inputs = vec![
            InputState {
                last: None,
                since: None,
            },
            InputState {
                last: None,
                since: None,
            },
        ];
        inputs[0].arrived(t0, T);
        let now = t0 + Duration::from_millis(10);
        assert_eq!(
            choose_input(Some(1), true, T, Some(0), &inputs, now),
            Some(1)
        );
        assert_eq!(choose_input(Some(5), true, T, Some(0), &inputs, now), None);
    }

    fn read_pace0<'a>(k: impl Iterator<Item = &'a OutputKind>) -> Duration {
        read_pace(k, Duration::ZERO)
    }

    #[test]
    fn read_pace_is_the_least_any_output_tolerates() {
        let udp = OutputKind::Udp {
            dest: "127.0.0.1:1".parse().expect("addr"),
            ttl: None,
        };
        let http = OutputKind::Http { path: "x".into() };
        // Nothing to serve: read as data comes.
        assert_eq!(read_pace0([].iter()), Duration::ZERO);
        // SRT: a fifth of its latency; queued outputs 10 ms.
        assert_eq!(read_pace0([srt(25)].iter()), Duration::from_millis(5));
        assert_eq!(
            read_pace0([srt(50), srt(20)].iter()),
            Duration::from_millis(4)
        );
        assert_eq!(read_pace0([http.clone()].iter()), MAX_READ_PACE);
        assert_eq!(read_pace0([srt(2000)].iter()), MAX_READ_PACE);
        // Any UDP output: paced by its hold only.
        assert_eq!(
            read_pace0([srt(50), udp.clone(), http.clone()].iter()),
            Duration::ZERO
        );
        let hold = Duration::from_micros(1500);
        assert_eq!(read_pace([srt(50), udp, http].iter(), hold), hold);
    }
}

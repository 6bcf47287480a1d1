//! One running route: the single task that picks the active input (failover, switch-back, forced selection), rewrites continuity counters, and fans chunks out to every output's bounded queue without ever waiting on one.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::spec::{OutputKind, OutputSpec};
use super::stats::{IoStats, RouteSnapshot};
use super::ts::{FrameLoss, PsiTracker, VideoGapCounter};
use super::{EngineEvent, EventKind, Events};

/// A chunk of whole TS packets read by input `idx`.
pub(crate) struct InputMsg {
    pub idx: usize,
    pub data: BytesMut,
}

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
    /// UDP outputs: sent directly from the route task (see
    /// `output::udp_sender`); `tx` is unused then.
    pub direct: Option<Arc<super::output::UdpOut>>,
}

impl OutputSlot {
    /// Stream Enable gates what viewers see; recordings follow Recording
    /// Enable (the slot's own enabled flag) only.
    fn gated_by_stream_enable(&self) -> bool {
        !matches!(self.spec.kind, OutputKind::Record { .. })
    }
}

pub(crate) enum RouteCmd {
    AddOutput(Box<OutputSlot>),
    RemoveOutput(String, oneshot::Sender<Option<Box<OutputSlot>>>),
    SetOutputEnabled(String, bool, oneshot::Sender<bool>),
    /// Enables or disables every recording output; answers how many exist.
    SetRecording(bool, oneshot::Sender<usize>),
    SelectInput(Option<usize>),
    SetStreamEnabled(bool),
}

/// (name, type, enabled, stats) of one output, as snapshots see it.
pub(crate) type OutputEntry = (String, &'static str, bool, Arc<IoStats>);

/// What the engine and the stats snapshot see of a running route.
pub(crate) struct RouteShared {
    pub name: String,
    pub enabled: bool,
    pub inputs: Vec<(String, &'static str, Arc<IoStats>)>,
    /// (name, type, enabled, stats) of the outputs, kept by the route task.
    pub outputs: Mutex<Vec<OutputEntry>>,
    /// -1 = none.
    pub active: AtomicI64,
    pub forced: AtomicI64,
    pub stream_enabled: std::sync::atomic::AtomicBool,
    pub switches: AtomicU64,
    pub video_pid: AtomicI64,
    /// Frames damaged by continuity gaps of the forwarded input.
    pub input_frames_lost: AtomicU64,
}

impl RouteShared {
    pub fn snapshot(&self) -> RouteSnapshot {
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
                .iter()
                .map(|(n, k, s)| s.snapshot(n, k, true))
                .collect(),
            outputs: self
                .outputs
                .lock()
                .iter()
                .map(|(n, k, e, s)| s.snapshot(n, k, *e))
                .collect(),
        }
    }

    pub fn stats_list(&self) -> Vec<Arc<IoStats>> {
        let mut v: Vec<_> = self.inputs.iter().map(|x| x.2.clone()).collect();
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

pub(crate) struct RouteTask {
    pub shared: Arc<RouteShared>,
    pub timeout: Duration,
    pub switch_back: bool,
    pub outputs: Vec<OutputSlot>,
    pub events: Events,
    pub stream_enabled: bool,
    pub forced: Option<usize>,
}

impl RouteTask {
    pub async fn run(
        mut self,
        mut data: mpsc::Receiver<InputMsg>,
        mut cmds: mpsc::Receiver<RouteCmd>,
        cancel: CancellationToken,
    ) -> Vec<OutputSlot> {
        let n = self.shared.inputs.len();
        let mut inputs: Vec<InputState> = (0..n)
            .map(|_| InputState {
                last: None,
                since: None,
            })
            .collect();
        let mut active: Option<usize> = None;
        let mut rewriter = super::ts::CcRewriter::default();
        let mut psi = PsiTracker::default();
        let mut gaps = VideoGapCounter::default();
        let tick_every = (self.timeout / 5).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.publish_outputs();
        self.shared
            .stream_enabled
            .store(self.stream_enabled, Relaxed);
        self.shared
            .forced
            .store(self.forced.map_or(-1, |f| f as i64), Relaxed);
        let mut batch: Vec<InputMsg> = Vec::with_capacity(64);
        let mut inputs_gone = false;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                c = cmds.recv() => match c {
                    Some(c) => self.command(c, &mut active, &inputs, &mut rewriter),
                    None => break,
                },
                got = data.recv_many(&mut batch, 64), if !inputs_gone => {
                    if got == 0 {
                        // Every input task ended (bind failures): keep
                        // serving commands; the stats carry the errors.
                        inputs_gone = true;
                        continue;
                    }
                    let now = Instant::now();
                    for m in batch.drain(..) {
                        let Some(st) = inputs.get_mut(m.idx) else { continue };
                        let fresh = st.last.is_none_or(|l| now.duration_since(l) > self.timeout);
                        if fresh {
                            st.since = Some(now);
                        }
                        st.last = Some(now);
                        let want = self.choose(active, &inputs, now);
                        if want != active {
                            self.switch(&mut active, want, &mut rewriter, "input available");
                        }
                        if active == Some(m.idx) {
                            self.forward(m.data, &mut rewriter, &mut psi, &mut gaps);
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    let want = self.choose(active, &inputs, now);
                    if want != active {
                        let why = if want.is_none() { "no data" } else { "failover: no data on active input" };
                        self.switch(&mut active, want, &mut rewriter, why);
                    }
                }
            }
        }
        self.shared.active.store(-1, Relaxed);
        // The outputs outlive the route task: the engine stops them (or
        // they were moved away already).
        std::mem::take(&mut self.outputs)
    }

    fn alive(&self, s: &InputState, now: Instant) -> bool {
        s.last
            .is_some_and(|l| now.duration_since(l) <= self.timeout)
    }

    /// The input that should be forwarded now.
    fn choose(&self, active: Option<usize>, inputs: &[InputState], now: Instant) -> Option<usize> {
        if let Some(f) = self.forced {
            // Forced: that input or nothing (the operator asked for it).
            return (f < inputs.len()).then_some(f);
        }
        let first_alive = inputs.iter().position(|s| self.alive(s, now));
        match active {
            Some(a) if self.alive(&inputs[a], now) => {
                if self.switch_back {
                    // Return to a better input once it has been stable for a
                    // whole failover timeout (no flapping on a single burst).
                    if let Some(b) = inputs[..a].iter().position(|s| {
                        self.alive(s, now)
                            && s.since
                                .is_some_and(|t| now.duration_since(t) >= self.timeout)
                    }) {
                        return Some(b);
                    }
                }
                Some(a)
            }
            _ => first_alive,
        }
    }

    fn switch(
        &mut self,
        active: &mut Option<usize>,
        to: Option<usize>,
        rw: &mut super::ts::CcRewriter,
        why: &str,
    ) {
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
            i.and_then(|i| self.shared.inputs.get(i))
                .map(|x| x.0.clone())
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
        let stream_on = self.stream_enabled;
        for o in self.outputs.iter_mut() {
            if !o.spec.enabled || (!stream_on && o.gated_by_stream_enable()) {
                continue;
            }
            if let Some(sock) = &o.direct {
                if super::output::udp_send_chunk(sock, &chunk, &o.stats) {
                    if let Some(v) = video {
                        o.loss.delivered(&chunk, v);
                    }
                } else {
                    o.stats.dropped(chunk.len());
                    if let Some(v) = video {
                        let n = o.loss.dropped(&chunk, v);
                        o.stats.frames_lost.fetch_add(n, Relaxed);
                    }
                }
                continue;
            }
            match o.tx.try_send(chunk.clone()) {
                Ok(()) => {
                    if let Some(v) = video {
                        o.loss.delivered(&chunk, v);
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

    fn publish_outputs(&self) {
        *self.shared.outputs.lock() = self
            .outputs
            .iter()
            .map(|o| {
                (
                    o.spec.name.clone(),
                    o.spec.kind.type_name(),
                    o.spec.enabled,
                    o.stats.clone(),
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
        match c {
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
                    found = true;
                }
                let _ = reply.send(found);
            }
            RouteCmd::SetRecording(en, reply) => {
                let mut n = 0;
                for o in self
                    .outputs
                    .iter_mut()
                    .filter(|o| matches!(o.spec.kind, OutputKind::Record { .. }))
                {
                    o.spec.enabled = en;
                    n += 1;
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
            RouteCmd::SetStreamEnabled(en) => {
                self.stream_enabled = en;
                self.shared.stream_enabled.store(en, Relaxed);
            }
        }
        self.publish_outputs();
    }
}

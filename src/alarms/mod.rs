//! The alarm runtime: evaluates every alarm-capable point on each change of the point database (and when a time delay runs out), keeps the live event states, the transition history and acknowledgements, and broadcasts each event to the protocol views.
//!
//! The evaluation rules are `points::alarm` (ASHRAE 135 clause 13); this
//! module only drives them. Like the point database, it is the one place
//! alarms live: BACnet's Event_State and GetEventInformation, `/api/alarms`,
//! the Haystack records and the Modbus summary block all read [`Alarms`].
//!
//! Durability: a transition or an acknowledgement goes through the
//! [`AlarmStore`] hook *before* it is visible or acknowledged to the client,
//! as command writes go through the `Persister` (docs/security.md), so an
//! acknowledged ack survives kill -9. A store failure refuses the ack.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::points::alarm::{
    AckError, AlarmSpec, AlarmState, ClassRules, EventState, Transition, TransitionKind,
};
use crate::points::{PointDb, PointId, Source};

pub mod config;

/// One recorded transition.
#[derive(Debug, Clone)]
pub struct AlarmRecord {
    /// Monotonic across the process (history order).
    pub seq: u64,
    pub point: String,
    pub transition: Transition,
}

/// What subscribers (WebSocket, BACnet notifier, webhooks) receive.
#[derive(Debug, Clone)]
pub enum AlarmEvent {
    Transition(AlarmRecord),
    Ack {
        point: String,
        kind: TransitionKind,
        at: DateTime<Utc>,
        source: Source,
    },
}

/// Durable storage of transitions and acknowledgements.
pub trait AlarmStore: Send + Sync {
    fn record_transition(&self, rec: &AlarmRecord) -> anyhow::Result<()>;
    fn record_ack(
        &self,
        point: &str,
        kind: TransitionKind,
        time_stamp: DateTime<Utc>,
        source: &Source,
    ) -> anyhow::Result<()>;
}

/// Why an acknowledgement failed.
#[derive(Debug, thiserror::Error)]
pub enum AckFailure {
    #[error("point {0:?} has no alarm")]
    NoAlarm(String),
    #[error(transparent)]
    Refused(#[from] AckError),
    #[error("the acknowledgement could not be stored: {0}")]
    Store(String),
}

/// Waits for the route blocks to change; false once the database is gone
/// (pending forever without route blocks).
async fn block_changed(b: &mut Option<tokio::sync::watch::Receiver<u64>>) -> bool {
    match b {
        Some(b) => b.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Transitions kept in memory for `history` (the durable store keeps more).
pub const HISTORY_CAP: usize = 1000;

/// A point's alarm as the views show it.
#[derive(Debug, Clone)]
pub struct AlarmSummary {
    pub point: String,
    pub state: AlarmState,
    pub notification_class: u32,
}

struct Inner {
    db: PointDb,
    points: Vec<(PointId, AlarmSpec)>,
    index: HashMap<PointId, usize>,
    classes: HashMap<u32, ClassRules>,
    states: Mutex<Vec<AlarmState>>,
    history: Mutex<VecDeque<AlarmRecord>>,
    history_cap: usize,
    seq: std::sync::atomic::AtomicU64,
    events: broadcast::Sender<AlarmEvent>,
    store: std::sync::OnceLock<Arc<dyn AlarmStore>>,
}

/// Cheap-clone handle to the alarm runtime.
#[derive(Clone)]
pub struct Alarms {
    inner: Arc<Inner>,
}

impl Alarms {
    /// `points`: the alarm-capable points and their specs; `classes`: the
    /// notification classes by number (a spec naming a missing class uses
    /// the defaults: no ack required, priority 255 — config validation
    /// refuses that case). History keeps the newest `history_cap` records
    /// in memory (the store keeps more).
    pub fn new(
        db: PointDb,
        points: Vec<(PointId, AlarmSpec)>,
        classes: HashMap<u32, ClassRules>,
        history_cap: usize,
    ) -> Alarms {
        let index = points
            .iter()
            .enumerate()
            .map(|(i, (p, _))| (*p, i))
            .collect();
        let states = Mutex::new(vec![AlarmState::default(); points.len()]);
        let (events, _) = broadcast::channel(1024);
        Alarms {
            inner: Arc::new(Inner {
                db,
                points,
                index,
                classes,
                states,
                history: Mutex::new(VecDeque::new()),
                history_cap: history_cap.max(1),
                seq: std::sync::atomic::AtomicU64::new(0),
                events,
                store: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Installs the durable store (once, before `run`).
    pub fn set_store(&self, s: Arc<dyn AlarmStore>) {
        let _ = self.inner.store.set(s);
    }

    /// Puts back a persisted state (start-up, before `run`).
    pub fn restore(&self, point: PointId, st: AlarmState) {
        if let Some(&i) = self.inner.index.get(&point) {
            self.inner.states.lock()[i] = st;
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AlarmEvent> {
        self.inner.events.subscribe()
    }

    fn rules(&self, spec: &AlarmSpec) -> ClassRules {
        self.inner
            .classes
            .get(&spec.notification_class)
            .copied()
            .unwrap_or_default()
    }

    /// Evaluates point `i` now; records and broadcasts a transition.
    fn evaluate(&self, i: usize, now: Instant, wall: DateTime<Utc>) {
        let (id, spec) = &self.inner.points[i];
        // A route block nobody owns (route deleted, slot free) has no
        // alarm: its state goes back to NORMAL silently, so neither a
        // free slot nor the next route given it inherits an event.
        if !self.inner.db.is_present(*id) {
            let mut states = self.inner.states.lock();
            if states[i] != AlarmState::default() {
                states[i] = AlarmState::default();
            }
            return;
        }
        let Some(st) = self.inner.db.read(*id) else {
            return;
        };
        let rules = self.rules(spec);
        let t = {
            let mut states = self.inner.states.lock();
            states[i].evaluate(spec, &rules, st.value, st.quality, now, wall)
        };
        if let Some(t) = t {
            let point = self
                .inner
                .db
                .def(*id)
                .map(|d| d.id.clone())
                .unwrap_or_default();
            let rec = AlarmRecord {
                seq: self
                    .inner
                    .seq
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                point,
                transition: t,
            };
            if let Some(s) = self.inner.store.get() {
                // A transition that cannot be stored is still a real
                // state change: keep it live and say so loudly.
                if let Err(e) = s.record_transition(&rec) {
                    tracing::error!(point = %rec.point, "alarm transition not stored: {e:#}");
                }
            }
            tracing::info!(
                point = %rec.point,
                from = rec.transition.from.as_str(),
                to = rec.transition.to.as_str(),
                reason = %rec.transition.reason,
                "alarm transition"
            );
            {
                let mut h = self.inner.history.lock();
                if h.len() == self.inner.history_cap {
                    h.pop_front();
                }
                h.push_back(rec.clone());
            }
            let _ = self.inner.events.send(AlarmEvent::Transition(rec));
        }
    }

    /// Evaluates every point (start-up, and after a lagged change feed).
    pub fn evaluate_all(&self) {
        let (now, wall) = (Instant::now(), Utc::now());
        for i in 0..self.inner.points.len() {
            self.evaluate(i, now, wall);
        }
    }

    /// The earliest pending time-delay deadline.
    fn next_deadline(&self) -> Option<Instant> {
        let states = self.inner.states.lock();
        self.inner
            .points
            .iter()
            .zip(states.iter())
            .filter_map(|((_, spec), st)| st.next_deadline(spec))
            .min()
    }

    /// Evaluates points on every change and at time-delay deadlines until
    /// `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut rx = self.inner.db.subscribe();
        // Routes coming and going open and close blocks without a value
        // change of every point: re-judge all then.
        let mut blocks = self.inner.db.subscribe_blocks();
        self.evaluate_all();
        loop {
            let deadline = self.next_deadline();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ok = block_changed(&mut blocks) => {
                    if ok {
                        self.evaluate_all();
                    } else {
                        blocks = None;
                    }
                }
                r = rx.recv() => match r {
                    Ok(c) => {
                        if let Some(&i) = self.inner.index.get(&c.id) {
                            self.evaluate(i, Instant::now(), Utc::now());
                        }
                    }
                    // Missed changes: judge every point from its current state.
                    Err(RecvError::Lagged(_)) => self.evaluate_all(),
                    Err(RecvError::Closed) => return,
                },
                _ = sleep => {
                    let (now, wall) = (Instant::now(), Utc::now());
                    for i in 0..self.inner.points.len() {
                        let due = {
                            let states = self.inner.states.lock();
                            states[i].next_deadline(&self.inner.points[i].1).is_some_and(|d| d <= now)
                        };
                        if due {
                            self.evaluate(i, now, wall);
                        }
                    }
                }
            }
        }
    }

    /// Points that are not NORMAL or wait for an acknowledgement
    /// (GetEventInformation, `/api/alarms`).
    pub fn active(&self) -> Vec<AlarmSummary> {
        let states = self.inner.states.lock();
        self.inner
            .points
            .iter()
            .zip(states.iter())
            .filter(|(_, st)| st.is_listed())
            .map(|((id, spec), st)| AlarmSummary {
                point: self
                    .inner
                    .db
                    .def(*id)
                    .map(|d| d.id.clone())
                    .unwrap_or_default(),
                state: st.clone(),
                notification_class: spec.notification_class,
            })
            .collect()
    }

    /// The alarm-capable points and their specs (present or not: a view
    /// checks `PointDb::is_present`), in database order.
    pub fn points(&self) -> impl Iterator<Item = (PointId, &AlarmSpec)> + '_ {
        self.inner.points.iter().map(|(id, s)| (*id, s))
    }

    /// A point's alarm spec (`None` for a point without an alarm).
    pub fn spec(&self, point: PointId) -> Option<&AlarmSpec> {
        let &i = self.inner.index.get(&point)?;
        Some(&self.inner.points[i].1)
    }

    /// The rules of notification class `n` (`None` if it does not exist).
    pub fn class(&self, n: u32) -> Option<ClassRules> {
        self.inner.classes.get(&n).copied()
    }

    /// The alarm runtime of a database whose definitions carry
    /// `[point.alarm]` specs (server points and every reserved route
    /// block), routed through `classes`.
    pub fn from_db(db: &PointDb, classes: &[config::NotificationClassTable]) -> Alarms {
        let points: Vec<(PointId, AlarmSpec)> = db
            .all_ids()
            .filter_map(|id| Some((id, db.def(id)?.alarm.clone()?)))
            .collect();
        let classes = classes.iter().map(|c| (c.id, c.rules())).collect();
        Alarms::new(db.clone(), points, classes, HISTORY_CAP)
    }

    /// A point's alarm state (`None` for a point without an alarm).
    pub fn state(&self, point: PointId) -> Option<AlarmState> {
        let &i = self.inner.index.get(&point)?;
        Some(self.inner.states.lock()[i].clone())
    }

    /// The newest `n` transitions, oldest first.
    pub fn history(&self, n: usize) -> Vec<AlarmRecord> {
        let h = self.inner.history.lock();
        h.iter().skip(h.len().saturating_sub(n)).cloned().collect()
    }

    /// Acknowledges one transition of a point. Stored before it takes
    /// effect; `Ok(false)` when it was already acknowledged.
    pub fn acknowledge(
        &self,
        point: &str,
        kind: TransitionKind,
        time_stamp: DateTime<Utc>,
        source: &Source,
    ) -> Result<bool, AckFailure> {
        let i = self
            .inner
            .db
            .lookup(point)
            .and_then(|id| self.inner.index.get(&id).copied())
            .ok_or_else(|| AckFailure::NoAlarm(point.to_string()))?;
        let mut states = self.inner.states.lock();
        // Check first, on a copy: a refused ack must not be stored.
        let mut probe = states[i].clone();
        let changed = probe.acknowledge(kind, time_stamp)?;
        if changed {
            if let Some(s) = self.inner.store.get() {
                s.record_ack(point, kind, time_stamp, source)
                    .map_err(|e| AckFailure::Store(format!("{e:#}")))?;
            }
            states[i] = probe;
            drop(states);
            let _ = self.inner.events.send(AlarmEvent::Ack {
                point: point.to_string(),
                kind,
                at: Utc::now(),
                source: source.clone(),
            });
        }
        Ok(changed)
    }

    /// Counts for summaries (Modbus block, metrics): (active, unacked).
    pub fn counts(&self) -> (usize, usize) {
        let states = self.inner.states.lock();
        let active = states
            .iter()
            .filter(|s| s.event_state != EventState::Normal)
            .count();
        let unacked = states
            .iter()
            .filter(|s| TransitionKind::ALL.iter().any(|k| !s.acked.get(*k)))
            .count();
        (active, unacked)
    }
}

#[cfg(test)]
mod tests;

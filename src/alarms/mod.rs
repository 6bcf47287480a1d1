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
pub mod json;
pub mod webhook;

/// One recorded transition.
#[derive(Debug, Clone)]
pub struct AlarmRecord {
    /// Monotonic across the process (history order).
    pub seq: u64,
    pub point: String,
    /// The route that owned the point's block when the transition was
    /// judged (`None` for a server point). Kept with the record because a
    /// closing transition is judged as the block goes away.
    pub route: Option<String>,
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

    /// Like [`record_ack`](Self::record_ack), with the operator's comment
    /// (REST) or acknowledgment source (BACnet). Stores that keep no
    /// comment need not implement it.
    fn record_ack_with(
        &self,
        point: &str,
        kind: TransitionKind,
        time_stamp: DateTime<Utc>,
        source: &Source,
        comment: Option<&str>,
    ) -> anyhow::Result<()> {
        let _ = comment;
        self.record_ack(point, kind, time_stamp, source)
    }

    /// A route block closed or changed owner: its point's alarm state
    /// was dropped (after a closing transition, if it was not NORMAL); the
    /// stored state must not come back.
    fn record_reset(&self, point: &str) -> anyhow::Result<()> {
        let _ = point;
        Ok(())
    }

    /// An acknowledgement with the point's whole state after it, so a
    /// store that missed a transition (a full disk when it happened) is
    /// brought back in line instead of refusing every later ack of it.
    /// Stores that keep no state need not implement it.
    #[allow(clippy::too_many_arguments)]
    fn record_ack_state(
        &self,
        point: &str,
        kind: TransitionKind,
        time_stamp: DateTime<Utc>,
        source: &Source,
        comment: Option<&str>,
        state: &AlarmState,
    ) -> anyhow::Result<()> {
        let _ = state;
        self.record_ack_with(point, kind, time_stamp, source, comment)
    }

    /// An acknowledgement a protocol refused (a time stamp or state that is
    /// not the transition's, no such alarm): kept in the audit log like a
    /// refused write, so who tried is on record. `detail` says what was
    /// asked and why it was refused. Stores that keep no audit need not
    /// implement it.
    fn record_refused_ack(
        &self,
        point: &str,
        kind: TransitionKind,
        source: &Source,
        detail: &str,
    ) -> anyhow::Result<()> {
        let _ = (point, kind, source, detail);
        Ok(())
    }
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

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
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

/// After the runtime starts, a point without a good value is not judged
/// FAULT for this long: telemetry, the engine and MQTT start after the
/// alarms and report their first values within a second or two, and a
/// restart must not raise (and ask operators to acknowledge) a FAULT for
/// every point that simply has not been sampled yet. The same grace the
/// stream status takes (`telemetry::status::STARTUP_GRACE`). A point that
/// is still without a good value when it ends is judged then.
pub const STARTUP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// Whether each point was present at its last evaluation.
    present: Vec<std::sync::atomic::AtomicBool>,
    /// The route that owned each point's block when its state was last
    /// judged (or, restored, when it was stored); `None` for server points
    /// and unknown owners. A state judged for one route never carries over
    /// to the next route given the same slot.
    owners: Mutex<Vec<Option<String>>>,
    /// Bad quality is not judged as FAULT before this (see
    /// [`STARTUP_GRACE`]); set when `run` starts.
    grace_until: Mutex<Option<Instant>>,
    /// The grace `run` takes ([`STARTUP_GRACE`] unless set).
    grace: Mutex<std::time::Duration>,
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
        let owners = Mutex::new(vec![None; points.len()]);
        let present = points
            .iter()
            .map(|_| std::sync::atomic::AtomicBool::new(false))
            .collect();
        let (events, _) = broadcast::channel(1024);
        Alarms {
            inner: Arc::new(Inner {
                db,
                points,
                index,
                classes,
                states,
                present,
                owners,
                grace_until: Mutex::new(None),
                grace: Mutex::new(STARTUP_GRACE),
                history: Mutex::new(VecDeque::new()),
                history_cap: history_cap.max(1),
                seq: std::sync::atomic::AtomicU64::new(0),
                events,
                store: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Sets the start-up grace (before `run`; tests shorten it).
    pub fn set_startup_grace(&self, d: std::time::Duration) {
        *self.inner.grace.lock() = d;
    }

    /// Installs the durable store (once, before `run`).
    pub fn set_store(&self, s: Arc<dyn AlarmStore>) {
        let _ = self.inner.store.set(s);
    }

    /// Puts back a persisted state (start-up, before `run`), judged for
    /// `route` (the route that owned the point's block when it was
    /// stored; `None` for server points or when not recorded).
    pub fn restore(&self, point: PointId, st: AlarmState, route: Option<String>) {
        if let Some(&i) = self.inner.index.get(&point) {
            self.inner.states.lock()[i] = st;
            self.inner.owners.lock()[i] = route;
        }
    }

    /// The point database the alarms watch.
    pub fn db(&self) -> &PointDb {
        &self.inner.db
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
        // alarm: an active one is closed (a to-NORMAL transition, "route
        // deleted", so recipients, webhooks and the history see it end)
        // and the state dropped, so neither a free slot nor the next route
        // given it inherits an event. Only once the block was seen
        // present: at start-up the blocks open after the first
        // evaluation, and a state restored from the store must wait for
        // its route, not be wiped before it comes.
        let present = self.inner.db.is_present(*id);
        let was = self.inner.present[i].swap(present, std::sync::atomic::Ordering::Relaxed);
        if !present {
            if was {
                let owner = self.inner.owners.lock()[i].take();
                self.close(i, wall, owner, "route deleted");
            }
            return;
        }
        // The block changed hands between two looks (a route deleted and
        // another created in the same slot, a rename) or since the state
        // was stored: the old route's alarm ends here, the new route's
        // point is judged from NORMAL.
        let owner = crate::alarms::json::route_of(&self.inner.db, *id);
        let old = {
            let mut owners = self.inner.owners.lock();
            std::mem::replace(&mut owners[i], owner.clone())
        };
        if old.is_some() && old != owner {
            let why = format!(
                "route {} gave its slot to {}",
                old.as_deref().unwrap_or("?"),
                owner.as_deref().unwrap_or("none")
            );
            self.close(i, wall, old, &why);
        }
        let Some(st) = self.inner.db.read(*id) else {
            return;
        };
        // Within the start-up grace a point without a good value is left
        // as it is (see STARTUP_GRACE); `run` judges every point again
        // when the grace ends.
        if st.quality != crate::points::Quality::Ok
            && self.inner.grace_until.lock().is_some_and(|g| now < g)
        {
            return;
        }
        let rules = self.rules(spec);
        let t = {
            let mut states = self.inner.states.lock();
            states[i].evaluate(spec, &rules, st.value, st.quality, now, wall)
        };
        if let Some(t) = t {
            self.publish(*id, owner, t);
        }
    }

    /// Ends point `i`'s alarm for `route` (its block closed or changed
    /// owner): a to-NORMAL transition when it was not NORMAL (notified as
    /// Event_Enable says, no acknowledgement asked: nobody could give one
    /// for a route that is gone), then the state is dropped, in memory and
    /// in the store.
    fn close(&self, i: usize, wall: DateTime<Utc>, route: Option<String>, why: &str) {
        let (id, spec) = &self.inner.points[i];
        let old = std::mem::take(&mut self.inner.states.lock()[i]);
        if old == AlarmState::default() {
            return;
        }
        if old.event_state != EventState::Normal {
            let rules = self.rules(spec);
            let t = Transition {
                from: old.event_state,
                to: EventState::Normal,
                kind: TransitionKind::ToNormal,
                at: wall,
                notify: spec.event_enable.to_normal,
                ack_required: false,
                priority: rules.priority.to_normal,
                value: None,
                reason: why.to_string(),
            };
            self.publish(*id, route, t);
        }
        if let Some(s) = self.inner.store.get() {
            let point = self.inner.db.def(*id).map(|d| d.id.as_str()).unwrap_or("");
            if let Err(e) = s.record_reset(point) {
                tracing::warn!(
                    point,
                    "alarm state of a closed route block not cleared in the store: {e:#}"
                );
            }
        }
    }

    /// Records, logs and broadcasts one transition of `id`.
    fn publish(&self, id: PointId, route: Option<String>, t: Transition) {
        let point = self
            .inner
            .db
            .def(id)
            .map(|d| d.id.clone())
            .unwrap_or_default();
        let rec = AlarmRecord {
            seq: self
                .inner
                .seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            point,
            route,
            transition: t,
        };
        if let Some(s) = self.inner.store.get() {
            // A transition that cannot be stored (a full disk) is still a
            // real state change: it is shown and notified (an alarm must
            // never be hidden by the failure it may be about) and logged;
            // the next acknowledgement stores the point's whole state
            // (`record_ack_state`), so it stays acknowledgeable.
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
        let grace = Instant::now() + *self.inner.grace.lock();
        *self.inner.grace_until.lock() = Some(grace);
        let mut in_grace = true;
        self.evaluate_all();
        // A lower bound on the earliest time-delay deadline: exact after a
        // full look, lowered as single points are judged. A deadline that
        // went away (the condition cleared) or moved later only makes the
        // loop wake once for nothing and look again.
        let mut next = self.next_deadline();
        loop {
            let deadline = match next {
                Some(d) if in_grace => Some(d.min(grace)),
                None if in_grace => Some(grace),
                d => d,
            };
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
                            // Only this point's deadline can have moved:
                            // fold it into the bound instead of looking at
                            // every alarm-capable point (thousands with
                            // reserved route blocks) after each change,
                            // which was a tenth of an idle castpoint's CPU.
                            let d = self.inner.states.lock()[i].next_deadline(&self.inner.points[i].1);
                            next = earliest(next, d);
                        }
                        continue;
                    }
                    // Missed changes: judge every point from its current state.
                    Err(RecvError::Lagged(_)) => self.evaluate_all(),
                    Err(RecvError::Closed) => return,
                },
                _ = sleep => {
                    let (now, wall) = (Instant::now(), Utc::now());
                    if in_grace && now >= grace {
                        // The grace is over: points still without a good
                        // value are judged now.
                        in_grace = false;
                        *self.inner.grace_until.lock() = None;
                        self.evaluate_all();
                        next = self.next_deadline();
                        continue;
                    }
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
            next = self.next_deadline();
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
            .filter(|((id, _), st)| st.is_listed() && self.inner.db.is_present(*id))
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
        self.acknowledge_with(point, kind, time_stamp, source, None)
    }

    /// [`acknowledge`](Self::acknowledge) with a comment kept in the store
    /// and the audit log.
    pub fn acknowledge_with(
        &self,
        point: &str,
        kind: TransitionKind,
        time_stamp: DateTime<Utc>,
        source: &Source,
        comment: Option<&str>,
    ) -> Result<bool, AckFailure> {
        let i = self
            .inner
            .db
            .lookup(point)
            .and_then(|id| self.inner.index.get(&id).copied())
            .ok_or_else(|| AckFailure::NoAlarm(point.to_string()))?;
        // The lock is held across the store's write on purpose: a transition
        // judged meanwhile would otherwise be overwritten in memory by the
        // probe written here. An ack is rare and one small transaction.
        let mut states = self.inner.states.lock();
        // Check first, on a copy: a refused ack must not be stored.
        let mut probe = states[i].clone();
        let changed = probe.acknowledge(kind, time_stamp)?;
        if changed {
            if let Some(s) = self.inner.store.get() {
                s.record_ack_state(point, kind, time_stamp, source, comment, &probe)
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

    /// Audits an acknowledgement a protocol refused (see
    /// `AlarmStore::record_refused_ack`). The REST API audits its own
    /// refusals (rate-bounded, with the HTTP status); BACnet calls this.
    pub fn audit_refused_ack(
        &self,
        point: &str,
        kind: TransitionKind,
        source: &Source,
        detail: &str,
    ) {
        if let Some(s) = self.inner.store.get() {
            if let Err(e) = s.record_refused_ack(point, kind, source, detail) {
                tracing::warn!("refused acknowledgement of {point} not audited: {e:#}");
            }
        }
    }

    /// The notification class of a point's alarm.
    pub fn class_of(&self, point: &str) -> Option<u32> {
        let id = self.inner.db.lookup_any(point)?;
        let &i = self.inner.index.get(&id)?;
        Some(self.inner.points[i].1.notification_class)
    }

    /// Counts for summaries (Modbus block, metrics): (active, unacked).
    pub fn counts(&self) -> (usize, usize) {
        let states = self.inner.states.lock();
        // A free route slot's restored state waits for its route unseen.
        let shown = || {
            self.inner
                .points
                .iter()
                .zip(states.iter())
                .filter(|((id, _), _)| self.inner.db.is_present(*id))
                .map(|(_, s)| s)
        };
        let active = shown()
            .filter(|s| s.event_state != EventState::Normal)
            .count();
        let unacked = shown()
            .filter(|s| TransitionKind::ALL.iter().any(|k| !s.acked.get(*k)))
            .count();
        (active, unacked)
    }
}

#[cfg(test)]
mod tests;

//! The point database: current value, quality and priority array of every point, the single source of truth all protocols read and write.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, watch};

use super::model::{Kind, PointDef, PointId, Quality, Role, SiteEquip, Value, ValueError};
use super::policy::WritePolicy;
use super::routes::{BlockInfo, RoutePoint, RouteTemplate};

/// Number of command priority levels (BACnet 1..16). Level 17 addresses the
/// relinquish default, as Haystack pointWrite does.
pub const PRIORITY_LEVELS: usize = 16;
/// The level that writes the relinquish default.
pub const DEFAULT_LEVEL: u8 = 17;
/// Resolved values coming from this level or a more important one are
/// operator overrides (BACnet 8 = Manual Operator), shown as `Overridden`.
pub const OVERRIDE_LEVEL: u8 = 8;

/// Which protocol a write or read came through (for the audit trail only:
/// the engine never sees it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Bacnet,
    Modbus,
    Haystack,
    Rest,
    /// MQTT Sparkplug B NCMD/DCMD (src/protocols/mqtt).
    Mqtt,
    /// castpoint itself (telemetry, start-up restore, the engine).
    Internal,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Bacnet => "bacnet",
            Protocol::Modbus => "modbus",
            Protocol::Haystack => "haystack",
            Protocol::Rest => "rest",
            Protocol::Mqtt => "mqtt",
            Protocol::Internal => "internal",
        }
    }
}

/// Who issued a write: carried into the audit log and the priority slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub protocol: Protocol,
    pub peer: Option<SocketAddr>,
    pub user: Option<String>,
}

impl Source {
    pub fn internal() -> Self {
        Source {
            protocol: Protocol::Internal,
            peer: None,
            user: None,
        }
    }

    pub fn new(protocol: Protocol, peer: Option<SocketAddr>, user: Option<String>) -> Self {
        Source {
            protocol,
            peer,
            user,
        }
    }

    /// Short human form: `modbus 127.0.0.1:5555 (alice)`.
    pub fn describe(&self) -> String {
        let mut s = self.protocol.as_str().to_string();
        if let Some(p) = self.peer {
            s.push(' ');
            s.push_str(&p.to_string());
        }
        if let Some(u) = &self.user {
            s.push_str(" (");
            s.push_str(u);
            s.push(')');
        }
        s
    }
}

/// One occupied priority slot.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotValue {
    pub value: Value,
    pub who: Source,
    pub at: DateTime<Utc>,
}

/// The 16-level priority array of a commandable point plus its relinquish default.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorityArray {
    pub slots: [Option<SlotValue>; PRIORITY_LEVELS],
    pub default: Value,
}

impl PriorityArray {
    fn new(default: Value) -> Self {
        PriorityArray {
            slots: Default::default(),
            default,
        }
    }

    /// The value in force and the level it comes from (17 = default).
    pub fn resolve(&self) -> (Value, u8) {
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(s) = s {
                return (s.value, (i + 1) as u8);
            }
        }
        (self.default, DEFAULT_LEVEL)
    }
}

/// The current state of one point.
#[derive(Debug, Clone, PartialEq)]
pub struct PointState {
    /// `None` when there is no honest value (no source yet, unavailable).
    pub value: Option<Value>,
    pub quality: Quality,
    /// Why the quality is not Ok (shown in Haystack curErr, logs, events).
    pub reason: Option<Arc<str>>,
    pub updated: DateTime<Utc>,
    /// Level the value comes from, for commandable points (1..=17).
    pub level: Option<u8>,
}

/// A change notification delivered to every subscriber.
#[derive(Debug, Clone)]
pub struct Change {
    pub id: PointId,
    pub state: PointState,
    /// Monotonic sequence number across the whole database.
    pub seq: u64,
}

/// One audited write attempt (accepted or refused).
#[derive(Debug, Clone)]
pub struct WriteRecord {
    pub at: DateTime<Utc>,
    pub point: String,
    pub priority: u8,
    /// `None` = relinquish.
    pub requested: Option<Value>,
    pub old: Option<Value>,
    pub new: Option<Value>,
    pub source: Source,
    pub result: Result<(), WriteError>,
}

/// A history sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub value: Value,
}

/// Why a write was refused. Each protocol maps these to its own error
/// (BACnet error class/code, Modbus exception, Haystack error grid, HTTP 4xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("unknown point")]
    UnknownPoint,
    #[error("point is not writable")]
    NotWritable,
    #[error("priority must be 1..=16, or 17 for the relinquish default")]
    InvalidPriority,
    #[error("value has the wrong type for this point")]
    TypeMismatch,
    #[error("value is outside the point's range")]
    OutOfRange,
    #[error("the relinquish default cannot be null")]
    NullDefault,
    /// The command could not be stored durably, so it was not applied.
    #[error("the command could not be stored; it was not applied")]
    Storage,
    /// The protocol's write policy refuses this source (read-only, or a
    /// peer outside `write_allow`).
    #[error("writes from this source are not allowed by the protocol's write policy")]
    Denied,
}

/// Durable storage of commands, called synchronously inside
/// [`PointDb::write`] before the write takes effect.
pub trait Persister: Send + Sync {
    /// Stores the audit record and, for accepted writes, the point's new
    /// priority array (point id, array) in one transaction.
    fn persist(&self, rec: &WriteRecord, pa: Option<(&str, &PriorityArray)>) -> Result<(), String>;

    /// Drops the stored arrays of these points (a freed route block).
    fn forget(&self, _points: &[String]) -> Result<(), String> {
        Ok(())
    }
}

impl From<ValueError> for WriteError {
    fn from(e: ValueError) -> Self {
        match e {
            ValueError::TypeMismatch => WriteError::TypeMismatch,
            ValueError::OutOfRange => WriteError::OutOfRange,
        }
    }
}

/// Result of an accepted write.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    pub old: Option<Value>,
    pub new: Option<Value>,
    pub level: u8,
}

/// Tunables of the database.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// How long samples are kept (per point, bounded by `history_cap`).
    pub history_retention: Duration,
    /// Upper bound on samples kept per point, whatever the period.
    pub history_cap: usize,
    /// Audit records kept in memory (persistence keeps more).
    pub audit_cap: usize,
    /// A measurement not refreshed within this many sample periods turns Stale.
    pub stale_after_periods: u32,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            history_retention: Duration::from_secs(7 * 24 * 3600),
            history_cap: 200_000,
            audit_cap: 10_000,
            stale_after_periods: 3,
        }
    }
}

struct Slot {
    state: PointState,
    priority: Option<PriorityArray>,
    /// Last value that went into history (for cov-increment filtering).
    last_his: Option<Value>,
}

struct Inner {
    defs: Vec<PointDef>,
    by_id: HashMap<String, PointId>,
    site: SiteEquip,
    opts: DbOptions,
    // One lock per point: writers of different points never contend, and a
    // reader of one point (a Modbus poll) never waits for a slow subscriber.
    slots: Vec<RwLock<Slot>>,
    // One watch per point so the router can await exactly the command points
    // it acts on, always seeing the latest resolved value (no backlog).
    watches: Vec<watch::Sender<PointState>>,
    // Broadcast rather than per-subscriber queues: a lagging subscriber
    // (a stuck WebSocket) loses old changes and resynchronises from a
    // snapshot instead of growing memory or blocking writers.
    changes: broadcast::Sender<Change>,
    writes: broadcast::Sender<Arc<WriteRecord>>,
    seq: AtomicU64,
    history: Vec<Mutex<VecDeque<Sample>>>,
    // The points with history samples the flusher has not looked at yet,
    // each listed once (its flag set): the flusher reads only these,
    // instead of every history buffer of every reserved route block each
    // flush, which was a quarter of an idle castpoint's CPU.
    his_dirty: Mutex<Vec<PointId>>,
    his_flagged: Vec<AtomicBool>,
    audit: Mutex<VecDeque<Arc<WriteRecord>>>,
    persister: std::sync::OnceLock<Arc<dyn Persister>>,
    // Per-protocol write policies (Modbus and BACnet carry no
    // authentication); checked first in `write`, so refusals are audited.
    policies: RwLock<HashMap<Protocol, WritePolicy>>,
    routes: Option<Blocks>,
}

/// The reserved route blocks (see `points::routes`): slot `s` (1-based)
/// holds the points `first + (s-1)*len .. first + s*len`.
struct Blocks {
    tpl: RouteTemplate,
    first: usize,
    len: usize,
    /// (template index, output) of each point of a block, in id order.
    layout: Vec<(usize, Option<u16>)>,
    /// Template id -> index.
    by_tid: HashMap<String, usize>,
    /// Served or not, read on every protocol request: an atomic, no lock.
    present: Vec<AtomicBool>,
    info: Vec<RwLock<Option<Arc<BlockInfo>>>>,
    /// Bumped whenever a block appears, disappears or changes owner, so
    /// protocols that publish a directory (BACnet Object_List, Haystack
    /// nav) rebuild it.
    rev: watch::Sender<u64>,
    /// Renames announced (old name, new name) and not yet seen by the slot
    /// keeper: the renamed route keeps its slot and its block's state.
    renames: Mutex<Vec<(String, String)>>,
}

impl Blocks {
    fn slot_index(&self, slot: u16) -> Option<usize> {
        let i = usize::from(slot).checked_sub(1)?;
        (i < self.present.len()).then_some(i)
    }

    fn locate(&self, id: PointId) -> Option<RoutePoint> {
        let off = id.index().checked_sub(self.first)?;
        let si = off / self.len.max(1);
        if si >= self.present.len() {
            return None;
        }
        let (tpl, output) = *self.layout.get(off % self.len.max(1))?;
        Some(RoutePoint {
            slot: u16::try_from(si + 1).ok()?,
            tpl,
            output,
        })
    }
}

/// Cheap-clone handle to the point database.
#[derive(Clone)]
pub struct PointDb {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PointDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointDb")
            .field("points", &self.inner.defs.len())
            .finish()
    }
}

impl PointDb {
    /// Builds the database. Every point starts `Unavailable` with no value,
    /// except commandable points, which start at their relinquish default.
    /// Panics only on a programming error (more than 65535 points), which
    /// config validation prevents.
    pub fn new(defs: Vec<PointDef>, site: SiteEquip, opts: DbOptions) -> Self {
        Self::with_routes(defs, site, opts, None)
    }

    /// Builds the database with `template.max_slots` route blocks reserved
    /// after the server's points (all absent until a route owns them).
    pub fn with_routes(
        mut defs: Vec<PointDef>,
        site: SiteEquip,
        opts: DbOptions,
        template: Option<RouteTemplate>,
    ) -> Self {
        let routes = template.map(|tpl| {
            let layout = tpl.layout();
            let first = defs.len();
            for slot in 1..=tpl.max_slots {
                defs.extend(layout.iter().map(|&(t, o)| tpl.expand(slot, t, o)));
            }
            Blocks {
                first,
                len: layout.len(),
                layout,
                by_tid: tpl
                    .points
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (p.def.id.clone(), i))
                    .collect(),
                present: (0..tpl.max_slots).map(|_| AtomicBool::new(false)).collect(),
                info: (0..tpl.max_slots).map(|_| RwLock::new(None)).collect(),
                rev: watch::channel(0).0,
                renames: Mutex::new(Vec::new()),
                tpl,
            }
        });
        let now = Utc::now();
        let mut by_id = HashMap::new();
        let mut slots = Vec::with_capacity(defs.len());
        let mut watches = Vec::with_capacity(defs.len());
        let mut history = Vec::with_capacity(defs.len());
        for (i, d) in defs.iter().enumerate() {
            let id = PointId(u16::try_from(i).expect("config validation caps the point count"));
            by_id.insert(d.id.clone(), id);
            let priority = if d.writable {
                let default = d.relinquish_default.unwrap_or(match d.kind {
                    Kind::Bool => Value::Bool(false),
                    Kind::Number => Value::Number(d.min.unwrap_or(0.0)),
                    Kind::Enum => Value::Enum(1),
                });
                Some(PriorityArray::new(default))
            } else {
                None
            };
            let state = match &priority {
                Some(pa) => PointState {
                    value: Some(pa.default),
                    quality: Quality::Ok,
                    reason: None,
                    updated: now,
                    level: Some(DEFAULT_LEVEL),
                },
                None => PointState {
                    value: None,
                    quality: Quality::Unavailable,
                    reason: Some(Arc::from("no source has reported a value yet")),
                    updated: now,
                    level: None,
                },
            };
            watches.push(watch::channel(state.clone()).0);
            slots.push(RwLock::new(Slot {
                state,
                priority,
                last_his: None,
            }));
            history.push(Mutex::new(VecDeque::new()));
        }
        let (changes, _) = broadcast::channel(4096);
        let (writes, _) = broadcast::channel(1024);
        PointDb {
            inner: Arc::new(Inner {
                defs,
                by_id,
                site,
                opts,
                slots,
                watches,
                changes,
                writes,
                seq: AtomicU64::new(0),
                his_flagged: history.iter().map(|_| AtomicBool::new(false)).collect(),
                history,
                his_dirty: Mutex::new(Vec::new()),
                audit: Mutex::new(VecDeque::new()),
                persister: std::sync::OnceLock::new(),
                policies: RwLock::new(HashMap::new()),
                routes,
            }),
        }
    }

    pub fn len(&self) -> usize {
        self.inner.defs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.defs.is_empty()
    }

    pub fn site(&self) -> &SiteEquip {
        &self.inner.site
    }

    /// The server's own points (the seed's point list): what the
    /// server-level surfaces (`/api/points`, the server equip) list.
    pub fn ids(&self) -> impl Iterator<Item = PointId> + '_ {
        let n = self
            .inner
            .routes
            .as_ref()
            .map_or(self.inner.defs.len(), |b| b.first);
        (0..n).map(|i| PointId(i as u16))
    }

    /// The points of every present route block, by slot.
    pub fn route_ids(&self) -> Vec<PointId> {
        self.blocks()
            .into_iter()
            .flat_map(|(slot, _)| self.block_ids(slot))
            .collect()
    }

    /// Every point served now: the server's and the present blocks'.
    pub fn served_ids(&self) -> Vec<PointId> {
        let mut v: Vec<PointId> = self.ids().collect();
        v.extend(self.route_ids());
        v
    }

    /// Every point, reserved route blocks included (history, restore).
    pub fn all_ids(&self) -> impl Iterator<Item = PointId> + '_ {
        (0..self.inner.defs.len()).map(|i| PointId(i as u16))
    }

    /// Every definition, reserved route blocks included: filter with
    /// [`is_present`](Self::is_present) for what is served.
    pub fn defs(&self) -> &[PointDef] {
        &self.inner.defs
    }

    /// A served point by id (absent route blocks are not found).
    pub fn lookup(&self, id: &str) -> Option<PointId> {
        self.lookup_any(id).filter(|p| self.is_present(*p))
    }

    /// A point by id, present or not (restore of stored state).
    pub fn lookup_any(&self, id: &str) -> Option<PointId> {
        self.inner.by_id.get(id).copied()
    }

    /// Whether a point is served: server points always, route points
    /// while their block is owned by a route.
    pub fn is_present(&self, id: PointId) -> bool {
        if id.index() >= self.inner.defs.len() {
            return false;
        }
        match self.route_point(id) {
            Some(rp) => self.slot_present(rp.slot),
            None => true,
        }
    }

    // ------------------------------------------------------------ route blocks

    /// The route template, when route blocks are reserved.
    pub fn route_template(&self) -> Option<&RouteTemplate> {
        self.inner.routes.as_ref().map(|b| &b.tpl)
    }

    /// Where a point sits in the route blocks (None: a server point).
    pub fn route_point(&self, id: PointId) -> Option<RoutePoint> {
        self.inner.routes.as_ref()?.locate(id)
    }

    /// The point of template id `tid` (output `output`) in slot `slot`,
    /// present or not.
    pub fn block_point(&self, slot: u16, tid: &str, output: Option<u16>) -> Option<PointId> {
        let b = self.inner.routes.as_ref()?;
        let si = b.slot_index(slot)?;
        let tpl = *b.by_tid.get(tid)?;
        let k = b
            .layout
            .iter()
            .position(|&(t, o)| t == tpl && o == output)?;
        u16::try_from(b.first + si * b.len + k).ok().map(PointId)
    }

    /// Every point of slot `slot`, in id order.
    pub fn block_ids(&self, slot: u16) -> Vec<PointId> {
        let Some(b) = self.inner.routes.as_ref() else {
            return Vec::new();
        };
        let Some(si) = b.slot_index(slot) else {
            return Vec::new();
        };
        let start = b.first + si * b.len;
        (start..start + b.len).map(|i| PointId(i as u16)).collect()
    }

    pub fn slot_present(&self, slot: u16) -> bool {
        self.inner
            .routes
            .as_ref()
            .and_then(|b| Some(b.present.get(b.slot_index(slot)?)?.load(Ordering::Acquire)))
            .unwrap_or(false)
    }

    /// The route owning slot `slot`.
    pub fn block(&self, slot: u16) -> Option<Arc<BlockInfo>> {
        let b = self.inner.routes.as_ref()?;
        b.info.get(b.slot_index(slot)?)?.read().clone()
    }

    /// Every present block, by slot.
    pub fn blocks(&self) -> Vec<(u16, Arc<BlockInfo>)> {
        let Some(b) = self.inner.routes.as_ref() else {
            return Vec::new();
        };
        b.info
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((u16::try_from(i + 1).ok()?, l.read().clone()?)))
            .collect()
    }

    /// The slot of a route, by name.
    pub fn slot_of(&self, route: &str) -> Option<u16> {
        self.blocks()
            .into_iter()
            .find(|(_, b)| b.route == route)
            .map(|(s, _)| s)
    }

    /// Changes when blocks appear, disappear or change owner.
    pub fn subscribe_blocks(&self) -> Option<watch::Receiver<u64>> {
        self.inner.routes.as_ref().map(|b| b.rev.subscribe())
    }

    /// Gives slot `slot` to a route (or updates its inputs/outputs): its
    /// block is served from now on. Returns false for a slot out of range.
    pub fn open_block(&self, slot: u16, info: BlockInfo) -> bool {
        let Some(b) = self.inner.routes.as_ref() else {
            return false;
        };
        let Some(si) = b.slot_index(slot) else {
            return false;
        };
        let mut cur = b.info[si].write();
        if cur.as_deref() == Some(&info) {
            return true;
        }
        *cur = Some(Arc::new(info));
        drop(cur);
        b.present[si].store(true, Ordering::Release);
        b.rev.send_modify(|r| *r += 1);
        true
    }

    /// Announces that route `old` is about to be renamed `new` (REST PUT
    /// with another name), before the router makes the change: the slot
    /// keeper then hands `old`'s slot to `new` and updates its block in
    /// place (commands, priority arrays and history kept) instead of
    /// freeing it and giving `new` another.
    pub fn announce_rename(&self, old: &str, new: &str) {
        if let Some(b) = self.inner.routes.as_ref() {
            let mut r = b.renames.lock();
            r.retain(|(o, n)| o != old && n != new);
            r.push((old.to_string(), new.to_string()));
        }
    }

    /// Takes back an announced rename the router refused.
    pub fn withdraw_rename(&self, old: &str, new: &str) {
        if let Some(b) = self.inner.routes.as_ref() {
            b.renames.lock().retain(|(o, n)| !(o == old && n == new));
        }
    }

    /// The announced renames not yet taken (see `announce_rename`).
    pub fn pending_renames(&self) -> Vec<(String, String)> {
        self.inner
            .routes
            .as_ref()
            .map(|b| b.renames.lock().clone())
            .unwrap_or_default()
    }

    /// Frees slot `slot`: its block is no longer served, its measurements
    /// read unavailable and its commands go back to their relinquish
    /// defaults (a later route given the slot inherits nothing). Returns
    /// the ids of its command points, whose stored arrays the caller
    /// forgets.
    pub fn close_block(&self, slot: u16) -> Vec<String> {
        let Some(b) = self.inner.routes.as_ref() else {
            return Vec::new();
        };
        let Some(si) = b.slot_index(slot) else {
            return Vec::new();
        };
        if b.info[si].write().take().is_none() {
            return Vec::new();
        }
        b.present[si].store(false, Ordering::Release);
        let mut commands = Vec::new();
        for id in self.block_ids(slot) {
            let def = &self.inner.defs[id.index()];
            let now = Utc::now();
            let state = {
                let mut s = self.inner.slots[id.index()].write();
                let default = s.priority.as_ref().map(|pa| pa.default);
                if let Some(d) = default {
                    let fresh = PriorityArray::new(def.relinquish_default.unwrap_or(d));
                    s.state = PointState {
                        value: Some(fresh.default),
                        quality: Quality::Ok,
                        reason: None,
                        updated: now,
                        level: Some(DEFAULT_LEVEL),
                    };
                    s.priority = Some(fresh);
                    commands.push(def.id.clone());
                } else {
                    s.state = PointState {
                        value: None,
                        quality: Quality::Unavailable,
                        reason: Some(Arc::from("route deleted: slot free")),
                        updated: now,
                        level: None,
                    };
                }
                s.last_his = None;
                s.state.clone()
            };
            self.publish(id, state);
        }
        if let Some(p) = self.inner.persister.get() {
            if let Err(e) = p.forget(&commands) {
                tracing::warn!("stored commands of freed slot {slot} not dropped: {e}");
            }
        }
        b.rev.send_modify(|r| *r += 1);
        commands
    }

    /// The state names of an enum point as its route shows them: input
    /// states carry the route's input names (static definitions say
    /// "Input N"), unused ones "(unused)".
    pub fn state_names(&self, id: PointId) -> Vec<String> {
        let Some(def) = self.def(id) else {
            return Vec::new();
        };
        let Some((b, rp)) = self.inner.routes.as_ref().zip(self.route_point(id)) else {
            return def.states.clone();
        };
        let t = &b.tpl.points[rp.tpl];
        if !t.states_from_inputs {
            return def.states.clone();
        }
        let info = self.block(rp.slot);
        let names = (1..=b.tpl.max_inputs).map(|n| {
            info.as_ref()
                .and_then(|i| i.inputs.get(usize::from(n) - 1).cloned())
                .unwrap_or_else(|| format!("{} (unused)", super::routes::generic_input(n)))
        });
        super::routes::expand_states(&t.def.states, names)
    }

    /// For an input-state enum of a route: the highest ordinal that names
    /// a real input or a fixed state (writes beyond it are refused).
    fn input_state_limit(&self, id: PointId) -> Option<u16> {
        let b = self.inner.routes.as_ref()?;
        let rp = b.locate(id)?;
        let t = &b.tpl.points[rp.tpl];
        if !t.states_from_inputs {
            return None;
        }
        let fixed = t
            .def
            .states
            .iter()
            .filter(|s| *s != super::model::NA_STATE)
            .count();
        let inputs = self
            .block(rp.slot)
            .map_or(0, |i| i.inputs.len().min(usize::from(b.tpl.max_inputs)));
        u16::try_from(fixed + inputs).ok()
    }

    pub fn def(&self, id: PointId) -> Option<&PointDef> {
        self.inner.defs.get(id.index())
    }

    /// Current state of a point.
    pub fn read(&self, id: PointId) -> Option<PointState> {
        self.inner
            .slots
            .get(id.index())
            .map(|s| s.read().state.clone())
    }

    /// The priority array of a commandable point.
    pub fn priority_array(&self, id: PointId) -> Option<PriorityArray> {
        self.inner
            .slots
            .get(id.index())
            .and_then(|s| s.read().priority.clone())
    }

    /// Every change to any point (value, quality or reason).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// Every write attempt, accepted or refused (for the audit log).
    pub fn subscribe_writes(&self) -> broadcast::Receiver<Arc<WriteRecord>> {
        self.inner.writes.subscribe()
    }

    /// The latest state of one point; the router awaits command points here.
    pub fn watch(&self, id: PointId) -> Option<watch::Receiver<PointState>> {
        self.inner.watches.get(id.index()).map(|w| w.subscribe())
    }

    /// Most recent audit records, oldest first (bounded in memory).
    pub fn audit_tail(&self, n: usize) -> Vec<Arc<WriteRecord>> {
        let a = self.inner.audit.lock();
        a.iter().skip(a.len().saturating_sub(n)).cloned().collect()
    }

    /// History samples of a point within `[from, to)`, oldest first.
    pub fn history(&self, id: PointId, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Sample> {
        let Some(h) = self.inner.history.get(id.index()) else {
            return Vec::new();
        };
        let h = h.lock();
        // Samples are appended in time order, so binary search the start.
        let start = h.partition_point(|s| s.at < from);
        h.iter()
            .skip(start)
            .take_while(|s| s.at < to)
            .copied()
            .collect()
    }

    /// The newest `n` history samples of a point before `to`, oldest first
    /// (a Trend Log's fill: copies only what it keeps).
    pub fn history_tail(&self, id: PointId, n: usize, to: DateTime<Utc>) -> Vec<Sample> {
        let Some(h) = self.inner.history.get(id.index()) else {
            return Vec::new();
        };
        let h = h.lock();
        let end = h.partition_point(|s| s.at < to);
        h.range(end.saturating_sub(n)..end).copied().collect()
    }

    /// Installs the durable store of commands. Called once at start-up,
    /// before any protocol can write; later calls are ignored.
    pub fn set_persister(&self, p: Arc<dyn Persister>) {
        let _ = self.inner.persister.set(p);
    }

    /// Sets the write policy of one protocol (replacing any earlier one).
    /// Writes from `Protocol::Internal` are never subject to a policy.
    pub fn set_write_policy(&self, protocol: Protocol, policy: WritePolicy) {
        self.inner.policies.write().insert(protocol, policy);
    }

    /// Commands a point through its priority array. `value = None`
    /// relinquishes the level. Level 17 replaces the relinquish default.
    /// Every attempt is audited, refused ones included. With a persister
    /// installed, the new priority array and the audit record are stored
    /// durably *before* the write is applied and acknowledged, so a crash
    /// right after the acknowledgement loses nothing.
    pub fn write(
        &self,
        id: PointId,
        value: Option<Value>,
        priority: u8,
        source: &Source,
    ) -> Result<WriteOutcome, WriteError> {
        let point = match self.def(id) {
            Some(d) => d.id.clone(),
            None => format!("#{}", id.0),
        };
        let mut rec = WriteRecord {
            at: Utc::now(),
            point,
            priority,
            requested: value,
            old: None,
            new: None,
            source: source.clone(),
            result: Ok(()),
        };
        let res = self.write_inner(id, value, priority, &mut rec);
        if let Err(e) = &res {
            rec.result = Err(*e);
            let cur = self.read(id).and_then(|s| s.value);
            rec.old = cur;
            rec.new = cur;
            if *e != WriteError::Storage {
                self.persist_refusal(&rec);
            }
        }
        self.remember(rec);
        res
    }

    /// Stores the audit record of a refused write, best-effort: nothing
    /// changed, so a failure to store it refuses nothing more.
    fn persist_refusal(&self, rec: &WriteRecord) {
        if let Some(p) = self.inner.persister.get() {
            if let Err(err) = p.persist(rec, None) {
                tracing::warn!("audit of a refused write not stored: {err}");
            }
        }
    }

    /// Keeps an audit record in the bounded in-memory tail and tells the
    /// write subscribers (audit feeds, WebSockets).
    fn remember(&self, rec: WriteRecord) {
        let rec = Arc::new(rec);
        {
            let mut a = self.inner.audit.lock();
            if a.len() >= self.inner.opts.audit_cap.max(1) {
                a.pop_front();
            }
            a.push_back(rec.clone());
        }
        let _ = self.inner.writes.send(rec);
    }

    /// Audits a write a protocol refused before it could call [`write`]
    /// (a value that does not decode, a read-only register): recorded like
    /// `write`'s own refusals, so every attempt is in the audit log.
    ///
    /// [`write`]: PointDb::write
    pub fn audit_refused(&self, id: PointId, priority: u8, source: &Source, err: WriteError) {
        let cur = self.read(id).and_then(|s| s.value);
        let rec = WriteRecord {
            at: Utc::now(),
            point: self
                .def(id)
                .map(|d| d.id.clone())
                .unwrap_or_else(|| format!("#{}", id.0)),
            priority,
            requested: None,
            old: cur,
            new: cur,
            source: source.clone(),
            result: Err(err),
        };
        self.persist_refusal(&rec);
        self.remember(rec);
    }

    fn write_inner(
        &self,
        id: PointId,
        value: Option<Value>,
        priority: u8,
        rec: &mut WriteRecord,
    ) -> Result<WriteOutcome, WriteError> {
        if let Some(p) = self.inner.policies.read().get(&rec.source.protocol) {
            if let Err(d) = p.check(rec.source.peer.map(|a| a.ip())) {
                tracing::warn!(
                    "{} write to {} refused by write policy ({d:?}): {}",
                    rec.source.protocol.as_str(),
                    rec.point,
                    rec.source.describe()
                );
                return Err(WriteError::Denied);
            }
        }
        if !self.is_present(id) {
            return Err(WriteError::UnknownPoint);
        }
        let def = self.def(id).ok_or(WriteError::UnknownPoint)?;
        if !def.writable {
            return Err(WriteError::NotWritable);
        }
        if !(1..=DEFAULT_LEVEL).contains(&priority) {
            return Err(WriteError::InvalidPriority);
        }
        let value = match value {
            Some(v) => Some(def.coerce(v)?),
            None => None,
        };
        if let (Some(Value::Enum(e)), Some(limit)) = (value, self.input_state_limit(id)) {
            // Only the route's own inputs can be selected.
            if e > limit {
                return Err(WriteError::OutOfRange);
            }
        }
        let slot_lock = &self.inner.slots[id.index()];
        // The point's lock is held across persistence so that the stored
        // order of writes to one point is the order they took effect.
        let mut slot = slot_lock.write();
        let old = slot.state.value;
        let mut pa = slot.priority.clone().ok_or(WriteError::NotWritable)?;
        let now = rec.at;
        if priority == DEFAULT_LEVEL {
            pa.default = value.ok_or(WriteError::NullDefault)?;
        } else {
            pa.slots[usize::from(priority) - 1] = value.map(|v| SlotValue {
                value: v,
                who: rec.source.clone(),
                at: now,
            });
        }
        let (resolved, level) = pa.resolve();
        rec.old = old;
        rec.new = Some(resolved);
        if let Some(p) = self.inner.persister.get() {
            p.persist(rec, Some((&def.id, &pa))).map_err(|e| {
                tracing::error!("command to {} not stored, refused: {e}", def.id);
                WriteError::Storage
            })?;
        }
        slot.priority = Some(pa);
        let quality = if level <= OVERRIDE_LEVEL {
            Quality::Overridden
        } else {
            Quality::Ok
        };
        let new_state = PointState {
            value: Some(resolved),
            quality,
            reason: None,
            updated: now,
            level: Some(level),
        };
        // A write that changes nothing visible (same value, same level) still
        // succeeds and is audited, but notifies nobody.
        let changed = slot.state.value != new_state.value
            || slot.state.quality != new_state.quality
            || slot.state.level != new_state.level;
        slot.state = new_state.clone();
        drop(slot);
        if changed {
            self.publish(id, new_state);
        }
        Ok(WriteOutcome {
            old,
            new: Some(resolved),
            level,
        })
    }

    /// Restores a priority array (start-up from persisted state) without
    /// auditing it as a new write.
    pub fn restore_priority_array(&self, id: PointId, pa: PriorityArray) -> Result<(), WriteError> {
        let def = self.def(id).ok_or(WriteError::UnknownPoint)?;
        if !def.writable {
            return Err(WriteError::NotWritable);
        }
        for s in pa.slots.iter().flatten() {
            def.check_value(&s.value)?;
        }
        def.check_value(&pa.default)?;
        let (resolved, level) = pa.resolve();
        let state = PointState {
            value: Some(resolved),
            quality: if level <= OVERRIDE_LEVEL {
                Quality::Overridden
            } else {
                Quality::Ok
            },
            reason: None,
            updated: Utc::now(),
            level: Some(level),
        };
        {
            let mut slot = self.inner.slots[id.index()].write();
            slot.priority = Some(pa);
            slot.state = state.clone();
        }
        self.publish(id, state);
        Ok(())
    }

    /// Sets a measurement or status from its source. `value = None` with a
    /// non-Ok quality says there is no honest value. Values of the wrong type
    /// are refused so that a buggy source cannot corrupt what protocols serve.
    pub fn set(
        &self,
        id: PointId,
        value: Option<Value>,
        quality: Quality,
        reason: Option<&str>,
    ) -> Result<(), WriteError> {
        let def = self.def(id).ok_or(WriteError::UnknownPoint)?;
        if def.writable {
            // Commandable points only change through the priority array.
            return Err(WriteError::NotWritable);
        }
        let value = match value {
            Some(v) => {
                let v = def.coerce(v).or_else(|e| match (e, v) {
                    // Measurements may legitimately exceed the seed's
                    // "typical" range; keep the true value.
                    (ValueError::OutOfRange, Value::Number(n))
                        if def.kind == Kind::Number && n.is_finite() =>
                    {
                        Ok(Value::Number(n))
                    }
                    _ => Err(e),
                })?;
                Some(v)
            }
            None => None,
        };
        let now = Utc::now();
        let new_state = PointState {
            value,
            quality,
            reason: reason.map(Arc::from),
            updated: now,
            level: None,
        };
        let mut slot = self.inner.slots[id.index()].write();
        let changed = slot.state.value != new_state.value
            || slot.state.quality != new_state.quality
            || slot.state.reason != new_state.reason;
        let record_his = def.his
            && value.is_some()
            && match (slot.last_his, value) {
                (Some(Value::Number(a)), Some(Value::Number(b))) => {
                    (a - b).abs() >= def.cov_increment || def.cov_increment == 0.0
                }
                (a, b) => a != b,
            };
        slot.state = new_state.clone();
        if record_his {
            slot.last_his = value;
        }
        drop(slot);
        if let (true, Some(v)) = (record_his, value) {
            self.push_history(id, def, Sample { at: now, value: v });
        }
        if changed {
            self.publish(id, new_state);
        }
        Ok(())
    }

    /// Marks measurements that were not refreshed in time as Stale. Called
    /// periodically by the telemetry sampler; sans-IO so tests pass `now`.
    pub fn expire(&self, now: DateTime<Utc>) -> usize {
        let mut n = 0;
        for id in self.served_ids() {
            let def = &self.inner.defs[id.index()];
            if def.writable || def.role != Role::Measurement {
                continue;
            }
            let limit = def.sample_period * self.inner.opts.stale_after_periods.max(1);
            let mut slot = self.inner.slots[id.index()].write();
            if slot.state.quality != Quality::Ok {
                continue;
            }
            let age = now.signed_duration_since(slot.state.updated);
            if age.to_std().is_ok_and(|a| a > limit) {
                slot.state.quality = Quality::Stale;
                slot.state.reason = Some(Arc::from("not refreshed within its sample period"));
                let st = slot.state.clone();
                drop(slot);
                self.publish(id, st);
                n += 1;
            }
        }
        n
    }

    fn push_history(&self, id: PointId, def: &PointDef, s: Sample) {
        let per_period = self.inner.opts.history_retention.as_secs_f64()
            / def.sample_period.as_secs_f64().max(0.001);
        let cap = (per_period.ceil() as usize).clamp(1, self.inner.opts.history_cap.max(1));
        let retention = chrono::Duration::from_std(self.inner.opts.history_retention)
            .unwrap_or(chrono::Duration::days(7));
        let mut h = self.inner.history[id.index()].lock();
        while h.len() >= cap || h.front().is_some_and(|f| s.at - f.at > retention) {
            h.pop_front();
        }
        h.push_back(s);
        drop(h);
        self.mark_history_dirty(id);
    }

    /// Lists `id` for the history flusher (a new sample, or samples the
    /// store failed to take and that must be tried again).
    pub fn mark_history_dirty(&self, id: PointId) {
        if let Some(f) = self.inner.his_flagged.get(id.index()) {
            if !f.swap(true, Ordering::AcqRel) {
                self.inner.his_dirty.lock().push(id);
            }
        }
    }

    /// The points that got history samples since the last call, each once.
    /// Their flags are cleared before this returns, so a sample pushed
    /// afterwards lists its point again: read the history after calling
    /// this, up to a time taken after it.
    pub fn take_history_dirty(&self) -> Vec<PointId> {
        let ids = std::mem::take(&mut *self.inner.his_dirty.lock());
        for id in &ids {
            self.inner.his_flagged[id.index()].store(false, Ordering::Release);
        }
        ids
    }

    /// Inserts a historical sample (restore from persistence, tests).
    pub fn insert_history(&self, id: PointId, s: Sample) {
        if let Some(def) = self.def(id) {
            self.push_history(id, def, s);
        }
    }

    fn publish(&self, id: PointId, state: PointState) {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.watches[id.index()].send_replace(state.clone());
        // No receivers is not an error: nobody is listening yet.
        let _ = self.inner.changes.send(Change { id, state, seq });
    }
}

//! The Sparkplug B edge node state machine, sans-IO: births, report-by-exception data, seq/bdSeq, the store-and-forward buffer and NCMD/DCMD writes into the point database.
//!
//! The session loop (`session.rs`) owns the MQTT connection and feeds this
//! module point changes and received commands; everything here is
//! synchronous and table-tested without a broker.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::points::routes::BlockInfo;
use crate::points::{
    Kind, PointDb, PointDef, PointId, PointState, Protocol, Quality, Source, Value, WriteError,
};

use super::spb::{datatype, Metric, Payload, Property, Val};

/// Namespace of every Sparkplug B topic (spB 3.0 §4.1).
pub const NAMESPACE: &str = "spBv1.0";
/// Metric of the node's birth/death sequence (spB 3.0 §6.4.2).
pub const BDSEQ: &str = "bdSeq";
/// The Node Control metric a host writes `true` to for a new birth.
pub const REBIRTH: &str = "Node Control/Rebirth";
/// Alias of `Node Control/Rebirth`; point aliases start at [`ALIAS_BASE`].
const REBIRTH_ALIAS: u64 = 1;
/// A point's alias is `ALIAS_BASE + index` in the point database: stable
/// for a given point list, unique across node and devices.
pub const ALIAS_BASE: u64 = 1000;
/// Metrics per historical NDATA/DDATA message when the buffer is flushed.
pub const HISTORY_CHUNK: usize = 500;
/// Prefix of a route's Sparkplug device id: the device of slot `s` is
/// `route-<s>`. The id names the slot, like the route's point ids, so a
/// renamed route (same slot) keeps its device and the host's tag paths,
/// history and alarms; `.` is avoided because Ignition refuses it in tag
/// names (docs/mqtt.md, Devices).
pub const DEVICE_PREFIX: &str = "route-";
/// Device metric carrying the name of the route that owns the slot.
pub const ROUTE_NAME: &str = "Device Info/Route Name";
/// Folder of per-output metrics in a device: `output/<n>/<template id>`.
const OUTPUT_FOLDER: &str = "output";

/// The Sparkplug device id of route slot `slot`.
pub fn device_id(slot: u16) -> String {
    format!("{DEVICE_PREFIX}{slot}")
}

/// The slot a device id names (`route-<n>`, no sign, no leading zero).
pub fn device_slot(dev: &str) -> Option<u16> {
    let n = dev.strip_prefix(DEVICE_PREFIX)?;
    if n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Sparkplug quality codes (the `Quality` property, spB 3.0 §6.4.7).
pub fn quality_code(q: Quality) -> u32 {
    match q {
        Quality::Ok | Quality::Overridden => 192,
        Quality::Stale => 500,
        Quality::Fault | Quality::Unavailable => 0,
    }
}

/// The Sparkplug datatype a point is published with.
pub fn point_datatype(def: &PointDef) -> u32 {
    match def.kind {
        Kind::Number => datatype::DOUBLE,
        Kind::Bool => datatype::BOOLEAN,
        // 1-based state ordinal, as on every other protocol.
        Kind::Enum => datatype::UINT16,
    }
}

fn metric_value(v: &Value) -> Val {
    match *v {
        Value::Number(n) => Val::Double(n),
        Value::Bool(b) => Val::Bool(b),
        Value::Enum(e) => Val::Int(u32::from(e)),
    }
}

fn ms(t: chrono::DateTime<chrono::Utc>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

pub fn now_ms() -> u64 {
    ms(chrono::Utc::now())
}

/// What was last published for a point (the report-by-exception baseline).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sent {
    value: Option<Value>,
    quality: Quality,
}

/// A change kept while the node cannot publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub id: PointId,
    pub at_ms: u64,
    pub value: Option<Value>,
    pub quality: Quality,
    /// For a route point: the route that owned the slot when the change
    /// happened, so a change is never published under the device of a
    /// later owner of the slot.
    pub route: Option<Arc<str>>,
}

impl Held {
    /// A change of a server point (no route).
    pub fn of(id: PointId, st: &PointState) -> Held {
        Held {
            id,
            at_ms: ms(st.updated),
            value: st.value,
            quality: st.quality,
            route: None,
        }
    }
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Out {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What a received command asked of the session.
#[derive(Debug, Default, PartialEq)]
pub struct CmdOutcome {
    /// `Node Control/Rebirth` was written true: publish the births again.
    pub rebirth: bool,
    /// Writes passed to the database (accepted or refused by it).
    pub writes: usize,
    /// Metrics refused before the database (audited where they name a point).
    pub refused: usize,
}

pub struct Node {
    db: PointDb,
    group: String,
    node: String,
    priority: u8,
    /// Points on the node itself (the server's points), in database order.
    node_points: Vec<PointId>,
    /// Born devices (a DBIRTH went out on this connection and no DDEATH
    /// since), by slot, with the route that owned the slot at that birth.
    pub devices: BTreeMap<u16, Arc<BlockInfo>>,
    /// Server points by name (NCMD).
    by_name: HashMap<String, PointId>,
    sent: Vec<Sent>,
    seq: u8,
    bdseq: Option<u64>,
    buffer: VecDeque<Held>,
    buffer_max: usize,
    /// Changes dropped because the buffer was full, since start.
    pub dropped: u64,
}

impl Node {
    pub fn new(db: PointDb, group: &str, node: &str, priority: u8, buffer_max: usize) -> Node {
        let node_points: Vec<PointId> = db.ids().collect();
        let by_name = node_points
            .iter()
            .filter_map(|&id| Some((db.def(id)?.id.clone(), id)))
            .collect();
        let sent = vec![
            Sent {
                value: None,
                quality: Quality::Unavailable,
            };
            db.len()
        ];
        Node {
            db,
            group: group.to_string(),
            node: node.to_string(),
            priority,
            node_points,
            devices: BTreeMap::new(),
            by_name,
            sent,
            seq: 0,
            bdseq: None,
            buffer: VecDeque::new(),
            buffer_max: buffer_max.max(1),
            dropped: 0,
        }
    }

    pub fn topic(&self, kind: &str, device: Option<&str>) -> String {
        match device {
            Some(d) => format!("{NAMESPACE}/{}/{kind}/{}/{d}", self.group, self.node),
            None => format!("{NAMESPACE}/{}/{kind}/{}", self.group, self.node),
        }
    }

    /// Continues the bdSeq sequence after `last` (the value a previous
    /// process used last, from the data dir): the next connect uses
    /// `last + 1`.
    pub fn resume_bdseq(&mut self, last: u64) {
        self.bdseq = Some(last % 256);
    }

    /// The bdSeq of the next MQTT CONNECT: 0 first (or the one after the
    /// resumed value), then +1 per connect, wrapping after 255 (spB 3.0
    /// §6.4.2).
    pub fn next_bdseq(&mut self) -> u64 {
        let b = match self.bdseq {
            None => 0,
            Some(b) => (b + 1) % 256,
        };
        self.bdseq = Some(b);
        b
    }

    fn bdseq_metric(&self, b: u64) -> Metric {
        Metric {
            name: Some(BDSEQ.into()),
            timestamp: Some(now_ms()),
            datatype: Some(datatype::INT64),
            value: Some(Val::Long(b)),
            ..Default::default()
        }
    }

    /// The NDEATH payload registered as the MQTT will of a connect with
    /// this bdSeq (and published before a clean disconnect).
    pub fn ndeath(&self, bdseq: u64) -> Out {
        Out {
            topic: self.topic("NDEATH", None),
            payload: Payload {
                timestamp: Some(now_ms()),
                metrics: vec![self.bdseq_metric(bdseq)],
                seq: None,
            }
            .encode(),
        }
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        u64::from(s)
    }

    fn birth_metric(&self, id: PointId, st: &PointState) -> Option<Metric> {
        let def = self.db.def(id)?;
        let s = |k: &str, v: &str| Property {
            key: k.into(),
            datatype: datatype::STRING,
            value: Some(Val::Str(v.into())),
        };
        let mut props = vec![
            s("displayName", &def.name),
            s("description", &def.description),
        ];
        if let Some(u) = &def.unit {
            props.push(s("engUnit", u));
        }
        for (k, v) in [("engLow", def.min), ("engHigh", def.max)] {
            if let Some(v) = v {
                props.push(Property {
                    key: k.into(),
                    datatype: datatype::DOUBLE,
                    value: Some(Val::Double(v)),
                });
            }
        }
        if def.kind == Kind::Enum {
            // A route's Input Select names the route's own inputs.
            props.push(s("states", &self.db.state_names(id).join("|")));
        }
        if self.db.route_point(id).is_some() {
            // The database id, for REST/Haystack cross-reference (the
            // metric name is relative to the device).
            props.push(s("pointId", &def.id));
        }
        props.push(Property {
            key: "readOnly".into(),
            datatype: datatype::BOOLEAN,
            value: Some(Val::Bool(!def.writable)),
        });
        props.push(quality_prop(st.quality));
        Some(Metric {
            name: Some(self.metric_name(id)?),
            alias: Some(ALIAS_BASE + u64::from(id.0)),
            timestamp: Some(ms(st.updated)),
            datatype: Some(point_datatype(def)),
            is_null: st.value.is_none(),
            properties: props,
            value: st.value.as_ref().map(metric_value),
            ..Default::default()
        })
    }

    /// The metric name of a point: a server point's id; in a route's
    /// device, the template id (`route_status`), per-output points as
    /// `output/<n>/<template id>` (a folder per output in Ignition).
    pub fn metric_name(&self, id: PointId) -> Option<String> {
        let def = self.db.def(id)?;
        let Some(rp) = self.db.route_point(id) else {
            return Some(def.id.clone());
        };
        let tid = &self.db.route_template()?.points.get(rp.tpl)?.def.id;
        Some(match rp.output {
            None => tid.clone(),
            Some(n) => format!("{OUTPUT_FOLDER}/{n}/{tid}"),
        })
    }

    /// The point a device metric name names in slot `slot`: the device's
    /// own name (`route_status`, `output/2/output_enable`) or the full
    /// point id (`route.3.route_status`) of that slot.
    fn device_point(&self, slot: u16, name: &str) -> Option<PointId> {
        if let Some(rest) = name
            .strip_prefix(OUTPUT_FOLDER)
            .and_then(|r| r.strip_prefix('/'))
        {
            let (n, tid) = rest.split_once('/')?;
            return self.db.block_point(slot, tid, Some(n.parse().ok()?));
        }
        // A full route point id (a server point's id, like the seed's
        // `input_select`, is also a template id: that one means the
        // device's own point).
        if let Some(rp) = self
            .db
            .lookup_any(name)
            .and_then(|id| Some((id, self.db.route_point(id)?)))
        {
            return (rp.1.slot == slot).then_some(rp.0);
        }
        self.db.block_point(slot, name, None)
    }

    /// The route a point belongs to now (route points of a present block).
    fn route_of(&self, id: PointId) -> Option<Arc<str>> {
        let rp = self.db.route_point(id)?;
        self.db.block(rp.slot).map(|b| Arc::from(b.route.as_str()))
    }

    /// A change to report or hold, stamped with its route.
    pub fn held_of(&self, id: PointId, st: &PointState) -> Held {
        Held {
            route: self.route_of(id),
            ..Held::of(id, st)
        }
    }

    /// NBIRTH (seq 0, with bdSeq and Node Control/Rebirth) and one DBIRTH
    /// per route that owns a slot now, from the points' current states;
    /// resets the report-by-exception baseline to what the births carry.
    pub fn births(&mut self, bdseq: u64) -> Vec<Out> {
        self.seq = 0;
        let now = now_ms();
        let mut metrics = vec![
            self.bdseq_metric(bdseq),
            Metric {
                name: Some(REBIRTH.into()),
                alias: Some(REBIRTH_ALIAS),
                timestamp: Some(now),
                datatype: Some(datatype::BOOLEAN),
                value: Some(Val::Bool(false)),
                ..Default::default()
            },
        ];
        let node_points = self.node_points.clone();
        metrics.extend(
            node_points
                .iter()
                .filter_map(|&id| self.snapshot_metric(id)),
        );
        let mut out = vec![Out {
            topic: self.topic("NBIRTH", None),
            payload: Payload {
                timestamp: Some(now),
                seq: Some(self.next_seq()),
                metrics,
            }
            .encode(),
        }];
        self.devices.clear();
        for (slot, info) in self.db.blocks() {
            out.push(self.dbirth(slot, info));
        }
        out
    }

    /// The DBIRTH of route slot `slot` (every point of its block, and the
    /// route's name); the device counts as born from here on.
    fn dbirth(&mut self, slot: u16, info: Arc<BlockInfo>) -> Out {
        let now = now_ms();
        let mut metrics = vec![Metric {
            name: Some(ROUTE_NAME.into()),
            timestamp: Some(now),
            datatype: Some(datatype::STRING),
            value: Some(Val::Str(info.route.clone())),
            ..Default::default()
        }];
        for id in self.db.block_ids(slot) {
            metrics.extend(self.snapshot_metric(id));
        }
        self.devices.insert(slot, info);
        Out {
            topic: self.topic("DBIRTH", Some(&device_id(slot))),
            payload: Payload {
                timestamp: Some(now),
                seq: Some(self.next_seq()),
                metrics,
            }
            .encode(),
        }
    }

    /// The DDEATH of route slot `slot` (spB 3.0: timestamp and seq only).
    fn ddeath(&mut self, slot: u16) -> Out {
        self.devices.remove(&slot);
        Out {
            topic: self.topic("DDEATH", Some(&device_id(slot))),
            payload: Payload {
                timestamp: Some(now_ms()),
                seq: Some(self.next_seq()),
                metrics: Vec::new(),
            }
            .encode(),
        }
    }

    /// Follows the route blocks while online: DDEATH for a route that no
    /// longer owns its slot, DBIRTH for a new one; a slot that changed
    /// owner (a rename keeping the slot, or delete + create between two
    /// looks) gets DDEATH then DBIRTH; a route whose inputs or outputs
    /// changed (state names) is born again without a death.
    pub fn sync_devices(&mut self) -> Vec<Out> {
        let now: BTreeMap<u16, Arc<BlockInfo>> = self.db.blocks().into_iter().collect();
        let mut out = Vec::new();
        let gone: Vec<u16> = self
            .devices
            .keys()
            .filter(|s| !now.contains_key(s))
            .copied()
            .collect();
        for slot in gone {
            out.push(self.ddeath(slot));
        }
        for (slot, info) in now {
            match self.devices.get(&slot) {
                Some(old) if *old == info => {}
                Some(old) if old.route == info.route => out.push(self.dbirth(slot, info)),
                Some(_) => {
                    out.push(self.ddeath(slot));
                    out.push(self.dbirth(slot, info));
                }
                None => out.push(self.dbirth(slot, info)),
            }
        }
        out
    }

    fn snapshot_metric(&mut self, id: PointId) -> Option<Metric> {
        let st = self.db.read(id)?;
        self.sent[id.index()] = Sent {
            value: st.value,
            quality: st.quality,
        };
        self.birth_metric(id, &st)
    }

    /// Report by exception: whether this state differs from what was last
    /// reported enough to report it (quality or null-ness changed, a bool
    /// or enum changed, a number moved by at least its COV increment).
    /// Updates the baseline when it does.
    pub fn exceeds(&mut self, id: PointId, st: &PointState) -> bool {
        let (Some(def), Some(last)) = (self.db.def(id), self.sent.get(id.index()).copied()) else {
            return false;
        };
        let changed = last.quality != st.quality
            || match (last.value, st.value) {
                (Some(Value::Number(a)), Some(Value::Number(b))) => {
                    let inc = def.cov_increment;
                    if inc > 0.0 {
                        (a - b).abs() >= inc
                    } else {
                        a != b
                    }
                }
                (a, b) => a != b,
            };
        if changed {
            self.sent[id.index()] = Sent {
                value: st.value,
                quality: st.quality,
            };
        }
        changed
    }

    /// Keeps a change for later (the node is not online); past the bound
    /// the oldest is dropped and counted.
    pub fn hold(&mut self, h: Held) {
        if self.buffer.len() >= self.buffer_max {
            self.buffer.pop_front();
            self.dropped += 1;
            if self.dropped == 1 || self.dropped.is_power_of_two() {
                tracing::warn!(
                    "mqtt: store-and-forward buffer full ({} changes): {} oldest dropped so far",
                    self.buffer_max,
                    self.dropped
                );
            }
        }
        self.buffer.push_back(h);
    }

    pub fn held(&self) -> usize {
        self.buffer.len()
    }

    fn data_metric(&self, h: &Held, historical: bool) -> Metric {
        Metric {
            alias: Some(ALIAS_BASE + u64::from(h.id.0)),
            timestamp: Some(h.at_ms),
            is_historical: historical,
            is_null: h.value.is_none(),
            properties: vec![quality_prop(h.quality)],
            value: h.value.as_ref().map(metric_value),
            ..Default::default()
        }
    }

    /// NDATA/DDATA messages for changes (each with the next seq), split
    /// by device, in order. A change of a route point goes to its device
    /// only while that device is born for the same route (a change of a
    /// deleted route, or of the previous owner of a slot, is dropped; the
    /// next DBIRTH carries the current values anyway).
    pub fn data(&mut self, changes: &[Held], historical: bool) -> Vec<Out> {
        let mut out = Vec::new();
        // Group by target (node = None) keeping the first-seen order.
        let mut targets: Vec<(Option<u16>, Vec<Metric>)> = Vec::new();
        for h in changes {
            let dev = self.db.route_point(h.id).map(|rp| rp.slot);
            if let Some(slot) = dev {
                let born = self.devices.get(&slot).is_some_and(|b| {
                    Some(b.route.as_str()) == h.route.as_deref() && self.db.slot_present(slot)
                });
                if !born {
                    continue;
                }
            }
            let m = self.data_metric(h, historical);
            match targets.iter_mut().find(|(d, _)| *d == dev) {
                Some((_, ms)) => ms.push(m),
                None => targets.push((dev, vec![m])),
            }
        }
        for (dev, metrics) in targets {
            let topic = match dev {
                None => self.topic("NDATA", None),
                Some(slot) => self.topic("DDATA", Some(&device_id(slot))),
            };
            out.push(Out {
                topic,
                payload: Payload {
                    timestamp: Some(now_ms()),
                    seq: Some(self.next_seq()),
                    metrics,
                }
                .encode(),
            });
        }
        out
    }

    /// Everything held, as historical NDATA/DDATA in chunks (oldest first).
    pub fn drain_history(&mut self) -> Vec<Out> {
        let held: Vec<Held> = self.buffer.drain(..).collect();
        let mut out = Vec::new();
        for chunk in held.chunks(HISTORY_CHUNK) {
            out.extend(self.data(chunk, true));
        }
        out
    }

    /// Puts changes back at the front of the buffer (they may not have
    /// reached the broker before the connection was lost), oldest first.
    pub fn requeue_front(&mut self, changes: Vec<Held>) {
        for h in changes.into_iter().rev() {
            if self.buffer.len() >= self.buffer_max {
                self.dropped += 1;
                continue;
            }
            self.buffer.push_front(h);
        }
    }

    /// Handles an NCMD (`device = None`) or DCMD payload: Rebirth requests,
    /// and writes to points through [`PointDb::write`] at the configured
    /// priority. Metrics naming a read-only point are refused and audited;
    /// metrics naming nothing are logged (there is no point to audit).
    pub fn command(&mut self, device: Option<&str>, payload: &[u8]) -> CmdOutcome {
        let mut o = CmdOutcome::default();
        let p = match Payload::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    "mqtt: {} payload refused: {e}",
                    if device.is_some() { "DCMD" } else { "NCMD" }
                );
                o.refused += 1;
                return o;
            }
        };
        let dev = match device {
            None => None,
            Some(d) => match device_slot(d)
                .filter(|s| self.devices.contains_key(s) && self.db.slot_present(*s))
            {
                Some(slot) => Some(slot),
                None => {
                    tracing::warn!("mqtt: DCMD for unknown device {d:?} ignored");
                    o.refused += p.metrics.len();
                    return o;
                }
            },
        };
        let source = Source::new(Protocol::Mqtt, None, None);
        for m in &p.metrics {
            let is_rebirth = m.name.as_deref() == Some(REBIRTH)
                || (m.name.is_none() && m.alias == Some(REBIRTH_ALIAS));
            if is_rebirth && dev.is_none() {
                if m.value == Some(Val::Bool(true)) {
                    o.rebirth = true;
                } else {
                    o.refused += 1;
                }
                continue;
            }
            let id = match (&m.name, m.alias) {
                (Some(n), _) => match dev {
                    None => self.by_name.get(n).copied(),
                    Some(slot) => self.device_point(slot, n),
                },
                (None, Some(a)) => a
                    .checked_sub(ALIAS_BASE)
                    .and_then(|i| u16::try_from(i).ok())
                    .map(PointId)
                    .filter(|id| id.index() < self.db.len()),
                (None, None) => None,
            };
            // A metric of another device (or of the node in a DCMD) is not
            // this command's to write.
            let Some(id) = id.filter(|&id| self.db.route_point(id).map(|rp| rp.slot) == dev) else {
                tracing::warn!(
                    "mqtt: command for unknown metric {:?} (alias {:?}) ignored",
                    m.name,
                    m.alias
                );
                o.refused += 1;
                continue;
            };
            let Some(def) = self.db.def(id) else { continue };
            if !def.writable {
                self.db
                    .audit_refused(id, self.priority, &source, WriteError::NotWritable);
                o.refused += 1;
                continue;
            }
            let value = if m.is_null {
                None
            } else {
                match command_value(def, &self.db.state_names(id), m) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.db.audit_refused(id, self.priority, &source, e);
                        o.refused += 1;
                        continue;
                    }
                }
            };
            o.writes += 1;
            if let Err(e) = self.db.write(id, value, self.priority, &source) {
                tracing::info!("mqtt: write to {} refused: {e}", def.id);
            }
        }
        o
    }
}

fn quality_prop(q: Quality) -> Property {
    Property {
        key: "Quality".into(),
        datatype: datatype::INT32,
        value: Some(Val::Int(quality_code(q))),
    }
}

/// The point value a command metric carries: numbers of any Sparkplug
/// numeric type (signed types decoded as two's complement), booleans,
/// and for enum points a state name as a string; then the point's own
/// coercion and range check, so MQTT refuses what every protocol refuses.
fn command_value(def: &PointDef, states: &[String], m: &Metric) -> Result<Value, WriteError> {
    let dt = m.datatype.unwrap_or(0);
    let v = match m.value.as_ref().ok_or(WriteError::TypeMismatch)? {
        Val::Int(n) => Value::Number(match dt {
            datatype::INT8 => f64::from(*n as u8 as i8),
            datatype::INT16 => f64::from(*n as u16 as i16),
            datatype::INT32 => f64::from(*n as i32),
            _ => f64::from(*n),
        }),
        Val::Long(n) => Value::Number(match dt {
            datatype::INT64 | datatype::DATETIME => *n as i64 as f64,
            _ => *n as f64,
        }),
        Val::Float(x) => Value::Number(f64::from(*x)),
        Val::Double(x) => Value::Number(*x),
        Val::Bool(b) => Value::Bool(*b),
        Val::Str(s) if def.kind == Kind::Enum => {
            // The state names as the point shows them (a route's Input
            // Select: its own input names).
            let i = states
                .iter()
                .position(|n| n.eq_ignore_ascii_case(s))
                .ok_or(WriteError::OutOfRange)?;
            Value::Enum(u16::try_from(i + 1).map_err(|_| WriteError::OutOfRange)?)
        }
        Val::Str(_) | Val::Bytes(_) => return Err(WriteError::TypeMismatch),
    };
    Ok(def.coerce(v)?)
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;

//! The Sparkplug B edge node state machine, sans-IO: births, report-by-exception data, seq/bdSeq, the store-and-forward buffer and NCMD/DCMD writes into the point database.
//!
//! The session loop (`session.rs`) owns the MQTT connection and feeds this
//! module point changes and received commands; everything here is
//! synchronous and table-tested without a broker.

use std::collections::{HashMap, VecDeque};

use crate::points::{
    Kind, PointDb, PointDef, PointId, PointState, Protocol, Quality, Source, TagValue, Value,
    WriteError,
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
/// The point tag that puts a point on a device (one device per route): a
/// point with `route = "<name>"` is a metric of device `<name>`
/// (DBIRTH/DDATA/DCMD) instead of the node.
pub const DEVICE_TAG: &str = "route";

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
}

impl Held {
    pub fn of(id: PointId, st: &PointState) -> Held {
        Held {
            id,
            at_ms: ms(st.updated),
            value: st.value,
            quality: st.quality,
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

#[derive(Debug)]
pub struct Device {
    pub name: String,
    pub points: Vec<PointId>,
}

pub struct Node {
    db: PointDb,
    group: String,
    node: String,
    priority: u8,
    /// Points on the node itself (no device tag), in database order.
    node_points: Vec<PointId>,
    pub devices: Vec<Device>,
    /// Device index of each point (`None`: the node).
    device_of: Vec<Option<usize>>,
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
        let mut node_points = Vec::new();
        let mut devices: Vec<Device> = Vec::new();
        let mut device_of = Vec::new();
        let mut by_name = HashMap::new();
        for id in db.ids() {
            let Some(def) = db.def(id) else { continue };
            by_name.insert(def.id.clone(), id);
            let dev = match def.tags.get(DEVICE_TAG) {
                Some(TagValue::Str(r)) if super::config::valid_id(r) => Some(r.clone()),
                _ => None,
            };
            match dev {
                None => {
                    node_points.push(id);
                    device_of.push(None);
                }
                Some(name) => {
                    let i = match devices.iter().position(|d| d.name == name) {
                        Some(i) => i,
                        None => {
                            devices.push(Device {
                                name,
                                points: Vec::new(),
                            });
                            devices.len() - 1
                        }
                    };
                    devices[i].points.push(id);
                    device_of.push(Some(i));
                }
            }
        }
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
            devices,
            device_of,
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

    /// The bdSeq of the next MQTT CONNECT: 0 first, then +1 per connect,
    /// wrapping after 255 (spB 3.0 §6.4.2).
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
            props.push(s("states", &def.states.join("|")));
        }
        props.push(Property {
            key: "readOnly".into(),
            datatype: datatype::BOOLEAN,
            value: Some(Val::Bool(!def.writable)),
        });
        props.push(quality_prop(st.quality));
        Some(Metric {
            name: Some(def.id.clone()),
            alias: Some(ALIAS_BASE + u64::from(id.0)),
            timestamp: Some(ms(st.updated)),
            datatype: Some(point_datatype(def)),
            is_null: st.value.is_none(),
            properties: props,
            value: st.value.as_ref().map(metric_value),
            ..Default::default()
        })
    }

    /// NBIRTH (seq 0, with bdSeq and Node Control/Rebirth) and one DBIRTH
    /// per device, from the points' current states; resets the
    /// report-by-exception baseline to what the births carry.
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
        for d in 0..self.devices.len() {
            let pts = self.devices[d].points.clone();
            let metrics = pts
                .iter()
                .filter_map(|&id| self.snapshot_metric(id))
                .collect();
            let topic = self.topic("DBIRTH", Some(&self.devices[d].name));
            out.push(Out {
                topic,
                payload: Payload {
                    timestamp: Some(now),
                    seq: Some(self.next_seq()),
                    metrics,
                }
                .encode(),
            });
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
    /// by device, in order.
    pub fn data(&mut self, changes: &[Held], historical: bool) -> Vec<Out> {
        let mut out = Vec::new();
        // Group by target (node = None) keeping the first-seen order.
        let mut targets: Vec<(Option<usize>, Vec<Metric>)> = Vec::new();
        for h in changes {
            let dev = self.device_of.get(h.id.index()).copied().flatten();
            let m = self.data_metric(h, historical);
            match targets.iter_mut().find(|(d, _)| *d == dev) {
                Some((_, ms)) => ms.push(m),
                None => targets.push((dev, vec![m])),
            }
        }
        for (dev, metrics) in targets {
            let topic = match dev {
                None => self.topic("NDATA", None),
                Some(d) => self.topic("DDATA", Some(&self.devices[d].name)),
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
            Some(d) => match self.devices.iter().position(|x| x.name == d) {
                Some(i) => Some(i),
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
                (Some(n), _) => self.by_name.get(n).copied(),
                (None, Some(a)) => a
                    .checked_sub(ALIAS_BASE)
                    .and_then(|i| u16::try_from(i).ok())
                    .map(PointId)
                    .filter(|id| id.index() < self.db.len()),
                (None, None) => None,
            };
            // A metric of another device (or of the node in a DCMD) is not
            // this command's to write.
            let Some(id) = id.filter(|id| self.device_of.get(id.index()).copied().flatten() == dev)
            else {
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
                match command_value(def, m) {
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
fn command_value(def: &PointDef, m: &Metric) -> Result<Value, WriteError> {
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
            Value::Enum(def.state_ordinal(s).ok_or(WriteError::OutOfRange)?)
        }
        Val::Str(_) | Val::Bytes(_) => return Err(WriteError::TypeMismatch),
    };
    Ok(def.coerce(v)?)
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;

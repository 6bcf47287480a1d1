//! Route blocks on BACnet (issue 20): one object per route point at an instance derived from the route's slot, one Structured View per route under a top view of the server, kept live as routes come and go, with a Database_Revision that only ever grows.
//!
//! The rules (docs/route-points.md, "BACnet"):
//!
//! - Object type from the template point: a writable bool is a Binary
//!   Output, a writable number an Analog Value, a writable enum a
//!   commandable Multi-state Value (all three with the point's one
//!   priority array); a read-only number an Analog Input, a read-only enum
//!   a Multi-state Value, a read-only bool a Binary Value. The server's
//!   commands use the same families (BO, AV).
//! - Instance `instance_base + slot x instance_stride + k`, `k` being the
//!   point's place in the block (template order, then per output), whatever
//!   its type: one number names one point of one route.
//! - Object_Name `"<route> <point name>"` (unique per device; on a clash
//!   with another object `" (route.<slot>)"` is appended), Description the
//!   template's (per-output points add the output's name), State_Text the
//!   route's own input names.
//! - Structured View `<slot>`: the route (Node_Type equipment,
//!   Subordinate_List its objects in block order, then its Trend Logs);
//!   Structured View 0: the server (its mapped points, then the route
//!   views).
//! - Trend Log per `his` measurement (as the server's): TLn logs the route
//!   object with instance n, filled from the slot's history when the block
//!   opens (at start-up too, so it survives a restart), `[trend_log]
//!   route_buffer_size` records (0: none).
//!
//! Objects are views of the point database like the server's
//! ([`PointObject`]); this module only decides which exist. The Device's
//! Object_List and Database_Revision follow every change; the revision is
//! kept in the data dir with a fingerprint of the served (identifier,
//! name) set, so a restart that serves the same objects keeps it and one
//! that serves others increments it: it never goes backwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bacnet_objects::database::ObjectDatabase;
use bacnet_objects::group::StructuredViewObject;
use bacnet_objects::traits::BACnetObject;
use bacnet_types::enums::{ErrorCode, NodeType, ObjectType, PropertyIdentifier as P};
use bacnet_types::error::{Error as BacnetError, RemoteError};
use bacnet_types::primitives::{ObjectIdentifier, PropertyValue};

use crate::points::routes::{BlockInfo, RouteTemplate};
use crate::points::{
    BacnetObject, BacnetObjectType, BacnetTrendLog, Maps, PointDb, PointDef, PointId, Role,
};

use super::config_objects::ConfigObject;
use super::objects::{object_type, PointObject};
use super::trend::{self, TrendFeed};
use super::units;

/// Instance of the server's Structured View (route views use their slot).
pub const SERVER_VIEW_INSTANCE: u32 = 0;
/// Largest object instance (Clause 12.1.1.1: 4194303 is "uninitialized").
pub const MAX_INSTANCE: u32 = 4_194_302;
/// File in the data dir holding the Database_Revision and its fingerprint.
pub const REVISION_FILE: &str = "bacnet-database-revision";

/// The pure address rules live with the route template in the point
/// database, so the REST API and the config check share them without
/// naming a protocol.
pub use crate::points::route_addresses::{type_of, InstanceRule};

/// Whether a route point's object gets a Trend Log: a `his` measurement,
/// the server's rule (`mappings/bacnet.toml` `[trend_log]`).
pub fn loggable(def: &PointDef) -> bool {
    def.his && def.role == Role::Measurement
}

/// Every object type route blocks can serve with this template, plus the
/// Structured View, and the Trend Log when `trend_logs` (route logs on)
/// and the template has a `his` measurement (what
/// Protocol_Object_Types_Supported claims from start).
pub fn served_types(tpl: &RouteTemplate, trend_logs: bool) -> Vec<ObjectType> {
    let mut v: Vec<ObjectType> = tpl
        .points
        .iter()
        .map(|p| object_type(type_of(&p.def).0))
        .collect();
    v.push(ObjectType::STRUCTURED_VIEW);
    if trend_logs && tpl.points.iter().any(|p| loggable(&p.def)) {
        v.push(ObjectType::TREND_LOG);
    }
    v
}

/// The engineering units of a template point (the template's Haystack unit;
/// the map's bit-rate fallback applies as to the server's objects).
fn units_of(def: &PointDef, ty: BacnetObjectType, fallback: bool) -> Result<u32, String> {
    let o = BacnetObject {
        point: PointId(0),
        object_type: ty,
        instance: 0,
        units: None,
    };
    units::units_code(def, &o, fallback)
        .map_err(|e| format!("route template point {:?}: {e}", def.id))
}

/// Config check (`check-config`): the slot ranges fit the instance space,
/// hold a whole block, miss the server's objects of the same type, and
/// every template unit has a BACnet code. Each problem is the
/// `[route_points]` key it is about and one message.
pub fn check(tpl: &RouteTemplate, rule: InstanceRule, maps: &Maps) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let len = tpl.block_len();
    if len as u64 > u64::from(rule.stride) {
        out.push(("bacnet_instance_stride", format!(
            "bacnet_instance_stride {} is smaller than a route block ({len} objects with this template and max_outputs)",
            rule.stride
        )));
    }
    let last = rule.instance(tpl.max_slots, len.saturating_sub(1));
    if last > u64::from(MAX_INSTANCE) {
        out.push(("bacnet_instance_base", format!(
            "route objects reach instance {last} (base {} + {} routes x stride {}): above {MAX_INSTANCE}",
            rule.base, tpl.max_slots, rule.stride
        )));
    }
    let lo = rule.instance(1, 0);
    let hi = rule.instance(tpl.max_slots, len.saturating_sub(1));
    let types: Vec<BacnetObjectType> = tpl.points.iter().map(|p| type_of(&p.def).0).collect();
    for o in &maps.bacnet.objects {
        if types.contains(&o.object_type) && (lo..=hi).contains(&u64::from(o.instance)) {
            out.push(("bacnet_instance_base", format!(
                "route objects ({lo}..={hi}) overlap the mapped object {}{} (mappings/bacnet.toml): move bacnet_instance_base",
                o.object_type.short(),
                o.instance
            )));
        }
    }
    // Route Trend Logs take their logged object's instance: they must miss
    // the server's (TLn logs the server object n).
    if maps.bacnet.route_trend_buffer_size > 0 && tpl.points.iter().any(|p| loggable(&p.def)) {
        for t in &maps.bacnet.trend_logs {
            if (lo..=hi).contains(&u64::from(t.instance)) {
                out.push(("bacnet_instance_base", format!(
                    "route Trend Logs ({lo}..={hi}) overlap the Trend Log TL{} of mappings/bacnet.toml: move bacnet_instance_base",
                    t.instance
                )));
            }
        }
    }
    for p in &tpl.points {
        let (ty, _) = type_of(&p.def);
        if matches!(
            ty,
            BacnetObjectType::AnalogInput | BacnetObjectType::AnalogValue
        ) {
            if let Err(e) = units_of(&p.def, ty, maps.bacnet.bitrate_units_fallback) {
                out.push(("template", e));
            }
        }
    }
    out
}

/// One route object as the EDE export and the live database describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteObjectInfo {
    pub point: PointId,
    pub ty: BacnetObjectType,
    pub commandable: bool,
    pub instance: u32,
    pub name: String,
    pub description: String,
    pub states: Vec<String>,
    pub units: u32,
    /// A `his` measurement: served with a Trend Log while route logs are on.
    pub trend_log: bool,
}

/// The objects of slot `slot` owned by `info`, in block order.
pub fn block_objects(
    db: &PointDb,
    rule: InstanceRule,
    slot: u16,
    info: &BlockInfo,
    fallback: bool,
) -> Result<Vec<RouteObjectInfo>, String> {
    let mut out = Vec::new();
    for (k, id) in db.block_ids(slot).into_iter().enumerate() {
        let def = db
            .def(id)
            .ok_or_else(|| format!("route point #{} does not exist", id.0))?;
        let (ty, commandable) = type_of(def);
        let instance = u32::try_from(rule.instance(slot, k))
            .ok()
            .filter(|i| *i <= MAX_INSTANCE)
            .ok_or_else(|| format!("route slot {slot}: instance beyond {MAX_INSTANCE}"))?;
        let output = db.route_point(id).and_then(|rp| rp.output);
        let description = match output {
            Some(n) => match usize::from(n)
                .checked_sub(1)
                .and_then(|i| info.outputs.get(i))
            {
                Some(o) => format!("{} ({o})", def.description),
                None => format!("{} (output {n}: unused)", def.description),
            },
            None => def.description.clone(),
        };
        let units = if matches!(
            ty,
            BacnetObjectType::AnalogInput | BacnetObjectType::AnalogValue
        ) {
            units_of(def, ty, fallback)?
        } else {
            units::NO_UNITS
        };
        out.push(RouteObjectInfo {
            point: id,
            ty,
            commandable,
            instance,
            name: format!("{} {}", info.route, def.name),
            description,
            states: db.state_names(id),
            units,
            trend_log: loggable(def),
        });
    }
    Ok(out)
}

/// FNV-1a, 64 bits: a fingerprint that stays the same across builds (the
/// standard library's hasher makes no such promise).
fn fnv(acc: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(acc, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Fingerprint of the served objects: their identifiers and names, in
/// identifier order (what Clause 12.11.35 ties Database_Revision to).
pub fn fingerprint(objects: &[(ObjectIdentifier, String)]) -> u64 {
    let mut v: Vec<&(ObjectIdentifier, String)> = objects.iter().collect();
    v.sort_by_key(|(o, _)| o.encode());
    v.iter().fold(0xcbf2_9ce4_8422_2325, |h, (o, n)| {
        fnv(fnv(fnv(h, &o.encode()), n.as_bytes()), &[0])
    })
}

/// Database_Revision kept in `<data_dir>/bacnet-database-revision`
/// ("<revision> <fingerprint hex>").
pub struct Revision {
    path: Option<PathBuf>,
    pub value: u32,
    fp: Option<u64>,
}

impl Revision {
    /// Loads the stored revision (absent or unreadable: 0, logged).
    pub fn load(data_dir: Option<&Path>) -> Revision {
        let path = data_dir.map(|d| d.join(REVISION_FILE));
        let (value, fp) = match path.as_ref().map(std::fs::read_to_string) {
            Some(Ok(t)) => {
                let mut f = t.split_whitespace();
                let v = f.next().and_then(|v| v.parse::<u32>().ok());
                let fp = f.next().and_then(|h| u64::from_str_radix(h, 16).ok());
                match v {
                    Some(v) => (v, fp),
                    None => {
                        tracing::warn!(
                            "bacnet: {REVISION_FILE} unreadable, Database_Revision restarts from 0"
                        );
                        (0, None)
                    }
                }
            }
            Some(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!("bacnet: {REVISION_FILE}: {e}");
                (0, None)
            }
            _ => (0, None),
        };
        Revision { path, value, fp }
    }

    /// Increments the revision when `fp` differs from the last served set;
    /// returns whether it did. Stored before it is served, so a client
    /// never sees a value that a crash could take back.
    pub fn observe(&mut self, fp: u64) -> bool {
        if self.fp == Some(fp) {
            return false;
        }
        // Wraps at 2^32 - 1 back to 1 (Unsigned32), never to 0.
        self.value = self.value.checked_add(1).unwrap_or(1);
        self.fp = Some(fp);
        if let Some(p) = &self.path {
            if let Err(e) = store(p, &format!("{} {fp:016x}\n", self.value)) {
                tracing::warn!(
                    "bacnet: Database_Revision not stored ({}): {e}",
                    p.display()
                );
            }
        }
        true
    }
}

/// Writes `text` to `path` through a synced temporary file and a rename,
/// mode 0600 like the rest of the data dir.
fn store(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn duplicate_name(e: &BacnetError) -> bool {
    matches!(
        e,
        BacnetError::Remote(RemoteError::Error {
            code: ErrorCode::DUPLICATE_NAME,
            ..
        })
    )
}

/// Adds `obj`, or the one `rename` makes when its name is taken. Returns
/// the name it went in with.
fn add_named<O: BACnetObject + 'static>(
    odb: &mut ObjectDatabase,
    make: impl Fn(String) -> Result<O, BacnetError>,
    name: &str,
    fallback: &str,
) -> Result<String, BacnetError> {
    match odb.add(Box::new(make(name.to_string())?)) {
        Ok(()) => Ok(name.to_string()),
        Err(e) if duplicate_name(&e) => {
            tracing::warn!("bacnet: object name {name:?} is taken; serving {fallback:?}");
            odb.add(Box::new(make(fallback.to_string())?))?;
            Ok(fallback.to_string())
        }
        Err(e) => Err(e),
    }
}

/// A Structured View, read-only from the network.
fn view(
    instance: u32,
    name: String,
    description: &str,
    subtype: &str,
    members: &[(ObjectIdentifier, String)],
) -> Result<ConfigObject<StructuredViewObject>, BacnetError> {
    let mut sv = StructuredViewObject::new(instance, name)?;
    sv.node_type = NodeType::EQUIPMENT.to_raw();
    sv.node_subtype = subtype.to_string();
    sv.write_property(
        P::DESCRIPTION,
        None,
        PropertyValue::CharacterString(description.to_string()),
        None,
    )?;
    sv.set_subordinates(
        members
            .iter()
            .map(|(o, n)| ((*o).into(), n.clone()))
            .collect(),
    )?;
    Ok(ConfigObject::read_only(sv))
}

/// What one owned slot serves now.
struct Served {
    info: Arc<BlockInfo>,
    view: (ObjectIdentifier, String),
    objects: Vec<(PointId, ObjectIdentifier, String)>,
    /// Trend Logs, by the point they log.
    logs: Vec<(PointId, ObjectIdentifier, String)>,
}

/// The route objects of a running device, kept in step with the blocks.
pub struct RouteObjects {
    rule: InstanceRule,
    fallback: bool,
    device: ObjectIdentifier,
    /// Object_List before the route objects: Device, port, points, logs.
    base_list: Vec<ObjectIdentifier>,
    /// The server's mapped objects: the top view's first members.
    server_members: Vec<(ObjectIdentifier, String)>,
    server_view: (ObjectIdentifier, String),
    server_description: String,
    slots: BTreeMap<u16, Served>,
    pub revision: Revision,
    /// Makes the route objects alarm-capable as they are built (issue 21:
    /// Route Status, Output Status report like the server's points).
    alarm_hooks: Option<std::sync::Arc<super::AlarmHooks>>,
    /// Buffer_Size of the route Trend Logs (0: no route Trend Logs).
    trend_buffer: u32,
}

/// Which points' objects and Trend Logs appeared or went in one sync.
#[derive(Default)]
pub struct SyncChanges {
    pub added: Vec<(PointId, ObjectIdentifier)>,
    pub removed: Vec<PointId>,
    /// The feeds of the Trend Logs added (the sync loop moves the
    /// history's new samples into them).
    pub logs_added: Vec<TrendFeed>,
    /// The points whose Trend Log went.
    pub logs_removed: Vec<PointId>,
    /// Database_Revision was incremented.
    pub revised: bool,
}

impl RouteObjects {
    /// `base_list` is the Object_List without route objects and views.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rule: InstanceRule,
        fallback: bool,
        device: ObjectIdentifier,
        base_list: Vec<ObjectIdentifier>,
        server_members: Vec<(ObjectIdentifier, String)>,
        server_view_name: String,
        server_description: String,
        revision: Revision,
    ) -> Result<Self, BacnetError> {
        let oid = ObjectIdentifier::new(ObjectType::STRUCTURED_VIEW, SERVER_VIEW_INSTANCE)?;
        Ok(RouteObjects {
            rule,
            fallback,
            device,
            base_list,
            server_members,
            server_view: (oid, server_view_name),
            server_description,
            slots: BTreeMap::new(),
            revision,
            alarm_hooks: None,
            trend_buffer: 0,
        })
    }

    /// Route `his` measurements get Trend Logs of `records` records from
    /// now on (0: none).
    pub fn with_trend_buffer(mut self, records: u32) -> Self {
        self.trend_buffer = records;
        self
    }

    /// Route objects built from now on report their points' alarms.
    pub fn with_alarm_hooks(mut self, hooks: Option<std::sync::Arc<super::AlarmHooks>>) -> Self {
        self.alarm_hooks = hooks;
        self
    }

    /// The server's Structured View as it is now (added at start, replaced
    /// on every sync).
    fn server_view_object(
        &self,
        name: String,
    ) -> Result<ConfigObject<StructuredViewObject>, BacnetError> {
        let mut members = self.server_members.clone();
        members.extend(self.slots.values().map(|s| s.view.clone()));
        view(
            SERVER_VIEW_INSTANCE,
            name,
            &self.server_description,
            "server",
            &members,
        )
    }

    /// Adds the server's view (before any route) and sets Object_List.
    pub fn install(&mut self, odb: &mut ObjectDatabase) -> Result<(), BacnetError> {
        let wanted = self.server_view.1.clone();
        let name = add_named(
            odb,
            |n| self.server_view_object(n),
            &wanted,
            &format!("{wanted} (view)"),
        )?;
        self.server_view.1 = name;
        // Served with the stored revision: the first sync (once the
        // engine has opened its routes' blocks) decides whether the set
        // differs from the last run's.
        self.publish(odb, false);
        Ok(())
    }

    /// Every served object's (identifier, name), for the fingerprint.
    fn served(&self, odb: &ObjectDatabase) -> Vec<(ObjectIdentifier, String)> {
        self.object_list()
            .into_iter()
            .map(|o| {
                let n = odb.get(&o).map(|x| x.object_name().to_string());
                (o, n.unwrap_or_default())
            })
            .collect()
    }

    /// Object_List: the base list, the server view, then per slot its view,
    /// objects and Trend Logs.
    pub fn object_list(&self) -> Vec<ObjectIdentifier> {
        let mut v = self.base_list.clone();
        v.push(self.server_view.0);
        for s in self.slots.values() {
            v.push(s.view.0);
            v.extend(s.objects.iter().map(|(_, o, _)| *o));
            v.extend(s.logs.iter().map(|(_, o, _)| *o));
        }
        v
    }

    /// Sets the Device's Object_List and Database_Revision (incremented
    /// first when `observe` and the served set changed).
    fn publish(&mut self, odb: &mut ObjectDatabase, observe: bool) -> bool {
        let revised = observe && {
            let fp = fingerprint(&self.served(odb));
            self.revision.observe(fp)
        };
        let list = self.object_list();
        if let Some(dev) = odb.get_mut(&self.device) {
            if let Some(mut a) = dev.device_authority_internal() {
                a.set_object_list(list);
                a.set_database_revision(self.revision.value);
            }
        }
        revised
    }

    /// Brings the objects in line with the database's blocks: removes the
    /// objects of freed slots and of slots whose route changed (name,
    /// inputs, outputs), then adds the objects of new and changed slots.
    /// Removing every changed slot first frees its names, so two routes
    /// that swap names do not collide.
    pub fn sync(&mut self, db: &PointDb, odb: &mut ObjectDatabase) -> SyncChanges {
        let mut ch = SyncChanges::default();
        let now: BTreeMap<u16, Arc<BlockInfo>> = db.blocks().into_iter().collect();
        let stale: Vec<u16> = self
            .slots
            .iter()
            .filter(|(slot, s)| now.get(slot).is_none_or(|i| **i != *s.info))
            .map(|(slot, _)| *slot)
            .collect();
        for slot in &stale {
            if let Some(s) = self.slots.remove(slot) {
                let _ = odb.remove(&s.view.0);
                for (p, o, _) in s.objects {
                    let _ = odb.remove(&o);
                    ch.removed.push(p);
                }
                for (p, o, _) in s.logs {
                    let _ = odb.remove(&o);
                    ch.logs_removed.push(p);
                }
            }
        }
        for (slot, info) in now {
            if self.slots.contains_key(&slot) {
                continue;
            }
            match self.add_slot(db, odb, slot, info) {
                Ok((s, feeds)) => {
                    ch.added.extend(s.objects.iter().map(|(p, o, _)| (*p, *o)));
                    ch.logs_added.extend(feeds);
                    self.slots.insert(slot, s);
                }
                Err(e) => tracing::warn!("bacnet: route slot {slot}: objects not served: {e}"),
            }
        }
        // The top view lists the route views: replaced in place (same
        // identifier and name).
        match self.server_view_object(self.server_view.1.clone()) {
            Ok(sv) => {
                if let Err(e) = odb.add(Box::new(sv)) {
                    tracing::warn!("bacnet: server view not updated: {e}");
                }
            }
            Err(e) => tracing::warn!("bacnet: server view not updated: {e}"),
        }
        ch.revised = self.publish(odb, true);
        ch
    }

    /// Adds slot `slot`'s objects, Trend Logs and view, with the feeds of
    /// the logs; on failure removes what it added (a slot is served whole
    /// or not at all).
    fn add_slot(
        &self,
        db: &PointDb,
        odb: &mut ObjectDatabase,
        slot: u16,
        info: Arc<BlockInfo>,
    ) -> Result<(Served, Vec<TrendFeed>), String> {
        let mut added: Vec<ObjectIdentifier> = Vec::new();
        let r = self.try_add_slot(db, odb, slot, info, &mut added);
        if r.is_err() {
            for o in &added {
                let _ = odb.remove(o);
            }
        }
        r
    }

    fn try_add_slot(
        &self,
        db: &PointDb,
        odb: &mut ObjectDatabase,
        slot: u16,
        info: Arc<BlockInfo>,
        added: &mut Vec<ObjectIdentifier>,
    ) -> Result<(Served, Vec<TrendFeed>), String> {
        let infos = block_objects(db, self.rule, slot, &info, self.fallback)?;
        let mut objects = Vec::with_capacity(infos.len());
        for i in &infos {
            let (oid, name) = self.add_object(db, odb, slot, i)?;
            added.push(oid);
            objects.push((i.point, oid, name));
        }
        let mut logs = Vec::new();
        let mut feeds = Vec::new();
        if self.trend_buffer > 0 {
            let now = chrono::Utc::now();
            for (i, (_, _, name)) in infos.iter().zip(&objects) {
                if i.trend_log {
                    let (oid, log_name, feed) = self.add_log(db, odb, slot, i, name, now)?;
                    added.push(oid);
                    logs.push((i.point, oid, log_name));
                    feeds.push(feed);
                }
            }
        }
        let members: Vec<(ObjectIdentifier, String)> = objects
            .iter()
            .chain(&logs)
            .map(|(_, o, n)| (*o, n.clone()))
            .collect();
        let desc = format!("route {} (slot {slot})", info.route);
        let make = |name: String| view(u32::from(slot), name, &desc, "route", &members);
        let fallback = format!("{} (route.{slot})", info.route);
        let name = add_named(odb, make, &info.route, &fallback)
            .map_err(|e| format!("structured view {slot}: {e}"))?;
        let oid = ObjectIdentifier::new(ObjectType::STRUCTURED_VIEW, u32::from(slot))
            .map_err(|e| e.to_string())?;
        let served = Served {
            info,
            view: (oid, name),
            objects,
            logs,
        };
        Ok((served, feeds))
    }

    /// Adds one route object; its identifier and the name it went in with.
    fn add_object(
        &self,
        db: &PointDb,
        odb: &mut ObjectDatabase,
        slot: u16,
        i: &RouteObjectInfo,
    ) -> Result<(ObjectIdentifier, String), String> {
        let def = db
            .def(i.point)
            .ok_or_else(|| format!("point #{} does not exist", i.point.0))?;
        let oid =
            ObjectIdentifier::new(object_type(i.ty), i.instance).map_err(|e| e.to_string())?;
        let make = |name: String| {
            PointObject::new(db.clone(), i.point, def, i.ty, i.instance, i.units).map(|o| {
                let o = o
                    .labelled(name, i.description.clone(), i.states.clone())
                    .with_commandable(i.commandable);
                match &self.alarm_hooks {
                    Some(h) => h.attach(db, i.point, o),
                    None => o,
                }
            })
        };
        let fallback = format!("{} (route.{slot})", i.name);
        let name = add_named(odb, make, &i.name, &fallback)
            .map_err(|e| format!("{}{}: {e}", i.ty.short(), i.instance))?;
        Ok((oid, name))
    }

    /// Adds the Trend Log of route object `i` (served as `logged`): TLn
    /// logs the object with instance n, filled from the slot's history up
    /// to `now`. Its identifier, its name and its feed.
    fn add_log(
        &self,
        db: &PointDb,
        odb: &mut ObjectDatabase,
        slot: u16,
        i: &RouteObjectInfo,
        logged: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(ObjectIdentifier, String, TrendFeed), String> {
        let tl = BacnetTrendLog {
            point: i.point,
            instance: i.instance,
            logged_type: i.ty,
            logged_instance: i.instance,
        };
        let wanted = format!("{logged} Trend Log");
        let (log, feed) = trend::build_named(db, &tl, &wanted, logged, self.trend_buffer, now)?;
        let oid = feed.oid;
        match odb.add(Box::new(log)) {
            Ok(()) => Ok((oid, wanted, feed)),
            Err(e) if duplicate_name(&e) => {
                let fallback = format!("{wanted} (route.{slot})");
                tracing::warn!("bacnet: object name {wanted:?} is taken; serving {fallback:?}");
                let (log, feed) =
                    trend::build_named(db, &tl, &fallback, logged, self.trend_buffer, now)?;
                odb.add(Box::new(log))
                    .map_err(|e| format!("TL{}: {e}", i.instance))?;
                Ok((oid, fallback, feed))
            }
            Err(e) => Err(format!("TL{}: {e}", i.instance)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::points::routes::BlockInfo;
    use crate::points::DbOptions;

    fn setup() -> (Config, PointDb) {
        let cfg = Config::embedded().expect("embedded config");
        let db = PointDb::with_routes(
            cfg.points.clone(),
            cfg.site.clone(),
            DbOptions::default(),
            cfg.route_template.clone(),
        );
        (cfg, db)
    }

    fn info(route: &str) -> BlockInfo {
        BlockInfo {
            route: route.into(),
            inputs: vec!["main".into(), "backup".into()],
            outputs: vec!["web".into()],
        }
    }

    const RULE: InstanceRule = InstanceRule {
        base: 0,
        stride: 1000,
    };

    fn objects(dir: Option<&Path>) -> RouteObjects {
        let dev = ObjectIdentifier::new(ObjectType::DEVICE, 1).expect("oid");
        RouteObjects::new(
            RULE,
            false,
            dev,
            vec![dev],
            vec![],
            "Server".into(),
            "server".into(),
            Revision::load(dir),
        )
        .expect("route objects")
        .with_trend_buffer(100)
    }

    fn name(odb: &ObjectDatabase, ty: ObjectType, inst: u32) -> Option<String> {
        let oid = ObjectIdentifier::new(ty, inst).expect("oid");
        odb.get(&oid).map(|o| o.object_name().to_string())
    }

    #[test]
    fn types_follow_role_and_kind() {
        let (cfg, _) = setup();
        let tpl = cfg.route_template.expect("template");
        let t = |id: &str| {
            let p = tpl.points.iter().find(|p| p.def.id == id).expect("point");
            type_of(&p.def)
        };
        assert_eq!(t("route_enable"), (BacnetObjectType::BinaryOutput, true));
        assert_eq!(t("input_select"), (BacnetObjectType::MultiStateValue, true));
        assert_eq!(t("output_profile"), (BacnetObjectType::AnalogValue, true));
        assert_eq!(t("input_bitrate"), (BacnetObjectType::AnalogInput, false));
        assert_eq!(
            t("route_status"),
            (BacnetObjectType::MultiStateValue, false)
        );
    }

    #[test]
    fn check_config_names_the_route_points_key() {
        let dir = std::path::Path::new(".");
        let msgs = |text: &str| -> Vec<String> {
            match Config::from_text("c.toml", text, dir) {
                Ok(_) => Vec::new(),
                Err(e) => {
                    e.0.iter()
                        .map(|e| format!("{}: {}", e.key, e.message))
                        .collect()
                }
            }
        };
        let e = msgs("[route_points]\nbacnet_instance_stride = 10\n");
        assert!(
            e.iter()
                .any(|m| m.starts_with("route_points.bacnet_instance_stride: ")),
            "{e:?}"
        );
        let e = msgs("[route_points]\nbacnet_instance_base = 4100000\n");
        assert!(
            e.iter()
                .any(|m| m.starts_with("route_points.bacnet_instance_base: ")),
            "{e:?}"
        );
        let e = msgs("[route_points]\nbacnet_instance_base = 0\nbacnet_instance_stride = 5\n");
        assert!(e.iter().any(|m| m.contains("overlap")), "{e:?}");
        assert!(msgs("[route_points]\nbacnet_instance_base = 100000\n").is_empty());
    }

    #[test]
    fn the_point_table_shows_slot_1_instances() {
        let (cfg, _) = setup();
        let t = crate::config::table::point_table(&cfg);
        let row = |id: &str| {
            t.lines()
                .find(|l| l.starts_with(&format!("{id} ")))
                .unwrap_or_else(|| panic!("{id} in\n{t}"))
                .to_string()
        };
        assert!(row("route.1.route_enable").contains(" BO1010 "));
        assert!(row("route.1.input_select").contains(" MSV1011 "));
        assert!(row("route.1.output_status.8").contains(" MSV1030 "));
    }

    #[test]
    fn the_rule_is_checked_against_block_size_instance_space_and_the_map() {
        let (cfg, _) = setup();
        let tpl = cfg.route_template.clone().expect("template");
        assert!(check(&tpl, RULE, &cfg.maps).is_empty());
        let small = InstanceRule {
            base: 0,
            stride: 10,
        };
        assert!(check(&tpl, small, &cfg.maps)[0]
            .1
            .contains("smaller than a route block"));
        let high = InstanceRule {
            base: 4_100_000,
            stride: 1000,
        };
        assert!(check(&tpl, high, &cfg.maps)
            .iter()
            .any(|e| e.0 == "bacnet_instance_base" && e.1.contains("above 4194302")));
        // Slot 1 at 0 + 1 x 31..: the map's AI3.. are in the range.
        let low = InstanceRule { base: 0, stride: 3 };
        let e = check(&tpl, low, &cfg.maps);
        assert!(e.iter().any(|e| e.1.contains("overlap")), "{e:?}");
        // A Trend Log of the map inside the route range (logging an object
        // of another type): the route logs would take its instance.
        let mut maps = cfg.maps.clone();
        let cpu = maps.bacnet.trend_logs[0];
        maps.bacnet.trend_logs.push(BacnetTrendLog {
            instance: 2005,
            logged_instance: 2005,
            logged_type: BacnetObjectType::AnalogValue,
            ..cpu
        });
        let e = check(&tpl, RULE, &maps);
        assert!(
            e.iter()
                .any(|e| e.0 == "bacnet_instance_base" && e.1.contains("Trend Log TL2005")),
            "{e:?}"
        );
        maps.bacnet.route_trend_buffer_size = 0;
        assert!(
            check(&tpl, RULE, &maps).is_empty(),
            "no route logs, no clash"
        );
    }

    #[test]
    fn route_measurements_get_trend_logs_filled_from_the_slot_history() {
        use crate::points::{Quality, Sample, Value};
        let (_, db) = setup();
        let mut odb = ObjectDatabase::new();
        let mut ro = objects(None);
        ro.install(&mut odb).expect("install");
        // History of slot 3's Input Bitrate from before the route opened
        // (what a restart restores from SQLite).
        let bitrate = db
            .block_point(3, "input_bitrate", None)
            .expect("route.3.input_bitrate");
        let t0 = chrono::Utc::now() - chrono::Duration::minutes(10);
        for k in 0..5 {
            db.insert_history(
                bitrate,
                Sample {
                    at: t0 + chrono::Duration::seconds(k),
                    value: Value::Number(k as f64),
                },
            );
        }
        db.open_block(3, info("cam"));
        let ch = ro.sync(&db, &mut odb);
        // One log per his measurement, at its object's instance.
        let mut logged: Vec<u32> = ch
            .logs_added
            .iter()
            .map(|f| f.oid.instance_number())
            .collect();
        logged.sort_unstable();
        assert_eq!(logged, (3003..=3009).collect::<Vec<_>>());
        let tl = ObjectIdentifier::new(ObjectType::TREND_LOG, 3003).expect("oid");
        let log = odb.get(&tl).expect("TL3003");
        assert_eq!(log.object_name(), "cam Input Bitrate Trend Log");
        // Log_DeviceObjectProperty: [0] AI3003 (type 0 << 22 | 3003), [1]
        // Present_Value (85).
        assert_eq!(
            log.read_property(P::LOG_DEVICE_OBJECT_PROPERTY, None)
                .expect("reference"),
            PropertyValue::ApplicationData(vec![0x0C, 0, 0, 0x0B, 0xBB, 0x19, 85])
        );
        assert_eq!(
            log.read_property(P::BUFFER_SIZE, None).expect("size"),
            PropertyValue::Unsigned(100)
        );
        // The five samples, then LOG_INTERRUPTED: the slot's history.
        assert_eq!(
            log.read_property(P::RECORD_COUNT, None).expect("count"),
            PropertyValue::Unsigned(6)
        );
        // The route's view lists its objects, then its logs.
        let sv = ObjectIdentifier::new(ObjectType::STRUCTURED_VIEW, 3).expect("oid");
        match odb
            .get(&sv)
            .expect("SV3")
            .read_property(P::SUBORDINATE_LIST, Some(0))
        {
            Ok(PropertyValue::Unsigned(n)) => assert_eq!(n, 31 + 7),
            other => panic!("{other:?}"),
        }
        assert!(ro.object_list().contains(&tl));
        // A new sample reaches the log through its feed.
        let mut feeds = crate::protocols::bacnet::trend::Feeds::new(db.len(), ch.logs_added);
        db.set(bitrate, Some(Value::Number(42.0)), Quality::Ok, None)
            .expect("set");
        feeds.note(&db, bitrate, &db.read(bitrate).expect("state"));
        assert_eq!(feeds.take_dirty(), vec![tl]);
        let log = odb.get_mut(&tl).expect("TL3003");
        log.add_trend_record(crate::protocols::bacnet::trend::drain_signal())
            .expect("drain");
        assert_eq!(
            log.read_property(P::RECORD_COUNT, None).expect("count"),
            PropertyValue::Unsigned(7)
        );
        // The route goes: its logs go; back again: refilled from history.
        db.close_block(3);
        let ch = ro.sync(&db, &mut odb);
        assert_eq!(ch.logs_removed.len(), 7);
        assert!(odb.get(&tl).is_none());
        assert!(!ro.object_list().contains(&tl));
        db.open_block(3, info("cam"));
        ro.sync(&db, &mut odb);
        assert_eq!(
            odb.get(&tl)
                .expect("TL3003 again")
                .read_property(P::RECORD_COUNT, None)
                .expect("count"),
            PropertyValue::Unsigned(7),
            "5 restored + 42.0 + LOG_INTERRUPTED"
        );
    }

    #[test]
    fn no_route_trend_logs_with_a_buffer_of_zero() {
        let (_, db) = setup();
        let mut odb = ObjectDatabase::new();
        let mut ro = objects(None).with_trend_buffer(0);
        ro.install(&mut odb).expect("install");
        db.open_block(1, info("cam"));
        let ch = ro.sync(&db, &mut odb);
        assert!(ch.logs_added.is_empty());
        assert!(odb.find_by_type(ObjectType::TREND_LOG).is_empty());
        assert_eq!(ro.object_list().len(), 2 + 1 + 31);
        let tpl = db.route_template().expect("template");
        assert!(!served_types(tpl, false).contains(&ObjectType::TREND_LOG));
        assert!(served_types(tpl, true).contains(&ObjectType::TREND_LOG));
    }

    #[test]
    fn blocks_become_objects_and_views_live_and_names_swap_without_clash() {
        let (_, db) = setup();
        let mut odb = ObjectDatabase::new();
        let mut ro = objects(None);
        ro.install(&mut odb).expect("install");
        assert_eq!(ro.object_list().len(), 2);
        db.open_block(3, info("cam"));
        db.open_block(1, info("lobby"));
        let ch = ro.sync(&db, &mut odb);
        assert_eq!(ch.added.len(), 62);
        assert_eq!(ch.logs_added.len(), 14, "7 his measurements per route");
        assert!(ch.revised);
        let msv = ObjectType::MULTI_STATE_VALUE;
        assert_eq!(name(&odb, msv, 3000).as_deref(), Some("cam Route Status"));
        assert_eq!(
            name(&odb, ObjectType::BINARY_OUTPUT, 1010).as_deref(),
            Some("lobby Route Enable")
        );
        assert_eq!(
            name(&odb, ObjectType::STRUCTURED_VIEW, 3).as_deref(),
            Some("cam")
        );
        // Input Select: commandable, the route's own input names.
        let sel = ObjectIdentifier::new(msv, 3011).expect("oid");
        let o = odb.get(&sel).expect("input select");
        assert!(o.property_list().contains(&P::PRIORITY_ARRAY));
        match o.read_property(P::STATE_TEXT, None).expect("state text") {
            PropertyValue::List(v) => assert_eq!(
                v[..3],
                [
                    PropertyValue::CharacterString("Auto".into()),
                    PropertyValue::CharacterString("main".into()),
                    PropertyValue::CharacterString("backup".into())
                ]
            ),
            other => panic!("{other:?}"),
        }
        // The two routes swap names: every object renamed, none refused.
        db.open_block(3, info("lobby"));
        db.open_block(1, info("cam"));
        let ch = ro.sync(&db, &mut odb);
        assert!(ch.revised);
        assert_eq!(name(&odb, msv, 3000).as_deref(), Some("lobby Route Status"));
        assert_eq!(name(&odb, msv, 1000).as_deref(), Some("cam Route Status"));
        // Nothing changed: no new revision.
        let before = ro.revision.value;
        assert!(!ro.sync(&db, &mut odb).revised);
        assert_eq!(ro.revision.value, before);
        // A freed slot: its objects and view are gone.
        db.close_block(3);
        let ch = ro.sync(&db, &mut odb);
        assert_eq!(ch.removed.len(), 31);
        assert_eq!(ch.logs_removed.len(), 7);
        assert!(name(&odb, msv, 3000).is_none());
        assert!(name(&odb, ObjectType::STRUCTURED_VIEW, 3).is_none());
        assert!(name(&odb, ObjectType::TREND_LOG, 3003).is_none());
        assert_eq!(ro.object_list().len(), 2 + 1 + 31 + 7);
        assert!(ro.revision.value > before);
    }

    #[test]
    fn a_name_taken_by_another_object_gets_the_slot_suffix() {
        let (_, db) = setup();
        let mut odb = ObjectDatabase::new();
        let mut ro = objects(None);
        ro.install(&mut odb).expect("install");
        // A route named like the server view: its view takes the suffix.
        db.open_block(2, info("Server"));
        ro.sync(&db, &mut odb);
        assert_eq!(
            name(&odb, ObjectType::STRUCTURED_VIEW, 2).as_deref(),
            Some("Server (route.2)")
        );
    }

    #[test]
    fn database_revision_is_kept_and_never_goes_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut r = Revision::load(Some(dir.path()));
        assert_eq!(r.value, 0);
        assert!(r.observe(7));
        assert!(!r.observe(7));
        assert!(r.observe(8));
        assert_eq!(r.value, 2);
        // A restart serving the same set keeps it; another set increments.
        let mut r = Revision::load(Some(dir.path()));
        assert_eq!(r.value, 2);
        assert!(!r.observe(8));
        assert!(r.observe(7));
        assert_eq!(Revision::load(Some(dir.path())).value, 3);
        // A damaged file restarts from 0 rather than failing the device.
        std::fs::write(dir.path().join(REVISION_FILE), "zz").expect("write");
        assert_eq!(Revision::load(Some(dir.path())).value, 0);
    }
}

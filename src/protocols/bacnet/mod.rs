//! BACnet/IP server device: the adapter between the point database and the rusty-bacnet stack (the only module that names it).
//!
//! # Why rusty-bacnet, and why behind this one module
//!
//! Measured on this machine (../shared/DESIGN.md): bacnet-rs 0.3.2 panics on a
//! 12-byte WriteProperty, cannot decode RPM/WPM/SubscribeCOV requests and
//! truncates property ids, so a server on it would own almost all decoding of
//! untrusted bytes. jscott3201/rusty-bacnet 0.15.0 (MIT) passed a 92-item
//! bacpypes3 check list (RP/RPM ALL/REQUIRED/OPTIONAL, WP/WPM with priorities,
//! COV and COV-property, Who-Has, DCC/Reinit, segmentation, BBMD/foreign
//! device), tshark found no malformed reply, and 48M fuzzed inputs to its 24
//! decoders plus 120k malformed datagrams to a live server caused no panic.
//! It is a 0.x crate from one author with a breaking release every few weeks,
//! hence the exact `=0.15.0` pins and this single adapter: nothing outside
//! `src/protocols/bacnet/` imports it, so an upgrade touches only here.
//!
//! # Shape
//!
//! - The Device and Network Port objects are the stack's built-in ones.
//! - Every mapped point is a [`objects::PointObject`]: a *view* of the point
//!   database, not a copy. Reads (RP, RPM, COV evaluation) read the database;
//!   a WriteProperty at priority P is `PointDb::write(.., P, Source::Bacnet)`,
//!   so BACnet, Modbus, Haystack and REST share one priority array and a
//!   refusal maps to the standard error class/code.
//! - Changes made by anything else (telemetry, other protocols) are pushed to
//!   the stack with `set_present_value_local`, which runs the stack's own COV
//!   evaluation (cov-increment, status-flags) and sends notifications.
//! - The Device and Network Port are the stack's objects behind
//!   [`config_objects::ConfigObject`], read-only from the network; Trend
//!   Logs are read-only too. WriteProperty/WPM reach every object, so each
//!   refusal carries the object's own Clause 15.9 error.
//! - A [`ServerPolicy`](bacnet_server::ServerPolicy) narrows the stack's
//!   permissive defaults: CreateObject/DeleteObject/list edits/file writes
//!   are refused.
//!
//! # Stack defaults that affect conformance
//!
//! Every rusty-bacnet default castpoint overrides, and every one it keeps on
//! purpose, is set explicitly in `conformance` and `reinitialize` (the
//! builder chain [`start`] builds the server with) with the reason next to
//! it, so an upgrade of the stack cannot silently change what the device
//! answers.

pub mod alarms;
pub mod classify;
pub mod config_objects;
pub mod ede;
pub mod objects;
pub mod routes;
pub mod transport;
pub mod trend;
pub mod units;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use bacnet_objects::database::ObjectDatabase;
use bacnet_objects::device::{DeviceConfig, DeviceObject, EXECUTED_SERVICES};
use bacnet_objects::network_port::{BipPortConfig, NetworkPortObject};
use bacnet_objects::notification_class::NotificationClass;
use bacnet_objects::property_metadata::PropertyWriteCapability;
use bacnet_objects::traits::BACnetObject;
use bacnet_objects::DeviceIdentity;
use bacnet_server::mutation::{MutationAuthorizationContext, MutationTarget};
use bacnet_server::server::{
    BACnetServer, DccPolicy, DiscoveryPolicy, ReadPropertyMultipleBudget, ReadRangeBudget,
    ServerBuilder, TimeSyncPolicy,
};
use bacnet_server::FnPolicy;
use bacnet_transport::bip::{BipMode, BipTransport, ForeignDeviceConfig};
use bacnet_types::enums::{ErrorClass, ErrorCode, ObjectType, ReinitializedState, Segmentation};
use bacnet_types::error::Error as BacnetError;
use bacnet_types::primitives::{ObjectIdentifier, PropertyValue};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::points::WritePolicy;
use crate::points::{Maps, PointDb, PointId, Protocol, Source, Value};
use crate::section::{Problem, Section};

use config_objects::{ConfigObject, RestartReason};

use objects::PointObject;
use trend::{PointTrendLog, TrendFeed};

/// The `[bacnet] vendor_id` default: 999 is on no vendor's entry in
/// ASHRAE's list, so it collides with nobody's proprietary extensions, but
/// it is not castpoint's either. An integrator sets the one ASHRAE assigned
/// to them (docs/bacnet-pics.md).
pub const DEFAULT_VENDOR_ID: u16 = 999;

/// The file in the data directory holding the Device_UUID.
pub const DEVICE_UUID_FILE: &str = "device-uuid";

/// The Device_UUID (Clause 12.11.62): made at first start (RFC 4122 version
/// 4, random) and kept in `<data_dir>/device-uuid` (mode 0600, 32 hex
/// digits), so it survives restarts and upgrades like the data it names.
pub fn device_uuid(data_dir: &std::path::Path) -> Result<[u8; 16], String> {
    let path = data_dir.join(DEVICE_UUID_FILE);
    let parse = |t: &str| -> Option<[u8; 16]> {
        let t = t.trim();
        if t.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(t.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        (out != [0u8; 16]).then_some(out)
    };
    match std::fs::read_to_string(&path) {
        Ok(t) => {
            return parse(&t).ok_or_else(|| {
                format!(
                    "bacnet: {} does not hold a Device UUID (32 hex digits)",
                    path.display()
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("bacnet: {}: {e}", path.display())),
    }
    let mut u = [0u8; 16];
    getrandom::fill(&mut u).map_err(|e| format!("bacnet: Device UUID: {e}"))?;
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("bacnet: {}: {e}", data_dir.display()))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    use std::io::Write;
    opts.open(&path)
        .and_then(|mut f| f.write_all(format!("{hex}\n").as_bytes()))
        .map_err(|e| format!("bacnet: {}: {e}", path.display()))?;
    Ok(u)
}

/// Network Port object instance for the one B/IP port.
pub const NETWORK_PORT_INSTANCE: u32 = 1;
/// Priority a ReinitializeDevice WARMSTART/COLDSTART writes `system_restart`
/// at: an operator action, so Manual Operator (8), like a panel button.
pub const RESTART_PRIORITY: u8 = 8;
/// How long one COV push may hold the sync loop before it moves on. The
/// stack keeps the notification work running after the wait is dropped, so
/// this only bounds how late the *next* point's change is pushed when a
/// confirmed subscriber is unreachable.
const COV_PUSH_WAIT: Duration = Duration::from_millis(250);

/// `[bacnet]`: the B/IP device.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BacnetSection {
    pub enabled: bool,
    pub bind: SocketAddr,
    pub device_instance: u32,
    pub device_name: String,
    pub vendor_id: u16,
    /// Directed broadcast address (default: from the interface's netmask).
    pub broadcast: Option<Ipv4Addr>,
    /// Password for DeviceCommunicationControl and ReinitializeDevice. Without
    /// one both services are refused: an open restart is a denial of service.
    pub password: Option<String>,
    /// Register as a foreign device with this BBMD.
    pub foreign_bbmd: Option<SocketAddrV4>,
    /// Foreign-device registration time-to-live, seconds (renewed at half).
    pub foreign_ttl: u16,
    /// Segmentation: reply with segments when a response exceeds the
    /// client's max APDU (default true); false answers Abort
    /// segmentation-not-supported instead.
    pub segmentation: bool,
    /// `read_only` / `write_allow`: which sources may write (enforced by
    /// `PointDb::write`, refusals answered WRITE_ACCESS_DENIED and audited).
    pub read_only: bool,
    pub write_allow: Vec<String>,
}

impl Default for BacnetSection {
    fn default() -> Self {
        BacnetSection {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 47808)),
            device_instance: 389_001,
            device_name: "castpoint".into(),
            vendor_id: DEFAULT_VENDOR_ID,
            broadcast: None,
            password: None,
            foreign_bbmd: None,
            foreign_ttl: 300,
            segmentation: true,
            read_only: false,
            write_allow: Vec::new(),
        }
    }
}

impl Section for BacnetSection {
    /// Checked whether or not the section is enabled (a typo is a typo),
    /// except the IPv6 bind, which only matters to a running device.
    fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        crate::section::range(
            "device_instance",
            self.device_instance,
            0,
            4_194_302,
            &mut p,
        );
        if self.enabled && self.bind.is_ipv6() {
            p.push(Problem::new(
                "bind",
                format!("{} is IPv6; BACnet/IP (Annex J) is IPv4", self.bind),
            ));
        }
        // Clause 16.1.1.1.3 / 16.4.1.1.2: 1..=20 characters.
        if self
            .password
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.len() > 20)
        {
            p.push(Problem::new("password", "must be 1 to 20 characters"));
        }
        if let Some(a) = self.foreign_bbmd {
            if a.ip().is_unspecified() || a.port() == 0 {
                p.push(Problem::new(
                    "foreign_bbmd",
                    format!("{a} is not an IPv4 address:port of a BBMD"),
                ));
            }
        }
        if self.foreign_ttl < 2 {
            p.push(Problem::new("foreign_ttl", "seconds, 2..=65535"));
        }
        p.extend(super::policy_problems(&self.write_allow));
        p
    }
}

/// The `[bacnet]` options the device runs with (after `validate`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BacnetOptions {
    pub broadcast: Option<Ipv4Addr>,
    pub password: Option<String>,
    pub foreign_bbmd: Option<SocketAddrV4>,
    pub foreign_ttl: u16,
    pub segmentation: bool,
    pub write_policy: WritePolicy,
}

impl BacnetSection {
    /// The device's options; a `write_allow` entry that does not parse (a
    /// section that skipped `validate`) is left out.
    pub fn options(&self) -> BacnetOptions {
        BacnetOptions {
            broadcast: self.broadcast,
            password: self.password.clone(),
            foreign_bbmd: self.foreign_bbmd,
            foreign_ttl: self.foreign_ttl,
            segmentation: self.segmentation,
            write_policy: super::policy_of(self.read_only, &self.write_allow),
        }
    }
}

/// The address a wildcard bind (0.0.0.0) publishes as the device's B/IP
/// address (Network Port object, I-Am's source): the IPv4 address of the
/// interface holding the default route, else the first non-loopback one,
/// else loopback. The stack refuses to register an unspecified address, and
/// BMS front-ends need a concrete one to reach the device.
pub fn primary_ipv4() -> Ipv4Addr {
    // /proc/net/route: Iface, Destination (hex), ...; the default route has
    // destination 00000000.
    let default_if = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|t| {
            t.lines().skip(1).find_map(|l| {
                let mut f = l.split_whitespace();
                let (name, dest) = (f.next()?, f.next()?);
                (dest == "00000000").then(|| name.to_string())
            })
        });
    let v4: Vec<(String, Ipv4Addr)> = if_addrs::get_if_addrs()
        .map(|ifs| {
            ifs.into_iter()
                .filter_map(|i| match i.addr {
                    if_addrs::IfAddr::V4(a) if !a.ip.is_loopback() => Some((i.name, a.ip)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    default_if
        .and_then(|d| v4.iter().find(|(n, _)| *n == d).map(|(_, ip)| *ip))
        .or_else(|| v4.first().map(|(_, ip)| *ip))
        .unwrap_or(Ipv4Addr::LOCALHOST)
}

/// The netmask of the interface holding `ip` (0.0.0.0 when unknown).
pub fn netmask_of(ip: Ipv4Addr) -> Ipv4Addr {
    if ip.is_loopback() {
        return Ipv4Addr::new(255, 0, 0, 0);
    }
    if let Ok(ifs) = if_addrs::get_if_addrs() {
        for i in ifs {
            if let if_addrs::IfAddr::V4(v4) = i.addr {
                if v4.ip == ip {
                    return v4.netmask;
                }
            }
        }
    }
    Ipv4Addr::UNSPECIFIED
}

/// The broadcast address of the interface a B/IP port binds.
pub fn broadcast_for(ip: Ipv4Addr) -> Ipv4Addr {
    if ip.is_unspecified() {
        return Ipv4Addr::BROADCAST;
    }
    if ip.is_loopback() {
        return Ipv4Addr::new(127, 255, 255, 255);
    }
    if let Ok(ifs) = if_addrs::get_if_addrs() {
        for i in ifs {
            if let if_addrs::IfAddr::V4(v4) = i.addr {
                if v4.ip == ip {
                    if let Some(b) = v4.broadcast {
                        return b;
                    }
                    let mask = u32::from(v4.netmask);
                    return Ipv4Addr::from(u32::from(ip) | !mask);
                }
            }
        }
    }
    Ipv4Addr::BROADCAST
}

/// The point objects of the BACnet map, in map order (without alarms).
pub fn point_objects(db: &PointDb, maps: &Maps) -> Result<Vec<PointObject>, String> {
    point_objects_with(db, maps, None)
}

/// What the device needs of castpoint's alarm runtime (alarms.rs): the
/// runtime, and the configured notification classes it routes through.
#[derive(Clone)]
pub struct AlarmSetup {
    pub alarms: crate::alarms::Alarms,
    pub classes: Vec<alarms::ClassDef>,
}

/// The alarm side of the device: every object with an alarm is attached
/// here when it is built (server points at start-up, route blocks whenever
/// their objects are made), so the sync loop finds the object a transition
/// belongs to. The generic hook for any point's object: [`AlarmHooks::attach`].
pub struct AlarmHooks {
    setup: AlarmSetup,
    acks: Arc<alarms::AckSources>,
    /// Point index -> its object and link.
    links: parking_lot::Mutex<
        std::collections::HashMap<usize, (ObjectIdentifier, Arc<alarms::AlarmLink>)>,
    >,
}

impl AlarmHooks {
    pub fn new(setup: AlarmSetup) -> AlarmHooks {
        AlarmHooks {
            setup,
            acks: Arc::new(alarms::AckSources::default()),
            links: Default::default(),
        }
    }

    /// `obj` made alarm-capable when its point has an alarm (unchanged
    /// otherwise), and registered for the point's transitions.
    pub fn attach(&self, db: &PointDb, point: PointId, obj: PointObject) -> PointObject {
        let Some(spec) = self.setup.alarms.spec(point).cloned() else {
            return obj;
        };
        let Some(name) = db.def(point).map(|d| d.id.clone()) else {
            return obj;
        };
        let oid = obj.object_identifier();
        let link = Arc::new(alarms::AlarmLink::new(
            self.setup.alarms.clone(),
            point,
            name,
            spec,
            u32::from_be_bytes(oid.encode()),
            Arc::clone(&self.acks),
        ));
        self.links
            .lock()
            .insert(point.index(), (oid, Arc::clone(&link)));
        obj.with_alarm(link)
    }

    /// Queues a transition on its object's link; the object to poke.
    fn take(&self, db: &PointDb, ev: crate::alarms::AlarmEvent) -> Option<ObjectIdentifier> {
        let crate::alarms::AlarmEvent::Transition(rec) = ev else {
            // An acknowledgement shows in Acked_Transitions at once (a view);
            // the stack's ACK_NOTIFICATION follows its own AcknowledgeAlarm.
            return None;
        };
        let id = db.lookup(&rec.point)?;
        let links = self.links.lock();
        let (oid, link) = links.get(&id.index())?;
        link.enqueue(&rec);
        Some(*oid)
    }

    /// How many transitions `oid` holds for the stack.
    fn queued(&self, oid: &ObjectIdentifier) -> usize {
        self.links
            .lock()
            .values()
            .find(|(o, _)| o == oid)
            .map_or(0, |(_, l)| l.queued())
    }
}

/// The point objects of the BACnet map, in map order, alarm-capable where
/// the point has an alarm and `alarm` is given.
pub fn point_objects_with(
    db: &PointDb,
    maps: &Maps,
    alarm: Option<&AlarmHooks>,
) -> Result<Vec<PointObject>, String> {
    let mut out = Vec::with_capacity(maps.bacnet.objects.len());
    for o in &maps.bacnet.objects {
        let def = db
            .def(o.point)
            .ok_or_else(|| format!("bacnet: mapped point #{} does not exist", o.point.0))?;
        let units = units::units_code(def, o, maps.bacnet.bitrate_units_fallback)?;
        let mut obj = PointObject::new(db.clone(), o.point, def, o.object_type, o.instance, units)
            .map_err(|e| {
                format!(
                    "bacnet: object {}{}: {e}",
                    o.object_type.short(),
                    o.instance
                )
            })?;
        if let Some(hooks) = alarm {
            obj = hooks.attach(db, o.point, obj);
        }
        out.push(obj);
    }
    Ok(out)
}

/// Device declarations from the config.
fn identity(
    cfg: &BacnetSection,
    opts: &BacnetOptions,
    ip: Ipv4Addr,
    port: u16,
    uuid: [u8; 16],
) -> Result<DeviceIdentity, BacnetError> {
    DeviceIdentity::new(cfg.device_instance, cfg.vendor_id)?
        .with_device_uuid(uuid)
        .with_name(cfg.device_name.clone())
        .with_max_apdu(1476)?
        .with_segmentation(if opts.segmentation {
            Segmentation::BOTH
        } else {
            Segmentation::NONE
        })
        .with_services(EXECUTED_SERVICES)
        .with_bip_port(NETWORK_PORT_INSTANCE, 0, ip, port)
}

/// The Trend Log objects of the BACnet map, filled from the history up to
/// now, and the feeds that keep them current.
pub fn trend_logs(
    db: &PointDb,
    maps: &Maps,
) -> Result<(Vec<PointTrendLog>, Vec<TrendFeed>), String> {
    let now = chrono::Utc::now();
    let mut logs = Vec::with_capacity(maps.bacnet.trend_logs.len());
    let mut feeds = Vec::with_capacity(maps.bacnet.trend_logs.len());
    for tl in &maps.bacnet.trend_logs {
        let (log, feed) = trend::build(db, tl, maps.bacnet.trend_buffer_size, now)?;
        logs.push(log);
        feeds.push(feed);
    }
    Ok((logs, feeds))
}

/// Device + Network Port + point objects + Trend Logs, Object_List seeded
/// with all of them (returned too: the route objects go after it).
/// `extra_types` are served later (route objects, Structured Views) and
/// claimed in Protocol_Object_Types_Supported from the start.
fn database(
    id: &DeviceIdentity,
    db: &PointDb,
    points: Vec<PointObject>,
    logs: Vec<PointTrendLog>,
    classes: Vec<NotificationClass>,
    restart: RestartReason,
    extra_types: &[ObjectType],
) -> Result<(ObjectDatabase, Vec<ObjectIdentifier>), BacnetError> {
    let site = db.site();
    let mut device = DeviceObject::new(DeviceConfig {
        identity: id.clone(),
        vendor_name: "castpoint".into(),
        model_name: "castpoint streaming router".into(),
        firmware_revision: env!("CARGO_PKG_VERSION").into(),
        application_software_version: env!("CARGO_PKG_VERSION").into(),
        // APDU_Timeout / Number_Of_APDU_Retries state what the device does
        // with its own confirmed requests (event and COV notifications):
        // the stack waits its fixed `cov_retry_timeout_ms` (3000, no
        // builder setting) and retries DEFAULT_APDU_RETRIES (3) times. The
        // Device object's default timeout (6000) would misstate it.
        apdu_timeout: 3000,
        apdu_retries: 3,
        ..DeviceConfig::default()
    })?;
    device.set_services_supported(id.services());
    device.set_description(format!("{} ({})", site.equip_dis, site.site_dis));
    let mut oids = vec![device.object_identifier()];
    let mut ports = Vec::new();
    for entry in id.network_ports() {
        // The same declaration the identity carries (the stack checks they
        // agree), plus the subnet mask the identity has no field for.
        let port = NetworkPortObject::new_bip(
            entry.instance,
            format!("port-{}", entry.instance),
            BipPortConfig {
                network_number: 0,
                apdu_length: 1476,
                ip_address: entry.ip,
                udp_port: entry.udp_port,
                subnet_mask: netmask_of(Ipv4Addr::from(entry.ip)).octets(),
                ..BipPortConfig::default()
            },
        )?;
        oids.push(port.object_identifier());
        ports.push(port);
    }
    oids.extend(points.iter().map(|p| p.object_identifier()));
    oids.extend(logs.iter().map(|l| l.object_identifier()));
    oids.extend(classes.iter().map(|c| c.object_identifier()));
    let mut types = served_types(&oids);
    types.extend_from_slice(extra_types);
    types.sort_by_key(|t| t.to_raw());
    types.dedup();
    device.set_object_list(oids.clone());
    let mut odb = ObjectDatabase::new();
    odb.add(Box::new(ConfigObject::device(device, &types, restart)))?;
    for p in ports {
        // Not wrapped: the stack binds the registered port by downcasting
        // to its own NetworkPortObject. `authorize` keeps its writable
        // properties from the network instead.
        odb.add(Box::new(p))?;
    }
    for p in points {
        odb.add(Box::new(p))?;
    }
    for l in logs {
        odb.add(Box::new(l))?;
    }
    for c in classes {
        odb.add(Box::new(c))?;
    }
    Ok((odb, oids))
}

/// The object types in an Object_List, once each, in type order: what
/// Protocol_Object_Types_Supported claims (Clause 12.11.15).
pub fn served_types(oids: &[ObjectIdentifier]) -> Vec<ObjectType> {
    let mut types: Vec<ObjectType> = oids.iter().map(|o| o.object_type()).collect();
    types.sort_by_key(|t| t.to_raw());
    types.dedup();
    types
}

/// Which mutations reach the stack. Every service the stack claims in
/// Protocol_Services_Supported reaches it, so each is executed and refused
/// (when it is) with the error its clause names, not as unsupported:
///
/// - WriteProperty / WritePropertyMultiple reach every object: castpoint's
///   objects refuse what they do not take (WRITE_ACCESS_DENIED,
///   UNKNOWN_PROPERTY); a missing object gets OBJECT / UNKNOWN_OBJECT.
/// - Add/RemoveListElement: the stack edits a list by writing it back
///   through the object, which refuses it.
/// - DeleteObject: no castpoint object is deletable
///   (OBJECT_DELETION_NOT_PERMITTED).
/// - AtomicWriteFile: there is no File object (UNKNOWN_OBJECT).
/// - WriteGroup: there is no Channel object, nothing to write.
/// - COV subscriptions: allowed.
/// - CreateObject is an exception: the stack would create its own objects
///   of every standard type it implements, outside the point database, so
///   it stays refused (SERVICES / SERVICE_REQUEST_DENIED). So is
///   ConfirmedAuditNotification: with no Audit Log object to store into,
///   the stack refuses it the same way whatever the policy says. The stack
///   fixes Protocol_Services_Supported, so both stay claimed
///   (docs/bacnet-pics.md).
///
/// The Network Port cannot be wrapped (see `database`), and the stack's
/// port object accepts writes to its link settings and Description
/// (`port_writable`): those are refused here with SERVICE_REQUEST_DENIED;
/// its read-only properties reach the object and get WRITE_ACCESS_DENIED.
fn authorize(
    port_writable: &[(ObjectIdentifier, u32)],
    ctx: &MutationAuthorizationContext,
) -> bool {
    let port_setting =
        |o: &ObjectIdentifier, p: u32| port_writable.iter().any(|(po, pp)| po == o && *pp == p);
    match &ctx.target {
        MutationTarget::WriteProperty(r) => {
            !port_setting(&r.object_identifier, r.property_identifier.to_raw())
        }
        MutationTarget::WritePropertyMultiple(a) => !port_setting(
            &a.reference.object_identifier,
            a.reference.property_identifier,
        ),
        MutationTarget::AddListElement(r) | MutationTarget::RemoveListElement(r) => {
            !port_setting(&r.object_identifier, r.property_identifier.to_raw())
        }
        MutationTarget::DeleteObject(_)
        | MutationTarget::AtomicWriteFile(_)
        | MutationTarget::WriteGroup(_)
        | MutationTarget::SubscribeCov(_)
        | MutationTarget::SubscribeCovProperty(_)
        | MutationTarget::SubscribeCovPropertyMultiple(_) => true,
        MutationTarget::CreateObject(_) => false,
    }
}

fn peer_from_mac(mac: &[u8]) -> Option<SocketAddr> {
    if mac.len() == 6 {
        let ip = Ipv4Addr::new(mac[0], mac[1], mac[2], mac[3]);
        Some(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be_bytes([mac[4], mac[5]]),
        )))
    } else {
        None
    }
}

/// What the device is made from besides the database: its section, the
/// route objects' instance rule and the data dir (UUID, revision,
/// recipient lists).
pub struct DeviceSetup<'a> {
    pub cfg: &'a BacnetSection,
    pub route_rule: routes::InstanceRule,
    pub data_dir: &'a std::path::Path,
}

/// Binds the B/IP port, starts the device and the database-to-stack sync.
/// Returns the address actually bound (port 0 resolved).
pub async fn start(
    setup: DeviceSetup<'_>,
    db: PointDb,
    maps: Arc<Maps>,
    alarm: Option<AlarmSetup>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<SocketAddr, String> {
    let cfg = setup.cfg;
    let opts = cfg.options();
    let at = addresses(cfg, &opts)?;
    // Subscribed before the objects exist, so no transition between the two
    // is missed (one made before is shown by the objects' state, only not
    // notified: the device was not up to notify it).
    let alarm_rx = alarm.as_ref().map(|a| a.alarms.subscribe());
    let hooks = alarm.clone().map(|a| Arc::new(AlarmHooks::new(a)));
    let (built, rx) = build_objects(&setup, &db, &maps, alarm.as_ref(), hooks.as_ref(), &at)?;
    if cfg.vendor_id == DEFAULT_VENDOR_ID {
        tracing::warn!(
            "bacnet: vendor_id {DEFAULT_VENDOR_ID} is a placeholder no vendor holds; set [bacnet] vendor_id to the identifier ASHRAE assigned to the integrator (docs/bacnet-pics.md)"
        );
    }
    // The site's write policy for BACnet sources, checked by PointDb::write
    // against the requester's B/IP address (objects.rs passes it as Source).
    db.set_write_policy(Protocol::Bacnet, opts.write_policy.clone());
    let Built {
        id,
        odb,
        by_point,
        feeds,
        route_objects,
        port_writable,
        restart_reason,
        n_logs,
        n_classes,
    } = built;
    let parts = ServerParts {
        id,
        odb,
        port_writable,
        acks: hooks
            .as_ref()
            .map(|h| Arc::clone(&h.acks))
            .unwrap_or_default(),
        restart_reason,
        nudge: transport::Nudge::default(),
    };
    let nudge = parts.nudge.clone();
    let server = build_server(&db, &opts, &at, parts)
        .await
        .map_err(|e| format!("bacnet {}: {e}", cfg.bind))?;
    let bound = bound_address(&server, &at, cfg.bind);
    if let Err(e) = server.broadcast_i_am().await {
        tracing::warn!("bacnet: start-up I-Am not sent: {e}");
    }
    tracing::info!(
        "bacnet: device {} on {bound} (broadcast {}), {} objects, {n_logs} trend logs, {n_classes} notification classes",
        cfg.device_instance,
        at.broadcast,
        by_point.len()
    );
    // Subscribed here, before the engine opens the routes' blocks (App
    // starts BACnet first), so no opening is missed.
    let blocks = route_objects.as_ref().and_then(|_| db.subscribe_blocks());
    let events = alarm_rx
        .zip(hooks)
        .map(|(rx, hooks)| AlarmFeed { rx, hooks });
    tasks.spawn(run(
        server,
        db,
        rx,
        by_point,
        feeds,
        Followers {
            routes: route_objects.map(|r| (r, blocks)),
            alarms: events,
            nudge,
        },
        shutdown,
    ));
    Ok(bound)
}

/// Where the device listens and what it announces.
struct Addresses {
    /// The configured B/IP address and port (IPv4).
    bind: SocketAddrV4,
    /// The address the Network Port and the I-Am publish.
    ip: Ipv4Addr,
    /// The directed broadcast address.
    broadcast: Ipv4Addr,
}

/// The device's addresses from `[bacnet]` (an IPv6 bind is refused).
fn addresses(cfg: &BacnetSection, opts: &BacnetOptions) -> Result<Addresses, String> {
    let bind = match cfg.bind {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => {
            return Err(format!(
                "bacnet.bind: {a} is IPv6; BACnet/IP (Annex J) is IPv4"
            ))
        }
    };
    let bind_ip = *bind.ip();
    // A wildcard bind still listens on every interface (loopback included:
    // the stack binds 0.0.0.0 unless it shares the port by address), but
    // the registered Network Port and the I-Am need a concrete address.
    let ip = if bind_ip.is_unspecified() {
        primary_ipv4()
    } else {
        bind_ip
    };
    let broadcast = opts.broadcast.unwrap_or_else(|| broadcast_for(ip));
    Ok(Addresses {
        bind,
        ip,
        broadcast,
    })
}

/// The address actually bound: the socket's port, and for a wildcard bind
/// the wildcard address (the configured one when the stack names none).
fn bound_address(
    server: &BACnetServer<Link>,
    at: &Addresses,
    configured: SocketAddr,
) -> SocketAddr {
    match peer_from_mac(server.local_mac()) {
        Some(SocketAddr::V4(a)) if at.bind.ip().is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), a.port())
        }
        Some(a) => a,
        None => configured,
    }
}

/// The configured Notification Class objects (none without alarms).
fn notification_classes(
    alarm: Option<&AlarmSetup>,
    data_dir: &std::path::Path,
) -> Result<Vec<NotificationClass>, String> {
    match alarm {
        Some(a) => a
            .classes
            .iter()
            .map(|c| alarms::notification_class(c, data_dir))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bacnet: {e}")),
        None => Ok(Vec::new()),
    }
}

/// The objects the stack starts with, and what the sync loop needs to
/// follow them.
struct Built {
    id: DeviceIdentity,
    odb: ObjectDatabase,
    /// The server's point objects, in map order.
    by_point: Vec<(PointId, ObjectIdentifier)>,
    feeds: Vec<TrendFeed>,
    route_objects: Option<routes::RouteObjects>,
    /// Properties the network may not write although the stack's objects
    /// would take them (see `authorize`).
    port_writable: Vec<(ObjectIdentifier, u32)>,
    restart_reason: RestartReason,
    n_logs: usize,
    n_classes: usize,
}

/// Builds the Device, Network Port, point objects, Trend Logs, Notification
/// Classes and the server's Structured View; returns them with the change
/// feed the sync loop reads (subscribed before the logs read the history).
fn build_objects(
    setup: &DeviceSetup<'_>,
    db: &PointDb,
    maps: &Maps,
    alarm: Option<&AlarmSetup>,
    hooks: Option<&Arc<AlarmHooks>>,
    at: &Addresses,
) -> Result<
    (
        Built,
        tokio::sync::broadcast::Receiver<crate::points::Change>,
    ),
    String,
> {
    let points = point_objects_with(db, maps, hooks.map(|h| h.as_ref()))?;
    let classes = notification_classes(alarm, setup.data_dir)?;
    let class_oids: Vec<ObjectIdentifier> = classes.iter().map(|c| c.object_identifier()).collect();
    // Subscribe before the logs read the history, so no change between the
    // two is missed (a change already in the history is skipped by time).
    let rx = db.subscribe();
    let (logs, feeds) = trend_logs(db, maps)?;
    let by_point: Vec<(PointId, ObjectIdentifier)> = maps
        .bacnet
        .objects
        .iter()
        .zip(points.iter())
        .map(|(o, p)| (o.point, p.object_identifier()))
        .collect();
    let uuid = device_uuid(setup.data_dir)?;
    let opts = setup.cfg.options();
    let id = identity(setup.cfg, &opts, at.ip, at.bind.port(), uuid)
        .map_err(|e| format!("bacnet: {e}"))?;
    let (n_logs, n_classes) = (logs.len(), classes.len());
    let restart_reason = RestartReason::default();
    let route_logs = maps.bacnet.route_trend_buffer_size > 0;
    let route_types = db
        .route_template()
        .map(|t| routes::served_types(t, route_logs));
    let (mut odb, base_list) = database(
        &id,
        db,
        points,
        logs,
        classes,
        restart_reason.clone(),
        route_types.as_deref().unwrap_or(&[]),
    )
    .map_err(|e| format!("bacnet: {e}"))?;
    let route_objects = route_objects(setup, db, maps, &by_point, base_list, hooks, &mut odb)?;
    let port_writable = port_writable(&odb, &class_oids);
    let built = Built {
        id,
        odb,
        by_point,
        feeds,
        route_objects,
        port_writable,
        restart_reason,
        n_logs,
        n_classes,
    };
    Ok((built, rx))
}

/// Route blocks (issue 20): the server's Structured View now (installed in
/// `odb`), the routes' objects as their blocks open (`run`). None without a
/// route template.
fn route_objects(
    setup: &DeviceSetup<'_>,
    db: &PointDb,
    maps: &Maps,
    by_point: &[(PointId, ObjectIdentifier)],
    base_list: Vec<ObjectIdentifier>,
    hooks: Option<&Arc<AlarmHooks>>,
    odb: &mut ObjectDatabase,
) -> Result<Option<routes::RouteObjects>, String> {
    if db.route_template().is_none() {
        return Ok(None);
    }
    let e = |e: BacnetError| format!("bacnet: {e}");
    let device = ObjectIdentifier::new(ObjectType::DEVICE, setup.cfg.device_instance).map_err(e)?;
    let members = by_point
        .iter()
        .filter_map(|(p, o)| Some((*o, db.def(*p)?.name.clone())))
        .collect();
    let site = db.site();
    let mut ro = routes::RouteObjects::new(
        setup.route_rule,
        maps.bacnet.bitrate_units_fallback,
        device,
        base_list,
        members,
        site.equip_dis.clone(),
        format!(
            "{} ({}): its points and routes",
            site.equip_dis, site.site_dis
        ),
        routes::Revision::load(Some(setup.data_dir)),
    )
    .map_err(e)?
    .with_alarm_hooks(hooks.cloned())
    .with_trend_buffer(maps.bacnet.route_trend_buffer_size);
    ro.install(odb).map_err(e)?;
    Ok(Some(ro))
}

/// The properties `authorize` keeps from the network: the Network Port's
/// writable settings, and a Notification Class's number and description
/// (configuration, alarms.rs; only its Recipient_List is the network's to
/// write).
fn port_writable(
    odb: &ObjectDatabase,
    class_oids: &[ObjectIdentifier],
) -> Vec<(ObjectIdentifier, u32)> {
    odb.find_by_type(ObjectType::NETWORK_PORT)
        .into_iter()
        .filter_map(|oid| {
            odb.get(&oid)
                .map(|o| (oid, o.property_metadata().into_owned()))
        })
        .flat_map(|(oid, rows)| {
            rows.into_iter()
                .filter(|r| r.write_capability != PropertyWriteCapability::ReadOnly)
                .map(move |r| (oid, r.property_identifier.to_raw()))
        })
        .chain(class_oids.iter().flat_map(|oid| {
            alarms::CLASS_READ_ONLY
                .iter()
                .map(move |p| (*oid, p.to_raw()))
        }))
        .collect()
}

/// What the stack is built from besides the link.
struct ServerParts {
    id: DeviceIdentity,
    odb: ObjectDatabase,
    port_writable: Vec<(ObjectIdentifier, u32)>,
    /// Where AcknowledgeAlarm requesters are noted (transport.rs).
    acks: Arc<alarms::AckSources>,
    restart_reason: RestartReason,
    /// Turns the stack's dispatch loop after local changes (transport.rs).
    nudge: transport::Nudge,
}

/// The stack's B/IP link: normal or registered with a BBMD, sharing the
/// port by address when bound to one address and port.
fn bip_link(at: &Addresses, opts: &BacnetOptions) -> BipTransport {
    let mode = match opts.foreign_bbmd {
        Some(bbmd) => BipMode::Foreign(ForeignDeviceConfig {
            bbmd_ip: *bbmd.ip(),
            bbmd_port: bbmd.port(),
            ttl: opts.foreign_ttl,
            // Renew at half the TTL, well before the BBMD's grace period ends.
            renewal_interval: None,
        }),
        None => BipMode::Normal,
    };
    let bind_ip = *at.bind.ip();
    let mut link = BipTransport::new(bind_ip, at.bind.port(), at.broadcast);
    // A specific address and port binds that address only; a wildcard or
    // an ephemeral port binds 0.0.0.0 (the stack needs both to share).
    link.set_share_port_by_address(!bind_ip.is_unspecified() && at.bind.port() != 0);
    link.set_mode(mode);
    link
}

/// Builds the stack's server (binding the port) with castpoint's
/// conformance settings and restart handling.
async fn build_server(
    db: &PointDb,
    opts: &BacnetOptions,
    at: &Addresses,
    parts: ServerParts,
) -> Result<BACnetServer<Link>, String> {
    let port_oid = ObjectIdentifier::new(ObjectType::NETWORK_PORT, NETWORK_PORT_INSTANCE)
        .map_err(|e| e.to_string())?;
    // The stack's own B/IP link behind castpoint's filter, which answers the
    // few requests the stack would answer wrongly before any hook runs
    // (undefined enumerations in DCC/Reinitialize, CreateObject,
    // ConfirmedAuditNotification: transport.rs). The generic builder takes
    // the same settings as `bip_builder`, which builds this BipTransport
    // the same way.
    let filtered = transport::Filtered::new(
        bip_link(at, opts),
        parts
            .port_writable
            .iter()
            .map(|(o, p)| (o.encode(), *p))
            .collect(),
    )
    .with_ack_sources(parts.acks)
    .with_nudge(parts.nudge);
    let mut builder = BACnetServer::<Link>::generic_builder()
        .transport(filtered)
        .device(parts.id)
        .database(parts.odb);
    // The stack keeps a registered Network Port's address in step with the
    // bound socket, which it refuses for a wildcard bind; then the object
    // keeps the primary address it was declared with (`identity`).
    if !at.bind.ip().is_unspecified() {
        builder = builder.registered_network_port(port_oid);
    }
    let builder = conformance(builder, parts.port_writable);
    let builder = reinitialize(builder, db, opts, parts.restart_reason);
    builder.build().await.map_err(|e| e.to_string())
}

/// ---- Conformance settings: every stack default that changes what the
/// device answers is set here, explicitly, with the reason (an upgrade of
/// rusty-bacnet must not change castpoint's answers silently). The rest
/// lives where it must: Protocol_Object_Types_Supported and
/// Last_Restart_Reason in the Device wrapper (`config_objects.rs`), the
/// Trend Logs' reporting rows in `trend.rs`, Segmentation_Supported and
/// Device_UUID in `identity`, ReinitializeDevice and DCC in `reinitialize`.
/// Protocol_Services_Supported cannot be set: the stack serves its fixed
/// EXECUTED_SERVICES (docs/bacnet-pics.md).
fn conformance(
    builder: ServerBuilder<Link>,
    port_writable: Vec<(ObjectIdentifier, u32)>,
) -> ServerBuilder<Link> {
    builder
        // The stack's default (256 results) refuses an RPM ALL of every
        // castpoint object (~330 results) with Abort out-of-resources; the
        // whole device fits easily in these (65 segments x 1476 octets).
        .read_property_multiple_budget(ReadPropertyMultipleBudget {
            max_result_elements: 4096,
            max_service_ack_bytes: 96 * 1024,
        })
        // One ReadRange answer: at most 16,000 octets (~720 trend records),
        // then MORE_ITEMS and the client asks for the next page. The stack
        // shrinks a page to fit an unsegmented client's APDU, but not to a
        // segmented client's Max_Segments: a bigger page would be aborted
        // (BUFFER_OVERFLOW) for a client taking 16 segments of 1024 octets
        // (bacpypes3's defaults, 16,304 octets of service data). The item
        // cap is above what fits, so octets decide.
        .read_range_budget(ReadRangeBudget {
            max_returned_items: 4096,
            max_service_ack_bytes: 16_000,
        })
        // LifeSafetyOperation is claimed by the stack (EXECUTED_SERVICES),
        // and its default policy refuses it as SERVICE_REQUEST_DENIED; let
        // through, it is executed: castpoint has no life-safety object, so
        // the object named is refused with an OBJECT error.
        .policy(
            FnPolicy::new()
                .mutation(move |ctx| authorize(&port_writable, ctx))
                .life_safety_operation(|_| true),
        )
        // Who-Is: the stack's default coalesces a second Who-Is from the same
        // requester within 200 ms into no answer, which breaks scripted
        // tools and front-ends that retry quickly; Clause 16.10 expects an
        // I-Am for each matching Who-Is. Floods stay bounded by the stack's
        // token buckets, kept at their defaults here but stated: 16 answers
        // per second per requester (burst 16), 64 per second in all.
        .discovery_policy(DiscoveryPolicy {
            coalesce_window: Duration::ZERO,
            max_responses_per_sec_per_source: 16,
            source_burst_capacity: 16,
            max_responses_per_sec_global: 64,
            global_burst_capacity: 64,
            ..DiscoveryPolicy::default()
        })
        // Kept at the stack's defaults, stated: TimeSynchronization and
        // UTCTimeSynchronization are accepted from any source and move the
        // device clock (never the host's); Event Enrollment evaluation is
        // off because castpoint has no Event Enrollment object and does no
        // event reporting (the stack's default, on, would be a no-op);
        // fault detection stays off (castpoint's objects derive
        // Reliability from the point quality themselves).
        .time_sync_policy(TimeSyncPolicy::default())
        .enable_event_enrollment(false)
        .enable_fault_detection(false)
}

/// ReinitializeDevice and DeviceCommunicationControl: with a password, a
/// WARMSTART/COLDSTART writes `system_restart` (and sets
/// Last_Restart_Reason); without one, both services are refused.
fn reinitialize(
    builder: ServerBuilder<Link>,
    db: &PointDb,
    opts: &BacnetOptions,
    restart_reason: RestartReason,
) -> ServerBuilder<Link> {
    let Some(password) = &opts.password else {
        // No password configured: refuse both (the stack's DCC default is
        // DenyAll; Reinitialize needs an impossible password to refuse).
        return builder
            .dcc_policy(DccPolicy::DenyAll)
            .on_reinitialize(|_, _| {
                Err(BacnetError::protocol(
                    ErrorClass::SECURITY,
                    ErrorCode::PASSWORD_FAILURE,
                ))
            });
    };
    let restart_db = db.clone();
    let restart = restart_db.lookup("system_restart");
    builder
        .on_reinitialize(move |ctx, _odb| {
            // Only a restart is a castpoint operation; backup/restore are not.
            if ctx.state != ReinitializedState::WARMSTART
                && ctx.state != ReinitializedState::COLDSTART
            {
                return Err(BacnetError::protocol(
                    ErrorClass::SERVICES,
                    ErrorCode::OPTIONAL_FUNCTIONALITY_NOT_SUPPORTED,
                ));
            }
            let Some(point) = restart else {
                return Err(BacnetError::protocol(
                    ErrorClass::DEVICE,
                    ErrorCode::OPERATIONAL_PROBLEM,
                ));
            };
            let src = Source::new(Protocol::Bacnet, peer_from_mac(&ctx.source_mac), None);
            restart_db
                .write(point, Some(Value::Bool(true)), RESTART_PRIORITY, &src)
                .map_err(objects::write_error)?;
            // BACnetRestartReason: coldstart 1, warmstart 2 (Clause 12.11.47).
            let reason = if ctx.state == ReinitializedState::COLDSTART {
                1
            } else {
                2
            };
            restart_reason.store(reason, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
        .reinit_password(password.clone())
        .dcc_password(password.clone())
        .dcc_policy(DccPolicy::RequirePassword)
}

/// How long the route objects wait for a burst of block changes (a config
/// reload, the engine opening every route at start) to end before they
/// follow it, so one burst is one Object_List and one Database_Revision.
const ROUTE_SETTLE: Duration = Duration::from_millis(50);
/// The longest a burst may hold them back.
const ROUTE_SETTLE_MAX: Duration = Duration::from_millis(250);
/// When no block changes at all after start (no routes), the objects and
/// Database_Revision are evaluated once after this long anyway.
const ROUTE_FIRST_SYNC: Duration = Duration::from_secs(1);

/// The alarm transitions the device distributes: each one `Alarms`
/// broadcasts is queued on its object's link (alarms.rs) and the object is
/// poked, so the stack takes it and notifies the recipients.
struct AlarmFeed {
    rx: tokio::sync::broadcast::Receiver<crate::alarms::AlarmEvent>,
    hooks: Arc<AlarmHooks>,
}

/// The next alarm event (pending forever without a feed).
async fn next_alarm(feed: &mut Option<AlarmFeed>) -> Result<crate::alarms::AlarmEvent, RecvError> {
    match feed {
        Some(f) => f.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What the sync loop follows besides point changes: the route blocks (with
/// their change feed) and the alarm transitions.
struct Followers {
    routes: Option<(
        routes::RouteObjects,
        Option<tokio::sync::watch::Receiver<u64>>,
    )>,
    alarms: Option<AlarmFeed>,
    nudge: transport::Nudge,
}

/// Owns the running stack: pushes every database change of a served point
/// to it (COV), hands it castpoint's alarm transitions to notify, moves new
/// history samples and quality changes into the Trend Logs, keeps the route
/// objects in step with the route blocks, and stops it on shutdown.
async fn run(
    mut server: BACnetServer<Link>,
    db: PointDb,
    mut rx: tokio::sync::broadcast::Receiver<crate::points::Change>,
    by_point: Vec<(PointId, ObjectIdentifier)>,
    feeds: Vec<TrendFeed>,
    follow: Followers,
    shutdown: CancellationToken,
) {
    let mut events = follow.alarms;
    let (follow_nudge, mut turns) = (follow.nudge, Turns::default());
    let (mut route_objects, mut blocks) = match follow.routes {
        Some((r, b)) => (Some(r), b),
        None => (None, None),
    };
    let mut oid_of = object_table(&db, &by_point);
    let mut logs = trend::Feeds::new(db.len(), feeds);
    let mut dirty = Dirty::new(db.len());
    // Objects holding transitions for the stack (few: a set kept as a list).
    let mut alarm_dirty: Vec<ObjectIdentifier> = Vec::new();
    // A pending route sync: (quiet deadline, latest deadline).
    let now = tokio::time::Instant::now();
    let mut route_due: Option<(tokio::time::Instant, tokio::time::Instant)> = route_objects
        .as_ref()
        .map(|_| (now + ROUTE_FIRST_SYNC, now + ROUTE_FIRST_SYNC));
    // `/metrics` reads the stack's COV subscription count and discovery
    // counters from here: on every batch of changes, and at least every 5 s.
    let mut cov_tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        let mut lagged = false;
        publish_stack_counters(&server);
        if turns.due(tokio::time::Instant::now()) {
            follow_nudge.nudge();
        }
        let sync_at = route_due.map(|(quiet, latest)| quiet.min(latest));
        let turn_at = turns.deadline();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = cov_tick.tick() => continue,
            _ = tokio::time::sleep_until(turn_at.unwrap_or_else(tokio::time::Instant::now)), if turn_at.is_some() => continue,
            r = async { blocks.as_mut()?.changed().await.ok() }, if blocks.is_some() => {
                if r.is_none() {
                    blocks = None;
                } else {
                    let now = tokio::time::Instant::now();
                    let latest = route_due.map_or(now + ROUTE_SETTLE_MAX, |(_, l)| l);
                    route_due = Some((now + ROUTE_SETTLE, latest));
                }
                continue;
            }
            _ = tokio::time::sleep_until(sync_at.unwrap_or_else(tokio::time::Instant::now)), if sync_at.is_some() => {
                route_due = None;
                if let Some(ro) = route_objects.as_mut() {
                    sync_routes(&server, &db, ro, &mut oid_of, &mut logs).await;
                }
                continue;
            }
            r = rx.recv() => match r {
                Ok(c) => note(&db, &c, &oid_of, &mut logs, &mut dirty),
                Err(RecvError::Lagged(_)) => lagged = true,
                Err(RecvError::Closed) => break,
            },
            ev = next_alarm(&mut events) => match ev {
                Ok(ev) => queue_alarm(events.as_ref(), &db, ev, &mut alarm_dirty),
                Err(RecvError::Lagged(n)) => {
                    // The transitions stay in Alarms' history and in every
                    // object's Event_State; only their notification is lost.
                    tracing::warn!("bacnet: {n} alarm transitions not notified (feed lagged)");
                }
                Err(RecvError::Closed) => events = None,
            },
        }
        take_transitions(events.as_mut(), &db, &mut alarm_dirty);
        lagged |= drain_changes(&mut rx, &db, &oid_of, &mut logs, &mut dirty);
        if lagged {
            catch_up(&db, &oid_of, &mut logs, &mut dirty);
        }
        drain_logs(&server, &mut logs).await;
        turns.pending += push_cov(&server, &oid_of, &mut dirty).await
            + push_alarms(&server, events.as_ref(), &mut alarm_dirty).await;
    }
    if let Err(e) = server.stop().await {
        tracing::warn!("bacnet: stop: {e}");
    }
}

/// Hands `/metrics` the stack's COV subscription count and discovery
/// counters.
fn publish_stack_counters(server: &BACnetServer<Link>) {
    use crate::counters as c;
    use std::sync::atomic::Ordering::Relaxed;
    c::BACNET_COV_SUBSCRIPTIONS.store(server.cov_counters().subscriptions_active, Relaxed);
    let d = server.discovery_counters();
    c::BACNET_WHO_IS.store(d.who_is_received, Relaxed);
    c::BACNET_I_AM.store(d.i_am_sent, Relaxed);
    c::BACNET_DISCOVERY_THROTTLED.store(
        d.responses_throttled_source + d.responses_throttled_global,
        Relaxed,
    );
}

/// Point index -> its object: the server's point objects now, route
/// objects while their block is served (`sync_routes`), so the hot path
/// never hashes.
fn object_table(
    db: &PointDb,
    by_point: &[(PointId, ObjectIdentifier)],
) -> Vec<Option<ObjectIdentifier>> {
    let mut oid_of: Vec<Option<ObjectIdentifier>> = vec![None; db.len()];
    for (p, o) in by_point {
        if let Some(slot) = oid_of.get_mut(p.index()) {
            *slot = Some(*o);
        }
    }
    oid_of
}

/// Queues the object an alarm transition belongs to for the stack (once
/// per batch).
fn queue_alarm(
    feed: Option<&AlarmFeed>,
    db: &PointDb,
    ev: crate::alarms::AlarmEvent,
    alarm_dirty: &mut Vec<ObjectIdentifier>,
) {
    if let Some(oid) = feed.and_then(|f| f.hooks.take(db, ev)) {
        if !alarm_dirty.contains(&oid) {
            alarm_dirty.push(oid);
        }
    }
}

/// The alarm transitions that came with this batch.
fn take_transitions(
    feed: Option<&mut AlarmFeed>,
    db: &PointDb,
    alarm_dirty: &mut Vec<ObjectIdentifier>,
) {
    if let Some(f) = feed {
        while let Ok(ev) = f.rx.try_recv() {
            queue_alarm(Some(f), db, ev, alarm_dirty);
        }
    }
}

/// Notes the rest of a burst of changes (telemetry sets many points at
/// once) so each object is evaluated once. True when changes were lost.
fn drain_changes(
    rx: &mut tokio::sync::broadcast::Receiver<crate::points::Change>,
    db: &PointDb,
    oid_of: &[Option<ObjectIdentifier>],
    logs: &mut trend::Feeds,
    dirty: &mut Dirty,
) -> bool {
    let mut lagged = false;
    loop {
        match rx.try_recv() {
            Ok(c) => note(db, &c, oid_of, logs, dirty),
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => lagged = true,
            Err(_) => return lagged,
        }
    }
}

/// After missed changes: every object is re-evaluated (COV criteria send
/// only what really changed since the last notification), and the logs
/// catch up on the history from where they stood (a quality flip that came
/// and went in the gap is not logged).
fn catch_up(
    db: &PointDb,
    oid_of: &[Option<ObjectIdentifier>],
    logs: &mut trend::Feeds,
    dirty: &mut Dirty,
) {
    for (i, o) in oid_of.iter().enumerate() {
        if o.is_some() {
            dirty.mark(i);
        }
    }
    logs.catch_up(db);
}

/// One sync of the route objects with the blocks: the point-to-object
/// table and the Trend Log feeds follow what it removed and added.
async fn sync_routes(
    server: &BACnetServer<Link>,
    db: &PointDb,
    ro: &mut routes::RouteObjects,
    oid_of: &mut [Option<ObjectIdentifier>],
    logs: &mut trend::Feeds,
) {
    let ch = {
        let mut odb = server.database().write().await;
        ro.sync(db, &mut odb)
    };
    for p in &ch.removed {
        if let Some(slot) = oid_of.get_mut(p.index()) {
            *slot = None;
        }
    }
    for (p, o) in &ch.added {
        if let Some(slot) = oid_of.get_mut(p.index()) {
            *slot = Some(*o);
        }
    }
    // Removed first: a changed slot's logs go and come back in one sync.
    for p in &ch.logs_removed {
        logs.remove(*p);
    }
    for f in ch.logs_added {
        logs.add(f);
    }
    if ch.revised {
        tracing::info!(
            "bacnet: route objects changed, Database_Revision {}",
            ro.revision.value
        );
    }
}

/// Moves the queued records into their Trend Logs: one database lock per
/// batch; each log drains its own inbox.
async fn drain_logs(server: &BACnetServer<Link>, logs: &mut trend::Feeds) {
    let pending = logs.take_dirty();
    if pending.is_empty() {
        return;
    }
    let mut odb = server.database().write().await;
    for oid in pending {
        if let Some(o) = odb.get_mut(&oid) {
            let _ = o.add_trend_record(trend::drain_signal());
        }
    }
}

/// Runs the stack's COV evaluation of every object whose point changed;
/// returns how many local changes that handed the stack.
async fn push_cov(
    server: &BACnetServer<Link>,
    oid_of: &[Option<ObjectIdentifier>],
    dirty: &mut Dirty,
) -> usize {
    let mut n = 0;
    for i in dirty.take() {
        let Some(Some(oid)) = oid_of.get(i) else {
            continue;
        };
        n += 1;
        local_change(server, oid, "COV push").await;
    }
    n
}

/// Hands the stack one local change of `oid`, waiting at most
/// `COV_PUSH_WAIT` for it. The value argument is only a signal: the point
/// objects read the database themselves.
async fn local_change(server: &BACnetServer<Link>, oid: &ObjectIdentifier, what: &str) {
    crate::counters::BACNET_LOCAL_CHANGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let push = server.set_present_value_local(oid, PropertyValue::Real(0.0));
    match tokio::time::timeout(COV_PUSH_WAIT, push).await {
        Ok(Ok(())) | Err(_) => {}
        Ok(Err(e)) => tracing::debug!("bacnet: {what} for {oid:?}: {e}"),
    }
}

/// How often at most the sync loop turns the stack's dispatch loop
/// (`transport::Nudge`): the stack's own reaping timer's period, so the
/// finished tasks of local changes are joined within about 200 ms.
const NUDGE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether local changes are waiting for a turn of the stack's dispatch
/// loop, and when it was last turned.
#[derive(Default)]
struct Turns {
    pending: usize,
    last: Option<tokio::time::Instant>,
}

impl Turns {
    /// True when the loop should be turned at `now`: changes are pending
    /// and the last turn is `NUDGE_EVERY` old.
    fn due(&mut self, now: tokio::time::Instant) -> bool {
        let quiet = self.last.is_none_or(|l| now >= l + NUDGE_EVERY);
        if self.pending == 0 || !quiet {
            return false;
        }
        self.pending = 0;
        self.last = Some(now);
        true
    }

    /// When pending changes that [`Turns::due`] held back are due a turn
    /// (nothing pending, or never turned: `due` turns at once).
    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.last
            .filter(|_| self.pending > 0)
            .map(|l| l + NUDGE_EVERY)
    }
}

/// Hands the queued alarm transitions to the stack. Each poke runs the
/// stack's per-change event pass once, which takes one queued transition:
/// poke as often as there are (the stack's one-second tick takes any a lost
/// poke leaves); returns how many pokes that made.
async fn push_alarms(
    server: &BACnetServer<Link>,
    events: Option<&AlarmFeed>,
    alarm_dirty: &mut Vec<ObjectIdentifier>,
) -> usize {
    let mut n = 0;
    for oid in std::mem::take(alarm_dirty) {
        let queued = events.map_or(0, |f| f.hooks.queued(&oid));
        for _ in 0..queued {
            n += 1;
            local_change(server, &oid, "event push").await;
        }
    }
    n
}

#[cfg(test)]
mod turn_tests {
    use super::{Turns, NUDGE_EVERY};
    use tokio::time::Instant;

    #[test]
    fn turns_follow_changes_at_most_every_period_and_never_drop_one() {
        let mut t = Turns::default();
        let t0 = Instant::now();
        // Nothing changed: no turn, nothing to wait for.
        assert!(!t.due(t0));
        assert_eq!(t.deadline(), None);
        // The first change turns at once.
        t.pending += 3;
        assert!(t.due(t0));
        assert_eq!(t.deadline(), None);
        // Changes within the period wait for its end, then turn.
        t.pending += 1;
        assert!(!t.due(t0 + NUDGE_EVERY / 2));
        assert_eq!(t.deadline(), Some(t0 + NUDGE_EVERY));
        assert!(t.due(t0 + NUDGE_EVERY));
        assert_eq!(t.pending, 0);
        // Long quiet, then a change: at once again.
        t.pending += 1;
        assert!(t.due(t0 + NUDGE_EVERY * 50));
    }
}

/// The points whose objects owe a COV evaluation, once each, in the order
/// they changed.
struct Dirty {
    flag: Vec<bool>,
    list: Vec<usize>,
}

impl Dirty {
    fn new(n: usize) -> Self {
        Dirty {
            flag: vec![false; n],
            list: Vec::new(),
        }
    }

    fn mark(&mut self, i: usize) {
        if let Some(f) = self.flag.get_mut(i) {
            if !*f {
                *f = true;
                self.list.push(i);
            }
        }
    }

    fn take(&mut self) -> Vec<usize> {
        for i in &self.list {
            self.flag[*i] = false;
        }
        std::mem::take(&mut self.list)
    }
}

/// Marks the COV object of a changed point and queues its Trend Log records.
fn note(
    db: &PointDb,
    c: &crate::points::Change,
    oid_of: &[Option<ObjectIdentifier>],
    logs: &mut trend::Feeds,
    dirty: &mut Dirty,
) {
    if let Some(Some(_)) = oid_of.get(c.id.index()) {
        dirty.mark(c.id.index());
    }
    logs.note(db, c.id, &c.state);
}

/// The data link the device runs on (transport.rs).
type Link = transport::Filtered<BipTransport>;

#[cfg(test)]
mod tests;

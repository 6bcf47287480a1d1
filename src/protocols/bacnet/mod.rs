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
//! - A [`ServerPolicy`](bacnet_server::ServerPolicy) narrows the stack's
//!   permissive defaults: only point objects may be written (the object
//!   decides which property: Present_Value of commandable objects), and
//!   CreateObject/DeleteObject/list edits/file writes are refused.

pub mod ede;
pub mod objects;
pub mod trend;
pub mod units;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use bacnet_objects::database::ObjectDatabase;
use bacnet_objects::device::{DeviceConfig, DeviceObject, EXECUTED_SERVICES};
use bacnet_objects::network_port::{BipPortConfig, NetworkPortObject};
use bacnet_objects::traits::BACnetObject;
use bacnet_objects::DeviceIdentity;
use bacnet_server::mutation::{MutationAuthorizationContext, MutationTarget};
use bacnet_server::server::{BACnetServer, DccPolicy, ReadPropertyMultipleBudget, ReadRangeBudget};
use bacnet_server::FnPolicy;
use bacnet_transport::bip::{BipMode, BipTransport, ForeignDeviceConfig};
use bacnet_types::enums::{ErrorClass, ErrorCode, ObjectType, ReinitializedState, Segmentation};
use bacnet_types::error::Error as BacnetError;
use bacnet_types::primitives::{ObjectIdentifier, PropertyValue};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::BacnetSection;
use crate::points::{Maps, PointDb, PointId, Protocol, Source, Value};

use objects::PointObject;
use trend::{PointTrendLog, TrendFeed};

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

/// Extra `[bacnet]` keys castpoint reads from `BacnetSection::raw`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BacnetOptions {
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
}

/// Parses and validates the extra `[bacnet]` keys; errors name `bacnet.key`.
pub fn parse_options(raw: &toml::Table) -> Result<BacnetOptions, Vec<String>> {
    let mut o = BacnetOptions {
        foreign_ttl: 300,
        segmentation: true,
        ..BacnetOptions::default()
    };
    let mut errs = Vec::new();
    for (k, v) in raw {
        match (k.as_str(), v) {
            ("broadcast", toml::Value::String(s)) => match s.parse() {
                Ok(a) => o.broadcast = Some(a),
                Err(_) => errs.push(format!("bacnet.broadcast: {s:?} is not an IPv4 address")),
            },
            ("password", toml::Value::String(s)) => {
                if s.is_empty() || s.len() > 20 {
                    // Clause 16.1.1.1.3 / 16.4.1.1.2: 1..=20 characters.
                    errs.push("bacnet.password: must be 1 to 20 characters".into());
                } else {
                    o.password = Some(s.clone());
                }
            }
            ("foreign_bbmd", toml::Value::String(s)) => match s.parse::<SocketAddrV4>() {
                Ok(a) if !a.ip().is_unspecified() && a.port() != 0 => o.foreign_bbmd = Some(a),
                _ => errs.push(format!(
                    "bacnet.foreign_bbmd: {s:?} is not an IPv4 address:port of a BBMD"
                )),
            },
            ("foreign_ttl", toml::Value::Integer(n)) => match u16::try_from(*n) {
                Ok(t) if t >= 2 => o.foreign_ttl = t,
                _ => errs.push("bacnet.foreign_ttl: seconds, 2..=65535".into()),
            },
            ("segmentation", toml::Value::Boolean(b)) => o.segmentation = *b,
            ("broadcast" | "password" | "foreign_bbmd" | "foreign_ttl" | "segmentation", _) => {
                errs.push(format!("bacnet.{k}: wrong type"))
            }
            _ => errs.push(format!("bacnet.{k}: unknown key")),
        }
    }
    if errs.is_empty() {
        Ok(o)
    } else {
        Err(errs)
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

/// The point objects of the BACnet map, in map order.
pub fn point_objects(db: &PointDb, maps: &Maps) -> Result<Vec<PointObject>, String> {
    let mut out = Vec::with_capacity(maps.bacnet.objects.len());
    for o in &maps.bacnet.objects {
        let def = db
            .def(o.point)
            .ok_or_else(|| format!("bacnet: mapped point #{} does not exist", o.point.0))?;
        let units = units::units_code(def, o, maps.bacnet.bitrate_units_fallback)?;
        let obj = PointObject::new(db.clone(), o.point, def, o.object_type, o.instance, units)
            .map_err(|e| {
                format!(
                    "bacnet: object {}{}: {e}",
                    o.object_type.short(),
                    o.instance
                )
            })?;
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
) -> Result<DeviceIdentity, BacnetError> {
    DeviceIdentity::new(cfg.device_instance, cfg.vendor_id)?
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
/// with all of them.
fn database(
    id: &DeviceIdentity,
    db: &PointDb,
    points: Vec<PointObject>,
    logs: Vec<PointTrendLog>,
) -> Result<ObjectDatabase, BacnetError> {
    let site = db.site();
    let mut device = DeviceObject::new(DeviceConfig {
        identity: id.clone(),
        vendor_name: "castpoint".into(),
        model_name: "castpoint streaming router".into(),
        firmware_revision: env!("CARGO_PKG_VERSION").into(),
        application_software_version: env!("CARGO_PKG_VERSION").into(),
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
    device.set_object_list(oids);
    let mut odb = ObjectDatabase::new();
    odb.add(Box::new(device))?;
    for p in ports {
        odb.add(Box::new(p))?;
    }
    for p in points {
        odb.add(Box::new(p))?;
    }
    for l in logs {
        odb.add(Box::new(l))?;
    }
    Ok(odb)
}

/// Which objects a network write may reach. The objects themselves decide
/// which properties (Present_Value of commandable ones) and answer with the
/// standard error; everything else the stack would allow by default (writes
/// to the Device or Network Port, CreateObject, DeleteObject, list edits,
/// file writes, WriteGroup) is denied here with SERVICE_REQUEST_DENIED.
fn authorize(points: &HashSet<ObjectIdentifier>, ctx: &MutationAuthorizationContext) -> bool {
    match &ctx.target {
        MutationTarget::WriteProperty(r) => points.contains(&r.object_identifier),
        MutationTarget::WritePropertyMultiple(a) => points.contains(&a.reference.object_identifier),
        MutationTarget::SubscribeCov(_)
        | MutationTarget::SubscribeCovProperty(_)
        | MutationTarget::SubscribeCovPropertyMultiple(_) => true,
        _ => false,
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

/// Binds the B/IP port, starts the device and the database-to-stack sync.
/// Returns the address actually bound (port 0 resolved).
pub async fn start(
    cfg: &BacnetSection,
    db: PointDb,
    maps: Arc<Maps>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<SocketAddr, String> {
    let opts = parse_options(&cfg.raw).map_err(|e| e.join("; "))?;
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
    let points = point_objects(&db, &maps)?;
    // Subscribe before the logs read the history, so no change between the
    // two is missed (a change already in the history is skipped by time).
    let rx = db.subscribe();
    let (logs, feeds) = trend_logs(&db, &maps)?;
    let point_oids: HashSet<ObjectIdentifier> =
        points.iter().map(|p| p.object_identifier()).collect();
    let by_point: Vec<(PointId, ObjectIdentifier)> = maps
        .bacnet
        .objects
        .iter()
        .zip(points.iter())
        .map(|(o, p)| (o.point, p.object_identifier()))
        .collect();
    let id = identity(cfg, &opts, ip, bind.port()).map_err(|e| format!("bacnet: {e}"))?;
    let n_logs = logs.len();
    let odb = database(&id, &db, points, logs).map_err(|e| format!("bacnet: {e}"))?;
    let port_oid = ObjectIdentifier::new(ObjectType::NETWORK_PORT, NETWORK_PORT_INSTANCE)
        .map_err(|e| format!("bacnet: {e}"))?;

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
    let restart_db = db.clone();
    let restart = restart_db.lookup("system_restart");
    let mut builder = BACnetServer::bip_builder()
        .device(id)
        .database(odb)
        .interface(bind_ip)
        .port(bind.port())
        .broadcast_address(broadcast)
        // A specific address and port binds that address only; a wildcard or
        // an ephemeral port binds 0.0.0.0 (the stack needs both to share).
        .share_port_by_address(!bind_ip.is_unspecified() && bind.port() != 0)
        .mode(mode);
    // The stack keeps a registered Network Port's address in step with the
    // bound socket, which it refuses for a wildcard bind; then the object
    // keeps the primary address it was declared with (`identity`).
    if !bind_ip.is_unspecified() {
        builder = builder.registered_network_port(port_oid);
    }
    builder = builder
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
        .policy(FnPolicy::new().mutation(move |ctx| authorize(&point_oids, ctx)))
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
                .map(|_| ())
                .map_err(objects::write_error)
        });
    match &opts.password {
        Some(p) => {
            builder = builder
                .reinit_password(p.clone())
                .dcc_password(p.clone())
                .dcc_policy(DccPolicy::RequirePassword);
        }
        None => {
            // No password configured: refuse both (the stack's DCC default is
            // DenyAll; Reinitialize needs an impossible password to refuse).
            builder = builder
                .dcc_policy(DccPolicy::DenyAll)
                .on_reinitialize(|_, _| {
                    Err(BacnetError::protocol(
                        ErrorClass::SECURITY,
                        ErrorCode::PASSWORD_FAILURE,
                    ))
                });
        }
    }
    let server: BACnetServer<BipTransport> = builder
        .build()
        .await
        .map_err(|e| format!("bacnet {}: {e}", cfg.bind))?;
    let mac = server.local_mac().to_vec();
    let bound = match peer_from_mac(&mac) {
        Some(SocketAddr::V4(a)) if bind_ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), a.port())
        }
        Some(a) => a,
        None => cfg.bind,
    };
    if let Err(e) = server.broadcast_i_am().await {
        tracing::warn!("bacnet: start-up I-Am not sent: {e}");
    }
    tracing::info!(
        "bacnet: device {} on {bound} (broadcast {broadcast}), {} objects, {n_logs} trend logs",
        cfg.device_instance,
        by_point.len()
    );
    tasks.spawn(run(server, db, rx, by_point, feeds, shutdown));
    Ok(bound)
}

/// Owns the running stack: pushes every database change of a mapped point to
/// it (COV), moves new history samples and quality changes into the Trend
/// Logs, and stops it on shutdown.
async fn run(
    mut server: BACnetServer<BipTransport>,
    db: PointDb,
    mut rx: tokio::sync::broadcast::Receiver<crate::points::Change>,
    by_point: Vec<(PointId, ObjectIdentifier)>,
    mut feeds: Vec<TrendFeed>,
    shutdown: CancellationToken,
) {
    // Point index -> position in `by_point` / `feeds`, so the hot path never
    // hashes.
    let mut index: Vec<Option<usize>> = vec![None; db.len()];
    for (i, (p, _)) in by_point.iter().enumerate() {
        if let Some(slot) = index.get_mut(p.index()) {
            *slot = Some(i);
        }
    }
    let mut log_index: Vec<Option<usize>> = vec![None; db.len()];
    for (i, f) in feeds.iter().enumerate() {
        if let Some(slot) = log_index.get_mut(f.point.index()) {
            *slot = Some(i);
        }
    }
    let mut dirty = vec![false; by_point.len()];
    let mut log_dirty = vec![false; feeds.len()];
    loop {
        let mut lagged = false;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = rx.recv() => match r {
                Ok(c) => note(&db, &c, &index, &log_index, &mut feeds, &mut dirty, &mut log_dirty),
                Err(RecvError::Lagged(_)) => lagged = true,
                Err(RecvError::Closed) => break,
            },
        }
        // Coalesce a burst (telemetry sets many points at once) into one
        // evaluation per object.
        loop {
            match rx.try_recv() {
                Ok(c) => note(
                    &db,
                    &c,
                    &index,
                    &log_index,
                    &mut feeds,
                    &mut dirty,
                    &mut log_dirty,
                ),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => lagged = true,
                Err(_) => break,
            }
        }
        if lagged {
            // Missed changes: re-evaluate every object; COV criteria send
            // only what really changed since the last notification, and the
            // logs catch up on the history from where they stood (a quality
            // flip that came and went in the gap is not logged).
            dirty.iter_mut().for_each(|d| *d = true);
            for (i, f) in feeds.iter_mut().enumerate() {
                if let Some(st) = db.read(f.point) {
                    log_dirty[i] |= f.on_change(&db, &st);
                }
            }
        }
        if log_dirty.iter().any(|d| *d) {
            // One database lock per batch; each log drains its own inbox.
            let mut odb = server.database().write().await;
            for (i, f) in feeds.iter().enumerate() {
                if std::mem::take(&mut log_dirty[i]) {
                    if let Some(o) = odb.get_mut(&f.oid) {
                        let _ = o.add_trend_record(trend::drain_signal());
                    }
                }
            }
        }
        for (i, (_, oid)) in by_point.iter().enumerate() {
            if !std::mem::take(&mut dirty[i]) {
                continue;
            }
            // The value argument is only a signal: PointObject reads the
            // database itself.
            let push = server.set_present_value_local(oid, PropertyValue::Real(0.0));
            match tokio::time::timeout(COV_PUSH_WAIT, push).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(e)) => tracing::debug!("bacnet: COV push for {oid:?}: {e}"),
            }
        }
    }
    if let Err(e) = server.stop().await {
        tracing::warn!("bacnet: stop: {e}");
    }
}

/// Marks the COV object of a changed point and queues its Trend Log records.
fn note(
    db: &PointDb,
    c: &crate::points::Change,
    index: &[Option<usize>],
    log_index: &[Option<usize>],
    feeds: &mut [TrendFeed],
    dirty: &mut [bool],
    log_dirty: &mut [bool],
) {
    if let Some(Some(i)) = index.get(c.id.index()) {
        dirty[*i] = true;
    }
    if let Some(Some(i)) = log_index.get(c.id.index()) {
        log_dirty[*i] |= feeds[*i].on_change(db, &c.state);
    }
}

#[cfg(test)]
mod tests;

//! Modbus TCP server over the point database and `mappings/modbus.toml`: FC 01-06, 15, 16, 23 and 43/14, unit-id filtering, write policy (read_only, write_allow), connection caps (total, per address), idle timeout.
//!
//! # Why castpoint owns the framing instead of serving through tokio-modbus
//!
//! DESIGN.md proposed tokio-modbus 0.17 (`tcp-server`). Reading its server
//! codec (`src/codec/mod.rs`, `decode_request_pdu_bytes`) showed it is not
//! sound for untrusted peers:
//!
//! - FC15 indexes `bytes[i / 8]` for `i < quantity` without checking the byte
//!   count: quantity > 8 x byte-count panics (a remote kill of the connection
//!   task, and of the process under `panic = "abort"`).
//! - FC16/FC23 compute `quantity * 2` in `u16`: quantity >= 0x8000 overflows
//!   (a panic in debug builds, a wrong comparison in release).
//! - Every request its decoder rejects (a coil value other than FF00/0000, a
//!   byte count that disagrees with the quantity, an unknown MEI type) is an
//!   `io::Error` that closes the connection, where the spec and this
//!   project's issue require exception 03 / 01 on the same connection.
//! - It has no connection limit and no idle timeout.
//!
//! The part of tokio-modbus castpoint would keep (MBAP split + PDU decode +
//! response encode) is ~300 lines, so it is written here (`frame.rs`),
//! bounds-checked and fuzzed with proptest, over a plain tokio `TcpListener`
//! (`server.rs`). The request handler (`service.rs`) is a synchronous function
//! from request bytes to response bytes, which is what tokio-modbus's
//! `Service` would have been, minus the allocation per request.
//!
//! # Behaviour
//!
//! - Unit ids: only those in `[modbus] unit_ids` (default 0, 1, 255) are
//!   answered; others get exception 0x0B (gateway target failed to respond).
//! - A malformed MBAP header (protocol id != 0, length < 2 or > 254) closes
//!   the connection: there is no delimiter to resynchronise on. Truncated
//!   frames wait for their bytes up to the idle timeout.
//! - Reads and writes of a range with any unmapped address: 02. Writes to a
//!   read-only register or coil: 02. Quantities beyond the spec, a byte count
//!   that disagrees, a coil value other than FF00/0000, a value the point
//!   refuses (range, enum ordinal) or a 32-bit value cut by the range: 03.
//! - Multi-register writes are checked in full before the first point is
//!   written, so a refused request changes nothing.

pub mod alarms;
mod export;
mod frame;
mod regmap;
pub mod routes;
mod server;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::netlimit::Caps;
use crate::points::{ModbusMap, PointDb, Protocol};
use crate::section::{Problem, Section};

pub use export::{export_csv, export_markdown, map_csv, map_markdown};
pub use frame::{decode_request, split_frame, Exception, Request};
pub use server::Limits;
pub use service::Service;

/// Default `[modbus] max_connections_per_ip`: one host cannot hold every
/// one of the default 64 slots.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 8;

/// `[modbus]`: the Modbus TCP server.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModbusSection {
    pub enabled: bool,
    pub bind: SocketAddr,
    pub unit_ids: Vec<u8>,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    #[serde(with = "crate::section::duration")]
    pub idle_timeout: Duration,
    /// `read_only` / `write_allow`: enforced by `PointDb::write`.
    pub read_only: bool,
    pub write_allow: Vec<String>,
}

impl Default for ModbusSection {
    fn default() -> Self {
        ModbusSection {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 5020)),
            unit_ids: vec![0, 1, 255],
            max_connections: 64,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            idle_timeout: Duration::from_secs(60),
            read_only: false,
            write_allow: Vec::new(),
        }
    }
}

impl Section for ModbusSection {
    fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        crate::section::range("max_connections", self.max_connections, 1, 10_000, &mut p);
        let per_ip = self.max_connections_per_ip;
        crate::section::range("max_connections_per_ip", per_ip, 1, 10_000, &mut p);
        p.extend(super::policy_problems(&self.write_allow));
        p
    }
}

/// The listener caps `[modbus]` asks for (before `netlimit::fit_caps`).
pub fn caps(section: &ModbusSection) -> Caps {
    Caps {
        max_connections: section.max_connections,
        max_connections_per_ip: section.max_connections_per_ip,
    }
}

/// Binds `[modbus] bind` and serves it on `tasks` until `shutdown`, with
/// the write policy of `[modbus] read_only` / `write_allow` installed in
/// the database first. Returns the bound address (tests bind port 0).
pub async fn start(
    section: &ModbusSection,
    db: PointDb,
    map: &ModbusMap,
    caps: Caps,
    alarms: Option<crate::alarms::Alarms>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> std::io::Result<SocketAddr> {
    // A policy that does not parse must not leave writes open.
    let bad: Vec<String> = super::policy_problems(&section.write_allow)
        .iter()
        .map(|p| format!("modbus.{p}"))
        .collect();
    if !bad.is_empty() {
        let e = bad.join("; ");
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e));
    }
    let policy = super::policy_of(section.read_only, &section.write_allow);
    if !policy.read_only && policy.write_allow.is_empty() {
        tracing::warn!(
            "modbus: any host that reaches {} can write command points (set [modbus] read_only or write_allow)",
            section.bind
        );
    }
    db.set_write_policy(Protocol::Modbus, policy);
    let listener = TcpListener::bind(section.bind).await?;
    let addr = listener.local_addr()?;
    let mut svc = Service::new(db, map, &section.unit_ids);
    if let Some(a) = alarms {
        svc = svc.with_alarms(a);
    }
    let svc = Arc::new(svc);
    let limits = Limits {
        caps,
        idle_timeout: (!section.idle_timeout.is_zero()).then_some(section.idle_timeout),
    };
    tasks.spawn(server::run(listener, svc, limits, shutdown, tasks.clone()));
    Ok(addr)
}

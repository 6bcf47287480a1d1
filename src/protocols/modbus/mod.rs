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

mod export;
mod frame;
mod regmap;
pub mod routes;
mod server;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ModbusSection;
use crate::netlimit::Caps;
use crate::points::{ModbusMap, PointDb, Protocol, WritePolicy};

pub use export::{export_csv, export_markdown, map_csv, map_markdown};
pub use frame::{decode_request, split_frame, Exception, Request};
pub use server::Limits;
pub use service::Service;

/// Keys of `[modbus]` this module reads from the section's `raw` (the
/// config loader parses the others).
const OWN_KEYS: &[&str] = &["max_connections_per_ip", "read_only", "write_allow"];

/// Default `[modbus] max_connections_per_ip`: one host cannot hold every
/// one of the default 64 slots.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 8;

/// What this module reads from `[modbus]`'s extra keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub max_connections_per_ip: usize,
    /// `read_only` / `write_allow`: enforced by `PointDb::write`.
    pub policy: WritePolicy,
}

impl Settings {
    /// Parses the extra keys; errors are `modbus.key: message` lines.
    pub fn parse(section: &ModbusSection) -> Result<Settings, Vec<String>> {
        let mut errs: Vec<String> = section
            .raw
            .keys()
            .filter(|k| !OWN_KEYS.contains(&k.as_str()))
            .map(|k| format!("modbus.{k}: unknown key (known: enabled, bind, unit_ids, max_connections, max_connections_per_ip, idle_timeout, read_only, write_allow)"))
            .collect();
        let max_connections_per_ip = match section.raw.get("max_connections_per_ip") {
            None => DEFAULT_MAX_CONNECTIONS_PER_IP,
            Some(v) => match v.as_integer().filter(|n| (1..=10_000).contains(n)) {
                Some(n) => n as usize,
                None => {
                    errs.push(
                        "modbus.max_connections_per_ip: expected an integer 1..=10000".into(),
                    );
                    DEFAULT_MAX_CONNECTIONS_PER_IP
                }
            },
        };
        let policy = WritePolicy::from_table("modbus", &section.raw).unwrap_or_else(|e| {
            errs.extend(e);
            WritePolicy::default()
        });
        if errs.is_empty() {
            Ok(Settings {
                max_connections_per_ip,
                policy,
            })
        } else {
            Err(errs)
        }
    }
}

/// Problems with `[modbus]`'s keys this module owns (unknown keys, a bad
/// CIDR in `write_allow`): `check-config` reports them, `run` refuses them.
pub fn config_problems(section: &ModbusSection) -> Vec<String> {
    Settings::parse(section).err().unwrap_or_default()
}

/// The listener caps `[modbus]` asks for (before `netlimit::fit_caps`).
pub fn caps(section: &ModbusSection) -> Caps {
    Caps {
        max_connections: section.max_connections,
        max_connections_per_ip: Settings::parse(section)
            .map(|s| s.max_connections_per_ip)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP),
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
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> std::io::Result<SocketAddr> {
    // A policy that does not parse must not leave writes open.
    let settings = Settings::parse(section)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.join("; ")))?;
    if !settings.policy.read_only && settings.policy.write_allow.is_empty() {
        tracing::warn!(
            "modbus: any host that reaches {} can write command points (set [modbus] read_only or write_allow)",
            section.bind
        );
    }
    db.set_write_policy(Protocol::Modbus, settings.policy);
    let listener = TcpListener::bind(section.bind).await?;
    let addr = listener.local_addr()?;
    let svc = Arc::new(Service::new(db, map, &section.unit_ids));
    let limits = Limits {
        caps,
        idle_timeout: (!section.idle_timeout.is_zero()).then_some(section.idle_timeout),
    };
    tasks.spawn(server::run(listener, svc, limits, shutdown, tasks.clone()));
    Ok(addr)
}

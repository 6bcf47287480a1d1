//! Modbus TCP server over the point database and `mappings/modbus.toml`: FC 01-06, 15, 16, 23 and 43/14, unit-id filtering, connection limit, idle timeout.
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
mod server;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ModbusSection;
use crate::points::{ModbusMap, PointDb};

pub use export::{map_csv, map_markdown};
pub use frame::{decode_request, split_frame, Exception, Request};
pub use server::Limits;
pub use service::Service;

/// Problems with keys of `[modbus]` this module does not know (the config
/// loader keeps them in `raw` for the part that owns the section).
pub fn config_problems(section: &ModbusSection) -> Vec<String> {
    section
        .raw
        .keys()
        .map(|k| format!("modbus.{k}: unknown key (known: enabled, bind, unit_ids, max_connections, idle_timeout)"))
        .collect()
}

/// Binds `[modbus] bind` and serves it on `tasks` until `shutdown`.
/// Returns the bound address (tests bind port 0).
pub async fn start(
    section: &ModbusSection,
    db: PointDb,
    map: &ModbusMap,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(section.bind).await?;
    let addr = listener.local_addr()?;
    let svc = Arc::new(Service::new(db, map, &section.unit_ids));
    let limits = Limits {
        max_connections: section.max_connections,
        idle_timeout: (!section.idle_timeout.is_zero()).then_some(section.idle_timeout),
    };
    tasks.spawn(server::run(listener, svc, limits, shutdown, tasks.clone()));
    Ok(addr)
}

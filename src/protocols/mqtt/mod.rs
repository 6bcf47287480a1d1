//! MQTT Sparkplug B 3.0 edge node: castpoint's points published to an existing broker (NBIRTH/NDATA/NDEATH, devices per route), NCMD/DCMD written through `PointDb::write`.
//!
//! Like the other protocol adapters this module reads point states and
//! writes commands only through the point database (source protocol
//! `mqtt`, audited); it never sees the streaming router. docs/mqtt.md has
//! the topics, metric naming, datatypes, configuration and limits.
//!
//! - `config.rs`: the `[mqtt]` section (serde, unknown keys refused,
//!   `validate()`), shared by `check-config` and `run`.
//! - `spb.rs`: the Sparkplug B protobuf payload codec (bounded decoder,
//!   fuzzed by `fuzz/fuzz_targets/spb_payload.rs`).
//! - `node.rs`: the sans-IO edge node: births, report by exception, seq and
//!   bdSeq, the store-and-forward buffer, NCMD/DCMD writes.
//! - `session.rs`: connections, failover, Primary Host STATE.
//! - `bdseq.rs`: the last bdSeq, kept in the data dir across restarts.
//!
//! # Crates, and why
//!
//! - **MQTT client: rumqttc 0.25** (`default-features = false`,
//!   `use-rustls-no-provider`). It is the most used async MQTT client for
//!   tokio, supports MQTT 3.1.1 with a last will, credentials, a
//!   max-packet-size bound on incoming packets and TLS through an injected
//!   `rustls::ClientConfig` — so it reuses the rustls 0.23 + ring that the
//!   HTTPS listener already builds (its default feature would pull
//!   aws-lc-rs, which needs cmake/nasm). Added to a clean build it costs
//!   only rumqttc itself, flume and rustls-native-certs (measured: the
//!   first `cargo check` after adding it took 35 s on this 2-core box).
//!   Read in its source and issues: `EventLoop::poll` is not cancel-safe
//!   and its own reconnect would replay queued requests of the old
//!   connection before we could publish a new NBIRTH, and it cannot change
//!   the will between reconnects. So `session.rs` makes one client per
//!   connection (a fresh will carrying the new bdSeq each time), polls it
//!   in its own task, and keeps its own store-and-forward buffer instead of
//!   rumqttc's queues. paho-mqtt (C library, FFI) and an own MQTT codec
//!   were the alternatives; the first adds a C build and `unsafe`, the
//!   second more untrusted-input code than it saves.
//! - **Sparkplug B payloads: own protobuf codec** (`spb.rs`), not prost or
//!   an existing Sparkplug crate: the `sparkplug_b.proto` messages castpoint
//!   uses are a small scalar subset, prost-build needs `protoc` at build
//!   time (or generated code checked in plus the prost runtime). The
//!   Sparkplug crates looked at on docs.rs: `srad` (0.4) is a framework
//!   that owns the node (its own tasks per device, metric managers and
//!   CMD handling), which would put a second source of truth next to the
//!   point database; `lb-sparkplugb-rs` (0.1) has its edge-node layer only
//!   scaffolded. A codec of a few hundred lines with no
//!   recursion is also what the fuzz target can build on its own.

pub mod bdseq;
pub mod config;
pub mod node;
pub mod session;
pub mod spb;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::points::{PointDb, Protocol, WritePolicy};

pub use config::{MqttConfig, MqttSection};
pub use session::Status;

/// Starts the edge node (when `[mqtt] enabled`): returns its status, or
/// why it cannot run (a TLS file that does not load). A broker that cannot
/// be reached is not an error: the node retries and holds changes.
/// `data_dir` keeps the bdSeq sequence across restarts.
pub fn start(
    cfg: MqttConfig,
    db: PointDb,
    data_dir: Option<&std::path::Path>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<Arc<Status>, String> {
    db.set_write_policy(
        Protocol::Mqtt,
        WritePolicy {
            read_only: cfg.read_only,
            write_allow: Vec::new(),
        },
    );
    let s = session::Session::new(cfg, db, data_dir)?;
    let status = s.status.clone();
    let weak = Arc::downgrade(&status);
    crate::counters::register_gauge(
        "castpoint_mqtt_connected",
        "1 while the Sparkplug edge node is connected to a broker and born.",
        move || {
            weak.upgrade().map(|s| {
                f64::from(u8::from(
                    s.online.load(std::sync::atomic::Ordering::Relaxed),
                ))
            })
        },
    );
    tasks.spawn(s.run(shutdown));
    Ok(status)
}

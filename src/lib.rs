//! castpoint: a live-video streaming router that is also a BACnet/IP, Modbus TCP and Project Haystack gateway.
//!
//! See `docs/ARCHITECTURE.md` for the bird's-eye view. Dependency direction:
//! `app` -> everything; `protocols`, `engine`, `telemetry`, `api` -> `points`;
//! `api`, `exports` -> `config` -> the parts' section types -> `section`
//! (parts never import `config`); `persist` -> `alarms` (never back). No
//! two top-level modules import each other. `tests/tidy.rs` checks these rules, the `unsafe`
//! confinement and the no-`unwrap()` / no-detached-spawn rules against the
//! source.

// The libsrt FFI module (`engine/srt/ffi.rs`) is the one place allowed
// `unsafe`; it says so with its own `#![allow(unsafe_code)]`.
#![deny(unsafe_code)]

/// `castpoint --version`, `/health` and `castpoint_build_info`: the package
/// version and the git commit it was built from (build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CASTPOINT_GIT_COMMIT"),
    ")"
);

/// The git commit this binary was built from ("unknown" outside a checkout).
pub const GIT_COMMIT: &str = env!("CASTPOINT_GIT_COMMIT");

pub mod alarms;
pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod counters;
pub mod engine;
pub mod exports;
pub mod httpd;
pub mod limits;
pub mod media;
pub mod mpegts;
pub mod netlimit;
pub mod persist;
pub mod points;
pub mod protocols;
pub mod redact;
pub mod section;
pub mod statuscmd;
pub mod tasks;
pub mod telemetry;
pub mod throttle;

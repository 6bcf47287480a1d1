//! castpoint: a live-video streaming router that is also a BACnet/IP, Modbus TCP and Project Haystack gateway.
//!
//! See `docs/ARCHITECTURE.md` for the bird's-eye view. Dependency direction:
//! `app` -> everything; `protocols`, `engine`, `telemetry`, `api` -> `points`;
//! `api` -> `config` -> the parts' section types -> `section` (parts never
//! import `config`).

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod engine;
pub mod httpd;
pub mod limits;
pub mod media;
pub mod netlimit;
pub mod persist;
pub mod points;
pub mod protocols;
pub mod redact;
pub mod section;
pub mod telemetry;
pub mod throttle;

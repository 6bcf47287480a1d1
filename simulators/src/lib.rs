//! Simulators shared library: the wire-level stand-ins (TS source, viewers, BMS clients) used by tests, benches and the demo.
//!
//! `tsgen` is always built (std + bytes only) so castpoint can embed the
//! demo source with `default-features = false`; everything else needs the
//! `tools` feature.

#[cfg(feature = "tools")]
pub mod bacnet;
#[cfg(feature = "tools")]
pub mod haystack_auth;
#[cfg(feature = "tools")]
pub mod rtsp_camera;
pub mod tsgen;
#[cfg(feature = "tools")]
pub mod util;

//! Nesting bounds of every decoder of untrusted text (docs/security.md, "Untrusted input"), and the tests that pin them at depth 100,000.
//!
//! A recursive decoder fed nesting without bound overflows its thread's
//! stack, and a stack overflow aborts the whole process (streams, BMS
//! protocols and all), so every decoder castpoint feeds from outside has a
//! nesting bound, enforced either by castpoint or by the library itself:
//!
//! - Zinc (Haystack request grids, GET parameters) and Haystack filters:
//!   [`crate::protocols::haystack::depth::MAX_NESTING`] (64), castpoint's
//!   own iterative pre-scan before libhaystack's recursive parsers.
//! - JSON (Haystack JSON grids, every REST body): [`JSON_MAX_NESTING`],
//!   serde_json's own recursion limit, on as long as no crate in the tree
//!   enables serde_json's `unbounded_depth` feature (the tests below fail if
//!   one does). libhaystack's Hayson decoder is a serde visitor driven by
//!   the same deserializer, so it inherits the limit.
//! - TOML (config files): [`TOML_MAX_NESTING`], toml_edit's parser limit.
//!   Route documents sent over REST are JSON, converted to TOML values
//!   in memory (already bounded by the JSON limit).
//! - AMF0 (RTMP commands): `media::rtmp::amf0`'s own depth limit (16).
//! - SDP, RTSP messages, RTMP chunks, RTP, MPEG-TS, Modbus frames: flat
//!   formats with iterative, bounds-checked decoders; nothing recurses.

/// Deepest JSON nesting (arrays plus objects) serde_json accepts: its
/// default recursion limit is 128 steps, the 128th opener is refused.
pub const JSON_MAX_NESTING: usize = 127;

/// toml_edit 0.22's parser recursion limit (arrays, inline tables, dotted keys).
pub const TOML_MAX_NESTING: usize = 80;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn json_nested(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn json_bodies_stop_at_the_recursion_limit() {
        type J = serde_json::Value;
        assert!(serde_json::from_str::<J>(&json_nested(JSON_MAX_NESTING)).is_ok());
        let e = serde_json::from_str::<J>(&json_nested(JSON_MAX_NESTING + 1)).expect_err("deep");
        assert!(e.to_string().contains("recursion limit"), "{e}");
        for deep in ["[".repeat(100_000), "{\"a\":".repeat(100_000)] {
            let e = serde_json::from_slice::<J>(deep.as_bytes()).expect_err("deep");
            assert!(e.to_string().contains("recursion limit"), "{e}");
            // libhaystack's Hayson decoder (used for Haystack JSON grids).
            let e = serde_json::from_str::<libhaystack::val::Value>(&deep).expect_err("deep");
            assert!(e.to_string().contains("recursion limit"), "{e}");
        }
    }

    #[test]
    fn toml_files_stop_at_the_recursion_limit() {
        let arrays = |n: usize| format!("x = {}1{}\n", "[".repeat(n), "]".repeat(n));
        let tables = |n: usize| format!("x = {}1{}\n", "{a = ".repeat(n), "}".repeat(n));
        for deep in [
            arrays(100_000),
            tables(100_000),
            format!("{} = 1\n", vec!["a"; 100_000].join(".")),
        ] {
            let mut errs = Vec::new();
            assert!(config::file::parse("castpoint.toml", &deep, &mut errs).is_none());
            let msg = format!("{errs:?}");
            assert!(msg.contains("recursion limit"), "{msg}");
            let mut errs = Vec::new();
            assert!(config::points::parse("points.toml", &deep, &mut errs).is_none());
            assert!(format!("{errs:?}").contains("recursion limit"));
        }
        // The bound is what the docs say it is.
        assert!(toml::from_str::<toml::Table>(&arrays(TOML_MAX_NESTING - 1)).is_ok());
        assert!(toml::from_str::<toml::Table>(&arrays(TOML_MAX_NESTING + 1)).is_err());
    }
}

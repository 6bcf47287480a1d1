//! Request, error and session counters of every protocol server for `/metrics`: dependency-free, so the protocols count and the API renders without naming each other.
//!
//! Counters are process-wide atomics, like the listener caps of
//! `netlimit.rs` (castpoint runs one server per process; tests that start
//! several see the sums). Gauges whose value lives in a part (open Haystack
//! watches, BACnet COV subscriptions, the MQTT session) are registered as
//! closures over a weak reference, so a stopped part's gauge disappears
//! instead of keeping its state alive. Labels are fixed sets (surface,
//! status class, APDU type): cardinality never depends on traffic.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// The HTTP listener's surfaces, by path.
pub const HTTP_SURFACES: [&str; 5] = ["rest", "haystack", "media", "console", "metrics"];
const HTTP_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

static HTTP: [[AtomicU64; 5]; 5] = [const { [const { AtomicU64::new(0) }; 5] }; 5];

/// Which surface a request path belongs to (an index into [`HTTP_SURFACES`]).
pub fn http_surface(path: &str) -> usize {
    if path.starts_with("/api/haystack") {
        1
    } else if path.starts_with("/stream/") || path.starts_with("/hls/") {
        2
    } else if path == "/" || path.starts_with("/console/") {
        3
    } else if path == "/metrics" || path == "/stats" || path == "/health" {
        4
    } else {
        0
    }
}

/// Counts one HTTP response by surface and status class.
pub fn http(surface: usize, status: u16) {
    let class = usize::from(status / 100).clamp(1, 5) - 1;
    if let Some(row) = HTTP.get(surface) {
        row[class].fetch_add(1, Relaxed);
    }
}

/// Modbus requests answered, and those answered with an exception.
pub static MODBUS_REQUESTS: AtomicU64 = AtomicU64::new(0);
pub static MODBUS_EXCEPTIONS: AtomicU64 = AtomicU64::new(0);

/// BACnet APDUs received by type (confirmed, unconfirmed, other), and the
/// error answers sent (Error, Reject, Abort).
pub static BACNET_CONFIRMED: AtomicU64 = AtomicU64::new(0);
pub static BACNET_UNCONFIRMED: AtomicU64 = AtomicU64::new(0);
pub static BACNET_OTHER: AtomicU64 = AtomicU64::new(0);
pub static BACNET_ERRORS: AtomicU64 = AtomicU64::new(0);
pub static BACNET_REJECTS: AtomicU64 = AtomicU64::new(0);
pub static BACNET_ABORTS: AtomicU64 = AtomicU64::new(0);

/// Point changes handed to the BACnet stack for its COV and event
/// evaluation (one local change each: `set_present_value_local`).
pub static BACNET_LOCAL_CHANGES: AtomicU64 = AtomicU64::new(0);

/// Frames castpoint handed the BACnet stack to turn its dispatch loop
/// after local changes (`protocols/bacnet/transport.rs`, `Nudge`).
pub static BACNET_TURN_FRAMES: AtomicU64 = AtomicU64::new(0);

/// The stack's discovery counters, sampled by the BACnet part: Who-Is
/// received (castpoint's turn frames included: each is an out-of-range
/// Who-Is), I-Am answers sent, and answers its rate limits withheld.
pub static BACNET_WHO_IS: AtomicU64 = AtomicU64::new(0);
pub static BACNET_I_AM: AtomicU64 = AtomicU64::new(0);
pub static BACNET_DISCOVERY_THROTTLED: AtomicU64 = AtomicU64::new(0);

/// Active BACnet COV subscriptions (the stack's count, sampled by the
/// BACnet part).
pub static BACNET_COV_SUBSCRIPTIONS: AtomicU64 = AtomicU64::new(0);

/// Counts a received BACnet APDU by its type nibble.
pub fn bacnet_received(apdu_type: u8) {
    match apdu_type {
        0 => &BACNET_CONFIRMED,
        1 => &BACNET_UNCONFIRMED,
        _ => &BACNET_OTHER,
    }
    .fetch_add(1, Relaxed);
}

/// Counts a sent BACnet APDU when it is an error answer.
pub fn bacnet_sent(apdu_type: u8) {
    match apdu_type {
        5 => BACNET_ERRORS.fetch_add(1, Relaxed),
        6 => BACNET_REJECTS.fetch_add(1, Relaxed),
        7 => BACNET_ABORTS.fetch_add(1, Relaxed),
        _ => 0,
    };
}

type Gauge = Box<dyn Fn() -> Option<f64> + Send + Sync>;

/// Registered gauges: (name, help, read). `read` returns `None` once its
/// part is gone, and the entry is dropped.
static GAUGES: Mutex<Vec<(&'static str, &'static str, Gauge)>> = Mutex::new(Vec::new());

/// Registers a gauge read at every scrape; `read` returns `None` once the
/// part it reads is gone (hold a `Weak`).
pub fn register_gauge(
    name: &'static str,
    help: &'static str,
    read: impl Fn() -> Option<f64> + Send + Sync + 'static,
) {
    if let Ok(mut g) = GAUGES.lock() {
        g.push((name, help, Box::new(read)));
    }
}

/// One counter family with one label, a series per (label value, counter).
fn labelled(out: &mut String, name: &str, help: &str, label: &str, series: &[(&str, &AtomicU64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (v, c) in series {
        let _ = writeln!(out, "{name}{{{label}=\"{v}\"}} {}", c.load(Relaxed));
    }
}

/// Every counter and live gauge in the text exposition format.
pub fn prometheus() -> String {
    let mut out = String::new();
    out.push_str("# HELP castpoint_http_responses_total HTTP responses by surface and status class.\n# TYPE castpoint_http_responses_total counter\n");
    for (s, name) in HTTP_SURFACES.iter().enumerate() {
        for (c, class) in HTTP_CLASSES.iter().enumerate() {
            let _ = writeln!(
                out,
                "castpoint_http_responses_total{{surface=\"{name}\",class=\"{class}\"}} {}",
                HTTP[s][c].load(Relaxed)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP castpoint_modbus_requests_total Modbus requests answered.\n# TYPE castpoint_modbus_requests_total counter\ncastpoint_modbus_requests_total {}\n# HELP castpoint_modbus_exceptions_total Modbus requests answered with an exception.\n# TYPE castpoint_modbus_exceptions_total counter\ncastpoint_modbus_exceptions_total {}",
        MODBUS_REQUESTS.load(Relaxed),
        MODBUS_EXCEPTIONS.load(Relaxed)
    );
    labelled(
        &mut out,
        "castpoint_bacnet_requests_total",
        "BACnet APDUs received, by type.",
        "type",
        &[
            ("confirmed", &BACNET_CONFIRMED),
            ("unconfirmed", &BACNET_UNCONFIRMED),
            ("other", &BACNET_OTHER),
        ],
    );
    labelled(
        &mut out,
        "castpoint_bacnet_error_answers_total",
        "BACnet Error, Reject and Abort answers sent.",
        "type",
        &[
            ("error", &BACNET_ERRORS),
            ("reject", &BACNET_REJECTS),
            ("abort", &BACNET_ABORTS),
        ],
    );
    let _ = writeln!(
        out,
        "# HELP castpoint_bacnet_local_changes_total Point changes handed to the BACnet stack for COV and event evaluation.\n# TYPE castpoint_bacnet_local_changes_total counter\ncastpoint_bacnet_local_changes_total {}",
        BACNET_LOCAL_CHANGES.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP castpoint_bacnet_turn_frames_total Frames castpoint handed the BACnet stack to turn its dispatch loop after local changes.\n# TYPE castpoint_bacnet_turn_frames_total counter\ncastpoint_bacnet_turn_frames_total {}",
        BACNET_TURN_FRAMES.load(Relaxed)
    );
    labelled(
        &mut out,
        "castpoint_bacnet_discovery_total",
        "The BACnet stack's Who-Is handling: requests received (castpoint's turn frames included), I-Am answers sent, answers withheld by its rate limits.",
        "event",
        &[
            ("who_is_received", &BACNET_WHO_IS),
            ("i_am_sent", &BACNET_I_AM),
            ("throttled", &BACNET_DISCOVERY_THROTTLED),
        ],
    );
    let _ = writeln!(
        out,
        "# HELP castpoint_bacnet_cov_subscriptions Active BACnet COV subscriptions.\n# TYPE castpoint_bacnet_cov_subscriptions gauge\ncastpoint_bacnet_cov_subscriptions {}",
        BACNET_COV_SUBSCRIPTIONS.load(Relaxed)
    );
    if let Ok(mut g) = GAUGES.lock() {
        let mut seen: Vec<&'static str> = Vec::new();
        let mut lines = Vec::new();
        g.retain(|(name, help, read)| match read() {
            Some(v) => {
                lines.push((*name, *help, v));
                true
            }
            None => false,
        });
        // Several registrations of one name (several apps in one test
        // process) sum, so each family appears once.
        lines.sort_by_key(|l| l.0);
        for (name, help, _) in &lines {
            if seen.contains(name) {
                continue;
            }
            seen.push(name);
            let sum: f64 = lines.iter().filter(|l| l.0 == *name).map(|l| l.2).sum();
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {sum}"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn surfaces_and_classes() {
        assert_eq!(
            HTTP_SURFACES[http_surface("/api/haystack/read")],
            "haystack"
        );
        assert_eq!(HTTP_SURFACES[http_surface("/stream/demo.ts")], "media");
        assert_eq!(HTTP_SURFACES[http_surface("/console/app.js")], "console");
        assert_eq!(HTTP_SURFACES[http_surface("/metrics")], "metrics");
        assert_eq!(HTTP_SURFACES[http_surface("/api/points")], "rest");
        http(0, 999);
        http(0, 0);
        http(99, 200);
        let p = prometheus();
        assert!(p.contains("castpoint_http_responses_total{surface=\"rest\",class=\"5xx\"}"));
    }

    #[test]
    fn labelled_families_have_help_type_and_one_series_per_label() {
        let p = prometheus();
        for (family, label, values) in [
            (
                "castpoint_bacnet_requests_total",
                "type",
                &["confirmed", "unconfirmed", "other"],
            ),
            (
                "castpoint_bacnet_error_answers_total",
                "type",
                &["error", "reject", "abort"],
            ),
            (
                "castpoint_bacnet_discovery_total",
                "event",
                &["who_is_received", "i_am_sent", "throttled"],
            ),
        ] {
            let at = p.find(&format!("# HELP {family} ")).expect(family);
            let lines: Vec<&str> = p[at..].lines().take(5).collect();
            assert_eq!(lines[1], format!("# TYPE {family} counter"));
            for (line, v) in lines[2..].iter().zip(values) {
                let prefix = format!("{family}{{{label}=\"{v}\"}} ");
                let n = line
                    .strip_prefix(&prefix)
                    .unwrap_or_else(|| panic!("{line}"));
                assert!(n.parse::<u64>().is_ok(), "{line}");
            }
        }
    }

    #[test]
    fn gauges_disappear_with_their_part() {
        let part = Arc::new(7u32);
        let weak = Arc::downgrade(&part);
        register_gauge("castpoint_test_gauge", "A test gauge.", move || {
            weak.upgrade().map(|v| f64::from(*v))
        });
        assert!(prometheus().contains("castpoint_test_gauge 7"));
        drop(part);
        assert!(!prometheus().contains("castpoint_test_gauge"));
    }
}

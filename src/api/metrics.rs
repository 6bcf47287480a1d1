//! Prometheus series for the router (per route, input, output and SRT connection) and the process, beside the point series of `/metrics`.
//!
//! Naming follows the Prometheus conventions: base units in the name
//! (`_bytes`, `_seconds`, `_bits_per_second`), `_total` for counters, and
//! the process collector's standard names (`process_cpu_seconds_total`, ...)
//! so stock dashboards and alerts work unchanged.
//!
//! Cardinality is bounded by configuration, never by traffic: one series per
//! configured route, input and output (bounded by `[limits]`/the route API's
//! caps) and one per *live* SRT connection, labelled by its peer address and
//! gone when the connection closes (an SRT listener's callers are capped by
//! its `max_connections`). Viewers, HTTP clients and Modbus/BACnet peers are
//! counted, never labelled. docs/metrics.md lists every series.

use std::fmt::Write as _;

use crate::engine::stats::{EngineSnapshot, IoSnapshot, SrtConnStats};

/// Escapes a label value (text exposition format 0.0.4).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: HELP/TYPE once, then the samples.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &str, v: f64) {
        if v.is_finite() {
            let _ = writeln!(self.out, "{name}{{{labels}}} {v}");
        }
    }
}

type IoField = fn(&IoSnapshot) -> f64;

/// Input and output families: (name, type, help, value).
const INPUT_FAMILIES: &[(&str, &str, &str, IoField)] = &[
    (
        "castpoint_input_up",
        "gauge",
        "1 while the input's socket or connection is up.",
        |s| f64::from(u8::from(s.up)),
    ),
    (
        "castpoint_input_bitrate_bits_per_second",
        "gauge",
        "Input bit rate over the 5 s window.",
        |s| s.bitrate_bps as f64,
    ),
    (
        "castpoint_input_received_bytes_total",
        "counter",
        "Bytes of MPEG-TS received.",
        |s| s.bytes as f64,
    ),
    (
        "castpoint_input_ts_packets_total",
        "counter",
        "188-byte TS packets received.",
        |s| s.packets as f64,
    ),
    (
        "castpoint_input_cc_errors_total",
        "counter",
        "MPEG-TS continuity-counter errors seen on the input.",
        |s| s.cc_errors as f64,
    ),
    (
        "castpoint_input_frames_lost_total",
        "counter",
        "Video frames lost to continuity gaps on the input.",
        |s| s.frames_lost as f64,
    ),
    (
        "castpoint_input_rejected_total",
        "counter",
        "Peers refused after the handshake (SRT: wrong passphrase length).",
        |s| s.rejected as f64,
    ),
];

const OUTPUT_FAMILIES: &[(&str, &str, &str, IoField)] = &[
    ("castpoint_output_enabled", "gauge", "1 while the output is enabled.", |s| f64::from(u8::from(s.enabled))),
    ("castpoint_output_up", "gauge", "1 while the output's socket, connection or writer is up.", |s| f64::from(u8::from(s.up))),
    ("castpoint_output_bitrate_bits_per_second", "gauge", "Bit rate delivered to receivers over the 5 s window.", |s| s.bitrate_bps as f64),
    ("castpoint_output_sent_bytes_total", "counter", "Bytes delivered (refused sends are not counted).", |s| s.bytes as f64),
    ("castpoint_output_ts_packets_total", "counter", "188-byte TS packets delivered.", |s| s.packets as f64),
    ("castpoint_output_dropped_chunks_total", "counter", "Chunks a slow receiver lost (bounded queues drop, never block).", |s| s.dropped_chunks as f64),
    ("castpoint_output_dropped_ts_packets_total", "counter", "TS packets in the dropped chunks.", |s| s.dropped_packets as f64),
    ("castpoint_output_frames_lost_total", "counter", "Video frames lost to drops.", |s| s.frames_lost as f64),
    ("castpoint_output_send_errors_total", "counter", "Sends the OS refused (e.g. ICMP port unreachable on UDP).", |s| s.send_errors as f64),
    ("castpoint_output_clients", "gauge", "Connected receivers (HTTP-TS viewers, SRT callers; 1 for a connected caller or UDP socket).", |s| s.clients as f64),
];

type SrtField = fn(&SrtConnStats) -> f64;

const SRT_FAMILIES: &[(&str, &str, &str, SrtField)] = &[
    (
        "castpoint_srt_rtt_seconds",
        "gauge",
        "Smoothed round-trip time.",
        |c| c.rtt_ms / 1e3,
    ),
    (
        "castpoint_srt_bandwidth_bits_per_second",
        "gauge",
        "Estimated link bandwidth.",
        |c| c.bandwidth_mbps * 1e6,
    ),
    (
        "castpoint_srt_send_rate_bits_per_second",
        "gauge",
        "Sending rate.",
        |c| c.send_rate_mbps * 1e6,
    ),
    (
        "castpoint_srt_receive_rate_bits_per_second",
        "gauge",
        "Receiving rate.",
        |c| c.recv_rate_mbps * 1e6,
    ),
    (
        "castpoint_srt_sent_packets_total",
        "counter",
        "SRT packets sent.",
        |c| c.pkt_sent as f64,
    ),
    (
        "castpoint_srt_received_packets_total",
        "counter",
        "SRT packets received.",
        |c| c.pkt_recv as f64,
    ),
    (
        "castpoint_srt_send_lost_packets_total",
        "counter",
        "Packets reported lost by the receiver.",
        |c| f64::from(c.pkt_snd_loss),
    ),
    (
        "castpoint_srt_receive_lost_packets_total",
        "counter",
        "Packets detected lost on receipt.",
        |c| f64::from(c.pkt_rcv_loss),
    ),
    (
        "castpoint_srt_retransmitted_packets_total",
        "counter",
        "Packets retransmitted.",
        |c| f64::from(c.pkt_retrans),
    ),
    (
        "castpoint_srt_receive_dropped_packets_total",
        "counter",
        "Packets dropped by the receiver (too late to play).",
        |c| f64::from(c.pkt_rcv_drop),
    ),
    (
        "castpoint_srt_send_dropped_packets_total",
        "counter",
        "Packets dropped by the sender (too late to send).",
        |c| f64::from(c.pkt_snd_drop),
    ),
    (
        "castpoint_srt_flight_size_packets",
        "gauge",
        "Packets in flight (sent, not yet acknowledged).",
        |c| f64::from(c.flight_size),
    ),
    (
        "castpoint_srt_send_buffer_seconds",
        "gauge",
        "Data in the send buffer, as play time.",
        |c| f64::from(c.snd_buf_ms) / 1e3,
    ),
    (
        "castpoint_srt_receive_buffer_seconds",
        "gauge",
        "Data in the receive buffer, as play time.",
        |c| f64::from(c.rcv_buf_ms) / 1e3,
    ),
];

/// The router's series from one engine snapshot.
pub fn engine(out: &mut String, snap: &EngineSnapshot) {
    {
        let mut f = Family::new(
            out,
            "castpoint_route_enabled",
            "gauge",
            "1 while the route is enabled (its own enable and, for the primary route, Stream Enable).",
        );
        for r in &snap.routes {
            let on = r.enabled && r.stream_enabled;
            f.sample(
                "castpoint_route_enabled",
                &format!("route=\"{}\"", esc(&r.name)),
                f64::from(u8::from(on)),
            );
        }
    }
    {
        let mut f = Family::new(
            out,
            "castpoint_route_active_input",
            "gauge",
            "1 for the input the route forwards now (no series while none is).",
        );
        for r in &snap.routes {
            if let Some(i) = r.active_input.and_then(|i| r.inputs.get(i)) {
                f.sample(
                    "castpoint_route_active_input",
                    &format!("route=\"{}\",input=\"{}\"", esc(&r.name), esc(&i.name)),
                    1.0,
                );
            }
        }
    }
    {
        let mut f = Family::new(
            out,
            "castpoint_route_input_switches_total",
            "counter",
            "Input switches of the route (failovers, switch-backs, forced selections).",
        );
        for r in &snap.routes {
            f.sample(
                "castpoint_route_input_switches_total",
                &format!("route=\"{}\"", esc(&r.name)),
                r.switches as f64,
            );
        }
    }
    for (name, kind, help, get) in INPUT_FAMILIES {
        let mut f = Family::new(out, name, kind, help);
        for r in &snap.routes {
            for i in &r.inputs {
                let l = format!(
                    "route=\"{}\",input=\"{}\",kind=\"{}\"",
                    esc(&r.name),
                    esc(&i.name),
                    esc(&i.kind)
                );
                f.sample(name, &l, get(i));
            }
        }
    }
    for (name, kind, help, get) in OUTPUT_FAMILIES {
        let mut f = Family::new(out, name, kind, help);
        for r in &snap.routes {
            for o in &r.outputs {
                let l = format!(
                    "route=\"{}\",output=\"{}\",kind=\"{}\"",
                    esc(&r.name),
                    esc(&o.name),
                    esc(&o.kind)
                );
                f.sample(name, &l, get(o));
            }
        }
    }
    for (name, kind, help, get) in SRT_FAMILIES {
        let mut f = Family::new(out, name, kind, help);
        for r in &snap.routes {
            let ends = r
                .inputs
                .iter()
                .map(|e| ("input", e))
                .chain(r.outputs.iter().map(|e| ("output", e)));
            for (dir, e) in ends {
                for c in &e.srt {
                    let peer = c.peer.map(|p| p.to_string()).unwrap_or_default();
                    let l = format!(
                        "route=\"{}\",{dir}=\"{}\",peer=\"{}\"",
                        esc(&r.name),
                        esc(&e.name),
                        esc(&peer)
                    );
                    f.sample(name, &l, get(c));
                }
            }
        }
    }
}

/// The process collector's standard series, read from /proc/self (Linux).
pub fn process(out: &mut String) {
    let Some(p) = ProcSelf::read() else {
        return;
    };
    let mut g = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    };
    g(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        p.cpu_seconds,
    );
    g(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        p.rss_bytes,
    );
    g(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        p.vsize_bytes,
    );
    g(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        p.open_fds,
    );
    if let Some(m) = p.max_fds {
        g(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            m,
        );
    }
    g(
        "process_threads",
        "gauge",
        "Number of OS threads.",
        p.threads,
    );
    g(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        p.start_time_seconds,
    );
}

/// What the process collector reads from /proc.
#[derive(Debug, PartialEq)]
struct ProcSelf {
    cpu_seconds: f64,
    rss_bytes: f64,
    vsize_bytes: f64,
    open_fds: f64,
    max_fds: Option<f64>,
    threads: f64,
    start_time_seconds: f64,
}

impl ProcSelf {
    fn read() -> Option<ProcSelf> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let proc_stat = std::fs::read_to_string("/proc/stat").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        // /proc reports CPU times in USER_HZ ticks, which the kernel's ABI
        // fixes at 100 for user space on the architectures castpoint ships
        // for; asking sysconf would need libc and an unsafe block here.
        parse_proc(&stat, &status, &proc_stat, &limits, open_fds, 100.0)
    }
}

/// Parses /proc/self/stat (fields after the `(comm)`), /proc/self/status'
/// VmRSS and Threads (in kB and a count: no page size needed), /proc/stat's
/// `btime` and /proc/self/limits' "Max open files".
fn parse_proc(
    stat: &str,
    status: &str,
    proc_stat: &str,
    limits: &str,
    open_fds: f64,
    ticks: f64,
) -> Option<ProcSelf> {
    // comm may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field N is f[N - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let utime = num(14)?;
    let stime = num(15)?;
    let starttime = num(22)?;
    let vsize = num(23)?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let rss_kb = field("VmRSS:")?;
    let threads = field("Threads:")?;
    let btime = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())?;
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<f64>().ok());
    Some(ProcSelf {
        cpu_seconds: (utime + stime) / ticks,
        rss_bytes: rss_kb * 1024.0,
        vsize_bytes: vsize,
        open_fds,
        max_fds,
        threads,
        start_time_seconds: btime + starttime / ticks,
    })
}

/// The alarm series (docs/metrics.md, "Alarms"): one `castpoint_alarm_active`
/// sample per point not NORMAL and one `castpoint_alarm_unacked` sample per
/// transition awaiting its ack (bounded by the alarm-capable points, not
/// by traffic; absent = normal/acknowledged, so alert rules read `== 1`),
/// the counts, and the webhook counters. HELP/TYPE are always written, so
/// the families exist for rule checks even while nothing is in alarm.
pub fn alarms(out: &mut String, a: &crate::alarms::Alarms) {
    use crate::points::alarm::{EventState, TransitionKind};
    let db = a.db();
    let mut active = Vec::new();
    let mut unacked = Vec::new();
    for (id, spec) in a.points() {
        let class = spec.notification_class;
        let (Some(st), Some(d)) = (a.state(id), db.def(id)) else {
            continue;
        };
        if !db.is_present(id) {
            continue;
        }
        let route = crate::alarms::json::route_of(db, id).unwrap_or_default();
        let base = format!("point=\"{}\",route=\"{}\"", esc(&d.id), esc(&route));
        if st.event_state != EventState::Normal {
            active.push(format!(
                "{base},state=\"{}\",class=\"{class}\"",
                st.event_state.as_str()
            ));
        }
        for k in TransitionKind::ALL {
            if !st.acked.get(k) {
                unacked.push(format!("{base},transition=\"{}\"", k.as_str()));
            }
        }
    }
    let mut f = Family::new(
        out,
        "castpoint_alarm_active",
        "gauge",
        "1 while the point's alarm is not NORMAL (state = its event state).",
    );
    for l in &active {
        f.sample("castpoint_alarm_active", l, 1.0);
    }
    let mut f = Family::new(
        out,
        "castpoint_alarm_unacked",
        "gauge",
        "1 while a transition of the point's alarm awaits its acknowledgement.",
    );
    for l in &unacked {
        f.sample("castpoint_alarm_unacked", l, 1.0);
    }
    let (n_active, n_unacked) = a.counts();
    let _ = writeln!(
        out,
        "# HELP castpoint_alarms_active Points whose alarm is not NORMAL.\n# TYPE castpoint_alarms_active gauge\ncastpoint_alarms_active {n_active}\n# HELP castpoint_alarms_unacked Points with a transition awaiting its acknowledgement.\n# TYPE castpoint_alarms_unacked gauge\ncastpoint_alarms_unacked {n_unacked}"
    );
    let t = &crate::alarms::webhook::TOTALS;
    let mut f = Family::new(
        out,
        "castpoint_alarm_webhook_events_total",
        "counter",
        "Alarm events for webhooks by result: sent (2xx), failed (after every retry), dropped (queue full).",
    );
    use std::sync::atomic::Ordering::Relaxed;
    for (r, c) in [
        ("sent", &t.sent),
        ("failed", &t.failed),
        ("dropped", &t.dropped),
    ] {
        f.sample(
            "castpoint_alarm_webhook_events_total",
            &format!("result=\"{r}\""),
            c.load(Relaxed) as f64,
        );
    }
    let _ = writeln!(
        out,
        "# HELP castpoint_alarm_webhook_retries_total Webhook POSTs retried.\n# TYPE castpoint_alarm_webhook_retries_total counter\ncastpoint_alarm_webhook_retries_total {}",
        t.retried.load(Relaxed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_parses_with_a_hostile_comm() {
        // comm "a) (b" — the parser must split after the LAST ')'.
        let stat = "1234 (a) (b) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 5000 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let p = parse_proc(
            stat,
            "Name:\tcastpoint\nVmRSS:\t   10240 kB\nThreads:\t7\n",
            "cpu 1 2 3\nbtime 1700000000\n",
            "Limit Soft Hard Units\nMax open files            1024                 524288               files\n",
            12.0,
            100.0,
        )
        .unwrap();
        assert_eq!(
            p,
            ProcSelf {
                cpu_seconds: 3.0,
                rss_bytes: 10240.0 * 1024.0,
                vsize_bytes: 104857600.0,
                open_fds: 12.0,
                max_fds: Some(1024.0),
                threads: 7.0,
                start_time_seconds: 1700000050.0,
            }
        );
        assert!(parse_proc("garbage", "", "", "", 0.0, 100.0).is_none());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn this_process_reads() {
        let mut s = String::new();
        process(&mut s);
        for n in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_threads ",
        ] {
            assert!(s.contains(n), "{n} missing in {s}");
        }
    }
}

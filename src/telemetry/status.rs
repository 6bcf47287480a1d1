//! Status derivation, sans-IO: Server Status, GPU Status, a route's Stream/Input Status (signal timeout, start-up grace) and the memory-growth ("leak") detector, from samples and thresholds.

use std::collections::VecDeque;
use std::time::Duration;

/// Warning/fault thresholds, in percent, from `[telemetry]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub cpu_warn: f64,
    pub cpu_fault: f64,
    pub mem_warn: f64,
    pub mem_fault: f64,
    pub disk_warn: f64,
    pub disk_fault: f64,
    pub gpu_warn: f64,
    pub gpu_temp_warn_c: f64,
    pub gpu_temp_fault_c: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            cpu_warn: 85.0,
            cpu_fault: 98.0,
            mem_warn: 85.0,
            mem_fault: 95.0,
            disk_warn: 90.0,
            disk_fault: 97.0,
            gpu_warn: 95.0,
            gpu_temp_warn_c: 85.0,
            gpu_temp_fault_c: 95.0,
        }
    }
}

/// The three-state health shared by Server Status and GPU Status
/// (ordinals 1, 2, 3 on every protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    Ok = 1,
    Warning = 2,
    Fault = 3,
}

impl Health {
    pub fn ordinal(self) -> u16 {
        self as u16
    }
}

/// A derived status with the reasons that led to it (empty when Ok).
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    pub health: Health,
    pub reasons: Vec<String>,
}

impl Derived {
    fn ok() -> Self {
        Derived {
            health: Health::Ok,
            reasons: Vec::new(),
        }
    }

    fn raise(&mut self, h: Health, reason: String) {
        if h > self.health {
            self.health = h;
        }
        self.reasons.push(reason);
    }

    pub fn reason(&self) -> Option<String> {
        if self.reasons.is_empty() {
            None
        } else {
            Some(self.reasons.join("; "))
        }
    }
}

/// What Server Status is computed from. `None` = not measured (does not
/// count against the server: an unmeasured value is not a fault).
#[derive(Debug, Clone, Default)]
pub struct ServerInputs {
    pub cpu_pct: Option<f64>,
    pub mem_pct: Option<f64>,
    pub disk_pct: Option<f64>,
    /// Components currently in FAULT/ERROR, with their reason.
    pub component_faults: Vec<String>,
    /// Set by the memory-growth detector.
    pub memory_growth: Option<String>,
}

fn check(d: &mut Derived, what: &str, v: Option<f64>, warn: f64, fault: f64) {
    if let Some(v) = v {
        if v >= fault {
            d.raise(Health::Fault, format!("{what} {v:.1}% >= {fault}%"));
        } else if v >= warn {
            d.raise(Health::Warning, format!("{what} {v:.1}% >= {warn}%"));
        }
    }
}

/// Server Status: FAULT when a resource is past its fault threshold or a
/// component is in FAULT; WARNING past a warning threshold or when memory
/// keeps growing; OK otherwise.
pub fn server_status(i: &ServerInputs, t: &Thresholds) -> Derived {
    let mut d = Derived::ok();
    check(&mut d, "CPU", i.cpu_pct, t.cpu_warn, t.cpu_fault);
    check(&mut d, "memory", i.mem_pct, t.mem_warn, t.mem_fault);
    check(&mut d, "disk", i.disk_pct, t.disk_warn, t.disk_fault);
    for c in &i.component_faults {
        d.raise(Health::Fault, c.clone());
    }
    if let Some(m) = &i.memory_growth {
        d.raise(Health::Warning, m.clone());
    }
    d
}

/// How a missing GPU is judged (`[telemetry] gpu = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuMode {
    /// Use a GPU when NVML finds one; a missing GPU is not a fault.
    #[default]
    Auto,
    /// A GPU must be present: missing or failing is a FAULT.
    Required,
    /// Never look for a GPU.
    None,
}

impl GpuMode {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "auto" => Self::Auto,
            "required" => Self::Required,
            "none" => Self::None,
            _ => return None,
        })
    }
}

/// One GPU reading.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GpuSample {
    pub name: String,
    pub util_pct: f64,
    pub mem_used_pct: f64,
    pub temp_c: Option<f64>,
    pub encoder_util_pct: Option<f64>,
    pub encoder_sessions: Option<u32>,
    pub encoder_latency_ms: Option<f64>,
}

/// GPU Status from the mode and the latest reading (`Err` = NVML missing or
/// failing). `Err(reason)` means there is no GPU to report on (`gpu =
/// "auto"` finding none, or `gpu = "none"`): the point is unavailable (N/A
/// on every protocol), never a healthy OK for a GPU that does not exist.
pub fn gpu_status(
    mode: GpuMode,
    reading: &Result<GpuSample, String>,
    t: &Thresholds,
) -> Result<Derived, String> {
    let mut d = Derived::ok();
    match reading {
        Err(e) => match mode {
            GpuMode::Required => {
                d.raise(Health::Fault, format!("GPU required but unavailable: {e}"))
            }
            GpuMode::Auto => return Err(format!("no GPU (gpu = auto): {e}")),
            GpuMode::None => return Err("GPU monitoring disabled (gpu = none)".into()),
        },
        Ok(s) => {
            if s.util_pct >= t.gpu_warn {
                d.raise(
                    Health::Warning,
                    format!("GPU utilisation {:.0}% >= {}%", s.util_pct, t.gpu_warn),
                );
            }
            if let Some(temp) = s.temp_c {
                if temp >= t.gpu_temp_fault_c {
                    d.raise(Health::Fault, format!("GPU temperature {temp:.0} C"));
                } else if temp >= t.gpu_temp_warn_c {
                    d.raise(Health::Warning, format!("GPU temperature {temp:.0} C"));
                }
            }
        }
    }
    Ok(d)
}

/// How long after a route starts a missing signal is "starting", not a
/// fault: inputs need time to bind, connect (SRT/RTMP/RTSP handshakes) and
/// deliver, and judging them before that raised a spurious Stream Status
/// ERROR (and so Server Status FAULT) at start-up.
pub const STARTUP_GRACE: Duration = Duration::from_secs(5);

/// What a route's Stream Status and Input Status are derived from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteSignal {
    /// Stream Enable (false: STOPPED whatever the signal).
    pub stream_enabled: bool,
    /// Time since the input the route forwards (the active or forced one)
    /// last delivered data; `None`: no such input, or it never delivered.
    pub data_age: Option<Duration>,
    /// The route's `signal_timeout`.
    pub signal_timeout: Duration,
    /// Time since the route (re)started.
    pub uptime: Duration,
    /// The route has had a signal since it started.
    pub had_signal: bool,
    /// Every input failed to bind or connect.
    pub inputs_failed: bool,
}

/// A route's derived statuses: Stream Status ordinal (`None` = N/A: the
/// route is within its start-up grace and has had no signal yet), Input
/// Status ordinal, and whether it counts in Active Streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteStatus {
    pub stream: Option<u16>,
    pub input: u16,
    pub live: bool,
}

/// Stream Status LIVE(1) / STOPPED(2) / ERROR(3) and Input Status
/// ACTIVE(1) / NO_SIGNAL(2) / ERROR(3): a route is LIVE only while media
/// arrives, i.e. its forwarded input delivered within `signal_timeout`.
/// Within [`STARTUP_GRACE`] of a start and before the first signal, nothing
/// is an error yet: Stream Status N/A, Input Status NO_SIGNAL.
pub fn route_status(r: &RouteSignal) -> RouteStatus {
    let signal = r.data_age.is_some_and(|a| a <= r.signal_timeout);
    let starting = !r.had_signal && r.uptime < STARTUP_GRACE;
    let input = if signal {
        1
    } else if r.inputs_failed && !starting {
        3
    } else {
        2
    };
    let stream = if !r.stream_enabled {
        Some(2)
    } else if signal {
        Some(1)
    } else if starting {
        None
    } else {
        Some(3)
    };
    RouteStatus {
        stream,
        input,
        live: r.stream_enabled && signal,
    }
}

/// Route Status of a route's point block (points/route.toml): LIVE(1),
/// NO_SIGNAL(2), STOPPED(3), ERROR(4); `None` = N/A (within the start-up
/// grace, before the first signal). Same inputs and the same signal rule
/// as Stream Status ([`route_status`]); a route that is not running at
/// all (configured disabled) is STOPPED by its caller.
pub fn route_block_status(r: &RouteSignal) -> Option<u16> {
    let signal = r.data_age.is_some_and(|a| a <= r.signal_timeout);
    let starting = !r.had_signal && r.uptime < STARTUP_GRACE;
    if !r.stream_enabled {
        Some(3)
    } else if signal {
        Some(1)
    } else if starting {
        None
    } else if r.inputs_failed {
        Some(4)
    } else {
        Some(2)
    }
}

/// Detects steady growth of the process's resident memory (seed 001's
/// "memory leak detection"): over a full window, memory grew by more than
/// both a ratio and an absolute amount, and most steps went up.
#[derive(Debug, Clone)]
pub struct MemoryGrowth {
    window: Duration,
    min_ratio: f64,
    min_bytes: u64,
    samples: VecDeque<(Duration, u64)>,
}

impl MemoryGrowth {
    pub fn new(window: Duration, min_ratio: f64, min_bytes: u64) -> Self {
        MemoryGrowth {
            window,
            min_ratio,
            min_bytes,
            samples: VecDeque::new(),
        }
    }

    /// Adds a sample at monotonic time `t`; returns a warning when growth
    /// over the window looks like a leak.
    pub fn push(&mut self, t: Duration, rss: u64) -> Option<String> {
        self.samples.push_back((t, rss));
        while self
            .samples
            .front()
            .is_some_and(|(t0, _)| t.saturating_sub(*t0) > self.window)
        {
            self.samples.pop_front();
        }
        let (t0, first) = *self.samples.front()?;
        // Judge only a (nearly) full window, so start-up allocation is not a leak.
        if t.saturating_sub(t0) < self.window.mul_f64(0.9) || self.samples.len() < 5 {
            return None;
        }
        let ups = self
            .samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .filter(|(a, b)| b.1 > a.1)
            .count();
        let steps = self.samples.len() - 1;
        let grew = rss.saturating_sub(first);
        if grew >= self.min_bytes
            && (rss as f64) >= (first as f64) * (1.0 + self.min_ratio)
            && ups * 10 >= steps * 7
        {
            Some(format!(
                "memory grew from {} to {} MiB in {} min (possible leak)",
                first >> 20,
                rss >> 20,
                t.saturating_sub(t0).as_secs() / 60
            ))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_status_table() {
        let t = Thresholds::default();
        let cases: Vec<(ServerInputs, Health)> = vec![
            (ServerInputs::default(), Health::Ok),
            (
                ServerInputs {
                    cpu_pct: Some(50.0),
                    mem_pct: Some(50.0),
                    disk_pct: Some(50.0),
                    ..Default::default()
                },
                Health::Ok,
            ),
            (
                ServerInputs {
                    cpu_pct: Some(90.0),
                    ..Default::default()
                },
                Health::Warning,
            ),
            (
                ServerInputs {
                    cpu_pct: Some(99.0),
                    ..Default::default()
                },
                Health::Fault,
            ),
            (
                ServerInputs {
                    mem_pct: Some(86.0),
                    ..Default::default()
                },
                Health::Warning,
            ),
            (
                ServerInputs {
                    mem_pct: Some(96.0),
                    ..Default::default()
                },
                Health::Fault,
            ),
            (
                ServerInputs {
                    disk_pct: Some(91.0),
                    ..Default::default()
                },
                Health::Warning,
            ),
            (
                ServerInputs {
                    disk_pct: Some(97.5),
                    ..Default::default()
                },
                Health::Fault,
            ),
            (
                ServerInputs {
                    component_faults: vec!["GPU Status FAULT".into()],
                    ..Default::default()
                },
                Health::Fault,
            ),
            (
                ServerInputs {
                    memory_growth: Some("leak".into()),
                    ..Default::default()
                },
                Health::Warning,
            ),
            (
                ServerInputs {
                    cpu_pct: Some(90.0),
                    component_faults: vec!["x".into()],
                    ..Default::default()
                },
                Health::Fault,
            ),
        ];
        for (i, (inp, want)) in cases.into_iter().enumerate() {
            let d = server_status(&inp, &t);
            assert_eq!(d.health, want, "case {i}: {inp:?}");
            assert_eq!(d.reasons.is_empty(), want == Health::Ok, "case {i}");
        }
    }

    #[test]
    fn route_block_status_table() {
        let ms = Duration::from_millis;
        let base = RouteSignal {
            stream_enabled: true,
            data_age: Some(ms(10)),
            signal_timeout: ms(1000),
            uptime: ms(60_000),
            had_signal: true,
            inputs_failed: false,
        };
        let cases: Vec<(&str, RouteSignal, Option<u16>)> = vec![
            ("live", base, Some(1)),
            (
                "silent beyond signal_timeout",
                RouteSignal {
                    data_age: Some(ms(1001)),
                    ..base
                },
                Some(2),
            ),
            (
                "never delivered",
                RouteSignal {
                    data_age: None,
                    ..base
                },
                Some(2),
            ),
            (
                "Route Enable off, even with media",
                RouteSignal {
                    stream_enabled: false,
                    ..base
                },
                Some(3),
            ),
            (
                "every input failed",
                RouteSignal {
                    data_age: None,
                    inputs_failed: true,
                    ..base
                },
                Some(4),
            ),
            (
                "starting: N/A, not ERROR",
                RouteSignal {
                    data_age: None,
                    inputs_failed: true,
                    had_signal: false,
                    uptime: ms(100),
                    ..base
                },
                None,
            ),
        ];
        for (what, sig, want) in cases {
            assert_eq!(route_block_status(&sig), want, "{what}");
        }
    }

    #[test]
    fn route_status_table() {
        let ms = Duration::from_millis;
        let base = RouteSignal {
            stream_enabled: true,
            data_age: Some(ms(10)),
            signal_timeout: ms(1000),
            uptime: ms(60_000),
            had_signal: true,
            inputs_failed: false,
        };
        let st = |stream, input, live| RouteStatus {
            stream,
            input,
            live,
        };
        let cases: Vec<(&str, RouteSignal, RouteStatus)> = vec![
            ("media arriving", base, st(Some(1), 1, true)),
            (
                "age at the timeout still live",
                RouteSignal {
                    data_age: Some(ms(1000)),
                    ..base
                },
                st(Some(1), 1, true),
            ),
            (
                "forced idle input: nothing for 1.2 s",
                RouteSignal {
                    data_age: Some(ms(1200)),
                    ..base
                },
                st(Some(3), 2, false),
            ),
            (
                "forced input that never delivered",
                RouteSignal {
                    data_age: None,
                    ..base
                },
                st(Some(3), 2, false),
            ),
            (
                "stream disabled",
                RouteSignal {
                    stream_enabled: false,
                    ..base
                },
                st(Some(2), 1, false),
            ),
            (
                "every input failed",
                RouteSignal {
                    data_age: None,
                    inputs_failed: true,
                    ..base
                },
                st(Some(3), 3, false),
            ),
            (
                "start-up grace: no signal yet is not an error",
                RouteSignal {
                    data_age: None,
                    uptime: ms(200),
                    had_signal: false,
                    ..base
                },
                st(None, 2, false),
            ),
            (
                "start-up grace: a bind failure waits for the grace too",
                RouteSignal {
                    data_age: None,
                    uptime: ms(200),
                    had_signal: false,
                    inputs_failed: true,
                    ..base
                },
                st(None, 2, false),
            ),
            (
                "grace over without a signal: error",
                RouteSignal {
                    data_age: None,
                    uptime: STARTUP_GRACE,
                    had_signal: false,
                    ..base
                },
                st(Some(3), 2, false),
            ),
            (
                "signal lost within the grace after a first signal: error",
                RouteSignal {
                    data_age: Some(ms(1500)),
                    uptime: ms(3000),
                    had_signal: true,
                    ..base
                },
                st(Some(3), 2, false),
            ),
            (
                "live within the grace",
                RouteSignal {
                    uptime: ms(300),
                    had_signal: true,
                    ..base
                },
                st(Some(1), 1, true),
            ),
            (
                "disabled within the grace: stopped",
                RouteSignal {
                    stream_enabled: false,
                    data_age: None,
                    uptime: ms(300),
                    had_signal: false,
                    ..base
                },
                st(Some(2), 2, false),
            ),
        ];
        for (what, sig, want) in cases {
            assert_eq!(route_status(&sig), want, "{what}: {sig:?}");
        }
    }

    #[test]
    fn gpu_status_rule() {
        let t = Thresholds::default();
        let missing: Result<GpuSample, String> = Err("libnvidia-ml.so not found".into());
        assert_eq!(
            gpu_status(GpuMode::Required, &missing, &t).unwrap().health,
            Health::Fault
        );
        // No GPU to report on: unavailable with the reason, not OK.
        let auto = gpu_status(GpuMode::Auto, &missing, &t);
        assert!(auto.is_err_and(|r| r.contains("gpu = auto")));
        assert!(gpu_status(GpuMode::None, &missing, &t).is_err());
        let busy = Ok(GpuSample {
            util_pct: 99.0,
            ..Default::default()
        });
        assert_eq!(
            gpu_status(GpuMode::Auto, &busy, &t).unwrap().health,
            Health::Warning
        );
        let hot = Ok(GpuSample {
            util_pct: 10.0,
            temp_c: Some(96.0),
            ..Default::default()
        });
        assert_eq!(
            gpu_status(GpuMode::Required, &hot, &t).unwrap().health,
            Health::Fault
        );
        let fine = Ok(GpuSample {
            util_pct: 10.0,
            temp_c: Some(50.0),
            ..Default::default()
        });
        assert_eq!(
            gpu_status(GpuMode::Required, &fine, &t).unwrap().health,
            Health::Ok
        );
    }

    #[test]
    fn memory_growth_detects_steady_growth_only() {
        let min = Duration::from_secs(60);
        let mib = 1u64 << 20;
        // Steady growth 100 -> 200 MiB over 10 min: a leak.
        let mut g = MemoryGrowth::new(min * 10, 0.2, 50 * mib);
        let mut out = None;
        for i in 0..=10u64 {
            out = g.push(min * i as u32, (100 + 10 * i) * mib);
        }
        assert!(out.is_some_and(|m| m.contains("100 to 200 MiB")));
        // Flat with noise: no leak.
        let mut g = MemoryGrowth::new(min * 10, 0.2, 50 * mib);
        let mut out = None;
        for i in 0..=20u64 {
            out = g.push(min * i as u32, (100 + (i % 3)) * mib);
        }
        assert_eq!(out, None);
        // A single jump (cache warm-up) then flat: most steps do not go up.
        let mut g = MemoryGrowth::new(min * 10, 0.2, 50 * mib);
        let mut out = None;
        for i in 0..=10u64 {
            out = g.push(min * i as u32, if i == 0 { 100 * mib } else { 300 * mib });
        }
        assert_eq!(out, None);
        // Not a full window yet: no verdict.
        let mut g = MemoryGrowth::new(min * 10, 0.2, 50 * mib);
        for i in 0..5u64 {
            assert_eq!(g.push(min * i as u32, (100 + 50 * i) * mib), None);
        }
    }
}

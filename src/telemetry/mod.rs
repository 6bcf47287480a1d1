//! Telemetry: samples the host and GPU at each point's period into the point database and derives Server, GPU and component statuses.
//!
//! Router counters (streams, viewers, bitrate, dropped frames, stream and
//! input status) are published by the engine's bridge; this module reads
//! the component statuses back from the point database to judge the server.

pub mod gpu;
pub mod host;
pub mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::points::{PointDb, PointId, Quality, Value};
use crate::section::{Problem, Section};
use gpu::GpuSource;
use status::{GpuMode, GpuSample, MemoryGrowth, ServerInputs, Thresholds};

/// `[telemetry]` settings.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(from = "TelemetrySection")]
pub struct TelemetryConfig {
    /// Off: nothing is sampled and measurements stay `unavailable` (tests
    /// that drive points by hand, or a gateway with its own probes).
    pub enabled: bool,
    pub gpu: GpuMode,
    pub gpu_index: u32,
    /// Interfaces counted in Network Throughput; empty = all non-loopback.
    pub interfaces: Vec<String>,
    pub thresholds: Thresholds,
    /// Per-point sample period overrides (`[telemetry.periods] cpu_usage = "5s"`).
    pub periods: HashMap<String, Duration>,
    /// Memory-growth detector: window, minimum ratio and minimum MiB.
    pub leak_window: Duration,
    pub leak_ratio: f64,
    pub leak_min_mib: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            gpu: GpuMode::Auto,
            gpu_index: 0,
            interfaces: Vec::new(),
            thresholds: Thresholds::default(),
            periods: HashMap::new(),
            leak_window: Duration::from_secs(30 * 60),
            leak_ratio: 0.25,
            leak_min_mib: 64,
        }
    }
}

/// `[telemetry]` as written: flat keys (thresholds beside the rest).
#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TelemetrySection {
    enabled: bool,
    gpu: GpuMode,
    gpu_index: u32,
    interfaces: Vec<String>,
    #[serde(deserialize_with = "crate::section::number")]
    cpu_warn: f64,
    #[serde(deserialize_with = "crate::section::number")]
    cpu_fault: f64,
    #[serde(deserialize_with = "crate::section::number")]
    mem_warn: f64,
    #[serde(deserialize_with = "crate::section::number")]
    mem_fault: f64,
    #[serde(deserialize_with = "crate::section::number")]
    disk_warn: f64,
    #[serde(deserialize_with = "crate::section::number")]
    disk_fault: f64,
    #[serde(deserialize_with = "crate::section::number")]
    gpu_warn: f64,
    #[serde(deserialize_with = "crate::section::number")]
    gpu_temp_warn_c: f64,
    #[serde(deserialize_with = "crate::section::number")]
    gpu_temp_fault_c: f64,
    #[serde(with = "crate::section::duration")]
    leak_window: Duration,
    #[serde(deserialize_with = "crate::section::number")]
    leak_ratio: f64,
    leak_min_mib: u64,
    periods: Periods,
}

/// `[telemetry.periods]`: the sampled points whose period can be set.
#[derive(Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Periods {
    #[serde(with = "crate::section::opt_duration")]
    cpu_usage: Option<Duration>,
    #[serde(with = "crate::section::opt_duration")]
    memory_usage: Option<Duration>,
    #[serde(with = "crate::section::opt_duration")]
    network_throughput: Option<Duration>,
    #[serde(with = "crate::section::opt_duration")]
    uptime: Option<Duration>,
    #[serde(with = "crate::section::opt_duration")]
    gpu_usage: Option<Duration>,
}

impl Periods {
    fn into_map(self) -> HashMap<String, Duration> {
        [
            ("cpu_usage", self.cpu_usage),
            ("memory_usage", self.memory_usage),
            ("network_throughput", self.network_throughput),
            ("uptime", self.uptime),
            ("gpu_usage", self.gpu_usage),
        ]
        .into_iter()
        .filter_map(|(k, d)| Some((k.to_string(), d?)))
        .collect()
    }
}

impl Default for TelemetrySection {
    fn default() -> Self {
        let c = TelemetryConfig::default();
        let t = c.thresholds;
        TelemetrySection {
            enabled: c.enabled,
            gpu: c.gpu,
            gpu_index: c.gpu_index,
            interfaces: c.interfaces,
            cpu_warn: t.cpu_warn,
            cpu_fault: t.cpu_fault,
            mem_warn: t.mem_warn,
            mem_fault: t.mem_fault,
            disk_warn: t.disk_warn,
            disk_fault: t.disk_fault,
            gpu_warn: t.gpu_warn,
            gpu_temp_warn_c: t.gpu_temp_warn_c,
            gpu_temp_fault_c: t.gpu_temp_fault_c,
            leak_window: c.leak_window,
            leak_ratio: c.leak_ratio,
            leak_min_mib: c.leak_min_mib,
            periods: Periods::default(),
        }
    }
}

impl From<TelemetrySection> for TelemetryConfig {
    fn from(s: TelemetrySection) -> Self {
        TelemetryConfig {
            enabled: s.enabled,
            gpu: s.gpu,
            gpu_index: s.gpu_index,
            interfaces: s.interfaces,
            thresholds: Thresholds {
                cpu_warn: s.cpu_warn,
                cpu_fault: s.cpu_fault,
                mem_warn: s.mem_warn,
                mem_fault: s.mem_fault,
                disk_warn: s.disk_warn,
                disk_fault: s.disk_fault,
                gpu_warn: s.gpu_warn,
                gpu_temp_warn_c: s.gpu_temp_warn_c,
                gpu_temp_fault_c: s.gpu_temp_fault_c,
            },
            periods: s.periods.into_map(),
            leak_window: s.leak_window,
            leak_ratio: s.leak_ratio,
            leak_min_mib: s.leak_min_mib,
        }
    }
}

impl Section for TelemetryConfig {
    fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let t = &self.thresholds;
        let pct = [
            ("cpu_warn", t.cpu_warn),
            ("cpu_fault", t.cpu_fault),
            ("mem_warn", t.mem_warn),
            ("mem_fault", t.mem_fault),
            ("disk_warn", t.disk_warn),
            ("disk_fault", t.disk_fault),
            ("gpu_warn", t.gpu_warn),
            ("gpu_temp_warn_c", t.gpu_temp_warn_c),
            ("gpu_temp_fault_c", t.gpu_temp_fault_c),
        ];
        for (k, x) in pct {
            if !(0.0..=200.0).contains(&x) {
                p.push(Problem::new(k, "expected a number 0..=200"));
            }
        }
        if !(0.0..=200.0).contains(&self.leak_ratio) {
            p.push(Problem::new("leak_ratio", "expected a ratio such as 0.25"));
        }
        if self.leak_window < Duration::from_secs(10) {
            p.push(Problem::new(
                "leak_window",
                "expected a duration of at least 10s",
            ));
        }
        let mut periods: Vec<_> = self.periods.iter().collect();
        periods.sort();
        for (k, d) in periods {
            if *d < Duration::from_millis(200) {
                let m = "expected a duration of at least 200ms";
                p.push(Problem::new(format!("periods.{k}"), m));
            }
        }
        p
    }
}

/// Point ids the sampler writes, looked up once.
struct Ids {
    cpu: Option<PointId>,
    mem: Option<PointId>,
    gpu: Option<PointId>,
    net: Option<PointId>,
    uptime: Option<PointId>,
    encoding_latency: Option<PointId>,
    server_status: Option<PointId>,
    gpu_status: Option<PointId>,
}

/// Status points whose bad states count as component faults for Server
/// Status: (point id, ordinals that are faults).
const COMPONENTS: &[(&str, &[u16])] = &[
    ("stream_status", &[3]),
    ("input_status", &[3]),
    ("encoder_status", &[3]),
    ("gpu_status", &[3]),
    ("communication_status", &[2]),
];

/// Periodic job bookkeeping.
struct Job {
    period: Duration,
    next: Instant,
}

impl Job {
    fn new(period: Duration, first: Instant) -> Self {
        Job {
            period,
            next: first,
        }
    }

    fn due(&mut self, now: Instant) -> bool {
        if now >= self.next {
            // Skip missed ticks rather than bursting to catch up.
            while self.next <= now {
                self.next += self.period;
            }
            true
        } else {
            false
        }
    }
}

/// The sampler. Owns its probes; runs until `shutdown`.
pub struct Sampler {
    db: PointDb,
    cfg: TelemetryConfig,
    host: host::Host,
    gpu: Box<dyn GpuSource>,
    started: Instant,
    growth: MemoryGrowth,
    leak: Option<String>,
    last_gpu: Result<GpuSample, String>,
    disk_pct: Option<f64>,
    ids: Ids,
}

impl Sampler {
    pub fn new(
        db: PointDb,
        cfg: TelemetryConfig,
        gpu: Box<dyn GpuSource>,
        data_dir: PathBuf,
    ) -> Self {
        let ids = Ids {
            cpu: db.lookup("cpu_usage"),
            mem: db.lookup("memory_usage"),
            gpu: db.lookup("gpu_usage"),
            net: db.lookup("network_throughput"),
            uptime: db.lookup("uptime"),
            encoding_latency: db.lookup("encoding_latency"),
            server_status: db.lookup("server_status"),
            gpu_status: db.lookup("gpu_status"),
        };
        let growth = MemoryGrowth::new(cfg.leak_window, cfg.leak_ratio, cfg.leak_min_mib << 20);
        Sampler {
            host: host::Host::new(cfg.interfaces.clone(), data_dir),
            db,
            cfg,
            gpu,
            started: Instant::now(),
            growth,
            leak: None,
            last_gpu: Err("not sampled yet".into()),
            disk_pct: None,
            ids,
        }
    }

    fn period(&self, id: Option<PointId>, name: &str) -> Duration {
        self.cfg
            .periods
            .get(name)
            .copied()
            .or_else(|| id.and_then(|i| self.db.def(i)).map(|d| d.sample_period))
            .unwrap_or(Duration::from_secs(30))
    }

    fn put(&self, id: Option<PointId>, r: Result<f64, String>) {
        let Some(id) = id else { return };
        let _ = match r {
            Ok(v) => self.db.set(id, Some(Value::Number(v)), Quality::Ok, None),
            Err(e) => self.db.set(id, None, Quality::Unavailable, Some(&e)),
        };
    }

    pub fn sample_cpu(&mut self) {
        let r = self.host.cpu_pct();
        self.put(self.ids.cpu, r);
    }

    pub fn sample_mem(&mut self) {
        let r = self.host.mem_pct();
        self.put(self.ids.mem, r);
        if let Some(rss) = self.host.own_rss() {
            self.leak = self.growth.push(self.started.elapsed(), rss);
        }
    }

    pub fn sample_net(&mut self) {
        match self.host.net_gbps() {
            Ok(Some(g)) => self.put(self.ids.net, Ok(g)),
            Ok(None) => {} // first reading only primes the counters
            Err(e) => self.put(self.ids.net, Err(e)),
        }
    }

    pub fn sample_uptime(&mut self) {
        let h = self.started.elapsed().as_secs_f64() / 3600.0;
        self.put(self.ids.uptime, Ok(h));
    }

    pub fn sample_gpu(&mut self) {
        self.last_gpu = self.gpu.sample();
        match &self.last_gpu {
            Ok(s) => {
                self.put(self.ids.gpu, Ok(s.util_pct));
                // NVENC latency feeds Encoding Latency only while sessions run.
                if let (Some(id), Some(ms)) = (self.ids.encoding_latency, s.encoder_latency_ms) {
                    let _ = self.db.set(id, Some(Value::Number(ms)), Quality::Ok, None);
                }
            }
            Err(e) => self.put(self.ids.gpu, Err(e.clone())),
        }
    }

    pub fn sample_disk(&mut self) {
        self.disk_pct = self.host.disk_pct();
    }

    fn read_num(&self, id: Option<PointId>) -> Option<f64> {
        let st = self.db.read(id?)?;
        match (st.quality, st.value) {
            (Quality::Ok | Quality::Stale, Some(v)) => Some(v.as_f64()),
            _ => None,
        }
    }

    /// Re-derives GPU and Server Status from the latest readings.
    pub fn derive_statuses(&mut self) {
        let g = status::gpu_status(self.cfg.gpu, &self.last_gpu, &self.cfg.thresholds);
        if let Some(id) = self.ids.gpu_status {
            match g {
                Ok(g) => self.set_status(id, g.health.ordinal(), g.reason()),
                Err(why) => {
                    let _ = self.db.set(id, None, Quality::Unavailable, Some(&why));
                }
            }
        }
        let mut faults = Vec::new();
        for (name, bad) in COMPONENTS {
            let Some(id) = self.db.lookup(name) else {
                continue;
            };
            if let (Some(st), Some(def)) = (self.db.read(id), self.db.def(id)) {
                if let Some(Value::Enum(e)) = st.value {
                    if bad.contains(&e) {
                        let state = def.state_name(e).unwrap_or("?");
                        let why = st
                            .reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default();
                        faults.push(format!("{} {state}{why}", def.name));
                    }
                }
            }
        }
        let inputs = ServerInputs {
            cpu_pct: self.read_num(self.ids.cpu),
            mem_pct: self.read_num(self.ids.mem),
            disk_pct: self.disk_pct,
            component_faults: faults,
            memory_growth: self.leak.clone(),
        };
        let d = status::server_status(&inputs, &self.cfg.thresholds);
        if let Some(id) = self.ids.server_status {
            self.set_status(id, d.health.ordinal(), d.reason());
        }
    }

    fn set_status(&self, id: PointId, ordinal: u16, reason: Option<String>) {
        let before = self.db.read(id);
        let _ = self.db.set(
            id,
            Some(Value::Enum(ordinal)),
            Quality::Ok,
            reason.as_deref(),
        );
        // Each status change is an event with its reason.
        if before.and_then(|s| s.value) != Some(Value::Enum(ordinal)) {
            if let Some(def) = self.db.def(id) {
                tracing::info!(
                    point = %def.id,
                    state = def.state_name(ordinal).unwrap_or("?"),
                    reason = reason.as_deref().unwrap_or(""),
                    "status changed"
                );
            }
        }
    }

    /// Runs every job at its period until shutdown. The first looks are
    /// taken at once; after them the jobs run on the process's 1-s grid,
    /// so the once-a-second ones expire with the point bridge's looks, and the
    /// task sleeps until the next job is due (it looked every 250 ms:
    /// three wake-ups a second for nothing).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let sec = Duration::from_secs(1);
        let start = Instant::now();
        let first = |after: Duration| crate::tasks::on_grid(start + after, sec);
        self.sample_mem();
        // The first network reading only primes the counters.
        self.sample_net();
        self.sample_uptime();
        self.sample_gpu();
        self.sample_disk();
        self.derive_statuses();
        // CPU usage needs two refreshes >= 200 ms apart: its first real
        // reading comes a second or more after start, the throughput's
        // half a second or more.
        let mut cpu = Job::new(self.period(self.ids.cpu, "cpu_usage"), first(sec));
        let pm = self.period(self.ids.mem, "memory_usage");
        let pn = self.period(self.ids.net, "network_throughput");
        let pu = self.period(self.ids.uptime, "uptime");
        let pg = self.period(self.ids.gpu, "gpu_usage");
        let mut mem = Job::new(pm, first(pm));
        let mut net = Job::new(pn, first(sec / 2));
        let mut up = Job::new(pu, first(pu));
        let mut gpu = Job::new(pg, first(pg));
        let disk_every = Duration::from_secs(30);
        let mut disk = Job::new(disk_every, first(disk_every));
        let mut statuses = Job::new(sec, first(Duration::ZERO));
        loop {
            let next = [&cpu, &mem, &net, &up, &gpu, &disk, &statuses]
                .iter()
                .map(|j| j.next)
                .min()
                .unwrap_or(start);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
            }
            let now = Instant::now();
            if cpu.due(now) {
                self.sample_cpu();
            }
            if mem.due(now) {
                self.sample_mem();
            }
            if net.due(now) {
                self.sample_net();
            }
            if up.due(now) {
                self.sample_uptime();
            }
            if gpu.due(now) {
                self.sample_gpu();
            }
            if disk.due(now) {
                self.sample_disk();
            }
            if statuses.due(now) {
                self.derive_statuses();
                self.db.expire(chrono::Utc::now());
            }
        }
    }
}

/// Opens the GPU source the config asks for.
pub fn gpu_source(cfg: &TelemetryConfig) -> Box<dyn GpuSource> {
    match cfg.gpu {
        GpuMode::None => Box::new(gpu::Disabled),
        GpuMode::Auto | GpuMode::Required => Box::new(gpu::Nvml::open(cfg.gpu_index)),
    }
}

#[cfg(test)]
mod tests;

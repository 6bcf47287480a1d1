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

use crate::config::{parse_duration, ConfigError};
use crate::points::{PointDb, PointId, Quality, Value};
use gpu::GpuSource;
use status::{GpuMode, GpuSample, MemoryGrowth, ServerInputs, Thresholds};

/// `[telemetry]` settings.
#[derive(Debug, Clone)]
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

impl TelemetryConfig {
    /// Parses the `[telemetry]` table; every error names `telemetry.<key>`.
    pub fn parse(file: &str, t: Option<&toml::Value>) -> Result<Self, Vec<ConfigError>> {
        let mut c = TelemetryConfig::default();
        let mut errs = Vec::new();
        let Some(t) = t else { return Ok(c) };
        let Some(t) = t.as_table() else {
            return Err(vec![ConfigError::new(
                file,
                "telemetry",
                "expected a table",
            )]);
        };
        let err = |k: &str, m: &str| ConfigError::new(file, format!("telemetry.{k}"), m);
        for (k, v) in t {
            let pct = |v: &toml::Value| {
                v.as_float()
                    .or_else(|| v.as_integer().map(|i| i as f64))
                    .filter(|x| (0.0..=200.0).contains(x))
            };
            match k.as_str() {
                "enabled" => match v.as_bool() {
                    Some(b) => c.enabled = b,
                    None => errs.push(err(k, "expected true or false")),
                },
                "gpu" => match v.as_str().and_then(GpuMode::parse) {
                    Some(m) => c.gpu = m,
                    None => errs.push(err(k, "expected \"auto\", \"required\" or \"none\"")),
                },
                "gpu_index" => match v.as_integer().and_then(|i| u32::try_from(i).ok()) {
                    Some(i) => c.gpu_index = i,
                    None => errs.push(err(k, "expected a GPU index >= 0")),
                },
                "interfaces" => match v.as_array() {
                    Some(a) if a.iter().all(|x| x.is_str()) => {
                        c.interfaces = a
                            .iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    }
                    _ => errs.push(err(k, "expected an array of interface names")),
                },
                "cpu_warn" | "cpu_fault" | "mem_warn" | "mem_fault" | "disk_warn"
                | "disk_fault" | "gpu_warn" | "gpu_temp_warn_c" | "gpu_temp_fault_c" => {
                    let Some(x) = pct(v) else {
                        errs.push(err(k, "expected a number 0..=200"));
                        continue;
                    };
                    let th = &mut c.thresholds;
                    match k.as_str() {
                        "cpu_warn" => th.cpu_warn = x,
                        "cpu_fault" => th.cpu_fault = x,
                        "mem_warn" => th.mem_warn = x,
                        "mem_fault" => th.mem_fault = x,
                        "disk_warn" => th.disk_warn = x,
                        "disk_fault" => th.disk_fault = x,
                        "gpu_warn" => th.gpu_warn = x,
                        "gpu_temp_warn_c" => th.gpu_temp_warn_c = x,
                        _ => th.gpu_temp_fault_c = x,
                    }
                }
                "leak_window" => match v.as_str().and_then(parse_duration) {
                    Some(d) if d >= Duration::from_secs(10) => c.leak_window = d,
                    _ => errs.push(err(k, "expected a duration of at least 10s")),
                },
                "leak_ratio" => match pct(v) {
                    Some(x) => c.leak_ratio = x,
                    None => errs.push(err(k, "expected a ratio such as 0.25")),
                },
                "leak_min_mib" => match v.as_integer().and_then(|i| u64::try_from(i).ok()) {
                    Some(x) => c.leak_min_mib = x,
                    None => errs.push(err(k, "expected MiB >= 0")),
                },
                "periods" => match v.as_table() {
                    Some(p) => {
                        for (pk, pv) in p {
                            match pv.as_str().and_then(parse_duration) {
                                Some(d) if d >= Duration::from_millis(200) => {
                                    c.periods.insert(pk.clone(), d);
                                }
                                _ => errs.push(err(
                                    &format!("periods.{pk}"),
                                    "expected a duration of at least 200ms",
                                )),
                            }
                        }
                    }
                    None => errs.push(err(k, "expected a table of point = \"duration\"")),
                },
                _ => errs.push(err(k, "unknown key")),
            }
        }
        if errs.is_empty() {
            Ok(c)
        } else {
            Err(errs)
        }
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

    /// Runs every job at its period until shutdown.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let now = Instant::now();
        // CPU usage needs two refreshes >= 200 ms apart; the first real
        // reading comes one second after start.
        let mut cpu = Job::new(
            self.period(self.ids.cpu, "cpu_usage"),
            now + Duration::from_secs(1),
        );
        let mut mem = Job::new(self.period(self.ids.mem, "memory_usage"), now);
        let mut net = Job::new(self.period(self.ids.net, "network_throughput"), now);
        let mut net_first = true;
        let mut up = Job::new(self.period(self.ids.uptime, "uptime"), now);
        let mut gpu = Job::new(self.period(self.ids.gpu, "gpu_usage"), now);
        let mut disk = Job::new(Duration::from_secs(30), now);
        let mut statuses = Job::new(Duration::from_secs(1), now);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
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
                if net_first {
                    // Give the throughput a real first value one second in,
                    // rather than waiting a whole period after priming.
                    net_first = false;
                    net.next = now + Duration::from_secs(1);
                }
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

//! GPU readings behind a small trait: NVML (loaded at run time by nvml-wrapper) on real machines, a fake in tests.

use super::status::GpuSample;

/// A source of GPU readings. `Err` carries a human reason (driver missing,
/// device lost) that ends up in the GPU points' status.
pub trait GpuSource: Send {
    fn sample(&mut self) -> Result<GpuSample, String>;
}

/// NVML through nvml-wrapper. The library is opened with `dlopen` at
/// start-up, so a machine without the NVIDIA driver (CI) gets an `Err`
/// here and nothing else fails.
pub struct Nvml {
    nvml: Result<nvml_wrapper::Nvml, String>,
    index: u32,
}

impl Nvml {
    pub fn open(index: u32) -> Self {
        Nvml {
            nvml: nvml_wrapper::Nvml::init().map_err(|e| format!("NVML unavailable: {e}")),
            index,
        }
    }
}

impl GpuSource for Nvml {
    fn sample(&mut self) -> Result<GpuSample, String> {
        let nvml = self.nvml.as_ref().map_err(Clone::clone)?;
        let dev = nvml
            .device_by_index(self.index)
            .map_err(|e| format!("GPU {} not found: {e}", self.index))?;
        let util = dev
            .utilization_rates()
            .map_err(|e| format!("GPU utilisation unreadable: {e}"))?;
        let mem = dev.memory_info().ok();
        let enc_stats = dev.encoder_stats().ok();
        Ok(GpuSample {
            name: dev.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
            util_pct: f64::from(util.gpu),
            mem_used_pct: mem
                .map(|m| {
                    if m.total == 0 {
                        0.0
                    } else {
                        m.used as f64 * 100.0 / m.total as f64
                    }
                })
                .unwrap_or(0.0),
            temp_c: dev
                .temperature(nvml_wrapper::enum_wrappers::device::TemperatureSensor::Gpu)
                .ok()
                .map(f64::from),
            encoder_util_pct: dev
                .encoder_utilization()
                .ok()
                .map(|u| f64::from(u.utilization)),
            encoder_sessions: enc_stats.as_ref().map(|s| s.session_count),
            // NVML reports the average encode latency in microseconds.
            encoder_latency_ms: enc_stats
                .filter(|s| s.session_count > 0)
                .map(|s| f64::from(s.average_latency) / 1000.0),
        })
    }
}

/// No GPU monitoring (`gpu = none`).
pub struct Disabled;

impl GpuSource for Disabled {
    fn sample(&mut self) -> Result<GpuSample, String> {
        Err("GPU monitoring disabled (gpu = none)".into())
    }
}

/// A scripted GPU for tests of the NVML-present path (CI has no GPU).
pub struct Fake {
    pub readings: std::collections::VecDeque<Result<GpuSample, String>>,
    pub last: Result<GpuSample, String>,
}

impl Fake {
    pub fn new(readings: Vec<Result<GpuSample, String>>) -> Self {
        Fake {
            readings: readings.into(),
            last: Err("no reading scripted".into()),
        }
    }
}

impl GpuSource for Fake {
    fn sample(&mut self) -> Result<GpuSample, String> {
        if let Some(r) = self.readings.pop_front() {
            self.last = r;
        }
        self.last.clone()
    }
}

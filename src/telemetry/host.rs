//! Host readings: CPU, memory, own RSS and network byte counters through sysinfo, and the data dir's disk usage through statvfs, each refreshed only when sampled.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sysinfo::{Networks, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// Host probes. Each `*_pct`/`*_gbps` call refreshes only what it reads:
/// sysinfo's full refresh costs ~5 ms, the targeted ones 15-600 µs.
pub struct Host {
    sys: Option<System>,
    nets: Option<Networks>,
    pid: Option<Pid>,
    interfaces: Vec<String>,
    last_net: Option<(Instant, u64)>,
    disk_path: PathBuf,
}

impl Host {
    /// `interfaces` empty = every non-loopback interface.
    pub fn new(interfaces: Vec<String>, disk_path: PathBuf) -> Self {
        let mut sys = System::new().ok();
        if let Some(s) = sys.as_mut() {
            // Prime the CPU counters: usage is a delta between two refreshes.
            s.refresh_cpu_usage();
        }
        Host {
            sys,
            nets: Networks::new_with_refreshed_list().ok(),
            pid: sysinfo::get_current_pid().ok(),
            interfaces,
            last_net: None,
            disk_path,
        }
    }

    /// Global CPU usage in percent since the previous call (callers keep
    /// at least 200 ms between calls, sysinfo's minimum).
    pub fn cpu_pct(&mut self) -> Result<f64, String> {
        let s = self.sys.as_mut().ok_or("system information unavailable")?;
        s.refresh_cpu_usage();
        Ok(f64::from(s.global_cpu_usage()).clamp(0.0, 100.0))
    }

    /// Used memory in percent of total (used = total - available, as `free` shows).
    pub fn mem_pct(&mut self) -> Result<f64, String> {
        let s = self.sys.as_mut().ok_or("system information unavailable")?;
        s.refresh_memory();
        let total = s.total_memory();
        if total == 0 {
            return Err("total memory reads as 0".into());
        }
        let used = total.saturating_sub(s.available_memory());
        Ok(used as f64 * 100.0 / total as f64)
    }

    /// Resident memory of this process in bytes.
    pub fn own_rss(&mut self) -> Option<u64> {
        let pid = self.pid?;
        let s = self.sys.as_mut()?;
        s.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            false,
            ProcessRefreshKind::nothing().with_memory(),
        );
        s.process(pid).map(|p| p.memory())
    }

    /// Network throughput (received + transmitted) in Gbit/s since the
    /// previous call, from byte-counter deltas. `Ok(None)` on the first call.
    pub fn net_gbps(&mut self) -> Result<Option<f64>, String> {
        let nets = self.nets.as_mut().ok_or("network counters unavailable")?;
        nets.refresh(true);
        let mut bytes = 0u64;
        let mut any = false;
        for (name, data) in nets.iter() {
            let name = name.to_string_lossy();
            if self.interfaces.is_empty() && name.starts_with("lo") {
                continue;
            }
            if !self.interfaces.is_empty() && !self.interfaces.iter().any(|i| *i == name) {
                continue;
            }
            any = true;
            bytes = bytes.saturating_add(
                data.total_received()
                    .saturating_add(data.total_transmitted()),
            );
        }
        if !any {
            return Err(if self.interfaces.is_empty() {
                "no non-loopback network interface".into()
            } else {
                format!("none of the interfaces {:?} exists", self.interfaces)
            });
        }
        let now = Instant::now();
        let prev = self.last_net.replace((now, bytes));
        Ok(prev.and_then(|(t0, b0)| {
            let dt = now.duration_since(t0).as_secs_f64();
            (dt > 0.0).then(|| bytes.saturating_sub(b0) as f64 * 8.0 / dt / 1e9)
        }))
    }

    /// Usage in percent of the filesystem holding `disk_path` (the data dir).
    pub fn disk_pct(&self) -> Option<f64> {
        disk_usage_pct(&self.disk_path)
    }
}

/// Usage in percent of the filesystem `path` is on, as `df` reports it:
/// used / (used + available to unprivileged users). statvfs on the path
/// itself asks the kernel for that path's filesystem, whatever it is (a
/// tmpfs, a bind mount, a mount sysinfo does not list); None when the path
/// cannot be queried.
pub fn disk_usage_pct(path: &Path) -> Option<f64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let used = s.blocks().saturating_sub(s.blocks_free());
    let usable = used.saturating_add(s.blocks_available());
    (usable > 0).then(|| used as f64 * 100.0 / usable as f64)
}

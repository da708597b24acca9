//! Device health from the GPU backend's events, the way NVIDIA's plugin judges them (XID
//! critical errors and double-bit ECC make a GPU Unhealthy; the application-level XIDs 13, 31,
//! 43, 45, 68 and 109 are a crashing program's fault, not the GPU's, and are ignored), plus what
//! NVIDIA's plugin lacks: a way back. An Unhealthy GPU is re-probed on every poll and returns to
//! Healthy once it answers queries again and no critical event has come for a quiet period.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::devices::{DeviceTable, Health};
use crate::gpu::{GpuBackend, HealthEvent};

/// A GPU backend shared between the health monitor and the clock control path.
/// Built from an `Arc<Mutex<SimGpu>>` or any other backend by unsized coercion, so a test can
/// keep a typed handle to the same device.
pub type SharedGpu = Arc<Mutex<dyn GpuBackend + Send>>;

/// The UUID of a shared GPU (a poisoned lock still holds a readable backend).
pub fn shared_uuid(gpu: &SharedGpu) -> String {
    gpu.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .info()
        .uuid
        .clone()
}

/// XIDs NVIDIA's device plugin treats as application errors (`internal/rm/health.go`).
pub const APPLICATION_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    /// XIDs that do not make a GPU Unhealthy.
    pub ignored_xids: BTreeSet<u64>,
    /// All health checks off: devices stay Healthy (for GPUs too old for events).
    pub disabled: bool,
    /// How long a GPU must answer queries with no critical event before it is Healthy again.
    pub recovery_quiet: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            ignored_xids: APPLICATION_XIDS.into_iter().collect(),
            disabled: false,
            recovery_quiet: Duration::from_secs(30),
        }
    }
}

impl HealthPolicy {
    /// Applies NVIDIA-style switches: `disable` is `all` (no health checks), `xids` (ignore every
    /// XID) or a comma list of further XIDs to ignore; `enable` is a comma list of XIDs to watch
    /// even though they are ignored by default. Unparsable entries are an error.
    pub fn with_switches(mut self, disable: &str, enable: &str) -> Result<Self, String> {
        for item in disable.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.to_ascii_lowercase().as_str() {
                "all" => self.disabled = true,
                "xids" => {
                    self.ignored_xids = (0..=u64::from(u16::MAX)).collect();
                }
                n => {
                    let code = n
                        .parse::<u64>()
                        .map_err(|_| format!("'{item}' is not an XID, 'xids' or 'all'"))?;
                    self.ignored_xids.insert(code);
                }
            }
        }
        for item in enable.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let code = item
                .parse::<u64>()
                .map_err(|_| format!("'{item}' is not an XID"))?;
            self.ignored_xids.remove(&code);
        }
        Ok(self)
    }

    /// Whether an event makes the GPU Unhealthy.
    pub fn is_critical(&self, event: &HealthEvent) -> bool {
        if self.disabled {
            return false;
        }
        match event {
            HealthEvent::Xid { code, .. } => !self.ignored_xids.contains(code),
            HealthEvent::DoubleBitEcc { .. } | HealthEvent::Lost { .. } => true,
            // Corrected by the hardware: worth a metric, not a drain.
            HealthEvent::SingleBitEcc { .. } => false,
        }
    }
}

/// Polls every GPU's events and writes health into the device table.
pub struct HealthMonitor {
    table: DeviceTable,
    gpus: Vec<SharedGpu>,
    policy: HealthPolicy,
    last_critical: HashMap<String, Instant>,
}

impl HealthMonitor {
    pub fn new(table: DeviceTable, gpus: Vec<SharedGpu>, policy: HealthPolicy) -> Self {
        Self {
            table,
            gpus,
            policy,
            last_critical: HashMap::new(),
        }
    }

    /// One pass over every GPU at `now`; returns the health changes it made.
    pub fn poll_once(&mut self, now: Instant) -> Vec<(String, Health)> {
        let mut changes = Vec::new();
        for gpu in &self.gpus {
            let mut g = gpu.lock().unwrap_or_else(PoisonError::into_inner);
            let uuid = g.info().uuid.clone();
            let critical = match g.poll_health_events() {
                Ok(events) => {
                    for e in events.iter().filter(|e| !self.policy.is_critical(e)) {
                        tracing::debug!(%uuid, event = ?e, "ignored GPU event");
                    }
                    events.iter().find(|e| self.policy.is_critical(e)).cloned()
                }
                // An event wait that fails means the GPU cannot be watched: NVIDIA's plugin
                // marks it Unhealthy too.
                Err(e) if !self.policy.disabled => Some(HealthEvent::Lost { at_s: g.now_s() })
                    .inspect(|_| tracing::debug!(%uuid, error = %e, "health event poll failed")),
                Err(_) => None,
            };
            let health = if let Some(event) = critical {
                self.last_critical.insert(uuid.clone(), now);
                if self.table.get(&uuid).map(|d| d.health) == Some(Health::Healthy) {
                    tracing::warn!(%uuid, ?event, "GPU marked Unhealthy");
                }
                Health::Unhealthy
            } else if self.table.get(&uuid).map(|d| d.health) == Some(Health::Unhealthy) {
                let quiet = self.last_critical.get(&uuid).is_none_or(|t| {
                    now.saturating_duration_since(*t) >= self.policy.recovery_quiet
                });
                // The re-probe: the GPU must answer a query, not just stay silent.
                if quiet && g.clocks().is_ok() {
                    tracing::info!(%uuid, "GPU answers again after a quiet period: Healthy");
                    Health::Healthy
                } else {
                    Health::Unhealthy
                }
            } else {
                Health::Healthy
            };
            drop(g);
            if self.table.set_health(&uuid, health) {
                changes.push((uuid, health));
            }
        }
        changes
    }

    /// Polls every `every` until `shutdown` completes.
    pub async fn run(mut self, every: Duration, shutdown: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => { self.poll_once(Instant::now()); }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deviceplugin::devices::PluginDevice;
    use crate::gpu::sim::{Fault, GpuProfile, SimGpu};

    fn setup(quiet: Duration) -> (HealthMonitor, Arc<Mutex<SimGpu>>, String) {
        let profile = GpuProfile::builtin("v100-sxm2").expect("built-in profile");
        let gpu = SimGpu::new(profile, 0, 7);
        let uuid = gpu.info().uuid.clone();
        let table = DeviceTable::new(vec![PluginDevice::from_info(gpu.info())]);
        let typed = Arc::new(Mutex::new(gpu));
        let shared: SharedGpu = typed.clone();
        let policy = HealthPolicy {
            recovery_quiet: quiet,
            ..HealthPolicy::default()
        };
        (HealthMonitor::new(table, vec![shared], policy), typed, uuid)
    }

    fn inject(g: &Mutex<SimGpu>, f: Fault) {
        g.lock().unwrap().inject_fault(f);
    }

    #[test]
    fn application_xids_are_ignored_and_critical_ones_are_not() {
        let (mut mon, g, uuid) = setup(Duration::from_secs(5));
        let t0 = Instant::now();
        for code in APPLICATION_XIDS {
            inject(&g, Fault::Xid(code));
        }
        assert!(mon.poll_once(t0).is_empty());
        inject(&g, Fault::Xid(48));
        assert_eq!(mon.poll_once(t0), vec![(uuid.clone(), Health::Unhealthy)]);
        // Quiet period not over yet: stays Unhealthy.
        assert!(mon.poll_once(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(
            mon.poll_once(t0 + Duration::from_secs(5)),
            vec![(uuid, Health::Healthy)]
        );
    }

    #[test]
    fn a_lost_gpu_recovers_only_once_it_answers_again() {
        let (mut mon, g, uuid) = setup(Duration::ZERO);
        let t0 = Instant::now();
        inject(&g, Fault::Lost);
        assert_eq!(mon.poll_once(t0), vec![(uuid.clone(), Health::Unhealthy)]);
        assert!(mon.poll_once(t0 + Duration::from_secs(60)).is_empty());
        g.lock().unwrap().clear_faults();
        assert_eq!(
            mon.poll_once(t0 + Duration::from_secs(61)),
            vec![(uuid, Health::Healthy)]
        );
    }

    #[test]
    fn switches_parse_like_nvidia_env_vars() {
        let p = HealthPolicy::default()
            .with_switches("48, 79", "13")
            .unwrap();
        assert!(p.ignored_xids.contains(&48) && p.ignored_xids.contains(&79));
        assert!(!p.ignored_xids.contains(&13));
        assert!(p.is_critical(&HealthEvent::Xid {
            code: 13,
            at_s: 0.0
        }));
        let off = HealthPolicy::default().with_switches("all", "").unwrap();
        assert!(!off.is_critical(&HealthEvent::DoubleBitEcc { at_s: 0.0 }));
        assert!(HealthPolicy::default().with_switches("x1", "").is_err());
    }
}

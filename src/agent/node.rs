//! The agent's node side put together: the device plugin and control sockets
//! ([`crate::control::run_node_with`]), a telemetry loop (samples every GPU, attributes the
//! pods' unit timings, keeps the metric families current, holds each serving pod's last window
//! with the GPU energy measured over it), a release watcher (resets the clocks of GPUs their pod
//! let go) and, every `status_every`, a per-GPU summary handed to a [`NodeStatusSink`] (the
//! per-node InferenceService status writer plugs in there).
//!
//! Clock recovery (resetting what a previous agent left locked) happens before this runs: the
//! caller starts the [`ClockGuard`] first, so nothing here touches a GPU before its clocks are
//! restored.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, watch};

use super::AgentError;
use super::energy::{EnergyConfig, GpuEnergy, SeriesTable, ServiceEnergy};
use super::http::Readiness;
use super::metrics::AgentMetrics;
use super::release::{ReleasePoll, ReleaseWatcher};
use crate::control::{
    AttributedTiming, AttributedWindow, Authorizer, NodeConfig, NodeHooks, PodName,
    node::devices_of, proto::ServingWindow, run_node_with,
};
use crate::deviceplugin::{DeviceTable, Health, SharedGpu};
use crate::gpu::clockguard::ClockGuard;

#[derive(Debug, Clone)]
pub struct AgentNodeConfig {
    pub node: NodeConfig,
    pub energy: EnergyConfig,
    /// GPU sampling period (energy counter, power, clocks).
    pub sample_every: Duration,
    /// Pod-resources polling period of the release watcher.
    pub release_every: Duration,
    /// Period of the per-node status summaries.
    pub status_every: Duration,
}

impl Default for AgentNodeConfig {
    fn default() -> Self {
        Self {
            node: NodeConfig::default(),
            energy: EnergyConfig::default(),
            sample_every: Duration::from_millis(50),
            release_every: Duration::from_millis(500),
            status_every: Duration::from_secs(10),
        }
    }
}

/// One GPU as the per-node status shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSummary {
    pub uuid: String,
    pub index: u32,
    pub name: String,
    pub healthy: bool,
    pub holders: Vec<PodName>,
    pub graphics_mhz: u32,
    pub locked: Option<(u32, u32)>,
    pub power_w: f64,
    /// Energy counted since the agent started (J).
    pub energy_j: f64,
    /// Energy attributed to the holding pods' models so far (J).
    pub services: Vec<ServiceEnergy>,
    /// The holding pods' last serving windows (fresh ones only).
    pub windows: Vec<PodWindow>,
}

/// A serving pod's last window as the agent holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodWindow {
    pub pod: PodName,
    pub window: ServingWindow,
    /// The GPU's energy counter over the window (J): the difference between its readings when
    /// this window and the pod's previous one arrived. `None` for a pod's first window, or when
    /// the previous one is too old to bound this one.
    pub measured_energy_j: Option<f64>,
}

/// A window is dropped from the summaries once this many of its lengths have passed without a
/// newer one (the pod stopped reporting), and it bounds the next window's measured energy only
/// if that arrives within this many lengths.
const WINDOW_KEEP: f64 = 3.0;

/// Receives the per-GPU summaries (the per-node InferenceService status writer).
pub trait NodeStatusSink: Send + Sync + 'static {
    fn publish<'a>(&'a self, gpus: &'a [GpuSummary]) -> BoxFuture<'a, ()>;
}

struct Sample {
    uuid: String,
    t_s: f64,
    energy_mj: Option<u64>,
    power_w: Option<f64>,
    graphics_mhz: Option<u32>,
    locked: Option<(u32, u32)>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn sample_all(gpus: &[SharedGpu]) -> Vec<Sample> {
    gpus.iter()
        .map(|g| {
            let g = g.lock().unwrap_or_else(PoisonError::into_inner);
            let energy_mj = g.energy_mj().ok();
            let t_s = unix_now();
            let clocks = g.clocks().ok();
            Sample {
                uuid: g.info().uuid.clone(),
                t_s,
                energy_mj,
                power_w: g.power().ok().map(|p| p.watts),
                graphics_mhz: clocks.map(|c| c.graphics_mhz),
                locked: clocks.and_then(|c| c.locked),
            }
        })
        .collect()
}

/// Completes when the flag is set or its sender is gone.
async fn until(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// State of the telemetry loop.
struct Telemetry {
    gpus: Vec<SharedGpu>,
    info: Vec<(String, u32, String)>,
    table: DeviceTable,
    metrics: AgentMetrics,
    cfg: EnergyConfig,
    series: SeriesTable,
    energy: HashMap<String, GpuEnergy>,
    holders: HashMap<String, Vec<PodName>>,
    last: HashMap<String, Sample>,
    /// Last window per (GPU, pod), with the GPU energy total (J) and Unix time at its arrival.
    windows: HashMap<(String, PodName), (PodWindow, f64, f64)>,
}

impl Telemetry {
    async fn sample(&mut self) {
        let gpus = self.gpus.clone();
        let Ok(samples) = tokio::task::spawn_blocking(move || sample_all(&gpus)).await else {
            return;
        };
        for s in samples {
            let gpu = s.uuid.as_str();
            if let Some(w) = s.power_w {
                self.metrics.gpu_power.with_label_values(&[gpu]).set(w);
            }
            if let Some(f) = s.graphics_mhz {
                self.metrics
                    .clock_actual
                    .with_label_values(&[gpu])
                    .set(f64::from(f) * 1e6);
            }
            let target = s.locked.map_or(0.0, |l| f64::from(l.1) * 1e6);
            self.metrics
                .clock_target
                .with_label_values(&[gpu])
                .set(target);
            let healthy = self
                .table
                .get(gpu)
                .is_some_and(|d| d.health == Health::Healthy);
            self.metrics
                .gpu_healthy
                .with_label_values(&[gpu])
                .set(i64::from(healthy));
            if let (Some(e), Some(energy)) = (s.energy_mj, self.energy.get_mut(gpu)) {
                energy.reading(s.t_s, e, s.power_w.unwrap_or(0.0), &self.metrics);
                energy.process(s.t_s, &self.series, &self.metrics);
            }
            self.last.insert(s.uuid.clone(), s);
        }
    }

    fn timing(&mut self, t: &AttributedTiming) {
        let Some(e) = self.energy.get_mut(&t.gpu_uuid) else {
            return;
        };
        e.timing(t, &mut self.series, &self.metrics);
    }

    fn window(&mut self, w: AttributedWindow) {
        let now = unix_now();
        let energy_j = self
            .metrics
            .gpu_energy
            .with_label_values(&[&w.gpu_uuid])
            .get();
        self.metrics.window(&w.pod, &w.window);
        let key = (w.gpu_uuid, w.pod);
        let measured_energy_j = self.windows.get(&key).and_then(|(_, e, at)| {
            (now - at <= WINDOW_KEEP * w.window.window_s).then_some((energy_j - e).max(0.0))
        });
        let pod = PodWindow {
            pod: key.1.clone(),
            window: w.window,
            measured_energy_j,
        };
        self.windows.insert(key, (pod, energy_j, now));
    }

    fn released(&mut self, poll: ReleasePoll) {
        let metrics = &self.metrics;
        self.windows.retain(|(gpu, pod), (w, _, _)| {
            let gone = poll.released.iter().any(|(g, p)| g == gpu && p == pod);
            if gone {
                metrics.forget_window(pod, &w.window.inference_service);
            }
            !gone
        });
        for (gpu, pod) in &poll.released {
            if let Some(e) = self.energy.get_mut(gpu) {
                e.forget_pod(pod);
            }
            // A pod can hold several GPUs: keep its series while it holds any.
            let still = poll.holders.values().any(|h| h.contains(pod));
            if !still {
                self.series.remove_pod(pod, &self.metrics);
            }
        }
        self.holders = poll.holders;
    }

    fn fresh_windows(&self, gpu: &str) -> Vec<PodWindow> {
        let now = unix_now();
        let mut out: Vec<PodWindow> = self
            .windows
            .iter()
            .filter(|((g, _), (w, _, at))| {
                g == gpu && now - at <= WINDOW_KEEP * w.window.window_s.max(1.0)
            })
            .map(|(_, (w, _, _))| w.clone())
            .collect();
        out.sort_by_key(|w| w.pod.to_string());
        out
    }

    fn summaries(&self) -> Vec<GpuSummary> {
        self.info
            .iter()
            .map(|(uuid, index, name)| {
                let s = self.last.get(uuid);
                GpuSummary {
                    uuid: uuid.clone(),
                    index: *index,
                    name: name.clone(),
                    healthy: self
                        .table
                        .get(uuid)
                        .is_some_and(|d| d.health == Health::Healthy),
                    holders: self.holders.get(uuid).cloned().unwrap_or_default(),
                    graphics_mhz: s.and_then(|s| s.graphics_mhz).unwrap_or(0),
                    locked: s.and_then(|s| s.locked),
                    power_w: s.and_then(|s| s.power_w).unwrap_or(0.0),
                    energy_j: self.metrics.gpu_energy.with_label_values(&[uuid]).get(),
                    services: self
                        .energy
                        .get(uuid)
                        .map(GpuEnergy::services)
                        .unwrap_or_default(),
                    windows: self.fresh_windows(uuid),
                }
            })
            .collect()
    }
}

/// Runs the node side until `shutdown`; `ready` turns Ready once the plugin has registered.
#[allow(clippy::too_many_arguments)]
pub async fn run_agent_node(
    cfg: AgentNodeConfig,
    gpus: Vec<SharedGpu>,
    guard: Arc<ClockGuard>,
    authz: Arc<Authorizer>,
    metrics: AgentMetrics,
    ready: watch::Sender<Readiness>,
    status: Option<Arc<dyn NodeStatusSink>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let table = DeviceTable::new(devices_of(&gpus));
    let info: Vec<(String, u32, String)> = gpus
        .iter()
        .map(|g| {
            let g = g.lock().unwrap_or_else(PoisonError::into_inner);
            let i = g.info();
            (i.uuid.clone(), i.index, i.name.clone())
        })
        .collect();
    let (stop, stop_rx) = watch::channel(false);

    // Readiness follows the plugin's registration with the kubelet.
    let (registered, mut registered_rx) = watch::channel(false);
    let _ = ready.send(Readiness::NotReady(
        "device plugin not registered with the kubelet yet".into(),
    ));
    tokio::spawn(async move {
        while registered_rx.changed().await.is_ok() {
            let r = if *registered_rx.borrow() {
                Readiness::Ready
            } else {
                Readiness::NotReady("device plugin not registered with the kubelet".into())
            };
            let _ = ready.send(r);
        }
    });

    // The release watcher: its polls go to the telemetry loop.
    let (polls_tx, mut polls) = mpsc::unbounded_channel::<ReleasePoll>();
    let mut watcher = ReleaseWatcher::new(&gpus, guard.clone(), authz.clone(), metrics.clone());
    let release_every = cfg.release_every;
    let release_stop = until(stop_rx.clone());
    let release = tokio::spawn(async move {
        tokio::pin!(release_stop);
        let mut tick = tokio::time::interval(release_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = &mut release_stop => return,
                _ = tick.tick() => {}
            }
            match tokio::time::timeout(Duration::from_secs(5), watcher.poll()).await {
                Ok(Ok(p)) => {
                    failing = false;
                    if polls_tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "pod-resources unreadable: no release checks until it answers");
                }
                Err(_) if !failing => {
                    failing = true;
                    tracing::warn!("pod-resources List timed out");
                }
                _ => {}
            }
        }
    });

    let (timings_tx, mut timings) = mpsc::unbounded_channel::<AttributedTiming>();
    let (windows_tx, mut windows) = mpsc::unbounded_channel::<AttributedWindow>();
    let mut tel = Telemetry {
        gpus: gpus.clone(),
        energy: info
            .iter()
            .map(|(u, _, _)| (u.clone(), GpuEnergy::new(u, &cfg.energy)))
            .collect(),
        info,
        table: table.clone(),
        metrics: metrics.clone(),
        series: SeriesTable::new(&cfg.energy),
        cfg: cfg.energy.clone(),
        holders: HashMap::new(),
        last: HashMap::new(),
        windows: HashMap::new(),
    };
    let (sample_every, status_every) = (cfg.sample_every, cfg.status_every);
    let tel_stop = until(stop_rx.clone());
    let telemetry = tokio::spawn(async move {
        tokio::pin!(tel_stop);
        let mut sample = tokio::time::interval(sample_every);
        sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut report = tokio::time::interval(status_every);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut tel_stop => return,
                _ = sample.tick() => tel.sample().await,
                Some(t) = timings.recv() => tel.timing(&t),
                Some(w) = windows.recv() => tel.window(w),
                Some(p) = polls.recv() => tel.released(p),
                _ = report.tick() => {
                    if let Some(sink) = &status {
                        let s = tel.summaries();
                        sink.publish(&s).await;
                    }
                }
            }
        }
    });

    let hooks = NodeHooks {
        timings: Some(timings_tx),
        windows: Some(windows_tx),
        clock_observer: Some(Arc::new(metrics.clone())),
        table: Some(table),
        registered: Some(registered),
    };
    let result = run_node_with(cfg.node, gpus, guard, authz, hooks, shutdown).await;
    let _ = stop.send(true);
    let _ = release.await;
    let _ = telemetry.await;
    result.map_err(AgentError::Node)
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("gpus", &self.info)
            .field("series", &self.series.len())
            .field("lag_s", &self.cfg.lag_s)
            .finish()
    }
}

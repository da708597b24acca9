//! The per-node runtime the agent starts on a GPU node: the device table and its health
//! monitor, the device plugin (registration and re-registration), and one control server per
//! GPU at the path Allocate mounts. On shutdown the control servers stop, the plugin removes its
//! socket, and every clock this agent locked is reset through the clock guard.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::ControlError;
use super::authz::Authorizer;
use super::service::{
    AttributedTiming, AttributedWindow, ClockObserver, ControlServer, ControlService,
};
use crate::deviceplugin::{
    AllocateConfig, DevicePluginRunner, DeviceTable, HealthMonitor, HealthPolicy, PluginConfig,
    PluginDevice, SharedGpu,
};
use crate::gpu::clockguard::ClockGuard;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub plugin: PluginConfig,
    pub alloc: AllocateConfig,
    pub health: HealthPolicy,
    pub health_every: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            plugin: PluginConfig::default(),
            alloc: AllocateConfig::default(),
            health: HealthPolicy::default(),
            // NVIDIA's plugin waits on events with a 5 s timeout; polling at 1 s reports sooner.
            health_every: Duration::from_secs(1),
        }
    }
}

/// Completes when the flag is set or its sender is gone.
async fn until(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// What the agent plugs into the node runtime beyond the defaults: where unit timings and serving
/// windows go, who hears of clock set-calls, the device table it wants to read health from, and
/// a flag raised once the plugin has registered with the kubelet (readiness).
#[derive(Default)]
pub struct NodeHooks {
    pub timings: Option<mpsc::UnboundedSender<AttributedTiming>>,
    pub windows: Option<mpsc::UnboundedSender<AttributedWindow>>,
    pub clock_observer: Option<Arc<dyn ClockObserver>>,
    pub table: Option<DeviceTable>,
    pub registered: Option<watch::Sender<bool>>,
}

/// Runs the node's device plugin and control sockets until `shutdown` completes.
pub async fn run_node(
    cfg: NodeConfig,
    gpus: Vec<SharedGpu>,
    guard: Arc<ClockGuard>,
    authz: Arc<Authorizer>,
    timings: Option<mpsc::UnboundedSender<AttributedTiming>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ControlError> {
    let hooks = NodeHooks {
        timings,
        ..NodeHooks::default()
    };
    run_node_with(cfg, gpus, guard, authz, hooks, shutdown).await
}

/// [`run_node`] with the agent's hooks.
pub async fn run_node_with(
    cfg: NodeConfig,
    gpus: Vec<SharedGpu>,
    guard: Arc<ClockGuard>,
    authz: Arc<Authorizer>,
    hooks: NodeHooks,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ControlError> {
    let table = hooks
        .table
        .unwrap_or_else(|| DeviceTable::new(devices_of(&gpus)));
    tracing::info!(
        gpus = ?table.snapshot().iter().map(|d| d.uuid.clone()).collect::<Vec<_>>(),
        resource = %cfg.plugin.resource_name,
        "starting device plugin"
    );
    let (stop, stop_rx) = watch::channel(false);

    let mut servers = Vec::new();
    for g in &gpus {
        let mut svc = ControlService::new(
            g.clone(),
            guard.clone(),
            authz.clone(),
            hooks.timings.clone(),
        );
        if let Some(o) = &hooks.clock_observer {
            svc = svc.with_clock_observer(o.clone());
        }
        if let Some(w) = &hooks.windows {
            svc = svc.with_windows(w.clone());
        }
        svc = svc.with_health(table.clone());
        let uuid = crate::deviceplugin::health::shared_uuid(g);
        servers.push(ControlServer::spawn(&cfg.alloc.host_socket(&uuid), svc)?);
    }
    let monitor = HealthMonitor::new(table.clone(), gpus, cfg.health.clone());
    let monitor = tokio::spawn(monitor.run(cfg.health_every, until(stop_rx.clone())));
    let runner = DevicePluginRunner::new(cfg.plugin.clone(), table, cfg.alloc.clone());
    if let Some(flag) = hooks.registered {
        let mut stats = runner.stats();
        tokio::spawn(async move {
            while stats.changed().await.is_ok() {
                let up = stats.borrow().registrations > 0;
                flag.send_if_modified(|v| std::mem::replace(v, up) != up);
            }
        });
    }
    let plugin = tokio::spawn(runner.run(until(stop_rx)));

    shutdown.await;
    let _ = stop.send(true);
    let plugin_result = plugin
        .await
        .map_err(|e| ControlError::Task(format!("device plugin: {e}")));
    let _ = monitor.await;
    for s in servers {
        s.shutdown().await;
    }
    let report = guard.reset_all();
    tracing::info!(
        reset = report.reset.len(),
        failed = report.failed.len(),
        "clocks reset on exit"
    );
    plugin_result?.map_err(ControlError::Socket)
}

/// The plugin's view of `gpus` (all Healthy to start with).
pub fn devices_of(gpus: &[SharedGpu]) -> Vec<PluginDevice> {
    gpus.iter()
        .map(|g| PluginDevice::from_info(g.lock().unwrap_or_else(PoisonError::into_inner).info()))
        .collect()
}

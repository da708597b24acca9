//! The per-node runtime the agent starts on a GPU node: the device table and its health
//! monitor, the device plugin (registration and re-registration), and one control server per
//! GPU at the path Allocate mounts. On shutdown the control servers stop, the plugin removes its
//! socket, and every clock this agent locked is reset through the clock guard.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::ControlError;
use super::authz::Authorizer;
use super::service::{AttributedTiming, ControlServer, ControlService};
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

/// Runs the node's device plugin and control sockets until `shutdown` completes.
pub async fn run_node(
    cfg: NodeConfig,
    gpus: Vec<SharedGpu>,
    guard: Arc<ClockGuard>,
    authz: Arc<Authorizer>,
    timings: Option<mpsc::UnboundedSender<AttributedTiming>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ControlError> {
    let devices: Vec<PluginDevice> = gpus
        .iter()
        .map(|g| PluginDevice::from_info(g.lock().unwrap_or_else(PoisonError::into_inner).info()))
        .collect();
    tracing::info!(
        gpus = ?devices.iter().map(|d| &d.uuid).collect::<Vec<_>>(),
        resource = %cfg.plugin.resource_name,
        "starting device plugin"
    );
    let table = DeviceTable::new(devices);
    let (stop, stop_rx) = watch::channel(false);

    let mut servers = Vec::new();
    for g in &gpus {
        let svc = ControlService::new(g.clone(), guard.clone(), authz.clone(), timings.clone());
        let uuid = g
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .info()
            .uuid
            .clone();
        servers.push(ControlServer::spawn(&cfg.alloc.host_socket(&uuid), svc)?);
    }
    let monitor = HealthMonitor::new(table.clone(), gpus, cfg.health.clone());
    let monitor = tokio::spawn(monitor.run(cfg.health_every, until(stop_rx.clone())));
    let runner = DevicePluginRunner::new(cfg.plugin.clone(), table, cfg.alloc.clone());
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

//! The plugin's life cycle: serve the `DevicePlugin` service on our socket, register with the
//! kubelet (retrying with backoff: on node boot the kubelet may report started before its socket
//! exists), then watch for the three things that mean "register again": `kubelet.sock` replaced
//! (a kubelet restart, which also wipes our socket), our socket removed, or the kubelet's
//! ListAndWatch stream dropped without a new one. Each restart rebuilds the server from scratch,
//! as NVIDIA's plugin does. The socket is removed on shutdown.
//!
//! The directory is watched by polling the socket's (device, inode) pair every `watch_every`
//! (100 ms by default): one `stat` per period, no inotify dependency, and well inside the 2 s
//! re-registration budget.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::transport::Server;

use super::devices::DeviceTable;
use super::proto::device_plugin_server::DevicePluginServer;
use super::proto::registration_client::RegistrationClient;
use super::service::{AllocateConfig, PluginService, StreamTracker, plugin_options};
use super::{API_VERSION, DEVICE_PLUGIN_PATH, DevicePluginError, KUBELET_SOCKET, RESOURCE_NAME};
use super::{proto, uds};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// The kubelet's device plugin directory (holds `kubelet.sock` and our socket).
    pub plugin_dir: PathBuf,
    /// Our socket's file name in that directory (what Register's `endpoint` carries).
    pub socket_name: String,
    pub resource_name: String,
    pub watch_every: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long after the kubelet's ListAndWatch stream ends without a new one before we
    /// register again (a kubelet replacing its stream opens the new one at once).
    pub stream_drop_grace: Duration,
    pub register_timeout: Duration,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            plugin_dir: PathBuf::from(DEVICE_PLUGIN_PATH),
            socket_name: "eali-gpu.sock".into(),
            resource_name: RESOURCE_NAME.into(),
            watch_every: Duration::from_millis(100),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            stream_drop_grace: Duration::from_secs(1),
            register_timeout: Duration::from_secs(5),
        }
    }
}

impl PluginConfig {
    pub fn socket_path(&self) -> PathBuf {
        self.plugin_dir.join(&self.socket_name)
    }
    pub fn kubelet_socket(&self) -> PathBuf {
        self.plugin_dir.join(KUBELET_SOCKET)
    }
}

/// Why the plugin registered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    KubeletSocketReplaced,
    OwnSocketRemoved,
    StreamDropped,
}

/// Counters for logs, metrics and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunnerStats {
    pub registrations: u64,
    pub failed_attempts: u64,
    pub last_registered: Option<Instant>,
    pub last_restart: Option<RestartReason>,
}

pub struct DevicePluginRunner {
    cfg: PluginConfig,
    table: DeviceTable,
    alloc: AllocateConfig,
    stats: watch::Sender<RunnerStats>,
}

/// (device, inode) of a file: changes when the file is replaced.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

enum Outcome {
    Shutdown,
    Restart(RestartReason),
}

impl DevicePluginRunner {
    pub fn new(cfg: PluginConfig, table: DeviceTable, alloc: AllocateConfig) -> Self {
        let (stats, _) = watch::channel(RunnerStats::default());
        Self {
            cfg,
            table,
            alloc,
            stats,
        }
    }

    pub fn stats(&self) -> watch::Receiver<RunnerStats> {
        self.stats.subscribe()
    }

    /// Runs until `shutdown` completes; then stops the server and removes the socket.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), DevicePluginError> {
        if !self.cfg.resource_name.contains('/') {
            return Err(DevicePluginError::Config(format!(
                "resource name {} is not a qualified extended resource (domain/name)",
                self.cfg.resource_name
            )));
        }
        tokio::pin!(shutdown);
        loop {
            let socket = self.cfg.socket_path();
            let listener = uds::bind(&socket)?;
            let (stop_tx, stop_rx) = watch::channel(false);
            let streams = Arc::new(StreamTracker::default());
            let svc = PluginService::new(
                self.table.clone(),
                self.alloc.clone(),
                stop_rx.clone(),
                streams.clone(),
            );
            let mut stop_server = stop_rx.clone();
            let server = tokio::spawn(
                Server::builder()
                    .add_service(DevicePluginServer::new(svc))
                    .serve_with_incoming_shutdown(uds::incoming(listener), async move {
                        let _ = stop_server.wait_for(|s| *s).await;
                    }),
            );
            let outcome = self.register_and_watch(&streams, &mut shutdown).await;
            let _ = stop_tx.send(true);
            match server.await {
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "device plugin server ended with an error")
                }
                Err(e) => tracing::warn!(error = %e, "device plugin server task failed"),
                Ok(Ok(())) => {}
            }
            uds::remove(&socket);
            match outcome {
                Outcome::Shutdown => {
                    tracing::info!(socket = %socket.display(), "device plugin stopped");
                    return Ok(());
                }
                Outcome::Restart(reason) => {
                    tracing::info!(?reason, "kubelet connection lost: registering again");
                    self.stats.send_modify(|s| s.last_restart = Some(reason));
                }
            }
        }
    }

    async fn register_and_watch(
        &self,
        streams: &StreamTracker,
        shutdown: &mut Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Outcome {
        let kubelet = self.cfg.kubelet_socket();
        let socket = self.cfg.socket_path();
        let mut backoff = self.cfg.backoff_initial;
        let registered_with = loop {
            let id_before = identity(&kubelet);
            match self.register_once().await {
                Ok(()) => {
                    self.stats.send_modify(|s| {
                        s.registrations += 1;
                        s.last_registered = Some(Instant::now());
                    });
                    tracing::info!(resource = %self.cfg.resource_name, "registered with the kubelet");
                    break id_before;
                }
                Err(e) => {
                    self.stats.send_modify(|s| s.failed_attempts += 1);
                    tracing::warn!(error = %e, retry_in = ?backoff, "registration failed");
                }
            }
            // Wait out the backoff, but retry at once if the kubelet socket appears or is
            // replaced meanwhile; restart if our own socket was wiped.
            let deadline = tokio::time::Instant::now() + backoff;
            loop {
                tokio::select! {
                    _ = shutdown.as_mut() => return Outcome::Shutdown,
                    _ = tokio::time::sleep(self.cfg.watch_every) => {}
                }
                if identity(&socket).is_none() {
                    return Outcome::Restart(RestartReason::OwnSocketRemoved);
                }
                if identity(&kubelet) != id_before && identity(&kubelet).is_some() {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    backoff = (backoff * 2).min(self.cfg.backoff_max);
                    break;
                }
            }
        };
        let mut drop_deadline: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.as_mut() => return Outcome::Shutdown,
                _ = tokio::time::sleep(self.cfg.watch_every) => {}
            }
            if identity(&kubelet) != registered_with {
                return Outcome::Restart(RestartReason::KubeletSocketReplaced);
            }
            if identity(&socket).is_none() {
                return Outcome::Restart(RestartReason::OwnSocketRemoved);
            }
            // Only a stream that existed and is gone counts: the kubelet opens its first one
            // right after Register returns, and replaces a stream by opening the new one first.
            if streams.open() > 0 || streams.opened_total() == 0 {
                drop_deadline = None;
            } else {
                let now = tokio::time::Instant::now();
                match drop_deadline {
                    None => drop_deadline = Some(now + self.cfg.stream_drop_grace),
                    Some(at) if now >= at => {
                        return Outcome::Restart(RestartReason::StreamDropped);
                    }
                    Some(_) => {}
                }
            }
        }
    }

    async fn register_once(&self) -> Result<(), DevicePluginError> {
        let kubelet = self.cfg.kubelet_socket();
        let what = || kubelet.display().to_string();
        let channel = tokio::time::timeout(self.cfg.register_timeout, uds::connect(&kubelet))
            .await
            .map_err(|_| {
                DevicePluginError::Config(format!("connecting to {} timed out", what()))
            })??;
        let request = proto::RegisterRequest {
            version: API_VERSION.into(),
            endpoint: self.cfg.socket_name.clone(),
            resource_name: self.cfg.resource_name.clone(),
            options: Some(plugin_options()),
        };
        let mut client = RegistrationClient::new(channel);
        match tokio::time::timeout(self.cfg.register_timeout, client.register(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(DevicePluginError::Registration {
                resource: self.cfg.resource_name.clone(),
                status,
            }),
            Err(_) => Err(DevicePluginError::Config(format!(
                "Register on {} timed out",
                what()
            ))),
        }
    }
}

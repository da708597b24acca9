//! The `DevicePlugin` gRPC service the kubelet calls: options, ListAndWatch (the full device
//! list on every change), GetPreferredAllocation and Allocate (environment and control-socket
//! mount for the serving pod).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::devices::{DeviceTable, Health, preferred_allocation};
use super::proto;
use super::proto::device_plugin_server::DevicePlugin;

/// Where the per-GPU control sockets live and how Allocate exposes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocateConfig {
    /// Host directory holding one directory per GPU (`<root>/<uuid>/control.sock`). The
    /// directory, not the socket file, is mounted: an agent restart recreates the socket, which
    /// a file bind mount would not follow.
    pub host_control_root: PathBuf,
    /// Where those directories appear inside the container.
    pub container_control_root: PathBuf,
    /// Also name CDI devices (`<kind>=<uuid>`) in the CRI field, for runtimes that use CDI.
    pub cdi_kind: Option<String>,
}

impl Default for AllocateConfig {
    fn default() -> Self {
        Self {
            host_control_root: PathBuf::from("/run/eali/control"),
            container_control_root: PathBuf::from("/run/eali"),
            cdi_kind: None,
        }
    }
}

/// Name of the control socket inside each per-GPU directory.
pub const CONTROL_SOCKET_NAME: &str = "control.sock";

impl AllocateConfig {
    /// Host path of a GPU's control socket (where the agent serves it).
    pub fn host_socket(&self, uuid: &str) -> PathBuf {
        self.host_control_root.join(uuid).join(CONTROL_SOCKET_NAME)
    }

    /// The response for one container holding `ids` (already validated).
    pub fn container_response(&self, ids: &[String]) -> proto::ContainerAllocateResponse {
        let joined = ids.join(",");
        let sockets: Vec<String> = ids
            .iter()
            .map(|id| {
                self.container_control_root
                    .join(id)
                    .join(CONTROL_SOCKET_NAME)
                    .display()
                    .to_string()
            })
            .collect();
        let envs = [
            ("NVIDIA_VISIBLE_DEVICES", joined.clone()),
            ("EALI_GPU_UUID", joined),
            ("EALI_CONTROL_SOCKET", sockets.join(",")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mounts = ids
            .iter()
            .map(|id| proto::Mount {
                container_path: self.container_control_root.join(id).display().to_string(),
                host_path: self.host_control_root.join(id).display().to_string(),
                read_only: false,
            })
            .collect();
        let cdi_devices = match &self.cdi_kind {
            Some(kind) => ids
                .iter()
                .map(|id| proto::CdiDevice {
                    name: format!("{kind}={id}"),
                })
                .collect(),
            None => Vec::new(),
        };
        proto::ContainerAllocateResponse {
            envs,
            mounts,
            devices: Vec::new(),
            annotations: Default::default(),
            cdi_devices,
        }
    }
}

/// The options sent both in Register and in GetDevicePluginOptions (they must agree: the
/// kubelet trusts the second, akri PR #554).
pub fn plugin_options() -> proto::DevicePluginOptions {
    proto::DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// Counts ListAndWatch streams (the runner registers again when the kubelet drops its stream
/// and does not open another).
#[derive(Debug, Default)]
pub struct StreamTracker {
    open: AtomicUsize,
    total: AtomicUsize,
}

impl StreamTracker {
    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
    /// Streams ever opened on this server.
    pub fn opened_total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

pub struct PluginService {
    table: DeviceTable,
    alloc: AllocateConfig,
    stop: watch::Receiver<bool>,
    streams: Arc<StreamTracker>,
}

impl PluginService {
    pub fn new(
        table: DeviceTable,
        alloc: AllocateConfig,
        stop: watch::Receiver<bool>,
        streams: Arc<StreamTracker>,
    ) -> Self {
        Self {
            table,
            alloc,
            stop,
            streams,
        }
    }
}

/// Completes when the stop flag is set (or its sender is gone), holding no borrow after.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<proto::ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for PluginService {
    async fn get_device_plugin_options(
        &self,
        _: Request<proto::Empty>,
    ) -> Result<Response<proto::DevicePluginOptions>, Status> {
        Ok(Response::new(plugin_options()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<proto::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mut devices = self.table.subscribe();
        let mut stop = self.stop.clone();
        let streams = self.streams.clone();
        streams.open.fetch_add(1, Ordering::SeqCst);
        streams.total.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let first = DeviceTable::response(&devices.borrow_and_update());
            if tx.send(Ok(first)).await.is_ok() {
                loop {
                    tokio::select! {
                        changed = devices.changed() => {
                            if changed.is_err() { break; }
                            let list = DeviceTable::response(&devices.borrow_and_update());
                            if tx.send(Ok(list)).await.is_err() { break; }
                        }
                        _ = stopped(&mut stop) => {
                            // Stopping: advertise nothing, so the node's allocatable count
                            // drops instead of keeping stale capacity.
                            let _ = tx.send(Ok(proto::ListAndWatchResponse::default())).await;
                            break;
                        }
                        _ = tx.closed() => break,
                    }
                }
            }
            streams.open.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<proto::PreferredAllocationRequest>,
    ) -> Result<Response<proto::PreferredAllocationResponse>, Status> {
        let devices = self.table.snapshot();
        let container_responses = request
            .into_inner()
            .container_requests
            .iter()
            .map(|c| {
                let size = usize::try_from(c.allocation_size).unwrap_or(0);
                proto::ContainerPreferredAllocationResponse {
                    device_i_ds: preferred_allocation(
                        &devices,
                        &c.available_device_i_ds,
                        &c.must_include_device_i_ds,
                        size,
                    ),
                }
            })
            .collect();
        Ok(Response::new(proto::PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<proto::AllocateRequest>,
    ) -> Result<Response<proto::AllocateResponse>, Status> {
        let mut container_responses = Vec::new();
        for c in &request.get_ref().container_requests {
            if c.devices_ids.is_empty() {
                return Err(Status::invalid_argument(
                    "container request names no device",
                ));
            }
            for id in &c.devices_ids {
                match self.table.get(id) {
                    None => {
                        return Err(Status::invalid_argument(format!("unknown device {id}")));
                    }
                    // The kubelet already has the Unhealthy state from ListAndWatch (sent when
                    // it changed), so failing here is all that is left to do.
                    Some(d) if d.health == Health::Unhealthy => {
                        return Err(Status::failed_precondition(format!(
                            "device {id} is Unhealthy"
                        )));
                    }
                    Some(_) => {}
                }
                let dir = self.alloc.host_control_root.join(id);
                std::fs::create_dir_all(&dir).map_err(|e| {
                    Status::internal(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            container_responses.push(self.alloc.container_response(&c.devices_ids));
        }
        Ok(Response::new(proto::AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<proto::PreStartContainerRequest>,
    ) -> Result<Response<proto::PreStartContainerResponse>, Status> {
        Ok(Response::new(proto::PreStartContainerResponse {}))
    }
}

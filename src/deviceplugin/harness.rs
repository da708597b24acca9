//! A kubelet stand-in that speaks the device plugin API the way the kubelet does: it serves
//! `Registration` on `<dir>/kubelet.sock`, validates each request as the kubelet does (API
//! version, qualified resource name, endpoint a bare file name), then connects back to the
//! plugin's socket, asks for its options and holds a ListAndWatch stream, replacing the previous
//! endpoint of the same resource. A restart wipes every socket in the directory, as the kubelet
//! does. Used by the integration tests and by smoke runs of `eali agent` without a cluster.
//! [`FakePodResources`] stands in for the kubelet's pod-resources API.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use super::proto::device_plugin_client::DevicePluginClient;
use super::proto::registration_server::{Registration, RegistrationServer};
use super::{API_VERSION, DevicePluginError, KUBELET_SOCKET, proto, uds};

/// What the fake kubelet saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum KubeletEvent {
    /// A Register call the kubelet accepted, with the options the plugin then returned from
    /// GetDevicePluginOptions.
    Registered {
        request: proto::RegisterRequest,
        options: Option<proto::DevicePluginOptions>,
        at: Instant,
    },
    /// A full device list from ListAndWatch.
    Devices {
        devices: Vec<proto::Device>,
        at: Instant,
    },
    /// The ListAndWatch stream ended (plugin stopped or failed).
    StreamEnded { at: Instant },
    /// Connecting back to the plugin or opening its stream failed.
    EndpointFailed { error: String },
}

struct Shared {
    dir: PathBuf,
    events: mpsc::UnboundedSender<KubeletEvent>,
    endpoint: Mutex<Option<(String, JoinHandle<()>)>>,
}

struct RegistrationService(Arc<Shared>);

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn register(
        &self,
        request: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        let req = request.into_inner();
        // The kubelet's checks (pkg/kubelet/cm/devicemanager/plugin/v1beta1/server.go).
        if req.version != API_VERSION {
            return Err(Status::invalid_argument(format!(
                "unsupported API version {}",
                req.version
            )));
        }
        let qualified = req
            .resource_name
            .split_once('/')
            .is_some_and(|(d, n)| !d.is_empty() && !n.is_empty() && !d.ends_with("kubernetes.io"));
        if !qualified {
            return Err(Status::invalid_argument(format!(
                "invalid extended resource name {}",
                req.resource_name
            )));
        }
        if req.endpoint.is_empty() || req.endpoint.contains('/') {
            return Err(Status::invalid_argument(format!(
                "endpoint {} must be a socket file name in the plugin directory",
                req.endpoint
            )));
        }
        let shared = self.0.clone();
        let path = shared.dir.join(&req.endpoint);
        let task_shared = shared.clone();
        let task_req = req.clone();
        // The kubelet connects back after Register returns, in its own goroutine.
        let handle = tokio::spawn(async move { run_endpoint(task_shared, task_req, path).await });
        let mut ep = shared
            .endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, old)) = ep.replace((req.endpoint.clone(), handle)) {
            old.abort();
        }
        Ok(Response::new(proto::Empty {}))
    }
}

async fn run_endpoint(shared: Arc<Shared>, req: proto::RegisterRequest, path: PathBuf) {
    let send = |e| {
        let _ = shared.events.send(e);
    };
    let channel = match uds::connect(&path).await {
        Ok(c) => c,
        Err(e) => {
            return send(KubeletEvent::EndpointFailed {
                error: e.to_string(),
            });
        }
    };
    let mut client = DevicePluginClient::new(channel);
    let options = client
        .get_device_plugin_options(proto::Empty {})
        .await
        .ok()
        .map(Response::into_inner);
    send(KubeletEvent::Registered {
        request: req,
        options,
        at: Instant::now(),
    });
    let mut stream = match client.list_and_watch(proto::Empty {}).await {
        Ok(s) => s.into_inner(),
        Err(e) => {
            return send(KubeletEvent::EndpointFailed {
                error: e.to_string(),
            });
        }
    };
    while let Ok(Some(list)) = stream.message().await {
        send(KubeletEvent::Devices {
            devices: list.devices,
            at: Instant::now(),
        });
    }
    send(KubeletEvent::StreamEnded { at: Instant::now() });
}

/// The fake kubelet.
pub struct FakeKubelet {
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<KubeletEvent>,
    server: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl FakeKubelet {
    /// Serves Registration on `<dir>/kubelet.sock`.
    pub async fn start(dir: &Path) -> Result<Self, DevicePluginError> {
        let (tx, events) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            events: tx,
            endpoint: Mutex::new(None),
        });
        let mut k = Self {
            shared,
            events,
            server: None,
        };
        k.serve()?;
        Ok(k)
    }

    fn serve(&mut self) -> Result<(), DevicePluginError> {
        let listener = uds::bind(&self.shared.dir.join(KUBELET_SOCKET))?;
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let svc = RegistrationServer::new(RegistrationService(self.shared.clone()));
        let handle = tokio::spawn(async move {
            let _ = Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(uds::incoming(listener), async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                })
                .await;
        });
        self.server = Some((stop_tx, handle));
        Ok(())
    }

    /// Stops serving and drops the plugin endpoint; the socket file is left for
    /// [`FakeKubelet::restart`] to wipe.
    pub async fn stop(&mut self) {
        if let Some((stop, handle)) = self.server.take() {
            let _ = stop.send(true);
            let _ = handle.await;
        }
        let ep = self
            .shared
            .endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((_, h)) = ep {
            h.abort();
        }
    }

    /// A kubelet restart: stop, remove every socket in the directory (the kubelet's device
    /// manager does this at start), serve a fresh `kubelet.sock`. Returns when it listens.
    pub async fn restart(&mut self) -> Result<Instant, DevicePluginError> {
        self.stop().await;
        if let Ok(entries) = std::fs::read_dir(&self.shared.dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "sock") {
                    uds::remove(&p);
                }
            }
        }
        self.serve()?;
        Ok(Instant::now())
    }

    /// Next event within `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<KubeletEvent> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for an event `pick` accepts, skipping the others.
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&KubeletEvent) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let e = self.next_event(left).await?;
            if let Some(t) = pick(&e) {
                return Some(t);
            }
        }
    }

    /// Drops the ListAndWatch stream without a new registration (a kubelet-side failure);
    /// returns when.
    pub fn drop_stream(&self) -> Instant {
        if let Some((_, h)) = self
            .shared
            .endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            h.abort();
        }
        Instant::now()
    }

    /// A client on the registered plugin's socket (for Allocate and GetPreferredAllocation,
    /// which the kubelet calls on admission).
    pub async fn plugin_client(&self) -> Result<DevicePluginClient<Channel>, DevicePluginError> {
        let endpoint = self
            .shared
            .endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(e, _)| e.clone())
            .ok_or_else(|| DevicePluginError::Config("no plugin registered".into()))?;
        Ok(DevicePluginClient::new(
            uds::connect(&self.shared.dir.join(endpoint)).await?,
        ))
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        if let Some((stop, _)) = self.server.take() {
            let _ = stop.send(true);
        }
    }
}

/// The kubelet's pod-resources API (v1 `List`) with an answer the test sets: which pods hold
/// which devices of a resource.
#[derive(Clone, Default)]
pub struct FakePodResources(Arc<Mutex<Vec<super::podresources::PodResources>>>);

impl FakePodResources {
    /// `(namespace, pod, device ids)` of `resource`; replaces the previous answer.
    pub fn set(&self, resource: &str, holders: &[(&str, &str, Vec<String>)]) {
        use super::podresources as pr;
        let pods = holders
            .iter()
            .map(|(namespace, name, ids)| pr::PodResources {
                name: (*name).into(),
                namespace: (*namespace).into(),
                containers: vec![pr::ContainerResources {
                    name: "serve".into(),
                    devices: vec![pr::ContainerDevices {
                        resource_name: resource.into(),
                        device_ids: ids.clone(),
                        topology: None,
                    }],
                    cpu_ids: vec![],
                    memory: vec![],
                }],
            })
            .collect();
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = pods;
    }

    /// Serves the API on `path` until the task is aborted.
    pub fn serve(&self, path: &Path) -> Result<JoinHandle<()>, DevicePluginError> {
        use super::podresources::pod_resources_lister_server::PodResourcesListerServer;
        let listener = uds::bind(path)?;
        let svc = PodResourcesListerServer::new(self.clone());
        Ok(tokio::spawn(async move {
            let _ = Server::builder()
                .add_service(svc)
                .serve_with_incoming(uds::incoming(listener))
                .await;
        }))
    }
}

#[tonic::async_trait]
impl super::podresources::pod_resources_lister_server::PodResourcesLister for FakePodResources {
    async fn list(
        &self,
        _: Request<super::podresources::ListPodResourcesRequest>,
    ) -> Result<Response<super::podresources::ListPodResourcesResponse>, Status> {
        Ok(Response::new(
            super::podresources::ListPodResourcesResponse {
                pod_resources: self
                    .0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            },
        ))
    }
    async fn get_allocatable_resources(
        &self,
        _: Request<super::podresources::AllocatableResourcesRequest>,
    ) -> Result<Response<super::podresources::AllocatableResourcesResponse>, Status> {
        Err(Status::unimplemented("not part of the stand-in"))
    }
    async fn get(
        &self,
        _: Request<super::podresources::GetPodResourcesRequest>,
    ) -> Result<Response<super::podresources::GetPodResourcesResponse>, Status> {
        Err(Status::unimplemented("not part of the stand-in"))
    }
}

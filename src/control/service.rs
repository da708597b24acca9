//! The `GpuControl` service for one GPU and its server on a Unix socket. Every call is first
//! authorized ([`Authorizer`]) from the caller's peer credentials; clock changes are recorded in
//! the [`ClockGuard`] before they are made (so a crash never leaves a GPU locked low for good)
//! and run off the async threads, since an NVML set-call blocks for milliseconds.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status, Streaming};

use super::ControlError;
use super::authz::{Authorizer, Decision, PodName};
use super::proto;
use super::proto::gpu_control_server::{GpuControl, GpuControlServer};
use crate::deviceplugin::{DeviceTable, Health, SharedGpu, uds};
use crate::gpu::clockguard::{ClockGuard, LockEntry, LockKind};
use crate::gpu::{ClockChange, GpuBackend, GpuError};

/// A unit timing with the pod that reported it (for energy attribution).
#[derive(Debug, Clone, PartialEq)]
pub struct AttributedTiming {
    /// The GPU whose socket received it (the timing's own `gpu_uuid` may be empty).
    pub gpu_uuid: String,
    pub pod: PodName,
    pub timing: proto::UnitTiming,
}

/// A serving window with the pod that reported it (the pod's entry of status.reports).
#[derive(Debug, Clone, PartialEq)]
pub struct AttributedWindow {
    /// The GPU whose socket received it.
    pub gpu_uuid: String,
    pub pod: PodName,
    pub window: proto::ServingWindow,
}

/// Told of every clock set-call the socket carried out (the agent's switch and target metrics).
pub trait ClockObserver: Send + Sync + 'static {
    /// `pod` set GPU `gpu` to `[min_mhz, max_mhz]` (0/0: back to the default clocks).
    fn clocks_set(&self, gpu: &str, pod: &PodName, min_mhz: u32, max_mhz: u32);
}

pub struct ControlService {
    uuid: String,
    gpu: SharedGpu,
    guard: Arc<ClockGuard>,
    authz: Arc<Authorizer>,
    timings: Option<mpsc::UnboundedSender<AttributedTiming>>,
    windows: Option<mpsc::UnboundedSender<AttributedWindow>>,
    observer: Option<Arc<dyn ClockObserver>>,
    /// The device plugin's table, whose health GetStatus reports.
    table: Option<DeviceTable>,
}

fn gpu_status(e: GpuError) -> Status {
    match e {
        GpuError::InvalidArgument(m) => Status::invalid_argument(m),
        GpuError::NotSupported { .. } => Status::unimplemented(e.to_string()),
        GpuError::GpuLost { .. } | GpuError::DriverNotLoaded(_) => {
            Status::unavailable(e.to_string())
        }
        // The agent's own missing privilege is not the caller's: not PERMISSION_DENIED.
        GpuError::NoPermission { .. } | GpuError::Other(_) => {
            Status::failed_precondition(e.to_string())
        }
    }
}

/// Resets every clock setting the guard holds for this GPU and clears those record entries;
/// the last reset's change, `None` when nothing was on record. Also what the agent runs when
/// the pod holding the GPU releases it.
pub fn reset_recorded(
    gpu: &mut dyn GpuBackend,
    guard: &ClockGuard,
) -> Result<Option<ClockChange>, Status> {
    let uuid = gpu.info().uuid.clone();
    let internal = |e: crate::gpu::clockguard::ClockGuardError| Status::internal(e.to_string());
    let mut last = None;
    for e in guard.locked().into_iter().filter(|e| e.uuid == uuid) {
        let change = match e.kind {
            LockKind::Graphics => gpu.reset_locked_clocks(),
            LockKind::Application => gpu.reset_application_clocks(),
            // Memory locks are not made through this socket.
            LockKind::Memory => continue,
        }
        .map_err(gpu_status)?;
        guard.after_reset(&uuid, e.kind).map_err(internal)?;
        last = Some(change);
    }
    Ok(last)
}

/// Sets (or with 0/0 resets) the graphics clock, recording it in the guard first.
fn apply_clocks(
    gpu: &mut dyn GpuBackend,
    guard: &ClockGuard,
    min_mhz: u32,
    max_mhz: u32,
) -> Result<Option<ClockChange>, Status> {
    let (uuid, index, arch) = {
        let i = gpu.info();
        (i.uuid.clone(), i.index, i.architecture)
    };
    let internal = |e: crate::gpu::clockguard::ClockGuardError| Status::internal(e.to_string());
    if min_mhz == 0 && max_mhz == 0 {
        return reset_recorded(gpu, guard);
    }
    if min_mhz > max_mhz {
        return Err(Status::invalid_argument(format!(
            "min {min_mhz} MHz above max {max_mhz} MHz"
        )));
    }
    let change = if arch.has_locked_clocks() {
        guard
            .before_set(LockEntry::new(
                &uuid,
                index,
                LockKind::Graphics,
                min_mhz,
                max_mhz,
            ))
            .map_err(internal)?;
        gpu.set_locked_clocks(min_mhz, max_mhz)
    } else {
        let memory = gpu.clocks().map_err(gpu_status)?.memory_mhz;
        guard
            .before_set(LockEntry::new(
                &uuid,
                index,
                LockKind::Application,
                max_mhz,
                max_mhz,
            ))
            .map_err(internal)?;
        gpu.set_application_clocks(memory, max_mhz)
    };
    change.map(Some).map_err(gpu_status)
}

fn read_status(
    gpu: &dyn GpuBackend,
    change: Option<ClockChange>,
) -> Result<proto::ClockStatus, Status> {
    let c = gpu.clocks().map_err(gpu_status)?;
    let (lmin, lmax) = c.locked.unwrap_or((0, 0));
    Ok(proto::ClockStatus {
        gpu_uuid: gpu.info().uuid.clone(),
        graphics_mhz: c.graphics_mhz,
        memory_mhz: c.memory_mhz,
        locked_min_mhz: lmin,
        locked_max_mhz: lmax,
        applied_mhz: change.map_or(0, |ch| ch.applied_mhz),
        call_latency_s: change.map_or(0.0, |ch| ch.call_latency_s),
        effective_at_s: change.map_or(0.0, |ch| ch.effective_at_s),
        device_time_s: gpu.now_s(),
        // Parts without the counter (pre-Volta) report 0 and the power reading only.
        energy_mj: gpu.energy_mj().unwrap_or(0),
        power_w: gpu.power().map_or(0.0, |p| p.watts),
        unhealthy: false,
        health_reason: String::new(),
    })
}

impl ControlService {
    pub fn new(
        gpu: SharedGpu,
        guard: Arc<ClockGuard>,
        authz: Arc<Authorizer>,
        timings: Option<mpsc::UnboundedSender<AttributedTiming>>,
    ) -> Self {
        let uuid = crate::deviceplugin::health::shared_uuid(&gpu);
        Self {
            uuid,
            gpu,
            guard,
            authz,
            timings,
            windows: None,
            observer: None,
            table: None,
        }
    }

    /// Reports the device plugin's view of the GPU's health in GetStatus.
    pub fn with_health(mut self, table: DeviceTable) -> Self {
        self.table = Some(table);
        self
    }

    /// Where the pods' serving windows go (without it they are acknowledged and dropped).
    pub fn with_windows(mut self, windows: mpsc::UnboundedSender<AttributedWindow>) -> Self {
        self.windows = Some(windows);
        self
    }

    pub fn with_clock_observer(mut self, observer: Arc<dyn ClockObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    async fn authorize<T>(&self, request: &Request<T>) -> Result<PodName, Status> {
        let pid = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .and_then(|c| c.pid());
        match self.authz.check(pid, &self.uuid).await {
            Decision::Allow(pod) => Ok(pod),
            Decision::Deny(why) => {
                tracing::warn!(gpu = %self.uuid, ?pid, %why, "control call refused");
                Err(Status::permission_denied(why))
            }
        }
    }

    fn check_uuid(&self, uuid: &str) -> Result<(), Status> {
        if uuid.is_empty() || uuid == self.uuid {
            Ok(())
        } else {
            Err(Status::invalid_argument(format!(
                "this socket controls {}, not {uuid}",
                self.uuid
            )))
        }
    }

    async fn on_gpu<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn GpuBackend, &ClockGuard) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let (gpu, guard) = (self.gpu.clone(), self.guard.clone());
        tokio::task::spawn_blocking(move || {
            let mut g = gpu.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut *g, &guard)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }
}

#[tonic::async_trait]
impl GpuControl for ControlService {
    async fn set_clocks(
        &self,
        request: Request<proto::SetClocksRequest>,
    ) -> Result<Response<proto::ClockStatus>, Status> {
        let pod = self.authorize(&request).await?;
        let r = request.into_inner();
        self.check_uuid(&r.gpu_uuid)?;
        let status = self
            .on_gpu(move |g, guard| {
                let change = apply_clocks(g, guard, r.min_mhz, r.max_mhz)?;
                read_status(g, change)
            })
            .await?;
        if let Some(o) = &self.observer {
            o.clocks_set(&self.uuid, &pod, r.min_mhz, r.max_mhz);
        }
        tracing::debug!(gpu = %self.uuid, %pod, min = r.min_mhz, max = r.max_mhz, "clocks set");
        Ok(Response::new(status))
    }

    async fn get_status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::ClockStatus>, Status> {
        self.authorize(&request).await?;
        self.check_uuid(&request.get_ref().gpu_uuid)?;
        let read = self.on_gpu(|g, _| Ok(read_status(g, None))).await?;
        // A GPU that cannot be read is the answer, not a failed call: the caller must tell a
        // lost GPU (stop serving) from an agent it cannot reach (keep serving).
        let mut status = match read {
            Ok(s) => s,
            Err(s) if s.code() == tonic::Code::Unavailable => proto::ClockStatus {
                gpu_uuid: self.uuid.clone(),
                unhealthy: true,
                health_reason: s.message().to_string(),
                ..proto::ClockStatus::default()
            },
            Err(s) => return Err(s),
        };
        let listed = self.table.as_ref().and_then(|t| t.get(&self.uuid));
        if !status.unhealthy && listed.is_some_and(|d| d.health == Health::Unhealthy) {
            status.unhealthy = true;
            status.health_reason = format!(
                "GPU {} is Unhealthy (a critical XID or ECC event; the node agent's log names it)",
                self.uuid
            );
        }
        Ok(Response::new(status))
    }

    async fn report_timings(
        &self,
        request: Request<Streaming<proto::UnitTiming>>,
    ) -> Result<Response<proto::TimingsSummary>, Status> {
        let pod = self.authorize(&request).await?;
        let mut stream = request.into_inner();
        let (mut received, mut rejected) = (0u64, 0u64);
        while let Some(t) = stream.message().await? {
            let valid = (t.gpu_uuid.is_empty() || t.gpu_uuid == self.uuid)
                && t.end_unix_s >= t.start_unix_s
                && t.start_unix_s.is_finite();
            if !valid {
                rejected += 1;
                continue;
            }
            received += 1;
            if let Some(tx) = &self.timings {
                let _ = tx.send(AttributedTiming {
                    gpu_uuid: self.uuid.clone(),
                    pod: pod.clone(),
                    timing: t,
                });
            }
        }
        let energy_mj = self.on_gpu(|g, _| Ok(g.energy_mj().unwrap_or(0))).await?;
        Ok(Response::new(proto::TimingsSummary {
            received,
            rejected,
            energy_mj,
        }))
    }

    async fn report_window(
        &self,
        request: Request<proto::ServingWindow>,
    ) -> Result<Response<proto::WindowAck>, Status> {
        let pod = self.authorize(&request).await?;
        let window = request.into_inner();
        self.check_uuid(&window.gpu_uuid)?;
        if let Some(why) = window_problem(&window) {
            return Err(Status::invalid_argument(why));
        }
        if let Some(tx) = &self.windows {
            let _ = tx.send(AttributedWindow {
                gpu_uuid: self.uuid.clone(),
                pod,
                window,
            });
        }
        let energy_mj = self.on_gpu(|g, _| Ok(g.energy_mj().unwrap_or(0))).await?;
        Ok(Response::new(proto::WindowAck { energy_mj }))
    }
}

/// The control socket's message decoders on arbitrary bytes, with the checks the service runs
/// on what they decode: the entry point of the fuzz target `control_messages` (`fuzz/`) and of
/// its stand-in `tests/decoders_fuzz.rs`. None may panic.
pub fn fuzz_messages(data: &[u8]) {
    use prost::Message;
    let _ = proto::SetClocksRequest::decode(data);
    let _ = proto::StatusRequest::decode(data);
    let _ = proto::UnitTiming::decode(data);
    if let Ok(w) = proto::ServingWindow::decode(data) {
        let _ = window_problem(&w);
    }
}

/// Why a serving window is refused, if it is: figures the status could not carry (the API
/// server refuses NaN and infinities) or that describe no window at all.
fn window_problem(w: &proto::ServingWindow) -> Option<String> {
    let figures = [
        ("window_s", Some(w.window_s)),
        ("end_unix_s", Some(w.end_unix_s)),
        ("latency_ms", w.latency_ms),
        ("slo_percentile", Some(w.slo_percentile)),
        ("slo_latency_ms", Some(w.slo_latency_ms)),
        ("load_ratio", w.load_ratio),
        ("predicted_energy_j", w.predicted_energy_j),
        ("max_clock_energy_j", w.max_clock_energy_j),
    ];
    let bad = figures
        .iter()
        .find_map(|(name, v)| v.filter(|v| !v.is_finite() || *v < 0.0).map(|v| (name, v)));
    if let Some((name, v)) = bad {
        return Some(format!("{name} must be a finite number >= 0, got {v}"));
    }
    if w.window_s <= 0.0 {
        return Some("window_s must be above 0".into());
    }
    if w.inference_service.is_empty() {
        return Some("inference_service is empty".into());
    }
    None
}

/// A running control server for one GPU.
pub struct ControlServer {
    path: PathBuf,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl ControlServer {
    /// Serves `service` on `path`. The socket is world-connectable (0666): access is decided
    /// per call from the peer's credentials, and the serving container may run as any user.
    pub fn spawn(path: &Path, service: ControlService) -> Result<Self, ControlError> {
        let listener = uds::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(
            |source| ControlError::Proc {
                path: path.to_path_buf(),
                source,
            },
        )?;
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(
            Server::builder()
                .add_service(GpuControlServer::new(service))
                .serve_with_incoming_shutdown(uds::incoming(listener), async move {
                    let _ = rx.wait_for(|s| *s).await.map(|_| ());
                }),
        );
        Ok(Self {
            path: path.to_path_buf(),
            stop,
            task,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving and removes the socket.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        uds::remove(&self.path);
    }
}

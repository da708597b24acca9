//! The serving pod's side of the control socket: connect to `EALI_CONTROL_SOCKET`, set clocks,
//! read status, stream unit timings.

use std::path::Path;

use tonic::transport::Channel;

use super::ControlError;
use super::proto;
use super::proto::gpu_control_client::GpuControlClient;
use crate::deviceplugin::uds;

/// Environment variable Allocate sets to the socket path inside the container.
pub const CONTROL_SOCKET_ENV: &str = "EALI_CONTROL_SOCKET";
/// Environment variable Allocate sets to the GPU UUID.
pub const GPU_UUID_ENV: &str = "EALI_GPU_UUID";

#[derive(Debug, Clone)]
pub struct ControlClient {
    uuid: String,
    inner: GpuControlClient<Channel>,
}

impl ControlClient {
    pub async fn connect(path: &Path, gpu_uuid: &str) -> Result<Self, ControlError> {
        Ok(Self {
            uuid: gpu_uuid.to_string(),
            inner: GpuControlClient::new(uds::connect(path).await?),
        })
    }

    /// From Allocate's environment; `None` when the process was not started by the plugin
    /// (standalone serving). With several GPUs, the first one's socket.
    pub async fn from_env() -> Option<Result<Self, ControlError>> {
        let socket = std::env::var(CONTROL_SOCKET_ENV).ok()?;
        let uuid = std::env::var(GPU_UUID_ENV).unwrap_or_default();
        let first = |s: &str| s.split(',').next().unwrap_or_default().to_string();
        Some(Self::connect(Path::new(&first(&socket)), &first(&uuid)).await)
    }

    /// Locks the graphics clock to `[min_mhz, max_mhz]`.
    pub async fn set_clocks(
        &mut self,
        min_mhz: u32,
        max_mhz: u32,
    ) -> Result<proto::ClockStatus, ControlError> {
        Ok(self
            .inner
            .set_clocks(proto::SetClocksRequest {
                gpu_uuid: self.uuid.clone(),
                min_mhz,
                max_mhz,
            })
            .await?
            .into_inner())
    }

    /// Back to the GPU's default clocks.
    pub async fn reset_clocks(&mut self) -> Result<proto::ClockStatus, ControlError> {
        self.set_clocks(0, 0).await
    }

    pub async fn status(&mut self) -> Result<proto::ClockStatus, ControlError> {
        Ok(self
            .inner
            .get_status(proto::StatusRequest {
                gpu_uuid: self.uuid.clone(),
            })
            .await?
            .into_inner())
    }

    /// Sends a batch of unit timings as one stream.
    pub async fn report_timings(
        &mut self,
        timings: Vec<proto::UnitTiming>,
    ) -> Result<proto::TimingsSummary, ControlError> {
        Ok(self
            .inner
            .report_timings(tokio_stream::iter(timings))
            .await?
            .into_inner())
    }

    /// Sends the pod's figures over its last serving window.
    pub async fn report_window(
        &mut self,
        window: proto::ServingWindow,
    ) -> Result<proto::WindowAck, ControlError> {
        Ok(self.inner.report_window(window).await?.into_inner())
    }
}

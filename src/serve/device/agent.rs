//! The node agent's GPU as a serving device, in a pod the device plugin's Allocate gave a GPU:
//! set-calls go to the agent over the control socket at their planned times (the sender thread
//! of [`RemoteClock`] makes each then), unit timings and serving windows go with them, and the
//! agent reads the GPU's sensors and attributes its energy counter. The pod exports no GPU or
//! layer energy of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Reading, RealGpuTime, ServingDevice, SimServing};
use crate::control::proto::{ServingWindow, UnitTiming};
use crate::control::remote::RemoteClock;
use crate::gpu::{ClockTarget, GpuError};

/// How long the drain's reset waits for the agent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The agent's GPU (see the module docs).
pub struct AgentServing {
    remote: Arc<RemoteClock>,
    uuid: String,
    time: RealGpuTime,
}

impl AgentServing {
    /// GPU `uuid` behind `remote`; device time counts from `epoch` (the server's). `model` is
    /// the executor's timing model, given the same set-calls.
    pub fn new(
        remote: Arc<RemoteClock>,
        uuid: String,
        epoch: Instant,
        model: Option<SimServing>,
    ) -> Self {
        Self {
            remote,
            uuid,
            time: RealGpuTime::new(epoch, model),
        }
    }
}

impl ServingDevice for AgentServing {
    fn label(&self) -> &str {
        &self.uuid
    }
    fn describe(&self) -> String {
        format!("the node agent's GPU {}", self.uuid)
    }
    fn now_s(&self) -> f64 {
        self.time.now_s()
    }
    fn unix_s(&self, t_s: f64) -> f64 {
        self.time.unix_s(t_s)
    }
    fn set_clock_at(&mut self, at_s: f64, target: ClockTarget) -> Result<bool, GpuError> {
        if !self.time.request(at_s, target)? {
            return Ok(false);
        }
        // The plan's lead covers the GPU's own switch; the socket and the agent take their
        // measured share on top, so the call is made that much earlier.
        let at = at_s - self.remote.path_latency_s();
        self.remote.request_at(self.time.instant_at(at), target);
        Ok(true)
    }
    fn requested(&self) -> Option<ClockTarget> {
        self.time.requested
    }
    fn reset_clocks(&mut self) -> Result<(), GpuError> {
        self.time.reset()?;
        self.remote.request(ClockTarget::Default);
        if self.remote.flush(FLUSH_TIMEOUT) {
            Ok(())
        } else {
            Err(GpuError::Other(format!(
                "the node agent did not confirm the clock reset within {FLUSH_TIMEOUT:?}"
            )))
        }
    }
    fn clock_mhz(&self) -> Option<u32> {
        // The agent reads the real clock; the plan's is what this process knows.
        match &self.time.model {
            Some(m) => m.clock_mhz(),
            None => self.time.requested.map(ClockTarget::mhz).filter(|&f| f > 0),
        }
    }
    fn read(&self) -> Reading {
        Reading::default()
    }
    fn energy_mj(&self) -> Option<u64> {
        None
    }
    fn agent_attributes(&self) -> bool {
        true
    }
    fn report_units(&self, timings: Vec<UnitTiming>) {
        self.remote.report_timings(timings);
    }
    fn report_window(&self, window: ServingWindow) {
        self.remote.report_window(window);
    }
    fn fault(&self) -> Option<String> {
        // The agent's reasons name the GPU already.
        self.remote.fault()
    }
}

impl Drop for AgentServing {
    fn drop(&mut self) {
        // Whatever is queued reaches the agent before the process goes.
        self.remote.flush(FLUSH_TIMEOUT);
    }
}

//! XID and ECC events of one GPU through an NVML event set, polled without blocking.

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, Nvml};

use crate::gpu::HealthEvent;

/// Events the agent watches for health.
pub(crate) fn health_mask() -> EventTypes {
    EventTypes::CRITICAL_XID_ERROR
        | EventTypes::DOUBLE_BIT_ECC_ERROR
        | EventTypes::SINGLE_BIT_ECC_ERROR
}

/// An event set owned by one [`super::NvmlGpu`].
pub(crate) struct HealthEvents(EventSet<'static>);

// SAFETY: an NVML event set is a handle into the thread-safe NVML library; it is owned by one
// `NvmlGpu` and only used through `&mut self`, so it is never used from two threads at once.
unsafe impl Send for HealthEvents {}

impl HealthEvents {
    /// Registers for the health events this GPU supports; `Ok(None)` if it supports none.
    pub(crate) fn register(
        nvml: &'static Nvml,
        device: &Device<'static>,
    ) -> Result<Option<Self>, NvmlError> {
        let supported = device.supported_event_types()?;
        let mask = health_mask() & supported;
        if mask.is_empty() {
            return Ok(None);
        }
        let set = nvml.create_event_set()?;
        let set = device.register_events(mask, set).map_err(|e| e.error)?;
        Ok(Some(Self(set)))
    }

    /// Drains the events that arrived; `Err(GpuLost)` when the GPU is gone.
    pub(crate) fn drain(&mut self, at_s: f64) -> Result<Vec<HealthEvent>, NvmlError> {
        let mut out = Vec::new();
        loop {
            match self.0.wait(0) {
                Ok(ev) => {
                    if ev.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                        // XID 999 is NVML's "unknown"; keep it as a code so it is not lost.
                        let code = match ev.event_data {
                            Some(XidError::Value(v)) => v,
                            Some(XidError::Unknown) | None => 999,
                        };
                        out.push(HealthEvent::Xid { code, at_s });
                    }
                    if ev.event_type.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
                        out.push(HealthEvent::DoubleBitEcc { at_s });
                    }
                    if ev.event_type.contains(EventTypes::SINGLE_BIT_ECC_ERROR) {
                        out.push(HealthEvent::SingleBitEcc { at_s });
                    }
                }
                Err(NvmlError::Timeout) => return Ok(out),
                Err(NvmlError::GpuLost) if !out.is_empty() => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    }
}

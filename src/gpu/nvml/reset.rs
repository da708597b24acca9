//! Clock resets for the clock guard, straight through NVML: the GPU is looked up afresh by UUID
//! and nothing else is opened, so a reset from a signal or panic hook is quick and shares no
//! lock with the clock thread.

use nvml_wrapper::Device;
use nvml_wrapper::error::NvmlError;

use super::NvmlSystem;
use super::error::{Ctx, device_error, system_error};
use super::inventory::architecture_of;
use crate::gpu::clockguard::{ClockResetter, LockEntry, LockKind};
use crate::gpu::{Architecture, GpuError};

/// [`ClockResetter`] over the process's NVML handle.
#[derive(Debug, Clone, Copy)]
pub struct NvmlResetter {
    sys: &'static NvmlSystem,
}

impl NvmlResetter {
    pub fn new(sys: &'static NvmlSystem) -> Self {
        Self { sys }
    }
}

fn arch(d: &Device<'_>) -> Architecture {
    d.architecture()
        .ok()
        .and_then(architecture_of)
        .unwrap_or(Architecture::Volta)
}

impl ClockResetter for NvmlResetter {
    fn reset(&self, entry: &LockEntry) -> Result<(), GpuError> {
        let mut d =
            self.sys
                .nvml()
                .device_by_uuid(entry.uuid.as_str())
                .map_err(|e| match e {
                    NvmlError::NotFound | NvmlError::InvalidArg => GpuError::InvalidArgument(
                        format!("GPU {} is no longer on this node", entry.uuid),
                    ),
                    NvmlError::GpuLost => GpuError::GpuLost {
                        uuid: entry.uuid.clone(),
                    },
                    other => system_error(other, "find a GPU to reset"),
                })?;
        let ctx = Ctx {
            uuid: &entry.uuid,
            arch: arch(&d),
        };
        match entry.kind {
            LockKind::Graphics => d
                .reset_gpu_locked_clocks()
                .map_err(|e| device_error(e, "reset locked clocks", ctx)),
            LockKind::Application => {
                d.reset_applications_clocks()
                    .map_err(|e| device_error(e, "reset application clocks", ctx))?;
                // Older parts need auto boost back on; newer ones do not have the switch.
                match d.set_auto_boosted_clocks(true) {
                    Ok(())
                    | Err(NvmlError::NotSupported)
                    | Err(NvmlError::FailedToLoadSymbol(_)) => Ok(()),
                    Err(e) => Err(device_error(e, "restore auto boost", ctx)),
                }
            }
            LockKind::Memory => d
                .reset_mem_locked_clocks()
                .map_err(|e| device_error(e, "reset memory locked clocks", ctx)),
        }
    }

    fn all_gpus(&self) -> Result<Vec<LockEntry>, GpuError> {
        let n = self.sys.device_count()?;
        let mut out = Vec::new();
        for i in 0..n {
            let d = self
                .sys
                .nvml()
                .device_by_index(i)
                .map_err(|e| system_error(e, "open a GPU"))?;
            let Ok(uuid) = d.uuid() else { continue };
            let a = arch(&d);
            let mut kinds = vec![LockKind::Application];
            if a.has_locked_clocks() {
                kinds.push(LockKind::Graphics);
            }
            if a >= Architecture::Ampere {
                kinds.push(LockKind::Memory);
            }
            out.extend(kinds.into_iter().map(|k| LockEntry::new(&uuid, i, k, 0, 0)));
        }
        Ok(out)
    }
}

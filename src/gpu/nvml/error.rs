//! NVML errors as the agent's typed [`GpuError`], each with what was being done and, for
//! permission errors, how to fix it.

use nvml_wrapper::error::NvmlError;

use crate::gpu::{Architecture, GpuError};

/// The fix for NVML_ERROR_NO_PERMISSION on setters.
pub const NO_PERMISSION_FIX: &str = "run the agent as root with CAP_SYS_ADMIN (the chart's agent.securityContext); \
     for application clocks `nvidia-smi -acp UNRESTRICTED` lifts the restriction";

/// Context of an NVML call, for the error message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub uuid: &'a str,
    pub arch: Architecture,
}

/// Maps an error of a device call doing `what`.
pub(crate) fn device_error(e: NvmlError, what: &'static str, ctx: Ctx<'_>) -> GpuError {
    match e {
        // A function missing from an older driver's library is a feature this GPU lacks here.
        NvmlError::NotSupported
        | NvmlError::FailedToLoadSymbol(_)
        | NvmlError::FunctionNotFound => GpuError::NotSupported {
            what,
            arch: ctx.arch,
        },
        NvmlError::NoPermission => GpuError::NoPermission {
            what,
            fix: NO_PERMISSION_FIX,
        },
        NvmlError::GpuLost => GpuError::GpuLost {
            uuid: ctx.uuid.to_string(),
        },
        NvmlError::InvalidArg | NvmlError::NotFound => {
            GpuError::InvalidArgument(format!("{what}: {e}"))
        }
        other => init_or_other(other, what),
    }
}

/// Maps an error of initialisation or of a call with no device at hand.
pub(crate) fn system_error(e: NvmlError, what: &'static str) -> GpuError {
    match e {
        NvmlError::NoPermission => GpuError::NoPermission {
            what,
            fix: "give the agent access to /dev/nvidia* (run it privileged or in the video group)",
        },
        NvmlError::GpuLost => GpuError::GpuLost {
            uuid: "unknown".into(),
        },
        NvmlError::InvalidArg | NvmlError::NotFound => {
            GpuError::InvalidArgument(format!("{what}: {e}"))
        }
        other => init_or_other(other, what),
    }
}

fn init_or_other(e: NvmlError, what: &'static str) -> GpuError {
    match e {
        NvmlError::LibloadingError(inner) => GpuError::DriverNotLoaded(format!(
            "cannot load libnvidia-ml ({inner}); install the NVIDIA driver or point EALI_NVML_LIB at the library"
        )),
        NvmlError::DriverNotLoaded => GpuError::DriverNotLoaded(
            "the NVIDIA kernel driver is not loaded (is there a GPU on this node?)".into(),
        ),
        NvmlError::LibRmVersionMismatch => GpuError::DriverNotLoaded(
            "libnvidia-ml and the kernel driver differ in version (reload the driver or reboot)"
                .into(),
        ),
        NvmlError::Uninitialized => GpuError::DriverNotLoaded("NVML is not initialised".into()),
        NvmlError::LibraryNotFound => {
            GpuError::DriverNotLoaded("libnvidia-ml was not found".into())
        }
        other => GpuError::Other(format!("{what}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: Ctx<'static> = Ctx {
        uuid: "GPU-1",
        arch: Architecture::Volta,
    };

    #[test]
    fn nvml_codes_become_typed_errors() {
        assert_eq!(
            device_error(NvmlError::NotSupported, "energy", CTX),
            GpuError::NotSupported {
                what: "energy",
                arch: Architecture::Volta
            }
        );
        assert!(matches!(
            device_error(NvmlError::NoPermission, "set locked clocks", CTX),
            GpuError::NoPermission { fix, .. } if fix.contains("root")
        ));
        assert_eq!(
            device_error(NvmlError::GpuLost, "x", CTX),
            GpuError::GpuLost {
                uuid: "GPU-1".into()
            }
        );
        assert!(matches!(
            system_error(NvmlError::DriverNotLoaded, "init"),
            GpuError::DriverNotLoaded(_)
        ));
        assert!(
            matches!(device_error(NvmlError::Unknown, "x", CTX), GpuError::Other(m) if m.starts_with("x:"))
        );
    }
}

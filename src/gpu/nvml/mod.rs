//! The real GPU behind [`crate::gpu::GpuBackend`]: NVML through `nvml-wrapper`.
//!
//! One NVML handle per process ([`NvmlSystem::global`]): NVML initialisation is expensive and
//! reference-counted, and the handle is `Send + Sync`, so it is created once, kept for the life
//! of the process, and every [`NvmlGpu`] borrows it. The library is `libnvidia-ml.so.1` (the
//! name the driver installs; the unversioned `.so` comes only with development packages), or
//! the path in `EALI_NVML_LIB`, which is how tests load the stand-in library built from the
//! simulated GPU (`e2e/nvml-standin`). Without a driver, initialisation yields
//! [`GpuError::DriverNotLoaded`], never a panic.
//!
//! Generation differences handled here (`docs/architecture.md`, "NVML by generation"): locked
//! clocks from Volta on, application clocks with auto boost turned off before that; memory locked
//! clocks from Ampere on; the energy counter from Volta on, checked at open to advance, else power
//! integrated (and said so); instantaneous power from the NVML field where the driver has it, else
//! `nvmlDeviceGetPowerUsage` with its per-generation meaning (1 s average on Ampere except GA100
//! and newer).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;

use crate::gpu::{GpuError, Result};

mod device;
mod energy;
mod error;
mod events;
mod inventory;
mod reset;

pub use device::{NvmlGpu, OpenOptions};
pub use energy::{EnergySource, PowerSource};
pub use error::NO_PERMISSION_FIX;
pub use inventory::architecture_of;
pub use reset::NvmlResetter;

/// GPUs that could not be opened: (index, why).
pub type OpenFailures = Vec<(u32, GpuError)>;

/// Environment variable naming the NVML library to load instead of the system's.
pub const LIB_ENV: &str = "EALI_NVML_LIB";
/// The library the NVIDIA driver installs.
pub const DEFAULT_LIB: &str = "libnvidia-ml.so.1";

/// The process's NVML handle.
pub struct NvmlSystem {
    nvml: Nvml,
    lib: String,
    driver_version: String,
    /// Zero of [`crate::gpu::GpuBackend::now_s`] for every GPU of the process.
    epoch: std::time::Instant,
}

impl std::fmt::Debug for NvmlSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSystem")
            .field("lib", &self.lib)
            .field("driver_version", &self.driver_version)
            .finish()
    }
}

static GLOBAL: Mutex<Option<&'static NvmlSystem>> = Mutex::new(None);

impl NvmlSystem {
    /// The process's NVML handle, initialised on first success from `lib` (else `EALI_NVML_LIB`,
    /// else the driver's library). A failed attempt is not remembered, so a later call can
    /// succeed once the driver is loaded. Later calls return the first handle whatever `lib`.
    pub fn global(lib: Option<&Path>) -> Result<&'static NvmlSystem> {
        let mut g = GLOBAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(sys) = *g {
            return Ok(sys);
        }
        let sys: &'static NvmlSystem = Box::leak(Box::new(Self::init(lib)?));
        *g = Some(sys);
        Ok(sys)
    }

    /// Which library [`Self::global`] would load.
    pub fn library_path(lib: Option<&Path>) -> PathBuf {
        lib.map(Path::to_path_buf)
            .or_else(|| {
                std::env::var_os(LIB_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LIB))
    }

    fn init(lib: Option<&Path>) -> Result<Self> {
        let path = Self::library_path(lib);
        let nvml = match Nvml::builder().lib_path(path.as_os_str()).init() {
            Ok(n) => n,
            // Some installs have only the unversioned name (a driver built from source).
            Err(NvmlError::LibloadingError(_)) if path == Path::new(DEFAULT_LIB) => Nvml::builder()
                .lib_path(OsStr::new("libnvidia-ml.so"))
                .init()
                .map_err(|e| init_error(e, &path))?,
            Err(e) => return Err(init_error(e, &path)),
        };
        let driver_version = nvml
            .sys_driver_version()
            .unwrap_or_else(|_| "unknown".into());
        Ok(Self {
            nvml,
            lib: path.display().to_string(),
            driver_version,
            epoch: std::time::Instant::now(),
        })
    }

    pub fn nvml(&self) -> &Nvml {
        &self.nvml
    }

    /// The library that was loaded.
    pub fn library(&self) -> &str {
        &self.lib
    }

    pub fn epoch(&self) -> std::time::Instant {
        self.epoch
    }

    pub fn driver_version(&self) -> &str {
        &self.driver_version
    }

    pub fn device_count(&self) -> Result<u32> {
        self.nvml
            .device_count()
            .map_err(|e| error::system_error(e, "count GPUs"))
    }

    /// Opens GPU `index` (see [`NvmlGpu::open`]).
    pub fn open(&'static self, index: u32, opts: &OpenOptions) -> Result<NvmlGpu> {
        NvmlGpu::open(self, index, opts)
    }

    /// Opens the GPU with this UUID.
    pub fn open_by_uuid(&'static self, uuid: &str, opts: &OpenOptions) -> Result<NvmlGpu> {
        let index = self
            .nvml
            .device_by_uuid(uuid)
            .and_then(|d| d.index())
            .map_err(|e| match e {
                NvmlError::NotFound | NvmlError::InvalidArg => {
                    GpuError::InvalidArgument(format!("no GPU with UUID {uuid} on this node"))
                }
                other => error::system_error(other, "find a GPU by UUID"),
            })?;
        NvmlGpu::open(self, index, opts)
    }

    /// Opens every GPU; a GPU that fails to open is listed with its error, not fatal.
    pub fn open_all(&'static self, opts: &OpenOptions) -> Result<(Vec<NvmlGpu>, OpenFailures)> {
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        for i in 0..self.device_count()? {
            match NvmlGpu::open(self, i, opts) {
                Ok(g) => ok.push(g),
                Err(e) => failed.push((i, e)),
            }
        }
        Ok((ok, failed))
    }
}

fn init_error(e: NvmlError, path: &Path) -> GpuError {
    match e {
        NvmlError::LibloadingError(inner) => GpuError::DriverNotLoaded(format!(
            "cannot load {} ({inner}); install the NVIDIA driver or set {LIB_ENV}",
            path.display()
        )),
        NvmlError::FailedToLoadSymbol(s) => {
            GpuError::DriverNotLoaded(format!("{} is not an NVML library ({s})", path.display()))
        }
        other => error::system_error(other, "initialise NVML"),
    }
}

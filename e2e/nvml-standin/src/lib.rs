//! A stand-in `libnvidia-ml.so`: the NVML C functions the EALI agent calls, answered by EALI's
//! calibrated simulated GPU ([`eali::gpu::sim::SimGpu`]), so the real NVML code path
//! (`nvml-wrapper` and `eali::gpu::nvml`) runs in CI where there is no GPU.
//!
//! Load it through `nvml-wrapper`'s `Nvml::builder().lib_path(...)` (the build produces
//! `libnvml_standin.so`; any name works with an explicit path) or as `libnvidia-ml.so.1` on
//! `LD_LIBRARY_PATH`. It is configured by environment variables ([`config`]): GPU profiles and
//! count, injected faults (GPU lost, XID 48/79 events, permission denied on setters, a stuck
//! energy counter, driver not loaded), the driver version, a state file that keeps clock locks
//! across processes (for crash-recovery tests), and a file holding a synthetic load.
//!
//! What it reproduces (`docs/architecture.md`, "NVML by generation"): supported clock lists per
//! profile with NVML's INSUFFICIENT_SIZE protocol; set-clock calls that block for the simulated
//! call latency and take effect after the settle delay; the energy counter in whole mJ updated
//! every 10 ms; `nvmlDeviceGetPowerUsage` instantaneous on GA100 and older and a 1 s average on
//! newer parts; the instant-power field (186); NOT_SUPPORTED for locked clocks and the energy
//! counter before Volta and for memory locked clocks before Ampere; NO_PERMISSION for setters;
//! GPU_IS_LOST; XID and ECC events through event sets. Unlisted NVML functions are simply absent,
//! which `nvml-wrapper` reports as a missing symbol when one is called.

// NVML names its constants in C style; matching on them is the point of this crate.
#![allow(non_upper_case_globals)]

pub mod config;
mod driver;
mod exports;
mod state;

//! Initialisation, system queries and device handles.

use std::ffi::{c_char, c_int, c_uint};

use eali::gpu::GpuBackend;

use nvml_wrapper_sys::bindings::*;

use super::{INVALID, call, in_str, on_gpu, out, out_str};
use crate::driver::{self, handle_of, with_driver};

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    call(|| match driver::init() {
        nvmlReturn_enum_NVML_SUCCESS => Ok(()),
        code => Err(code),
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit() -> nvmlReturn_t {
    nvmlInit_v2()
}

/// Flags (no GPUs, no attach) change nothing here: the simulated GPUs need no attaching.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> nvmlReturn_t {
    nvmlInit_v2()
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    call(|| match driver::shutdown() {
        nvmlReturn_enum_NVML_SUCCESS => Ok(()),
        code => Err(code),
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    let s: &'static [u8] = match result {
        nvmlReturn_enum_NVML_SUCCESS => b"Success\0",
        nvmlReturn_enum_NVML_ERROR_UNINITIALIZED => b"Uninitialized\0",
        nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT => b"Invalid Argument\0",
        nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED => b"Not Supported\0",
        nvmlReturn_enum_NVML_ERROR_NO_PERMISSION => b"Insufficient Permissions\0",
        nvmlReturn_enum_NVML_ERROR_NOT_FOUND => b"Not Found\0",
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE => b"Insufficient Size\0",
        nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED => b"Driver Not Loaded\0",
        nvmlReturn_enum_NVML_ERROR_TIMEOUT => b"Timeout\0",
        nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST => b"GPU is lost\0",
        _ => b"Unknown Error\0",
    };
    s.as_ptr().cast()
}

/// # Safety
/// `version` is valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    call(|| {
        let v = with_driver(|d| Ok(d.cfg.driver_version.clone()))?;
        // SAFETY: caller contract.
        unsafe { out_str(version, length, &v) }
    })
}

/// # Safety
/// `version` is valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    call(|| {
        let v = with_driver(|d| Ok(format!("12.{}", d.cfg.driver_version)))?;
        // SAFETY: caller contract.
        unsafe { out_str(version, length, &v) }
    })
}

/// # Safety
/// `v` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(v: *mut c_int) -> nvmlReturn_t {
    // SAFETY: caller contract.
    call(|| with_driver(|_| unsafe { out(v, 12040) }))
}

/// # Safety
/// `v` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(v: *mut c_int) -> nvmlReturn_t {
    // SAFETY: caller contract.
    unsafe { nvmlSystemGetCudaDriverVersion(v) }
}

/// # Safety
/// `count` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> nvmlReturn_t {
    // SAFETY: caller contract.
    call(|| with_driver(|d| unsafe { out(count, d.gpus.len() as c_uint) }))
}

/// # Safety
/// `count` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount(count: *mut c_uint) -> nvmlReturn_t {
    // SAFETY: caller contract.
    unsafe { nvmlDeviceGetCount_v2(count) }
}

/// # Safety
/// `device` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    call(|| {
        with_driver(|d| {
            if index as usize >= d.gpus.len() {
                return Err(INVALID);
            }
            // SAFETY: caller contract.
            unsafe { out(device, handle_of(index)) }
        })
    })
}

/// # Safety
/// `uuid` is a C string; `device` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    call(|| {
        // SAFETY: caller contract.
        let want = unsafe { in_str(uuid) }?;
        with_driver(|d| {
            let i = d
                .gpus
                .iter()
                .position(|g| g.settings.uuid == want)
                .ok_or(nvmlReturn_enum_NVML_ERROR_NOT_FOUND)?;
            // SAFETY: caller contract.
            unsafe { out(device, handle_of(i as u32)) }
        })
    })
}

/// # Safety
/// `bus_id` is a C string; `device` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    bus_id: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    call(|| {
        // SAFETY: caller contract.
        let want = unsafe { in_str(bus_id) }?.to_ascii_uppercase();
        with_driver(|d| {
            // NVML accepts the 8- and the 4-digit domain form.
            let i = d
                .gpus
                .iter()
                .position(|g| {
                    let id = g.sim.info().pci_bus_id.to_ascii_uppercase();
                    id == want || id.get(4..) == Some(want.as_str())
                })
                .ok_or(nvmlReturn_enum_NVML_ERROR_NOT_FOUND)?;
            // SAFETY: caller contract.
            unsafe { out(device, handle_of(i as u32)) }
        })
    })
}

/// # Safety
/// `index` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(
    device: nvmlDevice_t,
    index: *mut c_uint,
) -> nvmlReturn_t {
    // SAFETY: caller contract.
    on_gpu(device, |g| unsafe { out(index, g.index) })
}

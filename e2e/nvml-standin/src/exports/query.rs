//! Read-only queries: identity, memory, architecture, clocks.

use std::ffi::{c_char, c_int, c_uint};

use eali::gpu::{Architecture, GpuBackend};
use nvml_wrapper_sys::bindings::*;

use super::{INVALID, fill_chars, gpu_err, on_gpu, out, out_str};
use crate::driver::{Code, Slot};

/// PCI device id of each profile's board (vendor 0x10DE in the low half).
fn pci_device_id(profile: &str) -> u32 {
    let dev: u32 = match profile {
        "m40" => 0x17FD,
        "v100-sxm2" => 0x1DB1,
        "v100-pcie" => 0x1DB4,
        "t4" => 0x1EB8,
        "a100-sxm4" => 0x20B0,
        "h100-sxm" => 0x2330,
        _ => 0x0000,
    };
    (dev << 16) | 0x10DE
}

fn arch_code(a: Architecture) -> nvmlDeviceArchitecture_t {
    match a {
        Architecture::Maxwell => NVML_DEVICE_ARCH_MAXWELL,
        Architecture::Pascal => NVML_DEVICE_ARCH_PASCAL,
        Architecture::Volta => NVML_DEVICE_ARCH_VOLTA,
        Architecture::Turing => NVML_DEVICE_ARCH_TURING,
        Architecture::Ampere => NVML_DEVICE_ARCH_AMPERE,
        Architecture::Hopper => NVML_DEVICE_ARCH_HOPPER,
    }
}

fn compute_capability(a: Architecture) -> (c_int, c_int) {
    match a {
        Architecture::Maxwell => (5, 2),
        Architecture::Pascal => (6, 0),
        Architecture::Volta => (7, 0),
        Architecture::Turing => (7, 5),
        Architecture::Ampere => (8, 0),
        Architecture::Hopper => (9, 0),
    }
}

/// # Safety
/// `uuid` is valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    // SAFETY: caller contract.
    on_gpu(device, |g| unsafe {
        out_str(uuid, length, &g.settings.uuid)
    })
}

/// # Safety
/// `name` is valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    // SAFETY: caller contract.
    on_gpu(device, |g| unsafe {
        out_str(name, length, &g.sim.info().name)
    })
}

/// # Safety
/// `pci` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        let info = g.sim.info();
        let bus = 0x18 + info.index;
        // SAFETY: all-zero is a valid nvmlPciInfo_t (integers and char arrays).
        let mut p: nvmlPciInfo_t = unsafe { std::mem::zeroed() };
        fill_chars(&mut p.busId, &info.pci_bus_id);
        fill_chars(&mut p.busIdLegacy, info.pci_bus_id.get(4..).unwrap_or(""));
        p.domain = 0;
        p.bus = bus;
        p.device = 0;
        p.pciDeviceId = pci_device_id(g.sim.profile().name());
        p.pciSubSystemId = 0x1212_10DE;
        // SAFETY: caller contract.
        unsafe { out(pci, p) }
    })
}

fn memory_used(g: &Slot) -> u64 {
    // The CUDA context and driver reservation of an otherwise idle GPU, more under load.
    (512 << 20) + (g.load * (4u64 << 30) as f64) as u64
}

/// # Safety
/// `memory` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        let total = g.sim.info().memory_bytes;
        let reserved = 256 << 20;
        let used = memory_used(g);
        let m = nvmlMemory_v2_t {
            version: (std::mem::size_of::<nvmlMemory_v2_t>() | (2 << 24)) as c_uint,
            total,
            reserved,
            used,
            free: total.saturating_sub(reserved + used),
        };
        // SAFETY: caller contract.
        unsafe { out(memory, m) }
    })
}

/// # Safety
/// `memory` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_t,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        let total = g.sim.info().memory_bytes;
        let used = memory_used(g);
        let m = nvmlMemory_t {
            total,
            used,
            free: total.saturating_sub(used),
        };
        // SAFETY: caller contract.
        unsafe { out(memory, m) }
    })
}

/// # Safety
/// `arch` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetArchitecture(
    device: nvmlDevice_t,
    arch: *mut nvmlDeviceArchitecture_t,
) -> nvmlReturn_t {
    // SAFETY: caller contract.
    on_gpu(device, |g| unsafe {
        out(arch, arch_code(g.sim.info().architecture))
    })
}

/// # Safety
/// `major` and `minor` are valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    device: nvmlDevice_t,
    major: *mut c_int,
    minor: *mut c_int,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        let (a, b) = compute_capability(g.sim.info().architecture);
        // SAFETY: caller contract.
        unsafe { out(major, a).and_then(|()| out(minor, b)) }
    })
}

/// # Safety
/// `node` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNumaNodeId(
    device: nvmlDevice_t,
    node: *mut c_uint,
) -> nvmlReturn_t {
    on_gpu(device, |g| match g.sim.info().numa_node {
        // SAFETY: caller contract.
        Some(n) => unsafe { out(node, n) },
        None => Err(nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED),
    })
}

/// Fills a caller array the way NVML does: too small a buffer gets INSUFFICIENT_SIZE with the
/// needed count and no data.
///
/// # Safety
/// `count` is valid for read and write; `items` for `*count` writes.
unsafe fn out_list(count: *mut c_uint, items: *mut c_uint, list: &[u32]) -> Result<(), Code> {
    if count.is_null() {
        return Err(INVALID);
    }
    // SAFETY: caller contract.
    let cap = unsafe { count.read() } as usize;
    // SAFETY: caller contract.
    unsafe { count.write(list.len() as c_uint) };
    if cap < list.len() {
        return Err(nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE);
    }
    if items.is_null() {
        return Err(INVALID);
    }
    // SAFETY: `items` holds `cap` ≥ list.len() entries.
    unsafe { std::ptr::copy_nonoverlapping(list.as_ptr(), items, list.len()) };
    Ok(())
}

/// # Safety
/// See [`out_list`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSupportedMemoryClocks(
    device: nvmlDevice_t,
    count: *mut c_uint,
    clocks: *mut c_uint,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        let list = g.sim.supported_memory_clocks().map_err(gpu_err)?;
        // SAFETY: caller contract.
        unsafe { out_list(count, clocks, &list) }
    })
}

/// # Safety
/// See [`out_list`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSupportedGraphicsClocks(
    device: nvmlDevice_t,
    memory_mhz: c_uint,
    count: *mut c_uint,
    clocks: *mut c_uint,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        // NVML answers NOT_FOUND for a memory clock that is not supported.
        let list = g
            .sim
            .supported_graphics_clocks(memory_mhz)
            .map_err(|_| nvmlReturn_enum_NVML_ERROR_NOT_FOUND)?;
        // SAFETY: caller contract.
        unsafe { out_list(count, clocks, &list) }
    })
}

/// Current clock of a domain; video runs at a fixed ratio of graphics on these parts.
fn current_clock(g: &Slot, clock_type: nvmlClockType_t) -> Result<u32, Code> {
    let c = g.sim.clocks().map_err(gpu_err)?;
    match clock_type {
        nvmlClockType_enum_NVML_CLOCK_GRAPHICS | nvmlClockType_enum_NVML_CLOCK_SM => {
            Ok(c.graphics_mhz)
        }
        nvmlClockType_enum_NVML_CLOCK_MEM => Ok(c.memory_mhz),
        nvmlClockType_enum_NVML_CLOCK_VIDEO => Ok(c.graphics_mhz * 9 / 10),
        _ => Err(INVALID),
    }
}

fn max_clock(g: &Slot, clock_type: nvmlClockType_t) -> Result<u32, Code> {
    let p = g.sim.profile();
    match clock_type {
        nvmlClockType_enum_NVML_CLOCK_GRAPHICS | nvmlClockType_enum_NVML_CLOCK_SM => {
            Ok(p.max_clock_mhz())
        }
        nvmlClockType_enum_NVML_CLOCK_MEM => Ok(p.memory_clock_mhz()),
        nvmlClockType_enum_NVML_CLOCK_VIDEO => Ok(p.max_clock_mhz() * 9 / 10),
        _ => Err(INVALID),
    }
}

fn app_clock(g: &Slot, clock_type: nvmlClockType_t, default: bool) -> Result<u32, Code> {
    let c = g.sim.clocks().map_err(gpu_err)?;
    let spec = g.sim.profile().spec();
    match clock_type {
        nvmlClockType_enum_NVML_CLOCK_GRAPHICS | nvmlClockType_enum_NVML_CLOCK_SM if default => {
            Ok(spec.clocks.default_application_mhz)
        }
        // The setting, in force or not yet: NVML reports the target, not the running clock.
        nvmlClockType_enum_NVML_CLOCK_GRAPHICS | nvmlClockType_enum_NVML_CLOCK_SM => Ok(g
            .settings
            .app_mhz
            .unwrap_or(spec.clocks.default_application_mhz)),
        nvmlClockType_enum_NVML_CLOCK_MEM => Ok(c.memory_mhz),
        _ => Err(nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED),
    }
}

/// # Safety
/// `clock` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(
    device: nvmlDevice_t,
    t: nvmlClockType_t,
    clock: *mut c_uint,
) -> nvmlReturn_t {
    // SAFETY: caller contract.
    on_gpu(device, |g| unsafe { out(clock, current_clock(g, t)?) })
}

/// # Safety
/// `clock` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxClockInfo(
    device: nvmlDevice_t,
    t: nvmlClockType_t,
    clock: *mut c_uint,
) -> nvmlReturn_t {
    // SAFETY: caller contract.
    on_gpu(device, |g| unsafe { out(clock, max_clock(g, t)?) })
}

/// # Safety
/// `mhz` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetClock(
    device: nvmlDevice_t,
    t: nvmlClockType_t,
    id: nvmlClockId_t,
    mhz: *mut c_uint,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        let v = match id {
            nvmlClockId_enum_NVML_CLOCK_ID_CURRENT => current_clock(g, t)?,
            nvmlClockId_enum_NVML_CLOCK_ID_APP_CLOCK_TARGET => app_clock(g, t, false)?,
            nvmlClockId_enum_NVML_CLOCK_ID_APP_CLOCK_DEFAULT => app_clock(g, t, true)?,
            nvmlClockId_enum_NVML_CLOCK_ID_CUSTOMER_BOOST_MAX => max_clock(g, t)?,
            _ => return Err(INVALID),
        };
        // SAFETY: caller contract.
        unsafe { out(mhz, v) }
    })
}

/// # Safety
/// `mhz` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetApplicationsClock(
    device: nvmlDevice_t,
    t: nvmlClockType_t,
    mhz: *mut c_uint,
) -> nvmlReturn_t {
    // SAFETY: caller contract.
    on_gpu(device, |g| unsafe { out(mhz, app_clock(g, t, false)?) })
}

/// # Safety
/// `mhz` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDefaultApplicationsClock(
    device: nvmlDevice_t,
    t: nvmlClockType_t,
    mhz: *mut c_uint,
) -> nvmlReturn_t {
    // SAFETY: caller contract.
    on_gpu(device, |g| unsafe { out(mhz, app_clock(g, t, true)?) })
}

/// # Safety
/// Both pointers are valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetAutoBoostedClocksEnabled(
    device: nvmlDevice_t,
    enabled: *mut nvmlEnableState_t,
    default_enabled: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        let on = nvmlEnableState_enum_NVML_FEATURE_ENABLED;
        let v = if g.settings.auto_boost {
            on
        } else {
            nvmlEnableState_enum_NVML_FEATURE_DISABLED
        };
        // SAFETY: caller contract.
        unsafe { out(enabled, v).and_then(|()| out(default_enabled, on)) }
    })
}

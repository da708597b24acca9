//! Setters: locked and application clocks, memory locked clocks, auto boost, power limit. Each
//! one is logged and persisted (with a state file); a set-clock call blocks its caller for the
//! simulated call latency, outside the driver lock, as the real call does.

use std::ffi::c_uint;
use std::time::Duration;

use eali::gpu::{Architecture, ClockChange, GpuBackend, GpuError};
use nvml_wrapper_sys::bindings::*;

use super::{INVALID, on_driver};
use crate::driver::{Code, Driver};

/// Symbolic clock limits (`NVML_CLOCK_LIMIT_ID_*`).
const LIMIT_ID_RANGE_START: c_uint = 0xffff_ff00;
const LIMIT_ID_UNLIMITED: c_uint = 0xffff_ff02;

/// Runs a clock setter on GPU `i`, logs `op` (or its refusal), and returns the call latency to
/// block for.
fn clock_op(
    d: &mut Driver,
    i: usize,
    op: String,
    f: impl FnOnce(&mut crate::driver::Slot) -> Result<ClockChange, GpuError>,
) -> Result<f64, Code> {
    match f(&mut d.gpus[i]) {
        Ok(change) => {
            d.record(i as u32, op);
            Ok(change.call_latency_s)
        }
        Err(e) => {
            d.record(i as u32, format!("denied {op}: {e}"));
            Err(super::gpu_err(e))
        }
    }
}

/// Runs a blocking setter: the driver work under the lock, then the call latency outside it.
fn blocking(
    device: nvmlDevice_t,
    f: impl FnOnce(&mut Driver, usize) -> Result<f64, Code>,
) -> nvmlReturn_t {
    let t0 = std::time::Instant::now();
    let mut block_s = 0.0;
    let mut realtime = true;
    let code = on_driver(device, |d, i| {
        realtime = d.cfg.realtime;
        block_s = f(d, i)?;
        Ok(())
    });
    // The call as a whole lasts the simulated latency, the driver's own work included.
    let left = block_s - t0.elapsed().as_secs_f64();
    if realtime && left > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(left));
    }
    code
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceSetGpuLockedClocks(
    device: nvmlDevice_t,
    min_mhz: c_uint,
    max_mhz: c_uint,
) -> nvmlReturn_t {
    let symbolic = (
        min_mhz >= LIMIT_ID_RANGE_START,
        max_mhz >= LIMIT_ID_RANGE_START,
    );
    match symbolic {
        // Mixing a number and a symbol is refused, as by NVML.
        (true, false) | (false, true) => INVALID,
        (true, true) if min_mhz == LIMIT_ID_UNLIMITED && max_mhz == LIMIT_ID_UNLIMITED => {
            nvmlDeviceResetGpuLockedClocks(device)
        }
        (true, true) => blocking(device, |d, i| {
            let (lo, hi) = {
                let p = d.gpus[i].sim.profile();
                (p.min_clock_mhz(), p.max_clock_mhz())
            };
            lock(d, i, lo, hi)
        }),
        (false, false) => blocking(device, |d, i| lock(d, i, min_mhz, max_mhz)),
    }
}

/// Locked-clock calls are issued "from another thread" of the simulated GPU, so a synthetic load
/// keeps running through the call (a blocking call on the simulated GPU would idle it); the
/// caller still blocks for the call latency.
fn lock(d: &mut Driver, i: usize, lo: u32, hi: u32) -> Result<f64, Code> {
    clock_op(d, i, format!("lock {lo}-{hi}"), |g| {
        let now = g.sim.now();
        let change = g.sim.schedule_locked_clocks_at(now, lo, hi)?;
        g.settings.locked = Some((lo, hi));
        Ok(change)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceResetGpuLockedClocks(device: nvmlDevice_t) -> nvmlReturn_t {
    blocking(device, |d, i| {
        clock_op(d, i, "reset-lock".into(), |g| {
            let now = g.sim.now();
            let change = g.sim.schedule_reset_locked_clocks_at(now)?;
            g.settings.locked = None;
            Ok(change)
        })
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceSetApplicationsClocks(
    device: nvmlDevice_t,
    mem_mhz: c_uint,
    gr_mhz: c_uint,
) -> nvmlReturn_t {
    blocking(device, |d, i| {
        clock_op(d, i, format!("app {mem_mhz},{gr_mhz}"), |g| {
            let change = g.sim.set_application_clocks(mem_mhz, gr_mhz)?;
            g.settings.app_mhz = Some(gr_mhz);
            // Pascal and newer turn auto boost off with application clocks; older parts do not.
            if g.sim.info().architecture >= Architecture::Pascal {
                g.settings.auto_boost = false;
            }
            Ok(change)
        })
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceResetApplicationsClocks(device: nvmlDevice_t) -> nvmlReturn_t {
    blocking(device, |d, i| {
        clock_op(d, i, "reset-app".into(), |g| {
            let change = g.sim.reset_application_clocks()?;
            g.settings.app_mhz = None;
            g.settings.auto_boost = true;
            Ok(change)
        })
    })
}

/// Checks shared by the setters the simulated GPU does not model itself.
fn check_setter(d: &Driver, i: usize, min_arch: Architecture) -> Result<(), Code> {
    let g = &d.gpus[i];
    if g.no_permission {
        return Err(nvmlReturn_enum_NVML_ERROR_NO_PERMISSION);
    }
    if g.sim.info().architecture < min_arch {
        return Err(nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED);
    }
    Ok(())
}

/// Memory locked clocks (Ampere and newer). The memory clock of the simulated GPU is fixed, so
/// the setting is kept but changes no physics.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceSetMemoryLockedClocks(
    device: nvmlDevice_t,
    min_mhz: c_uint,
    max_mhz: c_uint,
) -> nvmlReturn_t {
    on_driver(device, |d, i| {
        let op = format!("mem-lock {min_mhz}-{max_mhz}");
        if let Err(code) = check_setter(d, i, Architecture::Ampere) {
            d.record(i as u32, format!("denied {op}"));
            return Err(code);
        }
        if min_mhz > max_mhz {
            return Err(INVALID);
        }
        d.gpus[i].settings.mem_locked = Some((min_mhz, max_mhz));
        d.record(i as u32, op);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceResetMemoryLockedClocks(device: nvmlDevice_t) -> nvmlReturn_t {
    on_driver(device, |d, i| {
        if let Err(code) = check_setter(d, i, Architecture::Ampere) {
            d.record(i as u32, "denied reset-mem-lock".into());
            return Err(code);
        }
        d.gpus[i].settings.mem_locked = None;
        d.record(i as u32, "reset-mem-lock".into());
        Ok(())
    })
}

/// Auto boost can be switched on Maxwell and older only; newer parts answer NOT_SUPPORTED.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceSetAutoBoostedClocksEnabled(
    device: nvmlDevice_t,
    enabled: nvmlEnableState_t,
) -> nvmlReturn_t {
    on_driver(device, |d, i| {
        let on = enabled == nvmlEnableState_enum_NVML_FEATURE_ENABLED;
        let op = format!("auto-boost {}", if on { "on" } else { "off" });
        if d.gpus[i].no_permission {
            d.record(i as u32, format!("denied {op}"));
            return Err(nvmlReturn_enum_NVML_ERROR_NO_PERMISSION);
        }
        if d.gpus[i].sim.info().architecture >= Architecture::Pascal {
            return Err(nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED);
        }
        d.gpus[i].settings.auto_boost = on;
        d.record(i as u32, op);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceSetPowerManagementLimit(
    device: nvmlDevice_t,
    limit_mw: c_uint,
) -> nvmlReturn_t {
    on_driver(device, |d, i| {
        let w = f64::from(limit_mw) / 1e3;
        let op = format!("power-limit {w}");
        match d.gpus[i].sim.set_power_limit(w) {
            Ok(()) => {
                d.gpus[i].settings.power_limit_w = w;
                d.record(i as u32, op);
                Ok(())
            }
            Err(e) => {
                d.record(i as u32, format!("denied {op}: {e}"));
                Err(super::gpu_err(e))
            }
        }
    })
}

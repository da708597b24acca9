//! Power, energy, field values, power limits, temperature, utilisation, throttle reasons.

use std::ffi::{c_int, c_uint, c_ulonglong};

use eali::gpu::{GpuBackend, PowerSemantics};
use nvml_wrapper_sys::bindings::field_id::*;
use nvml_wrapper_sys::bindings::*;

use super::{INVALID, gpu_err, on_gpu, out};
use crate::driver::{Code, Slot};

fn milliwatts(w: f64) -> c_uint {
    (w * 1e3).round().clamp(0.0, f64::from(c_uint::MAX)) as c_uint
}

/// `nvmlDeviceGetPowerUsage`: instantaneous on GA100 and older, a 1 s average on newer parts,
/// as the profile says.
///
/// # Safety
/// `power` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(
    device: nvmlDevice_t,
    power: *mut c_uint,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        let p = g.sim.power().map_err(gpu_err)?;
        // SAFETY: caller contract.
        unsafe { out(power, milliwatts(p.watts)) }
    })
}

/// # Safety
/// `energy` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    device: nvmlDevice_t,
    energy: *mut c_ulonglong,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        let mj = g.energy_mj().map_err(gpu_err)?;
        // SAFETY: caller contract.
        unsafe { out(energy, mj) }
    })
}

/// One field value: (value type, value) or the entry's own error code.
fn field(
    g: &mut Slot,
    id: u32,
    power_fields: bool,
) -> Result<(nvmlValueType_t, nvmlValue_t), Code> {
    let not_supported = nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
    let uint = |v: c_uint| {
        (
            nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_INT,
            nvmlValue_t { uiVal: v },
        )
    };
    match id {
        NVML_FI_DEV_POWER_INSTANT if power_fields => Ok(uint(milliwatts(g.instant_w))),
        // The 1 s average exists where the power reading is one (Ampere except GA100, newer).
        NVML_FI_DEV_POWER_AVERAGE if power_fields => {
            let p = g.sim.power().map_err(gpu_err)?;
            match p.semantics {
                PowerSemantics::Averaged1s => Ok(uint(milliwatts(p.watts))),
                PowerSemantics::Instantaneous => Err(not_supported),
            }
        }
        NVML_FI_DEV_ENERGY => {
            let mj = g.energy_mj().map_err(gpu_err)?;
            Ok((
                nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
                nvmlValue_t { ullVal: mj },
            ))
        }
        _ => Err(not_supported),
    }
}

/// # Safety
/// `values` holds `count` entries with `fieldId` set.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFieldValues(
    device: nvmlDevice_t,
    count: c_int,
    values: *mut nvmlFieldValue_t,
) -> nvmlReturn_t {
    let power_fields = crate::driver::with_driver(|d| Ok(d.cfg.power_fields)).unwrap_or(false);
    on_gpu(device, |g| {
        if values.is_null() || count < 0 {
            return Err(INVALID);
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        for k in 0..count as usize {
            // SAFETY: `values` holds `count` entries by the caller's contract.
            let v = unsafe { &mut *values.add(k) };
            v.timestamp = stamp;
            v.latencyUsec = 0;
            match field(g, v.fieldId, power_fields) {
                Ok((t, val)) => {
                    v.valueType = t;
                    v.value = val;
                    v.nvmlReturn = nvmlReturn_enum_NVML_SUCCESS;
                }
                Err(code) => v.nvmlReturn = code,
            }
        }
        Ok(())
    })
}

/// # Safety
/// `limit` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimit(
    device: nvmlDevice_t,
    limit: *mut c_uint,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        let l = g.sim.power_limit().map_err(gpu_err)?;
        // SAFETY: caller contract.
        unsafe { out(limit, milliwatts(l.current_w)) }
    })
}

/// # Safety
/// `limit` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEnforcedPowerLimit(
    device: nvmlDevice_t,
    limit: *mut c_uint,
) -> nvmlReturn_t {
    // SAFETY: caller contract.
    unsafe { nvmlDeviceGetPowerManagementLimit(device, limit) }
}

/// # Safety
/// `limit` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementDefaultLimit(
    device: nvmlDevice_t,
    limit: *mut c_uint,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        let l = g.sim.power_limit().map_err(gpu_err)?;
        // SAFETY: caller contract.
        unsafe { out(limit, milliwatts(l.default_w)) }
    })
}

/// # Safety
/// Both pointers are valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimitConstraints(
    device: nvmlDevice_t,
    min: *mut c_uint,
    max: *mut c_uint,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        let l = g.sim.power_limit().map_err(gpu_err)?;
        // SAFETY: caller contract.
        unsafe { out(min, milliwatts(l.min_w)).and_then(|()| out(max, milliwatts(l.max_w))) }
    })
}

/// # Safety
/// `temp` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: nvmlDevice_t,
    sensor: nvmlTemperatureSensors_t,
    temp: *mut c_uint,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        if sensor != nvmlTemperatureSensors_enum_NVML_TEMPERATURE_GPU {
            return Err(nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED);
        }
        let t = g.sim.temperature_c().map_err(gpu_err)?;
        // SAFETY: caller contract.
        unsafe { out(temp, t) }
    })
}

/// # Safety
/// `util` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    util: *mut nvmlUtilization_t,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        // The synthetic load is compute-bound: memory is busy a fraction of the time.
        let u = nvmlUtilization_t {
            gpu: (g.load * 100.0).round() as c_uint,
            memory: (g.load * 30.0).round() as c_uint,
        };
        // SAFETY: caller contract.
        unsafe { out(util, u) }
    })
}

/// # Safety
/// `reasons` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksThrottleReasons(
    device: nvmlDevice_t,
    reasons: *mut c_ulonglong,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        let r = g.sim.throttle_reasons().map_err(gpu_err)?;
        let mut bits = 0u64;
        let mut set = |on: bool, bit: u32| {
            if on {
                bits |= u64::from(bit);
            }
        };
        set(r.gpu_idle, nvmlClocksThrottleReasonGpuIdle);
        set(
            r.applications_clocks_setting,
            nvmlClocksThrottleReasonApplicationsClocksSetting,
        );
        set(r.sw_power_cap, nvmlClocksThrottleReasonSwPowerCap);
        set(r.hw_slowdown, nvmlClocksThrottleReasonHwSlowdown);
        // SAFETY: caller contract.
        unsafe { out(reasons, bits) }
    })
}

/// # Safety
/// `reasons` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksEventReasons(
    device: nvmlDevice_t,
    reasons: *mut c_ulonglong,
) -> nvmlReturn_t {
    // SAFETY: caller contract.
    unsafe { nvmlDeviceGetCurrentClocksThrottleReasons(device, reasons) }
}

/// # Safety
/// `state` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPerformanceState(
    device: nvmlDevice_t,
    state: *mut nvmlPstates_t,
) -> nvmlReturn_t {
    on_gpu(device, |g| {
        let idle =
            g.sim.throttle_reasons().map_err(gpu_err)?.gpu_idle && g.settings.locked.is_none();
        let p = if idle {
            nvmlPStates_enum_NVML_PSTATE_8
        } else {
            nvmlPStates_enum_NVML_PSTATE_0
        };
        // SAFETY: caller contract.
        unsafe { out(state, p) }
    })
}

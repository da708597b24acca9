//! NVML event sets: XID and ECC events of the simulated GPUs, delivered to the sets registered
//! for them when they happened.

use std::ffi::{c_uint, c_ulonglong};
use std::time::{Duration, Instant};

use nvml_wrapper_sys::bindings::*;

use super::{call, on_gpu, out};
use crate::driver::{SUPPORTED_EVENTS, handle_of, set_handle_of, with_driver};

/// How often a blocking wait looks for new events.
const WAIT_POLL: Duration = Duration::from_millis(2);

/// # Safety
/// `set` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut nvmlEventSet_t) -> nvmlReturn_t {
    call(|| {
        with_driver(|d| {
            let id = d.create_set();
            // SAFETY: caller contract.
            unsafe { out(set, set_handle_of(id)) }
        })
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceRegisterEvents(
    device: nvmlDevice_t,
    types: c_ulonglong,
    set: nvmlEventSet_t,
) -> nvmlReturn_t {
    call(|| with_driver(|d| d.register(device, types, set)))
}

/// # Safety
/// `types` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: nvmlDevice_t,
    types: *mut c_ulonglong,
) -> nvmlReturn_t {
    // SAFETY: caller contract.
    on_gpu(device, |_| unsafe { out(types, SUPPORTED_EVENTS) })
}

/// Waits up to `timeout_ms` for an event; `NVML_ERROR_TIMEOUT` when none came, and
/// `NVML_ERROR_GPU_IS_LOST` when a registered GPU is gone and nothing is left to deliver.
///
/// # Safety
/// `data` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeout_ms: c_uint,
) -> nvmlReturn_t {
    call(|| {
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        loop {
            // Look under the driver lock, sleep outside it.
            if let Some(ev) = with_driver(|d| d.poll_set(set))? {
                let e = nvmlEventData_t {
                    device: handle_of(ev.gpu),
                    eventType: ev.event_type,
                    eventData: ev.data,
                    gpuInstanceId: 0,
                    computeInstanceId: 0,
                };
                // SAFETY: caller contract.
                return unsafe { out(data, e) };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(nvmlReturn_enum_NVML_ERROR_TIMEOUT);
            }
            std::thread::sleep(WAIT_POLL.min(deadline - now));
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlEventSetFree(set: nvmlEventSet_t) -> nvmlReturn_t {
    call(|| with_driver(|d| d.free_set(set)))
}

//! The exported C functions, with the signatures of NVML's `nvml.h` (types from
//! `nvml-wrapper-sys`, so the ABI is the one `nvml-wrapper` calls). A panic never crosses the C
//! boundary: it becomes `NVML_ERROR_UNKNOWN`.

use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};

use nvml_wrapper_sys::bindings::*;

use crate::driver::{Code, Driver, Slot, code_of, with_driver};
use eali::gpu::GpuError;

mod control;
mod events;
mod power;
mod query;
mod system;

pub(crate) const SUCCESS: Code = nvmlReturn_enum_NVML_SUCCESS;
pub(crate) const INVALID: Code = nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;

/// Runs `f`, turning its result (or a panic) into an NVML return code.
pub(crate) fn call(f: impl FnOnce() -> Result<(), Code>) -> nvmlReturn_t {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => nvmlReturn_enum_NVML_ERROR_UNKNOWN,
    }
}

/// Runs `f` on the GPU behind `device`, brought up to now; a lost GPU answers GPU_IS_LOST.
pub(crate) fn on_gpu(
    device: nvmlDevice_t,
    f: impl FnOnce(&mut Slot) -> Result<(), Code>,
) -> nvmlReturn_t {
    call(|| {
        with_driver(|d| {
            let slot = d.slot(device)?;
            if slot.lost {
                return Err(nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST);
            }
            f(slot)
        })
    })
}

/// Like [`on_gpu`] with the whole driver at hand (for setters that persist state).
pub(crate) fn on_driver(
    device: nvmlDevice_t,
    f: impl FnOnce(&mut Driver, usize) -> Result<(), Code>,
) -> nvmlReturn_t {
    call(|| {
        with_driver(|d| {
            let slot = d.slot(device)?;
            if slot.lost {
                return Err(nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST);
            }
            let i = slot.index as usize;
            f(d, i)
        })
    })
}

pub(crate) fn gpu_err(e: GpuError) -> Code {
    code_of(&e)
}

/// Writes `v` through an out-pointer.
///
/// # Safety
/// `p` is null or valid for a write of `T` (the caller's NVML contract).
pub(crate) unsafe fn out<T>(p: *mut T, v: T) -> Result<(), Code> {
    if p.is_null() {
        return Err(INVALID);
    }
    // SAFETY: non-null, and valid for writes by the caller's contract.
    unsafe { p.write(v) };
    Ok(())
}

/// Copies `s` with a terminating NUL into a caller buffer of `len` bytes.
///
/// # Safety
/// `buf` is null or valid for `len` bytes of writes.
pub(crate) unsafe fn out_str(buf: *mut c_char, len: u32, s: &str) -> Result<(), Code> {
    if buf.is_null() {
        return Err(INVALID);
    }
    let bytes = s.as_bytes();
    if bytes.len() + 1 > len as usize {
        return Err(nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE);
    }
    // SAFETY: the buffer holds `len` ≥ bytes.len() + 1 bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buf, bytes.len());
        buf.add(bytes.len()).write(0);
    }
    Ok(())
}

/// Reads a NUL-terminated C string argument.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string.
pub(crate) unsafe fn in_str(p: *const c_char) -> Result<String, Code> {
    if p.is_null() {
        return Err(INVALID);
    }
    // SAFETY: NUL-terminated by the caller's contract.
    let s = unsafe { std::ffi::CStr::from_ptr(p) };
    s.to_str().map(str::to_owned).map_err(|_| INVALID)
}

/// Fixed-size C string field of a struct.
pub(crate) fn fill_chars<const N: usize>(dst: &mut [c_char; N], s: &str) {
    for (d, b) in dst.iter_mut().zip(s.bytes().take(N - 1)) {
        *d = b as c_char;
    }
}

//! The thin layer between rkvm and the C kernel.
//!
//! `bindings` is generated at build time by bindgen (see `Kbuild`) from `bindings_helper.h`, so
//! every C layout, constant and ioctl number comes from the kernel's own headers. The other
//! modules wrap what 6.12's `kernel` crate has no abstraction for (misc devices, anon-inode files,
//! `file_operations` tables, vCPU mmap faults) in small safe types; nothing above this layer calls
//! into C directly.

pub(crate) mod fileops;
pub(crate) mod miscdev;
pub(crate) mod uapi;

/// The generated bindings (module-private: these are rkvm's, not the kernel crate's).
#[allow(
    dead_code,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    improper_ctypes,
    unreachable_pub,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    missing_docs,
    unknown_lints,
    unnecessary_transmutes
)]
pub(crate) mod bindings {
    include!("bindings_generated.rs");
}

/// `current->mm` of the calling task, as an opaque identity (never dereferenced by Rust).
pub(crate) fn current_mm() -> *mut bindings::mm_struct {
    // SAFETY: `rkvm_current_mm` only reads `current->mm`; it is always safe to call from process
    // context, which is where every caller (an ioctl) runs.
    unsafe { bindings::rkvm_current_mm() }
}

/// Whether `[addr, addr + size)` lies in the user part of the current task's address space
/// (the kernel's `access_ok`).
pub(crate) fn access_ok(addr: u64, size: u64) -> bool {
    // SAFETY: `access_ok` only compares numbers against the task's address-space limit.
    unsafe { bindings::rkvm_access_ok(addr as _, size as _) }
}

/// The host TSC frequency in kHz (`tsc_khz`).
pub(crate) fn tsc_khz() -> u32 {
    // SAFETY: reads a global set at boot (and refined once by the TSC calibration work).
    unsafe { bindings::rkvm_tsc_khz() }
}

/// Whether the host's TSC is marked unstable (`check_tsc_unstable`).
pub(crate) fn tsc_unstable() -> bool {
    // SAFETY: reads a global flag; no preconditions.
    unsafe { bindings::rkvm_check_tsc_unstable() }
}

/// The number of online CPUs.
pub(crate) fn num_online_cpus() -> u32 {
    // SAFETY: reads a global counter; no preconditions.
    unsafe { bindings::rkvm_num_online_cpus() }
}

/// A C string module parameter, read as bytes (without the NUL).
pub(crate) fn param(getter: unsafe extern "C" fn() -> *const kernel::ffi::c_char) -> &'static [u8] {
    // SAFETY: the getters return the `charp` parameter, which the module loader set to a
    // NUL-terminated string (or its default literal) before `init` and which is never changed
    // afterwards (the parameters are read-only, mode 0444).
    unsafe { kernel::str::CStr::from_char_ptr(getter()) }.as_bytes()
}

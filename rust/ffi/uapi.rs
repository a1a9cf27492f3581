//! The KVM uapi types rkvm copies to and from userspace.
//!
//! The structs themselves come from the kernel's `uapi/linux/kvm.h` through bindgen; this file
//! only declares which of them may be read from and written to user memory as plain bytes, and
//! gives the two copy helpers every ioctl uses (`copy_from_user` / `copy_to_user` over
//! [`UserSlice`], so a bad pointer is `EFAULT`).

use super::bindings;
use kernel::error::Result;
use kernel::types::{AsBytes, FromBytes};
use kernel::uaccess::UserSlice;

macro_rules! plain_old_data {
    ($($t:ident),* $(,)?) => {
        $(
            // SAFETY: a KVM uapi struct: only integer fields, arrays of them and unions of those
            // with a user pointer (`kvm_dirty_log`; every bit pattern is a valid raw pointer, and
            // rkvm reads only the union's `u64` view), declared with explicit padding members so
            // the ABI has no implicit padding (so it is `AsBytes`), and every bit pattern is a
            // valid value (so it is `FromBytes`).
            unsafe impl FromBytes for bindings::$t {}
            // SAFETY: as above.
            unsafe impl AsBytes for bindings::$t {}
        )*
    };
}

plain_old_data!(
    kvm_regs,
    kvm_sregs,
    kvm_segment,
    kvm_dtable,
    kvm_userspace_memory_region,
    kvm_msr_entry,
    kvm_cpuid_entry2,
    kvm_fpu,
    kvm_debugregs,
    kvm_guest_debug,
    kvm_xcrs,
    kvm_xcr,
    kvm_mp_state,
    kvm_userspace_memory_region2,
    kvm_interrupt,
    kvm_vcpu_events,
    kvm_signal_mask,
    kvm_translation,
    kvm_irqchip,
    kvm_irq_level,
    kvm_lapic_state,
    kvm_enable_cap,
    kvm_coalesced_mmio_zone,
    kvm_pre_fault_memory,
    kvm_dirty_log,
    kvm_clear_dirty_log,
    kvm_ioeventfd,
    kvm_x86_mce,
    kvm_clock_data,
    kvm_device_attr,
);

// SAFETY: `struct kvm_msr_filter` and its `struct kvm_msr_filter_range`s hold only integers and
// a user pointer (`bitmap`), for which every bit pattern is a valid value (a raw pointer rkvm
// never dereferences: it only gives its address to `UserSlice`). They are only read from
// userspace: the range has implicit padding before `bitmap`, so they are not `AsBytes`.
unsafe impl FromBytes for bindings::kvm_msr_filter {}
// SAFETY: as above.
unsafe impl FromBytes for bindings::kvm_msr_filter_range {}

/// Copies `n` `T`s in from the user array at `arg` (`EFAULT` if it cannot be read).
pub(crate) fn read_user_array<T: FromBytes + Default + Copy>(arg: usize, n: usize) -> Result<kernel::alloc::KVec<T>> {
    let mut v = kernel::alloc::KVec::with_capacity(n, kernel::alloc::flags::GFP_KERNEL_ACCOUNT)?;
    let mut r = UserSlice::new(arg, n * core::mem::size_of::<T>()).reader();
    for _ in 0..n {
        v.push(r.read::<T>()?, kernel::alloc::flags::GFP_KERNEL_ACCOUNT)?;
    }
    Ok(v)
}

/// Copies `items` out to the user array at `arg` (`EFAULT` if it cannot be written).
pub(crate) fn write_user_array<T: AsBytes>(arg: usize, items: &[T]) -> Result {
    let mut w = UserSlice::new(arg, core::mem::size_of_val(items)).writer();
    for item in items {
        w.write(item)?;
    }
    Ok(())
}

/// Copies the words of a bitmap out to the user buffer at `arg` as bytes (x86 is little-endian,
/// so this is the `unsigned long` bitmap userspace expects; `EFAULT` if it cannot be written).
pub(crate) fn write_user_words(arg: usize, words: &[u64]) -> Result {
    // SAFETY: `u64` has no padding, so all `size_of_val(words)` bytes are initialised; `u8` needs
    // no alignment; the byte view covers the same memory and lives no longer than `words`.
    let bytes = unsafe { core::slice::from_raw_parts(words.as_ptr().cast::<u8>(), core::mem::size_of_val(words)) };
    UserSlice::new(arg, bytes.len()).writer().write_slice(bytes)
}

/// Fills `words` from the user buffer at `arg` (`EFAULT` if it cannot be read; nothing is read
/// for an empty `words`, whatever `arg` is).
pub(crate) fn read_user_words(arg: usize, words: &mut [u64]) -> Result {
    // SAFETY: every byte pattern is a valid `u64`; `u8` needs no alignment; the byte view covers
    // the same memory and borrows it exclusively for as long as `words` is borrowed.
    let bytes =
        unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), core::mem::size_of_val(words)) };
    UserSlice::new(arg, bytes.len()).reader().read_slice(bytes)
}

/// Copies a `T` in from the user pointer `arg` (`EFAULT` if it cannot be read).
pub(crate) fn read_user<T: FromBytes>(arg: usize) -> Result<T> {
    UserSlice::new(arg, core::mem::size_of::<T>()).reader().read::<T>()
}

/// Copies `value` out to the user pointer `arg` (`EFAULT` if it cannot be written).
pub(crate) fn write_user<T: AsBytes>(arg: usize, value: &T) -> Result {
    UserSlice::new(arg, core::mem::size_of::<T>()).writer().write(value)
}

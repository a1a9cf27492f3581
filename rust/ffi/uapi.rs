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
            // SAFETY: a KVM uapi struct: only integer fields and arrays of them, declared with
            // explicit padding members so the ABI has no implicit padding (so it is `AsBytes`),
            // and every bit pattern is a valid value (so it is `FromBytes`).
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
);

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

/// Copies a `T` in from the user pointer `arg` (`EFAULT` if it cannot be read).
pub(crate) fn read_user<T: FromBytes>(arg: usize) -> Result<T> {
    UserSlice::new(arg, core::mem::size_of::<T>()).reader().read::<T>()
}

/// Copies `value` out to the user pointer `arg` (`EFAULT` if it cannot be written).
pub(crate) fn write_user<T: AsBytes>(arg: usize, value: &T) -> Result {
    UserSlice::new(arg, core::mem::size_of::<T>()).writer().write(value)
}

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
);

/// Copies a `T` in from the user pointer `arg` (`EFAULT` if it cannot be read).
pub(crate) fn read_user<T: FromBytes>(arg: usize) -> Result<T> {
    UserSlice::new(arg, core::mem::size_of::<T>()).reader().read::<T>()
}

/// Copies `value` out to the user pointer `arg` (`EFAULT` if it cannot be written).
pub(crate) fn write_user<T: AsBytes>(arg: usize, value: &T) -> Result {
    UserSlice::new(arg, core::mem::size_of::<T>()).writer().write(value)
}

//! Misc character device registration (6.12's `kernel` crate has no misc-device abstraction).
//!
//! A [`MiscDevice`] couples a C `struct miscdevice` with Rust data `T`; [`Registration`] owns it
//! pinned on the heap while it is registered and deregisters it on drop. When userspace opens the
//! node, `misc_open` points the file's `private_data` at the `miscdevice`, which is how
//! [`MiscKind::ioctl`] finds `T` again. The table's owner is this module, so an open device file
//! pins the module just as the VM and vCPU files do.

use super::bindings;
use kernel::error::{Error, Result};
use kernel::ffi::{c_long, c_uint, c_ulong};
use kernel::container_of;
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::types::Opaque;
use kernel::ThisModule;

/// A misc device whose files call into `Self::Data`.
pub(crate) trait MiscKind: 'static {
    /// What the device carries (reachable from every file opened on it).
    type Data: Send + Sync;

    /// `unlocked_ioctl` on a file opened on the device node.
    fn ioctl(data: &Self::Data, cmd: u32, arg: usize) -> Result<isize>;
}

/// The `file_operations` of a misc device of kind `K`.
pub(crate) struct MiscFops(bindings::file_operations);

// SAFETY: only function pointers and the module pointer, never mutated after construction.
unsafe impl Sync for MiscFops {}

impl MiscFops {
    /// The table for devices of kind `K`, owned by `module`.
    pub(crate) const fn new<K: MiscKind>(module: &'static ThisModule) -> MiscFops {
        // SAFETY: all-zeroes is the valid "not implemented" value of every field.
        let mut fops: bindings::file_operations = unsafe { core::mem::zeroed() };
        fops.owner = module.as_ptr().cast();
        fops.unlocked_ioctl = Some(ioctl_callback::<K>);
        fops.llseek = Some(bindings::noop_llseek);
        MiscFops(fops)
    }
}

/// A misc device and its data.
///
/// # Invariants
///
/// While inside a [`Registration`], `raw` is registered with the misc core and names `fops`
/// (a `MiscFops` built for the `MiscKind` whose `Data` is `T`).
pub(crate) struct MiscDevice<T> {
    raw: Opaque<bindings::miscdevice>,
    data: T,
}

/// A registered misc device; deregistered when dropped.
pub(crate) struct Registration<T: 'static> {
    dev: Pin<KBox<MiscDevice<T>>>,
}

// SAFETY: the C `miscdevice` is only touched by the misc core under its own lock, and by us at
// registration and deregistration; the Rust data is `Send + Sync` itself.
unsafe impl<T: Send + Sync> Send for Registration<T> {}
// SAFETY: shared access only reads `data` (`Sync`) and the C side serialises its own accesses.
unsafe impl<T: Send + Sync> Sync for Registration<T> {}

impl<T: Send + Sync + 'static> Registration<T> {
    /// Registers `/dev/<name>` with the given minor (or `MISC_DYNAMIC_MINOR`) and mode.
    ///
    /// Fails with the misc core's error, e.g. `EBUSY` when a fixed minor is taken.
    pub(crate) fn register<K: MiscKind<Data = T>>(
        name: &'static CStr,
        minor: i32,
        mode: u16,
        fops: &'static MiscFops,
        data: T,
    ) -> Result<Self> {
        // SAFETY: all-zeroes is a valid unregistered `miscdevice` (empty list head, no parent).
        let mut raw: bindings::miscdevice = unsafe { core::mem::zeroed() };
        raw.minor = minor;
        raw.name = name.as_char_ptr();
        raw.fops = &fops.0;
        raw.mode = mode;
        let dev = KBox::pin(MiscDevice { raw: Opaque::new(raw), data }, GFP_KERNEL)?;
        // SAFETY: `raw` is pinned on the heap for as long as the `Registration` lives and is
        // deregistered before it is freed; `name` and `fops` are `'static`.
        let ret = unsafe { bindings::misc_register(dev.raw.get()) };
        if ret != 0 {
            return Err(Error::from_errno(ret));
        }
        Ok(Registration { dev })
    }
}

impl<T: 'static> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the device is registered; it is deregistered exactly
        // once, here, before the box is freed.
        unsafe { bindings::misc_deregister(self.dev.raw.get()) };
    }
}

unsafe extern "C" fn ioctl_callback<K: MiscKind>(
    file: *mut bindings::file,
    cmd: c_uint,
    arg: c_ulong,
) -> c_long {
    // SAFETY: `misc_open` set `private_data` to the registered `miscdevice`, which is the `raw`
    // field of a `MiscDevice<K::Data>` (the only devices that use this table). It stays
    // registered while the file is open: the file pins this module, whose exit deregisters it.
    let data = unsafe {
        let raw = (*file).private_data as *const Opaque<bindings::miscdevice>;
        let dev = container_of!(raw, MiscDevice<K::Data>, raw);
        &(*dev).data
    };
    match K::ioctl(data, cmd, arg as usize) {
        Ok(v) => v as c_long,
        Err(e) => e.to_errno() as c_long,
    }
}


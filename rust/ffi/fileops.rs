//! `file_operations` tables for rkvm's anon-inode files (VM and vCPU fds), and their creation.
//!
//! Upstream KVM gives each VM and vCPU an anonymous-inode file whose `private_data` points at the
//! `struct kvm` / `struct kvm_vcpu` and whose `release` drops the reference the file held. Here a
//! [`FileKind`] names what a file's `private_data` owns (an `Arc` or `KBox`, via
//! [`ForeignOwnable`]), [`Fops::new`] builds the C table whose callbacks borrow it, and
//! [`create_fd`] installs a new fd owning one such value. `fops.owner` is this module, so every
//! open file pins the module (rmmod is refused while any fd lives), exactly as upstream.

use super::bindings;
use kernel::container_of;
use kernel::error::{code::*, Error, Result};
use kernel::ffi::{c_int, c_long, c_uint, c_ulong, c_void};
use kernel::str::CStr;
use kernel::types::ForeignOwnable;
use kernel::ThisModule;

/// The value a file's `private_data` owns, borrowed for the duration of one callback.
pub(crate) type Borrowed<'a, K> = <<K as FileKind>::Data as ForeignOwnable>::Borrowed<'a>;

/// A kind of anon-inode file of rkvm.
pub(crate) trait FileKind: Sized + 'static {
    /// What `private_data` owns: dropped when the last reference to the file goes away.
    type Data: ForeignOwnable + Send + Sync;

    /// Whether the file can be mmap'ed (then [`FileKind::mmap`] and [`FileKind::fault`] apply).
    const MMAP: bool = false;
    /// Whether the file can be read (then [`FileKind::read`] applies).
    const READ: bool = false;

    /// `read` of `count` bytes at file position `pos` into the user buffer `buf`: the number of
    /// bytes copied (the position advances by it).
    fn read(_data: Borrowed<'_, Self>, _buf: usize, _count: usize, _pos: u64) -> Result<usize> {
        Err(EINVAL)
    }

    /// `unlocked_ioctl`: the return value becomes the syscall's (an fd, a count or 0).
    fn ioctl(data: Borrowed<'_, Self>, cmd: u32, arg: usize) -> Result<isize>;

    /// Checks a new mapping (`vma` covers `pages` pages starting at page offset `pgoff`).
    fn mmap(_data: Borrowed<'_, Self>, _pgoff: u64, _pages: u64) -> Result {
        Err(ENODEV)
    }

    /// The page to map at page offset `pgoff` of the file, with a reference taken for the
    /// mapping, or `None` (the access gets SIGBUS).
    fn fault(_data: Borrowed<'_, Self>, _pgoff: u64) -> Option<*mut bindings::page> {
        None
    }
}

/// A `file_operations` table, immutable once built.
pub(crate) struct Fops {
    fops: bindings::file_operations,
    vm_ops: bindings::vm_operations_struct,
}

// SAFETY: the tables hold only function pointers and the module pointer; they are never mutated
// after construction, and the C side only reads them.
unsafe impl Sync for Fops {}

impl Fops {
    /// The table for files of kind `K`, owned by `module`.
    pub(crate) const fn new<K: FileKind>(module: &'static ThisModule) -> Fops {
        // SAFETY: `file_operations` and `vm_operations_struct` are C structs of optional function
        // pointers and plain data, for which all-zeroes is the valid "not implemented" value.
        let (mut fops, mut vm_ops): (bindings::file_operations, bindings::vm_operations_struct) =
            unsafe { (core::mem::zeroed(), core::mem::zeroed()) };
        fops.owner = module.as_ptr().cast();
        fops.unlocked_ioctl = Some(ioctl_callback::<K>);
        fops.release = Some(release_callback::<K>);
        fops.llseek = Some(bindings::noop_llseek);
        if K::MMAP {
            fops.mmap = Some(mmap_callback::<K>);
            vm_ops.fault = Some(fault_callback::<K>);
        }
        if K::READ {
            fops.read = Some(read_callback::<K>);
        }
        Fops { fops, vm_ops }
    }

    /// The C table, for `misc_register` or `anon_inode_getfd`.
    pub(crate) fn as_ptr(&'static self) -> *const bindings::file_operations {
        &self.fops
    }
}

/// Installs a new fd for an anon-inode file named `name` whose `private_data` owns `data`
/// (`anon_inode_getfd` with `O_RDWR | O_CLOEXEC`, as upstream's VM and vCPU fds).
///
/// On failure `data` is dropped here and nothing else remains.
pub(crate) fn create_fd<K: FileKind>(fops: &'static Fops, name: &CStr, data: K::Data) -> Result<i32> {
    create_fd_flags::<K>(fops, name, data, bindings::O_RDWR)
}

/// [`create_fd`] with the access mode `flags` (`O_RDONLY` for stats fds); `O_CLOEXEC` is added.
pub(crate) fn create_fd_flags<K: FileKind>(fops: &'static Fops, name: &CStr, data: K::Data, flags: u32) -> Result<i32> {
    let ptr = data.into_foreign();
    // SAFETY: `name` is NUL-terminated and only read during the call (the dentry copies it);
    // `fops` is a `'static` table whose callbacks expect `private_data` to come from
    // `K::Data::into_foreign`, which `ptr` does.
    let fd = unsafe {
        if K::READ {
            bindings::rkvm_anon_inode_getfd_pread(
                name.as_char_ptr(),
                fops.as_ptr(),
                ptr as *mut c_void,
                (flags | bindings::O_CLOEXEC) as c_int,
            )
        } else {
            bindings::anon_inode_getfd(
                name.as_char_ptr(),
                fops.as_ptr(),
                ptr as *mut c_void,
                (flags | bindings::O_CLOEXEC) as c_int,
            )
        }
    };
    if fd < 0 {
        // SAFETY: no file was created, so `ptr` is still ours alone and is reclaimed once.
        drop(unsafe { K::Data::from_foreign(ptr) });
        return Err(Error::from_errno(fd));
    }
    Ok(fd)
}

/// Borrows the data a file of kind `K` owns.
///
/// # Safety
///
/// `file` must be a live file created by [`create_fd`] for kind `K` (its `private_data` came
/// from `K::Data::into_foreign` and `release` has not run), and the borrow must end before the
/// callback that got `file` returns.
unsafe fn borrow<'a, K: FileKind>(file: *mut bindings::file) -> Borrowed<'a, K> {
    // SAFETY: per the function's contract.
    unsafe { K::Data::borrow((*file).private_data) }
}

fn errno_to_long(r: Result<isize>) -> c_long {
    match r {
        Ok(v) => v as c_long,
        Err(e) => e.to_errno() as c_long,
    }
}

unsafe extern "C" fn ioctl_callback<K: FileKind>(
    file: *mut bindings::file,
    cmd: c_uint,
    arg: c_ulong,
) -> c_long {
    // SAFETY: the VFS calls `unlocked_ioctl` on a live file that uses this table, so it was made
    // by `create_fd::<K>`, and holds a reference to it for the whole call.
    let data = unsafe { borrow::<K>(file) };
    errno_to_long(K::ioctl(data, cmd, arg as usize))
}

unsafe extern "C" fn read_callback<K: FileKind>(
    file: *mut bindings::file,
    buf: *mut kernel::ffi::c_char,
    count: usize,
    ppos: *mut bindings::loff_t,
) -> isize {
    // SAFETY: the VFS calls `read` on a live file that uses this table (made by
    // `create_fd::<K>`), holding a reference for the call; `ppos` points at the position it
    // passes for this read, valid for the call.
    let (data, pos) = unsafe { (borrow::<K>(file), *ppos) };
    if pos < 0 {
        return EINVAL.to_errno() as isize;
    }
    match K::read(data, buf as usize, count, pos as u64) {
        Ok(n) => {
            // SAFETY: as above; `n <= count`, so the position stays within `loff_t`.
            unsafe { *ppos = pos + n as bindings::loff_t };
            n as isize
        }
        Err(e) => e.to_errno() as isize,
    }
}

unsafe extern "C" fn release_callback<K: FileKind>(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: `release` runs once, when the last reference to the file is gone; `private_data`
    // came from `into_foreign` in `create_fd::<K>` and nobody can borrow it any more.
    drop(unsafe { K::Data::from_foreign((*file).private_data) });
    0
}

unsafe extern "C" fn mmap_callback<K: FileKind>(
    file: *mut bindings::file,
    vma: *mut bindings::vm_area_struct,
) -> c_int {
    // SAFETY: the VFS calls `mmap` with a live file of this table and a vma being set up under
    // the mmap lock, which we may read and whose `vm_ops` we may set.
    unsafe {
        let data = borrow::<K>(file);
        let pgoff = (*vma).vm_pgoff as u64;
        let len = ((*vma).__bindgen_anon_1.__bindgen_anon_1.vm_end
            - (*vma).__bindgen_anon_1.__bindgen_anon_1.vm_start) as u64;
        let pages = len >> bindings::PAGE_SHIFT;
        match K::mmap(data, pgoff, pages) {
            Ok(()) => {
                let fops: *const Fops = container_of!((*file).f_op, Fops, fops);
                (*vma).vm_ops = &(*fops).vm_ops;
                0
            }
            Err(e) => e.to_errno(),
        }
    }
}

unsafe extern "C" fn fault_callback<K: FileKind>(vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
    // SAFETY: the fault handler runs with the vma alive (mmap lock or vma lock held); the vma's
    // file reference keeps the file, and thus its `private_data`, alive.
    unsafe {
        let vma = (*vmf).__bindgen_anon_1.vma;
        let file = (*vma).vm_file;
        let data = borrow::<K>(file);
        match K::fault(data, (*vmf).__bindgen_anon_1.pgoff as u64) {
            Some(page) => {
                (*vmf).page = page;
                0
            }
            None => bindings::VM_FAULT_SIGBUS as bindings::vm_fault_t,
        }
    }
}

//! Thin wrappers over the system calls the fuzzer makes besides ioctl, and the anonymous
//! mappings it owns.

use std::sync::atomic::{AtomicUsize, Ordering};

pub const PAGE: usize = 4096;

/// The calling thread's errno.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// An `mmap` the fuzzer owns: unmapped when dropped. `addr` is 0 once gone (or never made).
#[derive(Debug)]
pub struct Mem {
    addr: AtomicUsize,
    pub len: usize,
}

impl Mem {
    /// An anonymous private mapping of `len` bytes (`MAP_NORESERVE`: untouched pages cost
    /// nothing), or `None`.
    pub fn anon(len: usize, prot: i32) -> Option<Mem> {
        Self::map(len, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, -1, 0)
    }

    /// `mmap(NULL, len, prot, flags, fd, off)`; `None` on failure (errno set).
    pub fn map(len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> Option<Mem> {
        // SAFETY: a new mapping at an address the kernel picks; nothing existing is replaced.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, off) };
        if p == libc::MAP_FAILED {
            None
        } else {
            Some(Mem { addr: AtomicUsize::new(p as usize), len })
        }
    }

    /// Adopts a mapping made elsewhere (e.g. by `mremap`).
    pub fn adopt(addr: usize, len: usize) -> Mem {
        Mem { addr: AtomicUsize::new(addr), len }
    }

    pub fn addr(&self) -> usize {
        self.addr.load(Ordering::Relaxed)
    }

    pub fn ptr(&self) -> *mut u8 {
        self.addr() as *mut u8
    }

    /// Replaces the memory with an inaccessible reservation of the same range: the pages are
    /// freed, and the address cannot be handed out again (a guest whose slot still points here
    /// must never write into some later mapping of ours).
    pub fn neuter(&self) {
        let a = self.addr();
        if a != 0 {
            // SAFETY: replaces our own mapping in place; callers hold no reference into it.
            unsafe {
                libc::mmap(
                    a as *mut libc::c_void,
                    self.len,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
        }
    }

    /// Gives the mapping up without unmapping it (after `mremap` moved it).
    pub fn forget(&self) {
        self.addr.store(0, Ordering::Relaxed);
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        let a = self.addr();
        if a != 0 {
            // SAFETY: our own mapping; no reference into it outlives the `Mem`.
            unsafe { libc::munmap(a as *mut libc::c_void, self.len) };
        }
    }
}

/// Views a plain-data uapi struct as bytes.
pub fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: `T` is a `#[repr(C)]` plain-data struct from kvm-bindings (Copy, no references);
    // reading its bytes is reading initialised memory of exactly `size_of::<T>()` bytes, padding
    // included, which bindgen structs zero-initialise through `Default`/`zeroed` in this crate.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()).to_vec() }
}

/// Reads a plain-data uapi struct from the start of `bytes` (zero-extended if short).
pub fn from_bytes<T: Copy>(bytes: &[u8]) -> T {
    let mut buf = vec![0u8; std::mem::size_of::<T>()];
    let n = bytes.len().min(buf.len());
    buf[..n].copy_from_slice(&bytes[..n]);
    // SAFETY: `buf` has `size_of::<T>()` bytes; every bit pattern is a valid value of the
    // kvm-bindings plain-data structs this is used with (integers, arrays and unions of them).
    unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) }
}

/// A zeroed plain-data uapi struct.
pub fn zeroed<T: Copy>() -> T {
    from_bytes(&[])
}

/// Short errno names for the histogram.
pub fn errno_name(e: i32) -> String {
    let n = match e {
        0 => "ok",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ESPIPE => "ESPIPE",
        _ => return format!("errno{e}"),
    };
    n.to_string()
}

/// What an fd of this process is (`/proc/self/fd` link), if open.
pub fn fd_target(fd: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok().map(|p| p.to_string_lossy().into_owned())
}

/// The open fds of this process with what they are.
pub fn open_fds() -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .filter_map(|fd| fd_target(fd).map(|t| (fd, t)))
                // The directory being read.
                .filter(|(_, t)| !t.starts_with("/proc/"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

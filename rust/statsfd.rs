//! `KVM_GET_STATS_FD` on VM and vCPU fds (upstream: `kvm_vm_ioctl_get_stats_fd`,
//! `kvm_vcpu_ioctl_get_stats_fd`, `kvm_stats_read`): a read-only anon-inode file whose contents
//! are the binary image `stats.rs` lays out, with the values read at each `read`.
//!
//! The file holds references on what it reports (the VM, and the vCPU), so it stays readable
//! after their fds are closed, as upstream's (which holds a VM reference).

use crate::ffi::fileops::{self, FileKind, Fops};
use crate::stats;
use crate::vcpu::Vcpu;
use crate::vm::Vm;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::c_str;
use kernel::fmt;
use kernel::prelude::*;
use kernel::str::CString;
use kernel::sync::Arc;
use kernel::uaccess::UserSlice;

/// Counters one writer bumps and stats readers read (upstream: `struct kvm_vcpu_stat`). The
/// owner of the counter (the vCPU's run loop, under its mutex) is the only writer, so an
/// increment is a relaxed load and store: no locked instruction on the exit path.
pub(crate) struct Counters<const N: usize>([AtomicU64; N]);

impl<const N: usize> Counters<N> {
    pub(crate) fn new() -> Self {
        Counters([const { AtomicU64::new(0) }; N])
    }

    /// Adds one to counter `i` (single writer: see the type's doc).
    pub(crate) fn inc(&self, i: usize) {
        let c = &self.0[i];
        c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    pub(crate) fn get(&self, i: usize) -> u64 {
        self.0[i].load(Ordering::Relaxed)
    }
}

/// A vCPU's counters, indexed by `stats::vcpu::*`.
pub(crate) type VcpuStats = Counters<{ stats::vcpu::COUNT }>;

/// What a stats fd reports.
pub(crate) enum StatsFile {
    Vm(Arc<Vm>),
    Vcpu(Arc<Vm>, Arc<Vcpu>),
}

struct StatsKind;

static STATS_FOPS: Fops = Fops::new::<StatsKind>(&crate::THIS_MODULE);

/// Creates a stats fd (`O_RDONLY`, as upstream), named like upstream's.
pub(crate) fn create_fd(what: StatsFile) -> Result<i32> {
    let name = match what {
        StatsFile::Vm(_) => c_str!("kvm-vm-stats"),
        StatsFile::Vcpu(..) => c_str!("kvm-vcpu-stats"),
    };
    let data = KBox::new(what, GFP_KERNEL_ACCOUNT)?;
    fileops::create_fd_flags::<StatsKind>(&STATS_FOPS, name, data, crate::ffi::bindings::O_RDONLY)
}

impl FileKind for StatsKind {
    type Data = KBox<StatsFile>;
    const READ: bool = true;

    fn ioctl(_f: &StatsFile, _cmd: u32, _arg: usize) -> Result<isize> {
        Err(ENOTTY)
    }

    /// `kvm_stats_read`: the image from `pos`; 0 at or past its end.
    fn read(f: &StatsFile, buf: usize, count: usize, pos: u64) -> Result<usize> {
        let (descs, id, values): (&[stats::Desc], CString, KVec<u64>) = match f {
            StatsFile::Vm(vm) => {
                let mut v = KVec::new();
                for i in 0..stats::VM.len() {
                    v.push(vm.stat(i), GFP_KERNEL)?;
                }
                (stats::VM, CString::try_from_fmt(fmt!("kvm-{}", vm.creator_pid))?, v)
            }
            StatsFile::Vcpu(vm, vcpu) => {
                let mut v = KVec::new();
                for i in 0..stats::VCPU.len() {
                    v.push(vcpu.stats.get(i), GFP_KERNEL)?;
                }
                (stats::VCPU, CString::try_from_fmt(fmt!("kvm-{}/vcpu-{}", vm.creator_pid, vcpu.id))?, v)
            }
        };
        let len = stats::layout(descs.len()).3;
        let mut image = KVec::from_elem(0u8, len, GFP_KERNEL)?;
        stats::write_image(id.as_bytes(), descs, &values, &mut image);
        let w = stats::read_window(len, pos, count);
        let n = w.len();
        UserSlice::new(buf, n).writer().write_slice(&image[w])?;
        Ok(n)
    }
}

//! The device fd: `/dev/rkvm` (or `/dev/kvm`), upstream's `kvm_dev_ioctl`.
//!
//! Opening the misc device gives a file with no state of its own; its ioctls answer questions
//! about the hypervisor and create VMs. Unknown ioctls get `EINVAL`, as upstream x86's
//! `kvm_arch_dev_ioctl` default.

use crate::backend::Backend;
use crate::caps;
use crate::ffi::bindings as b;
use crate::ffi::miscdev::{MiscFops, MiscKind, Registration};
use crate::{vcpu, vm};
use kernel::c_str;
use kernel::prelude::*;
use kernel::sync::Arc;

/// What the registered device carries: the backend chosen at load time.
pub(crate) struct DeviceData {
    backend: Arc<dyn Backend>,
}

/// The device's file kind.
struct DevFile;

impl MiscKind for DevFile {
    type Data = DeviceData;

    /// `kvm_dev_ioctl`.
    fn ioctl(dev: &DeviceData, cmd: u32, arg: usize) -> Result<isize> {
        match cmd {
            b::KVM_GET_API_VERSION => {
                if arg != 0 {
                    return Err(EINVAL);
                }
                Ok(b::KVM_API_VERSION as isize)
            }
            b::KVM_CREATE_VM => vm::create(&dev.backend, arg).map(|fd| fd as isize),
            b::KVM_CHECK_EXTENSION => Ok(caps::check_extension(&*dev.backend, arg)),
            b::KVM_GET_VCPU_MMAP_SIZE => {
                if arg != 0 {
                    return Err(EINVAL);
                }
                Ok(vcpu::MMAP_SIZE as isize)
            }
            b::KVM_GET_SUPPORTED_CPUID => supported_cpuid(&*dev.backend, arg).map(|()| 0),
            b::KVM_GET_MSR_INDEX_LIST => msr_index_list(dev.backend.msr_indices(), arg).map(|()| 0),
            // Upstream `kvm_arch_dev_ioctl`: the feature MSRs, and KVM_GET_MSRS of them
            // (`msr_io(NULL, argp, do_get_feature_msr, 1)`).
            b::KVM_GET_MSR_FEATURE_INDEX_LIST => msr_index_list(dev.backend.feature_msr_indices(), arg).map(|()| 0),
            // Upstream `kvm_arch_dev_ioctl`: the IA32_MCG_CAP bits KVM_X86_SETUP_MCE accepts.
            b::KVM_X86_GET_MCE_CAP_SUPPORTED => {
                crate::ffi::uapi::write_user(arg, &crate::x86::mce::SUPPORTED).map(|()| 0)
            }
            b::KVM_GET_MSRS => vcpu::msr_io(arg, false, |index, data| {
                let v = dev.backend.get_feature_msr(index);
                *data = v.unwrap_or(0);
                Ok(v.is_some())
            }),
            _ => Err(EINVAL),
        }
    }
}

/// `KVM_GET_SUPPORTED_CPUID` (upstream `kvm_dev_ioctl_get_cpuid`): `E2BIG` when `nent` is
/// below the number of entries (then `nent` is left alone), else the entries and their count.
fn supported_cpuid(backend: &dyn Backend, arg: usize) -> Result {
    let nent: u32 = crate::ffi::uapi::read_user(arg)?;
    let caps = backend.cpuid_caps();
    let mut list = KVec::new();
    let mut err = Ok(());
    let host = |leaf, sub| {
        let r = core::arch::x86_64::__cpuid_count(leaf, sub);
        [r.eax, r.ebx, r.ecx, r.edx]
    };
    crate::x86::cpuid::supported(host, &caps, |e| {
        if err.is_ok() {
            err = list.push(e, GFP_KERNEL).map_err(Error::from);
        }
    });
    err?;
    if (nent as usize) < list.len() {
        return Err(E2BIG);
    }
    vcpu::write_cpuid2(arg, &list)
}

/// `KVM_GET_MSR_INDEX_LIST` and `KVM_GET_MSR_FEATURE_INDEX_LIST` (upstream
/// `kvm_arch_dev_ioctl`): `struct kvm_msr_list` holds the
/// array's capacity; the real count is written back first, then `E2BIG` if it does not fit.
fn msr_index_list(list: &[u32], arg: usize) -> Result {
    let cap: u32 = crate::ffi::uapi::read_user(arg)?;
    crate::ffi::uapi::write_user(arg, &(list.len() as u32))?;
    if (cap as usize) < list.len() {
        return Err(E2BIG);
    }
    crate::ffi::uapi::write_user_array(arg + 4, list)
}

static DEV_FOPS: MiscFops = MiscFops::new::<DevFile>(&crate::THIS_MODULE);

/// Mode of the device node: root only, like an unconfigured `/dev/kvm`.
const DEV_MODE: u16 = 0o600;

/// Registers the device under `devname` (`rkvm`, or `kvm` for drop-in use).
pub(crate) fn register(devname: &[u8], backend: Arc<dyn Backend>) -> Result<Registration<DeviceData>> {
    let data = DeviceData { backend };
    match devname {
        b"rkvm" => {
            Registration::register::<DevFile>(c_str!("rkvm"), b::MISC_DYNAMIC_MINOR as i32, DEV_MODE, &DEV_FOPS, data)
        }
        // The real KVM's node: same name and fixed minor, so exactly one of the two can own it.
        b"kvm" => Registration::register::<DevFile>(c_str!("kvm"), b::KVM_MINOR as i32, DEV_MODE, &DEV_FOPS, data)
            .inspect_err(|e| {
                if *e == EBUSY {
                    pr_err!(
                        "devname=kvm refused: /dev/kvm (misc minor {}) is already registered by the kernel's KVM; unload kvm_intel/kvm_amd first\n",
                        b::KVM_MINOR
                    );
                }
            }),
        _ => {
            pr_err!("devname must be rkvm or kvm\n");
            Err(EINVAL)
        }
    }
}

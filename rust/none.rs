//! The `none` backend: a vCPU that holds architectural state but never enters a guest.
//!
//! It supports every ioctl that does not run the guest, with exactly the observable behaviour the
//! VMX backend has (segments round-trip through the VMX access-rights encoding), so the whole
//! ioctl surface can be tested and studied on machines without VT-x (QEMU TCG). `KVM_RUN` fails
//! with `ENOEXEC`, the errno api.rst gives for a vCPU that cannot run ("the vcpu hasn't been
//! initialized").

use crate::backend::{Backend, BackendVcpu, RunContext};
use crate::ffi::bindings;
use crate::x86::cr::Limits;
use crate::x86::segment;
use kernel::prelude::*;

/// The backend itself: stateless.
pub(crate) struct NoneBackend;

impl Backend for NoneBackend {
    fn name(&self) -> &'static str {
        "none"
    }

    fn limits(&self) -> Limits {
        Limits::ARCH
    }

    fn create_vm(&self) -> Result<KBox<dyn crate::backend::BackendVm>> {
        crate::backend::boxed_vm(crate::backend::NoVmState)
    }

    fn create_vcpu(
        &self,
        _vm: &dyn crate::backend::BackendVm,
        _id: u32,
        apic: Option<crate::irq::VcpuApic>,
    ) -> Result<KBox<dyn BackendVcpu>> {
        let mut v = NoneVcpu {
            regs: Default::default(),
            sregs: Default::default(),
            apic,
            mce: KBox::new(Default::default(), GFP_KERNEL_ACCOUNT)?,
        };
        crate::vcpu::reset_state(&mut v.regs, &mut v.sregs);
        crate::backend::boxed(v)
    }
}

/// A vCPU's state, stored as KVM_GET_REGS / KVM_GET_SREGS report it.
struct NoneVcpu {
    regs: bindings::kvm_regs,
    sregs: bindings::kvm_sregs,
    /// The in-kernel LAPIC, for its state ioctls (it never delivers: no guest runs).
    apic: Option<crate::irq::VcpuApic>,
    /// Machine-check state, for `KVM_X86_SETUP_MCE` / `KVM_X86_SET_MCE`.
    mce: KBox<crate::x86::mce::Mce>,
}

impl BackendVcpu for NoneVcpu {
    fn apic(&mut self) -> Option<&mut crate::irq::VcpuApic> {
        self.apic.as_mut()
    }

    fn mce(&mut self) -> Result<&mut crate::x86::mce::Mce> {
        Ok(&mut self.mce)
    }

    /// No guest ever runs to take it: the #MC is dropped (the bank keeps the error).
    fn queue_machine_check(&mut self) -> Result {
        Ok(())
    }

    /// No guest ever runs: nothing to shut down.
    fn request_shutdown(&mut self) -> Result {
        Ok(())
    }

    fn get_regs(&mut self, regs: &mut bindings::kvm_regs) -> Result {
        *regs = self.regs;
        Ok(())
    }

    fn set_regs(&mut self, regs: &bindings::kvm_regs) -> Result {
        self.regs = *regs;
        Ok(())
    }

    fn get_sregs(&mut self, sregs: &mut bindings::kvm_sregs) -> Result {
        *sregs = self.sregs;
        Ok(())
    }

    fn set_sregs(&mut self, sregs: &bindings::kvm_sregs) -> Result {
        use segment::Which::{Ldtr, Other};
        let mut s = *sregs;
        for seg in [&mut s.cs, &mut s.ds, &mut s.es, &mut s.fs, &mut s.gs, &mut s.ss, &mut s.tr] {
            crate::vcpu::normalize_segment(seg, Other);
        }
        crate::vcpu::normalize_segment(&mut s.ldt, Ldtr);
        crate::vcpu::normalize_interrupt_bitmap(&mut s.interrupt_bitmap);
        if s.cr8 > 15 {
            // Upstream's kvm_set_cr8 ignores an invalid TPR here.
            s.cr8 = self.sregs.cr8;
        }
        self.sregs = s;
        Ok(())
    }

    fn run(&mut self, ctx: &mut RunContext<'_>) -> Result {
        // Nothing is ever pending, so `immediate_exit` returns at once, as upstream.
        if ctx.immediate_exit {
            return Err(EINTR);
        }
        Err(ENOEXEC)
    }
}

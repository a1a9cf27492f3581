//! VMCS regions: allocation, which CPU a VMCS is loaded on, VMCLEAR/VMPTRLD, field access.
//!
//! A VMCS may be *current* (loaded) on at most one CPU. Like upstream (`loaded_vmcs`,
//! `vmx_vcpu_load_vmcs`), a vCPU's VMCS stays loaded on the CPU that last ran it; when the vCPU
//! thread next runs elsewhere, the VMCS is first VMCLEARed on the old CPU (by IPI), then
//! VMPTRLDed on the new one. A CPU going offline VMCLEARs every VMCS loaded on it
//! (`clear_all_on_this_cpu`). All VMCSs are registered in the backend's registry for that.
//!
//! Field encodings come from `asm/vmx.h` (`enum vmcs_field`) through bindgen.

use super::insn;
use crate::ffi::bindings as b;
use core::sync::atomic::{AtomicI32, Ordering};
use kernel::page::Page;
use kernel::prelude::*;
use kernel::sync::Mutex;

pub(crate) use b::vmcs_field::Type as Field;
pub(crate) use b::vmcs_field as field;

/// A VMCS region.
///
/// # Invariants
///
/// `page` starts with the VMCS revision id; `cpu` is the CPU the VMCS is current or active
/// on, or -1 when it is clear (not active anywhere).
pub(crate) struct Vmcs {
    /// The VMCS region (owned; the CPU reaches it through `pa`).
    _page: Page,
    pa: u64,
    cpu: AtomicI32,
    /// Whether VMLAUNCH has succeeded since the last VMCLEAR (then VMRESUME must be used).
    pub(crate) launched: bool,
}

/// Every live VMCS (as addresses), so a CPU going offline can find the ones active on it. Lives
/// in the backend's global state ([`super::VmxGlobal`]).
pub(crate) type Registry = Mutex<KVec<usize>>;

impl Vmcs {
    /// Allocates a clear VMCS with the given revision id, registered for CPU-offline clearing.
    pub(crate) fn new(revision_id: u32) -> Result<KBox<Vmcs>> {
        let page = Page::alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO)?;
        // SAFETY: the source is a local 4-byte array; the page is ours and not yet shared.
        unsafe { page.write_raw(revision_id.to_ne_bytes().as_ptr(), 0, 4)? };
        let pa = crate::vmx::page_pa(&page);
        let vmcs = KBox::new(Vmcs { _page: page, pa, cpu: AtomicI32::new(-1), launched: false }, GFP_KERNEL_ACCOUNT)?;
        // If this fails the box is dropped, and `drop` finds nothing to unregister.
        super::global().registry.lock().push(&*vmcs as *const Vmcs as usize, GFP_KERNEL)?;
        Ok(vmcs)
    }

    /// Makes this VMCS current on this CPU, clearing it on the CPU it was last loaded on.
    ///
    /// # Safety
    ///
    /// Preemption must be disabled (and stay so while the VMCS is used), this CPU must be in
    /// VMX operation, and no other thread may load this VMCS concurrently (the vCPU mutex).
    /// Returns whether the VMCS was newly loaded here (per-CPU host fields must be refreshed).
    pub(crate) unsafe fn load(&mut self) -> Result<bool> {
        let this = crate::vmx::this_cpu();
        let old = self.cpu.load(Ordering::Acquire);
        if old == this {
            // Active here, but another vCPU's VMCS may have been made current since (upstream:
            // `per_cpu(current_vmcs) != vmcs` in `vmx_vcpu_load_vmcs`): make it current again.
            // Its per-CPU host state is still this CPU's.
            // SAFETY: this CPU is in VMX operation (our contract); the VMCS is active here.
            if unsafe { insn::vmptrst() } != self.pa {
                // SAFETY: as above.
                unsafe { insn::vmptrld(self.pa) }.map_err(|_| EIO)?;
            }
            return Ok(false);
        }
        if old >= 0 {
            // SAFETY: `clear_remote` only VMCLEARs this VMCS if it is still active on `old`.
            unsafe {
                b::smp_call_function_single(old, Some(clear_remote), self as *mut Vmcs as *mut _, 1);
            }
            // If `old` went offline meanwhile, its offline callback cleared the VMCS.
            if self.cpu.load(Ordering::Acquire) >= 0 {
                return Err(EIO);
            }
        }
        // Clear here, whoever cleared it (the IPI above, or a CPU going offline): the next
        // entry must be VMLAUNCH.
        self.launched = false;
        // SAFETY: the VMCS is clear (not active anywhere); per our contract this CPU is in VMX
        // operation with preemption disabled.
        unsafe { insn::vmptrld(self.pa) }.map_err(|_| EIO)?;
        self.cpu.store(this, Ordering::Release);
        Ok(true)
    }

    /// VMCLEARs this VMCS if it is active on the current CPU.
    ///
    /// # Safety
    ///
    /// Preemption disabled and this CPU in VMX operation.
    unsafe fn clear_here(&self) {
        if self.cpu.load(Ordering::Acquire) == crate::vmx::this_cpu() {
            // SAFETY: the VMCS is ours and active on this CPU, which is in VMX operation.
            let _ = unsafe { insn::vmclear(self.pa) };
            self.cpu.store(-1, Ordering::Release);
        }
    }
}

unsafe extern "C" fn clear_remote(info: *mut kernel::ffi::c_void) {
    // SAFETY: `info` is the `Vmcs` whose owner waits for this IPI; the IPI runs with
    // interrupts off on a CPU in VMX operation.
    unsafe { (*(info as *const Vmcs)).clear_here() };
}

impl Drop for Vmcs {
    fn drop(&mut self) {
        let me = self as *const Vmcs as usize;
        {
            let mut reg = super::global().registry.lock();
            if let Some(i) = reg.iter().position(|&p| p == me) {
                let last = reg.len() - 1;
                reg.as_mut_slice().swap(i, last);
                // SAFETY: shrinking by one drops the swapped-out `usize` (no destructor).
                unsafe { reg.set_len(last) };
            }
        }
        let cpu = self.cpu.load(Ordering::Acquire);
        if cpu >= 0 {
            // SAFETY: the VMCS must not stay active on any CPU once its memory is freed.
            unsafe { b::smp_call_function_single(cpu, Some(clear_remote), me as *mut _, 1) };
        }
    }
}

/// VMCLEARs every VMCS active on this CPU (CPU going offline or module unload).
///
/// # Safety
///
/// Runs on the CPU concerned, in VMX operation, with preemption disabled; `reg` is the locked
/// registry (locked before preemption was disabled: the lock may sleep).
pub(crate) unsafe fn clear_all_on_this_cpu(reg: &KVec<usize>) {
    for &p in reg.iter() {
        // SAFETY: registered pointers are live `Vmcs`s (removed from the registry in `drop`
        // before the memory goes).
        unsafe { (*(p as *const Vmcs)).clear_here() };
    }
}

/// Reads a field of the current VMCS.
pub(crate) fn read(f: Field) -> u64 {
    // SAFETY: callers run between `Vmcs::load` and the end of their preemption-disabled section;
    // a failed read yields 0.
    unsafe { insn::vmread(f) }
}

/// Writes a field of the current VMCS.
pub(crate) fn write(f: Field, v: u64) {
    // SAFETY: as `read`; host-state fields are only written from `host.rs` with this host's
    // values.
    let _ = unsafe { insn::vmwrite(f, v) };
}

//! The backend interface between the generic vm/vcpu code and what runs guests.
//!
//! This is rkvm's `kvm_x86_ops`: [`Backend`] is chosen once at module load (`backend=`), and each
//! vCPU gets a [`BackendVcpu`] from it. The ioctl layer (`vm.rs`, `vcpu.rs`) validates user input
//! the way upstream's generic x86 code does and only then calls the backend, so every backend
//! sees well-formed requests. `none.rs` implements it without entering guests; the VMX backend
//! (`vmx/`) and any later one (SVM) implement the same traits.

use crate::ffi::bindings;
use crate::memslot::Memslot;
use crate::x86::cr::Limits;
use kernel::prelude::*;
use kernel::sync::Arc;

/// A way of running guests (upstream: `struct kvm_x86_ops`).
pub(crate) trait Backend: Send + Sync {
    /// The name given in `backend=`.
    fn name(&self) -> &'static str;

    /// The backend's answer to `KVM_CHECK_EXTENSION` for caps that depend on it, or `None` to
    /// let the generic table in `caps.rs` answer (upstream: `kvm_vm_ioctl_check_extension`).
    fn check_extension(&self, _cap: u32) -> Option<isize> {
        None
    }

    /// The control-register, EFER and address-width limits guests of this backend live under.
    fn limits(&self) -> Limits;
    /// What guests get beyond the host's raw CPUID (`KVM_GET_SUPPORTED_CPUID`).
    fn cpuid_caps(&self) -> crate::x86::cpuid::Caps {
        crate::x86::cpuid::Caps::default()
    }
    /// The MSRs `KVM_GET_MSRS`/`KVM_SET_MSRS` handle (`KVM_GET_MSR_INDEX_LIST`; upstream:
    /// `msrs_to_save` + `emulated_msrs`).
    fn msr_indices(&self) -> &[u32] {
        &[]
    }
    /// The feature MSRs `KVM_GET_MSRS` on the device fd answers (`KVM_GET_MSR_FEATURE_INDEX_LIST`;
    /// upstream: `msr_based_features`).
    fn feature_msr_indices(&self) -> &[u32] {
        &[]
    }
    /// One feature MSR for `KVM_GET_MSRS` on the device fd (upstream `kvm_get_feature_msr`);
    /// `None` for any other index.
    fn get_feature_msr(&self, _index: u32) -> Option<u64> {
        None
    }

    /// Creates the backend part of a new VM (upstream: `vm_init`), e.g. its EPT.
    fn create_vm(&self) -> Result<KBox<dyn BackendVm>>;

    /// Creates the backend part of vCPU `id` of `vm` in its RESET state (upstream:
    /// `vcpu_create` followed by `vcpu_reset`).
    /// `apic`: the vCPU's in-kernel LAPIC, if the VM has an irqchip (`KVM_CREATE_IRQCHIP`).
    fn create_vcpu(&self, vm: &dyn BackendVm, id: u32, apic: Option<crate::irq::VcpuApic>) -> Result<KBox<dyn BackendVcpu>>;
}

/// The backend half of one VM.
pub(crate) trait BackendVm: Send + Sync {
    /// For the backend to find its own type again (`create_vcpu`, `run`).
    fn as_any(&self) -> &dyn core::any::Any;

    /// The fault fast path (upstream `fast_page_fault`): if guest frame `gfn` is mapped, makes
    /// it writable if `writable` (a write to a page write-protected for dirty logging) and
    /// returns true; returns false if it is not mapped. Called with the VM's slots lock held.
    fn fast_fault(&self, _gfn: u64, _writable: bool) -> bool {
        false
    }

    /// Makes what mapping `gfn` needs besides its leaf (upstream `mmu_topup_memory_caches`):
    /// [`BackendVm::map`] runs under the VM's MMU lock, a spinlock the MMU notifier takes from
    /// reclaim, so it must not allocate. Called with the slots lock held and no spinlock.
    fn prepare_map(&self, _gfn: u64) -> Result {
        Err(ENOEXEC)
    }

    /// Maps guest frame `gfn` to host physical address `hpa`, for writes too if `writable`
    /// (upstream `direct_map`), after [`BackendVm::prepare_map`] of the same frame. Called with
    /// the slots lock and the MMU lock held, once the fault checked that no invalidation of the
    /// page's host address ran since it looked the page up; the mapping holds no reference on
    /// the page (the MMU notifier removes it before the page can go).
    fn map(&self, _gfn: u64, _hpa: u64, _writable: bool) -> Result {
        Err(ENOEXEC)
    }

    /// Unmaps guest frames `start..end` (upstream `kvm_unmap_gfn_range`), marking the pages of
    /// writable mappings dirty. Returns whether anything was mapped; if so the caller calls
    /// [`BackendVm::flush_remote_tlbs`] before it drops the MMU lock, and so before the pages
    /// can be freed or the slot change becomes visible. Does not sleep.
    fn unmap_gfn_range(&self, _start: u64, _end: u64) -> bool {
        false
    }

    /// Takes write access away from the mappings of pages `gfn_offset + i` of `slot` for each
    /// bit `i` set in `mask` (upstream `kvm_arch_mmu_enable_log_dirty_pt_masked`), so that the
    /// guest's next write to them faults and is logged. Returns whether a mapping changed; if
    /// so the caller calls [`BackendVm::flush_remote_tlbs`] before it drops the slots lock.
    fn write_protect_masked(&self, _slot: &Memslot, _gfn_offset: u64, _mask: u64) -> bool {
        false
    }

    /// The same for every page of `slot` (upstream `kvm_mmu_slot_remove_write_access`).
    fn write_protect_slot(&self, _slot: &Memslot) -> bool {
        false
    }

    /// Makes every CPU drop the translations it cached from this VM's mappings (upstream
    /// `kvm_flush_remote_tlbs_memslot`).
    fn flush_remote_tlbs(&self) {}
}

/// The backend VM of backends that keep no per-VM state.
pub(crate) struct NoVmState;

impl BackendVm for NoVmState {
    fn as_any(&self) -> &dyn core::any::Any {
        self
    }
}

/// Boxes a backend VM as a trait object (see [`boxed`]).
pub(crate) fn boxed_vm<V: BackendVm + 'static>(v: V) -> Result<KBox<dyn BackendVm>> {
    let b = KBox::new(v, GFP_KERNEL_ACCOUNT)?;
    // SAFETY: as in `boxed`: same allocation, pointer only unsized.
    Ok(unsafe { KBox::from_raw(KBox::into_raw(b) as *mut dyn BackendVm) })
}

/// The backend half of one vCPU. Every call is made with the vCPU's mutex held.
pub(crate) trait BackendVcpu: Send {
    /// `KVM_GET_REGS`.
    fn get_regs(&mut self, regs: &mut bindings::kvm_regs) -> Result;
    /// `KVM_SET_REGS` (RFLAGS bit 1 already forced on).
    fn set_regs(&mut self, regs: &bindings::kvm_regs) -> Result;
    /// `KVM_GET_SREGS`.
    fn get_sregs(&mut self, sregs: &mut bindings::kvm_sregs) -> Result;
    /// `KVM_SET_SREGS`, already validated against [`Backend::limits`].
    fn set_sregs(&mut self, sregs: &bindings::kvm_sregs) -> Result;
    /// Runs the guest until an exit that needs userspace, filling `run` (upstream:
    /// `kvm_arch_vcpu_ioctl_run` from the completion of userspace I/O on, then `vcpu_run`).
    fn run(&mut self, ctx: &mut RunContext<'_>) -> Result;
    /// `KVM_SET_CPUID2` set `table` (upstream `kvm_vcpu_after_set_cpuid`).
    fn after_set_cpuid(&mut self, _table: &[crate::x86::cpuid::Entry]) {}
    /// Whether the vCPU has entered its guest (then `KVM_SET_CPUID2` may not change the table;
    /// upstream `kvm_vcpu_has_run`).
    fn has_run(&self) -> bool {
        false
    }
    /// The guest state CPUID bits follow (CR4 as the guest sees it, XCR0), for
    /// `cpuid::update_runtime`.
    fn cpuid_runtime_state(&mut self) -> Result<(u64, u64)> {
        Ok((0, 1))
    }
    /// `KVM_GET_FPU` (upstream `kvm_arch_vcpu_ioctl_get_fpu`); `EINVAL` where there is none.
    fn get_fpu(&mut self, _fpu: &mut bindings::kvm_fpu) -> Result {
        Err(EINVAL)
    }
    /// `KVM_SET_FPU`.
    fn set_fpu(&mut self, _fpu: &bindings::kvm_fpu) -> Result {
        Err(EINVAL)
    }
    /// `KVM_GET_DEBUGREGS` (with `KVM_CAP_DEBUGREGS`).
    fn get_debugregs(&mut self, _d: &mut bindings::kvm_debugregs) -> Result {
        Err(EINVAL)
    }
    /// `KVM_SET_DEBUGREGS`.
    fn set_debugregs(&mut self, _d: &bindings::kvm_debugregs) -> Result {
        Err(EINVAL)
    }
    /// `KVM_SET_GUEST_DEBUG` (with `KVM_CAP_SET_GUEST_DEBUG`), control flags already known
    /// valid (upstream `kvm_arch_vcpu_ioctl_set_guest_debug`).
    fn set_guest_debug(&mut self, _dbg: &bindings::kvm_guest_debug) -> Result {
        Err(EINVAL)
    }
    /// `KVM_GET_XCRS` (with `KVM_CAP_XCRS`).
    fn get_xcrs(&mut self, _x: &mut bindings::kvm_xcrs) -> Result {
        Err(EINVAL)
    }
    /// `KVM_SET_XCRS`.
    fn set_xcrs(&mut self, _x: &bindings::kvm_xcrs) -> Result {
        Err(EINVAL)
    }
    /// `KVM_GET_XSAVE`: the standard-format XSAVE area (`x86::xsave::SIZE` bytes).
    fn get_xsave(&mut self, _area: &mut [u8]) -> Result {
        Err(EINVAL)
    }
    /// `KVM_SET_XSAVE`.
    fn set_xsave(&mut self, _area: &[u8]) -> Result {
        Err(EINVAL)
    }
    /// `KVM_TRANSLATE`: the guest-physical address of linear address `la` for a supervisor read
    /// through the guest's current paging, `None` if it does not translate.
    fn translate(&mut self, _vm: &crate::vm::Vm, _la: u64) -> Result<Option<u64>> {
        Err(EINVAL)
    }
    /// `KVM_INTERRUPT`: queue external interrupt `vector` for injection (userspace irqchip).
    fn queue_interrupt(&mut self, _vector: u8) -> Result {
        Err(EINVAL)
    }
    /// The vCPU's in-kernel LAPIC, if the VM has an irqchip: the generic `KVM_GET/SET_LAPIC`
    /// and `KVM_GET/SET_MP_STATE` (`vcpu.rs`) work on it.
    fn apic(&mut self) -> Option<&mut crate::irq::VcpuApic> {
        None
    }
    /// `KVM_SET_VCPU_EVENTS`' SIPI vector, used by `KVM_SET_MP_STATE(SIPI_RECEIVED)`.
    fn sipi_vector(&self) -> u8 {
        0
    }
    /// `KVM_NMI`: queue an NMI.
    fn queue_nmi(&mut self) -> Result {
        Err(EINVAL)
    }
    /// `KVM_GET_VCPU_EVENTS`.
    fn get_vcpu_events(&mut self, _e: &mut bindings::kvm_vcpu_events) -> Result {
        Err(EINVAL)
    }
    /// `KVM_SET_VCPU_EVENTS`, already checked for unknown flags and bad exception vectors.
    fn set_vcpu_events(&mut self, _e: &bindings::kvm_vcpu_events) -> Result {
        Err(EINVAL)
    }
    /// One MSR for `KVM_GET_MSRS` (upstream: `do_get_msr` → `vmx_get_msr`, host-initiated);
    /// `None` if the vCPU has no such MSR.
    fn get_msr(&mut self, _ctx: &MsrCtx<'_>, _index: u32) -> Result<Option<u64>> {
        Ok(None)
    }
    /// One MSR for `KVM_SET_MSRS` (upstream `do_set_msr`, host-initiated); `false` if the MSR
    /// does not exist or refuses the value.
    fn set_msr(&mut self, _ctx: &MsrCtx<'_>, _index: u32, _data: u64) -> Result<bool> {
        Ok(false)
    }
    /// The vCPU's machine-check state (upstream `vcpu->arch.mcg_cap` and the banks), which
    /// `KVM_X86_SETUP_MCE`, `KVM_X86_SET_MCE` and the machine-check MSRs work on (a backend
    /// may allocate it on first use: `ENOMEM`).
    fn mce(&mut self) -> Result<&mut crate::x86::mce::Mce> {
        Err(EINVAL)
    }
    /// `KVM_X86_SET_MCE` raised a machine check: queue #MC for the next entry (upstream
    /// `kvm_queue_exception(vcpu, MC_VECTOR)`).
    fn queue_machine_check(&mut self) -> Result {
        Err(EINVAL)
    }
    /// `KVM_X86_SET_MCE` found the guest unable to take #MC: the next `KVM_RUN` ends at once
    /// with `KVM_EXIT_SHUTDOWN` (upstream `KVM_REQ_TRIPLE_FAULT`).
    fn request_shutdown(&mut self) -> Result {
        Err(EINVAL)
    }
    /// Sets the vCPU's TSC offset (upstream: `kvm_vcpu_write_tsc_offset` →
    /// `kvm_x86_ops.write_tsc_offset`), as [`crate::vm::Vm::synchronize_tsc`] computed it, and
    /// the TSC generation it is in.
    fn write_tsc_offset(&mut self, _offset: u64, _gen: u64) -> Result {
        Ok(())
    }
    /// The vCPU's TSC offset (`KVM_GET_DEVICE_ATTR` with `KVM_VCPU_TSC_OFFSET`); `ENXIO` where
    /// the attribute does not exist.
    fn get_tsc_offset(&mut self) -> Result<u64> {
        Err(ENXIO)
    }
    /// `KVM_SET_DEVICE_ATTR` with `KVM_VCPU_TSC_OFFSET` (upstream `kvm_arch_tsc_set_attr`).
    fn set_tsc_offset(&mut self, _vm: &crate::vm::Vm, _offset: u64) -> Result {
        Err(ENXIO)
    }
    /// `KVM_ENABLE_CAP(KVM_CAP_ENFORCE_PV_FEATURE_CPUID)`: PV MSRs and hypercalls only as the
    /// guest's CPUID 0x40000001 allows (`table` is the vCPU's CPUID).
    fn set_pv_enforce(&mut self, _enforce: bool, _table: &[crate::x86::cpuid::Entry]) -> Result {
        Err(EINVAL)
    }
}

/// What an MSR access may consult besides the vCPU (upstream: `struct msr_data` and the
/// `vcpu->kvm` / guest CPUID the common MSR code reads).
pub(crate) struct MsrCtx<'a> {
    /// `KVM_GET_MSRS` / `KVM_SET_MSRS` rather than the guest's RDMSR/WRMSR (upstream
    /// `msr_data.host_initiated`): userspace may restore values the guest could not write.
    pub(crate) host: bool,
    /// The VM (its TSC synchronisation, VM-wide MSR settings).
    pub(crate) vm: &'a crate::vm::Vm,
    /// The guest's CPUID table (`KVM_SET_CPUID2`; empty if none was set).
    pub(crate) cpuid: &'a [crate::x86::cpuid::Entry],
}

impl MsrCtx<'_> {
    /// Whether the guest's CPUID has feature `bit` of register `reg` (EAX..EDX = 0..3) of leaf
    /// `function`.`index` (upstream `guest_cpuid_has`).
    pub(crate) fn guest_has(&self, function: u32, index: u32, reg: usize, bit: u32) -> bool {
        crate::x86::cpuid::has(self.cpuid, function, index, reg, bit)
    }
}

/// Boxes a backend vCPU as a trait object (6.12's `KBox` has no unsizing coercion).
pub(crate) fn boxed<V: BackendVcpu + 'static>(v: V) -> Result<KBox<dyn BackendVcpu>> {
    Ok(unsize(KBox::new(v, GFP_KERNEL_ACCOUNT)?))
}

/// A boxed backend vCPU as the trait object (for a vCPU built in its box: too large to be
/// moved through the stack, see `VmxVcpu::new`).
pub(crate) fn unsize<V: BackendVcpu + 'static>(b: KBox<V>) -> KBox<dyn BackendVcpu> {
    // SAFETY: the pointer comes from `into_raw` of a live box of the same allocator and is only
    // unsized (same address, vtable added), so `from_raw` takes back ownership of that box.
    unsafe { KBox::from_raw(KBox::into_raw(b) as *mut dyn BackendVcpu) }
}

/// What a backend needs from the generic layer during `KVM_RUN`.
#[allow(dead_code)] // Read by backends that enter guests.
pub(crate) struct RunContext<'a> {
    /// The vCPU's shared `struct kvm_run` page (userspace may write it concurrently).
    pub(crate) run: *mut bindings::kvm_run,
    /// The PIO data page (`kvm_run->io.data_offset` is its offset in the vCPU mmap).
    pub(crate) pio: *mut u8,
    /// The VM (memory slots, backend VM state).
    pub(crate) vm: &'a crate::vm::Vm,
    /// The CPUID table userspace set (`KVM_SET_CPUID2`); empty if it set none.
    pub(crate) cpuid: &'a [crate::x86::cpuid::Entry],
    /// The vCPU's statistics (`KVM_GET_STATS_FD`).
    pub(crate) stats: &'a crate::statsfd::VcpuStats,
    /// `kvm_run->immediate_exit` (upstream `!vcpu->wants_to_run`): finish what the last exit
    /// left pending (I/O, MMIO), then return `EINTR` without entering the guest.
    pub(crate) immediate_exit: bool,
}

/// Picks the backend named by the `backend=` module parameter.
pub(crate) fn select(name: &[u8]) -> Result<Arc<dyn Backend>> {
    match name {
        b"none" => {
            let b: Arc<dyn Backend> = Arc::new(crate::none::NoneBackend, GFP_KERNEL)?;
            pr_info!("backend={}: every ioctl that does not enter a guest; KVM_RUN fails with ENOEXEC\n", b.name());
            Ok(b)
        }
        b"vmx" => crate::vmx::VmxBackend::new(),
        _ => {
            pr_err!("unknown backend= value (available: vmx, none)\n");
            Err(EINVAL)
        }
    }
}

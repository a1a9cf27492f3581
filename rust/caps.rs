//! `KVM_CHECK_EXTENSION`: which capabilities rkvm has, on the device fd and on VM fds.
//!
//! Upstream answers in two steps: `kvm_vm_ioctl_check_extension_generic` (virt/kvm/kvm_main.c)
//! for what the generic code provides, then the arch's `kvm_vm_ioctl_check_extension`
//! (arch/x86/kvm/x86.c). rkvm does the same with [`check_extension`] here and
//! [`Backend::check_extension`]. The answers are honest: a cap is reported only when what it
//! promises works, so clients take their fallback paths for everything else (answer 0).

use crate::backend::Backend;
use crate::ffi::bindings as b;
use crate::memslot;

/// Most vCPUs a VM may have (`KVM_CAP_MAX_VCPUS`).
pub(crate) const MAX_VCPUS: u32 = 1024;
/// vCPU ids are below this (`KVM_CAP_MAX_VCPU_ID`).
pub(crate) const MAX_VCPU_ID: u32 = 4096;
/// The `KVM_CAP_X2APIC_API` flags (upstream `KVM_X2APIC_API_VALID_FLAGS`).
pub(crate) const X2APIC_API_VALID_FLAGS: u64 =
    (b::KVM_X2APIC_API_USE_32BIT_IDS | b::KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK) as u64;

/// The answer to `KVM_CHECK_EXTENSION(cap)`; unknown or unimplemented caps answer 0.
pub(crate) fn check_extension(backend: &dyn Backend, cap: usize) -> isize {
    let Ok(cap) = u32::try_from(cap) else {
        return 0;
    };
    if let Some(answer) = backend.check_extension(cap) {
        return answer;
    }
    match cap {
        // Implemented by the generic vm/vcpu code for every backend.
        b::KVM_CAP_USER_MEMORY
        | b::KVM_CAP_DESTROY_MEMORY_REGION_WORKS
        | b::KVM_CAP_READONLY_MEM
        | b::KVM_CAP_SET_TSS_ADDR
        | b::KVM_CAP_SET_IDENTITY_MAP_ADDR
        | b::KVM_CAP_IMMEDIATE_EXIT
        | b::KVM_CAP_CHECK_EXTENSION_VM
        // KVM_GET_SUPPORTED_CPUID and KVM_SET/GET_CPUID2.
        | b::KVM_CAP_EXT_CPUID
        | b::KVM_CAP_MP_STATE
        // KVM_SET_USER_MEMORY_REGION2 (no guest_memfd: KVM_MEM_GUEST_MEMFD stays invalid).
        | b::KVM_CAP_USER_MEMORY2
        | b::KVM_CAP_GET_TSC_KHZ
        // KVM_CREATE_IRQCHIP (LAPIC, IOAPIC, PIC), KVM_IRQ_LINE and KVM_IRQ_LINE_STATUS.
        | b::KVM_CAP_IRQCHIP
        | b::KVM_CAP_IRQ_INJECT_STATUS
        // KVM_ENABLE_CAP on VM fds (KVM_CAP_MAX_VCPU_ID, KVM_CAP_X2APIC_API,
        // KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 and the caps below).
        | b::KVM_CAP_ENABLE_CAP_VM
        // KVM_SET_BOOT_CPU_ID: which vCPU the in-kernel LAPIC and PIC treat as the BSP.
        | b::KVM_CAP_SET_BOOT_CPU_ID
        // KVM_SET_NR_MMU_PAGES (accepted; EPT has no shadow-page cache to bound).
        | b::KVM_CAP_MMU_SHADOW_CACHE_CONTROL
        // KVM_GET_STATS_FD on VM and vCPU fds.
        | b::KVM_CAP_BINARY_STATS_FD
        // KVM_IOEVENTFD on MMIO and PIO, lengths 1, 2, 4, 8 and 0 (any length). Upstream:
        // IOEVENTFD and IOEVENTFD_NO_LENGTH from x86, IOEVENTFD_ANY_LENGTH from the generic code.
        | b::KVM_CAP_IOEVENTFD
        | b::KVM_CAP_IOEVENTFD_NO_LENGTH
        | b::KVM_CAP_IOEVENTFD_ANY_LENGTH
        // KVM_ENABLE_CAP: refused guest RDMSR/WRMSR exit to userspace (KVM_EXIT_X86_RDMSR/WRMSR).
        | b::KVM_CAP_X86_USER_SPACE_MSR
        // KVM_X86_SET_MSR_FILTER.
        | b::KVM_CAP_X86_MSR_FILTER => 1,
        // The most machine-check banks KVM_X86_SETUP_MCE takes; KVM_X86_GET_MCE_CAP_SUPPORTED,
        // KVM_X86_SET_MCE.
        b::KVM_CAP_MCE => crate::x86::mce::MAX_BANKS as isize,
        // KVM_CLEAR_DIRTY_LOG, and KVM_ENABLE_CAP with these options (upstream
        // kvm_vm_ioctl_check_extension_generic: KVM_DIRTY_LOG_MANUAL_CAPS).
        b::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 => crate::dirty::MANUAL_CAPS as isize,
        b::KVM_CAP_NR_VCPUS => crate::ffi::num_online_cpus().min(MAX_VCPUS) as isize,
        b::KVM_CAP_MAX_VCPUS => MAX_VCPUS as isize,
        b::KVM_CAP_MAX_VCPU_ID => MAX_VCPU_ID as isize,
        b::KVM_CAP_NR_MEMSLOTS => memslot::USER_MEM_SLOTS as isize,
        // The page offset of the coalesced ring in the vCPU mmap; PIO zones too.
        b::KVM_CAP_COALESCED_MMIO => b::KVM_COALESCED_MMIO_PAGE_OFFSET as isize,
        b::KVM_CAP_COALESCED_PIO => 1,
        // The flags `KVM_ENABLE_CAP(KVM_CAP_X2APIC_API)` takes (x2APIC itself needs an
        // in-kernel LAPIC; upstream answers the same without one).
        b::KVM_CAP_X2APIC_API => X2APIC_API_VALID_FLAGS as isize,
        // KVM_ENABLE_CAP of the in-kernel LAPIC timer's bus cycle; the answer is the default.
        b::KVM_CAP_X86_APIC_BUS_CYCLES_NS => crate::irq::lapic::BUS_CYCLE_NS as isize,
        // Bit mask of the accepted KVM_CREATE_VM types: only the default x86 VM.
        b::KVM_CAP_VM_TYPES => 1 << b::KVM_X86_DEFAULT_VM,
        // KVM_GET_CLOCK / KVM_SET_CLOCK: the flags they know (upstream KVM_CLOCK_VALID_FLAGS).
        b::KVM_CAP_ADJUST_CLOCK => crate::x86::pvclock::CLOCK_VALID_FLAGS as isize,
        // The kvm_run->s.regs parts (KVM_SYNC_X86_*).
        b::KVM_CAP_SYNC_REGS => crate::vcpu::SYNC_REGS_VALID as isize,
        _ => 0,
    }
}

//! The VMX backend (Intel VT-x): rkvm's `kvm_intel`.
//!
//! - `config.rs` (pure): capability MSRs → the VMCS configuration every vCPU uses.
//! - this file: detection, the per-CPU VMXON regions, VMXON/VMXOFF on every CPU including CPUs
//!   that come online later (CPU hotplug), and the [`Backend`] implementation.
//! - `vmcs.rs`: VMCS regions and their loading; `insn.rs`: the VMX instructions.
//! - `ept.rs`: EPT tables built on demand from the memory slots.
//! - `entry.rs`: the assembly around VMLAUNCH/VMRESUME.
//! - `vcpu.rs`: a vCPU's VMCS set-up, its run loop (host state around entry) and exit handling.
//!
//! Global state lives in one [`VmxGlobal`], reachable from the CPU-hotplug callbacks through
//! [`GLOBAL`]; it exists from backend creation until the module unloads (every VM and vCPU holds
//! a module reference, so none outlives it).

#[allow(unreachable_pub)] // pure file, also compiled by the host tests
pub(crate) mod config;
mod entry;
#[allow(unreachable_pub)] // pure file, also compiled by the host tests
pub(crate) mod events;
pub(crate) mod ept;
mod insn;
#[allow(unreachable_pub)] // pure file, also compiled by the host tests
mod pt;
pub(crate) mod vcpu;
pub(crate) mod vmcs;

use crate::backend::{Backend, BackendVcpu, BackendVm};
use crate::ffi::bindings as b;
use crate::x86::cr::{self as xcr, Limits};
use crate::x86::msr;
use crate::x86::xsave;
use config::{CapMsrs, VmcsConfig, Want, Wants};
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::page::Page;
use kernel::prelude::*;
use kernel::sync::Arc;

/// State shared by all VMX CPUs, vCPUs and VMs.
#[pin_data]
pub(crate) struct VmxGlobal {
    /// The VMCS configuration derived from the capability MSRs.
    pub(crate) config: VmcsConfig,
    /// One VMXON region per possible CPU id.
    regions: KVec<Page>,
    /// Every live VMCS (for CPU offlining).
    #[pin]
    pub(crate) registry: vmcs::Registry,
    /// Intel PT, when present and `pt_mode=1` (host-guest): its address ranges.
    pub(crate) pt: Option<pt::PtCaps>,
    /// What the host CPU has that decides which MSRs and XCR0 bits guests get.
    pub(crate) host: HostCaps,
    /// The MSR bitmap every vCPU uses (read-only after init; see `x86/msr.rs`).
    msr_bitmap: Page,
    /// Per-CPU user-return MSR state, indexed by CPU id.
    uret: KVec<UretSlot>,
    /// VPIDs in use, a bit each (bit 0, VPID 0, is the host's and always set).
    #[pin]
    vpids: kernel::sync::Mutex<KVec<u64>>,
}

/// Host CPU features behind guest MSRs and XCR0.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HostCaps {
    /// Which of `msr::URET` exist (TSC_AUX only with RDTSCP or RDPID).
    pub(crate) uret_present: u32,
    /// IA32_SPEC_CTRL bits a guest may set (0: the CPU has no SPEC_CTRL).
    pub(crate) spec_ctrl_bits: u64,
    /// XCR0 bits a guest may set (0: no XSAVE for guests): x87, SSE and AVX as far as the
    /// host's XCR0 has them. The guest's FPU state is switched with XSAVE/XRSTOR of exactly
    /// those (FXSAVE/FXRSTOR without XSAVE).
    pub(crate) guest_xcr0: u64,
}

impl HostCaps {
    fn detect() -> HostCaps {
        let leaf7 = if insn::cpuid(0, 0)[0] >= 7 { insn::cpuid(7, 0) } else { [0; 4] };
        let ext1 = if insn::cpuid(0x8000_0000, 0)[0] >= 0x8000_0001 { insn::cpuid(0x8000_0001, 0) } else { [0; 4] };
        let has_tsc_aux = ext1[3] & (1 << 27) != 0 || leaf7[2] & (1 << 22) != 0;
        let uret_present = (1 << msr::URET.len()) - 1 & !if has_tsc_aux { 0 } else { 1 << msr::URET_TSC_AUX };
        // CPUID.7.0:EDX[26] IBRS/IBPB, [27] STIBP, [31] SSBD.
        let edx = leaf7[3];
        let spec_ctrl_bits = if edx & (1 << 26) != 0 {
            1 | if edx & (1 << 27) != 0 { 2 } else { 0 } | if edx & (1 << 31) != 0 { 4 } else { 0 }
        } else {
            0
        };
        // CPUID.1:ECX[27]: the host runs with CR4.OSXSAVE, so XCR0 exists.
        let guest_xcr0 = if insn::cpuid(1, 0)[2] & (1 << 27) != 0 {
            insn::xgetbv0() & (xsave::X87 | xsave::SSE | xsave::AVX)
        } else {
            0
        };
        HostCaps { uret_present, spec_ctrl_bits, guest_xcr0 }
    }
}

/// One CPU's user-return MSR state.
///
/// # Invariants
///
/// Slot `i` of [`VmxGlobal::uret`] is only accessed on CPU `i` with preemption or interrupts
/// disabled (guest entry, the user-return notifier, the CPU-offline callback), so never by two
/// threads at once.
pub(crate) struct UretSlot(core::cell::UnsafeCell<msr::UretCpu>);

// SAFETY: per the type invariant, a slot is only used by its own CPU, one context at a time.
unsafe impl Sync for UretSlot {}
// SAFETY: plain data.
unsafe impl Send for UretSlot {}

impl VmxGlobal {
    /// This CPU's user-return MSR state.
    ///
    /// # Safety
    ///
    /// Preemption or interrupts must be disabled, and the reference dropped before they are
    /// enabled again (the type invariant of [`UretSlot`]).
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn uret_here(&self) -> &mut msr::UretCpu {
        // SAFETY: per the contract, only this context on this CPU uses the slot now.
        unsafe { &mut *self.uret[this_cpu() as usize].0.get() }
    }

    /// Physical address of the MSR bitmap.
    pub(crate) fn msr_bitmap_pa(&self) -> u64 {
        page_pa(&self.msr_bitmap)
    }

    /// A free VPID (1..=0xffff), or 0 when all are taken (the vCPU then runs without one, as
    /// upstream's `allocate_vpid`).
    pub(crate) fn alloc_vpid(&self) -> u16 {
        if self.config.vpid_flush().is_none() {
            return 0;
        }
        let mut v = self.vpids.lock();
        for (w, word) in v.iter_mut().enumerate() {
            if *word != u64::MAX {
                let bit = word.trailing_ones();
                *word |= 1 << bit;
                return (w * 64 + bit as usize) as u16;
            }
        }
        0
    }

    /// Returns a VPID from [`VmxGlobal::alloc_vpid`].
    pub(crate) fn free_vpid(&self, vpid: u16) {
        if vpid != 0 {
            self.vpids.lock()[usize::from(vpid) / 64] &= !(1 << (vpid % 64));
        }
    }
}

/// Restores this CPU's host values of the user-return MSRs (interrupts off); returns whether
/// guest values were loaded (the notifier is then registered here).
fn uret_restore_here() -> bool {
    let g = global();
    // SAFETY: callers run with interrupts disabled on this CPU.
    let st = unsafe { g.uret_here() };
    st.restore_host(&mut KernelMsrs, g.host.uret_present)
}

/// The user-return notifier: this CPU is about to return to user mode, where SYSCALL and
/// RDTSCP/RDPID need the host's values (upstream: `kvm_on_user_return`).
unsafe extern "C" fn on_user_return() {
    // SAFETY: balanced with the restore below.
    let flags = unsafe { b::rkvm_local_irq_save() };
    if uret_restore_here() {
        // SAFETY: the notifier was registered on this CPU (by `VmxVcpu::enter_once`);
        // unregistering from within the callback is allowed (the list walk is deletion-safe).
        unsafe { b::rkvm_uret_unregister() };
    }
    // SAFETY: balances the save above.
    unsafe { b::rkvm_local_irq_restore(flags) };
}

/// The live [`VmxGlobal`], for callbacks that get nothing but a CPU number.
static GLOBAL: AtomicPtr<VmxGlobal> = AtomicPtr::new(core::ptr::null_mut());

/// The global VMX state.
///
/// Only called by code of live vCPUs, VMs and the hotplug callbacks, all of which exist only
/// while the backend does.
pub(crate) fn global() -> &'static VmxGlobal {
    // SAFETY: `GLOBAL` is set before any VM, vCPU or hotplug callback can exist and cleared only
    // after they are all gone (see `VmxBackend::drop`); the pointee is kept alive by the backend.
    unsafe { &*GLOBAL.load(Ordering::Acquire) }
}

/// The id of the CPU we run on (preemption must be disabled, or the thread pinned).
pub(crate) fn this_cpu() -> i32 {
    // SAFETY: reads the per-CPU id; callers are not preemptible here.
    unsafe { b::rkvm_smp_processor_id() }
}

/// Physical address of a page we own.
pub(crate) fn page_pa(page: &Page) -> u64 {
    // SAFETY: `page` is a live page; `page_to_phys` only computes.
    unsafe { b::rkvm_page_to_phys(page.as_ptr().cast()) }
}

/// The kernel's faulting-safe MSR accessors, for the pure PT rules.
pub(crate) struct KernelMsrs;

impl pt::MsrAccess for KernelMsrs {
    fn read(&mut self, msr: u32) -> u64 {
        rdmsr(msr).unwrap_or(0)
    }

    fn write(&mut self, msr: u32, value: u64) {
        // SAFETY: the faulting-safe accessor; RTIT MSRs are only written when CPUID reports PT,
        // following the ordering rules of `pt.rs`.
        unsafe { b::rkvm_wrmsr_safe(msr, value) };
    }
}

// The pure files' constants are the kernel's.
const _: () = {
    assert!(config::PROC2_ENABLE_VPID == b::SECONDARY_EXEC_ENABLE_VPID);
    assert!(msr::EFER == b::MSR_EFER && msr::STAR == b::MSR_STAR && msr::LSTAR == b::MSR_LSTAR);
    assert!(msr::CSTAR == b::MSR_CSTAR && msr::SFMASK == b::MSR_SYSCALL_MASK);
    assert!(msr::FS_BASE == b::MSR_FS_BASE && msr::GS_BASE == b::MSR_GS_BASE);
    assert!(msr::KERNEL_GS_BASE == b::MSR_KERNEL_GS_BASE && msr::TSC_AUX == b::MSR_TSC_AUX);
    assert!(msr::TSC == b::MSR_IA32_TSC && msr::APIC_BASE == b::MSR_IA32_APICBASE);
    assert!(msr::FEATURE_CONTROL == b::MSR_IA32_FEAT_CTL && msr::SPEC_CTRL == b::MSR_IA32_SPEC_CTRL);
    assert!(msr::PRED_CMD == b::MSR_IA32_PRED_CMD && msr::MISC_ENABLE == b::MSR_IA32_MISC_ENABLE);
    assert!(msr::SYSENTER_CS == b::MSR_IA32_SYSENTER_CS && msr::SYSENTER_ESP == b::MSR_IA32_SYSENTER_ESP);
    assert!(msr::SYSENTER_EIP == b::MSR_IA32_SYSENTER_EIP && msr::DEBUGCTL == b::MSR_IA32_DEBUGCTLMSR);
    assert!(msr::PAT == b::MSR_IA32_CR_PAT);
    assert!(events::INFO_VALID == b::INTR_INFO_VALID_MASK && events::INFO_HAS_ERROR == b::INTR_INFO_DELIVER_CODE_MASK);
    assert!(events::TYPE_NMI << 8 == b::INTR_TYPE_NMI_INTR && events::TYPE_HW_EXCEPTION << 8 == b::INTR_TYPE_HARD_EXCEPTION);
    assert!(events::TYPE_SOFT_INTR << 8 == b::INTR_TYPE_SOFT_INTR);
    assert!(events::TYPE_SOFT_EXCEPTION << 8 == b::INTR_TYPE_SOFT_EXCEPTION);
    assert!(events::TYPE_PRIV_SOFT_EXCEPTION << 8 == b::INTR_TYPE_PRIV_SW_EXCEPTION);
    assert!(events::BLOCKING_BY_STI == b::GUEST_INTR_STATE_STI && events::BLOCKING_BY_MOV_SS == b::GUEST_INTR_STATE_MOV_SS);
    assert!(events::BLOCKING_BY_NMI == b::GUEST_INTR_STATE_NMI);
};

pub(crate) fn rdmsr(msr: u32) -> Option<u64> {
    let mut v = 0u64;
    // SAFETY: the faulting-safe accessor returns an error instead of faulting on absent MSRs.
    (unsafe { b::rkvm_rdmsr_safe(msr, &mut v) } == 0).then_some(v)
}

/// The VMX backend.
pub(crate) struct VmxBackend {
    /// Kept alive as long as the backend: `GLOBAL` points into it.
    g: Arc<VmxGlobal>,
    /// `KVM_GET_MSR_INDEX_LIST`: `msr::KNOWN` less what this CPU lacks.
    msr_list: KVec<u32>,
    hotplug_state: i32,
}

fn wants() -> Wants {
    Wants {
        pin: Want {
            // Virtual NMIs: the CPU tracks the guest's NMI blocking, and NMI-window exits exist.
            required: b::PIN_BASED_EXT_INTR_MASK | b::PIN_BASED_NMI_EXITING | b::PIN_BASED_VIRTUAL_NMIS,
            // A watchdog exit (see `vcpu::WATCHDOG`).
            optional: b::PIN_BASED_VMX_PREEMPTION_TIMER,
            forbidden: 0,
        },
        proc: Want {
            required: b::CPU_BASED_HLT_EXITING
                | b::CPU_BASED_UNCOND_IO_EXITING
                | b::CPU_BASED_MOV_DR_EXITING
                | b::CPU_BASED_MWAIT_EXITING
                | b::CPU_BASED_MONITOR_EXITING
                | b::CPU_BASED_RDPMC_EXITING
                | b::CPU_BASED_CR8_LOAD_EXITING
                | b::CPU_BASED_CR8_STORE_EXITING
                | b::CPU_BASED_USE_MSR_BITMAPS
                // The guest TSC is the host's plus a per-vCPU offset (as upstream, which
                // requires it too).
                | b::CPU_BASED_USE_TSC_OFFSETTING
                | b::CPU_BASED_ACTIVATE_SECONDARY_CONTROLS,
            optional: 0,
            // With EPT the guest owns CR3; these must be clearable (TRUE_PROCBASED_CTLS).
            forbidden: b::CPU_BASED_CR3_LOAD_EXITING | b::CPU_BASED_CR3_STORE_EXITING,
        },
        proc2: Want {
            required: b::SECONDARY_EXEC_ENABLE_EPT | b::SECONDARY_EXEC_UNRESTRICTED_GUEST,
            optional: b::SECONDARY_EXEC_ENABLE_RDTSCP | b::SECONDARY_EXEC_ENABLE_VPID,
            forbidden: 0,
        },
        exit: Want {
            // ACK_INTR_ON_EXIT: an external interrupt is taken from the APIC by the exit and
            // handed to the host's handler by rkvm (entry::deliver_host_interrupt), as upstream.
            // SAVE_DEBUG_CONTROLS / LOAD_DEBUG_CONTROLS: the guest runs with the DR7 of its VMCS
            // (its own, or the debugger's with KVM_GUESTDBG_USE_HW_BP), never the host's; both
            // are required upstream too.
            required: b::VM_EXIT_HOST_ADDR_SPACE_SIZE
                | b::VM_EXIT_SAVE_DEBUG_CONTROLS
                | b::VM_EXIT_SAVE_IA32_EFER
                | b::VM_EXIT_LOAD_IA32_EFER
                | b::VM_EXIT_ACK_INTR_ON_EXIT,
            optional: b::VM_EXIT_SAVE_IA32_PAT | b::VM_EXIT_LOAD_IA32_PAT,
            forbidden: 0,
        },
        entry: Want {
            required: b::VM_ENTRY_LOAD_IA32_EFER | b::VM_ENTRY_LOAD_DEBUG_CONTROLS,
            optional: b::VM_ENTRY_LOAD_IA32_PAT,
            forbidden: 0,
        },
    }
}

impl VmxBackend {
    /// Detects VMX, derives the configuration and enters VMX operation on every CPU.
    pub(crate) fn new() -> Result<Arc<dyn Backend>> {
        let [_, _, ecx, _] = insn::cpuid(1, 0);
        if ecx & (1 << 5) == 0 {
            pr_err!("no VMX on this CPU: load with backend=none to use rkvm without a guest\n");
            return Err(ENODEV);
        }
        let fc = rdmsr(b::MSR_IA32_FEAT_CTL).unwrap_or(0);
        let need = b::FEAT_CTL_LOCKED | b::FEAT_CTL_VMX_ENABLED_OUTSIDE_SMX;
        if fc & need != need {
            pr_err!("VMX is disabled by the firmware (IA32_FEATURE_CONTROL={:#x})\n", fc);
            return Err(ENODEV);
        }
        // SAFETY: reading CR4 has no side effects.
        if unsafe { b::rkvm_read_cr4() } as u64 & xcr::CR4_VMXE != 0 {
            pr_err!("VMX is already in use by another hypervisor (CR4.VMXE set, e.g. kvm_intel)\n");
            return Err(EBUSY);
        }
        let msrs = read_cap_msrs().ok_or(ENODEV)?;
        let config = VmcsConfig::new(&msrs, &wants()).map_err(|e| {
            pr_err!("this CPU's VMX lacks what rkvm needs: {:?}\n", e);
            ENODEV
        })?;

        // SAFETY: reads a boot-time constant.
        let ncpus = (unsafe { b::rkvm_nr_cpu_ids() }) as usize;
        let mut regions = KVec::with_capacity(ncpus, GFP_KERNEL)?;
        for _ in 0..ncpus {
            let page = Page::alloc_page(GFP_KERNEL | __GFP_ZERO)?;
            // SAFETY: writing 4 bytes from a local array into our fresh page.
            unsafe { page.write_raw(config.revision_id.to_ne_bytes().as_ptr(), 0, 4)? };
            regions.push(page, GFP_KERNEL)?;
        }
        // Intel PT: CPUID.(EAX=7,ECX=0):EBX[25]. Only host-guest mode switches contexts.
        // SAFETY: reads a module parameter set before init.
        let pt_mode = unsafe { b::rkvm_param_pt_mode() };
        let has_pt = insn::cpuid(0, 0)[0] >= 0x14 && insn::cpuid(7, 0)[1] & (1 << 25) != 0;
        let pt = (pt_mode == 1 && has_pt).then(|| pt::PtCaps::from_cpuid(insn::cpuid(0x14, 1)[0]));
        if pt_mode == 1 && !has_pt {
            pr_info!("pt_mode=1: this CPU has no Intel PT, nothing to switch\n");
        }
        let msr_bitmap = Page::alloc_page(GFP_KERNEL)?;
        // SAFETY: the page is ours, mapped in the direct map, 4 KiB, and not yet shared.
        msr::fill_bitmap(unsafe { &mut *(b::rkvm_page_address(msr_bitmap.as_ptr().cast()) as *mut [u8; 4096]) });
        let mut uret = KVec::with_capacity(ncpus, GFP_KERNEL)?;
        for _ in 0..ncpus {
            uret.push(UretSlot(core::cell::UnsafeCell::new(msr::UretCpu::default())), GFP_KERNEL)?;
        }
        let mut vpids = KVec::with_capacity(1024, GFP_KERNEL)?;
        vpids.push(1u64, GFP_KERNEL)?; // VPID 0 is the host's
        for _ in 1..1024 {
            vpids.push(0u64, GFP_KERNEL)?;
        }
        let host = HostCaps::detect();
        let g = Arc::pin_init(
            pin_init!(VmxGlobal {
                config,
                regions,
                registry <- kernel::new_mutex!(KVec::new()),
                pt,
                host,
                msr_bitmap,
                uret,
                vpids <- kernel::new_mutex!(vpids),
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: the callback is valid for the module's lifetime and only armed per CPU by
        // guest entry; the offline callback disarms it on every CPU before the module goes.
        unsafe { b::rkvm_uret_init(Some(on_user_return)) };
        GLOBAL.store(&*g as *const VmxGlobal as *mut VmxGlobal, Ordering::Release);
        // Runs `cpu_online` on every online CPU now and on every CPU that comes online later.
        // SAFETY: the callbacks are valid for the module's lifetime; GLOBAL is set.
        let state = unsafe { b::rkvm_cpuhp_setup(Some(cpu_online), Some(cpu_offline)) };
        if state < 0 {
            GLOBAL.store(core::ptr::null_mut(), Ordering::Release);
            pr_err!("VMXON failed on some CPU ({})\n", state);
            return Err(Error::from_errno(state));
        }
        pr_info!(
            "backend=vmx: VMCS rev {:#x}, pin {:#x} proc {:#x} proc2 {:#x} exit {:#x} entry {:#x}, {:?}\n",
            config.revision_id, config.pin, config.proc, config.proc2, config.exit, config.entry, host
        );
        let mut msr_list = KVec::new();
        for m in msr::KNOWN {
            let absent = (m == msr::SPEC_CTRL && host.spec_ctrl_bits == 0)
                || (m == msr::TSC_AUX && host.uret_present & (1 << msr::URET_TSC_AUX) == 0);
            if !absent {
                msr_list.push(m, GFP_KERNEL)?;
            }
        }
        // KVM's PV MSRs (upstream `emulated_msrs_all`), steal time only where it works.
        for m in crate::x86::pvclock::MSRS {
            if m != crate::x86::pvclock::MSR_STEAL_TIME || crate::pv::sched_info_on() {
                msr_list.push(m, GFP_KERNEL)?;
            }
        }
        let backend: Arc<dyn Backend> = Arc::new(VmxBackend { g, msr_list, hotplug_state: state }, GFP_KERNEL)?;
        Ok(backend)
    }
}

impl Drop for VmxBackend {
    fn drop(&mut self) {
        // Runs `cpu_offline` (VMCLEAR + VMXOFF) on every online CPU.
        // SAFETY: the state was returned by `rkvm_cpuhp_setup`; no VM or vCPU is left.
        unsafe { b::rkvm_cpuhp_remove(self.hotplug_state) };
        GLOBAL.store(core::ptr::null_mut(), Ordering::Release);
    }
}

fn read_cap_msrs() -> Option<CapMsrs> {
    let basic = rdmsr(b::MSR_IA32_VMX_BASIC)?;
    let true_ctls = basic & config::BASIC_TRUE_CTLS != 0;
    let pick = |t: u32, f: u32| rdmsr(if true_ctls { t } else { f });
    let proc = pick(b::MSR_IA32_VMX_TRUE_PROCBASED_CTLS, b::MSR_IA32_VMX_PROCBASED_CTLS)?;
    let has2 = (proc >> 32) as u32 & b::CPU_BASED_ACTIVATE_SECONDARY_CONTROLS != 0;
    let proc2 = if has2 { rdmsr(b::MSR_IA32_VMX_PROCBASED_CTLS2)? } else { 0 };
    Some(CapMsrs {
        basic,
        pin: pick(b::MSR_IA32_VMX_TRUE_PINBASED_CTLS, b::MSR_IA32_VMX_PINBASED_CTLS)?,
        proc,
        proc2,
        exit: pick(b::MSR_IA32_VMX_TRUE_EXIT_CTLS, b::MSR_IA32_VMX_EXIT_CTLS)?,
        entry: pick(b::MSR_IA32_VMX_TRUE_ENTRY_CTLS, b::MSR_IA32_VMX_ENTRY_CTLS)?,
        ept_vpid: if has2 { rdmsr(b::MSR_IA32_VMX_EPT_VPID_CAP).unwrap_or(0) } else { 0 },
        cr0_fixed: (rdmsr(b::MSR_IA32_VMX_CR0_FIXED0)?, rdmsr(b::MSR_IA32_VMX_CR0_FIXED1)?),
        cr4_fixed: (rdmsr(b::MSR_IA32_VMX_CR4_FIXED0)?, rdmsr(b::MSR_IA32_VMX_CR4_FIXED1)?),
    })
}

/// CPU hotplug "online" callback: enter VMX operation on `cpu` (we run on it).
unsafe extern "C" fn cpu_online(cpu: kernel::ffi::c_uint) -> kernel::ffi::c_int {
    let g = global();
    let Some(region) = g.regions.get(cpu as usize) else { return EINVAL.to_errno() };
    // SAFETY: hotplug callbacks for AP states run on `cpu` itself; CR4.VMXE is owned by
    // whichever hypervisor is loaded, and we checked at init that none was. The region is this
    // CPU's alone and lives until after VMXOFF.
    unsafe {
        b::rkvm_preempt_disable();
        b::rkvm_cr4_set_bits(b::X86_CR4_VMXE as _);
        let r = insn::vmxon(page_pa(region));
        if r.is_err() {
            b::rkvm_cr4_clear_bits(b::X86_CR4_VMXE as _);
        }
        b::rkvm_preempt_enable();
        if r.is_err() {
            pr_err!("VMXON failed on CPU {}\n", cpu);
            return EIO.to_errno();
        }
    }
    0
}

/// CPU hotplug "offline" callback (and module unload): VMCLEAR what is loaded here, VMXOFF.
unsafe extern "C" fn cpu_offline(_cpu: kernel::ffi::c_uint) -> kernel::ffi::c_int {
    let g = global();
    // The host's user-return MSRs come back and the notifier is disarmed here, so none is left
    // armed once the module is gone.
    // SAFETY: runs on the CPU going offline, which is in VMX operation (its online callback
    // succeeded), with interrupts saved and restored around the per-CPU user-return state.
    unsafe {
        let flags = b::rkvm_local_irq_save();
        if uret_restore_here() {
            b::rkvm_uret_unregister();
        }
        b::rkvm_local_irq_restore(flags);
    }
    // The hotplug thread is bound to this CPU; the registry lock is taken before preemption is
    // disabled, as it may sleep.
    let reg = g.registry.lock();
    // SAFETY: on the CPU going offline, in VMX operation; after VMCLEARing every VMCS active
    // here nothing depends on VMX operation, so VMXOFF and clearing CR4.VMXE are safe.
    unsafe {
        b::rkvm_preempt_disable();
        vmcs::clear_all_on_this_cpu(&reg);
        insn::vmxoff();
        b::rkvm_cr4_clear_bits(b::X86_CR4_VMXE as _);
        b::rkvm_preempt_enable();
    }
    drop(reg);
    0
}

impl Backend for VmxBackend {
    fn name(&self) -> &'static str {
        "vmx"
    }

    fn limits(&self) -> Limits {
        let mut l = Limits::ARCH;
        // Only CR4 bits the CPU accepts in VMX non-root operation (and not VMXE: no nesting).
        l.cr4_allowed &= self.g.config.cr4_fixed.1 & !(xcr::CR4_VMXE);
        // No protection keys (PKRU is not switched: guests get XCR0 ⊆ x87|SSE|AVX), and
        // XSAVE only when the host has it.
        l.cr4_allowed &= !(1 << 22);
        if self.g.host.guest_xcr0 == 0 {
            l.cr4_allowed &= !xcr::CR4_OSXSAVE;
        }
        l
    }

    fn check_extension(&self, cap: u32) -> Option<isize> {
        match cap {
            b::KVM_CAP_DEBUGREGS
            // KVM_INTERRUPT, KVM_NMI and KVM_GET/SET_VCPU_EVENTS with the interrupt shadow.
            | b::KVM_CAP_USER_NMI
            | b::KVM_CAP_VCPU_EVENTS
            | b::KVM_CAP_INTR_SHADOW
            // KVM_GET/SET_XSAVE: x87, SSE and AVX in standard XSAVE format.
            | b::KVM_CAP_XSAVE
            // KVM_PRE_FAULT_MEMORY: EPT entries made ahead of the guest's accesses.
            | b::KVM_CAP_PRE_FAULT_MEMORY => Some(1),
            b::KVM_CAP_XSAVE2 => Some(crate::x86::xsave::SIZE as isize),
            // KVM_ENABLE_CAP on vCPU fds (KVM_CAP_ENFORCE_PV_FEATURE_CPUID), the vCPU's TSC offset
            // as a device attribute (KVM_VCPU_TSC_CTRL).
            b::KVM_CAP_ENABLE_CAP | b::KVM_CAP_ENFORCE_PV_FEATURE_CPUID | b::KVM_CAP_VCPU_ATTRIBUTES => Some(1),
            // The exits rkvm can leave to the guest, the hypercalls that can go to userspace
            // (`x86/pvclock.rs`). Not KVM_CAP_DISABLE_QUIRKS2: it would make upstream's
            // monitor_mwait_test run, which needs the MONITOR/MWAIT quirks rkvm lacks and which
            // 6.12.117's accumulating `disabled_quirks` fails anyway (kvm_intel too, README);
            // rkvm's one quirk, the VMMCALL rewrite, stays on.
            b::KVM_CAP_X86_DISABLE_EXITS => Some(crate::x86::pvclock::DISABLE_EXITS_SUPPORTED as isize),
            b::KVM_CAP_EXIT_HYPERCALL => Some(crate::x86::pvclock::EXIT_HYPERCALL_VALID as isize),
            // KVM_GET_MSR_FEATURE_INDEX_LIST and KVM_GET_MSRS on the device fd.
            b::KVM_CAP_GET_MSR_FEATURES
            // MSR_PLATFORM_INFO (with CPUID faulting) and KVM_ENABLE_CAP of its readability.
            | b::KVM_CAP_MSR_PLATFORM_INFO
            // KVM_ENABLE_CAP: emulation failures exit with the instruction bytes, no #UD.
            | b::KVM_CAP_EXIT_ON_EMULATION_FAILURE
            // KVM_SET_GUEST_DEBUG: single-step, software and hardware breakpoints, injection.
            | b::KVM_CAP_SET_GUEST_DEBUG => Some(1),
            b::KVM_CAP_SET_GUEST_DEBUG2 => Some(crate::x86::debug::VALID_MASK as isize),
            b::KVM_CAP_XCRS => Some((self.g.host.guest_xcr0 != 0).into()),
            _ => None,
        }
    }

    fn cpuid_caps(&self) -> crate::x86::cpuid::Caps {
        crate::x86::cpuid::Caps {
            guest_xcr0: self.g.host.guest_xcr0,
            rdtscp: self.g.config.proc2 & b::SECONDARY_EXEC_ENABLE_RDTSCP != 0,
            // Emulated (with an in-kernel LAPIC), so offered whatever the host has.
            x2apic: true,
            kvm_features: crate::pv::supported_features(),
        }
    }

    fn msr_indices(&self) -> &[u32] {
        &self.msr_list
    }

    /// Upstream's `msr_based_features` on a VMX host without nested VMX: only the microcode
    /// revision. IA32_ARCH_CAPABILITIES and IA32_PERF_CAPABILITIES are left out because rkvm's
    /// guests get neither (CPUID.7.0:EDX[29] and PDCM are filtered), and the VMX capability
    /// MSRs because there is no nested VMX.
    fn feature_msr_indices(&self) -> &[u32] {
        &[msr::UCODE_REV]
    }

    /// Upstream `kvm_get_feature_msr`: the host's microcode revision (0 if it cannot be read).
    fn get_feature_msr(&self, index: u32) -> Option<u64> {
        (index == msr::UCODE_REV).then(|| rdmsr(msr::UCODE_REV).unwrap_or(0))
    }

    fn create_vm(&self) -> Result<KBox<dyn BackendVm>> {
        let vm = ept::VmxVm::new()?;
        // SAFETY: only the pointer type changes (unsized to the trait object); the VM stays in
        // the same allocation and is never moved out of its box, so it stays pinned.
        let raw = KBox::into_raw(unsafe { Pin::into_inner_unchecked(vm) });
        // SAFETY: `raw` comes from `into_raw` of a box of the same allocator.
        Ok(unsafe { KBox::from_raw(raw as *mut dyn BackendVm) })
    }

    fn create_vcpu(&self, vm: &dyn BackendVm, id: u32, apic: Option<crate::irq::VcpuApic>) -> Result<KBox<dyn BackendVcpu>> {
        let vm = vm.as_any().downcast_ref::<ept::VmxVm>().ok_or(EINVAL)?;
        Ok(crate::backend::unsize(vcpu::VmxVcpu::new(&self.g, vm.eptp(), id, apic)?))
    }
}

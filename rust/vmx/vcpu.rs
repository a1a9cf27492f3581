//! A VMX vCPU: its VMCS set-up, state access, the run loop and exit handling (upstream:
//! `vmx_vcpu_create`, `init_vmcs`, `vmx_vcpu_run`, `vmx_handle_exit` and the exit handlers).
//!
//! State lives where the CPU keeps it: segments, control registers, RIP/RSP/RFLAGS in the VMCS;
//! the other general-purpose registers, CR2 and the FPU image in this struct (the entry code and
//! the run loop switch them).
//!
//! One iteration of [`VmxVcpu::run`] (numbers as in DESIGN-SKETCH's KVM_RUN steps):
//! 1. complete the previous exit (advance RIP past OUT; load IN data into RAX),
//! 2. signal pending → `KVM_EXIT_INTR`/`EINTR`; `need_resched` → reschedule,
//! 3. preemption off; VMCS loaded here (VMCLEAR on the old CPU by IPI); host fields refreshed,
//! 4. host state the VMCS does not switch saved (FPU, KERNEL_GS_BASE, DR7, DS/ES), guest's loaded,
//! 5. interrupts off, CR2 switched, enter; on exit the guest's GPRs and CR2 are saved,
//! 6. host state restored; interrupts on (a pending host interrupt is serviced now); preemption on,
//! 7. the exit is handled in the kernel (loop) or reported in `kvm_run` (return to userspace).

use super::config::VmcsConfig;
use super::entry::{self, GuestRegs, RAX, RBX, RCX, RDI, RDX, RSI, RSP};
use super::events::{self, Events, Exception, Interrupt};
use super::vmcs::{self, field as f, Vmcs};
use super::pt::{self, PtContext};
use super::{insn, rdmsr, KernelMsrs, VmxGlobal};
use crate::backend::{BackendVcpu, MsrCtx, RunContext};
use crate::irq::{lapic, VcpuApic};
use crate::stats::vcpu as stats;
use crate::ffi::bindings as b;
use crate::vm::Fault;
use crate::x86::cr;
use crate::x86::debug::{self, GuestDebug};
use crate::x86::decode::{self, Access};
use crate::x86::mce::{self, Mce};
use crate::x86::msr::{self, MsrFault};
use crate::x86::msr_filter;
use crate::x86::segment::{self, Which};
use crate::x86::tsc::TscAdjust;
use crate::x86::walk::{self, GuestMem};
use crate::x86::xsave;
use core::sync::atomic::Ordering;
use kernel::page::Page;
use kernel::prelude::*;
use kernel::sync::Arc;

/// KVM's PV MSRs, kvmclock, steal time and hypercalls.
mod pv;

/// The guest's x87/SSE/AVX state: a standard-format XSAVE area (`x86/xsave.rs`).
#[repr(C, align(64))]
struct FpuArea([u8; xsave::AREA]);

/// An exit to userspace whose instruction completes on the next `KVM_RUN` (upstream:
/// `complete_fast_pio_in` / `complete_fast_pio_out` / `complete_emulated_mmio` /
/// `complete_fast_rdmsr` / `complete_fast_msr_access`).
#[derive(Clone, Copy)]
enum PendingIo {
    /// OUT: only RIP advances.
    Out,
    /// IN: the data in the PIO page goes to AL/AX/EAX.
    In { size: u32 },
    /// An MMIO access of the instruction `len` bytes long: a read lands in a register, a STOS
    /// moves RDI; RIP advances.
    Mmio { access: Access, len: u8 },
    /// INS/OUTS: for INS the data in the PIO page goes to guest memory; rSI/rDI (and rCX with
    /// REP) move past the elements done; RIP advances once no repetitions are left.
    Str(StringIo),
    /// RDMSR/WRMSR of `len` bytes handled by userspace (`KVM_EXIT_X86_RDMSR`/`_WRMSR`):
    /// `kvm_run->msr.error` set raises #GP; else a read's `data` goes to EDX:EAX and RIP
    /// advances.
    Msr { read: bool, len: u8 },
    /// A hypercall userspace handled (`KVM_EXIT_HYPERCALL`): its `ret` goes to RAX (the low
    /// half when the caller was not in 64-bit mode), RIP advances.
    Hypercall { long: bool },
}

/// One batch of an INS/OUTS (upstream: the emulator's string I/O through `pio_in_emulated` /
/// `emulator_pio_out`): up to a PIO page of elements per exit to userspace.
#[derive(Clone, Copy)]
struct StringIo {
    is_in: bool,
    /// Element size (1, 2 or 4) and number of elements in this batch.
    size: u32,
    count: u32,
    /// Address size of the instruction (rSI/rDI/rCX width) in bytes.
    addr_size: u8,
    /// Base of the memory operand's segment and the offset of the first element.
    base: u64,
    offset: u64,
    /// EFLAGS.DF: the elements go downwards.
    down: bool,
    rep: bool,
    /// The instruction's length.
    len: u8,
}

impl StringIo {
    /// Linear address of element `k` of the batch.
    fn linear(&self, k: u32, long: bool) -> u64 {
        let step = u64::from(k * self.size);
        let off = if self.down { self.offset.wrapping_sub(step) } else { self.offset.wrapping_add(step) };
        let la = self.base.wrapping_add(off & decode::size_mask(self.addr_size));
        if long { la } else { la & 0xffff_ffff }
    }
}

/// Fills `kvm_run` for a KVM_EXIT_IO of `count` elements of `size` bytes, whose data is (OUT)
/// or goes (IN) in the PIO page.
fn io_exit(run: *mut b::kvm_run, is_in: bool, size: u32, port: u16, count: u32) {
    // SAFETY: `run` is the vCPU's kvm_run page; the io struct is plain data.
    unsafe {
        (*run).exit_reason = b::KVM_EXIT_IO;
        let io = &mut (*run).__bindgen_anon_1.io;
        io.direction = if is_in { b::KVM_EXIT_IO_IN } else { b::KVM_EXIT_IO_OUT } as u8;
        io.size = size as u8;
        io.port = port;
        io.count = count;
        io.data_offset = u64::from(b::KVM_PIO_PAGE_OFFSET) * u64::from(b::PAGE_SIZE as u32);
    }
}


/// Fills `kvm_run` for a `KVM_EXIT_DEBUG` (upstream: `handle_exception_nmi`, `handle_dr`,
/// `kvm_vcpu_do_singlestep`): the vector, the linear RIP, and for a #DB the DR6 and DR7 it
/// reports (left as they are for #BP, as upstream).
fn debug_exit(run: *mut b::kvm_run, exception: u8, pc: u64, dr: Option<(u64, u64)>) {
    // SAFETY: `run` is the vCPU's kvm_run page; the debug struct is plain data.
    unsafe {
        (*run).exit_reason = b::KVM_EXIT_DEBUG;
        let d = &mut (*run).__bindgen_anon_1.debug.arch;
        d.exception = exception.into();
        d.pc = pc;
        if let Some((dr6, dr7)) = dr {
            d.dr6 = dr6;
            d.dr7 = dr7;
        }
    }
}

/// What checking one string-I/O element's memory operand found.
enum Elem {
    /// Accessible RAM.
    Ok,
    /// The guest's access faults: #PF error code and linear address.
    Fault(u32, u64),
    /// Not RAM (MMIO, a read-only slot for INS) or page tables outside memory: not emulated.
    Stop,
}

/// Exit information read while the VMCS was current.
struct ExitInfo {
    reason: u32,
    qualification: u64,
    instr_len: u64,
    intr_info: u32,
    gpa: u64,
    /// The VM-entry interruption information this entry carried (0: none).
    injected: u32,
}

/// Guest MSRs the VMCS does not hold (where each MSR lives: `x86/msr.rs`).
#[derive(Default)]
struct GuestMsrs {
    /// STAR, LSTAR, CSTAR, SFMASK, TSC_AUX, in `msr::URET` order: loaded lazily.
    uret: [u64; msr::URET.len()],
    /// Loaded before every entry, read back after every exit.
    kernel_gs_base: u64,
    /// Switched around every entry when it differs from the host's.
    spec_ctrl: u64,
    misc_enable: u64,
    mtrr_def_type: u64,
    /// IA32_PAT when the VMCS cannot switch it (no "load IA32_PAT" entry control).
    pat: u64,
    /// IA32_TSC_ADJUST (the TSC itself is the VMCS's TSC offset plus the host's TSC).
    tsc_adjust: TscAdjust,
    /// IA32_FEATURE_CONTROL: 0 (unlocked) at creation, as upstream; the guest may lock it.
    feature_control: u64,
    /// MSR_K7_HWCR, IA32_UCODE_REV, MSR_PLATFORM_INFO, MSR_MISC_FEATURES_ENABLES (upstream
    /// `vcpu->arch.msr_hwcr`, `microcode_version`, `msr_platform_info`,
    /// `msr_misc_features_enables`).
    hwcr: u64,
    ucode_rev: u64,
    platform_info: u64,
    misc_features: u64,
    /// MSR_IA32_POWER_CTL (upstream `vcpu->arch.msr_ia32_power_ctl`: any value, no effect).
    power_ctl: u64,
}

/// A VMX vCPU.
pub(crate) struct VmxVcpu {
    id: u32,
    vmcs: KBox<Vmcs>,
    regs: GuestRegs,
    cr2: u64,
    efer: u64,
    /// CR8 and IA32_APIC_BASE without an in-kernel LAPIC (with one, `apic` holds them).
    cr8: u64,
    apic_base: u64,
    /// The in-kernel LAPIC (`KVM_CREATE_IRQCHIP` before this vCPU was created).
    apic: Option<VcpuApic>,
    /// The guest's CPUID has x2APIC (upstream `guest_cpuid_has(vcpu, X86_FEATURE_X2APIC)`),
    /// so IA32_APIC_BASE.EXTD is writable; follows `KVM_SET_CPUID2`.
    x2apic_cpuid: bool,
    interrupt_bitmap: [u64; 4],
    fpu: KBox<FpuArea>,
    pending: Option<PendingIo>,
    /// The linear RIP of the instruction `pending` belongs to: if userspace moves RIP before
    /// the next `KVM_RUN`, the completion is dropped (upstream: the `kvm_is_linear_rip` checks
    /// of `complete_fast_pio_in/out`).
    pending_rip: u64,
    config: VmcsConfig,
    /// The CPU the VMCS was last loaded on.
    last_cpu: i32,
    /// Intel PT contexts (host-guest mode only).
    pt_host: PtContext,
    pt_guest: PtContext,
    msrs: GuestMsrs,
    /// The guest's XCR0 (in force while its CR4.OSXSAVE is set).
    xcr0: u64,
    /// The guest's own debug registers DR0–DR3, DR6, DR7 (upstream `vcpu->arch.db`, `dr6`,
    /// `dr7`), kept in software: every MOV DR exits, and so does every #DB, so the CPU never
    /// changes them behind rkvm's back. What the CPU runs the guest with is `eff_db` and the
    /// VMCS's GUEST_DR7 (see [`Self::update_dr7`]).
    dr: [u64; 4],
    dr6: u64,
    dr7: u64,
    /// `KVM_SET_GUEST_DEBUG`'s state (upstream `vcpu->guest_debug`, `guest_debug_dr7`).
    debug: GuestDebug,
    /// The DR0–DR3 the guest runs with (its own, or the debugger's with `USE_HW_BP`; upstream
    /// `eff_db`), loaded into the CPU around each entry while `load_dr`: the DR7 in the VMCS
    /// enables a breakpoint (upstream `KVM_DEBUGREG_BP_ENABLED`).
    eff_db: [u64; 4],
    load_dr: bool,
    /// The host's DR0–DR3 while the guest's are loaded.
    host_db: [u64; 4],
    /// `load_dr` or `KVM_SET_GUEST_DEBUG` in force: entries take the debug path (kept by
    /// [`Self::update_dr7`]).
    debugging: bool,
    /// The linear RIP where `KVM_GUESTDBG_SINGLESTEP` was set: `KVM_SET_REGS` puts RFLAGS.TF
    /// back only while the guest is still there (upstream `singlestep_rip`).
    singlestep_rip: u64,
    /// Length of the INT3 of the last #BP exit, for re-injecting it with
    /// `KVM_GUESTDBG_INJECT_BP` (upstream `event_exit_inst_len`; 1 before any).
    bp_len: u32,
    /// rkvm completed an instruction for the guest while userspace single-steps it: the
    /// `KVM_EXIT_DEBUG` the CPU could not raise is reported before the next entry (upstream
    /// `kvm_vcpu_do_singlestep`).
    step_exit: bool,
    /// Whether the guest has been entered (VMLAUNCH attempted) at least once.
    ran: bool,
    /// This vCPU's VPID (0: none, the guest's TLB entries are flushed on every entry and exit).
    vpid: u16,
    /// Exceptions, NMIs and interrupts still to deliver.
    events: Events,
    /// The VMCS's VM-entry interruption-information field may have its valid bit set (a VM
    /// exit clears it), so "inject nothing" must be written.
    entry_info_valid: bool,
    /// The primary processor-based controls in the VMCS (the configured ones plus the window
    /// exits asked for last), so that they are rewritten only when they change.
    proc_ctls: u32,
    /// `KVM_SET_VCPU_EVENTS`' SIPI vector (kept for `KVM_GET_VCPU_EVENTS`; no in-kernel APIC
    /// uses it).
    sipi_vector: u32,
    /// The guest's VPID-tagged translations must be flushed before the next entry: the vCPU
    /// moved to another CPU (which may hold stale ones from an earlier visit), or rkvm changed
    /// guest paging state on the guest's behalf (emulated CR0/CR4 writes, KVM_SET_SREGS).
    tlb_flush: bool,
    /// Machine-check state (`x86/mce.rs`), allocated (1.3 KiB) the first time anything changes
    /// it (`KVM_X86_SETUP_MCE`, `KVM_X86_SET_MCE`, a write of a machine-check MSR); until then
    /// it is `mce::RESET`.
    mce: Option<KBox<Mce>>,
    /// `KVM_X86_SET_MCE` found the guest unable to take #MC: the next `KVM_RUN` returns
    /// `KVM_EXIT_SHUTDOWN` (upstream `KVM_REQ_TRIPLE_FAULT`).
    shutdown_pending: bool,
    /// The VM's MSR filter as this vCPU last took it, and its generation
    /// ([`VmxVcpu::refresh_msr_filter`]).
    msr_filter: Option<Arc<crate::vm::MsrFilter>>,
    msr_filter_gen: u32,
    /// This vCPU's own MSR bitmap, allocated the first time a filter denies an access the
    /// shared bitmap passes through (upstream has one per vCPU always).
    msr_bitmap: Option<Page>,
    /// KVM's PV interface (`vcpu/pv.rs`).
    pv: pv::PvVcpu,
    /// The VM's `KVM_X86_DISABLE_EXITS_HLT`: no HLT exiting, the guest halts in VMX non-root
    /// operation (upstream `kvm_hlt_in_guest`). Taken from the VM at each `KVM_RUN`.
    hlt_in_guest: bool,
}

/// Segment registers in `struct kvm_sregs` order with their VMCS fields
/// (selector, base, limit, access rights).
const SEGMENTS: [(vmcs::Field, vmcs::Field, vmcs::Field, vmcs::Field); 8] = [
    (f::GUEST_CS_SELECTOR, f::GUEST_CS_BASE, f::GUEST_CS_LIMIT, f::GUEST_CS_AR_BYTES),
    (f::GUEST_DS_SELECTOR, f::GUEST_DS_BASE, f::GUEST_DS_LIMIT, f::GUEST_DS_AR_BYTES),
    (f::GUEST_ES_SELECTOR, f::GUEST_ES_BASE, f::GUEST_ES_LIMIT, f::GUEST_ES_AR_BYTES),
    (f::GUEST_FS_SELECTOR, f::GUEST_FS_BASE, f::GUEST_FS_LIMIT, f::GUEST_FS_AR_BYTES),
    (f::GUEST_GS_SELECTOR, f::GUEST_GS_BASE, f::GUEST_GS_LIMIT, f::GUEST_GS_AR_BYTES),
    (f::GUEST_SS_SELECTOR, f::GUEST_SS_BASE, f::GUEST_SS_LIMIT, f::GUEST_SS_AR_BYTES),
    (f::GUEST_TR_SELECTOR, f::GUEST_TR_BASE, f::GUEST_TR_LIMIT, f::GUEST_TR_AR_BYTES),
    (f::GUEST_LDTR_SELECTOR, f::GUEST_LDTR_BASE, f::GUEST_LDTR_LIMIT, f::GUEST_LDTR_AR_BYTES),
];

/// Basic exit reasons (SDM vol. 3 appendix C; `uapi/asm/vmx.h`).
mod reason {
    use crate::ffi::bindings as b;
    pub(super) const EXCEPTION_NMI: u32 = b::EXIT_REASON_EXCEPTION_NMI;
    pub(super) const EXTERNAL_INTERRUPT: u32 = b::EXIT_REASON_EXTERNAL_INTERRUPT;
    pub(super) const TRIPLE_FAULT: u32 = b::EXIT_REASON_TRIPLE_FAULT;
    pub(super) const INTERRUPT_WINDOW: u32 = b::EXIT_REASON_INTERRUPT_WINDOW;
    pub(super) const NMI_WINDOW: u32 = b::EXIT_REASON_NMI_WINDOW;
    pub(super) const CPUID: u32 = b::EXIT_REASON_CPUID;
    pub(super) const HLT: u32 = b::EXIT_REASON_HLT;
    pub(super) const CR_ACCESS: u32 = b::EXIT_REASON_CR_ACCESS;
    pub(super) const DR_ACCESS: u32 = b::EXIT_REASON_DR_ACCESS;
    pub(super) const IO_INSTRUCTION: u32 = b::EXIT_REASON_IO_INSTRUCTION;
    pub(super) const MSR_READ: u32 = b::EXIT_REASON_MSR_READ;
    pub(super) const MSR_WRITE: u32 = b::EXIT_REASON_MSR_WRITE;
    pub(super) const EPT_VIOLATION: u32 = b::EXIT_REASON_EPT_VIOLATION;
    pub(super) const XSETBV: u32 = b::EXIT_REASON_XSETBV;
    pub(super) const PREEMPTION_TIMER: u32 = b::EXIT_REASON_PREEMPTION_TIMER;
    pub(super) const VMCALL: u32 = b::EXIT_REASON_VMCALL;
}

/// How one attempt to enter the guest ended.
enum Entered {
    Exit(ExitInfo),
    /// VMLAUNCH/VMRESUME failed: the VM-instruction error.
    Failed(u32),
    /// A kick arrived before the entry: look for the posted work and try again.
    Cancelled,
}

/// What to do after an exit.
enum Next {
    /// Re-enter the guest.
    Resume,
    /// Return to userspace with `kvm_run` filled.
    User,
}

/// DR6 and DR7 at RESET (SDM 18.2.3, 18.2.4): their fixed-1 bits.
const DR6_RESET: u64 = 0xffff_0ff0;
const DR7_RESET: u64 = 0x400;

/// The VMX-preemption timer's start value at every entry: a guest exits at the latest after
/// `WATCHDOG << IA32_VMX_MISC[4:0]` TSC ticks (about 2 M ticks, ~1 ms at 2 GHz, ~40 ms of
/// emulated time in Bochs). Host interrupts cause exits anyway; this bounds how long a guest
/// can run when they do not: Bochs 2.7 keeps host interrupts masked while a guest with
/// RFLAGS.IF = 0 runs (see the README's Bochs notes), which froze a 1-CPU machine whenever a
/// selftest guest spun with interrupts off (upstream's memslot_perf_test). Upstream has no such
/// watchdog; it uses the timer only for the LAPIC timer and nested VMX.
const WATCHDOG: u64 = 1 << 16;

/// RFLAGS.TF and RFLAGS.IF.
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_IF: u64 = 1 << 9;
/// RFLAGS.AC and CR0.AM: the guest's alignment checking.
const RFLAGS_AC: u64 = 1 << 18;
const CR0_AM: u64 = 1 << 18;

/// Vector numbers of the exceptions the backend injects.
const DB: u32 = debug::DB_VECTOR as u32;
const BP: u32 = debug::BP_VECTOR as u32;
const GP: u32 = 13;
const PF: u32 = 14;
const UD: u32 = 6;
const MC: u32 = 18;
const AC: u32 = 17;

/// Exceptions intercepted whatever the debugger wants: #AC, so that a guest cannot keep a CPU in
/// an endless #AC delivery loop (CVE-2015-5307; upstream intercepts it always too), and #UD, for
/// the VMMCALL rewrite of `KVM_X86_QUIRK_FIX_HYPERCALL_INSN` (upstream's `handle_ud`, also
/// always intercepted). #DB is in [`GuestDebug::exception_bitmap`] always for the same reason as
/// #AC (CVE-2015-8104).
const EB_ALWAYS: u32 = 1 << AC | 1 << UD;

impl VmxVcpu {
    /// Creates vCPU `id` with a VMCS set up for `config` and the VM's EPT, in RESET state.
    ///
    /// Built in its box: the vCPU (2 KiB) and its FPU area (1 KiB) moved through the stack by
    /// value took this call path's frames to 14 KiB of the 16 KiB kernel stack, and an
    /// allocation under kmemleak then hit the guard page (fuzzer, 2-CPU Bochs).
    pub(crate) fn new(g: &VmxGlobal, eptp: u64, id: u32, apic: Option<VcpuApic>) -> Result<KBox<VmxVcpu>> {
        let config = &g.config;
        let vmcs = Vmcs::new(config.revision_id)?;
        let mut fpu = KBox::<FpuArea>::new_uninit(GFP_KERNEL_ACCOUNT)?;
        // SAFETY: `as_mut_ptr` points to the box's one `FpuArea`, a byte array, for which all
        // zeros is a valid value; so after the write it is initialised.
        let mut fpu = unsafe {
            core::ptr::write_bytes(fpu.as_mut_ptr(), 0, 1);
            fpu.assume_init()
        };
        // FCW 0x37f, MXCSR 0x1f80 (upstream: fpstate_init).
        xsave::reset(&mut fpu.0);
        let slot = KBox::<VmxVcpu>::new_uninit(GFP_KERNEL_ACCOUNT)?;
        let mut v = KBox::write(slot, VmxVcpu {
            id,
            vmcs,
            regs: GuestRegs::default(),
            cr2: 0,
            efer: 0,
            cr8: 0,
            apic_base: 0,
            // No table yet: the default CPUID has x2APIC with an in-kernel LAPIC.
            x2apic_cpuid: crate::x86::cpuid::guest_has_x2apic(&[], apic.is_some()),
            apic,
            interrupt_bitmap: [0; 4],
            fpu,
            pending: None,
            pending_rip: 0,
            config: *config,
            last_cpu: -1,
            pt_host: PtContext::default(),
            pt_guest: PtContext::default(),
            msrs: GuestMsrs {
                misc_enable: msr::MISC_ENABLE_RESET,
                pat: msr::PAT_RESET,
                ucode_rev: msr::UCODE_REV_RESET,
                platform_info: msr::PLATFORM_INFO_CPUID_FAULT,
                ..GuestMsrs::default()
            },
            xcr0: 1,
            ran: false,
            dr: [0; 4],
            dr6: DR6_RESET,
            dr7: DR7_RESET,
            debug: GuestDebug::default(),
            eff_db: [0; 4],
            load_dr: false,
            host_db: [0; 4],
            debugging: false,
            singlestep_rip: 0,
            bp_len: 1,
            step_exit: false,
            vpid: 0,
            tlb_flush: true,
            events: Events::default(),
            entry_info_valid: false,
            proc_ctls: config.proc,
            sipi_vector: 0,
            mce: None,
            shutdown_pending: false,
            msr_filter: None,
            msr_filter_gen: 0,
            msr_bitmap: None,
            pv: pv::PvVcpu::default(),
            hlt_in_guest: false,
        });
        // From here on `Drop` returns the VPID.
        v.vpid = g.alloc_vpid();
        let mut regs = b::kvm_regs::default();
        let mut sregs = b::kvm_sregs::default();
        crate::vcpu::reset_state(&mut regs, &mut sregs);
        // The LAPIC's own RESET value (0 without one, as upstream).
        sregs.apic_base = v.get_apic_base();
        v.with_vmcs(|v| {
            v.init_vmcs(eptp);
            v.write_regs(&regs);
            v.write_sregs(&sregs);
        })?;
        Ok(v)
    }

    /// Runs `f` with this vCPU's VMCS current on this CPU and preemption disabled
    /// (upstream: `vcpu_load` / `vcpu_put`).
    fn with_vmcs<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> Result<R> {
        // SAFETY: balanced with `rkvm_preempt_enable` below; `load` is called with preemption
        // disabled on a CPU in VMX operation (every online CPU is), under the vCPU mutex.
        unsafe {
            b::rkvm_preempt_disable();
            let loaded = self.vmcs.load();
            if let Err(e) = loaded {
                b::rkvm_preempt_enable();
                return Err(e);
            }
            if loaded == Ok(true) {
                self.last_cpu = super::this_cpu();
                self.write_per_cpu_host_state();
                self.tlb_flush = true;
            }
        }
        let r = f(self);
        // SAFETY: balances the disable above.
        unsafe { b::rkvm_preempt_enable() };
        Ok(r)
    }

    /// Host-state fields that are the same on every CPU (upstream: `vmx_set_constant_host_state`)
    /// and the execution controls (upstream: `init_vmcs`).
    fn init_vmcs(&mut self, eptp: u64) {
        let c = &self.config;
        vmcs::write(f::PIN_BASED_VM_EXEC_CONTROL, c.pin.into());
        if c.pin & b::PIN_BASED_VMX_PREEMPTION_TIMER != 0 {
            // Reloaded from this field at every entry (the exit control that saves the
            // running value is off), so it never needs writing again.
            vmcs::write(f::VMX_PREEMPTION_TIMER_VALUE, WATCHDOG);
        }
        vmcs::write(f::CPU_BASED_VM_EXEC_CONTROL, c.proc.into());
        vmcs::write(f::SECONDARY_VM_EXEC_CONTROL, c.proc2.into());
        vmcs::write(f::VM_EXIT_CONTROLS, c.exit.into());
        vmcs::write(f::VM_ENTRY_CONTROLS, c.entry.into());
        vmcs::write(f::EXCEPTION_BITMAP, (GuestDebug::default().exception_bitmap() | EB_ALWAYS).into());
        vmcs::write(f::PAGE_FAULT_ERROR_CODE_MASK, 0);
        vmcs::write(f::PAGE_FAULT_ERROR_CODE_MATCH, 0);
        vmcs::write(f::CR3_TARGET_COUNT, 0);
        vmcs::write(f::VM_EXIT_MSR_STORE_COUNT, 0);
        vmcs::write(f::VM_EXIT_MSR_LOAD_COUNT, 0);
        vmcs::write(f::VM_ENTRY_MSR_LOAD_COUNT, 0);
        vmcs::write(f::VM_ENTRY_INTR_INFO_FIELD, 0);
        vmcs::write(f::VMCS_LINK_POINTER, u64::MAX);
        vmcs::write(f::EPT_POINTER, eptp);
        vmcs::write(f::MSR_BITMAP, super::global().msr_bitmap_pa());
        vmcs::write(f::TSC_OFFSET, 0);
        if self.vpid != 0 {
            vmcs::write(f::VIRTUAL_PROCESSOR_ID, self.vpid.into());
        } else {
            vmcs::write(f::SECONDARY_VM_EXEC_CONTROL, (c.proc2 & !b::SECONDARY_EXEC_ENABLE_VPID).into());
        }
        // The host owns every CR0/CR4 bit: guest writes exit, guest reads see the shadow.
        vmcs::write(f::CR0_GUEST_HOST_MASK, u64::MAX);
        vmcs::write(f::CR4_GUEST_HOST_MASK, u64::MAX);

        // SAFETY: reading this CPU's control registers and MSRs has no side effects.
        unsafe {
            vmcs::write(f::HOST_CR0, b::rkvm_read_cr0() as u64);
            vmcs::write(f::HOST_IDTR_BASE, b::rkvm_host_idt_base() as u64);
        }
        let sel = insn::host_selectors();
        vmcs::write(f::HOST_CS_SELECTOR, sel[0].into());
        vmcs::write(f::HOST_SS_SELECTOR, sel[1].into());
        vmcs::write(f::HOST_TR_SELECTOR, sel[6].into());
        vmcs::write(f::HOST_RIP, entry::exit_rip());
        vmcs::write(f::HOST_IA32_SYSENTER_CS, rdmsr(b::MSR_IA32_SYSENTER_CS).unwrap_or(0));
        vmcs::write(f::HOST_IA32_SYSENTER_EIP, rdmsr(b::MSR_IA32_SYSENTER_EIP).unwrap_or(0));
        vmcs::write(f::HOST_IA32_EFER, rdmsr(b::MSR_EFER).unwrap_or(0));
        if c.exit & b::VM_EXIT_LOAD_IA32_PAT != 0 {
            vmcs::write(f::HOST_IA32_PAT, rdmsr(b::MSR_IA32_CR_PAT).unwrap_or(0));
        }
        if c.entry & b::VM_ENTRY_LOAD_IA32_PAT != 0 {
            vmcs::write(f::GUEST_IA32_PAT, msr::PAT_RESET);
        }
        vmcs::write(f::GUEST_ACTIVITY_STATE, 0);
        vmcs::write(f::GUEST_INTERRUPTIBILITY_INFO, 0);
        vmcs::write(f::GUEST_PENDING_DBG_EXCEPTIONS, 0);
        vmcs::write(f::GUEST_DR7, 0x400);
        vmcs::write(f::GUEST_IA32_DEBUGCTL, 0);
        vmcs::write(f::GUEST_SYSENTER_CS, 0);
        vmcs::write(f::GUEST_SYSENTER_ESP, 0);
        vmcs::write(f::GUEST_SYSENTER_EIP, 0);
    }

    /// Host-state fields that differ per CPU (upstream: `vmx_vcpu_load_vmcs`).
    fn write_per_cpu_host_state(&mut self) {
        // SAFETY: these read this CPU's descriptor tables and MSRs.
        unsafe {
            vmcs::write(f::HOST_TR_BASE, b::rkvm_host_tss_base() as u64);
            vmcs::write(f::HOST_GDTR_BASE, b::rkvm_host_gdt_base() as u64);
        }
        vmcs::write(f::HOST_IA32_SYSENTER_ESP, rdmsr(b::MSR_IA32_SYSENTER_ESP).unwrap_or(0));
    }

    fn write_regs(&mut self, r: &b::kvm_regs) {
        let g = &mut self.regs.gpr;
        g[RAX] = r.rax;
        g[RBX] = r.rbx;
        g[RCX] = r.rcx;
        g[RDX] = r.rdx;
        g[5] = r.rbp;
        g[6] = r.rsi;
        g[7] = r.rdi;
        for (i, v) in [r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15].into_iter().enumerate() {
            g[8 + i] = v;
        }
        vmcs::write(f::GUEST_RSP, r.rsp);
        vmcs::write(f::GUEST_RIP, r.rip);
        vmcs::write(f::GUEST_RFLAGS, r.rflags);
    }

    fn read_regs(&self, r: &mut b::kvm_regs) {
        let g = &self.regs.gpr;
        *r = b::kvm_regs {
            rax: g[RAX],
            rbx: g[RBX],
            rcx: g[RCX],
            rdx: g[RDX],
            rsi: g[6],
            rdi: g[7],
            rsp: vmcs::read(f::GUEST_RSP),
            rbp: g[5],
            r8: g[8],
            r9: g[9],
            r10: g[10],
            r11: g[11],
            r12: g[12],
            r13: g[13],
            r14: g[14],
            r15: g[15],
            rip: vmcs::read(f::GUEST_RIP),
            rflags: vmcs::read(f::GUEST_RFLAGS),
        };
    }

    fn set_cr0(&mut self, cr0: u64) {
        self.tlb_flush = true;
        vmcs::write(f::CR0_READ_SHADOW, cr0);
        vmcs::write(f::GUEST_CR0, self.config.hw_cr0(cr0, true));
    }

    fn set_cr4(&mut self, cr4: u64) {
        self.tlb_flush = true;
        vmcs::write(f::CR4_READ_SHADOW, cr4);
        vmcs::write(f::GUEST_CR4, self.config.hw_cr4(cr4));
    }

    fn set_efer(&mut self, efer: u64) {
        self.efer = efer;
        vmcs::write(f::GUEST_IA32_EFER, efer);
        let mut entry = vmcs::read(f::VM_ENTRY_CONTROLS) as u32;
        if efer & cr::EFER_LMA != 0 {
            entry |= b::VM_ENTRY_IA32E_MODE;
        } else {
            entry &= !b::VM_ENTRY_IA32E_MODE;
        }
        vmcs::write(f::VM_ENTRY_CONTROLS, entry.into());
    }

    fn write_sregs(&mut self, s: &b::kvm_sregs) {
        let segs = [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.tr, &s.ldt];
        for (i, (sel, base, limit, ar)) in SEGMENTS.iter().enumerate() {
            let seg = segs[i];
            let which = if i == 7 { Which::Ldtr } else { Which::Other };
            let pure = crate::vcpu::from_kvm_segment(seg);
            vmcs::write(*sel, seg.selector.into());
            vmcs::write(*base, seg.base);
            vmcs::write(*limit, seg.limit.into());
            vmcs::write(*ar, segment::to_ar(&pure, which).into());
        }
        vmcs::write(f::GUEST_GDTR_BASE, s.gdt.base);
        vmcs::write(f::GUEST_GDTR_LIMIT, s.gdt.limit.into());
        vmcs::write(f::GUEST_IDTR_BASE, s.idt.base);
        vmcs::write(f::GUEST_IDTR_LIMIT, s.idt.limit.into());
        self.cr2 = s.cr2;
        vmcs::write(f::GUEST_CR3, s.cr3);
        self.set_efer(s.efer);
        self.set_cr0(s.cr0);
        self.set_cr4(s.cr4);
        if s.cr8 <= 15 {
            self.set_cr8(s.cr8);
        }
        self.set_apic_base(s.apic_base);
        self.interrupt_bitmap = s.interrupt_bitmap;
        crate::vcpu::normalize_interrupt_bitmap(&mut self.interrupt_bitmap);
    }

    fn read_sregs(&self, s: &mut b::kvm_sregs) {
        *s = b::kvm_sregs::default();
        let mut out = [b::kvm_segment::default(); 8];
        for (i, (sel, base, limit, ar)) in SEGMENTS.iter().enumerate() {
            let seg = segment::from_ar(vmcs::read(*base), vmcs::read(*limit) as u32, vmcs::read(*sel) as u16, vmcs::read(*ar) as u32);
            out[i] = crate::vcpu::to_kvm_segment(&seg);
        }
        [s.cs, s.ds, s.es, s.fs, s.gs, s.ss, s.tr, s.ldt] = out;
        s.gdt.base = vmcs::read(f::GUEST_GDTR_BASE);
        s.gdt.limit = vmcs::read(f::GUEST_GDTR_LIMIT) as u16;
        s.idt.base = vmcs::read(f::GUEST_IDTR_BASE);
        s.idt.limit = vmcs::read(f::GUEST_IDTR_LIMIT) as u16;
        s.cr0 = vmcs::read(f::CR0_READ_SHADOW);
        s.cr2 = self.cr2;
        s.cr3 = vmcs::read(f::GUEST_CR3);
        s.cr4 = vmcs::read(f::CR4_READ_SHADOW);
        s.cr8 = self.get_cr8();
        s.efer = self.efer;
        s.apic_base = self.get_apic_base();
        s.interrupt_bitmap = self.interrupt_bitmap;
    }

    /// Advances RIP past the instruction that exited, which rkvm has completed for the guest
    /// (upstream `kvm_skip_emulated_instruction`): with RFLAGS.TF set, the single-step trap the
    /// CPU could not raise is made here.
    #[inline]
    fn skip_instruction(&mut self, len: u64) {
        // "The processor will not generate this exception after the instruction that sets the
        // TF flag": the RFLAGS of before the instruction decides (upstream reads it first too).
        let rflags = vmcs::read(f::GUEST_RFLAGS);
        self.skip_instruction_raw(len);
        if rflags & RFLAGS_TF != 0 {
            self.single_step_trap();
        }
    }

    /// The single-step trap of an instruction rkvm completed (upstream `kvm_vcpu_do_singlestep`):
    /// `KVM_EXIT_DEBUG` when userspace single-steps, else a #DB with DR6.BS for the guest's own
    /// TF. No BS may stay pending from the exit: the CPU never executed the instruction, yet a
    /// MOV-SS-blocked exit holds the previous instruction's trap, and Bochs 2.7 saves BS on every
    /// exit taken with TF = 1 (README); either would raise a second trap right after the entry.
    #[cold]
    fn single_step_trap(&mut self) {
        let pend = vmcs::read(f::GUEST_PENDING_DBG_EXCEPTIONS);
        if pend & debug::DR6_BS != 0 {
            vmcs::write(f::GUEST_PENDING_DBG_EXCEPTIONS, pend & !debug::DR6_BS);
        }
        if self.debug.singlestep() {
            self.step_exit = true;
        } else {
            self.queue_db(Some(debug::DR6_BS));
        }
    }

    /// Advances RIP past an instruction without single-step trap (upstream vmx's inner
    /// `skip_emulated_instruction`; for ICEBP, whose #DB outranks the single step).
    #[inline]
    fn skip_instruction_raw(&mut self, len: u64) {
        let rip = vmcs::read(f::GUEST_RIP);
        // Outside 64-bit mode RIP wraps at 32 bits.
        let rip = if self.efer & cr::EFER_LMA != 0 { rip.wrapping_add(len) } else { (rip + len) & 0xffff_ffff };
        vmcs::write(f::GUEST_RIP, rip);
        // The instruction has completed: an STI or MOV SS shadow it sat in is over (upstream
        // `vmx_skip_emulated_instruction` → `vmx_set_interrupt_shadow(vcpu, 0)`). Otherwise an
        // `sti; hlt` guest would stay uninterruptible after the emulated HLT.
        let st = vmcs::read(f::GUEST_INTERRUPTIBILITY_INFO) as u32;
        if st & (events::BLOCKING_BY_STI | events::BLOCKING_BY_MOV_SS) != 0 {
            vmcs::write(f::GUEST_INTERRUPTIBILITY_INFO, (st & !(events::BLOCKING_BY_STI | events::BLOCKING_BY_MOV_SS)).into());
        }
    }

    /// CR8: the LAPIC's TPR[7:4] with an in-kernel LAPIC (upstream `kvm_get_cr8`).
    fn get_cr8(&self) -> u64 {
        match &self.apic {
            Some(a) => a.lapic.cr8(),
            None => self.cr8,
        }
    }

    fn set_cr8(&mut self, v: u64) {
        match &mut self.apic {
            Some(a) => a.lapic.set_cr8(v),
            None => self.cr8 = v,
        }
    }

    /// IA32_APIC_BASE (upstream `kvm_get_apic_base`).
    fn get_apic_base(&self) -> u64 {
        match &self.apic {
            Some(a) => a.lapic.base(),
            None => self.apic_base,
        }
    }

    fn set_apic_base(&mut self, v: u64) {
        match &mut self.apic {
            Some(a) => a.set_base(v),
            None => self.apic_base = v,
        }
    }

    /// The checks every IA32_APIC_BASE write gets (upstream `kvm_apic_set_base`; a guest's
    /// WRMSR also obeys `lapic::guest_base_change_valid`).
    fn apic_base_valid(&self, v: u64) -> bool {
        crate::x86::cr::Limits::ARCH.apic_base_valid(v, self.x2apic_cpuid)
    }

    /// Queues a hardware exception for the next entry (with error code 0 for #GP).
    fn inject_exception(&mut self, vector: u32) {
        self.inject_exception_code(vector, (vector == GP).then_some(0));
    }

    /// Queues a hardware exception with an optional error code for the next entry.
    fn inject_exception_code(&mut self, vector: u32, code: Option<u32>) {
        self.events.exception = Some(Exception { vector: vector as u8, error_code: code, soft: None, pending: true });
    }

    /// CS base + RIP (VMCS current).
    fn linear_rip(&self) -> u64 {
        vmcs::read(f::GUEST_CS_BASE).wrapping_add(vmcs::read(f::GUEST_RIP))
    }

    /// The linear RIP as `kvm_run->debug.arch.pc` reports it (upstream `kvm_get_linear_rip`):
    /// RIP in 64-bit mode, else CS base + EIP truncated to 32 bits (VMCS current).
    fn debug_pc(&self) -> u64 {
        if self.code_mode() == decode::Mode::Bits64 {
            vmcs::read(f::GUEST_RIP)
        } else {
            self.linear_rip() & 0xffff_ffff
        }
    }

    /// RFLAGS as the guest's state has it, without the TF rkvm sets for
    /// `KVM_GUESTDBG_SINGLESTEP` (upstream `kvm_get_rflags`; VMCS current).
    fn get_rflags(&self) -> u64 {
        let r = vmcs::read(f::GUEST_RFLAGS);
        if self.debug.singlestep() { r & !RFLAGS_TF } else { r }
    }

    /// Sets RFLAGS, adding TF while userspace single-steps and the guest is still where that
    /// began (upstream `kvm_set_rflags`; VMCS current).
    fn set_rflags(&mut self, mut r: u64) {
        if self.debug.singlestep() && self.debug_pc() == self.singlestep_rip {
            r |= RFLAGS_TF;
        }
        vmcs::write(f::GUEST_RFLAGS, r);
    }

    /// Writes the effective DR7 (the debugger's with `USE_HW_BP`, else the guest's) into the
    /// VMCS and notes the DR0–DR3 to load with it (upstream `kvm_update_dr7` and
    /// `kvm_update_dr0123`; VMCS current).
    fn update_dr7(&mut self) {
        let (db, dr7) = self.debug.effective(&self.dr, self.dr7);
        vmcs::write(f::GUEST_DR7, dr7);
        self.eff_db = db;
        self.load_dr = debug::armed(dr7);
        self.debugging = self.load_dr || self.debug.control != 0;
    }

    /// Queues a #DB for the guest (upstream `kvm_queue_exception_p(DB_VECTOR, payload)`), with
    /// what its delivery does to the debug registers applied now (upstream does it at
    /// injection: `kvm_deliver_exception_payload`, and DR7.GD cleared): `payload`'s B0–B3, BD,
    /// BS into DR6 (none for `KVM_GUESTDBG_INJECT_DB`). VMCS current.
    fn queue_db(&mut self, payload: Option<u64>) {
        if let Some(p) = payload {
            self.dr6 = debug::dr6_after_db(self.dr6, p);
        }
        if self.dr7 & debug::DR7_GD != 0 {
            self.dr7 = debug::dr7_after_db(self.dr7);
            self.update_dr7();
        }
        self.inject_exception(DB);
    }

    /// What the guest accepts now (VMCS current).
    fn event_guest_state(&self) -> events::Guest {
        events::Guest {
            if_flag: vmcs::read(f::GUEST_RFLAGS) & RFLAGS_IF != 0,
            interruptibility: vmcs::read(f::GUEST_INTERRUPTIBILITY_INFO) as u32,
        }
    }

    /// Fills the fields of `kvm_run` every exit to userspace carries in the userspace-irqchip
    /// model (upstream `post_kvm_run_save`).
    /// Also records where a pending I/O completion belongs (`pending_rip`).
    fn post_run_save(&mut self, run: *mut b::kvm_run) -> Result {
        let (g, apic_base, cr8) = self.with_vmcs(|v| {
            if v.pending.is_some() {
                v.pending_rip = v.linear_rip();
            }
            (v.event_guest_state(), v.get_apic_base(), v.get_cr8())
        })?;
        // With an in-kernel irqchip userspace never injects: always "ready" (upstream
        // `post_kvm_run_save`: `pic_in_kernel(kvm) || ...`).
        let ready = self.apic.is_some() || self.events.ready_for_interrupt(g);
        // SAFETY: `run` is the vCPU's kvm_run page; these are plain integer fields.
        unsafe {
            (*run).if_flag = g.if_flag.into();
            (*run).cr8 = cr8;
            (*run).apic_base = apic_base;
            (*run).ready_for_interrupt_injection = ready.into();
        }
        Ok(())
    }

    /// Queues a #PF for linear address `la` (CR2) with `code` (upstream:
    /// `kvm_inject_emulated_page_fault`).
    fn inject_page_fault(&mut self, la: u64, code: u32) {
        self.cr2 = la;
        self.inject_exception_code(PF, Some(code));
    }

    /// Completes the I/O or MMIO exit userspace has just handled (upstream
    /// `complete_userspace_io`). Called with preemption enabled: INS data goes into guest memory
    /// outside the VMCS-loaded section, since writing it may sleep (the slots mutex, a fault on
    /// the user page: upstream's `kvm_write_guest` runs with preemption enabled too).
    fn complete_pending(&mut self, vm: &crate::vm::Vm, pio: *const u8, run: *const b::kvm_run) -> Result {
        let Some(p) = self.pending.take() else { return Ok(()) };
        if let PendingIo::Str(s) = p {
            let (rip, pg) = self.with_vmcs(|v| (v.linear_rip(), v.paging()))?;
            if rip != self.pending_rip {
                return Ok(());
            }
            let done = self.string_io_done(&s);
            if s.is_in {
                self.write_ins_data(vm, pio, &s, &pg, done);
            }
            return self.with_vmcs(|v| v.complete_string_io(&s, done));
        }
        self.with_vmcs(|v| v.complete_pending_loaded(p, pio, run))
    }

    /// `complete_pending` of an IN, an OUT or MMIO (VMCS current).
    fn complete_pending_loaded(&mut self, p: PendingIo, pio: *const u8, run: *const b::kvm_run) {
        if self.linear_rip() != self.pending_rip {
            return;
        }
        if let PendingIo::Mmio { access, len } = p {
            let mut data = [0u8; 8];
            // SAFETY: `run` is the vCPU's kvm_run page; mmio.data is 8 plain bytes that
            // userspace filled in (for a read).
            unsafe { core::ptr::copy_nonoverlapping((*run).__bindgen_anon_1.mmio.data.as_ptr(), data.as_mut_ptr(), 8) };
            self.finish_mmio(access, len, data);
            return;
        }
        if let PendingIo::Msr { read, len } = p {
            // SAFETY: `run` is the vCPU's kvm_run page; the msr view of the union is plain
            // integers userspace filled in, each read once.
            let (error, data) = unsafe {
                let m = core::ptr::addr_of!((*run).__bindgen_anon_1.msr);
                (core::ptr::addr_of!((*m).error).read_volatile(), core::ptr::addr_of!((*m).data).read_volatile())
            };
            if error != 0 {
                self.inject_exception(GP);
                return;
            }
            if read {
                self.regs.gpr[RAX] = data & 0xffff_ffff;
                self.regs.gpr[RDX] = data >> 32;
            }
            self.skip_instruction(len.into());
            return;
        }
        if let PendingIo::Hypercall { long } = p {
            self.complete_hypercall(run, long);
        }
        if let PendingIo::In { size } = p {
            let mut data = [0u8; 8];
            // SAFETY: `pio` is the vCPU's PIO page; `size` ≤ 4 bytes at offset 0.
            unsafe { core::ptr::copy_nonoverlapping(pio, data.as_mut_ptr(), size as usize) };
            self.set_in_result(size, u64::from_le_bytes(data));
        }
        let len = vmcs::read(f::VM_EXIT_INSTRUCTION_LEN);
        self.skip_instruction(len);
    }

    /// Completes an emulated MMIO instruction (VMCS current): a read's `data` goes to its
    /// register, STOS moves rDI, RIP moves past it.
    fn finish_mmio(&mut self, access: Access, len: u8, data: [u8; 8]) {
        match access {
            Access::Read { reg, high8, size, extend } => {
                let old = self.gpr(reg as usize);
                self.set_gpr(reg as usize, decode::merge(old, u64::from_le_bytes(data), size, high8, extend));
            }
            Access::Stos { size, addr_size } => {
                let df = vmcs::read(f::GUEST_RFLAGS) & (1 << 10) != 0;
                let rdi = self.regs.gpr[RDI];
                let moved = if df { rdi.wrapping_sub(size.into()) } else { rdi.wrapping_add(size.into()) };
                self.regs.gpr[RDI] = decode::merge(rdi, moved, addr_size, false, decode::Extend::None);
            }
            Access::Test { size, src } => {
                let b = match src {
                    decode::TestSrc::Imm(v) => v,
                    decode::TestSrc::Reg { reg, high8 } => {
                        let v = self.gpr(reg as usize);
                        if high8 { v >> 8 } else { v }
                    }
                };
                let flags = decode::test_flags(vmcs::read(f::GUEST_RFLAGS), u64::from_le_bytes(data), b, size);
                vmcs::write(f::GUEST_RFLAGS, flags);
            }
            _ => {}
        }
        self.skip_instruction(len.into());
    }

    /// Stores an IN instruction's `size`-byte result in rAX (upstream `complete_fast_pio_in`).
    fn set_in_result(&mut self, size: u32, v: u64) {
        let rax = &mut self.regs.gpr[RAX];
        *rax = match size {
            1 => (*rax & !0xff) | (v & 0xff),
            2 => (*rax & !0xffff) | (v & 0xffff),
            _ => v & 0xffff_ffff,
        };
    }

    /// One guest entry and exit (steps 3–6 of the module doc). `window`: ask for an
    /// interrupt-window exit. `kick_seq`: the LAPIC's kick sequence when its posted work was
    /// last folded in; a kick since then cancels the entry (upstream: the `kvm_vcpu_exit_request`
    /// check with interrupts off in `vcpu_enter_guest`).
    fn enter_once(&mut self, window: bool, kick_seq: u32) -> Result<Entered> {
        // SAFETY: preemption stays disabled until the matching enable at the end.
        unsafe { b::rkvm_preempt_disable() };
        // SAFETY: preemption disabled; this CPU is in VMX operation; vCPU mutex held.
        match unsafe { self.vmcs.load() } {
            Ok(new_cpu) => {
                if new_cpu {
                    self.last_cpu = super::this_cpu();
                    self.write_per_cpu_host_state();
                    self.tlb_flush = true;
                    self.pv.migrated();
                }
            }
            Err(e) => {
                // SAFETY: balances the disable above.
                unsafe { b::rkvm_preempt_enable() };
                return Err(e);
            }
        }
        // The event to deliver and the window exits to ask for (upstream: inject_pending_event).
        // With nothing queued (the common case) the guest's RFLAGS and interruptibility are not
        // read, and the VMCS is written only where it changes.
        let mut ev = if self.events.idle() && !window {
            events::Entry::default()
        } else {
            self.events.next_entry(self.event_guest_state(), window, self.debug.block_irq())
        };
        // Real-mode exceptions push no error code, and an entry delivering one there fails
        // (upstream `kvm_inject_exception`: `has_error_code &= is_protmode(vcpu)`).
        if ev.info & events::INFO_HAS_ERROR != 0 && vmcs::read(f::CR0_READ_SHADOW) & cr::CR0_PE == 0 {
            ev.info &= !events::INFO_HAS_ERROR;
        }
        if ev.info != 0 || self.entry_info_valid {
            vmcs::write(f::VM_ENTRY_INTR_INFO_FIELD, ev.info.into());
            self.entry_info_valid = ev.info != 0;
        }
        if ev.info != 0 {
            vmcs::write(f::VM_ENTRY_EXCEPTION_ERROR_CODE, ev.error_code.into());
            vmcs::write(f::VM_ENTRY_INSTRUCTION_LEN, ev.instr_len.into());
            if ev.info & 0x7ff == (events::TYPE_HW_EXCEPTION << 8) | DB {
                self.db_injection_entry();
            }
            // An event wakes a guest halted in VMX non-root operation (upstream `vmx_clear_hlt`).
            if self.hlt_in_guest && vmcs::read(f::GUEST_ACTIVITY_STATE) == u64::from(b::GUEST_ACTIVITY_HLT) {
                vmcs::write(f::GUEST_ACTIVITY_STATE, b::GUEST_ACTIVITY_ACTIVE.into());
            }
        }
        let mut proc = self.config.proc;
        if self.hlt_in_guest {
            proc &= !b::CPU_BASED_HLT_EXITING;
        }
        if ev.irq_window {
            proc |= b::CPU_BASED_INTR_WINDOW_EXITING;
        }
        if ev.nmi_window {
            proc |= b::CPU_BASED_NMI_WINDOW_EXITING;
        }
        if proc != self.proc_ctls {
            vmcs::write(f::CPU_BASED_VM_EXEC_CONTROL, proc.into());
            self.proc_ctls = proc;
        }
        // Host state that changes per task or over time (upstream: vmx_prepare_switch_to_guest).
        let sel = insn::host_selectors();
        // SAFETY: reading this CPU's CR3/CR4 and base MSRs has no side effects.
        unsafe {
            vmcs::write(f::HOST_CR3, b::rkvm_read_cr3() as u64);
            vmcs::write(f::HOST_CR4, b::rkvm_read_cr4() as u64);
        }
        // Host selectors must have RPL and TI clear; a user's DS/ES/FS/GS may not.
        let host_sel = |s: u16| if s & 7 != 0 { 0 } else { s };
        vmcs::write(f::HOST_DS_SELECTOR, host_sel(sel[2]).into());
        vmcs::write(f::HOST_ES_SELECTOR, host_sel(sel[3]).into());
        vmcs::write(f::HOST_FS_SELECTOR, host_sel(sel[4]).into());
        vmcs::write(f::HOST_GS_SELECTOR, host_sel(sel[5]).into());
        vmcs::write(f::HOST_FS_BASE, rdmsr(b::MSR_FS_BASE).unwrap_or(0));
        vmcs::write(f::HOST_GS_BASE, rdmsr(b::MSR_GS_BASE).unwrap_or(0));

        let fpu_mask = super::global().host.guest_xcr0;
        // The guest area is aligned and valid for XRSTOR: only XSAVE, `xsave::reset`,
        // `xsave::set` and `xsave::set_legacy` write it, and they keep header and MXCSR valid.
        // SAFETY: kernel_fpu_begin saved the user's x87/SSE/AVX state (reloaded on return to
        // userspace); preemption is off; XCR0 is the host's, covering `fpu_mask`; area as above.
        unsafe {
            b::rkvm_fpu_begin();
            if fpu_mask != 0 {
                insn::xrstor(self.fpu.0.as_ptr(), fpu_mask);
            } else {
                insn::fxrstor(self.fpu.0.as_ptr());
            }
        }
        if self.tlb_flush {
            self.flush_vpid();
        }
        let g = super::global();
        let host_kgs = rdmsr(b::MSR_KERNEL_GS_BASE).unwrap_or(0);
        let host_dr7 = insn::read_dr7();
        let guest_xcr0 = g.host.guest_xcr0 != 0 && vmcs::read(f::CR4_READ_SHADOW) & cr::CR4_OSXSAVE != 0;
        let host_xcr0 = if guest_xcr0 { insn::xgetbv0() } else { 0 };

        // SAFETY: interrupts are re-enabled below on every path.
        unsafe { b::rkvm_local_irq_disable() };
        // Guest MSR values (upstream: vmx_prepare_switch_to_guest, and the SPEC_CTRL and XCR0
        // switches of vmx_vcpu_run / kvm_load_guest_xsave_state). STAR/LSTAR/CSTAR/SFMASK/
        // TSC_AUX stay loaded until this CPU returns to user mode: the notifier restores them.
        // SAFETY: interrupts are off; the slot reference ends before they are enabled.
        if unsafe { g.uret_here() }.load_guest(&mut KernelMsrs, &self.msrs.uret, g.host.uret_present) {
            // SAFETY: on this CPU, interrupts off; the offline callback disarms it.
            unsafe { b::rkvm_uret_register() };
        }
        if self.msrs.kernel_gs_base != host_kgs {
            // SAFETY: a canonical value (checked on WRMSR; SWAPGS cannot make others).
            unsafe { b::rkvm_wrmsr_safe(b::MSR_KERNEL_GS_BASE, self.msrs.kernel_gs_base) };
        }
        let host_spec_ctrl =
            if g.host.spec_ctrl_bits != 0 { rdmsr(b::MSR_IA32_SPEC_CTRL).unwrap_or(0) } else { 0 };
        if g.host.spec_ctrl_bits != 0 && self.msrs.spec_ctrl != host_spec_ctrl {
            // SAFETY: a value with only the bits this CPU supports (checked on WRMSR).
            unsafe { b::rkvm_wrmsr_safe(b::MSR_IA32_SPEC_CTRL, self.msrs.spec_ctrl) };
        }
        if guest_xcr0 && self.xcr0 != host_xcr0 {
            // SAFETY: a value checked on XSETBV (x87, optionally SSE: a subset of the host's);
            // the host's comes back below, before kernel_fpu_end.
            unsafe { insn::xsetbv0(self.xcr0) };
        }
        // Work posted after the last look (an IPI, the timer) would otherwise wait for an
        // unrelated exit; a kick that comes after this check finds interrupts off and causes
        // an exit right after the entry.
        let cancelled = self.apic.as_ref().is_some_and(|a| a.posted.kick.seq() != kick_seq);
        // Guest debugging or the guest's own breakpoints: one test on the common path.
        let debugging = self.debugging;
        if debugging {
            // SAFETY: interrupts are off; `debug_exit` runs before they are on again.
            unsafe { self.debug_entry(host_dr7) };
        }
        let pt_caps = if cancelled { None } else { super::global().pt };
        if let Some(caps) = pt_caps {
            pt::guest_enter(&mut KernelMsrs, caps, &mut self.pt_host, &self.pt_guest);
        }
        let exited = if cancelled {
            None
        } else {
            self.ran = true;
            // SAFETY: interrupts are off until the entry, so no host fault observes the guest
            // CR2; the VMCS is current with this CPU's host state; `launched` tracks VMLAUNCH.
            let exited = unsafe {
                insn::write_cr2(self.cr2);
                entry::enter(&mut self.regs, self.vmcs.launched)
            };
            self.cr2 = insn::read_cr2();
            Some(exited)
        };
        if let Some(caps) = pt_caps {
            pt::guest_exit(&mut KernelMsrs, caps, &self.pt_host, &mut self.pt_guest);
        }
        let info = if cancelled {
            Entered::Cancelled
        } else if exited == Some(true) {
            let info = ExitInfo {
                reason: vmcs::read(f::VM_EXIT_REASON) as u32,
                qualification: vmcs::read(f::EXIT_QUALIFICATION),
                instr_len: vmcs::read(f::VM_EXIT_INSTRUCTION_LEN),
                intr_info: vmcs::read(f::VM_EXIT_INTR_INFO) as u32,
                gpa: vmcs::read(f::GUEST_PHYSICAL_ADDRESS),
                injected: ev.info,
            };
            // A failed VM entry (exit reason bit 31) leaves the VMCS not launched: the next
            // entry must be VMLAUNCH again (SDM 27.8; upstream: vmx_vcpu_run).
            if info.reason & (1 << 31) == 0 {
                self.vmcs.launched = true;
                // Every VM exit clears the valid bit (SDM 24.8.3); after a failed entry the
                // field is left as it was.
                self.entry_info_valid = false;
                // What was delivered, and what an exit cut short (upstream:
                // vmx_complete_interrupts). A failed entry delivered nothing: all stays queued.
                let idt = vmcs::read(f::IDT_VECTORING_INFO_FIELD) as u32;
                let idt_error = if idt & events::INFO_HAS_ERROR != 0 {
                    vmcs::read(f::IDT_VECTORING_ERROR_CODE) as u32
                } else {
                    0
                };
                self.events.complete(idt, idt_error, info.instr_len as u32);
            }
            // An NMI that arrived in the guest is the host's: run its handler now, as if it
            // had arrived here (upstream: vmx_do_nmi_irqoff).
            if info.reason == reason::EXCEPTION_NMI && (info.intr_info >> 8) & 7 == 2 {
                // SAFETY: interrupts are off; vector 2 is the kernel's NMI entry.
                unsafe { core::arch::asm!("int 2") };
            }
            Entered::Exit(info)
        } else {
            Entered::Failed(vmcs::read(f::VM_INSTRUCTION_ERROR) as u32)
        };
        // SAFETY: restore what the VM exit reset or the guest may have changed: the TR and GDT
        // limits, DR7 (reset to 0x400 by the exit), KERNEL_GS_BASE (guest SWAPGS or WRMSR),
        // SPEC_CTRL and XCR0, all before interrupts or the FPU are the host's again.
        unsafe {
            b::rkvm_restore_host_descriptors();
            // The exit acknowledged the interrupt (VM_EXIT_ACK_INTR_ON_EXIT): run the host's
            // handler now, with interrupts still off (upstream: handle_external_interrupt_irqoff).
            if let Entered::Exit(e) = &info {
                if e.reason == reason::EXTERNAL_INTERRUPT && e.intr_info & (1 << 31) != 0 {
                    entry::deliver_host_interrupt(e.intr_info as u8);
                }
            }
            if debugging {
                self.debug_exit();
            }
            if host_dr7 != 0x400 {
                insn::write_dr7(host_dr7);
            }
            self.msrs.kernel_gs_base = rdmsr(b::MSR_KERNEL_GS_BASE).unwrap_or(0);
            if self.msrs.kernel_gs_base != host_kgs {
                b::rkvm_wrmsr_safe(b::MSR_KERNEL_GS_BASE, host_kgs);
            }
            if g.host.spec_ctrl_bits != 0 && self.msrs.spec_ctrl != host_spec_ctrl {
                b::rkvm_wrmsr_safe(b::MSR_IA32_SPEC_CTRL, host_spec_ctrl);
            }
            if guest_xcr0 && self.xcr0 != host_xcr0 {
                insn::xsetbv0(host_xcr0);
            }
            b::rkvm_local_irq_enable();
            if fpu_mask != 0 {
                insn::xsave(self.fpu.0.as_mut_ptr(), fpu_mask);
            } else {
                insn::fxsave(self.fpu.0.as_mut_ptr());
            }
            b::rkvm_fpu_end();
            b::rkvm_preempt_enable();
        }
        Ok(info)
    }

    /// Handles one exit (upstream: `vmx_handle_exit` → `kvm_vmx_exit_handlers`).
    fn handle_exit(&mut self, ctx: &mut RunContext<'_>, e: &ExitInfo) -> Result<Next> {
        let run = ctx.run;
        // Entry failures: invalid guest state, MSR loading, machine check during entry. As
        // upstream, userspace gets the full exit reason (bit 31 set).
        if e.reason & (1 << 31) != 0 {
            // SAFETY: `run` is the vCPU's kvm_run page (plain integer fields).
            unsafe {
                (*run).exit_reason = b::KVM_EXIT_FAIL_ENTRY;
                (*run).__bindgen_anon_1.fail_entry.hardware_entry_failure_reason = u64::from(e.reason);
                (*run).__bindgen_anon_1.fail_entry.cpu = self.last_cpu as u32;
            }
            return Ok(Next::User);
        }
        match e.reason & 0xffff {
            reason::EXTERNAL_INTERRUPT => Ok(Next::Resume),
            // The window exits were asked for by `next_entry`; it runs again before the next
            // entry and injects what is now allowed.
            reason::INTERRUPT_WINDOW | reason::NMI_WINDOW => Ok(Next::Resume),
            // The watchdog: back to the run loop, which reschedules if needed.
            reason::PREEMPTION_TIMER => Ok(Next::Resume),
            reason::EXCEPTION_NMI if (e.intr_info >> 8) & 7 == 2 => Ok(Next::Resume),
            // #UD first, as upstream's `handle_exception_nmi` (`is_invalid_opcode`): it may
            // read and write guest memory, so outside `with_vmcs`.
            reason::EXCEPTION_NMI if e.intr_info & 0x7ff == (events::TYPE_HW_EXCEPTION << 8 | UD) => self.handle_ud(ctx),
            reason::EXCEPTION_NMI => self.with_vmcs(|v| v.handle_exception(e, run)),
            reason::TRIPLE_FAULT => {
                // SAFETY: as above.
                unsafe { (*run).exit_reason = b::KVM_EXIT_SHUTDOWN };
                Ok(Next::User)
            }
            reason::HLT => {
                self.with_vmcs(|v| v.skip_instruction(e.instr_len))?;
                // With an in-kernel LAPIC the vCPU blocks in the kernel until an event wakes it
                // (upstream `kvm_emulate_halt` → `KVM_MP_STATE_HALTED`, then `kvm_vcpu_block`).
                if let Some(a) = self.apic.as_mut() {
                    a.mp = b::KVM_MP_STATE_HALTED;
                    return Ok(Next::Resume);
                }
                // SAFETY: as above.
                unsafe { (*run).exit_reason = b::KVM_EXIT_HLT };
                Ok(Next::User)
            }
            reason::CPUID => {
                // CPUID faulting (MSR_MISC_FEATURES_ENABLES): #GP outside ring 0 (upstream
                // `kvm_emulate_cpuid` → `kvm_require_cpl`).
                if self.msrs.misc_features & msr::MISC_FEATURES_CPUID_FAULT != 0 && self.with_vmcs(|v| v.cpl())? != 0 {
                    self.with_vmcs(|v| v.inject_exception(GP))?;
                    return Ok(Next::Resume);
                }
                self.emulate_cpuid(ctx.cpuid)?;
                self.with_vmcs(|v| v.skip_instruction(e.instr_len))?;
                Ok(Next::Resume)
            }
            reason::VMCALL => self.handle_hypercall(ctx, e),
            reason::MSR_READ => self.handle_msr(ctx, e, false),
            reason::MSR_WRITE => self.handle_msr(ctx, e, true),
            reason::XSETBV => {
                self.with_vmcs(|v| {
                    let val = (v.regs.gpr[RDX] << 32) | (v.regs.gpr[RAX] & 0xffff_ffff);
                    if v.regs.gpr[RCX] as u32 == 0 && v.cpl() == 0 && v.xcr0_valid(val) {
                        v.xcr0 = val;
                        v.skip_instruction(e.instr_len);
                    } else {
                        v.inject_exception(GP);
                    }
                })?;
                Ok(Next::Resume)
            }
            reason::DR_ACCESS => self.with_vmcs(|v| v.handle_dr(e, run)),
            reason::CR_ACCESS => self.handle_cr(e),
            reason::IO_INSTRUCTION => self.handle_io(ctx, e),
            reason::EPT_VIOLATION => {
                let write = e.qualification & 2 != 0;
                match ctx.vm.fault_in(e.gpa >> crate::memslot::PAGE_SHIFT, write) {
                    // Retry: an invalidation of the page raced with the fault; the guest
                    // faults again (upstream RET_PF_RETRY).
                    Ok(Fault::Mapped | Fault::Retry) => Ok(Next::Resume),
                    Ok(Fault::Mmio) => self.emulate_mmio(ctx, e),
                    // No page behind the slot's address any more (unmapped, or no write
                    // permission): KVM_RUN fails with EFAULT and, as upstream's `vcpu_run`
                    // leaves it, KVM_EXIT_UNKNOWN (`kvm_handle_error_pfn`).
                    Err(err) => {
                        // SAFETY: `run` is the vCPU's kvm_run page (plain integer field).
                        unsafe { (*run).exit_reason = b::KVM_EXIT_UNKNOWN };
                        Err(err)
                    }
                }
            }
            18..=27 | 36 | 39 | 50 | 53 => {
                // VMX instructions, MWAIT/MONITOR, INVEPT/INVVPID: not for this guest.
                self.with_vmcs(|v| v.inject_exception(UD))?;
                Ok(Next::Resume)
            }
            _ => {
                self.internal_error(run, b::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, e);
                Ok(Next::User)
            }
        }
    }

    /// A guest RDMSR or WRMSR (upstream `kvm_emulate_rdmsr` / `kvm_emulate_wrmsr`): the VM's
    /// MSR filter first (`kvm_msr_allowed`), then the MSR itself ([`Self::read_msr`] /
    /// [`Self::write_msr`]); RIP moves past it. A refusal whose reason the VM enabled with
    /// `KVM_CAP_X86_USER_SPACE_MSR` exits to userspace with `KVM_EXIT_X86_RDMSR`/`_WRMSR`,
    /// completed by the next `KVM_RUN` (`kvm_msr_user_space`, [`PendingIo::Msr`]); any other
    /// raises #GP.
    fn handle_msr(&mut self, ctx: &mut RunContext<'_>, e: &ExitInfo, write: bool) -> Result<Next> {
        let index = self.regs.gpr[RCX] as u32;
        let data = (self.regs.gpr[RDX] << 32) | (self.regs.gpr[RAX] & 0xffff_ffff);
        self.refresh_msr_filter(ctx.vm)?;
        let allowed = msr_filter::allowed(self.msr_filter.as_deref(), index, write);
        if write && allowed {
            self.prepare_msr_write(index)?;
        }
        // KVM's PV MSRs, once the filter allowed them (upstream: `kvm_get_msr_common` /
        // `kvm_set_msr_common` behind the same `kvm_msr_allowed`); refused ones take the same
        // userspace-exit-or-#GP path below as any other MSR.
        let r = if allowed && crate::x86::pvclock::is_pv_msr(index) {
            let done = self.pv_msr_guest(ctx.vm, index, write, data);
            self.with_vmcs(|v| done.map(|()| v.skip_instruction(e.instr_len)))?
        } else {
            self.handle_msr_loaded(ctx, e, index, write, data, allowed)?
        };
        let Err(fault) = r else { return Ok(Next::Resume) };
        let reason = fault.exit_reason();
        if ctx.vm.user_space_msr_mask.load(Ordering::Relaxed) & reason == 0 {
            self.inject_exception(GP);
            return Ok(Next::Resume);
        }
        // SAFETY: `run` is the vCPU's kvm_run page; the msr view of the union is plain integers.
        unsafe {
            let run = ctx.run;
            (*run).exit_reason = if write { b::KVM_EXIT_X86_WRMSR } else { b::KVM_EXIT_X86_RDMSR };
            let m = &mut (*run).__bindgen_anon_1.msr;
            m.error = 0;
            m.pad = [0; 7];
            m.reason = reason;
            m.index = index;
            m.data = if write { data } else { 0 };
        }
        self.pending = Some(PendingIo::Msr { read: !write, len: e.instr_len as u8 });
        Ok(Next::User)
    }

    /// The access of [`Self::handle_msr`] to an MSR of the backend's own (VMCS current):
    /// refused by the filter, or read / written and RIP moved past the instruction.
    fn handle_msr_loaded(
        &mut self,
        ctx: &RunContext<'_>,
        e: &ExitInfo,
        index: u32,
        write: bool,
        data: u64,
        allowed: bool,
    ) -> Result<core::result::Result<(), MsrFault>> {
        let mctx = MsrCtx { host: false, vm: ctx.vm, cpuid: ctx.cpuid };
        self.with_vmcs(|v| {
            if !allowed {
                return Err(MsrFault::Filtered);
            }
            if write {
                v.write_msr(&mctx, index, data)?;
            } else {
                let val = v.read_msr(&mctx, index)?;
                v.regs.gpr[RAX] = val & 0xffff_ffff;
                v.regs.gpr[RDX] = val >> 32;
            }
            v.skip_instruction(e.instr_len);
            Ok(())
        })
    }

    /// Takes up the VM's MSR filter if it changed since this vCPU last looked (upstream
    /// `KVM_REQ_MSR_FILTER_CHANGED` → `vmx_msr_filter_changed`), before every entry and every
    /// MSR exit: one load and compare unless it did ([`Self::take_msr_filter`]).
    #[inline(always)]
    fn refresh_msr_filter(&mut self, vm: &crate::vm::Vm) -> Result {
        if vm.msr_filter_gen() == self.msr_filter_gen {
            return Ok(());
        }
        self.take_msr_filter(vm)
    }

    /// The VM's new MSR filter: the accesses of `msr::PASS_THROUGH` it denies are intercepted
    /// from now on, through an MSR bitmap of this vCPU's own (allocated the first time one is
    /// denied); with none denied the shared bitmap applies again.
    #[cold]
    #[inline(never)]
    fn take_msr_filter(&mut self, vm: &crate::vm::Vm) -> Result {
        let (gen, filter) = vm.msr_filter();
        let allowed = |m, w| msr_filter::allowed(filter.as_deref(), m, w);
        let pa = if msr::passthrough_denied(allowed) == 0 {
            super::global().msr_bitmap_pa()
        } else {
            let page = match &self.msr_bitmap {
                Some(p) => p,
                None => self.msr_bitmap.insert(Page::alloc_page(GFP_KERNEL_ACCOUNT)?),
            };
            // SAFETY: the page is this vCPU's, 4 KiB in the direct map; the CPU reads it only
            // while this vCPU's guest runs, and it does not: this is the thread that runs it,
            // outside guest mode, with the vCPU mutex held.
            msr::fill_bitmap_filtered(unsafe { &mut *(b::rkvm_page_address(page.as_ptr().cast()) as *mut [u8; 4096]) }, allowed);
            super::page_pa(page)
        };
        self.with_vmcs(|_| vmcs::write(f::MSR_BITMAP, pa))?;
        self.msr_filter = filter;
        self.msr_filter_gen = gen;
        Ok(())
    }

    /// The vCPU's machine-check state ([`mce::RESET`] until something changed it).
    fn mce_state(&self) -> &Mce {
        self.mce.as_deref().unwrap_or(&mce::RESET)
    }

    /// The vCPU's own machine-check state, allocated on first use (`ENOMEM`).
    fn mce_mut(&mut self) -> Result<&mut Mce> {
        if self.mce.is_none() {
            self.mce = Some(KBox::new(Mce::new(), GFP_KERNEL_ACCOUNT)?);
        }
        self.mce.as_deref_mut().ok_or(ENOMEM)
    }

    /// Before a WRMSR or `KVM_SET_MSRS` of `index` (outside [`Self::with_vmcs`], where it may
    /// sleep): a machine-check MSR write needs the vCPU's own machine-check state.
    fn prepare_msr_write(&mut self, index: u32) -> Result {
        if mce::is_mce_msr(index) {
            self.mce_mut()?;
        }
        Ok(())
    }

    /// Whether the guest's CPUID names an AMD-compatible vendor (upstream
    /// `guest_cpuid_is_amd_compatible`): AuthenticAMD or HygonGenuine in leaf 0.
    fn guest_is_amd(&self, ctx: &MsrCtx<'_>) -> bool {
        let r = if ctx.cpuid.is_empty() { self.default_cpuid(0, 0) } else { crate::x86::cpuid::lookup(ctx.cpuid, 0, 0) };
        // EBX, EDX, ECX of "AuthenticAMD" and "HygonGenuine".
        matches!((r[1], r[3], r[2]), (0x6874_7541, 0x6974_6e65, 0x444d_4163) | (0x6f67_7948, 0x6e65_476e, 0x656e_6975))
    }

    fn internal_error(&self, run: *mut b::kvm_run, suberror: u32, e: &ExitInfo) {
        // SAFETY: `run` is the vCPU's kvm_run page; the internal struct is plain data.
        unsafe {
            (*run).exit_reason = b::KVM_EXIT_INTERNAL_ERROR;
            let i = &mut (*run).__bindgen_anon_1.internal;
            i.suberror = suberror;
            i.ndata = 2;
            i.data[0] = u64::from(e.reason);
            i.data[1] = e.qualification;
        }
    }

    /// The emulator cannot handle the instruction at RIP, whose first bytes are `insn`
    /// (upstream `handle_emulation_failure`): with `KVM_CAP_EXIT_ON_EMULATION_FAILURE` the vCPU
    /// exits to userspace; otherwise #UD is queued, and the vCPU exits too if the guest runs at
    /// CPL 0 (so a guest kernel's failure is not silently turned into #UD), else the guest
    /// takes the #UD. The exit is `KVM_INTERNAL_ERROR_EMULATION` with the instruction bytes and
    /// the exit information (upstream `prepare_emulation_failure_exit`).
    fn emulation_failure(&mut self, ctx: &mut RunContext<'_>, e: &ExitInfo, insn: &[u8]) -> Result<Next> {
        let (cpl, info2, err) = self.with_vmcs(|v| {
            let err = if e.intr_info & b::INTR_INFO_DELIVER_CODE_MASK != 0 {
                vmcs::read(f::VM_EXIT_INTR_ERROR_CODE)
            } else {
                0
            };
            (v.cpl(), vmcs::read(f::IDT_VECTORING_INFO_FIELD), err)
        })?;
        if !ctx.vm.exit_on_emulation_error.load(Ordering::Relaxed) {
            self.with_vmcs(|v| v.inject_exception(UD))?;
            if cpl != 0 {
                return Ok(Next::Resume);
            }
        }
        let mut bytes = [0x90u8; 15];
        let mut n = 0;
        for (d, s) in bytes.iter_mut().zip(insn) {
            *d = *s;
            n += 1;
        }
        let info = [u64::from(e.reason), e.qualification, info2, u64::from(e.intr_info), err];
        // SAFETY: `run` is the vCPU's kvm_run page; the internal/emulation_failure views of the
        // union are plain integers.
        unsafe {
            let run = ctx.run;
            (*run).exit_reason = b::KVM_EXIT_INTERNAL_ERROR;
            let ef = &mut (*run).__bindgen_anon_1.emulation_failure;
            ef.suberror = b::KVM_INTERNAL_ERROR_EMULATION;
            ef.flags = u64::from(b::KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES);
            ef.__bindgen_anon_1.__bindgen_anon_1.insn_size = n as u8;
            ef.__bindgen_anon_1.__bindgen_anon_1.insn_bytes = bytes;
            // data[0] is `flags`, data[1..3] the instruction, then the exit information.
            let i = &mut (*run).__bindgen_anon_1.internal;
            for (d, s) in i.data[3..].iter_mut().zip(info) {
                *d = s;
            }
            i.ndata = (3 + info.len()) as u32;
        }
        Ok(Next::User)
    }

    /// A guest CPUID (upstream `kvm_emulate_cpuid`): from the table userspace set, or without
    /// one, from what `KVM_GET_SUPPORTED_CPUID` reports with the vCPU id as APIC id (upstream
    /// answers zeros then); the bits that follow guest state applied last.
    fn emulate_cpuid(&mut self, table: &[crate::x86::cpuid::Entry]) -> Result {
        use crate::x86::cpuid;
        let leaf = self.regs.gpr[RAX] as u32;
        let sub = self.regs.gpr[RCX] as u32;
        let mut r = if table.is_empty() { self.default_cpuid(leaf, sub) } else { cpuid::lookup(table, leaf, sub) };
        let cr4 = self.with_vmcs(|_| vmcs::read(f::CR4_READ_SHADOW))?;
        cpuid::apply_dynamic(leaf, sub, &mut r, cr4, self.xcr0);
        for (i, reg) in [RAX, RBX, RCX, RDX].into_iter().enumerate() {
            self.regs.gpr[reg] = u64::from(r[i]);
        }
        Ok(())
    }

    /// A vCPU's CPUID leaf when userspace set no table: what `KVM_GET_SUPPORTED_CPUID` reports,
    /// with the vCPU id as APIC id and the hypervisor bit.
    fn default_cpuid(&self, leaf: u32, sub: u32) -> [u32; 4] {
        use crate::x86::cpuid;
        let g = super::global();
        let caps = cpuid::Caps {
            guest_xcr0: g.host.guest_xcr0,
            rdtscp: self.config.proc2 & b::SECONDARY_EXEC_ENABLE_RDTSCP != 0,
            x2apic: self.apic.is_some(),
            kvm_features: crate::pv::supported_features(),
        };
        let mut r = cpuid::filter(leaf, sub, insn::cpuid(leaf, sub), &caps);
        if leaf == 1 {
            r[1] |= self.id << 24;
            r[2] |= 1 << 31; // running under a hypervisor
        }
        r
    }

    /// Whether the guest's CPUID has a feature bit (upstream `guest_cpuid_has`), from the table
    /// userspace set or, without one, from what this vCPU's CPUID answers ([`Self::default_cpuid`]).
    fn guest_has(&self, ctx: &MsrCtx<'_>, leaf: u32, sub: u32, reg: usize, bit: u32) -> bool {
        if ctx.cpuid.is_empty() {
            self.default_cpuid(leaf, sub)[reg] & (1 << bit) != 0
        } else {
            ctx.guest_has(leaf, sub, reg, bit)
        }
    }

    fn handle_cr(&mut self, e: &ExitInfo) -> Result<Next> {
        let q = e.qualification;
        let crn = q & 15;
        let access = (q >> 4) & 3;
        let gpr = ((q >> 8) & 15) as usize;
        let lim = crate::x86::cr::Limits::ARCH;
        self.with_vmcs(|v| {
            let val = if gpr == RSP { vmcs::read(f::GUEST_RSP) } else { v.regs.gpr[gpr] };
            let ok = match (access, crn) {
                (0, 0) => v.write_cr0_checked(val, &lim),
                (0, 4) => lim.cr4_valid(val) && { v.set_cr4(val); true },
                (0, 8) => val <= 15 && { v.set_cr8(val); true },
                (1, 8) => {
                    let cr8 = v.get_cr8();
                    if gpr == RSP { vmcs::write(f::GUEST_RSP, cr8) } else { v.regs.gpr[gpr] = cr8 }
                    true
                }
                (2, _) => {
                    // CLTS
                    let cr0 = vmcs::read(f::CR0_READ_SHADOW) & !8;
                    v.set_cr0(cr0);
                    true
                }
                (3, _) => {
                    // LMSW: low four bits, PE cannot be cleared.
                    let old = vmcs::read(f::CR0_READ_SHADOW);
                    let src = (q >> 16) & 0xf;
                    let cr0 = (old & !0xe) | (src & 0xf) | (old & 1);
                    v.write_cr0_checked(cr0, &lim)
                }
                _ => false,
            };
            if ok {
                v.skip_instruction(e.instr_len);
            } else {
                v.inject_exception(GP);
            }
        })?;
        Ok(Next::Resume)
    }

    /// A guest MOV to CR0: validity, and entering or leaving long mode (EFER.LMA follows
    /// EFER.LME and CR0.PG, as the CPU would do it).
    fn write_cr0_checked(&mut self, cr0: u64, lim: &crate::x86::cr::Limits) -> bool {
        if !lim.cr0_valid(cr0) {
            return false;
        }
        let pg = cr0 & cr::CR0_PG != 0;
        if self.efer & cr::EFER_LME != 0 {
            let cr4 = vmcs::read(f::CR4_READ_SHADOW);
            if pg && cr4 & cr::CR4_PAE == 0 {
                return false;
            }
            let efer = if pg { self.efer | cr::EFER_LMA } else { self.efer & !cr::EFER_LMA };
            self.set_efer(efer);
        }
        self.set_cr0(cr0);
        true
    }

    /// A MOV to or from a debug register (VMCS current; upstream `handle_dr`). The CR4.DE check
    /// for DR4/DR5 comes before the exit; CPL 0 is checked again (upstream does too: Bochs
    /// exits first), then DR7.GD, whose #DB the exit took precedence over: userspace's with
    /// `USE_HW_BP` (`KVM_EXIT_DEBUG`, RIP on the MOV), else the guest's.
    fn handle_dr(&mut self, e: &ExitInfo, run: *mut b::kvm_run) -> Next {
        if self.cpl() != 0 {
            self.inject_exception(GP);
            return Next::Resume;
        }
        let dr7 = vmcs::read(f::GUEST_DR7);
        if dr7 & debug::DR7_GD != 0 {
            if self.debug.hw_bp() {
                debug_exit(run, debug::DB_VECTOR, self.debug_pc(), Some((debug::exit_dr6(debug::DR6_BD), dr7)));
                return Next::User;
            }
            self.queue_db(Some(debug::DR6_BD));
            return Next::Resume;
        }
        let q = e.qualification;
        let gpr = ((q >> 8) & 15) as usize;
        // DR4/DR5 alias DR6/DR7 (CR4.DE clear; with DE set the CPU raised #UD instead).
        let n = match q & 7 {
            4 => 6,
            5 => 7,
            n => n as usize,
        };
        if q & (1 << 4) != 0 {
            let v = match n {
                0..=3 => self.dr[n],
                6 => self.dr6,
                _ => self.dr7,
            };
            self.set_gpr(gpr, v);
        } else {
            let long = self.efer & cr::EFER_LMA != 0 && vmcs::read(f::GUEST_CS_AR_BYTES) & (1 << 13) != 0;
            let v = if long { self.gpr(gpr) } else { self.gpr(gpr) & 0xffff_ffff };
            match n {
                0..=3 => self.dr[n] = v,
                _ if v >> 32 != 0 => {
                    self.inject_exception(GP);
                    return Next::Resume;
                }
                6 => self.dr6 = (v & 0x0001_e00f) | DR6_RESET,
                // Bits 12, 14 and 15 read as 0, bit 10 as 1.
                _ => self.dr7 = (v & !0xd000) | DR7_RESET,
            }
            // The guest's breakpoints are live unless the debugger's replace them.
            if n != 6 {
                self.update_dr7();
            }
        }
        self.skip_instruction(e.instr_len);
        Next::Resume
    }

    /// An exception exit (VMCS current; upstream `handle_exception_nmi`). Only #DB and #AC
    /// (always) and #BP (with `KVM_GUESTDBG_USE_SW_BP`) are in the exception bitmap.
    fn handle_exception(&mut self, e: &ExitInfo, run: *mut b::kvm_run) -> Next {
        let vector = e.intr_info & 0xff;
        if vector == AC {
            let code = vmcs::read(f::VM_EXIT_INTR_ERROR_CODE) as u32;
            // The guest's own alignment check (or any #AC on a host without split-lock
            // detection) goes back to the guest (upstream `vmx_guest_inject_ac`).
            // SAFETY: reads a boot CPU feature bit.
            let sld = unsafe { b::rkvm_split_lock_detect() };
            let guest_ac = self.cpl() == 3
                && vmcs::read(f::GUEST_CR0) & CR0_AM != 0
                && self.get_rflags() & RFLAGS_AC != 0;
            if !sld || guest_ac {
                self.inject_exception_code(AC, Some(code));
                return Next::Resume;
            }
            // A split lock the host's detection caught: warn and let this task go on without
            // detection, or SIGBUS it, as the host's policy says (upstream does the same).
            // SAFETY: called in task context for the current task, as the kernel expects.
            if unsafe { b::rkvm_handle_guest_split_lock(vmcs::read(f::GUEST_RIP) as _) } {
                return Next::Resume;
            }
            // SAFETY: `run` is the vCPU's kvm_run page; `ex` is plain data.
            unsafe {
                (*run).exit_reason = b::KVM_EXIT_EXCEPTION;
                (*run).__bindgen_anon_1.ex.exception = AC;
                (*run).__bindgen_anon_1.ex.error_code = code;
            }
            return Next::User;
        }
        if vector == DB {
            // B0–B3, BD, BS of what hit, in the pending-debug-exceptions format.
            let payload = e.qualification;
            if self.debug.db_to_user() {
                let dr7 = vmcs::read(f::GUEST_DR7);
                debug_exit(run, debug::DB_VECTOR, self.debug_pc(), Some((debug::exit_dr6(payload), dr7)));
                return Next::User;
            }
            // ICEBP (INT1) exits on the instruction itself: step over it first, as the #DB it
            // raises is a trap (upstream skips without the single-step check, as here).
            if (e.intr_info >> 8) & 7 == events::TYPE_PRIV_SOFT_EXCEPTION {
                self.skip_instruction_raw(e.instr_len);
            }
            self.queue_db(Some(payload));
            return Next::Resume;
        }
        if vector == BP && self.debug.sw_bp() {
            // RIP stays on the INT3; its length is kept for KVM_GUESTDBG_INJECT_BP.
            self.bp_len = e.instr_len as u32;
            debug_exit(run, debug::BP_VECTOR, self.debug_pc(), None);
            return Next::User;
        }
        // Nothing else is intercepted.
        self.internal_error(run, b::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, e);
        Next::User
    }

    /// Right before an entry (interrupts off, VMCS current) while [`Self::debugging`]: the
    /// single-step preparations, and the guest's DR0–DR3 loaded if its effective DR7 arms a
    /// breakpoint, the host's kept (upstream: `switch_db_regs` in `vcpu_enter_guest`). The
    /// host's DR7 is disabled first, so no host breakpoint matches while DR0–DR3 hold guest
    /// addresses; the VM entry then loads the guest's DR7 from the VMCS, and the VM exit sets
    /// DR7 to 0x400.
    ///
    /// # Safety
    ///
    /// Interrupts off until [`Self::debug_exit`] has run.
    #[cold]
    unsafe fn debug_entry(&mut self, host_dr7: u64) {
        if self.debug.singlestep() {
            self.singlestep_entry();
        }
        if self.load_dr {
            self.host_db = insn::read_dr0123();
            // SAFETY: interrupts are off (our contract); with DR7 at 0x400 no breakpoint is
            // armed while DR0–DR3 are the guest's.
            unsafe {
                if debug::armed(host_dr7) {
                    insn::write_dr7(DR7_RESET);
                }
                insn::write_dr0123(&self.eff_db);
            }
        }
    }

    /// Right after the exit (interrupts still off), before the caller restores the host's DR7:
    /// its DR0–DR3 back and DR6 at its RESET value if the guest's were loaded (upstream
    /// `hw_breakpoint_restore`).
    #[cold]
    fn debug_exit(&mut self) {
        if self.load_dr {
            // SAFETY: the host's own values (saved by `debug_entry`, interrupts off since); DR7
            // is still 0x400 from the exit; DR6's RESET value is what the kernel keeps there.
            unsafe {
                insn::write_dr0123(&self.host_db);
                insn::write_dr6(debug::DR6_ACTIVE_LOW);
            }
        }
    }

    /// Before an entry while userspace single-steps (upstream `vmx_vcpu_run`): no STI/MOV SS
    /// shadow, which would make the entry want a pending single-step trap (the TF is the
    /// debugger's), and no pending single-step trap left from the last exit, which could only
    /// report the same RIP again (Bochs 2.7 leaves one after any exit with TF = 1; README).
    /// VMCS current.
    fn singlestep_entry(&mut self) {
        let st = vmcs::read(f::GUEST_INTERRUPTIBILITY_INFO) as u32;
        if st & (events::BLOCKING_BY_STI | events::BLOCKING_BY_MOV_SS) != 0 {
            vmcs::write(f::GUEST_INTERRUPTIBILITY_INFO, (st & !(events::BLOCKING_BY_STI | events::BLOCKING_BY_MOV_SS)).into());
        }
        let pend = vmcs::read(f::GUEST_PENDING_DBG_EXCEPTIONS);
        if pend & debug::DR6_BS != 0 {
            vmcs::write(f::GUEST_PENDING_DBG_EXCEPTIONS, pend & !debug::DR6_BS);
        }
    }

    /// An entry injecting a #DB while RFLAGS.TF is set and an STI/MOV SS shadow is active:
    /// the entry checks want a single-step trap pending, which the injected #DB stands for
    /// (upstream `vmx_inject_exception`). VMCS current.
    fn db_injection_entry(&mut self) {
        let st = vmcs::read(f::GUEST_INTERRUPTIBILITY_INFO) as u32;
        if vmcs::read(f::GUEST_RFLAGS) & RFLAGS_TF != 0
            && st & (events::BLOCKING_BY_STI | events::BLOCKING_BY_MOV_SS) != 0
        {
            let pend = vmcs::read(f::GUEST_PENDING_DBG_EXCEPTIONS);
            vmcs::write(f::GUEST_PENDING_DBG_EXCEPTIONS, pend | debug::DR6_BS);
        }
    }

    /// The guest's current privilege level: SS.DPL (SDM 5.5), 0 in real mode.
    fn cpl(&self) -> u64 {
        if vmcs::read(f::CR0_READ_SHADOW) & cr::CR0_PE == 0 {
            return 0;
        }
        (vmcs::read(f::GUEST_SS_AR_BYTES) >> 5) & 3
    }

    /// Whether XSETBV may set XCR0 to `v` (upstream `__kvm_set_xcr`): x87 always on, only the
    /// components guests get, AVX only with SSE.
    fn xcr0_valid(&self, v: u64) -> bool {
        v & 1 != 0 && v & !super::global().host.guest_xcr0 == 0 && (v & 4 == 0 || v & 2 != 0)
    }

    /// Flushes the guest's VPID-tagged translations on this CPU (VMCS current, preemption off).
    fn flush_vpid(&mut self) {
        self.tlb_flush = false;
        if let (Some(kind), true) = (self.config.vpid_flush(), self.vpid != 0) {
            // SAFETY: this CPU is in VMX operation and supports this INVVPID type (config).
            let _ = unsafe { insn::invvpid(kind, self.vpid) };
        }
    }

    /// An RDMSR by the guest or `KVM_GET_MSRS` (VMCS current): the value, or why it is refused
    /// (#GP, a userspace exit, a failed entry) (upstream: `vmx_get_msr` → `kvm_get_msr_common`).
    fn read_msr(&self, ctx: &MsrCtx<'_>, index: u32) -> core::result::Result<u64, MsrFault> {
        let g = super::global();
        let pat_in_vmcs = self.config.entry & b::VM_ENTRY_LOAD_IA32_PAT != 0;
        let lmce = self.msrs.feature_control & mce::FEATURE_CONTROL_LMCE != 0;
        if let Some(r) = self.mce_state().read(index, ctx.host, lmce) {
            return r.map_err(|()| MsrFault::Invalid);
        }
        let refused = msr::refusal(index, false);
        Ok(match index {
            // No nested guest: L1's offset is the only one, for userspace and guest alike.
            msr::TSC => insn::rdtsc().wrapping_add(vmcs::read(f::TSC_OFFSET)),
            msr::TSC_ADJUST => self.msrs.tsc_adjust.0,
            msr::APIC_BASE => self.get_apic_base(),
            // Upstream `kvm_x2apic_msr_read`: #GP without an in-kernel LAPIC in x2APIC mode
            // (guest and userspace alike).
            lapic::X2APIC_MSR_FIRST..=lapic::X2APIC_MSR_LAST => {
                return self.apic.as_ref().and_then(|a| a.x2apic_msr_read(index)).ok_or(refused)
            }
            msr::FEATURE_CONTROL => self.msrs.feature_control,
            // The LAPIC timer has no TSC-deadline mode (its LVTT mode bit is not writable), so
            // the MSR reads 0 and ignores writes, as upstream's outside that mode
            // (`kvm_get/set_lapic_tscdeadline_msr`), with or without an in-kernel LAPIC.
            b::MSR_IA32_TSC_DEADLINE => 0,
            msr::K7_HWCR => self.msrs.hwcr,
            msr::UCODE_REV => self.msrs.ucode_rev,
            msr::PLATFORM_INFO
                if ctx.host || ctx.vm.guest_can_read_platform_info.load(Ordering::Relaxed) =>
            {
                self.msrs.platform_info
            }
            msr::MISC_FEATURES_ENABLES => self.msrs.misc_features,
            msr::POWER_CTL => self.msrs.power_ctl,
            msr::SPEC_CTRL if g.host.spec_ctrl_bits != 0 => self.msrs.spec_ctrl,
            // No variable-range or fixed-range MTRRs, no write-combining type.
            msr::MTRRCAP => 0,
            msr::MTRR_DEF_TYPE => self.msrs.mtrr_def_type,
            msr::SYSENTER_CS => vmcs::read(f::GUEST_SYSENTER_CS),
            msr::SYSENTER_ESP => vmcs::read(f::GUEST_SYSENTER_ESP),
            msr::SYSENTER_EIP => vmcs::read(f::GUEST_SYSENTER_EIP),
            msr::MISC_ENABLE => self.msrs.misc_enable,
            msr::DEBUGCTL => 0,
            msr::PAT if pat_in_vmcs => vmcs::read(f::GUEST_IA32_PAT),
            msr::PAT => self.msrs.pat,
            msr::EFER => self.efer,
            msr::FS_BASE => vmcs::read(f::GUEST_FS_BASE),
            msr::GS_BASE => vmcs::read(f::GUEST_GS_BASE),
            msr::KERNEL_GS_BASE => self.msrs.kernel_gs_base,
            _ => {
                let i = msr::URET.iter().position(|&m| m == index).ok_or(refused)?;
                if g.host.uret_present & (1 << i) == 0 {
                    return Err(refused);
                }
                self.msrs.uret[i]
            }
        })
    }

    /// A WRMSR by the guest or `KVM_SET_MSRS` (VMCS current): why it is refused (#GP, a
    /// userspace exit, a failed entry) (upstream: `vmx_set_msr` → `kvm_set_msr_common`;
    /// `ctx.host` is `host_initiated`).
    fn write_msr(&mut self, ctx: &MsrCtx<'_>, index: u32, v: u64) -> core::result::Result<(), MsrFault> {
        let g = super::global();
        let refused = msr::refusal(index, true);
        if !msr::value_valid(index, v) {
            return Err(refused);
        }
        let lmce = self.msrs.feature_control & mce::FEATURE_CONTROL_LMCE != 0;
        if mce::is_mce_msr(index) {
            // McStatusWrEn (HWCR bit 18) lets an AMD guest write non-zero MCi_STATUS values.
            let status_writable = self.msrs.hwcr & (1 << 18) != 0 && self.guest_is_amd(ctx);
            // The callers allocated the state (`prepare_msr_write`); without it the write is
            // refused rather than lost.
            let r = match self.mce.as_deref_mut() {
                Some(m) => m.write(index, v, ctx.host, lmce, status_writable),
                None => Some(Err(())),
            };
            if let Some(r) = r {
                return r.map_err(|()| MsrFault::Invalid);
            }
        }
        let pat_in_vmcs = self.config.entry & b::VM_ENTRY_LOAD_IA32_PAT != 0;
        match index {
            // Userspace sets the TSC through the VM's synchronisation (upstream
            // `kvm_synchronize_tsc`), leaving IA32_TSC_ADJUST alone; the guest moves both.
            msr::TSC if ctx.host => vmcs::write(f::TSC_OFFSET, ctx.vm.synchronize_tsc(Some(v), &mut self.pv.tsc_gen)),
            msr::TSC => {
                let off = self.msrs.tsc_adjust.guest_write_tsc(vmcs::read(f::TSC_OFFSET), v, insn::rdtsc());
                vmcs::write(f::TSC_OFFSET, off);
            }
            // Ignored (but not refused) when the guest's CPUID lacks TSC_ADJUST, as upstream.
            msr::TSC_ADJUST => {
                if self.guest_has(ctx, 7, 0, 1, 1) {
                    let off = self.msrs.tsc_adjust.write_adjust(vmcs::read(f::TSC_OFFSET), v, ctx.host);
                    vmcs::write(f::TSC_OFFSET, off);
                }
            }
            msr::FEATURE_CONTROL
                if msr::feature_control_valid(self.msrs.feature_control, v, ctx.host, self.mce_state().guest_feature_control_bits()) =>
            {
                self.msrs.feature_control = v
            }
            b::MSR_IA32_TSC_DEADLINE => {}
            msr::K7_HWCR => match msr::hwcr_write(v) {
                Some(v) => self.msrs.hwcr = v,
                None => return Err(refused),
            },
            // Only userspace sets the revision; the guest's writes are ignored (upstream).
            msr::UCODE_REV => {
                if ctx.host {
                    self.msrs.ucode_rev = v;
                }
            }
            msr::PLATFORM_INFO if msr::platform_info_valid(v, self.msrs.misc_features, ctx.host) => {
                self.msrs.platform_info = v
            }
            msr::MISC_FEATURES_ENABLES if msr::misc_features_valid(v, self.msrs.platform_info) => {
                self.msrs.misc_features = v
            }
            msr::POWER_CTL => self.msrs.power_ctl = v,
            // Userspace may make any mode change a guest may not (upstream `kvm_apic_set_base`
            // with `host_initiated`), e.g. x2APIC back to xAPIC.
            msr::APIC_BASE
                if self.apic_base_valid(v)
                    && (ctx.host || lapic::guest_base_change_valid(self.get_apic_base(), v)) =>
            {
                self.set_apic_base(v)
            }
            // Upstream `kvm_x2apic_msr_write` (guest and userspace alike).
            lapic::X2APIC_MSR_FIRST..=lapic::X2APIC_MSR_LAST => {
                return if self.apic.as_mut().is_some_and(|a| a.x2apic_msr_write(index, v)) { Ok(()) } else { Err(refused) }
            }
            msr::SPEC_CTRL if v & !g.host.spec_ctrl_bits == 0 && g.host.spec_ctrl_bits != 0 => {
                self.msrs.spec_ctrl = v
            }
            // IBPB, as a command the host executes for the guest.
            msr::PRED_CMD if v == 0 => {}
            msr::PRED_CMD if v == 1 && g.host.spec_ctrl_bits != 0 => {
                // SAFETY: IBPB only flushes branch predictions.
                unsafe { b::rkvm_wrmsr_safe(b::MSR_IA32_PRED_CMD, 1) };
            }
            msr::MTRR_DEF_TYPE => self.msrs.mtrr_def_type = v,
            msr::SYSENTER_CS => vmcs::write(f::GUEST_SYSENTER_CS, v & 0xffff_ffff),
            msr::SYSENTER_ESP => vmcs::write(f::GUEST_SYSENTER_ESP, v),
            msr::SYSENTER_EIP => vmcs::write(f::GUEST_SYSENTER_EIP, v),
            msr::MISC_ENABLE if msr::misc_enable_valid(self.msrs.misc_enable, v, ctx.host) => {
                self.msrs.misc_enable = v
            }
            // No LBR, BTF or other debug features for guests.
            msr::DEBUGCTL if v == 0 => {}
            msr::PAT if pat_in_vmcs => vmcs::write(f::GUEST_IA32_PAT, v),
            msr::PAT => self.msrs.pat = v,
            msr::EFER => {
                let paging = vmcs::read(f::CR0_READ_SHADOW) & cr::CR0_PG != 0;
                match msr::efer_write(self.efer, v, paging) {
                    Some(efer) => self.set_efer(efer),
                    None => return Err(refused),
                }
            }
            msr::FS_BASE => vmcs::write(f::GUEST_FS_BASE, v),
            msr::GS_BASE => vmcs::write(f::GUEST_GS_BASE, v),
            msr::KERNEL_GS_BASE => self.msrs.kernel_gs_base = v,
            _ => {
                let i = msr::URET.iter().position(|&m| m == index).ok_or(refused)?;
                if g.host.uret_present & (1 << i) == 0 {
                    return Err(refused);
                }
                self.msrs.uret[i] = v;
            }
        }
        Ok(())
    }

    fn gpr(&self, reg: usize) -> u64 {
        if reg == RSP {
            vmcs::read(f::GUEST_RSP)
        } else {
            self.regs.gpr[reg]
        }
    }

    fn set_gpr(&mut self, reg: usize, v: u64) {
        if reg == RSP {
            vmcs::write(f::GUEST_RSP, v)
        } else {
            self.regs.gpr[reg] = v
        }
    }

    /// An access outside every slot (or a write to a read-only slot): decodes the instruction
    /// and exits with KVM_EXIT_MMIO (upstream: `handle_ept_violation` → `kvm_mmu_page_fault` →
    /// `x86_emulate_instruction`).
    fn emulate_mmio(&mut self, ctx: &mut RunContext<'_>, e: &ExitInfo) -> Result<Next> {
        let (mode, pg) = self.with_vmcs(|v| (v.code_mode(), v.paging()))?;
        let (bytes, got) = self.fetch(ctx.vm, &pg);
        let Some(insn) = decode::decode(&bytes[..got], mode) else {
            return self.emulation_failure(ctx, e, &bytes[..got]);
        };
        let (is_write, size, value) = match insn.access {
            Access::Read { size, .. } => (false, size, 0),
            Access::WriteReg { reg, high8, size } => {
                let v = self.with_vmcs(|v| v.gpr(reg as usize))?;
                (true, size, if high8 { v >> 8 } else { v })
            }
            Access::WriteImm { value, size } => (true, size, value),
            Access::Stos { size, .. } => (true, size, self.regs.gpr[RAX]),
            Access::Test { size, .. } => (false, size, 0),
        };
        // The in-kernel LAPIC and IOAPIC (upstream: `vcpu_mmio_read/write` find them on the
        // MMIO bus before exiting to userspace). Their registers are at most 32 bits wide.
        if let Some(a) = self.apic.as_mut() {
            let write = is_write.then_some(value as u32);
            if let Some(v) = a.mmio(e.gpa, size.into(), write) {
                let data = u64::from(v).to_le_bytes();
                self.with_vmcs(|v| v.finish_mmio(insn.access, insn.len, data))?;
                return Ok(Next::Resume);
            }
        }
        // Coalesced zones and ioeventfds (upstream: the rest of `vcpu_mmio_write`'s MMIO bus).
        if is_write && ctx.vm.io_write(e.gpa, size.into(), value, false) {
            self.with_vmcs(|v| v.finish_mmio(insn.access, insn.len, [0; 8]))?;
            return Ok(Next::Resume);
        }
        // SAFETY: `run` is the vCPU's kvm_run page; the mmio struct is plain data.
        unsafe {
            (*ctx.run).exit_reason = b::KVM_EXIT_MMIO;
            let m = &mut (*ctx.run).__bindgen_anon_1.mmio;
            m.phys_addr = e.gpa;
            m.len = size.into();
            m.is_write = is_write.into();
            m.data = value.to_le_bytes();
        }
        self.pending = Some(PendingIo::Mmio { access: insn.access, len: insn.len });
        Ok(Next::User)
    }

    /// The decoding mode of the guest's code segment (VMCS current).
    fn code_mode(&self) -> decode::Mode {
        let cs_ar = vmcs::read(f::GUEST_CS_AR_BYTES);
        if self.efer & cr::EFER_LMA != 0 && cs_ar & (1 << 13) != 0 {
            decode::Mode::Bits64
        } else if cs_ar & (1 << 14) != 0 {
            decode::Mode::Bits32
        } else {
            decode::Mode::Bits16
        }
    }

    /// The guest's paging state and the linear address of its RIP (VMCS current).
    fn paging(&self) -> Paging {
        let long = self.efer & cr::EFER_LMA != 0;
        let rip = vmcs::read(f::GUEST_CS_BASE).wrapping_add(vmcs::read(f::GUEST_RIP));
        Paging {
            regs: walk::Regs {
                cr0: vmcs::read(f::GUEST_CR0),
                cr3: vmcs::read(f::GUEST_CR3),
                cr4: vmcs::read(f::GUEST_CR4),
                efer: self.efer,
            },
            rip: if long { rip } else { rip & 0xffff_ffff },
            user: self.cpl() == 3,
        }
    }

    /// Fetches up to 15 bytes at the guest's RIP, page by page (an instruction may cross a page
    /// boundary); returns them and how many could be read.
    fn fetch(&self, vm: &crate::vm::Vm, pg: &Paging) -> ([u8; 15], usize) {
        let mut bytes = [0u8; 15];
        let mut got = 0;
        while got < bytes.len() {
            let a = pg.rip.wrapping_add(got as u64);
            let n = ((4096 - (a & 4095)) as usize).min(bytes.len() - got);
            if pg.read(vm, a, &mut bytes[got..got + n]).is_err() {
                break;
            }
            got += n;
        }
        (bytes, got)
    }

    /// An INS or OUTS exit: decodes the prefixes the exit does not report, moves up to a PIO
    /// page of OUTS elements from guest memory to the PIO page, and exits to userspace with
    /// `io.count` elements (upstream: `handle_io` → `kvm_emulate_instruction` → `em_in`/`em_out`).
    fn string_io(
        &mut self,
        ctx: &mut RunContext<'_>,
        e: &ExitInfo,
        size: u32,
        is_in: bool,
        port: u16,
        rep: bool,
    ) -> Result<Next> {
        let (mode, pg) = self.with_vmcs(|v| (v.code_mode(), v.paging()))?;
        let (bytes, got) = self.fetch(ctx.vm, &pg);
        let Some(insn) = decode::string_io(&bytes[..got], mode) else {
            return self.emulation_failure(ctx, e, &bytes[..got]);
        };
        let long = mode == decode::Mode::Bits64;
        let (base, down) = self.with_vmcs(|_| {
            let seg = [f::GUEST_ES_BASE, f::GUEST_CS_BASE, f::GUEST_SS_BASE, f::GUEST_DS_BASE,
                       f::GUEST_FS_BASE, f::GUEST_GS_BASE][insn.seg as usize];
            // In 64-bit mode only FS and GS have a base.
            let base = if long && insn.seg < 4 { 0 } else { vmcs::read(seg) };
            (base, vmcs::read(f::GUEST_RFLAGS) & (1 << 10) != 0)
        })?;
        let mask = decode::size_mask(insn.addr_size);
        let total = if rep { self.regs.gpr[RCX] & mask } else { 1 };
        if total == 0 {
            // REP with rCX = 0 does nothing.
            self.with_vmcs(|v| v.skip_instruction(insn.len.into()))?;
            return Ok(Next::Resume);
        }
        let mut s = StringIo {
            is_in,
            size,
            count: total.min(u64::from(b::PAGE_SIZE as u32 / size)) as u32,
            addr_size: insn.addr_size,
            base,
            offset: self.regs.gpr[if is_in { RDI } else { RSI }] & mask,
            down,
            rep,
            len: insn.len,
        };
        // Each element's memory operand, checked as the guest's own access would be: the batch
        // ends before the first element that faults or is not RAM (INS into MMIO or a read-only
        // slot, OUTS from MMIO: not emulated); if that is the first element, the guest gets
        // its #PF, or userspace an emulation error, and no I/O happens.
        let mut data = [0u8; 4];
        for k in 0..s.count {
            let la = s.linear(k, long);
            let chunk = &mut data[..size as usize];
            let elem = match pg.data_gpa(ctx.vm, la, is_in) {
                Err(walk::WalkError::PageFault(code)) => Elem::Fault(code, la),
                Err(walk::WalkError::Bus) => Elem::Stop,
                // An element may straddle a page: its last byte must be accessible too.
                Ok(gpa) => match pg.data_gpa(ctx.vm, la.wrapping_add(u64::from(size) - 1), is_in) {
                    Err(walk::WalkError::PageFault(code)) => Elem::Fault(code, la.wrapping_add(u64::from(size) - 1)),
                    Err(walk::WalkError::Bus) => Elem::Stop,
                    Ok(last) if is_in => {
                        if ctx.vm.is_writable_ram(gpa) && ctx.vm.is_writable_ram(last) { Elem::Ok } else { Elem::Stop }
                    }
                    Ok(_) => if pg.read(ctx.vm, la, chunk).is_ok() { Elem::Ok } else { Elem::Stop },
                },
            };
            match elem {
                Elem::Ok if !is_in => {
                    // SAFETY: `pio` is the vCPU's PIO page: count * size <= PAGE_SIZE bytes.
                    unsafe {
                        core::ptr::copy_nonoverlapping(chunk.as_ptr(), ctx.pio.add((k * size) as usize), size as usize)
                    };
                }
                Elem::Ok => {}
                Elem::Fault(code, addr) if k == 0 => {
                    self.with_vmcs(|v| v.inject_page_fault(addr, code))?;
                    return Ok(Next::Resume);
                }
                Elem::Stop if k == 0 => {
                    // Not an instruction the emulator fails on, a limit of rkvm's (string I/O
                    // is emulated only on RAM): always userspace's to see.
                    self.internal_error(ctx.run, b::KVM_INTERNAL_ERROR_EMULATION, e);
                    return Ok(Next::User);
                }
                _ => {
                    s.count = k;
                    break;
                }
            }
        }
        io_exit(ctx.run, is_in, size, port, s.count);
        self.pending = Some(PendingIo::Str(s));
        Ok(Next::User)
    }

    /// How many elements of a batch of INS/OUTS complete now. Userspace may have changed rCX
    /// with KVM_SET_REGS during the exit: as upstream's emulator, which re-executes the
    /// instruction over the data it already has, only min(rCX, batch) elements complete, and a
    /// count still above zero leaves RIP on the instruction, so the rest comes in further exits.
    fn string_io_done(&self, s: &StringIo) -> u32 {
        let rcx = self.regs.gpr[RCX] & decode::size_mask(s.addr_size);
        if s.rep { rcx.min(u64::from(s.count)) as u32 } else { s.count }
    }

    /// INS data of the first `done` elements from the PIO page into guest memory (preemption
    /// enabled: the writes may sleep).
    fn write_ins_data(&self, vm: &crate::vm::Vm, pio: *const u8, s: &StringIo, pg: &Paging, done: u32) {
        let long = self.efer & cr::EFER_LMA != 0;
        let mut data = [0u8; 4];
        for k in 0..done {
            let chunk = &mut data[..s.size as usize];
            // SAFETY: `pio` is the vCPU's PIO page: count * size <= PAGE_SIZE bytes.
            unsafe {
                core::ptr::copy_nonoverlapping(pio.add((k * s.size) as usize), chunk.as_mut_ptr(), s.size as usize)
            };
            // Checked writable RAM when the batch was set up; only a slot change by another
            // thread since then can make this fail, and then the element is lost.
            let _ = pg.write(vm, s.linear(k, long), chunk);
        }
    }

    /// Finishes a batch of INS/OUTS whose `done` elements are complete (VMCS current): rSI/rDI
    /// and rCX moved, RIP advanced once the count reaches zero (else the guest re-executes the
    /// instruction for the next batch).
    fn complete_string_io(&mut self, s: &StringIo, done: u32) {
        let rcx = self.regs.gpr[RCX] & decode::size_mask(s.addr_size);
        let moved = u64::from(done * s.size);
        let idx = if s.is_in { RDI } else { RSI };
        let new = if s.down { s.offset.wrapping_sub(moved) } else { s.offset.wrapping_add(moved) };
        let r = &mut self.regs.gpr;
        r[idx] = decode::merge(r[idx], new, s.addr_size, false, decode::Extend::None);
        let mut left = 0;
        if s.rep {
            left = rcx - u64::from(done);
            r[RCX] = decode::merge(r[RCX], left, s.addr_size, false, decode::Extend::None);
        }
        if left == 0 {
            self.skip_instruction(s.len.into());
        }
    }

    fn handle_io(&mut self, ctx: &mut RunContext<'_>, e: &ExitInfo) -> Result<Next> {
        let q = e.qualification;
        let size = (q & 7) as u32 + 1;
        let is_in = q & 8 != 0;
        let string = q & 16 != 0;
        let port = (q >> 16) as u16;
        if string {
            return self.string_io(ctx, e, size, is_in, port, q & 32 != 0);
        }
        // The in-kernel PIC (upstream: `kernel_pio` on KVM_PIO_BUS).
        if let Some(a) = self.apic.as_mut() {
            let write = (!is_in).then_some(self.regs.gpr[RAX] as u32);
            if let Some(v) = a.pio(port, size, write) {
                if is_in {
                    self.set_in_result(size, v.into());
                }
                self.with_vmcs(|v| v.skip_instruction(e.instr_len))?;
                return Ok(Next::Resume);
            }
        }
        // Coalesced zones and ioeventfds (upstream: the rest of `kernel_pio`'s PIO bus).
        if !is_in && ctx.vm.io_write(port.into(), size, self.regs.gpr[RAX], true) {
            self.with_vmcs(|v| v.skip_instruction(e.instr_len))?;
            return Ok(Next::Resume);
        }
        if !is_in {
            let data = self.regs.gpr[RAX].to_le_bytes();
            // SAFETY: `pio` is the vCPU's PIO page, at least 4 bytes.
            unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), ctx.pio, size as usize) };
        }
        io_exit(ctx.run, is_in, size, port, 1);
        self.pending = Some(if is_in { PendingIo::In { size } } else { PendingIo::Out });
        Ok(Next::User)
    }
}

/// What translating a guest linear address needs (read while the VMCS was current).
struct Paging {
    regs: walk::Regs,
    /// Linear address of the guest's RIP.
    rip: u64,
    /// The guest runs at CPL 3: its data accesses are user-mode accesses.
    user: bool,
}

impl Paging {
    /// Copies guest linear memory at `la` into `buf` (which must not cross a page boundary
    /// unless both pages translate); `EFAULT` if unmapped or outside every slot.
    fn read(&self, vm: &crate::vm::Vm, la: u64, buf: &mut [u8]) -> Result {
        let mut done = 0;
        while done < buf.len() {
            let a = la.wrapping_add(done as u64);
            let n = ((4096 - (a & 4095)) as usize).min(buf.len() - done);
            vm.read_guest(self.translate(vm, a)?, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Writes `buf` to guest linear memory at `la`, as [`Paging::read`].
    fn write(&self, vm: &crate::vm::Vm, la: u64, buf: &[u8]) -> Result {
        let mut done = 0;
        while done < buf.len() {
            let a = la.wrapping_add(done as u64);
            let n = ((4096 - (a & 4095)) as usize).min(buf.len() - done);
            vm.write_guest(self.translate(vm, a)?, &buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn translate(&self, vm: &crate::vm::Vm, la: u64) -> Result<u64> {
        let r = &self.regs;
        walk::translate(&mut VmMem(vm), r.cr0, r.cr3, r.cr4, r.efer, la).ok_or(EFAULT)
    }

    /// The guest-physical address of a data access by the guest to `la`, with the guest's
    /// permission checks (a #PF to inject on failure).
    fn data_gpa(&self, vm: &crate::vm::Vm, la: u64, write: bool) -> core::result::Result<u64, walk::WalkError> {
        walk::walk(&mut VmMem(vm), &self.regs, la, write, self.user)
    }
}

/// Guest memory of a VM, for the page walker.
struct VmMem<'a>(&'a crate::vm::Vm);

impl GuestMem for VmMem<'_> {
    fn read_u64(&mut self, gpa: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.0.read_guest(gpa, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }
}

impl Drop for VmxVcpu {
    fn drop(&mut self) {
        // Stale translations tagged with this VPID are flushed by whichever vCPU gets it next,
        // on every CPU it is loaded on (`tlb_flush` starts true and is set on each move).
        super::global().free_vpid(self.vpid);
    }
}

impl BackendVcpu for VmxVcpu {
    // RFLAGS without the debugger's TF, which KVM_SET_REGS puts back only at the RIP where
    // single-stepping began (upstream `__get_regs`/`__set_regs` through `kvm_get/set_rflags`).
    fn get_regs(&mut self, regs: &mut b::kvm_regs) -> Result {
        self.with_vmcs(|v| {
            v.read_regs(regs);
            regs.rflags = v.get_rflags();
        })
    }

    fn set_regs(&mut self, regs: &b::kvm_regs) -> Result {
        self.with_vmcs(|v| {
            v.write_regs(regs);
            v.set_rflags(regs.rflags);
        })
    }

    fn get_sregs(&mut self, sregs: &mut b::kvm_sregs) -> Result {
        self.with_vmcs(|v| v.read_sregs(sregs))
    }

    fn set_sregs(&mut self, sregs: &b::kvm_sregs) -> Result {
        self.with_vmcs(|v| v.write_sregs(sregs))
    }

    // Userspace's accesses follow the guest's rules (upstream relaxes a few for
    // `host_initiated` writes, e.g. of EFER.LMA; rkvm does not yet).
    fn has_run(&self) -> bool {
        self.ran
    }

    // The FXSAVE64 image (SDM table 10-2) ⇄ `struct kvm_fpu`.
    fn get_fpu(&mut self, fpu: &mut b::kvm_fpu) -> Result {
        let fx = &xsave::legacy(&self.fpu.0);
        let u16_at = |o: usize| u16::from_le_bytes([fx[o], fx[o + 1]]);
        let u64_at = |o: usize| u64::from_le_bytes(fx[o..o + 8].try_into().unwrap_or([0; 8]));
        fpu.fcw = u16_at(0);
        fpu.fsw = u16_at(2);
        fpu.ftwx = fx[4];
        fpu.last_opcode = u16_at(6);
        fpu.last_ip = u64_at(8);
        fpu.last_dp = u64_at(16);
        // As upstream, MXCSR is neither reported nor set here (it travels in KVM_GET/SET_XSAVE):
        // a client that zeroes `kvm_fpu` must not unmask every SIMD exception in its guest.
        for (i, r) in fpu.fpr.iter_mut().enumerate() {
            r.copy_from_slice(&fx[32 + 16 * i..48 + 16 * i]);
        }
        for (i, r) in fpu.xmm.iter_mut().enumerate() {
            r.copy_from_slice(&fx[160 + 16 * i..176 + 16 * i]);
        }
        Ok(())
    }

    fn set_fpu(&mut self, fpu: &b::kvm_fpu) -> Result {
        let mut legacy = xsave::legacy(&self.fpu.0);
        let fx = &mut legacy;
        fx[0..2].copy_from_slice(&fpu.fcw.to_le_bytes());
        fx[2..4].copy_from_slice(&fpu.fsw.to_le_bytes());
        fx[4] = fpu.ftwx;
        fx[6..8].copy_from_slice(&fpu.last_opcode.to_le_bytes());
        fx[8..16].copy_from_slice(&fpu.last_ip.to_le_bytes());
        fx[16..24].copy_from_slice(&fpu.last_dp.to_le_bytes());
        for (i, r) in fpu.fpr.iter().enumerate() {
            fx[32 + 16 * i..48 + 16 * i].copy_from_slice(r);
        }
        for (i, r) in fpu.xmm.iter().enumerate() {
            fx[160 + 16 * i..176 + 16 * i].copy_from_slice(r);
        }
        xsave::set_legacy(&mut self.fpu.0, &legacy);
        Ok(())
    }

    fn get_debugregs(&mut self, d: &mut b::kvm_debugregs) -> Result {
        d.db = self.dr;
        d.dr6 = self.dr6;
        d.dr7 = self.dr7;
        Ok(())
    }

    fn set_debugregs(&mut self, d: &b::kvm_debugregs) -> Result {
        self.dr = d.db;
        self.dr6 = d.dr6 | DR6_RESET;
        self.dr7 = (d.dr7 & !0xd000) | DR7_RESET;
        // Live at once unless the debugger's replace them (upstream `kvm_update_dr0123`,
        // `kvm_update_dr7`).
        self.with_vmcs(|v| v.update_dr7())
    }

    /// Upstream `kvm_arch_vcpu_ioctl_set_guest_debug`: `INJECT_DB`/`INJECT_BP` queue the
    /// exception (`EBUSY` over a pending one), whatever `ENABLE` says; the rest replaces the
    /// previous setting: the effective DR7 and DR0–DR3, RFLAGS.TF (the guest's RFLAGS read
    /// without the old setting's TF, written back with the new one's), the exception bitmap.
    fn set_guest_debug(&mut self, dbg: &b::kvm_guest_debug) -> Result {
        let d = GuestDebug::new(dbg.control, &dbg.arch.debugreg, self.events.exception_pending()).map_err(|e| match e {
            debug::SetError::Invalid => EINVAL,
            debug::SetError::Busy => EBUSY,
        })?;
        self.with_vmcs(|v| {
            if dbg.control & debug::INJECT_DB != 0 {
                v.queue_db(None);
            } else if dbg.control & debug::INJECT_BP != 0 {
                // A software exception: delivered as if an INT3 of the last #BP exit's length
                // had executed at RIP (upstream `kvm_queue_exception(BP_VECTOR)` →
                // `vmx_inject_exception` with `event_exit_inst_len`).
                v.events.exception = Some(Exception {
                    vector: debug::BP_VECTOR,
                    error_code: None,
                    soft: Some((events::TYPE_SOFT_EXCEPTION, v.bp_len)),
                    pending: true,
                });
            }
            let rflags = v.get_rflags();
            v.debug = d;
            v.update_dr7();
            if d.singlestep() {
                v.singlestep_rip = v.debug_pc();
            }
            v.set_rflags(rflags);
            vmcs::write(f::EXCEPTION_BITMAP, (d.exception_bitmap() | EB_ALWAYS).into());
        })
    }

    fn get_xcrs(&mut self, x: &mut b::kvm_xcrs) -> Result {
        if super::global().host.guest_xcr0 == 0 {
            return Err(EINVAL);
        }
        x.nr_xcrs = 1;
        x.xcrs[0] = b::kvm_xcr { xcr: 0, reserved: 0, value: self.xcr0 };
        Ok(())
    }

    fn set_xcrs(&mut self, x: &b::kvm_xcrs) -> Result {
        if super::global().host.guest_xcr0 == 0 {
            return Err(EINVAL);
        }
        let xcrs = &x.xcrs[..x.nr_xcrs as usize];
        // Only XCR0 exists; every value must be one XSETBV would accept.
        if xcrs.iter().any(|e| e.xcr != 0 || !self.xcr0_valid(e.value)) {
            return Err(EINVAL);
        }
        if let Some(e) = xcrs.last() {
            self.xcr0 = e.value;
        }
        Ok(())
    }

    fn cpuid_runtime_state(&mut self) -> Result<(u64, u64)> {
        self.with_vmcs(|v| (vmcs::read(f::CR4_READ_SHADOW), v.xcr0))
    }

    fn get_msr(&mut self, ctx: &MsrCtx<'_>, index: u32) -> Result<Option<u64>> {
        if crate::x86::pvclock::is_pv_msr(index) {
            return Ok(self.pv_msr_host(ctx, index, None));
        }
        self.with_vmcs(|v| v.read_msr(ctx, index).ok())
    }

    fn set_msr(&mut self, ctx: &MsrCtx<'_>, index: u32, data: u64) -> Result<bool> {
        // PV MSRs may write guest memory (the wall clock): outside `with_vmcs`.
        if crate::x86::pvclock::is_pv_msr(index) {
            return Ok(self.pv_msr_host(ctx, index, Some(data)).is_some());
        }
        self.prepare_msr_write(index)?;
        self.with_vmcs(|v| v.write_msr(ctx, index, data).is_ok())
    }

    fn mce(&mut self) -> Result<&mut Mce> {
        self.mce_mut()
    }

    fn queue_machine_check(&mut self) -> Result {
        self.inject_exception_code(MC, None);
        Ok(())
    }

    fn request_shutdown(&mut self) -> Result {
        self.shutdown_pending = true;
        Ok(())
    }

    fn write_tsc_offset(&mut self, offset: u64, gen: u64) -> Result {
        self.pv.tsc_gen = gen;
        self.with_vmcs(|_| vmcs::write(f::TSC_OFFSET, offset))
    }

    /// `KVM_GET_DEVICE_ATTR(KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET)` (upstream
    /// `vcpu->arch.l1_tsc_offset`).
    fn get_tsc_offset(&mut self) -> Result<u64> {
        self.with_vmcs(|_| vmcs::read(f::TSC_OFFSET))
    }

    /// `KVM_SET_DEVICE_ATTR(KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET)`.
    fn set_tsc_offset(&mut self, vm: &crate::vm::Vm, offset: u64) -> Result {
        vm.set_tsc_offset(offset, &mut self.pv.tsc_gen);
        self.with_vmcs(|_| vmcs::write(f::TSC_OFFSET, offset))
    }

    /// `KVM_ENABLE_CAP(KVM_CAP_ENFORCE_PV_FEATURE_CPUID)` (upstream
    /// `kvm_vcpu_ioctl_enable_cap`): on enabling, the features are taken from the table.
    fn set_pv_enforce(&mut self, enforce: bool, table: &[crate::x86::cpuid::Entry]) -> Result {
        self.pv.cpuid.enforce = enforce;
        if enforce {
            self.pv.after_set_cpuid(table);
        }
        Ok(())
    }

    fn run(&mut self, ctx: &mut RunContext<'_>) -> Result {
        if let Some(a) = &self.apic {
            a.posted.kick.set_task(true);
        }
        let r = if self.apic.as_ref().is_some_and(|a| a.mp == b::KVM_MP_STATE_UNINITIALIZED) {
            if ctx.immediate_exit {
                Err(EINTR)
            } else {
                self.run_uninitialized(ctx.run)
            }
        } else {
            self.run_loop(ctx)
        };
        if let Some(a) = &self.apic {
            a.posted.kick.set_task(false);
        }
        self.post_run_save(ctx.run)?;
        r
    }

    fn get_xsave(&mut self, area: &mut [u8]) -> Result {
        xsave::get(&self.fpu.0, area);
        Ok(())
    }

    fn set_xsave(&mut self, area: &[u8]) -> Result {
        xsave::set(area, super::global().host.guest_xcr0, &mut self.fpu.0).map_err(|_| EINVAL)
    }

    fn translate(&mut self, vm: &crate::vm::Vm, la: u64) -> Result<Option<u64>> {
        let pg = self.with_vmcs(|v| v.paging())?;
        Ok(walk::walk(&mut VmMem(vm), &pg.regs, la, false, false).ok())
    }

    fn queue_interrupt(&mut self, vector: u8) -> Result {
        // Upstream `kvm_queue_interrupt`: replaces any interrupt queued by userspace before.
        self.events.interrupt = Some(Interrupt { vector, reinject: false, soft_len: None });
        Ok(())
    }

    fn apic(&mut self) -> Option<&mut VcpuApic> {
        self.apic.as_mut()
    }

    fn sipi_vector(&self) -> u8 {
        self.sipi_vector as u8
    }

    /// Upstream `kvm_vcpu_after_set_cpuid`: whether IA32_APIC_BASE.EXTD is writable follows the
    /// new table.
    fn after_set_cpuid(&mut self, table: &[crate::x86::cpuid::Entry]) {
        self.x2apic_cpuid = crate::x86::cpuid::guest_has_x2apic(table, self.apic.is_some());
        self.pv.after_set_cpuid(table);
    }

    fn queue_nmi(&mut self) -> Result {
        let masked = self.with_vmcs(|v| v.event_guest_state().interruptibility & events::BLOCKING_BY_NMI != 0)?;
        self.events.queue_nmi(masked);
        Ok(())
    }

    fn get_vcpu_events(&mut self, e: &mut b::kvm_vcpu_events) -> Result {
        let g = self.with_vmcs(|v| v.event_guest_state())?;
        let ev = &self.events;
        if let Some(x) = ev.exception {
            e.exception.injected = 1;
            e.exception.nr = x.vector;
            e.exception.has_error_code = x.error_code.is_some().into();
            e.exception.error_code = x.error_code.unwrap_or(0);
        }
        // Upstream reports hardware interrupts only: a software INT n is simply executed again.
        if let Some(i) = ev.interrupt.filter(|i| i.soft_len.is_none()) {
            e.interrupt.injected = 1;
            e.interrupt.nr = i.vector;
        }
        e.interrupt.shadow = (if g.interruptibility & events::BLOCKING_BY_STI != 0 { b::KVM_X86_SHADOW_INT_STI } else { 0 }
            | if g.interruptibility & events::BLOCKING_BY_MOV_SS != 0 { b::KVM_X86_SHADOW_INT_MOV_SS } else { 0 })
            as u8;
        e.nmi.injected = ev.nmi_injected.into();
        e.nmi.pending = ev.nmi_pending;
        e.nmi.masked = (g.interruptibility & events::BLOCKING_BY_NMI != 0).into();
        e.sipi_vector = self.sipi_vector;
        e.flags = b::KVM_VCPUEVENT_VALID_NMI_PENDING | b::KVM_VCPUEVENT_VALID_SHADOW;
        Ok(())
    }

    fn set_vcpu_events(&mut self, e: &b::kvm_vcpu_events) -> Result {
        let ev = &mut self.events;
        ev.exception = (e.exception.injected != 0).then_some(Exception {
            vector: e.exception.nr,
            error_code: (e.exception.has_error_code != 0).then_some(e.exception.error_code),
            soft: None,
            // Upstream without KVM_CAP_EXCEPTION_PAYLOAD: `exception.injected`, not pending.
            pending: false,
        });
        ev.interrupt = (e.interrupt.injected != 0).then_some(Interrupt {
            vector: e.interrupt.nr,
            reinject: true,
            soft_len: None,
        });
        ev.nmi_injected = e.nmi.injected != 0;
        if e.flags & b::KVM_VCPUEVENT_VALID_NMI_PENDING != 0 {
            ev.nmi_pending = e.nmi.pending.min(2);
        }
        if e.flags & b::KVM_VCPUEVENT_VALID_SIPI_VECTOR != 0 {
            self.sipi_vector = e.sipi_vector;
        }
        let shadow = (e.flags & b::KVM_VCPUEVENT_VALID_SHADOW != 0).then_some(u32::from(e.interrupt.shadow));
        let masked = e.nmi.masked != 0;
        self.with_vmcs(|v| {
            let mut st = v.event_guest_state().interruptibility;
            if let Some(s) = shadow {
                st &= !(events::BLOCKING_BY_STI | events::BLOCKING_BY_MOV_SS);
                if s & b::KVM_X86_SHADOW_INT_STI != 0 {
                    st |= events::BLOCKING_BY_STI;
                }
                if s & b::KVM_X86_SHADOW_INT_MOV_SS != 0 {
                    st |= events::BLOCKING_BY_MOV_SS;
                }
            }
            st = if masked { st | events::BLOCKING_BY_NMI } else { st & !events::BLOCKING_BY_NMI };
            vmcs::write(f::GUEST_INTERRUPTIBILITY_INFO, st.into());
        })
    }
}

/// Counts exit `e` by reason (upstream's `++vcpu->stat.*` in the exit handlers), and the
/// event the entry carried, if any.
fn count_exit(s: &crate::statsfd::VcpuStats, e: &ExitInfo) {
    s.inc(stats::EXITS);
    match e.reason & 0xffff {
        reason::EXTERNAL_INTERRUPT => s.inc(stats::IRQ_EXITS),
        reason::INTERRUPT_WINDOW => s.inc(stats::IRQ_WINDOW_EXITS),
        reason::NMI_WINDOW => s.inc(stats::NMI_WINDOW_EXITS),
        reason::HLT => s.inc(stats::HALT_EXITS),
        _ => {}
    }
    if e.injected & events::INFO_VALID != 0 {
        match (e.injected >> 8) & 7 {
            events::TYPE_EXT_INTR => s.inc(stats::IRQ_INJECTIONS),
            events::TYPE_NMI => s.inc(stats::NMI_INJECTIONS),
            _ => {}
        }
    }
}

/// What the in-kernel LAPIC decided before an entry.
enum ApicStep {
    /// Enter; `window`: an interrupt waits for the guest to accept it.
    Enter { kick_seq: u32, window: bool },
    /// Waiting for a SIPI and something woke it (or the state changed): look again.
    Again,
    /// Halted, and an event woke it: look again.
    Woken,
    /// Halted (or waiting for a SIPI), and a signal arrived.
    Interrupted,
}

impl VmxVcpu {
    /// Before an entry with an in-kernel LAPIC (upstream: `kvm_apic_accept_events`,
    /// `vcpu_block` for a vCPU that is not running, and the interrupt half of
    /// `inject_pending_event`): folds in posted work, sleeps while halted or waiting for a SIPI
    /// with nothing to wake it, and moves the next interrupt into the event queue once the
    /// guest can take it.
    fn apic_prepare(&mut self) -> Result<ApicStep> {
        let Some(a) = self.apic.as_mut() else {
            return Ok(ApicStep::Enter { kick_seq: 0, window: false });
        };
        let kick_seq = a.posted.kick.seq();
        let work = a.sync();
        self.accept_events(&work)?;
        let Some(a) = self.apic.as_mut() else { return Ok(ApicStep::Again) };
        let next = a.next();
        let mp = a.mp;
        if mp == b::KVM_MP_STATE_INIT_RECEIVED || mp == b::KVM_MP_STATE_UNINITIALIZED {
            // Only INIT or SIPI (handled above) moves it on.
            return Ok(match a.posted.kick.wait(kick_seq) {
                Ok(()) => ApicStep::Again,
                Err(_) => ApicStep::Interrupted,
            });
        }
        let halted = mp == b::KVM_MP_STATE_HALTED;
        let can_take = self.events.interrupt.is_none() && !self.events.needs_reinjection();
        let g = if next.is_some() && can_take || halted {
            Some(self.with_vmcs(|v| v.event_guest_state())?)
        } else {
            None
        };
        if halted {
            // Upstream `kvm_vcpu_has_events`: an interrupt the guest accepts, an NMI, or an
            // event already queued ends the halt.
            let accepts = g.is_some_and(|g| g.accepts_interrupt());
            let wake = (next.is_some() && accepts) || !self.events.idle();
            let Some(a) = self.apic.as_mut() else { return Ok(ApicStep::Again) };
            if !wake {
                return Ok(match a.posted.kick.wait(kick_seq) {
                    Ok(()) => ApicStep::Woken,
                    Err(_) => ApicStep::Interrupted,
                });
            }
            a.mp = b::KVM_MP_STATE_RUNNABLE;
        }
        let mut window = false;
        // KVM_GUESTDBG_BLOCKIRQ: the interrupt stays in the LAPIC (no window either).
        if let (Some(src), true) = (next, can_take && !self.debug.block_irq()) {
            if g.is_some_and(|g| g.accepts_interrupt()) {
                let Some(a) = self.apic.as_mut() else { return Ok(ApicStep::Again) };
                if let Some(vector) = a.ack(src) {
                    self.events.interrupt = Some(Interrupt { vector, reinject: false, soft_len: None });
                }
            } else {
                window = true;
            }
        }
        Ok(ApicStep::Enter { kick_seq, window })
    }

    /// Acts on posted NMIs, INIT and SIPI (upstream `process_nmi` and
    /// `kvm_apic_accept_events`).
    fn accept_events(&mut self, w: &crate::irq::Work) -> Result {
        if w.nmis != 0 {
            let masked = self.with_vmcs(|v| v.event_guest_state().interruptibility & events::BLOCKING_BY_NMI != 0)?;
            for _ in 0..w.nmis {
                self.events.queue_nmi(masked);
            }
        }
        if w.init {
            self.init_reset()?;
        }
        if let Some(vector) = w.sipi {
            let waiting = self.apic.as_ref().is_some_and(|a| a.mp == b::KVM_MP_STATE_INIT_RECEIVED);
            // A SIPI to a vCPU that is not waiting for one is dropped (SDM 10.4.7.3).
            if waiting {
                self.sipi_vector = vector.into();
                self.with_vmcs(|_| {
                    // Upstream `kvm_vcpu_deliver_sipi_vector`: real mode at vector << 12.
                    vmcs::write(f::GUEST_CS_SELECTOR, u64::from(vector) << 8);
                    vmcs::write(f::GUEST_CS_BASE, u64::from(vector) << 12);
                    vmcs::write(f::GUEST_RIP, 0);
                })?;
                if let Some(a) = self.apic.as_mut() {
                    a.mp = b::KVM_MP_STATE_RUNNABLE;
                }
            }
        }
        Ok(())
    }

    /// The architectural INIT (upstream `kvm_vcpu_reset(vcpu, true)`): registers to their
    /// INIT values (as at RESET, except that the APIC base and the MSRs INIT leaves alone are
    /// kept), no events pending, the LAPIC in its INIT state.
    fn init_reset(&mut self) -> Result {
        let mut regs = b::kvm_regs::default();
        let mut sregs = b::kvm_sregs::default();
        crate::vcpu::reset_state(&mut regs, &mut sregs);
        sregs.apic_base = self.get_apic_base();
        self.events = Events::default();
        self.pending = None;
        self.dr = [0; 4];
        self.dr6 = DR6_RESET;
        self.dr7 = DR7_RESET;
        self.step_exit = false;
        self.xcr0 = 1;
        self.pv.init();
        if let Some(a) = self.apic.as_mut() {
            a.init();
        }
        self.with_vmcs(|v| {
            v.write_regs(&regs);
            v.write_sregs(&sregs);
            vmcs::write(f::GUEST_INTERRUPTIBILITY_INFO, 0);
            vmcs::write(f::GUEST_PENDING_DBG_EXCEPTIONS, 0);
            v.update_dr7();
            vmcs::write(f::GUEST_ACTIVITY_STATE, b::GUEST_ACTIVITY_ACTIVE.into());
            v.tlb_flush = true;
        })
    }

    /// `KVM_RUN` of a vCPU that never got INIT (upstream: the `KVM_MP_STATE_UNINITIALIZED` case
    /// of `kvm_arch_vcpu_ioctl_run`): waits once for an event, accepts INIT/SIPI, and returns
    /// `EAGAIN` (or `EINTR` with `KVM_EXIT_INTR` on a signal) without entering the guest.
    fn run_uninitialized(&mut self, run: *mut b::kvm_run) -> Result {
        let Some(a) = self.apic.as_mut() else { return Err(EAGAIN) };
        let seq = a.posted.kick.seq();
        // SAFETY: querying the current task's state.
        let idle = !unsafe { b::rkvm_signal_pending() };
        if idle && a.posted.kick.wait(seq).is_err() {
            // SAFETY: `run` is the vCPU's kvm_run page.
            unsafe { (*run).exit_reason = b::KVM_EXIT_INTR };
            return Err(EINTR);
        }
        let work = a.sync();
        self.accept_events(&work)?;
        // SAFETY: as above.
        if unsafe { b::rkvm_signal_pending() } {
            // SAFETY: as above.
            unsafe { (*run).exit_reason = b::KVM_EXIT_INTR };
            return Err(EINTR);
        }
        Err(EAGAIN)
    }

    /// Reports the single step of an instruction rkvm completed (upstream
    /// `kvm_vcpu_do_singlestep`): `KVM_EXIT_DEBUG` at the next instruction with DR6.BS.
    #[cold]
    fn report_step(&mut self, run: *mut b::kvm_run) -> Result {
        self.step_exit = false;
        let (pc, dr7) = self.with_vmcs(|v| (v.debug_pc(), vmcs::read(f::GUEST_DR7)))?;
        debug_exit(run, debug::DB_VECTOR, pc, Some((debug::exit_dr6(debug::DR6_BS), dr7)));
        Ok(())
    }

    /// `run` without the `kvm_run` fields every exit fills (`post_run_save`).
    fn run_loop(&mut self, ctx: &mut RunContext<'_>) -> Result {
        let (pio, run) = (ctx.pio, ctx.run);
        let vm = ctx.vm;
        self.complete_pending(vm, pio, run)?;
        // The completed instruction was single-stepped (upstream: `complete_userspace_io`
        // returning 0 from `kvm_skip_emulated_instruction`).
        if self.step_exit {
            return self.report_step(run);
        }
        if ctx.immediate_exit {
            return Err(EINTR);
        }
        if core::mem::take(&mut self.shutdown_pending) {
            // SAFETY: `run` is the vCPU's kvm_run page.
            unsafe { (*run).exit_reason = b::KVM_EXIT_SHUTDOWN };
            return Ok(());
        }
        self.hlt_in_guest = vm.hlt_in_guest.load(Ordering::Relaxed);
        self.pv.loaded();
        loop {
            // SAFETY: querying the current task's state.
            if unsafe { b::rkvm_signal_pending() } {
                // SAFETY: `run` is the vCPU's kvm_run page.
                unsafe { (*ctx.run).exit_reason = b::KVM_EXIT_INTR };
                ctx.stats.inc(stats::SIGNAL_EXITS);
                return Err(EINTR);
            }
            // SAFETY: may sleep; we hold no spinlock and preemption is enabled here.
            unsafe {
                if b::rkvm_need_resched() {
                    b::rkvm_cond_resched();
                    self.pv.loaded();
                }
            }
            // SAFETY: `run` is the vCPU's kvm_run page; userspace may change it: read once.
            let user_window = unsafe { core::ptr::addr_of!((*run).request_interrupt_window).read_volatile() } != 0;
            let (kick_seq, apic_window) = match self.apic_prepare()? {
                ApicStep::Enter { kick_seq, window } => (kick_seq, window),
                ApicStep::Again => continue,
                ApicStep::Interrupted => {
                    // SAFETY: `run` is the vCPU's kvm_run page.
                    unsafe { (*ctx.run).exit_reason = b::KVM_EXIT_INTR };
                    ctx.stats.inc(stats::SIGNAL_EXITS);
                    return Err(EINTR);
                }
                ApicStep::Woken => {
                    ctx.stats.inc(stats::HALT_WAKEUP);
                    continue;
                }
            };
            // A new MSR filter may change which MSRs pass through (one load when it did not).
            self.refresh_msr_filter(vm)?;
            self.pv_prepare(vm)?;
            match self.enter_once(user_window || apic_window, kick_seq)? {
                Entered::Cancelled => continue,
                Entered::Exit(info) => {
                    count_exit(ctx.stats, &info);
                    if let Next::User = self.handle_exit(ctx, &info)? {
                        // An exit of its own outranks a step rkvm completed on the way (upstream:
                        // e.g. `kvm_emulate_halt` turns the step's exit into KVM_EXIT_HLT).
                        self.step_exit = false;
                        // SAFETY: `run` is the vCPU's kvm_run page.
                        match unsafe { (*ctx.run).exit_reason } {
                            b::KVM_EXIT_IO => ctx.stats.inc(stats::IO_EXITS),
                            b::KVM_EXIT_MMIO => ctx.stats.inc(stats::MMIO_EXITS),
                            _ => {}
                        }
                        return Ok(());
                    }
                    if self.step_exit {
                        return self.report_step(run);
                    }
                    // Userspace asked to be told when it may inject (upstream: vcpu_run's
                    // dm_request_for_irq_injection check after each exit).
                    if user_window {
                        let g = self.with_vmcs(|v| v.event_guest_state())?;
                        if self.events.ready_for_interrupt(g) {
                            // SAFETY: as above.
                            unsafe { (*run).exit_reason = b::KVM_EXIT_IRQ_WINDOW_OPEN };
                            return Ok(());
                        }
                    }
                }
                Entered::Failed(fail) => {
                    // SAFETY: `run` is the vCPU's kvm_run page.
                    unsafe {
                        (*ctx.run).exit_reason = b::KVM_EXIT_FAIL_ENTRY;
                        (*ctx.run).__bindgen_anon_1.fail_entry.hardware_entry_failure_reason = u64::from(fail);
                    }
                    return Ok(());
                }
            }
        }
    }
}


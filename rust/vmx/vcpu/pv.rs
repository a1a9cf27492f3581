//! KVM's paravirtual interface, the vCPU side on VMX: the PV MSRs, the kvmclock time information
//! and steal time kept up to date before each entry, hypercalls (VMCALL, and VMMCALL rewritten
//! into VMCALL under `KVM_X86_QUIRK_FIX_HYPERCALL_INSN`). Upstream: the PV cases of
//! `kvm_set_msr_common` / `kvm_get_msr_common`, `kvm_guest_time_update`, `record_steal_time`,
//! `kvm_emulate_hypercall`, `complete_hypercall_exit`, `emulator_fix_hypercall`
//! (arch/x86/kvm/x86.c). The rules are in `x86/pvclock.rs`, the VM's clock in `pv.rs`.
//!
//! Everything here writes guest memory, which may sleep, so it runs outside [`VmxVcpu::with_vmcs`]
//! (preemption on), from the run loop and the MSR paths.

use super::{ExitInfo, Next, PendingIo, VmxVcpu, RAX, RBX, RCX, RDX, RSI, UD};
use crate::x86::msr::MsrFault;
use crate::backend::{MsrCtx, RunContext};
use crate::ffi::bindings as b;
use crate::vm::Vm;
use crate::x86::pvclock::{self, Hypercall, MsrWrite, PvCpuid};
use crate::vmx::vmcs::{self, field as f};
use core::sync::atomic::Ordering;
use kernel::prelude::*;

/// One vCPU's PV state (upstream: `vcpu->arch.pv_cpuid`, `arch.time`, `arch.st`, `arch.apf`,
/// `arch.pv_eoi`, `msr_kvm_poll_control`).
pub(super) struct PvVcpu {
    /// `KVM_CAP_ENFORCE_PV_FEATURE_CPUID` and the guest's PV feature bits.
    pub(super) cpuid: PvCpuid,
    /// MSR_KVM_SYSTEM_TIME(_NEW): the time information's address, bit 0 enabling it.
    system_time: u64,
    /// MSR_KVM_STEAL_TIME, and the run delay already accounted (`st.last_steal`).
    steal_time: u64,
    last_steal: u64,
    /// Steal time is to be recorded before the next entry (`KVM_REQ_STEAL_UPDATE`).
    steal_pending: bool,
    /// Stored only: rkvm sends no async page fault and sets no PV-EOI flag (see
    /// `pvclock::msr_write`).
    async_pf_en: u64,
    async_pf_int: u64,
    pv_eoi: u64,
    poll_control: u64,
    /// The time information is to be written before the next entry (`KVM_REQ_CLOCK_UPDATE`).
    clock_pending: bool,
    /// The VM's clock generation and the TSC offset it was last written for.
    clock_gen: u32,
    tsc_offset: u64,
    /// The vCPU's TSC generation (upstream `this_tsc_generation`).
    pub(super) tsc_gen: u64,
}

impl Default for PvVcpu {
    fn default() -> PvVcpu {
        PvVcpu {
            cpuid: PvCpuid::default(),
            system_time: 0,
            steal_time: 0,
            last_steal: 0,
            steal_pending: false,
            async_pf_en: 0,
            async_pf_int: 0,
            pv_eoi: 0,
            // Upstream `kvm_arch_vcpu_create`: polling allowed.
            poll_control: 1,
            clock_pending: false,
            clock_gen: 0,
            tsc_offset: 0,
            tsc_gen: 0,
        }
    }
}

impl PvVcpu {
    /// The PV feature bits follow a new CPUID table (upstream `kvm_update_pv_runtime`: kept
    /// when the table has no KVM features leaf).
    pub(super) fn after_set_cpuid(&mut self, table: &[crate::x86::cpuid::Entry]) {
        let find = |func: u32| table.iter().find(|e| e.function == func).map(|e| e.regs);
        if let Some(features) = pvclock::pv_features(find) {
            self.cpuid.features = features;
        }
    }

    /// INIT (upstream `kvm_vcpu_reset`): kvmclock, steal time, async PF and PV EOI are off.
    pub(super) fn init(&mut self) {
        self.system_time = 0;
        self.steal_time = 0;
        self.async_pf_en = 0;
        self.async_pf_int = 0;
        self.pv_eoi = 0;
    }

    /// The vCPU moved to another CPU (upstream `kvm_arch_vcpu_load`): steal time is recorded,
    /// and the time information taken again on this CPU before the next entry (upstream skips
    /// the latter with the master clock, where it comes out the same).
    pub(super) fn migrated(&mut self) {
        self.steal_pending = true;
        self.clock_pending = true;
    }

    /// The start of a `KVM_RUN` (upstream: the `KVM_REQ_STEAL_UPDATE` of each `vcpu_load`).
    pub(super) fn loaded(&mut self) {
        self.steal_pending = true;
    }
}

impl VmxVcpu {
    /// A read of PV MSR `index` (upstream `kvm_get_msr_common`): `None` (#GP) when the guest's
    /// PV features lack it under enforcement.
    pub(super) fn pv_msr_read(&self, vm: &Vm, index: u32) -> Option<u64> {
        let pv = &self.pv;
        if !pv.cpuid.has(pvclock::msr_feature(index)) {
            return None;
        }
        Some(match index {
            pvclock::MSR_WALL_CLOCK | pvclock::MSR_WALL_CLOCK_NEW => vm.clock.lock().wall_clock,
            pvclock::MSR_SYSTEM_TIME | pvclock::MSR_SYSTEM_TIME_NEW => pv.system_time,
            pvclock::MSR_ASYNC_PF_EN => pv.async_pf_en,
            pvclock::MSR_ASYNC_PF_INT => pv.async_pf_int,
            pvclock::MSR_ASYNC_PF_ACK => 0,
            pvclock::MSR_STEAL_TIME => pv.steal_time,
            pvclock::MSR_PV_EOI_EN => pv.pv_eoi,
            _ => pv.poll_control,
        })
    }

    /// A write of PV MSR `index` by the guest or (`host`) by `KVM_SET_MSRS` (upstream
    /// `kvm_set_msr_common`): false for #GP / a failed entry.
    pub(super) fn pv_msr_write(&mut self, vm: &Vm, index: u32, v: u64, host: bool) -> bool {
        let lapic = self.apic.is_some();
        match pvclock::msr_write(&self.pv.cpuid, index, v, crate::pv::sched_info_on(), lapic) {
            MsrWrite::Refuse => return false,
            MsrWrite::WallClock => vm.write_wall_clock(v),
            MsrWrite::SystemTime { old } => {
                // Upstream `kvm_write_system_time`: the boot vCPU's choice of MSR decides
                // whether the master clock may be used.
                if self.id == 0 && !host && vm.set_old_kvmclock(old) {
                    vm.update_master_clock(vm.tsc_matched());
                }
                self.pv.system_time = v;
                self.pv.clock_pending = true;
            }
            MsrWrite::StealTime => {
                self.pv.steal_time = v;
                self.pv.steal_pending = v & pvclock::MSR_ENABLED != 0;
            }
            MsrWrite::Store => match index {
                pvclock::MSR_ASYNC_PF_EN => self.pv.async_pf_en = v,
                pvclock::MSR_ASYNC_PF_INT => self.pv.async_pf_int = v,
                pvclock::MSR_PV_EOI_EN => self.pv.pv_eoi = v,
                pvclock::MSR_POLL_CONTROL => self.pv.poll_control = v,
                _ => {}
            },
        }
        true
    }

    /// A guest RDMSR/WRMSR of a PV MSR the MSR filter allowed, outside `with_vmcs` (the wall
    /// clock is written to guest memory right away, as upstream): a read's value goes to
    /// EDX:EAX. Refusals as upstream's `kvm_get_msr_common` / `kvm_set_msr_common` return them,
    /// for the caller to exit to userspace with or turn into #GP (`VmxVcpu::handle_msr`): a PV
    /// feature the vCPU lacks under enforcement is `KVM_MSR_RET_UNSUPPORTED` (reason UNKNOWN), a
    /// bad value 1 (reason INVAL).
    pub(super) fn pv_msr_guest(&mut self, vm: &Vm, index: u32, write: bool, data: u64) -> core::result::Result<(), MsrFault> {
        if !self.pv.cpuid.has(pvclock::msr_feature(index)) {
            return Err(MsrFault::Unsupported);
        }
        if write {
            return if self.pv_msr_write(vm, index, data, false) { Ok(()) } else { Err(MsrFault::Invalid) };
        }
        let v = self.pv_msr_read(vm, index).ok_or(MsrFault::Invalid)?;
        self.regs.gpr[RAX] = v & 0xffff_ffff;
        self.regs.gpr[RDX] = v >> 32;
        Ok(())
    }

    /// `KVM_GET_MSRS` / `KVM_SET_MSRS` of a PV MSR. As upstream's `kvm_do_msr_access` for an
    /// MSR it lists but the vCPU lacks (a PV feature not in its CPUID under enforcement),
    /// userspace reads 0 and may write 0.
    pub(super) fn pv_msr_host(&mut self, ctx: &MsrCtx<'_>, index: u32, data: Option<u64>) -> Option<u64> {
        let lacks = !self.pv.cpuid.has(pvclock::msr_feature(index));
        match data {
            Some(0) if lacks => Some(0),
            Some(v) => self.pv_msr_write(ctx.vm, index, v, true).then_some(v),
            None if lacks => Some(0),
            None => self.pv_msr_read(ctx.vm, index),
        }
    }

    /// Before an entry (upstream: `KVM_REQ_STEAL_UPDATE` and `KVM_REQ_CLOCK_UPDATE` in
    /// `vcpu_enter_guest`): records steal time, and rewrites the kvmclock time information when
    /// the VM's clock, this vCPU's TSC offset or its CPU (without the master clock) changed.
    pub(super) fn pv_prepare(&mut self, vm: &Vm) -> Result {
        if self.pv.steal_pending {
            self.record_steal_time(vm);
        }
        if self.pv.system_time & pvclock::MSR_ENABLED == 0 {
            return Ok(());
        }
        let gen = vm.clock_gen.load(Ordering::Acquire);
        let offset = self.with_vmcs(|_| vmcs::read(f::TSC_OFFSET))?;
        if self.pv.clock_pending || gen != self.pv.clock_gen || offset != self.pv.tsc_offset {
            self.pv.clock_pending = false;
            self.pv.clock_gen = gen;
            self.pv.tsc_offset = offset;
            self.guest_time_update(vm, offset);
        }
        Ok(())
    }

    /// Writes `struct pvclock_vcpu_time_info` at MSR_KVM_SYSTEM_TIME's address (upstream
    /// `kvm_guest_time_update` → `kvm_setup_guest_pvclock`): version made odd, the data (keeping
    /// the guest's `PVCLOCK_GUEST_STOPPED`), version made even. Memory the guest cannot have
    /// there (outside RAM) is skipped, as upstream's cache fails to activate.
    fn guest_time_update(&mut self, vm: &Vm, tsc_offset: u64) {
        let gpa = self.pv.system_time & !pvclock::MSR_ENABLED;
        let now = crate::pv::host_clock();
        let mut info = vm.clock.lock().time_info(&now, tsc_offset);
        let mut old = [0u8; pvclock::TIME_INFO_SIZE];
        if vm.read_guest(gpa, &mut old).is_err() {
            return;
        }
        let old = pvclock::TimeInfo::from_bytes(&old);
        let (odd, even) = pvclock::update_versions(old.version);
        info.version = odd;
        info.flags |= old.flags & pvclock::PVCLOCK_GUEST_STOPPED;
        if vm.write_guest(gpa, &odd.to_le_bytes()).is_err() || vm.write_guest(gpa, &info.to_bytes()).is_err() {
            return;
        }
        let _ = vm.write_guest(gpa, &even.to_le_bytes());
    }

    /// Adds the run delay since the last record to `struct kvm_steal_time` (upstream
    /// `record_steal_time`): `preempted` cleared, version odd, steal, version even.
    fn record_steal_time(&mut self, vm: &Vm) {
        self.pv.steal_pending = false;
        if self.pv.steal_time & pvclock::MSR_ENABLED == 0 {
            return;
        }
        let gpa = self.pv.steal_time & !(pvclock::STEAL_TIME_SIZE as u64 - 1);
        let mut head = [0u8; 12];
        if vm.write_guest(gpa + pvclock::STEAL_OFF_PREEMPTED, &[0]).is_err() || vm.read_guest(gpa, &mut head).is_err() {
            return;
        }
        let steal = u64::from_le_bytes([head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7]]);
        let (odd, even) = pvclock::update_versions(u32::from_le_bytes([head[8], head[9], head[10], head[11]]));
        let delay = crate::pv::run_delay();
        let steal = steal.wrapping_add(delay.wrapping_sub(self.pv.last_steal));
        self.pv.last_steal = delay;
        let ver = gpa + pvclock::STEAL_OFF_VERSION;
        if vm.write_guest(ver, &odd.to_le_bytes()).is_ok() && vm.write_guest(gpa + pvclock::STEAL_OFF_STEAL, &steal.to_le_bytes()).is_ok() {
            let _ = vm.write_guest(ver, &even.to_le_bytes());
        }
    }

    /// VMCALL (upstream `kvm_emulate_hypercall`): the number in RAX, arguments in RBX, RCX, RDX,
    /// RSI, the result in RAX; RIP moves past it, unless it goes to userspace
    /// (`KVM_EXIT_HYPERCALL`), which completes it on the next `KVM_RUN`.
    pub(super) fn handle_hypercall(&mut self, ctx: &mut RunContext<'_>, e: &ExitInfo) -> Result<Next> {
        let (cpl, long) = self.with_vmcs(|v| (v.cpl() as u8, v.code_mode() == crate::x86::decode::Mode::Bits64))?;
        let r = &self.regs.gpr;
        let args = [r[RBX], r[RCX], r[RDX], r[RSI]];
        let exit_mask = ctx.vm.exit_hypercall.load(Ordering::Relaxed);
        let ret = match pvclock::hypercall(&self.pv.cpuid, r[RAX], args, long, cpl, exit_mask) {
            Hypercall::Return(v) => v,
            // A directed yield is only a hint; rkvm does not know whether the target vCPU's
            // thread is waiting for a CPU (upstream `kvm_sched_yield` yields only then), so it
            // just offers the CPU to whoever waits for it.
            Hypercall::SchedYield(_) => {
                crate::pv::yield_now();
                0
            }
            Hypercall::ClockPairing(gpa) => self.clock_pairing(ctx.vm, gpa, long)?,
            Hypercall::ExitMapGpaRange(a) => {
                // SAFETY: `run` is the vCPU's kvm_run page; the hypercall view of the union is
                // plain integers.
                unsafe {
                    let run = ctx.run;
                    (*run).exit_reason = b::KVM_EXIT_HYPERCALL;
                    let h = &mut (*run).__bindgen_anon_1.hypercall;
                    h.nr = pvclock::hc::MAP_GPA_RANGE;
                    h.args = [a[0], a[1], a[2], 0, 0, 0];
                    h.ret = 0;
                    h.__bindgen_anon_1.flags = if long { pvclock::EXIT_HYPERCALL_LONG_MODE } else { 0 };
                }
                self.pending = Some(PendingIo::Hypercall { long });
                return Ok(Next::User);
            }
        };
        self.regs.gpr[RAX] = ret;
        self.with_vmcs(|v| v.skip_instruction(e.instr_len))?;
        Ok(Next::Resume)
    }

    /// Userspace's answer to a `KVM_EXIT_HYPERCALL` (upstream `complete_hypercall_exit`):
    /// `hypercall.ret` to RAX (the low half for a 32-bit caller). RIP is moved by the caller.
    pub(super) fn complete_hypercall(&mut self, run: *const b::kvm_run, long: bool) {
        // SAFETY: `run` is the vCPU's kvm_run page; `ret` is a plain integer userspace wrote.
        let ret = unsafe { core::ptr::addr_of!((*run).__bindgen_anon_1.hypercall.ret).read_volatile() };
        self.regs.gpr[RAX] = if long { ret } else { ret & 0xffff_ffff };
    }

    /// `KVM_HC_CLOCK_PAIRING` (upstream `kvm_pv_clock_pairing`): the host's realtime and the
    /// guest TSC of one instant, which needs the host clocksource to be the TSC.
    fn clock_pairing(&mut self, vm: &Vm, gpa: u64, long: bool) -> Result<u64> {
        let now = crate::pv::host_clock();
        if !now.tsc_based || vm.clock.lock().master.is_none() {
            return Ok(pvclock::ret(-pvclock::KVM_EOPNOTSUPP, long));
        }
        let offset = self.with_vmcs(|_| vmcs::read(f::TSC_OFFSET))?;
        let bytes = pvclock::clock_pairing_bytes(now.real_ns, now.tsc.wrapping_add(offset));
        Ok(match vm.write_guest(gpa, &bytes) {
            Ok(()) => 0,
            Err(_) => pvclock::ret(-pvclock::KVM_EFAULT, long),
        })
    }

    /// A #UD in the guest (upstream `handle_ud` → the emulator's `em_hypercall` →
    /// `emulator_fix_hypercall`): a VMMCALL, AMD's hypercall, is rewritten into VMCALL and
    /// executed again (RIP stays), unless `KVM_X86_QUIRK_FIX_HYPERCALL_INSN` is disabled;
    /// anything else, or a rewrite that cannot be written, gets its #UD.
    pub(super) fn handle_ud(&mut self, ctx: &mut RunContext<'_>) -> Result<Next> {
        let pg = self.with_vmcs(|v| v.paging())?;
        let (bytes, n) = self.fetch(ctx.vm, &pg);
        let fix = ctx.vm.disabled_quirks.load(Ordering::Relaxed) & pvclock::QUIRK_FIX_HYPERCALL_INSN == 0;
        if n >= 3 && bytes[..3] == pvclock::VMMCALL && fix && pg.write(ctx.vm, pg.rip, &pvclock::VMCALL).is_ok() {
            return Ok(Next::Resume);
        }
        self.with_vmcs(|v| v.inject_exception(UD))?;
        Ok(Next::Resume)
    }
}

//! KVM's paravirtual interface, the VM side: the kvmclock every vCPU's guest reads
//! (`KVM_GET_CLOCK` / `KVM_SET_CLOCK`, the master clock, the wall clock), and the host clocks and
//! scheduler figures it is built from (upstream: `kvm_vm_ioctl_get_clock` / `_set_clock`,
//! `pvclock_update_vm_gtod_copy`, `kvm_write_wall_clock` in arch/x86/kvm/x86.c). The rules are
//! in `x86/pvclock.rs`; the vCPU side (PV MSRs, hypercalls, the per-vCPU time information and
//! steal time) is the VMX backend's `vmx/vcpu/pv.rs`.
//!
//! Every change to the VM's clock bumps [`Vm::clock_gen`]; each vCPU compares it with the value
//! it last wrote its `pvclock_vcpu_time_info` for before entering its guest (upstream:
//! `KVM_REQ_CLOCK_UPDATE` made to every vCPU by `kvm_end_pvclock_update`).

use crate::ffi::bindings as b;
use crate::ffi::uapi::{read_user, write_user};
use crate::vm::Vm;
use crate::x86::pvclock::{self, HostClock, VmClock};
use core::sync::atomic::Ordering;
use kernel::prelude::*;

// The pure file restates uapi's constants; they must agree.
const _: () = {
    assert!(pvclock::MSR_WALL_CLOCK == b::MSR_KVM_WALL_CLOCK);
    assert!(pvclock::MSR_SYSTEM_TIME == b::MSR_KVM_SYSTEM_TIME);
    assert!(pvclock::MSR_WALL_CLOCK_NEW == b::MSR_KVM_WALL_CLOCK_NEW);
    assert!(pvclock::MSR_SYSTEM_TIME_NEW == b::MSR_KVM_SYSTEM_TIME_NEW);
    assert!(pvclock::MSR_ASYNC_PF_EN == b::MSR_KVM_ASYNC_PF_EN);
    assert!(pvclock::MSR_STEAL_TIME == b::MSR_KVM_STEAL_TIME);
    assert!(pvclock::MSR_PV_EOI_EN == b::MSR_KVM_PV_EOI_EN);
    assert!(pvclock::MSR_POLL_CONTROL == b::MSR_KVM_POLL_CONTROL);
    assert!(pvclock::MSR_ASYNC_PF_INT == b::MSR_KVM_ASYNC_PF_INT);
    assert!(pvclock::MSR_ASYNC_PF_ACK == b::MSR_KVM_ASYNC_PF_ACK);
    assert!(pvclock::MSR_ENABLED == b::KVM_MSR_ENABLED as u64);
    assert!(pvclock::STEAL_RESERVED_MASK == b::KVM_STEAL_RESERVED_MASK as u64);
    assert!(pvclock::ASYNC_PF_ENABLED == b::KVM_ASYNC_PF_ENABLED as u64);
    assert!(pvclock::ASYNC_PF_DELIVERY_AS_PF_VMEXIT == b::KVM_ASYNC_PF_DELIVERY_AS_PF_VMEXIT as u64);
    assert!(pvclock::ASYNC_PF_DELIVERY_AS_INT == b::KVM_ASYNC_PF_DELIVERY_AS_INT as u64);
    assert!(pvclock::CPUID_SIGNATURE == b::KVM_CPUID_SIGNATURE);
    assert!(pvclock::CPUID_FEATURES == b::KVM_CPUID_FEATURES);
    assert!(pvclock::feature::CLOCKSOURCE == b::KVM_FEATURE_CLOCKSOURCE);
    assert!(pvclock::feature::NOP_IO_DELAY == b::KVM_FEATURE_NOP_IO_DELAY);
    assert!(pvclock::feature::CLOCKSOURCE2 == b::KVM_FEATURE_CLOCKSOURCE2);
    assert!(pvclock::feature::ASYNC_PF == b::KVM_FEATURE_ASYNC_PF);
    assert!(pvclock::feature::STEAL_TIME == b::KVM_FEATURE_STEAL_TIME);
    assert!(pvclock::feature::PV_EOI == b::KVM_FEATURE_PV_EOI);
    assert!(pvclock::feature::PV_UNHALT == b::KVM_FEATURE_PV_UNHALT);
    assert!(pvclock::feature::PV_TLB_FLUSH == b::KVM_FEATURE_PV_TLB_FLUSH);
    assert!(pvclock::feature::ASYNC_PF_VMEXIT == b::KVM_FEATURE_ASYNC_PF_VMEXIT);
    assert!(pvclock::feature::PV_SEND_IPI == b::KVM_FEATURE_PV_SEND_IPI);
    assert!(pvclock::feature::POLL_CONTROL == b::KVM_FEATURE_POLL_CONTROL);
    assert!(pvclock::feature::PV_SCHED_YIELD == b::KVM_FEATURE_PV_SCHED_YIELD);
    assert!(pvclock::feature::ASYNC_PF_INT == b::KVM_FEATURE_ASYNC_PF_INT);
    assert!(pvclock::feature::CLOCKSOURCE_STABLE_BIT == b::KVM_FEATURE_CLOCKSOURCE_STABLE_BIT);
    assert!(pvclock::hc::VAPIC_POLL_IRQ == b::KVM_HC_VAPIC_POLL_IRQ as u64);
    assert!(pvclock::hc::KICK_CPU == b::KVM_HC_KICK_CPU as u64);
    assert!(pvclock::hc::CLOCK_PAIRING == b::KVM_HC_CLOCK_PAIRING as u64);
    assert!(pvclock::hc::SEND_IPI == b::KVM_HC_SEND_IPI as u64);
    assert!(pvclock::hc::SCHED_YIELD == b::KVM_HC_SCHED_YIELD as u64);
    assert!(pvclock::hc::MAP_GPA_RANGE == b::KVM_HC_MAP_GPA_RANGE as u64);
    assert!(pvclock::KVM_ENOSYS == b::KVM_ENOSYS as i64);
    assert!(pvclock::KVM_EPERM == b::KVM_EPERM as i64);
    assert!(pvclock::KVM_EINVAL == b::KVM_EINVAL as i64);
    assert!(pvclock::KVM_EFAULT == b::KVM_EFAULT as i64);
    assert!(pvclock::KVM_EOPNOTSUPP == b::KVM_EOPNOTSUPP as i64);
    assert!(pvclock::CLOCK_PAIRING_WALLCLOCK == b::KVM_CLOCK_PAIRING_WALLCLOCK as u64);
    assert!(pvclock::EXIT_HYPERCALL_LONG_MODE == b::KVM_EXIT_HYPERCALL_LONG_MODE);
    assert!(pvclock::CLOCK_TSC_STABLE == b::KVM_CLOCK_TSC_STABLE);
    assert!(pvclock::CLOCK_REALTIME == b::KVM_CLOCK_REALTIME);
    assert!(pvclock::CLOCK_HOST_TSC == b::KVM_CLOCK_HOST_TSC);
    assert!(pvclock::QUIRK_FIX_HYPERCALL_INSN == b::KVM_X86_QUIRK_FIX_HYPERCALL_INSN as u64);
    assert!(pvclock::DISABLE_EXITS_MWAIT == b::KVM_X86_DISABLE_EXITS_MWAIT as u64);
    assert!(pvclock::DISABLE_EXITS_HLT == b::KVM_X86_DISABLE_EXITS_HLT as u64);
    assert!(pvclock::DISABLE_EXITS_PAUSE == b::KVM_X86_DISABLE_EXITS_PAUSE as u64);
    assert!(pvclock::DISABLE_EXITS_CSTATE == b::KVM_X86_DISABLE_EXITS_CSTATE as u64);
    assert!(pvclock::DISABLE_EXITS_VALID == b::KVM_X86_DISABLE_VALID_EXITS as u64);
    assert!(core::mem::size_of::<b::pvclock_vcpu_time_info>() == pvclock::TIME_INFO_SIZE);
    assert!(core::mem::size_of::<b::pvclock_wall_clock>() == pvclock::WALL_CLOCK_SIZE);
    assert!(core::mem::size_of::<b::kvm_steal_time>() == pvclock::STEAL_TIME_SIZE);
    assert!(core::mem::size_of::<b::kvm_clock_pairing>() == pvclock::CLOCK_PAIRING_SIZE);
};

/// The host's clocks, read together (see `rkvm_clock_read`).
pub(crate) fn host_clock() -> HostClock {
    let (mut tsc, mut base_ns, mut real_ns) = (0, 0, 0);
    // SAFETY: the pointers are to locals; the helper only reads the clocks.
    let tsc_based = unsafe { b::rkvm_clock_read(&mut tsc, &mut base_ns, &mut real_ns) };
    HostClock { tsc, base_ns, real_ns, tsc_based }
}

/// Whether the host accounts run delay, which steal time is made of (upstream `sched_info_on`).
pub(crate) fn sched_info_on() -> bool {
    // SAFETY: reads a kernel configuration fact.
    unsafe { b::rkvm_sched_info_on() }
}

/// The current task's run delay in ns (`current->sched_info.run_delay`).
pub(crate) fn run_delay() -> u64 {
    // SAFETY: reads the current task's own accounting.
    unsafe { b::rkvm_current_run_delay() }
}

/// Gives up the CPU for a moment (the `KVM_HC_SCHED_YIELD` hint).
pub(crate) fn yield_now() {
    // SAFETY: called from a vCPU ioctl with no spinlock held and preemption enabled.
    unsafe { b::rkvm_yield() }
}

/// The PV feature bits `KVM_GET_SUPPORTED_CPUID` offers in 0x40000001 EAX.
pub(crate) fn supported_features() -> u32 {
    pvclock::supported_features(sched_info_on())
}

impl Vm {
    /// A new VM's clock, kvmclock 0 now.
    pub(crate) fn new_clock() -> VmClock {
        VmClock::new(&host_clock(), u64::from(crate::ffi::tsc_khz()))
    }

    /// Takes a new master clock, or drops it, and makes every vCPU rewrite its time
    /// information (upstream `kvm_update_masterclock` / `pvclock_update_vm_gtod_copy` followed
    /// by `kvm_end_pvclock_update`). `matched`: every vCPU's TSC is in one generation. May be
    /// called with preemption off.
    pub(crate) fn update_master_clock(&self, matched: bool) {
        let now = host_clock();
        self.clock.lock().update_master(&now, !crate::ffi::tsc_unstable(), matched);
        self.clock_gen.fetch_add(1, Ordering::Release);
    }

    /// `KVM_GET_CLOCK` (upstream `kvm_vm_ioctl_get_clock`): the input is not read.
    pub(crate) fn get_clock(&self, arg: usize) -> Result {
        let now = host_clock();
        let (clock, flags, realtime, host_tsc) = self.clock.lock().get_clock(&now);
        let data = b::kvm_clock_data { clock, flags, realtime, host_tsc, ..Default::default() };
        write_user(arg, &data)
    }

    /// `KVM_SET_CLOCK` (upstream `kvm_vm_ioctl_set_clock`): flags other than
    /// `KVM_CLOCK_VALID_FLAGS` are `EINVAL` (those of `KVM_GET_CLOCK`'s output are accepted,
    /// only `KVM_CLOCK_REALTIME` is used). The master clock is taken again first.
    pub(crate) fn set_clock(&self, arg: usize) -> Result {
        let data: b::kvm_clock_data = read_user(arg)?;
        if data.flags & !pvclock::CLOCK_VALID_FLAGS != 0 {
            return Err(EINVAL);
        }
        let matched = self.tsc_matched();
        let now = host_clock();
        {
            let mut c = self.clock.lock();
            c.update_master(&now, !crate::ffi::tsc_unstable(), matched);
            c.set_clock(&now, data.clock, data.flags, data.realtime);
        }
        self.clock_gen.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// A write of MSR_KVM_WALL_CLOCK(_NEW) (upstream `kvm_write_wall_clock`): records the
    /// value VM-wide and writes `struct pvclock_wall_clock` at its address: the host's realtime
    /// at kvmclock 0, under the version protocol. A failed guest write is ignored, as upstream.
    pub(crate) fn write_wall_clock(&self, gpa: u64) {
        let now = host_clock();
        let epoch = {
            let mut c = self.clock.lock();
            c.wall_clock = gpa;
            c.wall_clock_epoch(&now)
        };
        let mut v = [0u8; 4];
        if self.read_guest(gpa, &mut v).is_err() {
            return;
        }
        let (odd, even) = pvclock::update_versions(u32::from_le_bytes(v));
        if self.write_guest(gpa, &odd.to_le_bytes()).is_err() {
            return;
        }
        let _ = self.write_guest(gpa, &pvclock::wall_clock_bytes(odd, epoch));
        let _ = self.write_guest(gpa, &even.to_le_bytes());
    }

    /// Records whether vCPU 0's guest enabled kvmclock through the old MSR (upstream
    /// `kvm_write_system_time`: `boot_vcpu_runs_old_kvmclock`, which rules out the master
    /// clock). Returns whether that changed.
    pub(crate) fn set_old_kvmclock(&self, old: bool) -> bool {
        let mut c = self.clock.lock();
        let changed = c.old_kvmclock != old;
        c.old_kvmclock = old;
        changed
    }
}

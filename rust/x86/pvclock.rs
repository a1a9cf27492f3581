//! KVM's paravirtual interface, the pure part: the hypervisor CPUID leaves, the PV MSRs and
//! their rules, the guest-visible structures (`struct pvclock_vcpu_time_info`,
//! `struct pvclock_wall_clock`, `struct kvm_steal_time`, `struct kvm_clock_pairing`) as byte
//! images, the kvmclock arithmetic, and which hypercall does what (upstream:
//! `kvm_get_time_scale`, `__pvclock_read_cycles`, `kvm_guest_time_update`,
//! `kvm_write_wall_clock`, `record_steal_time`, `__kvm_emulate_hypercall` in arch/x86/kvm/x86.c;
//! `guest_pv_has`, `kvm_update_pv_runtime` in cpuid.c/cpuid.h).
//!
//! No kernel dependency: the host TSC, the clocks and guest memory come in as arguments, so host
//! `cargo test` checks the rules. The constants are uapi's (`asm/kvm_para.h`,
//! `linux/kvm_para.h`, `asm/pvclock-abi.h`), checked against bindgen's at build time.

/// `MSR_KVM_WALL_CLOCK` / `MSR_KVM_SYSTEM_TIME`: the first kvmclock MSRs
/// (`KVM_FEATURE_CLOCKSOURCE`).
pub const MSR_WALL_CLOCK: u32 = 0x11;
pub const MSR_SYSTEM_TIME: u32 = 0x12;
/// The `KVM_FEATURE_CLOCKSOURCE2` pair and the other PV MSRs (`0x4b564dxx`, "KVM\0").
pub const MSR_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
pub const MSR_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
pub const MSR_ASYNC_PF_EN: u32 = 0x4b56_4d02;
pub const MSR_STEAL_TIME: u32 = 0x4b56_4d03;
pub const MSR_PV_EOI_EN: u32 = 0x4b56_4d04;
pub const MSR_POLL_CONTROL: u32 = 0x4b56_4d05;
pub const MSR_ASYNC_PF_INT: u32 = 0x4b56_4d06;
pub const MSR_ASYNC_PF_ACK: u32 = 0x4b56_4d07;

/// The PV MSRs in upstream's `emulated_msrs_all` order: what `KVM_GET_MSR_INDEX_LIST` adds.
pub const MSRS: [u32; 10] = [
    MSR_WALL_CLOCK,
    MSR_SYSTEM_TIME,
    MSR_WALL_CLOCK_NEW,
    MSR_SYSTEM_TIME_NEW,
    MSR_ASYNC_PF_EN,
    MSR_STEAL_TIME,
    MSR_PV_EOI_EN,
    MSR_ASYNC_PF_INT,
    MSR_ASYNC_PF_ACK,
    MSR_POLL_CONTROL,
];

/// Whether `msr` is one of KVM's PV MSRs.
pub fn is_pv_msr(msr: u32) -> bool {
    MSRS.contains(&msr)
}

/// `KVM_MSR_ENABLED`: bit 0 of the system-time, steal-time and PV-EOI MSRs.
pub const MSR_ENABLED: u64 = 1;
/// `KVM_STEAL_RESERVED_MASK`: bits 5:1 of MSR_KVM_STEAL_TIME (the structure is 64-byte aligned).
pub const STEAL_RESERVED_MASK: u64 = 0x3e;
/// MSR_KVM_ASYNC_PF_EN bits: enabled, send always, delivery as #PF VM exit, as interrupt.
pub const ASYNC_PF_ENABLED: u64 = 1;
pub const ASYNC_PF_DELIVERY_AS_PF_VMEXIT: u64 = 1 << 2;
pub const ASYNC_PF_DELIVERY_AS_INT: u64 = 1 << 3;

/// `KVM_CPUID_SIGNATURE` / `KVM_CPUID_FEATURES`.
pub const CPUID_SIGNATURE: u32 = 0x4000_0000;
pub const CPUID_FEATURES: u32 = 0x4000_0001;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
pub const SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// `KVM_FEATURE_*` bit numbers (CPUID 0x40000001 EAX).
pub mod feature {
    pub const CLOCKSOURCE: u32 = 0;
    pub const NOP_IO_DELAY: u32 = 1;
    pub const MMU_OP: u32 = 2;
    pub const CLOCKSOURCE2: u32 = 3;
    pub const ASYNC_PF: u32 = 4;
    pub const STEAL_TIME: u32 = 5;
    pub const PV_EOI: u32 = 6;
    pub const PV_UNHALT: u32 = 7;
    pub const PV_TLB_FLUSH: u32 = 9;
    pub const ASYNC_PF_VMEXIT: u32 = 10;
    pub const PV_SEND_IPI: u32 = 11;
    pub const POLL_CONTROL: u32 = 12;
    pub const PV_SCHED_YIELD: u32 = 13;
    pub const ASYNC_PF_INT: u32 = 14;
    pub const MSI_EXT_DEST_ID: u32 = 15;
    pub const HC_MAP_GPA_RANGE: u32 = 16;
    pub const MIGRATION_CONTROL: u32 = 17;
    pub const CLOCKSOURCE_STABLE_BIT: u32 = 24;
}

/// The PV features rkvm implements, for CPUID 0x40000001 EAX (upstream `__do_cpuid_func`'s
/// `KVM_CPUID_FEATURES` case, less what rkvm does not do): kvmclock in both MSR sets with the
/// TSC-stable bit, no I/O delay needed, MSR_KVM_POLL_CONTROL (rkvm never polls before halting, so
/// "polling off" is always honoured), and steal time when the host kernel accounts run delay
/// (`sched_info_on()`). Left out: async page faults (rkvm never sends one), PV EOI, PV unhalt
/// (`KVM_HC_KICK_CPU`), PV TLB flush (needs the preempted flag kept), PV send-IPI and PV
/// directed yield.
pub fn supported_features(steal_time: bool) -> u32 {
    use feature::*;
    let mut f = 1 << CLOCKSOURCE | 1 << NOP_IO_DELAY | 1 << CLOCKSOURCE2 | 1 << CLOCKSOURCE_STABLE_BIT | 1 << POLL_CONTROL;
    if steal_time {
        f |= 1 << STEAL_TIME;
    }
    f
}

/// Where the KVM leaves are in a guest's CPUID table (upstream `__kvm_get_hypervisor_cpuid`):
/// the first base 0x40000000, 0x40000100, ..., 0x4000ff00 whose entry carries KVM's signature.
/// `find(function)` looks an entry up (index not significant).
pub fn kvm_cpuid_base(find: impl Fn(u32) -> Option<[u32; 4]>) -> Option<u32> {
    (0x4000_0000u32..0x4001_0000).step_by(0x100).find(|&base| find(base).is_some_and(|r| r[1..] == SIGNATURE))
}

/// The PV feature bits a vCPU's CPUID gives it (upstream `kvm_update_pv_runtime`):
/// `Some(EAX of base + 1)`, or `None` when there is no KVM base or no features leaf (upstream
/// then keeps the previous value).
pub fn pv_features(find: impl Fn(u32) -> Option<[u32; 4]>) -> Option<u32> {
    let base = kvm_cpuid_base(&find)?;
    find(base | 1).map(|r| r[0])
}

/// The vCPU's PV CPUID state (upstream `vcpu->arch.pv_cpuid`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PvCpuid {
    /// `KVM_CAP_ENFORCE_PV_FEATURE_CPUID` is on.
    pub enforce: bool,
    /// CPUID 0x40000001 EAX as last set.
    pub features: u32,
}

impl PvCpuid {
    /// Whether the guest may use feature `bit` (upstream `guest_pv_has`): always without
    /// enforcement.
    pub fn has(&self, bit: u32) -> bool {
        !self.enforce || self.features & (1 << bit) != 0
    }
}

/// A TSC-to-nanoseconds scale: `ns = ((tsc << shift) * mul) >> 32` (`shift` negative: right).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scale {
    pub mul: u32,
    pub shift: i8,
}

/// The scale from `base_hz` ticks to `scaled_hz` (upstream `kvm_get_time_scale`: the largest
/// 32-bit fraction with a power-of-two shift). `base_hz` 0 gives the zero scale.
pub fn time_scale(scaled_hz: u64, base_hz: u64) -> Scale {
    const HIGH: u64 = 0xffff_ffff_0000_0000;
    if base_hz == 0 || scaled_hz == 0 {
        return Scale::default();
    }
    let mut tps64 = base_hz;
    let mut scaled64 = scaled_hz;
    let mut shift: i32 = 0;
    while tps64 > scaled64.saturating_mul(2) || tps64 & HIGH != 0 {
        tps64 >>= 1;
        shift -= 1;
    }
    let mut tps32 = tps64 as u32;
    while u64::from(tps32) <= scaled64 || scaled64 & HIGH != 0 {
        if scaled64 & HIGH != 0 || tps32 & 0x8000_0000 != 0 {
            scaled64 >>= 1;
        } else {
            tps32 <<= 1;
        }
        shift += 1;
    }
    // `div_frac`: scaled64 < tps32 here, so the quotient fits in 32 bits.
    let mul = ((scaled64 << 32) / u64::from(tps32).max(1)) as u32;
    Scale { mul, shift: shift as i8 }
}

/// `pvclock_scale_delta`: `delta` ticks in the scale's unit.
pub fn scale_delta(delta: u64, s: Scale) -> u64 {
    let d = if s.shift < 0 { delta >> (-i32::from(s.shift)).min(63) } else { delta << i32::from(s.shift).min(63) };
    ((u128::from(d) * u128::from(s.mul)) >> 32) as u64
}

/// `PVCLOCK_TSC_STABLE_BIT` and `PVCLOCK_GUEST_STOPPED` of `pvclock_vcpu_time_info.flags`.
pub const PVCLOCK_TSC_STABLE_BIT: u8 = 1;
pub const PVCLOCK_GUEST_STOPPED: u8 = 2;

/// `struct pvclock_vcpu_time_info` (32 bytes): what a guest reads to turn its TSC into
/// kvmclock nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeInfo {
    pub version: u32,
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub scale: Scale,
    pub flags: u8,
}

/// Size of `struct pvclock_vcpu_time_info`.
pub const TIME_INFO_SIZE: usize = 32;

impl TimeInfo {
    /// The structure's bytes: version, pad0, tsc_timestamp, system_time, tsc_to_system_mul,
    /// tsc_shift, flags, pad[2].
    pub fn to_bytes(&self) -> [u8; TIME_INFO_SIZE] {
        let mut b = [0u8; TIME_INFO_SIZE];
        b[0..4].copy_from_slice(&self.version.to_le_bytes());
        b[8..16].copy_from_slice(&self.tsc_timestamp.to_le_bytes());
        b[16..24].copy_from_slice(&self.system_time.to_le_bytes());
        b[24..28].copy_from_slice(&self.scale.mul.to_le_bytes());
        b[28] = self.scale.shift as u8;
        b[29] = self.flags;
        b
    }

    /// Parses the structure's bytes.
    pub fn from_bytes(b: &[u8; TIME_INFO_SIZE]) -> TimeInfo {
        let u64_at = |o: usize| u64::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3], b[o + 4], b[o + 5], b[o + 6], b[o + 7]]);
        TimeInfo {
            version: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            tsc_timestamp: u64_at(8),
            system_time: u64_at(16),
            scale: Scale { mul: u32::from_le_bytes([b[24], b[25], b[26], b[27]]), shift: b[28] as i8 },
            flags: b[29],
        }
    }

    /// The kvmclock at guest TSC `tsc` (upstream `__pvclock_read_cycles`, as the guest computes
    /// it).
    pub fn read(&self, tsc: u64) -> u64 {
        self.system_time.wrapping_add(scale_delta(tsc.wrapping_sub(self.tsc_timestamp), self.scale))
    }
}

/// The versions of a seqcount-like update of a guest structure (upstream
/// `kvm_setup_guest_pvclock` and `record_steal_time`): from the version the guest memory holds,
/// the odd one written before the data and the even one written after. An odd value found there
/// (junk left by the guest) is first made even.
pub fn update_versions(old: u32) -> (u32, u32) {
    let odd = old.wrapping_add(1) | 1;
    (odd, odd.wrapping_add(1))
}

/// One reading of the host's clocks, all at the same instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostClock {
    /// The host TSC.
    pub tsc: u64,
    /// The kvmclock base: nanoseconds since host boot at the raw clock's rate (upstream
    /// `get_kvmclock_base_ns`).
    pub base_ns: u64,
    /// CLOCK_REALTIME in nanoseconds.
    pub real_ns: u64,
    /// The host clocksource is the TSC, so `tsc` and the clocks were read together.
    pub tsc_based: bool,
}

/// `KVM_CLOCK_TSC_STABLE`, `KVM_CLOCK_REALTIME`, `KVM_CLOCK_HOST_TSC` (`struct kvm_clock_data`
/// flags); `KVM_CLOCK_VALID_FLAGS` is all three.
pub const CLOCK_TSC_STABLE: u32 = 2;
pub const CLOCK_REALTIME: u32 = 1 << 2;
pub const CLOCK_HOST_TSC: u32 = 1 << 3;
pub const CLOCK_VALID_FLAGS: u32 = CLOCK_TSC_STABLE | CLOCK_REALTIME | CLOCK_HOST_TSC;

/// The VM's "master clock" (upstream `ka->use_master_clock`, `master_cycle_now`,
/// `master_kernel_ns`): one host (TSC, time) pair every vCPU's kvmclock is computed from, so that
/// all vCPUs read the same clock and the guest may trust it across CPUs (the TSC-stable bit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Master {
    pub tsc: u64,
    pub base_ns: u64,
}

/// The VM-wide kvmclock state (upstream: `kvm->arch.kvmclock_offset`, the master clock fields,
/// `wall_clock`, `boot_vcpu_runs_old_kvmclock`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmClock {
    /// kvmclock = base_ns + offset (two's complement).
    pub offset: u64,
    /// The master clock, when in use.
    pub master: Option<Master>,
    /// The last value written to MSR_KVM_WALL_CLOCK(_NEW) (VM-wide, as upstream).
    pub wall_clock: u64,
    /// vCPU 0 enabled kvmclock through the old MSR (0x12), which predates the stable bit.
    pub old_kvmclock: bool,
    /// The TSC rate in kHz (no TSC scaling: the host's).
    pub khz: u64,
}

impl VmClock {
    /// A new VM's clock: kvmclock starts at 0 now (upstream `kvm_arch_init_vm`:
    /// `kvmclock_offset = -get_kvmclock_base_ns()`).
    pub fn new(now: &HostClock, khz: u64) -> VmClock {
        VmClock { offset: now.base_ns.wrapping_neg(), khz, ..VmClock::default() }
    }

    /// Whether the master clock can be used (upstream `pvclock_update_vm_gtod_copy`): the host
    /// clocksource is the TSC, the TSC is stable, every vCPU's TSC was matched, and vCPU 0 does
    /// not use the old kvmclock MSR.
    pub fn master_usable(&self, now: &HostClock, tsc_stable: bool, vcpus_matched: bool) -> bool {
        now.tsc_based && tsc_stable && vcpus_matched && !self.old_kvmclock && self.khz != 0
    }

    /// Takes a new master clock from `now` if it can be used, else drops it (upstream
    /// `pvclock_update_vm_gtod_copy`).
    pub fn update_master(&mut self, now: &HostClock, tsc_stable: bool, vcpus_matched: bool) {
        self.master = self.master_usable(now, tsc_stable, vcpus_matched).then_some(Master { tsc: now.tsc, base_ns: now.base_ns });
    }

    /// The host-side time information of a vCPU whose TSC is the host's plus `tsc_offset`
    /// (upstream `kvm_guest_time_update`): the master clock's pair with the stable bit, or the
    /// pair read `now`. The version is left to the writer.
    pub fn time_info(&self, now: &HostClock, tsc_offset: u64) -> TimeInfo {
        let (tsc, base, flags) = match self.master {
            Some(m) => (m.tsc, m.base_ns, PVCLOCK_TSC_STABLE_BIT),
            None => (now.tsc, now.base_ns, 0),
        };
        TimeInfo {
            version: 0,
            tsc_timestamp: tsc.wrapping_add(tsc_offset),
            system_time: base.wrapping_add(self.offset),
            scale: time_scale(1_000_000_000, self.khz.saturating_mul(1000)),
            flags,
        }
    }

    /// `KVM_GET_CLOCK` (upstream `__get_kvmclock`): with the master clock, the kvmclock at the
    /// host TSC `now.tsc` computed as the guests compute it, with the TSC-stable flag, and the
    /// realtime and host TSC of the same instant when the clocksource gave them together;
    /// without it, base + offset. Returns (clock, flags, realtime, host_tsc).
    pub fn get_clock(&self, now: &HostClock) -> (u64, u32, u64, u64) {
        match self.master {
            Some(_) => {
                let info = self.time_info(now, 0);
                let mut flags = CLOCK_TSC_STABLE;
                let (real, host_tsc) = if now.tsc_based {
                    flags |= CLOCK_REALTIME | CLOCK_HOST_TSC;
                    (now.real_ns, now.tsc)
                } else {
                    (0, now.tsc)
                };
                (info.read(now.tsc), flags, real, host_tsc)
            }
            None => (now.base_ns.wrapping_add(self.offset), 0, 0, 0),
        }
    }

    /// `KVM_SET_CLOCK` (upstream `kvm_vm_ioctl_set_clock`), after the master clock was updated
    /// from `now`: the kvmclock becomes `clock` now; with `KVM_CLOCK_REALTIME`, plus the time
    /// since `realtime` if that is in the past (the clock never steps back for it). Unknown
    /// flags are the caller's to refuse.
    pub fn set_clock(&mut self, now: &HostClock, mut clock: u64, flags: u32, realtime: u64) {
        if flags & CLOCK_REALTIME != 0 && now.real_ns > realtime {
            clock = clock.wrapping_add(now.real_ns - realtime);
        }
        let base = self.master.map_or(now.base_ns, |m| m.base_ns);
        self.offset = clock.wrapping_sub(base);
    }

    /// The kvmclock now, as a guest on the host TSC would read it.
    pub fn now(&self, now: &HostClock) -> u64 {
        self.get_clock(now).0
    }

    /// The wall-clock epoch (upstream `kvm_get_wall_clock_epoch`): realtime minus kvmclock,
    /// in nanoseconds.
    pub fn wall_clock_epoch(&self, now: &HostClock) -> u64 {
        now.real_ns.wrapping_sub(self.now(now))
    }
}

/// Size of `struct pvclock_wall_clock` (version, sec, nsec).
pub const WALL_CLOCK_SIZE: usize = 12;

/// The wall clock a guest reads (upstream `kvm_write_wall_clock`): `epoch_ns` split into
/// seconds (truncated to 32 bits, as the structure has) and nanoseconds, with `version`.
pub fn wall_clock_bytes(version: u32, epoch_ns: u64) -> [u8; WALL_CLOCK_SIZE] {
    let mut b = [0u8; WALL_CLOCK_SIZE];
    b[0..4].copy_from_slice(&version.to_le_bytes());
    b[4..8].copy_from_slice(&((epoch_ns / 1_000_000_000) as u32).to_le_bytes());
    b[8..12].copy_from_slice(&((epoch_ns % 1_000_000_000) as u32).to_le_bytes());
    b
}

/// Offsets in `struct kvm_steal_time` (64 bytes): steal (u64), version (u32), flags (u32),
/// preempted (u8).
pub const STEAL_OFF_STEAL: u64 = 0;
pub const STEAL_OFF_VERSION: u64 = 8;
pub const STEAL_OFF_PREEMPTED: u64 = 16;
pub const STEAL_TIME_SIZE: usize = 64;

/// Size of `struct kvm_clock_pairing`.
pub const CLOCK_PAIRING_SIZE: usize = 64;

/// `struct kvm_clock_pairing` (`KVM_HC_CLOCK_PAIRING`): realtime seconds and nanoseconds, and the
/// guest TSC of the same instant.
pub fn clock_pairing_bytes(real_ns: u64, guest_tsc: u64) -> [u8; CLOCK_PAIRING_SIZE] {
    let mut b = [0u8; CLOCK_PAIRING_SIZE];
    b[0..8].copy_from_slice(&(real_ns / 1_000_000_000).to_le_bytes());
    b[8..16].copy_from_slice(&(real_ns % 1_000_000_000).to_le_bytes());
    b[16..24].copy_from_slice(&guest_tsc.to_le_bytes());
    b
}

/// How a guest write of a PV MSR is judged (upstream `kvm_set_msr_common`'s PV cases).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrWrite {
    /// #GP (or, from userspace, a failed `KVM_SET_MSRS` entry).
    Refuse,
    /// Store the value; nothing else happens.
    Store,
    /// kvmclock: the wall clock structure is to be written at the value's address.
    WallClock,
    /// kvmclock: the vCPU's time information moves (`old`: MSR 0x12).
    SystemTime { old: bool },
    /// Steal time: stored, and recorded before the next entry if enabled.
    StealTime,
}

/// The feature bit that gates `msr` (upstream: the `guest_pv_has` checks).
pub fn msr_feature(msr: u32) -> u32 {
    use feature::*;
    match msr {
        MSR_WALL_CLOCK | MSR_SYSTEM_TIME => CLOCKSOURCE,
        MSR_WALL_CLOCK_NEW | MSR_SYSTEM_TIME_NEW => CLOCKSOURCE2,
        MSR_ASYNC_PF_EN => ASYNC_PF,
        MSR_ASYNC_PF_INT | MSR_ASYNC_PF_ACK => ASYNC_PF_INT,
        MSR_STEAL_TIME => STEAL_TIME,
        MSR_PV_EOI_EN => PV_EOI,
        _ => POLL_CONTROL,
    }
}

/// A write of PV MSR `msr` (guest or userspace alike, as upstream). `sched_info`: the host
/// accounts run delay; `lapic`: the vCPU has an in-kernel LAPIC.
pub fn msr_write(pv: &PvCpuid, msr: u32, v: u64, sched_info: bool, lapic: bool) -> MsrWrite {
    use MsrWrite::*;
    if !pv.has(msr_feature(msr)) {
        return Refuse;
    }
    match msr {
        MSR_WALL_CLOCK | MSR_WALL_CLOCK_NEW => WallClock,
        MSR_SYSTEM_TIME | MSR_SYSTEM_TIME_NEW => SystemTime { old: msr == MSR_SYSTEM_TIME },
        MSR_STEAL_TIME if !sched_info || v & STEAL_RESERVED_MASK != 0 => Refuse,
        MSR_STEAL_TIME => StealTime,
        // Upstream `kvm_pv_enable_async_pf`: bits 5:4 reserved; the delivery modes only with
        // their features; without an in-kernel LAPIC only 0. rkvm never sends an async page
        // fault (as a KVM that never finds a page missing), so enabling is stored and has no
        // other effect.
        MSR_ASYNC_PF_EN => {
            let bad = v & 0x30 != 0
                || (!pv.has(feature::ASYNC_PF_VMEXIT) && v & ASYNC_PF_DELIVERY_AS_PF_VMEXIT != 0)
                || (!pv.has(feature::ASYNC_PF_INT) && v & ASYNC_PF_DELIVERY_AS_INT != 0)
                || (!lapic && v != 0);
            if bad { Refuse } else { Store }
        }
        // Upstream `kvm_pv_enable_async_pf_int`: the vector in bits 7:0, nothing above.
        MSR_ASYNC_PF_INT if v >> 8 != 0 => Refuse,
        // Acknowledging a "page ready" notification: there never is one.
        MSR_ASYNC_PF_INT | MSR_ASYNC_PF_ACK => Store,
        // Upstream `kvm_lapic_set_pv_eoi`: a 4-byte aligned address (bit 1 must be 0).
        MSR_PV_EOI_EN if v & 2 != 0 || (!lapic && v & MSR_ENABLED != 0) => Refuse,
        MSR_PV_EOI_EN => Store,
        // Only the enable bit.
        _ if v >> 1 != 0 => Refuse,
        _ => Store,
    }
}

/// Hypercall numbers (`linux/kvm_para.h`).
pub mod hc {
    pub const VAPIC_POLL_IRQ: u64 = 1;
    pub const MMU_OP: u64 = 2;
    pub const FEATURES: u64 = 3;
    pub const PPC_MAP_MAGIC_PAGE: u64 = 4;
    pub const KICK_CPU: u64 = 5;
    pub const MIPS_GET_CLOCK_FREQ: u64 = 6;
    pub const MIPS_EXIT_VM: u64 = 7;
    pub const MIPS_CONSOLE_OUTPUT: u64 = 8;
    pub const CLOCK_PAIRING: u64 = 9;
    pub const SEND_IPI: u64 = 10;
    pub const SCHED_YIELD: u64 = 11;
    pub const MAP_GPA_RANGE: u64 = 12;
}

/// Hypercall return values (`KVM_ENOSYS`, `KVM_EPERM`, ...).
pub const KVM_ENOSYS: i64 = 1000;
pub const KVM_EFAULT: i64 = 14;
pub const KVM_EINVAL: i64 = 22;
pub const KVM_EPERM: i64 = 1;
pub const KVM_EOPNOTSUPP: i64 = 95;
/// `KVM_CLOCK_PAIRING_WALLCLOCK`.
pub const CLOCK_PAIRING_WALLCLOCK: u64 = 0;
/// `KVM_EXIT_HYPERCALL_LONG_MODE` (`kvm_run->hypercall.flags`).
pub const EXIT_HYPERCALL_LONG_MODE: u64 = 1;

/// What a hypercall does (upstream `__kvm_emulate_hypercall`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// RAX gets this value (already truncated for a 32-bit caller).
    Return(u64),
    /// `KVM_HC_SCHED_YIELD` to the vCPU with this APIC id: a hint, then RAX = 0.
    SchedYield(u64),
    /// `KVM_HC_CLOCK_PAIRING`: write `struct kvm_clock_pairing` at this guest-physical
    /// address; RAX = 0, or -KVM_EFAULT if it cannot be written.
    ClockPairing(u64),
    /// `KVM_HC_MAP_GPA_RANGE` goes to userspace (`KVM_EXIT_HYPERCALL`) with gpa, npages, attrs.
    ExitMapGpaRange([u64; 3]),
}

/// The return value `v` as the caller's RAX: a 32-bit caller gets the low half.
pub fn ret(v: i64, long: bool) -> u64 {
    if long { v as u64 } else { v as u64 & 0xffff_ffff }
}

/// Decodes a hypercall: `nr` and `a` (RBX, RCX, RDX, RSI) as the guest left them, `long`: the
/// caller is in 64-bit mode (else each is truncated to 32 bits), `cpl`: its privilege level;
/// `exit_mask`: the hypercalls `KVM_CAP_EXIT_HYPERCALL` sends to userspace.
/// Unimplemented hypercalls, and those whose PV feature the guest was not given, return
/// -KVM_ENOSYS, as upstream's for a feature it does not have: KICK_CPU (PV unhalt) and SEND_IPI
/// (PV send-IPI) are not implemented, so they always do.
pub fn hypercall(pv: &PvCpuid, nr: u64, a: [u64; 4], long: bool, cpl: u8, exit_mask: u64) -> Hypercall {
    let m = if long { u64::MAX } else { 0xffff_ffff };
    let (nr, a) = (nr & m, a.map(|x| x & m));
    if cpl != 0 {
        return Hypercall::Return(ret(-KVM_EPERM, long));
    }
    match nr {
        hc::VAPIC_POLL_IRQ => Hypercall::Return(0),
        hc::CLOCK_PAIRING if a[1] != CLOCK_PAIRING_WALLCLOCK => Hypercall::Return(ret(-KVM_EOPNOTSUPP, long)),
        hc::CLOCK_PAIRING => Hypercall::ClockPairing(a[0]),
        hc::SCHED_YIELD if pv.has(feature::PV_SCHED_YIELD) => Hypercall::SchedYield(a[0]),
        hc::MAP_GPA_RANGE if exit_mask & (1 << hc::MAP_GPA_RANGE) != 0 => {
            let (gpa, npages) = (a[0], a[1]);
            let gfn = gpa >> 12;
            if gpa & 0xfff != 0 || npages == 0 || gfn.checked_add(npages).is_none() {
                Hypercall::Return(ret(-KVM_EINVAL, long))
            } else {
                Hypercall::ExitMapGpaRange([a[0], a[1], a[2]])
            }
        }
        _ => Hypercall::Return(ret(-KVM_ENOSYS, long)),
    }
}

/// `KVM_X86_QUIRK_FIX_HYPERCALL_INSN`: with it (the default), a guest's VMMCALL on an Intel host
/// is rewritten into VMCALL and executed again; without it, the guest gets #UD.
pub const QUIRK_FIX_HYPERCALL_INSN: u64 = 1 << 5;
/// The quirks rkvm has and can disable (`KVM_CAP_DISABLE_QUIRKS2`): only that one.
pub const QUIRKS: u64 = QUIRK_FIX_HYPERCALL_INSN;

/// VMCALL (Intel's hypercall) and VMMCALL (AMD's).
pub const VMCALL: [u8; 3] = [0x0f, 0x01, 0xc1];
pub const VMMCALL: [u8; 3] = [0x0f, 0x01, 0xd9];

/// `KVM_X86_DISABLE_EXITS_*`: MWAIT, HLT, PAUSE, CSTATE. Upstream accepts all four when
/// enabling; rkvm honours HLT (the guest halts without an exit) and PAUSE (never intercepted),
/// and reports only those.
pub const DISABLE_EXITS_MWAIT: u64 = 1;
pub const DISABLE_EXITS_HLT: u64 = 2;
pub const DISABLE_EXITS_PAUSE: u64 = 4;
pub const DISABLE_EXITS_CSTATE: u64 = 8;
pub const DISABLE_EXITS_VALID: u64 = 0xf;
pub const DISABLE_EXITS_SUPPORTED: u64 = DISABLE_EXITS_HLT | DISABLE_EXITS_PAUSE;

/// The hypercalls `KVM_CAP_EXIT_HYPERCALL` may send to userspace (upstream
/// `KVM_EXIT_HYPERCALL_VALID_MASK`): `KVM_HC_MAP_GPA_RANGE`.
pub const EXIT_HYPERCALL_VALID: u64 = 1 << hc::MAP_GPA_RANGE;

/// The PV feature leaf's bits that follow VM state (upstream `kvm_update_cpuid_runtime`): with
/// `KVM_X86_DISABLE_EXITS_HLT` the guest's HLT does not exit, so `KVM_FEATURE_PV_UNHALT` (a
/// halted vCPU woken by `KVM_HC_KICK_CPU`) is cleared from the table.
pub fn update_runtime(entries: &mut [super::cpuid::Entry], hlt_in_guest: bool) {
    let find = |f: u32| entries.iter().find(|e| e.function == f).map(|e| e.regs);
    let Some(base) = kvm_cpuid_base(find) else { return };
    if hlt_in_guest {
        if let Some(e) = entries.iter_mut().find(|e| e.function == base | 1) {
            e.regs[0] &= !(1 << feature::PV_UNHALT);
        }
    }
}

//! KVM's paravirtual interface: the kvmclock arithmetic (upstream `kvm_get_time_scale`,
//! `__pvclock_read_cycles`, `kvm_guest_time_update`, `KVM_GET/SET_CLOCK`), the PV MSR rules with
//! and without `KVM_CAP_ENFORCE_PV_FEATURE_CPUID`, the hypercall decoding, the CPUID leaves and
//! the TSC matching the master clock depends on.

use crate::x86::pvclock::*;
use crate::x86::tsc::TscSync;

const SEC: u64 = 1_000_000_000;

fn host(tsc: u64, base_ns: u64, real_ns: u64) -> HostClock {
    HostClock { tsc, base_ns, real_ns, tsc_based: true }
}

#[test]
fn time_scale_converts_one_second_of_ticks_into_one_second() {
    for khz in [1u64, 999, 1_000_000, 1_000_001, 2_095_074, 2_400_000, 3_700_000, 5_000_000, 10_000_000] {
        let s = time_scale(SEC, khz * 1000);
        let ns = scale_delta(khz * 1000, s);
        // The fraction has 32 bits: at most a few ns per second off, always at or below.
        assert!(ns <= SEC && SEC - ns < 4, "{khz} kHz: {ns} ns for a second ({s:?})");
        // And a long interval (an hour) without overflow.
        let hour = scale_delta(khz * 1000 * 3600, s);
        assert!(hour <= 3600 * SEC && 3600 * SEC - hour < 3600 * 4, "{khz} kHz: {hour}");
    }
}

#[test]
fn time_scale_matches_known_values() {
    // 1 GHz: ns = ticks, as (tick << 1) * 2^31 >> 32.
    assert_eq!(time_scale(SEC, SEC), Scale { mul: 1 << 31, shift: 1 });
    // 2 GHz: half a nanosecond per tick.
    let s = time_scale(SEC, 2 * SEC);
    assert_eq!(scale_delta(2 * SEC, s), SEC);
    assert_eq!(s, Scale { mul: 1 << 31, shift: 0 });
    // A zero rate gives zero rather than looping.
    assert_eq!(time_scale(SEC, 0), Scale::default());
    assert_eq!(scale_delta(12345, Scale::default()), 0);
}

#[test]
fn scale_delta_with_a_negative_shift() {
    // 10 GHz needs a right shift.
    let s = time_scale(SEC, 10 * SEC);
    assert!(s.shift < 0);
    let ns = scale_delta(10 * SEC, s);
    assert!(ns <= SEC && SEC - ns < 4, "{ns}");
}

#[test]
fn time_info_bytes_round_trip_in_the_abi_layout() {
    let t = TimeInfo {
        version: 7,
        tsc_timestamp: 0x1122_3344_5566_7788,
        system_time: 0x99aa_bbcc_ddee_ff00,
        scale: Scale { mul: 0xdead_beef, shift: -3 },
        flags: PVCLOCK_TSC_STABLE_BIT,
    };
    let b = t.to_bytes();
    assert_eq!(&b[0..4], &7u32.to_le_bytes());
    assert_eq!(&b[4..8], &[0; 4], "pad0");
    assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(&b[24..28], &0xdead_beefu32.to_le_bytes());
    assert_eq!(b[28], 0xfd, "tsc_shift -3");
    assert_eq!(b[29], 1);
    assert_eq!(TimeInfo::from_bytes(&b), t);
}

#[test]
fn versions_go_odd_then_even_and_junk_is_skipped() {
    assert_eq!(update_versions(0), (1, 2));
    assert_eq!(update_versions(2), (3, 4));
    // The guest's memory held an odd value: still odd during, even after, and moved on.
    assert_eq!(update_versions(5), (7, 8));
    assert_eq!(update_versions(u32::MAX), (1, 2));
}

#[test]
fn a_new_vm_clock_starts_at_zero_and_counts_nanoseconds() {
    let khz = 2_000_000;
    let t0 = host(1_000_000, 50 * SEC, 1_700_000_000 * SEC);
    let mut c = VmClock::new(&t0, khz);
    c.update_master(&t0, true, true);
    assert!(c.master.is_some());
    assert_eq!(c.now(&t0), 0);
    // One second later by the TSC.
    let t1 = host(t0.tsc + 2 * SEC, t0.base_ns + SEC, t0.real_ns + SEC);
    assert_eq!(c.now(&t1), SEC);
    // A guest with its own TSC offset reads the same clock from its own TSC.
    let off = 0u64.wrapping_sub(123_456_789);
    let info = c.time_info(&t1, off);
    assert_eq!(info.flags, PVCLOCK_TSC_STABLE_BIT);
    assert_eq!(info.read(t1.tsc.wrapping_add(off)), SEC);
    assert_eq!(info.read(t1.tsc.wrapping_add(off) + 2000), SEC + 1000);
}

#[test]
fn without_a_master_clock_there_is_no_stable_bit_and_no_realtime() {
    let t0 = host(1_000_000, 50 * SEC, 1_700_000_000 * SEC);
    let mut c = VmClock::new(&t0, 2_000_000);
    // Not every vCPU matched.
    c.update_master(&t0, true, false);
    assert_eq!(c.master, None);
    let t1 = host(t0.tsc + 2 * SEC, t0.base_ns + SEC, t0.real_ns + SEC);
    assert_eq!(c.get_clock(&t1), (SEC, 0, 0, 0));
    let info = c.time_info(&t1, 0);
    assert_eq!(info.flags, 0);
    assert_eq!(info.tsc_timestamp, t1.tsc);
    assert_eq!(info.system_time, SEC);
    // A clocksource other than the TSC, an unstable TSC, the old MSR: no master clock either.
    let mut other = t0;
    other.tsc_based = false;
    c.update_master(&other, true, true);
    assert_eq!(c.master, None);
    c.update_master(&t0, false, true);
    assert_eq!(c.master, None);
    c.old_kvmclock = true;
    c.update_master(&t0, true, true);
    assert_eq!(c.master, None);
}

#[test]
fn get_clock_reports_realtime_and_host_tsc_of_the_same_instant() {
    let t0 = host(1_000_000, 50 * SEC, 1_700_000_000 * SEC);
    let mut c = VmClock::new(&t0, 2_000_000);
    c.update_master(&t0, true, true);
    let t1 = host(t0.tsc + 4 * SEC, t0.base_ns + 2 * SEC, t0.real_ns + 2 * SEC);
    let (clock, flags, real, tsc) = c.get_clock(&t1);
    assert_eq!(clock, 2 * SEC);
    assert_eq!(flags, CLOCK_TSC_STABLE | CLOCK_REALTIME | CLOCK_HOST_TSC);
    assert_eq!((real, tsc), (t1.real_ns, t1.tsc));
}

#[test]
fn set_clock_moves_the_clock_and_realtime_only_forwards() {
    let t0 = host(1_000_000, 50 * SEC, 1_700_000_000 * SEC);
    let mut c = VmClock::new(&t0, 2_000_000);
    c.update_master(&t0, true, true);
    c.set_clock(&t0, 180 * SEC, 0, 0);
    assert_eq!(c.now(&t0), 180 * SEC);
    // Realtime 180 s in the past: the clock is set 180 s further.
    c.set_clock(&t0, 0, CLOCK_REALTIME, t0.real_ns - 180 * SEC);
    assert_eq!(c.now(&t0), 180 * SEC);
    // Realtime in the future: not stepped back.
    c.set_clock(&t0, 0, CLOCK_REALTIME, t0.real_ns + 180 * SEC);
    assert_eq!(c.now(&t0), 0);
    // Without the flag, realtime is ignored.
    c.set_clock(&t0, 5, 0, 1);
    assert_eq!(c.now(&t0), 5);
    // The wall clock epoch is realtime minus kvmclock.
    assert_eq!(c.wall_clock_epoch(&t0), t0.real_ns - 5);
}

#[test]
fn wall_clock_and_clock_pairing_layouts() {
    let b = wall_clock_bytes(3, 1_700_000_000 * SEC + 42);
    assert_eq!(&b[0..4], &3u32.to_le_bytes());
    assert_eq!(&b[4..8], &1_700_000_000u32.to_le_bytes());
    assert_eq!(&b[8..12], &42u32.to_le_bytes());
    let p = clock_pairing_bytes(5 * SEC + 6, 0x77);
    assert_eq!(&p[0..8], &5u64.to_le_bytes());
    assert_eq!(&p[8..16], &6u64.to_le_bytes());
    assert_eq!(&p[16..24], &0x77u64.to_le_bytes());
    assert!(p[24..].iter().all(|&x| x == 0), "flags and padding zero");
}

#[test]
fn kvm_leaves_are_found_by_signature_at_any_base() {
    let table = |base: u32, eax: u32| move |f: u32| -> Option<[u32; 4]> {
        if f == base {
            Some([base + 1, SIGNATURE[0], SIGNATURE[1], SIGNATURE[2]])
        } else if f == base + 1 {
            Some([eax, 0, 0, 0])
        } else if f == 0x4000_0000 {
            Some([0x4000_0005, 0x7263_694d, 0, 0]) // another hypervisor's leaves first
        } else {
            None
        }
    };
    assert_eq!(kvm_cpuid_base(table(0x4000_0100, 9)), Some(0x4000_0100));
    assert_eq!(pv_features(table(0x4000_0100, 9)), Some(9));
    assert_eq!(pv_features(table(0x4000_0000, 0x1234)), Some(0x1234));
    assert_eq!(kvm_cpuid_base(|_| None), None);
    // A signature leaf without its features leaf.
    let sig_only = |f: u32| (f == 0x4000_0000).then_some([0x4000_0000, SIGNATURE[0], SIGNATURE[1], SIGNATURE[2]]);
    assert_eq!(pv_features(sig_only), None);
}

#[test]
fn supported_features_are_what_rkvm_implements() {
    use feature::*;
    let f = supported_features(true);
    for bit in [CLOCKSOURCE, CLOCKSOURCE2, CLOCKSOURCE_STABLE_BIT, NOP_IO_DELAY, POLL_CONTROL, STEAL_TIME] {
        assert!(f & (1 << bit) != 0, "bit {bit}");
    }
    for bit in [ASYNC_PF, ASYNC_PF_INT, PV_EOI, PV_UNHALT, PV_TLB_FLUSH, PV_SEND_IPI, PV_SCHED_YIELD, ASYNC_PF_VMEXIT] {
        assert!(f & (1 << bit) == 0, "bit {bit}");
    }
    assert_eq!(supported_features(false) & (1 << STEAL_TIME), 0);
}

#[test]
fn pv_msrs_need_their_feature_only_when_enforced() {
    let off = PvCpuid { enforce: false, features: 0 };
    let on = PvCpuid { enforce: true, features: 0 };
    let all = PvCpuid { enforce: true, features: u32::MAX };
    for msr in MSRS {
        assert!(is_pv_msr(msr));
        assert_eq!(msr_write(&on, msr, 0, true, true), MsrWrite::Refuse, "{msr:#x}");
        assert_ne!(msr_write(&off, msr, 0, true, true), MsrWrite::Refuse, "{msr:#x}");
        assert_ne!(msr_write(&all, msr, 0, true, true), MsrWrite::Refuse, "{msr:#x}");
    }
    assert!(!is_pv_msr(0x10));
    assert_eq!(msr_write(&off, MSR_SYSTEM_TIME, 0x1001, true, true), MsrWrite::SystemTime { old: true });
    assert_eq!(msr_write(&off, MSR_SYSTEM_TIME_NEW, 0x1001, true, true), MsrWrite::SystemTime { old: false });
    assert_eq!(msr_write(&off, MSR_WALL_CLOCK_NEW, 0x2000, true, true), MsrWrite::WallClock);
    // Only CLOCKSOURCE2 given: the old pair #GPs.
    let new_only = PvCpuid { enforce: true, features: 1 << feature::CLOCKSOURCE2 };
    assert_eq!(msr_write(&new_only, MSR_SYSTEM_TIME, 1, true, true), MsrWrite::Refuse);
    assert_eq!(msr_write(&new_only, MSR_SYSTEM_TIME_NEW, 1, true, true), MsrWrite::SystemTime { old: false });
}

#[test]
fn steal_time_async_pf_eoi_and_poll_control_values() {
    let pv = PvCpuid::default();
    assert_eq!(msr_write(&pv, MSR_STEAL_TIME, 0x4000_0001, true, true), MsrWrite::StealTime);
    assert_eq!(msr_write(&pv, MSR_STEAL_TIME, 0x4000_0000 | STEAL_RESERVED_MASK, true, true), MsrWrite::Refuse);
    assert_eq!(msr_write(&pv, MSR_STEAL_TIME, 0x4000_0001, false, true), MsrWrite::Refuse, "no run delay accounting");
    assert_eq!(msr_write(&pv, MSR_ASYNC_PF_EN, 0x5000_0001, true, true), MsrWrite::Store);
    assert_eq!(msr_write(&pv, MSR_ASYNC_PF_EN, 0x5000_0011, true, true), MsrWrite::Refuse, "reserved bit 4");
    assert_eq!(msr_write(&pv, MSR_ASYNC_PF_EN, 0x5000_0001, true, false), MsrWrite::Refuse, "no LAPIC");
    assert_eq!(msr_write(&pv, MSR_ASYNC_PF_EN, 0, true, false), MsrWrite::Store);
    let no_int = PvCpuid { enforce: true, features: 1 << feature::ASYNC_PF };
    assert_eq!(msr_write(&no_int, MSR_ASYNC_PF_EN, 0x5000_0009, true, true), MsrWrite::Refuse);
    assert_eq!(msr_write(&pv, MSR_ASYNC_PF_INT, 0x1ff, true, true), MsrWrite::Refuse);
    assert_eq!(msr_write(&pv, MSR_ASYNC_PF_INT, 0xec, true, true), MsrWrite::Store);
    assert_eq!(msr_write(&pv, MSR_PV_EOI_EN, 0x1002, true, true), MsrWrite::Refuse, "misaligned");
    assert_eq!(msr_write(&pv, MSR_PV_EOI_EN, 0x1005, true, true), MsrWrite::Store);
    assert_eq!(msr_write(&pv, MSR_POLL_CONTROL, 1, true, true), MsrWrite::Store);
    assert_eq!(msr_write(&pv, MSR_POLL_CONTROL, 2, true, true), MsrWrite::Refuse);
}

#[test]
fn hypercalls_decode_as_upstream() {
    let off = PvCpuid::default();
    let enforced = PvCpuid { enforce: true, features: 0 };
    let enosys = (-KVM_ENOSYS) as u64;
    for nr in [hc::KICK_CPU, hc::SEND_IPI, hc::SCHED_YIELD, hc::MAP_GPA_RANGE, 0, 99] {
        assert_eq!(hypercall(&enforced, nr, [0; 4], true, 0, 0), Hypercall::Return(enosys), "{nr}");
    }
    // Not implemented: no feature bit, ENOSYS even without enforcement.
    assert_eq!(hypercall(&off, hc::KICK_CPU, [0, 1, 0, 0], true, 0, 0), Hypercall::Return(enosys));
    assert_eq!(hypercall(&off, hc::SEND_IPI, [1, 0, 0, 0], true, 0, 0), Hypercall::Return(enosys));
    assert_eq!(hypercall(&off, hc::SCHED_YIELD, [3, 0, 0, 0], true, 0, 0), Hypercall::SchedYield(3));
    assert_eq!(hypercall(&off, hc::VAPIC_POLL_IRQ, [0; 4], true, 0, 0), Hypercall::Return(0));
    // A 32-bit caller: arguments and result truncated.
    assert_eq!(hypercall(&off, (1 << 32) | hc::SCHED_YIELD, [(1 << 40) | 2, 0, 0, 0], false, 0, 0), Hypercall::SchedYield(2));
    assert_eq!(hypercall(&off, 99, [0; 4], false, 0, 0), Hypercall::Return(enosys & 0xffff_ffff));
    // From user mode: -KVM_EPERM whatever the number.
    assert_eq!(hypercall(&off, hc::VAPIC_POLL_IRQ, [0; 4], true, 3, 0), Hypercall::Return((-KVM_EPERM) as u64));
    // Clock pairing: only the wall clock type.
    assert_eq!(hypercall(&off, hc::CLOCK_PAIRING, [0x1000, 0, 0, 0], true, 0, 0), Hypercall::ClockPairing(0x1000));
    assert_eq!(hypercall(&off, hc::CLOCK_PAIRING, [0x1000, 1, 0, 0], true, 0, 0), Hypercall::Return((-KVM_EOPNOTSUPP) as u64));
}

#[test]
fn map_gpa_range_exits_only_when_enabled_and_valid() {
    let pv = PvCpuid::default();
    let mask = 1 << hc::MAP_GPA_RANGE;
    assert_eq!(
        hypercall(&pv, hc::MAP_GPA_RANGE, [0x10_0000, 4, 0x10, 0], true, 0, mask),
        Hypercall::ExitMapGpaRange([0x10_0000, 4, 0x10])
    );
    let einval = Hypercall::Return((-KVM_EINVAL) as u64);
    assert_eq!(hypercall(&pv, hc::MAP_GPA_RANGE, [0x10_0001, 4, 0, 0], true, 0, mask), einval, "unaligned");
    assert_eq!(hypercall(&pv, hc::MAP_GPA_RANGE, [0x10_0000, 0, 0, 0], true, 0, mask), einval, "no pages");
    assert_eq!(hypercall(&pv, hc::MAP_GPA_RANGE, [0x10_0000, u64::MAX, 0, 0], true, 0, mask), einval, "wraps");
}

#[test]
fn tsc_matching_counts_each_vcpu_once() {
    let khz = 2_000_000;
    let mut s = TscSync::default();
    let (mut g0, mut g1) = (0, 0);
    s.synchronize_vcpu(&mut g0, None, 1000, 0, khz, false);
    assert!(s.vcpus_matched(), "one vCPU is matched with itself");
    let off1 = s.synchronize_vcpu(&mut g1, None, 5000, 10, khz, false);
    assert!(s.vcpus_matched());
    assert_eq!(s.nr_matched, 1);
    // Userspace restores vCPU 1's TSC: its first write is taken as is and starts a generation
    // vCPU 0 is not in.
    let v = 6000u64.wrapping_add(off1);
    s.synchronize_vcpu(&mut g1, Some(v), 6000, 20, khz, false);
    assert!(!s.vcpus_matched());
    // Then vCPU 0's, to the same value, twice: matched, and counted once.
    s.synchronize_vcpu(&mut g0, Some(v), 6000, 20, khz, false);
    s.synchronize_vcpu(&mut g0, Some(v), 6000, 20, khz, false);
    assert_eq!(s.nr_matched, 1);
    assert!(s.vcpus_matched());
    // A far-off value for vCPU 0: a new generation that vCPU 1 is not in.
    s.synchronize_vcpu(&mut g0, Some(1 << 50), 7000, 30, khz, false);
    assert!(!s.vcpus_matched());
    // KVM_VCPU_TSC_OFFSET with the same offset for vCPU 1: matched again.
    let cur = s.cur_offset;
    s.set_offset(&mut g1, cur, 8000, 40, khz);
    assert!(s.vcpus_matched());
    // A different offset starts a new generation.
    s.set_offset(&mut g1, cur.wrapping_add(1), 8000, 40, khz);
    assert!(!s.vcpus_matched());
}

#[test]
fn supported_cpuid_has_the_kvm_leaves_and_pv_unhalt_follows_disabled_hlt_exits() {
    use crate::x86::cpuid::{supported, Caps, Entry};
    let host = |leaf: u32, _sub: u32| -> [u32; 4] {
        match leaf {
            0 => [1, 0, 0, 0],
            0x8000_0000 => [0x8000_0000, 0, 0, 0],
            _ => [0; 4],
        }
    };
    let caps = Caps { kvm_features: supported_features(true), ..Caps::default() };
    let mut v: Vec<Entry> = Vec::new();
    supported(host, &caps, |e| v.push(e));
    let sig = v.iter().find(|e| e.function == CPUID_SIGNATURE).unwrap();
    assert_eq!(sig.regs, [CPUID_FEATURES, SIGNATURE[0], SIGNATURE[1], SIGNATURE[2]]);
    let feat = v.iter().find(|e| e.function == CPUID_FEATURES).unwrap();
    assert_eq!(feat.regs, [supported_features(true), 0, 0, 0]);

    // Userspace turns PV unhalt on; with HLT exits disabled it is taken out again.
    let at = v.iter().position(|e| e.function == CPUID_FEATURES).unwrap();
    v[at].regs[0] |= 1 << feature::PV_UNHALT;
    update_runtime(&mut v, false);
    assert!(v[at].regs[0] & (1 << feature::PV_UNHALT) != 0);
    update_runtime(&mut v, true);
    assert_eq!(v[at].regs[0] & (1 << feature::PV_UNHALT), 0);
    assert_eq!(v[at].regs[0], supported_features(true), "nothing else changes");
    // Without the KVM signature nothing is touched.
    let mut other = vec![Entry { function: CPUID_FEATURES, regs: [1 << feature::PV_UNHALT, 0, 0, 0], ..Entry::default() }];
    update_runtime(&mut other, true);
    assert_eq!(other[0].regs[0], 1 << feature::PV_UNHALT);
}

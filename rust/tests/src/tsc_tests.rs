//! Guest TSC rules: VM-wide synchronisation of vCPU TSCs (upstream `kvm_synchronize_tsc`) and
//! the IA32_TSC / IA32_TSC_ADJUST interplay checked by upstream's tsc_msrs_test.

use crate::x86::tsc::*;

const KHZ: u64 = 2_000_000; // 2 GHz: 2 cycles per ns
const SEC: u64 = 1_000_000_000;

#[test]
fn vcpus_created_together_share_one_offset_starting_at_zero() {
    let mut s = TscSync::default();
    let off0 = s.synchronize(None, 1_000_000, 10, KHZ, false);
    assert_eq!(1_000_000u64.wrapping_add(off0), 0, "the first vCPU's TSC starts at 0");
    // A second vCPU much later (no 1 s window for creations): the same offset.
    let off1 = s.synchronize(None, 50 * SEC * 2, 50 * SEC, KHZ, false);
    assert_eq!(off1, off0);
}

#[test]
fn first_user_write_is_taken_as_is_later_close_ones_match() {
    let mut s = TscSync::default();
    let off0 = s.synchronize(None, 1000, 0, KHZ, false);
    // Userspace restores a small value: not "corrected" towards the creation's TSC.
    let off = s.synchronize(Some(5000), 2000, 500, KHZ, false);
    assert_ne!(off, off0);
    assert_eq!(2000u64.wrapping_add(off), 5000);
    // Another vCPU written 0.5 s later with the value it would have now ± a bit: matched.
    let later_host = 2000 + SEC;
    let off2 = s.synchronize(Some(5000 + SEC + 12345), later_host, 500 + SEC / 2, KHZ, false);
    assert_eq!(off2, off, "within one second of the expected value");
    // A write far away starts a new generation.
    let off3 = s.synchronize(Some(1 << 40), later_host, 500 + SEC, KHZ, false);
    assert_eq!(later_host.wrapping_add(off3), 1 << 40);
    // A write of 0 always matches the current generation.
    assert_eq!(s.synchronize(Some(0), 7, 600 + SEC, KHZ, false), off3);
}

#[test]
fn unstable_host_tsc_adds_elapsed_time() {
    let mut s = TscSync::default();
    s.synchronize(None, 0, 0, KHZ, false);
    let off = s.synchronize(None, 3000, 1000, KHZ, true);
    // 1000 ns elapsed at 2 cycles/ns: the new vCPU's TSC is 2000 now.
    assert_eq!(3000u64.wrapping_add(off), 2000);
}

#[test]
fn tsc_and_tsc_adjust_as_upstream_tsc_msrs_test() {
    const UNITY: u64 = 1 << 30;
    let mut host_tsc = 1u64 << 40;
    let mut offset = 0u64.wrapping_sub(host_tsc); // the TSC reads 0
    let mut a = TscAdjust::default();
    let tsc = |host_tsc: u64, offset: u64| host_tsc.wrapping_add(offset);
    // Guest writes TSC: both move.
    offset = a.guest_write_tsc(offset, 4 * UNITY, host_tsc);
    assert_eq!(tsc(host_tsc, offset), 4 * UNITY);
    assert_eq!(a.0, 4 * UNITY);
    // Guest writes TSC_ADJUST: both move.
    host_tsc += 100;
    offset = a.write_adjust(offset, 8 * UNITY, false);
    assert_eq!(tsc(host_tsc, offset), 8 * UNITY + 100);
    assert_eq!(a.0, 8 * UNITY);
    // Userspace sets the offset (TscSync): TSC_ADJUST stays.
    offset = (72 * UNITY).wrapping_sub(host_tsc);
    // Userspace writes TSC_ADJUST: the TSC stays.
    let before = offset;
    offset = a.write_adjust(offset, 123456 * UNITY, true);
    assert_eq!(offset, before);
    assert_eq!(a.0, 123456 * UNITY);
    offset = a.write_adjust(offset, 8 * UNITY, true);
    // Guest TSC_ADJUST write keeps the host's part.
    offset = a.write_adjust(offset, 12 * UNITY, false);
    assert_eq!(tsc(host_tsc, offset), 76 * UNITY);
    // Guest TSC write: the host's part shows in TSC_ADJUST.
    offset = a.guest_write_tsc(offset, 16 * UNITY, host_tsc);
    assert_eq!(tsc(host_tsc, offset), 16 * UNITY);
    assert_eq!(a.0, (16 * UNITY).wrapping_sub(64 * UNITY));
}

#[test]
fn cycles_do_not_overflow() {
    assert_eq!(cycles(SEC, KHZ), 2 * SEC);
    assert_eq!(cycles(u64::MAX / 2, 1_000_000), u64::MAX / 2);
}

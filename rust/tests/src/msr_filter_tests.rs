//! The MSR filter of `KVM_X86_SET_MSR_FILTER`: the ioctl's checks in upstream's order, and
//! which guest accesses a filter allows (first covering range decides, else the default;
//! x2APIC MSRs never filtered).

use crate::x86::msr_filter::*;

fn filter(default_allow: bool, ranges: &[(u32, u32, u32, &[u8])]) -> Filter<Vec<u8>> {
    let mut f = Filter::new(default_allow);
    for &(flags, base, nmsrs, bits) in ranges {
        assert!(check_range(flags, nmsrs).unwrap().is_some());
        f.push(Range { flags, base, nmsrs, bitmap: bits.to_vec() });
    }
    f
}

#[test]
fn header_flags_and_an_empty_deny_filter_are_invalid() {
    assert_eq!(check_filter(0, [0; 16]), Ok(true), "no ranges, allow: filtering off");
    assert_eq!(check_filter(DEFAULT_DENY, [0; 16]), Err(Invalid), "deny with no range");
    assert_eq!(check_filter(DEFAULT_DENY, [0, 0, 3]), Ok(false));
    for bit in 1..32 {
        assert_eq!(check_filter(1 << bit, [1]), Err(Invalid), "flag bit {bit}");
    }
}

#[test]
fn range_checks() {
    // A range of no MSRs is skipped whatever its flags (upstream checks nmsrs first).
    assert_eq!(check_range(0xffff_ffff, 0), Ok(None));
    assert_eq!(check_range(0, 1), Err(Invalid), "no flags");
    assert_eq!(check_range(READ, 1), Ok(Some(8)), "one long");
    assert_eq!(check_range(READ | WRITE, 64), Ok(Some(8)));
    assert_eq!(check_range(WRITE, 65), Ok(Some(16)));
    assert_eq!(check_range(READ, (MAX_BITMAP_SIZE * 8) as u32), Ok(Some(MAX_BITMAP_SIZE)));
    assert_eq!(check_range(READ, (MAX_BITMAP_SIZE * 8) as u32 + 1), Err(Invalid), "bitmap too big");
    assert_eq!(check_range(READ, u32::MAX), Err(Invalid));
    for bit in 2..32 {
        assert_eq!(check_range(1 << bit, 1), Err(Invalid), "range flag bit {bit}");
    }
}

#[test]
fn first_covering_range_decides_else_default() {
    // Reads of 0..16: only MSR 3 denied. Writes of 0..16: all denied.
    let f = filter(true, &[(READ, 0, 16, &[0xf7, 0xff]), (WRITE, 0, 16, &[0, 0]), (READ | WRITE, 2, 2, &[0xff])]);
    assert!(f.allowed(0, false));
    assert!(!f.allowed(3, false));
    assert!(!f.allowed(3, true));
    assert!(!f.allowed(2, true), "the write range comes before the allowing one");
    assert!(f.allowed(16, false) && f.allowed(16, true), "outside every range: default allow");
    let deny = filter(false, &[(READ, 0xc000_0000, 2, &[0x2])]);
    assert!(!deny.allowed(0xc000_0000, false));
    assert!(deny.allowed(0xc000_0001, false));
    assert!(!deny.allowed(0xc000_0001, true), "no write range: default deny");
    assert!(!deny.allowed(0x10, false));
}

#[test]
fn x2apic_msrs_are_never_filtered() {
    let f = filter(false, &[(READ | WRITE, 0x800, 256, &[0; 32])]);
    for msr in 0x800..=0x8ff {
        assert!(f.allowed(msr, false) && f.allowed(msr, true));
    }
    assert!(!f.allowed(0x7ff, false) && !f.allowed(0x900, true));
}

#[test]
fn no_filter_allows_everything_and_a_wrapping_range_covers_nothing() {
    assert!(allowed::<Vec<u8>>(None, 0xdead_beef, true));
    // base + nmsrs wraps in 32 bits, as upstream computes the end: the range is dead.
    let f = filter(true, &[(READ, 0xffff_fff0, 0x20, &[0, 0, 0, 0])]);
    assert!(f.allowed(0xffff_fff8, false));
    assert!(f.allowed(0x4, false));
}

#[test]
fn at_most_sixteen_ranges_are_kept() {
    let mut f: Filter<Vec<u8>> = Filter::new(true);
    for i in 0..20 {
        f.push(Range { flags: READ, base: i, nmsrs: 1, bitmap: vec![0] });
    }
    assert_eq!(f.ranges().count(), MAX_RANGES);
    assert!(!f.allowed(15, false));
    assert!(f.allowed(16, false));
}

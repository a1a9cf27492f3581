//! Coalesced MMIO zones and ring indices.

use crate::coalesced::{insert_slot, keep_after_unregister, pio_flag, Zone};

#[test]
fn zones_cover_whole_accesses_only() {
    let z = Zone { addr: 0x1000, size: 8, pio: false };
    assert!(z.contains(0x1000, 8));
    assert!(z.contains(0x1004, 4));
    assert!(!z.contains(0x1004, 8), "runs past the end");
    assert!(!z.contains(0xfff, 2), "starts before");
    assert!(!z.contains(u64::MAX, 2), "wraps");
    assert_eq!(pio_flag(0), Some(false));
    assert_eq!(pio_flag(1), Some(true));
    assert_eq!(pio_flag(2), None);
}

#[test]
fn unregister_removes_zones_containing_the_range() {
    let z = Zone { addr: 0x1000, size: 16, pio: false };
    assert!(!keep_after_unregister(&z, &Zone { addr: 0x1000, size: 16, pio: false }));
    assert!(!keep_after_unregister(&z, &Zone { addr: 0x1004, size: 4, pio: false }));
    assert!(keep_after_unregister(&z, &Zone { addr: 0x1000, size: 16, pio: true }), "other kind");
    assert!(keep_after_unregister(&z, &Zone { addr: 0x1000, size: 32, pio: false }), "larger range");
}

#[test]
fn ring_keeps_one_entry_free() {
    assert_eq!(insert_slot(0, 0, 4), Some(0));
    assert_eq!(insert_slot(0, 2, 4), Some(2));
    assert_eq!(insert_slot(0, 3, 4), None, "3 of 4 used: full");
    assert_eq!(insert_slot(2, 1, 4), None, "wrapped and full");
    assert_eq!(insert_slot(2, 3, 4), Some(3));
    assert_eq!(insert_slot(0, 4, 4), None, "last out of range");
}

/// Found by rkvm-fuzz: a zone whose end wraps past 2^64 is accepted (upstream checks only `pio`);
/// its end wraps as upstream's `zone.addr + zone.size` does (no overflow panic), so nothing lies
/// inside it and an unregister of a range within it keeps it.
#[test]
fn zone_end_wrapping_past_2_64_contains_nothing() {
    let z = Zone { addr: 0xffff_ffff_ffff_f000, size: 0x2000, pio: false };
    assert!(!z.contains(0xffff_ffff_ffff_f800, 8));
    assert!(!z.contains(0, 8));
    assert!(keep_after_unregister(&z, &Zone { addr: 0xffff_ffff_ffff_f800, size: 8, pio: false }));
    let top = Zone { addr: 0xffff_ffff_ffff_f000, size: 0x1000, pio: true };
    assert!(!top.contains(0xffff_ffff_ffff_fff8, 8), "end is exactly 2^64: wraps to 0");
}

//! Control-register validity (upstream's `kvm_is_valid_sregs`) and segment encodings.

use crate::x86::cr::*;
use crate::x86::segment::{self, reset, Segment, Which};

const L: Limits = Limits::ARCH;

#[test]
fn cr0_rules() {
    assert!(L.cr0_valid(reset::CR0));
    assert!(L.cr0_valid(CR0_PE | CR0_PG | CR0_ET));
    assert!(!L.cr0_valid(1 << 32), "high bits are reserved");
    assert!(!L.cr0_valid(CR0_NW), "NW without CD");
    assert!(!L.cr0_valid(CR0_PG), "PG without PE");
}

#[test]
fn long_mode_rules() {
    let lm_cr0 = CR0_PE | CR0_PG | CR0_ET;
    let lm_efer = EFER_LME | EFER_LMA;
    assert!(L.sregs_valid(lm_cr0, 0x1000, CR4_PAE, lm_efer, true));
    assert!(!L.sregs_valid(lm_cr0, 0x1000, 0, lm_efer, true), "64-bit mode needs PAE");
    assert!(!L.sregs_valid(lm_cr0, 0x1000, CR4_PAE, EFER_LME, true), "64-bit mode needs LMA");
    assert!(!L.sregs_valid(lm_cr0, 1 << 40, CR4_PAE, lm_efer, true), "CR3 beyond MAXPHYADDR");
    assert!(!L.sregs_valid(CR0_PE, 0, 0, EFER_LMA, false), "LMA without paging");
    assert!(!L.sregs_valid(CR0_PE, 0, 0, 0, true), "CS.L outside long mode");
    // LME alone (paging off) is a legal stage of entering long mode.
    assert!(L.sregs_valid(CR0_PE, 0, CR4_PAE, EFER_LME, false));
    assert!(!L.sregs_valid(reset::CR0, 0, 1 << 63, 0, false), "reserved CR4 bit");
    assert!(!L.sregs_valid(reset::CR0, 0, 1 << 14, 0, false), "CR4 bit 14 (SMXE) is not allowed");
    assert!(!L.sregs_valid(reset::CR0, 0, 0, 1 << 1, false), "reserved EFER bit");
    assert!(L.sregs_valid(reset::CR0, 0, CR4_KNOWN, EFER_SCE | EFER_NX, false));
}

#[test]
fn apic_base_rules() {
    for x2apic in [false, true] {
        assert!(L.apic_base_valid(0, x2apic));
        assert!(L.apic_base_valid(0xfee0_0900, x2apic));
        assert!(!L.apic_base_valid(0xfee0_0001, x2apic), "bits 7:0 reserved");
        assert!(!L.apic_base_valid(0xfee0_0200, x2apic), "bit 9 reserved");
        assert!(!L.apic_base_valid(1 << 40, x2apic), "beyond MAXPHYADDR");
        assert!(!L.apic_base_valid(0xfee0_0400, x2apic), "EXTD without EN: LAPIC_MODE_INVALID");
    }
    assert!(!L.apic_base_valid(0xfee0_0c00, false), "x2APIC without CPUID");
    assert!(L.apic_base_valid(0xfee0_0c00, true));
    assert!(L.apic_base_valid(0xfee0_0d00, true), "x2APIC on the BSP");
}

#[test]
fn reset_segments_match_upstream() {
    assert_eq!(segment::to_ar(&reset::CS, Which::Other), 0x9b);
    assert_eq!(segment::to_ar(&reset::DATA, Which::Other), 0x93);
    assert_eq!(reset::CS.selector, 0xf000);
    assert_eq!(reset::CS.base, 0xffff_0000);
    let tr = reset::tr();
    assert_eq!((tr.type_, tr.s, tr.present, tr.limit), (11, 0, 1, 0xffff));
    let ldt = reset::ldtr();
    assert_eq!((ldt.type_, ldt.s, ldt.present), (2, 0, 1));
    assert_eq!(reset::CR0, 0x6000_0010);
}

#[test]
fn access_rights_round_trip() {
    let code64 = Segment { selector: 8, limit: 0xffff_ffff, type_: 0xb, present: 1, s: 1, l: 1, g: 1, ..Default::default() };
    assert_eq!(segment::normalize(&code64, Which::Other), code64);
    assert_eq!(segment::to_ar(&code64, Which::Other), 0xa09b);
    // Accessed is forced on for all but LDTR (unrestricted guest fix-up).
    let data = Segment { type_: 2, present: 1, s: 1, dpl: 3, db: 1, avl: 1, ..Default::default() };
    assert_eq!(segment::normalize(&data, Which::Other).type_, 3);
    let ldt = Segment { type_: 2, present: 1, ..Default::default() };
    assert_eq!(segment::normalize(&ldt, Which::Ldtr).type_, 2);
    // A non-present segment comes back unusable with every attribute cleared.
    let np = Segment { selector: 0x10, base: 0x1234, type_: 3, s: 1, present: 0, db: 1, ..Default::default() };
    let back = segment::normalize(&np, Which::Other);
    assert_eq!(back.unusable, 1);
    assert_eq!((back.type_, back.s, back.db, back.present), (0, 0, 0, 0));
    assert_eq!((back.selector, back.base), (0x10, 0x1234));
}

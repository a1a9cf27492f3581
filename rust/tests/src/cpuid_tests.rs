//! Guest CPUID: the supported list, the table lookup (Intel's out-of-range rule), the bits that
//! follow guest state.

use crate::x86::cpuid::*;

/// A host like Bochs' Haswell: max basic 0xd, max extended 0x80000008, VMX, AVX, XSAVE.
fn host(leaf: u32, sub: u32) -> [u32; 4] {
    match (leaf, sub) {
        (0, _) => [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
        (1, _) => [0x306c3, 0x0102_0800, 0x7ffa_fbbf, 0xbfeb_fbff],
        (4, 0..=3) => [0x121 + sub, 0x1c0_003f, 0x3f, 0],
        (4, _) => [0; 4],
        (7, 0) => [0, 0x27a9, 0, 0x9c00_0400], // no TSC_ADJUST (bit 1)
        (0xd, 0) => [7, 832, 832, 0],
        (0xd, 1) => [1, 0, 0, 0],
        (0xd, 2) => [256, 576, 0, 0],
        (0x8000_0000, _) => [0x8000_0008, 0, 0, 0],
        (0x8000_0001, _) => [0, 0, 0x21, 0x2c10_0800],
        _ => [leaf, sub, 0x1111, 0x2222],
    }
}

fn caps() -> Caps {
    Caps { guest_xcr0: 3, rdtscp: true, x2apic: true, kvm_features: 0 }
}

fn list() -> Vec<Entry> {
    let mut v = Vec::new();
    supported(host, &caps(), |e| v.push(e));
    v
}

#[test]
fn supported_list_shape() {
    let l = list();
    assert!(l.len() < MAX_ENTRIES);
    // Leaf 0..=0xd, 4 with subleaves 0..=4 (the null one included), 7.0, 0xd.0/1, the two
    // hypervisor leaves, 0x80000000..=8.
    assert_eq!(l.iter().filter(|e| e.function == 4).count(), 5);
    assert!(l.iter().filter(|e| e.function == 4).all(|e| e.flags == FLAG_SIGNIFICANT_INDEX));
    assert_eq!(l.iter().filter(|e| e.function == 0xd).count(), 2);
    assert_eq!(l.iter().filter(|e| e.function >= 0x8000_0000).count(), 9);
    let leaf1 = l.iter().find(|e| e.function == 1).unwrap();
    assert_eq!(leaf1.flags, 0);
    assert_eq!(leaf1.regs[2] & (1 << 5), 0, "no VMX");
    assert_eq!(leaf1.regs[2] & (1 << 28), 0, "no AVX");
    assert_eq!(leaf1.regs[2] & (1 << 27), 0, "OSXSAVE is dynamic");
    assert_ne!(leaf1.regs[2] & (1 << 26), 0, "XSAVE offered");
    assert_ne!(leaf1.regs[2] & LEAF1_ECX_X2APIC, 0, "x2APIC emulated, so offered");
    assert_eq!(leaf1.regs[2] & (1 << 24), 0, "no TSC deadline");
    assert_eq!(leaf1.regs[2] & (1 << 31), 0, "hypervisor bit left to userspace");
    assert_eq!(leaf1.regs[1] >> 16, 0, "APIC id left to userspace");
    let l7 = l.iter().find(|e| e.function == 7).unwrap();
    assert_eq!(l7.regs[1] & (1 << 5), 0, "no AVX2");
    assert_eq!(l7.regs[3] & (1 << 29), 0, "no ARCH_CAPABILITIES");
    assert_ne!(l7.regs[1] & (1 << 1), 0, "TSC_ADJUST emulated (the host has none here)");
    let xs = l.iter().find(|e| e.function == 0xd && e.index == 0).unwrap();
    assert_eq!(xs.regs, [3, 576, 576, 0]);
    let sig = l.iter().find(|e| e.function == KVM_SIGNATURE).unwrap();
    let mut name = Vec::new();
    for r in &sig.regs[1..] {
        name.extend_from_slice(&r.to_le_bytes());
    }
    assert_eq!(&name, b"KVMKVMKVM\0\0\0");
}

#[test]
fn no_xsave_without_host_xsave() {
    let mut v = Vec::new();
    supported(host, &Caps { guest_xcr0: 0, rdtscp: false, x2apic: false, kvm_features: 0 }, |e| v.push(e));
    let leaf1 = v.iter().find(|e| e.function == 1).unwrap();
    assert_eq!(leaf1.regs[2] & (1 << 26), 0);
    assert_eq!(leaf1.regs[2] & LEAF1_ECX_X2APIC, 0, "x2APIC only with the in-kernel LAPIC");
    assert!(v.iter().filter(|e| e.function == 0xd).all(|e| e.regs == [0; 4]));
    let ext1 = v.iter().find(|e| e.function == 0x8000_0001).unwrap();
    assert_eq!(ext1.regs[3] & (1 << 27), 0, "no RDTSCP");
}

#[test]
fn lookup_rules() {
    let t = [
        Entry { function: 0, regs: [4, 1, 2, 3], ..Entry::default() },
        Entry { function: 1, regs: [10, 11, 12, 13], ..Entry::default() },
        Entry { function: 2, regs: [20, 21, 22, 23], ..Entry::default() },
        Entry { function: 4, index: 0, flags: FLAG_SIGNIFICANT_INDEX, regs: [40, 0, 0, 0] },
        Entry { function: 4, index: 1, flags: FLAG_SIGNIFICANT_INDEX, regs: [41, 0, 0, 0] },
        Entry { function: 0x8000_0000, regs: [0x8000_0001, 0, 0, 0], ..Entry::default() },
    ];
    assert_eq!(lookup(&t, 1, 7), [10, 11, 12, 13], "index ignored without the flag");
    assert_eq!(lookup(&t, 4, 1), [41, 0, 0, 0]);
    assert_eq!(lookup(&t, 4, 2), [0; 4], "in range, no such subleaf");
    assert_eq!(lookup(&t, 3, 0), [0; 4], "in range, no such leaf");
    // Above the basic maximum: the highest basic leaf, same subleaf (Intel).
    assert_eq!(lookup(&t, 0x30, 0), [40, 0, 0, 0]);
    assert_eq!(lookup(&t, 0x30, 1), [41, 0, 0, 0]);
    // Extended leaf in range but absent: zeros; above the extended maximum: highest basic.
    assert_eq!(lookup(&t, 0x8000_0001, 0), [0; 4]);
    assert_eq!(lookup(&t, 0x8000_0005, 1), [41, 0, 0, 0]);
    // No hypervisor leaves in the table: out of range too.
    assert_eq!(lookup(&t, 0x4000_0000, 0), [40, 0, 0, 0]);
    assert_eq!(lookup(&[], 0, 0), [0; 4]);
}

#[test]
fn dynamic_bits() {
    let mut r = [0, 0, 1 << 26, 0];
    apply_dynamic(1, 0, &mut r, 1 << 18, 3);
    assert_eq!(r[2], 1 << 26 | 1 << 27);
    apply_dynamic(1, 0, &mut r, 0, 3);
    assert_eq!(r[2], 1 << 26);
    // OSXSAVE never without XSAVE.
    let mut r = [0, 0, 1 << 27, 0];
    apply_dynamic(1, 0, &mut r, 1 << 18, 3);
    assert_eq!(r[2], 0);
    let mut r = [3, 0, 576, 0];
    apply_dynamic(0xd, 0, &mut r, 1 << 18, 1);
    assert_eq!(r[1], 576);
}

#[test]
fn guest_x2apic_follows_the_table() {
    let with = |ecx: u32| [Entry { function: 1, regs: [0, 0, ecx, 0], ..Entry::default() }];
    // No table: rkvm's default CPUID, which has x2APIC with an in-kernel LAPIC.
    assert!(guest_has_x2apic(&[], true));
    assert!(!guest_has_x2apic(&[], false));
    assert!(guest_has_x2apic(&with(LEAF1_ECX_X2APIC), false));
    assert!(!guest_has_x2apic(&with(!LEAF1_ECX_X2APIC), true));
    let no_leaf1 = [Entry { function: 0, regs: [0xd, 0, 0, 0], ..Entry::default() }];
    assert!(!guest_has_x2apic(&no_leaf1, true));
}

#[test]
fn has_looks_at_the_entry_itself() {
    let t = [
        Entry { function: 0, index: 0, flags: 0, regs: [1, 0, 0, 0] },
        Entry { function: 1, index: 0, flags: 0, regs: [0, 0, 1 << 5, 0] },
        Entry { function: 7, index: 1, flags: FLAG_SIGNIFICANT_INDEX, regs: [0, 2, 0, 0] },
    ];
    assert!(has(&t, 1, 0, 2, 5));
    assert!(has(&t, 1, 9, 2, 5), "index ignored without the significant-index flag");
    assert!(!has(&t, 1, 0, 2, 4));
    assert!(!has(&t, 7, 0, 1, 1), "no 7.0 entry: no out-of-range fallback to leaf 1");
    assert!(has(&t, 7, 1, 1, 1));
    assert!(!has(&[], 1, 0, 2, 5));
}

#[test]
fn avx_follows_the_xcr0_guests_get() {
    let mut v = Vec::new();
    supported(host, &Caps { guest_xcr0: 7, rdtscp: true, x2apic: true, kvm_features: 0 }, |e| v.push(e));
    let leaf1 = v.iter().find(|e| e.function == 1).unwrap();
    assert_ne!(leaf1.regs[2] & (1 << 28), 0, "AVX");
    assert_ne!(leaf1.regs[2] & (1 << 12), 0, "FMA");
    let l7 = v.iter().find(|e| e.function == 7).unwrap();
    assert_ne!(l7.regs[1] & (1 << 5), 0, "AVX2");
    assert_eq!(l7.regs[1] & (1 << 16), 0, "no AVX-512F");
    let d: Vec<_> = v.iter().filter(|e| e.function == 0xd).collect();
    assert_eq!(d.len(), 3, "0xd.0, 0xd.1 and AVX's 0xd.2");
    assert_eq!(d[0].regs, [7, 832, 832, 0]);
    assert_eq!(d[2].index, 2);
    assert_eq!(d[2].regs, [256, 576, 0, 0]);
    // The size follows the guest's XCR0.
    let mut r = d[0].regs;
    apply_dynamic(0xd, 0, &mut r, 0, 3);
    assert_eq!(r[1], 576);
    apply_dynamic(0xd, 0, &mut r, 0, 7);
    assert_eq!(r[1], 832);
    // Without XCR0.AVX none of it.
    let l = list();
    let leaf1 = l.iter().find(|e| e.function == 1).unwrap();
    assert_eq!(leaf1.regs[2] & (1 << 28 | 1 << 12 | 1 << 29), 0);
    assert!(!l.iter().any(|e| e.function == 0xd && e.index == 2));
}

#[test]
fn update_runtime_folds_guest_state_into_a_table() {
    let mut t = list();
    let mut t7 = Vec::new();
    supported(host, &Caps { guest_xcr0: 7, rdtscp: true, x2apic: true, kvm_features: 0 }, |e| t7.push(e));
    update_runtime(&mut t7, 0, 1);
    let d0 = t7.iter().find(|e| e.function == 0xd && e.index == 0).unwrap();
    assert_eq!(d0.regs[1], 576, "XCR0 = x87 at RESET");
    // This host has XSAVEOPT only (no XSAVEC): no compacted size to follow.
    let d1 = t7.iter().find(|e| e.function == 0xd && e.index == 1).unwrap();
    assert_eq!(d1.regs, [1, 0, 0, 0]);
    let mut r = [3, 0, 0, 0];
    apply_dynamic(0xd, 1, &mut r, 0, 7);
    assert_eq!(r[1], 832, "with XSAVEC it does");
    let l1 = t7.iter().find(|e| e.function == 1).unwrap();
    assert_eq!(l1.regs[2] & (1 << 27), 0);
    update_runtime(&mut t7, 1 << 18, 7);
    let d0 = t7.iter().find(|e| e.function == 0xd && e.index == 0).unwrap();
    assert_eq!(d0.regs[1], 832);
    let l1 = t7.iter().find(|e| e.function == 1).unwrap();
    assert_ne!(l1.regs[2] & (1 << 27), 0, "OSXSAVE follows CR4");
    // A table updated twice with the same state is unchanged the second time.
    let before = t.clone();
    update_runtime(&mut t, 0, 1);
    let once = t.clone();
    update_runtime(&mut t, 0, 1);
    assert_eq!(t, once);
    assert_eq!(t.len(), before.len());
}

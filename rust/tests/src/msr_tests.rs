//! Guest MSR rules: the VMX MSR bitmap layout, value checks, EFER writes, and the lazy
//! ("user-return") switching of STAR/LSTAR/CSTAR/SFMASK/TSC_AUX on a model CPU that records
//! every access.

use crate::x86::msr::*;
use std::collections::BTreeMap;

#[derive(Default)]
struct Cpu {
    msrs: BTreeMap<u32, u64>,
    writes: Vec<(u32, u64)>,
}

impl MsrAccess for Cpu {
    fn read(&mut self, msr: u32) -> u64 {
        *self.msrs.get(&msr).unwrap_or(&0)
    }
    fn write(&mut self, msr: u32, value: u64) {
        self.writes.push((msr, value));
        self.msrs.insert(msr, value);
    }
}

const ALL: u32 = (1 << URET.len()) - 1;

fn host() -> Cpu {
    let mut c = Cpu::default();
    for (i, m) in URET.iter().enumerate() {
        c.msrs.insert(*m, 0xffff_ffff_8100_0000 + i as u64);
    }
    c
}

#[test]
fn bitmap_offsets_follow_the_sdm() {
    // SDM 25.6.9: read-low, read-high, write-low, write-high, 1 KiB each.
    assert_eq!(bitmap_bit(0, false), Some((0, 0)));
    assert_eq!(bitmap_bit(0x1fff, false), Some((1023, 7)));
    assert_eq!(bitmap_bit(0xc000_0000, false), Some((1024, 0)));
    assert_eq!(bitmap_bit(KERNEL_GS_BASE, false), Some((1024 + 0x102 / 8, 2)));
    assert_eq!(bitmap_bit(0x10, true), Some((2048 + 2, 0)));
    assert_eq!(bitmap_bit(0xc000_1fff, true), Some((4095, 7)));
    assert_eq!(bitmap_bit(0x2000, false), None);
    assert_eq!(bitmap_bit(0x4000_0000, true), None);
    assert_eq!(bitmap_bit(0xc000_2000, false), None);
}

#[test]
fn bitmap_passes_through_only_the_vmcs_switched_msrs() {
    let mut page = [0u8; 4096];
    fill_bitmap(&mut page);
    let exits = |msr: u32, w: bool| {
        let (byte, bit) = bitmap_bit(msr, w).unwrap();
        page[byte] & (1 << bit) != 0
    };
    for w in [false, true] {
        for m in PASS_THROUGH {
            assert!(!exits(m, w), "{m:#x} write={w} should pass through");
        }
        for m in [TSC, APIC_BASE, SPEC_CTRL, EFER, PAT, STAR, LSTAR, CSTAR, SFMASK, TSC_AUX, MISC_ENABLE, 0x1234] {
            assert!(exits(m, w), "{m:#x} write={w} should exit");
        }
        // The x2APIC registers are emulated: every one of their MSRs exits.
        for m in 0x800..=0x8ff {
            assert!(exits(m, w), "x2APIC MSR {m:#x} write={w} should exit");
        }
    }
    // Everything but the 6 MSRs x 2 directions is intercepted.
    let clear: u32 = page.iter().map(|b| b.count_zeros()).sum();
    assert_eq!(clear, 12);
}

#[test]
fn value_checks() {
    assert!(is_canonical(0x0000_7fff_ffff_ffff) && is_canonical(0xffff_8000_0000_0000));
    assert!(!is_canonical(0x0000_8000_0000_0000) && !is_canonical(0x1234_0000_0000_0000));
    assert!(value_valid(LSTAR, 0xffff_ffff_8100_0000));
    assert!(!value_valid(LSTAR, 0x8000_0000_0000));
    assert!(!value_valid(KERNEL_GS_BASE, 1 << 60));
    assert!(value_valid(TSC_AUX, 0xffff_ffff) && !value_valid(TSC_AUX, 1 << 32));
    assert!(value_valid(PAT, PAT_RESET) && value_valid(PAT, 0x0101_0101_0101_0101));
    assert!(!value_valid(PAT, 0x0000_0000_0000_0002) && !value_valid(PAT, 0x0800_0000_0000_0000));
    assert!(value_valid(MTRR_DEF_TYPE, 0xc06) && !value_valid(MTRR_DEF_TYPE, 0x1006));
    assert!(!value_valid(MTRR_DEF_TYPE, 2));
    assert!(value_valid(STAR, u64::MAX));
}

#[test]
fn efer_writes() {
    const LME: u64 = 1 << 8;
    const LMA: u64 = 1 << 10;
    // SCE and NXE any time; LMA is not the guest's to write.
    assert_eq!(efer_write(0, 1 | 1 << 11, false), Some(1 | 1 << 11));
    assert_eq!(efer_write(0, LMA, false), Some(0));
    assert_eq!(efer_write(LME | LMA, LME, true), Some(LME | LMA));
    // LME only while paging is off.
    assert_eq!(efer_write(0, LME, false), Some(LME));
    assert_eq!(efer_write(0, LME, true), None);
    assert_eq!(efer_write(LME | LMA, 0, true), None);
    // Reserved bits.
    assert_eq!(efer_write(0, 1 << 2, false), None);
    assert_eq!(efer_write(0, 1 << 63, false), None);
}

#[test]
fn uret_loads_only_what_differs_and_restores_the_host() {
    let mut cpu = host();
    let saved = cpu.msrs.clone();
    let mut st = UretCpu::default();
    let mut guest = [0u64; URET.len()];
    for (i, m) in URET.iter().enumerate() {
        guest[i] = saved[m];
    }
    guest[1] = 0xffff_8000_0000_1000; // LSTAR differs
    assert!(st.load_guest(&mut cpu, &guest, ALL), "first switch registers the notifier");
    assert_eq!(cpu.writes, vec![(LSTAR, 0xffff_8000_0000_1000)]);
    // A second entry with the same values writes nothing and does not re-register.
    assert!(!st.load_guest(&mut cpu, &guest, ALL));
    assert_eq!(cpu.writes.len(), 1);
    // The guest changed STAR meanwhile: only STAR is written.
    guest[0] = 0x0023_0010_0000_0000;
    assert!(!st.load_guest(&mut cpu, &guest, ALL));
    assert_eq!(cpu.writes[1..], [(STAR, 0x0023_0010_0000_0000)]);
    // Return to user mode: both come back, nothing else is touched.
    cpu.writes.clear();
    assert!(st.restore_host(&mut cpu, ALL));
    assert_eq!(cpu.msrs, saved);
    assert_eq!(cpu.writes.len(), 2);
    // Nothing registered any more: a second restore does nothing.
    assert!(!st.restore_host(&mut cpu, ALL));
    assert_eq!(cpu.writes.len(), 2);
}

#[test]
fn uret_saves_the_host_values_current_at_the_first_switch() {
    // The host may change its own values between two KVM_RUNs (another task's TSC_AUX is the
    // same, but the kernel could rewrite STAR); each activation re-reads them.
    let mut cpu = host();
    let mut st = UretCpu::default();
    let guest = [1, 2, 3, 4, 5];
    st.load_guest(&mut cpu, &guest, ALL);
    st.restore_host(&mut cpu, ALL);
    cpu.msrs.insert(STAR, 0x42);
    st.load_guest(&mut cpu, &guest, ALL);
    st.restore_host(&mut cpu, ALL);
    assert_eq!(cpu.msrs[&STAR], 0x42);
}

#[test]
fn uret_never_touches_an_absent_tsc_aux() {
    let mut cpu = host();
    cpu.msrs.remove(&TSC_AUX);
    let mut st = UretCpu::default();
    let present = ALL & !(1 << URET_TSC_AUX);
    st.load_guest(&mut cpu, &[9, 9, 9, 9, 9], present);
    st.restore_host(&mut cpu, present);
    assert!(cpu.writes.iter().all(|&(m, _)| m != TSC_AUX));
    assert!(!cpu.msrs.contains_key(&TSC_AUX));
}

#[test]
fn known_list_covers_the_switched_and_passed_through_msrs() {
    let mut sorted = KNOWN.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), KNOWN.len(), "no duplicates");
    for m in URET.iter().chain(PASS_THROUGH.iter()) {
        assert!(KNOWN.contains(m), "{m:#x} is handled, so it is listed");
    }
}

#[test]
fn hwcr_keeps_two_bits_ignores_three_refuses_the_rest() {
    // As upstream's hwcr_msr_test: every single bit.
    for bit in 0..64 {
        let v = 1u64 << bit;
        let r = hwcr_write(v);
        match bit {
            18 | 24 => assert_eq!(r, Some(v)),
            3 | 6 | 8 => assert_eq!(r, Some(0)),
            _ => assert_eq!(r, None, "bit {bit}"),
        }
    }
    assert_eq!(hwcr_write(1 << 18 | 1 << 24 | 1 << 3), Some(1 << 18 | 1 << 24));
}

#[test]
fn feature_control_guest_locks_once_userspace_restores_anything_supported() {
    // The guest may set the lock bit while unlocked, nothing else, and nothing once locked.
    let lock = FEATURE_CONTROL_LOCKED;
    assert!(feature_control_valid(0, FEATURE_CONTROL_LOCKED, false, lock));
    assert!(feature_control_valid(0, 0, false, lock));
    assert!(!feature_control_valid(0, 1 << 2 | 1, false, lock), "no nested VMX to enable");
    assert!(!feature_control_valid(FEATURE_CONTROL_LOCKED, FEATURE_CONTROL_LOCKED, false, lock));
    // LMCE only when the vCPU has local machine checks (MCG_LMCE_P).
    assert!(!feature_control_valid(0, 1 << 20 | 1, false, lock));
    assert!(feature_control_valid(0, 1 << 20 | 1, false, lock | 1 << 20));
    // Userspace: any supported bit, locked or not (KVM_SET_MSRS of a saved value).
    assert!(feature_control_valid(FEATURE_CONTROL_LOCKED, 0, true, lock));
    assert!(feature_control_valid(FEATURE_CONTROL_LOCKED, FEATURE_CONTROL_HOST_VALID, true, lock));
    assert!(!feature_control_valid(0, 1 << 3, true, lock));
    assert!(!feature_control_valid(0, 1 << 63, true, lock));
}

#[test]
fn refusals_of_known_msrs_are_invalid_of_others_unknown() {
    assert_eq!(refusal(LSTAR, true), MsrFault::Invalid);
    assert_eq!(refusal(MTRRCAP, true), MsrFault::Invalid, "read-only");
    assert_eq!(refusal(0x808, false), MsrFault::Invalid, "x2APIC TPR outside x2APIC mode");
    assert_eq!(refusal(PRED_CMD, true), MsrFault::Invalid);
    assert_eq!(refusal(PRED_CMD, false), MsrFault::Unsupported, "write-only: upstream has no read");
    assert_eq!(refusal(0xdead_beef, false), MsrFault::Unsupported);
    assert_eq!(refusal(0x10b, true), MsrFault::Unsupported, "FLUSH_CMD: not emulated");
    assert_eq!(MsrFault::Invalid.exit_reason(), EXIT_REASON_INVAL);
    assert_eq!(MsrFault::Unsupported.exit_reason(), EXIT_REASON_UNKNOWN);
    assert_eq!(MsrFault::Filtered.exit_reason(), EXIT_REASON_FILTER);
    assert_eq!(EXIT_REASON_VALID_MASK, 7);
}

#[test]
fn filtered_bitmap_intercepts_only_the_denied_passthrough_accesses() {
    let mut plain = [0u8; 4096];
    fill_bitmap(&mut plain);
    let mut same = [0u8; 4096];
    fill_bitmap_filtered(&mut same, |_, _| true);
    assert!(plain == same);
    assert_eq!(passthrough_denied(|_, _| true), 0);
    // Deny reads of FS_BASE and writes of SYSENTER_EIP.
    let allowed = |m: u32, w: bool| !((m == FS_BASE && !w) || (m == SYSENTER_EIP && w));
    let mut page = [0u8; 4096];
    fill_bitmap_filtered(&mut page, allowed);
    let intercepted = |page: &[u8; 4096], m: u32, w: bool| {
        let (byte, bit) = bitmap_bit(m, w).unwrap();
        page[byte] & (1 << bit) != 0
    };
    assert!(intercepted(&page, FS_BASE, false));
    assert!(!intercepted(&page, FS_BASE, true));
    assert!(intercepted(&page, SYSENTER_EIP, true));
    assert!(!intercepted(&page, SYSENTER_EIP, false));
    assert!(!intercepted(&page, GS_BASE, false));
    assert!(intercepted(&page, LSTAR, false), "never passed through");
    let denied = passthrough_denied(allowed);
    assert_eq!(denied.count_ones(), 2);
    let fs = PASS_THROUGH.iter().position(|&m| m == FS_BASE).unwrap();
    assert!(denied & (1 << (2 * fs)) != 0);
}

#[test]
fn misc_enable_guest_toggles_fast_strings_only() {
    assert!(misc_enable_valid(MISC_ENABLE_RESET, MISC_ENABLE_RESET & !1, false));
    assert!(!misc_enable_valid(MISC_ENABLE_RESET, MISC_ENABLE_RESET & !(1 << 12), false));
    assert!(misc_enable_valid(MISC_ENABLE_RESET, 0, true));
    // After userspace stored other bits, the guest writing back what it read is fine.
    assert!(misc_enable_valid(1 << 18 | 1, 1 << 18, false));
}

#[test]
fn platform_info_and_cpuid_faulting() {
    let fault = PLATFORM_INFO_CPUID_FAULT;
    assert!(!platform_info_valid(fault, 0, false), "read-only for the guest");
    assert!(platform_info_valid(fault | 0xff00, 0, true));
    assert!(platform_info_valid(0, 0, true));
    // CPUID faulting is on: userspace may not take away the feature.
    assert!(!platform_info_valid(0, MISC_FEATURES_CPUID_FAULT, true));
    assert!(platform_info_valid(fault, MISC_FEATURES_CPUID_FAULT, true));
    assert!(misc_features_valid(MISC_FEATURES_CPUID_FAULT, fault));
    assert!(misc_features_valid(0, 0));
    assert!(!misc_features_valid(MISC_FEATURES_CPUID_FAULT, 0));
    assert!(!misc_features_valid(2, fault));
}

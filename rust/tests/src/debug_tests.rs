//! Guest debugging: KVM_SET_GUEST_DEBUG's control word, the effective breakpoints, the exception
//! bitmap and DR6 after a #DB.

use crate::x86::debug::*;

const REGS: [u64; 8] = [0x1000, 0x2000, 0x3000, 0x4000, 0, 0, 0, 0x400 | 0x2];

#[test]
fn control_word_rules() {
    // Unknown flags: EINVAL (upstream 6.12 x86 ignores them; KVM_CAP_SET_GUEST_DEBUG2 lists
    // the known ones).
    assert_eq!(GuestDebug::new(ENABLE | 0x4, &REGS, false), Err(SetError::Invalid));
    assert_eq!(GuestDebug::new(1 << 31, &REGS, false), Err(SetError::Invalid));
    assert_eq!(VALID_MASK, 0x1f_0003);
    // A debugger DR7 with bits 63:32 set would fail the VM entry.
    let mut r = REGS;
    r[7] = 1 << 32 | 0x400;
    assert_eq!(GuestDebug::new(ENABLE | USE_HW_BP, &r, false), Err(SetError::Invalid));
    // ...but is not looked at without USE_HW_BP.
    assert_eq!(GuestDebug::new(ENABLE | SINGLESTEP, &r, false).map(|d| d.dr7), Ok(0));
    // Injection over a pending exception: EBUSY, with or without ENABLE.
    assert_eq!(GuestDebug::new(INJECT_BP, &REGS, true), Err(SetError::Busy));
    assert_eq!(GuestDebug::new(ENABLE | INJECT_DB, &REGS, true), Err(SetError::Busy));
    assert!(GuestDebug::new(ENABLE | SINGLESTEP, &REGS, true).is_ok());
    // Without ENABLE everything is off.
    assert_eq!(GuestDebug::new(SINGLESTEP | USE_HW_BP | USE_SW_BP, &REGS, false), Ok(GuestDebug::default()));
    // The debugger's registers only with USE_HW_BP.
    let d = GuestDebug::new(ENABLE | USE_SW_BP, &REGS, false).unwrap();
    assert_eq!((d.db, d.dr7), ([0; 4], 0));
    let d = GuestDebug::new(ENABLE | USE_HW_BP, &REGS, false).unwrap();
    assert_eq!((d.db, d.dr7), ([0x1000, 0x2000, 0x3000, 0x4000], 0x402));
}

#[test]
fn effective_breakpoints_and_exits() {
    let guest_db = [0xa, 0xb, 0xc, 0xd];
    let off = GuestDebug::default();
    // Debugging off: the guest's own breakpoints; #DB still exits, #BP does not.
    assert_eq!(off.effective(&guest_db, 0x401), (guest_db, 0x401));
    assert_eq!(off.exception_bitmap(), 1 << 1);
    assert!(!off.db_to_user());
    let hw = GuestDebug::new(ENABLE | USE_HW_BP, &REGS, false).unwrap();
    assert_eq!(hw.effective(&guest_db, 0x401), ([0x1000, 0x2000, 0x3000, 0x4000], 0x402));
    assert!(hw.db_to_user() && !hw.singlestep());
    let sw = GuestDebug::new(ENABLE | USE_SW_BP, &REGS, false).unwrap();
    assert_eq!(sw.exception_bitmap(), 1 << 1 | 1 << 3);
    assert!(!sw.db_to_user(), "the guest's own #DBs stay the guest's");
    assert_eq!(sw.effective(&guest_db, 0x400), (guest_db, 0x400));
    let ss = GuestDebug::new(ENABLE | SINGLESTEP | BLOCKIRQ, &REGS, false).unwrap();
    assert!(ss.singlestep() && ss.db_to_user() && ss.block_irq());
    assert!(armed(0x402) && armed(0x480) && !armed(0x400) && !armed(0x2400));
}

#[test]
fn dr6_after_a_db() {
    // From RESET: a hit on DR2.
    assert_eq!(dr6_after_db(DR6_ACTIVE_LOW, 1 << 2), 0xffff_0ff4);
    // B0-B3 are replaced, BS and BD accumulate (only software clears them).
    let v = dr6_after_db(0xffff_0ff1, DR6_BS);
    assert_eq!(v, 0xffff_4ff0);
    assert_eq!(dr6_after_db(v, DR6_BD | 1), 0xffff_6ff1);
    // Bit 12 (enabled breakpoint, pending-debug-exceptions format) never reaches DR6; the RTM
    // bit is active low.
    assert_eq!(dr6_after_db(DR6_ACTIVE_LOW, 1 << 12 | 1 << 3), 0xffff_0ff8);
    assert_eq!(dr6_after_db(DR6_ACTIVE_LOW, DR6_RTM), 0xfffe_0ff0);
    // What KVM_EXIT_DEBUG reports (upstream: payload | DR6_ACTIVE_LOW).
    assert_eq!(exit_dr6(DR6_BS), 0xffff_4ff0);
    assert_eq!(exit_dr6(DR6_BD), 0xffff_2ff0);
    assert_eq!(exit_dr6(1), 0xffff_0ff1);
    assert_eq!(dr7_after_db(0x2403), 0x403);
}

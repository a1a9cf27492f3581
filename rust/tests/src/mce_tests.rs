//! Machine-check state: `KVM_X86_SETUP_MCE`'s checks, the MSR write rules of `set_msr_mce`, and
//! `KVM_X86_SET_MCE`'s outcomes (#MC, shutdown, logging, overflow, UCNA with CMCI), as upstream.

use crate::x86::mce::*;

const UC_ERR: u64 = MCI_STATUS_VAL | MCI_STATUS_UC | MCI_STATUS_EN | MCI_STATUS_PCC;
const CE: u64 = MCI_STATUS_VAL | MCI_STATUS_EN | 0x17;
const UCNA: u64 = MCI_STATUS_VAL | MCI_STATUS_UC | MCI_STATUS_EN | MCI_STATUS_MISCV | MCI_STATUS_ADDRV | 0x10090;

fn ctl(bank: u32) -> u32 {
    MC0_CTL + 4 * bank
}

#[test]
fn new_vcpu_has_32_banks_and_no_capabilities() {
    let m = Mce::default();
    assert_eq!(m.bank_count(), 32);
    assert_eq!(m.read(MCG_CAP, false, false), Some(Ok(32)));
    assert_eq!(m.read(ctl(31) + 3, false, false), Some(Ok(0)));
    assert_eq!(m.read(MCG_CTL, false, false), Some(Err(())), "no MCG_CTL_P");
    assert_eq!(m.read(MCG_CTL, true, false), Some(Ok(0)), "userspace may read it");
    assert_eq!(m.read(MC0_CTL2, false, false), Some(Err(())), "no MCG_CMCI_P");
    assert_eq!(m.read(MC0_CTL2, true, false), Some(Ok(0)));
    assert_eq!(m.read(P5_MC_TYPE, false, false), Some(Ok(0)));
    assert_eq!(m.read(0x10, false, false), None, "not a machine-check MSR");
    assert!(is_mce_msr(MC0_CTL2 + 31) && !is_mce_msr(MC0_CTL2 + 32) && !is_mce_msr(MC0_CTL + 128));
}

#[test]
fn setup_checks_bank_count_and_capabilities() {
    let mut m = Mce::default();
    assert_eq!(m.setup(0), Err(()), "no banks");
    assert_eq!(m.setup(33), Err(()), "too many banks");
    assert_eq!(m.setup(MCG_CTL_P | 1 << 9 | 4), Err(()), "MCG_EXT_P is not supported");
    assert_eq!(m.setup(1 << 40 | 4), Err(()));
    assert_eq!(m, Mce::default(), "refused: nothing changed");
    assert_eq!(m.setup(SUPPORTED | MCG_EXT_CNT_MASK | 10), Ok(()));
    assert_eq!(m.bank_count(), 10);
    assert_eq!(m.mcg_ctl, u64::MAX);
    assert!(m.banks.iter().step_by(4).take(10).all(|&c| c == u64::MAX));
    assert_eq!(m.banks[40], 0, "bank 10 does not exist");
    assert_eq!(m.read(ctl(10), true, false), Some(Err(())), "beyond the count");
    assert_eq!(m.read(MC0_CTL2 + 10, true, false), Some(Err(())));
    assert_eq!(m.guest_feature_control_bits(), 1 | FEATURE_CONTROL_LMCE);
    let mut plain = Mce::default();
    plain.setup(4).unwrap();
    assert_eq!(plain.mcg_ctl, 0, "no MCG_CTL_P: left alone");
    assert_eq!(plain.guest_feature_control_bits(), 1);
}

#[test]
fn msr_write_rules() {
    let mut m = Mce::default();
    m.setup(MCG_CTL_P | MCG_CMCI_P | MCG_LMCE_P | 8).unwrap();
    // MCG_CTL: 0 or all ones.
    assert_eq!(m.write(MCG_CTL, 5, false, false, false), Some(Err(())));
    assert_eq!(m.write(MCG_CTL, 0, false, false, false), Some(Ok(())));
    // MCG_CAP is read-only: not a write rkvm knows.
    assert_eq!(m.write(MCG_CAP, 8, true, false, false), None);
    // MCG_EXT_CTL: LMCE_EN only; the guest needs LMCE on in FEATURE_CONTROL.
    assert_eq!(m.write(MCG_EXT_CTL, 1, false, false, false), Some(Err(())));
    assert_eq!(m.write(MCG_EXT_CTL, 1, false, true, false), Some(Ok(())));
    assert_eq!(m.write(MCG_EXT_CTL, 2, true, true, false), Some(Err(())));
    assert_eq!(m.read(MCG_EXT_CTL, false, false), Some(Err(())));
    assert_eq!(m.read(MCG_EXT_CTL, true, false), Some(Ok(1)));
    // CTL2: CMCI_EN and the threshold; reserved bit 29 refused.
    assert_eq!(m.write(MC0_CTL2 + 7, MCI_CTL2_CMCI_EN | 5, false, false, false), Some(Ok(())));
    assert_eq!(m.write(MC0_CTL2 + 7, 1 << 29, false, false, false), Some(Err(())));
    assert_eq!(m.write(MC0_CTL2 + 8, 0, true, false, false), Some(Err(())), "bank 8 does not exist");
    // MCi_CTL: 0, all ones, all ones but bits 10 and 0.
    for ok in [0, u64::MAX, !(1 << 10), !1, !(1 << 10 | 1)] {
        assert_eq!(m.write(ctl(2), ok, false, false, false), Some(Ok(())), "{ok:#x}");
    }
    assert_eq!(m.write(ctl(2), !2, false, false, false), Some(Err(())));
    // MCi_STATUS: the guest only clears it (unless writable); userspace sets anything.
    assert_eq!(m.write(ctl(2) + 1, CE, false, false, false), Some(Err(())));
    assert_eq!(m.write(ctl(2) + 1, CE, false, false, true), Some(Ok(())));
    assert_eq!(m.write(ctl(2) + 1, 0, false, false, false), Some(Ok(())));
    assert_eq!(m.write(ctl(2) + 1, CE, true, false, false), Some(Ok(())));
    assert_eq!(m.write(ctl(2) + 2, 0x1234, false, false, false), Some(Ok(())));
    assert_eq!(m.write(ctl(8), 0, true, false, false), Some(Err(())), "beyond the count");
    // Without CMCI_P, CTL2: only userspace writing 0.
    let mut p = Mce::default();
    p.setup(4).unwrap();
    assert_eq!(p.write(MC0_CTL2, 0, true, false, false), Some(Ok(())));
    assert_eq!(p.write(MC0_CTL2, 0, false, false, false), Some(Err(())));
    assert_eq!(p.write(MC0_CTL2, MCI_CTL2_CMCI_EN, true, false, false), Some(Err(())));
    assert_eq!(p.write(MCG_CTL, 0, true, false, false), Some(Ok(())));
    assert_eq!(p.write(MCG_CTL, u64::MAX, true, false, false), Some(Err(())));
}

fn event(bank: u8, status: u64) -> Event {
    Event { bank, status, addr: 0x1000 + u64::from(bank), misc: 0x86, mcg_status: 0 }
}

#[test]
fn inject_rejects_bad_banks_and_invalid_status() {
    let mut m = Mce::default();
    m.setup(MCG_CTL_P | 4).unwrap();
    assert_eq!(m.inject(&event(4, CE), true), Err(()));
    assert_eq!(m.inject(&event(0, CE & !MCI_STATUS_VAL), true), Err(()));
}

#[test]
fn uncorrected_error_raises_mc_or_shuts_down() {
    let mut m = Mce::default();
    m.setup(MCG_CTL_P | MCG_SER_P | 4).unwrap();
    let e = Event { mcg_status: 5, ..event(1, UC_ERR) };
    assert_eq!(m.inject(&e, false), Ok(Outcome::Shutdown), "CR4.MCE clear");
    assert_eq!(m.banks[5], 0, "nothing logged");
    assert_eq!(m.inject(&e, true), Ok(Outcome::MachineCheck));
    assert_eq!((m.banks[5], m.banks[6], m.banks[7], m.mcg_status), (UC_ERR, 0x1001, 0x86, 5));
    // MCIP (bit 2 of the 5 above) is set: a second one shuts down.
    assert_eq!(m.inject(&e, true), Ok(Outcome::Shutdown));
    m.mcg_status = 0;
    assert_eq!(m.inject(&e, true), Ok(Outcome::MachineCheck));
    assert_eq!(m.banks[5], UC_ERR | MCI_STATUS_OVER, "the bank held a valid error");
    // Reporting disabled: dropped.
    m.mcg_ctl = 0;
    m.mcg_status = 0;
    assert_eq!(m.inject(&event(2, UC_ERR), true), Ok(Outcome::Done));
    assert_eq!(m.banks[9], 0);
    m.mcg_ctl = u64::MAX;
    m.banks[8] = 0;
    assert_eq!(m.inject(&event(2, UC_ERR), true), Ok(Outcome::Done), "MC2_CTL not all ones");
    assert_eq!(m.banks[9], 0);
}

#[test]
fn corrected_errors_are_logged_with_overflow() {
    let mut m = Mce::default();
    m.setup(4).unwrap();
    assert_eq!(m.inject(&event(0, CE), true), Ok(Outcome::Done));
    assert_eq!((m.banks[1], m.banks[2]), (CE, 0x1000));
    let second = Event { addr: 0x2000, ..event(0, CE | 1) };
    assert_eq!(m.inject(&second, true), Ok(Outcome::Done));
    assert_eq!((m.banks[1], m.banks[2]), (CE | 1 | MCI_STATUS_OVER, 0x2000), "overwritten");
    // A bank holding an uncorrected error keeps it; only OVER is added.
    m.banks[5] = UC_ERR;
    m.banks[6] = 0x77;
    assert_eq!(m.inject(&event(1, CE), true), Ok(Outcome::Done));
    assert_eq!((m.banks[5], m.banks[6]), (UC_ERR | MCI_STATUS_OVER, 0x77));
    // A corrected error never raises #MC, even without CR4.MCE.
    assert_eq!(m.inject(&event(3, CE), false), Ok(Outcome::Done));
}

#[test]
fn ucna_is_logged_and_signalled_by_cmci_when_enabled() {
    let mut m = Mce::default();
    m.setup(MCG_CTL_P | MCG_SER_P | MCG_CMCI_P | 32).unwrap();
    let e = Event { bank: 7, status: UCNA, addr: 0xdead_beef, misc: 0xc | 2 << 6, mcg_status: 0 };
    assert!(e.is_ucna());
    assert!(!Event { mcg_status: 1, ..e }.is_ucna());
    assert!(!Event { status: UCNA | MCI_STATUS_S, ..e }.is_ucna());
    assert_eq!(m.inject(&e, false), Ok(Outcome::Done), "CMCI not enabled for the bank");
    assert_eq!(m.read(ctl(7) + 2, false, false), Some(Ok(0xdead_beef)));
    m.write(MC0_CTL2 + 7, MCI_CTL2_CMCI_EN, false, false, false).unwrap().unwrap();
    let e2 = Event { addr: 0xcafe_b0ba, ..e };
    assert_eq!(m.inject(&e2, false), Ok(Outcome::Cmci), "no #MC, CR4.MCE irrelevant");
    assert_eq!(m.banks[4 * 7 + 2], 0xcafe_b0ba);
    assert_eq!(m.banks[4 * 7 + 1], UCNA, "no OVER for UCNA");
    // Without MCG_CMCI_P there is never a CMCI.
    let mut p = Mce::default();
    p.setup(MCG_CTL_P | 8).unwrap();
    p.ctl2[7] = MCI_CTL2_CMCI_EN;
    assert_eq!(p.inject(&e, true), Ok(Outcome::Done));
}

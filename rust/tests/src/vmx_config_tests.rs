//! VMCS configuration derivation from capability MSRs (upstream `setup_vmcs_config`).
//!
//! The MSR values are those Bochs 2.7 reports for `cpu: model=corei7_skylake_x` (read from the
//! module's load line, `pin 0x3f proc 0xa5986df2 ...`, and the SDM's layout), plus variants.

use crate::vmx_config::*;

const PIN_EXT_INTR: u32 = 1 << 0;
const PIN_NMI: u32 = 1 << 3;
const PROC_HLT: u32 = 1 << 7;
const PROC_CR3_LOAD: u32 = 1 << 15;
const PROC_CR3_STORE: u32 = 1 << 16;
const PROC_IO: u32 = 1 << 24;
const PROC_SECONDARY: u32 = 1 << 31;
const P2_EPT: u32 = 1 << 1;
const P2_UG: u32 = 1 << 7;

/// An MSR allowing `may` bits, forcing `must` bits.
fn ctl(must: u32, may: u32) -> u64 {
    (u64::from(may) << 32) | u64::from(must)
}

fn msrs() -> CapMsrs {
    CapMsrs {
        // revision 0x2b, 4 KiB VMCS, write-back, TRUE controls.
        basic: 0x2b | (0x1000 << 32) | (6 << 50) | (1 << 55),
        pin: ctl(0x16, 0x7f),
        // TRUE procbased: CR3 exiting may be cleared.
        proc: ctl(0x0401_e172 & !(PROC_CR3_LOAD | PROC_CR3_STORE), 0xfff9_fffe),
        proc2: ctl(0, 0x0000_00ff),
        exit: ctl(0x0003_6dfb, 0x003f_fffb),
        entry: ctl(0x0000_11fb, 0x0000_f3ff),
        ept_vpid: EPT_CAP_PWL4 | EPT_CAP_WB | EPT_CAP_INVEPT | EPT_CAP_INVEPT_SINGLE | EPT_CAP_INVEPT_ALL,
        cr0_fixed: (0x8000_0021, 0xffff_ffff),
        cr4_fixed: (0x2000, 0x0037_27ff),
    }
}

fn wants() -> Wants {
    Wants {
        pin: Want { required: PIN_EXT_INTR | PIN_NMI, optional: 0, forbidden: 0 },
        proc: Want {
            required: PROC_HLT | PROC_IO | PROC_SECONDARY,
            optional: 0,
            forbidden: PROC_CR3_LOAD | PROC_CR3_STORE,
        },
        proc2: Want { required: P2_EPT | P2_UG, optional: 1 << 3, forbidden: 0 },
        exit: Want { required: 1 << 9, optional: 0, forbidden: 0 },
        entry: Want { required: 1 << 15, optional: 0, forbidden: 0 },
    }
}

#[test]
fn derives_a_config() {
    let c = VmcsConfig::new(&msrs(), &wants()).unwrap();
    assert_eq!(c.revision_id, 0x2b);
    assert_eq!(c.vmcs_size, 4096);
    // Required bits are on, the CPU's forced bits too, and nothing beyond what it allows.
    assert_eq!(c.pin, 0x16 | PIN_EXT_INTR | PIN_NMI);
    assert_ne!(c.proc & PROC_HLT, 0);
    assert_eq!(c.proc & (PROC_CR3_LOAD | PROC_CR3_STORE), 0);
    assert_eq!(c.proc2, P2_EPT | P2_UG | (1 << 3));
}

#[test]
fn missing_and_forced_bits_are_refused() {
    let mut m = msrs();
    m.proc2 = ctl(0, 0xff & !P2_UG);
    assert_eq!(VmcsConfig::new(&m, &wants()), Err(ConfigError::Missing("secondary processor-based", P2_UG)));
    let mut m = msrs();
    // Without TRUE controls, CR3 exiting is forced on: EPT cannot be used that way.
    m.proc = ctl(0x0401_e172, 0xfff9_fffe);
    assert_eq!(VmcsConfig::new(&m, &wants()), Err(ConfigError::Forced("processor-based", PROC_CR3_LOAD | PROC_CR3_STORE)));
    let mut m = msrs();
    m.ept_vpid &= !EPT_CAP_WB;
    assert_eq!(VmcsConfig::new(&m, &wants()), Err(ConfigError::EptCaps));
    let mut m = msrs();
    m.basic &= !(0xf << 50);
    assert_eq!(VmcsConfig::new(&m, &wants()), Err(ConfigError::VmcsMemType));
}

#[test]
fn guest_control_registers() {
    let c = VmcsConfig::new(&msrs(), &wants()).unwrap();
    // Real mode under unrestricted guest: PE/PG stay clear, NE is forced on.
    assert_eq!(c.hw_cr0(0x6000_0010, true), 0x6000_0030);
    assert_eq!(c.hw_cr0(0x6000_0010, false), 0xe000_0031);
    // VMXE is always on in VMX non-root operation; unsupported bits are dropped.
    assert_eq!(c.hw_cr4(0), 0x2000);
    assert_eq!(c.hw_cr4(1 << 30), 0x2000);
}

#[test]
fn vpid_needs_invvpid() {
    let mut w = wants();
    w.proc2.optional |= PROC2_ENABLE_VPID;
    // The CPU allows VPIDs but has no INVVPID: not used.
    let c = VmcsConfig::new(&msrs(), &w).unwrap();
    assert_eq!(c.proc2 & PROC2_ENABLE_VPID, 0);
    assert_eq!(c.vpid_flush(), None);
    // INVVPID with only all-context flushes: used, flushed with type 2.
    let mut m = msrs();
    m.ept_vpid |= VPID_CAP_INVVPID | VPID_CAP_ALL;
    let c = VmcsConfig::new(&m, &w).unwrap();
    assert_ne!(c.proc2 & PROC2_ENABLE_VPID, 0);
    assert_eq!(c.vpid_flush(), Some(2));
    // Single-context preferred.
    m.ept_vpid |= VPID_CAP_SINGLE;
    assert_eq!(VmcsConfig::new(&m, &w).unwrap().vpid_flush(), Some(1));
    // INVVPID types without the instruction itself: not used.
    m.ept_vpid &= !VPID_CAP_INVVPID;
    assert_eq!(VmcsConfig::new(&m, &w).unwrap().vpid_flush(), None);
}

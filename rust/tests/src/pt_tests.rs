//! Intel PT context rules (upstream pt_guest_enter / pt_guest_exit), on a model CPU that
//! refuses what real hardware refuses: writing any RTIT MSR but RTIT_CTL while TraceEn is set
//! (#GP on real CPUs), and that records every access.

use crate::vmx_pt::*;
use std::collections::BTreeMap;

#[derive(Default)]
struct Cpu {
    msrs: BTreeMap<u32, u64>,
    log: Vec<(char, u32, u64)>,
}

impl MsrAccess for Cpu {
    fn read(&mut self, msr: u32) -> u64 {
        let v = *self.msrs.get(&msr).unwrap_or(&0);
        self.log.push(('r', msr, v));
        v
    }
    fn write(&mut self, msr: u32, value: u64) {
        let tracing = self.msrs.get(&RTIT_CTL).copied().unwrap_or(0) & CTL_TRACEEN != 0;
        assert!(!(tracing && msr != RTIT_CTL), "wrote {msr:#x} while TraceEn was set");
        self.log.push(('w', msr, value));
        self.msrs.insert(msr, value);
    }
}

fn all_msrs(ranges: usize) -> Vec<u32> {
    let mut v = vec![RTIT_STATUS, RTIT_OUTPUT_BASE, RTIT_OUTPUT_MASK, RTIT_CR3_MATCH];
    for n in 0..ranges as u32 {
        v.push(RTIT_ADDR0_A + 2 * n);
        v.push(RTIT_ADDR0_A + 2 * n + 1);
    }
    v
}

fn host_cpu(ranges: usize) -> Cpu {
    let mut c = Cpu::default();
    for (i, m) in all_msrs(ranges).into_iter().enumerate() {
        c.msrs.insert(m, 0x1000 + i as u64);
    }
    c.msrs.insert(RTIT_CTL, 0x2001); // tracing on
    c
}

#[test]
fn caps_from_cpuid() {
    assert_eq!(PtCaps::from_cpuid(0x2).addr_ranges, 2);
    assert_eq!(PtCaps::from_cpuid(0x7).addr_ranges, 4);
}

#[test]
fn host_context_survives_a_guest_run() {
    for ranges in [0, 2, 4] {
        let caps = PtCaps { addr_ranges: ranges };
        let mut cpu = host_cpu(ranges);
        let before = cpu.msrs.clone();
        let (mut host, mut guest) = (PtContext::default(), PtContext::default());
        guest_enter(&mut cpu, caps, &mut host, &guest);
        // The guest context (all zero, tracing off) is loaded: no host value is visible.
        assert_eq!(cpu.msrs[&RTIT_CTL] & CTL_TRACEEN, 0);
        for m in all_msrs(ranges) {
            assert_eq!(cpu.msrs[&m], 0, "{m:#x} still holds the host's value in the guest");
        }
        // The guest changes its status; the exit saves it and restores every host MSR.
        cpu.msrs.insert(RTIT_STATUS, 0x55);
        guest_exit(&mut cpu, caps, &host, &mut guest);
        assert_eq!(guest.status, 0x55);
        assert_eq!(cpu.msrs, before, "{ranges} ranges");
    }
}

#[test]
fn tracing_stops_first_and_restarts_last() {
    let caps = PtCaps { addr_ranges: 2 };
    let mut cpu = host_cpu(2);
    let (mut host, mut guest) = (PtContext::default(), PtContext::default());
    guest_enter(&mut cpu, caps, &mut host, &guest);
    // First access reads RTIT_CTL, the second clears TraceEn, before any other MSR is touched.
    assert_eq!(cpu.log[0], ('r', RTIT_CTL, 0x2001));
    assert_eq!(cpu.log[1], ('w', RTIT_CTL, 0x2000));
    cpu.log.clear();
    guest_exit(&mut cpu, caps, &host, &mut guest);
    // RTIT_CTL with TraceEn is the very last write.
    assert_eq!(cpu.log.last(), Some(&('w', RTIT_CTL, 0x2001)));
    assert_eq!(cpu.log.iter().filter(|e| e.1 == RTIT_CTL && e.0 == 'w').count(), 1);
}

#[test]
fn only_existing_address_ranges_are_touched() {
    let caps = PtCaps { addr_ranges: 1 };
    let mut cpu = host_cpu(1);
    let (mut host, mut guest) = (PtContext::default(), PtContext::default());
    guest_enter(&mut cpu, caps, &mut host, &guest);
    guest_exit(&mut cpu, caps, &host, &mut guest);
    assert!(cpu.log.iter().all(|e| e.1 < RTIT_ADDR0_A + 2), "touched a range the CPU lacks");
}

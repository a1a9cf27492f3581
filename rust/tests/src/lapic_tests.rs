//! The local APIC model: registers, priorities, EOI, IPIs, destinations and the timer.

use crate::lapic::*;

/// A software-enabled APIC (SPIV = 0x1ff), as guests set it up.
fn enabled(id: u32) -> Lapic {
    let mut apic = Lapic::new(id, false);
    let e = apic.write(SPIV, 4, 0x1ff, 0);
    assert!(e.dest_changed, "software enable republishes destinations");
    apic
}

fn r(apic: &Lapic, reg: u32) -> u32 {
    apic.read(reg, 4, 0)
}

fn w(apic: &mut Lapic, reg: u32, value: u32) -> Effect {
    apic.write(reg, 4, value, 0)
}

fn bit(apic: &Lapic, base: u32, vector: u8) -> bool {
    r(apic, base + u32::from(vector / 32) * 0x10) & (1 << (vector % 32)) != 0
}

#[test]
fn reset_values() {
    let apic = Lapic::new(3, false);
    assert_eq!(apic.base(), DEFAULT_BASE | BASE_ENABLE);
    assert_eq!(apic.mmio_base(), DEFAULT_BASE);
    assert!(apic.hw_enabled() && !apic.sw_enabled());
    assert_eq!(r(&apic, ID), 3 << 24);
    assert_eq!(r(&apic, LVR), 0x50014);
    for lvt in [LVTT, LVTTHMR, LVTPC, LVT0, LVT1, LVTERR] {
        assert_eq!(r(&apic, lvt), 0x10000, "LVT {lvt:#x} masked");
    }
    assert_eq!(r(&apic, SPIV), 0xff);
    assert_eq!(r(&apic, DFR), 0xffff_ffff);
    for reg in [TPR, PPR, LDR, ESR, ICR, ICR2, TMICT, TMCCT, TDCR] {
        assert_eq!(r(&apic, reg), 0, "reg {reg:#x}");
    }
    assert_eq!(apic.deadline(), None);
    assert_eq!((apic.id(), apic.ldr(), apic.dfr_flat()), (3, 0, true));

    // The BSP: BSP flag, and LINT0 in ExtINT, unmasked (KVM_X86_QUIRK_LINT0_REENABLED).
    let bsp = Lapic::new(0, true);
    assert_eq!(bsp.base(), DEFAULT_BASE | BASE_ENABLE | BASE_BSP);
    assert_eq!(r(&bsp, LVT0), 0x700);
    assert_eq!(r(&bsp, LVT1), 0x10000);
}

#[test]
fn reserved_write_only_and_out_of_range_reads_are_zero() {
    let mut apic = enabled(1);
    apic.accept(0x40, false);
    apic.ack(0x40);
    for offset in [0x0, 0x10, EOI, 0xc0, 0x2f0, 0x3f0, 0x400, 0x800, 0xff0, 0x1000] {
        assert_eq!(apic.read(offset, 4, 0), 0, "offset {offset:#x}");
    }
    // Beyond the first dword of a register, and bad lengths.
    assert_eq!(apic.read(ID + 4, 4, 0), 0);
    assert_eq!(apic.read(ID + 2, 4, 0), 0);
    assert_eq!(apic.read(ID, 3, 0), 0);
    assert_eq!(apic.read(ID, 8, 0), 0);
    // APR reads 0 whatever the image holds.
    assert_eq!(r(&apic, APR), 0);
}

#[test]
fn sub_dword_reads() {
    let apic = Lapic::new(0xab, false);
    assert_eq!(apic.read(ID + 3, 1, 0), 0xab);
    assert_eq!(apic.read(ID + 2, 2, 0), 0xab00);
    assert_eq!(apic.read(LVR, 1, 0), 0x14);
    assert_eq!(apic.read(LVR + 1, 2, 0), 0x0500);
    assert_eq!(apic.read(LVR + 2, 1, 0), 0x05);
    assert_eq!(apic.read(SPIV, 2, 0), 0xff);
}

#[test]
fn sub_dword_and_unaligned_writes_are_ignored() {
    let mut apic = enabled(0);
    assert_eq!(apic.write(TPR, 1, 0x50, 0), Effect::default());
    assert_eq!(apic.write(TPR, 2, 0x50, 0), Effect::default());
    assert_eq!(apic.write(TPR + 4, 4, 0x50, 0), Effect::default());
    assert_eq!(r(&apic, TPR), 0);
    w(&mut apic, TPR, 0x1_2350);
    assert_eq!(r(&apic, TPR), 0x50, "TPR keeps bits 7:0");
    // Read-only registers.
    for reg in [LVR, PPR, ISR, TMR, IRR, TMCCT] {
        let before = r(&apic, reg);
        w(&mut apic, reg, 0xffff_ffff);
        assert_eq!(r(&apic, reg), before, "reg {reg:#x}");
    }
}

#[test]
fn ppr_masks_by_priority_class() {
    let mut apic = enabled(0);
    assert!(apic.accept(0x45, false));
    assert_eq!(apic.pending(), Some(0x45));

    // TPR in the same class: blocked; in a lower class: delivered.
    w(&mut apic, TPR, 0x40);
    assert_eq!(r(&apic, PPR), 0x40);
    assert_eq!(apic.pending(), None);
    w(&mut apic, TPR, 0x4f);
    assert_eq!(r(&apic, PPR), 0x4f);
    assert_eq!(apic.pending(), None);
    w(&mut apic, TPR, 0x3f);
    assert_eq!(apic.pending(), Some(0x45));

    // An in-service vector of a higher class than TPR sets PPR to its class.
    w(&mut apic, TPR, 0x10);
    apic.ack(0x45);
    assert_eq!(r(&apic, PPR), 0x40);
    assert!(apic.accept(0x4a, false));
    assert_eq!(apic.pending(), None, "same class as the in-service vector");
    assert!(apic.accept(0x51, false));
    assert_eq!(apic.pending(), Some(0x51));
    // TPR above the ISR class wins, with its low bits.
    w(&mut apic, TPR, 0x62);
    assert_eq!(r(&apic, PPR), 0x62);
    assert_eq!(apic.pending(), None);
}

#[test]
fn ack_and_eoi_with_nested_isr() {
    let mut apic = enabled(0);
    apic.accept(0x30, false);
    assert_eq!(apic.pending(), Some(0x30));
    apic.ack(0x30);
    assert!(bit(&apic, ISR, 0x30) && !bit(&apic, IRR, 0x30));
    assert_eq!(r(&apic, PPR), 0x30);

    // A higher vector nests; a lower one waits.
    apic.accept(0x50, false);
    apic.ack(0x50);
    assert_eq!(r(&apic, PPR), 0x50);
    apic.accept(0x40, false);
    assert_eq!(apic.pending(), None);

    // EOI retires the highest in-service vector first, whatever value is written.
    let e = w(&mut apic, EOI, 0x1234);
    assert_eq!(e.eoi_level, None, "edge");
    assert!(!bit(&apic, ISR, 0x50) && bit(&apic, ISR, 0x30));
    assert_eq!(r(&apic, PPR), 0x30);
    assert_eq!(apic.pending(), Some(0x40));
    apic.ack(0x40);
    w(&mut apic, EOI, 0);
    w(&mut apic, EOI, 0);
    assert_eq!(r(&apic, PPR), 0);
    assert_eq!(r(&apic, ISR + 0x10), 0);
    // EOI with nothing in service: nothing happens.
    assert_eq!(w(&mut apic, EOI, 0), Effect::default());
}

#[test]
fn level_eoi_reports_the_vector() {
    let mut apic = enabled(0);
    apic.accept(0x61, true);
    assert!(bit(&apic, TMR, 0x61) && bit(&apic, IRR, 0x61));
    apic.ack(0x61);
    let e = w(&mut apic, EOI, 0);
    assert_eq!(e.eoi_level, Some(0x61));
    assert!(!bit(&apic, ISR, 0x61));
    // TMR changes only on acceptance (upstream, SDM 11.8.4): an edge acceptance clears it.
    assert!(bit(&apic, TMR, 0x61));
    apic.accept(0x61, false);
    assert!(!bit(&apic, TMR, 0x61));
    apic.ack(0x61);
    assert_eq!(w(&mut apic, EOI, 0).eoi_level, None);

    // A level vector re-raised while in service: both EOIs broadcast.
    apic.accept(0x70, true);
    apic.ack(0x70);
    apic.accept(0x70, true);
    assert_eq!(w(&mut apic, EOI, 0).eoi_level, Some(0x70));
    assert_eq!(apic.pending(), Some(0x70));
    apic.ack(0x70);
    assert_eq!(w(&mut apic, EOI, 0).eoi_level, Some(0x70));
}

#[test]
fn software_disable_masks_lvts_and_blocks_accept() {
    let mut apic = Lapic::new(0, false);
    assert!(!apic.accept(0x40, false), "software disabled at reset");
    // LVT writes are forced masked while software disabled.
    w(&mut apic, LVT1, 0x400);
    assert_eq!(r(&apic, LVT1), 0x10400);

    let mut apic = enabled(0);
    w(&mut apic, LVTT, 0x20);
    w(&mut apic, LVT0, 0x700);
    w(&mut apic, LVT1, 0x400);
    w(&mut apic, LVTERR, 0xfe);
    assert_eq!((r(&apic, LVTT), r(&apic, LVT0)), (0x20, 0x700));
    let e = w(&mut apic, SPIV, 0xff);
    assert!(e.dest_changed && !apic.sw_enabled());
    assert_eq!(r(&apic, LVTT), 0x10020);
    assert_eq!(r(&apic, LVT0), 0x10700);
    assert_eq!(r(&apic, LVT1), 0x10400);
    assert_eq!(r(&apic, LVTERR), 0x100fe);
    assert!(!apic.accept(0x40, false));
    assert_eq!(r(&apic, IRR + 0x20), 0);
    // Re-enabling does not unmask.
    w(&mut apic, SPIV, 0x1ff);
    assert_eq!(r(&apic, LVTT), 0x10020);
    // SPIV keeps bits 9:0 only (no directed EOI).
    w(&mut apic, SPIV, 0xffff_ffff);
    assert_eq!(r(&apic, SPIV), 0x3ff);
}

#[test]
fn hardware_disable_blocks_everything_and_reenable_restores_the_id() {
    let mut apic = enabled(5);
    apic.accept(0x40, false);
    w(&mut apic, ID, 9 << 24);
    assert_eq!(apic.id(), 9);
    let e = apic.set_base(DEFAULT_BASE);
    assert!(e.dest_changed);
    assert!(!apic.hw_enabled());
    assert_eq!(apic.mmio_base(), DEFAULT_BASE, "the page stays where it was");
    assert_eq!(apic.mmio_read(ID, 4, 0), 0xffff_ffff, "a hole while disabled");
    assert_eq!(apic.mmio_read(ID, 1, 0), 0xff);
    assert_eq!(apic.mmio_write(TPR, 4, 0x20, 0), Effect::default());
    assert_eq!(apic.pending(), None);
    assert!(!apic.accept(0x50, false));
    assert!(apic.accepts_pic());
    // Same value again: no change.
    assert!(!apic.set_base(DEFAULT_BASE).dest_changed);
    let e = apic.set_base(0xfed0_0000 | BASE_ENABLE);
    assert!(e.dest_changed);
    assert_eq!(apic.mmio_base(), 0xfed0_0000);
    assert_eq!(apic.mmio_read(ID, 4, 0), 5 << 24);
    assert_eq!(apic.mmio_read(TPR, 4, 0), 0, "the write to the hole was dropped");
    assert_eq!(apic.id(), 5, "ID back to the vCPU id");
    assert!(apic.sw_enabled(), "other registers kept");
    assert_eq!(apic.pending(), Some(0x40));
}

#[test]
fn illegal_vector_latches_esr() {
    let mut apic = enabled(0);
    assert!(!apic.accept(15, false));
    assert_eq!(r(&apic, IRR), 0);
    // SDM 11.5.3: the error shows after the next ESR write, which also clears it.
    assert_eq!(r(&apic, ESR), 0);
    w(&mut apic, ESR, 0);
    assert_eq!(r(&apic, ESR), ESR_RECV_ILLEGAL_VECTOR);
    w(&mut apic, ESR, 0);
    assert_eq!(r(&apic, ESR), 0);
    // A disabled APIC records nothing.
    w(&mut apic, SPIV, 0xff);
    assert!(!apic.accept(3, false));
    w(&mut apic, ESR, 0);
    assert_eq!(r(&apic, ESR), 0);
    // 16 is the first legal vector.
    w(&mut apic, SPIV, 0x1ff);
    assert!(apic.accept(16, false));
    assert!(bit(&apic, IRR, 16));
}

#[test]
fn icr_write_produces_an_ipi() {
    let mut apic = enabled(0);
    assert_eq!(w(&mut apic, ICR2, 0x12ff_ffff), Effect::default());
    assert_eq!(r(&apic, ICR2), 0x1200_0000);
    let e = w(&mut apic, ICR, 0x0000_4831);
    assert_eq!(
        e.ipi,
        Some(Ipi {
            vector: 0x31,
            mode: MODE_FIXED,
            logical: true,
            assert: true,
            level_trigger: false,
            shorthand: 0,
            dest: 0x12,
        })
    );
    // INIT level deassert, all excluding self, delivery-status bit dropped.
    let e = w(&mut apic, ICR, (3 << 18) | ICR_LEVEL_TRIGGER | ICR_BUSY | 0x500);
    let ipi = e.ipi.unwrap();
    assert_eq!(
        (ipi.mode, ipi.shorthand, ipi.level_trigger, ipi.assert),
        (MODE_INIT, 3, true, false)
    );
    assert!(!ipi.logical);
    assert_eq!(r(&apic, ICR), (3 << 18) | ICR_LEVEL_TRIGGER | 0x500);
    // SIPI to self, NMI to all including self.
    let ipi = w(&mut apic, ICR, (1 << 18) | 0x4600 | 0x9a).ipi.unwrap();
    assert_eq!((ipi.mode, ipi.vector, ipi.shorthand), (MODE_STARTUP, 0x9a, 1));
    let ipi = w(&mut apic, ICR, (2 << 18) | 0x400).ipi.unwrap();
    assert_eq!((ipi.mode, ipi.shorthand), (MODE_NMI, 2));
    assert_eq!(Ipi::from_icr(0x0000_0100 | 0x20, 0x0100_0000).mode, MODE_LOWEST);
    assert_eq!(Ipi::from_icr(0x0000_0700, 0).mode, MODE_EXTINT);
    assert_eq!(Ipi::from_icr(0x0000_0200, 0).mode, MODE_SMI);
}

/// An xAPIC-mode LAPIC's destination state.
fn xapic_dest(id: u8, ldr: u8, dfr_flat: bool) -> Dest {
    Dest { x2apic_id: id.into(), xapic_id: id, ldr: u32::from(ldr) << 24, dfr_flat, ..Dest::default() }
}

fn dest_matches(id: u8, ldr: u8, dfr_flat: bool, dest: u32, logical: bool) -> bool {
    xapic_dest(id, ldr, dfr_flat).matches(dest, logical)
}

#[test]
fn destination_matching() {
    // Physical.
    assert!(dest_matches(3, 0, true, 3, false));
    assert!(!dest_matches(3, 0, true, 4, false));
    assert!(dest_matches(3, 0, true, 0xff, false));
    // Logical flat: a bitmask.
    assert!(dest_matches(0, 0x04, true, 0x06, true));
    assert!(!dest_matches(0, 0x04, true, 0x03, true));
    assert!(dest_matches(0, 0x04, true, 0xff, true));
    assert!(!dest_matches(0, 0, true, 0x7f, true), "LDR 0 matches only broadcast");
    // Logical cluster: cluster in bits 7:4, members in bits 3:0.
    assert!(dest_matches(0, 0x21, false, 0x23, true));
    assert!(!dest_matches(0, 0x21, false, 0x13, true), "other cluster");
    assert!(!dest_matches(0, 0x21, false, 0x22, true), "other member");
    assert!(dest_matches(0, 0x21, false, 0xff, true));

    // Through the registers.
    let mut apic = enabled(2);
    assert!(w(&mut apic, LDR, 0x21ff_ffff).dest_changed);
    assert_eq!(r(&apic, LDR), 0x2100_0000);
    assert!(w(&mut apic, DFR, 0x0000_0000).dest_changed);
    assert_eq!(r(&apic, DFR), 0x0fff_ffff, "bits 27:0 read as ones");
    assert!(!apic.dfr_flat());
    assert!(apic.matches(0x23, true) && !apic.matches(0x02, true));
    w(&mut apic, DFR, 0xf000_0000);
    assert!(apic.dfr_flat());
    assert!(apic.matches(0x20, true) && !apic.matches(0x02, true));
    assert!(w(&mut apic, ID, 0x07ab_cdef).dest_changed);
    assert_eq!(r(&apic, ID), 0x0700_0000);
    assert!(apic.matches(7, false) && !apic.matches(2, false));
}

#[test]
fn cr8_is_tpr_high_nibble() {
    let mut apic = enabled(0);
    apic.set_cr8(0x9);
    assert_eq!(r(&apic, TPR), 0x90);
    assert_eq!(r(&apic, PPR), 0x90);
    assert_eq!(apic.cr8(), 9);
    apic.set_cr8(0x1f);
    assert_eq!(r(&apic, TPR), 0xf0);
    w(&mut apic, TPR, 0x5c);
    assert_eq!(apic.cr8(), 5);
    apic.accept(0x61, false);
    assert_eq!(apic.pending(), Some(0x61));
    apic.set_cr8(6);
    assert_eq!(apic.pending(), None);
}

#[test]
fn pic_acceptance() {
    let mut apic = enabled(1);
    assert!(!apic.accepts_pic(), "LVT0 masked");
    w(&mut apic, LVT0, 0x700);
    assert!(apic.accepts_pic());
    w(&mut apic, LVT0, 0x10700);
    assert!(!apic.accepts_pic(), "masked ExtINT");
    w(&mut apic, LVT0, 0x400);
    assert!(!apic.accepts_pic(), "NMI");
    apic.set_base(DEFAULT_BASE);
    assert!(apic.accepts_pic(), "hardware disabled");
    assert!(Lapic::new(0, true).accepts_pic(), "BSP at reset");
}

#[test]
fn lvt_writable_bits() {
    let mut apic = enabled(0);
    for (reg, mask) in [
        (LVTT, 0x310ff),
        (LVTTHMR, 0x117ff),
        (LVTPC, 0x117ff),
        (LVT0, 0x1f7ff),
        (LVT1, 0x1f7ff),
        (LVTERR, 0x110ff),
    ] {
        w(&mut apic, reg, 0xffff_ffff);
        assert_eq!(r(&apic, reg), mask, "LVT {reg:#x}");
    }
    // No TSC-deadline mode: bit 18 is not writable.
    w(&mut apic, LVTT, 2 << 17 | 0x30);
    assert_eq!(r(&apic, LVTT), 0x30);
    w(&mut apic, TDCR, 0xffff_ffff);
    assert_eq!(r(&apic, TDCR), 0xb);
}

#[test]
fn one_shot_timer() {
    let mut apic = enabled(0);
    w(&mut apic, LVTT, 0xec);
    w(&mut apic, TDCR, 0x1); // divide by 4
    let e = apic.write(TMICT, 4, 1000, 10_000);
    assert!(e.timer_changed);
    assert_eq!(apic.deadline(), Some(14_000));
    assert_eq!(apic.read(TMCCT, 4, 10_000), 1000);
    assert_eq!(apic.read(TMCCT, 4, 12_000), 500);
    assert_eq!(apic.read(TMCCT, 4, 13_999), 0);
    // Too early: nothing.
    apic.expire(13_000);
    assert_eq!(apic.pending(), None);
    apic.expire(14_100);
    assert_eq!(apic.pending(), Some(0xec));
    assert!(!bit(&apic, TMR, 0xec), "edge");
    assert_eq!(apic.deadline(), None);
    assert_eq!(apic.read(TMCCT, 4, 14_100), 0);
    assert_eq!(r(&apic, TMICT), 1000);
    // Once is all.
    apic.ack(0xec);
    apic.expire(20_000);
    assert_eq!(apic.pending(), None);

    // TMICT = 0 stops a running timer.
    apic.write(TMICT, 4, 1000, 30_000);
    assert!(apic.deadline().is_some());
    assert!(apic.write(TMICT, 4, 0, 31_000).timer_changed);
    assert_eq!(apic.deadline(), None);
    assert_eq!(apic.read(TMCCT, 4, 31_000), 0);
}

#[test]
fn divide_values() {
    let mut apic = enabled(0);
    for (tdcr, div) in [(0, 2), (1, 4), (2, 8), (3, 16), (8, 32), (9, 64), (0xa, 128), (0xb, 1)] {
        w(&mut apic, TDCR, tdcr);
        apic.write(TMICT, 4, 10, 0);
        assert_eq!(apic.deadline(), Some(10 * div), "TDCR {tdcr:#x}");
    }
}

#[test]
fn tdcr_change_rescales_the_time_left() {
    let mut apic = enabled(0);
    w(&mut apic, LVTT, 0x40);
    w(&mut apic, TDCR, 0xb); // divide by 1
    apic.write(TMICT, 4, 10_000, 0);
    assert_eq!(apic.deadline(), Some(10_000));
    // 6000 counts left; at divide-by-2 they take 12000 ns.
    let e = apic.write(TDCR, 4, 0, 4_000);
    assert!(e.timer_changed);
    assert_eq!(apic.deadline(), Some(16_000));
    assert_eq!(apic.read(TMCCT, 4, 4_000), 6_000);
    // Same divisor again: nothing to do.
    assert!(!apic.write(TDCR, 4, 0, 5_000).timer_changed);
}

#[test]
fn periodic_timer_rearms_and_is_clamped() {
    let mut apic = enabled(0);
    w(&mut apic, LVTT, LVT_TIMER_PERIODIC | 0x41);
    w(&mut apic, TDCR, 0xb);
    apic.write(TMICT, 4, 1_000_000, 0);
    assert_eq!(apic.deadline(), Some(1_000_000));
    apic.expire(1_000_050);
    assert_eq!(apic.pending(), Some(0x41));
    assert_eq!(apic.deadline(), Some(2_000_000), "from the previous target, not from now");
    assert_eq!(apic.read(TMCCT, 4, 1_500_000), 500_000);
    apic.ack(0x41);
    w(&mut apic, EOI, 0);
    // Far behind: the next expiry is now, then the period resumes from there.
    apic.expire(7_300_000);
    assert_eq!(apic.deadline(), Some(7_300_000));
    apic.expire(7_300_000);
    assert_eq!(apic.deadline(), Some(8_300_000));

    // A short period is clamped to 200 us; the count itself is not.
    apic.write(TMICT, 4, 1000, 10_000_000);
    assert_eq!(apic.deadline(), Some(10_000_000 + MIN_TIMER_PERIOD_NS));
    apic.expire(10_200_000);
    assert_eq!(apic.deadline(), Some(10_400_000));
    // One-shot is not clamped.
    w(&mut apic, LVTT, 0x41);
    apic.write(TMICT, 4, 1000, 20_000_000);
    assert_eq!(apic.deadline(), Some(20_001_000));
}

#[test]
fn mode_switch_keeps_the_count_running() {
    let mut apic = enabled(0);
    w(&mut apic, TDCR, 0xb);
    w(&mut apic, LVTT, LVT_TIMER_PERIODIC | 0x41);
    apic.write(TMICT, 4, 500_000, 0);
    // Periodic -> one-shot (upstream apic_update_lvtt stops only on TSC-deadline switches).
    assert!(w(&mut apic, LVTT, 0x41).timer_changed);
    assert_eq!(r(&apic, TMICT), 500_000);
    assert_eq!(apic.deadline(), Some(500_000));
    apic.expire(500_000);
    assert_eq!(apic.deadline(), None, "now one-shot");
    assert_eq!(apic.pending(), Some(0x41));
    // Rewriting the same mode changes nothing.
    assert!(!w(&mut apic, LVTT, 0x42).timer_changed);
}

#[test]
fn masked_lvtt_does_not_latch() {
    let mut apic = enabled(0);
    w(&mut apic, LVTT, LVT_MASKED | LVT_TIMER_PERIODIC | 0x41);
    w(&mut apic, TDCR, 0xb);
    apic.write(TMICT, 4, 300_000, 0);
    apic.expire(300_000);
    assert_eq!(apic.pending(), None);
    assert_eq!(r(&apic, IRR + 0x20), 0);
    assert_eq!(apic.deadline(), Some(600_000), "keeps counting");
    // Unmasked: the next expiry latches.
    w(&mut apic, LVTT, LVT_TIMER_PERIODIC | 0x41);
    apic.expire(600_000);
    assert_eq!(apic.pending(), Some(0x41));
    // Software disable masks it again.
    apic.ack(0x41);
    w(&mut apic, SPIV, 0xff);
    apic.expire(900_000);
    assert_eq!(r(&apic, IRR + 0x20), 0);
}

#[test]
fn state_round_trip() {
    let mut apic = enabled(4);
    w(&mut apic, TPR, 0x20);
    w(&mut apic, LDR, 0x0800_0000);
    w(&mut apic, DFR, 0x0fff_ffff);
    apic.accept(0x55, true);
    apic.ack(0x55);
    apic.accept(0x80, false);
    w(&mut apic, LVTT, 0x33);
    w(&mut apic, TDCR, 0x3); // divide by 16
    apic.write(TMICT, 4, 1000, 100_000);
    let mut image = [0u8; REG_SIZE];
    apic.get_state(104_000, &mut image, false);
    let tmcct = u32::from_le_bytes(image[TMCCT as usize..TMCCT as usize + 4].try_into().unwrap());
    assert_eq!(tmcct, 750);

    let mut copy = Lapic::new(4, false);
    let e = copy.set_state(&image, 500_000, false).unwrap();
    assert!(e.dest_changed && e.timer_changed);
    assert_eq!(copy.deadline(), Some(500_000 + 750 * 16));
    assert_eq!(copy.read(TMCCT, 4, 500_000), 750);
    assert_eq!(r(&copy, TMICT), 1000);
    assert_eq!(r(&copy, PPR), 0x50);
    assert_eq!((copy.id(), copy.ldr(), copy.dfr_flat()), (4, 8, false));
    assert!(copy.sw_enabled());
    assert_eq!(copy.pending(), Some(0x80));
    assert_eq!(w(&mut copy, EOI, 0).eoi_level, Some(0x55));
    let mut again = [0u8; REG_SIZE];
    copy.get_state(500_000, &mut again, false);
    // Identical but for ISR (EOI above) and PPR.
    again[ISR as usize + 0x20..ISR as usize + 0x24].copy_from_slice(&(1u32 << 0x15).to_le_bytes());
    again[PPR as usize] = 0x50;
    assert_eq!(again[..], image[..]);

    // Periodic mode from the image; an over-long TMCCT starts a full period.
    let mut image = [0u8; REG_SIZE];
    Lapic::new(0, false).get_state(0, &mut image, false);
    image[SPIV as usize..SPIV as usize + 4].copy_from_slice(&0x1ffu32.to_le_bytes());
    image[LVTT as usize..LVTT as usize + 4]
        .copy_from_slice(&(LVT_TIMER_PERIODIC | 0x40).to_le_bytes());
    image[TDCR as usize] = 0xb;
    image[TMICT as usize..TMICT as usize + 4].copy_from_slice(&300_000u32.to_le_bytes());
    image[TMCCT as usize..TMCCT as usize + 4].copy_from_slice(&900_000u32.to_le_bytes());
    image[LVR as usize] = 0x99;
    let mut apic = Lapic::new(0, false);
    apic.set_state(&image, 1_000, false).unwrap();
    assert_eq!(apic.deadline(), Some(301_000));
    assert_eq!(r(&apic, LVR), 0x50014, "KVM's own version");
    apic.expire(301_000);
    assert_eq!(apic.pending(), Some(0x40));
    assert_eq!(apic.deadline(), Some(601_000));
    // No count: stopped.
    image[TMICT as usize..TMICT as usize + 4].copy_from_slice(&0u32.to_le_bytes());
    apic.set_state(&image, 2_000, false).unwrap();
    assert_eq!(apic.deadline(), None);
}

#[test]
fn init_keeps_base_and_id() {
    let mut apic = enabled(6);
    apic.set_base(0xfed0_0000 | BASE_ENABLE);
    w(&mut apic, ID, 0x0900_0000);
    w(&mut apic, TPR, 0x30);
    apic.accept(0x44, false);
    apic.write(TMICT, 4, 100, 0);
    let e = apic.reset(true);
    assert!(e.timer_changed && e.dest_changed);
    assert_eq!(apic.base(), 0xfed0_0000 | BASE_ENABLE);
    assert_eq!(apic.id(), 9);
    assert!(!apic.sw_enabled());
    assert_eq!((r(&apic, TPR), r(&apic, IRR + 0x20), r(&apic, TMICT)), (0, 0, 0));
    assert_eq!(apic.deadline(), None);
    apic.reset(false);
    assert_eq!((apic.base(), apic.id()), (DEFAULT_BASE | BASE_ENABLE, 6));
}

// ---- x2APIC ----

const X2APIC_BASE: u64 = DEFAULT_BASE | BASE_ENABLE | BASE_X2APIC;

/// The MSR of register `reg` (`APIC_BASE_MSR + (reg >> 4)`).
fn msr(reg: u32) -> u32 {
    X2APIC_MSR_FIRST + (reg >> 4)
}

/// A software-enabled APIC in x2APIC mode, as a guest sets it up.
fn x2apic(id: u32) -> Lapic {
    let mut apic = Lapic::new(id, false);
    assert!(apic.set_base(X2APIC_BASE).dest_changed);
    let e = apic.x2apic_msr_write(msr(SPIV), 0x1ff, 0).unwrap();
    assert!(e.dest_changed);
    apic
}

fn rdmsr(apic: &Lapic, reg: u32) -> Option<u64> {
    apic.x2apic_msr_read(msr(reg), 0)
}

fn wrmsr(apic: &mut Lapic, reg: u32, value: u64) -> Option<Effect> {
    apic.x2apic_msr_write(msr(reg), value, 0)
}

#[test]
fn apic_modes_and_legal_transitions() {
    assert_eq!(Mode::of(0), Mode::Disabled);
    assert_eq!(Mode::of(BASE_X2APIC), Mode::Invalid);
    assert_eq!(Mode::of(DEFAULT_BASE | BASE_ENABLE | BASE_BSP), Mode::Xapic);
    assert_eq!(Mode::of(X2APIC_BASE), Mode::X2apic);
    let (off, xapic, x2) = (DEFAULT_BASE, DEFAULT_BASE | BASE_ENABLE, X2APIC_BASE);
    // SDM 11.12.5: xAPIC <-> x2APIC only through xAPIC → x2APIC and x2APIC → disabled.
    for (old, new, ok) in [
        (xapic, x2, true),
        (x2, off, true),
        (off, xapic, true),
        (xapic, off, true),
        (x2, x2, true),
        (x2, xapic, false),
        (off, x2, false),
        (x2, x2 | BASE_BSP, true),
        (xapic, 0xfed0_0000 | BASE_ENABLE, true),
    ] {
        assert_eq!(guest_base_change_valid(old, new), ok, "{old:#x} -> {new:#x}");
    }
}

#[test]
fn x2apic_mode_ids() {
    // An id that does not fit in 8 bits: truncated as the xAPIC ID.
    let mut apic = Lapic::new(0x123, false);
    assert_eq!(r(&apic, ID), 0x23 << 24);
    assert!(!apic.x2apic_mode());
    assert_eq!(rdmsr(&apic, ID), None, "no x2APIC MSRs in xAPIC mode");
    assert!(wrmsr(&mut apic, TPR, 0).is_none());
    let e = apic.set_base(X2APIC_BASE);
    assert!(e.dest_changed && apic.x2apic_mode());
    assert_eq!(rdmsr(&apic, ID), Some(0x123), "the full vCPU id");
    // LDR: cluster 0x12 in bits 31:16, bit 3 in bits 15:0 (kvm_apic_calc_x2apic_ldr).
    assert_eq!(x2apic_ldr(0x123), 0x0012_0008);
    assert_eq!(x2apic_ldr(0), 1);
    assert_eq!(x2apic_ldr(0x1f), 0x0001_8000);
    assert_eq!(rdmsr(&apic, LDR), Some(0x0012_0008));
    // Both read-only in x2APIC mode; no DFR at all.
    assert!(wrmsr(&mut apic, ID, 5).is_none());
    assert!(wrmsr(&mut apic, LDR, 1).is_none());
    assert!(wrmsr(&mut apic, DFR, 0xffff_ffff).is_none());
    assert_eq!(rdmsr(&apic, DFR), None);
    assert_eq!(rdmsr(&apic, ID), Some(0x123));
    // Leaving through disabled keeps LDR; re-enabling (xAPIC) sets the 8-bit ID again.
    apic.set_base(DEFAULT_BASE);
    assert!(!apic.x2apic_mode() && !apic.hw_enabled());
    apic.set_base(DEFAULT_BASE | BASE_ENABLE);
    assert_eq!(r(&apic, ID), 0x23 << 24);
    // Userspace may go straight back to xAPIC mode: the xAPIC ID again.
    apic.set_base(X2APIC_BASE);
    apic.set_base(DEFAULT_BASE | BASE_ENABLE);
    assert_eq!(r(&apic, ID), 0x23 << 24);
    assert_eq!(r(&apic, DFR), 0xffff_ffff);
}

#[test]
fn x2apic_register_access_rules() {
    let mut apic = x2apic(2);
    apic.accept(0x40, false);
    // Readable: as in xAPIC mode, minus APR, DFR and ICR2.
    assert_eq!(rdmsr(&apic, LVR), Some(0x50014));
    assert_eq!(rdmsr(&apic, SPIV), Some(0x1ff));
    assert_eq!(rdmsr(&apic, IRR + 0x20), Some(1));
    for reg in [APR, DFR, ICR2, EOI, SELF_IPI, 0x0, 0x10, 0xc0, 0x2f0] {
        assert_eq!(rdmsr(&apic, reg), None, "reg {reg:#x} is not readable");
    }
    // MSRs 0x840..=0x8ff lie beyond the page's registers.
    for m in [0x840, 0x8ff] {
        assert_eq!(apic.x2apic_msr_read(m, 0), None);
        assert!(apic.x2apic_msr_write(m, 0, 0).is_none());
    }
    assert_eq!(apic.x2apic_msr_read(0x7ff, 0), None);
    assert_eq!(apic.x2apic_msr_read(0x900, 0), None);
    // Writes to read-only and reserved registers, bits 63:32 anywhere but ICR: #GP.
    for reg in [LVR, APR, PPR, ISR, TMR + 0x10, IRR, TMCCT, 0xc0, 0x2f0, 0x3a0] {
        assert!(wrmsr(&mut apic, reg, 0).is_none(), "reg {reg:#x} write");
    }
    assert!(wrmsr(&mut apic, TPR, 1 << 32).is_none());
    assert!(wrmsr(&mut apic, ICR2, 0).is_none());
    // TPR as in xAPIC mode, and CR8 is its high nibble.
    assert!(wrmsr(&mut apic, TPR, 0x35).is_some());
    assert_eq!((rdmsr(&apic, TPR), rdmsr(&apic, PPR), apic.cr8()), (Some(0x35), Some(0x35), 3));
    // ESR: only 0 may be written.
    assert!(wrmsr(&mut apic, ESR, 1).is_none());
    assert!(wrmsr(&mut apic, ESR, 0).is_some());
    // EOI retires the in-service vector.
    wrmsr(&mut apic, TPR, 0);
    assert_eq!(apic.pending(), Some(0x40));
    apic.ack(0x40);
    assert!(wrmsr(&mut apic, EOI, 0).is_some());
    assert_eq!(rdmsr(&apic, ISR + 0x20), Some(0));
    // The timer through MSRs.
    let e = apic.x2apic_msr_write(msr(TMICT), 1000, 5_000).unwrap();
    assert!(e.timer_changed);
    assert_eq!(apic.deadline(), Some(5_000 + 2000), "divide by 2 at reset");
    assert_eq!(apic.x2apic_msr_read(msr(TMCCT), 6_000), Some(500));
    // The MMIO page is a hole: reads all ones, writes dropped.
    assert_eq!(apic.mmio_base(), DEFAULT_BASE);
    assert_eq!(apic.mmio_read(ID, 4, 0), 0xffff_ffff);
    assert_eq!(apic.mmio_read(SPIV, 2, 0), 0xffff);
    assert_eq!(apic.mmio_write(TPR, 4, 0x80, 0), Effect::default());
    assert_eq!(rdmsr(&apic, TPR), Some(0));
}

#[test]
fn x2apic_icr_is_64_bits() {
    let mut apic = x2apic(0);
    let e = wrmsr(&mut apic, ICR, 0x0000_0123_0000_4831).unwrap();
    assert_eq!(
        e.ipi,
        Some(Ipi {
            vector: 0x31,
            mode: MODE_FIXED,
            logical: true,
            assert: true,
            level_trigger: false,
            shorthand: 0,
            dest: 0x123,
        })
    );
    assert_eq!(rdmsr(&apic, ICR), Some(0x0000_0123_0000_4831));
    // The delivery status bit is ignored (and reads 0); the broadcast destination.
    let e = wrmsr(&mut apic, ICR, 0xffff_ffff_0000_1400).unwrap();
    let ipi = e.ipi.unwrap();
    assert_eq!((ipi.mode, ipi.dest, ipi.logical), (MODE_NMI, X2APIC_BROADCAST, false));
    assert_eq!(rdmsr(&apic, ICR), Some(0xffff_ffff_0000_0400));
    // Reserved bits 31:20, 17:16 and 13: #GP, nothing sent or stored.
    for bit in [13, 16, 17, 20, 31] {
        assert!(wrmsr(&mut apic, ICR, 0x40 | 1 << bit).is_none(), "bit {bit}");
    }
    assert_eq!(rdmsr(&apic, ICR), Some(0xffff_ffff_0000_0400));
    // Shorthands still decode.
    let ipi = wrmsr(&mut apic, ICR, 3 << 18 | 0x500).unwrap().ipi.unwrap();
    assert_eq!((ipi.mode, ipi.shorthand), (MODE_INIT, 3));
}

#[test]
fn self_ipi_register() {
    let mut apic = x2apic(7);
    let ipi = wrmsr(&mut apic, SELF_IPI, 0x45).unwrap().ipi.unwrap();
    assert_eq!(ipi, Ipi { vector: 0x45, mode: MODE_FIXED, logical: false, assert: false, level_trigger: false, shorthand: 1, dest: 0 });
    assert!(wrmsr(&mut apic, SELF_IPI, 0x145).is_none(), "bits 31:8 reserved");
    assert_eq!(rdmsr(&apic, SELF_IPI), None, "write-only");
    // No such register in xAPIC mode: an MMIO write there does nothing.
    let mut apic = enabled(7);
    assert_eq!(w(&mut apic, SELF_IPI, 0x45), Effect::default());
}

#[test]
fn x2apic_reset_and_init() {
    let mut apic = x2apic(0x21);
    wrmsr(&mut apic, ICR, 0x0000_0005_0000_0040);
    apic.x2apic_msr_write(msr(TMICT), 100, 0);
    // INIT keeps x2APIC mode, the ID and LDR; ICR (both halves) is cleared.
    let e = apic.reset(true);
    assert!(e.dest_changed);
    assert!(apic.x2apic_mode());
    assert_eq!((rdmsr(&apic, ID), rdmsr(&apic, LDR)), (Some(0x21), Some(x2apic_ldr(0x21).into())));
    assert_eq!(rdmsr(&apic, ICR), Some(0));
    assert_eq!(rdmsr(&apic, SPIV), Some(0xff));
    assert_eq!(apic.deadline(), None);
    assert_eq!(apic.reg(DFR), 0xffff_ffff);
    // RESET: back to xAPIC mode, LDR 0.
    apic.reset(false);
    assert!(!apic.x2apic_mode());
    assert_eq!(apic.base(), DEFAULT_BASE | BASE_ENABLE);
    assert_eq!((r(&apic, ID), r(&apic, LDR), r(&apic, ICR), r(&apic, ICR2)), (0x21 << 24, 0, 0, 0));
}

#[test]
fn x2apic_state_fixup() {
    let mut apic = x2apic(0x105);
    wrmsr(&mut apic, ICR, 0xabcd_0000_0000_4041);
    let mut image = [0u8; REG_SIZE];
    let reg = |image: &[u8; REG_SIZE], o: usize| u32::from_le_bytes(image[o..o + 4].try_into().unwrap());
    let set = |image: &mut [u8; REG_SIZE], o: usize, v: u32| image[o..o + 4].copy_from_slice(&v.to_le_bytes());
    // Without KVM_X2APIC_API_USE_32BIT_IDS the ID is shifted as in xAPIC format (and
    // truncated); the ICR's high half is reported in ICR2.
    apic.get_state(0, &mut image, false);
    assert_eq!(reg(&image, ID as usize), 0x05 << 24);
    assert_eq!(reg(&image, LDR as usize), x2apic_ldr(0x105));
    assert_eq!((reg(&image, ICR as usize), reg(&image, ICR2 as usize)), (0x4041, 0xabcd_0000));
    apic.get_state(0, &mut image, true);
    assert_eq!(reg(&image, ID as usize), 0x105);

    // Setting: ICR | ICR2 << 32; LDR derived; ID ignored without the 32-bit format.
    set(&mut image, ID as usize, 0x7 << 24);
    set(&mut image, LDR as usize, 0x1234);
    set(&mut image, ICR as usize, 0x4042);
    set(&mut image, ICR2 as usize, 0x55);
    let e = apic.set_state(&image, 0, false).unwrap();
    assert!(e.dest_changed);
    assert_eq!(rdmsr(&apic, ID), Some(0x105));
    assert_eq!(rdmsr(&apic, LDR), Some(x2apic_ldr(0x105).into()));
    assert_eq!(rdmsr(&apic, ICR), Some(0x55_0000_4042));
    // With it, the ID must be the vCPU's (else EINVAL, nothing changed).
    set(&mut image, ID as usize, 0x106);
    set(&mut image, TPR as usize, 0x20);
    assert_eq!(apic.set_state(&image, 0, true), None);
    assert_eq!(rdmsr(&apic, TPR), Some(0));
    set(&mut image, ID as usize, 0x105);
    assert!(apic.set_state(&image, 0, true).is_some());
    assert_eq!(rdmsr(&apic, TPR), Some(0x20));
    // xAPIC mode: no fixup, the ID is writable.
    let mut apic = enabled(3);
    let mut image = [0u8; REG_SIZE];
    apic.get_state(0, &mut image, true);
    assert_eq!(reg(&image, ID as usize), 3 << 24);
    set(&mut image, ID as usize, 9 << 24);
    apic.set_state(&image, 0, true).unwrap();
    assert_eq!(apic.id(), 9);
}

#[test]
fn x2apic_destination_matching() {
    let apic = x2apic(0x123);
    let d = apic.dest();
    assert_eq!((d.x2apic, d.hw_enabled, d.sw_enabled, d.x2apic_id), (true, true, true, 0x123));
    assert_eq!(Dest::unpack(d.pack(), 0x123), d);
    // Physical: the 32-bit ID or the x2APIC broadcast; 0xff is an ordinary ID.
    assert!(d.matches(0x123, false));
    assert!(!d.matches(0x23, false));
    assert!(d.matches(X2APIC_BROADCAST, false));
    assert!(!d.matches(0xff, false));
    // Logical: cluster 0x12, member bit 3.
    assert!(d.matches(0x0012_0008, true));
    assert!(d.matches(0x0012_ffff, true));
    assert!(!d.matches(0x0012_0004, true), "other member");
    assert!(!d.matches(0x0011_0008, true), "other cluster");
    assert!(d.matches(X2APIC_BROADCAST, true));
    // kvm_apic_mda: an IOAPIC's 8-bit broadcast is the x2APIC broadcast for this LAPIC, unless
    // the quirk is disabled; an IPI's 0xff never is.
    assert_eq!(d.mda(0xff, false, true), X2APIC_BROADCAST);
    assert_eq!(d.mda(0xff, false, false), 0xff);
    assert_eq!(d.mda(0xff, true, true), 0xff);
    assert_eq!(d.mda(0x12, false, true), 0x12);
    // An xAPIC-mode LAPIC: 0xff is its broadcast, the quirk does not apply.
    let x = enabled(5).dest();
    assert_eq!(x.mda(0xff, false, true), 0xff);
    assert!(x.matches(0xff, false) && x.matches(5, false));
    assert!(!x.matches(X2APIC_BROADCAST, false));
    // The hotplug hack: above 0xff an xAPIC-mode LAPIC is matched by its x2APIC ID.
    let big = Lapic::new(0x123, false).dest();
    assert!(big.matches(0x123, false) && big.matches(0x23, false));
    let mut moved = enabled(5);
    w(&mut moved, ID, 9 << 24);
    let moved = moved.dest();
    assert!(moved.matches(9, false) && !moved.matches(5, false) && !moved.matches(0x105, false));
    // Pack and unpack keep every field, flags included.
    for d in [x, big, moved, Lapic::new(0, true).dest()] {
        assert_eq!(Dest::unpack(d.pack(), d.x2apic_id), d);
    }
    let mut off = enabled(4);
    off.set_base(DEFAULT_BASE);
    let off = off.dest();
    assert!(!off.hw_enabled && off.sw_enabled);
    assert_eq!(Dest::unpack(off.pack(), 4), off);
}

#[test]
fn bus_cycle_of_the_vm_scales_the_timer() {
    // 25 MHz bus (40 ns per cycle), as upstream's apic_bus_clock_test.
    assert!(bus_cycle_valid(40));
    assert!(!bus_cycle_valid(0));
    assert!(!bus_cycle_valid(u64::MAX / (u64::from(u32::MAX) * 128) + 1));
    assert!(bus_cycle_valid(u64::MAX / (u64::from(u32::MAX) * 128)));
    let mut apic = Lapic::new(0, true).with_bus_cycle_ns(40);
    apic.write(SPIV, 4, 0x1ff, 0);
    apic.write(TDCR, 4, 0xb, 0); // divide by 1
    apic.write(TMICT, 4, 1000, 0);
    assert_eq!(apic.deadline(), Some(40_000));
    assert_eq!(apic.read(TMCCT, 4, 20_000), 500);
    // Divide by 2 now: the time left doubles, the count left stays.
    apic.write(TDCR, 4, 0x0, 20_000);
    assert_eq!(apic.deadline(), Some(60_000));
    assert_eq!(apic.read(TMCCT, 4, 20_000), 500);
    // The longest timer with the largest bus cycle does not overflow.
    let big = u64::MAX / (u64::from(u32::MAX) * 128);
    let mut apic = Lapic::new(0, true).with_bus_cycle_ns(big);
    apic.write(SPIV, 4, 0x1ff, 0);
    apic.write(TDCR, 4, 0xa, 0); // divide by 128
    apic.write(TMICT, 4, u32::MAX, 0);
    assert_eq!(apic.deadline(), Some(u64::from(u32::MAX) * 128 * big));
    apic.write(TDCR, 4, 0xb, 1);
    assert!(apic.deadline().is_some());
}

#[test]
fn cmci_entry_exists_only_with_mcg_cmci_p() {
    let mut apic = enabled(2);
    // Without MCG_CMCI_P: 6 LVT entries, 0x2f0 reads 0 and ignores writes, nothing delivered.
    w(&mut apic, LVTCMCI, 0xa9);
    assert_eq!(r(&apic, LVTCMCI), 0);
    assert!(!apic.deliver_cmci());
    assert_eq!(apic.x2apic_msr_read(0x82f, 0), None);
    // KVM_X86_SETUP_MCE with MCG_CMCI_P: a seventh entry, masked, counted in LVR.
    apic.set_cmci(true);
    assert_eq!(r(&apic, LVR), 0x60014);
    assert_eq!(r(&apic, LVTCMCI), LVT_MASKED);
    assert!(!apic.deliver_cmci(), "masked");
    // Fixed mode, vector 0xa9 (upstream's ucna_injection_test): delivered to IRR.
    w(&mut apic, LVTCMCI, 0xa9 | 0xff << 24);
    assert_eq!(r(&apic, LVTCMCI), 0xa9, "only mask, delivery status, mode and vector bits");
    assert!(apic.deliver_cmci());
    assert!(bit(&apic, IRR, 0xa9));
    assert_eq!(apic.pending(), Some(0xa9));
    // Software disable masks it with the others; RESET keeps the entry, masked.
    w(&mut apic, SPIV, 0xff);
    assert_eq!(r(&apic, LVTCMCI), 0xa9 | LVT_MASKED);
    apic.reset(false);
    assert_eq!(r(&apic, LVTCMCI), LVT_MASKED);
    assert_eq!(r(&apic, LVR), 0x60014);
    // A saved image keeps KVM's LVR; taking CMCI away again hides the entry.
    let mut img = [0u8; REG_SIZE];
    apic.get_state(0, &mut img, false);
    img[0x30] = 0;
    apic.set_state(&img, 0, false).unwrap();
    assert_eq!(r(&apic, LVR), 0x60014);
    apic.set_cmci(false);
    assert_eq!(r(&apic, LVR), 0x50014);
    assert_eq!(r(&apic, LVTCMCI), 0);
}

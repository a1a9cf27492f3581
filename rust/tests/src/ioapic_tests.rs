//! The IOAPIC: register access, edge/level delivery, remote IRR and EOI, state save/restore.

use crate::ioapic::*;

/// Writes indirect register `reg` through IOREGSEL/IOWIN.
fn wr(io: &mut Ioapic, reg: u32, val: u32, sent: &mut Vec<Msg>) {
    io.write(REG_SELECT, 4, reg, &mut |_| panic!("IOREGSEL write delivered"));
    io.write(REG_WINDOW, 4, val, &mut |m| {
        sent.push(m);
        true
    });
}

/// Reads indirect register `reg`.
fn rd(io: &mut Ioapic, reg: u32) -> u32 {
    io.write(REG_SELECT, 4, reg, &mut |_| unreachable!());
    io.read(REG_WINDOW, 4)
}

/// Programs pin `pin`'s entry (low half `lo`, destination `dest`).
fn program(io: &mut Ioapic, pin: u32, lo: u32, dest: u8) {
    let mut sent = Vec::new();
    wr(io, 0x11 + 2 * pin, (dest as u32) << 24, &mut sent);
    wr(io, 0x10 + 2 * pin, lo, &mut sent);
    assert!(sent.is_empty(), "programming alone delivers nothing here");
}

/// set_irq, collecting what was sent (every message accepted).
fn line(io: &mut Ioapic, pin: u32, level: bool) -> (i32, Vec<Msg>) {
    let mut sent = Vec::new();
    let r = io.set_irq(pin, level, &mut |m| {
        sent.push(m);
        true
    });
    (r, sent)
}

fn eoi(io: &mut Ioapic, vector: u8) -> Vec<Msg> {
    let mut sent = Vec::new();
    io.eoi(vector, &mut |m| {
        sent.push(m);
        true
    });
    sent
}

const LEVEL: u32 = 1 << 15;
const MASKED: u32 = 1 << 16;
const REMOTE_IRR: u64 = 1 << 14;

#[test]
fn reset_state_is_all_masked() {
    let mut io = Ioapic::new();
    assert_eq!(io.base(), 0xfec0_0000);
    let s = io.get_state();
    assert_eq!((s.base_address, s.ioregsel, s.id, s.irr), (DEFAULT_BASE, 0, 0, 0));
    assert!(s.redirtbl.iter().all(|&e| e == 1 << 16));
    // Version 0x11, 24 entries (max index 23).
    assert_eq!(rd(&mut io, 1), 0x0017_0011);
    assert_eq!(rd(&mut io, 0), 0);
    for pin in 0..PINS as u32 {
        assert_eq!(rd(&mut io, 0x10 + 2 * pin), 0x1_0000);
        assert_eq!(rd(&mut io, 0x11 + 2 * pin), 0);
    }
    // Nothing is delivered from a masked pin.
    assert_eq!(line(&mut io, 3, true), (-1, vec![]));
}

#[test]
fn id_version_arbitration_and_ioregsel() {
    let mut io = Ioapic::new();
    let mut sent = Vec::new();
    // ID keeps bits 27:24; arbitration reads the same; version is read-only.
    wr(&mut io, 0, 0xff00_0000, &mut sent);
    assert_eq!(rd(&mut io, 0), 0x0f00_0000);
    assert_eq!(rd(&mut io, 2), 0x0f00_0000);
    assert_eq!(io.get_state().id, 0xf);
    wr(&mut io, 1, 0xdead_beef, &mut sent);
    assert_eq!(rd(&mut io, 1), 0x0017_0011);
    wr(&mut io, 2, 0x0300_0000, &mut sent);
    assert_eq!(rd(&mut io, 2), 0x0f00_0000);
    // IOREGSEL is 8 bits wide and reads back.
    io.write(REG_SELECT, 4, 0x1_2345, &mut |_| unreachable!());
    assert_eq!(io.read(REG_SELECT, 4), 0x45);
    // Unassigned registers 3..0xf and entries past pin 23 read as all ones.
    assert_eq!(rd(&mut io, 3), 0xffff_ffff);
    assert_eq!(rd(&mut io, 0x0f), 0xffff_ffff);
    assert_eq!(rd(&mut io, 0x10 + 2 * 24), 0xffff_ffff);
    assert_eq!(rd(&mut io, 0xff), 0xffff_ffff);
    // Writes there are dropped.
    wr(&mut io, 0x40, 0x1234, &mut sent);
    assert_eq!(io.get_state().redirtbl, Ioapic::new().get_state().redirtbl);
    assert!(sent.is_empty());
}

#[test]
fn rte_halves_and_mmio_sizes() {
    let mut io = Ioapic::new();
    let mut sent = Vec::new();
    wr(&mut io, 0x10 + 2 * 5, 0x0001_0931, &mut sent);
    wr(&mut io, 0x11 + 2 * 5, 0x0300_0000, &mut sent);
    assert_eq!(io.rte(5), Some(0x0300_0000_0001_0931));
    assert_eq!(rd(&mut io, 0x10 + 2 * 5), 0x0001_0931);
    assert_eq!(rd(&mut io, 0x11 + 2 * 5), 0x0300_0000);
    // Writing one half leaves the other.
    wr(&mut io, 0x10 + 2 * 5, 0x0001_0041, &mut sent);
    assert_eq!(io.rte(5), Some(0x0300_0000_0001_0041));
    // Sub-dword reads truncate, 8-byte reads zero-extend, odd sizes read 0.
    io.write(REG_SELECT, 1, 0x10 + 2 * 5, &mut |_| unreachable!());
    assert_eq!(io.read(REG_WINDOW, 1), 0x41);
    assert_eq!(io.read(REG_WINDOW, 2), 0x0041);
    assert_eq!(io.read(REG_WINDOW, 8), 0x0001_0041);
    assert_eq!(io.read(REG_WINDOW, 3), 0);
    // Other offsets read 0 and ignore writes, including the (absent) EOI register at 0x40.
    assert_eq!(io.read(0x20, 4), 0);
    assert_eq!(io.read(0x04, 4), 0);
    io.write(REG_EOI, 4, 0x41, &mut |_| panic!("EOI register of a 0x11 IOAPIC"));
    // A 1-byte write only takes the low byte; a 3-byte write is ignored.
    io.write(REG_WINDOW, 1, 0xffff_ff42, &mut |_| unreachable!());
    assert_eq!(io.rte(5), Some(0x0300_0000_0000_0042));
    io.write(REG_WINDOW, 3, 0x0001_0000, &mut |_| unreachable!());
    assert_eq!(io.rte(5), Some(0x0300_0000_0000_0042));
    // Only offset & 0xff counts.
    assert_eq!(io.read(0x100 + REG_SELECT, 4), 0x1a);
    assert!(sent.is_empty());
}

#[test]
fn delivery_status_and_remote_irr_are_read_only() {
    let mut io = Ioapic::new();
    let mut sent = Vec::new();
    // Setting them by a write is ignored.
    wr(&mut io, 0x10, MASKED | LEVEL | (1 << 14) | (1 << 12) | 0x30, &mut sent);
    assert_eq!(io.rte(0), Some((MASKED | LEVEL | 0x30) as u64));
    // Remote IRR set by a delivery survives rewriting the entry as level...
    program(&mut io, 0, LEVEL | 0x30, 0);
    assert_eq!(line(&mut io, 0, true).0, 1);
    assert_ne!(io.rte(0).unwrap() & REMOTE_IRR, 0);
    wr(&mut io, 0x10, LEVEL | 0x31, &mut sent);
    assert_eq!(io.rte(0), Some(REMOTE_IRR | (LEVEL | 0x31) as u64));
    wr(&mut io, 0x11, 0x0100_0000, &mut sent);
    assert_ne!(io.rte(0).unwrap() & REMOTE_IRR, 0);
    // ...but is cleared when the entry becomes edge-triggered (Linux's EOI emulation).
    wr(&mut io, 0x10, MASKED | 0x31, &mut sent);
    assert_eq!(io.rte(0).unwrap() & REMOTE_IRR, 0);
    assert!(sent.is_empty());
}

#[test]
fn edge_fires_once_per_rising_edge() {
    let mut io = Ioapic::new();
    program(&mut io, 4, 0x34, 1);
    let (r, sent) = line(&mut io, 4, true);
    assert_eq!(r, 1);
    assert_eq!(sent, vec![Msg { vector: 0x34, mode: 0, logical: false, level: false, dest: 1 }]);
    // Still high: coalesced.
    assert_eq!(line(&mut io, 4, true), (0, vec![]));
    // Low, then high again: a new edge.
    assert_eq!(line(&mut io, 4, false), (1, vec![]));
    assert_eq!(line(&mut io, 4, false), (1, vec![]));
    let (r, sent) = line(&mut io, 4, true);
    assert_eq!((r, sent.len()), (1, 1));
    // No remote IRR for edge entries, and an EOI of the vector re-delivers nothing once the
    // line is low.
    assert_eq!(io.rte(4).unwrap() & REMOTE_IRR, 0);
    line(&mut io, 4, false);
    assert!(eoi(&mut io, 0x34).is_empty());
}

#[test]
fn level_sets_remote_irr_and_redelivers_on_eoi() {
    let mut io = Ioapic::new();
    program(&mut io, 9, LEVEL | 0x49, 0);
    let (r, sent) = line(&mut io, 9, true);
    assert_eq!(r, 1);
    assert_eq!(sent, vec![Msg { vector: 0x49, mode: 0, logical: false, level: true, dest: 0 }]);
    assert_ne!(io.rte(9).unwrap() & REMOTE_IRR, 0);
    // Asserting again while awaiting the EOI: nothing sent, -1 (upstream ioapic_service).
    assert_eq!(line(&mut io, 9, true), (-1, vec![]));
    // An EOI of another vector changes nothing.
    assert!(eoi(&mut io, 0x48).is_empty());
    assert_ne!(io.rte(9).unwrap() & REMOTE_IRR, 0);
    // EOI while still asserted: delivered again, remote IRR set again.
    assert_eq!(eoi(&mut io, 0x49).len(), 1);
    assert_ne!(io.rte(9).unwrap() & REMOTE_IRR, 0);
    // Deassert, EOI: remote IRR clear, nothing sent.
    assert_eq!(line(&mut io, 9, false), (1, vec![]));
    assert!(eoi(&mut io, 0x49).is_empty());
    assert_eq!(io.rte(9).unwrap() & REMOTE_IRR, 0);
    // A new assertion is delivered.
    assert_eq!(line(&mut io, 9, true).0, 1);
}

#[test]
fn level_not_accepted_leaves_remote_irr_clear() {
    let mut io = Ioapic::new();
    program(&mut io, 2, LEVEL | 0x22, 0);
    let r = io.set_irq(2, true, &mut |_| false);
    assert_eq!(r, 0);
    assert_eq!(io.rte(2).unwrap() & REMOTE_IRR, 0);
    // Edge: a refused delivery still counts as delivered for KVM_GET_IRQCHIP's irr.
    program(&mut io, 3, 0x23, 0);
    assert_eq!(io.set_irq(3, true, &mut |_| false), 0);
    assert_eq!(io.get_state().irr, 1 << 2);
}

#[test]
fn masked_level_is_delivered_on_unmask_edge_is_not() {
    let mut io = Ioapic::new();
    program(&mut io, 10, MASKED | LEVEL | 0x5a, 0);
    program(&mut io, 11, MASKED | 0x5b, 0);
    assert_eq!(line(&mut io, 10, true), (-1, vec![]));
    assert_eq!(line(&mut io, 11, true), (-1, vec![]));
    // Both stay pending in irr (the edge one was never delivered).
    assert_eq!(io.get_state().irr, (1 << 10) | (1 << 11));
    // Unmasking the level entry delivers it...
    let mut sent = Vec::new();
    wr(&mut io, 0x10 + 2 * 10, LEVEL | 0x5a, &mut sent);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].vector, 0x5a);
    assert_ne!(io.rte(10).unwrap() & REMOTE_IRR, 0);
    // ...unmasking the edge one does not (as upstream), and re-asserting without a low is
    // coalesced.
    sent.clear();
    wr(&mut io, 0x10 + 2 * 11, 0x5b, &mut sent);
    assert!(sent.is_empty());
    assert_eq!(line(&mut io, 11, true), (0, vec![]));
    assert_eq!(line(&mut io, 11, false).0, 1);
    assert_eq!(line(&mut io, 11, true).0, 1);
    // A masked level line that dropped before the unmask is not delivered.
    program(&mut io, 12, MASKED | LEVEL | 0x5c, 0);
    line(&mut io, 12, true);
    line(&mut io, 12, false);
    wr(&mut io, 0x10 + 2 * 12, LEVEL | 0x5c, &mut sent);
    assert!(sent.is_empty());
    // A masked level entry is not re-delivered on EOI either, but is on unmask.
    line(&mut io, 12, true);
    program(&mut io, 12, MASKED | LEVEL | 0x5c, 0);
    assert!(eoi(&mut io, 0x5c).is_empty());
    wr(&mut io, 0x10 + 2 * 12, LEVEL | 0x5c, &mut sent);
    assert_eq!(sent.len(), 1);
}

#[test]
fn msg_decoding() {
    // Logical, lowest priority, level, destination 0x0f.
    let rte = 0x0f00_0000_0000_0000 | (1 << 15) | (1 << 11) | (1 << 8) | 0x61;
    assert_eq!(
        Msg::from_rte(rte),
        Msg { vector: 0x61, mode: MODE_LOWEST_PRIORITY, logical: true, level: true, dest: 0x0f }
    );
    // Physical NMI to APIC 3; polarity, mask and reserved bits don't show.
    let rte = 0x0300_0000_0000_0000 | (1 << 13) | (4 << 8) | 0x02;
    assert_eq!(
        Msg::from_rte(rte),
        Msg { vector: 2, mode: MODE_NMI, logical: false, level: false, dest: 3 }
    );
    assert_eq!(Msg::from_rte(7 << 8).mode, MODE_EXTINT);
    assert_eq!(Msg::from_rte(5 << 8).mode, MODE_INIT);
    // Through the IOAPIC.
    let mut io = Ioapic::new();
    program(&mut io, 7, (1 << 11) | (5 << 8), 0xff);
    let (_, sent) = line(&mut io, 7, true);
    assert_eq!(
        sent,
        vec![Msg { vector: 0, mode: MODE_INIT, logical: true, level: false, dest: 0xff }]
    );
}

#[test]
fn get_set_state_round_trip() {
    let mut io = Ioapic::new();
    let mut sent = Vec::new();
    wr(&mut io, 0, 0x0500_0000, &mut sent);
    program(&mut io, 1, 0x31, 0);
    program(&mut io, 8, LEVEL | 0x38, 2);
    program(&mut io, 20, MASKED | 0x50, 0);
    line(&mut io, 8, true); // delivered, remote IRR set
    line(&mut io, 20, true); // masked: pending
    line(&mut io, 1, true); // delivered edge: not in the saved irr
    io.write(REG_SELECT, 4, 0x13, &mut |_| unreachable!());
    let s = io.get_state();
    assert_eq!(s.irr, (1 << 8) | (1 << 20));
    assert_eq!((s.id, s.ioregsel), (5, 0x13));
    assert_ne!(s.redirtbl[8] & REMOTE_IRR, 0);

    // Restoring: the level pin awaits its EOI, the masked edge stays pending: nothing sent.
    let mut io2 = Ioapic::new();
    io2.set_state(&s, &mut |m| panic!("unexpected {m:?}"));
    assert_eq!(io2.get_state(), s);
    assert_eq!(io2.read(REG_WINDOW, 4), rd(&mut io, 0x13));
    // The restored level pin is re-delivered on EOI as the line is asserted.
    assert_eq!(eoi(&mut io2, 0x38).len(), 1);

    // Restoring a pending unmasked edge delivers it.
    let mut s2 = s;
    s2.redirtbl[20] = 0x50;
    s2.irr |= 0xff00_0000; // past pin 23: ignored
    let mut io3 = Ioapic::new();
    let mut sent = Vec::new();
    io3.set_state(&s2, &mut |m| {
        sent.push(m);
        true
    });
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].vector, 0x50);
    assert_eq!(io3.get_state().irr, 1 << 8);
    // A different base is taken as is.
    s2.base_address = 0xfec0_1000;
    io3.set_state(&s2, &mut |_| true);
    assert_eq!(io3.base(), 0xfec0_1000);
}

#[test]
fn out_of_range_pin() {
    let mut io = Ioapic::new();
    assert_eq!(io.set_irq(24, true, &mut |_| unreachable!()), -1);
    assert_eq!(io.rte(24), None);
    assert_eq!(io.get_state(), Ioapic::new().get_state());
}

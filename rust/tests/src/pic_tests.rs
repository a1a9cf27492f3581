//! The 8259A pair: initialisation, priorities, cascade, EOI modes, ELCR, poll, state.

use crate::pic::*;

/// Linux's `init_8259A`: ICW1 0x11, ICW2 0x20/0x28, ICW3 4/2, ICW4 `icw4`, then unmask all.
fn linux_init(icw4: u8) -> Pic {
    let mut p = Pic::new();
    for (cmd, data, base, icw3) in [(0x20u16, 0x21u16, 0x20u8, 4u8), (0xa0, 0xa1, 0x28, 2)] {
        assert!(p.write_port(cmd, 0x11));
        assert!(p.write_port(data, base));
        assert!(p.write_port(data, icw3));
        assert!(p.write_port(data, icw4));
    }
    assert!(p.write_port(0x21, 0x00));
    assert!(p.write_port(0xa1, 0x00));
    p
}

#[test]
fn linux_init_sequence() {
    let mut p = Pic::new();
    assert_eq!(p.get_state(false).elcr_mask, 0xf8);
    assert_eq!(p.get_state(true).elcr_mask, 0xde);
    assert!(!p.output());
    p.write_port(0x20, 0x11);
    assert_eq!(p.get_state(false).init_state, 1);
    p.write_port(0x21, 0x20);
    assert_eq!(p.get_state(false).init_state, 2);
    p.write_port(0x21, 0x04);
    assert_eq!(p.get_state(false).init_state, 3);
    p.write_port(0x21, 0x01);
    let m = p.get_state(false);
    assert_eq!((m.init_state, m.init4, m.irq_base, m.auto_eoi, m.imr), (0, 1, 0x20, 0, 0));

    let p = linux_init(0x01);
    let s = p.get_state(true);
    assert_eq!((s.init_state, s.init4, s.irq_base, s.auto_eoi), (0, 1, 0x28, 0));
    // ICW2's low 3 bits are dropped.
    let mut p = Pic::new();
    p.write_port(0x20, 0x11);
    p.write_port(0x21, 0x27);
    assert_eq!(p.get_state(false).irq_base, 0x20);
    // Without ICW4 (ICW1 bit 0 clear), ICW3 ends the sequence.
    let mut p = Pic::new();
    p.write_port(0x20, 0x10);
    p.write_port(0x21, 0x08);
    p.write_port(0x21, 0x04);
    assert_eq!(p.get_state(false).init_state, 0);
    p.write_port(0x21, 0xfb);
    assert_eq!(p.get_state(false).imr, 0xfb);
}

#[test]
fn irq0_acks_to_vector_0x20() {
    let mut p = linux_init(0x01);
    assert_eq!(p.set_irq(0, true), 1);
    assert!(p.output());
    assert_eq!(p.ack(), 0x20);
    assert!(!p.output());
    let m = p.get_state(false);
    assert_eq!((m.isr, m.irr), (1, 0));
    // Non-specific EOI.
    p.write_port(0x20, 0x20);
    assert_eq!(p.get_state(false).isr, 0);
    assert_eq!(p.take_acked(), 1);
    assert_eq!(p.take_acked(), 0);
}

#[test]
fn imr_masks() {
    let mut p = linux_init(0x01);
    p.write_port(0x21, 0x02);
    assert_eq!(p.read_port(0x21), Some(0x02));
    assert_eq!(p.set_irq(1, true), -1);
    assert!(!p.output());
    assert_eq!(p.get_state(false).irr, 0x02, "latched while masked");
    p.write_port(0x21, 0x00);
    assert!(p.output());
    assert_eq!(p.ack(), 0x21);
    // Masking the slave's IRQ 12.
    p.write_port(0x20, 0x20);
    p.write_port(0xa1, 0x10);
    assert_eq!(p.set_irq(12, true), -1);
    assert!(!p.output());
}

#[test]
fn slave_irq_through_cascade() {
    let mut p = linux_init(0x01);
    assert_eq!(p.set_irq(10, true), 1);
    assert!(p.output());
    assert_eq!(p.ack(), 0x2a);
    assert_eq!(p.get_state(false).isr, 1 << 2);
    assert_eq!(p.get_state(true).isr, 1 << 2);
    assert_eq!(p.get_state(true).irr, 0);
    // Linux EOIs the slave, then the master.
    p.write_port(0xa0, 0x20);
    p.write_port(0x20, 0x20);
    assert_eq!((p.get_state(false).isr, p.get_state(true).isr), (0, 0));
    assert_eq!(p.take_acked(), (1 << 10) | (1 << 2));
    // Slave IRQ 8 is the slave's highest priority: 0x28.
    p.set_irq(10, false);
    p.set_irq(10, true);
    p.set_irq(8, true);
    assert_eq!(p.ack(), 0x28);
}

#[test]
fn eoi_priorities_nonspecific_and_specific() {
    let mut p = linux_init(0x01);
    p.set_irq(3, true);
    assert_eq!(p.ack(), 0x23);
    // A lower-priority request waits for the EOI.
    p.set_irq(5, true);
    assert!(!p.output());
    // A higher-priority one nests.
    p.set_irq(1, true);
    assert!(p.output());
    assert_eq!(p.ack(), 0x21);
    assert_eq!(p.get_state(false).isr, 0b1010);
    // Non-specific EOI clears the highest in service (IRQ 1), IRQ 3 still blocks IRQ 5.
    p.write_port(0x20, 0x20);
    assert_eq!(p.get_state(false).isr, 0b1000);
    assert!(!p.output());
    // Specific EOI of IRQ 3.
    p.write_port(0x20, 0x63);
    assert_eq!(p.get_state(false).isr, 0);
    assert!(p.output());
    assert_eq!(p.ack(), 0x25);
    // Specific EOI of an IRQ not in service changes nothing.
    p.write_port(0x20, 0x62);
    assert_eq!(p.get_state(false).isr, 1 << 5);
}

#[test]
fn edge_and_level_per_elcr() {
    let mut p = linux_init(0x01);
    // Only unmasked bits are writable.
    p.write_port(0x4d0, 0xff);
    assert_eq!(p.read_port(0x4d0), Some(0xf8));
    p.write_port(0x4d1, 0xff);
    assert_eq!(p.read_port(0x4d1), Some(0xde));
    p.write_port(0x4d0, 0x00);
    p.write_port(0x4d1, 1 << 3); // IRQ 11 level

    // Level IRQ 11: IRR follows the line, INTA does not clear it.
    assert_eq!(p.set_irq(11, true), 1);
    assert_eq!(p.set_irq(11, true), 0, "already pending");
    assert_eq!(p.ack(), 0x2b);
    assert_eq!(p.get_state(true).irr, 1 << 3);
    // EOI with the line still high: requested again.
    p.write_port(0xa0, 0x20);
    p.write_port(0x20, 0x20);
    assert!(p.output());
    assert_eq!(p.ack(), 0x2b);
    p.write_port(0xa0, 0x20);
    p.write_port(0x20, 0x20);
    // Deasserted: gone, though the master's IRQ 2 edge is latched: spurious IRQ 15.
    p.set_irq(11, false);
    assert_eq!(p.get_state(true).irr, 0);
    assert_eq!(p.ack(), 0x2f);
    assert_eq!(p.get_state(true).isr, 0);
    p.write_port(0x20, 0x20);

    // Edge IRQ 4: a second pulse while the first is pending is coalesced.
    assert_eq!(p.set_irq(4, true), 1);
    assert_eq!(p.set_irq(4, true), 1, "still high: no new edge, nothing coalesced");
    assert_eq!(p.set_irq(4, false), 1);
    assert_eq!(p.set_irq(4, true), 0);
    assert_eq!(p.ack(), 0x24);
    assert_eq!(p.get_state(false).irr, 0);
    p.write_port(0x20, 0x20);
    // High since before the ack: no new edge, no new request.
    assert!(!p.output());
    p.set_irq(4, false);
    p.set_irq(4, true);
    assert!(p.output());
}

#[test]
fn auto_eoi_and_rotation() {
    let mut p = linux_init(0x03);
    assert_eq!(p.get_state(false).auto_eoi, 1);
    p.set_irq(0, true);
    assert_eq!(p.ack(), 0x20);
    assert_eq!(p.get_state(false).isr, 0);
    assert_eq!(p.take_acked(), 1);
    // A lower-priority request is not blocked.
    p.set_irq(6, true);
    assert_eq!(p.ack(), 0x26);
    // Rotate in auto-EOI mode: the acked IRQ becomes the lowest priority.
    p.write_port(0x20, 0x80);
    assert_eq!(p.get_state(false).rotate_on_auto_eoi, 1);
    p.set_irq(0, false);
    p.set_irq(0, true);
    p.set_irq(1, false);
    p.set_irq(1, true);
    assert_eq!(p.ack(), 0x20);
    assert_eq!(p.get_state(false).priority_add, 1);
    p.write_port(0x20, 0x00);
    assert_eq!(p.get_state(false).rotate_on_auto_eoi, 0);

    // Rotate on non-specific EOI, set priority, rotate on specific EOI.
    let mut p = linux_init(0x01);
    p.set_irq(0, true);
    p.set_irq(1, true);
    assert_eq!(p.ack(), 0x20);
    p.write_port(0x20, 0xa0);
    assert_eq!(p.get_state(false).priority_add, 1);
    p.set_irq(0, false);
    p.set_irq(0, true);
    // IRQ 1 is now the highest priority, IRQ 0 the lowest.
    assert_eq!(p.ack(), 0x21);
    p.write_port(0x20, 0xe1); // rotate on specific EOI of IRQ 1
    assert_eq!(p.get_state(false).priority_add, 2);
    assert_eq!(p.get_state(false).isr, 0);
    p.write_port(0x20, 0xc7); // set priority: IRQ 7 lowest
    assert_eq!(p.get_state(false).priority_add, 0);
    assert_eq!(p.ack(), 0x20);
}

#[test]
fn poll_mode() {
    let mut p = linux_init(0x01);
    // Nothing pending: 0x07 and the poll is consumed.
    p.write_port(0x20, 0x0c);
    assert_eq!(p.get_state(false).poll, 1);
    assert_eq!(p.read_port(0x20), Some(0x07));
    assert_eq!(p.get_state(false).poll, 0);
    // IRQ 3 pending: 0x83, taken out of IRR, not left in service.
    p.set_irq(3, true);
    p.write_port(0x20, 0x0c);
    assert_eq!(p.read_port(0x21), Some(0x83));
    let m = p.get_state(false);
    assert_eq!((m.irr, m.isr), (0, 0));
    assert!(!p.output());
    // Next read is normal again (IMR at the data port).
    assert_eq!(p.read_port(0x21), Some(0));
    // Polling the slave clears the master's IRQ 2.
    p.set_irq(13, true);
    assert_eq!(p.get_state(false).irr, 1 << 2);
    p.write_port(0xa0, 0x0c);
    assert_eq!(p.read_port(0xa0), Some(0x85));
    assert_eq!(p.get_state(false).irr, 0);
    assert_eq!(p.get_state(true).irr, 0);
    assert!(!p.output());
}

#[test]
fn spurious_irq7() {
    let mut p = linux_init(0x01);
    assert_eq!(p.ack(), 0x27);
    assert_eq!(p.get_state(false).isr, 0, "a spurious IRQ is not put in service");
    // A masked request is not seen either.
    p.write_port(0x21, 0x01);
    p.set_irq(0, true);
    assert_eq!(p.ack(), 0x27);
}

#[test]
fn ocw3_reads_irr_or_isr() {
    let mut p = linux_init(0x01);
    p.set_irq(0, true);
    p.set_irq(4, true);
    assert_eq!(p.ack(), 0x20);
    // Default after init: IRR.
    assert_eq!(p.read_port(0x20), Some(0x10));
    p.write_port(0x20, 0x0b);
    assert_eq!(p.read_port(0x20), Some(0x01));
    assert_eq!(p.read_port(0x20), Some(0x01), "sticky");
    p.write_port(0x20, 0x0a);
    assert_eq!(p.read_port(0x20), Some(0x10));
    // OCW3 without RR leaves the selection.
    p.write_port(0x20, 0x08);
    assert_eq!(p.get_state(false).read_reg_select, 0);
    // Special mask mode is recorded (ESMM|SMM), and cleared (ESMM alone).
    p.write_port(0x20, 0x68);
    assert_eq!(p.get_state(false).special_mask, 1);
    p.write_port(0x20, 0x48);
    assert_eq!(p.get_state(false).special_mask, 0);
}

#[test]
fn get_set_state_round_trip() {
    let mut p = linux_init(0x01);
    p.write_port(0x4d1, 0x0c);
    p.write_port(0xa1, 0x40);
    p.set_irq(6, true);
    assert_eq!(p.ack(), 0x26);
    p.set_irq(11, true);
    let (m, s) = (p.get_state(false), p.get_state(true));

    let mut q = Pic::new();
    q.set_state(false, &m);
    q.set_state(true, &s);
    assert_eq!((q.get_state(false), q.get_state(true)), (m, s));
    assert_eq!(q.output(), p.output());
    // Both continue alike: IRQ 11 (higher priority via IRQ 2) nests over 6.
    assert!(q.output());
    assert_eq!(q.ack(), p.ack());

    // Setting a state recomputes INTR.
    let mut r = Pic::new();
    assert!(!r.output());
    let st = ChipState { irr: 0x01, irq_base: 0x08, elcr_mask: 0xf8, ..Default::default() };
    r.set_state(false, &st);
    assert!(r.output());
    assert_eq!(r.ack(), 0x08);
}

#[test]
fn ports_and_icw1_reset() {
    let mut p = linux_init(0x01);
    assert_eq!(p.read_port(0x22), None);
    assert!(!p.write_port(0x40, 0));
    assert!(owns_port(0x4d1) && owns_port(0xa0) && !owns_port(0x4d2) && !owns_port(0x60));
    // ICW1 clears IMR, edge IRR, rotation and selections; keeps level IRR and ISR of others.
    p.write_port(0x4d0, 0x08); // IRQ 3 level
    p.set_irq(3, true);
    p.set_irq(5, true);
    p.write_port(0x21, 0xf0);
    assert_eq!(p.ack(), 0x23);
    p.write_port(0x20, 0x0b);
    p.write_port(0x20, 0x11);
    let m = p.get_state(false);
    assert_eq!((m.imr, m.irr, m.isr, m.read_reg_select, m.init_state), (0, 0x08, 0x08, 0, 1));
    assert_eq!(m.irq_base, 0x20, "kept until ICW2");
    assert!(p.take_wakeup_needed());
    assert!(!p.take_wakeup_needed());
}

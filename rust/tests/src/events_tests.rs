//! Event injection: priorities, windows, and re-injection after an interrupted delivery.

use crate::vmx_events::*;

const OPEN: Guest = Guest { if_flag: true, interruptibility: 0 };
const IF0: Guest = Guest { if_flag: false, interruptibility: 0 };

fn with_interrupt(vector: u8) -> Events {
    let mut ev = Events::default();
    ev.interrupt = Some(Interrupt { vector, ..Default::default() });
    ev
}

#[test]
fn an_interrupt_waits_for_if_and_the_sti_shadow() {
    let mut ev = with_interrupt(0x20);
    // IF=0: nothing injected, an interrupt-window exit asked for.
    let e = ev.next_entry(IF0, false, false);
    assert_eq!((e.info, e.irq_window), (0, true));
    ev.complete(0, 0, 0);
    assert!(ev.interrupt.is_some(), "still queued");
    // STI shadow: still not.
    let e = ev.next_entry(Guest { if_flag: true, interruptibility: BLOCKING_BY_STI }, false, false);
    assert_eq!(e.info, 0);
    // Open: external interrupt, type 0.
    let e = ev.next_entry(OPEN, false, false);
    assert_eq!((e.info, e.irq_window), (INFO_VALID | 0x20, false));
    ev.complete(0, 0, 0);
    assert_eq!(ev.interrupt, None, "delivered");
}

#[test]
fn exception_before_nmi_before_interrupt() {
    let mut ev = with_interrupt(0x30);
    ev.exception = Some(Exception { vector: 13, error_code: Some(0x18), soft: None, pending: false });
    ev.nmi_pending = 1;
    let e = ev.next_entry(OPEN, false, false);
    assert_eq!(e.info, INFO_VALID | INFO_HAS_ERROR | (TYPE_HW_EXCEPTION << 8) | 13);
    assert_eq!(e.error_code, 0x18);
    assert!(e.nmi_window && e.irq_window);
    ev.complete(0, 0, 0);
    let e = ev.next_entry(OPEN, false, false);
    assert_eq!(e.info, INFO_VALID | (TYPE_NMI << 8) | 2);
    ev.complete(0, 0, 0);
    assert!(!ev.nmi_injected && ev.nmi_pending == 0);
    let e = ev.next_entry(OPEN, false, false);
    assert_eq!(e.info, INFO_VALID | 0x30);
}

#[test]
fn nmis_wait_while_blocked_and_collapse_to_two() {
    let mut ev = Events::default();
    ev.queue_nmi(false);
    ev.queue_nmi(false);
    ev.queue_nmi(false);
    assert_eq!(ev.nmi_pending, 2);
    let blocked = Guest { if_flag: true, interruptibility: BLOCKING_BY_NMI };
    let e = ev.next_entry(blocked, false, false);
    assert_eq!((e.info, e.nmi_window), (0, true));
    // While masked, only one can wait.
    let mut m = Events::default();
    m.queue_nmi(true);
    m.queue_nmi(true);
    assert_eq!(m.nmi_pending, 1);
    // NMIs ignore IF.
    let e = ev.next_entry(IF0, false, false);
    assert_eq!(e.info, INFO_VALID | (TYPE_NMI << 8) | 2);
}

#[test]
fn an_interrupted_delivery_is_reinjected_whatever_if_says() {
    let mut ev = with_interrupt(0x20);
    let e = ev.next_entry(OPEN, false, false);
    assert_eq!(e.info, INFO_VALID | 0x20);
    // The delivery hit an EPT violation (IDT-vectoring information valid).
    ev.complete(INFO_VALID | 0x20, 0, 0);
    assert!(ev.needs_reinjection());
    assert!(!ev.ready_for_interrupt(OPEN));
    // The guest's IF is 0 now only because the delivery began: inject again anyway.
    let e = ev.next_entry(IF0, false, false);
    assert_eq!(e.info, INFO_VALID | 0x20);
    ev.complete(0, 0, 0);
    assert!(ev.ready_for_interrupt(OPEN));
}

#[test]
fn software_events_keep_their_instruction_length() {
    let mut ev = Events::default();
    // INT3 (soft exception) and INT 0x80 (soft interrupt) cut short.
    ev.complete(INFO_VALID | (TYPE_SOFT_EXCEPTION << 8) | 3, 0, 1);
    let e = ev.next_entry(IF0, false, false);
    assert_eq!((e.info, e.instr_len), (INFO_VALID | (TYPE_SOFT_EXCEPTION << 8) | 3, 1));
    ev.complete(INFO_VALID | (TYPE_SOFT_INTR << 8) | 0x80, 0, 2);
    let e = ev.next_entry(IF0, false, false);
    assert_eq!((e.info, e.instr_len), (INFO_VALID | (TYPE_SOFT_INTR << 8) | 0x80, 2));
    // An exception with its error code.
    ev.complete(INFO_VALID | INFO_HAS_ERROR | (TYPE_HW_EXCEPTION << 8) | 14, 6, 0);
    assert_eq!(ev.exception, Some(Exception { vector: 14, error_code: Some(6), soft: None, pending: false }));
}

#[test]
fn a_failed_entry_keeps_everything_and_userspace_window() {
    let mut ev = with_interrupt(0x21);
    assert!(!ev.ready_for_interrupt(OPEN), "one is queued already");
    let _ = ev.next_entry(OPEN, true, false);
    // No complete() after a failed entry: the next entry carries it again.
    let e = ev.next_entry(OPEN, true, false);
    assert_eq!(e.info, INFO_VALID | 0x21);
    assert!(e.irq_window, "userspace asked for the window");
    let mut empty = Events::default();
    assert!(empty.ready_for_interrupt(OPEN) && !empty.ready_for_interrupt(IF0));
    assert!(empty.next_entry(IF0, true, false).irq_window);
}

#[test]
fn idle_means_nothing_to_inject() {
    let mut ev = Events::default();
    assert!(ev.idle());
    assert_eq!(ev.next_entry(OPEN, false, false), Entry::default(), "the fast path skips exactly this");
    ev.queue_nmi(false);
    assert!(!ev.idle());
    assert!(!with_interrupt(0x20).idle());
}

#[test]
fn blockirq_holds_back_new_interrupts_and_nmis_only() {
    // KVM_GUESTDBG_BLOCKIRQ: a queued interrupt and a pending NMI stay queued, with no window.
    let mut ev = with_interrupt(0x20);
    ev.queue_nmi(false);
    let e = ev.next_entry(OPEN, false, true);
    assert_eq!((e.info, e.irq_window, e.nmi_window), (0, false, false));
    ev.complete(0, 0, 0);
    assert_eq!((ev.nmi_pending, ev.interrupt.map(|i| i.vector)), (1, Some(0x20)));
    // Userspace's own window request still stands.
    assert!(ev.next_entry(OPEN, true, true).irq_window);
    // An exception goes in, and so does an interrupted delivery being redone.
    ev.exception = Some(Exception { vector: 1, error_code: None, soft: None, pending: true });
    assert_eq!(ev.next_entry(OPEN, false, true).info, INFO_VALID | (TYPE_HW_EXCEPTION << 8) | 1);
    ev.complete(0, 0, 0);
    assert!(ev.exception.is_none());
    ev.complete(INFO_VALID | 0x21, 0, 0);
    assert_eq!(ev.next_entry(OPEN, false, true).info, INFO_VALID | 0x21);
    // Once lifted, the NMI comes first.
    ev.complete(0, 0, 0);
    assert_eq!(ev.next_entry(OPEN, false, false).info, INFO_VALID | (TYPE_NMI << 8) | 2);
}

#[test]
fn only_a_queued_exception_is_pending() {
    let mut ev = Events::default();
    assert!(!ev.exception_pending());
    ev.exception = Some(Exception { vector: 13, error_code: Some(0), soft: None, pending: true });
    assert!(ev.exception_pending());
    // Carried by an entry whose exit cut its delivery short: injected, no longer pending
    // (upstream: exception.injected), so KVM_SET_GUEST_DEBUG may inject over it.
    let _ = ev.next_entry(OPEN, false, false);
    ev.complete(INFO_VALID | INFO_HAS_ERROR | (TYPE_HW_EXCEPTION << 8) | 13, 0, 0);
    assert!(ev.exception.is_some() && !ev.exception_pending());
}

//! Event injection in the userspace-irqchip model: which exception, NMI or interrupt the next
//! VM entry delivers, which window exits to ask for, and what an exit left undelivered
//! (upstream: `inject_pending_event`, `vmx_inject_irq`/`vmx_inject_nmi`/`vmx_inject_exception`,
//! `vmx_complete_interrupts`, and the `vcpu->arch.exception / interrupt / nmi_*` fields).
//!
//! Events come from three places: rkvm's own exit handlers (#GP for a bad WRMSR, #PF from string
//! I/O...), userspace (`KVM_INTERRUPT`, `KVM_NMI`, `KVM_SET_VCPU_EVENTS`), and the CPU itself,
//! when a VM exit interrupts the delivery of an event (IDT-vectoring information: the event must
//! be delivered again, or it is lost).
//!
//! At most one event goes into the VM-entry interruption-information field per entry, in
//! upstream's order: an exception, then an NMI, then an interrupt. An external interrupt from
//! `KVM_INTERRUPT` waits for the guest to accept it (RFLAGS.IF = 1, no STI/MOV SS shadow) behind
//! an interrupt-window exit, so userspace cannot make a VM entry fail by injecting too early;
//! an NMI likewise waits behind an NMI-window exit while NMIs are blocked.
//!
//! Pure logic: no kernel dependency, tested on the host (`rust/tests`). The encodings are the
//! SDM's (vol. 3, 25.8.3 and 24.9.3), checked against the kernel headers in `vcpu.rs`.

/// Valid bit of the interruption-information fields.
pub const INFO_VALID: u32 = 1 << 31;
/// "Deliver error code" bit.
pub const INFO_HAS_ERROR: u32 = 1 << 11;
/// Interruption types (bits 10:8).
pub const TYPE_EXT_INTR: u32 = 0;
pub const TYPE_NMI: u32 = 2;
pub const TYPE_HW_EXCEPTION: u32 = 3;
pub const TYPE_SOFT_INTR: u32 = 4;
pub const TYPE_PRIV_SOFT_EXCEPTION: u32 = 5;
pub const TYPE_SOFT_EXCEPTION: u32 = 6;

/// Guest interruptibility-state bits.
pub const BLOCKING_BY_STI: u32 = 1;
pub const BLOCKING_BY_MOV_SS: u32 = 2;
pub const BLOCKING_BY_NMI: u32 = 8;

/// The NMI vector.
pub const NMI_VECTOR: u8 = 2;

/// An exception to deliver at the next entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exception {
    pub vector: u8,
    pub error_code: Option<u32>,
    /// Re-delivery of an INT3/INTO/INT1 (types 5/6): needs the instruction length.
    pub soft: Option<(u32, u32)>,
    /// Queued by rkvm and not yet carried by an entry (upstream `exception.pending`, as opposed
    /// to `exception.injected`: one whose delivery began, or that userspace set through
    /// `KVM_SET_VCPU_EVENTS`). `KVM_SET_GUEST_DEBUG` may not inject over a pending one.
    pub pending: bool,
}

/// An interrupt to deliver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interrupt {
    pub vector: u8,
    /// Its delivery had begun when an exit interrupted it: deliver again whatever RFLAGS.IF
    /// says now (the CPU already checked).
    pub reinject: bool,
    /// A software interrupt (INT n) being re-delivered: its instruction length.
    pub soft_len: Option<u32>,
}

/// What the guest accepts now (RFLAGS.IF and the interruptibility state).
#[derive(Clone, Copy, Debug, Default)]
pub struct Guest {
    pub if_flag: bool,
    pub interruptibility: u32,
}

impl Guest {
    /// Whether an external interrupt can be injected (upstream `vmx_interrupt_blocked` inverted).
    pub fn accepts_interrupt(&self) -> bool {
        self.if_flag && self.interruptibility & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS) == 0
    }

    /// Whether an NMI can be injected (upstream `vmx_nmi_blocked` inverted).
    pub fn accepts_nmi(&self) -> bool {
        self.interruptibility & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS | BLOCKING_BY_NMI) == 0
    }
}

/// What the next entry injects and which window exits it asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The VM-entry interruption-information field (0: nothing).
    pub info: u32,
    pub error_code: u32,
    /// The VM-entry instruction length (software events only).
    pub instr_len: u32,
    pub irq_window: bool,
    pub nmi_window: bool,
}

/// Which queued event the current entry carries (cleared when its exit completes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carried {
    Exception,
    Nmi,
    Interrupt,
}

/// A vCPU's undelivered events.
#[derive(Clone, Copy, Debug, Default)]
pub struct Events {
    pub exception: Option<Exception>,
    /// An NMI whose delivery is under way (injected, not yet known delivered).
    pub nmi_injected: bool,
    /// NMIs still to inject (at most 2, upstream's `process_nmi` limit).
    pub nmi_pending: u8,
    pub interrupt: Option<Interrupt>,
    carried: Option<Carried>,
}

impl Events {
    /// `KVM_NMI`: one more NMI; while one is being delivered or NMIs are blocked, only one more
    /// can be pending (upstream `process_nmi`).
    pub fn queue_nmi(&mut self, masked: bool) {
        let limit = if masked || self.nmi_injected { 1 } else { 2 };
        self.nmi_pending = (self.nmi_pending + 1).min(limit);
    }

    /// Nothing to deliver: an entry injects nothing and asks for no NMI window.
    pub fn idle(&self) -> bool {
        self.exception.is_none() && !self.nmi_injected && self.nmi_pending == 0 && self.interrupt.is_none()
    }

    /// Whether some event must still be delivered before a new interrupt can be
    /// (upstream `kvm_event_needs_reinjection`).
    pub fn needs_reinjection(&self) -> bool {
        self.exception.is_some() || self.nmi_injected || self.interrupt.is_some_and(|i| i.reinject)
    }

    /// `kvm_run->ready_for_interrupt_injection`: userspace may call `KVM_INTERRUPT` now.
    pub fn ready_for_interrupt(&self, g: Guest) -> bool {
        g.accepts_interrupt() && self.interrupt.is_none() && !self.needs_reinjection()
    }

    /// Whether an exception is queued and not yet carried by an entry (upstream
    /// `kvm_is_exception_pending`).
    pub fn exception_pending(&self) -> bool {
        self.exception.is_some_and(|x| x.pending)
    }

    /// Chooses the event for the next entry. `user_window`: userspace set
    /// `request_interrupt_window`. `block_irq` (`KVM_GUESTDBG_BLOCKIRQ`): no new NMI or
    /// interrupt is injected and no window asked for them; exceptions and the re-delivery of an
    /// interrupted event still go in (upstream `kvm_check_and_inject_events`).
    pub fn next_entry(&mut self, g: Guest, user_window: bool, block_irq: bool) -> Entry {
        let mut e = Entry::default();
        self.carried = None;
        if let Some(x) = self.exception {
            let ty = match x.soft {
                Some((ty, len)) => {
                    e.instr_len = len;
                    ty
                }
                None => TYPE_HW_EXCEPTION,
            };
            e.info = INFO_VALID | (ty << 8) | u32::from(x.vector);
            if let Some(code) = x.error_code {
                e.info |= INFO_HAS_ERROR;
                e.error_code = code;
            }
            self.carried = Some(Carried::Exception);
        } else if self.nmi_injected {
            e.info = INFO_VALID | (TYPE_NMI << 8) | u32::from(NMI_VECTOR);
            self.carried = Some(Carried::Nmi);
        } else if let Some(i) = self.interrupt.filter(|i| i.reinject || i.soft_len.is_some()) {
            e.info = nmi_or_intr(i, &mut e.instr_len);
            self.carried = Some(Carried::Interrupt);
        } else if self.nmi_pending > 0 && g.accepts_nmi() && !block_irq {
            self.nmi_pending -= 1;
            self.nmi_injected = true;
            e.info = INFO_VALID | (TYPE_NMI << 8) | u32::from(NMI_VECTOR);
            self.carried = Some(Carried::Nmi);
        } else if let Some(i) = self.interrupt.filter(|_| g.accepts_interrupt() && !block_irq) {
            e.info = nmi_or_intr(i, &mut e.instr_len);
            self.carried = Some(Carried::Interrupt);
        }
        e.nmi_window = self.nmi_pending > 0 && !block_irq;
        e.irq_window =
            user_window || (self.interrupt.is_some() && self.carried != Some(Carried::Interrupt) && !block_irq);
        e
    }

    /// After a VM exit (not a failed entry): the carried event was delivered, unless the
    /// IDT-vectoring information says its delivery was cut short, in which case it (or
    /// whatever event was being delivered) is queued again (upstream `__vmx_complete_interrupts`).
    pub fn complete(&mut self, idt_info: u32, idt_error: u32, instr_len: u32) {
        match self.carried.take() {
            Some(Carried::Exception) => self.exception = None,
            Some(Carried::Nmi) => self.nmi_injected = false,
            Some(Carried::Interrupt) => self.interrupt = None,
            None => {}
        }
        if idt_info & INFO_VALID == 0 {
            return;
        }
        let vector = idt_info as u8;
        let error_code = (idt_info & INFO_HAS_ERROR != 0).then_some(idt_error);
        match (idt_info >> 8) & 7 {
            TYPE_NMI => self.nmi_injected = true,
            TYPE_HW_EXCEPTION => self.exception = Some(Exception { vector, error_code, soft: None, pending: false }),
            ty @ (TYPE_PRIV_SOFT_EXCEPTION | TYPE_SOFT_EXCEPTION) => {
                self.exception = Some(Exception { vector, error_code, soft: Some((ty, instr_len)), pending: false })
            }
            TYPE_SOFT_INTR => self.interrupt = Some(Interrupt { vector, reinject: true, soft_len: Some(instr_len) }),
            // External interrupt (type 0; 1 and 7 are reserved or other-event).
            _ => self.interrupt = Some(Interrupt { vector, reinject: true, soft_len: None }),
        }
    }
}

/// The interruption information for an interrupt (external or software).
fn nmi_or_intr(i: Interrupt, instr_len: &mut u32) -> u32 {
    match i.soft_len {
        Some(len) => {
            *instr_len = len;
            INFO_VALID | (TYPE_SOFT_INTR << 8) | u32::from(i.vector)
        }
        None => INFO_VALID | (TYPE_EXT_INTR << 8) | u32::from(i.vector),
    }
}

//! The in-kernel PIC: two cascaded 8259As (master at ports 0x20/0x21, slave at 0xa0/0xa1 on the
//! master's IRQ 2) and the PIIX edge/level control registers (ELCR, ports 0x4d0/0x4d1)
//! (upstream: `arch/x86/kvm/i8259.c`, `struct kvm_kpic_state` / `struct kvm_pic` in
//! `arch/x86/kvm/irq.h`, and `struct kvm_pic_state` in `arch/x86/include/uapi/asm/kvm.h`).
//!
//! Userspace drives GSIs 0..15 with `KVM_IRQ_LINE` ([`Pic::set_irq`]); the guest programs the
//! chips through ICW1-4 and OCW1-3 ([`Pic::write_port`], [`Pic::read_port`]); the vCPU run loop
//! looks at the INTR output ([`Pic::output`]) and, when it injects the interrupt, runs the INTA
//! cycle ([`Pic::ack`]) to get the vector.
//!
//! Pure logic: no kernel dependency, tested on the host (`rust/tests`).
//!
//! As upstream (which follows QEMU's model):
//! - An ELCR bit makes its IRQ level-triggered: IRR follows the line and INTA does not clear it.
//!   Otherwise IRR latches a rising edge (`last_irr` holds the line). The ELCR masks are 0xf8
//!   (master: IRQ 0-2 always edge) and 0xde (slave: IRQ 8 and 13 always edge).
//! - A slave request is passed to the master as a pulse on IRQ 2 (edge), so an INTA with nothing
//!   left on the slave gives the slave's spurious IRQ 15 vector; with nothing on the master, the
//!   master's IRQ 7 vector.
//! - ICW1 resets the chip but not its ISR (only ISR bits of pending edge requests are cleared,
//!   when some vCPU accepts PIC interrupts), nor `irq_base`, `init4`, ELCR; single mode and
//!   level-triggered mode (ICW1 bits 1 and 3) are not supported (upstream logs, then ignores
//!   them). ICW3 is accepted and ignored (the cascade is fixed).
//! - OCW3's special mask mode is recorded (`special_mask`) but, as upstream, has no effect on
//!   priority resolution. Special fully nested mode (ICW4 bit 4) is honoured on the master.
//! - A new PIC is all zeros except the ELCR masks (upstream `kvm_pic_init` does not reset it;
//!   `init_state` 0 means "ready", IMR 0 means nothing masked).
//!
//! Simplifications: one interrupt source (userspace), so no per-source line state
//! (`irq_states`); no ack or mask notifiers (acknowledged IRQs are recorded for
//! [`Pic::take_acked`] instead); the vCPU wake-up that upstream's `pic_unlock` does is left to the
//! caller ([`Pic::take_wakeup_needed`]).

/// Fields of struct kvm_pic_state (upstream `struct kvm_kpic_state` starts with the same fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChipState {
    /// Line levels, for edge detection.
    pub last_irr: u8,
    /// Interrupt request register.
    pub irr: u8,
    /// Interrupt mask register (OCW1).
    pub imr: u8,
    /// In-service register.
    pub isr: u8,
    /// The IRQ with the highest priority (rotation).
    pub priority_add: u8,
    /// Vector of IRQ 0 (ICW2, low 3 bits clear).
    pub irq_base: u8,
    /// OCW3: read ISR (1) or IRR (0) at the command port.
    pub read_reg_select: u8,
    /// OCW3 poll command pending: the next read is a poll.
    pub poll: u8,
    pub special_mask: u8,
    /// 0 ready, 1 expecting ICW2, 2 expecting ICW3, 3 expecting ICW4.
    pub init_state: u8,
    pub auto_eoi: u8,
    pub rotate_on_auto_eoi: u8,
    pub special_fully_nested_mode: u8,
    /// ICW1 announced an ICW4.
    pub init4: u8,
    /// Edge (0) / level (1) per IRQ.
    pub elcr: u8,
    /// Which ELCR bits are writable.
    pub elcr_mask: u8,
}

/// Number of PIC pins (`PIC_NUM_PINS`).
pub const PINS: u32 = 16;
/// I/O ports.
pub const PORT_MASTER_CMD: u16 = 0x20;
pub const PORT_MASTER_DATA: u16 = 0x21;
pub const PORT_SLAVE_CMD: u16 = 0xa0;
pub const PORT_SLAVE_DATA: u16 = 0xa1;
pub const PORT_ELCR_MASTER: u16 = 0x4d0;
pub const PORT_ELCR_SLAVE: u16 = 0x4d1;
/// Writable ELCR bits.
pub const ELCR_MASK_MASTER: u8 = 0xf8;
pub const ELCR_MASK_SLAVE: u8 = 0xde;

const MASTER: usize = 0;
const SLAVE: usize = 1;

/// The master/slave pair (upstream `struct kvm_pic`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pic {
    pics: [ChipState; 2],
    /// INTR to the CPU.
    output: bool,
    wakeup_needed: bool,
    /// IRQs (0..15) whose ISR bit was cleared (an EOI, auto-EOI, poll) since `take_acked`.
    acked: u16,
}

impl Default for Pic {
    fn default() -> Pic {
        Pic::new()
    }
}

/// Whether `port` is one of the PIC's or ELCR's (upstream's three 2-port I/O devices).
pub fn owns_port(port: u16) -> bool {
    matches!(
        port,
        PORT_MASTER_CMD
            | PORT_MASTER_DATA
            | PORT_SLAVE_CMD
            | PORT_SLAVE_DATA
            | PORT_ELCR_MASTER
            | PORT_ELCR_SLAVE
    )
}

/// The highest priority among `mask`'s IRQs, 0 being the highest (IRQ `priority_add`); 8 if
/// `mask` is empty (upstream `get_priority`).
fn get_priority(s: &ChipState, mask: u8) -> u8 {
    if mask == 0 {
        return 8;
    }
    let mut priority: u8 = 0;
    while mask & (1 << (priority.wrapping_add(s.priority_add) & 7)) == 0 {
        priority += 1;
    }
    priority
}

/// Sets an IRQ line's level (upstream `pic_set_irq1`): returns -1 if the IRQ is masked in IMR,
/// else 0 if its IRR bit was already set (coalesced), else 1 (also for a deassertion).
fn set_irq1(s: &mut ChipState, irq: u8, level: bool) -> i32 {
    let mask = 1u8 << irq;
    let mut ret = 1;
    if s.elcr & mask != 0 {
        if level {
            ret = i32::from(s.irr & mask == 0);
            s.irr |= mask;
            s.last_irr |= mask;
        } else {
            s.irr &= !mask;
            s.last_irr &= !mask;
        }
    } else if level {
        if s.last_irr & mask == 0 {
            ret = i32::from(s.irr & mask == 0);
            s.irr |= mask;
        }
        s.last_irr |= mask;
    } else {
        s.last_irr &= !mask;
    }
    if s.imr & mask != 0 {
        -1
    } else {
        ret
    }
}

impl Pic {
    /// A new PIC (upstream `kvm_pic_init`): all state zero, ELCR masks 0xf8 and 0xde.
    pub fn new() -> Pic {
        let master = ChipState { elcr_mask: ELCR_MASK_MASTER, ..ChipState::default() };
        let slave = ChipState { elcr_mask: ELCR_MASK_SLAVE, ..ChipState::default() };
        Pic { pics: [master, slave], output: false, wakeup_needed: false, acked: 0 }
    }

    /// The IRQ (0..7) chip `c` asks for, if one has a higher priority than those in service
    /// (upstream `pic_get_irq`).
    fn get_irq(&self, c: usize) -> Option<u8> {
        let s = &self.pics[c];
        let priority = get_priority(s, s.irr & !s.imr);
        if priority == 8 {
            return None;
        }
        // In special fully nested mode the master does not count the slave's in-service IRQ 2,
        // so a higher-priority slave IRQ can nest.
        let mut mask = s.isr;
        if s.special_fully_nested_mode != 0 && c == MASTER {
            mask &= !(1 << 2);
        }
        if priority < get_priority(s, mask) {
            Some(priority.wrapping_add(s.priority_add) & 7)
        } else {
            None
        }
    }

    /// Recomputes the cascade and INTR (upstream `pic_update_irq`); called whenever the
    /// answer may change.
    fn update_irq(&mut self) {
        if self.get_irq(SLAVE).is_some() {
            set_irq1(&mut self.pics[MASTER], 2, true);
            set_irq1(&mut self.pics[MASTER], 2, false);
        }
        let level = self.get_irq(MASTER).is_some();
        // Upstream `pic_irq_request`.
        if !self.output {
            self.wakeup_needed = true;
        }
        self.output = level;
    }

    /// Clears an ISR bit (upstream `pic_clear_isr`, whose ack notifiers become `acked`).
    fn clear_isr(&mut self, c: usize, irq: u8) {
        self.pics[c].isr &= !(1 << irq);
        self.acked |= 1 << (irq as u16 + 8 * c as u16);
    }

    /// `KVM_IRQ_LINE` for GSI `irq` (0..15) (upstream `kvm_pic_set_irq`). Returns -1 if the IRQ
    /// is masked in its chip's IMR, 0 if the request was already pending in IRR (coalesced),
    /// 1 otherwise (including deassertions). An IRQ out of range does nothing and returns -1
    /// (upstream: `BUG_ON`; a GSI with no route gives -1).
    pub fn set_irq(&mut self, irq: u32, level: bool) -> i32 {
        if irq >= PINS {
            return -1;
        }
        let ret = set_irq1(&mut self.pics[(irq >> 3) as usize], (irq & 7) as u8, level);
        self.update_irq();
        ret
    }

    /// The INTR output line to the CPU (upstream `s->output`).
    pub fn output(&self) -> bool {
        self.output
    }

    /// Whether INTR was low at some update since the last call (upstream `wakeup_needed`: when
    /// set, `pic_unlock` kicks the first vCPU whose local APIC accepts PIC interrupts). Clears it.
    pub fn take_wakeup_needed(&mut self) -> bool {
        core::mem::replace(&mut self.wakeup_needed, false)
    }

    /// IRQs (bit n = IRQ n) acknowledged by clearing their ISR bit since the last call (where
    /// upstream calls `kvm_notify_acked_irq`). Clears the set.
    pub fn take_acked(&mut self) -> u16 {
        core::mem::replace(&mut self.acked, 0)
    }

    /// Acknowledges `irq` on chip `c` (upstream `pic_intack`): sets ISR, clears an edge IRR,
    /// and in auto-EOI mode clears ISR again (rotating first if asked to).
    fn intack(&mut self, c: usize, irq: u8) {
        let s = &mut self.pics[c];
        s.isr |= 1 << irq;
        if s.elcr & (1 << irq) == 0 {
            s.irr &= !(1 << irq);
        }
        if s.auto_eoi != 0 {
            if s.rotate_on_auto_eoi != 0 {
                s.priority_add = (irq + 1) & 7;
            }
            self.clear_isr(c, irq);
        }
    }

    /// The INTA cycle (upstream `kvm_pic_read_irq`): returns the vector of the highest-priority
    /// request, going through the slave for IRQ 2. With no request on the master this is
    /// master IRQ 7's vector; with IRQ 2 but nothing on the slave, slave IRQ 7's (spurious
    /// interrupts, not put in service on the chip that has nothing).
    pub fn ack(&mut self) -> u8 {
        self.output = false;
        let intno = match self.get_irq(MASTER) {
            Some(irq) => {
                self.intack(MASTER, irq);
                if irq == 2 {
                    let irq2 = match self.get_irq(SLAVE) {
                        Some(irq2) => {
                            self.intack(SLAVE, irq2);
                            irq2
                        }
                        None => 7,
                    };
                    self.pics[SLAVE].irq_base.wrapping_add(irq2)
                } else {
                    self.pics[MASTER].irq_base.wrapping_add(irq)
                }
            }
            None => self.pics[MASTER].irq_base.wrapping_add(7),
        };
        self.update_irq();
        intno
    }

    /// ICW1 (upstream `kvm_pic_reset`). `accept_pic_intr`: whether some vCPU's local APIC
    /// accepts PIC interrupts (upstream `kvm_apic_accept_pic_intr`); only then are the ISR bits
    /// of pending edge requests cleared.
    fn reset(&mut self, c: usize, accept_pic_intr: bool) {
        let s = &mut self.pics[c];
        let edge_irr = s.irr & !s.elcr;
        s.last_irr = 0;
        s.irr &= s.elcr;
        s.imr = 0;
        s.priority_add = 0;
        s.special_mask = 0;
        s.read_reg_select = 0;
        if s.init4 == 0 {
            s.special_fully_nested_mode = 0;
            s.auto_eoi = 0;
        }
        s.init_state = 1;
        if !accept_pic_intr {
            return;
        }
        for irq in 0..8 {
            if edge_irr & (1 << irq) != 0 {
                self.clear_isr(c, irq);
            }
        }
    }

    /// A write to chip `c`'s command (`addr` even) or data (`addr` odd) port (upstream
    /// `pic_ioport_write`).
    fn ioport_write(&mut self, c: usize, addr: u16, val: u8, accept_pic_intr: bool) {
        if addr & 1 == 0 {
            if val & 0x10 != 0 {
                // ICW1. Bit 1 (single) and bit 3 (level-triggered mode) are unsupported.
                self.pics[c].init4 = val & 1;
                self.reset(c, accept_pic_intr);
            } else if val & 0x08 != 0 {
                // OCW3.
                let s = &mut self.pics[c];
                if val & 0x04 != 0 {
                    s.poll = 1;
                }
                if val & 0x02 != 0 {
                    s.read_reg_select = val & 1;
                }
                if val & 0x40 != 0 {
                    s.special_mask = (val >> 5) & 1;
                }
            } else {
                // OCW2.
                let cmd = val >> 5;
                match cmd {
                    // Clear / set rotate in auto-EOI mode.
                    0 | 4 => self.pics[c].rotate_on_auto_eoi = cmd >> 2,
                    // Non-specific EOI (5: and rotate).
                    1 | 5 => {
                        let s = &self.pics[c];
                        let priority = get_priority(s, s.isr);
                        if priority != 8 {
                            let irq = priority.wrapping_add(s.priority_add) & 7;
                            if cmd == 5 {
                                self.pics[c].priority_add = (irq + 1) & 7;
                            }
                            self.clear_isr(c, irq);
                            self.update_irq();
                        }
                    }
                    // Specific EOI.
                    3 => {
                        self.clear_isr(c, val & 7);
                        self.update_irq();
                    }
                    // Set priority (the given IRQ becomes the lowest).
                    6 => {
                        self.pics[c].priority_add = val.wrapping_add(1) & 7;
                        self.update_irq();
                    }
                    // Rotate on specific EOI.
                    7 => {
                        let irq = val & 7;
                        self.pics[c].priority_add = (irq + 1) & 7;
                        self.clear_isr(c, irq);
                        self.update_irq();
                    }
                    // 2: no operation.
                    _ => {}
                }
            }
        } else {
            let s = &mut self.pics[c];
            match s.init_state {
                0 => {
                    // OCW1.
                    s.imr = val;
                    self.update_irq();
                }
                1 => {
                    // ICW2.
                    s.irq_base = val & 0xf8;
                    s.init_state = 2;
                }
                2 => {
                    // ICW3 (ignored).
                    s.init_state = if s.init4 != 0 { 3 } else { 0 };
                }
                3 => {
                    // ICW4. Bit 0 (8086 mode) is assumed.
                    s.special_fully_nested_mode = (val >> 4) & 1;
                    s.auto_eoi = (val >> 1) & 1;
                    s.init_state = 0;
                }
                // Only a bad KVM_SET_IRQCHIP gets here; upstream ignores the write too.
                _ => {}
            }
        }
    }

    /// A poll (upstream `pic_poll_read`): the requesting IRQ is taken as if acknowledged and
    /// EOId at once, and returned with bit 7 set; with no request, 0x07. A poll of the slave
    /// also clears IRQ 2 on the master.
    fn poll_read(&mut self, c: usize) -> u8 {
        match self.get_irq(c) {
            Some(irq) => {
                if c == SLAVE {
                    self.pics[MASTER].isr &= !(1 << 2);
                    self.pics[MASTER].irr &= !(1 << 2);
                }
                self.pics[c].irr &= !(1 << irq);
                self.clear_isr(c, irq);
                if c == SLAVE || irq != 2 {
                    self.update_irq();
                }
                irq | 0x80
            }
            None => {
                self.update_irq();
                0x07
            }
        }
    }

    /// A read of chip `c`'s command or data port (upstream `pic_ioport_read`): a pending poll
    /// command first; otherwise IRR or ISR (per OCW3) at the command port, IMR at the data port.
    fn ioport_read(&mut self, c: usize, addr: u16) -> u8 {
        if self.pics[c].poll != 0 {
            let ret = self.poll_read(c);
            self.pics[c].poll = 0;
            ret
        } else {
            let s = &self.pics[c];
            if addr & 1 == 0 {
                if s.read_reg_select != 0 {
                    s.isr
                } else {
                    s.irr
                }
            } else {
                s.imr
            }
        }
    }

    /// A 1-byte read of `port` (upstream `picdev_read`); `None` if the port is not the PIC's
    /// or ELCR's. Upstream handles only 1-byte accesses: for a wider access to one of these
    /// ports (see [`owns_port`]) the caller should return zeros and not call this.
    pub fn read_port(&mut self, port: u16) -> Option<u8> {
        match port {
            PORT_MASTER_CMD | PORT_MASTER_DATA => Some(self.ioport_read(MASTER, port)),
            PORT_SLAVE_CMD | PORT_SLAVE_DATA => Some(self.ioport_read(SLAVE, port)),
            PORT_ELCR_MASTER | PORT_ELCR_SLAVE => Some(self.pics[(port & 1) as usize].elcr),
            _ => None,
        }
    }

    /// A 1-byte write to `port` (upstream `picdev_write`); false if the port is not ours. Wider
    /// writes to our ports are ignored upstream: the caller should not call this for them. An
    /// ICW1 here assumes some vCPU accepts PIC interrupts (true after reset: the BSP's LINT0 is
    /// ExtINT); see [`Pic::write_port_accept`].
    pub fn write_port(&mut self, port: u16, value: u8) -> bool {
        self.write_port_accept(port, value, true)
    }

    /// [`Pic::write_port`], saying whether some vCPU's local APIC accepts PIC interrupts
    /// (upstream `kvm_apic_accept_pic_intr`: APIC hardware-disabled, or LVT0 unmasked ExtINT),
    /// which only matters to an ICW1.
    pub fn write_port_accept(&mut self, port: u16, value: u8, accept_pic_intr: bool) -> bool {
        match port {
            PORT_MASTER_CMD | PORT_MASTER_DATA => {
                self.ioport_write(MASTER, port, value, accept_pic_intr)
            }
            PORT_SLAVE_CMD | PORT_SLAVE_DATA => {
                self.ioport_write(SLAVE, port, value, accept_pic_intr)
            }
            PORT_ELCR_MASTER | PORT_ELCR_SLAVE => {
                let s = &mut self.pics[(port & 1) as usize];
                s.elcr = value & s.elcr_mask;
            }
            _ => return false,
        }
        true
    }

    /// `KVM_GET_IRQCHIP` for chip 0 (master) or 1 (slave).
    pub fn get_state(&self, slave: bool) -> ChipState {
        self.pics[usize::from(slave)]
    }

    /// `KVM_SET_IRQCHIP` for chip 0 (master) or 1 (slave): takes the state as given, then
    /// recomputes the cascade and INTR (upstream `kvm_vm_ioctl_set_irqchip` →
    /// `kvm_pic_update_irq`).
    pub fn set_state(&mut self, slave: bool, s: &ChipState) {
        self.pics[usize::from(slave)] = *s;
        self.update_irq();
    }
}

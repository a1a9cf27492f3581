//! The in-kernel I/O APIC: 24 pins, version 0x11 (82093AA-style, no EOI register), at
//! `0xfec0_0000` by default (upstream: `arch/x86/kvm/ioapic.c`, `ioapic.h`, and
//! `struct kvm_ioapic_state` in `arch/x86/include/uapi/asm/kvm.h`).
//!
//! The guest programs it through two MMIO registers, IOREGSEL (offset 0x00) and IOWIN (0x10),
//! which select and access the indirect registers: ID (0), version (1), arbitration (2), and the
//! redirection table (0x10 + 2n low half, 0x11 + 2n high half of pin n's entry). A pin changes
//! level when userspace calls `KVM_IRQ_LINE`; an unmasked entry then sends a message ([`Msg`]) to
//! the local APICs through the caller's `deliver` callback. A level-triggered entry sets its
//! remote IRR bit (RTE bit 14) when delivered and sends nothing more until a local APIC EOIs its
//! vector ([`Ioapic::eoi`]); then, if the line is still asserted, it is delivered again.
//!
//! Pure logic: no kernel dependency, tested on the host (`rust/tests`).
//!
//! Upstream bookkeeping kept: `irr` (the asserted lines; for an edge entry the bit stays set
//! while the line is high, so that a second assertion without a deassertion is coalesced) and
//! `irr_delivered` (edge pins whose assertion was delivered; `KVM_GET_IRQCHIP` reports
//! `irr & !irr_delivered`, so an edge that was masked when it came is re-injected by
//! `KVM_SET_IRQCHIP`).
//!
//! Simplifications, each because rkvm has a single interrupt source (userspace, via
//! `KVM_IRQ_LINE`) and no in-kernel devices:
//! - No per-source line state (`irq_states` / `__kvm_irq_line_state`): with one source the
//!   line's level is the level userspace gave, which is what `irr` holds.
//! - No RTC EOI tracking (`rtc_status`, `RTC_GSI` coalescing), no AVIC lazy EOI update.
//! - No ack/mask notifiers and no irqfd resampler: unmasking a level entry whose `irr` bit is set
//!   delivers it (upstream's path when no resampler is registered).
//! - No EOI-storm throttling (`irq_eoi[]` counting to 10000, then the delayed `eoi_inject`
//!   work): an EOI of a still-asserted level line is re-delivered at once every time.
//! - No scan-ioapic requests (`ioapic_handled_vectors`): the local APIC side decides which EOIs to
//!   forward here (upstream: only level-triggered ones per the TMR, and not under directed EOI).
//! - `deliver` returns a `bool`: upstream's `kvm_irq_delivery_to_apic` returns -1 (no
//!   destination), 0 (destination(s) found, none accepted) or the number of APICs that accepted.
//!   Here `true` counts as 1 and `false` as 0; so, unlike upstream, a level entry whose message
//!   found no destination at all does not set remote IRR.

/// Number of pins (`KVM_IOAPIC_NUM_PINS`).
pub const PINS: usize = 24;
/// Default MMIO base (`IOAPIC_DEFAULT_BASE_ADDRESS`).
pub const DEFAULT_BASE: u64 = 0xfec0_0000;
/// Length of the MMIO window (`IOAPIC_MEM_LENGTH`).
pub const MEM_LENGTH: u64 = 0x100;
/// The version this IOAPIC reports (`IOAPIC_VERSION_ID`).
pub const VERSION_ID: u32 = 0x11;

/// Direct (MMIO) registers.
pub const REG_SELECT: u64 = 0x00;
pub const REG_WINDOW: u64 = 0x10;
/// The EOI register of version 0x20 IOAPICs; absent (ignored) in version 0x11.
pub const REG_EOI: u64 = 0x40;

/// Indirect registers.
pub const REG_APIC_ID: u32 = 0x00;
pub const REG_VERSION: u32 = 0x01;
pub const REG_ARB_ID: u32 = 0x02;
/// First redirection-table register (pin 0, low half).
pub const REG_REDTBL: u32 = 0x10;

/// Redirection-table entry fields (`union kvm_ioapic_redirect_entry`).
pub const RTE_VECTOR_MASK: u64 = 0xff;
pub const RTE_DELIVERY_MODE_SHIFT: u32 = 8;
pub const RTE_DELIVERY_MODE_MASK: u64 = 7 << RTE_DELIVERY_MODE_SHIFT;
/// Destination mode: 1 logical, 0 physical.
pub const RTE_DEST_LOGICAL: u64 = 1 << 11;
/// Delivery status (read-only; never set by this model, as upstream).
pub const RTE_DELIVERY_STATUS: u64 = 1 << 12;
/// Pin polarity (stored, not interpreted, as upstream: levels come from userspace already
/// normalised to "asserted").
pub const RTE_POLARITY: u64 = 1 << 13;
/// Remote IRR (read-only): a level interrupt was delivered and awaits its EOI.
pub const RTE_REMOTE_IRR: u64 = 1 << 14;
/// Trigger mode: 1 level, 0 edge.
pub const RTE_LEVEL: u64 = 1 << 15;
/// Masked.
pub const RTE_MASKED: u64 = 1 << 16;
pub const RTE_DEST_SHIFT: u32 = 56;

/// Delivery modes (`IOAPIC_FIXED` ...).
pub const MODE_FIXED: u8 = 0;
pub const MODE_LOWEST_PRIORITY: u8 = 1;
pub const MODE_SMI: u8 = 2;
pub const MODE_NMI: u8 = 4;
pub const MODE_INIT: u8 = 5;
pub const MODE_EXTINT: u8 = 7;

/// Fields of struct kvm_ioapic_state (redirtbl entries as raw u64 bits; `pad` left out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub base_address: u64,
    pub ioregsel: u32,
    pub id: u32,
    pub irr: u32,
    pub redirtbl: [u64; PINS],
}

/// A message to the local APICs (from a redirection entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg {
    pub vector: u8,
    /// Delivery mode: 0 fixed, 1 lowest priority, 2 SMI, 4 NMI, 5 INIT, 7 ExtINT.
    pub mode: u8,
    /// Logical (true) or physical (false) destination mode.
    pub logical: bool,
    /// Trigger mode: level (true) or edge (false).
    pub level: bool,
    /// Destination (APIC ID, or logical destination).
    pub dest: u8,
}

impl Msg {
    /// Decodes the message a redirection entry sends (upstream `ioapic_service` filling
    /// `struct kvm_lapic_irq`; the "assert" level is always 1 there).
    pub fn from_rte(rte: u64) -> Msg {
        Msg {
            vector: (rte & RTE_VECTOR_MASK) as u8,
            mode: ((rte & RTE_DELIVERY_MODE_MASK) >> RTE_DELIVERY_MODE_SHIFT) as u8,
            logical: rte & RTE_DEST_LOGICAL != 0,
            level: rte & RTE_LEVEL != 0,
            dest: (rte >> RTE_DEST_SHIFT) as u8,
        }
    }
}

/// The IOAPIC (upstream `struct kvm_ioapic`, less what the simplifications above drop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ioapic {
    base_address: u64,
    ioregsel: u32,
    id: u32,
    /// Asserted lines (one bit per pin).
    irr: u32,
    /// Edge pins whose current assertion was delivered.
    irr_delivered: u32,
    redirtbl: [u64; PINS],
}

impl Default for Ioapic {
    fn default() -> Ioapic {
        Ioapic::new()
    }
}

impl Ioapic {
    /// A reset IOAPIC (upstream `kvm_ioapic_init` → `kvm_ioapic_reset`): every entry masked and
    /// otherwise zero, ID 0, IOREGSEL 0, no line asserted, base [`DEFAULT_BASE`].
    pub fn new() -> Ioapic {
        Ioapic {
            base_address: DEFAULT_BASE,
            ioregsel: 0,
            id: 0,
            irr: 0,
            irr_delivered: 0,
            redirtbl: [RTE_MASKED; PINS],
        }
    }

    /// The MMIO base (the window is `base()..base() + MEM_LENGTH`).
    pub fn base(&self) -> u64 {
        self.base_address
    }

    /// The raw redirection entry of `pin` (`None` if out of range).
    pub fn rte(&self, pin: u32) -> Option<u64> {
        self.redirtbl.get(pin as usize).copied()
    }

    /// Value of the indirect register selected by IOREGSEL (upstream `ioapic_read_indirect`).
    /// Redirection-table registers past the last pin, and the unassigned registers 3..0xf, read
    /// as all ones.
    pub fn read_indirect(&self) -> u32 {
        match self.ioregsel {
            REG_VERSION => (((PINS as u32 - 1) & 0xff) << 16) | (VERSION_ID & 0xff),
            REG_APIC_ID | REG_ARB_ID => (self.id & 0xf) << 24,
            sel => {
                let index = (sel.wrapping_sub(REG_REDTBL) >> 1) as usize;
                let rte = self.redirtbl.get(index).copied().unwrap_or(!0);
                if sel & 1 != 0 {
                    (rte >> 32) as u32
                } else {
                    rte as u32
                }
            }
        }
    }

    /// MMIO read at `offset` within the window (upstream `ioapic_mmio_read`): IOREGSEL at 0x00,
    /// IOWIN at 0x10, every other offset reads 0 (only `offset & 0xff` counts; upstream only
    /// asserts 16-byte alignment in debug builds). The 32-bit value is cut to `len` bytes for 1
    /// and 2, zero-extended for 8; any other length returns 0 (upstream leaves the buffer
    /// untouched and warns).
    pub fn read(&self, offset: u64, len: u32) -> u32 {
        let result = match offset & 0xff {
            REG_SELECT => self.ioregsel,
            REG_WINDOW => self.read_indirect(),
            _ => 0,
        };
        match len {
            8 | 4 => result,
            2 => result & 0xffff,
            1 => result & 0xff,
            _ => 0,
        }
    }

    /// MMIO write (upstream `ioapic_mmio_write`): `value` is taken as its low `len` bytes (8-byte
    /// writes use the low 32 bits); other lengths are ignored. IOREGSEL is an 8-bit register.
    /// Writes to other offsets, including the version-0x20 EOI register at 0x40, are ignored.
    pub fn write(
        &mut self,
        offset: u64,
        len: u32,
        value: u32,
        deliver: &mut dyn FnMut(Msg) -> bool,
    ) {
        let data = match len {
            8 | 4 => value,
            2 => value & 0xffff,
            1 => value & 0xff,
            _ => return,
        };
        match offset & 0xff {
            REG_SELECT => self.ioregsel = data & 0xff,
            REG_WINDOW => self.write_indirect(data, deliver),
            _ => {}
        }
    }

    /// Write to the indirect register selected by IOREGSEL (upstream `ioapic_write_indirect`).
    ///
    /// The ID register keeps bits 27:24; version and arbitration are read-only. In a
    /// redirection entry, delivery status and remote IRR are read-only, and remote IRR is
    /// cleared when the entry is (now) edge-triggered (what Linux relies on to emulate an EOI on
    /// IOAPICs without an EOI register). A level entry left unmasked, with remote IRR clear and
    /// its line asserted, is delivered at once.
    pub fn write_indirect(&mut self, val: u32, deliver: &mut dyn FnMut(Msg) -> bool) {
        match self.ioregsel {
            REG_VERSION | REG_ARB_ID => {}
            REG_APIC_ID => self.id = (val >> 24) & 0xf,
            sel => {
                let index = (sel.wrapping_sub(REG_REDTBL) >> 1) as usize;
                if index >= PINS {
                    return;
                }
                let old = self.redirtbl[index];
                let mut e = if sel & 1 != 0 {
                    (old & 0xffff_ffff) | ((val as u64) << 32)
                } else {
                    (old & !0xffff_ffff) | val as u64
                };
                let read_only = RTE_REMOTE_IRR | RTE_DELIVERY_STATUS;
                e = (e & !read_only) | (old & read_only);
                if e & RTE_LEVEL == 0 {
                    e &= !RTE_REMOTE_IRR;
                }
                self.redirtbl[index] = e;
                if e & (RTE_LEVEL | RTE_MASKED | RTE_REMOTE_IRR) == RTE_LEVEL
                    && self.irr & (1 << index) != 0
                {
                    self.service(index, deliver);
                }
            }
        }
    }

    /// Sends pin `pin`'s interrupt if its entry allows it (upstream `ioapic_service`).
    ///
    /// Returns -1 if the entry is masked, or is level-triggered with remote IRR set (nothing
    /// sent); otherwise 1 if `deliver` reported the message accepted, 0 if not. An edge pin is
    /// marked delivered (`irr_delivered`) whatever `deliver` says; a level pin sets remote IRR
    /// only if accepted.
    fn service(&mut self, pin: usize, deliver: &mut dyn FnMut(Msg) -> bool) -> i32 {
        let e = self.redirtbl[pin];
        let level = e & RTE_LEVEL != 0;
        if e & RTE_MASKED != 0 || (level && e & RTE_REMOTE_IRR != 0) {
            return -1;
        }
        if !level {
            self.irr_delivered |= 1 << pin;
        }
        let ret = i32::from(deliver(Msg::from_rte(e)));
        if ret != 0 && level {
            self.redirtbl[pin] |= RTE_REMOTE_IRR;
        }
        ret
    }

    /// The line of `pin` changes level (upstream `kvm_ioapic_set_irq` → `ioapic_set_irq`).
    ///
    /// Returns, as upstream (the value `KVM_IRQ_LINE_STATUS` reports for this chip):
    /// - `1` for a deassertion (the line goes or stays low; nothing is sent);
    /// - `0` for an edge pin asserted while already asserted (no rising edge: coalesced; with
    ///   userspace pulsing 1 then 0 this happens only when an earlier edge was not delivered),
    ///   or when `deliver` reported the message not accepted;
    /// - `-1` when the entry is masked, or is level-triggered with remote IRR set (the previous
    ///   interrupt awaits its EOI); the line stays recorded as asserted, so a level line is
    ///   delivered on EOI or unmask;
    /// - `1` when the message was sent and accepted.
    ///
    /// A pin out of range (upstream: `BUG_ON`) does nothing and returns -1, as for a GSI with no
    /// route.
    pub fn set_irq(&mut self, pin: u32, level: bool, deliver: &mut dyn FnMut(Msg) -> bool) -> i32 {
        if pin as usize >= PINS {
            return -1;
        }
        self.set_irq_pin(pin as usize, level, deliver)
    }

    fn set_irq_pin(
        &mut self,
        pin: usize,
        level: bool,
        deliver: &mut dyn FnMut(Msg) -> bool,
    ) -> i32 {
        let mask = 1u32 << pin;
        if !level {
            self.irr &= !mask;
            return 1;
        }
        let edge = self.redirtbl[pin] & RTE_LEVEL == 0;
        let old_irr = self.irr;
        self.irr |= mask;
        if edge {
            self.irr_delivered &= !mask;
            if old_irr == self.irr {
                return 0;
            }
        }
        self.service(pin, deliver)
    }

    /// A local APIC EOIs `vector`, which its TMR marks level-triggered (upstream
    /// `kvm_ioapic_update_eoi` → `kvm_ioapic_update_eoi_one` with `IOAPIC_LEVEL_TRIG`; the
    /// caller skips EOIs of edge vectors and EOIs under directed EOI, as upstream does).
    ///
    /// For every entry with that vector: remote IRR is cleared and, if the entry is unmasked and
    /// its line still asserted, the interrupt is sent again. As upstream, this also applies to an
    /// edge entry sharing the vector with a level one.
    pub fn eoi(&mut self, vector: u8, deliver: &mut dyn FnMut(Msg) -> bool) {
        for pin in 0..PINS {
            let e = self.redirtbl[pin];
            if (e & RTE_VECTOR_MASK) as u8 != vector {
                continue;
            }
            self.redirtbl[pin] = e & !RTE_REMOTE_IRR;
            if e & RTE_MASKED == 0 && self.irr & (1 << pin) != 0 {
                self.service(pin, deliver);
            }
        }
    }

    /// `KVM_GET_IRQCHIP` (upstream `kvm_get_ioapic`): `irr` leaves out the edge pins whose
    /// assertion was already delivered.
    pub fn get_state(&self) -> State {
        State {
            base_address: self.base_address,
            ioregsel: self.ioregsel,
            id: self.id,
            irr: self.irr & !self.irr_delivered,
            redirtbl: self.redirtbl,
        }
    }

    /// `KVM_SET_IRQCHIP` (upstream `kvm_set_ioapic`): takes the state as given (remote IRR and
    /// delivery status included, `base_address` too), clears `irr`, then asserts again every pin
    /// whose bit is set in `s.irr` (upstream `kvm_ioapic_inject_all`), delivering what the
    /// entries allow. Bits of `s.irr` past pin 23 are ignored.
    pub fn set_state(&mut self, s: &State, deliver: &mut dyn FnMut(Msg) -> bool) {
        self.base_address = s.base_address;
        self.ioregsel = s.ioregsel;
        self.id = s.id;
        self.redirtbl = s.redirtbl;
        self.irr = 0;
        self.irr_delivered = 0;
        for pin in 0..PINS {
            if s.irr & (1 << pin) != 0 {
                self.set_irq_pin(pin, true, deliver);
            }
        }
    }
}

//! The local APIC in xAPIC mode: its register page, interrupt acceptance and priorities
//! (IRR/ISR/TMR, TPR/PPR, EOI), interprocessor interrupts, destination matching and the APIC
//! timer, as upstream KVM models them in `arch/x86/kvm/lapic.c` (`struct kvm_lapic`,
//! `kvm_lapic_reg_read` / `kvm_lapic_reg_write`, `__apic_accept_irq`, `apic_update_ppr`,
//! `apic_set_eoi`, `kvm_apic_ack_interrupt`, `start_apic_timer`, `apic_get_tmcct`,
//! `kvm_lapic_reset`, `kvm_apic_get_state` / `kvm_apic_set_state`), and the SDM (vol. 3,
//! chapter 11 "Advanced Programmable Interrupt Controller").
//!
//! The architectural state lives where upstream keeps it: a 1 KiB image of the register page
//! (`apic->regs`, also the `kvm_lapic_state.regs` of `KVM_GET_LAPIC` / `KVM_SET_LAPIC`), each
//! 32-bit register at its offset, little endian. Next to it only what upstream keeps outside
//! the page: the IA32_APIC_BASE value, the divide count and the timer bookkeeping
//! (`struct kvm_timer`: mode, period, target expiration).
//!
//! What is *not* here, because it is the caller's business: the hrtimer itself (the caller asks
//! [`Lapic::deadline`] after every [`Effect::timer_changed`] and calls [`Lapic::expire`] when
//! it fires), routing an IPI or an IOAPIC message to the destination vCPUs (with
//! [`dest_matches`]), lowest-priority arbitration, and the NMI/INIT/SIPI/SMI/ExtINT delivery
//! modes. x2APIC, TSC-deadline mode, APICv, PV EOI and Hyper-V SynIC are not modelled.
//!
//! Differences from upstream, each on purpose:
//! - An interrupt with a vector below 16 is refused and latches "received illegal vector"
//!   (bit 6), as the SDM says (11.5.3): the error is recorded internally and becomes visible in
//!   ESR at the next write to ESR (upstream accepts such vectors and never records errors; its
//!   ESR reads 0). No error interrupt is sent through LVTERR.
//! - A DFR model field other than flat (0xf) or cluster (0), possible only via `KVM_SET_LAPIC`,
//!   is taken as cluster (upstream matches no logical destination then).
//! - A TDCR write while a one-shot timer has already expired does not re-arm it (upstream's
//!   `update_target_expiration` would fire it once more, immediately).
//! - TMCCT reads the initial count, not 0, at the very instant the timer was started (upstream
//!   reduces the remaining time modulo the period, which makes "exactly one period left" read 0).
//!
//! Pure logic: no kernel dependency, only `core`; tested on the host (`rust/tests`).

/// Size of the register image (`KVM_APIC_REG_SIZE`, `struct kvm_lapic_state`).
pub const REG_SIZE: usize = 0x400;
/// Size of the MMIO page (`LAPIC_MMIO_LENGTH`).
pub const MMIO_LENGTH: u32 = 0x1000;

/// RESET value of the APIC page's address (`APIC_DEFAULT_PHYS_BASE`).
pub const DEFAULT_BASE: u64 = 0xfee0_0000;
/// IA32_APIC_BASE: this is the bootstrap processor.
pub const BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE: the APIC is globally (hardware) enabled.
pub const BASE_ENABLE: u64 = 1 << 11;
/// IA32_APIC_BASE: the page address field (`MSR_IA32_APICBASE_BASE`, sign-extended upstream).
pub const BASE_ADDR_MASK: u64 = !0xfff;

/// Register offsets in the page (`apicdef.h`).
pub const ID: u32 = 0x20;
pub const LVR: u32 = 0x30;
pub const TPR: u32 = 0x80;
pub const APR: u32 = 0x90;
pub const PPR: u32 = 0xa0;
pub const EOI: u32 = 0xb0;
pub const LDR: u32 = 0xd0;
pub const DFR: u32 = 0xe0;
pub const SPIV: u32 = 0xf0;
pub const ISR: u32 = 0x100;
pub const TMR: u32 = 0x180;
pub const IRR: u32 = 0x200;
pub const ESR: u32 = 0x280;
pub const ICR: u32 = 0x300;
pub const ICR2: u32 = 0x310;
pub const LVTT: u32 = 0x320;
pub const LVTTHMR: u32 = 0x330;
pub const LVTPC: u32 = 0x340;
pub const LVT0: u32 = 0x350;
pub const LVT1: u32 = 0x360;
pub const LVTERR: u32 = 0x370;
pub const TMICT: u32 = 0x380;
pub const TMCCT: u32 = 0x390;
pub const TDCR: u32 = 0x3e0;

/// Delivery modes (ICR / LVT / IOAPIC encoding, bits 10:8).
pub const MODE_FIXED: u8 = 0;
pub const MODE_LOWEST: u8 = 1;
pub const MODE_SMI: u8 = 2;
pub const MODE_NMI: u8 = 4;
pub const MODE_INIT: u8 = 5;
pub const MODE_STARTUP: u8 = 6;
pub const MODE_EXTINT: u8 = 7;

/// Fields of LVT entries and ICR.
pub const VECTOR_MASK: u32 = 0xff;
pub const MODE_MASK: u32 = 0x700;
pub const SEND_PENDING: u32 = 1 << 12;
pub const INPUT_POLARITY: u32 = 1 << 13;
pub const LVT_REMOTE_IRR: u32 = 1 << 14;
pub const LVT_LEVEL_TRIGGER: u32 = 1 << 15;
pub const LVT_MASKED: u32 = 1 << 16;
/// LVTT timer mode: periodic (bit 18, TSC-deadline, is not supported and never writable).
pub const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// ICR: logical destination mode.
pub const ICR_LOGICAL: u32 = 1 << 11;
/// ICR: delivery status (`APIC_ICR_BUSY`); KVM delivers at once, so it always reads 0.
pub const ICR_BUSY: u32 = 1 << 12;
/// ICR: level assert.
pub const ICR_ASSERT: u32 = 1 << 14;
/// ICR: level-triggered.
pub const ICR_LEVEL_TRIGGER: u32 = 1 << 15;
/// SPIV: APIC software enable.
pub const SPIV_APIC_ENABLED: u32 = 1 << 8;
/// ESR: received illegal vector.
pub const ESR_RECV_ILLEGAL_VECTOR: u32 = 1 << 6;

/// The version: an integrated APIC (`APIC_VERSION`).
pub const VERSION: u32 = 0x14;
/// LVT entries: timer, thermal, performance counter, LINT0, LINT1, error (no CMCI, as upstream
/// without `MCG_CMCI_P`).
pub const NR_LVT: u32 = 6;
/// The LVR value: version, and the index of the last LVT entry in bits 23:16
/// (`kvm_apic_set_version`).
pub const LVR_VALUE: u32 = VERSION | ((NR_LVT - 1) << 16);

/// Nanoseconds per APIC bus cycle (`APIC_BUS_CYCLE_NS_DEFAULT`).
pub const BUS_CYCLE_NS: u64 = 1;
/// Shortest periodic timer period (`min_timer_period_us` = 200).
pub const MIN_TIMER_PERIOD_NS: u64 = 200_000;

/// The LVT registers in index order (`APIC_LVTx(i)`).
const LVTS: [u32; NR_LVT as usize] = [LVTT, LVTTHMR, LVTPC, LVT0, LVT1, LVTERR];

/// Writable bits of the LVT entries (`apic_lvt_mask`, `LVT_MASK`, `LINT_MASK`).
const LVT_MASK: u32 = LVT_MASKED | SEND_PENDING | VECTOR_MASK;
const LINT_MASK: u32 = LVT_MASK | MODE_MASK | INPUT_POLARITY | LVT_REMOTE_IRR | LVT_LEVEL_TRIGGER;
/// `timer_mode_mask` without TSC-deadline support.
const TIMER_MODE_MASK: u32 = LVT_TIMER_PERIODIC;

/// An interprocessor interrupt requested by a write to ICR (low half).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    pub vector: u8,
    /// Delivery mode (`MODE_*`).
    pub mode: u8,
    /// Logical destination mode (bit 11).
    pub logical: bool,
    /// Level: assert (bit 14).
    pub assert: bool,
    /// Trigger mode: level (bit 15).
    pub level_trigger: bool,
    /// Destination shorthand (bits 19:18): 0 none, 1 self, 2 all including self, 3 all
    /// excluding self.
    pub shorthand: u8,
    /// Destination field (ICR2 bits 31:24).
    pub dest: u8,
}

impl Ipi {
    /// Decodes ICR and ICR2 (upstream `kvm_apic_send_ipi`, xAPIC format).
    pub fn from_icr(icr: u32, icr2: u32) -> Ipi {
        Ipi {
            vector: (icr & VECTOR_MASK) as u8,
            mode: ((icr & MODE_MASK) >> 8) as u8,
            logical: icr & ICR_LOGICAL != 0,
            assert: icr & ICR_ASSERT != 0,
            level_trigger: icr & ICR_LEVEL_TRIGGER != 0,
            shorthand: ((icr >> 18) & 3) as u8,
            dest: (icr2 >> 24) as u8,
        }
    }
}

/// What a register write asks the caller to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effect {
    pub ipi: Option<Ipi>,
    /// EOI of a level-triggered vector (TMR bit was set): broadcast to the IOAPIC.
    pub eoi_level: Option<u8>,
    /// The timer was (re)programmed or stopped: call `deadline()` again and rearm.
    pub timer_changed: bool,
    /// ID, LDR, DFR or software-enable changed: republish the destination-matching state.
    pub dest_changed: bool,
}

/// xAPIC destination matching (upstream `kvm_apic_match_dest` without shorthand,
/// `kvm_apic_match_physical_addr` / `kvm_apic_match_logical_addr` for xAPIC).
///
/// Physical: `dest` is the APIC ID, or 0xff (broadcast). Logical: 0xff matches every APIC;
/// flat model: `dest` is a bitmask of LDR bits; cluster model: `dest` bits 7:4 select the
/// cluster, bits 3:0 the APICs within it.
pub fn dest_matches(id: u8, ldr: u8, dfr_flat: bool, dest: u8, logical: bool) -> bool {
    if dest == 0xff {
        return true;
    }
    if !logical {
        return dest == id;
    }
    if dfr_flat {
        ldr & dest != 0
    } else {
        (ldr >> 4) == (dest >> 4) && (ldr & dest & 0xf) != 0
    }
}

/// Whether `reg` (16-byte aligned, below 0x400) may be read in xAPIC mode
/// (`kvm_lapic_readable_reg_mask`).
fn readable(reg: u32) -> bool {
    matches!(
        reg,
        ID | LVR | TPR | APR | PPR | LDR | DFR | SPIV | ESR | ICR | ICR2 | TMICT | TMCCT | TDCR
    ) || (ISR..ISR + 0x80).contains(&reg)
        || (TMR..TMR + 0x80).contains(&reg)
        || (IRR..IRR + 0x80).contains(&reg)
        || (LVTT..=LVTERR).contains(&reg)
}

/// Offset of the 32-bit register holding `vector` in a 256-bit vector register (`REG_POS`),
/// and its bit there (`VEC_POS`).
fn vector_pos(base: u32, vector: u8) -> (u32, u32) {
    (base + u32::from(vector >> 5) * 0x10, u32::from(vector & 31))
}

/// One vCPU's local APIC (`struct kvm_lapic`).
#[derive(Clone)]
pub struct Lapic {
    /// The register page image (`apic->regs`).
    regs: [u8; REG_SIZE],
    /// IA32_APIC_BASE (`vcpu->arch.apic_base`).
    base: u64,
    /// The vCPU id: the APIC ID at RESET and whenever the APIC is hardware re-enabled.
    vcpu_id: u8,
    /// The vCPU is the BSP at RESET (`kvm_vcpu_is_reset_bsp`).
    reset_bsp: bool,
    /// The timer divisor from TDCR (`apic->divide_count`).
    divide_count: u32,
    /// LVTT is in periodic mode (`lapic_timer.timer_mode`).
    periodic: bool,
    /// Timer period in ns, 0 when no count is programmed (`lapic_timer.period`).
    period: u64,
    /// Absolute time of the next expiry while armed (`lapic_timer.target_expiration` while the
    /// hrtimer runs).
    target: Option<u64>,
    /// Errors detected since the last ESR write (SDM 11.5.3).
    esr_pending: u32,
}

impl Lapic {
    /// RESET state of vCPU `id` (upstream `kvm_create_lapic` + `kvm_lapic_reset`).
    pub fn new(id: u8, bsp: bool) -> Lapic {
        let mut apic = Lapic {
            regs: [0; REG_SIZE],
            base: 0,
            vcpu_id: id,
            reset_bsp: bsp,
            divide_count: 2,
            periodic: false,
            period: 0,
            target: None,
            esr_pending: 0,
        };
        apic.reset(false);
        apic
    }

    /// RESET (`init == false`) or INIT (`init == true`) of the APIC (upstream
    /// `kvm_lapic_reset`): INIT keeps IA32_APIC_BASE and the APIC ID.
    ///
    /// Every LVT entry is masked, except that the BSP's LINT0 is set to ExtINT, unmasked:
    /// upstream's `KVM_X86_QUIRK_LINT0_REENABLED`, on by default (QEMU's APIC does the same), so
    /// that the PIC reaches the BSP without the firmware programming LINT0.
    pub fn reset(&mut self, init: bool) -> Effect {
        if !init {
            self.base = DEFAULT_BASE | BASE_ENABLE | if self.reset_bsp { BASE_BSP } else { 0 };
            self.set_reg(ID, u32::from(self.vcpu_id) << 24);
        }
        // Stop the timer.
        self.target = None;
        self.set_reg(LVR, LVR_VALUE);
        for lvt in LVTS {
            self.set_reg(lvt, LVT_MASKED);
        }
        self.update_lvtt();
        if self.reset_bsp {
            self.set_reg(LVT0, u32::from(MODE_EXTINT) << 8);
        }
        self.set_reg(DFR, 0xffff_ffff);
        self.set_reg(SPIV, 0xff);
        self.set_reg(TPR, 0);
        self.set_reg(LDR, 0);
        self.set_reg(ESR, 0);
        self.set_reg(ICR, 0);
        self.set_reg(ICR2, 0);
        self.set_reg(TDCR, 0);
        self.set_reg(TMICT, 0);
        for i in 0..8 {
            self.set_reg(IRR + 0x10 * i, 0);
            self.set_reg(ISR + 0x10 * i, 0);
            self.set_reg(TMR + 0x10 * i, 0);
        }
        self.update_divide_count();
        self.period = 0;
        self.esr_pending = 0;
        self.update_ppr();
        Effect { dest_changed: true, timer_changed: true, ..Effect::default() }
    }

    // ---- Register image access (`kvm_lapic_get_reg` / `kvm_lapic_set_reg`) ----

    /// The raw 32-bit register at `offset` of the image (0 beyond it).
    pub fn reg(&self, offset: u32) -> u32 {
        let o = offset as usize;
        if o + 4 > REG_SIZE {
            return 0;
        }
        u32::from_le_bytes([self.regs[o], self.regs[o + 1], self.regs[o + 2], self.regs[o + 3]])
    }

    fn set_reg(&mut self, offset: u32, value: u32) {
        let o = offset as usize;
        self.regs[o..o + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn test_vector(&self, base: u32, vector: u8) -> bool {
        let (reg, bit) = vector_pos(base, vector);
        self.reg(reg) & (1 << bit) != 0
    }

    fn set_vector(&mut self, base: u32, vector: u8) {
        let (reg, bit) = vector_pos(base, vector);
        self.set_reg(reg, self.reg(reg) | (1 << bit));
    }

    fn clear_vector(&mut self, base: u32, vector: u8) {
        let (reg, bit) = vector_pos(base, vector);
        self.set_reg(reg, self.reg(reg) & !(1 << bit));
    }

    /// The highest vector set in IRR, ISR or TMR (`find_highest_vector`).
    fn highest_vector(&self, base: u32) -> Option<u8> {
        (0..8u32).rev().find_map(|i| {
            let r = self.reg(base + 0x10 * i);
            (r != 0).then(|| (i * 32 + 31 - r.leading_zeros()) as u8)
        })
    }

    // ---- IA32_APIC_BASE and enables ----

    /// The IA32_APIC_BASE value.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// WRMSR IA32_APIC_BASE, already validated by the caller (upstream `__kvm_apic_set_base`).
    /// Hardware re-enabling sets the APIC ID back to the vCPU id and keeps the other registers.
    pub fn set_base(&mut self, value: u64) -> Effect {
        let old = self.base;
        self.base = value;
        let mut effect = Effect::default();
        if (old ^ value) & BASE_ENABLE != 0 {
            if value & BASE_ENABLE != 0 {
                self.set_reg(ID, u32::from(self.vcpu_id) << 24);
            }
            effect.dest_changed = true;
        }
        effect
    }

    /// The APIC is hardware enabled (`kvm_apic_hw_enabled`).
    pub fn hw_enabled(&self) -> bool {
        self.base & BASE_ENABLE != 0
    }

    /// The APIC is software enabled (`kvm_apic_sw_enabled`): SPIV bit 8.
    pub fn sw_enabled(&self) -> bool {
        self.reg(SPIV) & SPIV_APIC_ENABLED != 0
    }

    /// Both enables (`apic_enabled`): the APIC accepts interrupts.
    fn enabled(&self) -> bool {
        self.hw_enabled() && self.sw_enabled()
    }

    /// Guest-physical address of the MMIO page while hardware enabled.
    pub fn mmio_base(&self) -> Option<u64> {
        self.hw_enabled().then_some(self.base & BASE_ADDR_MASK)
    }

    // ---- MMIO ----

    /// MMIO read of `len` bytes at `offset` of the page (`kvm_lapic_reg_read`): any access
    /// of 1, 2 or 4 bytes within the first 4 bytes of a readable register. Anything else,
    /// reserved and write-only registers (EOI) read 0.
    pub fn read(&self, offset: u32, len: u32, now_ns: u64) -> u32 {
        let alignment = offset & 0xf;
        if !matches!(len, 1 | 2 | 4) || alignment + len > 4 {
            return 0;
        }
        if offset > 0x3f0 || !readable(offset & !0xf) {
            return 0;
        }
        let value = self.reg_read(offset & !0xf, now_ns) >> (8 * alignment);
        if len == 4 {
            value
        } else {
            value & ((1 << (8 * len)) - 1)
        }
    }

    /// One whole register (`__apic_read`).
    fn reg_read(&self, reg: u32, now_ns: u64) -> u32 {
        match reg {
            // Arbitration priority: not modelled, reads 0.
            APR => 0,
            TMCCT => self.tmcct(now_ns),
            // PPR is kept up to date by every change of TPR and ISR.
            _ => self.reg(reg),
        }
    }

    /// MMIO write (`apic_mmio_write`): only aligned 32-bit writes reach a register (SDM 11.4.1);
    /// others are ignored.
    pub fn write(&mut self, offset: u32, len: u32, value: u32, now_ns: u64) -> Effect {
        if len != 4 || offset & 0xf != 0 || offset >= MMIO_LENGTH {
            return Effect::default();
        }
        self.reg_write(offset & 0xff0, value, now_ns)
    }

    /// One register write (`kvm_lapic_reg_write`, xAPIC cases).
    fn reg_write(&mut self, reg: u32, value: u32, now_ns: u64) -> Effect {
        let mut effect = Effect::default();
        match reg {
            ID => {
                // kvm_apic_set_xapic_id
                self.set_reg(ID, value & 0xff00_0000);
                effect.dest_changed = true;
            }
            TPR => self.set_tpr(value & 0xff),
            EOI => effect.eoi_level = self.set_eoi(),
            LDR => {
                self.set_reg(LDR, value & 0xff00_0000);
                effect.dest_changed = true;
            }
            DFR => {
                self.set_reg(DFR, value | 0x0fff_ffff);
                effect.dest_changed = true;
            }
            SPIV => {
                let was_enabled = self.sw_enabled();
                // No directed EOI (not offered in LVR): bits 9:0 only.
                self.set_reg(SPIV, value & 0x3ff);
                if value & SPIV_APIC_ENABLED == 0 {
                    for lvt in LVTS {
                        self.set_reg(lvt, self.reg(lvt) | LVT_MASKED);
                    }
                    effect.timer_changed = self.update_lvtt();
                }
                effect.dest_changed = was_enabled != self.sw_enabled();
            }
            ICR => {
                // No delay here, so the delivery status is always idle.
                let icr = value & !ICR_BUSY;
                effect.ipi = Some(Ipi::from_icr(icr, self.reg(ICR2)));
                self.set_reg(ICR, icr);
            }
            ICR2 => self.set_reg(ICR2, value & 0xff00_0000),
            LVTTHMR | LVTPC | LVT0 | LVT1 | LVTERR => {
                let mask = match reg {
                    LVT0 | LVT1 => LINT_MASK,
                    LVTERR => LVT_MASK,
                    _ => LVT_MASK | MODE_MASK,
                };
                let value = if self.sw_enabled() { value } else { value | LVT_MASKED };
                self.set_reg(reg, value & mask);
            }
            LVTT => {
                let value = if self.sw_enabled() { value } else { value | LVT_MASKED };
                self.set_reg(LVTT, value & (LVT_MASK | TIMER_MODE_MASK));
                effect.timer_changed = self.update_lvtt();
            }
            TMICT => {
                self.set_reg(TMICT, value);
                self.start_timer(TMICT, now_ns);
                effect.timer_changed = true;
            }
            TDCR => {
                let old_divisor = self.divide_count;
                self.set_reg(TDCR, value & 0xb);
                self.update_divide_count();
                if self.divide_count != old_divisor && self.period != 0 {
                    self.update_target_expiration(old_divisor, now_ns);
                    effect.timer_changed = true;
                }
            }
            ESR => {
                // SDM 11.5.3: a write makes the errors detected since the previous write
                // visible, and starts collecting anew.
                self.set_reg(ESR, self.esr_pending);
                self.esr_pending = 0;
            }
            // Read-only and reserved registers.
            _ => {}
        }
        effect
    }

    // ---- Priorities (`apic_update_ppr`, `apic_set_tpr`, CR8) ----

    /// Recomputes PPR from TPR and the highest in-service vector (`__apic_update_ppr`).
    fn update_ppr(&mut self) {
        let tpr = self.reg(TPR);
        let isrv = self.highest_vector(ISR).map_or(0, u32::from);
        let ppr = if (tpr & 0xf0) >= (isrv & 0xf0) { tpr & 0xff } else { isrv & 0xf0 };
        self.set_reg(PPR, ppr);
    }

    fn set_tpr(&mut self, tpr: u32) {
        self.set_reg(TPR, tpr);
        self.update_ppr();
    }

    /// CR8: TPR bits 7:4 (`kvm_lapic_get_cr8`).
    pub fn cr8(&self) -> u64 {
        u64::from((self.reg(TPR) & 0xf0) >> 4)
    }

    /// MOV to CR8: TPR = CR8[3:0] << 4 (`kvm_lapic_set_tpr`).
    pub fn set_cr8(&mut self, cr8: u64) {
        self.set_tpr(((cr8 & 0xf) << 4) as u32);
    }

    // ---- Interrupt acceptance, injection, EOI ----

    /// A fixed or lowest-priority interrupt arrives (`__apic_accept_irq`, `APIC_DM_FIXED` /
    /// `APIC_DM_LOWEST`), `level` being its trigger mode; the caller drops level-triggered
    /// deassert messages, as upstream does. Not accepted while hardware or software disabled;
    /// a vector below 16 is refused and latches "received illegal vector" in ESR (SDM 11.5.3).
    pub fn accept(&mut self, vector: u8, level: bool) -> bool {
        if !self.enabled() {
            return false;
        }
        if vector < 16 {
            self.esr_pending |= ESR_RECV_ILLEGAL_VECTOR;
            return false;
        }
        if level {
            self.set_vector(TMR, vector);
        } else {
            self.clear_vector(TMR, vector);
        }
        self.set_vector(IRR, vector);
        true
    }

    /// The vector to inject next (`kvm_apic_has_interrupt`, `apic_has_interrupt_for_ppr`): the
    /// highest IRR vector whose priority class is above PPR.
    pub fn pending(&self) -> Option<u8> {
        if !self.hw_enabled() {
            return None;
        }
        let irr = self.highest_vector(IRR)?;
        if u32::from(irr & 0xf0) <= self.reg(PPR) {
            return None;
        }
        Some(irr)
    }

    /// The CPU takes `vector` (`kvm_apic_ack_interrupt`): IRR -> ISR, PPR raised.
    pub fn ack(&mut self, vector: u8) {
        self.clear_vector(IRR, vector);
        self.set_vector(ISR, vector);
        self.update_ppr();
    }

    /// EOI (`apic_set_eoi`): retires the highest in-service vector; returns it if its TMR bit
    /// is set, for the EOI broadcast to the IOAPIC (`kvm_ioapic_send_eoi`). TMR is left alone,
    /// as upstream and the SDM do: it changes only when a vector is accepted.
    fn set_eoi(&mut self) -> Option<u8> {
        // Not every EOI write has an in-service vector.
        let vector = self.highest_vector(ISR)?;
        self.clear_vector(ISR, vector);
        self.update_ppr();
        self.test_vector(TMR, vector).then_some(vector)
    }

    /// The PIC's INTR reaches this CPU (`kvm_apic_accept_pic_intr`).
    pub fn accepts_pic(&self) -> bool {
        let lvt0 = self.reg(LVT0);
        !self.hw_enabled()
            || (lvt0 & LVT_MASKED == 0 && (lvt0 & MODE_MASK) >> 8 == u32::from(MODE_EXTINT))
    }

    /// Delivers the interrupt of a local vector table entry (`kvm_apic_local_deliver`), for the
    /// fixed delivery mode (the only one the timer entry can hold).
    fn local_deliver(&mut self, lvt: u32) -> bool {
        let reg = self.reg(lvt);
        if !self.hw_enabled() || reg & LVT_MASKED != 0 {
            return false;
        }
        match ((reg & MODE_MASK) >> 8) as u8 {
            MODE_FIXED | MODE_LOWEST => {
                self.accept((reg & VECTOR_MASK) as u8, reg & LVT_LEVEL_TRIGGER != 0)
            }
            _ => false,
        }
    }

    // ---- Destination matching state ----

    /// The xAPIC ID (ID bits 31:24).
    pub fn id(&self) -> u8 {
        (self.reg(ID) >> 24) as u8
    }

    /// The logical APIC ID (LDR bits 31:24).
    pub fn ldr(&self) -> u8 {
        (self.reg(LDR) >> 24) as u8
    }

    /// The flat logical model (DFR bits 31:28 = 0xf); otherwise cluster. (Guest writes can only
    /// make the model field 0xf or 0; upstream matches nothing for an odd value from
    /// `KVM_SET_LAPIC`, here it is taken as cluster.)
    pub fn dfr_flat(&self) -> bool {
        self.reg(DFR) >> 28 == 0xf
    }

    /// Whether a non-shorthand message for `dest` reaches this APIC.
    pub fn matches(&self, dest: u8, logical: bool) -> bool {
        dest_matches(self.id(), self.ldr(), self.dfr_flat(), dest, logical)
    }

    // ---- Timer ----

    /// TDCR -> divide count (`update_divide_count`): bits (3,1,0) = 000..110 divide by
    /// 2..128, 111 by 1.
    fn update_divide_count(&mut self) {
        let tdcr = self.reg(TDCR) & 0xf;
        let shift = ((tdcr & 0x3) | ((tdcr & 0x8) >> 1)) + 1;
        self.divide_count = 1 << (shift & 0x7);
    }

    fn tmict_to_ns(&self, count: u32) -> u64 {
        u64::from(count) * BUS_CYCLE_NS * u64::from(self.divide_count)
    }

    /// `limit_periodic_timer_frequency`.
    fn limit_periodic_timer_frequency(&mut self) {
        if self.periodic && self.period != 0 && self.period < MIN_TIMER_PERIOD_NS {
            self.period = MIN_TIMER_PERIOD_NS;
        }
    }

    /// Takes the timer mode from LVTT (`apic_update_lvtt`); returns whether it changed.
    /// Upstream stops the timer only when switching into or out of TSC-deadline mode, which is
    /// not offered: between one-shot and periodic the count keeps running, and the mode decides
    /// what happens at expiry.
    fn update_lvtt(&mut self) -> bool {
        let periodic = self.reg(LVTT) & TIMER_MODE_MASK == LVT_TIMER_PERIODIC;
        if periodic == self.periodic {
            return false;
        }
        self.periodic = periodic;
        self.limit_periodic_timer_frequency();
        true
    }

    /// (Re)starts the timer from TMICT (`__start_apic_timer`, `set_target_expiration`), the
    /// first expiry `count_reg` (TMICT, or TMCCT when restoring state) counts from now.
    fn start_timer(&mut self, count_reg: u32, now_ns: u64) {
        self.period = self.tmict_to_ns(self.reg(TMICT));
        if self.period == 0 {
            self.target = None;
            return;
        }
        self.limit_periodic_timer_frequency();
        let mut deadline = self.period;
        if count_reg != TMICT {
            deadline = self.tmict_to_ns(self.reg(count_reg));
            if deadline == 0 {
                // A one-shot timer with nothing left expires at once.
                deadline = if self.periodic { self.period } else { 0 };
            } else if deadline > self.period {
                self.set_reg(count_reg, 0);
                deadline = self.period;
            }
        }
        self.target = Some(now_ns.saturating_add(deadline));
    }

    /// A TDCR write while counting (`update_target_expiration`): the period follows the new
    /// divisor, and the time left is scaled by new/old divisor (the count left is unchanged).
    /// An expired one-shot timer is not re-armed.
    fn update_target_expiration(&mut self, old_divisor: u32, now_ns: u64) {
        self.period = self.tmict_to_ns(self.reg(TMICT));
        self.limit_periodic_timer_frequency();
        if let Some(target) = self.target {
            let remaining = target.saturating_sub(now_ns);
            // At most 2^39 ns (2^32 counts at divide-by-128) times 2^7: no overflow, and no
            // u128 (whose division the kernel does not link).
            let scaled =
                remaining.saturating_mul(u64::from(self.divide_count)) / u64::from(old_divisor).max(1);
            self.target = Some(now_ns.saturating_add(scaled));
        }
    }

    /// The current count (`apic_get_tmcct`): the time left to the next expiry in bus cycles
    /// of the divided clock; 0 when stopped or expired.
    fn tmcct(&self, now_ns: u64) -> u32 {
        if self.reg(TMICT) == 0 || self.period == 0 {
            return 0;
        }
        let remaining = self.target.map_or(0, |target| target.saturating_sub(now_ns));
        let ns = if remaining > self.period { remaining % self.period } else { remaining };
        // `max(1)`: divide_count is never 0, but the kernel build wants no division-by-zero
        // panic path (objtool cannot see that it does not return).
        (ns / (BUS_CYCLE_NS * u64::from(self.divide_count)).max(1)) as u32
    }

    /// Absolute time of the next timer expiry, `None` when stopped or an expired one-shot.
    pub fn deadline(&self) -> Option<u64> {
        self.target
    }

    /// The timer fired (`apic_timer_fn`, `apic_timer_expired`,
    /// `kvm_apic_inject_pending_timer_irqs`): latches the LVTT vector unless masked; periodic
    /// mode moves the target on by one period, or to `now_ns` if that is still in the past
    /// (`advance_periodic_target_expiration`: no catching up, one more expiry at once);
    /// one-shot mode stops. Ignored if not armed or `now_ns` is before the deadline.
    pub fn expire(&mut self, now_ns: u64) {
        let Some(target) = self.target else { return };
        if now_ns < target {
            return;
        }
        self.local_deliver(LVTT);
        if self.periodic && self.period != 0 {
            let next = target.saturating_add(self.period);
            self.target = Some(if next < now_ns { now_ns } else { next });
        } else {
            self.target = None;
        }
    }

    // ---- KVM_GET_LAPIC / KVM_SET_LAPIC ----

    /// The register image with TMCCT filled in (`kvm_apic_get_state`).
    pub fn get_state(&self, now_ns: u64, out: &mut [u8; REG_SIZE]) {
        out.copy_from_slice(&self.regs);
        out[TMCCT as usize..TMCCT as usize + 4].copy_from_slice(&self.tmcct(now_ns).to_le_bytes());
    }

    /// Takes a register image (`kvm_apic_set_state`): LVR is KVM's own, PPR is recomputed, and
    /// the timer restarts with the period from TMICT and the first expiry from TMCCT, in the
    /// LVTT mode of the image. Errors latched and not yet visible in ESR are dropped.
    pub fn set_state(&mut self, regs: &[u8; REG_SIZE], now_ns: u64) -> Effect {
        self.regs = *regs;
        self.set_reg(LVR, LVR_VALUE);
        self.update_ppr();
        self.target = None;
        self.update_lvtt();
        self.update_divide_count();
        self.start_timer(TMCCT, now_ns);
        self.set_reg(TMCCT, 0);
        self.esr_pending = 0;
        Effect { dest_changed: true, timer_changed: true, ..Effect::default() }
    }
}

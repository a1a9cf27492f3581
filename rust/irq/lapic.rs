//! The local APIC in xAPIC and x2APIC mode: its register page, interrupt acceptance and
//! priorities (IRR/ISR/TMR, TPR/PPR, EOI), interprocessor interrupts, destination matching and
//! the APIC timer, as upstream KVM models them in `arch/x86/kvm/lapic.c` (`struct kvm_lapic`,
//! `kvm_lapic_reg_read` / `kvm_lapic_reg_write`, `__apic_accept_irq`, `apic_update_ppr`,
//! `apic_set_eoi`, `kvm_apic_ack_interrupt`, `start_apic_timer`, `apic_get_tmcct`,
//! `kvm_lapic_reset`, `kvm_apic_get_state` / `kvm_apic_set_state`, `__kvm_apic_set_base`,
//! `kvm_x2apic_msr_read` / `kvm_x2apic_msr_write`, `kvm_apic_state_fixup`), and the SDM (vol. 3,
//! chapter 11 "Advanced Programmable Interrupt Controller").
//!
//! x2APIC mode (IA32_APIC_BASE.EXTD, SDM 11.12) is entered and left through [`Lapic::set_base`]
//! (which transitions are legal is [`guest_base_change_valid`] and `x86::cr`'s
//! `apic_base_valid`). In it the registers are MSRs 0x800 + offset / 16
//! ([`Lapic::x2apic_msr_read`] / [`Lapic::x2apic_msr_write`]) and the MMIO page is a hole; the ID
//! is the 32-bit vCPU id, read-only; LDR is derived from it; there is no DFR; ICR is one 64-bit
//! register (kept as upstream's VMX code keeps it: low half at 0x300, high half at 0x304; ICR2 is
//! unused) with the 32-bit destination in its high half; SELF_IPI (0x3f0) exists. Destinations
//! are 32 bits wide ([`Dest`]).
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
//! modes. TSC-deadline mode, APICv, PV EOI and Hyper-V SynIC are not modelled.
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
//! - A `KVM_SET_LAPIC` refused in x2APIC mode (an ID other than the vCPU id with
//!   `KVM_X2APIC_API_USE_32BIT_IDS`) changes nothing (upstream has already taken SPIV from the
//!   image by then).
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
/// IA32_APIC_BASE: x2APIC mode (EXTD, upstream `X2APIC_ENABLE`).
pub const BASE_X2APIC: u64 = 1 << 10;
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
/// The corrected machine-check interrupt's LVT entry (present with `MCG_CMCI_P`).
pub const LVTCMCI: u32 = 0x2f0;
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
/// x2APIC only: self IPI (write-only).
pub const SELF_IPI: u32 = 0x3f0;

/// The x2APIC register MSRs (`APIC_BASE_MSR` .. `APIC_BASE_MSR + 0xff`): register `offset` is
/// MSR `X2APIC_MSR_FIRST + offset / 16`.
pub const X2APIC_MSR_FIRST: u32 = 0x800;
pub const X2APIC_MSR_LAST: u32 = 0x8ff;

/// Physical destination "all" (`APIC_BROADCAST`, xAPIC) and (`X2APIC_BROADCAST`, x2APIC).
pub const APIC_BROADCAST: u32 = 0xff;
pub const X2APIC_BROADCAST: u32 = 0xffff_ffff;

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
/// ICR bits reserved in x2APIC mode (`X2APIC_ICR_RESERVED_BITS`): 31:20, 17:16 and 13. The
/// delivery status bit (12) is not among them: KVM ignores it, as Intel CPUs do.
pub const X2APIC_ICR_RESERVED: u64 = 0xfff0_0000 | 0x3_0000 | 1 << 13;
/// SPIV: APIC software enable.
pub const SPIV_APIC_ENABLED: u32 = 1 << 8;
/// ESR: received illegal vector.
pub const ESR_RECV_ILLEGAL_VECTOR: u32 = 1 << 6;

/// The version: an integrated APIC (`APIC_VERSION`).
pub const VERSION: u32 = 0x14;
/// LVT entries: timer, thermal, performance counter, LINT0, LINT1, error; a seventh, CMCI, once
/// the vCPU has `MCG_CMCI_P` ([`Lapic::set_cmci`]; upstream `kvm_apic_calc_nr_lvt_entries`).
pub const NR_LVT: u32 = 6;
/// The LVR value without CMCI: version, and the index of the last LVT entry in bits 23:16
/// (`kvm_apic_set_version`).
pub const LVR_VALUE: u32 = VERSION | ((NR_LVT - 1) << 16);
/// The LVR value with the CMCI entry.
pub const LVR_VALUE_CMCI: u32 = VERSION | (NR_LVT << 16);

/// Nanoseconds per APIC bus cycle unless the VM sets another (`APIC_BUS_CYCLE_NS_DEFAULT`).
pub const BUS_CYCLE_NS: u64 = 1;

/// Whether `ns` may be a VM's bus cycle (`KVM_CAP_X86_APIC_BUS_CYCLES_NS`): not 0, and the
/// longest timer (TMICT 2^32 - 1 at divide-by-128) fits in 64 bits of nanoseconds.
pub fn bus_cycle_valid(ns: u64) -> bool {
    ns != 0 && (u64::from(u32::MAX) * 128).checked_mul(ns).is_some()
}
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
    /// Destination: ICR2 bits 31:24 in xAPIC mode, ICR bits 63:32 in x2APIC mode.
    pub dest: u32,
}

impl Ipi {
    /// Decodes ICR and ICR2 (upstream `kvm_apic_send_ipi`, xAPIC format: the destination is
    /// `GET_XAPIC_DEST_FIELD(icr_high)`).
    pub fn from_icr(icr: u32, icr2: u32) -> Ipi {
        Ipi { dest: icr2 >> 24, ..Ipi::from_x2apic_icr(u64::from(icr)) }
    }

    /// Decodes the 64-bit x2APIC ICR (upstream `kvm_apic_send_ipi` in x2APIC mode: the
    /// destination is all of `icr_high`).
    pub fn from_x2apic_icr(icr: u64) -> Ipi {
        let low = icr as u32;
        Ipi {
            vector: (low & VECTOR_MASK) as u8,
            mode: ((low & MODE_MASK) >> 8) as u8,
            logical: low & ICR_LOGICAL != 0,
            assert: low & ICR_ASSERT != 0,
            level_trigger: low & ICR_LEVEL_TRIGGER != 0,
            shorthand: ((low >> 18) & 3) as u8,
            dest: (icr >> 32) as u32,
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
    /// ID, LDR, DFR, software-enable or the APIC mode changed: republish the
    /// destination-matching state.
    pub dest_changed: bool,
}

/// The APIC mode IA32_APIC_BASE selects (upstream `enum lapic_mode`, `kvm_apic_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Disabled,
    /// EXTD without EN: never a legal value.
    Invalid,
    Xapic,
    X2apic,
}

impl Mode {
    /// `kvm_apic_mode`.
    pub fn of(base: u64) -> Mode {
        match (base & BASE_ENABLE != 0, base & BASE_X2APIC != 0) {
            (false, false) => Mode::Disabled,
            (false, true) => Mode::Invalid,
            (true, false) => Mode::Xapic,
            (true, true) => Mode::X2apic,
        }
    }
}

/// The mode changes a guest WRMSR of IA32_APIC_BASE may not make (the `!host_initiated` part of
/// upstream `kvm_apic_set_base`, SDM 11.12.5): x2APIC to xAPIC (only through disabled), and
/// disabled to x2APIC (only through xAPIC). Userspace (`KVM_SET_MSRS`, `KVM_SET_SREGS`) may.
/// Reserved bits and the invalid mode are every writer's check (`x86::cr`'s `apic_base_valid`).
pub fn guest_base_change_valid(old: u64, new: u64) -> bool {
    !matches!((Mode::of(old), Mode::of(new)), (Mode::X2apic, Mode::Xapic) | (Mode::Disabled, Mode::X2apic))
}

/// The x2APIC LDR of x2APIC ID `id` (`kvm_apic_calc_x2apic_ldr`): cluster `id / 16` in bits
/// 31:16, bit `id % 16` set in bits 15:0.
pub fn x2apic_ldr(id: u32) -> u32 {
    ((id >> 4) << 16) | (1 << (id & 0xf))
}

/// What destination matching needs of one LAPIC (upstream reads it from `struct kvm_lapic` in
/// `kvm_apic_match_dest`, and caches it in the APIC map, `kvm_recalculate_apic_map`). It packs
/// into one `u64` ([`Dest::pack`]), so another thread can read a consistent copy without a lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dest {
    /// The x2APIC ID: always the vCPU id (`kvm_x2apic_id`), in either mode.
    pub x2apic_id: u32,
    /// The xAPIC ID (ID bits 31:24, `kvm_xapic_id`).
    pub xapic_id: u8,
    /// LDR as the register holds it: the logical ID in bits 31:24 in xAPIC mode; cluster in
    /// bits 31:16 and one member bit in bits 15:0 in x2APIC mode.
    pub ldr: u32,
    /// x2APIC mode (`apic_x2apic_mode`).
    pub x2apic: bool,
    /// The xAPIC flat logical model (DFR bits 31:28 = 0xf); otherwise cluster.
    pub dfr_flat: bool,
    /// Hardware enabled (`kvm_apic_present` / `kvm_apic_hw_enabled`).
    pub hw_enabled: bool,
    /// Software enabled (`kvm_apic_sw_enabled`).
    pub sw_enabled: bool,
}

impl Dest {
    const X2APIC: u64 = 1 << 40;
    const FLAT: u64 = 1 << 41;
    const HW_ENABLED: u64 = 1 << 42;
    const SW_ENABLED: u64 = 1 << 43;

    /// LDR in bits 31:0, the xAPIC ID in bits 39:32, the flags above (the x2APIC ID is the
    /// vCPU id, which never changes: the reader knows it).
    pub fn pack(&self) -> u64 {
        let flag = |on: bool, bit: u64| if on { bit } else { 0 };
        u64::from(self.ldr)
            | u64::from(self.xapic_id) << 32
            | flag(self.x2apic, Self::X2APIC)
            | flag(self.dfr_flat, Self::FLAT)
            | flag(self.hw_enabled, Self::HW_ENABLED)
            | flag(self.sw_enabled, Self::SW_ENABLED)
    }

    /// The inverse of [`Dest::pack`], for the LAPIC of vCPU `x2apic_id`.
    pub fn unpack(word: u64, x2apic_id: u32) -> Dest {
        Dest {
            x2apic_id,
            xapic_id: (word >> 32) as u8,
            ldr: word as u32,
            x2apic: word & Self::X2APIC != 0,
            dfr_flat: word & Self::FLAT != 0,
            hw_enabled: word & Self::HW_ENABLED != 0,
            sw_enabled: word & Self::SW_ENABLED != 0,
        }
    }

    /// The destination as this LAPIC sees it (`kvm_apic_mda`): an 8-bit broadcast that is not
    /// an IPI (an IOAPIC message) becomes the x2APIC broadcast for a LAPIC in x2APIC mode,
    /// unless `KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK` turned that off (`broadcast_quirk`).
    pub fn mda(&self, dest: u32, ipi: bool, broadcast_quirk: bool) -> u32 {
        if broadcast_quirk && !ipi && dest == APIC_BROADCAST && self.x2apic {
            X2APIC_BROADCAST
        } else {
            dest
        }
    }

    /// `kvm_apic_broadcast`.
    fn broadcast(&self, mda: u32) -> bool {
        mda == if self.x2apic { X2APIC_BROADCAST } else { APIC_BROADCAST }
    }

    /// `kvm_apic_match_physical_addr`: the broadcast, or the x2APIC ID in x2APIC mode, or the
    /// xAPIC ID in xAPIC mode, except that a destination above 0xff is compared with the x2APIC
    /// ID in xAPIC mode too (upstream's hotplug hack: a vCPU whose ID does not fit in 8 bits
    /// stays addressable before it enables x2APIC).
    pub fn match_physical(&self, mda: u32) -> bool {
        if self.broadcast(mda) {
            return true;
        }
        if self.x2apic || mda > 0xff {
            return mda == self.x2apic_id;
        }
        mda == u32::from(self.xapic_id)
    }

    /// `kvm_apic_match_logical_addr`: the broadcast, or in x2APIC mode the cluster
    /// (`mda` bits 31:16) and a member bit (bits 15:0) of LDR; in xAPIC flat mode any bit of the
    /// 8-bit logical ID; in cluster mode the cluster (bits 7:4) and a member bit (bits 3:0).
    pub fn match_logical(&self, mda: u32) -> bool {
        if self.broadcast(mda) {
            return true;
        }
        if self.x2apic {
            return (self.ldr >> 16) == (mda >> 16) && (self.ldr & mda & 0xffff) != 0;
        }
        let logical_id = self.ldr >> 24;
        if self.dfr_flat {
            (logical_id & mda) != 0
        } else {
            (logical_id >> 4) == (mda >> 4) && (logical_id & mda & 0xf) != 0
        }
    }

    /// Whether a message without shorthand for `mda` reaches this LAPIC (the
    /// `APIC_DEST_NOSHORT` case of `kvm_apic_match_dest`; the caller checks `hw_enabled`).
    pub fn matches(&self, mda: u32, logical: bool) -> bool {
        if logical {
            self.match_logical(mda)
        } else {
            self.match_physical(mda)
        }
    }
}

/// Whether `reg` (16-byte aligned, below 0x400) may be read (`kvm_lapic_readable_reg_mask`):
/// APR, DFR and ICR2 only in xAPIC mode, LVTCMCI only with the CMCI entry.
fn readable(reg: u32, x2apic: bool, cmci: bool) -> bool {
    matches!(reg, ID | LVR | TPR | PPR | LDR | SPIV | ESR | ICR | TMICT | TMCCT | TDCR)
        || (ISR..ISR + 0x80).contains(&reg)
        || (TMR..TMR + 0x80).contains(&reg)
        || (IRR..IRR + 0x80).contains(&reg)
        || (LVTT..=LVTERR).contains(&reg)
        || (cmci && reg == LVTCMCI)
        || (!x2apic && matches!(reg, APR | DFR | ICR2))
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
    /// The vCPU id: the x2APIC ID (`kvm_x2apic_id`), and truncated to 8 bits the xAPIC ID at
    /// RESET and whenever the APIC is hardware re-enabled or leaves x2APIC mode.
    vcpu_id: u32,
    /// The vCPU is the BSP at RESET (`kvm_vcpu_is_reset_bsp`).
    reset_bsp: bool,
    /// The timer divisor from TDCR (`apic->divide_count`).
    divide_count: u32,
    /// Nanoseconds per bus cycle (the VM's `kvm->arch.apic_bus_cycle_ns`).
    bus_cycle_ns: u64,
    /// LVTT is in periodic mode (`lapic_timer.timer_mode`).
    periodic: bool,
    /// Timer period in ns, 0 when no count is programmed (`lapic_timer.period`).
    period: u64,
    /// Absolute time of the next expiry while armed (`lapic_timer.target_expiration` while the
    /// hrtimer runs).
    target: Option<u64>,
    /// Errors detected since the last ESR write (SDM 11.5.3).
    esr_pending: u32,
    /// The LVT has the CMCI entry (the vCPU has `MCG_CMCI_P`; upstream `nr_lvt_entries` 7).
    cmci: bool,
}

impl Lapic {
    /// RESET state of vCPU `id` (upstream `kvm_create_lapic` + `kvm_lapic_reset`).
    pub fn new(id: u32, bsp: bool) -> Lapic {
        let mut apic = Lapic {
            regs: [0; REG_SIZE],
            base: 0,
            vcpu_id: id,
            reset_bsp: bsp,
            divide_count: 2,
            bus_cycle_ns: BUS_CYCLE_NS,
            periodic: false,
            period: 0,
            target: None,
            esr_pending: 0,
            cmci: false,
        };
        apic.reset(false);
        apic
    }

    /// The same LAPIC with a bus cycle of `ns` nanoseconds (checked by [`bus_cycle_valid`]),
    /// as the VM set it before creating the vCPU.
    pub fn with_bus_cycle_ns(mut self, ns: u64) -> Lapic {
        if bus_cycle_valid(ns) {
            self.bus_cycle_ns = ns;
        }
        self
    }

    /// RESET (`init == false`) or INIT (`init == true`) of the APIC (upstream
    /// `kvm_lapic_reset`): INIT keeps IA32_APIC_BASE (so x2APIC mode) and the APIC ID; RESET
    /// goes back to xAPIC mode.
    ///
    /// Every LVT entry is masked, except that the BSP's LINT0 is set to ExtINT, unmasked:
    /// upstream's `KVM_X86_QUIRK_LINT0_REENABLED`, on by default (QEMU's APIC does the same), so
    /// that the PIC reaches the BSP without the firmware programming LINT0.
    pub fn reset(&mut self, init: bool) -> Effect {
        if !init {
            self.set_base(DEFAULT_BASE | BASE_ENABLE | if self.reset_bsp { BASE_BSP } else { 0 });
            // The xAPIC ID is set at RESET even if the APIC was already enabled.
            self.set_xapic_id(self.vcpu_id as u8);
        }
        // Stop the timer.
        self.target = None;
        self.set_reg(LVR, self.lvr_value());
        for lvt in self.lvts() {
            self.set_reg(lvt, LVT_MASKED);
        }
        self.update_lvtt();
        if self.reset_bsp {
            self.set_reg(LVT0, u32::from(MODE_EXTINT) << 8);
        }
        self.set_reg(DFR, 0xffff_ffff);
        self.set_reg(SPIV, 0xff);
        self.set_reg(TPR, 0);
        if !self.x2apic_mode() {
            self.set_reg(LDR, 0);
        }
        self.set_reg(ESR, 0);
        if !self.x2apic_mode() {
            self.set_reg(ICR, 0);
            self.set_reg(ICR2, 0);
        } else {
            self.set_reg64(ICR, 0);
        }
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
        set_image_reg(&mut self.regs, offset, value);
    }

    /// The 64-bit register at `offset` (`kvm_lapic_get_reg64`): x2APIC's ICR.
    fn reg64(&self, offset: u32) -> u64 {
        u64::from(self.reg(offset)) | u64::from(self.reg(offset + 4)) << 32
    }

    fn set_reg64(&mut self, offset: u32, value: u64) {
        self.set_reg(offset, value as u32);
        self.set_reg(offset + 4, (value >> 32) as u32);
    }

    /// `kvm_apic_set_xapic_id`.
    fn set_xapic_id(&mut self, id: u8) {
        self.set_reg(ID, u32::from(id) << 24);
    }

    /// `kvm_apic_set_x2apic_id`: the vCPU id, and the LDR derived from it.
    fn set_x2apic_id(&mut self) {
        self.set_reg(ID, self.vcpu_id);
        self.set_reg(LDR, x2apic_ldr(self.vcpu_id));
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
    /// Hardware re-enabling sets the xAPIC ID back to the vCPU id and keeps the other
    /// registers; entering x2APIC mode sets the x2APIC ID and its LDR; leaving it for xAPIC mode
    /// (userspace only, see [`guest_base_change_valid`]) sets the xAPIC ID.
    pub fn set_base(&mut self, value: u64) -> Effect {
        let old = self.base;
        self.base = value;
        let mut effect = Effect::default();
        if (old ^ value) & BASE_ENABLE != 0 {
            if value & BASE_ENABLE != 0 {
                self.set_xapic_id(self.vcpu_id as u8);
            }
            effect.dest_changed = true;
        }
        if (old ^ value) & BASE_X2APIC != 0 {
            if value & BASE_X2APIC != 0 {
                self.set_x2apic_id();
            } else if value & BASE_ENABLE != 0 {
                self.set_xapic_id(self.vcpu_id as u8);
            }
            effect.dest_changed = true;
        }
        effect
    }

    /// x2APIC mode (`apic_x2apic_mode`).
    pub fn x2apic_mode(&self) -> bool {
        self.base & BASE_X2APIC != 0
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

    /// Guest-physical address of the MMIO page (`apic->base_address`), whatever the mode.
    pub fn mmio_base(&self) -> u64 {
        self.base & BASE_ADDR_MASK
    }

    // ---- MMIO ----

    /// The MMIO page is the register page: hardware enabled and in xAPIC mode. Otherwise it is
    /// a hole (upstream `KVM_X86_QUIRK_LAPIC_MMIO_HOLE`, on by default and not switchable in
    /// rkvm): reads return all ones, writes are dropped.
    fn mmio_live(&self) -> bool {
        self.hw_enabled() && !self.x2apic_mode()
    }

    /// A guest read of `len` bytes at `offset` of the page at [`Lapic::mmio_base`]
    /// (`apic_mmio_read`).
    pub fn mmio_read(&self, offset: u32, len: u32, now_ns: u64) -> u32 {
        if !self.mmio_live() {
            return if len >= 4 { u32::MAX } else { (1 << (8 * len)) - 1 };
        }
        self.read(offset, len, now_ns)
    }

    /// A guest write to the page (`apic_mmio_write`).
    pub fn mmio_write(&mut self, offset: u32, len: u32, value: u32, now_ns: u64) -> Effect {
        if !self.mmio_live() {
            return Effect::default();
        }
        self.write(offset, len, value, now_ns)
    }

    /// A read of `len` bytes at `offset` of the register page (`kvm_lapic_reg_read`): any
    /// access of 1, 2 or 4 bytes within the first 4 bytes of a readable register. Anything
    /// else, reserved and write-only registers (EOI) read 0.
    pub fn read(&self, offset: u32, len: u32, now_ns: u64) -> u32 {
        let alignment = offset & 0xf;
        if !matches!(len, 1 | 2 | 4) || alignment + len > 4 {
            return 0;
        }
        if offset > 0x3f0 || !readable(offset & !0xf, self.x2apic_mode(), self.cmci) {
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

    /// A write of the register page as MMIO does it (`apic_mmio_write` past its mode check):
    /// only aligned 32-bit writes reach a register (SDM 11.4.1); others, and writes the register
    /// refuses, are ignored.
    pub fn write(&mut self, offset: u32, len: u32, value: u32, now_ns: u64) -> Effect {
        if len != 4 || offset & 0xf != 0 || offset >= MMIO_LENGTH {
            return Effect::default();
        }
        self.reg_write(offset & 0xff0, value, now_ns).unwrap_or_default()
    }

    // ---- x2APIC MSRs ----

    /// RDMSR of x2APIC MSR `msr` (`kvm_x2apic_msr_read` → `kvm_lapic_msr_read`): `None` (#GP)
    /// outside x2APIC mode, for MSRs beyond offset 0x3f0, and for registers that cannot be read
    /// (EOI, SELF_IPI, APR, DFR, ICR2, reserved ones). ICR reads as 64 bits.
    pub fn x2apic_msr_read(&self, msr: u32, now_ns: u64) -> Option<u64> {
        if !(X2APIC_MSR_FIRST..=X2APIC_MSR_LAST).contains(&msr) || !self.x2apic_mode() {
            return None;
        }
        let reg = (msr - X2APIC_MSR_FIRST) << 4;
        if reg == ICR {
            return Some(self.reg64(ICR));
        }
        if reg > 0x3f0 || !readable(reg, true, self.cmci) {
            return None;
        }
        Some(u64::from(self.reg_read(reg, now_ns)))
    }

    /// WRMSR of x2APIC MSR `msr` (`kvm_x2apic_msr_write` → `kvm_lapic_msr_write`): `None`
    /// (#GP) outside x2APIC mode, for bits 63:32 set in any register but ICR, and for writes
    /// `kvm_lapic_reg_write` refuses: read-only and reserved registers, ID, LDR, DFR, ICR2,
    /// a nonzero ESR value, SELF_IPI bits above the vector.
    pub fn x2apic_msr_write(&mut self, msr: u32, data: u64, now_ns: u64) -> Option<Effect> {
        if !(X2APIC_MSR_FIRST..=X2APIC_MSR_LAST).contains(&msr) || !self.x2apic_mode() {
            return None;
        }
        let reg = (msr - X2APIC_MSR_FIRST) << 4;
        if reg == ICR {
            return self.x2apic_icr_write(data);
        }
        if data >> 32 != 0 {
            return None;
        }
        self.reg_write(reg, data as u32, now_ns)
    }

    /// A write of the 64-bit x2APIC ICR (`kvm_x2apic_icr_write`): reserved bits #GP; the
    /// delivery status bit is dropped; the IPI goes out.
    fn x2apic_icr_write(&mut self, data: u64) -> Option<Effect> {
        if data & X2APIC_ICR_RESERVED != 0 {
            return None;
        }
        let data = data & !u64::from(ICR_BUSY);
        self.set_reg64(ICR, data);
        Some(Effect { ipi: Some(Ipi::from_x2apic_icr(data)), ..Effect::default() })
    }

    /// One register write (`kvm_lapic_reg_write`): `None` where upstream returns 1 (a #GP for
    /// an x2APIC MSR write; MMIO ignores it).
    fn reg_write(&mut self, reg: u32, value: u32, now_ns: u64) -> Option<Effect> {
        let x2apic = self.x2apic_mode();
        let mut effect = Effect::default();
        match reg {
            ID if !x2apic => {
                self.set_xapic_id((value >> 24) as u8);
                effect.dest_changed = true;
            }
            TPR => self.set_tpr(value & 0xff),
            EOI => effect.eoi_level = self.set_eoi(),
            LDR if !x2apic => {
                self.set_reg(LDR, value & 0xff00_0000);
                effect.dest_changed = true;
            }
            DFR if !x2apic => {
                self.set_reg(DFR, value | 0x0fff_ffff);
                effect.dest_changed = true;
            }
            SPIV => {
                let was_enabled = self.sw_enabled();
                // No directed EOI (not offered in LVR): bits 9:0 only.
                self.set_reg(SPIV, value & 0x3ff);
                if value & SPIV_APIC_ENABLED == 0 {
                    for lvt in self.lvts() {
                        self.set_reg(lvt, self.reg(lvt) | LVT_MASKED);
                    }
                    effect.timer_changed = self.update_lvtt();
                }
                effect.dest_changed = was_enabled != self.sw_enabled();
            }
            // In x2APIC mode ICR is 64 bits wide: `x2apic_icr_write`.
            ICR if !x2apic => {
                // No delay here, so the delivery status is always idle.
                let icr = value & !ICR_BUSY;
                effect.ipi = Some(Ipi::from_icr(icr, self.reg(ICR2)));
                self.set_reg(ICR, icr);
            }
            ICR2 if !x2apic => self.set_reg(ICR2, value & 0xff00_0000),
            LVTTHMR | LVTPC | LVT0 | LVT1 | LVTERR => self.lvt_write(reg, value),
            LVTCMCI if self.cmci => self.lvt_write(reg, value),
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
            // x2APIC: only 0 may be written (SDM 11.12.1.2).
            ESR if x2apic && value != 0 => return None,
            ESR => {
                // SDM 11.5.3: a write makes the errors detected since the previous write
                // visible, and starts collecting anew.
                self.set_reg(ESR, self.esr_pending);
                self.esr_pending = 0;
            }
            // Exists only in x2APIC mode; bits 7:0 hold the vector, the rest is reserved.
            SELF_IPI if x2apic && value & !VECTOR_MASK == 0 => {
                effect.ipi = Some(Ipi::from_x2apic_icr(u64::from((1 << 18) | value)));
            }
            // Read-only and reserved registers, and those the mode does not have.
            _ => return None,
        }
        Some(effect)
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

    /// A write of an LVT entry other than the timer's (the `APIC_LVT0` ... `APIC_LVTCMCI` cases
    /// of `kvm_lapic_reg_write`): the entry's writable bits (`apic_lvt_mask`), masked while the
    /// APIC is software-disabled.
    fn lvt_write(&mut self, reg: u32, value: u32) {
        let mask = match reg {
            LVT0 | LVT1 => LINT_MASK,
            LVTERR => LVT_MASK,
            _ => LVT_MASK | MODE_MASK,
        };
        let value = if self.sw_enabled() { value } else { value | LVT_MASKED };
        self.set_reg(reg, value & mask);
    }

    /// The LVT registers this APIC has, in index order (`APIC_LVTx(i)` for `i <
    /// nr_lvt_entries`).
    fn lvts(&self) -> impl Iterator<Item = u32> {
        LVTS.into_iter().chain(self.cmci.then_some(LVTCMCI))
    }

    /// LVR as `kvm_apic_set_version` computes it (no directed EOI is offered).
    fn lvr_value(&self) -> u32 {
        if self.cmci {
            LVR_VALUE_CMCI
        } else {
            LVR_VALUE
        }
    }

    /// The vCPU's machine-check capabilities changed (upstream `kvm_apic_after_set_mcg_cap`):
    /// with `MCG_CMCI_P` the LVT has a seventh entry, CMCI, which starts masked; LVR tells the
    /// guest how many entries there are. Taking the entry away leaves its register value in
    /// the page, unreachable, as upstream.
    pub fn set_cmci(&mut self, cmci: bool) {
        if cmci == self.cmci {
            return;
        }
        if cmci {
            self.set_reg(LVTCMCI, LVT_MASKED);
        }
        self.cmci = cmci;
        self.set_reg(LVR, self.lvr_value());
    }

    /// Signals a corrected machine-check error through the CMCI entry (upstream
    /// `kvm_apic_local_deliver(apic, APIC_LVTCMCI)`): latched in IRR unless the APIC is
    /// disabled or the entry masked. Only the fixed delivery mode is modelled (an entry in
    /// another mode delivers nothing). Returns whether the interrupt was accepted.
    pub fn deliver_cmci(&mut self) -> bool {
        self.cmci && self.local_deliver(LVTCMCI)
    }

    // ---- Destination matching state ----

    /// The xAPIC ID (ID bits 31:24; `kvm_xapic_id`).
    pub fn id(&self) -> u8 {
        (self.reg(ID) >> 24) as u8
    }

    /// The xAPIC logical APIC ID (LDR bits 31:24).
    pub fn ldr(&self) -> u8 {
        (self.reg(LDR) >> 24) as u8
    }

    /// The flat logical model (DFR bits 31:28 = 0xf); otherwise cluster. (Guest writes can only
    /// make the model field 0xf or 0; upstream matches nothing for an odd value from
    /// `KVM_SET_LAPIC`, here it is taken as cluster.)
    pub fn dfr_flat(&self) -> bool {
        self.reg(DFR) >> 28 == 0xf
    }

    /// What destination matching needs, to publish after every [`Effect::dest_changed`].
    pub fn dest(&self) -> Dest {
        Dest {
            x2apic_id: self.vcpu_id,
            xapic_id: self.id(),
            ldr: self.reg(LDR),
            x2apic: self.x2apic_mode(),
            dfr_flat: self.dfr_flat(),
            hw_enabled: self.hw_enabled(),
            sw_enabled: self.sw_enabled(),
        }
    }

    /// Whether a non-shorthand IPI for `dest` reaches this APIC (hardware enable not checked).
    pub fn matches(&self, dest: u32, logical: bool) -> bool {
        self.dest().matches(dest, logical)
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
        u64::from(count) * self.bus_cycle_ns * u64::from(self.divide_count)
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
            // remaining * new / old without overflow for any bus cycle, and without u128
            // (whose division the kernel does not link): the divisors are at most 128.
            let (old, new) = (u64::from(old_divisor).max(1), u64::from(self.divide_count));
            let scaled = (remaining / old).saturating_mul(new).saturating_add(remaining % old * new / old);
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
        (ns / (self.bus_cycle_ns * u64::from(self.divide_count)).max(1)) as u32
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

    /// The register image with TMCCT filled in (`kvm_apic_get_state`). In x2APIC mode as
    /// `kvm_apic_state_fixup` presents it: the ID in bits 31:24 unless `x2apic_format`
    /// (`KVM_X2APIC_API_USE_32BIT_IDS`) asks for all 32 bits, ICR's high half in ICR2.
    pub fn get_state(&self, now_ns: u64, out: &mut [u8; REG_SIZE], x2apic_format: bool) {
        out.copy_from_slice(&self.regs);
        set_image_reg(out, TMCCT, self.tmcct(now_ns));
        if self.x2apic_mode() {
            if !x2apic_format {
                set_image_reg(out, ID, self.vcpu_id << 24);
            }
            set_image_reg(out, ICR2, (self.reg64(ICR) >> 32) as u32);
        }
    }

    /// Takes a register image (`kvm_apic_set_state`): LVR is KVM's own, PPR is recomputed, and
    /// the timer restarts with the period from TMICT and the first expiry from TMCCT, in the
    /// LVTT mode of the image. Errors latched and not yet visible in ESR are dropped.
    ///
    /// In x2APIC mode first `kvm_apic_state_fixup`: the x2APIC ID is read-only, so the image's
    /// ID is ignored, or with `x2apic_format` (`KVM_X2APIC_API_USE_32BIT_IDS`) must be the vCPU
    /// id (`None`: `EINVAL`, nothing changed); LDR is derived from it; ICR is ICR | ICR2 << 32.
    pub fn set_state(&mut self, regs: &[u8; REG_SIZE], now_ns: u64, x2apic_format: bool) -> Option<Effect> {
        let mut regs = *regs;
        if self.x2apic_mode() {
            if !x2apic_format {
                set_image_reg(&mut regs, ID, self.vcpu_id);
            } else if image_reg(&regs, ID) != self.vcpu_id {
                return None;
            }
            set_image_reg(&mut regs, LDR, x2apic_ldr(self.vcpu_id));
            let icr2 = image_reg(&regs, ICR2);
            set_image_reg(&mut regs, ICR + 4, icr2);
        }
        self.regs = regs;
        self.set_reg(LVR, self.lvr_value());
        self.update_ppr();
        self.target = None;
        self.update_lvtt();
        self.update_divide_count();
        self.start_timer(TMCCT, now_ns);
        self.set_reg(TMCCT, 0);
        self.esr_pending = 0;
        Some(Effect { dest_changed: true, timer_changed: true, ..Effect::default() })
    }
}

/// The 32-bit register at `offset` of a register image (`__kvm_lapic_get_reg`).
fn image_reg(regs: &[u8; REG_SIZE], offset: u32) -> u32 {
    let o = offset as usize;
    u32::from_le_bytes([regs[o], regs[o + 1], regs[o + 2], regs[o + 3]])
}

/// `__kvm_lapic_set_reg`.
fn set_image_reg(regs: &mut [u8; REG_SIZE], offset: u32, value: u32) {
    let o = offset as usize;
    regs[o..o + 4].copy_from_slice(&value.to_le_bytes());
}

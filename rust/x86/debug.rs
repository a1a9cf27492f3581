//! Guest debugging (pure): the debug-register bits, `KVM_SET_GUEST_DEBUG`'s control word, which
//! breakpoints the guest runs with, which exceptions exit, and how a #DB lands in the guest's DR6.
//!
//! Upstream counterparts (arch/x86/kvm/x86.c and vmx/vmx.c): `kvm_arch_vcpu_ioctl_set_guest_debug`
//! (the control word, `eff_db`), `kvm_update_dr7` (the DR7 the guest runs with),
//! `vmx_update_exception_bitmap`, `handle_exception_nmi` (whose #DB exits go to userspace),
//! `kvm_deliver_exception_payload` (DR6 after a #DB) and `kvm_vcpu_do_singlestep`.
//!
//! Where rkvm's VMX backend keeps the state: the guest's own DR0-DR3, DR6 and DR7 in software
//! (every MOV DR exits), the *effective* DR7 in the VMCS (loaded on entry) and the effective
//! DR0-DR3 in the CPU's debug registers around each entry while that DR7 arms a breakpoint.
//! #DB always exits, so the CPU never writes the hardware DR6 on the guest's behalf.

/// DR6 bits that read as 1 (and the active-low ones), its RESET value (upstream
/// `DR6_ACTIVE_LOW`, which is also `DR6_FIXED_1 | DR6_RTM`).
pub const DR6_ACTIVE_LOW: u64 = 0xffff_0ff0;
/// B0-B3: which breakpoint matched.
pub const DR6_TRAP_BITS: u64 = 0xf;
/// Bit 12: "enabled breakpoint" in the pending-debug-exceptions format; reserved (0) in DR6.
pub const DR6_ENABLED_BP: u64 = 1 << 12;
/// BD: debug-register access detected (DR7.GD).
pub const DR6_BD: u64 = 1 << 13;
/// BS: single step.
pub const DR6_BS: u64 = 1 << 14;
/// RTM (active low).
pub const DR6_RTM: u64 = 1 << 16;

/// DR7 bit 10 reads as 1; DR7 at RESET.
pub const DR7_FIXED_1: u64 = 0x400;
/// GD: general detect (a MOV DR raises #DB).
pub const DR7_GD: u64 = 1 << 13;
/// L0-L3 and G0-G3: a breakpoint is enabled.
pub const DR7_BP_EN_MASK: u64 = 0xff;

/// The exception vectors guest debugging is about.
pub const DB_VECTOR: u8 = 1;
pub const BP_VECTOR: u8 = 3;

/// `KVM_GUESTDBG_*` (uapi/linux/kvm.h and asm/kvm.h; `vcpu.rs` checks them against the
/// kernel headers).
pub const ENABLE: u32 = 0x1;
pub const SINGLESTEP: u32 = 0x2;
pub const USE_SW_BP: u32 = 0x1_0000;
pub const USE_HW_BP: u32 = 0x2_0000;
pub const INJECT_DB: u32 = 0x4_0000;
pub const INJECT_BP: u32 = 0x8_0000;
pub const BLOCKIRQ: u32 = 0x10_0000;
/// Every flag x86 knows (upstream `KVM_GUESTDBG_VALID_MASK`), also `KVM_CAP_SET_GUEST_DEBUG2`'s
/// answer.
pub const VALID_MASK: u32 = ENABLE | SINGLESTEP | USE_SW_BP | USE_HW_BP | INJECT_DB | INJECT_BP | BLOCKIRQ;

/// Why `KVM_SET_GUEST_DEBUG` refuses its argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetError {
    /// A flag outside [`VALID_MASK`], or a DR7 with bits 63:32 set (`EINVAL`).
    Invalid,
    /// `INJECT_DB`/`INJECT_BP` while an exception is already pending (`EBUSY`).
    Busy,
}

/// What `KVM_SET_GUEST_DEBUG` set (upstream `vcpu->guest_debug`, `guest_debug_dr7` and, with
/// `USE_HW_BP`, `eff_db`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestDebug {
    /// The control word; 0 unless `ENABLE` was given (then every other flag is ignored, as
    /// upstream).
    pub control: u32,
    /// The debugger's DR0-DR3 and DR7 (with `USE_HW_BP`; zero otherwise).
    pub db: [u64; 4],
    pub dr7: u64,
}

impl GuestDebug {
    /// Checks and takes `KVM_SET_GUEST_DEBUG`'s `control` and `debugreg[8]` (DR0-DR3, DR6
    /// unused, DR7). `exception_pending`: an exception is queued and not yet delivered
    /// (upstream `kvm_is_exception_pending`), which an `INJECT_*` flag may not displace.
    pub fn new(control: u32, debugreg: &[u64; 8], exception_pending: bool) -> Result<GuestDebug, SetError> {
        // Upstream 6.12 x86 ignores unknown flags; rkvm refuses them, as the
        // KVM_CAP_SET_GUEST_DEBUG2 answer invites and as arm64 does.
        if control & !VALID_MASK != 0 {
            return Err(SetError::Invalid);
        }
        // DR7 bits 63:32 are reserved: a VM entry with them set fails.
        if control & (ENABLE | USE_HW_BP) == ENABLE | USE_HW_BP && debugreg[7] >> 32 != 0 {
            return Err(SetError::Invalid);
        }
        if control & (INJECT_DB | INJECT_BP) != 0 && exception_pending {
            return Err(SetError::Busy);
        }
        if control & ENABLE == 0 {
            return Ok(GuestDebug::default());
        }
        let mut d = GuestDebug { control, ..GuestDebug::default() };
        if control & USE_HW_BP != 0 {
            d.db = [debugreg[0], debugreg[1], debugreg[2], debugreg[3]];
            d.dr7 = debugreg[7];
        }
        Ok(d)
    }

    pub fn singlestep(&self) -> bool {
        self.control & SINGLESTEP != 0
    }

    pub fn hw_bp(&self) -> bool {
        self.control & USE_HW_BP != 0
    }

    pub fn sw_bp(&self) -> bool {
        self.control & USE_SW_BP != 0
    }

    /// No new interrupts or NMIs are injected while set (upstream: the `KVM_GUESTDBG_BLOCKIRQ`
    /// return in `kvm_check_and_inject_events`).
    pub fn block_irq(&self) -> bool {
        self.control & BLOCKIRQ != 0
    }

    /// A #DB exit is the debugger's, not the guest's (upstream `handle_exception_nmi`):
    /// userspace gets `KVM_EXIT_DEBUG` for every #DB, whoever caused it.
    pub fn db_to_user(&self) -> bool {
        self.control & (SINGLESTEP | USE_HW_BP) != 0
    }

    /// The DR0-DR3 and DR7 the CPU runs the guest with (upstream `eff_db` and
    /// `kvm_update_dr7`): the debugger's with `USE_HW_BP`, else the guest's own, so that turning
    /// debugging off gives the guest its breakpoints back.
    pub fn effective(&self, guest_db: &[u64; 4], guest_dr7: u64) -> ([u64; 4], u64) {
        if self.hw_bp() {
            (self.db, self.dr7)
        } else {
            (*guest_db, guest_dr7)
        }
    }

    /// The VMCS exception bitmap (upstream `vmx_update_exception_bitmap`, debug part): #DB
    /// always, so that the guest's DR6 stays rkvm's and no #DB loop can keep a CPU in the guest
    /// (CVE-2015-8104); #BP only with software breakpoints.
    pub fn exception_bitmap(&self) -> u32 {
        let mut eb = 1 << DB_VECTOR;
        if self.sw_bp() {
            eb |= 1 << BP_VECTOR;
        }
        eb
    }
}

/// Whether `dr7` enables a breakpoint, i.e. DR0-DR3 must be loaded for the guest.
pub fn armed(dr7: u64) -> bool {
    dr7 & DR7_BP_EN_MASK != 0
}

/// The guest's DR6 after a #DB whose cause is `payload` (the pending-debug-exceptions format of
/// a #DB exit's qualification: B0-B3, BD, BS, RTM active high; upstream
/// `kvm_deliver_exception_payload`): B0-B3 are replaced, BD/BS/BT only ever set, RTM cleared
/// when present, bit 12 clear and the fixed bits set.
pub fn dr6_after_db(dr6: u64, payload: u64) -> u64 {
    let mut v = dr6 & !DR6_TRAP_BITS;
    v |= DR6_RTM;
    v &= !(payload & DR6_ACTIVE_LOW);
    v |= payload & !DR6_ACTIVE_LOW;
    v &= !DR6_ENABLED_BP;
    v | (DR6_ACTIVE_LOW & !DR6_RTM)
}

/// `kvm_run->debug.arch.dr6` for a #DB exit with `payload` (upstream: `dr6 | DR6_ACTIVE_LOW`).
pub fn exit_dr6(payload: u64) -> u64 {
    payload | DR6_ACTIVE_LOW
}

/// The guest's DR7 once a #DB has been delivered to it: the CPU clears GD when it delivers a
/// #DB, so that the handler can use the debug registers (upstream: the `DR7_GD` clearing in
/// `kvm_check_and_inject_events`).
pub fn dr7_after_db(dr7: u64) -> u64 {
    dr7 & !DR7_GD
}

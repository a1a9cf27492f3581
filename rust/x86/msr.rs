//! Guest MSRs: the ones rkvm knows, how a guest's write is checked, which ones a guest may
//! access without a VM exit (the VMX MSR bitmap), and the lazy switching of the MSRs the VMCS
//! does not switch (upstream: `kvm_get_msr_common` / `kvm_set_msr_common`, `vmx_msr_bitmap`,
//! `kvm_set_user_return_msr` / `kvm_on_user_return`).
//!
//! Pure logic over an MSR-access trait, so host `cargo test` checks it: the kernel side supplies
//! the real RDMSR/WRMSR and the user-return notifier.
//!
//! # Where each guest MSR lives (VMX backend)
//! - In the VMCS, switched by the CPU on entry and exit: EFER, PAT, SYSENTER_CS/ESP/EIP,
//!   FS_BASE, GS_BASE, DEBUGCTL.
//! - KERNEL_GS_BASE: the guest's value is loaded right before each entry and read back right
//!   after each exit (guest SWAPGS changes it without an exit).
//! - STAR, LSTAR, CSTAR, SFMASK, TSC_AUX ("user-return" MSRs): only kernel entry from user mode
//!   (SYSCALL) and RDTSCP/RDPID in user mode depend on them, so the guest's values stay loaded
//!   across exits and KVM_RUN calls and the host's come back when this CPU next returns to user
//!   mode ([`UretCpu`]).
//! - Everything else the guest reads or writes exits, and is answered from the vCPU's software
//!   copy; an MSR rkvm does not know gets #GP, as on a CPU without it.

/// Reads and writes MSRs (the kernel's faulting-safe accessors, or a model in tests).
pub trait MsrAccess {
    /// RDMSR.
    fn read(&mut self, msr: u32) -> u64;
    /// WRMSR.
    fn write(&mut self, msr: u32, value: u64);
}

/// `IA32_TIME_STAMP_COUNTER`.
pub const TSC: u32 = 0x10;
/// `IA32_APIC_BASE`.
pub const APIC_BASE: u32 = 0x1b;
/// `IA32_FEATURE_CONTROL`.
pub const FEATURE_CONTROL: u32 = 0x3a;
/// `IA32_TSC_ADJUST`.
pub const TSC_ADJUST: u32 = 0x3b;
/// `IA32_BIOS_SIGN_ID` (`MSR_IA32_UCODE_REV`): the loaded microcode's revision in bits 63:32.
pub const UCODE_REV: u32 = 0x8b;
/// `MSR_PLATFORM_INFO` (Intel model-specific; bit 31: CPUID faulting is available).
pub const PLATFORM_INFO: u32 = 0xce;
/// `MSR_MISC_FEATURES_ENABLES` (bit 0: CPUID faulting on).
pub const MISC_FEATURES_ENABLES: u32 = 0x140;
/// `IA32_SPEC_CTRL`.
pub const SPEC_CTRL: u32 = 0x48;
/// `IA32_PRED_CMD` (write-only command).
pub const PRED_CMD: u32 = 0x49;
/// `IA32_MTRRCAP`.
pub const MTRRCAP: u32 = 0xfe;
/// `IA32_SYSENTER_CS`.
pub const SYSENTER_CS: u32 = 0x174;
/// `IA32_SYSENTER_ESP`.
pub const SYSENTER_ESP: u32 = 0x175;
/// `IA32_SYSENTER_EIP`.
pub const SYSENTER_EIP: u32 = 0x176;
/// `IA32_MISC_ENABLE`.
pub const MISC_ENABLE: u32 = 0x1a0;
/// `IA32_DEBUGCTL`.
pub const DEBUGCTL: u32 = 0x1d9;
/// `IA32_PAT`.
pub const PAT: u32 = 0x277;
/// `IA32_MTRR_DEF_TYPE`.
pub const MTRR_DEF_TYPE: u32 = 0x2ff;
/// `IA32_EFER`.
pub const EFER: u32 = 0xc000_0080;
/// `IA32_STAR`.
pub const STAR: u32 = 0xc000_0081;
/// `IA32_LSTAR`.
pub const LSTAR: u32 = 0xc000_0082;
/// `IA32_CSTAR`.
pub const CSTAR: u32 = 0xc000_0083;
/// `IA32_FMASK` (SFMASK).
pub const SFMASK: u32 = 0xc000_0084;
/// `IA32_FS_BASE`.
pub const FS_BASE: u32 = 0xc000_0100;
/// `IA32_GS_BASE`.
pub const GS_BASE: u32 = 0xc000_0101;
/// `IA32_KERNEL_GS_BASE`.
pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
/// `IA32_TSC_AUX`.
pub const TSC_AUX: u32 = 0xc000_0103;
/// `MSR_K7_HWCR` (AMD's hardware configuration register; KVM emulates it on Intel too).
pub const K7_HWCR: u32 = 0xc001_0015;
/// `MSR_IA32_POWER_CTL` (model-specific; upstream keeps whatever is written).
pub const POWER_CTL: u32 = 0x1fc;

/// The RESET value of IA32_PAT (SDM 11.12.4).
pub const PAT_RESET: u64 = 0x0007_0406_0007_0406;
/// IA32_MISC_ENABLE as rkvm's guests first see it: fast strings, no PEBS, no BTS (upstream:
/// `kvm_vcpu_reset` → `MSR_IA32_MISC_ENABLE_PEBS_UNAVAIL | BTS_UNAVAIL`).
pub const MISC_ENABLE_RESET: u64 = 1 | 1 << 11 | 1 << 12;
/// IA32_FEATURE_CONTROL's lock bit.
pub const FEATURE_CONTROL_LOCKED: u64 = 1;
/// What userspace may write to IA32_FEATURE_CONTROL (upstream `KVM_SUPPORTED_FEATURE_CONTROL`):
/// lock, VMX inside and outside SMX, SGX launch control, SGX, LMCE. The guest itself may only
/// set the lock bit, and LMCE with `MCG_LMCE_P` (no nested VMX or SGX: upstream's
/// `msr_ia32_feature_control_valid_bits` for such a vCPU).
pub const FEATURE_CONTROL_HOST_VALID: u64 = 1 | 1 << 1 | 1 << 2 | 1 << 17 | 1 << 18 | 1 << 20;
/// `MSR_PLATFORM_INFO_CPUID_FAULT` / `MSR_MISC_FEATURES_ENABLES_CPUID_FAULT`.
pub const PLATFORM_INFO_CPUID_FAULT: u64 = 1 << 31;
pub const MISC_FEATURES_CPUID_FAULT: u64 = 1;
/// IA32_UCODE_REV of a new vCPU (upstream `vmx_vcpu_create`: revision 1 in bits 63:32).
pub const UCODE_REV_RESET: u64 = 0x1_0000_0000;
/// The EFER bits a guest may write: SCE, LME, LMA (ignored, see [`efer_write`]), NXE.
pub const EFER_WRITABLE: u64 = 1 | 1 << 8 | 1 << 10 | 1 << 11;

/// The MSRs rkvm's vCPUs have (`KVM_GET_MSR_INDEX_LIST`: what userspace saves and restores),
/// before dropping those the host CPU lacks (SPEC_CTRL, TSC_AUX): the hardware ones, then those
/// emulated in software in upstream's `emulated_msrs_all` order. The read-only MTRRCAP is not
/// listed (nor is it upstream): restoring it would fail. Of the machine-check MSRs
/// (`x86::mce`) only the global ones are listed, as upstream: userspace saves the banks itself.
pub const KNOWN: [u32; 29] = [
    TSC, APIC_BASE, FEATURE_CONTROL, SPEC_CTRL, SYSENTER_CS, SYSENTER_ESP, SYSENTER_EIP,
    MISC_ENABLE, DEBUGCTL, PAT, MTRR_DEF_TYPE, EFER, STAR, LSTAR, CSTAR, SFMASK, FS_BASE, GS_BASE,
    KERNEL_GS_BASE, TSC_AUX, TSC_ADJUST, super::mce::MCG_STATUS, super::mce::MCG_CTL,
    super::mce::MCG_EXT_CTL, PLATFORM_INFO, MISC_FEATURES_ENABLES, POWER_CTL, UCODE_REV, K7_HWCR,
];

/// Why a guest's RDMSR or WRMSR is refused (upstream: the non-zero returns of
/// `kvm_get_msr_with_filter` / `kvm_set_msr_with_filter`). With `KVM_CAP_X86_USER_SPACE_MSR`
/// enabled for that reason the access exits to userspace instead of raising #GP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrFault {
    /// rkvm has the MSR but refuses this access: a bad value, a feature the guest lacks, a
    /// read-only MSR (upstream returns 1).
    Invalid,
    /// rkvm does not know the MSR (upstream `KVM_MSR_RET_UNSUPPORTED`).
    Unsupported,
    /// The VM's MSR filter denies the access (upstream `KVM_MSR_RET_FILTERED`).
    Filtered,
}

/// `kvm_run->msr.reason` values and `KVM_CAP_X86_USER_SPACE_MSR` bits
/// (`KVM_MSR_EXIT_REASON_INVAL`, `_UNKNOWN`, `_FILTER`).
pub const EXIT_REASON_INVAL: u32 = 1;
pub const EXIT_REASON_UNKNOWN: u32 = 2;
pub const EXIT_REASON_FILTER: u32 = 4;
/// `KVM_MSR_EXIT_REASON_VALID_MASK`: what `KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)` accepts.
pub const EXIT_REASON_VALID_MASK: u32 = EXIT_REASON_INVAL | EXIT_REASON_UNKNOWN | EXIT_REASON_FILTER;

impl MsrFault {
    /// The exit reason this refusal has (upstream `kvm_msr_reason`).
    pub fn exit_reason(self) -> u32 {
        match self {
            MsrFault::Invalid => EXIT_REASON_INVAL,
            MsrFault::Unsupported => EXIT_REASON_UNKNOWN,
            MsrFault::Filtered => EXIT_REASON_FILTER,
        }
    }
}

/// Whether a refused guest access to `msr` (a read, or a `write`) is [`MsrFault::Invalid`]
/// rather than [`MsrFault::Unsupported`]: the MSR is one rkvm answers, so the refusal is
/// about this access. The listed MSRs, MTRRCAP, DEBUGCTL, the x2APIC registers, and the
/// write-only PRED_CMD for writes (a read of it is unknown to upstream too). The
/// machine-check MSRs are decided by `mce::Mce::read`/`write` before this is asked.
pub fn refusal(msr: u32, write: bool) -> MsrFault {
    let known = KNOWN.contains(&msr)
        || matches!(msr, MTRRCAP | DEBUGCTL | 0x800..=0x8ff)
        || (write && msr == PRED_CMD);
    if known {
        MsrFault::Invalid
    } else {
        MsrFault::Unsupported
    }
}

/// MSRs a guest reads and writes without exiting: their guest values live in the VMCS
/// (FS/GS base, SYSENTER_*) or are switched around every entry (KERNEL_GS_BASE).
pub const PASS_THROUGH: [u32; 6] = [FS_BASE, GS_BASE, KERNEL_GS_BASE, SYSENTER_CS, SYSENTER_ESP, SYSENTER_EIP];

/// Where an MSR's intercept bit is in the 4 KiB VMX MSR bitmap (SDM 25.6.9): byte offset and
/// bit. Reads of MSRs 0..=0x1fff at 0, of 0xc0000000..=0xc0001fff at 1 KiB; writes at 2 KiB
/// and 3 KiB. Any other MSR always exits (`None`).
pub fn bitmap_bit(msr: u32, write: bool) -> Option<(usize, u8)> {
    let (base, n) = match msr {
        0..=0x1fff => (0, msr),
        0xc000_0000..=0xc000_1fff => (1024, msr - 0xc000_0000),
        _ => return None,
    };
    let base = base + if write { 2048 } else { 0 };
    Some((base + (n / 8) as usize, (n % 8) as u8))
}

/// Fills an MSR bitmap: every access exits except reads and writes of [`PASS_THROUGH`].
pub fn fill_bitmap(page: &mut [u8; 4096]) {
    fill_bitmap_filtered(page, |_, _| true);
}

/// Fills an MSR bitmap under an MSR filter: every access exits except those of
/// [`PASS_THROUGH`] that `allowed(msr, write)` (the VM's filter) lets through, so that a denied
/// one exits and is refused (upstream `vmx_msr_filter_changed` →
/// `vmx_disable_intercept_for_msr`, which passes an MSR through only if `kvm_msr_allowed`).
pub fn fill_bitmap_filtered(page: &mut [u8; 4096], allowed: impl Fn(u32, bool) -> bool) {
    page.fill(0xff);
    for msr in PASS_THROUGH {
        for write in [false, true] {
            if !allowed(msr, write) {
                continue;
            }
            if let Some((byte, bit)) = bitmap_bit(msr, write) {
                page[byte] &= !(1 << bit);
            }
        }
    }
}

/// Which accesses of [`PASS_THROUGH`] `allowed` denies: bit `2 * i` for reads of
/// `PASS_THROUGH[i]`, `2 * i + 1` for writes. 0: the shared bitmap of [`fill_bitmap`] applies.
pub fn passthrough_denied(allowed: impl Fn(u32, bool) -> bool) -> u32 {
    let mut denied = 0;
    for (i, msr) in PASS_THROUGH.iter().enumerate() {
        for (j, write) in [false, true].into_iter().enumerate() {
            if !allowed(*msr, write) {
                denied |= 1 << (2 * i + j);
            }
        }
    }
    denied
}

/// Whether `v` is a canonical address for 48-bit linear addresses (bits 63:47 all equal).
pub fn is_canonical(v: u64) -> bool {
    ((v as i64) << 16 >> 16) as u64 == v
}

/// Whether `v` is a valid IA32_PAT: every entry one of UC, WC, WT, WP, WB, UC- (0, 1, 4–7).
pub fn pat_valid(v: u64) -> bool {
    v.to_le_bytes().iter().all(|&t| matches!(t, 0 | 1 | 4..=7))
}

/// A guest WRMSR to EFER (upstream `set_efer`): `None` (#GP) for reserved bits or for changing
/// LME while paging is on; else the new EFER, whose LMA stays what it was (the CPU sets LMA
/// itself when paging is turned on with LME set).
pub fn efer_write(old: u64, new: u64, paging: bool) -> Option<u64> {
    const LME: u64 = 1 << 8;
    const LMA: u64 = 1 << 10;
    if new & !EFER_WRITABLE != 0 || (paging && (old ^ new) & LME != 0) {
        return None;
    }
    Some((new & !LMA) | (old & LMA))
}

/// Whether a guest's value for `msr` is one the CPU would accept (false: WRMSR raises #GP).
/// Only rules that do not depend on vCPU state.
pub fn value_valid(msr: u32, v: u64) -> bool {
    match msr {
        LSTAR | CSTAR | FS_BASE | GS_BASE | KERNEL_GS_BASE | SYSENTER_ESP | SYSENTER_EIP => is_canonical(v),
        SFMASK | TSC_AUX => v >> 32 == 0,
        PAT => pat_valid(v),
        // Only the default type (bits 7:0 of the valid types), fixed-range enable and enable.
        MTRR_DEF_TYPE => v & !0xcff == 0 && matches!(v & 0xff, 0 | 1 | 4..=6),
        _ => true,
    }
}

/// A write of MSR_K7_HWCR (upstream `kvm_set_msr_common`, the same for guest and userspace):
/// the flush-filter-disable (6), IGNNE-emulation (8) and TLB-cache-disable (3) bits are
/// dropped; McStatusWrEn (18) and TscFreqSel (24) are kept; anything else is refused (`None`).
pub fn hwcr_write(v: u64) -> Option<u64> {
    let v = v & !(1 << 6 | 1 << 8 | 1 << 3);
    (v & !(1 << 18 | 1 << 24) == 0).then_some(v)
}

/// A write of IA32_FEATURE_CONTROL (upstream `is_vmx_feature_control_msr_valid`): the guest
/// may only set the bits of `guest_valid` (the lock bit, and LMCE when the vCPU has local
/// machine checks: `mce::Mce::guest_feature_control_bits`), and only while the MSR is
/// unlocked; userspace may write any bit of [`FEATURE_CONTROL_HOST_VALID`] at any time (to
/// restore a saved value).
pub fn feature_control_valid(old: u64, new: u64, host: bool, guest_valid: u64) -> bool {
    if host {
        new & !FEATURE_CONTROL_HOST_VALID == 0
    } else {
        old & FEATURE_CONTROL_LOCKED == 0 && new & !guest_valid == 0
    }
}

/// A write of IA32_MISC_ENABLE (upstream `kvm_set_msr_common`): userspace may store any value;
/// the guest may change only fast strings (bit 0), of the bits rkvm models (no MWAIT, no
/// performance monitoring, no limit-CPUID).
pub fn misc_enable_valid(old: u64, new: u64, host: bool) -> bool {
    host || (old ^ new) & !1 == 0
}

/// A write of MSR_PLATFORM_INFO (upstream `kvm_set_msr_common`): only from userspace, and
/// CPUID faulting may not be taken away while the guest has it on.
pub fn platform_info_valid(new: u64, misc_features: u64, host: bool) -> bool {
    host && !(new & PLATFORM_INFO_CPUID_FAULT == 0 && misc_features & MISC_FEATURES_CPUID_FAULT != 0)
}

/// A write of MSR_MISC_FEATURES_ENABLES (upstream `kvm_set_msr_common`): only the CPUID-faulting
/// bit, and only when MSR_PLATFORM_INFO offers it (`supports_cpuid_fault`).
pub fn misc_features_valid(new: u64, platform_info: u64) -> bool {
    new & !MISC_FEATURES_CPUID_FAULT == 0
        && (new & MISC_FEATURES_CPUID_FAULT == 0 || platform_info & PLATFORM_INFO_CPUID_FAULT != 0)
}

/// The lazily switched ("user-return") MSRs, in the order of [`UretCpu`]'s arrays.
pub const URET: [u32; 5] = [STAR, LSTAR, CSTAR, SFMASK, TSC_AUX];
/// Index of TSC_AUX in [`URET`] (present only with RDTSCP or RDPID).
pub const URET_TSC_AUX: usize = 4;

/// One CPU's user-return MSR state (upstream: `struct kvm_user_return_msrs`).
///
/// While `active`, the CPU holds guest values (`curr`) and the host's values are in `host`; the
/// kernel side has a user-return notifier registered on this CPU that calls
/// [`UretCpu::restore_host`]. Only touched on its own CPU with preemption disabled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UretCpu {
    /// The host's values, saved when the first guest value was loaded.
    pub host: [u64; URET.len()],
    /// What the CPU holds now.
    pub curr: [u64; URET.len()],
    /// Whether guest values may be loaded (the host's must come back before user mode).
    pub active: bool,
}

impl UretCpu {
    /// Before VM entry: loads the guest's values of the MSRs in `present` (a bit per [`URET`]
    /// index), writing only those the CPU does not already hold. Returns true when this is the
    /// first switch since the host's values were last restored: the caller must then register
    /// the user-return notifier.
    pub fn load_guest(&mut self, m: &mut impl MsrAccess, guest: &[u64; URET.len()], present: u32) -> bool {
        let first = !self.active;
        if first {
            for (i, msr) in URET.iter().enumerate() {
                if present & (1 << i) != 0 {
                    self.host[i] = m.read(*msr);
                    self.curr[i] = self.host[i];
                }
            }
            self.active = true;
        }
        for (i, msr) in URET.iter().enumerate() {
            if present & (1 << i) != 0 && self.curr[i] != guest[i] {
                m.write(*msr, guest[i]);
                self.curr[i] = guest[i];
            }
        }
        first
    }

    /// On return to user mode (or when the CPU goes offline, or the module unloads): the host's
    /// values back, only those that differ. Returns whether the notifier was registered (then
    /// the caller unregisters it).
    pub fn restore_host(&mut self, m: &mut impl MsrAccess, present: u32) -> bool {
        if !self.active {
            return false;
        }
        for (i, msr) in URET.iter().enumerate() {
            if present & (1 << i) != 0 && self.curr[i] != self.host[i] {
                m.write(*msr, self.host[i]);
                self.curr[i] = self.host[i];
            }
        }
        self.active = false;
        true
    }
}

//! Control registers, EFER and APIC base: which values KVM_SET_SREGS accepts.
//!
//! Mirrors upstream's `kvm_is_valid_sregs`, `kvm_is_valid_cr0`, `__kvm_is_valid_cr4` and
//! `kvm_valid_efer` (arch/x86/kvm), minus what depends on a guest CPUID table rkvm does not have
//! yet: here every feature bit the CPU model knows is allowed, and long mode is allowed whenever
//! the host has it (upstream requires CPUID.80000001:EDX.LM set with KVM_SET_CPUID2 first).

/// CR0.PE: protection enable.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type (always 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// CR0.NW: not write-through.
pub const CR0_NW: u64 = 1 << 29;
/// CR0.CD: cache disable.
pub const CR0_CD: u64 = 1 << 30;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;

/// CR4.PAE: physical address extension.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.VMXE: VMX enable.
pub const CR4_VMXE: u64 = 1 << 13;
/// CR4.OSXSAVE: XSAVE and XCR0 enabled.
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// The CR4 bits KVM knows (upstream's complement of `CR4_RESERVED_BITS`): VME PVI TSD DE PSE
/// PAE MCE PGE PCE OSFXSR OSXMMEXCPT UMIP LA57 VMXE FSGSBASE PCIDE OSXSAVE SMEP SMAP PKE LAM_SUP.
pub const CR4_KNOWN: u64 = 0x7ff
    | (1 << 11) // UMIP
    | (1 << 12) // LA57
    | (1 << 13) // VMXE
    | (1 << 16) // FSGSBASE
    | (1 << 17) // PCIDE
    | (1 << 18) // OSXSAVE
    | (1 << 20) // SMEP
    | (1 << 21) // SMAP
    | (1 << 22) // PKE
    | (1 << 28); // LAM_SUP

/// EFER.SCE: syscall enable.
pub const EFER_SCE: u64 = 1 << 0;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NX: no-execute enable.
pub const EFER_NX: u64 = 1 << 11;

/// `MSR_IA32_APICBASE` bits that must be zero: 7:0 and 9 (upstream's `0x2ff`).
pub const APIC_BASE_RESERVED_LOW: u64 = 0x2ff;
/// `MSR_IA32_APICBASE.EXTD` (x2APIC): reserved while the guest has no x2APIC.
pub const APIC_BASE_X2APIC: u64 = 1 << 10;
/// `MSR_IA32_APICBASE.EN`: the APIC is enabled.
pub const APIC_BASE_ENABLE: u64 = 1 << 11;

/// Guest MAXPHYADDR when no CPUID table says otherwise (upstream's `cpuid_query_maxphyaddr`
/// fallback).
pub const DEFAULT_MAXPHYADDR: u32 = 36;

/// What the CPU (or backend) lets a guest use, beyond the architectural rules.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// CR4 bits the guest may set (a subset of [`CR4_KNOWN`]).
    pub cr4_allowed: u64,
    /// EFER bits the guest may set.
    pub efer_allowed: u64,
    /// Guest physical address width.
    pub maxphyaddr: u32,
}

impl Limits {
    /// Limits that follow only the architecture (what `backend=none` enforces).
    pub const ARCH: Limits = Limits {
        cr4_allowed: CR4_KNOWN,
        efer_allowed: EFER_SCE | EFER_LME | EFER_LMA | EFER_NX,
        maxphyaddr: DEFAULT_MAXPHYADDR,
    };

    /// Whether a guest-physical address is beyond MAXPHYADDR.
    pub fn gpa_illegal(&self, gpa: u64) -> bool {
        self.maxphyaddr < 64 && gpa >> self.maxphyaddr != 0
    }

    /// `kvm_is_valid_cr0`.
    pub fn cr0_valid(&self, cr0: u64) -> bool {
        cr0 >> 32 == 0 && !(cr0 & CR0_NW != 0 && cr0 & CR0_CD == 0) && !(cr0 & CR0_PG != 0 && cr0 & CR0_PE == 0)
    }

    /// `kvm_is_valid_cr4`.
    pub fn cr4_valid(&self, cr4: u64) -> bool {
        cr4 & !self.cr4_allowed == 0
    }

    /// `kvm_valid_efer`.
    pub fn efer_valid(&self, efer: u64) -> bool {
        efer & !self.efer_allowed == 0
    }

    /// `kvm_is_valid_sregs`: the control-register part of a KVM_SET_SREGS request.
    pub fn sregs_valid(&self, cr0: u64, cr3: u64, cr4: u64, efer: u64, cs_l: bool) -> bool {
        if efer & EFER_LME != 0 && cr0 & CR0_PG != 0 {
            // Paging with LME is 64-bit mode: PAE and LMA are required, CR3 must be legal.
            if cr4 & CR4_PAE == 0 || efer & EFER_LMA == 0 || self.gpa_illegal(cr3) {
                return false;
            }
        } else if efer & EFER_LMA != 0 || cs_l {
            return false;
        }
        self.cr4_valid(cr4) && self.cr0_valid(cr0) && self.efer_valid(efer)
    }

    /// The checks of `kvm_apic_set_base` every writer of IA32_APIC_BASE gets (userspace's
    /// `KVM_SET_MSRS` / `KVM_SET_SREGS` only these): no reserved bit, EXTD only when the guest's
    /// CPUID has x2APIC (`x2apic`, upstream `guest_cpuid_has(vcpu, X86_FEATURE_X2APIC)`), no
    /// address bit beyond MAXPHYADDR, and not EXTD without EN (`LAPIC_MODE_INVALID`). A guest's
    /// WRMSR also obeys the mode transitions (`irq::lapic::guest_base_change_valid`).
    pub fn apic_base_valid(&self, apic_base: u64, x2apic: bool) -> bool {
        let reserved = APIC_BASE_RESERVED_LOW | if x2apic { 0 } else { APIC_BASE_X2APIC };
        let invalid_mode = apic_base & (APIC_BASE_ENABLE | APIC_BASE_X2APIC) == APIC_BASE_X2APIC;
        apic_base & reserved == 0 && !self.gpa_illegal(apic_base) && !invalid_mode
    }
}

//! VMX capability MSRs → one VMCS configuration (upstream: `setup_vmcs_config`).
//!
//! Pure logic: the kernel side reads the MSRs and names the control bits (from `asm/vmx.h`
//! through bindgen); this file decides. Host `cargo test` feeds it captured MSR values.
//!
//! Each VMX control MSR says, in its low half, which bits must be 1 ("allowed-0" settings) and,
//! in its high half, which bits may be 1 ("allowed-1"). When `IA32_VMX_BASIC[55]` is set, the
//! `TRUE_*` variants must be used for the pin/proc/exit/entry controls: they allow clearing
//! default-1 bits such as CR3-load exiting, which EPT needs clear.

/// `IA32_VMX_BASIC[55]`: the TRUE_* control MSRs exist.
pub const BASIC_TRUE_CTLS: u64 = 1 << 55;
/// `IA32_VMX_BASIC[53:50]`: memory type for the VMCS; 6 = write-back.
pub const BASIC_MEM_TYPE_WB: u64 = 6;
/// `IA32_VMX_EPT_VPID_CAP[6]`: 4-level EPT page walk.
pub const EPT_CAP_PWL4: u64 = 1 << 6;
/// `IA32_VMX_EPT_VPID_CAP[14]`: write-back EPT paging structures.
pub const EPT_CAP_WB: u64 = 1 << 14;
/// `IA32_VMX_EPT_VPID_CAP[20]`: INVEPT.
pub const EPT_CAP_INVEPT: u64 = 1 << 20;
/// `IA32_VMX_EPT_VPID_CAP[25]`: single-context INVEPT.
pub const EPT_CAP_INVEPT_SINGLE: u64 = 1 << 25;
/// `IA32_VMX_EPT_VPID_CAP[26]`: all-context INVEPT.
pub const EPT_CAP_INVEPT_ALL: u64 = 1 << 26;

/// `IA32_VMX_EPT_VPID_CAP[32]`: INVVPID.
pub const VPID_CAP_INVVPID: u64 = 1 << 32;
/// `IA32_VMX_EPT_VPID_CAP[41]`: single-context INVVPID.
pub const VPID_CAP_SINGLE: u64 = 1 << 41;
/// `IA32_VMX_EPT_VPID_CAP[42]`: all-context INVVPID.
pub const VPID_CAP_ALL: u64 = 1 << 42;
/// Secondary control "enable VPID".
pub const PROC2_ENABLE_VPID: u32 = 1 << 5;

/// The raw capability MSRs.
#[derive(Clone, Copy, Debug, Default)]
pub struct CapMsrs {
    /// IA32_VMX_BASIC.
    pub basic: u64,
    /// IA32_VMX_(TRUE_)PINBASED_CTLS.
    pub pin: u64,
    /// IA32_VMX_(TRUE_)PROCBASED_CTLS.
    pub proc: u64,
    /// IA32_VMX_PROCBASED_CTLS2 (0 when secondary controls are not allowed).
    pub proc2: u64,
    /// IA32_VMX_(TRUE_)EXIT_CTLS.
    pub exit: u64,
    /// IA32_VMX_(TRUE_)ENTRY_CTLS.
    pub entry: u64,
    /// IA32_VMX_EPT_VPID_CAP (0 when absent).
    pub ept_vpid: u64,
    /// IA32_VMX_CR0_FIXED0 / FIXED1.
    pub cr0_fixed: (u64, u64),
    /// IA32_VMX_CR4_FIXED0 / FIXED1.
    pub cr4_fixed: (u64, u64),
}

/// What rkvm asks for in one control field.
#[derive(Clone, Copy, Debug, Default)]
pub struct Want {
    /// Bits rkvm cannot work without.
    pub required: u32,
    /// Bits used when the CPU allows them.
    pub optional: u32,
    /// Bits that must be clear (refused if the CPU forces them on).
    pub forbidden: u32,
}

/// rkvm's wishes for every control field.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wants {
    /// Pin-based controls.
    pub pin: Want,
    /// Primary processor-based controls.
    pub proc: Want,
    /// Secondary processor-based controls.
    pub proc2: Want,
    /// VM-exit controls.
    pub exit: Want,
    /// VM-entry controls.
    pub entry: Want,
}

/// The configuration every vCPU's VMCS is set up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmcsConfig {
    /// VMCS revision identifier (`IA32_VMX_BASIC[30:0]`).
    pub revision_id: u32,
    /// Size of the VMCS region in bytes.
    pub vmcs_size: u32,
    /// Pin-based controls.
    pub pin: u32,
    /// Primary processor-based controls.
    pub proc: u32,
    /// Secondary processor-based controls.
    pub proc2: u32,
    /// VM-exit controls.
    pub exit: u32,
    /// VM-entry controls.
    pub entry: u32,
    /// EPT/VPID capabilities.
    pub ept_vpid: u64,
    /// Bits that must be 1 / may be 1 in CR0 while in VMX operation.
    pub cr0_fixed: (u64, u64),
    /// Bits that must be 1 / may be 1 in CR4 while in VMX operation.
    pub cr4_fixed: (u64, u64),
}

/// Why VMX cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// A required control bit is not allowed (field name, missing bits).
    Missing(&'static str, u32),
    /// A control bit rkvm needs clear is forced on.
    Forced(&'static str, u32),
    /// The VMCS must be write-back memory.
    VmcsMemType,
    /// The VMCS region is larger than a page.
    VmcsSize,
    /// EPT lacks 4-level walks, write-back tables or INVEPT.
    EptCaps,
}

/// Combines a wish with what a control MSR allows.
pub fn adjust(name: &'static str, want: Want, msr: u64) -> Result<u32, ConfigError> {
    let must_be_one = msr as u32;
    let may_be_one = (msr >> 32) as u32;
    let missing = want.required & !may_be_one;
    if missing != 0 {
        return Err(ConfigError::Missing(name, missing));
    }
    let forced = want.forbidden & must_be_one;
    if forced != 0 {
        return Err(ConfigError::Forced(name, forced));
    }
    Ok(((want.required | want.optional) & may_be_one) | must_be_one)
}

impl VmcsConfig {
    /// Derives the configuration, or says what is missing.
    pub fn new(m: &CapMsrs, w: &Wants) -> Result<Self, ConfigError> {
        if (m.basic >> 50) & 0xf != BASIC_MEM_TYPE_WB {
            return Err(ConfigError::VmcsMemType);
        }
        let vmcs_size = ((m.basic >> 32) & 0x1fff) as u32;
        if vmcs_size > 4096 {
            return Err(ConfigError::VmcsSize);
        }
        let pin = adjust("pin-based", w.pin, m.pin)?;
        let proc = adjust("processor-based", w.proc, m.proc)?;
        let mut proc2 = adjust("secondary processor-based", w.proc2, m.proc2)?;
        // VPIDs are only usable when their translations can be flushed (upstream:
        // `cpu_has_vmx_invvpid_single() || cpu_has_vmx_invvpid_global()`).
        if m.ept_vpid & VPID_CAP_INVVPID == 0 || m.ept_vpid & (VPID_CAP_SINGLE | VPID_CAP_ALL) == 0 {
            proc2 &= !PROC2_ENABLE_VPID;
        }
        let exit = adjust("VM-exit", w.exit, m.exit)?;
        let entry = adjust("VM-entry", w.entry, m.entry)?;
        let need = EPT_CAP_PWL4 | EPT_CAP_WB | EPT_CAP_INVEPT;
        if m.ept_vpid & need != need || m.ept_vpid & (EPT_CAP_INVEPT_SINGLE | EPT_CAP_INVEPT_ALL) == 0 {
            return Err(ConfigError::EptCaps);
        }
        Ok(VmcsConfig {
            revision_id: (m.basic & 0x7fff_ffff) as u32,
            vmcs_size,
            pin,
            proc,
            proc2,
            exit,
            entry,
            ept_vpid: m.ept_vpid,
            cr0_fixed: m.cr0_fixed,
            cr4_fixed: m.cr4_fixed,
        })
    }

    /// Whether vCPUs get VPIDs, and which INVVPID type flushes one (1 single, 2 all contexts).
    pub fn vpid_flush(&self) -> Option<u64> {
        if self.proc2 & PROC2_ENABLE_VPID == 0 {
            None
        } else if self.ept_vpid & VPID_CAP_SINGLE != 0 {
            Some(1)
        } else {
            Some(2)
        }
    }

    /// The CR0 value the CPU runs the guest with, for the CR0 the guest asked for. With
    /// unrestricted guest, PE and PG may be clear whatever FIXED0 says.
    pub fn hw_cr0(&self, guest_cr0: u64, unrestricted: bool) -> u64 {
        let mut fixed0 = self.cr0_fixed.0;
        if unrestricted {
            fixed0 &= !(1 | 1 << 31);
        }
        (guest_cr0 | fixed0) & self.cr0_fixed.1
    }

    /// The CR4 value the CPU runs the guest with (VMXE is always on in VMX non-root operation).
    pub fn hw_cr4(&self, guest_cr4: u64) -> u64 {
        (guest_cr4 | self.cr4_fixed.0) & self.cr4_fixed.1
    }
}

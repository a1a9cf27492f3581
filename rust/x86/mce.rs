//! A vCPU's machine-check architecture: the global MSRs (IA32_MCG_CAP, _STATUS, _CTL,
//! _EXT_CTL), the error-reporting banks (IA32_MCi_CTL, _STATUS, _ADDR, _MISC and IA32_MCi_CTL2),
//! `KVM_X86_SETUP_MCE` and `KVM_X86_SET_MCE` (SDM vol. 3 chapter 16; upstream x86.c:
//! `set_msr_mce`, `get_msr_mce`, `kvm_vcpu_ioctl_x86_setup_mce`, `kvm_vcpu_ioctl_x86_set_mce`,
//! `kvm_vcpu_x86_set_ucna`; vmx.c: `MSR_IA32_MCG_EXT_CTL`, `vmx_setup_mce`).
//!
//! A new vCPU has 32 banks and no capability bits (upstream `vcpu->arch.mcg_cap =
//! KVM_MAX_MCE_BANKS`), every register 0. Userspace picks the banks and capabilities with
//! `KVM_X86_SETUP_MCE` and injects errors with `KVM_X86_SET_MCE`: an uncorrected error raises
//! #MC (or shuts the vCPU down when the guest cannot take one), a corrected one is only logged
//! in its bank, and an uncorrected no-action (UCNA) error is logged and signalled through the
//! LAPIC's CMCI entry when the guest enabled CMCI for the bank. What the caller does with the
//! outcome (queue #MC, shut down, deliver the CMCI) is [`Outcome`].
//!
//! Pure logic: no kernel dependency; tested on the host (`rust/tests`).

/// Most banks a vCPU has (`KVM_MAX_MCE_BANKS`, `KVM_CAP_MCE`).
pub const MAX_BANKS: usize = 32;

/// `IA32_P5_MC_ADDR`, `IA32_P5_MC_TYPE`: read as 0.
pub const P5_MC_ADDR: u32 = 0x0;
pub const P5_MC_TYPE: u32 = 0x1;
/// `IA32_MCG_CAP` (read-only).
pub const MCG_CAP: u32 = 0x179;
/// `IA32_MCG_STATUS`.
pub const MCG_STATUS: u32 = 0x17a;
/// `IA32_MCG_CTL` (with [`MCG_CTL_P`]).
pub const MCG_CTL: u32 = 0x17b;
/// `IA32_MCG_EXT_CTL` (with LMCE enabled in IA32_FEATURE_CONTROL).
pub const MCG_EXT_CTL: u32 = 0x4d0;
/// `IA32_MC0_CTL`: bank `i` is `MC0_CTL + 4 * i` (CTL), `+ 1` (STATUS), `+ 2` (ADDR), `+ 3`
/// (MISC).
pub const MC0_CTL: u32 = 0x400;
/// `IA32_MC0_CTL2`: bank `i`'s is `MC0_CTL2 + i`.
pub const MC0_CTL2: u32 = 0x280;

/// IA32_MCG_CAP: the bank count (bits 7:0).
pub const MCG_BANKS_MASK: u64 = 0xff;
/// IA32_MCG_CAP: IA32_MCG_CTL is present.
pub const MCG_CTL_P: u64 = 1 << 8;
/// IA32_MCG_CAP: CMCI (IA32_MCi_CTL2, the LAPIC's LVT CMCI) is present.
pub const MCG_CMCI_P: u64 = 1 << 10;
/// IA32_MCG_CAP: the extended-register count (bits 23:16), accepted and ignored as upstream.
pub const MCG_EXT_CNT_MASK: u64 = 0xff << 16;
/// IA32_MCG_CAP: software error recovery (the S and AR status bits).
pub const MCG_SER_P: u64 = 1 << 24;
/// IA32_MCG_CAP: local machine checks (IA32_MCG_EXT_CTL).
pub const MCG_LMCE_P: u64 = 1 << 27;
/// The capabilities `KVM_X86_GET_MCE_CAP_SUPPORTED` reports (upstream x86 `MCG_CTL_P |
/// MCG_SER_P`, plus what vmx.c adds: `MCG_LMCE_P | MCG_CMCI_P`).
pub const SUPPORTED: u64 = MCG_CTL_P | MCG_SER_P | MCG_LMCE_P | MCG_CMCI_P;

/// IA32_MCG_STATUS: machine check in progress.
pub const MCG_STATUS_MCIP: u64 = 1 << 2;
/// IA32_MCG_EXT_CTL: local machine checks enabled.
pub const MCG_EXT_CTL_LMCE_EN: u64 = 1;
/// IA32_FEATURE_CONTROL: the BIOS enabled local machine checks.
pub const FEATURE_CONTROL_LMCE: u64 = 1 << 20;

/// IA32_MCi_STATUS bits.
pub const MCI_STATUS_VAL: u64 = 1 << 63;
pub const MCI_STATUS_OVER: u64 = 1 << 62;
pub const MCI_STATUS_UC: u64 = 1 << 61;
pub const MCI_STATUS_EN: u64 = 1 << 60;
pub const MCI_STATUS_MISCV: u64 = 1 << 59;
pub const MCI_STATUS_ADDRV: u64 = 1 << 58;
pub const MCI_STATUS_PCC: u64 = 1 << 57;
pub const MCI_STATUS_S: u64 = 1 << 56;
pub const MCI_STATUS_AR: u64 = 1 << 55;
/// IA32_MCi_CTL2: CMCI enabled (bit 30) and the corrected-error threshold (bits 14:0); the
/// other bits are reserved.
pub const MCI_CTL2_CMCI_EN: u64 = 1 << 30;
pub const MCI_CTL2_THRESHOLD_MASK: u64 = 0x7fff;

/// CR4.MCE: the guest takes #MC (without it an uncorrected error shuts the vCPU down).
pub const CR4_MCE: u64 = 1 << 6;

/// What `KVM_X86_SET_MCE` gives (`struct kvm_x86_mce`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub status: u64,
    pub addr: u64,
    pub misc: u64,
    pub mcg_status: u64,
    pub bank: u8,
}

impl Event {
    /// An uncorrected error that needs no action (upstream `is_ucna`): VAL and UC set, none of
    /// PCC, S and AR, and no machine check signalled (`mcg_status` 0).
    pub fn is_ucna(&self) -> bool {
        self.mcg_status == 0
            && self.status & (MCI_STATUS_PCC | MCI_STATUS_S | MCI_STATUS_AR) == 0
            && self.status & MCI_STATUS_VAL != 0
            && self.status & MCI_STATUS_UC != 0
    }
}

/// What a successful `KVM_X86_SET_MCE` asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing more: the error was logged in its bank, or reporting is disabled and it was
    /// dropped.
    Done,
    /// Queue #MC (vector 18) for the guest.
    MachineCheck,
    /// The guest cannot take the #MC (one in progress, or CR4.MCE clear): shut the vCPU down
    /// (upstream `KVM_REQ_TRIPLE_FAULT`, `KVM_EXIT_SHUTDOWN`).
    Shutdown,
    /// A UCNA error was logged in a bank with CMCI enabled: deliver the LAPIC's LVT CMCI
    /// interrupt, if the LAPIC is in the kernel.
    Cmci,
}

/// One vCPU's machine-check state (upstream `vcpu->arch.mcg_*`, `mce_banks`,
/// `mci_ctl2_banks`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mce {
    pub mcg_cap: u64,
    pub mcg_status: u64,
    pub mcg_ctl: u64,
    pub mcg_ext_ctl: u64,
    /// IA32_MCi_CTL, _STATUS, _ADDR, _MISC of each bank, in MSR order.
    pub banks: [u64; 4 * MAX_BANKS],
    /// IA32_MCi_CTL2 of each bank.
    pub ctl2: [u64; MAX_BANKS],
}

impl Default for Mce {
    fn default() -> Self {
        Mce::new()
    }
}

/// A new vCPU's state, for a vCPU that has not needed its own copy yet.
pub static RESET: Mce = Mce::new();

/// Whether `msr` is one of the machine-check MSRs [`Mce::read`] answers (whatever the bank
/// count): for the "unknown MSR" versus "refused access" distinction of userspace MSR exits.
pub fn is_mce_msr(msr: u32) -> bool {
    matches!(msr, P5_MC_ADDR | P5_MC_TYPE | MCG_CAP | MCG_STATUS | MCG_CTL | MCG_EXT_CTL)
        || (MC0_CTL..MC0_CTL + 4 * MAX_BANKS as u32).contains(&msr)
        || (MC0_CTL2..MC0_CTL2 + MAX_BANKS as u32).contains(&msr)
}

impl Mce {
    /// A new vCPU's (upstream `kvm_arch_vcpu_create`): 32 banks, nothing else.
    pub const fn new() -> Mce {
        Mce { mcg_cap: MAX_BANKS as u64, mcg_status: 0, mcg_ctl: 0, mcg_ext_ctl: 0, banks: [0; 4 * MAX_BANKS], ctl2: [0; MAX_BANKS] }
    }

    /// The number of banks (IA32_MCG_CAP bits 7:0).
    pub fn bank_count(&self) -> usize {
        (self.mcg_cap & MCG_BANKS_MASK) as usize
    }

    /// `KVM_X86_SETUP_MCE` (upstream `kvm_vcpu_ioctl_x86_setup_mce`): 1 to 32 banks, only
    /// [`SUPPORTED`] capabilities (and the bank and extended-register counts), else `EINVAL`
    /// with nothing changed. IA32_MCG_CTL and every bank's IA32_MCi_CTL become all ones
    /// (reporting enabled), IA32_MCi_CTL2 0 with CMCI; the other registers keep their values.
    pub fn setup(&mut self, mcg_cap: u64) -> Result<(), ()> {
        let banks = (mcg_cap & MCG_BANKS_MASK) as usize;
        if banks == 0 || banks > MAX_BANKS {
            return Err(());
        }
        if mcg_cap & !(SUPPORTED | MCG_BANKS_MASK | MCG_EXT_CNT_MASK) != 0 {
            return Err(());
        }
        self.mcg_cap = mcg_cap;
        if mcg_cap & MCG_CTL_P != 0 {
            self.mcg_ctl = u64::MAX;
        }
        for bank in 0..banks {
            self.banks[4 * bank] = u64::MAX;
            if mcg_cap & MCG_CMCI_P != 0 {
                self.ctl2[bank] = 0;
            }
        }
        Ok(())
    }

    /// An RDMSR (`host` false) or `KVM_GET_MSRS` of a machine-check MSR (upstream
    /// `get_msr_mce`, and vmx.c for IA32_MCG_EXT_CTL): `None` if `msr` is not one
    /// ([`is_mce_msr`]), `Some(Err(()))` for #GP. `lmce_enabled`: IA32_FEATURE_CONTROL has
    /// [`FEATURE_CONTROL_LMCE`]. A bank beyond the count refuses; the guest may not read
    /// IA32_MCG_CTL without [`MCG_CTL_P`] nor IA32_MCi_CTL2 without [`MCG_CMCI_P`] (userspace
    /// may).
    pub fn read(&self, msr: u32, host: bool, lmce_enabled: bool) -> Option<Result<u64, ()>> {
        let ok = |v| Some(Ok(v));
        match msr {
            P5_MC_ADDR | P5_MC_TYPE => ok(0),
            MCG_CAP => ok(self.mcg_cap),
            MCG_STATUS => ok(self.mcg_status),
            MCG_CTL if self.mcg_cap & MCG_CTL_P == 0 && !host => Some(Err(())),
            MCG_CTL => ok(self.mcg_ctl),
            MCG_EXT_CTL if !host && !lmce_enabled => Some(Err(())),
            MCG_EXT_CTL => ok(self.mcg_ext_ctl),
            _ if (MC0_CTL2..MC0_CTL2 + MAX_BANKS as u32).contains(&msr) => {
                let bank = (msr - MC0_CTL2) as usize;
                if bank >= self.bank_count() || (self.mcg_cap & MCG_CMCI_P == 0 && !host) {
                    return Some(Err(()));
                }
                ok(self.ctl2[bank])
            }
            _ if (MC0_CTL..MC0_CTL + 4 * MAX_BANKS as u32).contains(&msr) => {
                let i = (msr - MC0_CTL) as usize;
                if i >= 4 * self.bank_count() {
                    return Some(Err(()));
                }
                ok(self.banks[i])
            }
            _ => None,
        }
    }

    /// A WRMSR (`host` false) or `KVM_SET_MSRS` of a machine-check MSR (upstream `set_msr_mce`,
    /// and vmx.c for IA32_MCG_EXT_CTL): `None` if `msr` is not one the guest may write
    /// (IA32_MCG_CAP and the P5 registers are read-only: upstream has no write case for them),
    /// `Some(Err(()))` for #GP. The rules:
    /// - IA32_MCG_STATUS: any value;
    /// - IA32_MCG_CTL: 0 or all ones, and without [`MCG_CTL_P`] only userspace writing 0;
    /// - IA32_MCG_EXT_CTL: only [`MCG_EXT_CTL_LMCE_EN`], and the guest only with LMCE enabled;
    /// - IA32_MCi_CTL2: banks within the count, CMCI_EN and the threshold only, and without
    ///   [`MCG_CMCI_P`] only userspace writing 0;
    /// - IA32_MCi_CTL: banks within the count, 0 or all ones, where bit 10 and bit 0 may also
    ///   be clear (guests that work around old errata);
    /// - IA32_MCi_STATUS: the guest may only clear it (write 0) unless `status_writable`
    ///   (an AMD guest with HWCR.McStatusWrEn); userspace writes anything;
    /// - IA32_MCi_ADDR, _MISC: any value, banks within the count.
    pub fn write(&mut self, msr: u32, data: u64, host: bool, lmce_enabled: bool, status_writable: bool) -> Option<Result<(), ()>> {
        let check = |ok: bool| Some(if ok { Ok(()) } else { Err(()) });
        match msr {
            MCG_STATUS => {
                self.mcg_status = data;
                check(true)
            }
            MCG_CTL => {
                if (self.mcg_cap & MCG_CTL_P == 0 && (data != 0 || !host)) || (data != 0 && data != u64::MAX) {
                    return check(false);
                }
                self.mcg_ctl = data;
                check(true)
            }
            MCG_EXT_CTL => {
                if (!host && !lmce_enabled) || data & !MCG_EXT_CTL_LMCE_EN != 0 {
                    return check(false);
                }
                self.mcg_ext_ctl = data;
                check(true)
            }
            _ if (MC0_CTL2..MC0_CTL2 + MAX_BANKS as u32).contains(&msr) => {
                let bank = (msr - MC0_CTL2) as usize;
                if bank >= self.bank_count()
                    || (self.mcg_cap & MCG_CMCI_P == 0 && (data != 0 || !host))
                    || data & !(MCI_CTL2_CMCI_EN | MCI_CTL2_THRESHOLD_MASK) != 0
                {
                    return check(false);
                }
                self.ctl2[bank] = data;
                check(true)
            }
            _ if (MC0_CTL..MC0_CTL + 4 * MAX_BANKS as u32).contains(&msr) => {
                let i = (msr - MC0_CTL) as usize;
                if i >= 4 * self.bank_count() {
                    return check(false);
                }
                let ctl = i % 4 == 0;
                let status = i % 4 == 1;
                if ctl && data != 0 && (data | 1 << 10 | 1) != u64::MAX {
                    return check(false);
                }
                if status && !host && data != 0 && !status_writable {
                    return check(false);
                }
                self.banks[i] = data;
                check(true)
            }
            _ => None,
        }
    }

    /// `KVM_X86_SET_MCE` (upstream `kvm_vcpu_ioctl_x86_set_mce`): `Err(())` (`EINVAL`) for a
    /// bank beyond the count or a status without VAL. `cr4_mce`: the guest's CR4.MCE.
    ///
    /// - A UCNA error ([`Event::is_ucna`]) is logged (STATUS, ADDR, MISC, and IA32_MCG_STATUS
    ///   taken from the event), and signalled by CMCI if the vCPU has [`MCG_CMCI_P`] and the
    ///   bank's CTL2 has CMCI_EN (upstream `kvm_vcpu_x86_set_ucna`).
    /// - Another uncorrected error (UC) is dropped if IA32_MCG_CTL (with [`MCG_CTL_P`]) or the
    ///   bank's IA32_MCi_CTL is not all ones; shuts the vCPU down if a machine check is already
    ///   in progress (MCIP) or CR4.MCE is clear; else it is logged (OVER set if the bank held a
    ///   valid error) and raises #MC.
    /// - A corrected error is logged unless the bank holds an uncorrected one, which it only
    ///   marks overflowed (OVER); an earlier corrected one is overwritten, with OVER.
    pub fn inject(&mut self, e: &Event, cr4_mce: bool) -> Result<Outcome, ()> {
        let bank = e.bank as usize;
        if bank >= self.bank_count() || e.status & MCI_STATUS_VAL == 0 {
            return Err(());
        }
        let b = 4 * bank;
        if e.is_ucna() {
            self.banks[b + 1] = e.status;
            self.banks[b + 2] = e.addr;
            self.banks[b + 3] = e.misc;
            self.mcg_status = e.mcg_status;
            let cmci = self.mcg_cap & MCG_CMCI_P != 0 && self.ctl2[bank] & MCI_CTL2_CMCI_EN != 0;
            return Ok(if cmci { Outcome::Cmci } else { Outcome::Done });
        }
        let uc = e.status & MCI_STATUS_UC != 0;
        if uc && self.mcg_cap & MCG_CTL_P != 0 && self.mcg_ctl != u64::MAX {
            return Ok(Outcome::Done);
        }
        if uc && self.banks[b] != u64::MAX {
            return Ok(Outcome::Done);
        }
        let old = self.banks[b + 1];
        let mut status = e.status;
        if uc {
            if self.mcg_status & MCG_STATUS_MCIP != 0 || !cr4_mce {
                return Ok(Outcome::Shutdown);
            }
            if old & MCI_STATUS_VAL != 0 {
                status |= MCI_STATUS_OVER;
            }
            self.banks[b + 2] = e.addr;
            self.banks[b + 3] = e.misc;
            self.mcg_status = e.mcg_status;
            self.banks[b + 1] = status;
            Ok(Outcome::MachineCheck)
        } else if old & MCI_STATUS_VAL == 0 || old & MCI_STATUS_UC == 0 {
            if old & MCI_STATUS_VAL != 0 {
                status |= MCI_STATUS_OVER;
            }
            self.banks[b + 2] = e.addr;
            self.banks[b + 3] = e.misc;
            self.banks[b + 1] = status;
            Ok(Outcome::Done)
        } else {
            self.banks[b + 1] |= MCI_STATUS_OVER;
            Ok(Outcome::Done)
        }
    }

    /// The IA32_FEATURE_CONTROL bits the guest may set (upstream
    /// `msr_ia32_feature_control_valid_bits` as `vmx_setup_mce` leaves it): the lock, and LMCE
    /// when the vCPU has [`MCG_LMCE_P`].
    pub fn guest_feature_control_bits(&self) -> u64 {
        1 | if self.mcg_cap & MCG_LMCE_P != 0 { FEATURE_CONTROL_LMCE } else { 0 }
    }
}

//! Intel Processor Trace context around guest entry (upstream: `pt_guest_enter`,
//! `pt_guest_exit`, `pt_save_msr`, `pt_load_msr` in arch/x86/kvm/vmx/vmx.c).
//!
//! Pure rules over an MSR-access trait, so host `cargo test` checks them (Bochs has no PT): which
//! MSRs make up a context, that tracing is stopped (RTIT_CTL.TraceEn clear) before anything else
//! is saved or loaded, and that RTIT_CTL is written last when a context is loaded, so tracing
//! never runs with a half-loaded context.

/// `IA32_RTIT_OUTPUT_BASE`.
pub const RTIT_OUTPUT_BASE: u32 = 0x560;
/// `IA32_RTIT_OUTPUT_MASK_PTRS`.
pub const RTIT_OUTPUT_MASK: u32 = 0x561;
/// `IA32_RTIT_CTL`.
pub const RTIT_CTL: u32 = 0x570;
/// `IA32_RTIT_STATUS`.
pub const RTIT_STATUS: u32 = 0x571;
/// `IA32_RTIT_CR3_MATCH`.
pub const RTIT_CR3_MATCH: u32 = 0x572;
/// `IA32_RTIT_ADDR0_A`; range n is `ADDR0_A + 2n` (A) and `ADDR0_A + 2n + 1` (B).
pub const RTIT_ADDR0_A: u32 = 0x580;
/// `RTIT_CTL.TraceEn`.
pub const CTL_TRACEEN: u64 = 1;
/// Most address ranges the architecture defines.
pub const MAX_ADDR_RANGES: usize = 4;

pub use crate::x86::msr::MsrAccess;

/// One PT context: the RTIT MSRs of the host or of a guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PtContext {
    /// RTIT_CTL.
    pub ctl: u64,
    /// RTIT_STATUS.
    pub status: u64,
    /// RTIT_OUTPUT_BASE.
    pub output_base: u64,
    /// RTIT_OUTPUT_MASK_PTRS.
    pub output_mask: u64,
    /// RTIT_CR3_MATCH.
    pub cr3_match: u64,
    /// RTIT_ADDRn_A / RTIT_ADDRn_B.
    pub addr: [(u64, u64); MAX_ADDR_RANGES],
}

/// What the CPU's PT has (CPUID leaf 0x14).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PtCaps {
    /// Number of address ranges (CPUID.(EAX=14H,ECX=1):EAX[2:0]), at most 4.
    pub addr_ranges: usize,
}

impl PtCaps {
    /// From CPUID.(EAX=14H,ECX=1):EAX.
    pub fn from_cpuid(leaf14_1_eax: u32) -> Self {
        PtCaps { addr_ranges: ((leaf14_1_eax & 7) as usize).min(MAX_ADDR_RANGES) }
    }
}

/// Saves the current context into `ctx` (upstream `pt_save_msr`); RTIT_CTL must already be
/// saved and tracing stopped.
fn save_rest(m: &mut impl MsrAccess, caps: PtCaps, ctx: &mut PtContext) {
    ctx.status = m.read(RTIT_STATUS);
    ctx.output_base = m.read(RTIT_OUTPUT_BASE);
    ctx.output_mask = m.read(RTIT_OUTPUT_MASK);
    ctx.cr3_match = m.read(RTIT_CR3_MATCH);
    for (n, a) in ctx.addr.iter_mut().enumerate().take(caps.addr_ranges) {
        *a = (m.read(RTIT_ADDR0_A + 2 * n as u32), m.read(RTIT_ADDR0_A + 2 * n as u32 + 1));
    }
}

/// Loads `ctx` (upstream `pt_load_msr`), RTIT_CTL last: tracing restarts only once everything
/// else is in place.
fn load(m: &mut impl MsrAccess, caps: PtCaps, ctx: &PtContext) {
    m.write(RTIT_STATUS, ctx.status);
    m.write(RTIT_OUTPUT_BASE, ctx.output_base);
    m.write(RTIT_OUTPUT_MASK, ctx.output_mask);
    m.write(RTIT_CR3_MATCH, ctx.cr3_match);
    for (n, a) in ctx.addr.iter().enumerate().take(caps.addr_ranges) {
        m.write(RTIT_ADDR0_A + 2 * n as u32, a.0);
        m.write(RTIT_ADDR0_A + 2 * n as u32 + 1, a.1);
    }
    if ctx.ctl & CTL_TRACEEN != 0 {
        m.write(RTIT_CTL, ctx.ctl);
    }
}

/// Before VM entry: stops host tracing, saves the host context, loads the guest's
/// (upstream `pt_guest_enter`).
pub fn guest_enter(m: &mut impl MsrAccess, caps: PtCaps, host: &mut PtContext, guest: &PtContext) {
    host.ctl = m.read(RTIT_CTL);
    if host.ctl & CTL_TRACEEN != 0 {
        m.write(RTIT_CTL, host.ctl & !CTL_TRACEEN);
    }
    save_rest(m, caps, host);
    load(m, caps, guest);
}

/// After VM exit: stops guest tracing, saves the guest context, restores the host's
/// (upstream `pt_guest_exit`).
pub fn guest_exit(m: &mut impl MsrAccess, caps: PtCaps, host: &PtContext, guest: &mut PtContext) {
    guest.ctl = m.read(RTIT_CTL);
    if guest.ctl & CTL_TRACEEN != 0 {
        m.write(RTIT_CTL, guest.ctl & !CTL_TRACEEN);
    }
    save_rest(m, caps, guest);
    load(m, caps, host);
}

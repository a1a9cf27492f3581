//! `struct kvm_xsave` for a vCPU whose FPU state is an FXSAVE image (x87 and SSE only):
//! `KVM_GET_XSAVE`/`KVM_GET_XSAVE2` build the standard-format XSAVE area (SDM vol. 1, 13.4) from
//! it, `KVM_SET_XSAVE` checks one and takes it back (upstream: `fpu_copy_guest_fpstate_to_uabi`
//! and `fpu_copy_uabi_to_guest_fpstate` → `copy_uabi_to_xstate`).
//!
//! Pure logic: no kernel dependency, tested on the host (`rust/tests`).

/// Size of `struct kvm_xsave` (and of what `KVM_CAP_XSAVE2` reports: nothing lies beyond the
/// legacy area and the header here).
pub const SIZE: usize = 4096;
/// The legacy (FXSAVE) region at the start of the area.
pub const LEGACY: usize = 512;
/// XSTATE_BV and XCOMP_BV in the XSAVE header, which follows the legacy region.
const XSTATE_BV: usize = 512;
const XCOMP_BV: usize = 520;
const HEADER_END: usize = 576;
/// The state components an FXSAVE image holds.
pub const X87: u64 = 1;
pub const SSE: u64 = 2;
/// MXCSR's offset in the legacy region, and the bits FXRSTOR accepts (DAZ included).
const MXCSR: usize = 24;
pub const MXCSR_MASK: u32 = 0xffff;

/// Why `KVM_SET_XSAVE` refuses an area (`EINVAL` in every case).
#[derive(Debug, PartialEq, Eq)]
pub enum XsaveError {
    /// XSTATE_BV names a component this vCPU does not have.
    Component,
    /// XCOMP_BV is not 0 (the compacted format is not a uabi format) or the header's
    /// reserved bytes are not 0.
    Header,
    /// MXCSR has bits FXRSTOR would fault on.
    Mxcsr,
}

/// Fills `out` (`SIZE` bytes) from the FXSAVE image `fx`: the legacy region as it is, XSTATE_BV
/// = x87|SSE, everything else 0.
pub fn from_fxsave(fx: &[u8; LEGACY], out: &mut [u8]) {
    out.fill(0);
    out[..LEGACY].copy_from_slice(fx);
    out[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&(X87 | SSE).to_le_bytes());
}

/// Takes a standard-format area `x` back into the FXSAVE image `fx`. A component whose
/// XSTATE_BV bit is clear is in its initial state (x87: FCW 0x37f and the rest 0; SSE: XMM
/// registers 0); MXCSR is taken whatever XSTATE_BV says, as XRSTOR does.
pub fn to_fxsave(x: &[u8], fx: &mut [u8; LEGACY]) -> Result<(), XsaveError> {
    let u64_at = |o: usize| u64::from_le_bytes(x[o..o + 8].try_into().unwrap_or([0; 8]));
    let xstate_bv = u64_at(XSTATE_BV);
    if xstate_bv & !(X87 | SSE) != 0 {
        return Err(XsaveError::Component);
    }
    if u64_at(XCOMP_BV) != 0 || x[XCOMP_BV + 8..HEADER_END].iter().any(|&b| b != 0) {
        return Err(XsaveError::Header);
    }
    let mxcsr = u32::from_le_bytes([x[MXCSR], x[MXCSR + 1], x[MXCSR + 2], x[MXCSR + 3]]);
    if mxcsr & !MXCSR_MASK != 0 {
        return Err(XsaveError::Mxcsr);
    }
    fx.copy_from_slice(&x[..LEGACY]);
    if xstate_bv & X87 == 0 {
        // FCW..FDP (bytes 0..24) and ST0–ST7 (32..160); MXCSR and its mask stay.
        fx[..24].fill(0);
        fx[0] = 0x7f;
        fx[1] = 0x03;
        fx[32..160].fill(0);
    }
    if xstate_bv & SSE == 0 {
        fx[160..416].fill(0);
    }
    Ok(())
}

//! The guest's FPU state as a standard-format XSAVE area (SDM vol. 1, 13.4) holding x87, SSE
//! and, when the host offers it, AVX: what XRSTOR loads before a guest entry and XSAVE stores
//! after the exit (FXRSTOR/FXSAVE of its first 512 bytes on a host without XSAVE), and how
//! `KVM_GET_XSAVE`/`KVM_GET_XSAVE2` report it and `KVM_SET_XSAVE` checks and takes it (upstream:
//! `fpu_copy_guest_fpstate_to_uabi` → `__copy_xstate_to_uabi_buf`, and
//! `fpu_copy_uabi_to_guest_fpstate` → `copy_uabi_to_xstate`).
//!
//! Pure logic: no kernel dependency, tested on the host (`rust/tests`).

/// Size of `struct kvm_xsave` (and of what `KVM_CAP_XSAVE2` reports: every component a guest
/// can have lies within it).
pub const SIZE: usize = 4096;
/// The legacy (FXSAVE) region at the start of the area.
pub const LEGACY: usize = 512;
/// XSTATE_BV and XCOMP_BV in the XSAVE header, which follows the legacy region.
const XSTATE_BV: usize = 512;
const XCOMP_BV: usize = 520;
const HEADER_END: usize = 576;
/// The state components a guest may have: x87, SSE, AVX (the upper halves of YMM0–15).
pub const X87: u64 = 1;
pub const SSE: u64 = 2;
pub const AVX: u64 = 4;
/// Where AVX lives in the standard format, and its size (CPUID.(EAX=0DH,ECX=2)).
pub const AVX_OFFSET: usize = 576;
pub const AVX_SIZE: usize = 256;
/// Bytes of a vCPU's own area: legacy region, header, AVX, rounded up to a power of two (so a
/// kmalloc'ed area is 64-byte aligned, as XSAVE requires).
pub const AREA: usize = 1024;
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

fn u64_at(x: &[u8], o: usize) -> u64 {
    let mut b = [0u8; 8];
    for (d, s) in b.iter_mut().zip(&x[o..o + 8]) {
        *d = *s;
    }
    u64::from_le_bytes(b)
}

fn put_u64(x: &mut [u8], o: usize, v: u64) {
    for (d, s) in x[o..o + 8].iter_mut().zip(v.to_le_bytes()) {
        *d = s;
    }
}

/// A vCPU's area at RESET (upstream `fpstate_init`): FCW 0x37f, MXCSR 0x1f80, x87 and SSE
/// present, AVX in its initial state.
pub fn reset(a: &mut [u8; AREA]) {
    a.fill(0);
    a[0] = 0x7f; // FCW = 0x037f
    a[1] = 0x03;
    a[MXCSR] = 0x80; // MXCSR = 0x1f80
    a[MXCSR + 1] = 0x1f;
    put_u64(a, XSTATE_BV, X87 | SSE);
}

/// Puts the x87 and SSE parts of the legacy region `fx` whose XSTATE_BV bit is clear in their
/// initial state (x87: FCW 0x37f and the rest 0; SSE: XMM registers 0); MXCSR stays, as XRSTOR
/// takes it whatever XSTATE_BV says.
fn init_cleared(fx: &mut [u8], xstate_bv: u64) {
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
}

/// The legacy region as the guest's state is: a component XSAVE recorded as in its initial
/// state (XSTATE_BV bit clear) need not have been written, so its initial values are put in.
pub fn legacy(a: &[u8; AREA]) -> [u8; LEGACY] {
    let mut fx = [0u8; LEGACY];
    for (d, s) in fx.iter_mut().zip(a.iter()) {
        *d = *s;
    }
    init_cleared(&mut fx, u64_at(a, XSTATE_BV));
    fx
}

/// Writes back a legacy region (`KVM_SET_FPU`): x87 and SSE are then present.
pub fn set_legacy(a: &mut [u8; AREA], fx: &[u8; LEGACY]) {
    for (d, s) in a.iter_mut().zip(fx.iter()) {
        *d = *s;
    }
    let bv = u64_at(a, XSTATE_BV);
    put_u64(a, XSTATE_BV, bv | X87 | SSE);
}

/// `KVM_GET_XSAVE`: fills `out` (`SIZE` bytes) from the vCPU's area: the legacy region
/// ([`legacy`]), XSTATE_BV = x87|SSE plus AVX if in use, the AVX region if in use, all else 0.
pub fn get(a: &[u8; AREA], out: &mut [u8]) {
    out.fill(0);
    for (d, s) in out.iter_mut().zip(legacy(a).iter()) {
        *d = *s;
    }
    let bv = u64_at(a, XSTATE_BV) & AVX | X87 | SSE;
    put_u64(out, XSTATE_BV, bv);
    if bv & AVX != 0 {
        let r = AVX_OFFSET..AVX_OFFSET + AVX_SIZE;
        for (d, s) in out[r.clone()].iter_mut().zip(a[r].iter()) {
            *d = *s;
        }
    }
}

/// `KVM_SET_XSAVE`: checks the standard-format area `x` (components within `mask`, the vCPU's
/// XCR0 bits) and stores it into the vCPU's area `a` in a form XRSTOR loads exactly: x87 and
/// SSE present (their initial values where `x` has them cleared), AVX present if `x` has it,
/// else in its initial state.
pub fn set(x: &[u8], mask: u64, a: &mut [u8; AREA]) -> Result<(), XsaveError> {
    let xstate_bv = u64_at(x, XSTATE_BV);
    if xstate_bv & !(X87 | SSE | (mask & AVX)) != 0 {
        return Err(XsaveError::Component);
    }
    if u64_at(x, XCOMP_BV) != 0 || x[XCOMP_BV + 8..HEADER_END].iter().any(|&b| b != 0) {
        return Err(XsaveError::Header);
    }
    let mxcsr = u32::from_le_bytes([x[MXCSR], x[MXCSR + 1], x[MXCSR + 2], x[MXCSR + 3]]);
    if mxcsr & !MXCSR_MASK != 0 {
        return Err(XsaveError::Mxcsr);
    }
    a.fill(0);
    for (d, s) in a[..LEGACY].iter_mut().zip(&x[..LEGACY]) {
        *d = *s;
    }
    init_cleared(&mut a[..LEGACY], xstate_bv);
    put_u64(a, XSTATE_BV, X87 | SSE | (xstate_bv & AVX));
    if xstate_bv & AVX != 0 {
        let r = AVX_OFFSET..AVX_OFFSET + AVX_SIZE;
        for (d, s) in a[r.clone()].iter_mut().zip(x[r].iter()) {
            *d = *s;
        }
    }
    Ok(())
}

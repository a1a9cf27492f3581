//! The XSAVE area of an FXSAVE-only vCPU.

use crate::x86::xsave::*;

fn fx_sample() -> [u8; LEGACY] {
    let mut fx = [0u8; LEGACY];
    for (i, b) in fx.iter_mut().enumerate() {
        *b = i as u8;
    }
    fx[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    fx
}

#[test]
fn get_builds_a_standard_area() {
    let fx = fx_sample();
    let mut x = vec![0xffu8; SIZE];
    from_fxsave(&fx, &mut x);
    assert_eq!(&x[..LEGACY], &fx[..]);
    assert_eq!(u64::from_le_bytes(x[512..520].try_into().unwrap()), X87 | SSE);
    assert!(x[520..].iter().all(|&b| b == 0));
}

#[test]
fn set_round_trips_and_checks() {
    let fx = fx_sample();
    let mut x = vec![0u8; SIZE];
    from_fxsave(&fx, &mut x);
    let mut back = [0u8; LEGACY];
    assert_eq!(to_fxsave(&x, &mut back), Ok(()));
    assert_eq!(back, fx);
    // AVX is not a component of this vCPU.
    let mut bad = x.clone();
    bad[512] |= 4;
    assert_eq!(to_fxsave(&bad, &mut back), Err(XsaveError::Component));
    // Compacted format, reserved header bytes.
    let mut bad = x.clone();
    bad[527] = 0x80;
    assert_eq!(to_fxsave(&bad, &mut back), Err(XsaveError::Header));
    let mut bad = x.clone();
    bad[560] = 1;
    assert_eq!(to_fxsave(&bad, &mut back), Err(XsaveError::Header));
    // Bytes past the header are ignored (no component lives there).
    let mut ok = x.clone();
    ok[1000] = 7;
    assert_eq!(to_fxsave(&ok, &mut back), Ok(()));
    // MXCSR bits FXRSTOR faults on.
    let mut bad = x.clone();
    bad[26] = 1;
    assert_eq!(to_fxsave(&bad, &mut back), Err(XsaveError::Mxcsr));
}

#[test]
fn cleared_components_are_in_their_initial_state() {
    let fx = fx_sample();
    let mut x = vec![0u8; SIZE];
    from_fxsave(&fx, &mut x);
    x[512] = 0; // XSTATE_BV = 0
    let mut back = [0u8; LEGACY];
    assert_eq!(to_fxsave(&x, &mut back), Ok(()));
    assert_eq!(u16::from_le_bytes([back[0], back[1]]), 0x37f, "FCW");
    assert!(back[2..24].iter().all(|&b| b == 0), "FSW..FDP");
    assert!(back[32..416].iter().all(|&b| b == 0), "ST and XMM registers");
    assert_eq!(&back[24..28], &0x1f80u32.to_le_bytes(), "MXCSR is kept");
}

//! The vCPU's XSAVE area (x87, SSE, AVX) and its uabi form.

use crate::x86::xsave::*;

/// An area as XSAVE could leave it: every byte of the legacy region and AVX set to a pattern,
/// XSTATE_BV as given.
fn sample(bv: u64) -> [u8; AREA] {
    let mut a = [0u8; AREA];
    for (i, b) in a.iter_mut().enumerate().take(LEGACY) {
        *b = i as u8;
    }
    a[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    a[512..520].copy_from_slice(&bv.to_le_bytes());
    for b in &mut a[AVX_OFFSET..AVX_OFFSET + AVX_SIZE] {
        *b = 0xa5;
    }
    a
}

#[test]
fn reset_area() {
    let mut a = [0xffu8; AREA];
    reset(&mut a);
    let fx = legacy(&a);
    assert_eq!(u16::from_le_bytes([fx[0], fx[1]]), 0x37f);
    assert_eq!(&fx[24..28], &0x1f80u32.to_le_bytes());
    let mut x = vec![0xffu8; SIZE];
    get(&a, &mut x);
    assert_eq!(u64::from_le_bytes(x[512..520].try_into().unwrap()), X87 | SSE);
    assert!(x[520..].iter().all(|&b| b == 0), "AVX in its initial state");
}

#[test]
fn get_builds_a_standard_area() {
    let a = sample(X87 | SSE | AVX);
    let mut x = vec![0xffu8; SIZE];
    get(&a, &mut x);
    assert_eq!(&x[..LEGACY], &a[..LEGACY]);
    assert_eq!(u64::from_le_bytes(x[512..520].try_into().unwrap()), X87 | SSE | AVX);
    assert!(x[520..AVX_OFFSET].iter().all(|&b| b == 0));
    assert!(x[AVX_OFFSET..AVX_OFFSET + AVX_SIZE].iter().all(|&b| b == 0xa5));
    assert!(x[AVX_OFFSET + AVX_SIZE..].iter().all(|&b| b == 0));
}

#[test]
fn components_xsave_left_in_their_initial_state_read_as_such() {
    // XSAVE found all three in their initial state: whatever the memory holds, the state is
    // FCW 0x37f, zeros, MXCSR as saved, no AVX.
    let a = sample(0);
    let fx = legacy(&a);
    assert_eq!(u16::from_le_bytes([fx[0], fx[1]]), 0x37f, "FCW");
    assert!(fx[2..24].iter().all(|&b| b == 0), "FSW..FDP");
    assert!(fx[32..416].iter().all(|&b| b == 0), "ST and XMM registers");
    assert_eq!(&fx[24..28], &0x1f80u32.to_le_bytes(), "MXCSR is kept");
    let mut x = vec![0xffu8; SIZE];
    get(&a, &mut x);
    assert_eq!(&x[..LEGACY], &fx[..]);
    assert_eq!(u64::from_le_bytes(x[512..520].try_into().unwrap()), X87 | SSE);
    assert!(x[AVX_OFFSET..].iter().all(|&b| b == 0));
}

#[test]
fn set_round_trips_and_checks() {
    let a = sample(X87 | SSE | AVX);
    let mut x = vec![0u8; SIZE];
    get(&a, &mut x);
    let mut back = [0u8; AREA];
    assert_eq!(set(&x, X87 | SSE | AVX, &mut back), Ok(()));
    assert_eq!(back, a);
    // AVX is not a component of a vCPU whose host offers none.
    assert_eq!(set(&x, X87 | SSE, &mut back), Err(XsaveError::Component));
    assert_eq!(set(&x, 0, &mut back), Err(XsaveError::Component));
    let mut bad = x.clone();
    bad[519] |= 0x40; // bit 62
    assert_eq!(set(&bad, X87 | SSE | AVX, &mut back), Err(XsaveError::Component));
    // Compacted format, reserved header bytes.
    let mut bad = x.clone();
    bad[527] = 0x80;
    assert_eq!(set(&bad, X87 | SSE | AVX, &mut back), Err(XsaveError::Header));
    let mut bad = x.clone();
    bad[560] = 1;
    assert_eq!(set(&bad, X87 | SSE | AVX, &mut back), Err(XsaveError::Header));
    // Bytes past the components are ignored.
    let mut ok = x.clone();
    ok[2000] = 7;
    assert_eq!(set(&ok, X87 | SSE | AVX, &mut back), Ok(()));
    // MXCSR bits FXRSTOR faults on.
    let mut bad = x.clone();
    bad[26] = 1;
    assert_eq!(set(&bad, X87 | SSE | AVX, &mut back), Err(XsaveError::Mxcsr));
}

#[test]
fn set_puts_cleared_components_in_their_initial_state() {
    let a = sample(X87 | SSE | AVX);
    let mut x = vec![0u8; SIZE];
    get(&a, &mut x);
    x[512] = 0; // XSTATE_BV = 0
    let mut back = [0u8; AREA];
    assert_eq!(set(&x, X87 | SSE | AVX, &mut back), Ok(()));
    assert_eq!(u16::from_le_bytes([back[0], back[1]]), 0x37f, "FCW");
    assert!(back[2..24].iter().all(|&b| b == 0), "FSW..FDP");
    assert!(back[32..416].iter().all(|&b| b == 0), "ST and XMM registers");
    assert_eq!(&back[24..28], &0x1f80u32.to_le_bytes(), "MXCSR is kept");
    // Stored for XRSTOR: x87 and SSE present (loaded as given), AVX initialised.
    assert_eq!(u64::from_le_bytes(back[512..520].try_into().unwrap()), X87 | SSE);
    assert!(back[AVX_OFFSET..].iter().all(|&b| b == 0));
}

#[test]
fn set_legacy_makes_x87_and_sse_present() {
    let mut a = sample(AVX);
    let mut fx = legacy(&a);
    fx[160] = 0x3c;
    set_legacy(&mut a, &fx);
    assert_eq!(u64::from_le_bytes(a[512..520].try_into().unwrap()), X87 | SSE | AVX);
    assert_eq!(legacy(&a)[160], 0x3c);
    assert_eq!(legacy(&a)[..], fx[..]);
}

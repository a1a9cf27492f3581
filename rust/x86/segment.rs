//! Segment registers as KVM reports them, and the VMX access-rights encoding they round-trip
//! through.
//!
//! Upstream keeps guest segments in the VMCS and converts `struct kvm_segment` to the 32-bit
//! access-rights ("AR bytes") format on KVM_SET_SREGS (`vmx_segment_access_rights`) and back on
//! KVM_GET_SREGS (`vmx_get_segment`). Userspace can observe the conversion (an unusable segment
//! reads back with every attribute zero; with unrestricted guest the Accessed type bit is forced on
//! for all segments but LDTR), so rkvm applies the same conversion in every backend.

/// A segment register with the fields of `struct kvm_segment`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Base address.
    pub base: u64,
    /// Limit (byte granular, already scaled when G=1).
    pub limit: u32,
    /// Selector.
    pub selector: u16,
    /// Type field (4 bits).
    pub type_: u8,
    /// P.
    pub present: u8,
    /// DPL (2 bits).
    pub dpl: u8,
    /// D/B.
    pub db: u8,
    /// S (1 = code/data).
    pub s: u8,
    /// L (64-bit code).
    pub l: u8,
    /// G.
    pub g: u8,
    /// AVL.
    pub avl: u8,
    /// VMX "unusable" (a null selector loaded in protected mode).
    pub unusable: u8,
}

/// VMX access-rights bit: segment unusable.
pub const AR_UNUSABLE: u32 = 1 << 16;

/// Which segment register: LDTR is special-cased by the Accessed-bit fix-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// CS, DS, ES, FS, GS, SS or TR.
    Other,
    /// LDTR.
    Ldtr,
}

/// `vmx_segment_access_rights` plus `vmx_set_segment`'s Accessed fix-up (unrestricted guest).
pub fn to_ar(seg: &Segment, which: Which) -> u32 {
    if seg.unusable != 0 || seg.present == 0 {
        return AR_UNUSABLE;
    }
    let mut ty = seg.type_ & 15;
    if which == Which::Other {
        ty |= 1;
    }
    u32::from(ty)
        | u32::from(seg.s & 1) << 4
        | u32::from(seg.dpl & 3) << 5
        | u32::from(seg.present & 1) << 7
        | u32::from(seg.avl & 1) << 12
        | u32::from(seg.l & 1) << 13
        | u32::from(seg.db & 1) << 14
        | u32::from(seg.g & 1) << 15
}

/// `vmx_get_segment`: the attribute fields of a segment from its access rights.
pub fn from_ar(base: u64, limit: u32, selector: u16, ar: u32) -> Segment {
    Segment {
        base,
        limit,
        selector,
        unusable: (ar >> 16 & 1) as u8,
        type_: (ar & 15) as u8,
        s: (ar >> 4 & 1) as u8,
        dpl: (ar >> 5 & 3) as u8,
        present: (ar >> 7 & 1) as u8,
        avl: (ar >> 12 & 1) as u8,
        l: (ar >> 13 & 1) as u8,
        db: (ar >> 14 & 1) as u8,
        g: (ar >> 15 & 1) as u8,
    }
}

/// What KVM_GET_SREGS returns after KVM_SET_SREGS stored `seg` (the round trip through AR).
pub fn normalize(seg: &Segment, which: Which) -> Segment {
    from_ar(seg.base, seg.limit, seg.selector, to_ar(seg, which))
}

/// The architectural RESET state of the segment and descriptor-table registers, as upstream's
/// `vmx_vcpu_reset` sets it (`seg_setup` and the TR/LDTR/GDTR/IDTR writes).
pub mod reset {
    use super::{from_ar, Segment};

    /// CS: selector F000, base FFFF0000, limit FFFF, read/execute accessed code.
    pub const CS: Segment = code_or_data(0xf000, 0xffff_0000, 0x9b);
    /// DS, ES, FS, GS, SS: selector 0, base 0, limit FFFF, read/write accessed data.
    pub const DATA: Segment = code_or_data(0, 0, 0x93);

    const fn code_or_data(selector: u16, base: u64, ar: u32) -> Segment {
        Segment {
            base,
            limit: 0xffff,
            selector,
            type_: (ar & 15) as u8,
            s: 1,
            dpl: 0,
            present: 1,
            avl: 0,
            l: 0,
            db: 0,
            g: 0,
            unusable: 0,
        }
    }

    /// TR: busy 32-bit TSS, limit FFFF (AR 0x8b).
    pub fn tr() -> Segment {
        from_ar(0, 0xffff, 0, 0x8b)
    }

    /// LDTR: LDT, limit FFFF (AR 0x82).
    pub fn ldtr() -> Segment {
        from_ar(0, 0xffff, 0, 0x82)
    }

    /// GDTR and IDTR limit (base 0).
    pub const DTABLE_LIMIT: u16 = 0xffff;
    /// CR0 at RESET: CD | NW | ET.
    pub const CR0: u64 = super::super::cr::CR0_CD | super::super::cr::CR0_NW | super::super::cr::CR0_ET;
    /// RFLAGS at RESET: only the fixed bit 1.
    pub const RFLAGS: u64 = 0x2;
    /// RIP at RESET (with CS base FFFF0000: the reset vector FFFFFFF0).
    pub const RIP: u64 = 0xfff0;
    /// RDX at RESET: family/model/stepping, KVM's default 0x600 when no CPUID is set.
    pub const RDX: u64 = 0x600;
}

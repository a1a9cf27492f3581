//! Guest CPUID: what rkvm offers (`KVM_GET_SUPPORTED_CPUID`: the host's CPUID filtered down to
//! what guests really get), how a guest's CPUID is answered from the table userspace set with
//! `KVM_SET_CPUID2`, and the bits that follow guest state (upstream: `__do_cpuid_func`,
//! `kvm_cpuid`, `kvm_update_cpuid_runtime` in arch/x86/kvm/cpuid.c).
//!
//! Pure: the host's CPUID comes in through a closure, so host `cargo test` checks the rules.

/// One CPUID entry (the fields of `struct kvm_cpuid_entry2`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// EAX input.
    pub function: u32,
    /// ECX input (meaningful only with [`FLAG_SIGNIFICANT_INDEX`]).
    pub index: u32,
    /// `KVM_CPUID_FLAG_*`.
    pub flags: u32,
    /// EAX, EBX, ECX, EDX.
    pub regs: [u32; 4],
}

/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`: the entry is for one ECX value.
pub const FLAG_SIGNIFICANT_INDEX: u32 = 1;
/// Most entries a table may have (`KVM_MAX_CPUID_ENTRIES`).
pub const MAX_ENTRIES: usize = 256;
/// The hypervisor leaves: "KVMKVMKVM\0\0\0" at 0x40000000, the paravirtual features rkvm has at
/// 0x40000001 (EDX: no `KVM_HINTS_*`, those are userspace's to set).
pub const KVM_SIGNATURE: u32 = 0x4000_0000;
/// Highest basic leaf rkvm reports.
pub const MAX_BASIC: u32 = 0x1f;
/// Highest extended leaf rkvm reports.
pub const MAX_EXTENDED: u32 = 0x8000_0008;

/// What the host gives guests beyond its raw CPUID.
#[derive(Clone, Copy, Debug, Default)]
pub struct Caps {
    /// XCR0 bits guests may set (0: no XSAVE for guests; at most x87|SSE|AVX).
    pub guest_xcr0: u64,
    /// Guests may execute RDTSCP (the VMX control is on).
    pub rdtscp: bool,
    /// x2APIC is offered: KVM emulates it in software whatever the host has (upstream
    /// `kvm_set_cpu_caps`: `kvm_cpu_cap_set(X86_FEATURE_X2APIC)`), with an in-kernel LAPIC.
    pub x2apic: bool,
    /// KVM's PV features (CPUID 0x40000001 EAX; `x86/pvclock.rs`).
    pub kvm_features: u32,
}

/// CPUID.1:ECX.x2APIC.
pub const LEAF1_ECX_X2APIC: u32 = 1 << 21;

/// Whether the guest's CPUID has x2APIC (upstream `guest_cpuid_has(vcpu, X86_FEATURE_X2APIC)`),
/// which makes IA32_APIC_BASE.EXTD writable. Before any `KVM_SET_CPUID2` (an empty `table`) the
/// guest sees rkvm's default CPUID, which has x2APIC when the vCPU has an in-kernel LAPIC
/// (`lapic_in_kernel`).
pub fn guest_has_x2apic(table: &[Entry], lapic_in_kernel: bool) -> bool {
    if table.is_empty() {
        return lapic_in_kernel;
    }
    find(table, 1, 0).is_some_and(|e| e.regs[2] & LEAF1_ECX_X2APIC != 0)
}

/// Whether a leaf's output depends on ECX.
pub fn has_subleaves(leaf: u32) -> bool {
    matches!(leaf, 4 | 7 | 0xb | 0xd | 0xf | 0x10 | 0x12 | 0x14 | 0x17 | 0x18 | 0x1d | 0x1e | 0x1f | 0x8000_001d)
}

/// Size of the XSAVE area for the components in `xcr0`: 512 bytes of legacy area plus the
/// 64-byte header, then AVX's 256 bytes at 576 (the only component beyond x87 and SSE a guest
/// can have).
pub fn xsave_size(xcr0: u64) -> u32 {
    if xcr0 & 4 != 0 {
        832
    } else {
        576
    }
}

/// One leaf as guests get it, from the host's raw output (upstream `__do_cpuid_func`'s masks,
/// for rkvm's VMX backend): no VMX (no nesting), AVX (with FMA, F16C, AVX2) only when guests
/// get XCR0.AVX, no AVX-512 or other XSAVE component beyond x87/SSE/AVX, nothing whose MSRs or
/// exits rkvm does not handle, no Intel PT. The APIC id and OSXSAVE are left to
/// [`apply_dynamic`] and to userspace.
pub fn filter(leaf: u32, sub: u32, raw: [u32; 4], caps: &Caps) -> [u32; 4] {
    let mut r = raw;
    let xsave = caps.guest_xcr0 != 0;
    let avx = caps.guest_xcr0 & 4 != 0;
    match leaf {
        0 => r[0] = r[0].min(MAX_BASIC),
        1 => {
            r[1] &= 0x0000_ffff; // APIC id and logical CPU count are userspace's to set
            // VMX; MONITOR, PDCM, x2APIC, TSC deadline; XSAVE and OSXSAVE (XSAVE and x2APIC
            // added back below); FMA, AVX, F16C without XCR0.AVX.
            r[2] &= !(1 << 5 | 1 << 3 | 1 << 15 | 1 << 21 | 1 << 24 | 1 << 26 | 1 << 27);
            if !avx {
                r[2] &= !(1 << 12 | 1 << 28 | 1 << 29);
            }
            if xsave {
                r[2] |= 1 << 26;
            }
            if caps.x2apic {
                r[2] |= LEAF1_ECX_X2APIC;
            }
            // The hypervisor bit (31) is userspace's to set, as upstream.
        }
        // MONITOR/MWAIT leaf, performance monitoring: not offered.
        5 | 0xa => r = [0; 4],
        // Thermal and power: only "APIC timer always running".
        6 => r = [r[0] & (1 << 2), 0, 0, 0],
        7 if sub == 0 => {
            r[0] = r[0].min(1);
            // PT, AVX-512 F/DQ/IFMA/PF/ER/CD/BW/VL; AVX2 without XCR0.AVX.
            r[1] &= !(1 << 25 | 0xdc23_0000);
            if !avx {
                r[1] &= !(1 << 5);
            }
            // IA32_TSC_ADJUST is emulated in software, with or without the host's (upstream
            // `kvm_set_cpu_caps`: `kvm_cpu_cap_set(X86_FEATURE_TSC_ADJUST)`).
            r[1] |= 1 << 1;
            // AVX-512 and VEX extensions, PKU/OSPKE, CET shadow stacks.
            r[2] &= !(1 << 1 | 1 << 3 | 1 << 4 | 1 << 6 | 1 << 7 | 1 << 9 | 1 << 10 | 1 << 11 | 1 << 12 | 1 << 14);
            // AVX-512 4VNNIW/4FMAPS/VP2INTERSECT, IBT, AMX, AVX-512 FP16; L1D_FLUSH,
            // ARCH_CAPABILITIES, CORE_CAPABILITIES MSRs.
            r[3] &= !(1 << 2 | 1 << 3 | 1 << 8 | 1 << 20 | 1 << 22 | 1 << 23 | 1 << 24 | 1 << 25 | 1 << 28 | 1 << 29 | 1 << 30);
        }
        7 if sub == 1 => r = [r[0] & !(1 << 4 | 1 << 5), 0, 0, 0], // no AVX-VNNI, AVX512_BF16
        7 => r = [0; 4],
        0xd if !xsave => r = [0; 4],
        0xd if sub == 0 => r = [caps.guest_xcr0 as u32, xsave_size(caps.guest_xcr0), xsave_size(caps.guest_xcr0), 0],
        // XSAVEOPT, XSAVEC, XGETBV with ECX=1; no XSAVES (no IA32_XSS for guests). The
        // compacted size only with XSAVEC (upstream: 0 otherwise).
        0xd if sub == 1 => {
            let eax = r[0] & 7;
            r = [eax, if eax & 2 != 0 { xsave_size(caps.guest_xcr0) } else { 0 }, 0, 0]
        }
        // A user component guests get (AVX): its size and offset as the host has them.
        0xd if sub < 64 && caps.guest_xcr0 & (1 << sub) != 0 => r = [r[0], r[1], 0, 0],
        0xd => r = [0; 4],
        // Cache parameters, topology, TSC/crystal and frequency: as the host.
        2 | 3 | 4 | 0xb | 0x15 | 0x16 | 0x1f => {}
        KVM_SIGNATURE => r = [KVM_SIGNATURE + 1, 0x4b4d_564b, 0x564b_4d56, 0x0000_004d],
        0x4000_0001 => r = [caps.kvm_features, 0, 0, 0],
        0x8000_0000 => r[0] = r[0].min(MAX_EXTENDED),
        0x8000_0001 if !caps.rdtscp => r[3] &= !(1 << 27),
        0x8000_0001..=0x8000_0006 | 0x8000_0008 => {}
        0x8000_0007 => r = [0, 0, 0, r[3] & (1 << 8)], // invariant TSC only
        _ => r = [0; 4],
    }
    r
}

/// Lists what `KVM_GET_SUPPORTED_CPUID` reports (upstream `kvm_dev_ioctl_get_cpuid`), calling
/// `out` for each entry in order. `host(leaf, subleaf)` is the host's raw CPUID.
pub fn supported(host: impl Fn(u32, u32) -> [u32; 4], caps: &Caps, mut out: impl FnMut(Entry)) {
    let mut emit = |leaf: u32, sub: u32| {
        let regs = filter(leaf, sub, host(leaf, sub), caps);
        let flags = if has_subleaves(leaf) { FLAG_SIGNIFICANT_INDEX } else { 0 };
        out(Entry { function: leaf, index: if has_subleaves(leaf) { sub } else { 0 }, flags, regs });
        regs
    };
    let max = host(0, 0)[0].min(MAX_BASIC);
    for leaf in 0..=max {
        match leaf {
            // Until the first null cache type / null level type (that one included).
            4 | 0xb | 0x1f => {
                for sub in 0..64 {
                    let r = emit(leaf, sub);
                    let last = if leaf == 4 { r[0] & 0x1f == 0 } else { r[2] & 0xff00 == 0 };
                    if last {
                        break;
                    }
                }
            }
            7 => {
                let n = emit(7, 0)[0];
                for sub in 1..=n {
                    emit(7, sub);
                }
            }
            0xd => {
                emit(0xd, 0);
                emit(0xd, 1);
                for sub in 2..64 {
                    if caps.guest_xcr0 & (1 << sub) != 0 {
                        emit(0xd, sub);
                    }
                }
            }
            _ => {
                emit(leaf, 0);
            }
        }
    }
    emit(KVM_SIGNATURE, 0);
    emit(KVM_SIGNATURE + 1, 0);
    let max_ext = host(0x8000_0000, 0)[0].min(MAX_EXTENDED);
    if max_ext >= 0x8000_0000 {
        for leaf in 0x8000_0000..=max_ext {
            emit(leaf, 0);
        }
    }
}

fn find(entries: &[Entry], function: u32, index: u32) -> Option<&Entry> {
    entries
        .iter()
        .find(|e| e.function == function && (e.flags & FLAG_SIGNIFICANT_INDEX == 0 || e.index == index))
}

/// Whether the table has bit `bit` of register `reg` (EAX..EDX = 0..3) set in its entry for
/// `function`.`index` (upstream `guest_cpuid_has`: the entry itself, no out-of-range rule).
pub fn has(entries: &[Entry], function: u32, index: u32, reg: usize, bit: u32) -> bool {
    find(entries, function, index).is_some_and(|e| e.regs[reg] & (1 << bit) != 0)
}

/// A guest's CPUID from the table userspace set (upstream `kvm_cpuid`): the matching entry; for
/// a leaf above the highest of its range (basic, hypervisor 0x4000xxxx, extended) the highest
/// basic leaf, as Intel CPUs do; otherwise zeros.
pub fn lookup(entries: &[Entry], function: u32, index: u32) -> [u32; 4] {
    if let Some(e) = find(entries, function, index) {
        return e.regs;
    }
    let class = match function {
        0x4000_0000..=0x4fff_ffff => function & 0xffff_ff00,
        0xc000_0000.. => 0xc000_0000,
        _ => function & 0x8000_0000,
    };
    let in_range = find(entries, class, 0).is_some_and(|top| function <= top.regs[0]);
    if in_range {
        return [0; 4];
    }
    match find(entries, 0, 0) {
        Some(basic) => find(entries, basic.regs[0], index).map_or([0; 4], |e| e.regs),
        None => [0; 4],
    }
}

/// Bits that follow guest state (upstream `kvm_update_cpuid_runtime`): CPUID.1:ECX.OSXSAVE
/// mirrors CR4.OSXSAVE when XSAVE is offered; CPUID.7.0:ECX.OSPKE mirrors CR4.PKE when PKU is;
/// CPUID.0xD.0/1:EBX give the XSAVE size for the guest's XCR0.
pub fn apply_dynamic(function: u32, index: u32, r: &mut [u32; 4], cr4: u64, xcr0: u64) {
    const CR4_PKE: u64 = 1 << 22;
    const CR4_OSXSAVE: u64 = 1 << 18;
    match (function, index) {
        (1, _) if r[2] & (1 << 26) != 0 => {
            r[2] = (r[2] & !(1 << 27)) | if cr4 & CR4_OSXSAVE != 0 { 1 << 27 } else { 0 };
        }
        (1, _) => r[2] &= !(1 << 27),
        (7, 0) if r[2] & (1 << 3) != 0 => {
            r[2] = (r[2] & !(1 << 4)) | if cr4 & CR4_PKE != 0 { 1 << 4 } else { 0 };
        }
        (0xd, 0) => r[1] = xsave_size(xcr0),
        // With XSAVEC (or XSAVES, never offered): the compacted size, the same here.
        (0xd, 1) if r[0] & (1 << 1 | 1 << 3) != 0 => r[1] = xsave_size(xcr0),
        _ => {}
    }
}

/// The bits of a whole table that follow guest state (upstream `__kvm_update_cpuid_runtime`):
/// what `KVM_GET_CPUID2` reports, and how `KVM_SET_CPUID2` after the first run compares tables.
pub fn update_runtime(entries: &mut [Entry], cr4: u64, xcr0: u64) {
    for e in entries {
        let index = if e.flags & FLAG_SIGNIFICANT_INDEX != 0 { e.index } else { 0 };
        apply_dynamic(e.function, index, &mut e.regs, cr4, xcr0);
    }
}

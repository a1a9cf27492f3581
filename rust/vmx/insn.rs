//! The VMX instructions and the few other privileged instructions the backend needs, as thin
//! `unsafe` wrappers over inline assembly. Nothing else in `vmx/` contains `asm!` except the
//! guest entry itself (`entry.rs`).
//!
//! VMX instructions report failure in RFLAGS: CF=1 is VMfailInvalid (no current VMCS), ZF=1 is
//! VMfailValid (the reason is in the VM-instruction error field). Both become `Err`.

use core::arch::asm;

/// A VMX instruction failed (VMfailInvalid or VMfailValid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VmxFail;

/// Result of a VMX instruction.
pub(crate) type VmxResult = core::result::Result<(), VmxFail>;

fn flags_to_result(failed: u8) -> VmxResult {
    if failed != 0 {
        Err(VmxFail)
    } else {
        Ok(())
    }
}

/// `VMXON` with the region at physical address `pa`.
///
/// # Safety
///
/// CR4.VMXE must be set, `pa` must be a zeroed-but-for-revision-id 4 KiB region owned by this CPU
/// for as long as it stays in VMX operation, and preemption must be disabled.
pub(crate) unsafe fn vmxon(pa: u64) -> VmxResult {
    let failed: u8;
    // SAFETY: per the function's contract.
    unsafe { asm!("vmxon qword ptr [{pa}]", "setna {f}", pa = in(reg) &pa, f = out(reg_byte) failed, options(nostack)) };
    flags_to_result(failed)
}

/// `VMXOFF`.
///
/// # Safety
///
/// This CPU must be in VMX operation, with no VMCS that anything still relies on being current.
pub(crate) unsafe fn vmxoff() {
    // SAFETY: per the function's contract.
    unsafe { asm!("vmxoff", options(nostack)) };
}

/// `VMCLEAR`: flushes the VMCS at `pa` to memory and marks it clear (not current anywhere).
///
/// # Safety
///
/// `pa` must be a VMCS region of ours; this CPU must be in VMX operation.
pub(crate) unsafe fn vmclear(pa: u64) -> VmxResult {
    let failed: u8;
    // SAFETY: per the function's contract.
    unsafe { asm!("vmclear qword ptr [{pa}]", "setna {f}", pa = in(reg) &pa, f = out(reg_byte) failed, options(nostack)) };
    flags_to_result(failed)
}

/// `VMPTRLD`: makes the VMCS at `pa` current on this CPU.
///
/// # Safety
///
/// `pa` must be a VMCS region of ours that is not active on any other CPU; this CPU must be in
/// VMX operation with preemption disabled.
pub(crate) unsafe fn vmptrld(pa: u64) -> VmxResult {
    let failed: u8;
    // SAFETY: per the function's contract.
    unsafe { asm!("vmptrld qword ptr [{pa}]", "setna {f}", pa = in(reg) &pa, f = out(reg_byte) failed, options(nostack)) };
    flags_to_result(failed)
}

/// `VMREAD` of a field of the current VMCS (0 if the read fails).
///
/// # Safety
///
/// A VMCS of ours must be current on this CPU (preemption disabled).
pub(crate) unsafe fn vmread(field: u32) -> u64 {
    let value: u64;
    // SAFETY: per the function's contract; VMREAD only reads the current VMCS.
    unsafe { asm!("vmread {v}, {f}", f = in(reg) u64::from(field), v = out(reg) value, options(nostack)) };
    value
}

/// `VMWRITE` of a field of the current VMCS.
///
/// # Safety
///
/// A VMCS of ours must be current on this CPU (preemption disabled), and `value` must be one the
/// field may hold without breaking the host (host-state fields must describe this host).
pub(crate) unsafe fn vmwrite(field: u32, value: u64) -> VmxResult {
    let failed: u8;
    // SAFETY: per the function's contract.
    unsafe {
        asm!("vmwrite {f}, {v}", "setna {r}", f = in(reg) u64::from(field), v = in(reg) value, r = out(reg_byte) failed, options(nostack))
    };
    flags_to_result(failed)
}

/// `INVEPT` type 1 (single context) or 2 (all contexts) for `eptp`.
///
/// # Safety
///
/// This CPU must be in VMX operation and support the INVEPT type.
pub(crate) unsafe fn invept(kind: u64, eptp: u64) -> VmxResult {
    let desc: [u64; 2] = [eptp, 0];
    let failed: u8;
    // SAFETY: per the function's contract; the descriptor is on our stack.
    unsafe {
        asm!("invept {k}, xmmword ptr [{d}]", "setna {f}", k = in(reg) kind, d = in(reg) &desc, f = out(reg_byte) failed, options(nostack))
    };
    flags_to_result(failed)
}

/// The host's segment selectors: CS, SS, DS, ES, FS, GS, TR.
pub(crate) fn host_selectors() -> [u16; 7] {
    let (cs, ss, ds, es, fs, gs, tr): (u16, u16, u16, u16, u16, u16, u16);
    // SAFETY: reading segment registers and TR has no side effects.
    unsafe {
        asm!(
            "mov {0:x}, cs", "mov {1:x}, ss", "mov {2:x}, ds", "mov {3:x}, es",
            "mov {4:x}, fs", "mov {5:x}, gs", "str {6:x}",
            out(reg) cs, out(reg) ss, out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs, out(reg) tr,
            options(nomem, nostack, preserves_flags)
        )
    };
    [cs, ss, ds, es, fs, gs, tr]
}

/// DR7 of this CPU.
pub(crate) fn read_dr7() -> u64 {
    let v: u64;
    // SAFETY: reading DR7 in ring 0 has no side effects.
    unsafe { asm!("mov {}, dr7", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Sets DR7 of this CPU.
///
/// # Safety
///
/// `v` must be the value the host had (restoring it after a VM exit reset it to 0x400).
pub(crate) unsafe fn write_dr7(v: u64) {
    // SAFETY: per the function's contract.
    unsafe { asm!("mov dr7, {}", in(reg) v, options(nomem, nostack, preserves_flags)) };
}

/// DR6 of this CPU.
pub(crate) fn read_dr6() -> u64 {
    let v: u64;
    // SAFETY: reading DR6 in ring 0 has no side effects.
    unsafe { asm!("mov {}, dr6", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Sets DR6 of this CPU.
///
/// # Safety
///
/// `v` must be DR6's idle value (0xffff0ff0), what the host expects to find there (its #DB
/// handler reads DR6 and puts that value back, `debug_read_clear_dr6`).
pub(crate) unsafe fn write_dr6(v: u64) {
    // SAFETY: per the function's contract.
    unsafe { asm!("mov dr6, {}", in(reg) v, options(nomem, nostack, preserves_flags)) };
}

/// CR2 of this CPU.
pub(crate) fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Sets CR2 (the guest's, just before entry).
///
/// # Safety
///
/// Interrupts must be disabled until the guest is entered, so no host page fault sees it.
pub(crate) unsafe fn write_cr2(v: u64) {
    // SAFETY: per the function's contract.
    unsafe { asm!("mov cr2, {}", in(reg) v, options(nomem, nostack, preserves_flags)) };
}

/// `CPUID` leaf/subleaf → (eax, ebx, ecx, edx).
pub(crate) fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// `XSAVE64` of the state components in `mask` into a standard-format area.
///
/// # Safety
///
/// `area` must be valid for writes of the area size of `mask` and 64-byte aligned; CR4.OSXSAVE
/// must be set with XCR0 covering `mask`; the FPU must be usable (between `kernel_fpu_begin`
/// and `kernel_fpu_end`).
pub(crate) unsafe fn xsave(area: *mut u8, mask: u64) {
    // SAFETY: per the function's contract.
    unsafe {
        asm!("xsave64 [{}]", in(reg) area, in("eax") mask as u32, in("edx") (mask >> 32) as u32,
             options(nostack, preserves_flags))
    };
}

/// `XRSTOR64` of the state components in `mask` from a standard-format area.
///
/// # Safety
///
/// As [`xsave`] (reads instead of writes), and the area must be one XRSTOR accepts: XSTATE_BV
/// within XCR0, XCOMP_BV 0, the header's reserved bytes 0, no reserved MXCSR bit set.
pub(crate) unsafe fn xrstor(area: *const u8, mask: u64) {
    // SAFETY: per the function's contract.
    unsafe {
        asm!("xrstor64 [{}]", in(reg) area, in("eax") mask as u32, in("edx") (mask >> 32) as u32,
             options(nostack, preserves_flags))
    };
}

/// `FXSAVE64` into a 512-byte, 16-byte-aligned area.
///
/// # Safety
///
/// `area` must be valid for writes of 512 bytes and 16-byte aligned; the FPU must be usable
/// (between `kernel_fpu_begin` and `kernel_fpu_end`).
pub(crate) unsafe fn fxsave(area: *mut u8) {
    // SAFETY: per the function's contract.
    unsafe { asm!("fxsave64 [{}]", in(reg) area, options(nostack, preserves_flags)) };
}

/// `FXRSTOR64` from a 512-byte, 16-byte-aligned area.
///
/// # Safety
///
/// As [`fxsave`], and the area must hold a valid FXSAVE image (reserved MXCSR bits clear).
pub(crate) unsafe fn fxrstor(area: *const u8) {
    // SAFETY: per the function's contract.
    unsafe { asm!("fxrstor64 [{}]", in(reg) area, options(nostack, preserves_flags)) };
}

/// `INVVPID` type 1 (single context) or 2 (all contexts) for `vpid`.
///
/// # Safety
///
/// This CPU must be in VMX operation and support the INVVPID type.
pub(crate) unsafe fn invvpid(kind: u64, vpid: u16) -> VmxResult {
    let desc: [u64; 2] = [u64::from(vpid), 0];
    let failed: u8;
    // SAFETY: per the function's contract; the descriptor is on our stack.
    unsafe {
        asm!("invvpid {k}, xmmword ptr [{d}]", "setna {f}", k = in(reg) kind, d = in(reg) &desc, f = out(reg_byte) failed, options(nostack))
    };
    flags_to_result(failed)
}

/// `XGETBV` of XCR0 (the host must have CR4.OSXSAVE set).
pub(crate) fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reading XCR0 has no side effects; callers check CPUID.1:ECX.OSXSAVE first.
    unsafe { asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    u64::from(hi) << 32 | u64::from(lo)
}

/// `XSETBV` of XCR0.
///
/// # Safety
///
/// `v` must be a value this CPU accepts for XCR0 (bit 0 set, only supported components, AVX
/// only with SSE), and the host's XCR0 must be restored before anything in the host uses the
/// extended state (kernel_fpu_end, return to user mode).
pub(crate) unsafe fn xsetbv0(v: u64) {
    // SAFETY: per the function's contract.
    unsafe { asm!("xsetbv", in("ecx") 0u32, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nomem, nostack, preserves_flags)) };
}

/// `RDTSC`.
pub(crate) fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects (CR4.TSD does not restrict ring 0).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// `VMPTRST`: the physical address of this CPU's current VMCS (`u64::MAX` if none).
///
/// # Safety
///
/// This CPU must be in VMX operation.
pub(crate) unsafe fn vmptrst() -> u64 {
    let mut pa = u64::MAX;
    // SAFETY: per the function's contract; stores 8 bytes into `pa`.
    unsafe { asm!("vmptrst qword ptr [{}]", in(reg) &mut pa, options(nostack, preserves_flags)) };
    pa
}

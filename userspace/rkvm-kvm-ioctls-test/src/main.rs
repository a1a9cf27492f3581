//! `rkvm-kvm-ioctls-test`: rkvm (or any KVM device) driven by the rust-vmm `kvm-ioctls` crate
//! directly, with KTAP output.
//!
//! ```text
//! RKVM_DEV=/dev/rkvm rkvm-kvm-ioctls-test [CASE...]
//! ```
//!
//! Opens the device with `Kvm::new_with_path` ($RKVM_DEV, default /dev/rkvm), then:
//! 1. `api_version`: KVM_GET_API_VERSION is 12; KVM_GET_VCPU_MMAP_SIZE is whole pages.
//! 2. `check_extension`: answers on the device fd and on a VM fd agree, and the behaviour
//!    matches them (the last memslot id accepted and the next refused, the vCPU id limit, an
//!    in-kernel irqchip only if KVM_CAP_IRQCHIP, KVM_GET_DEBUGREGS only if KVM_CAP_DEBUGREGS,
//!    KVM_GET_XCRS and KVM_GET_MP_STATE answers).
//! 3. `memory_regions`: the VM of the guest cases: TSS and identity-map addresses (if their
//!    caps say so), 2 MiB of RAM at GPA 0, a READONLY slot if KVM_CAP_READONLY_MEM (else the
//!    flag must be refused with EINVAL), an overlapping slot refused with EEXIST.
//! 4. `cpuid_round_trip`: KVM_GET_SUPPORTED_CPUID (E2BIG when too small), vCPU 0,
//!    KVM_SET_CPUID2 of that table with the hypervisor signature replaced, KVM_GET_CPUID2 gives
//!    it back (E2BIG when too small); only the bits KVM updates at run time may differ.
//! 5. `long_mode_guest_2m_pages`: the program in `guest.rs` in 64-bit mode on 2 MiB pages;
//!    every exit checked in order (port I/O, MMIO, CPUID and MSR values echoed, the FPU checked
//!    and changed mid-run), after an immediate_exit run that must return EINTR.
//! 6. `state_after_run`: KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_MSRS, KVM_GET_FPU,
//!    KVM_GET_XSAVE (if KVM_CAP_XSAVE), KVM_GET_XCRS, KVM_GET_MP_STATE and guest memory after
//!    the HLT; KVM_SET_CPUID2 after KVM_RUN accepts only the same table.
//! 7. `long_mode_guest_1g_pages`: cases 3 to 6 again in a new VM with 1 GiB pages (skipped if
//!    KVM_GET_SUPPORTED_CPUID lacks Page1GB).
//!
//! Cases 5 to 7 skip when no guest can run: rkvm loaded with backend=none
//! (/sys/module/rkvm/parameters/backend), or $RKVM_BACKEND_NONE set; $RKVM_UPSTREAM=1 ignores
//! the module parameter. Naming cases on the command line runs only those (the others report
//! SKIP; `api_version`, which opens the device, always runs; a named case makes the VM it needs
//! itself, except `state_after_run`, which needs `long_mode_guest_2m_pages`). Exit status 0
//! only if no case failed.
//!
//! Where upstream KVM and rkvm may legitimately differ the test accepts both: KVM_GET_CPUID2
//! may return the bits KVM updates at run time changed ([`runtime_bits`]), and KVM_GET_FPU may
//! report MXCSR as 0 (upstream does not copy it; MXCSR is then checked through KVM_GET_XSAVE
//! and the guest's own STMXCSR).

mod guest;
mod layout;

use guest::{Exit, Hook, Params, Program};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_userspace_memory_region, CpuId, Msrs,
    KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY, KVM_MP_STATE_RUNNABLE,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use layout::PageSize;
use std::ffi::CString;
use std::time::Instant;

// ---------------------------------------------------------------------------------------------
// KTAP

/// The state of the running case.
#[derive(Default)]
struct Case {
    failed: bool,
    skip: Option<String>,
}

impl Case {
    fn fail(&mut self, line: u32, msg: String) {
        println!("# line {line}: {msg}");
        self.failed = true;
    }
}

/// Records a failure (with the source line) unless `cond`; evaluates to `cond`.
macro_rules! check {
    ($c:expr, $cond:expr, $($fmt:tt)+) => {{
        let ok: bool = $cond;
        if !ok {
            $c.fail(line!(), format!($($fmt)+));
        }
        ok
    }};
}

/// Checks `a == b`, printing both in hex.
macro_rules! check_eq {
    ($c:expr, $a:expr, $b:expr, $what:expr) => {{
        let (a, b) = ($a, $b);
        check!($c, a == b, "{}: got {:#x?}, want {:#x?}", $what, a, b)
    }};
}

/// The value of an ioctl result, or records the error and returns from the case.
macro_rules! try_ok {
    ($c:expr, $r:expr, $what:expr) => {
        match $r {
            Ok(v) => v,
            Err(e) => {
                $c.fail(line!(), format!("{}: {} (errno {})", $what, e, e.errno()));
                return Default::default();
            }
        }
    };
}

/// Checks that an ioctl result is the error `errno`.
macro_rules! check_errno {
    ($c:expr, $r:expr, $errno:expr, $what:expr) => {{
        match $r {
            Ok(_) => $c.fail(line!(), format!("{}: succeeded, want errno {}", $what, $errno)),
            Err(e) if e.errno() != $errno => {
                $c.fail(line!(), format!("{}: errno {} ({}), want {}", $what, e.errno(), e, $errno))
            }
            Err(_) => {}
        }
    }};
}

fn diag(msg: impl AsRef<str>) {
    println!("# {}", msg.as_ref());
}

// ---------------------------------------------------------------------------------------------
// Guest memory

/// An anonymous shared mapping standing for guest memory; unmapped on drop.
struct Mem {
    ptr: *mut u8,
    len: usize,
}

impl Mem {
    fn new(len: usize) -> std::io::Result<Mem> {
        // SAFETY: a fresh anonymous mapping; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mem { ptr: p.cast(), len })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live mapping of `len` bytes owned by `self`; the guest only
        // touches it while this thread is inside KVM_RUN, when no reference is held.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn region(&self, slot: u32, gpa: u64, flags: u32) -> kvm_userspace_memory_region {
        kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: self.len as u64,
            userspace_addr: self.ptr as u64,
        }
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: our own mapping; nothing refers to it any more (the VM fds, declared
        // before the Mem fields of their structs, are closed first).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

// ---------------------------------------------------------------------------------------------
// Test state

/// A VM with its memory (case 3) and vCPU 0 with its CPUID table (case 4). Field order is drop
/// order: the fds close before the memory is unmapped.
struct Guest {
    vcpu: Option<VcpuFd>,
    vm: VmFd,
    ram: Mem,
    ro: Option<Mem>,
    /// The table given to KVM_SET_CPUID2.
    cpuid: Option<CpuId>,
    /// Set by [`setup_guest`].
    program: Option<Program>,
    params: Params,
}

struct Ctx {
    kvm: Option<Kvm>,
    /// Why guests cannot run (cases 5 to 7 skip), if so.
    no_guests: Option<String>,
    /// The guest of cases 3 to 6.
    guest: Option<Guest>,
    /// Whether case 5 ran its guest to the HLT.
    ran: bool,
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn find(cpuid: &CpuId, function: u32, index: u32) -> Option<kvm_cpuid_entry2> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == index))
        .copied()
}

fn regs4(e: &kvm_cpuid_entry2) -> [u32; 4] {
    [e.eax, e.ebx, e.ecx, e.edx]
}

/// The bits of a CPUID entry that KVM keeps up to date with vCPU state in its own copy of the
/// table (upstream `kvm_update_cpuid_runtime`), so KVM_GET_CPUID2 may return them changed:
/// CPUID.1:ECX.OSXSAVE and EDX.APIC, CPUID.7.0:ECX.OSPKE, CPUID.0xD.0/1:EBX (XSAVE area size
/// for the current XCR0).
fn runtime_bits(function: u32, index: u32) -> [u32; 4] {
    match (function, index) {
        (1, _) => [0, 0, 1 << 27, 1 << 9],
        (7, 0) => [0, 0, 1 << 4, 0],
        (0xd, 0) | (0xd, 1) => [0, !0, 0, 0],
        _ => [0; 4],
    }
}

/// The hypervisor signature the test puts in leaf 0x40000000 instead of KVM's.
const TEST_SIGNATURE: &[u8; 12] = b"RkvmIoctlTst";

fn signature(r: [u32; 4]) -> String {
    let b: Vec<u8> = r[1..].iter().flat_map(|v| v.to_le_bytes()).collect();
    String::from_utf8_lossy(&b).escape_debug().to_string()
}

fn no_guests() -> Option<String> {
    if std::env::var("RKVM_BACKEND_NONE").is_ok_and(|v| !v.is_empty()) {
        return Some("RKVM_BACKEND_NONE is set: no guest can run".into());
    }
    if std::env::var("RKVM_UPSTREAM").is_ok_and(|v| v == "1") {
        return None;
    }
    match std::fs::read_to_string("/sys/module/rkvm/parameters/backend") {
        Ok(s) if s.trim() == "none" => Some("rkvm backend=none: no guest can be entered".into()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Cases 1 and 2

fn api_version(ctx: &mut Ctx, c: &mut Case) {
    let dev = std::env::var("RKVM_DEV").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "/dev/rkvm".into());
    diag(format!("device {dev}"));
    let path = CString::new(dev.clone()).expect("no NUL in a path from the environment");
    let kvm = try_ok!(c, Kvm::new_with_path(&path), format!("Kvm::new_with_path({dev})"));
    check_eq!(c, kvm.get_api_version(), 12, "KVM_GET_API_VERSION");
    let size = try_ok!(c, kvm.get_vcpu_mmap_size(), "KVM_GET_VCPU_MMAP_SIZE");
    check!(c, size >= 4096 && size % 4096 == 0, "KVM_GET_VCPU_MMAP_SIZE {size}: not whole pages");
    ctx.kvm = Some(kvm);
}

fn check_extension(ctx: &mut Ctx, c: &mut Case) {
    let Some(kvm) = ctx.kvm.as_ref() else { return c.skip = Some("device not open".into()) };
    for cap in [Cap::UserMemory, Cap::ExtCpuid, Cap::CheckExtensionVm] {
        check!(c, kvm.check_extension(cap), "KVM_CHECK_EXTENSION({cap:?}) = 0");
    }
    let nr_vcpus = kvm.get_nr_vcpus();
    let max_vcpus = kvm.get_max_vcpus();
    let max_id = kvm.get_max_vcpu_id();
    let slots = kvm.get_nr_memslots();
    diag(format!("NR_VCPUS {nr_vcpus} MAX_VCPUS {max_vcpus} MAX_VCPU_ID {max_id} NR_MEMSLOTS {slots}"));
    check!(c, nr_vcpus >= 1 && nr_vcpus <= max_vcpus, "NR_VCPUS {nr_vcpus} vs MAX_VCPUS {max_vcpus}");
    check!(c, max_id >= max_vcpus, "MAX_VCPU_ID {max_id} < MAX_VCPUS {max_vcpus}");
    check!(c, slots >= 2, "NR_MEMSLOTS {slots}");

    let vm = try_ok!(c, kvm.create_vm(), "KVM_CREATE_VM");
    let caps = [
        Cap::UserMemory,
        Cap::ReadonlyMem,
        Cap::SetTssAddr,
        Cap::SetIdentityMapAddr,
        Cap::ExtCpuid,
        Cap::NrMemslots,
        Cap::MaxVcpus,
        Cap::MaxVcpuId,
        Cap::ImmediateExit,
        Cap::Xcrs,
        Cap::Xsave,
        Cap::Debugregs,
        Cap::MpState,
        Cap::Irqchip,
    ];
    let mut answers = Vec::new();
    for cap in caps {
        let (dev, vmv) = (kvm.check_extension_int(cap), vm.check_extension_int(cap));
        answers.push(format!("{cap:?}={dev}"));
        check!(c, dev == vmv, "KVM_CHECK_EXTENSION({cap:?}): {dev} on the device, {vmv} on a VM");
    }
    diag(answers.join(" "));

    // KVM_CAP_IRQCHIP: KVM_CREATE_IRQCHIP works exactly when it is offered (before any vCPU).
    let irqchip = kvm.check_extension(Cap::Irqchip);
    let r = vm.create_irq_chip();
    check!(c, r.is_ok() == irqchip, "KVM_CREATE_IRQCHIP {:?} but KVM_CAP_IRQCHIP {irqchip}", r.map_err(|e| e.errno()));

    // KVM_CAP_NR_MEMSLOTS: ids below it are valid, it is not.
    let mem = try_ok!(c, Mem::new(0x1000).map_err(|e| vmm_err(&e)), "mmap");
    let last = mem.region(slots as u32 - 1, 0x1000_0000, 0);
    // SAFETY: the region is our live mapping; the VM is closed before it is unmapped.
    check!(c, unsafe { vm.set_user_memory_region(last) }.is_ok(), "slot NR_MEMSLOTS-1 ({}) refused", slots - 1);
    let over = mem.region(slots as u32, 0x2000_0000, 0);
    // SAFETY: as above.
    check_errno!(c, unsafe { vm.set_user_memory_region(over) }, libc::EINVAL, format!("slot NR_MEMSLOTS ({slots})"));
    let delete = kvm_userspace_memory_region { memory_size: 0, ..last };
    // SAFETY: deleting a slot.
    check!(c, unsafe { vm.set_user_memory_region(delete) }.is_ok(), "deleting slot {}", slots - 1);

    // KVM_CAP_MAX_VCPU_ID: the ids below it are valid, it is not.
    check_errno!(c, vm.create_vcpu(max_id as u64), libc::EINVAL, format!("KVM_CREATE_VCPU({max_id})"));
    let vcpu = try_ok!(c, vm.create_vcpu(max_id as u64 - 1), format!("KVM_CREATE_VCPU({})", max_id - 1));
    drop(vcpu);
    let vcpu = try_ok!(c, vm.create_vcpu(0), "KVM_CREATE_VCPU(0)");

    // KVM_CAP_DEBUGREGS: KVM_GET_DEBUGREGS works exactly when it is offered.
    let dr = vcpu.get_debug_regs();
    let cap = kvm.check_extension(Cap::Debugregs);
    check!(c, dr.is_ok() == cap, "KVM_GET_DEBUGREGS {:?} but KVM_CAP_DEBUGREGS {cap}", dr.map(|_| ()).map_err(|e| e.errno()));
    if let Ok(d) = dr {
        check_eq!(c, (d.dr6, d.dr7), (0xffff_0ff0, 0x400), "DR6, DR7 at reset");
    }
    // KVM_CAP_XCRS: KVM_GET_XCRS gives XCR0, at reset x87 only.
    if kvm.check_extension(Cap::Xcrs) {
        let x = try_ok!(c, vcpu.get_xcrs(), "KVM_GET_XCRS");
        check!(c, x.nr_xcrs >= 1 && x.xcrs[0].xcr == 0, "KVM_GET_XCRS: {} entries, first XCR{}", x.nr_xcrs, x.xcrs[0].xcr);
        check_eq!(c, x.xcrs[0].value, 1, "XCR0 at reset");
    }
    if kvm.check_extension(Cap::MpState) {
        let s = try_ok!(c, vcpu.get_mp_state(), "KVM_GET_MP_STATE");
        check_eq!(c, s.mp_state, KVM_MP_STATE_RUNNABLE, "MP state of vCPU 0");
    }
}

fn vmm_err(e: &std::io::Error) -> kvm_ioctls::Error {
    kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO))
}

// ---------------------------------------------------------------------------------------------
// Cases 3 and 4 (also used by case 7)

/// Case 3's work: the VM with RAM at 0 and (if the cap says so) the READONLY slot.
fn create_vm_with_memory(kvm: &Kvm, c: &mut Case) -> Option<Guest> {
    let vm = try_ok!(c, kvm.create_vm(), "KVM_CREATE_VM");
    if kvm.check_extension(Cap::SetIdentityMapAddr) {
        try_ok!(c, vm.set_identity_map_address(0xfffb_c000), "KVM_SET_IDENTITY_MAP_ADDR");
    }
    if kvm.check_extension(Cap::SetTssAddr) {
        try_ok!(c, vm.set_tss_address(0xfffb_d000), "KVM_SET_TSS_ADDR");
    }
    let ram = try_ok!(c, Mem::new(layout::RAM_SIZE as usize).map_err(|e| vmm_err(&e)), "mmap RAM");
    // SAFETY: the region is our live mapping; the returned `Guest` closes the VM before
    // unmapping it (on this function's error returns the mapping may go first, which only
    // leaves the slot pointing at unmapped user memory until the VM is closed right after).
    try_ok!(c, unsafe { vm.set_user_memory_region(ram.region(0, 0, 0)) }, "KVM_SET_USER_MEMORY_REGION slot 0");

    let mut ro = try_ok!(c, Mem::new(layout::RO_SIZE as usize).map_err(|e| vmm_err(&e)), "mmap");
    fill_ro(&mut ro);
    let region = ro.region(1, layout::RO_SLOT, KVM_MEM_READONLY);
    let ro_cap = kvm.check_extension(Cap::ReadonlyMem);
    // SAFETY: as above.
    let r = unsafe { vm.set_user_memory_region(region) };
    let ro = if ro_cap {
        try_ok!(c, r, "KVM_SET_USER_MEMORY_REGION slot 1 READONLY");
        Some(ro)
    } else {
        check_errno!(c, r, libc::EINVAL, "KVM_MEM_READONLY without KVM_CAP_READONLY_MEM");
        None
    };
    // A slot overlapping slot 0.
    let over = Mem::new(0x1000).map_err(|e| vmm_err(&e));
    let over = try_ok!(c, over, "mmap");
    // SAFETY: the region is our live mapping; if it is (wrongly) accepted, it is deleted
    // right below, before `over` is unmapped.
    let r = unsafe { vm.set_user_memory_region(over.region(2, 0x1000, 0)) };
    if r.is_ok() {
        // SAFETY: deleting the slot before its memory goes away.
        let _ = unsafe { vm.set_user_memory_region(kvm_userspace_memory_region { memory_size: 0, ..over.region(2, 0x1000, 0) }) };
    }
    check_errno!(c, r, libc::EEXIST, "a slot overlapping slot 0");
    Some(Guest { vcpu: None, vm, ram, ro, cpuid: None, program: None, params: Params::default() })
}

fn fill_ro(ro: &mut Mem) {
    let b = ro.bytes();
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(7) ^ 0x5a;
    }
    b[..8].copy_from_slice(&guest::RO_PATTERN.to_le_bytes());
}

/// Compares a KVM_GET_CPUID2 answer with the table set; only [`runtime_bits`] may differ.
fn compare_cpuid(c: &mut Case, set: &CpuId, got: &CpuId) {
    let key = |e: &kvm_cpuid_entry2| (e.function, e.index, e.flags);
    let mut a: Vec<_> = set.as_slice().to_vec();
    let mut b: Vec<_> = got.as_slice().to_vec();
    a.sort_by_key(key);
    b.sort_by_key(key);
    if !check!(c, a.len() == b.len(), "KVM_GET_CPUID2: {} entries, KVM_SET_CPUID2 had {}", b.len(), a.len()) {
        return;
    }
    for (x, y) in a.iter().zip(&b) {
        if !check!(c, key(x) == key(y), "KVM_GET_CPUID2 entry {:#x?} where {:#x?} was set", key(y), key(x)) {
            continue;
        }
        let mask = runtime_bits(x.function, x.index);
        for (i, name) in ["EAX", "EBX", "ECX", "EDX"].iter().enumerate() {
            let (u, v) = (regs4(x)[i], regs4(y)[i]);
            if (u ^ v) & !mask[i] != 0 {
                c.fail(line!(), format!("KVM_GET_CPUID2 leaf {:#x}.{:#x} {name}: {v:#x}, set {u:#x}", x.function, x.index));
            } else if u != v {
                diag(format!("leaf {:#x}.{:#x} {name}: set {u:#x}, got {v:#x} (bits KVM updates at run time)", x.function, x.index));
            }
        }
    }
}

/// Case 4's work: vCPU 0 and its CPUID table.
fn create_vcpu_with_cpuid(kvm: &Kvm, g: &mut Guest, c: &mut Case) -> Option<()> {
    let mut cpuid = try_ok!(c, kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES), "KVM_GET_SUPPORTED_CPUID");
    let n = cpuid.as_slice().len();
    check!(c, n > 1 && n <= KVM_MAX_CPUID_ENTRIES, "KVM_GET_SUPPORTED_CPUID: {n} entries");
    check_errno!(c, kvm.get_supported_cpuid(1), libc::E2BIG, "KVM_GET_SUPPORTED_CPUID with nent 1");
    let Some(leaf0) = find(&cpuid, 0, 0) else {
        c.fail(line!(), "no leaf 0 in KVM_GET_SUPPORTED_CPUID".into());
        return None;
    };
    diag(format!("supported CPUID: {n} entries, max basic leaf {:#x}, vendor \"{}\"", leaf0.eax, {
        let r = regs4(&leaf0);
        signature([0, r[1], r[3], r[2]])
    }));
    check!(c, leaf0.eax >= 1, "CPUID max basic leaf {:#x}", leaf0.eax);
    match find(&cpuid, 0x4000_0000, 0) {
        Some(hv) => {
            check_eq!(c, signature(regs4(&hv)), "KVMKVMKVM\\0\\0\\0", "hypervisor signature (leaf 0x40000000)");
        }
        None => c.fail(line!(), "no leaf 0x40000000 in KVM_GET_SUPPORTED_CPUID".into()),
    }
    // The test's own signature in leaf 0x40000000 (a leaf KVM does not interpret itself).
    for e in cpuid.as_mut_slice().iter_mut().filter(|e| e.function == 0x4000_0000) {
        let s: Vec<u32> = TEST_SIGNATURE.chunks(4).map(|w| u32::from_le_bytes(w.try_into().unwrap())).collect();
        (e.ebx, e.ecx, e.edx) = (s[0], s[1], s[2]);
    }

    let vcpu = try_ok!(c, g.vm.create_vcpu(0), "KVM_CREATE_VCPU(0)");
    try_ok!(c, vcpu.set_cpuid2(&cpuid), "KVM_SET_CPUID2");
    let got = try_ok!(c, vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES), "KVM_GET_CPUID2");
    compare_cpuid(c, &cpuid, &got);
    check_errno!(c, vcpu.get_cpuid2(1), libc::E2BIG, "KVM_GET_CPUID2 with nent 1");
    let hv = find(&got, 0x4000_0000, 0).map(|e| signature(regs4(&e)));
    check_eq!(c, hv.as_deref(), Some("RkvmIoctlTst"), "leaf 0x40000000 read back");
    g.vcpu = Some(vcpu);
    g.cpuid = Some(cpuid);
    Some(())
}

fn memory_regions(ctx: &mut Ctx, c: &mut Case) {
    let Some(kvm) = ctx.kvm.as_ref() else { return c.skip = Some("device not open".into()) };
    ctx.guest = create_vm_with_memory(kvm, c);
}

fn cpuid_round_trip(ctx: &mut Ctx, c: &mut Case) {
    let Some(kvm) = ctx.kvm.as_ref() else { return c.skip = Some("device not open".into()) };
    if ctx.guest.is_none() {
        // Run on its own (named on the command line): make the VM as memory_regions does.
        ctx.guest = create_vm_with_memory(kvm, c);
    }
    if let Some(g) = ctx.guest.as_mut() {
        create_vcpu_with_cpuid(kvm, g, c);
    }
}

// ---------------------------------------------------------------------------------------------
// Cases 5 to 7

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_OSXSAVE: u64 = 1 << 18;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

fn segment(selector: u16, type_: u8, s: u8, l: u8, db: u8, limit: u32, base: u64) -> kvm_segment {
    kvm_segment { base, limit, selector, type_, present: 1, dpl: 0, db, s, l, g: u8::from(limit > 0xfffff), avl: 0, unusable: 0, padding: 0 }
}

/// Writes tables, code and data into guest memory and puts vCPU 0 in 64-bit mode at the code.
fn setup_guest(kvm: &Kvm, g: &mut Guest, pages: PageSize, c: &mut Case) -> Option<()> {
    let cpuid = g.cpuid.as_ref()?;
    let leaf1 = find(cpuid, 1, 0).map_or(0, |e| e.ecx);
    let xsave = kvm.check_extension(Cap::Xcrs) && leaf1 & (1 << 26) != 0;
    let params = Params {
        xsave,
        ro_slot: g.ro.is_some(),
        leaf0: find(cpuid, 0, 0).map_or([0; 4], |e| regs4(&e)),
        leaf_hv: find(cpuid, 0x4000_0000, 0).map_or([0; 4], |e| regs4(&e)),
        leaf1_ecx: leaf1,
    };
    let program = guest::build(&params);
    diag(format!(
        "guest: {} bytes of code, {} exits expected, {pages:?} pages, XSAVE {xsave}, READONLY slot {}",
        program.code.len(),
        program.exits.len(),
        params.ro_slot
    ));

    let mem = g.ram.bytes();
    mem.fill(0);
    layout::write_gdt(mem);
    let (cr3, _) = layout::identity_map(mem, layout::PML4, layout::MAPPED, pages);
    for la in [layout::CODE, layout::DATA, layout::RO_SLOT, layout::MMIO] {
        let t = layout::translate(mem, cr3, la);
        check_eq!(c, t, Some((la, pages.bytes())), format!("page tables: translation of {la:#x}"));
    }
    let code = layout::CODE as usize;
    mem[code..code + program.code.len()].copy_from_slice(&program.code);
    let at = |a: u64| a as usize;
    mem[at(guest::MXCSR_ADDR)..at(guest::MXCSR_ADDR) + 4].copy_from_slice(&guest::MXCSR_VAL.to_le_bytes());
    mem[at(guest::XMM0_ADDR)..at(guest::XMM0_ADDR) + 16].copy_from_slice(&guest::XMM0_VAL);
    if let Some(ro) = g.ro.as_mut() {
        fill_ro(ro);
    }

    let vcpu = g.vcpu.as_ref()?;
    let mut s = try_ok!(c, vcpu.get_sregs(), "KVM_GET_SREGS");
    s.cs = segment(layout::CODE_SEL, 0xb, 1, 1, 0, 0xffff_ffff, 0);
    let data = segment(layout::DATA_SEL, 0x3, 1, 0, 1, 0xffff_ffff, 0);
    (s.ds, s.es, s.ss, s.fs) = (data, data, data, data);
    s.gs = segment(layout::DATA_SEL, 0x3, 1, 0, 1, 0xffff_ffff, guest::GS_INIT);
    s.tr = segment(layout::TSS_SEL, 0xb, 0, 0, 0, 0x67, layout::TSS);
    s.gdt.base = layout::GDT;
    s.gdt.limit = layout::GDT_LIMIT;
    s.idt.base = 0;
    s.idt.limit = 0; // no IDT: an exception is a triple fault (KVM_EXIT_SHUTDOWN)
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    s.cr3 = cr3;
    s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | if xsave { CR4_OSXSAVE } else { 0 };
    s.efer = EFER_LME | EFER_LMA;
    try_ok!(c, vcpu.set_sregs(&s), "KVM_SET_SREGS (64-bit mode)");
    let regs = kvm_regs { rip: layout::CODE, rsp: layout::STACK_TOP, rflags: 2, r13: guest::R13_INIT, ..Default::default() };
    try_ok!(c, vcpu.set_regs(&regs), "KVM_SET_REGS");

    let msrs = Msrs::from_entries(&[kvm_msr_entry { index: guest::MSR_SYSENTER_ESP, data: guest::SYSENTER_ESP_VAL, ..Default::default() }]);
    let msrs = try_ok!(c, msrs.map_err(|_| kvm_ioctls::Error::new(libc::ENOMEM)), "Msrs");
    let n = try_ok!(c, vcpu.set_msrs(&msrs), "KVM_SET_MSRS");
    check_eq!(c, n, 1, "KVM_SET_MSRS of SYSENTER_ESP: entries written");

    let fpu = try_ok!(c, vcpu.get_fpu(), "KVM_GET_FPU before the run");
    check_mxcsr(c, fpu.mxcsr, 0x1f80, "MXCSR at reset");
    diag(format!("FPU at reset: FCW {:#x} FSW {:#x} FTW {:#x} MXCSR {:#x}", fpu.fcw, fpu.fsw, fpu.ftwx, fpu.mxcsr));

    g.params = params;
    g.program = Some(program);
    Some(())
}

fn describe(e: &VcpuExit) -> String {
    match e {
        VcpuExit::IoOut(p, d) => format!("IoOut(port {p:#x}, {d:02x?})"),
        VcpuExit::IoIn(p, d) => format!("IoIn(port {p:#x}, {} bytes)", d.len()),
        VcpuExit::MmioWrite(a, d) => format!("MmioWrite({a:#x}, {d:02x?})"),
        VcpuExit::MmioRead(a, d) => format!("MmioRead({a:#x}, {} bytes)", d.len()),
        VcpuExit::FailEntry(r, cpu) => format!("FailEntry(hardware_entry_failure_reason {r:#x}, cpu {cpu})"),
        other => format!("{other:?}"),
    }
}

/// The mid-run FPU hook: the guest's MXCSR, XMM0 and ST0 must be visible, then XMM1 is set.
fn fpu_mid_run(vcpu: &VcpuFd, c: &mut Case) -> Option<()> {
    let mut f = try_ok!(c, vcpu.get_fpu(), "KVM_GET_FPU at the sync exit");
    check_fpu_loaded(c, &f, "mid-run");
    f.xmm[1] = guest::XMM1_VAL;
    try_ok!(c, vcpu.set_fpu(&f), "KVM_SET_FPU at the sync exit");
    Some(())
}

/// KVM_GET_FPU's MXCSR: `want`, or 0 where the implementation does not report it (upstream
/// `kvm_arch_vcpu_ioctl_get_fpu` copies everything but MXCSR, and its set_fpu ignores it).
fn check_mxcsr(c: &mut Case, got: u32, want: u32, what: &str) {
    if got == 0 {
        diag(format!("{what}: KVM_GET_FPU reports MXCSR 0 (not reported, as upstream KVM)"));
    } else {
        check_eq!(c, got, want, what);
    }
}

fn check_fpu_loaded(c: &mut Case, f: &kvm_fpu, when: &str) {
    check_mxcsr(c, f.mxcsr, guest::MXCSR_VAL, &format!("MXCSR ({when}, LDMXCSR)"));
    check_eq!(c, f.xmm[0], guest::XMM0_VAL, format!("XMM0 ({when}, MOVDQU)"));
    check_eq!(c, &f.fpr[0][..10], &guest::ST_ONE[..], format!("ST0 ({when}, FLD1)"));
    check_eq!(c, f.fsw & 0x3800, 0x3800, format!("FSW.TOP ({when}, one push)"));
    check_eq!(c, f.ftwx, 0x80, format!("abridged FTW ({when}, R7 valid)"));
}

/// Runs the program, comparing every exit; true if it got to the HLT with everything matching.
fn run_program(g: &mut Guest, kvm: &Kvm, c: &mut Case) -> bool {
    let (Some(vcpu), Some(program)) = (g.vcpu.as_mut(), g.program.as_ref()) else { return false };

    // KVM_CAP_IMMEDIATE_EXIT: KVM_RUN returns EINTR at once, the guest does not run.
    if kvm.check_extension(Cap::ImmediateExit) {
        vcpu.set_kvm_immediate_exit(1);
        let r = vcpu.run().map(|e| describe(&e));
        vcpu.set_kvm_immediate_exit(0);
        check_errno!(c, r, libc::EINTR, "KVM_RUN with immediate_exit");
        match vcpu.get_regs() {
            Ok(r) => {
                check_eq!(c, r.rip, layout::CODE, "RIP after an immediate_exit KVM_RUN");
            }
            Err(e) => c.fail(line!(), format!("KVM_GET_REGS: {e}")),
        }
    }

    let start = Instant::now();
    for (i, want) in program.exits.iter().enumerate() {
        let mut hook = None;
        let mut bad: Option<String> = None;
        match (vcpu.run(), &want.exit) {
            (Ok(VcpuExit::IoOut(p, d)), Exit::Out { port, data }) if p == *port && d == &data[..] => {}
            (Ok(VcpuExit::IoOut(p, d)), Exit::Sync(h)) if p == guest::PORT_SYNC && d == [*h as u8 + 1] => hook = Some(*h),
            (Ok(VcpuExit::IoIn(p, d)), Exit::In { port, reply }) if p == *port && d.len() == reply.len() => {
                d.copy_from_slice(reply)
            }
            (Ok(VcpuExit::MmioWrite(a, d)), Exit::MmioWrite { addr, data }) if a == *addr && d == &data[..] => {}
            (Ok(VcpuExit::MmioRead(a, d)), Exit::MmioRead { addr, reply }) if a == *addr && d.len() == reply.len() => {
                d.copy_from_slice(reply)
            }
            (Ok(VcpuExit::Hlt), Exit::Hlt) => {}
            (Ok(other), w) => bad = Some(format!("exit {}: {}, want {w:x?}", i + 1, describe(&other))),
            (Err(e), w) => bad = Some(format!("exit {}: KVM_RUN failed: {e} (errno {}), want {w:x?}", i + 1, e.errno())),
        }
        if let Some(msg) = bad {
            c.fail(line!(), format!("{msg} ({})", want.what));
            if let Ok(r) = vcpu.get_regs() {
                diag(format!("RIP {:#x} (code offset {:#x}) RAX {:#x} RCX {:#x} RDX {:#x}", r.rip, r.rip.wrapping_sub(layout::CODE), r.rax, r.rcx, r.rdx));
            }
            let run = vcpu.get_kvm_run();
            if run.exit_reason == kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
                // SAFETY: the exit reason says `internal` is the valid member; plain integers.
                let i = unsafe { run.__bindgen_anon_1.internal };
                diag(format!("internal error: suberror {:#x} data {:x?}", i.suberror, &i.data[..(i.ndata as usize).min(16)]));
            }
            return false;
        }
        if hook == Some(Hook::FpuMidRun) && fpu_mid_run(vcpu, c).is_none() {
            return false;
        }
    }
    diag(format!("{} exits as expected in {:.1} ms", program.exits.len(), start.elapsed().as_secs_f64() * 1e3));
    !c.failed
}

/// Reads back the vCPU and memory after the HLT.
fn check_state(g: &mut Guest, kvm: &Kvm, c: &mut Case) -> Option<()> {
    let vcpu = g.vcpu.as_ref()?;
    let program = g.program.as_ref()?;
    let r = try_ok!(c, vcpu.get_regs(), "KVM_GET_REGS");
    check_eq!(c, r.rip, layout::CODE + program.code.len() as u64, "RIP (just past the HLT)");
    check_eq!(c, r.rax, u64::from(guest::MMIO_R32), "RAX (MOV EAX, ECX)");
    check_eq!(c, r.rbx, guest::RO_PATTERN, "RBX (read from the READONLY slot)");
    check_eq!(c, r.rcx, u64::from(guest::MMIO_R32), "RCX (4-byte MMIO read, zero-extended)");
    check_eq!(c, r.rdx, u64::from(guest::PORT_IN_DX), "RDX (the IN port)");
    check_eq!(c, r.rsi, guest::MMIO_R64, "RSI (8-byte MMIO read)");
    check_eq!(c, r.rdi, layout::MMIO, "RDI (MOV EDI, imm32)");
    check_eq!(c, r.r12, guest::R12_VAL, "R12 (MOV R12, imm64)");
    check_eq!(c, r.r13, guest::R13_INIT, "R13 (untouched)");
    check_eq!(c, r.r14, guest::R13_INIT + 0x100, "R14 (LEA R14, [R13+0x100])");
    check_eq!(c, r.rsp, layout::STACK_TOP, "RSP (untouched)");
    check_eq!(c, r.rflags & 0x2, 0x2, "RFLAGS bit 1");

    let s = try_ok!(c, vcpu.get_sregs(), "KVM_GET_SREGS");
    check_eq!(c, s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG, "CR0.PE|PG");
    check_eq!(c, s.cr3, layout::PML4, "CR3");
    let cr4_want = CR4_PAE | CR4_OSFXSR | if g.params.xsave { CR4_OSXSAVE } else { 0 };
    check_eq!(c, s.cr4 & (CR4_PAE | CR4_OSFXSR | CR4_OSXSAVE), cr4_want, "CR4.PAE|OSFXSR|OSXSAVE");
    check_eq!(c, s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA, "EFER.LME|LMA");
    check_eq!(c, (s.cs.selector, s.cs.l, s.cs.db), (layout::CODE_SEL, 1, 0), "CS selector, L, D");
    check_eq!(c, s.fs.base, guest::FS_VAL, "FS base (WRMSR FS_BASE)");
    check_eq!(c, s.gs.base, guest::KGS_VAL, "GS base (KERNEL_GS_BASE before SWAPGS)");

    let want = [
        (guest::MSR_STAR, guest::STAR_VAL, "STAR"),
        (guest::MSR_LSTAR, guest::LSTAR_VAL, "LSTAR"),
        (guest::MSR_SFMASK, guest::SFMASK_VAL, "SFMASK"),
        (guest::MSR_SYSENTER_EIP, guest::SYSENTER_EIP_VAL, "SYSENTER_EIP"),
        (guest::MSR_SYSENTER_ESP, guest::SYSENTER_ESP_VAL, "SYSENTER_ESP (from KVM_SET_MSRS)"),
        (guest::MSR_KERNEL_GS_BASE, guest::GS_INIT, "KERNEL_GS_BASE (the GS base before SWAPGS)"),
        (guest::MSR_FS_BASE, guest::FS_VAL, "FS_BASE"),
    ];
    let entries: Vec<_> = want.iter().map(|&(index, _, _)| kvm_msr_entry { index, ..Default::default() }).collect();
    let mut msrs = Msrs::from_entries(&entries).ok()?;
    let n = try_ok!(c, vcpu.get_msrs(&mut msrs), "KVM_GET_MSRS");
    check_eq!(c, n, want.len(), "KVM_GET_MSRS: entries read");
    for (e, &(index, value, name)) in msrs.as_slice().iter().zip(&want).take(n) {
        check_eq!(c, (e.index, e.data), (index, value), format!("MSR {name}"));
    }

    let f = try_ok!(c, vcpu.get_fpu(), "KVM_GET_FPU");
    check_fpu_loaded(c, &f, "after HLT");
    check_eq!(c, f.xmm[1], guest::XMM1_VAL, "XMM1 (from KVM_SET_FPU)");
    check_eq!(c, &f.xmm[2][..8], &guest::XMM1_VAL[8..], "XMM2 low half (MOVHLPS XMM2, XMM1)");

    if kvm.check_extension(Cap::Xsave) {
        // The legacy region of the XSAVE image: MXCSR at byte 24, XMM0 at 160.
        let x = try_ok!(c, vcpu.get_xsave(), "KVM_GET_XSAVE");
        let bytes: Vec<u8> = x.region.iter().flat_map(|w| w.to_le_bytes()).collect();
        check_eq!(c, u32::from_le_bytes(bytes[24..28].try_into().unwrap()), guest::MXCSR_VAL, "KVM_GET_XSAVE MXCSR");
        check_eq!(c, &bytes[160..176], &guest::XMM0_VAL[..], "KVM_GET_XSAVE XMM0");
        check_eq!(c, &bytes[176..192], &guest::XMM1_VAL[..], "KVM_GET_XSAVE XMM1");
    }
    if kvm.check_extension(Cap::Xcrs) {
        let x = try_ok!(c, vcpu.get_xcrs(), "KVM_GET_XCRS");
        let xcr0 = x.xcrs[..(x.nr_xcrs as usize).min(x.xcrs.len())].iter().find(|e| e.xcr == 0).map(|e| e.value);
        check_eq!(c, xcr0, Some(if g.params.xsave { 3 } else { 1 }), "XCR0 (XSETBV)");
    }
    if kvm.check_extension(Cap::MpState) {
        let m = try_ok!(c, vcpu.get_mp_state(), "KVM_GET_MP_STATE");
        check_eq!(c, m.mp_state, KVM_MP_STATE_RUNNABLE, "MP state after HLT (userspace irqchip)");
    }

    let mem = g.ram.bytes();
    let st = guest::IN_STORE as usize;
    check_eq!(c, mem[st], guest::IN8, "guest's store of the 1-byte IN");
    check_eq!(c, u16::from_le_bytes([mem[st + 2], mem[st + 3]]), guest::IN16, "guest's store of the 2-byte IN");
    check_eq!(c, u32::from_le_bytes(mem[st + 4..st + 8].try_into().unwrap()), guest::IN32, "guest's store of the 4-byte IN");
    // After KVM_RUN the CPUID table may only be set again unchanged (upstream since 6.x:
    // `kvm_cpuid_check_equal`).
    if let Some(cpuid) = g.cpuid.as_ref() {
        check!(c, vcpu.set_cpuid2(cpuid).is_ok(), "KVM_SET_CPUID2 of the same table after KVM_RUN refused");
        let mut changed = cpuid.clone();
        if let Some(e) = changed.as_mut_slice().iter_mut().find(|e| e.function == 0x4000_0000) {
            e.ebx ^= 1;
        }
        check_errno!(c, vcpu.set_cpuid2(&changed), libc::EINVAL, "KVM_SET_CPUID2 of a changed table after KVM_RUN");
    }
    let m = guest::MXCSR_STORE as usize;
    check_eq!(c, u32::from_le_bytes(mem[m..m + 4].try_into().unwrap()), guest::MXCSR_VAL, "guest's STMXCSR at the end");
    if let Some(ro) = g.ro.as_mut() {
        let got = ro.bytes().to_vec();
        let mut want = Mem::new(got.len()).ok()?;
        fill_ro(&mut want);
        check!(c, got == want.bytes(), "READONLY slot memory changed: bytes 8..12 {:02x?}", &got[8..12]);
    }
    Some(())
}

fn guest_case(ctx: &mut Ctx, c: &mut Case, pages: PageSize) -> bool {
    if let Some(why) = &ctx.no_guests {
        c.skip = Some(why.clone());
        return false;
    }
    let Some(kvm) = ctx.kvm.as_ref() else {
        c.skip = Some("device not open".into());
        return false;
    };
    if pages == PageSize::Size1G {
        let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES);
        let gb = cpuid.ok().and_then(|t| find(&t, 0x8000_0001, 0)).is_some_and(|e| e.edx & (1 << 26) != 0);
        if !gb {
            c.skip = Some("no Page1GB in KVM_GET_SUPPORTED_CPUID".into());
            return false;
        }
        // A VM of its own, made as cases 3 and 4 make theirs.
        let Some(mut g) = create_vm_with_memory(kvm, c) else { return false };
        if create_vcpu_with_cpuid(kvm, &mut g, c).is_none() {
            return false;
        }
        let ok = setup_guest(kvm, &mut g, pages, c).is_some() && run_program(&mut g, kvm, c);
        if ok {
            check_state(&mut g, kvm, c);
        }
        return ok;
    }
    if ctx.guest.as_ref().is_none_or(|g| g.vcpu.is_none()) {
        // Run on its own (named on the command line): make the VM as cases 3 and 4 do.
        ctx.guest = create_vm_with_memory(kvm, c);
        let Some(g) = ctx.guest.as_mut() else { return false };
        if create_vcpu_with_cpuid(kvm, g, c).is_none() {
            return false;
        }
    }
    let g = ctx.guest.as_mut().expect("made above");
    setup_guest(kvm, g, pages, c).is_some() && run_program(g, kvm, c)
}

fn long_mode_guest_2m_pages(ctx: &mut Ctx, c: &mut Case) {
    ctx.ran = guest_case(ctx, c, PageSize::Size2M);
}

fn state_after_run(ctx: &mut Ctx, c: &mut Case) {
    if let Some(why) = &ctx.no_guests {
        return c.skip = Some(why.clone());
    }
    let (Some(kvm), Some(g), true) = (ctx.kvm.as_ref(), ctx.guest.as_mut(), ctx.ran) else {
        return c.skip = Some("the guest did not run to its HLT (long_mode_guest_2m_pages)".into());
    };
    check_state(g, kvm, c);
}

fn long_mode_guest_1g_pages(ctx: &mut Ctx, c: &mut Case) {
    guest_case(ctx, c, PageSize::Size1G);
}

// ---------------------------------------------------------------------------------------------

type CaseFn = fn(&mut Ctx, &mut Case);

fn main() {
    let cases: [(&str, CaseFn); 7] = [
        ("api_version", api_version),
        ("check_extension", check_extension),
        ("memory_regions", memory_regions),
        ("cpuid_round_trip", cpuid_round_trip),
        ("long_mode_guest_2m_pages", long_mode_guest_2m_pages),
        ("state_after_run", state_after_run),
        ("long_mode_guest_1g_pages", long_mode_guest_1g_pages),
    ];
    let selected: Vec<String> = std::env::args().skip(1).collect();
    let mut ctx = Ctx { kvm: None, no_guests: no_guests(), guest: None, ran: false };
    println!("TAP version 13\n# rkvm-kvm-ioctls-test\n1..{}", cases.len());
    let mut failed = 0;
    let start = Instant::now();
    for (i, (name, f)) in cases.iter().enumerate() {
        let mut c = Case::default();
        // Case 1 opens the device: it always runs.
        if i == 0 || selected.is_empty() || selected.iter().any(|s| s == name) {
            let t = Instant::now();
            f(&mut ctx, &mut c);
            diag(format!("{name}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3));
        } else {
            c.skip = Some("not selected on the command line".into());
        }
        match (c.failed, c.skip) {
            (true, _) => {
                println!("not ok {} - {name}", i + 1);
                failed += 1;
            }
            (false, Some(why)) => println!("ok {} - {name} # SKIP {why}", i + 1),
            (false, None) => println!("ok {} - {name}", i + 1),
        }
    }
    diag(format!("{failed} failed, {:.1} ms in all", start.elapsed().as_secs_f64() * 1e3));
    drop(ctx);
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

//! The ioctls the fuzzer issues: one [`Def`] per (ioctl, fd kind). Adding an ioctl is one entry
//! in [`DEFS`]: its number from the uapi macros (`libc::_IO*` over the kvm-bindings struct, so the
//! size field is the real `sizeof`), the fd it belongs to, and how its argument is made.
//!
//! Struct arguments (`Arg::Buf`) start from the bytes of the last successful call that produced
//! the same `key` (a GET's output is a SET's template, so round trips with small mutations are
//! common), are optionally rebuilt by a structured generator, then mutated; the pointer handed to
//! the kernel is valid most of the time and otherwise NULL, a kernel address, unmapped, read-only,
//! straddling a guard page or misaligned (see `fuzz::Ctx::place`).

use crate::fuzz::{Ctx, Target};
use crate::rng::Rng;
use crate::sys::{bytes_of, from_bytes, zeroed};
use kvm_bindings as kb;
use libc::{_IO, _IOR, _IOW, _IOWR};
use std::mem::size_of;

const KVMIO: u32 = kb::KVMIO;

/// Which fd an ioctl belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum On {
    Dev,
    Vm,
    Vcpu,
}

/// What a successful call returns a new fd of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Creates {
    Nothing,
    Vm,
    Vcpu,
    Stats,
}

/// Direction of a struct argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    In,
    Out,
    InOut,
}

/// A structured generator: rewrites (part of) the argument bytes.
pub type Gen = fn(&mut Ctx, &Target, &mut [u8]);

/// How the argument is made.
pub enum Arg {
    /// An integer argument.
    Int(fn(&mut Rng) -> u64),
    /// A pointer to a `size`-byte struct.
    Buf { size: usize, dir: Dir, key: &'static str, gen: Option<Gen> },
    /// Built and issued by hand (variable-length arrays, memory regions, KVM_RUN).
    Custom(fn(&mut Ctx, &Target, &Def)),
}

/// One ioctl on one kind of fd.
pub struct Def {
    pub name: &'static str,
    pub cmd: u64,
    pub on: On,
    pub arg: Arg,
    pub creates: Creates,
    /// Relative frequency among the table ioctls.
    pub weight: u32,
}

macro_rules! def {
    ($name:ident, $on:ident, $cmd:expr, $arg:expr) => {
        def!($name, $on, $cmd, $arg, Nothing, 10)
    };
    ($name:ident, $on:ident, $cmd:expr, $arg:expr, $creates:ident, $weight:expr) => {
        Def {
            name: stringify!($name),
            cmd: $cmd as u64,
            on: On::$on,
            arg: $arg,
            creates: Creates::$creates,
            weight: $weight,
        }
    };
}

const fn buf(size: usize, dir: Dir, key: &'static str, gen: Option<Gen>) -> Arg {
    Arg::Buf { size, dir, key, gen }
}

use crate::fuzz as f;
use Dir::*;

/// Every ioctl rkvm implements (rust/dev.rs, rust/vm.rs, rust/vcpu.rs), and those other work
/// adds (guest debug, ioeventfd, MSR filter, MCE): unimplemented ones simply get their errno.
pub static DEFS: &[Def] = &[
    // The device fd (upstream kvm_dev_ioctl).
    def!(KVM_GET_API_VERSION, Dev, _IO(KVMIO, 0x00), Arg::Int(int_mostly_zero)),
    def!(KVM_CREATE_VM, Dev, _IO(KVMIO, 0x01), Arg::Int(int_mostly_zero), Vm, 8),
    def!(KVM_CHECK_EXTENSION, Dev, _IO(KVMIO, 0x03), Arg::Int(cap_number)),
    def!(KVM_GET_VCPU_MMAP_SIZE, Dev, _IO(KVMIO, 0x04), Arg::Int(int_mostly_zero)),
    def!(KVM_GET_SUPPORTED_CPUID, Dev, _IOWR::<kb::kvm_cpuid2>(KVMIO, 0x05), Arg::Custom(f::get_supported_cpuid)),
    def!(KVM_GET_MSR_INDEX_LIST, Dev, _IOWR::<kb::kvm_msr_list>(KVMIO, 0x02), Arg::Custom(f::msr_list)),
    def!(KVM_GET_MSR_FEATURE_INDEX_LIST, Dev, _IOWR::<kb::kvm_msr_list>(KVMIO, 0x0a), Arg::Custom(f::msr_list)),
    def!(KVM_GET_MSRS, Dev, _IOWR::<kb::kvm_msrs>(KVMIO, 0x88), Arg::Custom(f::msrs)),
    // VM fds (upstream kvm_vm_ioctl, kvm_arch_vm_ioctl).
    def!(KVM_CREATE_VCPU, Vm, _IO(KVMIO, 0x41), Arg::Int(vcpu_id), Vcpu, 12),
    def!(KVM_SET_USER_MEMORY_REGION, Vm, _IOW::<kb::kvm_userspace_memory_region>(KVMIO, 0x46), Arg::Custom(f::memory_region), Nothing, 25),
    def!(KVM_SET_USER_MEMORY_REGION2, Vm, _IOW::<kb::kvm_userspace_memory_region2>(KVMIO, 0x49), Arg::Custom(f::memory_region), Nothing, 15),
    def!(KVM_GET_DIRTY_LOG, Vm, _IOW::<kb::kvm_dirty_log>(KVMIO, 0x42), buf(size_of::<kb::kvm_dirty_log>(), In, "dirty_log", Some(dirty_log))),
    def!(KVM_CLEAR_DIRTY_LOG, Vm, _IOWR::<kb::kvm_clear_dirty_log>(KVMIO, 0xc0), buf(size_of::<kb::kvm_clear_dirty_log>(), InOut, "clear_dirty_log", Some(clear_dirty_log))),
    def!(KVM_GET_TSC_KHZ, Vm, _IO(KVMIO, 0xa3), Arg::Int(int_mostly_zero), Nothing, 3),
    def!(KVM_SET_TSS_ADDR, Vm, _IO(KVMIO, 0x47), Arg::Int(Rng::interesting)),
    def!(KVM_SET_IDENTITY_MAP_ADDR, Vm, _IOW::<u64>(KVMIO, 0x48), buf(8, In, "identity_map_addr", Some(u64_interesting))),
    def!(KVM_SET_BOOT_CPU_ID, Vm, _IO(KVMIO, 0x78), Arg::Int(vcpu_id)),
    def!(KVM_CHECK_EXTENSION, Vm, _IO(KVMIO, 0x03), Arg::Int(cap_number), Nothing, 5),
    def!(KVM_REGISTER_COALESCED_MMIO, Vm, _IOW::<kb::kvm_coalesced_mmio_zone>(KVMIO, 0x67), buf(size_of::<kb::kvm_coalesced_mmio_zone>(), In, "zone", Some(zone))),
    def!(KVM_UNREGISTER_COALESCED_MMIO, Vm, _IOW::<kb::kvm_coalesced_mmio_zone>(KVMIO, 0x68), buf(size_of::<kb::kvm_coalesced_mmio_zone>(), In, "zone", Some(zone))),
    def!(KVM_GET_STATS_FD, Vm, _IO(KVMIO, 0xce), Arg::Int(int_mostly_zero), Stats, 4),
    def!(KVM_ENABLE_CAP, Vm, _IOW::<kb::kvm_enable_cap>(KVMIO, 0xa3), buf(size_of::<kb::kvm_enable_cap>(), In, "enable_cap", Some(enable_cap))),
    def!(KVM_SET_NR_MMU_PAGES, Vm, _IO(KVMIO, 0x44), Arg::Int(Rng::interesting), Nothing, 3),
    def!(KVM_CREATE_IRQCHIP, Vm, _IO(KVMIO, 0x60), Arg::Int(int_mostly_zero), Nothing, 8),
    def!(KVM_IRQ_LINE, Vm, _IOW::<kb::kvm_irq_level>(KVMIO, 0x61), buf(size_of::<kb::kvm_irq_level>(), In, "irq_level", Some(irq_level))),
    def!(KVM_IRQ_LINE_STATUS, Vm, _IOWR::<kb::kvm_irq_level>(KVMIO, 0x67), buf(size_of::<kb::kvm_irq_level>(), InOut, "irq_level", Some(irq_level))),
    def!(KVM_GET_IRQCHIP, Vm, _IOWR::<kb::kvm_irqchip>(KVMIO, 0x62), buf(size_of::<kb::kvm_irqchip>(), InOut, "irqchip", Some(irqchip_id))),
    def!(KVM_SET_IRQCHIP, Vm, _IOR::<kb::kvm_irqchip>(KVMIO, 0x63), buf(size_of::<kb::kvm_irqchip>(), In, "irqchip", None)),
    // Structured generators in gens.rs; guest sessions use them too (fuzz::guest_session).
    def!(KVM_IOEVENTFD, Vm, _IOW::<kb::kvm_ioeventfd>(KVMIO, 0x79), Arg::Custom(f::ioeventfd), Nothing, 6),
    def!(KVM_X86_SET_MSR_FILTER, Vm, _IOW::<kb::kvm_msr_filter>(KVMIO, 0xc6), Arg::Custom(f::msr_filter), Nothing, 5),
    // vCPU fds (upstream kvm_vcpu_ioctl, kvm_arch_vcpu_ioctl).
    def!(KVM_RUN, Vcpu, _IO(KVMIO, 0x80), Arg::Custom(f::run), Nothing, 20),
    def!(KVM_GET_REGS, Vcpu, _IOR::<kb::kvm_regs>(KVMIO, 0x81), buf(size_of::<kb::kvm_regs>(), Out, "regs", None)),
    def!(KVM_SET_REGS, Vcpu, _IOW::<kb::kvm_regs>(KVMIO, 0x82), buf(size_of::<kb::kvm_regs>(), In, "regs", Some(regs))),
    def!(KVM_GET_SREGS, Vcpu, _IOR::<kb::kvm_sregs>(KVMIO, 0x83), buf(size_of::<kb::kvm_sregs>(), Out, "sregs", None)),
    def!(KVM_SET_SREGS, Vcpu, _IOW::<kb::kvm_sregs>(KVMIO, 0x84), buf(size_of::<kb::kvm_sregs>(), In, "sregs", Some(sregs))),
    def!(KVM_TRANSLATE, Vcpu, _IOWR::<kb::kvm_translation>(KVMIO, 0x85), buf(size_of::<kb::kvm_translation>(), InOut, "translation", Some(u64_interesting))),
    def!(KVM_INTERRUPT, Vcpu, _IOW::<kb::kvm_interrupt>(KVMIO, 0x86), buf(size_of::<kb::kvm_interrupt>(), In, "interrupt", Some(vector))),
    def!(KVM_GET_MSRS, Vcpu, _IOWR::<kb::kvm_msrs>(KVMIO, 0x88), Arg::Custom(f::msrs)),
    def!(KVM_SET_MSRS, Vcpu, _IOW::<kb::kvm_msrs>(KVMIO, 0x89), Arg::Custom(f::msrs)),
    def!(KVM_SET_SIGNAL_MASK, Vcpu, _IOW::<kb::kvm_signal_mask>(KVMIO, 0x8b), Arg::Custom(f::signal_mask), Nothing, 4),
    def!(KVM_GET_FPU, Vcpu, _IOR::<kb::kvm_fpu>(KVMIO, 0x8c), buf(size_of::<kb::kvm_fpu>(), Out, "fpu", None)),
    def!(KVM_SET_FPU, Vcpu, _IOW::<kb::kvm_fpu>(KVMIO, 0x8d), buf(size_of::<kb::kvm_fpu>(), In, "fpu", None)),
    def!(KVM_GET_LAPIC, Vcpu, _IOR::<kb::kvm_lapic_state>(KVMIO, 0x8e), buf(size_of::<kb::kvm_lapic_state>(), Out, "lapic", None)),
    def!(KVM_SET_LAPIC, Vcpu, _IOW::<kb::kvm_lapic_state>(KVMIO, 0x8f), buf(size_of::<kb::kvm_lapic_state>(), In, "lapic", Some(lapic))),
    def!(KVM_SET_CPUID2, Vcpu, _IOW::<kb::kvm_cpuid2>(KVMIO, 0x90), Arg::Custom(f::set_cpuid2)),
    def!(KVM_GET_CPUID2, Vcpu, _IOWR::<kb::kvm_cpuid2>(KVMIO, 0x91), Arg::Custom(f::get_cpuid2)),
    def!(KVM_GET_MP_STATE, Vcpu, _IOR::<kb::kvm_mp_state>(KVMIO, 0x98), buf(size_of::<kb::kvm_mp_state>(), Out, "mp_state", None)),
    def!(KVM_SET_MP_STATE, Vcpu, _IOW::<kb::kvm_mp_state>(KVMIO, 0x99), buf(size_of::<kb::kvm_mp_state>(), In, "mp_state", Some(small_u32))),
    def!(KVM_NMI, Vcpu, _IO(KVMIO, 0x9a), Arg::Int(int_mostly_zero)),
    def!(KVM_GET_VCPU_EVENTS, Vcpu, _IOR::<kb::kvm_vcpu_events>(KVMIO, 0x9f), buf(size_of::<kb::kvm_vcpu_events>(), Out, "events", None)),
    def!(KVM_SET_VCPU_EVENTS, Vcpu, _IOW::<kb::kvm_vcpu_events>(KVMIO, 0xa0), buf(size_of::<kb::kvm_vcpu_events>(), In, "events", Some(events))),
    def!(KVM_GET_DEBUGREGS, Vcpu, _IOR::<kb::kvm_debugregs>(KVMIO, 0xa1), buf(size_of::<kb::kvm_debugregs>(), Out, "debugregs", None)),
    def!(KVM_SET_DEBUGREGS, Vcpu, _IOW::<kb::kvm_debugregs>(KVMIO, 0xa2), buf(size_of::<kb::kvm_debugregs>(), In, "debugregs", Some(debugregs))),
    def!(KVM_GET_TSC_KHZ, Vcpu, _IO(KVMIO, 0xa3), Arg::Int(int_mostly_zero), Nothing, 3),
    def!(KVM_GET_XSAVE, Vcpu, _IOR::<kb::kvm_xsave>(KVMIO, 0xa4), buf(size_of::<kb::kvm_xsave>(), Out, "xsave", None)),
    def!(KVM_SET_XSAVE, Vcpu, _IOW::<kb::kvm_xsave>(KVMIO, 0xa5), buf(size_of::<kb::kvm_xsave>(), In, "xsave", Some(xsave))),
    def!(KVM_GET_XCRS, Vcpu, _IOR::<kb::kvm_xcrs>(KVMIO, 0xa6), buf(size_of::<kb::kvm_xcrs>(), Out, "xcrs", None)),
    def!(KVM_SET_XCRS, Vcpu, _IOW::<kb::kvm_xcrs>(KVMIO, 0xa7), buf(size_of::<kb::kvm_xcrs>(), In, "xcrs", Some(xcrs))),
    def!(KVM_GET_XSAVE2, Vcpu, _IOR::<kb::kvm_xsave>(KVMIO, 0xcf), buf(size_of::<kb::kvm_xsave>(), Out, "xsave", None)),
    def!(KVM_GET_STATS_FD, Vcpu, _IO(KVMIO, 0xce), Arg::Int(int_mostly_zero), Stats, 4),
    def!(KVM_PRE_FAULT_MEMORY, Vcpu, _IOWR::<kb::kvm_pre_fault_memory>(KVMIO, 0xd5), buf(size_of::<kb::kvm_pre_fault_memory>(), InOut, "pre_fault", Some(pre_fault))),
    def!(KVM_SET_GUEST_DEBUG, Vcpu, _IOW::<kb::kvm_guest_debug>(KVMIO, 0x9b), buf(size_of::<kb::kvm_guest_debug>(), In, "guest_debug", Some(guest_debug)), Nothing, 4),
    def!(KVM_X86_SETUP_MCE, Vcpu, _IOW::<u64>(KVMIO, 0x9c), Arg::Custom(f::mce), Nothing, 3),
    def!(KVM_X86_GET_MCE_CAP_SUPPORTED, Dev, _IOR::<u64>(KVMIO, 0x9d), buf(8, Out, "mce_cap", None), Nothing, 3),
    def!(KVM_X86_SET_MCE, Vcpu, _IOW::<kb::kvm_x86_mce>(KVMIO, 0x9e), Arg::Custom(f::mce), Nothing, 4),
];

/// `0` nine times in ten (what the ioctl wants), else an interesting value.
fn int_mostly_zero(r: &mut Rng) -> u64 {
    if r.percent(90) {
        0
    } else {
        r.interesting()
    }
}

/// A capability number: the known range mostly.
fn cap_number(r: &mut Rng) -> u64 {
    if r.percent(85) {
        r.below(260)
    } else {
        r.interesting()
    }
}

/// A vCPU id: small mostly, else near the limits (1023, 1024, 4095, 4096, ...).
fn vcpu_id(r: &mut Rng) -> u64 {
    if r.percent(80) {
        r.below(6)
    } else {
        r.interesting()
    }
}

fn put<T: Copy>(b: &mut [u8], v: &T) {
    let bytes = bytes_of(v);
    let n = bytes.len().min(b.len());
    b[..n].copy_from_slice(&bytes[..n]);
}

fn u64_interesting(c: &mut Ctx, _: &Target, b: &mut [u8]) {
    let v = c.rng.interesting();
    put(b, &v);
}

fn small_u32(c: &mut Ctx, _: &Target, b: &mut [u8]) {
    let v = if c.rng.percent(80) { c.rng.below(10) as u32 } else { c.rng.interesting() as u32 };
    put(b, &v);
}

fn vector(c: &mut Ctx, _: &Target, b: &mut [u8]) {
    let v = if c.rng.percent(80) { c.rng.below(256) as u32 } else { c.rng.interesting() as u32 };
    put(b, &v);
}

/// A slot number: one the VM uses, a small one, or a boundary (address-space bits included).
pub fn slot(c: &mut Ctx, t: &Target) -> u32 {
    let used = t.vm().map(|v| v.slots()).unwrap_or_default();
    match c.rng.below(10) {
        0..=4 if !used.is_empty() => *c.rng.pick(&used),
        0..=6 => c.rng.below(12) as u32,
        7 => (1 << 16) | c.rng.below(4) as u32,
        8 => c.sh.nr_slots - c.rng.below(2) as u32,
        _ => c.rng.interesting() as u32,
    }
}

/// A slot for the dirty-log ioctls: one that logs, mostly.
fn dirty_slot(c: &mut Ctx, t: &Target) -> u32 {
    let logging = t.vm().map(|v| v.dirty_slots()).unwrap_or_default();
    if !logging.is_empty() && c.rng.percent(70) {
        *c.rng.pick(&logging)
    } else {
        slot(c, t)
    }
}

fn dirty_log(c: &mut Ctx, t: &Target, b: &mut [u8]) {
    let mut d: kb::kvm_dirty_log = zeroed();
    d.slot = dirty_slot(c, t);
    d.__bindgen_anon_1.padding2 = c.bitmap_ptr();
    put(b, &d);
}

fn clear_dirty_log(c: &mut Ctx, t: &Target, b: &mut [u8]) {
    let mut d: kb::kvm_clear_dirty_log = zeroed();
    d.slot = dirty_slot(c, t);
    d.first_page = if c.rng.percent(70) { c.rng.below(8) * 64 } else { c.rng.interesting() };
    d.num_pages = if c.rng.percent(70) { c.rng.below(600) as u32 } else { c.rng.interesting() as u32 };
    d.__bindgen_anon_1.padding2 = c.bitmap_ptr();
    put(b, &d);
}

/// A guest-physical address: in a slot of the VM, near one, or anywhere interesting.
pub fn gpa(c: &mut Ctx, t: &Target) -> u64 {
    let ranges = t.vm().map(|v| v.ranges()).unwrap_or_default();
    if !ranges.is_empty() && c.rng.percent(60) {
        let (start, len) = *c.rng.pick(&ranges);
        return start.wrapping_add(c.rng.below(len + 0x2000)).wrapping_sub(0x1000) & !c.align_mask();
    }
    match c.rng.below(4) {
        0 => *c.rng.pick(&[0xfee0_0000u64, 0xfec0_0000, 0xd000_0000, 0x3f8, 0x80, 0xcf8, 0x1000, 0xffff_ffff_ffff_f000, 0xf_ffff_ffff_f000]),
        1 => c.rng.below(0x20_0000),
        _ => c.rng.interesting(),
    }
}

fn zone(c: &mut Ctx, t: &Target, b: &mut [u8]) {
    let last: kb::kvm_coalesced_mmio_zone = from_bytes(b);
    if last.size != 0 && c.rng.percent(50) {
        // A range inside the zone registered last (what an unregister usually names).
        let mut z = last;
        z.size = *c.rng.pick(&[1u32, 2, 4, 8, (last.size / 2).max(1)]);
        z.addr = last.addr.wrapping_add(c.rng.below(u64::from(last.size)) & !7);
        put(b, &z);
        return;
    }
    let mut z: kb::kvm_coalesced_mmio_zone = zeroed();
    z.addr = gpa(c, t);
    z.size = if c.rng.percent(70) { *c.rng.pick(&[1u32, 2, 4, 8, 16, 0x1000, 0]) } else { c.rng.interesting() as u32 };
    z.__bindgen_anon_1.pio = match c.rng.below(4) {
        0 | 1 => 0,
        2 => 1,
        _ => c.rng.interesting() as u32,
    };
    put(b, &z);
}

fn enable_cap(c: &mut Ctx, _: &Target, b: &mut [u8]) {
    let mut e: kb::kvm_enable_cap = zeroed();
    e.cap = if c.rng.percent(85) {
        *c.rng.pick(&[
            kb::KVM_CAP_MAX_VCPU_ID,
            kb::KVM_CAP_X2APIC_API,
            kb::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
            kb::KVM_CAP_X86_APIC_BUS_CYCLES_NS,
            kb::KVM_CAP_MSR_PLATFORM_INFO,
            kb::KVM_CAP_EXIT_ON_EMULATION_FAILURE,
            kb::KVM_CAP_X86_USER_SPACE_MSR,
            kb::KVM_CAP_X86_DISABLE_EXITS,
            kb::KVM_CAP_SPLIT_IRQCHIP,
            kb::KVM_CAP_DISABLE_QUIRKS2,
        ])
    } else {
        c.rng.interesting() as u32
    };
    e.flags = if c.rng.percent(85) { 0 } else { c.rng.interesting() as u32 };
    for a in e.args.iter_mut() {
        *a = if c.rng.percent(50) { c.rng.below(8) } else { c.rng.interesting() };
    }
    if c.rng.percent(40) {
        e.args[1..].fill(0);
    }
    if e.cap == kb::KVM_CAP_X86_USER_SPACE_MSR && c.rng.percent(70) {
        e.args[0] = crate::gens::user_space_msr_mask(&mut c.rng);
    }
    put(b, &e);
}

fn irq_level(c: &mut Ctx, _: &Target, b: &mut [u8]) {
    let mut l: kb::kvm_irq_level = zeroed();
    l.__bindgen_anon_1.irq = if c.rng.percent(80) { c.rng.below(26) as u32 } else { c.rng.interesting() as u32 };
    l.level = if c.rng.percent(80) { c.rng.below(2) as u32 } else { c.rng.interesting() as u32 };
    put(b, &l);
}

fn irqchip_id(c: &mut Ctx, _: &Target, b: &mut [u8]) {
    let id = if c.rng.percent(80) { c.rng.below(4) as u32 } else { c.rng.interesting() as u32 };
    put(b, &id);
}

fn regs(c: &mut Ctx, _: &Target, b: &mut [u8]) {
    let mut r: kb::kvm_regs = from_bytes(b);
    for v in [&mut r.rax, &mut r.rbx, &mut r.rcx, &mut r.rdx, &mut r.rsi, &mut r.rdi, &mut r.r8, &mut r.r15] {
        if c.rng.percent(30) {
            *v = c.rng.interesting();
        }
    }
    if c.rng.percent(30) {
        r.rflags = 2 | (c.rng.interesting() & 0x3f_7fd5);
    }
    if c.rng.percent(20) {
        r.rip = if c.rng.percent(50) { 0x8000 } else { c.rng.interesting() };
    }
    put(b, &r);
}

fn sregs(c: &mut Ctx, _: &Target, b: &mut [u8]) {
    let mut s: kb::kvm_sregs = from_bytes(b);
    match c.rng.below(6) {
        0 => s.cr0 ^= 1 << c.rng.below(32),
        1 => s.cr4 ^= 1 << c.rng.below(26),
        2 => s.efer ^= 1 << c.rng.below(16),
        3 => {
            let any = c.rng.interesting();
            s.apic_base = *c.rng.pick(&[0xfee0_0900u64, 0xfee0_0d00, 0xfee0_0500, 0xfee0_0100, 0, any]);
        }
        4 => s.interrupt_bitmap[c.rng.index(4)] = 1 << c.rng.below(64),
        _ => {
            let seg = match c.rng.below(4) {
                0 => &mut s.cs,
                1 => &mut s.ss,
                2 => &mut s.tr,
                _ => &mut s.ds,
            };
            seg.type_ = c.rng.below(16) as u8;
            seg.present = c.rng.below(2) as u8;
            seg.unusable = c.rng.below(2) as u8;
            seg.l = c.rng.below(2) as u8;
            seg.db = c.rng.below(2) as u8;
            seg.limit = c.rng.interesting() as u32;
        }
    }
    put(b, &s);
}

fn lapic(c: &mut Ctx, _: &Target, b: &mut [u8]) {
    // Registers are at 16-byte strides: ID, LVTs, ICR, timer, SVR, TPR.
    let reg = *c.rng.pick(&[0x20usize, 0x80, 0xb0, 0xd0, 0xe0, 0xf0, 0x300, 0x310, 0x320, 0x350, 0x360, 0x370, 0x380, 0x3e0, 0x100, 0x200]);
    let v = c.rng.interesting() as u32;
    if reg + 4 <= b.len() {
        b[reg..reg + 4].copy_from_slice(&v.to_le_bytes());
    }
}

fn events(c: &mut Ctx, _: &Target, b: &mut [u8]) {
    let mut e: kb::kvm_vcpu_events = from_bytes(b);
    e.flags = if c.rng.percent(80) { c.rng.below(16) as u32 } else { c.rng.interesting() as u32 };
    e.exception.injected = c.rng.below(2) as u8;
    e.exception.nr = if c.rng.percent(80) { c.rng.below(32) as u8 } else { c.rng.next() as u8 };
    e.exception.has_error_code = c.rng.below(2) as u8;
    e.exception.error_code = c.rng.interesting() as u32;
    e.interrupt.injected = c.rng.below(2) as u8;
    e.interrupt.nr = c.rng.next() as u8;
    e.interrupt.soft = c.rng.below(2) as u8;
    e.interrupt.shadow = c.rng.below(4) as u8;
    e.nmi.injected = c.rng.below(2) as u8;
    e.nmi.pending = c.rng.below(2) as u8;
    e.nmi.masked = c.rng.below(2) as u8;
    e.sipi_vector = c.rng.next() as u32;
    put(b, &e);
}

fn debugregs(c: &mut Ctx, _: &Target, b: &mut [u8]) {
    let mut d: kb::kvm_debugregs = from_bytes(b);
    d.db[c.rng.index(4)] = c.rng.interesting();
    d.dr6 = if c.rng.percent(80) { 0xffff_0ff0 | c.rng.below(16) } else { c.rng.interesting() };
    d.dr7 = if c.rng.percent(80) { 0x400 | c.rng.below(0x1_0000) } else { c.rng.interesting() };
    d.flags = if c.rng.percent(90) { 0 } else { c.rng.interesting() as u64 };
    put(b, &d);
}

fn xsave(c: &mut Ctx, _: &Target, b: &mut [u8]) {
    // The header's XSTATE_BV at 512, MXCSR at 24, FCW at 0.
    let (at, v): (usize, u64) = match c.rng.below(3) {
        0 => (512, c.rng.below(8) | if c.rng.percent(10) { c.rng.interesting() } else { 0 }),
        1 => (24, c.rng.interesting() & 0xffff_ffff),
        _ => (520, c.rng.interesting()),
    };
    if at + 8 <= b.len() {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
}

fn xcrs(c: &mut Ctx, _: &Target, b: &mut [u8]) {
    let mut x: kb::kvm_xcrs = from_bytes(b);
    x.nr_xcrs = if c.rng.percent(80) { c.rng.below(3) as u32 } else { c.rng.interesting() as u32 };
    x.flags = if c.rng.percent(90) { 0 } else { c.rng.interesting() as u32 };
    x.xcrs[0].xcr = if c.rng.percent(80) { 0 } else { c.rng.interesting() as u32 };
    x.xcrs[0].value = *c.rng.pick(&[1u64, 3, 7, 0, 2, 5, 0xe7, 0x2ff, u64::MAX]);
    put(b, &x);
}

fn pre_fault(c: &mut Ctx, t: &Target, b: &mut [u8]) {
    let mut p: kb::kvm_pre_fault_memory = zeroed();
    let vm = t.vm_of();
    p.gpa = gpa(c, &vm);
    p.size = if c.rng.percent(70) { (1 + c.rng.below(16)) * 0x1000 } else { c.rng.interesting() };
    p.flags = if c.rng.percent(90) { 0 } else { c.rng.interesting() };
    put(b, &p);
}

fn guest_debug(c: &mut Ctx, _: &Target, b: &mut [u8]) {
    let g = crate::gens::guest_debug(&mut c.rng, crate::guest::CODE);
    put(b, &g);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_uapi_encoding() {
        // A few numbers as the uapi header's macros expand them (asm-generic/ioctl.h): any
        // entry built wrongly by the macros above would show here.
        let n = |name: &str, on: On| DEFS.iter().find(|d| d.name == name && d.on == on).unwrap().cmd;
        assert_eq!(n("KVM_CREATE_VM", On::Dev), 0xae01);
        assert_eq!(n("KVM_RUN", On::Vcpu), 0xae80);
        assert_eq!(n("KVM_SET_USER_MEMORY_REGION", On::Vm), 0x4020_ae46);
        assert_eq!(n("KVM_GET_REGS", On::Vcpu), 0x8090_ae81);
        assert_eq!(n("KVM_SET_SREGS", On::Vcpu), 0x4138_ae84);
        assert_eq!(n("KVM_GET_SUPPORTED_CPUID", On::Dev), 0xc008_ae05);
        assert_eq!(n("KVM_ENABLE_CAP", On::Vm), 0x4068_aea3);
        assert_eq!(n("KVM_GET_XSAVE2", On::Vcpu), 0x9000_aecf);
    }

    /// The uapi headers to compare with: `$RKVM_KHDR`, else the test kernel's installed headers
    /// in rkvm's cache, else the host's.
    fn uapi_include() -> std::path::PathBuf {
        if let Some(p) = std::env::var_os("RKVM_KHDR") {
            return p.into();
        }
        let cache = std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/rkvm"));
        if let Some(Ok(dirs)) = cache.map(std::fs::read_dir) {
            let mut v: Vec<_> = dirs.flatten().map(|d| d.path().join("usr/include")).filter(|p| p.join("linux/kvm.h").exists()).collect();
            v.sort();
            if let Some(p) = v.pop() {
                return p;
            }
        }
        "/usr/include".into()
    }

    #[test]
    fn numbers_match_the_kernel_headers() {
        // Every entry the header defines, compiled by the C compiler from the real uapi header.
        let inc = uapi_include();
        let dir = std::env::temp_dir().join(format!("rkvm-fuzz-uapi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = String::from("#include <stdio.h>\n#include <linux/kvm.h>\nint main(void) {\n");
        for d in DEFS {
            c += &format!("#ifdef {0}\nprintf(\"{0} %lu\\n\", (unsigned long){0});\n#endif\n", d.name);
        }
        c += "return 0; }\n";
        std::fs::write(dir.join("n.c"), c).unwrap();
        let cc = std::process::Command::new("cc")
            .arg(format!("-I{}", inc.display()))
            .arg("-o")
            .arg(dir.join("n"))
            .arg(dir.join("n.c"))
            .status();
        let Ok(st) = cc else {
            eprintln!("no C compiler: uapi comparison not made");
            return;
        };
        assert!(st.success(), "compiling against {}", inc.display());
        let out = std::process::Command::new(dir.join("n")).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let mut checked = 0;
        for line in text.lines() {
            let (name, num) = line.split_once(' ').unwrap();
            let num: u64 = num.parse().unwrap();
            for d in DEFS.iter().filter(|d| d.name == name) {
                assert_eq!(d.cmd, num, "{name}: table {:#x}, {} says {num:#x}", d.cmd, inc.display());
                checked += 1;
            }
        }
        eprintln!("{checked} table entries checked against {}", inc.display());
        assert!(checked >= 40, "only {checked} entries found in {}", inc.display());
    }

    #[test]
    fn every_entry_is_unique_and_sized() {
        for (i, a) in DEFS.iter().enumerate() {
            assert!(a.weight > 0, "{}", a.name);
            for b in &DEFS[i + 1..] {
                assert!(!(a.cmd == b.cmd && a.on == b.on), "{} and {} collide", a.name, b.name);
            }
            if let Arg::Buf { size, .. } = a.arg {
                // The size field of the number is the struct's size.
                assert_eq!((a.cmd >> 16) & 0x3fff, size as u64, "{}", a.name);
            }
        }
    }
}

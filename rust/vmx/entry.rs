//! Guest entry: the assembly around VMLAUNCH/VMRESUME (upstream: `__vmx_vcpu_run` in
//! arch/x86/kvm/vmx/vmenter.S).
//!
//! `rkvm_vmx_enter(regs, launched)` saves the host's callee-saved registers, records the stack
//! pointer in the VMCS (HOST_RSP), loads the guest's general-purpose registers from `regs` and
//! enters the guest. A VM exit lands at `rkvm_vmx_exit` (HOST_RIP) with the guest's registers
//! live: they are stored back into `regs`, the host's are restored, and 0 is returned. If the
//! VMLAUNCH/VMRESUME instruction itself fails (VMfail), execution continues after it and 1 is
//! returned; the caller reads the VM-instruction error field.
//!
//! Everything else about host state (CR2, DR7, MSRs, FPU, interrupts) is handled by the caller in
//! Rust, with interrupts disabled around this call.

use crate::ffi::bindings as b;

/// The guest's general-purpose registers, in the x86 encoding order (RSP is unused: the VMCS
/// holds it).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct GuestRegs {
    pub(crate) gpr: [u64; 16],
}

/// Register numbers (the ModRM/VMCS encoding) used by exit handlers.
pub(crate) const RAX: usize = 0;
pub(crate) const RCX: usize = 1;
pub(crate) const RDX: usize = 2;
pub(crate) const RBX: usize = 3;
pub(crate) const RSP: usize = 4;
pub(crate) const RSI: usize = 6;
pub(crate) const RDI: usize = 7;

core::arch::global_asm!(
    ".pushsection .text",
    ".globl rkvm_vmx_enter",
    ".type rkvm_vmx_enter, @function",
    "rkvm_vmx_enter:",
    "endbr64",
    "push rbp",
    "mov rbp, rsp",
    "push r15",
    "push r14",
    "push r13",
    "push r12",
    "push rbx",
    // [rsp] = regs: the exit path finds it there.
    "push rdi",
    "mov eax, {host_rsp}",
    "vmwrite rax, rsp",
    // ZF from `launched` survives the register loads below (MOV does not touch flags).
    "test esi, esi",
    "mov rax, [rdi + 0*8]",
    "mov rcx, [rdi + 1*8]",
    "mov rdx, [rdi + 2*8]",
    "mov rbx, [rdi + 3*8]",
    "mov rbp, [rdi + 5*8]",
    "mov rsi, [rdi + 6*8]",
    "mov r8,  [rdi + 8*8]",
    "mov r9,  [rdi + 9*8]",
    "mov r10, [rdi + 10*8]",
    "mov r11, [rdi + 11*8]",
    "mov r12, [rdi + 12*8]",
    "mov r13, [rdi + 13*8]",
    "mov r14, [rdi + 14*8]",
    "mov r15, [rdi + 15*8]",
    "mov rdi, [rdi + 7*8]",
    "jnz 2f",
    "vmlaunch",
    "jmp 3f",
    "2:",
    "vmresume",
    // Falling through VMLAUNCH/VMRESUME means VMfail, which always sets CF or ZF, so the
    // `jna` is always taken. It is conditional so that objtool sees the exit path below as
    // reachable (it is: by VM exit, through HOST_RIP).
    "3:",
    "jna 5f",
    ".globl rkvm_vmx_exit",
    "rkvm_vmx_exit:",
    "endbr64",
    // VM exit: RSP is HOST_RSP (pointing at the saved `regs`), every GPR holds the guest's.
    "push rdi",
    "mov rdi, [rsp + 8]",
    "mov [rdi + 0*8], rax",
    "mov [rdi + 1*8], rcx",
    "mov [rdi + 2*8], rdx",
    "mov [rdi + 3*8], rbx",
    "mov [rdi + 5*8], rbp",
    "mov [rdi + 6*8], rsi",
    "mov [rdi + 8*8], r8",
    "mov [rdi + 9*8], r9",
    "mov [rdi + 10*8], r10",
    "mov [rdi + 11*8], r11",
    "mov [rdi + 12*8], r12",
    "mov [rdi + 13*8], r13",
    "mov [rdi + 14*8], r14",
    "mov [rdi + 15*8], r15",
    "pop qword ptr [rdi + 7*8]",
    "xor eax, eax",
    "jmp 4f",
    // VMfail: the guest's values are in the registers but we are still the host.
    "5:",
    "mov eax, 1",
    "4:",
    "add rsp, 8",
    "pop rbx",
    "pop r12",
    "pop r13",
    "pop r14",
    "pop r15",
    "pop rbp",
    "ret",
    ".size rkvm_vmx_enter, . - rkvm_vmx_enter",
    ".popsection",
    host_rsp = const b::vmcs_field::HOST_RSP,
);

// `rkvm_vmx_do_interrupt(entry)`: calls the host's interrupt entry point `entry` as the CPU would
// have delivered the interrupt here: a 64-bit interrupt frame (SS, RSP, RFLAGS, CS, RIP) on a
// 16-byte aligned stack. The handler returns with IRETQ, which pops the frame, so RFLAGS (IF=0)
// and the stack come back as they were (upstream: vmx_do_interrupt_irqoff in vmenter.S).
core::arch::global_asm!(
    ".pushsection .text",
    ".globl rkvm_vmx_do_interrupt",
    ".type rkvm_vmx_do_interrupt, @function",
    "rkvm_vmx_do_interrupt:",
    "endbr64",
    "push rbp",
    "mov rbp, rsp",
    "and rsp, -16",
    "push {kernel_ds}",
    "push rbp",
    "pushfq",
    "push {kernel_cs}",
    "call rdi",
    "leave",
    "ret",
    ".size rkvm_vmx_do_interrupt, . - rkvm_vmx_do_interrupt",
    ".popsection",
    kernel_ds = const b::__KERNEL_DS,
    kernel_cs = const b::__KERNEL_CS,
);

extern "C" {
    fn rkvm_vmx_enter(regs: *mut GuestRegs, launched: u32) -> u32;
    fn rkvm_vmx_exit();
    fn rkvm_vmx_do_interrupt(entry: usize);
}

/// The address VM exits land at (HOST_RIP).
pub(crate) fn exit_rip() -> u64 {
    rkvm_vmx_exit as *const () as u64
}

/// Enters the guest once; returns `true` on a VM exit, `false` if VMLAUNCH/VMRESUME failed.
///
/// # Safety
///
/// The vCPU's VMCS must be current on this CPU with every host-state field describing this CPU
/// now (HOST_RIP = [`exit_rip`]); interrupts must be disabled; `launched` must say whether
/// VMLAUNCH succeeded on this VMCS since its last VMCLEAR.
pub(crate) unsafe fn enter(regs: &mut GuestRegs, launched: bool) -> bool {
    // SAFETY: per the function's contract; the routine preserves the callee-saved registers and
    // the stack, and writes only `regs`.
    unsafe { rkvm_vmx_enter(regs, launched as u32) == 0 }
}

/// Runs the host's handler for the external interrupt `vector`, which a VM exit acknowledged
/// (VM_EXIT_ACK_INTR_ON_EXIT): it is no longer pending in the local APIC, so nothing else would.
///
/// # Safety
///
/// Interrupts must be disabled, on the CPU whose exit acknowledged `vector`, with the host's
/// descriptor tables back in place.
pub(crate) unsafe fn deliver_host_interrupt(vector: u8) {
    // SAFETY: reads this CPU's IDT (or, with FRED, delivers the interrupt itself and returns 0).
    let entry = unsafe { b::rkvm_host_irq_entry(vector.into()) };
    if entry != 0 {
        // SAFETY: `entry` is the kernel's own IDT gate for `vector`; it expects exactly the frame
        // the trampoline builds and returns with IRETQ to it, preserving every register.
        unsafe { rkvm_vmx_do_interrupt(entry) };
    }
}

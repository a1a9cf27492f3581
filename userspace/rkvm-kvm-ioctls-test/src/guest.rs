//! The 64-bit guest program, hand-assembled, and the exits it must cause, in order.
//!
//! Pure: [`build`] returns the code bytes and the expected exits; `main.rs` loads the code at
//! [`layout::CODE`], runs it and compares every exit. Each piece of code is listed next to its
//! assembly (Intel syntax); the host tests check the encodings against GNU as output.
//!
//! What the guest does, in order (all in 64-bit mode, CPL 0, no IDT: any exception would end
//! in a triple fault, i.e. `KVM_EXIT_SHUTDOWN`):
//! 1. WRMSR of STAR, LSTAR, SFMASK, SYSENTER_EIP, KERNEL_GS_BASE and FS_BASE; SWAPGS (GS base
//!    and KERNEL_GS_BASE exchange); RDMSR of SYSENTER_ESP (set by userspace with
//!    KVM_SET_MSRS) and of KERNEL_GS_BASE (now the GS base userspace set in sregs), each
//!    echoed as two 32-bit OUTs to [`PORT_ECHO`].
//! 2. CPUID leaf 0 (vendor) and leaf 0x40000000 (the hypervisor signature, which the test
//!    replaced in the table it set with KVM_SET_CPUID2): EAX, EBX, ECX, EDX echoed.
//! 3. With XSAVE: XGETBV (echo: 1, the reset XCR0), XSETBV XCR0 = x87|SSE, XGETBV (echo: 3).
//!    Then CPUID.1:ECX, whose OSXSAVE bit must follow CR4.OSXSAVE.
//! 4. LDMXCSR, MOVDQU XMM0 and FLD1, then a 1-byte OUT to [`PORT_SYNC`] at which userspace
//!    checks KVM_GET_FPU and puts a value in XMM1 with KVM_SET_FPU; the guest echoes XMM1.
//! 5. OUT of 1, 2 and 4 bytes (imm8 and DX ports); IN of 1, 2 and 4 bytes, each value stored
//!    to [`layout::DATA`] and echoed.
//! 6. MMIO at [`layout::MMIO`] (no slot): an 8-byte and a 1-byte write, an 8-byte read into
//!    RSI (echoed) and a 4-byte read into ECX (which zero-extends into RCX; echoed).
//! 7. A read of the READONLY slot into RBX (no exit; without the slot, an MMIO read answered
//!    with the same bytes) and a 4-byte write to it (an MMIO write exit; memory unchanged).
//! 8. STMXCSR (MXCSR must have survived the exits); MOV R12, imm64; LEA R14, [R13+0x100] (R13
//!    is set by userspace); HLT.

use crate::layout::{DATA, MMIO, RO_SLOT};

/// Port of the 1-byte OUT with an imm8 port.
pub const PORT_OUT: u16 = 0xe0;
/// Port (in DX) of the 2- and 4-byte OUTs.
pub const PORT_OUT_DX: u16 = 0x5e0;
/// Port of the 1-byte IN with an imm8 port.
pub const PORT_IN: u16 = 0xe4;
/// Port (in DX) of the 2- and 4-byte INs.
pub const PORT_IN_DX: u16 = 0x5e4;
/// The guest echoes values here (OUT imm8).
pub const PORT_ECHO: u16 = 0xe8;
/// A 1-byte OUT here is a point where userspace does something (see [`Hook`]).
pub const PORT_SYNC: u16 = 0xe9;

/// MSR numbers.
pub const MSR_SYSENTER_ESP: u32 = 0x175;
/// `IA32_SYSENTER_EIP`.
pub const MSR_SYSENTER_EIP: u32 = 0x176;
/// `IA32_STAR`.
pub const MSR_STAR: u32 = 0xc000_0081;
/// `IA32_LSTAR`.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// `IA32_FMASK`.
pub const MSR_SFMASK: u32 = 0xc000_0084;
/// `IA32_FS_BASE`.
pub const MSR_FS_BASE: u32 = 0xc000_0100;
/// `IA32_KERNEL_GS_BASE`.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// Values the guest writes with WRMSR (all valid: canonical addresses, SFMASK < 2^32).
pub const STAR_VAL: u64 = 0x0023_0010_0000_0000;
/// LSTAR.
pub const LSTAR_VAL: u64 = 0xffff_ffff_8100_0000;
/// SFMASK.
pub const SFMASK_VAL: u64 = 0x0004_7700;
/// SYSENTER_EIP.
pub const SYSENTER_EIP_VAL: u64 = 0xffff_ffff_8123_4560;
/// KERNEL_GS_BASE before SWAPGS (the GS base after it).
pub const KGS_VAL: u64 = 0xffff_8880_1234_5000;
/// FS_BASE.
pub const FS_VAL: u64 = 0x0000_7f00_dead_b000;
/// The GS base userspace sets in sregs (KERNEL_GS_BASE after SWAPGS).
pub const GS_INIT: u64 = 0x0000_1234_5678_9000;
/// SYSENTER_ESP as userspace sets it with KVM_SET_MSRS before the run.
pub const SYSENTER_ESP_VAL: u64 = 0xffff_c900_0000_8000;

/// Port input data userspace supplies.
pub const IN8: u8 = 0xa5;
/// 2-byte IN.
pub const IN16: u16 = 0xbeef;
/// 4-byte IN.
pub const IN32: u32 = 0x1234_5678;
/// MMIO: written by the guest.
pub const MMIO_W64: u64 = 0x1122_3344_5566_7788;
/// MMIO: 1-byte write.
pub const MMIO_W8: u8 = 0x5a;
/// MMIO: what userspace answers to the 8-byte read.
pub const MMIO_R64: u64 = 0x0123_4567_89ab_cdef;
/// MMIO: what userspace answers to the 4-byte read.
pub const MMIO_R32: u32 = 0xfeed_cafe;
/// The first 8 bytes of the READONLY slot.
pub const RO_PATTERN: u64 = 0x0f1e_2d3c_4b5a_6978;
/// What the guest tries to write at RO_SLOT + 8.
pub const RO_WRITE: u32 = 0xc0ff_ee00;
/// MXCSR the guest loads (all exceptions masked, round toward zero).
pub const MXCSR_VAL: u32 = 0x7f80;
/// XMM0 the guest loads from [`XMM0_ADDR`].
pub const XMM0_VAL: [u8; 16] = [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f];
/// XMM1 as userspace sets it with KVM_SET_FPU at the sync point.
pub const XMM1_VAL: [u8; 16] = [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf];
/// 1.0 as an 80-bit x87 value (what FLD1 leaves in ST0).
pub const ST_ONE: [u8; 10] = [0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f];
/// R12 at the end.
pub const R12_VAL: u64 = 0x1212_3434_5656_7878;
/// R13 as userspace sets it (the guest only reads it).
pub const R13_INIT: u64 = 0x1313_1313_1313_1313;

/// Where the guest stores the 1-, 2- and 4-byte IN values (at +0, +2, +4).
pub const IN_STORE: u64 = DATA;
/// Where userspace leaves [`MXCSR_VAL`] for LDMXCSR.
pub const MXCSR_ADDR: u64 = DATA + 0x10;
/// Where the guest stores MXCSR at the end (STMXCSR).
pub const MXCSR_STORE: u64 = DATA + 0x14;
/// Where userspace leaves [`XMM0_VAL`] for MOVDQU.
pub const XMM0_ADDR: u64 = DATA + 0x20;

/// Something userspace does at a [`PORT_SYNC`] exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// KVM_GET_FPU must show MXCSR, XMM0 and ST0 as the guest set them; then KVM_SET_FPU
    /// with XMM1 = [`XMM1_VAL`].
    FpuMidRun,
}

/// One exit the guest must cause, with the data userspace must see or supply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `VcpuExit::IoOut(port, data)`.
    Out { port: u16, data: Vec<u8> },
    /// `VcpuExit::IoIn(port, data)` with `data.len() == reply.len()`; userspace fills `reply`.
    In { port: u16, reply: Vec<u8> },
    /// `VcpuExit::MmioWrite(addr, data)`.
    MmioWrite { addr: u64, data: Vec<u8> },
    /// `VcpuExit::MmioRead(addr, data)` with `data.len() == reply.len()`.
    MmioRead { addr: u64, reply: Vec<u8> },
    /// A 1-byte OUT of `hook as u8 + 1` to [`PORT_SYNC`], then the hook.
    Sync(Hook),
    /// `VcpuExit::Hlt`.
    Hlt,
}

/// An expected exit and what the guest was doing.
#[derive(Clone, Debug)]
pub struct Expected {
    /// The exit.
    pub exit: Exit,
    /// For diagnostics.
    pub what: &'static str,
}

/// What the program depends on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Params {
    /// CR4.OSXSAVE is set and the guest does XGETBV/XSETBV.
    pub xsave: bool,
    /// [`RO_SLOT`] is a READONLY slot (else it is unbacked and the read exits too).
    pub ro_slot: bool,
    /// The CPUID table entries for leaf 0 and leaf 0x40000000 (EAX, EBX, ECX, EDX).
    pub leaf0: [u32; 4],
    /// Leaf 0x40000000.
    pub leaf_hv: [u32; 4],
    /// CPUID.1:ECX in the table.
    pub leaf1_ecx: u32,
}

/// The code and its exits.
#[derive(Clone, Debug)]
pub struct Program {
    /// Code bytes, loaded at [`crate::layout::CODE`].
    pub code: Vec<u8>,
    /// The exits, in order; the last is [`Exit::Hlt`].
    pub exits: Vec<Expected>,
}

/// A tiny assembler: appends bytes and little-endian immediates.
#[derive(Default)]
pub struct Asm {
    /// The code so far.
    pub code: Vec<u8>,
}

impl Asm {
    /// Raw instruction bytes.
    pub fn b(&mut self, bytes: &[u8]) -> &mut Self {
        self.code.extend_from_slice(bytes);
        self
    }
    fn i32(&mut self, v: u32) -> &mut Self {
        self.b(&v.to_le_bytes())
    }
    fn i64(&mut self, v: u64) -> &mut Self {
        self.b(&v.to_le_bytes())
    }

    /// `mov eax, imm32` (B8 id; zero-extends into RAX).
    pub fn mov_eax(&mut self, v: u32) -> &mut Self {
        self.b(&[0xb8]).i32(v)
    }
    /// `mov ecx, imm32` (B9 id).
    pub fn mov_ecx(&mut self, v: u32) -> &mut Self {
        self.b(&[0xb9]).i32(v)
    }
    /// `mov edx, imm32` (BA id).
    pub fn mov_edx(&mut self, v: u32) -> &mut Self {
        self.b(&[0xba]).i32(v)
    }
    /// `wrmsr` of `v` to `msr`: `mov ecx, msr; mov eax, lo; mov edx, hi; wrmsr` (0F 30).
    pub fn wrmsr(&mut self, msr: u32, v: u64) -> &mut Self {
        self.mov_ecx(msr).mov_eax(v as u32).mov_edx((v >> 32) as u32).b(&[0x0f, 0x30])
    }
    /// `mov ecx, msr; rdmsr` (0F 32), then EAX and EDX echoed: `out 0xe8, eax` (E7 ib);
    /// `mov eax, edx` (89 D0); `out 0xe8, eax`.
    pub fn rdmsr_echo(&mut self, msr: u32) -> &mut Self {
        self.mov_ecx(msr).b(&[0x0f, 0x32]).echo_eax().b(&[0x89, 0xd0]).echo_eax()
    }
    /// `out PORT_ECHO, eax` (E7 ib).
    pub fn echo_eax(&mut self) -> &mut Self {
        self.b(&[0xe7, PORT_ECHO as u8])
    }
    /// RAX as two 32-bit echoes: `out 0xe8, eax; shr rax, 32` (48 C1 E8 20); `out 0xe8, eax`.
    pub fn echo_rax(&mut self) -> &mut Self {
        self.echo_eax().b(&[0x48, 0xc1, 0xe8, 0x20]).echo_eax()
    }
    /// `mov eax, leaf; xor ecx, ecx` (31 C9); `cpuid` (0F A2), then EAX, EBX, ECX, EDX echoed
    /// (`mov eax, ebx` 89 D8, `mov eax, ecx` 89 C8, `mov eax, edx` 89 D0).
    pub fn cpuid_echo(&mut self, leaf: u32) -> &mut Self {
        self.mov_eax(leaf).b(&[0x31, 0xc9, 0x0f, 0xa2]).echo_eax();
        self.b(&[0x89, 0xd8]).echo_eax().b(&[0x89, 0xc8]).echo_eax().b(&[0x89, 0xd0]).echo_eax()
    }
}

fn le32(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn echo32(v: u32, what: &'static str) -> Expected {
    Expected { exit: Exit::Out { port: PORT_ECHO, data: le32(v) }, what }
}

fn echo64(v: u64, what: &'static str) -> [Expected; 2] {
    [echo32(v as u32, what), echo32((v >> 32) as u32, what)]
}

/// The program for `p`.
pub fn build(p: &Params) -> Program {
    let mut a = Asm::default();
    let mut x: Vec<Expected> = Vec::new();
    let d32 = |v: u64| -> [u8; 4] { (v as u32).to_le_bytes() };

    // 1. MSRs.
    a.wrmsr(MSR_STAR, STAR_VAL);
    a.wrmsr(MSR_LSTAR, LSTAR_VAL);
    a.wrmsr(MSR_SFMASK, SFMASK_VAL);
    a.wrmsr(MSR_SYSENTER_EIP, SYSENTER_EIP_VAL);
    a.wrmsr(MSR_KERNEL_GS_BASE, KGS_VAL);
    a.wrmsr(MSR_FS_BASE, FS_VAL);
    a.b(&[0x0f, 0x01, 0xf8]); // swapgs
    a.rdmsr_echo(MSR_SYSENTER_ESP);
    x.extend(echo64(SYSENTER_ESP_VAL, "RDMSR SYSENTER_ESP (set by KVM_SET_MSRS)"));
    a.rdmsr_echo(MSR_KERNEL_GS_BASE);
    x.extend(echo64(GS_INIT, "RDMSR KERNEL_GS_BASE after SWAPGS (the sregs GS base)"));

    // 2. CPUID.
    a.cpuid_echo(0);
    for v in p.leaf0 {
        x.push(echo32(v, "CPUID leaf 0 (EAX, EBX, ECX, EDX)"));
    }
    a.cpuid_echo(0x4000_0000);
    for v in p.leaf_hv {
        x.push(echo32(v, "CPUID leaf 0x40000000 (as set by KVM_SET_CPUID2)"));
    }

    // 3. XCR0.
    if p.xsave {
        a.b(&[0x31, 0xc9]); //           xor ecx, ecx
        a.b(&[0x0f, 0x01, 0xd0]); //     xgetbv
        a.echo_eax();
        x.push(echo32(1, "XGETBV: XCR0 at reset (x87)"));
        a.mov_eax(3); //                  mov eax, 3 (x87 | SSE)
        a.b(&[0x31, 0xd2]); //           xor edx, edx
        a.b(&[0x0f, 0x01, 0xd1]); //     xsetbv
        a.b(&[0x31, 0xc9, 0x0f, 0x01, 0xd0]); // xor ecx, ecx; xgetbv
        a.echo_eax();
        x.push(echo32(3, "XGETBV after XSETBV"));
    }

    // CPUID.1:ECX, whose OSXSAVE bit (27) follows CR4.OSXSAVE (KVM updates it at run time).
    a.mov_eax(1).b(&[0x31, 0xc9, 0x0f, 0xa2]); //  mov eax, 1; xor ecx, ecx; cpuid
    a.b(&[0x89, 0xc8]).echo_eax(); //               mov eax, ecx; out PORT_ECHO, eax
    let osxsave = 1 << 27;
    let ecx1 = if p.xsave { p.leaf1_ecx | osxsave } else { p.leaf1_ecx & !osxsave };
    x.push(echo32(ecx1, "CPUID.1:ECX (OSXSAVE = CR4.OSXSAVE)"));

    // 4. FPU / SSE state.
    a.b(&[0x0f, 0xae, 0x14, 0x25]).b(&d32(MXCSR_ADDR)); //       ldmxcsr [MXCSR_ADDR]
    a.b(&[0xf3, 0x0f, 0x6f, 0x04, 0x25]).b(&d32(XMM0_ADDR)); //  movdqu xmm0, [XMM0_ADDR]
    a.b(&[0xd9, 0xe8]); //                                       fld1
    a.b(&[0xb0, Hook::FpuMidRun as u8 + 1, 0xe6, PORT_SYNC as u8]); // mov al, 1; out PORT_SYNC, al
    x.push(Expected { exit: Exit::Sync(Hook::FpuMidRun), what: "sync: KVM_GET_FPU/KVM_SET_FPU mid-run" });
    a.b(&[0x66, 0x48, 0x0f, 0x7e, 0xc8]); // movq rax, xmm1
    a.echo_rax();
    a.b(&[0x0f, 0x12, 0xd1]); //             movhlps xmm2, xmm1
    a.b(&[0x66, 0x48, 0x0f, 0x7e, 0xd0]); // movq rax, xmm2
    a.echo_rax();
    let xmm1 = u128::from_le_bytes(XMM1_VAL);
    x.extend(echo64(xmm1 as u64, "XMM1 low half (set by KVM_SET_FPU)"));
    x.extend(echo64((xmm1 >> 64) as u64, "XMM1 high half (set by KVM_SET_FPU)"));

    // 5. Port I/O.
    a.b(&[0xb0, 0x11, 0xe6, PORT_OUT as u8]); //    mov al, 0x11; out PORT_OUT, al
    x.push(Expected { exit: Exit::Out { port: PORT_OUT, data: vec![0x11] }, what: "OUT imm8, AL" });
    a.mov_edx(PORT_OUT_DX.into()); //                mov edx, PORT_OUT_DX
    a.b(&[0x66, 0xb8, 0x33, 0x22, 0x66, 0xef]); //  mov ax, 0x2233; out dx, ax
    x.push(Expected { exit: Exit::Out { port: PORT_OUT_DX, data: vec![0x33, 0x22] }, what: "OUT DX, AX" });
    a.mov_eax(0x4455_6677).b(&[0xef]); //            mov eax, 0x44556677; out dx, eax
    x.push(Expected { exit: Exit::Out { port: PORT_OUT_DX, data: le32(0x4455_6677) }, what: "OUT DX, EAX" });
    a.b(&[0xe4, PORT_IN as u8]); //                  in al, PORT_IN
    a.b(&[0x88, 0x04, 0x25]).b(&d32(IN_STORE)); //   mov [IN_STORE], al
    a.b(&[0xe6, PORT_ECHO as u8]); //                out PORT_ECHO, al
    x.push(Expected { exit: Exit::In { port: PORT_IN, reply: vec![IN8] }, what: "IN AL, imm8" });
    x.push(Expected { exit: Exit::Out { port: PORT_ECHO, data: vec![IN8] }, what: "echo of the 1-byte IN" });
    a.mov_edx(PORT_IN_DX.into()); //                 mov edx, PORT_IN_DX
    a.b(&[0x66, 0xed]); //                           in ax, dx
    a.b(&[0x66, 0x89, 0x04, 0x25]).b(&d32(IN_STORE + 2)); // mov [IN_STORE+2], ax
    a.b(&[0x66, 0xe7, PORT_ECHO as u8]); //          out PORT_ECHO, ax
    x.push(Expected { exit: Exit::In { port: PORT_IN_DX, reply: IN16.to_le_bytes().to_vec() }, what: "IN AX, DX" });
    x.push(Expected { exit: Exit::Out { port: PORT_ECHO, data: IN16.to_le_bytes().to_vec() }, what: "echo of the 2-byte IN" });
    a.b(&[0xed]); //                                 in eax, dx
    a.b(&[0x89, 0x04, 0x25]).b(&d32(IN_STORE + 4)); // mov [IN_STORE+4], eax
    a.echo_eax();
    x.push(Expected { exit: Exit::In { port: PORT_IN_DX, reply: le32(IN32) }, what: "IN EAX, DX" });
    x.push(echo32(IN32, "echo of the 4-byte IN"));

    // 6. MMIO.
    a.b(&[0xbf]).b(&d32(MMIO)); //                   mov edi, MMIO
    a.b(&[0x48, 0xb8]).i64(MMIO_W64); //             mov rax, MMIO_W64
    a.b(&[0x48, 0x89, 0x07]); //                     mov [rdi], rax
    x.push(Expected { exit: Exit::MmioWrite { addr: MMIO, data: MMIO_W64.to_le_bytes().to_vec() }, what: "MOV [RDI], RAX" });
    a.b(&[0xc6, 0x47, 0x10, MMIO_W8]); //            mov byte [rdi+0x10], MMIO_W8
    x.push(Expected { exit: Exit::MmioWrite { addr: MMIO + 0x10, data: vec![MMIO_W8] }, what: "MOV BYTE [RDI+0x10], imm8" });
    a.b(&[0x48, 0x8b, 0x77, 0x08]); //               mov rsi, [rdi+8]
    a.b(&[0x48, 0x89, 0xf0]); //                     mov rax, rsi
    a.echo_rax();
    x.push(Expected { exit: Exit::MmioRead { addr: MMIO + 8, reply: MMIO_R64.to_le_bytes().to_vec() }, what: "MOV RSI, [RDI+8]" });
    x.extend(echo64(MMIO_R64, "echo of the 8-byte MMIO read"));
    a.b(&[0x48, 0xc7, 0xc1, 0xff, 0xff, 0xff, 0xff]); // mov rcx, -1
    a.b(&[0x8b, 0x4f, 0x20]); //                     mov ecx, [rdi+0x20]
    a.b(&[0x89, 0xc8]); //                           mov eax, ecx
    a.echo_eax();
    x.push(Expected { exit: Exit::MmioRead { addr: MMIO + 0x20, reply: le32(MMIO_R32) }, what: "MOV ECX, [RDI+0x20]" });
    x.push(echo32(MMIO_R32, "echo of the 4-byte MMIO read"));

    // 7. The READONLY slot.
    a.b(&[0x48, 0x8b, 0x1c, 0x25]).b(&d32(RO_SLOT)); // mov rbx, [RO_SLOT]
    if !p.ro_slot {
        x.push(Expected {
            exit: Exit::MmioRead { addr: RO_SLOT, reply: RO_PATTERN.to_le_bytes().to_vec() },
            what: "MOV RBX, [RO_SLOT] (no READONLY slot: MMIO)",
        });
    }
    a.b(&[0xc7, 0x04, 0x25]).b(&d32(RO_SLOT + 8)).i32(RO_WRITE); // mov dword [RO_SLOT+8], RO_WRITE
    x.push(Expected { exit: Exit::MmioWrite { addr: RO_SLOT + 8, data: le32(RO_WRITE) }, what: "MOV DWORD [RO_SLOT+8], imm32" });

    // 8. MXCSR stored (it must have survived every exit and the KVM_SET_FPU), registers left
    // for KVM_GET_REGS, and HLT.
    a.b(&[0x0f, 0xae, 0x1c, 0x25]).b(&d32(MXCSR_STORE)); //    stmxcsr [MXCSR_STORE]
    a.b(&[0x49, 0xbc]).i64(R12_VAL); //                        mov r12, R12_VAL
    a.b(&[0x4d, 0x8d, 0xb5, 0x00, 0x01, 0x00, 0x00]); //      lea r14, [r13+0x100]
    a.b(&[0xf4]); //                                           hlt
    x.push(Expected { exit: Exit::Hlt, what: "HLT" });

    Program { code: a.code, exits: x }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The expected bytes come from GNU as 2.40 (`as --64 -msyntax=intel -mnaked-reg`).
    #[test]
    fn composite_encodings() {
        let mut a = Asm::default();
        a.wrmsr(0xc000_0102, 0xffff_8880_1234_5000);
        // mov ecx,0xc0000102; mov eax,0x12345000; mov edx,0xffff8880; wrmsr
        assert_eq!(
            a.code,
            [0xb9, 0x02, 0x01, 0x00, 0xc0, 0xb8, 0x00, 0x50, 0x34, 0x12, 0xba, 0x80, 0x88, 0xff, 0xff, 0x0f, 0x30]
        );
        let mut a = Asm::default();
        a.rdmsr_echo(0x175);
        // mov ecx,0x175; rdmsr; out 0xe8,eax; mov eax,edx; out 0xe8,eax
        assert_eq!(a.code, [0xb9, 0x75, 0x01, 0x00, 0x00, 0x0f, 0x32, 0xe7, 0xe8, 0x89, 0xd0, 0xe7, 0xe8]);
        let mut a = Asm::default();
        a.cpuid_echo(0x4000_0000);
        // mov eax,0x40000000; xor ecx,ecx; cpuid; out; mov eax,ebx; out; mov eax,ecx; out; mov eax,edx; out
        assert_eq!(
            a.code,
            [
                0xb8, 0x00, 0x00, 0x00, 0x40, 0x31, 0xc9, 0x0f, 0xa2, 0xe7, 0xe8, 0x89, 0xd8, 0xe7, 0xe8, 0x89, 0xc8,
                0xe7, 0xe8, 0x89, 0xd0, 0xe7, 0xe8
            ]
        );
        let mut a = Asm::default();
        a.echo_rax();
        // out 0xe8,eax; shr rax,32; out 0xe8,eax
        assert_eq!(a.code, [0xe7, 0xe8, 0x48, 0xc1, 0xe8, 0x20, 0xe7, 0xe8]);
    }

    #[test]
    fn program_shape() {
        for (xsave, ro_slot) in [(false, false), (false, true), (true, false), (true, true)] {
            let p = build(&Params { xsave, ro_slot, leaf0: [0xd, 1, 2, 3], leaf_hv: [4, 5, 6, 7], leaf1_ecx: 0 });
            assert_eq!(p.code.last(), Some(&0xf4));
            assert_eq!(p.exits.last().map(|e| &e.exit), Some(&Exit::Hlt));
            assert_eq!(p.exits.iter().filter(|e| e.exit == Exit::Hlt).count(), 1);
            let n_xsave = if xsave { 2 } else { 0 };
            let n_ro = if ro_slot { 1 } else { 2 };
            // 4 MSR echoes, 9 CPUID echoes, sync + 4 XMM1 echoes, 3 OUTs, 3 INs + 3 echoes,
            // 2 MMIO writes, 2 MMIO reads + 3 echoes, RO slot, HLT.
            assert_eq!(p.exits.len(), 4 + 9 + n_xsave + 5 + 3 + 6 + 2 + 5 + n_ro + 1);
            assert!(p.code.len() < 0x1000);
        }
    }

    #[test]
    fn program_ends_with_lea_and_hlt() {
        // RIP after the HLT exit is CODE + len: HLT is the last byte.
        let p = build(&Params::default());
        let n = p.code.len();
        assert_eq!(p.code[n - 8..], [0x4d, 0x8d, 0xb5, 0x00, 0x01, 0x00, 0x00, 0xf4]);
    }
}

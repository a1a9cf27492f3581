//! Random guests: a CPU mode's tables (rkvm-run's `setup.rs`), an optional IDT whose every
//! vector IRETs, and code that is a random sequence of instructions that exit (port and string
//! I/O, MMIO of every width, CPUID, MSRs, CR/DR moves, XSETBV, HLT, ...) with random operands,
//! or pure random bytes (pure; host-tested).

#[path = "../../rkvm-run/src/setup.rs"]
#[allow(dead_code)]
mod setup;

use crate::rng::Rng;
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
pub use setup::Mode;

/// The least RAM at guest-physical 0 a guest needs (tables below 0x6000, IDT at 0x6000, stack
/// below 0x7f00, handler at 0x7f00, code from 0x8000).
pub const RAM_MIN: u64 = 0x1_0000;
pub const CODE: u64 = 0x8000;
const IDT: u64 = 0x6000;
const HANDLER: u64 = 0x7f00;
const STACK: u64 = 0x7e00;

pub const MODES: [Mode; 4] = [Mode::Real, Mode::Prot32, Mode::Paged32, Mode::Long64];

/// What the guest should aim at besides its usual targets: the VM's ioeventfds (port or address,
/// length, the data they match), MSRs a filter covers.
#[derive(Default, Clone, Debug)]
pub struct Hints {
    pub ports: Vec<(u16, u32, Option<u64>)>,
    pub mmio: Vec<(u64, u32, Option<u64>)>,
    pub msrs: Vec<u32>,
}

impl Hints {
    fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.mmio.is_empty() && self.msrs.is_empty()
    }
}

/// Writes a guest for `mode` into `mem` (RAM from guest-physical 0, at least [`RAM_MIN`]) and
/// sets `sregs` (starting from the vCPU's current ones) and `regs`.
pub fn build(rng: &mut Rng, mode: Mode, hints: &Hints, mem: &mut [u8], sregs: &mut kvm_sregs, regs: &mut kvm_regs) {
    let real = mode == Mode::Real;
    if real {
        real_mode_sregs(sregs);
    } else {
        sregs.ldt = kvm_segment { type_: 2, present: 1, limit: 0xffff, ..Default::default() };
    }
    setup::setup(mode, mem, sregs, regs, CODE, STACK);
    if mode == Mode::Long64 && rng.percent(60) {
        sregs.cr4 |= 0x600 | if rng.percent(50) { 0x4_0000 } else { 0 }; // OSFXSR|OSXMMEXCPT, OSXSAVE
    }
    if rng.percent(70) {
        write_idt(mode, mem, sregs);
    }
    // Registers: sometimes random operands left for the code.
    for r in [&mut regs.rax, &mut regs.rbx, &mut regs.rcx, &mut regs.rdx, &mut regs.rsi, &mut regs.rdi] {
        if rng.percent(30) {
            *r = rng.interesting();
        }
    }
    if rng.percent(10) {
        regs.rflags = 2 | (rng.interesting() & 0x3f_7fd5);
    } else if rng.percent(30) {
        regs.rflags |= 0x200; // IF
    }
    let mut code = Vec::new();
    if rng.percent(10) {
        code.resize(16 + rng.index(512), 0);
        rng.fill(&mut code);
    } else {
        let bits = match mode {
            Mode::Real => 16,
            Mode::Long64 => 64,
            _ => 32,
        };
        for _ in 0..1 + rng.below(12) {
            if !hints.is_empty() && rng.percent(40) {
                emit_hinted(rng, bits, hints, &mut code);
            } else {
                emit(rng, bits, &mut code);
            }
        }
        if rng.percent(85) {
            code.push(0xf4); // hlt
        }
        let mut tail = [0u8; 8];
        rng.fill(&mut tail);
        code.extend_from_slice(&tail[..rng.index(9)]);
    }
    let at = CODE as usize;
    let n = code.len().min(mem.len() - at);
    mem[at..at + n].copy_from_slice(&code[..n]);
}

fn real_mode_sregs(s: &mut kvm_sregs) {
    let data = kvm_segment { base: 0, limit: 0xffff, selector: 0, type_: 3, present: 1, s: 1, ..Default::default() };
    s.cs = kvm_segment { type_: 0xb, ..data };
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = kvm_segment { type_: 0xb, s: 0, ..data };
    s.ldt = kvm_segment { type_: 2, s: 0, ..data };
    s.gdt.base = 0;
    s.gdt.limit = 0xffff;
    s.idt.base = 0;
    s.idt.limit = 0x3ff;
    s.cr0 = 0x6000_0010;
    s.cr3 = 0;
    s.cr4 = 0;
    s.efer = 0;
}

/// An interrupt table whose every vector runs IRET at [`HANDLER`] (real-mode IVT at 0).
fn write_idt(mode: Mode, mem: &mut [u8], s: &mut kvm_sregs) {
    match mode {
        Mode::Real => {
            for v in 0..256usize {
                mem[v * 4..v * 4 + 4].copy_from_slice(&(HANDLER as u32).to_le_bytes());
            }
            mem[HANDLER as usize] = 0xcf;
        }
        Mode::Long64 => {
            for v in 0..256usize {
                let g = IDT as usize + v * 16;
                let gate: u128 = (HANDLER & 0xffff) as u128
                    | (u128::from(setup::CODE_SEL) << 16)
                    | (0x8eu128 << 40)
                    | (((HANDLER >> 16) & 0xffff) as u128) << 48;
                mem[g..g + 16].copy_from_slice(&gate.to_le_bytes());
            }
            mem[HANDLER as usize..HANDLER as usize + 2].copy_from_slice(&[0x48, 0xcf]);
            s.idt.base = IDT;
            s.idt.limit = 256 * 16 - 1;
        }
        _ => {
            for v in 0..256usize {
                let g = IDT as usize + v * 8;
                let gate: u64 = (HANDLER & 0xffff) | (u64::from(setup::CODE_SEL) << 16) | (0x8e << 40) | ((HANDLER >> 16) << 48);
                mem[g..g + 8].copy_from_slice(&gate.to_le_bytes());
            }
            mem[HANDLER as usize] = 0xcf;
            s.idt.base = IDT;
            s.idt.limit = 256 * 8 - 1;
        }
    }
}

/// Interesting I/O ports: serial, POST, PIC, PIT, speaker, RTC, PCI config, ELCR, A20, debug.
const PORTS: &[u16] = &[0x3f8, 0x80, 0x20, 0x21, 0xa0, 0xa1, 0x40, 0x43, 0x61, 0x70, 0x71, 0xcf8, 0xcfc, 0x4d0, 0x4d1, 0x92, 0xe9, 0xffff];
/// MSRs a guest might touch.
const MSRS: &[u32] = &[
    0x10, 0x1b, 0x3a, 0x3b, 0x48, 0x49, 0x174, 0x175, 0x176, 0x1d9, 0x277, 0x6e0, 0x802, 0x808, 0x80b, 0x830, 0x838,
    0xc000_0080, 0xc000_0081, 0xc000_0082, 0xc000_0084, 0xc000_0100, 0xc000_0102, 0xc000_0103, 0xc001_0015,
];
/// Local APIC register offsets.
const APIC_REGS: &[u32] = &[0x20, 0x80, 0xb0, 0xd0, 0xe0, 0xf0, 0x300, 0x310, 0x320, 0x350, 0x370, 0x380, 0x3e0];

/// `mov r32, imm32` (the 0x66 prefix makes it 32-bit in real mode).
fn mov32(bits: u32, out: &mut Vec<u8>, reg: u8, imm: u32) {
    if bits == 16 {
        out.push(0x66);
    }
    out.push(0xb8 + reg);
    out.extend_from_slice(&imm.to_le_bytes());
}

/// `mov r16, imm16`.
fn mov16(bits: u32, out: &mut Vec<u8>, reg: u8, imm: u16) {
    if bits != 16 {
        out.push(0x66);
    }
    out.push(0xb8 + reg);
    out.extend_from_slice(&imm.to_le_bytes());
}

const EAX: u8 = 0;
const ECX: u8 = 1;
const EDX: u8 = 2;
const EBX: u8 = 3;
const ESI: u8 = 6;
const EDI: u8 = 7;

fn mmio_addr(rng: &mut Rng) -> u32 {
    match rng.below(6) {
        0 | 1 => 0xfee0_0000 + *rng.pick(APIC_REGS),
        2 => 0xfec0_0000 + *rng.pick(&[0u32, 0x10]),
        3 => *rng.pick(&[0xd000_0000u32, 0x10_0000, 0x4_0000, 0x9000, 0xffff_fff0]),
        _ => rng.next() as u32 & !3,
    }
}

/// The data of a write of `len` bytes to an ioeventfd: the value it matches mostly.
fn hint_data(rng: &mut Rng, dm: Option<u64>) -> u64 {
    match dm {
        Some(v) if rng.percent(70) => v,
        _ => rng.interesting(),
    }
}

/// Appends one instruction group aimed at a hint: a write (sometimes a read) of an ioeventfd's
/// port or address with its width and data, or RDMSR/WRMSR of a filtered MSR.
pub fn emit_hinted(rng: &mut Rng, bits: u32, h: &Hints, out: &mut Vec<u8>) {
    let pick = rng.below(3);
    if pick == 0 && !h.ports.is_empty() {
        let (port, len, dm) = *rng.pick(&h.ports);
        mov16(bits, out, EDX, port);
        mov32(bits, out, EAX, hint_data(rng, dm) as u32);
        let len = if matches!(len, 1 | 2 | 4) && rng.percent(80) { len } else { *rng.pick(&[1u32, 2, 4]) };
        let read = rng.percent(10);
        match (len, read) {
            (1, false) => out.push(0xee),
            (1, true) => out.push(0xec),
            (2, r) => {
                out.push(if bits == 16 { 0x90 } else { 0x66 });
                out.push(if r { 0xed } else { 0xef });
            }
            (_, r) => {
                if bits == 16 {
                    out.push(0x66);
                }
                out.push(if r { 0xed } else { 0xef });
            }
        }
    } else if pick == 1 && !h.mmio.is_empty() {
        let (addr, len, dm) = *rng.pick(&h.mmio);
        let data = hint_data(rng, dm);
        let m: u8 = if bits == 16 { 0x07 } else { 0x03 };
        if bits == 16 {
            if addr >= 0x10_0000 {
                return;
            }
            mov16(bits, out, EAX, (addr >> 4) as u16);
            out.extend_from_slice(&[0x8e, 0xd8]); // mov ds, ax
            mov16(bits, out, EBX, (addr & 0xf) as u16);
        } else {
            mov32(bits, out, EBX, addr as u32);
        }
        let read = rng.percent(10);
        if len == 8 && bits == 64 {
            out.extend_from_slice(&[0x48, 0xb8]); // mov rax, imm64
            out.extend_from_slice(&data.to_le_bytes());
            out.extend_from_slice(&[0x48, if read { 0x8b } else { 0x89 }, m]);
            return;
        }
        mov32(bits, out, EAX, data as u32);
        let op: &[u8] = match (len, read) {
            (1, false) => &[0x88],
            (1, true) => &[0x8a],
            (2, false) => &[0x66, 0x89],
            (2, true) => &[0x66, 0x8b],
            (_, false) => &[0x89],
            (_, true) => &[0x8b],
        };
        // In 16-bit code the operand-size prefix flips: 0x66 makes it 32-bit, none is 16-bit.
        match (bits, op) {
            (16, [0x66, rest]) => out.push(*rest),
            (16, [0x89]) | (16, [0x8b]) => {
                out.push(0x66);
                out.push(op[0]);
            }
            _ => out.extend_from_slice(op),
        }
        out.push(m);
    } else if !h.msrs.is_empty() {
        mov32(bits, out, ECX, *rng.pick(&h.msrs));
        mov32(bits, out, EAX, rng.interesting() as u32);
        mov32(bits, out, EDX, if rng.percent(70) { 0 } else { rng.interesting() as u32 });
        out.extend_from_slice(if rng.percent(50) { &[0x0f, 0x30] } else { &[0x0f, 0x32] });
    } else {
        emit(rng, bits, out);
    }
}

/// Appends one random instruction group for a `bits`-bit code segment.
pub fn emit(rng: &mut Rng, bits: u32, out: &mut Vec<u8>) {
    match rng.below(16) {
        // Port I/O of each size and direction.
        0 | 1 => {
            mov16(bits, out, EDX, *rng.pick(PORTS));
            if rng.percent(50) {
                mov32(bits, out, EAX, rng.interesting() as u32);
            }
            let op: &[u8] = *rng.pick::<&[u8]>(&[&[0xee][..], &[0xef], &[0x66, 0xef], &[0xec], &[0xed], &[0x66, 0xed]]);
            out.extend_from_slice(op);
        }
        // Immediate-port I/O.
        2 => {
            out.push(*rng.pick(&[0xe4u8, 0xe5, 0xe6, 0xe7]));
            out.push(*rng.pick(&[0x80u8, 0x20, 0x21, 0x40, 0x61, 0x70, 0x71, 0x92, 0xe9]));
        }
        // String I/O, maybe backwards, maybe with a big count.
        3 => {
            mov16(bits, out, EDX, *rng.pick(PORTS));
            let count = if rng.percent(70) { rng.below(20) as u32 } else { rng.interesting() as u32 };
            mov32(bits, out, ECX, count);
            let m = mmio_addr(rng);
            let buf = *rng.pick(&[0x9000u32, 0x7000, 0xa000, 0xfff0, m]);
            mov32(bits, out, ESI, buf);
            mov32(bits, out, EDI, buf);
            let df = rng.percent(20);
            if df {
                out.push(0xfd);
            }
            if rng.percent(80) {
                out.push(0xf3);
            }
            out.push(*rng.pick(&[0x6cu8, 0x6d, 0x6e, 0x6f]));
            if df {
                out.push(0xfc);
            }
        }
        // MMIO (or RAM) access of every width through [ebx] / [bx].
        4..=6 => {
            if bits == 16 {
                // ds = the high part, bx = the low 4 bits: real-mode addresses up to 1 MiB.
                let a = (rng.below(0x10_0000)) as u32;
                mov16(bits, out, EAX, (a >> 4) as u16);
                out.extend_from_slice(&[0x8e, 0xd8]);
                mov16(bits, out, EBX, (a & 0xf) as u16);
            } else {
                mov32(bits, out, EBX, mmio_addr(rng));
            }
            mov32(bits, out, EAX, rng.interesting() as u32);
            let m: u8 = if bits == 16 { 0x07 } else { 0x03 };
            let op: Vec<u8> = match rng.below(16) {
                0 => vec![0x8b, m],
                1 => vec![0x89, m],
                2 => vec![0x8a, m],
                3 => vec![0x88, m],
                4 => vec![0x66, 0x8b, m],
                5 => vec![0x66, 0x89, m],
                6 => vec![0xc6, m, rng.next() as u8],
                7 => vec![0x0f, 0xb6, m],
                8 => vec![0x0f, 0xbf, m],
                9 => vec![0xf7, m, 1, 2, 3, 4],
                10 => vec![0x87, m],
                11 => vec![0xff, m],
                12 => vec![0x0f, 0xc1, m],
                13 => vec![0xf0, 0x0f, 0xb1, m | 0x08],
                14 if bits == 64 => vec![0x48, 0x89, m],
                14 => vec![0xab],
                _ => vec![0x0f, 0x10, m], // movups xmm0, [ebx] (#UD without OSFXSR)
            };
            out.extend_from_slice(&op);
        }
        // CPUID of a random leaf.
        7 => {
            let any = rng.next() as u32;
            let leaf = *rng.pick(&[0u32, 1, 4, 7, 0xb, 0xd, 0x4000_0000, 0x4000_0001, 0x8000_0000, 0x8000_0001, 0x8000_0008, any]);
            mov32(bits, out, EAX, leaf);
            mov32(bits, out, ECX, rng.below(3) as u32);
            out.extend_from_slice(&[0x0f, 0xa2]);
        }
        // RDMSR / WRMSR.
        8 => {
            let msr = if rng.percent(85) { *rng.pick(MSRS) } else { rng.next() as u32 };
            mov32(bits, out, ECX, msr);
            mov32(bits, out, EAX, rng.interesting() as u32);
            mov32(bits, out, EDX, if rng.percent(70) { 0 } else { rng.interesting() as u32 });
            out.extend_from_slice(if rng.percent(50) { &[0x0f, 0x30] } else { &[0x0f, 0x32] });
        }
        // Control and debug registers.
        9 => {
            mov32(bits, out, EAX, rng.interesting() as u32);
            let op: &[u8] = *rng.pick::<&[u8]>(&[
                &[0x0f, 0x22, 0xc0][..], // mov cr0, eax
                &[0x0f, 0x22, 0xd8],     // cr3
                &[0x0f, 0x22, 0xe0],     // cr4
                &[0x0f, 0x20, 0xc0],     // mov eax, cr0
                &[0x0f, 0x20, 0xe0],     // mov eax, cr4
                &[0x0f, 0x23, 0xf8],     // mov dr7, eax
                &[0x0f, 0x23, 0xc0],     // mov dr0, eax
                &[0x0f, 0x21, 0xf0],     // mov eax, dr6
                &[0x44, 0x0f, 0x22, 0xc0], // mov cr8, rax (64-bit; else it decodes as something)
            ]);
            out.extend_from_slice(op);
        }
        // XSETBV / XGETBV.
        10 => {
            mov32(bits, out, ECX, if rng.percent(80) { 0 } else { rng.below(3) as u32 });
            mov32(bits, out, EAX, *rng.pick(&[1u32, 3, 7, 5, 0, 0xe7]));
            mov32(bits, out, EDX, 0);
            out.extend_from_slice(if rng.percent(70) { &[0x0f, 0x01, 0xd1] } else { &[0x0f, 0x01, 0xd0] });
        }
        // The local APIC timer, armed (periodic or one-shot) with a small count.
        11 if bits != 16 => {
            mov32(bits, out, EBX, 0xfee0_0320);
            mov32(bits, out, EAX, 0x20 + rng.below(0xe0) as u32 | if rng.percent(50) { 0x2_0000 } else { 0 });
            out.extend_from_slice(&[0x89, 0x03]);
            mov32(bits, out, EBX, 0xfee0_0380);
            mov32(bits, out, EAX, 1 + rng.below(0x1000) as u32);
            out.extend_from_slice(&[0x89, 0x03]);
        }
        // One-byte or short instructions that exit, fault or change interrupt state.
        _ => {
            let op: &[u8] = *rng.pick::<&[u8]>(&[
                &[0xf4][..],             // hlt
                &[0xfb, 0xf4],           // sti; hlt
                &[0xfa],                 // cli
                &[0xfb],                 // sti
                &[0xf3, 0x90],           // pause
                &[0x0f, 0x0b],           // ud2
                &[0xcc],                 // int3
                &[0xcd, 0x80],           // int 0x80
                &[0x0f, 0x01, 0xc1],     // vmcall
                &[0x0f, 0x31],           // rdtsc
                &[0x0f, 0x01, 0xf9],     // rdtscp
                &[0x0f, 0x08],           // invd
                &[0x0f, 0x09],           // wbinvd
                &[0x0f, 0x01, 0xc8],     // monitor
                &[0x0f, 0x01, 0xc9],     // mwait
                &[0x0f, 0x05],           // syscall
                &[0x0f, 0x34],           // sysenter
                &[0xcf],                 // iret
                &[0x0f, 0x01, 0xf8],     // swapgs
                &[0x0f, 0xc7, 0xf0],     // rdrand
                &[0x0f, 0x78, 0xc0],     // vmread
                &[0x0f, 0x01, 0xc4],     // vmxoff
                &[0x0f, 0x00, 0xd8],     // ltr ax
                &[0xdb, 0xe3],           // fninit
                &[0x0f, 0xae, 0xf0],     // mfence
                &[0xeb, 0xfe],           // jmp $ (a spin: the watchdog ends it)
                &[0xf1],                 // int1
                &[0x0f, 0x01, 0xd4],     // vmfunc
                &[0x0f, 0x0d, 0x08],     // prefetchw [eax]
                &[0x0f, 0x01, 0xca],     // clac
            ]);
            if op == [0xeb, 0xfe] && rng.percent(80) {
                out.push(0x90);
            } else {
                out.extend_from_slice(op);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_fit_and_set_the_mode() {
        let mut rng = Rng::new(11);
        let mut mem = vec![0u8; RAM_MIN as usize];
        for i in 0..400 {
            let mode = MODES[i % 4];
            let (mut s, mut r) = (kvm_sregs::default(), kvm_regs::default());
            let hints = if i % 3 == 0 {
                Hints { ports: vec![(0x500, 2, Some(7))], mmio: vec![(0x2000_0000, 8, None), (0xb_8000, 4, Some(1))], msrs: vec![0x10] }
            } else {
                Hints::default()
            };
            build(&mut rng, mode, &hints, &mut mem, &mut s, &mut r);
            assert_eq!(r.rip, CODE);
            match mode {
                Mode::Real => assert_eq!(s.cr0 & 1, 0),
                Mode::Long64 => assert_eq!(s.efer & 0x500, 0x500),
                _ => assert_eq!(s.cr0 & 1, 1),
            }
        }
    }

    #[test]
    fn hinted_encodings() {
        let mut rng = Rng::new(1);
        let h = Hints { ports: vec![(0x504, 4, Some(9))], ..Default::default() };
        // A port hit in 32-bit code: mov dx, 0x504; mov eax, data; out dx, eax (or the read).
        let mut seen = false;
        for _ in 0..50 {
            let mut v = Vec::new();
            emit_hinted(&mut rng, 32, &h, &mut v);
            if v.len() == 10 && v[..4] == [0x66, 0xba, 0x04, 0x05] && v[4] == 0xb8 && v[9] == 0xef {
                seen = true;
            }
        }
        assert!(seen);
        let h = Hints { mmio: vec![(0x2000_0000, 8, Some(5))], ..Default::default() };
        let mut seen = false;
        for _ in 0..50 {
            let mut v = Vec::new();
            emit_hinted(&mut rng, 64, &h, &mut v);
            // mov ebx, 0x20000000; mov rax, 5; mov [rbx], rax
            if v == [0xbb, 0, 0, 0, 0x20, 0x48, 0xb8, 5, 0, 0, 0, 0, 0, 0, 0, 0x48, 0x89, 0x03] {
                seen = true;
            }
        }
        assert!(seen);
    }

    #[test]
    fn encodings() {
        let mut v = Vec::new();
        mov32(32, &mut v, ECX, 0x1234_5678);
        mov16(32, &mut v, EDX, 0x3f8);
        mov16(16, &mut v, EDX, 0x3f8);
        mov32(16, &mut v, EAX, 1);
        assert_eq!(v, [0xb9, 0x78, 0x56, 0x34, 0x12, 0x66, 0xba, 0xf8, 0x03, 0xba, 0xf8, 0x03, 0x66, 0xb8, 1, 0, 0, 0]);
        let gate_lo = (HANDLER & 0xffff) | (u64::from(setup::CODE_SEL) << 16) | (0x8e << 40);
        assert_eq!(gate_lo, 0x0000_8e00_0008_7f00);
    }
}

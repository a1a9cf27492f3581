//! Decoding the guest instruction behind an MMIO exit (upstream: the x86 emulator,
//! arch/x86/kvm/emulate.c, of which this covers the memory-move subset).
//!
//! An EPT violation outside every memory slot tells the hypervisor the guest-physical address
//! but not the access: the instruction is fetched and decoded here to learn its size, direction,
//! register or immediate and length. Covered: MOV to and from memory in every size (88, 89, 8A,
//! 8B, A0–A3), MOV of an immediate to memory (C6, C7), MOVZX/MOVSX (0F B6/B7/BE/BF), STOS
//! without REP (AA, AB), and TEST of memory with a register or an immediate (84, 85, F6 /0,
//! F7 /0: device drivers poll status bits that way). Anything else is `None`: the caller
//! reports an emulation failure.
//! [`string_io`] decodes the prefixes of INS/OUTS, whose memory operand the I/O exit leaves out.

/// Execution mode of the code being decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 16-bit code segment (real mode or CS.D=0).
    Bits16,
    /// 32-bit code segment (CS.D=1).
    Bits32,
    /// 64-bit code segment (EFER.LMA and CS.L).
    Bits64,
}

/// How a value read from memory lands in the destination register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extend {
    /// Plain MOV: 8/16-bit writes keep the register's other bits, 32-bit writes zero the upper
    /// half, 64-bit writes replace it.
    None,
    /// MOVZX to the operand size.
    Zero(u8),
    /// MOVSX to the operand size.
    Sign(u8),
}

/// What the instruction does with memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads `size` bytes into register `reg` (`high8`: AH/CH/DH/BH).
    Read { reg: u8, high8: bool, size: u8, extend: Extend },
    /// Writes `size` bytes of register `reg` (`high8` as above).
    WriteReg { reg: u8, high8: bool, size: u8 },
    /// Writes an immediate.
    WriteImm { value: u64, size: u8 },
    /// STOS: writes `size` bytes of rAX, then moves rDI by `size` (by the address size).
    Stos { size: u8, addr_size: u8 },
    /// TEST: reads `size` bytes and sets RFLAGS from their AND with `src` ([`test_flags`]).
    Test { size: u8, src: TestSrc },
}

/// The second operand of a TEST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestSrc {
    Imm(u64),
    Reg { reg: u8, high8: bool },
}

/// RFLAGS bits TEST writes: CF, PF, AF (undefined: cleared, as the CPU does), ZF, SF, OF.
const ARITH_FLAGS: u64 = 0x8d5;

/// RFLAGS after `TEST a, b` on `size`-byte operands: CF = OF = 0, SF/ZF/PF from the result
/// (PF: even parity of its low byte).
pub fn test_flags(rflags: u64, a: u64, b: u64, size: u8) -> u64 {
    let r = a & b & size_mask(size);
    let mut f = rflags & !ARITH_FLAGS;
    if r == 0 {
        f |= 1 << 6;
    }
    if r >> (8 * u32::from(size) - 1) & 1 != 0 {
        f |= 1 << 7;
    }
    if (r as u8).count_ones() % 2 == 0 {
        f |= 1 << 2;
    }
    f
}

/// A decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Its length in bytes (RIP advances by this).
    pub len: u8,
    /// Its memory access.
    pub access: Access,
}

/// The legacy and REX prefixes in front of an opcode.
struct Prefixes {
    /// Index of the opcode byte.
    at: usize,
    opsize16: bool,
    rep: bool,
    rex: u8,
    /// Segment override, as a segment register number (ES=0, CS, SS, DS, FS, GS=5).
    seg: Option<u8>,
    /// Address size in bytes after the 0x67 override.
    asize: u8,
}

fn prefixes(bytes: &[u8], mode: Mode) -> Option<Prefixes> {
    let mut p = Prefixes { at: 0, opsize16: false, rep: false, rex: 0, seg: None, asize: 0 };
    let mut addrsize_override = false;
    loop {
        match *bytes.get(p.at)? {
            0x66 => p.opsize16 = true,
            0x67 => addrsize_override = true,
            0xf2 | 0xf3 => p.rep = true,
            0x26 => p.seg = Some(0),
            0x2e => p.seg = Some(1),
            0x36 => p.seg = Some(2),
            0x3e => p.seg = Some(3),
            0x64 => p.seg = Some(4),
            0x65 => p.seg = Some(5),
            0xf0 => {}
            _ => break,
        }
        p.at += 1;
        if p.at >= 15 {
            return None;
        }
    }
    if mode == Mode::Bits64 && (0x40..=0x4f).contains(bytes.get(p.at)?) {
        p.rex = bytes[p.at];
        p.at += 1;
    }
    p.asize = match mode {
        Mode::Bits16 => if addrsize_override { 4 } else { 2 },
        Mode::Bits32 => if addrsize_override { 2 } else { 4 },
        Mode::Bits64 => if addrsize_override { 4 } else { 8 },
    };
    Some(p)
}

/// A decoded INS or OUTS (the I/O exit tells port, size, direction and REP, but not the address
/// size or the segment of the memory operand).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringIo {
    /// Its length in bytes.
    pub len: u8,
    /// Address size in bytes: rSI/rDI and rCX are used at this width.
    pub addr_size: u8,
    /// Segment register number of the memory operand: ES (0) for INS; DS (3) or the override
    /// for OUTS.
    pub seg: u8,
}

/// Decodes the INS (6C, 6D) or OUTS (6E, 6F) at the start of `bytes`.
pub fn string_io(bytes: &[u8], mode: Mode) -> Option<StringIo> {
    let p = prefixes(bytes, mode)?;
    let seg = match *bytes.get(p.at)? {
        0x6c | 0x6d => 0,
        0x6e | 0x6f => p.seg.unwrap_or(3),
        _ => return None,
    };
    Some(StringIo { len: (p.at + 1) as u8, addr_size: p.asize, seg })
}

/// Decodes `bytes` (at least the whole instruction, up to 15 bytes) in `mode`.
pub fn decode(bytes: &[u8], mode: Mode) -> Option<Insn> {
    let p = prefixes(bytes, mode)?;
    let (mut i, opsize16, rep, rex, asize) = (p.at, p.opsize16, p.rep, p.rex, p.asize);
    let rex_w = rex & 8 != 0;
    // Operand size of non-byte operations.
    let osize: u8 = match mode {
        _ if rex_w => 8,
        Mode::Bits16 => if opsize16 { 4 } else { 2 },
        _ => if opsize16 { 2 } else { 4 },
    };
    let op = *bytes.get(i)?;
    i += 1;
    // A register number from ModRM.reg, with REX.R; `byte` operands without REX name AH..BH for 4..7.
    let reg_of = |modrm: u8, byte: bool| -> (u8, bool) {
        let r = (modrm >> 3) & 7 | if rex & 4 != 0 { 8 } else { 0 };
        if byte && rex == 0 && (4..8).contains(&r) {
            (r - 4, true)
        } else {
            (r, false)
        }
    };
    let insn = |len: usize, access| Some(Insn { len: len as u8, access });
    match op {
        0x88 | 0x89 | 0x8a | 0x8b | 0xc6 | 0xc7 => {
            if rep {
                return None;
            }
            let modrm = *bytes.get(i)?;
            let end = modrm_end(bytes, i, asize)?;
            let byte = op & 1 == 0;
            let size = if byte { 1 } else { osize };
            let (reg, high8) = reg_of(modrm, byte);
            match op {
                0x88 | 0x89 => insn(end, Access::WriteReg { reg, high8, size }),
                0x8a | 0x8b => insn(end, Access::Read { reg, high8, size, extend: Extend::None }),
                _ => {
                    if (modrm >> 3) & 7 != 0 {
                        return None;
                    }
                    let (value, len) = imm(bytes, end, size)?;
                    insn(len, Access::WriteImm { value, size })
                }
            }
        }
        0xa0..=0xa3 => {
            if rep {
                return None;
            }
            let end = i + asize as usize;
            bytes.get(i..end)?;
            let size = if op & 1 == 0 { 1 } else { osize };
            let access = if op < 0xa2 {
                Access::Read { reg: 0, high8: false, size, extend: Extend::None }
            } else {
                Access::WriteReg { reg: 0, high8: false, size }
            };
            insn(end, access)
        }
        0x84 | 0x85 | 0xf6 | 0xf7 => {
            if rep {
                return None;
            }
            let modrm = *bytes.get(i)?;
            let end = modrm_end(bytes, i, asize)?;
            let byte = op & 1 == 0;
            let size = if byte { 1 } else { osize };
            if op >= 0xf6 {
                // Group 3: only /0 (TEST; /1 is an alias the CPU also decodes as TEST).
                if (modrm >> 3) & 6 != 0 {
                    return None;
                }
                let (value, len) = imm(bytes, end, size)?;
                insn(len, Access::Test { size, src: TestSrc::Imm(value) })
            } else {
                let (reg, high8) = reg_of(modrm, byte);
                insn(end, Access::Test { size, src: TestSrc::Reg { reg, high8 } })
            }
        }
        0xaa | 0xab => {
            if rep {
                return None;
            }
            let size = if op == 0xaa { 1 } else { osize };
            insn(i, Access::Stos { size, addr_size: asize })
        }
        0x0f => {
            let op2 = *bytes.get(i)?;
            i += 1;
            let from: u8 = match op2 {
                0xb6 | 0xbe => 1,
                0xb7 | 0xbf => 2,
                _ => return None,
            };
            let modrm = *bytes.get(i)?;
            let end = modrm_end(bytes, i, asize)?;
            let (reg, _) = reg_of(modrm, false);
            let extend = if op2 < 0xbe { Extend::Zero(osize) } else { Extend::Sign(osize) };
            insn(end, Access::Read { reg, high8: false, size: from, extend })
        }
        _ => None,
    }
}

/// The index just past ModRM (at `at`), its SIB and displacement; `None` for a register
/// operand (no memory access) or truncated bytes.
fn modrm_end(bytes: &[u8], at: usize, asize: u8) -> Option<usize> {
    let modrm = *bytes.get(at)?;
    let (md, rm) = (modrm >> 6, modrm & 7);
    if md == 3 {
        return None;
    }
    let mut i = at + 1;
    let disp = if asize == 2 {
        match md {
            0 if rm == 6 => 2,
            0 => 0,
            1 => 1,
            _ => 2,
        }
    } else {
        let mut base_disp32 = false;
        if rm == 4 {
            let sib = *bytes.get(i)?;
            i += 1;
            base_disp32 = md == 0 && sib & 7 == 5;
        }
        match md {
            0 if rm == 5 || base_disp32 => 4,
            0 => 0,
            1 => 1,
            _ => 4,
        }
    };
    bytes.get(i..i + disp)?;
    Some(i + disp)
}

/// The immediate at `at` of an instruction with `size`-byte operands (at most 4 bytes: imm32 is
/// sign-extended to 64 bits with REX.W), and the index just past it.
fn imm(bytes: &[u8], at: usize, size: u8) -> Option<(u64, usize)> {
    let isz = usize::from(size.min(4));
    let raw = read_le(bytes.get(at..at + isz)?);
    let value = if size == 8 { raw as i32 as i64 as u64 } else { raw };
    Some((value, at + isz))
}

fn read_le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0, |v, &x| v << 8 | u64::from(x))
}

/// The mask of a value (address, count, operand) of `size` bytes.
pub fn size_mask(size: u8) -> u64 {
    if size >= 8 { u64::MAX } else { (1u64 << (8 * size)) - 1 }
}

/// The new value of a 64-bit register after a read of `data` (little-endian, `size` bytes)
/// lands in it per `extend` (and `high8`: bits 15:8).
pub fn merge(old: u64, data: u64, size: u8, high8: bool, extend: Extend) -> u64 {
    let mask = size_mask;
    let data = data & mask(size);
    let (value, width) = match extend {
        Extend::None => (data, size),
        Extend::Zero(to) => (data, to),
        Extend::Sign(to) => {
            let shift = 64 - 8 * u32::from(size);
            (((data << shift) as i64 >> shift) as u64 & mask(to), to)
        }
    };
    match (width, high8) {
        (1, true) => (old & !0xff00) | (value << 8),
        (1, false) | (2, _) => (old & !mask(width)) | value,
        (4, _) => value & 0xffff_ffff,
        _ => value,
    }
}

//! The MMIO instruction decoder and the guest page-table walker.

use crate::x86::decode::{decode, merge, string_io, Access, Extend, Insn, Mode, StringIo};
use crate::x86::walk::{translate, GuestMem};
use std::collections::BTreeMap;

fn d(bytes: &[u8], mode: Mode) -> Option<Insn> {
    decode(bytes, mode)
}

#[test]
fn moves_of_every_size() {
    use Mode::*;
    // mov %al,(%rbx) / mov %eax,(%rbx) / mov %rax,(%rbx) / mov %ax,(%rbx)
    assert_eq!(d(&[0x88, 0x03], Bits64), Some(Insn { len: 2, access: Access::WriteReg { reg: 0, high8: false, size: 1 } }));
    assert_eq!(d(&[0x89, 0x03], Bits64).unwrap().access, Access::WriteReg { reg: 0, high8: false, size: 4 });
    assert_eq!(d(&[0x48, 0x89, 0x03], Bits64).unwrap(), Insn { len: 3, access: Access::WriteReg { reg: 0, high8: false, size: 8 } });
    assert_eq!(d(&[0x66, 0x89, 0x03], Bits64).unwrap().access, Access::WriteReg { reg: 0, high8: false, size: 2 });
    // 16-bit code: 89 is a word move, 66 makes it a dword.
    assert_eq!(d(&[0x89, 0x07], Bits16).unwrap().access, Access::WriteReg { reg: 0, high8: false, size: 2 });
    assert_eq!(d(&[0x66, 0x89, 0x07], Bits16).unwrap().access, Access::WriteReg { reg: 0, high8: false, size: 4 });
    // mov 0x10(%rbx),%ecx ; mov %ah,(%rbx) (no REX: AH) ; mov %r9,0x12345678(%rip)
    assert_eq!(d(&[0x8b, 0x4b, 0x10], Bits64).unwrap(), Insn { len: 3, access: Access::Read { reg: 1, high8: false, size: 4, extend: Extend::None } });
    assert_eq!(d(&[0x88, 0x23], Bits64).unwrap().access, Access::WriteReg { reg: 0, high8: true, size: 1 });
    assert_eq!(d(&[0x4c, 0x89, 0x0d, 0x78, 0x56, 0x34, 0x12], Bits64).unwrap(), Insn { len: 7, access: Access::WriteReg { reg: 9, high8: false, size: 8 } });
    // SIB with disp32 and no base: mov %eax,0x1000(,%rcx,4)
    assert_eq!(d(&[0x89, 0x04, 0x8d, 0, 0x10, 0, 0], Bits64).unwrap().len, 7);
    // 16-bit addressing: mov %ax,[0x600] (mod 00 rm 110 = disp16)
    assert_eq!(d(&[0xa3, 0x00, 0x06], Bits16).unwrap(), Insn { len: 3, access: Access::WriteReg { reg: 0, high8: false, size: 2 } });
    assert_eq!(d(&[0x89, 0x1e, 0x00, 0x06], Bits16).unwrap(), Insn { len: 4, access: Access::WriteReg { reg: 3, high8: false, size: 2 } });
    // moffs in 64-bit code is 8 bytes.
    assert_eq!(d(&[0x48, 0xa1, 1, 2, 3, 4, 5, 6, 7, 8], Bits64).unwrap(), Insn { len: 10, access: Access::Read { reg: 0, high8: false, size: 8, extend: Extend::None } });
}

#[test]
fn immediates_extends_and_stos() {
    use Mode::*;
    // movl $0x11223344,(%rbx) ; movq $-1,(%rbx) ; movb $0x7f,0x8(%rbx)
    assert_eq!(d(&[0xc7, 0x03, 0x44, 0x33, 0x22, 0x11], Bits64).unwrap(), Insn { len: 6, access: Access::WriteImm { value: 0x1122_3344, size: 4 } });
    assert_eq!(d(&[0x48, 0xc7, 0x03, 0xff, 0xff, 0xff, 0xff], Bits64).unwrap().access, Access::WriteImm { value: u64::MAX, size: 8 });
    assert_eq!(d(&[0xc6, 0x43, 0x08, 0x7f], Bits64).unwrap(), Insn { len: 4, access: Access::WriteImm { value: 0x7f, size: 1 } });
    // movzbl (%rbx),%eax ; movswq (%rbx),%rdx
    assert_eq!(d(&[0x0f, 0xb6, 0x03], Bits64).unwrap().access, Access::Read { reg: 0, high8: false, size: 1, extend: Extend::Zero(4) });
    assert_eq!(d(&[0x48, 0x0f, 0xbf, 0x13], Bits64).unwrap().access, Access::Read { reg: 2, high8: false, size: 2, extend: Extend::Sign(8) });
    // stosl ; stosb in 16-bit code
    assert_eq!(d(&[0xab], Bits32).unwrap(), Insn { len: 1, access: Access::Stos { size: 4, addr_size: 4 } });
    assert_eq!(d(&[0xaa], Bits16).unwrap(), Insn { len: 1, access: Access::Stos { size: 1, addr_size: 2 } });
}

#[test]
fn refusals() {
    use Mode::*;
    assert_eq!(d(&[0xf3, 0xab], Bits64), None, "REP STOS");
    assert_eq!(d(&[0x89, 0xc0], Bits64), None, "register operand");
    assert_eq!(d(&[0x01, 0x03], Bits64), None, "ADD");
    assert_eq!(d(&[0xc7, 0x0b, 0, 0, 0, 0], Bits64), None, "C7 /1");
    assert_eq!(d(&[0x8b], Bits64), None, "truncated");
    assert_eq!(d(&[0xc7, 0x03, 0x44], Bits64), None, "truncated immediate");
}

#[test]
fn string_io_prefixes() {
    let sio = |len, addr_size, seg| Some(StringIo { len, addr_size, seg });
    // rep outsb / outsw / insd in each mode: DS (OUTS) or ES (INS), the mode's address size.
    assert_eq!(string_io(&[0xf3, 0x6e], Mode::Bits16), sio(2, 2, 3));
    assert_eq!(string_io(&[0x6f], Mode::Bits32), sio(1, 4, 3));
    assert_eq!(string_io(&[0x66, 0x6d], Mode::Bits64), sio(2, 8, 0));
    // Address-size override; a segment override applies to OUTS only.
    assert_eq!(string_io(&[0x67, 0xf3, 0x6c], Mode::Bits16), sio(3, 4, 0));
    assert_eq!(string_io(&[0x67, 0x6e], Mode::Bits64), sio(2, 4, 3));
    assert_eq!(string_io(&[0x2e, 0xf3, 0x6f], Mode::Bits32), sio(3, 4, 1));
    assert_eq!(string_io(&[0x65, 0x6f], Mode::Bits64), sio(2, 8, 5));
    assert_eq!(string_io(&[0x26, 0x64, 0x6c], Mode::Bits32), sio(3, 4, 0));
    // REX in 64-bit mode is a prefix; elsewhere 0x48 is DEC.
    assert_eq!(string_io(&[0xf3, 0x48, 0x6f], Mode::Bits64), sio(3, 8, 3));
    assert_eq!(string_io(&[0x48, 0x6f], Mode::Bits32), None);
    // Not a string I/O instruction, or truncated.
    assert_eq!(string_io(&[0xe6, 0x80], Mode::Bits16), None);
    assert_eq!(string_io(&[0xf3], Mode::Bits16), None);
}

#[test]
fn register_merges() {
    let old = 0x1111_2222_3333_4444;
    assert_eq!(merge(old, 0xaa, 1, false, Extend::None), 0x1111_2222_3333_44aa);
    assert_eq!(merge(old, 0xaa, 1, true, Extend::None), 0x1111_2222_3333_aa44);
    assert_eq!(merge(old, 0xbbaa, 2, false, Extend::None), 0x1111_2222_3333_bbaa);
    assert_eq!(merge(old, 0xddcc_bbaa, 4, false, Extend::None), 0xddcc_bbaa);
    assert_eq!(merge(old, 0x80, 1, false, Extend::Sign(4)), 0xffff_ff80);
    assert_eq!(merge(old, 0x80, 1, false, Extend::Sign(8)), 0xffff_ffff_ffff_ff80);
    assert_eq!(merge(old, 0x80, 1, false, Extend::Zero(2)), 0x1111_2222_3333_0080);
    assert_eq!(merge(old, 0x8000, 2, false, Extend::Sign(2)), 0x1111_2222_3333_8000);
}

struct Mem(BTreeMap<u64, u64>);

impl GuestMem for Mem {
    fn read_u64(&mut self, gpa: u64) -> Option<u64> {
        Some(*self.0.get(&gpa).unwrap_or(&0))
    }
}

#[test]
fn page_walks() {
    let mut m = Mem(BTreeMap::new());
    // No paging: identity (32-bit wrap outside long mode).
    assert_eq!(translate(&mut m, 0x11, 0, 0, 0, 0x1234), Some(0x1234));
    // 32-bit paging: PDE at 0x2000 for 0x0040_0000 → PT at 0x3000; PTE 5 → 0x7000.
    m.0.insert(0x2000, 0x3001 << 32); // PDE 1 (upper half of the qword at 0x2000)
    m.0.insert(0x3010, 0x7001 << 32); // PTE 5 (4-byte entries: upper half of the qword at 0x3010)
    assert_eq!(translate(&mut m, 0x8000_0011, 0x2000, 0, 0, 0x0040_5abc), Some(0x7abc));
    // 4 MiB page with PSE: PDE 2 maps 0x0080_0000 → 0x0c00_0000.
    m.0.insert(0x2008, 0x0c00_0083);
    assert_eq!(translate(&mut m, 0x8000_0011, 0x2000, 1 << 4, 0, 0x0081_2345), Some(0x0c01_2345));
    assert_eq!(translate(&mut m, 0x8000_0011, 0x2000, 0, 0, 0x00c0_0000), None, "PDE 3 absent");
    // Long mode: PML4 0x10000 → PDPT 0x11000 → PD 0x12000 with a 2 MiB page, and a 1 GiB page.
    m.0.insert(0x10000, 0x11003);
    m.0.insert(0x11000, 0x12003);
    m.0.insert(0x12008, 0x0060_0083); // PD[1]: 0x20_0000 → 0x60_0000
    m.0.insert(0x11008, 0x8000_0083); // PDPT[1]: 1 GiB page 0x4000_0000 → 0x8000_0000
    let (cr0, cr4, efer) = (0x8000_0011, 1 << 5, 0x500);
    assert_eq!(translate(&mut m, cr0, 0x10000, cr4, efer, 0x20_1234), Some(0x60_1234));
    assert_eq!(translate(&mut m, cr0, 0x10000, cr4, efer, 0x4123_4567), Some(0x8123_4567));
    assert_eq!(translate(&mut m, cr0, 0x10000, cr4, efer, 0x40_0000), None);
    // PAE (no LMA): PDPTE 0 at cr3 → PD 0x12000 (reused): same 2 MiB page.
    m.0.insert(0x20000, 0x12001);
    assert_eq!(translate(&mut m, cr0, 0x20000, cr4, 0, 0x20_0010), Some(0x60_0010));
}

#[test]
fn page_walk_permissions_and_fault_codes() {
    use crate::x86::walk::*;
    let mut m = Mem(BTreeMap::new());
    // Long mode: PML4 0x10000 → PDPT 0x11000 → PD 0x12000 → PT 0x13000.
    m.0.insert(0x10000, 0x11007); // P RW US
    m.0.insert(0x11000, 0x12007);
    m.0.insert(0x12000, 0x13007);
    m.0.insert(0x13000, 0x5007); // page 0: P RW US
    m.0.insert(0x13008, 0x6005); // page 1: P US, read-only
    m.0.insert(0x13010, 0x7003); // page 2: P RW, supervisor
    let r = Regs { cr0: 0x8000_0011, cr3: 0x10000, cr4: 1 << 5, efer: 0x500 };
    let wp = Regs { cr0: r.cr0 | 1 << 16, ..r };
    assert_eq!(walk(&mut m, &r, 0x0123, true, true), Ok(0x5123));
    // Read-only page: user writes fault (P|W|U); supervisor writes only with CR0.WP.
    assert_eq!(walk(&mut m, &r, 0x1008, false, true), Ok(0x6008));
    assert_eq!(walk(&mut m, &r, 0x1008, true, true), Err(WalkError::PageFault(PF_PRESENT | PF_WRITE | PF_USER)));
    assert_eq!(walk(&mut m, &r, 0x1008, true, false), Ok(0x6008));
    assert_eq!(walk(&mut m, &wp, 0x1008, true, false), Err(WalkError::PageFault(PF_PRESENT | PF_WRITE)));
    // Supervisor page: user reads fault.
    assert_eq!(walk(&mut m, &r, 0x2000, false, true), Err(WalkError::PageFault(PF_PRESENT | PF_USER)));
    assert_eq!(walk(&mut m, &r, 0x2000, true, false), Ok(0x7000));
    // Not present: P clear, W/U as the access.
    assert_eq!(walk(&mut m, &r, 0x3000, true, false), Err(WalkError::PageFault(PF_WRITE)));
    assert_eq!(walk(&mut m, &r, 0x3000, false, true), Err(WalkError::PageFault(PF_USER)));
    // A higher level read-only makes the whole range read-only.
    m.0.insert(0x11000, 0x12005);
    assert_eq!(walk(&mut m, &wp, 0x0000, true, false), Err(WalkError::PageFault(PF_PRESENT | PF_WRITE)));
    // 32-bit paging: the PDE's U/S counts too.
    m.0.insert(0x20000, 0x21003); // PDE 0: supervisor
    m.0.insert(0x21000, 0x8007); // PTE 0: user
    let r32 = Regs { cr0: 0x8000_0011, cr3: 0x20000, cr4: 0, efer: 0 };
    assert_eq!(walk(&mut m, &r32, 0x10, false, false), Ok(0x8010));
    assert_eq!(walk(&mut m, &r32, 0x10, false, true), Err(WalkError::PageFault(PF_PRESENT | PF_USER)));
}

#[test]
fn test_instructions() {
    use crate::x86::decode::{test_flags, TestSrc};
    use Mode::*;
    // testl $0x1000, 0xfee00300 (F7 /0, absolute disp32 through SIB in 64-bit mode)
    let i = d(&[0xf7, 0x04, 0x25, 0x00, 0x03, 0xe0, 0xfe, 0x00, 0x10, 0x00, 0x00], Bits64).unwrap();
    assert_eq!(i, Insn { len: 11, access: Access::Test { size: 4, src: TestSrc::Imm(0x1000) } });
    // testb $1, (%rax); test %ecx, (%rbx); test %ah, (%rbx); REX.W sign-extends imm32.
    assert_eq!(d(&[0xf6, 0x00, 0x01], Bits64).unwrap().access, Access::Test { size: 1, src: TestSrc::Imm(1) });
    assert_eq!(d(&[0x85, 0x0b], Bits64).unwrap().access, Access::Test { size: 4, src: TestSrc::Reg { reg: 1, high8: false } });
    assert_eq!(d(&[0x84, 0x23], Bits64).unwrap().access, Access::Test { size: 1, src: TestSrc::Reg { reg: 0, high8: true } });
    assert_eq!(
        d(&[0x48, 0xf7, 0x00, 0x00, 0x00, 0x00, 0x80], Bits64).unwrap().access,
        Access::Test { size: 8, src: TestSrc::Imm(0xffff_ffff_8000_0000) }
    );
    // NOT/NEG (F7 /2, /3) are not TEST; a register operand is no memory access.
    assert_eq!(d(&[0xf7, 0x10], Bits64), None);
    assert_eq!(d(&[0x85, 0xc0], Bits64), None);
    // Flags: ZF when the AND is 0, SF from the operand size's top bit, PF of the low byte,
    // CF/OF/AF cleared, other bits kept.
    let base = 0x202 | 0x801 | 0x10; // IF, reserved bit 1, OF, CF, AF
    assert_eq!(test_flags(base, 0x1000, 0x0fff, 4), 0x202 | 0x40 | 0x4);
    assert_eq!(test_flags(base, 0x8000_0000, 0x8000_0000, 4), 0x202 | 0x80 | 0x4);
    assert_eq!(test_flags(base, 0x8000_0000, 0x8000_0000, 8), 0x202 | 0x4);
    assert_eq!(test_flags(0x2, 0x01, 0xff, 1), 0x2);
    assert_eq!(test_flags(0x2, 0x03, 0xff, 1), 0x2 | 0x4);
}

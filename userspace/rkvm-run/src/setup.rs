//! Guest CPU-mode set-up: descriptor tables, page tables and segment registers for each mode.
//!
//! Pure: it writes into a byte slice standing for guest memory and returns the register values,
//! so host unit tests check the bytes by decoding them back.
//!
//! Guest-physical layout (all modes): GDT at [`GDT_ADDR`], page tables from [`PT_ADDR`]; the
//! caller's code goes at its load address (default [`default_load_addr`]).

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

/// Where the GDT is written.
pub const GDT_ADDR: u64 = 0x1000;
/// Where page tables start (PML4 or the 32-bit page directory).
pub const PT_ADDR: u64 = 0x2000;
/// Selectors of the flat GDT.
pub const CODE_SEL: u16 = 0x08;
/// Data selector.
pub const DATA_SEL: u16 = 0x10;
/// TSS selector.
pub const TSS_SEL: u16 = 0x18;

/// The CPU mode a guest starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 16-bit real mode (CS base 0).
    Real,
    /// 32-bit protected mode, flat segments, no paging.
    Prot32,
    /// 32-bit protected mode with 2-level paging (4 MiB pages, identity mapped).
    Paged32,
    /// 64-bit long mode, 4-level paging (2 MiB pages, identity mapped first 1 GiB).
    Long64,
}

impl Mode {
    /// Parses `real|prot32|paged32|long64`.
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "real" => Mode::Real,
            "prot32" => Mode::Prot32,
            "paged32" => Mode::Paged32,
            "long64" => Mode::Long64,
            _ => return None,
        })
    }
}

/// The default load (and entry) address for a mode.
pub fn default_load_addr(mode: Mode) -> u64 {
    match mode {
        Mode::Real => 0x8000,
        _ => 0x10_0000,
    }
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Encodes a GDT segment descriptor (SDM vol. 3, 3.4.5).
pub fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let limit = u64::from(limit);
    let base = u64::from(base);
    (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | u64::from(access) << 40
        | ((limit >> 16) & 0xf) << 48
        | u64::from(flags & 0xf) << 52
        | ((base >> 24) & 0xff) << 56
}

fn put_u64(mem: &mut [u8], addr: u64, v: u64) {
    let a = addr as usize;
    mem[a..a + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(mem: &mut [u8], addr: u64, v: u32) {
    let a = addr as usize;
    mem[a..a + 4].copy_from_slice(&v.to_le_bytes());
}

fn seg(selector: u16, type_: u8, s: u8, db: u8, l: u8, g: u8, limit: u32) -> kvm_segment {
    kvm_segment { base: 0, limit, selector, type_, present: 1, dpl: 0, db, s, l, g, avl: 0, unusable: 0, padding: 0 }
}

/// Writes the mode's tables into `mem` (guest memory from GPA 0) and sets `sregs`/`regs` so the
/// vCPU starts at `entry` with its stack at `stack`.
pub fn setup(mode: Mode, mem: &mut [u8], sregs: &mut kvm_sregs, regs: &mut kvm_regs, entry: u64, stack: u64) {
    *regs = kvm_regs { rip: entry, rsp: stack, rflags: 2, ..*regs };
    if mode == Mode::Real {
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        return;
    }
    let long = mode == Mode::Long64;
    // GDT: null, code (32- or 64-bit), data, busy TSS.
    let code_flags = if long { 0xa } else { 0xc }; // G + L, or G + D
    put_u64(mem, GDT_ADDR, 0);
    put_u64(mem, GDT_ADDR + 8, descriptor(0, 0xfffff, 0x9b, code_flags));
    put_u64(mem, GDT_ADDR + 16, descriptor(0, 0xfffff, 0x93, 0xc));
    put_u64(mem, GDT_ADDR + 24, descriptor(0, 0x67, 0x8b, 0));
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.cs = seg(CODE_SEL, 0xb, 1, u8::from(!long), u8::from(long), 1, 0xffff_ffff);
    let data = seg(DATA_SEL, 3, 1, 1, 0, 1, 0xffff_ffff);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = seg(TSS_SEL, 0xb, 0, 0, 0, 0, 0x67);
    sregs.cr0 = CR0_PE | CR0_ET;
    match mode {
        Mode::Paged32 => {
            // 1024 PDEs of 4 MiB pages: identity map of the whole 4 GiB.
            for i in 0..1024u64 {
                put_u32(mem, PT_ADDR + i * 4, ((i << 22) | 0x83) as u32);
            }
            sregs.cr3 = PT_ADDR;
            sregs.cr4 = CR4_PSE;
            sregs.cr0 |= CR0_PG;
        }
        Mode::Long64 => {
            let (pml4, pdpt, pd) = (PT_ADDR, PT_ADDR + 0x1000, PT_ADDR + 0x2000);
            put_u64(mem, pml4, pdpt | 3);
            put_u64(mem, pdpt, pd | 3);
            for i in 0..512u64 {
                put_u64(mem, pd + i * 8, (i << 21) | 0x83);
            }
            sregs.cr3 = pml4;
            sregs.cr4 = CR4_PAE;
            sregs.cr0 |= CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        _ => {}
    }
}

/// Translates a guest-linear address through the tables [`setup`] wrote (for tests and
/// diagnostics): `None` if unmapped.
pub fn translate(mode: Mode, mem: &[u8], cr3: u64, la: u64) -> Option<u64> {
    let rd64 = |a: u64| u64::from_le_bytes(mem[a as usize..a as usize + 8].try_into().unwrap());
    let rd32 = |a: u64| u64::from(u32::from_le_bytes(mem[a as usize..a as usize + 4].try_into().unwrap()));
    match mode {
        Mode::Real | Mode::Prot32 => Some(la),
        Mode::Paged32 => {
            let pde = rd32(cr3 + ((la >> 22) & 1023) * 4);
            (pde & 0x81 == 0x81).then(|| (pde & 0xffc0_0000) | (la & 0x3f_ffff))
        }
        Mode::Long64 => {
            let mut table = cr3;
            for shift in [39, 30] {
                let e = rd64(table + ((la >> shift) & 511) * 8);
                if e & 1 == 0 {
                    return None;
                }
                table = e & 0x000f_ffff_ffff_f000;
            }
            let pde = rd64(table + ((la >> 21) & 511) * 8);
            (pde & 0x81 == 0x81).then(|| (pde & 0x000f_ffff_ffe0_0000) | (la & 0x1f_ffff))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_setup(mode: Mode) -> (Vec<u8>, kvm_sregs, kvm_regs) {
        let mut mem = vec![0u8; 0x20_0000];
        let (mut s, mut r) = (kvm_sregs::default(), kvm_regs::default());
        setup(mode, &mut mem, &mut s, &mut r, 0x10_0000, 0x1f_fff0);
        (mem, s, r)
    }

    #[test]
    fn descriptors_decode_back() {
        // The classic flat 32-bit code descriptor.
        assert_eq!(descriptor(0, 0xfffff, 0x9b, 0xc), 0x00cf_9b00_0000_ffff);
        assert_eq!(descriptor(0, 0xfffff, 0x9b, 0xa), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor(0x1234_5678, 0x67, 0x8b, 0), 0x1200_8b34_5678_0067);
    }

    #[test]
    fn real_mode_only_moves_cs() {
        let (_, s, r) = run_setup(Mode::Real);
        assert_eq!((s.cs.base, s.cs.selector, s.cr0 & CR0_PE), (0, 0, 0));
        assert_eq!((r.rip, r.rflags), (0x10_0000, 2));
    }

    #[test]
    fn protected_modes_have_flat_segments_and_a_gdt() {
        for mode in [Mode::Prot32, Mode::Paged32, Mode::Long64] {
            let (mem, s, _) = run_setup(mode);
            assert_eq!(s.cr0 & CR0_PE, CR0_PE);
            let gdt_code = u64::from_le_bytes(mem[0x1008..0x1010].try_into().unwrap());
            assert_eq!((gdt_code >> 40) & 0xff, 0x9b, "{mode:?}");
            assert_eq!((s.cs.selector, s.ds.selector, s.tr.selector), (CODE_SEL, DATA_SEL, TSS_SEL));
            assert_eq!(s.cs.l, u8::from(mode == Mode::Long64));
            assert_eq!(s.cs.db, u8::from(mode != Mode::Long64));
        }
    }

    #[test]
    fn paging_is_identity() {
        for mode in [Mode::Paged32, Mode::Long64] {
            let (mem, s, _) = run_setup(mode);
            assert_ne!(s.cr0 & CR0_PG, 0);
            for la in [0u64, 0x1000, 0x10_0123, 0x1f_ffff, 0x3000_0000] {
                assert_eq!(translate(mode, &mem, s.cr3, la), Some(la), "{mode:?} {la:#x}");
            }
        }
        let (mem, s, _) = run_setup(Mode::Long64);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.cr4, CR4_PAE);
        // Beyond the first GiB nothing is mapped.
        assert_eq!(translate(Mode::Long64, &mem, s.cr3, 0x4000_0000), None);
    }
}

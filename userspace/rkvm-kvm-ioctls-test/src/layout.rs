//! The guest's memory layout, its identity-mapped long-mode page tables and its GDT.
//!
//! Pure: everything is written into a byte slice standing for guest RAM (guest-physical 0 at
//! index 0), so host `cargo test` checks the tables by walking them back.

/// Guest RAM: one slot at guest-physical 0.
pub const RAM_SIZE: u64 = 2 << 20;
/// GDT: null, 64-bit code, data, then a 16-byte 64-bit TSS descriptor.
pub const GDT: u64 = 0x1000;
/// Limit of the GDT (five 8-byte entries, the TSS descriptor counting for two).
pub const GDT_LIMIT: u16 = 5 * 8 - 1;
/// The (unused but valid) 64-bit TSS.
pub const TSS: u64 = 0x1100;
/// First page-table page (PML4); the tables take at most 6 pages after it.
pub const PML4: u64 = 0x2000;
/// Guest data: where the guest stores what it reads from ports, and operands userspace leaves.
pub const DATA: u64 = 0x9000;
/// Guest code.
pub const CODE: u64 = 0x1_0000;
/// Initial RSP (the guest never pushes; a valid value anyway).
pub const STACK_TOP: u64 = 0x1f_0000;
/// The READONLY slot (one page, right above RAM).
pub const RO_SLOT: u64 = RAM_SIZE;
/// Size of the READONLY slot.
pub const RO_SIZE: u64 = 0x1000;
/// An unbacked guest-physical address (no slot): accesses are MMIO.
pub const MMIO: u64 = 0xd000_0000;
/// How much of the guest-physical space the page tables map 1:1.
pub const MAPPED: u64 = 4 << 30;

/// Selector of the 64-bit code segment.
pub const CODE_SEL: u16 = 0x08;
/// Selector of the data segment.
pub const DATA_SEL: u16 = 0x10;
/// Selector of the TSS.
pub const TSS_SEL: u16 = 0x18;

const P: u64 = 1;
const RW: u64 = 1 << 1;
const PS: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Leaf page size of the identity map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// PML4 → PDPT → PD with 2 MiB pages.
    Size2M,
    /// PML4 → PDPT with 1 GiB pages (CPUID.80000001H:EDX.Page1GB).
    Size1G,
}

impl PageSize {
    /// Bytes per leaf page.
    pub fn bytes(self) -> u64 {
        match self {
            PageSize::Size2M => 2 << 20,
            PageSize::Size1G => 1 << 30,
        }
    }
}

fn put_u64(mem: &mut [u8], gpa: u64, v: u64) {
    let a = gpa as usize;
    mem[a..a + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u64(mem: &[u8], gpa: u64) -> u64 {
    let a = gpa as usize;
    u64::from_le_bytes(mem[a..a + 8].try_into().unwrap())
}

/// Writes 4-level tables at `pml4` mapping guest-linear [0, `span`) to the same guest-physical
/// addresses with `size` pages (`span` a multiple of 1 GiB, at most 512 GiB). Returns the CR3
/// value and the end of the last table page written.
pub fn identity_map(mem: &mut [u8], pml4: u64, span: u64, size: PageSize) -> (u64, u64) {
    assert!(span.is_multiple_of(1 << 30) && span > 0 && span <= 512 << 30 && pml4.is_multiple_of(0x1000));
    let gib = span >> 30;
    let pdpt = pml4 + 0x1000;
    mem[pml4 as usize..pdpt as usize + 0x1000].fill(0);
    put_u64(mem, pml4, pdpt | RW | P);
    let mut end = pdpt + 0x1000;
    for g in 0..gib {
        match size {
            PageSize::Size1G => put_u64(mem, pdpt + g * 8, (g << 30) | PS | RW | P),
            PageSize::Size2M => {
                let pd = end;
                end += 0x1000;
                put_u64(mem, pdpt + g * 8, pd | RW | P);
                for i in 0..512 {
                    put_u64(mem, pd + i * 8, (g << 30) | (i << 21) | PS | RW | P);
                }
            }
        }
    }
    (pml4, end)
}

/// Walks the tables at `cr3` (as the CPU does for a 4-level, present/PS-only subset): the
/// guest-physical address of `la` and the leaf size, or `None` if not mapped.
pub fn translate(mem: &[u8], cr3: u64, la: u64) -> Option<(u64, u64)> {
    let mut table = cr3 & ADDR;
    for (level, shift) in [(4, 39), (3, 30), (2, 21), (1, 12)] {
        let e = get_u64(mem, table + ((la >> shift) & 511) * 8);
        if e & P == 0 {
            return None;
        }
        if level == 1 || (level <= 3 && e & PS != 0) {
            let size = 1u64 << shift;
            return Some(((e & ADDR & !(size - 1)) | (la & (size - 1)), size));
        }
        table = e & ADDR;
    }
    None
}

/// Encodes an 8-byte code/data segment descriptor (SDM vol. 3, 3.4.5).
pub fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let (base, limit) = (u64::from(base), u64::from(limit));
    (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | u64::from(access) << 40
        | ((limit >> 16) & 0xf) << 48
        | u64::from(flags & 0xf) << 52
        | (base >> 24) << 56
}

/// Writes the GDT at [`GDT`]: null, 64-bit code (L=1), flat data, and an available 64-bit TSS
/// at [`TSS`] (16-byte system descriptor; the TR loaded through KVM_SET_SREGS is its busy form).
pub fn write_gdt(mem: &mut [u8]) {
    put_u64(mem, GDT, 0);
    put_u64(mem, GDT + 8, descriptor(0, 0xfffff, 0x9b, 0xa)); // P, S, code, execute/read, accessed; G, L
    put_u64(mem, GDT + 16, descriptor(0, 0xfffff, 0x93, 0xc)); // P, S, data, read/write, accessed; G, D/B
    put_u64(mem, GDT + 24, descriptor(TSS as u32, 0x67, 0x89, 0)); // P, 64-bit TSS (available)
    put_u64(mem, GDT + 32, TSS >> 32); // bits 63:32 of the TSS base
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram() -> Vec<u8> {
        vec![0u8; RAM_SIZE as usize]
    }

    #[test]
    fn identity_2m_maps_4g_and_nothing_more() {
        let mut mem = ram();
        let (cr3, end) = identity_map(&mut mem, PML4, MAPPED, PageSize::Size2M);
        assert_eq!((cr3, end), (PML4, PML4 + 6 * 0x1000)); // PML4, PDPT, 4 PDs
        assert!(end <= DATA, "tables overlap the data page");
        for la in [0, 0x1234, CODE, RO_SLOT + 8, MMIO, MMIO + 0x20, 0xb234_5678, MAPPED - 1] {
            assert_eq!(translate(&mem, cr3, la), Some((la, 2 << 20)), "{la:#x}");
        }
        assert_eq!(translate(&mem, cr3, MAPPED), None);
        assert_eq!(translate(&mem, cr3, 1 << 39), None);
        // Every PDE is a present, writable 2 MiB leaf.
        for i in 0..4 * 512u64 {
            assert_eq!(get_u64(&mem, PML4 + 0x2000 + i * 8), (i << 21) | 0x83);
        }
    }

    #[test]
    fn identity_1g_uses_only_pml4_and_pdpt() {
        let mut mem = ram();
        let (cr3, end) = identity_map(&mut mem, PML4, MAPPED, PageSize::Size1G);
        assert_eq!(end, PML4 + 0x2000);
        for la in [0, CODE, MMIO + 0x10, 0xffff_ffff] {
            assert_eq!(translate(&mem, cr3, la), Some((la, 1 << 30)), "{la:#x}");
        }
        assert_eq!(translate(&mem, cr3, MAPPED), None);
        assert_eq!(get_u64(&mem, PML4 + 0x1000 + 3 * 8), (3 << 30) | 0x83);
        // Nothing written after the PDPT.
        assert!(mem[end as usize..].iter().all(|&b| b == 0));
    }

    #[test]
    fn rewriting_smaller_clears_stale_entries() {
        let mut mem = ram();
        identity_map(&mut mem, PML4, MAPPED, PageSize::Size2M);
        let (cr3, _) = identity_map(&mut mem, PML4, 1 << 30, PageSize::Size1G);
        assert_eq!(translate(&mem, cr3, 1 << 30), None);
        assert_eq!(translate(&mem, cr3, 0x20_0000), Some((0x20_0000, 1 << 30)));
    }

    #[test]
    fn gdt_descriptors() {
        assert_eq!(descriptor(0, 0xfffff, 0x9b, 0xa), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor(0, 0xfffff, 0x93, 0xc), 0x00cf_9300_0000_ffff);
        let mut mem = ram();
        write_gdt(&mut mem);
        let tss = get_u64(&mem, GDT + 24);
        assert_eq!(tss, 0x0000_8900_1100_0067);
        assert_eq!(get_u64(&mem, GDT + 32), 0);
        assert_eq!(u64::from(GDT_LIMIT) + 1, 40);
    }
}

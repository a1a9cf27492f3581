//! Guest page-table walks: guest-linear → guest-physical, for fetching the instruction behind
//! an MMIO exit (upstream: `paging_tmpl.h`'s walker, used by the emulator's fetch).
//!
//! Pure: page-table entries come through [`GuestMem`]. Covers no paging, 32-bit paging (with
//! 4 MiB pages under CR4.PSE), PAE paging and 4-level long-mode paging (2 MiB and 1 GiB pages).
//! Permission bits are not checked: the guest just executed from or accessed the address.

/// Reads guest-physical memory.
pub trait GuestMem {
    /// Reads 8 bytes at `gpa` (little-endian), `None` outside guest memory.
    fn read_u64(&mut self, gpa: u64) -> Option<u64>;
}

const PRESENT: u64 = 1;
const PS: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

fn entry32(m: &mut impl GuestMem, gpa: u64) -> Option<u64> {
    Some(m.read_u64(gpa & !7)? >> ((gpa & 4) * 8) & 0xffff_ffff)
}

/// Translates linear address `la` under the given control registers; `None` if not mapped.
pub fn translate(m: &mut impl GuestMem, cr0: u64, cr3: u64, cr4: u64, efer: u64, la: u64) -> Option<u64> {
    let (pg, pse, pae, lma) = (cr0 >> 31 & 1 != 0, cr4 & (1 << 4) != 0, cr4 & (1 << 5) != 0, efer & (1 << 10) != 0);
    if !pg {
        return Some(if lma { la } else { la & 0xffff_ffff });
    }
    if !pae {
        let la = la & 0xffff_ffff;
        let pde = entry32(m, (cr3 & 0xffff_f000) + ((la >> 22) << 2))?;
        if pde & PRESENT == 0 {
            return None;
        }
        if pse && pde & PS != 0 {
            // 4 MiB page; bits 20:13 are PA bits 39:32.
            return Some((pde & 0xffc0_0000) | ((pde >> 13 & 0xff) << 32) | (la & 0x3f_ffff));
        }
        let pte = entry32(m, (pde & 0xffff_f000) + ((la >> 12 & 0x3ff) << 2))?;
        return (pte & PRESENT != 0).then(|| (pte & 0xffff_f000) | (la & 0xfff));
    }
    // PAE or 4-level: 9 bits per level.
    let (mut table, levels) = if lma {
        (cr3 & ADDR, 4)
    } else {
        let pdpte = m.read_u64((cr3 & 0xffff_ffe0) + ((la >> 30 & 3) << 3))?;
        if pdpte & PRESENT == 0 {
            return None;
        }
        (pdpte & ADDR, 2)
    };
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let e = m.read_u64(table + ((la >> shift & 511) << 3))?;
        if e & PRESENT == 0 {
            return None;
        }
        if level == 1 || (level <= 3 && e & PS != 0) {
            let page_mask = (1u64 << shift) - 1;
            return Some((e & ADDR & !page_mask) | (la & page_mask));
        }
        table = e & ADDR;
    }
    None
}

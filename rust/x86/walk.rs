//! Guest page-table walks: guest-linear → guest-physical, for fetching the instruction behind
//! an MMIO exit and for the memory operands of emulated string I/O (upstream: `paging_tmpl.h`'s
//! walker, used by the emulator).
//!
//! Pure: page-table entries come through [`GuestMem`]. Covers no paging, 32-bit paging (with
//! 4 MiB pages under CR4.PSE), PAE paging and 4-level long-mode paging (2 MiB and 1 GiB pages).
//! [`walk`] checks the R/W and U/S bits of data accesses (SDM 4.6, CR0.WP honoured) and says
//! which #PF a failed access raises; SMAP, SMEP, protection keys and reserved-bit checks are not
//! modelled (instruction fetch goes through [`translate`]: the guest just executed the bytes).

/// Reads guest-physical memory.
pub trait GuestMem {
    /// Reads 8 bytes at `gpa` (little-endian), `None` outside guest memory.
    fn read_u64(&mut self, gpa: u64) -> Option<u64>;
}

const PRESENT: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
const CR0_WP: u64 = 1 << 16;

/// #PF error code bits (SDM 4.7).
pub const PF_PRESENT: u32 = 1;
/// The access was a write.
pub const PF_WRITE: u32 = 1 << 1;
/// The access was made in user mode (CPL 3).
pub const PF_USER: u32 = 1 << 2;

/// The guest's paging-related registers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Regs {
    /// CR0 (PG, WP).
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4 (PSE, PAE).
    pub cr4: u64,
    /// EFER (LMA).
    pub efer: u64,
}

/// Why a linear address cannot be accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// The guest gets a #PF with this error code.
    PageFault(u32),
    /// A paging structure lies outside guest memory (not something a guest can be told).
    Bus,
}

fn entry32(m: &mut impl GuestMem, gpa: u64) -> Result<u64, WalkError> {
    Ok(m.read_u64(gpa & !7).ok_or(WalkError::Bus)? >> ((gpa & 4) * 8) & 0xffff_ffff)
}

/// Translates linear address `la` for a data access (`write`, from CPL 3 if `user`).
pub fn walk(m: &mut impl GuestMem, r: &Regs, la: u64, write: bool, user: bool) -> Result<u64, WalkError> {
    let (pg, pse, pae, lma) = (r.cr0 >> 31 & 1 != 0, r.cr4 & (1 << 4) != 0, r.cr4 & (1 << 5) != 0, r.efer & (1 << 10) != 0);
    if !pg {
        return Ok(if lma { la } else { la & 0xffff_ffff });
    }
    let code = if write { PF_WRITE } else { 0 } | if user { PF_USER } else { 0 };
    // R/W and U/S of every level on the way (PAE PDPTEs have neither).
    let (mut rw, mut us) = (true, true);
    let leaf = |e: u64, rw: bool, us: bool, pa: u64| {
        let (rw, us) = (rw && e & RW != 0, us && e & US != 0);
        let denied = (user && !us) || (write && !rw && (user || r.cr0 & CR0_WP != 0));
        if denied { Err(WalkError::PageFault(code | PF_PRESENT)) } else { Ok(pa) }
    };
    if !pae {
        let la = la & 0xffff_ffff;
        let pde = entry32(m, (r.cr3 & 0xffff_f000) + ((la >> 22) << 2))?;
        if pde & PRESENT == 0 {
            return Err(WalkError::PageFault(code));
        }
        if pse && pde & PS != 0 {
            // 4 MiB page; bits 20:13 are PA bits 39:32.
            return leaf(pde, rw, us, (pde & 0xffc0_0000) | ((pde >> 13 & 0xff) << 32) | (la & 0x3f_ffff));
        }
        let pte = entry32(m, (pde & 0xffff_f000) + ((la >> 12 & 0x3ff) << 2))?;
        if pte & PRESENT == 0 {
            return Err(WalkError::PageFault(code));
        }
        return leaf(pte, pde & RW != 0, pde & US != 0, (pte & 0xffff_f000) | (la & 0xfff));
    }
    // PAE or 4-level: 9 bits per level.
    let (mut table, levels) = if lma {
        (r.cr3 & ADDR, 4)
    } else {
        let pdpte = m.read_u64((r.cr3 & 0xffff_ffe0) + ((la >> 30 & 3) << 3)).ok_or(WalkError::Bus)?;
        if pdpte & PRESENT == 0 {
            return Err(WalkError::PageFault(code));
        }
        (pdpte & ADDR, 2)
    };
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let e = m.read_u64(table + ((la >> shift & 511) << 3)).ok_or(WalkError::Bus)?;
        if e & PRESENT == 0 {
            return Err(WalkError::PageFault(code));
        }
        if level == 1 || (level <= 3 && e & PS != 0) {
            let page_mask = (1u64 << shift) - 1;
            return leaf(e, rw, us, (e & ADDR & !page_mask) | (la & page_mask));
        }
        rw &= e & RW != 0;
        us &= e & US != 0;
        table = e & ADDR;
    }
    Err(WalkError::Bus)
}

/// Translates linear address `la` without permission checks (instruction fetch); `None` if not
/// mapped.
pub fn translate(m: &mut impl GuestMem, cr0: u64, cr3: u64, cr4: u64, efer: u64, la: u64) -> Option<u64> {
    walk(m, &Regs { cr0, cr3, cr4, efer }, la, false, false).ok()
}

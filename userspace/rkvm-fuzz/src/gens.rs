//! Structured generators for the ioctls added after the first table: `KVM_IOEVENTFD`,
//! `KVM_X86_SET_MSR_FILTER`, `KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)`, `KVM_SET_GUEST_DEBUG`,
//! `KVM_X86_SETUP_MCE` and `KVM_X86_SET_MCE`. Each builds a mostly valid argument whose fields
//! sit on the boundaries of the kernel's checks (upstream `kvm_assign_ioeventfd`,
//! `kvm_vm_ioctl_set_msr_filter`, `kvm_arch_vcpu_ioctl_set_guest_debug`,
//! `kvm_vcpu_ioctl_x86_setup_mce`, `kvm_vcpu_ioctl_x86_set_mce`), so that the calls get past them
//! into the deeper paths most of the time and onto each refusal some of the time.
//!
//! Pure: the choices come from the [`Rng`] and from what the caller knows (the VM's guest RAM,
//! its registered ioeventfds, the fds to pick from), so they are host-tested.

use crate::rng::Rng;
use kvm_bindings as kb;

/// Ports the random guests write (`guest::PORTS`) and a few of their own: ioeventfds there get
/// hit.
pub const GUEST_PORTS: &[u64] = &[0x3f8, 0x80, 0xe9, 0x500, 0x502, 0x504, 0xcf8, 0xcfc, 0x92];
/// MMIO addresses the random guests can reach in every mode that pages (the long-mode tables map
/// the first GiB only) and in real mode (below 1 MiB, outside the fuzzer's RAM at 0).
pub const GUEST_MMIO: &[u64] = &[0x2000_0000, 0x2000_0008, 0x2000_0ffc, 0x2000_1000, 0x3fff_fff8, 0xb_8000, 0xb_8004];
/// MSRs the guests read and write on purpose under a filter: common ones, the MCE and x2APIC
/// ranges, the synthetic KVM ones, the high range's.
pub const FILTER_MSRS: &[u32] = &[
    0x10, 0x1b, 0x3a, 0x48, 0x174, 0x175, 0x176, 0x179, 0x17a, 0x1d9, 0x277, 0x401, 0x402, 0x800, 0x808, 0x4b56_4d00,
    0xc000_0080, 0xc000_0081, 0xc000_0082, 0xc000_0084, 0xc000_0100, 0xc000_0102, 0xc000_0103,
];

/// `KVM_IOEVENTFD_FLAG_*` (the header makes them from `kvm_ioeventfd_flag_nr_*`).
pub const IOEVENTFD_DATAMATCH: u32 = 1 << kb::kvm_ioeventfd_flag_nr_datamatch;
pub const IOEVENTFD_PIO: u32 = 1 << kb::kvm_ioeventfd_flag_nr_pio;
pub const IOEVENTFD_DEASSIGN: u32 = 1 << kb::kvm_ioeventfd_flag_nr_deassign;
#[cfg(test)]
const IOEVENTFD_VALID_MASK: u32 = (1 << kb::kvm_ioeventfd_flag_nr_max) - 1;

/// Which fds an ioeventfd may name: open eventfds, numbers closed before, fds of other kinds.
#[derive(Default, Clone, Debug)]
pub struct Fds {
    pub eventfds: Vec<i32>,
    pub closed: Vec<i32>,
    pub others: Vec<i32>,
}

/// An eventfd argument: a real one mostly, else a closed number, an fd that is no eventfd, -1,
/// or anything.
pub fn eventfd(r: &mut Rng, fds: &Fds) -> i32 {
    match r.below(20) {
        0..=13 if !fds.eventfds.is_empty() => *r.pick(&fds.eventfds),
        14 | 15 if !fds.closed.is_empty() => *r.pick(&fds.closed),
        16 | 17 if !fds.others.is_empty() => *r.pick(&fds.others),
        18 => -1,
        19 => r.interesting() as i32,
        _ => *r.pick(&[1000, 0x7fff_ffff, 2]),
    }
}

/// A length: the valid 0, 1, 2, 4, 8 mostly, else 3, 5, 16 or anything.
fn io_len(r: &mut Rng) -> u32 {
    match r.below(20) {
        0..=2 => 0,
        3..=5 => 1,
        6..=8 => 2,
        9..=12 => 4,
        13..=15 => 8,
        16 => 3,
        17 => 5,
        18 => 16,
        _ => r.interesting() as u32,
    }
}

/// A data-match value for a write of `len` bytes: one that fits mostly, else one that no write
/// of that width can carry.
fn datamatch(r: &mut Rng, len: u32) -> u64 {
    let fit = if len >= 8 || len == 0 { u64::MAX } else { (1u64 << (8 * len)) - 1 };
    if r.percent(80) {
        let v = if r.percent(50) { r.below(4) } else { r.interesting() };
        v & fit
    } else {
        fit.wrapping_add(1 + r.below(3))
    }
}

/// An address for an ioeventfd of `len` bytes: one the guests hit, one at the edge of a guest
/// RAM range (`ranges`: start, length), just below 2^64 (ending there, or wrapping past it), or
/// anything.
pub fn io_addr(r: &mut Rng, pio: bool, len: u32, ranges: &[(u64, u64)]) -> u64 {
    let len = u64::from(len);
    match r.below(10) {
        0..=4 => {
            if pio {
                *r.pick(GUEST_PORTS) + r.below(2) * len
            } else {
                *r.pick(GUEST_MMIO)
            }
        }
        5 | 6 if !ranges.is_empty() && !pio => {
            let (start, size) = *r.pick(ranges);
            let end = start.wrapping_add(size);
            *r.pick(&[start.wrapping_sub(len), start, end.wrapping_sub(len), end.wrapping_sub(len / 2), end, start.wrapping_sub(len / 2)])
        }
        5 | 6 => *r.pick(&[0xffffu64, 0x1_0000u64.wrapping_sub(len), 0x1_0000, 0]),
        7 | 8 => {
            // addr + len == 2^64 wraps (EINVAL); one less is the last valid place.
            let top = 0u64.wrapping_sub(len);
            *r.pick(&[top, top.wrapping_sub(1), u64::MAX, 0x8000_0000_0000_0000 - len.max(1)])
        }
        _ => r.interesting(),
    }
}

/// `struct kvm_ioeventfd`: a fresh assignment (guest-hit, edge or wrapping address; valid and
/// invalid lengths; data match or wildcard; PIO or MMIO; known and unknown flags), or one built
/// from a registered one (`registered`): the same again (EEXIST), its deassignment (through
/// the same or another fd, or with another data match: ENOENT), or an overlapping variant.
pub fn ioeventfd(r: &mut Rng, ranges: &[(u64, u64)], registered: &[kb::kvm_ioeventfd], fds: &Fds) -> kb::kvm_ioeventfd {
    let mut e = kb::kvm_ioeventfd::default();
    if !registered.is_empty() && r.percent(40) {
        e = *r.pick(registered);
        match r.below(8) {
            0..=3 => e.flags |= IOEVENTFD_DEASSIGN,
            4 => {
                e.flags |= IOEVENTFD_DEASSIGN;
                e.fd = eventfd(r, fds);
            }
            5 => {
                e.flags ^= IOEVENTFD_DATAMATCH;
                e.datamatch = datamatch(r, e.len);
            }
            6 => {
                e.len = io_len(r);
                e.addr = e.addr.wrapping_add(r.below(4));
            }
            _ => {} // the same again
        }
        return e;
    }
    let pio = r.percent(50);
    e.len = io_len(r);
    e.addr = io_addr(r, pio, e.len, ranges);
    e.fd = eventfd(r, fds);
    if pio {
        e.flags |= IOEVENTFD_PIO;
    }
    if r.percent(50) {
        e.flags |= IOEVENTFD_DATAMATCH;
        e.datamatch = datamatch(r, e.len);
    } else if r.percent(20) {
        e.datamatch = r.interesting(); // ignored without the flag
    }
    match r.below(20) {
        0 => e.flags |= IOEVENTFD_DEASSIGN,
        1 => e.flags |= 1 << kb::kvm_ioeventfd_flag_nr_virtio_ccw_notify,
        2 => e.flags |= 1 << (5 + r.below(27)),
        3 => e.flags |= 1 << kb::kvm_ioeventfd_flag_nr_fast_mmio,
        4 => e.flags = r.interesting() as u32,
        _ => {}
    }
    if r.percent(3) {
        e.pad[r.index(e.pad.len())] = r.next() as u8;
    }
    e
}

/// Where [`msr_filter`] puts each range's bitmap: `Some(content)` to write at the range's slot
/// of the caller's bitmap area, and the pointer to give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitmapAt {
    /// The range's slot in the area (`area + i * MAX_BITMAP_SIZE`).
    Area,
    /// Ending half-way into the inaccessible page after the area: a partial copy.
    AcrossGuard,
    /// A pointer that is not valid (the caller's choice of bad pointer).
    Bad,
}

/// One range as generated: the uapi fields, where its bitmap goes, and its bytes.
#[derive(Clone, Debug)]
pub struct RangeGen {
    pub flags: u32,
    pub nmsrs: u32,
    pub base: u32,
    pub at: BitmapAt,
    pub bitmap: Vec<u8>,
}

/// `struct kvm_msr_filter` before the pointers are known: allow or deny by default (and unknown
/// flags), 0 to 16 ranges over the MSRs the guests touch (reads, writes or both; sometimes no
/// or unknown flags), bitmaps from 1 bit to the 0x600-byte limit and past it, bases that wrap
/// past 2^32, ranges that overlap the one before, all-deny, all-allow or random bitmaps, and
/// sometimes junk in the ranges a count of 0 makes the kernel skip. Three filters in four are
/// valid throughout; the others break one rule (one range's count or flags, the filter's
/// flags, a bitmap that cannot be copied), so that every refusal comes after valid ranges too.
pub fn msr_filter(r: &mut Rng) -> (u32, Vec<RangeGen>) {
    let mut flags = if r.percent(60) { kb::KVM_MSR_FILTER_DEFAULT_ALLOW } else { kb::KVM_MSR_FILTER_DEFAULT_DENY };
    let n = match r.below(20) {
        0 => 0,
        1..=12 => 1 + r.index(3),
        13..=17 => 4 + r.index(12),
        _ => 16,
    };
    let max_bits = kb::KVM_MSR_FILTER_MAX_BITMAP_SIZE * 8;
    let mut ranges: Vec<RangeGen> = Vec::new();
    for _ in 0..n {
        let nmsrs = match r.below(20) {
            0 => 0,
            1..=6 => 1 + r.below(4) as u32,
            7..=11 => *r.pick(&[8u32, 63, 64, 65, 0x100]),
            12..=15 => 0x2000,
            16 => max_bits,
            _ => 1 + r.below(u64::from(max_bits)) as u32,
        };
        let base = match r.below(10) {
            0..=4 => r.pick(FILTER_MSRS).wrapping_sub(r.below(u64::from(nmsrs.min(4))) as u32),
            5 if !ranges.is_empty() => ranges[ranges.len() - 1].base, // overlaps the previous
            5 | 6 => *r.pick(&[0u32, 0x800, 0x4000_0000, 0xc000_0000, 0xc001_0000]),
            7 => u32::MAX - r.below(8) as u32, // wraps past 2^32
            _ => r.next() as u32,
        };
        let rflags = match r.below(3) {
            0 => kb::KVM_MSR_FILTER_READ,
            1 => kb::KVM_MSR_FILTER_WRITE,
            _ => kb::KVM_MSR_FILTER_READ | kb::KVM_MSR_FILTER_WRITE,
        };
        let bytes = ((u64::from(nmsrs) + 63) / 64 * 8).min(u64::from(kb::KVM_MSR_FILTER_MAX_BITMAP_SIZE)) as usize;
        let mut bitmap = vec![0u8; bytes];
        match r.below(4) {
            0 => {}
            1 => bitmap.fill(0xff),
            2 => bitmap.iter_mut().enumerate().for_each(|(i, b)| *b = if i % 2 == 0 { 0x55 } else { 0xaa }),
            _ => r.fill(&mut bitmap),
        }
        ranges.push(RangeGen { flags: rflags, nmsrs, base, at: BitmapAt::Area, bitmap });
    }
    if r.percent(25) {
        // One rule broken, in a random range (or the filter).
        let i = r.index(ranges.len().max(1));
        match (r.below(7), ranges.get_mut(i)) {
            (0, Some(g)) => g.nmsrs = *r.pick(&[max_bits + 1, u32::MAX, 0x8000_0000]),
            (1, Some(g)) if g.nmsrs != 0 => g.flags = *r.pick(&[0u32, 4, 7, u32::MAX]),
            (2, Some(g)) if g.nmsrs != 0 => g.at = BitmapAt::AcrossGuard,
            (3, Some(g)) if g.nmsrs != 0 => g.at = BitmapAt::Bad,
            (4, _) => flags = *r.pick(&[2u32, 3, 0x8000_0000]),
            (5, _) => {
                // Deny by default with no range at all.
                flags = kb::KVM_MSR_FILTER_DEFAULT_DENY;
                ranges.iter_mut().for_each(|g| g.nmsrs = 0);
            }
            _ => flags = r.interesting() as u32,
        }
    }
    if r.percent(10) && n < 16 {
        // Junk in a range whose count of 0 says "skip me".
        ranges.push(RangeGen { flags: r.interesting() as u32, nmsrs: 0, base: r.next() as u32, at: BitmapAt::Bad, bitmap: Vec::new() });
    }
    (flags, ranges)
}

/// The MSRs a filter's ranges cover that guests should try (bases and a few after them).
pub fn filter_msrs(ranges: &[RangeGen]) -> Vec<u32> {
    let mut v = Vec::new();
    for g in ranges.iter().filter(|g| g.nmsrs != 0) {
        v.push(g.base);
        v.push(g.base.wrapping_add(g.nmsrs.min(64) - 1));
        v.push(g.base.wrapping_add(g.nmsrs)); // just past the range
    }
    v
}

/// `args[0]` of `KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)`: which refused MSR accesses exit
/// (a subset of INVAL, UNKNOWN, FILTER), or an unknown bit.
pub fn user_space_msr_mask(r: &mut Rng) -> u64 {
    match r.below(10) {
        0..=7 => r.below(8),
        8 => 8 | r.below(8),
        _ => r.interesting(),
    }
}

/// `struct kvm_guest_debug` for a guest whose code starts at `code`: off, single-step,
/// hardware breakpoints on the code or data (DR7 enables, types and lengths), software
/// breakpoints, #DB/#BP injection, BLOCKIRQ; sometimes unknown control bits or a DR7 with
/// bits 63:32 set.
pub fn guest_debug(r: &mut Rng, code: u64) -> kb::kvm_guest_debug {
    let mut g = kb::kvm_guest_debug::default();
    g.control = match r.below(20) {
        0..=1 => 0,
        2..=6 => kb::KVM_GUESTDBG_ENABLE | kb::KVM_GUESTDBG_SINGLESTEP,
        7..=9 => kb::KVM_GUESTDBG_ENABLE | kb::KVM_GUESTDBG_USE_HW_BP,
        10 => kb::KVM_GUESTDBG_ENABLE | kb::KVM_GUESTDBG_USE_SW_BP,
        11 => kb::KVM_GUESTDBG_ENABLE | kb::KVM_GUESTDBG_SINGLESTEP | kb::KVM_GUESTDBG_BLOCKIRQ,
        12 => kb::KVM_GUESTDBG_ENABLE | kb::KVM_GUESTDBG_INJECT_DB,
        13 => kb::KVM_GUESTDBG_ENABLE | kb::KVM_GUESTDBG_INJECT_BP,
        14 => kb::KVM_GUESTDBG_SINGLESTEP | kb::KVM_GUESTDBG_USE_HW_BP, // without ENABLE
        15 | 16 => kb::KVM_GUESTDBG_ENABLE | (r.next() as u32 & 0x1f_0003),
        17 => kb::KVM_GUESTDBG_ENABLE | 1 << (2 + r.below(14)),
        18 => 1 << (21 + r.below(11)),
        _ => r.interesting() as u32,
    };
    for a in g.arch.debugreg[..4].iter_mut() {
        *a = match r.below(8) {
            0..=3 => code + r.below(24),
            4 => 0x9000 + r.below(16),
            5 => 0,
            6 => *r.pick(&[0x8000_0000_0000u64, u64::MAX, 0xffff_8000_0000_0000]),
            _ => r.interesting(),
        };
    }
    g.arch.debugreg[6] = if r.percent(80) { 0xffff_0ff0 } else { r.interesting() };
    g.arch.debugreg[7] = match r.below(10) {
        0..=6 => {
            // Enables (L0..G3, LE/GE), then RW and LEN of each breakpoint: execute (00, length
            // 1) mostly, writes, I/O, reads and writes.
            let mut dr7 = 0x400 | r.below(0x100) | if r.percent(20) { 0x300 } else { 0 };
            for i in 0..4 {
                let rw = if r.percent(50) { 0 } else { r.below(4) };
                let len = if rw == 0 { 0 } else { r.below(4) };
                dr7 |= (rw | len << 2) << (16 + 4 * i);
            }
            if r.percent(5) {
                dr7 |= 1 << 13; // GD
            }
            dr7
        }
        7 => 0x400,
        8 => 0x400 | 1 << (32 + r.below(32)),
        _ => r.interesting(),
    };
    g
}

/// `KVM_X86_SETUP_MCE`'s `mcg_cap`: 1 to 32 banks mostly (0, 33, 255 refused) with a subset of
/// the supported capabilities (CTL_P, CMCI_P, SER_P, LMCE_P), an extended register count
/// sometimes, and sometimes an unsupported bit.
pub fn mcg_cap(r: &mut Rng) -> u64 {
    let banks = match r.below(10) {
        0..=6 => 1 + r.below(32),
        7 => 32,
        8 => *r.pick(&[0u64, 33, 255]),
        _ => 1 + r.below(4),
    };
    let supported = [1u64 << 8, 1 << 10, 1 << 24, 1 << 27];
    let mut cap = banks;
    for bit in supported {
        if r.percent(40) {
            cap |= bit;
        }
    }
    if r.percent(10) {
        cap |= r.below(256) << 16;
    }
    if r.percent(10) {
        cap |= 1 << *r.pick(&[9u64, 11, 12, 25, 26, 28, 63]);
    }
    cap
}

/// `struct kvm_x86_mce` for a vCPU set up with `banks` banks: a bank in range mostly (the
/// count and the limit otherwise); a status that is valid mostly (VAL) and corrected, fatal
/// (UC, PCC), recoverable (UC, S, AR) or UCNA (UC only, MCG_STATUS 0); overflow, address and
/// misc bits; MCG_STATUS with RIPV/EIPV/MCIP; junk in the padding sometimes.
pub fn mce(r: &mut Rng, banks: u32) -> kb::kvm_x86_mce {
    const VAL: u64 = 1 << 63;
    const OVER: u64 = 1 << 62;
    const UC: u64 = 1 << 61;
    const EN: u64 = 1 << 60;
    const MISCV: u64 = 1 << 59;
    const ADDRV: u64 = 1 << 58;
    const PCC: u64 = 1 << 57;
    const S: u64 = 1 << 56;
    const AR: u64 = 1 << 55;
    let mut m = kb::kvm_x86_mce::default();
    m.bank = match r.below(10) {
        0..=6 => r.below(u64::from(banks.max(1))) as u8,
        7 => banks as u8,
        8 => *r.pick(&[31u8, 32, 255]),
        _ => 0,
    };
    let kind = r.below(5);
    m.status = match kind {
        0 => VAL | EN,                       // corrected
        1 => VAL | UC | EN | PCC,            // fatal
        2 => VAL | UC | EN | S | AR,         // software-recoverable, action required
        3 => VAL | UC,                       // UCNA (with MCG_STATUS 0)
        _ => r.next() & !(r.below(2) << 63), // anything, VAL or not
    };
    if r.percent(30) {
        m.status |= *r.pick(&[OVER, MISCV, ADDRV, MISCV | ADDRV]);
    }
    m.status |= r.below(0x1_0000); // MCA error code
    if r.percent(5) {
        m.status &= !VAL;
    }
    m.mcg_status = match r.below(6) {
        0..=1 if kind == 3 => 0,
        0 | 1 => 1 | 2, // RIPV | EIPV
        2 => 4,         // MCIP: a machine check in progress
        3 => 1,
        4 => 0,
        _ => r.interesting(),
    };
    m.addr = if r.percent(70) { r.below(0x1000_0000) & !0xfff } else { r.interesting() };
    m.misc = if r.percent(70) { r.below(64) } else { r.interesting() };
    if r.percent(3) {
        m.pad1[r.index(7)] = r.next() as u8;
    }
    if r.percent(3) {
        m.pad2[r.index(3)] = r.next();
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioeventfds_are_mostly_assignable() {
        // The share that passes the kernel's pre-checks (iobus::Args::check_assign): most of
        // them, and every refusal shows up.
        let mut r = Rng::new(5);
        let fds = Fds { eventfds: vec![10, 11], closed: vec![12], others: vec![3] };
        let (mut ok, mut bad_len, mut wrap, mut bad_flags) = (0, 0, 0, 0);
        let mut reg = Vec::new();
        for _ in 0..4000 {
            let e = ioeventfd(&mut r, &[(0, 0x1_0000), (0x10_0000, 0x2000)], &reg, &fds);
            let valid_flags = IOEVENTFD_VALID_MASK;
            if !matches!(e.len, 0 | 1 | 2 | 4 | 8) {
                bad_len += 1;
            } else if e.addr.checked_add(u64::from(e.len)).is_none() {
                wrap += 1;
            } else if e.flags & !valid_flags != 0 {
                bad_flags += 1;
            } else {
                ok += 1;
                if reg.len() < 8 && e.flags & IOEVENTFD_DEASSIGN == 0 {
                    reg.push(e);
                }
            }
        }
        assert!(ok > 2400, "{ok}");
        assert!(bad_len > 100 && wrap > 40 && bad_flags > 40, "{bad_len} {wrap} {bad_flags}");
    }

    #[test]
    fn filters_reach_the_bitmaps() {
        let mut r = Rng::new(9);
        let (mut copied, mut too_big, mut deny_empty) = (0, 0, 0);
        for _ in 0..2000 {
            let (flags, ranges) = msr_filter(&mut r);
            if flags == 1 && ranges.iter().all(|g| g.nmsrs == 0) {
                deny_empty += 1;
            }
            for g in &ranges {
                assert!(g.bitmap.len() <= 0x600);
                if g.nmsrs as usize > 0x600 * 8 {
                    too_big += 1;
                } else if g.nmsrs != 0 && g.flags & !3 == 0 && g.flags != 0 && g.at == BitmapAt::Area {
                    assert_eq!(g.bitmap.len(), (g.nmsrs as usize).div_ceil(64) * 8);
                    copied += 1;
                }
            }
        }
        assert!(copied > 2000 && too_big > 20 && deny_empty > 5, "{copied} {too_big} {deny_empty}");
    }

    #[test]
    fn debug_and_mce_cover_valid_and_invalid() {
        let mut r = Rng::new(3);
        let valid = 0x1f_0003u32;
        let (mut step, mut bad) = (0, 0);
        for _ in 0..1000 {
            let g = guest_debug(&mut r, 0x8000);
            if g.control & valid == g.control && g.control & 3 == 3 {
                step += 1;
            }
            if g.control & !valid != 0 || g.arch.debugreg[7] >> 32 != 0 {
                bad += 1;
            }
        }
        assert!(step > 200 && bad > 50 && bad < 400, "{step} {bad}");
        let (mut in_range, mut ucna) = (0, 0);
        for _ in 0..1000 {
            let cap = mcg_cap(&mut r);
            let banks = (cap & 0xff) as u32;
            let m = mce(&mut r, banks.clamp(1, 32));
            if u32::from(m.bank) < banks && m.status >> 63 == 1 {
                in_range += 1;
            }
            if m.mcg_status == 0 && m.status >> 61 & 7 == 5 && m.status & (7 << 55) == 0 {
                ucna += 1;
            }
        }
        assert!(in_range > 500 && ucna > 50, "{in_range} {ucna}");
    }
}

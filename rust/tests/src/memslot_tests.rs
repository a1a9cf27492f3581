//! `KVM_SET_USER_MEMORY_REGION` rules: every refusal with upstream's errno, and the lookups.

use crate::memslot::*;

type Slots = Memslots<Vec<Memslot>, Vec<GfnRange>>;

fn slots() -> Slots {
    Memslots::new(Vec::new(), Vec::new())
}

const USER_TOP: u64 = 0x0000_7fff_ffff_f000;

fn user_ok(addr: u64, size: u64) -> bool {
    addr.checked_add(size).is_some_and(|end| end <= USER_TOP)
}

fn region(slot: u32, gpa: u64, size: u64, hva: u64) -> Region {
    Region { slot, flags: 0, guest_phys_addr: gpa, memory_size: size, userspace_addr: hva }
}

fn set(s: &mut Slots, r: Region) -> Result<Change, SlotError> {
    let c = s.check(&r, user_ok)?;
    s.commit(c)?;
    Ok(c)
}

#[test]
fn create_then_lookup() {
    let mut s = slots();
    set(&mut s, region(0, 0x1000, 0x1000, 0x7000_0000)).unwrap();
    set(&mut s, region(3, 0x10_0000, 0x20_0000, 0x7100_0000)).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s.find(0).map(|m| m.id), None);
    assert_eq!(s.find(1).map(|m| m.id), Some(0));
    assert_eq!(s.find(2).map(|m| m.id), None);
    assert_eq!(s.find(0x100).map(|m| m.id), Some(3));
    assert_eq!(s.find(0x2ff).map(|m| m.id), Some(3));
    assert_eq!(s.find(0x300), None);
    let m = s.find(0x105).unwrap();
    assert_eq!(m.hva(0x105), 0x7100_0000 + 5 * 4096);
}

#[test]
fn refusals_have_upstream_errnos() {
    use SlotError::*;
    let mut s = slots();
    set(&mut s, region(0, 0x10_0000, 0x10_0000, 0x7000_0000)).unwrap();
    let cases: &[(&str, Region, SlotError)] = &[
        ("unknown flag", Region { flags: 1 << 7, ..region(1, 0, 0x1000, 0x1000) }, Invalid),
        ("size not page aligned", region(1, 0, 0x1001, 0x1000), Invalid),
        ("gpa not page aligned", region(1, 0x10, 0x1000, 0x1000), Invalid),
        ("hva not page aligned", region(1, 0, 0x1000, 0x1010), Invalid),
        ("hva in kernel half", region(1, 0, 0x1000, 0xffff_8000_0000_0000), Invalid),
        ("hva range wraps", region(1, 0, 0x2000, u64::MAX & !0xfff), Invalid),
        ("slot id too large", region(USER_MEM_SLOTS, 0, 0x1000, 0x1000), Invalid),
        ("address space 1", region(1 << 16, 0, 0x1000, 0x1000), Invalid),
        ("gpa range wraps", region(1, u64::MAX & !0xfff, 0x2000, 0x1000), Invalid),
        ("too many pages", region(1, 0, (MEM_MAX_NR_PAGES + 1) << PAGE_SHIFT, 0x1000), Invalid),
        ("delete missing slot", region(5, 0, 0, 0x1000), Invalid),
        ("same range", region(1, 0x10_0000, 0x10_0000, 0x7100_0000), Exists),
        ("overlaps front", region(1, 0xf_f000, 0x2000, 0x7100_0000), Exists),
        ("overlaps back", region(1, 0x1f_f000, 0x2000, 0x7100_0000), Exists),
        ("contained", region(1, 0x15_0000, 0x1000, 0x7100_0000), Exists),
        ("containing", region(1, 0, 0x100_0000, 0x7100_0000), Exists),
        ("modify: new hva", region(0, 0x10_0000, 0x10_0000, 0x7200_0000), Invalid),
        ("modify: new size", region(0, 0x10_0000, 0x20_0000, 0x7000_0000), Invalid),
        ("modify: toggle readonly", Region { flags: MEM_READONLY, ..region(0, 0x10_0000, 0x10_0000, 0x7000_0000) }, Invalid),
    ];
    for (what, r, want) in cases {
        assert_eq!(s.check(r, user_ok), Err(*want), "{what}");
    }
    // Nothing was changed by the refusals.
    assert_eq!(s.len(), 1);
    // Adjacent ranges are fine.
    set(&mut s, region(1, 0xf_f000, 0x1000, 0x7100_0000)).unwrap();
    set(&mut s, region(2, 0x20_0000, 0x1000, 0x7100_0000)).unwrap();
}

#[test]
fn delete_move_flags_nothing() {
    let mut s = slots();
    let r = region(7, 0x4000, 0x2000, 0x7000_0000);
    assert!(matches!(set(&mut s, r).unwrap(), Change::Create(_)));
    assert_eq!(set(&mut s, r).unwrap(), Change::Nothing);
    // Move: same id, new gpa; old range is free afterwards, new one is taken.
    let moved = Region { guest_phys_addr: 0x9000, ..r };
    assert!(matches!(set(&mut s, moved).unwrap(), Change::Move { to: 9, flags: 0, .. }));
    assert_eq!(s.find(4), None);
    assert_eq!(s.find(9).map(|m| m.id), Some(7));
    // A move may overlap its own old range.
    let shifted = Region { guest_phys_addr: 0xa000, ..r };
    set(&mut s, shifted).unwrap();
    assert_eq!(s.find(0xb).map(|m| m.id), Some(7));
    // Delete, then the range and the id can be reused.
    assert!(matches!(set(&mut s, Region { memory_size: 0, ..shifted }).unwrap(), Change::Delete(_)));
    assert!(s.is_empty());
    assert_eq!(s.find(0xa), None);
    set(&mut s, region(7, 0xa000, 0x1000, 0x7300_0000)).unwrap();
    // A readonly slot can be created and reports itself.
    set(&mut s, Region { flags: MEM_READONLY, ..region(8, 0, 0x1000, 0x7000_0000) }).unwrap();
    assert!(s.get(8).unwrap().readonly());
}

#[test]
fn many_slots_share_one_hva() {
    let mut s = slots();
    for id in 0..USER_MEM_SLOTS {
        set(&mut s, region(id, u64::from(id) << PAGE_SHIFT, 0x1000, 0x7000_0000)).unwrap();
    }
    assert_eq!(s.len(), USER_MEM_SLOTS as usize);
    assert_eq!(s.check(&region(USER_MEM_SLOTS, 1 << 40, 0x1000, 0x7000_0000), user_ok), Err(SlotError::Invalid));
    for gfn in [0u64, 1, 12345, u64::from(USER_MEM_SLOTS) - 1] {
        assert_eq!(s.find(gfn).map(|m| u64::from(m.id)), Some(gfn));
    }
    // Delete from the middle keeps both indexes consistent.
    set(&mut s, region(100, 0, 0, 0)).unwrap();
    assert_eq!(s.find(100), None);
    assert_eq!(s.find(101).map(|m| m.id), Some(101));
    assert_eq!(s.iter().count(), USER_MEM_SLOTS as usize - 1);
}

#[test]
fn dirty_logging_flag_changes() {
    let mut s = slots();
    let logging = |r: Region| Region { flags: r.flags | MEM_LOG_DIRTY_PAGES, ..r };
    let r = region(3, 0x10_0000, 0x4000, 0x7000_0000);
    // A new slot may log from the start; also together with KVM_MEM_READONLY.
    let c = set(&mut s, logging(r)).unwrap();
    assert!(matches!(c, Change::Create(m) if m.logs_dirty() && !m.readonly()));
    assert_eq!(c.before(), None);
    assert_eq!(c.after().map(|m| m.flags), Some(MEM_LOG_DIRTY_PAGES));
    let ro = Region { flags: MEM_READONLY | MEM_LOG_DIRTY_PAGES, ..region(4, 0, 0x1000, 0x7000_0000) };
    assert!(set(&mut s, ro).unwrap().after().unwrap().logs_dirty());
    // Toggling the flag on an existing slot is a flags-only change, both ways.
    let c = set(&mut s, r).unwrap();
    assert!(matches!(c, Change::FlagsOnly { flags: 0, .. }));
    assert_eq!((c.before().unwrap().flags, c.after().unwrap().flags), (MEM_LOG_DIRTY_PAGES, 0));
    assert!(!s.get(3).unwrap().logs_dirty());
    assert!(matches!(set(&mut s, logging(r)).unwrap(), Change::FlagsOnly { flags: MEM_LOG_DIRTY_PAGES, .. }));
    assert!(s.get(3).unwrap().logs_dirty());
    assert_eq!(set(&mut s, logging(r)).unwrap(), Change::Nothing);
    // ... but not READONLY, with or without the dirty flag.
    assert_eq!(s.check(&Region { flags: MEM_READONLY | MEM_LOG_DIRTY_PAGES, ..r }, user_ok), Err(SlotError::Invalid));
    // A move may toggle it at the same time, and the slot keeps the new flags.
    let moved = Region { guest_phys_addr: 0x20_0000, ..r };
    let c = set(&mut s, moved).unwrap();
    assert!(matches!(c, Change::Move { to: 0x200, flags: 0, .. }));
    assert_eq!(c.after().map(|m| (m.base_gfn, m.flags, m.npages)), Some((0x200, 0, 4)));
    assert_eq!(s.find(0x201).map(|m| m.flags), Some(0));
    // Delete: the old slot is reported, nothing after.
    let c = set(&mut s, Region { memory_size: 0, ..moved }).unwrap();
    assert_eq!((c.before().map(|m| m.id), c.after()), (Some(3), None));
}

//! Dirty page logging: the manual-protect options, the bitmap's fate on each slot change, the
//! `KVM_CLEAR_DIRTY_LOG` checks in upstream's order, and the GET/CLEAR loops, also against a
//! model of write-protected mappings driven by a pseudo-random guest.

use crate::dirty::*;
use crate::memslot::{Change, Memslot, MEM_LOG_DIRTY_PAGES, MEM_READONLY, USER_MEM_SLOTS};

fn slot(id: u16, npages: u64, flags: u32) -> Memslot {
    Memslot { id, base_gfn: 0x100, npages, userspace_addr: 0x7000_0000, flags }
}

fn bitmap(npages: u64, all_set: bool) -> DirtyBitmap<Vec<u64>> {
    DirtyBitmap::new(1, npages, vec![0; 2 * words(npages)], all_set)
}

#[test]
fn manual_protect_options() {
    use LogError::Invalid;
    assert_eq!(manual_protect(0, 0), Ok(0));
    assert_eq!(manual_protect(0, MANUAL_PROTECT_ENABLE), Ok(1));
    assert_eq!(manual_protect(0, MANUAL_CAPS), Ok(3));
    // INITIALLY_SET depends on MANUAL_PROTECT_ENABLE.
    assert_eq!(manual_protect(0, INITIALLY_SET), Err(Invalid));
    assert_eq!(manual_protect(0, MANUAL_CAPS | 4), Err(Invalid));
    assert_eq!(manual_protect(0, 1 << 63), Err(Invalid));
    assert_eq!(manual_protect(1, MANUAL_PROTECT_ENABLE), Err(Invalid));
    assert!(initially_set(MANUAL_CAPS) && !initially_set(MANUAL_PROTECT_ENABLE));
}

#[test]
fn slot_ids_and_sizes() {
    assert_eq!(log_slot_id(0), Ok(0));
    assert_eq!(log_slot_id(USER_MEM_SLOTS - 1), Ok(USER_MEM_SLOTS as u16 - 1));
    assert_eq!(log_slot_id(USER_MEM_SLOTS), Err(LogError::Invalid));
    assert_eq!(log_slot_id(0xffff), Err(LogError::Invalid));
    // One address space: any non-zero address-space id is invalid.
    assert_eq!(log_slot_id(1 << 16), Err(LogError::Invalid));
    assert_eq!(log_slot_id(2 << 16 | 3), Err(LogError::Invalid));
    assert_eq!([1, 63, 64, 65, 128, (1 << 31) - 1].map(words), [1, 1, 1, 2, 2, 1 << 25]);
}

#[test]
fn bitmap_follows_the_flag() {
    use BitmapChange::*;
    let plain = slot(1, 16, 0);
    let logging = slot(1, 16, MEM_LOG_DIRTY_PAGES);
    let cases: &[(Change, BitmapChange)] = &[
        (Change::Create(plain), Keep),
        (Change::Create(logging), Alloc { all_set: false }),
        (Change::Create(slot(1, 16, MEM_LOG_DIRTY_PAGES | MEM_READONLY)), Alloc { all_set: false }),
        (Change::Delete(plain), Keep),
        (Change::Delete(logging), Free),
        (Change::FlagsOnly { old: plain, flags: MEM_LOG_DIRTY_PAGES }, Alloc { all_set: false }),
        (Change::FlagsOnly { old: logging, flags: 0 }, Free),
        // A move reuses the bitmap (upstream: `new->dirty_bitmap = old->dirty_bitmap`).
        (Change::Move { old: logging, to: 0x900, flags: MEM_LOG_DIRTY_PAGES }, Keep),
        (Change::Move { old: logging, to: 0x900, flags: 0 }, Free),
        (Change::Move { old: plain, to: 0x900, flags: MEM_LOG_DIRTY_PAGES }, Alloc { all_set: false }),
        (Change::Move { old: plain, to: 0x900, flags: 0 }, Keep),
        (Change::Nothing, Keep),
    ];
    for (c, want) in cases {
        assert_eq!(bitmap_change(c, 0), *want, "{c:?}");
        assert_eq!(bitmap_change(c, MANUAL_PROTECT_ENABLE), *want, "{c:?}");
        let init = match want {
            Alloc { .. } => Alloc { all_set: true },
            w => *w,
        };
        assert_eq!(bitmap_change(c, MANUAL_CAPS), init, "{c:?}");
    }
}

#[test]
fn turning_logging_on_write_protects() {
    let plain = slot(1, 16, 0);
    let logging = slot(1, 16, MEM_LOG_DIRTY_PAGES);
    let on = Change::FlagsOnly { old: plain, flags: MEM_LOG_DIRTY_PAGES };
    assert!(protect_on_commit(&on, 0));
    assert!(protect_on_commit(&on, MANUAL_PROTECT_ENABLE));
    // Initially-all-set: every page counts as dirty, nothing to protect yet.
    assert!(!protect_on_commit(&on, MANUAL_CAPS));
    // Turning it off, a new or moved slot (no mappings), a read-only slot: nothing.
    assert!(!protect_on_commit(&Change::FlagsOnly { old: logging, flags: 0 }, 0));
    assert!(!protect_on_commit(&Change::Create(logging), 0));
    assert!(!protect_on_commit(&Change::Move { old: plain, to: 0x900, flags: MEM_LOG_DIRTY_PAGES }, 0));
    let ro = slot(1, 16, MEM_READONLY);
    assert!(!protect_on_commit(&Change::FlagsOnly { old: ro, flags: MEM_READONLY | MEM_LOG_DIRTY_PAGES }, 0));
}

#[test]
fn new_bitmaps() {
    let b = bitmap(100, false);
    assert_eq!(b.bits.len(), 4);
    assert!(b.bits.iter().all(|&w| w == 0));
    // Initially set: exactly the slot's pages, the buffer half untouched.
    let mut b = bitmap(100, true);
    let (live, buf) = b.halves();
    assert_eq!(live, [u64::MAX, (1 << 36) - 1]);
    assert_eq!(buf, [0, 0]);
    let mut b = bitmap(128, true);
    assert_eq!(b.halves().0, [u64::MAX, u64::MAX]);
    let mut b = bitmap(1, true);
    assert_eq!(b.halves().0, [1]);
    let mut v = vec![7u64; 3];
    set_all(&mut v, 0);
    assert_eq!(v, [0, 0, 0]);
}

#[test]
fn lookup_by_id() {
    let mut v: Vec<DirtyBitmap<Vec<u64>>> = Vec::new();
    for id in [5u16, 1, 9, 3] {
        let i = insert_index(&v, id);
        v.insert(i, DirtyBitmap::new(id, 64, vec![0; 2], false));
    }
    assert_eq!(v.iter().map(|b| b.id).collect::<Vec<_>>(), [1, 3, 5, 9]);
    assert_eq!(find(&mut v, 9).map(|b| b.id), Some(9));
    assert!(find(&mut v, 4).is_none());
}

#[test]
fn get_takes_the_bits_and_names_the_pages() {
    let mut b = bitmap(130, false);
    let (live, snap) = b.halves();
    for p in [0, 5, 63, 64, 129] {
        mark(live, p);
    }
    assert!(test(live, 63) && !test(live, 62));
    let mut protected = Vec::new();
    assert!(take(live, snap, |off, mask| protected.push((off, mask))));
    assert_eq!(snap, [1 | 1 << 5 | 1 << 63, 1, 1 << 1]);
    assert_eq!(live, [0, 0, 0]);
    assert_eq!(protected, [(0, 1 | 1 << 5 | 1 << 63), (64, 1), (128, 2)]);
    // Nothing dirty: no page named, the snapshot is all zeros.
    assert!(!take(live, snap, |_, _| panic!("nothing to protect")));
    assert_eq!(snap, [0, 0, 0]);
    // A failed copy puts the snapshot back, merged with what was logged meanwhile.
    mark(live, 7);
    snap.copy_from_slice(&[1, 0, 0]);
    restore(live, snap);
    assert_eq!(live, [1 | 1 << 7, 0, 0]);
}

#[test]
fn clear_checks_in_upstream_order() {
    use LogError::*;
    let npages = |n: u64| move |_| Some(n);
    let none = |_| None;
    // Invalid slot id first, then a misaligned first page, then a missing slot, then the range.
    assert_eq!(check_clear(USER_MEM_SLOTS, 1, 0, none), Err(Invalid));
    assert_eq!(check_clear(1 << 16, 0, 64, npages(128)), Err(Invalid));
    assert_eq!(check_clear(1, 1, 64, none), Err(Invalid));
    assert_eq!(check_clear(1, 32, 64, npages(128)), Err(Invalid));
    assert_eq!(check_clear(1, 0, 1 << 31, none), Err(NoEntry));
    let cases: &[(u64, u32, u64, Result<ClearRange, LogError>)] = &[
        // (first_page, num_pages, slot pages, result)
        (0, 128, 128, Ok(ClearRange { first_page: 0, words: 2 })),
        (64, 64, 128, Ok(ClearRange { first_page: 64, words: 1 })),
        (0, 64, 128, Ok(ClearRange { first_page: 0, words: 1 })),
        (0, 0, 128, Ok(ClearRange { first_page: 0, words: 0 })),
        (128, 0, 128, Ok(ClearRange { first_page: 128, words: 0 })),
        // Not a multiple of 64: only if it reaches the end of the slot.
        (0, 100, 100, Ok(ClearRange { first_page: 0, words: 2 })),
        (64, 36, 100, Ok(ClearRange { first_page: 64, words: 1 })),
        (0, 36, 100, Err(Invalid)),
        (0, 65, 128, Err(Invalid)),
        // Beyond the slot.
        (192, 0, 128, Err(Invalid)),
        (64, 65, 128, Err(Invalid)),
        (0, 192, 128, Err(Invalid)),
        (u64::MAX & !63, 64, 128, Err(Invalid)),
    ];
    for &(first, num, n, want) in cases {
        assert_eq!(check_clear(2, first, num, npages(n)), want.map(|r| (2, r)), "first {first} num {num} of {n}");
    }
}

#[test]
fn clear_names_only_pages_that_were_dirty() {
    let mut b = bitmap(100, true);
    let (live, _) = b.halves();
    let r = ClearRange { first_page: 64, words: 1 };
    let mut protected = Vec::new();
    // Bits beyond the slot's 100 pages clear nothing and protect nothing.
    assert!(clear(live, &r, &[u64::MAX], |off, mask| protected.push((off, mask))));
    assert_eq!(protected, [(64, (1 << 36) - 1)]);
    assert_eq!(live, [u64::MAX, 0]);
    protected.clear();
    assert!(!clear(live, &r, &[u64::MAX], |off, mask| protected.push((off, mask))));
    assert!(protected.is_empty());
    let r = ClearRange { first_page: 0, words: 1 };
    assert!(clear(live, &r, &[0b1010], |off, mask| protected.push((off, mask))));
    assert_eq!(protected, [(0, 0b1010)]);
    assert_eq!(live[0], !0b1010);
    // words = 0 reads no user word at all.
    assert!(!clear(live, &ClearRange { first_page: 0, words: 0 }, &[], |_, _| unreachable!()));
}

/// A tiny deterministic generator (xorshift64*), so the model test needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A logging slot as the kernel runs it: the bitmap plus which pages are mapped writable, with
/// guest writes going through `Vm::fault_in`'s rule (a write to a non-writable page faults,
/// becomes writable and is logged) and GET/CLEAR write-protecting what they name.
struct Model {
    npages: u64,
    bm: DirtyBitmap<Vec<u64>>,
    writable: Vec<bool>,
}

impl Model {
    fn new(npages: u64, all_set: bool) -> Self {
        Model { npages, bm: bitmap(npages, all_set), writable: vec![false; npages as usize] }
    }

    fn guest_write(&mut self, p: u64) {
        if !self.writable[p as usize] {
            self.writable[p as usize] = true;
            mark(self.bm.halves().0, p);
        }
    }

    fn protect(writable: &mut [bool], off: u64, mut mask: u64) {
        while mask != 0 {
            writable[(off + u64::from(mask.trailing_zeros())) as usize] = false;
            mask &= mask - 1;
        }
    }

    /// KVM_GET_DIRTY_LOG without manual protect.
    fn get_and_protect(&mut self) -> Vec<u64> {
        let (live, snap) = self.bm.halves();
        let w = &mut self.writable;
        take(live, snap, |off, mask| Self::protect(w, off, mask));
        snap.to_vec()
    }

    /// KVM_GET_DIRTY_LOG with manual protect.
    fn get(&mut self) -> Vec<u64> {
        self.bm.halves().0.to_vec()
    }

    fn clear(&mut self, first_page: u64, user: &[u64]) {
        let num = (user.len() as u64 * 64).min(self.npages - first_page) as u32;
        let (_, r) = check_clear(0, first_page, num, |_| Some(self.npages)).unwrap();
        let (live, _) = self.bm.halves();
        let w = &mut self.writable;
        clear(live, &r, user, |off, mask| Self::protect(w, off, mask));
    }
}

fn pages(bits: &[u64]) -> Vec<u64> {
    (0..bits.len() as u64 * 64).filter(|&p| test(bits, p)).collect()
}

#[test]
fn model_get_reports_exactly_the_pages_written_since_the_last_get() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut m = Model::new(200, false);
    for _round in 0..200 {
        let mut written = std::collections::BTreeSet::new();
        for _ in 0..rng.next() % 40 {
            let p = rng.next() % 200;
            m.guest_write(p);
            written.insert(p);
        }
        assert_eq!(pages(&m.get_and_protect()), written.into_iter().collect::<Vec<_>>());
    }
}

#[test]
fn model_manual_protect_loses_no_write() {
    for all_set in [false, true] {
        let mut rng = Rng(0xdead_beef_0bad_f00d);
        let mut m = Model::new(300, all_set);
        // Pages written since userspace last cleared them: each must stay reported.
        let mut pending: std::collections::BTreeSet<u64> = if all_set { (0..300).collect() } else { Default::default() };
        for _round in 0..300 {
            for _ in 0..rng.next() % 30 {
                let p = rng.next() % 300;
                m.guest_write(p);
                pending.insert(p);
            }
            let got = pages(&m.get());
            assert!(pending.iter().all(|p| got.contains(p)), "all_set {all_set}");
            // Clear a random 64-aligned range with a random mask: those pages are clean now.
            let first = (rng.next() % 5) * 64;
            let n = words(300 - first);
            let user: Vec<u64> = (0..n).map(|_| rng.next() & rng.next()).collect();
            m.clear(first, &user);
            for (i, w) in user.iter().enumerate() {
                for b in 0..64 {
                    if w & 1 << b != 0 {
                        pending.remove(&(first + i as u64 * 64 + b));
                    }
                }
            }
            // And a page the bitmap does not report is never writable.
            let live = m.get();
            assert!((0..300).all(|p| test(&live, p) || !m.writable[p as usize]));
        }
    }
}

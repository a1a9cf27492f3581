//! The MMU notifier's rules: the invalidation window and retry rule, and the hva index.

use crate::invalidate::*;
use crate::memslot::Memslot;

const P: u64 = 4096;

#[test]
fn retry_rule() {
    let mut w = Invalidation::new();
    let seq = w.seq();
    assert!(!w.retry(seq, 0x1000));
    // A running invalidation covers [0x2000, 0x4000): pages there retry, the others do not.
    w.begin(0x2000, 0x4000);
    assert_eq!(w.in_progress(), 1);
    assert!(!w.retry(seq, 0x1000));
    assert!(w.retry(seq, 0x2000));
    assert!(w.retry(seq, 0x3fff));
    assert!(!w.retry(seq, 0x4000));
    // An unaligned address is judged by its page.
    assert!(w.retry(seq, 0x1fff + 1));
    assert!(!w.retry(seq, 0x1fff));
    // Once it ended, a fault that sampled before retries wherever it is; a new sample does not.
    assert!(w.end(true));
    assert_eq!(w.in_progress(), 0);
    assert!(w.retry(seq, 0x1000));
    assert!(w.retry(seq, 0x8000));
    assert!(!w.retry(w.seq(), 0x2000));
}

#[test]
fn unaligned_range_covers_its_pages() {
    let mut w = Invalidation::new();
    w.begin(0x2800, 0x3001);
    let s = w.seq();
    assert!(!w.retry(s, 0x1000));
    assert!(w.retry(s, 0x2000));
    assert!(w.retry(s, 0x3000));
    assert!(!w.retry(s, 0x4000));
}

#[test]
fn concurrent_invalidations_accumulate() {
    let mut w = Invalidation::new();
    w.begin(0x10000, 0x11000);
    w.begin(0x40000, 0x41000);
    let s = w.seq();
    // The union, holes included (upstream's shortcut), until both ended.
    assert!(w.retry(s, 0x20000));
    assert!(w.end(true));
    assert!(w.retry(w.seq(), 0x20000));
    assert!(w.retry(w.seq(), 0x10000));
    assert!(w.end(true));
    assert!(!w.retry(w.seq(), 0x20000));
    // A new window starts from its own range again.
    w.begin(0x50000, 0x51000);
    assert!(!w.retry(w.seq(), 0x20000));
}

#[test]
fn unbalanced_end_only_moves_the_sequence() {
    let mut w = Invalidation::new();
    let s = w.seq();
    assert!(!w.end(true));
    assert_eq!(w.in_progress(), 0);
    assert!(w.retry(s, 0));
}

/// A range that hit no slot closes the window without moving the sequence: faults elsewhere
/// in flight keep their sample.
#[test]
fn end_of_a_range_outside_the_slots_keeps_the_sequence() {
    let mut w = Invalidation::new();
    let s = w.seq();
    w.begin(0x5000, 0x6000);
    assert!(w.retry(s, 0x5000));
    assert!(!w.retry(s, 0x1000));
    assert!(w.end(false));
    assert_eq!(w.seq(), s);
    assert!(!w.retry(s, 0x5000));
}

/// The race the window closes, checked over every interleaving: a fault samples the sequence,
/// looks up the page the process maps at the address (`pte`), and maps it into the guest
/// (`ept`) unless the retry rule objects; meanwhile invalidations zap the guest mapping at their
/// start, change `pte` (the process unmaps or replaces the page) and end. Each step runs under
/// the lock except the lookup and the change of `pte`, as in the kernel. Whatever the order, the
/// guest never ends up mapping a page the process no longer maps.
#[derive(Clone, Copy)]
enum Step {
    Sample,
    Lookup,
    Map,
    Begin,
    Change,
    End,
}

struct Model {
    w: Invalidation,
    pte: u32,
    next_page: u32,
    ept: Option<u32>,
    seq: u64,
    page: u32,
    retried: bool,
}

fn run(steps: &[Step]) -> Model {
    const HVA: u64 = 0x7000_0000;
    let mut m = Model { w: Invalidation::new(), pte: 1, next_page: 2, ept: None, seq: 0, page: 0, retried: false };
    for s in steps {
        match *s {
            Step::Sample => m.seq = m.w.seq(),
            Step::Lookup => m.page = m.pte,
            Step::Map => {
                if m.w.retry(m.seq, HVA) {
                    m.retried = true;
                } else {
                    m.ept = Some(m.page);
                }
            }
            Step::Begin => {
                m.w.begin(HVA, HVA + P);
                m.ept = None;
            }
            Step::Change => {
                m.pte = m.next_page;
                m.next_page += 1;
            }
            Step::End => assert!(m.w.end(true)),
        }
        // The invariant at every step: outside a running invalidation of the page, the guest
        // maps nothing or what the process maps.
        if m.w.in_progress() == 0 {
            assert!(m.ept.is_none() || m.ept == Some(m.pte), "stale mapping");
        }
    }
    m
}

/// All interleavings of the given sequences (each kept in order).
fn interleavings(seqs: &[Vec<Step>]) -> Vec<Vec<Step>> {
    fn go(seqs: &[Vec<Step>], pos: &mut Vec<usize>, cur: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
        let mut done = true;
        for i in 0..seqs.len() {
            if pos[i] < seqs[i].len() {
                done = false;
                cur.push(seqs[i][pos[i]]);
                pos[i] += 1;
                go(seqs, pos, cur, out);
                pos[i] -= 1;
                cur.pop();
            }
        }
        if done {
            out.push(cur.clone());
        }
    }
    let mut out = Vec::new();
    go(seqs, &mut vec![0; seqs.len()], &mut Vec::new(), &mut out);
    out
}

#[test]
fn fault_never_maps_a_stale_page() {
    let fault = vec![Step::Sample, Step::Lookup, Step::Map];
    let inv = vec![Step::Begin, Step::Change, Step::End];
    let mut maps = 0;
    let mut retries = 0;
    for case in [vec![fault.clone(), inv.clone()], vec![fault.clone(), inv.clone(), inv.clone()]] {
        for order in interleavings(&case) {
            let m = run(&order);
            assert!(m.ept.is_none() || m.ept == Some(m.pte));
            maps += usize::from(m.ept.is_some());
            retries += usize::from(m.retried);
        }
    }
    // Both outcomes occur: the rule is not "always retry".
    assert!(maps > 0 && retries > 0);
}

/// Without the sequence (the check only looks at running invalidations), the same interleavings
/// do produce stale mappings: the model catches the race the sequence closes.
#[test]
fn range_check_alone_is_not_enough() {
    let order = [Step::Sample, Step::Begin, Step::Lookup, Step::Change, Step::End, Step::Map];
    let mut w = Invalidation::new();
    let hva = 0x7000_0000;
    let mut pte = 1;
    let mut page = 0;
    let mut ept = None;
    let mut seq = 0;
    for s in order {
        match s {
            Step::Sample => seq = w.seq(),
            Step::Lookup => page = pte,
            Step::Change => pte = 2,
            Step::Begin => w.begin(hva, hva + P),
            Step::End => {
                w.end(true);
            }
            Step::Map => {
                // The running-range part alone would let it through...
                assert_eq!(w.in_progress(), 0);
                // ...and the full rule does not.
                assert!(w.retry(seq, hva));
                ept = Some(page);
            }
        }
    }
    assert_ne!(ept, Some(pte));
}

fn slot(id: u16, base_gfn: u64, npages: u64, hva: u64) -> Memslot {
    Memslot { id, base_gfn, npages, userspace_addr: hva, flags: 0 }
}

#[test]
fn gfn_range_of_a_slot() {
    let s = HvaSlot::of(&slot(1, 0x100, 16, 0x7000_0000));
    assert_eq!(s.end, 0x7000_0000 + 16 * P);
    assert_eq!(s.gfn_range(0x7000_0000, 0x7000_0000 + 16 * P), Some((0x100, 0x110)));
    // Partial overlaps at either end.
    assert_eq!(s.gfn_range(0x6000_0000, 0x7000_0000 + 2 * P), Some((0x100, 0x102)));
    assert_eq!(s.gfn_range(0x7000_0000 + 15 * P, 0x8000_0000), Some((0x10f, 0x110)));
    // Unaligned bounds take every page they touch.
    assert_eq!(s.gfn_range(0x7000_0000 + P + 1, 0x7000_0000 + 2 * P + 1), Some((0x101, 0x103)));
    assert_eq!(s.gfn_range(0x7000_0000 + 5 * P + 7, 0x7000_0000 + 5 * P + 8), Some((0x105, 0x106)));
    // Misses.
    assert_eq!(s.gfn_range(0x6000_0000, 0x7000_0000), None);
    assert_eq!(s.gfn_range(0x7000_0000 + 16 * P, 0x9000_0000), None);
}

fn overlaps(ix: &HvaIndex<Vec<HvaSlot>>, start: u64, end: u64) -> Vec<(u16, u64, u64)> {
    let mut v = Vec::new();
    ix.for_each_overlap(start, end, |id, lo, hi| v.push((id, lo, hi)));
    v.sort();
    v
}

#[test]
fn index_finds_overlapping_slots() {
    let mut ix = HvaIndex::new(Vec::new());
    ix.insert(&slot(0, 0, 16, 0x1000_0000));
    ix.insert(&slot(1, 0x1000, 256, 0x2000_0000));
    // Slot 2 aliases the middle of slot 1's memory at other guest addresses.
    ix.insert(&slot(2, 0x8000, 4, 0x2000_0000 + 10 * P));
    assert_eq!(ix.entries().len(), 3);
    assert!(ix.entries().windows(2).all(|w| w[0].start <= w[1].start));
    assert_eq!(overlaps(&ix, 0x1000_0000 + 3 * P, 0x1000_0000 + 4 * P), vec![(0, 3, 4)]);
    assert_eq!(overlaps(&ix, 0x2000_0000 + 11 * P, 0x2000_0000 + 12 * P), vec![(1, 0x100b, 0x100c), (2, 0x8001, 0x8002)]);
    assert_eq!(overlaps(&ix, 0, u64::MAX).len(), 3);
    assert_eq!(overlaps(&ix, 0x3000_0000, 0x4000_0000), vec![]);
    assert!(ix.overlaps(0x2000_0000 + 255 * P, 0x3000_0000));
    assert!(!ix.overlaps(0x2000_0000 + 256 * P, 0x3000_0000));
    // A slot that moved keeps its host range and maps it at its new frames.
    ix.set_base_gfn(2, 0x9000);
    assert_eq!(overlaps(&ix, 0x2000_0000 + 11 * P, 0x2000_0000 + 12 * P), vec![(1, 0x100b, 0x100c), (2, 0x9001, 0x9002)]);
    ix.remove(1);
    assert_eq!(overlaps(&ix, 0x2000_0000 + 11 * P, 0x2000_0000 + 12 * P), vec![(2, 0x9001, 0x9002)]);
    assert_eq!(overlaps(&ix, 0x2000_0000, 0x2000_0000 + P), vec![]);
    ix.remove(7); // not there
    ix.remove(0);
    ix.remove(2);
    assert!(ix.entries().is_empty());
    assert_eq!(overlaps(&ix, 0, u64::MAX), vec![]);
}

/// Against a brute-force scan, over pseudo-random slots (long and short, overlapping in host
/// memory) and ranges, with removals that shrink the longest slot.
#[test]
fn index_matches_brute_force() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rnd = |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut ix = HvaIndex::new(Vec::new());
    let mut all: Vec<Memslot> = Vec::new();
    for round in 0..400u64 {
        if all.len() < 40 && rnd(3) != 0 {
            let id = (round % 30000) as u16;
            let npages = if rnd(10) == 0 { 1 + rnd(4096) } else { 1 + rnd(8) };
            let s = slot(id, rnd(1 << 20), npages, 0x1000_0000 + rnd(2048) * P);
            ix.insert(&s);
            all.push(s);
        } else if !all.is_empty() {
            let s = all.swap_remove(rnd(all.len() as u64) as usize);
            ix.remove(s.id);
        }
        for _ in 0..8 {
            let a = 0x1000_0000 + rnd(2048 + 4096) * P - P + rnd(2) * 123;
            let b = a + 1 + rnd(64 * P);
            let mut want: Vec<_> =
                all.iter().filter_map(|s| HvaSlot::of(s).gfn_range(a, b).map(|(lo, hi)| (s.id, lo, hi))).collect();
            want.sort();
            assert_eq!(overlaps(&ix, a, b), want, "range {a:#x}..{b:#x}");
        }
    }
}

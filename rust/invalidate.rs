//! The rules behind the MMU notifier (pure, host-tested): the invalidation window that EPT faults
//! check before they map a page, and the index that turns a range of the VMM's addresses into the
//! guest frames that must be unmapped.
//!
//! Upstream keeps both in `struct kvm` (virt/kvm/kvm_main.c): `mmu_invalidate_seq`,
//! `mmu_invalidate_in_progress` and `mmu_invalidate_range_start/end` (changed by
//! `kvm_mmu_invalidate_begin`, `kvm_mmu_invalidate_range_add` and `kvm_mmu_invalidate_end`, read
//! by `mmu_invalidate_retry_gfn`), and each memslot's `hva_node` in an interval tree
//! (`kvm_for_each_memslot_in_hva_range`, used by `__kvm_handle_hva_range`).
//!
//! One difference: the window records host-virtual addresses, not guest frames. Upstream turns
//! the notifier's range into gfns through the memslots of the moment, and so must keep the
//! memslots from changing between an invalidation's start and end (memslot updates wait for
//! `mn_active_invalidate_count` to drop to 0). A fault's host address is what the invalidation
//! is about whatever slot maps it, so recording addresses needs no such wait: a slot created
//! while a range is being invalidated is covered too.

use crate::memslot::{Memslot, SlotVec, PAGE_SHIFT, PAGE_SIZE};

/// The invalidation window (upstream: the `mmu_invalidate_*` fields of `struct kvm`), under the
/// VM's MMU lock.
///
/// A fault samples [`Invalidation::seq`] before it looks up the host page, and maps the page
/// only if [`Invalidation::retry`] says no once the lock is held again: no invalidation of the
/// page's address is running, and none ended since the sample. An invalidation that started
/// after the lookup is either still running (its range covers the page) or over (the sequence
/// moved), so a page that the process unmapped meanwhile is never mapped into the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Invalidation {
    /// Bumped by every [`Invalidation::end`] (upstream `mmu_invalidate_seq`).
    seq: u64,
    /// Invalidations started and not yet ended (upstream `mmu_invalidate_in_progress`).
    in_progress: u32,
    /// Union of the running invalidations' host ranges, `[start, end)`; meaningful only while
    /// `in_progress > 0`. Upstream's "minimal range which includes the current and new ranges":
    /// it only grows until every running invalidation has ended.
    start: u64,
    end: u64,
}

impl Invalidation {
    /// No invalidation ever ran.
    pub const fn new() -> Self {
        Invalidation { seq: 0, in_progress: 0, start: 0, end: 0 }
    }

    /// The sequence count a fault samples before it looks its page up.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// How many invalidations are running.
    pub fn in_progress(&self) -> u32 {
        self.in_progress
    }

    /// An invalidation of host range `[start, end)` starts (upstream `kvm_mmu_invalidate_begin`
    /// followed by `kvm_mmu_invalidate_range_add`).
    pub fn begin(&mut self, start: u64, end: u64) {
        if self.in_progress == 0 {
            self.start = start;
            self.end = end;
        } else {
            self.start = self.start.min(start);
            self.end = self.end.max(end);
        }
        self.in_progress = self.in_progress.saturating_add(1);
    }

    /// An invalidation ends (upstream `kvm_mmu_invalidate_end`): the sequence moves first, so a
    /// fault that sampled it before cannot map what this invalidation removed. Returns false,
    /// and changes only the sequence, if none was running (a caller bug upstream reports with
    /// `KVM_BUG_ON`).
    ///
    /// `touched_slot`: whether the range overlaps a slot now. If not, the sequence stays (as
    /// upstream's, which only moves for ranges that hit a slot): a fault holds the slots lock
    /// from its lookup to its check, so the slot of a fault in flight is in the index
    /// throughout, and a range that covered its address overlaps a slot at the end.
    pub fn end(&mut self, touched_slot: bool) -> bool {
        if touched_slot {
            self.seq = self.seq.wrapping_add(1);
        }
        if self.in_progress == 0 {
            return false;
        }
        self.in_progress -= 1;
        true
    }

    /// Whether a fault that sampled `seq` must not map the page at host address `hva` and try
    /// again (upstream `mmu_invalidate_retry_gfn`, by host address): an invalidation covering
    /// the page is running, or one ended since the sample.
    pub fn retry(&self, seq: u64, hva: u64) -> bool {
        let page = hva & !(PAGE_SIZE - 1);
        if self.in_progress > 0 && page < self.end && page.saturating_add(PAGE_SIZE) > self.start {
            return true;
        }
        self.seq != seq
    }
}

/// A slot as the hva index sees it: its host range and where that lands in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HvaSlot {
    /// First host address (page-aligned).
    pub start: u64,
    /// One past the last host address.
    pub end: u64,
    /// The guest frame of `start`.
    pub base_gfn: u64,
    /// The slot's id.
    pub id: u16,
}

impl HvaSlot {
    /// The index entry of `slot`.
    pub fn of(slot: &Memslot) -> Self {
        HvaSlot {
            start: slot.userspace_addr,
            end: slot.userspace_addr + (slot.npages << PAGE_SHIFT),
            base_gfn: slot.base_gfn,
            id: slot.id,
        }
    }

    /// The guest frames whose page intersects host range `[start, end)`, as `[first, last)`,
    /// or `None` if the range misses the slot (upstream, in `__kvm_handle_hva_range`:
    /// `hva_to_gfn_memslot(max(start, slot start))` up to
    /// `hva_to_gfn_memslot(min(end, slot end) + PAGE_SIZE - 1)`).
    pub fn gfn_range(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        let lo = start.max(self.start);
        let hi = end.min(self.end);
        if lo >= hi {
            return None;
        }
        let first = self.base_gfn + ((lo - self.start) >> PAGE_SHIFT);
        let last = self.base_gfn + ((hi - self.start + PAGE_SIZE - 1) >> PAGE_SHIFT);
        Some((first, last))
    }
}

/// The VM's slots by host address (upstream: the memslots' `hva_tree`), so that an invalidation
/// finds the slots it touches without the slots lock, which is held across copies to and from
/// userspace and so cannot be taken by the notifier (a copy may fault and invalidate).
///
/// # Invariants
///
/// `by_hva` holds one entry per slot, sorted by `start` (slots may share host addresses);
/// `max_len` is at least the longest entry's `end - start`, so an entry that overlaps
/// `[start, end)` starts after `start - max_len`: the search looks at those entries only.
pub struct HvaIndex<V> {
    by_hva: V,
    max_len: u64,
}

impl<V: SlotVec<HvaSlot>> HvaIndex<V> {
    /// An empty index over the given (empty) storage.
    pub fn new(by_hva: V) -> Self {
        HvaIndex { by_hva, max_len: 0 }
    }

    /// The entries, by host address.
    pub fn entries(&self) -> &[HvaSlot] {
        self.by_hva.as_slice()
    }

    /// The storage, for the kernel to grow it outside the MMU lock (the same entries must be
    /// put back, in the same order).
    pub fn storage_mut(&mut self) -> &mut V {
        &mut self.by_hva
    }

    /// Adds `slot` (room for one more entry was made first).
    pub fn insert(&mut self, slot: &Memslot) {
        let e = HvaSlot::of(slot);
        let i = self.by_hva.as_slice().partition_point(|x| x.start <= e.start);
        self.by_hva.insert(i, e);
        self.max_len = self.max_len.max(e.end - e.start);
    }

    /// Removes slot `id`, if present.
    pub fn remove(&mut self, id: u16) {
        let Some(i) = self.by_hva.as_slice().iter().position(|x| x.id == id) else {
            return;
        };
        let e = self.by_hva.remove(i);
        if e.end - e.start >= self.max_len {
            self.max_len = self.by_hva.as_slice().iter().map(|x| x.end - x.start).max().unwrap_or(0);
        }
    }

    /// Slot `id` moved to guest frame `base_gfn` (its host range is the same).
    pub fn set_base_gfn(&mut self, id: u16, base_gfn: u64) {
        if let Some(e) = self.by_hva.as_mut_slice().iter_mut().find(|x| x.id == id) {
            e.base_gfn = base_gfn;
        }
    }

    /// Whether any slot's host range intersects `[start, end)`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        let mut any = false;
        self.for_each_overlap(start, end, |_, _, _| any = true);
        any
    }

    /// Calls `f(id, first_gfn, end_gfn)` for each slot whose host range intersects
    /// `[start, end)`, with the frames concerned (see [`HvaSlot::gfn_range`]).
    pub fn for_each_overlap(&self, start: u64, end: u64, mut f: impl FnMut(u16, u64, u64)) {
        let all = self.by_hva.as_slice();
        let from = start.saturating_sub(self.max_len);
        let first = all.partition_point(|x| x.start < from);
        for e in all[first..].iter().take_while(|x| x.start < end) {
            if let Some((lo, hi)) = e.gfn_range(start, end) {
                f(e.id, lo, hi);
            }
        }
    }
}

//! Dirty page logging: the rules of `KVM_GET_DIRTY_LOG`, `KVM_CLEAR_DIRTY_LOG` and
//! `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`, and the bitmap they work on.
//!
//! Pure logic with no kernel dependency (host `cargo test` covers it, see `rust/tests/`). It
//! mirrors upstream's virt/kvm/kvm_main.c:
//!
//! - when a slot gets or loses its bitmap: `kvm_prepare_memory_region` and
//!   `kvm_commit_memory_region` ([`bitmap_change`]), and when turning logging on write-protects
//!   the slot: x86's `kvm_mmu_slot_apply_flags` ([`protect_on_commit`]);
//! - the argument checks of `kvm_get_dirty_log_protect` and `kvm_clear_dirty_log_protect`, in
//!   upstream's order so the same request gets the same errno ([`log_slot_id`], [`check_clear`]);
//! - their loops, which take bits out of the bitmap and name the pages whose mappings must be
//!   write-protected again ([`take`], [`clear`]; upstream calls
//!   `kvm_arch_mmu_enable_log_dirty_pt_masked` for each 64-page word);
//! - the options of `KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)` in
//!   `kvm_vm_ioctl_enable_cap_generic` ([`manual_protect`]).
//!
//! A bitmap is an array of 64-bit words: page `i` of the slot is bit `i % 64` of word `i / 64`,
//! which is upstream's `unsigned long` bitmap on a 64-bit little-endian host and what userspace
//! reads and writes. As upstream (`kvm_alloc_dirty_bitmap`), each bitmap is allocated twice as
//! long ([`DirtyBitmap`]): the second half is the buffer for the snapshot `KVM_GET_DIRTY_LOG`
//! copies out and for the bitmap `KVM_CLEAR_DIRTY_LOG` copies in (`kvm_second_dirty_bitmap`), so
//! neither ioctl allocates.
//!
//! Locking is the caller's (`vm.rs`): every bitmap access happens under the VM's slots lock, which
//! the vCPUs' fault handler takes too, so the plain word operations here do what upstream's
//! `xchg` and `atomic_long_fetch_andnot` do against concurrent `mark_page_dirty_in_slot`.

use crate::memslot::{Change, ADDRESS_SPACES, MEM_LOG_DIRTY_PAGES, USER_MEM_SLOTS};
use core::ops::DerefMut;

/// `KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE`: `KVM_GET_DIRTY_LOG` leaves the bitmap and the
/// mappings alone; userspace clears and re-protects with `KVM_CLEAR_DIRTY_LOG`.
pub const MANUAL_PROTECT_ENABLE: u64 = 1 << 0;
/// `KVM_DIRTY_LOG_INITIALLY_SET`: new bitmaps start with every page dirty.
pub const INITIALLY_SET: u64 = 1 << 1;
/// `KVM_DIRTY_LOG_MANUAL_CAPS` of x86 (arch/x86/include/asm/kvm_host.h): both options, which is
/// also the answer to `KVM_CHECK_EXTENSION(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)`.
pub const MANUAL_CAPS: u64 = MANUAL_PROTECT_ENABLE | INITIALLY_SET;

/// Pages per bitmap word (upstream `BITS_PER_LONG`).
pub const WORD_PAGES: u64 = 64;

/// Why a dirty-log request was refused; each maps to upstream's errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogError {
    /// `EINVAL`: malformed request.
    Invalid,
    /// `ENOENT`: no such slot, or the slot does not log dirty pages.
    NoEntry,
}

/// `KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)` (upstream
/// `kvm_vm_ioctl_enable_cap_generic`): the value to store as the VM's manual-protect setting.
/// `INITIALLY_SET` is valid only together with `MANUAL_PROTECT_ENABLE`; 0 turns manual mode
/// off again.
pub fn manual_protect(flags: u32, arg0: u64) -> Result<u64, LogError> {
    let allowed = if arg0 & MANUAL_PROTECT_ENABLE != 0 { MANUAL_CAPS } else { MANUAL_PROTECT_ENABLE };
    if flags != 0 || arg0 & !allowed != 0 {
        return Err(LogError::Invalid);
    }
    Ok(arg0)
}

/// Upstream `kvm_dirty_log_manual_protect_and_init_set`: new bitmaps start all ones, and turning
/// logging on leaves the existing mappings writable (every page already counts as dirty).
pub fn initially_set(manual: u64) -> bool {
    manual & INITIALLY_SET != 0
}

/// The number of words of a bitmap for `npages` pages (upstream `kvm_dirty_bitmap_bytes` / 8).
pub fn words(npages: u64) -> usize {
    npages.div_ceil(WORD_PAGES) as usize
}

/// The slot id named by the `slot` field of `struct kvm_dirty_log` / `kvm_clear_dirty_log`:
/// address space in bits 31:16 (rkvm has one), slot id in bits 15:0, below the number of user
/// slots; else `EINVAL` (upstream's first check in both ioctls).
pub fn log_slot_id(slot: u32) -> Result<u16, LogError> {
    let (as_id, id) = (slot >> 16, slot as u16);
    if as_id >= ADDRESS_SPACES || u32::from(id) >= USER_MEM_SLOTS {
        return Err(LogError::Invalid);
    }
    Ok(id)
}

/// What a slot change does to the slot's dirty bitmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitmapChange {
    /// Nothing: the slot logs neither before nor after, or both (a move or a no-op keeps the
    /// bitmap and its bits).
    Keep,
    /// Logging starts (a new logging slot, or the flag turned on): allocate a bitmap, all ones
    /// if `all_set`, before the change is made.
    Alloc { all_set: bool },
    /// Logging stops (the slot is deleted, or the flag turned off): free the bitmap once the
    /// change is made.
    Free,
}

/// Upstream `kvm_prepare_memory_region` (allocation) and `kvm_commit_memory_region` (freeing):
/// what `change` does to the slot's bitmap, under manual-protect setting `manual`.
pub fn bitmap_change(change: &Change, manual: u64) -> BitmapChange {
    let before = change.before().is_some_and(|s| s.logs_dirty());
    let after = change.after().is_some_and(|s| s.logs_dirty());
    match (before, after) {
        (false, true) => BitmapChange::Alloc { all_set: initially_set(manual) },
        (true, false) => BitmapChange::Free,
        _ => BitmapChange::Keep,
    }
}

/// Whether committing `change` must write-protect the slot's existing mappings (x86
/// `kvm_mmu_slot_apply_flags`): only when a flags-only change turns logging on for a writable
/// slot, and not with `INITIALLY_SET` (its pages are reported dirty until `KVM_CLEAR_DIRTY_LOG`
/// re-protects them). A new slot has no mappings, and a moved one lost them in the move.
pub fn protect_on_commit(change: &Change, manual: u64) -> bool {
    match *change {
        Change::FlagsOnly { old, flags } => {
            !old.logs_dirty() && flags & MEM_LOG_DIRTY_PAGES != 0 && !old.readonly() && !initially_set(manual)
        }
        _ => false,
    }
}

/// A logging slot's dirty bitmap (upstream `memslot->dirty_bitmap`): `2 * words(npages)` words,
/// the second half the snapshot/copy-in buffer. `B` is `KVVec<u64>` in the kernel and `Vec<u64>`
/// on the host.
pub struct DirtyBitmap<B> {
    /// The slot's id.
    pub id: u16,
    /// The slot's size in pages (bits beyond it stay 0).
    pub npages: u64,
    /// Both halves.
    pub bits: B,
}

impl<B: DerefMut<Target = [u64]>> DirtyBitmap<B> {
    /// Wraps `bits`, which must be `2 * words(npages)` zero words; with `all_set` the first
    /// `npages` bits are set (upstream `bitmap_set(new->dirty_bitmap, 0, new->npages)`).
    pub fn new(id: u16, npages: u64, mut bits: B, all_set: bool) -> Self {
        if all_set {
            set_all(&mut bits[..words(npages)], npages);
        }
        DirtyBitmap { id, npages, bits }
    }

    /// The live bitmap and the buffer (upstream `kvm_second_dirty_bitmap`).
    pub fn halves(&mut self) -> (&mut [u64], &mut [u64]) {
        let n = words(self.npages);
        self.bits[..2 * n].split_at_mut(n)
    }
}

/// The bitmap of slot `id` in `v`, which is sorted by slot id.
pub fn find<B>(v: &mut [DirtyBitmap<B>], id: u16) -> Option<&mut DirtyBitmap<B>> {
    let i = v.binary_search_by_key(&id, |b| b.id).ok()?;
    v.get_mut(i)
}

/// Where a bitmap for slot `id` goes in `v`, which is sorted by slot id.
pub fn insert_index<B>(v: &[DirtyBitmap<B>], id: u16) -> usize {
    v.partition_point(|b| b.id < id)
}

/// Sets the bits of pages `0..npages` (upstream `bitmap_set(bitmap, 0, npages)`).
pub fn set_all(bitmap: &mut [u64], npages: u64) {
    for (i, w) in bitmap.iter_mut().enumerate() {
        let first = i as u64 * WORD_PAGES;
        *w = match npages.saturating_sub(first) {
            0 => 0,
            n if n >= WORD_PAGES => u64::MAX,
            n => (1 << n) - 1,
        };
    }
}

/// Records a write to page `rel` of the slot (upstream `mark_page_dirty_in_slot`:
/// `set_bit_le(rel_gfn, memslot->dirty_bitmap)`).
pub fn mark(bitmap: &mut [u64], rel: u64) {
    bitmap[(rel / WORD_PAGES) as usize] |= 1 << (rel % WORD_PAGES);
}

/// Whether page `rel` of the slot is marked dirty.
pub fn test(bitmap: &[u64], rel: u64) -> bool {
    bitmap[(rel / WORD_PAGES) as usize] & (1 << (rel % WORD_PAGES)) != 0
}

/// The loop of `kvm_get_dirty_log_protect` without manual protect: every word of `live` moves
/// to `snap` (`xchg(&dirty_bitmap[i], 0)`), and `protect(first_page, mask)` is called for each
/// non-zero word, `first_page` being the slot-relative page of the word's bit 0 (upstream
/// `kvm_arch_mmu_enable_log_dirty_pt_masked`). `snap` is what userspace gets. Returns whether
/// any page was dirty.
pub fn take(live: &mut [u64], snap: &mut [u64], mut protect: impl FnMut(u64, u64)) -> bool {
    let mut any = false;
    for (i, (l, s)) in live.iter_mut().zip(snap.iter_mut()).enumerate() {
        *s = core::mem::take(l);
        if *s != 0 {
            any = true;
            protect(i as u64 * WORD_PAGES, *s);
        }
    }
    any
}

/// Puts a snapshot taken by [`take`] back, after copying it to userspace failed: the pages stay
/// write-protected and reported dirty, so the next `KVM_GET_DIRTY_LOG` still sees them
/// (upstream drops them).
pub fn restore(live: &mut [u64], snap: &[u64]) {
    for (l, s) in live.iter_mut().zip(snap) {
        *l |= *s;
    }
}

/// The checked arguments of one `KVM_CLEAR_DIRTY_LOG`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClearRange {
    /// Slot-relative page of bit 0 of the user's bitmap (a multiple of 64).
    pub first_page: u64,
    /// Words of the user's bitmap to read (`ALIGN(num_pages, 64) / 64`).
    pub words: usize,
}

/// The checks of `kvm_clear_dirty_log_protect`, in upstream's order: the slot id (`EINVAL`),
/// `first_page` a multiple of 64 (`EINVAL`), the slot exists and logs (`ENOENT`; `npages_of`
/// gives the page count of the slot's bitmap), then the range: within the slot, and `num_pages`
/// a multiple of 64 unless the range reaches the slot's end (`EINVAL`).
pub fn check_clear(
    slot: u32,
    first_page: u64,
    num_pages: u32,
    npages_of: impl FnOnce(u16) -> Option<u64>,
) -> Result<(u16, ClearRange), LogError> {
    let id = log_slot_id(slot)?;
    if first_page % WORD_PAGES != 0 {
        return Err(LogError::Invalid);
    }
    let npages = npages_of(id).ok_or(LogError::NoEntry)?;
    let num = u64::from(num_pages);
    if first_page > npages
        || num > npages - first_page
        || (num < npages - first_page && num % WORD_PAGES != 0)
    {
        return Err(LogError::Invalid);
    }
    Ok((id, ClearRange { first_page, words: words(num) }))
}

/// The loop of `kvm_clear_dirty_log_protect`: clears in `live` the bits set in `user` (bit 0
/// of `user[0]` is page `r.first_page`) and calls `protect(first_page, mask)` with the bits that
/// really were set (`mask &= atomic_long_fetch_andnot(mask, p)`: bits beyond the slot, or of
/// clean pages, protect nothing). Returns whether any bit was cleared.
pub fn clear(live: &mut [u64], r: &ClearRange, user: &[u64], mut protect: impl FnMut(u64, u64)) -> bool {
    let first = (r.first_page / WORD_PAGES) as usize;
    let mut any = false;
    for (i, &mask) in user[..r.words].iter().enumerate() {
        let w = &mut live[first + i];
        let cleared = *w & mask;
        *w &= !mask;
        if cleared != 0 {
            any = true;
            protect(r.first_page + i as u64 * WORD_PAGES, cleared);
        }
    }
    any
}

//! EPT: the guest-physical → host-physical tables of one VM, built on demand from its slots and
//! kept coherent with the VMM's address space by the MMU notifier.
//!
//! Upstream builds these in the TDP MMU (arch/x86/kvm/mmu/tdp_mmu.c) from `kvm_tdp_page_fault`.
//! rkvm keeps the simplest faithful form: 4-level tables of 4 KiB pages, filled one page per EPT
//! violation (`Vm::fault_in`). As upstream, a leaf holds no reference on its page: the fault
//! path takes one (`get_user_pages`) only until the leaf is written, under the VM's MMU lock and
//! only if no invalidation of the page's address ran meanwhile (`invalidate.rs`). From then on
//! the page stays mapped in the VMM as long as the leaf exists, because anything that unmaps or
//! replaces it there (munmap, `MADV_DONTNEED`, mremap, a COW break, reclaim, migration) first
//! calls the MMU notifier, which clears the leaves over that range and flushes every CPU before
//! it returns (`mmu_notifier.rs`). Deleting or moving a slot clears its leaves and flushes too.
//!
//! Locks: the tables are under a spinlock, taken inside the VM's MMU lock where the
//! invalidation window matters (mapping, invalidating). Neither may be a sleeping lock: the
//! notifier runs in reclaim and in the OOM reaper, where it must not sleep and may not fail
//! (see `mmu_notifier.rs`). So nothing allocates under them: the intermediate tables a fault
//! needs are made first (`prepare_map`, upstream's `mmu_topup_memory_caches`), and are kept
//! until the VM goes (clearing leaves never frees a table), so the leaf is still there when the
//! fault writes it.
//!
//! Dirty logging write-protects leaves: a present leaf without the write bit faults on a guest
//! write, and the fault handler logs the page and sets the bit again (`fast_fault`). Clearing
//! the bit needs a flush (`flush_remote_tlbs`); setting it does not: a CPU that still holds the
//! read-only translation faults once more and finds the leaf writable (upstream does the same in
//! `fast_page_fault`). The CPU never writes these entries itself (no EPT accessed/dirty flags in
//! the EPTP), so a writable leaf is the only sign that the guest may have written its page: a
//! leaf that loses its write bit or goes marks its page dirty (upstream `kvm_set_pfn_dirty` in
//! `handle_changed_spte`), so that writeback and swap do not drop what the guest wrote.
//!
//! Entry format (SDM vol. 3, "EPT Translation Mechanism"): bits 2:0 read/write/execute,
//! bits 5:3 memory type of a leaf (6 = write-back), bits 51:12 the physical address.

use super::{insn, page_pa};
use crate::backend::BackendVm;
use crate::ffi::bindings as b;
use crate::memslot::Memslot;
use kernel::page::Page;
use kernel::prelude::*;
use kernel::sync::{Mutex, SpinLock};

/// Read, write, execute.
const RWX: u64 = 7;
/// Read and execute (read-only slots, and pages of logging slots until written).
const RX: u64 = 5;
/// The write bit.
const W: u64 = 2;
/// Leaf memory type write-back.
const MT_WB: u64 = 6 << 3;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// EPTP for a 4-level, write-back root at `root_pa`.
pub(crate) fn eptp_of(root_pa: u64) -> u64 {
    root_pa | (3 << 3) | 6
}

/// The index into the table at `level` (4 = PML4 … 1 = PT) for guest frame `gfn`.
fn index(gfn: u64, level: u32) -> usize {
    ((gfn >> (9 * (level - 1))) & 511) as usize
}

/// The guest frames one 4-level EPT can map (48-bit guest-physical addresses).
const GFN_LIMIT: u64 = 1 << 36;

/// The EPT tables of one VM, as the CPU walks them.
///
/// Invariant: every non-leaf entry that is present points to a zeroed-at-allocation table page
/// owned by `VmxVm::owned`; a leaf is 0 or maps the page a fault found at its slot's address
/// (no reference held: see the module documentation).
struct Tables {
    root: Page,
}


/// The VMX part of a VM: its EPT.
#[pin_data(PinnedDrop)]
pub(crate) struct VmxVm {
    eptp: u64,
    /// The tables (upstream: the TDP MMU's pages under `kvm->mmu_lock`).
    #[pin]
    t: SpinLock<Tables>,
    /// Every non-root table page, freed with the VM. Only `prepare_map` adds to it (callers are
    /// serialised by the VM's slots lock; the mutex makes that explicit), never under `t`.
    #[pin]
    owned: Mutex<KVec<Page>>,
}

/// Pointer to the 512 entries of a table page.
fn entries(page_pa: u64) -> *mut u64 {
    // SAFETY: table pages are ours, in the direct map.
    unsafe { b::rkvm_phys_to_virt(page_pa).cast() }
}

/// Marks the guest page of a writable leaf dirty, as the leaf loses its write bit or goes
/// (upstream `kvm_set_pfn_dirty`).
fn leaf_page_dirtied(leaf: u64) {
    // SAFETY: a present leaf maps a page the VMM still maps (the notifier clears leaves before
    // the VMM's mapping goes, under the same lock as this), so its `struct page` is live.
    unsafe { b::rkvm_set_page_dirty(b::rkvm_phys_to_page(leaf & ADDR_MASK)) };
}

impl VmxVm {
    pub(crate) fn new() -> Result<Pin<KBox<VmxVm>>> {
        let root = Page::alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO)?;
        let eptp = eptp_of(page_pa(&root));
        KBox::pin_init(
            pin_init!(VmxVm {
                eptp,
                t <- kernel::new_spinlock!(Tables { root }),
                owned <- kernel::new_mutex!(KVec::new()),
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// The EPT pointer for this VM's VMCSs.
    pub(crate) fn eptp(&self) -> u64 {
        self.eptp
    }

    /// Flushes translations derived from this EPT on every CPU. Does not sleep (it waits for
    /// the other CPUs with interrupts on), so it may run under the spinlocks.
    fn flush_all_cpus(&self) {
        unsafe extern "C" fn flush(info: *mut kernel::ffi::c_void) {
            // SAFETY: runs on each CPU in VMX operation; single-context INVEPT of our EPTP
            // (all-context as fallback) only drops cached translations.
            unsafe {
                let eptp = info as u64;
                if insn::invept(1, eptp).is_err() {
                    let _ = insn::invept(2, 0);
                }
            }
        }
        // SAFETY: `flush` is a valid IPI callback and takes the EPTP by value.
        unsafe { b::rkvm_on_each_cpu(Some(flush), self.eptp as *mut _) };
    }
}

impl Tables {
    /// The entry at `level` on the way to `gfn` (4: the root's), if the tables above it exist.
    fn entry(&self, gfn: u64, level: u32) -> Option<*mut u64> {
        let mut table = page_pa(&self.root);
        for l in ((level + 1)..=4).rev() {
            // SAFETY: walking our own present tables (lock held by the caller's `&Tables`).
            let v = unsafe { entries(table).add(index(gfn, l)).read() };
            if v & RWX == 0 {
                return None;
            }
            table = v & ADDR_MASK;
        }
        // SAFETY: `table` is a table page; index < 512.
        Some(unsafe { entries(table).add(index(gfn, level)) })
    }

    /// The leaf entry for `gfn` if the tables above it exist (the entry itself may be empty).
    fn lookup(&self, gfn: u64) -> Option<*mut u64> {
        self.entry(gfn, 1)
    }

    /// The highest level (4 … 2) whose entry for `gfn` is missing, or `None` if the leaf's
    /// table exists.
    fn missing_level(&self, gfn: u64) -> Option<u32> {
        (2..=4).rev().find(|&level| {
            // SAFETY: `entry` returned an entry of one of our tables (lock held).
            self.entry(gfn, level).map_or(true, |e| unsafe { e.read() } & RWX == 0)
        })
    }

    /// Calls `f(entry)` for every present leaf mapping a frame in `start..end`, skipping
    /// subtrees whose table is absent.
    fn for_each_leaf(&mut self, start: u64, end: u64, f: &mut dyn FnMut(*mut u64)) {
        let root = page_pa(&self.root);
        walk(root, 4, 0, start, end.min(GFN_LIMIT), f);

        /// One table at `level` whose first entry maps frame `base`.
        fn walk(table: u64, level: u32, base: u64, start: u64, end: u64, f: &mut dyn FnMut(*mut u64)) {
            let shift = 9 * (level - 1);
            let first = if start > base { ((start - base) >> shift) as usize } else { 0 };
            for i in first..512 {
                let gfn = base + ((i as u64) << shift);
                if gfn >= end {
                    break;
                }
                // SAFETY: `table` is one of our table pages (reached from the root through
                // present entries, lock held by the caller's `&mut Tables`); i < 512.
                let e = unsafe { entries(table).add(i) };
                // SAFETY: as above.
                let v = unsafe { e.read() };
                if v & RWX == 0 {
                    continue;
                }
                if level == 1 {
                    f(e);
                } else {
                    walk(v & ADDR_MASK, level - 1, gfn, start, end, f);
                }
            }
        }
    }

    /// Clears the leaves in `start..end` (marking the pages of writable ones dirty); returns
    /// whether there were any, in which case the caller flushes before its page can go.
    fn zap_range(&mut self, start: u64, end: u64) -> bool {
        let mut any = false;
        self.for_each_leaf(start, end, &mut |e| {
            // SAFETY: a present leaf entry of our tables (lock held).
            let v = unsafe { e.read() };
            if v & W != 0 {
                leaf_page_dirtied(v);
            }
            // SAFETY: as above.
            unsafe { e.write(0) };
            any = true;
        });
        any
    }

    /// Clears the write bit of a present leaf; returns whether it was set.
    fn write_protect_leaf(e: *mut u64) -> bool {
        // SAFETY: `e` is a leaf entry of our tables, under the caller's lock.
        let v = unsafe { e.read() };
        if v & RWX == 0 || v & W == 0 {
            return false;
        }
        leaf_page_dirtied(v);
        // SAFETY: as above.
        unsafe { e.write(v & !W) };
        true
    }
}

impl BackendVm for VmxVm {
    fn as_any(&self) -> &dyn core::any::Any {
        self
    }

    fn fast_fault(&self, gfn: u64, writable: bool) -> bool {
        let t = self.t.lock();
        let Some(leaf) = t.lookup(gfn) else {
            return false;
        };
        // SAFETY: `leaf` points into one of our tables, which the lock protects.
        let old = unsafe { leaf.read() };
        if old & RWX == 0 {
            return false;
        }
        // Mapped meanwhile (another vCPU, or KVM_PRE_FAULT_MEMORY), or a write to a page
        // write-protected for dirty logging (upstream `fast_pf_fix_direct_spte`): only the write
        // bit may be missing. The page was looked up for writing whenever the slot is writable,
        // and the VMM still maps it so (a write-protection there would have cleared the leaf),
        // so setting it is enough.
        if writable && old & W == 0 {
            // SAFETY: as above.
            unsafe { leaf.write(old | W) };
        }
        true
    }

    fn prepare_map(&self, gfn: u64) -> Result {
        let mut owned = self.owned.lock();
        loop {
            let Some(level) = self.t.lock().missing_level(gfn) else {
                return Ok(());
            };
            // Allocated with no spinlock held: this may reclaim, and reclaim may call the MMU
            // notifier, which takes the MMU lock and `t`.
            let page = Page::alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO)?;
            owned.reserve(1, GFP_KERNEL_ACCOUNT)?;
            let pa = page_pa(&page);
            {
                let t = self.t.lock();
                let table = if level == 4 {
                    Some(page_pa(&t.root))
                } else {
                    // SAFETY: `entry` returns an entry of one of our tables (lock held).
                    t.entry(gfn, level + 1).map(|e| unsafe { e.read() } & ADDR_MASK)
                };
                let Some(table) = table else {
                    // Cannot happen: only this function adds tables, and never removes one.
                    return Err(EINVAL);
                };
                // SAFETY: `table` is one of our table pages (lock held); index < 512; the new
                // table is zeroed (no entries present).
                unsafe { entries(table).add(index(gfn, level)).write(pa | RWX) };
            }
            // Cannot fail: room was reserved above.
            let _ = owned.push(page, GFP_NOWAIT);
        }
    }

    fn map(&self, gfn: u64, hpa: u64, writable: bool) -> Result {
        let t = self.t.lock();
        let leaf = t.lookup(gfn).ok_or(EINVAL)?;
        // SAFETY: `leaf` is our table entry (lock held).
        unsafe { leaf.write(hpa | MT_WB | if writable { RWX } else { RX }) };
        Ok(())
    }

    fn unmap_gfn_range(&self, start: u64, end: u64) -> bool {
        self.t.lock().zap_range(start, end)
    }

    fn write_protect_masked(&self, slot: &Memslot, gfn_offset: u64, mask: u64) -> bool {
        let t = self.t.lock();
        let mut changed = false;
        let mut m = mask;
        while m != 0 {
            let bit = u64::from(m.trailing_zeros());
            if let Some(e) = t.lookup(slot.base_gfn + gfn_offset + bit) {
                changed |= Tables::write_protect_leaf(e);
            }
            m &= m - 1;
        }
        changed
    }

    fn write_protect_slot(&self, slot: &Memslot) -> bool {
        let mut t = self.t.lock();
        let mut changed = false;
        t.for_each_leaf(slot.base_gfn, slot.end_gfn(), &mut |e| changed |= Tables::write_protect_leaf(e));
        changed
    }

    fn flush_remote_tlbs(&self) {
        self.flush_all_cpus();
    }
}

#[pinned_drop]
impl PinnedDrop for VmxVm {
    fn drop(self: Pin<&mut Self>) {
        // No vCPU of this VM exists any more and the MMU notifier is gone (the VM unregisters
        // it first, and its release cleared every leaf). Drop cached translations before the
        // table pages (freed with `owned`) can be reused.
        self.flush_all_cpus();
    }
}

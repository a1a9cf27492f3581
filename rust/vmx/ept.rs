//! EPT: the guest-physical → host-physical tables of one VM, built on demand from its slots.
//!
//! Upstream builds these in the TDP MMU (arch/x86/kvm/mmu/tdp_mmu.c) from `kvm_tdp_page_fault`.
//! rkvm keeps the simplest faithful form: 4-level tables of 4 KiB pages, filled one page per EPT
//! violation. The backing page is pinned (`pin_user_pages`, FOLL_LONGTERM) while it is mapped, so
//! it cannot be freed or migrated under the guest; deleting or moving a slot clears its entries,
//! flushes every CPU's EPT-derived translations (INVEPT on all CPUs), then unpins.
//!
//! The tables themselves are the record of what is pinned: a present leaf holds the physical
//! address of a page pinned once by `map`. There is no side list (a 1 GiB slot has 2^18 leaves;
//! one flat array of them outgrew kmalloc's largest size and WARNed), so unmapping walks the
//! tables over the slot's range, skipping absent subtrees (`Tables::for_each_leaf`). In between
//! the two passes of `unmap_slot` a leaf may hold an address with no access bits: "cleared but
//! still pinned", invisible to the CPU and never seen outside the lock.
//!
//! Dirty logging write-protects leaves: a present leaf without the write bit faults on a guest
//! write, and the fault handler (`Vm::fault_in`) logs the page and sets the bit again. Clearing
//! the bit needs a flush (`flush_remote_tlbs`); setting it does not: a CPU that still holds the
//! read-only translation faults once more and finds the leaf writable (upstream does the same in
//! `fast_page_fault`). The CPU never writes these entries itself (no EPT accessed/dirty flags in
//! the EPTP), so changing them under the lock is race-free.
//!
//! Entry format (SDM vol. 3, "EPT Translation Mechanism"): bits 2:0 read/write/execute,
//! bits 5:3 memory type of a leaf (6 = write-back), bits 51:12 the physical address.

use super::{insn, page_pa};
use crate::backend::BackendVm;
use crate::ffi::bindings as b;
use crate::memslot::Memslot;
use kernel::page::Page;
use kernel::prelude::*;
use kernel::sync::Mutex;

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

/// The EPT tables of one VM.
///
/// Invariant: every leaf with a non-zero address field holds a reference on that page taken by
/// `rkvm_pin_user_page` in `map`, dropped exactly once when the leaf is zeroed.
struct Tables {
    root: Page,
    /// Every non-root table, freed with the VM.
    tables: KVec<Page>,
}

// SAFETY: the tables hold physical addresses of pages pinned by us (see the invariant); such a
// pin may be released from any thread.
unsafe impl Send for Tables {}

/// The VMX part of a VM: its EPT.
#[pin_data(PinnedDrop)]
pub(crate) struct VmxVm {
    eptp: u64,
    #[pin]
    t: Mutex<Tables>,
}

/// Pointer to the 512 entries of a table page.
fn entries(page_pa: u64) -> *mut u64 {
    // SAFETY: table pages are ours, in the direct map.
    unsafe { b::rkvm_phys_to_virt(page_pa).cast() }
}

impl VmxVm {
    pub(crate) fn new() -> Result<Pin<KBox<VmxVm>>> {
        let root = Page::alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO)?;
        let eptp = eptp_of(page_pa(&root));
        KBox::pin_init(
            pin_init!(VmxVm {
                eptp,
                t <- kernel::new_mutex!(Tables { root, tables: KVec::new() }),
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// The EPT pointer for this VM's VMCSs.
    pub(crate) fn eptp(&self) -> u64 {
        self.eptp
    }

    /// Flushes translations derived from this EPT on every CPU.
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
    /// The leaf entry for `gfn`, creating intermediate tables on the way.
    fn leaf(&mut self, gfn: u64) -> Result<*mut u64> {
        let mut table = page_pa(&self.root);
        for level in (2..=4).rev() {
            // SAFETY: `table` is one of our table pages; index < 512.
            let e = unsafe { entries(table).add(index(gfn, level)) };
            // SAFETY: `e` points into our table page.
            let v = unsafe { e.read() };
            table = if v & RWX != 0 {
                v & ADDR_MASK
            } else {
                let page = Page::alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO)?;
                let pa = page_pa(&page);
                self.tables.push(page, GFP_KERNEL_ACCOUNT)?;
                // SAFETY: as above; the new table is zeroed (no entries present).
                unsafe { e.write(pa | RWX) };
                pa
            };
        }
        // SAFETY: `table` is a page-table page; index < 512.
        Ok(unsafe { entries(table).add(index(gfn, 1)) })
    }

    /// The leaf entry for `gfn` if the tables above it exist (the entry itself may be empty).
    fn lookup(&self, gfn: u64) -> Option<*mut u64> {
        let mut table = page_pa(&self.root);
        for level in (2..=4).rev() {
            // SAFETY: walking our own present tables.
            let v = unsafe { entries(table).add(index(gfn, level)).read() };
            if v & RWX == 0 {
                return None;
            }
            table = v & ADDR_MASK;
        }
        // SAFETY: `table` is a page-table page; index < 512.
        Some(unsafe { entries(table).add(index(gfn, 1)) })
    }

    /// Calls `f(entry)` for every leaf entry with a non-zero value mapping a frame in
    /// `start..end`, skipping subtrees whose table is absent.
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
                if level == 1 {
                    if v != 0 {
                        f(e);
                    }
                } else if v & RWX != 0 {
                    walk(v & ADDR_MASK, level - 1, gfn, start, end, f);
                }
            }
        }
    }

    /// Zeroes the leaves in `start..end` and unpins their pages; returns whether there were any.
    /// With `flush`, the CPUs' cached translations are dropped in between (`flush` runs only if
    /// some leaf was present), so no CPU can still reach a page once it is released.
    fn unmap_range(&mut self, start: u64, end: u64, flush: &dyn Fn()) -> bool {
        let mut any = false;
        // First pass: make the leaves non-present, keeping the address (still pinned).
        self.for_each_leaf(start, end, &mut |e| {
            // SAFETY: a leaf entry of our tables (lock held).
            unsafe { e.write(e.read() & ADDR_MASK) };
            any = true;
        });
        if !any {
            return false;
        }
        flush();
        self.for_each_leaf(start, end, &mut |e| {
            // SAFETY: a leaf entry of our tables (lock held); by the invariant its address is a
            // page pinned by `map`, no longer mapped and flushed from every CPU: unpin it once
            // and zero the entry.
            unsafe {
                b::rkvm_unpin_user_page(b::rkvm_phys_to_page(e.read() & ADDR_MASK));
                e.write(0);
            }
        });
        true
    }

    /// Clears the write bit of the leaf for `gfn`; returns whether it was set.
    fn write_protect(&mut self, gfn: u64) -> bool {
        let Some(e) = self.lookup(gfn) else {
            return false;
        };
        // SAFETY: leaf entry of our page table (`&mut self`: the lock is held).
        unsafe {
            let v = e.read();
            if v & W == 0 {
                return false;
            }
            e.write(v & !W);
        }
        true
    }
}

impl BackendVm for VmxVm {
    fn as_any(&self) -> &dyn core::any::Any {
        self
    }

    fn map(&self, slot: &Memslot, gfn: u64, writable: bool) -> Result {
        // A read-only slot's pages are never writable (its writes are MMIO).
        let writable = writable && !slot.readonly();
        let mut t = self.t.lock();
        let leaf = t.leaf(gfn)?;
        // SAFETY: `leaf` points into one of our tables, which the lock protects.
        let old = unsafe { leaf.read() };
        if old & RWX != 0 {
            // Another vCPU mapped it meanwhile, or a write to a page write-protected for dirty
            // logging (upstream `fast_pf_fix_direct_spte`): only the write bit may be missing.
            // The page was pinned writable for a writable slot, so setting it is enough.
            if writable && old & W == 0 {
                // SAFETY: as above.
                unsafe { leaf.write(old | W) };
            }
            return Ok(());
        }
        // Pinned for writing whenever the slot is writable, whatever `writable` says now: a
        // page pinned for reading could be the shared zero page, which a later write must not
        // reach. The page stays pinned until its slot goes.
        // SAFETY: pins one page of the current process (the VM's owner: vCPU ioctls run in the
        // creator's mm); the reference is kept in `pinned` and dropped in `unmap_slot`/drop.
        let page = unsafe { b::rkvm_pin_user_page(slot.hva(gfn) as _, !slot.readonly()) };
        if page.is_null() {
            return Err(EFAULT);
        }
        // SAFETY: `page` is pinned, so it is a live struct page.
        let hpa = unsafe { b::rkvm_page_to_phys(page) };
        // SAFETY: `leaf` is our table entry (lock held); the leaf now holds the pin (invariant).
        unsafe { leaf.write(hpa | MT_WB | if writable { RWX } else { RX }) };
        Ok(())
    }

    fn write_protect_masked(&self, slot: &Memslot, gfn_offset: u64, mask: u64) -> bool {
        let mut t = self.t.lock();
        let mut changed = false;
        let mut m = mask;
        while m != 0 {
            let bit = u64::from(m.trailing_zeros());
            changed |= t.write_protect(slot.base_gfn + gfn_offset + bit);
            m &= m - 1;
        }
        changed
    }

    fn write_protect_slot(&self, slot: &Memslot) -> bool {
        let mut t = self.t.lock();
        let mut changed = false;
        t.for_each_leaf(slot.base_gfn, slot.end_gfn(), &mut |e| {
            // SAFETY: a present leaf entry of our tables (lock held).
            unsafe {
                let v = e.read();
                if v & W != 0 {
                    e.write(v & !W);
                    changed = true;
                }
            }
        });
        changed
    }

    fn flush_remote_tlbs(&self) {
        self.flush_all_cpus();
    }

    fn unmap_slot(&self, slot: &Memslot) {
        let mut t = self.t.lock();
        t.unmap_range(slot.base_gfn, slot.end_gfn(), &|| self.flush_all_cpus());
    }
}

#[pinned_drop]
impl PinnedDrop for VmxVm {
    fn drop(self: Pin<&mut Self>) {
        // No vCPU of this VM exists any more; drop cached translations before the tables and
        // pages can be reused.
        self.flush_all_cpus();
        self.t.lock().unmap_range(0, GFN_LIMIT, &|| {});
    }
}

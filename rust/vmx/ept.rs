//! EPT: the guest-physical → host-physical tables of one VM, built on demand from its slots.
//!
//! Upstream builds these in the TDP MMU (arch/x86/kvm/mmu/tdp_mmu.c) from `kvm_tdp_page_fault`.
//! rkvm keeps the simplest faithful form: 4-level tables of 4 KiB pages, filled one page per EPT
//! violation. The backing page is pinned (`pin_user_pages`, FOLL_LONGTERM) while it is mapped, so
//! it cannot be freed or migrated under the guest; deleting or moving a slot clears its entries,
//! flushes every CPU's EPT-derived translations (INVEPT on all CPUs), then unpins.
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

/// A pinned user page mapped into the guest.
struct Pinned {
    gfn: u64,
    page: *mut b::page,
}

struct Tables {
    root: Page,
    /// Every non-root table, freed with the VM.
    tables: KVec<Page>,
    /// Mapped pages, unpinned when unmapped.
    pinned: KVec<Pinned>,
}

// SAFETY: the raw page pointers are references we hold through pinning; they may be released
// from any thread.
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
                t <- kernel::new_mutex!(Tables { root, tables: KVec::new(), pinned: KVec::new() }),
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

    /// Clears the leaf for `gfn` if present (tables are kept).
    fn clear(&mut self, gfn: u64) {
        if let Some(e) = self.lookup(gfn) {
            // SAFETY: leaf entry of our page table (`&mut self`: the lock is held).
            unsafe { e.write(0) };
        }
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
        if let Err(e) = t.pinned.push(Pinned { gfn, page }, GFP_KERNEL_ACCOUNT) {
            // SAFETY: we pinned it just above and have not published it.
            unsafe { b::rkvm_unpin_user_page(page) };
            return Err(e.into());
        }
        // SAFETY: `page` is pinned, so it is a live struct page.
        let hpa = unsafe { b::rkvm_page_to_phys(page) };
        // SAFETY: `leaf` is our table entry (lock held).
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
        let (base, end) = (slot.base_gfn, slot.end_gfn());
        let mut changed = false;
        // Every present leaf has its page in `pinned`.
        for i in 0..t.pinned.len() {
            let gfn = t.pinned[i].gfn;
            if gfn >= base && gfn < end {
                changed |= t.write_protect(gfn);
            }
        }
        changed
    }

    fn flush_remote_tlbs(&self) {
        self.flush_all_cpus();
    }

    fn unmap_slot(&self, slot: &Memslot) {
        let mut t = self.t.lock();
        let (base, end) = (slot.base_gfn, slot.end_gfn());
        let mut any = false;
        for i in 0..t.pinned.len() {
            let gfn = t.pinned[i].gfn;
            if gfn >= base && gfn < end {
                t.clear(gfn);
                any = true;
            }
        }
        if !any {
            return;
        }
        // No CPU may use the old translations once the pages are released.
        self.flush_all_cpus();
        let mut i = 0;
        while i < t.pinned.len() {
            let p = &t.pinned[i];
            if p.gfn >= base && p.gfn < end {
                // SAFETY: the page was pinned by `map`, its mapping is gone and flushed.
                unsafe { b::rkvm_unpin_user_page(p.page) };
                let last = t.pinned.len() - 1;
                t.pinned.as_mut_slice().swap(i, last);
                // SAFETY: drops the (plain-data) last element by shrinking.
                unsafe { t.pinned.set_len(last) };
            } else {
                i += 1;
            }
        }
    }
}

#[pinned_drop]
impl PinnedDrop for VmxVm {
    fn drop(self: Pin<&mut Self>) {
        // No vCPU of this VM exists any more; drop cached translations before the tables and
        // pages can be reused.
        self.flush_all_cpus();
        let t = self.t.lock();
        for p in t.pinned.iter() {
            // SAFETY: pinned by `map`, unmapped and flushed.
            unsafe { b::rkvm_unpin_user_page(p.page) };
        }
    }
}

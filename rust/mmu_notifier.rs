//! The MMU notifier: guest memory follows the VMM's mappings (upstream: the
//! `kvm_mmu_notifier_*` functions of virt/kvm/kvm_main.c).
//!
//! Each VM registers a notifier on its creator's `mm` when it is created and unregisters it
//! first thing when it is freed (upstream `kvm_init_mmu_notifier` in `kvm_create_vm`,
//! `mmu_notifier_unregister` early in `kvm_destroy_vm`). Whenever the kernel is about to unmap
//! or replace pages of that address space (munmap, `MADV_DONTNEED`, mremap, a COW break after
//! fork, page migration, reclaim, THP splits, writeback write-protecting a file page),
//! `invalidate_start` clears the EPT leaves of every slot over those addresses and flushes
//! every CPU, and the guest's next access faults the new page in; `invalidate_end` closes the
//! window in which faults on those addresses must retry (`invalidate.rs` has the rules); when
//! the address space itself goes, `release` clears everything.
//!
//! **Locking.** The callbacks take the VM's MMU lock (upstream `kvm->mmu_lock`) and, inside
//! it, the EPT tables' lock, both spinlocks; they never take the slots lock, which is held
//! across copies to and from userspace and allocations, either of which may end up in this
//! notifier. A sleeping lock would not do: the OOM reaper invalidates in non-blockable mode
//! (`!mmu_notifier_range_blockable`), where the callback must not sleep, and since this notifier
//! has `invalidate_range_end` its start may not fail with `-EAGAIN` either (the core WARNs:
//! `mn_hlist_invalidate_range_start`), so it must always finish its work without sleeping. It
//! does, blockable or not: clearing leaves and the IPI flush never sleep. Upstream's lock is an
//! rwlock so that faults can share it; rkvm's faults are serialised by the slots lock anyway,
//! so a spinlock is enough. The cost of not sleeping is that a very large invalidation (a whole
//! 1 GiB slot, fully mapped) clears its 2^18 leaves with preemption off, where upstream yields
//! between them when it may block.
//!
//! **Teardown.** `mmu_notifier_unregister` runs `release` (unless the process exited first,
//! when the core ran it) and waits for every running callback (SRCU); only then are the VM's
//! fields freed, so no callback ever sees a freed VM.

use crate::ffi::bindings as b;
use crate::invalidate::{HvaIndex, HvaSlot, Invalidation};
use crate::vm::Vm;
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::ffi::{c_ulong, c_void};
use kernel::prelude::*;

/// What the VM's MMU lock protects besides the backend's tables (upstream: the fields of
/// `struct kvm` under `mmu_lock`).
pub(crate) struct MmuState {
    /// The invalidation window the fault path checks.
    pub(crate) inval: Invalidation,
    /// The slots by host address, updated with the slots (under both locks).
    pub(crate) index: HvaIndex<KVec<HvaSlot>>,
}

impl MmuState {
    pub(crate) fn new() -> Self {
        MmuState { inval: Invalidation::new(), index: HvaIndex::new(KVec::new()) }
    }
}

/// A VM's registration (upstream `kvm->mmu_notifier`).
///
/// # Invariants
///
/// `0` is null or a notifier returned by `rkvm_mmu_notifier_register` with its VM as data, not
/// yet unregistered.
pub(crate) struct MmuNotifier(AtomicPtr<b::rkvm_mmu_notifier>);

static OPS: b::rkvm_mn_ops = b::rkvm_mn_ops {
    invalidate_start: Some(invalidate_start),
    invalidate_end: Some(invalidate_end),
    release: Some(release),
};

impl MmuNotifier {
    pub(crate) const fn new() -> Self {
        MmuNotifier(AtomicPtr::new(core::ptr::null_mut()))
    }

    /// Registers `vm`'s notifier on the calling process's address space (upstream
    /// `kvm_init_mmu_notifier`). The VM must stay at its address until [`MmuNotifier::unregister`]
    /// returns (it lives in an `Arc` and calls that from its destructor).
    pub(crate) fn register(&self, vm: &Vm) -> Result {
        let mut err = 0;
        // SAFETY: `OPS` is static; `vm` outlives the registration (see above), and every
        // callback only uses it as a `&Vm`. Called from an ioctl: no mmap lock is held.
        let n = unsafe { b::rkvm_mmu_notifier_register(&OPS, vm as *const Vm as *mut c_void, &mut err) };
        if n.is_null() {
            return Err(Error::from_errno(err));
        }
        self.0.store(n, Ordering::Release);
        Ok(())
    }

    /// Unregisters, if registered: `release` has run and no callback runs any more once this
    /// returns. May sleep.
    pub(crate) fn unregister(&self) {
        let n = self.0.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !n.is_null() {
            // SAFETY: by the type invariant `n` is registered; it is taken out above, so it is
            // unregistered (and freed) once.
            unsafe { b::rkvm_mmu_notifier_unregister(n) };
        }
    }
}

/// The VM a callback is for.
///
/// # Safety
///
/// `data` is the `data` of a registered notifier: a live `Vm` (see [`MmuNotifier::register`]).
unsafe fn vm<'a>(data: *mut c_void) -> &'a Vm {
    // SAFETY: as the function's safety section says.
    unsafe { &*(data as *const Vm) }
}

unsafe extern "C" fn invalidate_start(data: *mut c_void, start: c_ulong, end: c_ulong) {
    // SAFETY: the core calls this for a registered notifier only.
    unsafe { vm(data) }.mmu_invalidate_range_start(start as u64, end as u64);
}

unsafe extern "C" fn invalidate_end(data: *mut c_void, start: c_ulong, end: c_ulong) {
    // SAFETY: as above.
    unsafe { vm(data) }.mmu_invalidate_range_end(start as u64, end as u64);
}

unsafe extern "C" fn release(data: *mut c_void) {
    // SAFETY: as above.
    unsafe { vm(data) }.mmu_release();
}

impl Vm {
    /// Upstream `kvm_mmu_notifier_invalidate_range_start`: opens the window over host range
    /// `[start, end)` (faults there retry until it closes), then unmaps the guest frames that
    /// range backs in every slot and flushes every CPU before the process's pages can go.
    ///
    /// Unlike upstream, the window opens whether or not a slot overlaps the range (upstream
    /// takes `mmu_lock` only if one does): it records host addresses, and a slot created over
    /// the range before the invalidation ends is covered too.
    pub(crate) fn mmu_invalidate_range_start(&self, start: u64, end: u64) {
        let mut m = self.mmu.lock();
        m.inval.begin(start, end);
        let mut flush = false;
        m.index.for_each_overlap(start, end, |_, lo, hi| flush |= self.arch.unmap_gfn_range(lo, hi));
        if flush {
            self.arch.flush_remote_tlbs();
            self.count_remote_tlb_flush();
        }
    }

    /// Upstream `kvm_mmu_notifier_invalidate_range_end`: closes the window; faults that
    /// sampled the sequence before retry if the range touched a slot.
    pub(crate) fn mmu_invalidate_range_end(&self, start: u64, end: u64) {
        let mut m = self.mmu.lock();
        let touched = m.index.overlaps(start, end);
        // Unbalanced only through a core bug (registration takes every lock of the mm, so no
        // invalidation is half-way when the notifier appears).
        let _ = m.inval.end(touched);
    }

    /// Upstream `kvm_mmu_notifier_release` → `kvm_flush_shadow_all`: the address space goes
    /// (the process exited, or the VM unregisters); no mapping may survive it.
    pub(crate) fn mmu_release(&self) {
        let _m = self.mmu.lock();
        if self.arch.unmap_gfn_range(0, u64::MAX) {
            self.arch.flush_remote_tlbs();
            self.count_remote_tlb_flush();
        }
    }

    /// Makes room for one more entry in the hva index, outside the MMU lock (growing a vector
    /// allocates, which a spinlock forbids): when it is full, a larger copy is made and swapped
    /// in under the lock. Called with the slots lock held (the only writer of the index).
    pub(crate) fn mmu_index_reserve(&self) -> Result {
        let (len, cap) = {
            let mut m = self.mmu.lock();
            let v = m.index.storage_mut();
            (v.len(), v.capacity())
        };
        if len < cap {
            return Ok(());
        }
        let mut bigger = KVec::with_capacity((2 * cap).max(4), GFP_KERNEL_ACCOUNT)?;
        let old = {
            let mut m = self.mmu.lock();
            let v = m.index.storage_mut();
            for e in v.iter() {
                // Cannot fail: the capacity is larger than `v`'s length (unchanged meanwhile:
                // the slots lock is held).
                let _ = bigger.push(*e, GFP_NOWAIT);
            }
            core::mem::replace(v, bigger)
        };
        drop(old);
        Ok(())
    }
}

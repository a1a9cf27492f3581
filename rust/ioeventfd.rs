//! `KVM_IOEVENTFD` and the VM's I/O buses (upstream: `kvm_ioeventfd` in virt/kvm/eventfd.c,
//! `kvm->buses` and `kvm_io_bus_*` in virt/kvm/kvm_main.c).
//!
//! An ioeventfd turns a guest write to a port or guest-physical address (optionally only of one
//! value) into a signal on an eventfd, without an exit to userspace. Ioeventfds share the MMIO
//! and PIO buses with the coalesced zones (`KVM_REGISTER_COALESCED_MMIO`), in upstream's order
//! (see `iobus.rs`, where the rules live and are host-tested). The in-kernel LAPIC, IOAPIC and
//! PIC are not on these buses: the exit handlers ask them first, as upstream's `vcpu_mmio_write`
//! does for the LAPIC (and its buses for the others, which userspace cannot overlap usefully).
//!
//! Locking, as upstream: writers (assign, deassign, zone changes) are serialised by `writer`
//! (upstream `kvm->slots_lock`) and never change an array in place: they build a new one,
//! publish it, wait for an SRCU grace period (`synchronize_srcu_expedited` on a per-VM SRCU
//! domain, upstream `kvm->srcu`) and only then free the old array and drop the eventfd
//! references of what they removed. The exit path (a vCPU thread, preemptible, interrupts on)
//! reads the array inside an SRCU read section: it never blocks on a writer, never sleeps in
//! the lookup, and vCPUs do not contend with each other. SRCU rather than plain RCU because a
//! coalesced zone's ring append is made inside the section, and because each writer waits for
//! a grace period (upstream's expedited SRCU grace period of a domain without readers costs
//! microseconds, a normal RCU one milliseconds; a VMM registers dozens of ioeventfds at boot).
//! The domain is allocated with the first device, so a VM without any costs nothing.
//!
//! rkvm has no fast MMIO bus (upstream's `KVM_FAST_MMIO_BUS`: length-0 MMIO ioeventfds answered
//! from EPT misconfigurations without decoding the instruction, from the second access to the
//! page on). Every MMIO access is decoded here, so a length-0 MMIO ioeventfd is reached through
//! the MMIO bus as upstream's first access is, and a read of its address exits as a read
//! (upstream signals the eventfd for reads too once the fast path is in use).

use crate::coalesced::Zone;
use crate::ffi::bindings as b;
use crate::iobus::{self, Args, Bus, Dev, Range, Taker, NR_BUSES};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::prelude::*;
use kernel::sync::lock::{mutex::MutexBackend, Guard};
use kernel::sync::Mutex;

// The pure file restates the uapi flags; they must agree with the kernel headers.
const _: () = {
    assert!(iobus::FLAG_DATAMATCH == b::KVM_IOEVENTFD_FLAG_DATAMATCH);
    assert!(iobus::FLAG_PIO == b::KVM_IOEVENTFD_FLAG_PIO);
    assert!(iobus::FLAG_DEASSIGN == b::KVM_IOEVENTFD_FLAG_DEASSIGN);
    assert!(iobus::FLAG_VIRTIO_CCW_NOTIFY == b::KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY);
    assert!(iobus::VALID_FLAG_MASK == b::KVM_IOEVENTFD_VALID_FLAG_MASK);
};

/// An eventfd context as a bus range holds it: each ioeventfd range owns one reference, dropped
/// after the range has left its bus and a grace period has passed (or when the VM goes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Eventfd(*mut b::eventfd_ctx);

/// A counted reference on an eventfd context (`eventfd_ctx_fdget`), dropped with
/// `eventfd_ctx_put` unless handed to a bus range.
struct EventfdRef(Eventfd);

impl EventfdRef {
    /// `eventfd_ctx_fdget(fd)`: `EBADF` if `fd` is not open, `EINVAL` if it is no eventfd.
    fn get(fd: i32) -> Result<Self> {
        let mut ctx = null_mut();
        // SAFETY: looks `fd` up in the calling task's file table and, on success, stores a new
        // reference in `ctx`, a valid out pointer.
        let r = unsafe { b::rkvm_eventfd_ctx_fdget(fd, &mut ctx) };
        if r < 0 {
            return Err(Error::from_errno(r));
        }
        Ok(EventfdRef(Eventfd(ctx)))
    }

    /// Hands the reference over (to a bus range).
    fn into_range_ref(self) -> Eventfd {
        let e = self.0;
        core::mem::forget(self);
        e
    }
}

impl Drop for EventfdRef {
    fn drop(&mut self) {
        // SAFETY: we own one reference, taken by `eventfd_ctx_fdget`.
        unsafe { b::rkvm_eventfd_ctx_put(self.0 .0) };
    }
}

/// One bus's ranges, in upstream's order.
type BusVec = KVVec<Range<Eventfd>>;

/// The buses of one VM (upstream `kvm->buses`, with `kvm->srcu` protecting them).
///
/// # Invariants
///
/// Each non-null `buses[i]` comes from `KBox::<BusVec>::into_raw` and is replaced only under
/// `writer`; an array that was published is freed only after an SRCU grace period of `srcu`
/// that began after it was unpublished. `srcu` is non-null before any bus is. Every
/// `Dev::Ioeventfd` range of a published array owns one reference on its eventfd context.
#[pin_data(PinnedDrop)]
pub(crate) struct IoBuses {
    /// Serialises the writers (upstream `kvm->slots_lock`).
    #[pin]
    writer: Mutex<()>,
    /// The SRCU domain of the readers, set once under `writer` (null: no device yet).
    srcu: AtomicPtr<b::srcu_struct>,
    /// The published arrays, by [`Bus`] (null: empty).
    buses: [AtomicPtr<BusVec>; NR_BUSES],
}

type WriterGuard<'a> = Guard<'a, (), MutexBackend>;

fn errno(e: iobus::Error) -> Error {
    match e {
        iobus::Error::Invalid => EINVAL,
        iobus::Error::Exists => EEXIST,
        iobus::Error::NotFound => ENOENT,
        iobus::Error::NoSpace => ENOSPC,
    }
}

fn zone_bus(zone: &Zone) -> Bus {
    if zone.pio {
        Bus::Pio
    } else {
        Bus::Mmio
    }
}

/// `old` with `r` inserted at `i`, in a new allocation (upstream copies the bus too).
fn with_inserted(old: &[Range<Eventfd>], i: usize, r: Range<Eventfd>) -> Result<KBox<BusVec>> {
    let mut v = KVVec::with_capacity(old.len() + 1, GFP_KERNEL_ACCOUNT)?;
    v.extend_from_slice(&old[..i], GFP_KERNEL_ACCOUNT)?;
    v.push(r, GFP_KERNEL_ACCOUNT)?;
    v.extend_from_slice(&old[i..], GFP_KERNEL_ACCOUNT)?;
    Ok(KBox::new(v, GFP_KERNEL_ACCOUNT)?)
}

/// The ranges of `old` that `keep` accepts, in a new allocation (`None`: none is left).
fn filtered(
    old: &[Range<Eventfd>],
    keep: impl Fn(usize, &Range<Eventfd>) -> bool,
) -> Result<Option<KBox<BusVec>>> {
    let n = old.iter().enumerate().filter(|(i, r)| keep(*i, r)).count();
    if n == 0 {
        return Ok(None);
    }
    let mut v = KVVec::with_capacity(n, GFP_KERNEL_ACCOUNT)?;
    for (i, r) in old.iter().enumerate() {
        if keep(i, r) {
            v.push(*r, GFP_KERNEL_ACCOUNT)?;
        }
    }
    Ok(Some(KBox::new(v, GFP_KERNEL_ACCOUNT)?))
}

/// Drops the eventfd reference an ioeventfd range owns.
///
/// # Safety
///
/// `r` must have left every published array at least one grace period ago (or no reader can
/// exist), and its reference must not be dropped twice.
unsafe fn put_range(r: &Range<Eventfd>) {
    if let Dev::Ioeventfd { eventfd, .. } = r.dev {
        // SAFETY: the range owned this reference (type invariant of `IoBuses`); by the function's
        // contract nobody can use it any more.
        unsafe { b::rkvm_eventfd_ctx_put(eventfd.0) };
    }
}

impl IoBuses {
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(IoBuses {
            writer <- kernel::new_mutex!(()),
            srcu: AtomicPtr::new(null_mut()),
            buses: [AtomicPtr::new(null_mut()), AtomicPtr::new(null_mut()), AtomicPtr::new(null_mut())],
        })
    }

    /// `KVM_IOEVENTFD` (upstream `kvm_ioeventfd`).
    pub(crate) fn ioeventfd(&self, raw: &b::kvm_ioeventfd) -> Result {
        let a = Args { datamatch: raw.datamatch, addr: raw.addr, len: raw.len, flags: raw.flags };
        if a.deassign() {
            self.deassign(&a, raw.fd)
        } else {
            self.assign(&a, raw.fd)
        }
    }

    /// Upstream `kvm_assign_ioeventfd` and `kvm_assign_ioeventfd_idx`: the argument checks, the
    /// eventfd, then collision and room on the bus. A length-0 MMIO ioeventfd goes on the MMIO
    /// bus only (upstream also puts it on the fast MMIO bus, see the module comment).
    fn assign(&self, a: &Args, fd: i32) -> Result {
        a.check_assign().map_err(errno)?;
        let ev = EventfdRef::get(fd)?;
        let w = self.writer.lock();
        let srcu = self.srcu(&w)?;
        let new = {
            let old = self.current(&w, a.bus());
            let i = iobus::assign_index(old, a).map_err(errno)?;
            let dev = Dev::Ioeventfd { datamatch: a.datamatch(), eventfd: ev.0 };
            with_inserted(old, i, Range { addr: a.addr, len: a.len, dev })?
        };
        // The range owns the reference from here on.
        let _ = ev.into_range_ref();
        self.replace(&w, srcu, a.bus(), Some(new));
        Ok(())
    }

    /// Upstream `kvm_deassign_ioeventfd_idx`: the ioeventfd with this eventfd, address, length
    /// and data match (`ENOENT` if none), after the eventfd lookup (`EBADF`/`EINVAL`). Flags
    /// other than the bus and the data match are not checked.
    fn deassign(&self, a: &Args, fd: i32) -> Result {
        let ev = EventfdRef::get(fd)?;
        let w = self.writer.lock();
        let (removed, new) = {
            let old = self.current(&w, a.bus());
            let i = iobus::deassign_index(old, a, &ev.0).map_err(errno)?;
            (old[i], filtered(old, |j, _| j != i)?)
        };
        // A bus holds a range, so the domain exists (type invariant).
        let srcu = self.srcu.load(Ordering::Relaxed);
        self.replace(&w, srcu, a.bus(), new);
        // SAFETY: `removed` left the bus and `replace` waited for a grace period.
        unsafe { put_range(&removed) };
        Ok(())
    }

    /// `KVM_REGISTER_COALESCED_MMIO` (upstream `kvm_vm_ioctl_register_coalesced_mmio`): the zone
    /// goes on its bus (`ENOSPC` when the bus is full).
    pub(crate) fn register_zone(&self, zone: &Zone) -> Result {
        let bus = zone_bus(zone);
        let w = self.writer.lock();
        let srcu = self.srcu(&w)?;
        let new = {
            let old = self.current(&w, bus);
            let i = iobus::zone_index(old, zone.addr, zone.size).map_err(errno)?;
            with_inserted(old, i, Range { addr: zone.addr, len: zone.size, dev: Dev::Zone })?
        };
        self.replace(&w, srcu, bus, Some(new));
        Ok(())
    }

    /// `KVM_UNREGISTER_COALESCED_MMIO` (upstream `kvm_vm_ioctl_unregister_coalesced_mmio`):
    /// every zone of that kind containing the whole range goes.
    pub(crate) fn unregister_zones(&self, zone: &Zone) -> Result {
        let bus = zone_bus(zone);
        let w = self.writer.lock();
        let gone = |_: usize, r: &Range<Eventfd>| iobus::zone_unregistered(r, zone.addr, zone.size);
        let new = {
            let old = self.current(&w, bus);
            if !old.iter().enumerate().any(|(i, r)| gone(i, r)) {
                return Ok(());
            }
            filtered(old, |i, r| !gone(i, r))?
        };
        let srcu = self.srcu.load(Ordering::Relaxed);
        self.replace(&w, srcu, bus, new);
        Ok(())
    }

    /// A guest write the in-kernel devices did not take (upstream `kvm_io_bus_write`): offered
    /// to the devices on `bus` in order. A coalesced zone takes it if `zone_write` (the append
    /// to the ring) succeeds; an ioeventfd that matches has its eventfd signalled. Returns
    /// whether the write was taken; if not, it exits to userspace.
    ///
    /// Called by a vCPU thread in process context; never sleeps except in `zone_write`.
    pub(crate) fn write(
        &self,
        bus: Bus,
        addr: u64,
        len: u32,
        data: u64,
        zone_write: impl FnMut() -> bool,
    ) -> bool {
        let srcu = self.srcu.load(Ordering::Acquire);
        if srcu.is_null() {
            return false;
        }
        // SAFETY: the domain lives until `self` is dropped (set once, freed in `drop`).
        let idx = unsafe { b::rkvm_srcu_read_lock(srcu) };
        let p = self.buses[bus as usize].load(Ordering::Acquire);
        let taken = if p.is_null() {
            None
        } else {
            // SAFETY: a published array, freed only after a grace period that waits for this
            // read section (type invariant).
            let ranges = unsafe { &*p };
            iobus::write(ranges, addr, len, data, zone_write)
        };
        if let Some(Taker::Ioeventfd(e)) = taken {
            // SAFETY: the range holds a reference on the context until a grace period after it
            // left the bus, and we are inside a read section. `eventfd_signal` does not sleep.
            unsafe { b::rkvm_eventfd_signal(e.0) };
        }
        // SAFETY: ends the read section begun above, with its index.
        unsafe { b::rkvm_srcu_read_unlock(srcu, idx) };
        taken.is_some()
    }

    /// The SRCU domain, allocated with the first device.
    fn srcu(&self, _w: &WriterGuard<'_>) -> Result<*mut b::srcu_struct> {
        let s = self.srcu.load(Ordering::Relaxed);
        if !s.is_null() {
            return Ok(s);
        }
        // SAFETY: allocates and initialises a new domain; no precondition.
        let s = unsafe { b::rkvm_srcu_alloc() };
        if s.is_null() {
            return Err(ENOMEM);
        }
        // Release: a reader that sees a bus sees the domain first.
        self.srcu.store(s, Ordering::Release);
        Ok(s)
    }

    /// The current ranges of `bus` (stable while the writer lock is held).
    fn current<'a>(&'a self, _w: &'a WriterGuard<'_>, bus: Bus) -> &'a [Range<Eventfd>] {
        let p = self.buses[bus as usize].load(Ordering::Relaxed);
        if p.is_null() {
            return &[];
        }
        // SAFETY: only writers replace or free the array, and they hold the lock we borrow.
        unsafe { &*p }
    }

    /// Publishes `new` as `bus`'s array, waits until no reader can still be walking the old one
    /// and frees it (upstream `rcu_assign_pointer`, `synchronize_srcu_expedited`, `kfree` in
    /// `kvm_io_bus_(un)register_dev`). The ranges move to the new array; dropping the references
    /// of those that left is the caller's.
    fn replace(&self, _w: &WriterGuard<'_>, srcu: *mut b::srcu_struct, bus: Bus, new: Option<KBox<BusVec>>) {
        let new = new.map_or(null_mut(), KBox::into_raw);
        let old = self.buses[bus as usize].swap(new, Ordering::AcqRel);
        // SAFETY: `srcu` is this VM's live domain (non-null: a bus was or is being published).
        unsafe { b::rkvm_synchronize_srcu(srcu) };
        if !old.is_null() {
            // SAFETY: `old` came from `KBox::into_raw` and no reader can hold it any more.
            drop(unsafe { KBox::from_raw(old) });
        }
    }
}

#[pinned_drop]
impl PinnedDrop for IoBuses {
    fn drop(self: Pin<&mut Self>) {
        // The VM is going: no vCPU runs, so there is no reader (upstream `kvm_io_bus_destroy`).
        for bus in self.buses.iter() {
            let p = bus.swap(null_mut(), Ordering::Relaxed);
            if p.is_null() {
                continue;
            }
            // SAFETY: `p` came from `KBox::into_raw` (type invariant) and is unpublished.
            let ranges = unsafe { KBox::from_raw(p) };
            for r in ranges.iter() {
                // SAFETY: no reader exists; each range's reference is dropped once, here.
                unsafe { put_range(r) };
            }
        }
        let s = self.srcu.swap(null_mut(), Ordering::Relaxed);
        if !s.is_null() {
            // SAFETY: allocated by `rkvm_srcu_alloc`; no reader, and `synchronize` returned for
            // every grace period that was started.
            unsafe { b::rkvm_srcu_free(s) };
        }
    }
}

//! A VM's I/O buses (upstream: `struct kvm_io_bus` and `kvm_io_bus_*` in virt/kvm/kvm_main.c)
//! with the two kinds of device userspace puts on them: coalesced MMIO/PIO zones
//! (`coalesced_mmio.c`) and ioeventfds (`virt/kvm/eventfd.c`, `KVM_IOEVENTFD`).
//!
//! A bus is an array of `(addr, len, device)` ranges kept in upstream's order: a new range goes
//! before the first one that compares greater ([`insert_index`], `kvm_io_bus_register_dev`), a
//! write finds its first candidate by the kernel's `bsearch` and walks back over equal ranges
//! ([`first_dev`], `kvm_io_bus_get_first_dev`), then offers itself to each range that still
//! compares equal until a device takes it ([`write`], `__kvm_io_bus_write`). The comparison
//! ([`cmp`], `kvm_io_bus_cmp`) is "contained in" for ranges with a length and "same address" for
//! ranges of length 0, which is not a total order when ranges overlap; mirroring the array and
//! both searches exactly is what makes an ioeventfd and a coalesced zone over the same address
//! win or lose against each other as they do upstream (mostly: whichever was registered first).
//!
//! Pure logic: no kernel dependency, tested on the host (`rust/tests`). The kernel half (the
//! eventfd references, publishing a new array to running vCPUs) is `ioeventfd.rs`.

use crate::coalesced::{keep_after_unregister, Zone};

/// Most devices other than ioeventfds one bus holds (upstream `NR_IOBUS_DEVS`): registering
/// another is `ENOSPC`. Ioeventfds do not count ("limited by maximum fd"), but a bus already full
/// of zones refuses them too.
pub const NR_IOBUS_DEVS: usize = 1000;

/// `KVM_IOEVENTFD_FLAG_DATAMATCH` (uapi/linux/kvm.h; the kernel build checks these agree).
pub const FLAG_DATAMATCH: u32 = 1 << 0;
/// `KVM_IOEVENTFD_FLAG_PIO`.
pub const FLAG_PIO: u32 = 1 << 1;
/// `KVM_IOEVENTFD_FLAG_DEASSIGN`.
pub const FLAG_DEASSIGN: u32 = 1 << 2;
/// `KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY`.
pub const FLAG_VIRTIO_CCW_NOTIFY: u32 = 1 << 3;
/// `KVM_IOEVENTFD_VALID_FLAG_MASK`: the four flags and `kvm_ioeventfd_flag_nr_fast_mmio`'s bit,
/// which has no name in the uapi and no effect.
pub const VALID_FLAG_MASK: u32 = (1 << 5) - 1;

/// The buses userspace devices live on (upstream `enum kvm_bus`, without `KVM_FAST_MMIO_BUS`:
/// rkvm has no fast MMIO path, see `ioeventfd.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bus {
    /// Guest-physical addresses.
    Mmio = 0,
    /// I/O ports.
    Pio = 1,
    /// s390's virtio-ccw notifications: accepted everywhere by upstream's generic code, never
    /// written on x86.
    VirtioCcw = 2,
}

/// Number of [`Bus`] values.
pub const NR_BUSES: usize = 3;

/// Errors of the bus operations (the kernel half maps them to errnos).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// `EINVAL`: a bad length, flag or address range.
    Invalid,
    /// `EEXIST`: an ioeventfd already covers this address (and data).
    Exists,
    /// `ENOENT`: no ioeventfd matches the deassignment.
    NotFound,
    /// `ENOSPC`: the bus holds [`NR_IOBUS_DEVS`] devices other than ioeventfds.
    NoSpace,
}

/// What a range on a bus is. `E` identifies an eventfd (the kernel uses its `eventfd_ctx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dev<E> {
    /// A coalesced zone; the range is the zone (`struct kvm_coalesced_mmio_dev`).
    Zone,
    /// An ioeventfd (`struct _ioeventfd`); the range is its address and length.
    Ioeventfd {
        /// The value a write must carry (`KVM_IOEVENTFD_FLAG_DATAMATCH`), or any (`wildcard`).
        datamatch: Option<u64>,
        /// The eventfd it signals.
        eventfd: E,
    },
}

/// One device on a bus (upstream `struct kvm_io_range`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range<E> {
    /// First address (guest-physical, or port).
    pub addr: u64,
    /// Length in bytes; 0 matches any access that starts at `addr`.
    pub len: u32,
    /// The device.
    pub dev: Dev<E>,
}

/// What took a guest write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taker<E> {
    /// A coalesced zone (its entry is in the ring).
    Zone,
    /// An ioeventfd, whose eventfd the caller signals.
    Ioeventfd(E),
}

/// The `struct kvm_ioeventfd` fields the rules look at (all but `fd`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// `datamatch`.
    pub datamatch: u64,
    /// `addr`.
    pub addr: u64,
    /// `len`.
    pub len: u32,
    /// `flags`.
    pub flags: u32,
}

impl Args {
    /// The bus the flags name (upstream `ioeventfd_bus_from_flags`: PIO wins over virtio-ccw).
    pub fn bus(&self) -> Bus {
        if self.flags & FLAG_PIO != 0 {
            Bus::Pio
        } else if self.flags & FLAG_VIRTIO_CCW_NOTIFY != 0 {
            Bus::VirtioCcw
        } else {
            Bus::Mmio
        }
    }

    /// `KVM_IOEVENTFD_FLAG_DEASSIGN`.
    pub fn deassign(&self) -> bool {
        self.flags & FLAG_DEASSIGN != 0
    }

    /// The data a write must carry, or `None` for any (upstream `wildcard`).
    pub fn datamatch(&self) -> Option<u64> {
        (self.flags & FLAG_DATAMATCH != 0).then_some(self.datamatch)
    }

    /// The checks of an assignment before the eventfd is looked up, in upstream's order
    /// (`kvm_assign_ioeventfd`): a length of 0, 1, 2, 4 or 8; no wrap past the end of the
    /// address space; known flags; no data match without a length. Deassignment checks nothing.
    pub fn check_assign(&self) -> Result<(), Error> {
        if !matches!(self.len, 0 | 1 | 2 | 4 | 8) {
            return Err(Error::Invalid);
        }
        if self.addr.checked_add(u64::from(self.len)).is_none() {
            return Err(Error::Invalid);
        }
        if self.flags & !VALID_FLAG_MASK != 0 {
            return Err(Error::Invalid);
        }
        if self.len == 0 && self.flags & FLAG_DATAMATCH != 0 {
            return Err(Error::Invalid);
        }
        Ok(())
    }
}

/// Upstream `kvm_io_bus_cmp(r1, r2)`: negative, zero ("r1 is inside r2", or "same address" when
/// r2 has no length) or positive. Address arithmetic wraps, as with upstream's `gpa_t`.
pub fn cmp(addr1: u64, len1: u32, addr2: u64, len2: u32) -> i32 {
    if addr1 < addr2 {
        return -1;
    }
    let (mut a1, mut a2) = (addr1, addr2);
    if len2 != 0 {
        a1 = a1.wrapping_add(u64::from(len1));
        a2 = a2.wrapping_add(u64::from(len2));
    }
    if a1 > a2 {
        return 1;
    }
    0
}

fn cmp_key<E>(addr: u64, len: u32, r: &Range<E>) -> i32 {
    cmp(addr, len, r.addr, r.len)
}

/// Where a new range goes (upstream `kvm_io_bus_register_dev`): before the first range that
/// compares greater than it, else at the end.
pub fn insert_index<E>(bus: &[Range<E>], addr: u64, len: u32) -> usize {
    bus.iter().position(|r| cmp(r.addr, r.len, addr, len) > 0).unwrap_or(bus.len())
}

/// The first range a write of `len` bytes at `addr` reaches (upstream
/// `kvm_io_bus_get_first_dev`): the kernel's `bsearch` (lib/bsearch.c, probe by probe), then
/// back over the ranges before it that compare equal too.
pub fn first_dev<E>(bus: &[Range<E>], addr: u64, len: u32) -> Option<usize> {
    let (mut base, mut num) = (0usize, bus.len());
    let mut found = None;
    while num > 0 {
        let pivot = base + (num >> 1);
        let result = cmp_key(addr, len, &bus[pivot]);
        if result == 0 {
            found = Some(pivot);
            break;
        }
        if result > 0 {
            base = pivot + 1;
            num -= 1;
        }
        num >>= 1;
    }
    let mut off = found?;
    while off > 0 && cmp_key(addr, len, &bus[off - 1]) == 0 {
        off -= 1;
    }
    Some(off)
}

/// Upstream `ioeventfd_in_range`: whether a write of `len` bytes of `data` (the low `len` bytes
/// count) at `addr` triggers an ioeventfd at `at` of length `ev_len`.
pub fn ioeventfd_hit(at: u64, ev_len: u32, datamatch: Option<u64>, addr: u64, len: u32, data: u64) -> bool {
    if addr != at {
        return false;
    }
    if ev_len == 0 {
        return true;
    }
    if len != ev_len {
        return false;
    }
    let Some(want) = datamatch else { return true };
    let value = match len {
        1 => data & 0xff,
        2 => data & 0xffff,
        4 => data & 0xffff_ffff,
        8 => data,
        _ => return false,
    };
    value == want
}

/// A guest write of `len` bytes of `data` at `addr` on a bus (upstream `__kvm_io_bus_write`):
/// each range in order, from [`first_dev`] while they compare equal, is offered the write. A
/// zone takes it if the access lies inside it and `zone_write` (the append to the ring) succeeds;
/// an ioeventfd if [`ioeventfd_hit`]. `None`: nothing took it, the write exits to userspace.
pub fn write<E: Copy>(
    bus: &[Range<E>],
    addr: u64,
    len: u32,
    data: u64,
    mut zone_write: impl FnMut() -> bool,
) -> Option<Taker<E>> {
    let mut i = first_dev(bus, addr, len)?;
    while i < bus.len() && cmp_key(addr, len, &bus[i]) == 0 {
        let r = &bus[i];
        match r.dev {
            Dev::Zone => {
                // `coalesced_mmio_in_range` (the zone's kind is the bus's).
                let zone = Zone { addr: r.addr, size: r.len, pio: false };
                if zone.contains(addr, len) && zone_write() {
                    return Some(Taker::Zone);
                }
            }
            Dev::Ioeventfd { datamatch, eventfd } => {
                if ioeventfd_hit(r.addr, r.len, datamatch, addr, len, data) {
                    return Some(Taker::Ioeventfd(eventfd));
                }
            }
        }
        i += 1;
    }
    None
}

/// Whether a bus has no room for a device (upstream `kvm_io_bus_register_dev`: more than
/// `NR_IOBUS_DEVS - 1` devices that are not ioeventfds).
pub fn full<E>(bus: &[Range<E>]) -> bool {
    bus.iter().filter(|r| matches!(r.dev, Dev::Zone)).count() > NR_IOBUS_DEVS - 1
}

/// Upstream `ioeventfd_check_collision` on one bus: another ioeventfd at the same address where
/// either has no length, or both have the same length and either matches any data or both
/// match the same.
pub fn collides<E>(bus: &[Range<E>], addr: u64, len: u32, datamatch: Option<u64>) -> bool {
    bus.iter().any(|r| match r.dev {
        Dev::Ioeventfd { datamatch: d, .. } => {
            r.addr == addr
                && (r.len == 0
                    || len == 0
                    || (r.len == len && (d.is_none() || datamatch.is_none() || d == datamatch)))
        }
        Dev::Zone => false,
    })
}

/// Where a new ioeventfd goes on its bus (upstream `kvm_assign_ioeventfd_idx` after the eventfd
/// lookup): [`Error::Exists`] on a collision, then [`Error::NoSpace`] on a full bus, in that
/// order.
pub fn assign_index<E>(bus: &[Range<E>], a: &Args) -> Result<usize, Error> {
    if collides(bus, a.addr, a.len, a.datamatch()) {
        return Err(Error::Exists);
    }
    if full(bus) {
        return Err(Error::NoSpace);
    }
    Ok(insert_index(bus, a.addr, a.len))
}

/// The ioeventfd a deassignment removes (upstream `kvm_deassign_ioeventfd_idx`): the same
/// eventfd, address and length, and the same data match (or both none).
pub fn deassign_index<E: PartialEq>(bus: &[Range<E>], a: &Args, eventfd: &E) -> Result<usize, Error> {
    bus.iter()
        .position(|r| match &r.dev {
            Dev::Ioeventfd { datamatch, eventfd: e } => {
                e == eventfd && r.addr == a.addr && r.len == a.len && *datamatch == a.datamatch()
            }
            Dev::Zone => false,
        })
        .ok_or(Error::NotFound)
}

/// Where a new coalesced zone goes on its bus (upstream `kvm_vm_ioctl_register_coalesced_mmio`).
pub fn zone_index<E>(bus: &[Range<E>], addr: u64, size: u32) -> Result<usize, Error> {
    if full(bus) {
        return Err(Error::NoSpace);
    }
    Ok(insert_index(bus, addr, size))
}

/// Whether `KVM_UNREGISTER_COALESCED_MMIO` of `[addr, addr + size)` removes this range: a zone
/// that contains the whole range (upstream `kvm_vm_ioctl_unregister_coalesced_mmio`).
pub fn zone_unregistered<E>(r: &Range<E>, addr: u64, size: u32) -> bool {
    let zone = Zone { addr: r.addr, size: r.len, pio: false };
    matches!(r.dev, Dev::Zone) && !keep_after_unregister(&zone, &Zone { addr, size, pio: false })
}

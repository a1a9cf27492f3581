//! Coalesced MMIO and PIO (upstream: `virt/kvm/coalesced_mmio.c`): guest writes to registered
//! zones do not exit; they are appended to a ring page that userspace maps from every vCPU fd
//! (at `KVM_COALESCED_MMIO_PAGE_OFFSET`) and drains at its next exit.
//!
//! The ring is `struct kvm_coalesced_mmio_ring`: `first` (written by userspace: the oldest entry
//! not yet consumed), `last` (written by the kernel: the next entry to fill) and
//! `KVM_COALESCED_MMIO_MAX` entries. One entry always stays free, so `first == last` means
//! empty; a write that finds the ring full exits to userspace as usual.
//!
//! Zones are devices on the VM's MMIO and PIO buses, next to the ioeventfds, in upstream's order
//! (`iobus.rs`; a bus holds at most `NR_IOBUS_DEVS` of them, per bus as upstream).
//!
//! Pure logic: no kernel dependency, tested on the host (`rust/tests`). The kernel half (the
//! ring page and its lock) is in `vm.rs`, the buses in `ioeventfd.rs`.

/// A registered zone (`struct kvm_coalesced_mmio_zone`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Zone {
    pub addr: u64,
    pub size: u32,
    /// A port-I/O zone (`KVM_CAP_COALESCED_PIO`), else MMIO.
    pub pio: bool,
}

impl Zone {
    /// Whether an access of `len` bytes at `addr` lies wholly inside the zone (upstream
    /// `coalesced_mmio_in_range`). Registration does not check the zone's end, so it may wrap
    /// past 2^64; as upstream's `zone.addr + zone.size`, it wraps (nothing is then inside).
    pub fn contains(&self, addr: u64, len: u32) -> bool {
        let Some(end) = addr.checked_add(u64::from(len)) else { return false };
        addr >= self.addr && end <= self.addr.wrapping_add(u64::from(self.size))
    }
}

/// The `pio` field of a zone from userspace: 0 or 1, else `None` (`EINVAL`).
pub fn pio_flag(raw: u32) -> Option<bool> {
    match raw {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// `KVM_UNREGISTER_COALESCED_MMIO`: the zones to keep. Upstream removes every zone of the same
/// kind that contains the whole range given.
pub fn keep_after_unregister(z: &Zone, range: &Zone) -> bool {
    !(z.pio == range.pio && z.contains(range.addr, range.size))
}

/// The ring entry a new write goes to, given the ring's `first` and `last` as userspace left
/// them and the ring's capacity: `None` if the ring is full (one free entry is kept) or `last`
/// is out of range (upstream `coalesced_mmio_write`).
pub fn insert_slot(first: u32, last: u32, max: u32) -> Option<u32> {
    if last >= max || (last + 1) % max == first {
        return None;
    }
    Some(last)
}

//! Guest memory slots: the rules of `KVM_SET_USER_MEMORY_REGION` and GPA → slot lookup.
//!
//! Pure logic with no kernel dependency (host `cargo test` covers it, see `rust/tests/`). It
//! mirrors upstream's `__kvm_set_memory_region` (virt/kvm/kvm_main.c): the same checks in the same
//! order, so the same request gets the same errno, and the same classification of a valid request
//! into create / delete / move / flags-only / nothing.
//!
//! Slots are kept in two sorted arrays, one by slot id and one by first guest frame, so that both
//! an ioctl naming a slot and a guest access naming an address find their slot by binary search
//! (upstream uses an rbtree and an interval tree for the same two questions). Storage is generic
//! ([`SlotVec`]) so the kernel uses `KVec` and the host tests use `Vec`.

/// x86 page size, the granularity of every slot.
pub const PAGE_SHIFT: u32 = 12;
/// x86 page size in bytes.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Number of user memory slots per address space (upstream x86's `KVM_USER_MEM_SLOTS`).
pub const USER_MEM_SLOTS: u32 = 32764;
/// Number of address spaces (no SMM address space in rkvm).
pub const ADDRESS_SPACES: u32 = 1;
/// Largest slot, in pages (upstream's `KVM_MEM_MAX_NR_PAGES`).
pub const MEM_MAX_NR_PAGES: u64 = (1 << 31) - 1;

/// `KVM_MEM_LOG_DIRTY_PAGES` (from uapi/linux/kvm.h; the kernel build checks these agree).
pub const MEM_LOG_DIRTY_PAGES: u32 = 1 << 0;
/// `KVM_MEM_READONLY`.
pub const MEM_READONLY: u32 = 1 << 1;
/// Flags rkvm accepts (upstream `check_memory_region_flags` for a VM without guest_memfd).
pub const VALID_FLAGS: u32 = MEM_LOG_DIRTY_PAGES | MEM_READONLY;

/// A `struct kvm_userspace_memory_region` as userspace passed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Region {
    /// Address space (bits 31:16) and slot id (bits 15:0).
    pub slot: u32,
    /// `KVM_MEM_*` flags.
    pub flags: u32,
    /// First guest-physical address.
    pub guest_phys_addr: u64,
    /// Size in bytes; 0 deletes the slot.
    pub memory_size: u64,
    /// Start of the backing memory in the VMM's address space.
    pub userspace_addr: u64,
}

/// One memory slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memslot {
    /// Slot id (within address space 0).
    pub id: u16,
    /// First guest frame number.
    pub base_gfn: u64,
    /// Number of pages (never 0).
    pub npages: u64,
    /// Host virtual address of the first page.
    pub userspace_addr: u64,
    /// `KVM_MEM_*` flags.
    pub flags: u32,
}

impl Memslot {
    /// One past the last guest frame.
    pub fn end_gfn(&self) -> u64 {
        self.base_gfn + self.npages
    }

    /// The host virtual address backing guest frame `gfn`, which must lie in the slot.
    pub fn hva(&self, gfn: u64) -> u64 {
        self.userspace_addr + ((gfn - self.base_gfn) << PAGE_SHIFT)
    }

    /// Whether guest writes to this slot must exit to userspace instead.
    pub fn readonly(&self) -> bool {
        self.flags & MEM_READONLY != 0
    }

    /// Whether writes to this slot are logged in its dirty bitmap (upstream
    /// `kvm_slot_dirty_track_enabled`, which is this flag when there is no dirty ring).
    pub fn logs_dirty(&self) -> bool {
        self.flags & MEM_LOG_DIRTY_PAGES != 0
    }
}

/// Why a request was refused; each maps to the errno upstream returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotError {
    /// `EINVAL`: malformed request.
    Invalid,
    /// `EEXIST`: the range overlaps another slot.
    Exists,
    /// `ENOMEM`: no memory to record the slot.
    NoMemory,
}

/// What a valid request does (upstream's `enum kvm_mr_change`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new slot.
    Create(Memslot),
    /// Remove the existing slot (its old state is given).
    Delete(Memslot),
    /// Same slot at a new base frame (old state given; new base in `to`). The request may
    /// toggle `KVM_MEM_LOG_DIRTY_PAGES` at the same time (`flags`: the new flags), as upstream.
    Move { old: Memslot, to: u64, flags: u32 },
    /// Only the flags change: `KVM_MEM_LOG_DIRTY_PAGES` is toggled (`KVM_MEM_READONLY` cannot
    /// change on an existing slot).
    FlagsOnly { old: Memslot, flags: u32 },
    /// The request repeats the slot as it is.
    Nothing,
}

impl Change {
    /// The slot before the change (`None` for a new slot, or a request that changes nothing).
    pub fn before(&self) -> Option<Memslot> {
        match *self {
            Change::Delete(old) | Change::Move { old, .. } | Change::FlagsOnly { old, .. } => Some(old),
            Change::Create(_) | Change::Nothing => None,
        }
    }

    /// The slot after the change (`None` when it is deleted, or nothing changes).
    pub fn after(&self) -> Option<Memslot> {
        match *self {
            Change::Create(slot) => Some(slot),
            Change::Move { old, to, flags } => Some(Memslot { base_gfn: to, flags, ..old }),
            Change::FlagsOnly { old, flags } => Some(Memslot { flags, ..old }),
            Change::Delete(_) | Change::Nothing => None,
        }
    }
}

/// Growable storage for slots: `Vec` on the host, `KVec` in the kernel.
pub trait SlotVec<T> {
    /// The elements, in order.
    fn as_slice(&self) -> &[T];
    /// The elements, mutably.
    fn as_mut_slice(&mut self) -> &mut [T];
    /// Makes room for one more element so the next [`SlotVec::insert`] cannot fail.
    fn reserve_one(&mut self) -> Result<(), SlotError>;
    /// Inserts at `index` (capacity was reserved).
    fn insert(&mut self, index: usize, value: T);
    /// Removes and returns the element at `index`.
    fn remove(&mut self, index: usize) -> T;
}

#[cfg(test)]
impl<T> SlotVec<T> for std::vec::Vec<T> {
    fn as_slice(&self) -> &[T] {
        self
    }
    fn as_mut_slice(&mut self) -> &mut [T] {
        self
    }
    fn reserve_one(&mut self) -> Result<(), SlotError> {
        self.try_reserve(1).map_err(|_| SlotError::NoMemory)
    }
    fn insert(&mut self, index: usize, value: T) {
        std::vec::Vec::insert(self, index, value)
    }
    fn remove(&mut self, index: usize) -> T {
        std::vec::Vec::remove(self, index)
    }
}

/// An entry of the by-address index: a slot's frame range and its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GfnRange {
    /// First guest frame.
    pub base_gfn: u64,
    /// One past the last guest frame.
    pub end_gfn: u64,
    /// The slot's id.
    pub id: u16,
}

/// The memory slots of one VM.
///
/// # Invariants
///
/// `by_id` is sorted by id with unique ids; `by_gfn` holds exactly one entry per slot, sorted by
/// `base_gfn`, with pairwise disjoint ranges that match the slots in `by_id`.
pub struct Memslots<V, G> {
    by_id: V,
    by_gfn: G,
}

impl<V: SlotVec<Memslot>, G: SlotVec<GfnRange>> Memslots<V, G> {
    /// An empty set over the given (empty) storage.
    pub fn new(by_id: V, by_gfn: G) -> Self {
        Memslots { by_id, by_gfn }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.by_id.as_slice().len()
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All slots, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Memslot> {
        self.by_id.as_slice().iter()
    }

    /// The slot with this id.
    pub fn get(&self, id: u16) -> Option<&Memslot> {
        let s = self.by_id.as_slice();
        s.binary_search_by_key(&id, |m| m.id).ok().map(|i| &s[i])
    }

    /// The slot containing guest frame `gfn` (upstream's `gfn_to_memslot`).
    pub fn find(&self, gfn: u64) -> Option<&Memslot> {
        let r = self.by_gfn.as_slice();
        // First range whose end is beyond gfn; ranges are disjoint and sorted.
        let i = r.partition_point(|e| e.end_gfn <= gfn);
        let e = r.get(i)?;
        if e.base_gfn <= gfn {
            self.get(e.id)
        } else {
            None
        }
    }

    /// Whether `[base, end)` overlaps any slot other than `except`.
    fn overlaps(&self, except: Option<u16>, base: u64, end: u64) -> bool {
        let r = self.by_gfn.as_slice();
        let i = r.partition_point(|e| e.end_gfn <= base);
        r[i..]
            .iter()
            .take_while(|e| e.base_gfn < end)
            .any(|e| Some(e.id) != except)
    }

    /// Validates `req` against the current slots, as upstream's `__kvm_set_memory_region` does
    /// before it changes anything. `user_range_ok(addr, size)` is the kernel's `access_ok`.
    pub fn check(&self, req: &Region, user_range_ok: impl Fn(u64, u64) -> bool) -> Result<Change, SlotError> {
        use SlotError::*;
        if req.flags & !VALID_FLAGS != 0 {
            return Err(Invalid);
        }
        let as_id = req.slot >> 16;
        let id = req.slot as u16;
        if req.memory_size & (PAGE_SIZE - 1) != 0 || req.guest_phys_addr & (PAGE_SIZE - 1) != 0 {
            return Err(Invalid);
        }
        if req.userspace_addr & (PAGE_SIZE - 1) != 0 || !user_range_ok(req.userspace_addr, req.memory_size) {
            return Err(Invalid);
        }
        if as_id >= ADDRESS_SPACES || u32::from(id) >= USER_MEM_SLOTS {
            return Err(Invalid);
        }
        if req.guest_phys_addr.checked_add(req.memory_size).is_none() {
            return Err(Invalid);
        }
        let npages = req.memory_size >> PAGE_SHIFT;
        if npages > MEM_MAX_NR_PAGES {
            return Err(Invalid);
        }

        let old = self.get(id).copied();
        if req.memory_size == 0 {
            return old.map(Change::Delete).ok_or(Invalid);
        }
        let base_gfn = req.guest_phys_addr >> PAGE_SHIFT;
        let change = match old {
            None => Change::Create(Memslot {
                id,
                base_gfn,
                npages,
                userspace_addr: req.userspace_addr,
                flags: req.flags,
            }),
            Some(old) => {
                if req.userspace_addr != old.userspace_addr
                    || npages != old.npages
                    || (req.flags ^ old.flags) & MEM_READONLY != 0
                {
                    return Err(Invalid);
                }
                if base_gfn != old.base_gfn {
                    Change::Move { old, to: base_gfn, flags: req.flags }
                } else if req.flags != old.flags {
                    Change::FlagsOnly { old, flags: req.flags }
                } else {
                    return Ok(Change::Nothing);
                }
            }
        };
        let (except, end) = match change {
            Change::Create(_) => (None, base_gfn + npages),
            Change::Move { old, .. } => (Some(old.id), base_gfn + npages),
            _ => return Ok(change),
        };
        if self.overlaps(except, base_gfn, end) {
            return Err(Exists);
        }
        Ok(change)
    }

    /// Applies a change returned by [`Memslots::check`] on this same set. Fails only with
    /// `NoMemory`, and then leaves the set unchanged.
    pub fn commit(&mut self, change: Change) -> Result<(), SlotError> {
        match change {
            Change::Create(slot) => {
                self.by_id.reserve_one()?;
                self.by_gfn.reserve_one()?;
                let i = self.by_id.as_slice().partition_point(|m| m.id < slot.id);
                self.by_id.insert(i, slot);
                self.insert_range(GfnRange { base_gfn: slot.base_gfn, end_gfn: slot.end_gfn(), id: slot.id });
            }
            Change::Delete(old) => {
                let i = self.index_of(old.id);
                self.by_id.remove(i);
                self.remove_range(old.id);
            }
            Change::Move { old, to, flags } => {
                let i = self.index_of(old.id);
                let slot = &mut self.by_id.as_mut_slice()[i];
                slot.base_gfn = to;
                slot.flags = flags;
                self.remove_range(old.id);
                // Capacity for the re-insert is there: one element was just removed.
                self.insert_range(GfnRange { base_gfn: to, end_gfn: to + old.npages, id: old.id });
            }
            Change::FlagsOnly { old, flags } => {
                let i = self.index_of(old.id);
                self.by_id.as_mut_slice()[i].flags = flags;
            }
            Change::Nothing => {}
        }
        Ok(())
    }

    fn index_of(&self, id: u16) -> usize {
        self.by_id
            .as_slice()
            .binary_search_by_key(&id, |m| m.id)
            .expect("change computed on this set")
    }

    fn insert_range(&mut self, r: GfnRange) {
        let i = self.by_gfn.as_slice().partition_point(|e| e.base_gfn < r.base_gfn);
        self.by_gfn.insert(i, r);
    }

    fn remove_range(&mut self, id: u16) {
        let i = self
            .by_gfn
            .as_slice()
            .iter()
            .position(|e| e.id == id)
            .expect("every slot has a range");
        self.by_gfn.remove(i);
    }
}

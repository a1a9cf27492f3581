//! `KVM_X86_SET_MSR_FILTER`: which guest RDMSR/WRMSR userspace denies (upstream x86.c:
//! `kvm_vm_ioctl_set_msr_filter`, `kvm_add_msr_filter`, `kvm_msr_allowed`).
//!
//! A filter is a default action (allow or deny) and up to [`MAX_RANGES`] ranges, each a bitmap
//! over MSRs `base .. base + nmsrs` for reads, writes or both: a 1 bit allows the access, a 0 bit
//! denies it. The first range (in the order userspace gave them) that covers the MSR for the
//! access type decides; no such range: the default. The filter applies to the guest's own RDMSR
//! and WRMSR only: never to `KVM_GET_MSRS`/`KVM_SET_MSRS`, never to the x2APIC MSRs
//! (0x800-0x8ff; upstream "x2APIC MSRs do not support filtering"), and not to MSRs an
//! instruction reads or writes as a side effect (SYSCALL, SWAPGS, RDTSCP...).
//!
//! A denied access exits to userspace with `KVM_MSR_EXIT_REASON_FILTER` when the VM enabled that
//! exit (`KVM_CAP_X86_USER_SPACE_MSR`), else raises #GP. The MSRs a VMX guest otherwise reads or
//! writes without an exit (`msr::PASS_THROUGH`) are intercepted whenever the filter denies that
//! access ([`Filter::allowed`] decides the MSR bitmap too, `msr::fill_bitmap_filtered`).
//!
//! Pure logic, generic over the bitmap storage (a kernel vector in the module, a `Vec` in the
//! host tests).

/// Most ranges a filter has (`KVM_MSR_FILTER_MAX_RANGES`).
pub const MAX_RANGES: usize = 16;
/// Largest bitmap of one range, in bytes (`KVM_MSR_FILTER_MAX_BITMAP_SIZE`).
pub const MAX_BITMAP_SIZE: usize = 0x600;
/// Range flags: the bitmap filters reads, writes (`KVM_MSR_FILTER_READ` / `_WRITE`).
pub const READ: u32 = 1;
pub const WRITE: u32 = 2;
/// `KVM_MSR_FILTER_RANGE_VALID_MASK`.
pub const RANGE_VALID_MASK: u32 = READ | WRITE;
/// Filter flag: deny what no range covers (`KVM_MSR_FILTER_DEFAULT_DENY`; 0 is allow).
pub const DEFAULT_DENY: u32 = 1;
/// `KVM_MSR_FILTER_VALID_MASK`.
pub const VALID_MASK: u32 = DEFAULT_DENY;

/// The x2APIC MSRs, never filtered.
const X2APIC_MSRS: core::ops::RangeInclusive<u32> = 0x800..=0x8ff;

/// A request the ioctl refuses with `EINVAL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invalid;

/// The checks of `struct kvm_msr_filter` before any range is looked at (upstream
/// `kvm_vm_ioctl_set_msr_filter`): unknown flags; a deny-by-default filter without any range (all
/// `nmsrs` 0: "no filter" cannot deny). Returns whether the default is to allow.
pub fn check_filter(flags: u32, nmsrs: impl IntoIterator<Item = u32>) -> Result<bool, Invalid> {
    if flags & !VALID_MASK != 0 {
        return Err(Invalid);
    }
    let empty = nmsrs.into_iter().all(|n| n == 0);
    let default_allow = flags & DEFAULT_DENY == 0;
    if empty && !default_allow {
        return Err(Invalid);
    }
    Ok(default_allow)
}

/// The checks of one range (upstream `kvm_add_msr_filter`), made in order, range by range:
/// a range of 0 MSRs is skipped whatever its other fields (`None`); otherwise its flags must be
/// known and not 0, and its bitmap (`nmsrs` bits rounded up to whole 64-bit words) at most
/// [`MAX_BITMAP_SIZE`] bytes. Returns the number of bytes to copy from the range's bitmap.
pub fn check_range(flags: u32, nmsrs: u32) -> Result<Option<usize>, Invalid> {
    if nmsrs == 0 {
        return Ok(None);
    }
    if flags & !RANGE_VALID_MASK != 0 || flags == 0 {
        return Err(Invalid);
    }
    let bytes = (nmsrs as usize).div_ceil(64) * 8;
    if bytes > MAX_BITMAP_SIZE {
        return Err(Invalid);
    }
    Ok(Some(bytes))
}

/// One range of a filter (upstream `struct msr_bitmap_range`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range<B> {
    /// [`READ`], [`WRITE`] or both.
    pub flags: u32,
    /// The first MSR the bitmap covers.
    pub base: u32,
    /// How many MSRs it covers.
    pub nmsrs: u32,
    /// One bit per MSR, the bytes [`check_range`] asked for, as userspace gave them.
    pub bitmap: B,
}

impl<B: core::ops::Deref<Target = [u8]>> Range<B> {
    /// The range's verdict on `msr` for an access of `kind` ([`READ`] or [`WRITE`]), `None` if
    /// it does not cover it. The end is computed in 32 bits as upstream does
    /// (`start + nmsrs`), so a range that wraps past 0xffffffff covers nothing.
    fn verdict(&self, msr: u32, kind: u32) -> Option<bool> {
        let end = self.base.wrapping_add(self.nmsrs);
        if msr < self.base || msr >= end || self.flags & kind == 0 {
            return None;
        }
        let bit = (msr - self.base) as usize;
        let byte = self.bitmap.get(bit / 8).copied().unwrap_or(0);
        Some(byte & (1 << (bit % 8)) != 0)
    }
}

/// A VM's MSR filter (upstream `struct kvm_x86_msr_filter`).
#[derive(Clone, Debug)]
pub struct Filter<B> {
    /// What applies to an MSR no range covers.
    pub default_allow: bool,
    ranges: [Option<Range<B>>; MAX_RANGES],
    count: usize,
}

impl<B: core::ops::Deref<Target = [u8]>> Filter<B> {
    /// A filter without ranges.
    pub fn new(default_allow: bool) -> Self {
        Filter { default_allow, ranges: core::array::from_fn(|_| None), count: 0 }
    }

    /// Appends a range that passed [`check_range`]; a filter holds at most [`MAX_RANGES`]
    /// (the uapi struct has no room for more), further ones are dropped.
    pub fn push(&mut self, range: Range<B>) {
        if let Some(slot) = self.ranges.get_mut(self.count) {
            *slot = Some(range);
            self.count += 1;
        }
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> impl Iterator<Item = &Range<B>> {
        self.ranges[..self.count].iter().flatten()
    }

    /// Whether the guest may read (`write` false) or write `msr` (upstream `kvm_msr_allowed`).
    pub fn allowed(&self, msr: u32, write: bool) -> bool {
        if X2APIC_MSRS.contains(&msr) {
            return true;
        }
        let kind = if write { WRITE } else { READ };
        self.ranges().find_map(|r| r.verdict(msr, kind)).unwrap_or(self.default_allow)
    }
}

/// [`Filter::allowed`] of the VM's filter, if it has one: without one everything is allowed.
pub fn allowed<B: core::ops::Deref<Target = [u8]>>(filter: Option<&Filter<B>>, msr: u32, write: bool) -> bool {
    filter.map_or(true, |f| f.allowed(msr, write))
}

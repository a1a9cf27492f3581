//! The binary statistics format of `KVM_GET_STATS_FD` (upstream: `kvm_stats_read` in
//! `virt/kvm/binary_stats.c`; Documentation/virt/kvm/api.rst, "KVM_GET_STATS_FD"), and the
//! statistics rkvm keeps.
//!
//! A stats fd reads as one image: `struct kvm_stats_header`, the id string (`name_size` bytes:
//! "kvm-<pid>" for a VM, "kvm-<pid>/vcpu-<id>" for a vCPU), one `struct kvm_stats_desc` (with a
//! `name_size`-byte name) per statistic, then the values, one u64 each. Everything but the
//! values is fixed for the fd's life; the values are read live at each `read`.
//!
//! Pure logic: no kernel dependency, tested on the host (`rust/tests`). Field sizes are checked
//! against the uapi structs in `statsfd.rs`.

/// `KVM_STATS_NAME_SIZE`: bytes of the id string and of each descriptor's name.
pub const NAME_SIZE: usize = 48;
/// `struct kvm_stats_header`: six u32 (flags, name_size, num_desc, id/desc/data offsets).
pub const HEADER_SIZE: usize = 24;
/// `struct kvm_stats_desc` without its name: flags u32, exponent s16, size u16, offset u32,
/// bucket_size u32.
pub const DESC_FIXED: usize = 16;
/// One descriptor with its name.
pub const DESC_SIZE: usize = DESC_FIXED + NAME_SIZE;

/// A statistic: its name and `KVM_STATS_TYPE_*|UNIT_*|BASE_*` flags (0: a cumulative count,
/// no unit, base 10, exponent 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    pub name: &'static str,
    pub flags: u32,
}

/// `KVM_STATS_TYPE_INSTANT` (a value that goes up and down).
pub const TYPE_INSTANT: u32 = 1;

/// The VM statistics, in data order (names as upstream's where the meaning is the same).
pub const VM: &[Desc] = &[
    // EPT flushes after a slot was deleted or moved (upstream counts all remote TLB flushes).
    Desc { name: "remote_tlb_flush", flags: 0 },
    Desc { name: "online_vcpus", flags: TYPE_INSTANT },
];

/// Indices of [`VM`].
pub mod vm {
    pub const REMOTE_TLB_FLUSH: usize = 0;
    pub const ONLINE_VCPUS: usize = 1;
}

/// The vCPU statistics, in data order (upstream's x86 names: `kvm_vcpu_stats_desc`).
pub const VCPU: &[Desc] = &[
    Desc { name: "exits", flags: 0 },
    Desc { name: "io_exits", flags: 0 },
    Desc { name: "mmio_exits", flags: 0 },
    Desc { name: "halt_exits", flags: 0 },
    Desc { name: "signal_exits", flags: 0 },
    Desc { name: "irq_window_exits", flags: 0 },
    Desc { name: "nmi_window_exits", flags: 0 },
    Desc { name: "irq_exits", flags: 0 },
    Desc { name: "irq_injections", flags: 0 },
    Desc { name: "nmi_injections", flags: 0 },
    Desc { name: "halt_wakeup", flags: 0 },
];

/// Indices of [`VCPU`].
pub mod vcpu {
    pub const EXITS: usize = 0;
    pub const IO_EXITS: usize = 1;
    pub const MMIO_EXITS: usize = 2;
    pub const HALT_EXITS: usize = 3;
    pub const SIGNAL_EXITS: usize = 4;
    pub const IRQ_WINDOW_EXITS: usize = 5;
    pub const NMI_WINDOW_EXITS: usize = 6;
    pub const IRQ_EXITS: usize = 7;
    pub const IRQ_INJECTIONS: usize = 8;
    pub const NMI_INJECTIONS: usize = 9;
    pub const HALT_WAKEUP: usize = 10;
    pub const COUNT: usize = 11;
}

/// Offsets of the image of `n` statistics: (id, descriptors, data, total length).
pub fn layout(n: usize) -> (usize, usize, usize, usize) {
    let id = HEADER_SIZE;
    let desc = id + NAME_SIZE;
    let data = desc + n * DESC_SIZE;
    (id, desc, data, data + n * 8)
}

/// Writes the image of `descs` with `values` (same length) and the NUL-padded `id` into `out`,
/// which must be `layout(descs.len()).3` bytes long.
pub fn write_image(id: &[u8], descs: &[Desc], values: &[u64], out: &mut [u8]) {
    let n = descs.len();
    let (id_off, desc_off, data_off, len) = layout(n);
    assert!(out.len() == len && values.len() == n && id.len() < NAME_SIZE);
    out.fill(0);
    let header = [0u32, NAME_SIZE as u32, n as u32, id_off as u32, desc_off as u32, data_off as u32];
    for (i, v) in header.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    out[id_off..id_off + id.len()].copy_from_slice(id);
    for (i, d) in descs.iter().enumerate() {
        let at = desc_off + i * DESC_SIZE;
        out[at..at + 4].copy_from_slice(&d.flags.to_le_bytes());
        // exponent 0 (bytes 4..6); size: one u64.
        out[at + 6..at + 8].copy_from_slice(&1u16.to_le_bytes());
        // offset of the value within the data block; bucket_size 0.
        out[at + 8..at + 12].copy_from_slice(&((i * 8) as u32).to_le_bytes());
        let name = d.name.as_bytes();
        let name = &name[..name.len().min(NAME_SIZE - 1)];
        out[at + DESC_FIXED..at + DESC_FIXED + name.len()].copy_from_slice(name);
    }
    for (i, v) in values.iter().enumerate() {
        out[data_off + i * 8..data_off + i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
}

/// The part of an image of `len` bytes a `read` of `count` bytes at `pos` returns: the range
/// within the image (empty at or past its end).
pub fn read_window(len: usize, pos: u64, count: usize) -> core::ops::Range<usize> {
    let start = usize::try_from(pos).unwrap_or(usize::MAX).min(len);
    start..start + count.min(len - start)
}

//! The VM: its fd (upstream's `kvm_vm_ioctl`) and the `struct kvm` analogue behind it.
//!
//! A [`Vm`] is created by `KVM_CREATE_VM` on the device fd and lives in an `Arc`: the VM fd holds
//! one reference and every vCPU fd holds another, so the VM outlives all of them, whatever order
//! they are closed in (upstream: `kvm_get_kvm` / `kvm_put_kvm`). The VM owns its vCPUs (upstream's
//! `kvm->vcpu_array`); they are freed with it. The VM remembers the creating process's `mm`, and
//! ioctls from any other address space get `EIO`, as upstream.
//!
//! Locks, as upstream: `state` is `kvm->lock` (vCPU creation, VM-wide settings), `slots` is
//! `kvm->slots_lock` (memory slots, their dirty bitmaps). The vCPUs' EPT fault handler takes
//! `slots` too (upstream: SRCU and `mmu_lock`), so a dirty-log ioctl, which holds it from its
//! first look at the bitmap until the pages it cleared are write-protected and flushed, is atomic
//! with respect to every logged write. `mmu` is `kvm->mmu_lock`, a spinlock taken inside `slots`
//! and by the MMU notifier (`mmu_notifier.rs`), which must never wait for `slots`: it protects
//! the invalidation window, the slots' host-address index and (through the backend's own
//! spinlock inside it) the guest mappings. The MMIO/PIO buses (coalesced zones, ioeventfds) have
//! their own writer lock and SRCU domain (`ioeventfd.rs`), so the exit path never waits on a
//! writer.

use crate::backend::{Backend, BackendVm};
use crate::caps;
use crate::dirty::{self, DirtyBitmap, LogError};
use crate::ffi::bindings as b;
use crate::ffi::fileops::{self, FileKind, Fops};
use crate::ffi::uapi::{read_user, read_user_words, write_user, write_user_words};
use crate::irq::{Irqchip, VcpuApic};
use crate::coalesced;
use crate::iobus::Bus;
use crate::ioeventfd::IoBuses;
use crate::stats;
use crate::statsfd::{Counters, StatsFile};
use crate::memslot::{self, GfnRange, Memslot, Memslots, SlotError, SlotVec};
use crate::mmu_notifier::{MmuNotifier, MmuState};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use kernel::page::Page;
use crate::vcpu::{self, Vcpu};
use kernel::c_str;
use kernel::prelude::*;
use crate::x86::{msr, msr_filter};
use crate::x86::pvclock::{self, VmClock};
use crate::x86::tsc::TscSync;
use kernel::sync::{Arc, ArcBorrow, Mutex, SpinLock};
use kernel::uaccess::UserSlice;

/// The memory slots of a VM, stored in kernel vectors.
pub(crate) type Slots = Memslots<KVec<Memslot>, KVec<GfnRange>>;

/// A VM's MSR filter (`KVM_X86_SET_MSR_FILTER`), its bitmaps copied from userspace.
pub(crate) type MsrFilter = msr_filter::Filter<KVec<u8>>;

/// A logging slot's dirty bitmap, in memory that may come from vmalloc (upstream: `__vcalloc`
/// in `kvm_alloc_dirty_bitmap`; a 2^31-page slot has a 512 MiB double bitmap).
type Bitmap = DirtyBitmap<KVVec<u64>>;

/// What the slots lock (upstream `kvm->slots_lock`) protects.
struct SlotState {
    slots: Slots,
    /// The dirty bitmaps of the slots with `KVM_MEM_LOG_DIRTY_PAGES`, sorted by slot id
    /// (upstream keeps the pointer in the slot: `memslot->dirty_bitmap`). A bitmap is allocated
    /// before its slot gets the flag and freed after the slot loses it or goes.
    dirty: KVec<Bitmap>,
    /// `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`'s `args[0]` (upstream
    /// `kvm->manual_dirty_log_protect`).
    manual_protect: u64,
}

/// A reference on the creating process's `mm_struct` (upstream: `mmgrab(current->mm)` in
/// `kvm_create_vm`), used only to recognise ioctls from that address space.
///
/// # Invariants
///
/// `0` holds an `mm_count` reference taken with `mmgrab`, dropped in `drop`.
struct MmRef(*mut b::mm_struct);

// SAFETY: the pointer is only compared, never dereferenced, and the reference it holds may be
// dropped from any thread.
unsafe impl Send for MmRef {}
// SAFETY: as above; shared access only compares the pointer.
unsafe impl Sync for MmRef {}

impl MmRef {
    fn current() -> Result<Self> {
        let mm = crate::ffi::current_mm();
        if mm.is_null() {
            // A kernel thread has no address space to run a VM in.
            return Err(EINVAL);
        }
        // SAFETY: `mm` is the calling task's live mm, so taking a count reference is valid.
        unsafe { b::rkvm_mmgrab(mm) };
        Ok(MmRef(mm))
    }

    fn is_current(&self) -> bool {
        self.0 == crate::ffi::current_mm()
    }
}

impl Drop for MmRef {
    fn drop(&mut self) {
        // SAFETY: by the type invariant we hold one `mm_count` reference, dropped once here.
        unsafe { b::rkvm_mmdrop(self.0) };
    }
}

/// VM-wide state under `kvm->lock`.
struct VmState {
    /// The vCPUs, in creation order (upstream: `kvm->vcpu_array`).
    vcpus: KVec<Arc<Vcpu>>,
    /// `KVM_SET_TSS_ADDR` (used by a backend without unrestricted guest for real mode).
    tss_addr: Option<u64>,
    /// `KVM_SET_IDENTITY_MAP_ADDR` (likewise).
    identity_map_addr: Option<u64>,
    /// The in-kernel PIC and IOAPIC (`KVM_CREATE_IRQCHIP`; upstream `kvm->arch.vpic` and
    /// `vioapic`). Set once, before any vCPU exists, and kept until the VM goes.
    irqchip: Option<Arc<Irqchip>>,
    /// `KVM_ENABLE_CAP(KVM_CAP_MAX_VCPU_ID)`: vCPU ids are below this (0: not set, the global
    /// limit applies; upstream `kvm->arch.max_vcpu_ids`).
    max_vcpu_ids: u32,
    /// `KVM_SET_NR_MMU_PAGES`. Recorded only: that limit bounds upstream's shadow-paging page
    /// cache, and rkvm's EPT tables have no such cache.
    nr_mmu_pages: u64,
    /// The `KVM_CAP_X2APIC_API` flags enabled so far (upstream `kvm->arch.x2apic_format` and
    /// `x2apic_broadcast_quirk_disabled`); the irqchip holds them too once it exists.
    x2apic_api: u64,
    /// `KVM_SET_BOOT_CPU_ID`: the vCPU id that is the BSP at RESET (upstream
    /// `kvm->arch.bsp_vcpu_id`, 0 by default). Fixed once a vCPU exists.
    bsp_vcpu_id: u32,
    /// `KVM_ENABLE_CAP(KVM_CAP_X86_APIC_BUS_CYCLES_NS)`: the LAPIC timer's bus cycle, given to
    /// each LAPIC at creation (upstream `kvm->arch.apic_bus_cycle_ns`).
    apic_bus_cycle_ns: u64,
}

/// A virtual machine (upstream: `struct kvm`).
#[pin_data(PinnedDrop)]
pub(crate) struct Vm {
    pub(crate) backend: Arc<dyn Backend>,
    /// The backend's per-VM state (EPT for VMX).
    pub(crate) arch: KBox<dyn BackendVm>,
    mm: MmRef,
    #[pin]
    state: Mutex<VmState>,
    #[pin]
    slots: Mutex<SlotState>,
    /// Upstream `kvm->mmu_lock`: the invalidation window and the slots by host address
    /// (`mmu_notifier.rs`). Taken inside `slots`, never the other way round.
    #[pin]
    pub(crate) mmu: SpinLock<MmuState>,
    /// The MMU notifier on the creator's `mm` (upstream `kvm->mmu_notifier`), registered once
    /// the VM is at its final address and unregistered before anything else is freed.
    notifier: MmuNotifier,
    /// The coalesced MMIO/PIO ring (`struct kvm_coalesced_mmio_ring`), mapped by userspace from
    /// every vCPU fd at `KVM_COALESCED_MMIO_PAGE_OFFSET` (upstream `kvm->coalesced_mmio_ring`).
    ring_page: Page,
    /// Serialises writers of the ring (upstream `kvm->ring_lock`). A spinlock: taken on the
    /// exit path inside the buses' SRCU read section, which writers of the buses wait for.
    #[pin]
    ring_lock: SpinLock<()>,
    /// The MMIO and PIO buses: coalesced zones and ioeventfds (upstream `kvm->buses`).
    #[pin]
    buses: IoBuses,
    /// The creating process's pid, for the stats id "kvm-<pid>" (upstream `kvm->stats_id`).
    pub(crate) creator_pid: i32,
    /// VM statistics (`stats::VM`); the counted ones are bumped under the MMU lock.
    stats: Counters<2>,
    /// The record of the last TSC write (upstream: `kvm->arch.tsc_write_lock` and the fields it
    /// protects). A spinlock: taken with the vCPU's VMCS loaded and preemption off.
    #[pin]
    tsc: SpinLock<TscSync>,
    /// `KVM_CAP_MSR_PLATFORM_INFO`: the guest may read MSR_PLATFORM_INFO (upstream
    /// `kvm->arch.guest_can_read_msr_platform_info`, on by default).
    pub(crate) guest_can_read_platform_info: AtomicBool,
    /// `KVM_CAP_EXIT_ON_EMULATION_FAILURE` (upstream `kvm->arch.exit_on_emulation_error`).
    pub(crate) exit_on_emulation_error: AtomicBool,
    /// `KVM_CAP_X86_USER_SPACE_MSR`: the `KVM_MSR_EXIT_REASON_*` for which a refused guest
    /// RDMSR/WRMSR exits to userspace (upstream `kvm->arch.user_space_msr_mask`).
    pub(crate) user_space_msr_mask: AtomicU32,
    /// `KVM_X86_SET_MSR_FILTER` (upstream `kvm->arch.msr_filter`) and its generation. The filter
    /// is replaced whole, so a vCPU uses the old one or the new one, never a mix; the
    /// generation goes up with each replacement, under the lock.
    #[pin]
    msr_filter: Mutex<(u32, Option<Arc<MsrFilter>>)>,
    /// A copy of the generation, read without the lock before every guest entry: a vCPU that
    /// finds it changed takes the new filter and recomputes its MSR bitmap (upstream
    /// `KVM_REQ_MSR_FILTER_CHANGED`).
    msr_filter_gen: AtomicU32,
    /// kvmclock (`pv.rs`): the offset, the master clock, the wall-clock MSR. A spinlock: taken
    /// with a vCPU's VMCS loaded (TSC writes).
    #[pin]
    pub(crate) clock: SpinLock<VmClock>,
    /// Bumped whenever `clock` changes: every vCPU rewrites its kvmclock time information
    /// before its next entry (upstream `KVM_REQ_CLOCK_UPDATE` to all vCPUs).
    pub(crate) clock_gen: AtomicU32,
    /// `KVM_CAP_X86_DISABLE_EXITS` with `KVM_X86_DISABLE_EXITS_HLT` (upstream
    /// `kvm->arch.hlt_in_guest`): guest HLT does not exit.
    pub(crate) hlt_in_guest: AtomicBool,
    /// `KVM_CAP_DISABLE_QUIRKS2` (upstream `kvm->arch.disabled_quirks`).
    pub(crate) disabled_quirks: AtomicU64,
    /// `KVM_CAP_EXIT_HYPERCALL`: the hypercalls that exit to userspace (upstream
    /// `kvm->arch.hypercall_exit_enabled`).
    pub(crate) exit_hypercall: AtomicU64,
}

/// The VM fd's file kind: `private_data` owns one reference to the [`Vm`].
struct VmFile;

static VM_FOPS: Fops = Fops::new::<VmFile>(&crate::THIS_MODULE);

impl FileKind for VmFile {
    type Data = Arc<Vm>;

    fn ioctl(vm: ArcBorrow<'_, Vm>, cmd: u32, arg: usize) -> Result<isize> {
        Vm::ioctl(vm, cmd, arg)
    }
}

/// `KVM_CREATE_VM` (upstream: `kvm_dev_ioctl_create_vm`): returns the new VM fd.
pub(crate) fn create(backend: &Arc<dyn Backend>, vm_type: usize) -> Result<i32> {
    if vm_type != b::KVM_X86_DEFAULT_VM as usize {
        return Err(EINVAL);
    }
    let vm = Arc::pin_init(
        try_pin_init!(Vm {
            backend: backend.clone(),
            arch: backend.create_vm()?,
            mm: MmRef::current()?,
            state <- kernel::new_mutex!(VmState {
                vcpus: KVec::new(),
                tss_addr: None,
                identity_map_addr: None,
                irqchip: None,
                max_vcpu_ids: 0,
                nr_mmu_pages: 0,
                x2apic_api: 0,
                bsp_vcpu_id: 0,
                apic_bus_cycle_ns: crate::irq::lapic::BUS_CYCLE_NS,
            }),
            slots <- kernel::new_mutex!(SlotState {
                slots: Memslots::new(KVec::new(), KVec::new()),
                dirty: KVec::new(),
                manual_protect: 0,
            }),
            mmu <- kernel::new_spinlock!(MmuState::new()),
            notifier: MmuNotifier::new(),
            ring_page: Page::alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO)?,
            ring_lock <- kernel::new_spinlock!(()),
            buses <- IoBuses::new(),
            creator_pid: kernel::current!().pid(),
            stats: Counters::new(),
            tsc <- kernel::new_spinlock!(TscSync::default()),
            guest_can_read_platform_info: AtomicBool::new(true),
            exit_on_emulation_error: AtomicBool::new(false),
            user_space_msr_mask: AtomicU32::new(0),
            msr_filter <- kernel::new_mutex!((0, None)),
            msr_filter_gen: AtomicU32::new(0),
            clock <- kernel::new_spinlock!(Vm::new_clock()),
            clock_gen: AtomicU32::new(0),
            hlt_in_guest: AtomicBool::new(false),
            disabled_quirks: AtomicU64::new(0),
            exit_hypercall: AtomicU64::new(0),
        }),
        GFP_KERNEL_ACCOUNT,
    )?;
    // Upstream `kvm_create_vm` → `kvm_init_mmu_notifier`; on failure the VM is freed here.
    vm.notifier.register(&vm)?;
    fileops::create_fd::<VmFile>(&VM_FOPS, c_str!("kvm-vm"), vm)
}

#[pinned_drop]
impl PinnedDrop for Vm {
    /// Upstream `kvm_destroy_vm`: the MMU notifier goes first (its `release` unmaps all guest
    /// memory, and no callback runs once it returns), then the fields, backend state included.
    fn drop(self: Pin<&mut Self>) {
        self.notifier.unregister();
    }
}

/// The [`memslot::Region`] of a `struct kvm_userspace_memory_region` or `..._region2` (same
/// field names).
macro_rules! region {
    ($r:expr) => {{
        let r = $r;
        memslot::Region {
            slot: r.slot,
            flags: r.flags,
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            userspace_addr: r.userspace_addr,
        }
    }};
}

impl Vm {
    /// `kvm_vm_ioctl`.
    fn ioctl(vm: ArcBorrow<'_, Vm>, cmd: u32, arg: usize) -> Result<isize> {
        if !vm.mm.is_current() {
            return Err(EIO);
        }
        match cmd {
            b::KVM_CREATE_VCPU => Vm::create_vcpu(vm, arg).map(|fd| fd as isize),
            b::KVM_SET_USER_MEMORY_REGION => {
                vm.set_memory_region(&region!(read_user::<b::kvm_userspace_memory_region>(arg)?))?;
                Ok(0)
            }
            // The same with guest_memfd fields; KVM_MEM_GUEST_MEMFD is not among the valid
            // flags (default VMs have no private memory), so those fields are never used.
            b::KVM_SET_USER_MEMORY_REGION2 => {
                vm.set_memory_region(&region!(read_user::<b::kvm_userspace_memory_region2>(arg)?))?;
                Ok(0)
            }
            b::KVM_GET_DIRTY_LOG => {
                vm.get_dirty_log(&read_user::<b::kvm_dirty_log>(arg)?)?;
                Ok(0)
            }
            b::KVM_CLEAR_DIRTY_LOG => {
                vm.clear_dirty_log(&read_user::<b::kvm_clear_dirty_log>(arg)?)?;
                Ok(0)
            }
            // The VM's default vCPU TSC rate (upstream `kvm->arch.default_tsc_khz`): the host's.
            b::KVM_GET_TSC_KHZ => Ok(crate::ffi::tsc_khz() as isize),
            b::KVM_SET_TSS_ADDR => {
                // Upstream x86: the three pages at `addr` must lie below 4 GiB.
                if arg > (3 * b::PAGE_SIZE as usize).wrapping_neg() as u32 as usize {
                    return Err(EINVAL);
                }
                vm.state.lock().tss_addr = Some(arg as u64);
                Ok(0)
            }
            b::KVM_SET_IDENTITY_MAP_ADDR => {
                let mut state = vm.state.lock();
                if !state.vcpus.is_empty() {
                    return Err(EINVAL);
                }
                state.identity_map_addr = Some(read_user::<u64>(arg)?);
                Ok(0)
            }
            // Upstream x86 `kvm_arch_vm_ioctl`: before any vCPU exists, an id below the vCPU
            // id limit (KVM_MAX_VCPU_IDS itself included, as upstream's check lets it through).
            b::KVM_SET_BOOT_CPU_ID => {
                let mut state = vm.state.lock();
                if !state.vcpus.is_empty() {
                    return Err(EBUSY);
                }
                if arg > caps::MAX_VCPU_ID as usize
                    || (state.max_vcpu_ids != 0 && arg > state.max_vcpu_ids as usize)
                {
                    return Err(EINVAL);
                }
                state.bsp_vcpu_id = arg as u32;
                Ok(0)
            }
            b::KVM_CHECK_EXTENSION => Ok(caps::check_extension(&*vm.backend, arg)),
            b::KVM_REGISTER_COALESCED_MMIO | b::KVM_UNREGISTER_COALESCED_MMIO => {
                let z: b::kvm_coalesced_mmio_zone = read_user(arg)?;
                // SAFETY: both views of the union are the same u32 (`pio` is the current one).
                let raw = unsafe { z.__bindgen_anon_1.pio };
                let pio = coalesced::pio_flag(raw).ok_or(EINVAL)?;
                let zone = coalesced::Zone { addr: z.addr, size: z.size, pio };
                vm.coalesced_zone(zone, cmd == b::KVM_REGISTER_COALESCED_MMIO).map(|()| 0)
            }
            b::KVM_IOEVENTFD => {
                let args: b::kvm_ioeventfd = read_user(arg)?;
                vm.buses.ioeventfd(&args).map(|()| 0)
            }
            b::KVM_GET_STATS_FD => crate::statsfd::create_fd(StatsFile::Vm(vm.into())).map(|fd| fd as isize),
            b::KVM_GET_CLOCK => vm.get_clock(arg).map(|()| 0),
            b::KVM_SET_CLOCK => vm.set_clock(arg).map(|()| 0),
            b::KVM_ENABLE_CAP => {
                let cap: b::kvm_enable_cap = read_user(arg)?;
                vm.enable_cap(&cap).map(|()| 0)
            }
            // Upstream `kvm_vm_ioctl_set_nr_mmu_pages`: at least KVM_MIN_ALLOC_MMU_PAGES (64).
            b::KVM_SET_NR_MMU_PAGES => {
                if arg < 64 {
                    return Err(EINVAL);
                }
                vm.state.lock().nr_mmu_pages = arg as u64;
                Ok(0)
            }
            // Upstream x86 `kvm_arch_vm_ioctl`: one irqchip per VM, before any vCPU.
            b::KVM_CREATE_IRQCHIP => {
                let mut state = vm.state.lock();
                if state.irqchip.is_some() {
                    return Err(EEXIST);
                }
                if !state.vcpus.is_empty() {
                    return Err(EINVAL);
                }
                state.irqchip = Some(Irqchip::new(state.x2apic_api)?);
                Ok(0)
            }
            // Upstream `kvm_vm_ioctl_irq_line`: ENXIO without an in-kernel irqchip; the status
            // is written back only for KVM_IRQ_LINE_STATUS.
            b::KVM_IRQ_LINE | b::KVM_IRQ_LINE_STATUS => {
                let mut ev: b::kvm_irq_level = read_user(arg)?;
                let chip = vm.irqchip().ok_or(ENXIO)?;
                // SAFETY: both views of the union are the same u32 (`irq` on input).
                let gsi = unsafe { ev.__bindgen_anon_1.irq };
                let status = chip.set_irq(gsi, ev.level != 0);
                if cmd == b::KVM_IRQ_LINE_STATUS {
                    ev.__bindgen_anon_1.status = status;
                    write_user(arg, &ev)?;
                }
                Ok(0)
            }
            b::KVM_X86_SET_MSR_FILTER => vm.set_msr_filter(&read_user::<b::kvm_msr_filter>(arg)?).map(|()| 0),
            b::KVM_GET_IRQCHIP => {
                let mut chip: b::kvm_irqchip = read_user(arg)?;
                vm.irqchip().ok_or(ENXIO)?.get(&mut chip)?;
                write_user(arg, &chip).map(|()| 0)
            }
            b::KVM_SET_IRQCHIP => {
                let chip: b::kvm_irqchip = read_user(arg)?;
                vm.irqchip().ok_or(ENXIO)?.set(&chip).map(|()| 0)
            }
            // Upstream x86's `kvm_arch_vm_ioctl` default.
            _ => Err(ENOTTY),
        }
    }

    /// `KVM_ENABLE_CAP` on the VM (upstream `kvm_vm_ioctl_enable_cap_generic` and x86's
    /// `kvm_vm_ioctl_enable_cap`): flags must be 0; caps that cannot be enabled get `EINVAL`.
    /// The errno of each case is upstream's.
    fn enable_cap(&self, cap: &b::kvm_enable_cap) -> Result {
        if cap.flags != 0 {
            return Err(EINVAL);
        }
        // The caps of the PV interface exist only where the backend reports them.
        let pv_cap = matches!(cap.cap, b::KVM_CAP_X86_DISABLE_EXITS | b::KVM_CAP_DISABLE_QUIRKS2 | b::KVM_CAP_EXIT_HYPERCALL);
        if pv_cap && caps::check_extension(&*self.backend, cap.cap as usize) == 0 {
            return Err(EINVAL);
        }
        match cap.cap {
            // Lowers the vCPU id limit, once (setting the same value again is allowed), never
            // below the boot CPU's id.
            b::KVM_CAP_MAX_VCPU_ID => {
                let want = cap.args[0];
                if want > u64::from(caps::MAX_VCPU_ID) {
                    return Err(EINVAL);
                }
                let mut state = self.state.lock();
                if u64::from(state.bsp_vcpu_id) > want {
                    Err(EINVAL)
                } else if u64::from(state.max_vcpu_ids) == want {
                    Ok(())
                } else if state.max_vcpu_ids == 0 && want != 0 {
                    state.max_vcpu_ids = want as u32;
                    Ok(())
                } else {
                    Err(EINVAL)
                }
            }
            // Upstream: valid flags only, at any time (also after vCPUs exist); flags already
            // set stay set.
            b::KVM_CAP_X2APIC_API => {
                let flags = cap.args[0];
                if flags & !caps::X2APIC_API_VALID_FLAGS != 0 {
                    return Err(EINVAL);
                }
                let mut state = self.state.lock();
                state.x2apic_api |= flags;
                if let Some(chip) = &state.irqchip {
                    chip.enable_x2apic_api(flags);
                }
                Ok(())
            }
            // Upstream `kvm_vm_ioctl_enable_cap_generic`; takes effect for bitmaps allocated and
            // ioctls made from now on.
            b::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 => {
                let manual = dirty::manual_protect(cap.flags, cap.args[0]).map_err(log_errno)?;
                self.slots.lock().manual_protect = manual;
                Ok(())
            }
            // The LAPIC timer's bus cycle: with an in-kernel irqchip, before any vCPU (each
            // LAPIC takes it at creation).
            b::KVM_CAP_X86_APIC_BUS_CYCLES_NS => {
                let ns = cap.args[0];
                if !crate::irq::lapic::bus_cycle_valid(ns) {
                    return Err(EINVAL);
                }
                let mut state = self.state.lock();
                if state.irqchip.is_none() {
                    Err(ENXIO)
                } else if !state.vcpus.is_empty() {
                    Err(EINVAL)
                } else {
                    state.apic_bus_cycle_ns = ns;
                    Ok(())
                }
            }
            // Whether the guest may read MSR_PLATFORM_INFO (any non-zero value allows it).
            b::KVM_CAP_MSR_PLATFORM_INFO => {
                self.guest_can_read_platform_info.store(cap.args[0] != 0, Ordering::Relaxed);
                Ok(())
            }
            // Which refused guest MSR accesses exit to userspace (upstream: any valid mask, at
            // any time, replacing the previous one).
            b::KVM_CAP_X86_USER_SPACE_MSR => {
                let mask = u32::try_from(cap.args[0]).map_err(|_| EINVAL)?;
                if mask & !msr::EXIT_REASON_VALID_MASK != 0 {
                    return Err(EINVAL);
                }
                self.user_space_msr_mask.store(mask, Ordering::Relaxed);
                Ok(())
            }
            // Upstream: any of the valid bits, at any time. HLT is honoured (guest HLT no longer
            // exits) and PAUSE always is (rkvm never intercepts PAUSE); MWAIT and CSTATE are
            // accepted and ignored, as upstream does when it cannot honour them (MWAIT: #UD
            // here; CSTATE: no C-state residency MSRs for guests).
            b::KVM_CAP_X86_DISABLE_EXITS => {
                if cap.args[0] & !pvclock::DISABLE_EXITS_VALID != 0 {
                    return Err(EINVAL);
                }
                if cap.args[0] & pvclock::DISABLE_EXITS_HLT != 0 {
                    self.hlt_in_guest.store(true, Ordering::Relaxed);
                }
                Ok(())
            }
            // Only the quirks rkvm has (`KVM_CHECK_EXTENSION` reports them); disabled for good.
            b::KVM_CAP_DISABLE_QUIRKS2 => {
                if cap.args[0] & !pvclock::QUIRKS != 0 {
                    return Err(EINVAL);
                }
                self.disabled_quirks.fetch_or(cap.args[0], Ordering::Relaxed);
                Ok(())
            }
            // Which hypercalls exit to userspace: only KVM_HC_MAP_GPA_RANGE can.
            b::KVM_CAP_EXIT_HYPERCALL => {
                if cap.args[0] & !pvclock::EXIT_HYPERCALL_VALID != 0 {
                    return Err(EINVAL);
                }
                self.exit_hypercall.store(cap.args[0], Ordering::Relaxed);
                Ok(())
            }
            // 0 or 1: an instruction the emulator cannot handle exits to userspace instead of
            // raising #UD in the guest.
            b::KVM_CAP_EXIT_ON_EMULATION_FAILURE => {
                if cap.args[0] & !1 != 0 {
                    return Err(EINVAL);
                }
                self.exit_on_emulation_error.store(cap.args[0] != 0, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(EINVAL),
        }
    }

    /// `KVM_X86_SET_MSR_FILTER` (upstream `kvm_vm_ioctl_set_msr_filter`): the checks in
    /// upstream's order (`msr_filter::check_filter`, then range by range `check_range` and the
    /// copy of its bitmap, `EFAULT` for a bad pointer); a refused filter leaves the old one in
    /// place. The new one replaces the old one whole and takes effect at each vCPU's next
    /// guest entry or MSR exit; a vCPU running meanwhile finishes with the old one (upstream
    /// kicks it out of the guest; the ioctl does not wait for that either).
    fn set_msr_filter(&self, f: &b::kvm_msr_filter) -> Result {
        let default_allow = msr_filter::check_filter(f.flags, f.ranges.iter().map(|r| r.nmsrs)).map_err(|_| EINVAL)?;
        let mut filter = MsrFilter::new(default_allow);
        for r in f.ranges.iter() {
            let Some(bytes) = msr_filter::check_range(r.flags, r.nmsrs).map_err(|_| EINVAL)? else { continue };
            let mut bitmap = KVec::from_elem(0u8, bytes, GFP_KERNEL_ACCOUNT)?;
            UserSlice::new(r.bitmap as usize, bytes).reader().read_slice(&mut bitmap)?;
            filter.push(msr_filter::Range { flags: r.flags, base: r.base, nmsrs: r.nmsrs, bitmap });
        }
        let new = Arc::new(filter, GFP_KERNEL_ACCOUNT)?;
        let old = {
            let mut cur = self.msr_filter.lock();
            let gen = cur.0.wrapping_add(1);
            let old = core::mem::replace(&mut *cur, (gen, Some(new)));
            self.msr_filter_gen.store(gen, Ordering::Release);
            old
        };
        drop(old);
        Ok(())
    }

    /// The MSR filter's generation (changes with every `KVM_X86_SET_MSR_FILTER`).
    #[inline]
    pub(crate) fn msr_filter_gen(&self) -> u32 {
        self.msr_filter_gen.load(Ordering::Acquire)
    }

    /// The MSR filter in force and its generation (`None`: no filter, everything allowed).
    pub(crate) fn msr_filter(&self) -> (u32, Option<Arc<MsrFilter>>) {
        let cur = self.msr_filter.lock();
        (cur.0, cur.1.clone())
    }

    /// `KVM_CREATE_VCPU` (upstream: `kvm_vm_ioctl_create_vcpu`): returns the new vCPU fd.
    fn create_vcpu(vm: ArcBorrow<'_, Vm>, id: usize) -> Result<i32> {
        if id >= caps::MAX_VCPU_ID as usize {
            return Err(EINVAL);
        }
        let id = id as u32;
        let mut state = vm.state.lock();
        // Upstream `kvm_arch_vcpu_precreate`.
        if state.max_vcpu_ids != 0 && id >= state.max_vcpu_ids {
            return Err(EINVAL);
        }
        if state.vcpus.len() >= caps::MAX_VCPUS as usize {
            return Err(EINVAL);
        }
        if state.vcpus.iter().any(|v| v.id == id) {
            return Err(EEXIST);
        }
        let bsp = id == state.bsp_vcpu_id;
        let apic = state
            .irqchip
            .as_ref()
            .map(|c| VcpuApic::new(c, id, bsp, state.apic_bus_cycle_ns))
            .transpose()?;
        let vcpu = Vcpu::new(&*vm.backend, &*vm.arch, id, apic)?;
        // Upstream `kvm_arch_vcpu_postcreate` → `kvm_synchronize_tsc(vcpu, NULL)`: the new
        // vCPU's TSC joins the VM's (0 for the first vCPU).
        let mut gen = 0;
        let offset = vm.synchronize_tsc(None, &mut gen);
        vcpu.write_tsc_offset(offset, gen)?;
        // Reserve the array slot first so that, once the fd exists, nothing can fail.
        state.vcpus.reserve(1, GFP_KERNEL_ACCOUNT)?;
        let fd = vcpu::create_fd(vm.into(), vcpu.clone())?;
        // Cannot fail: capacity was reserved above, so `push` does not allocate.
        let _ = state.vcpus.push(vcpu, GFP_NOWAIT);
        Ok(fd)
    }

    /// `KVM_SET_USER_MEMORY_REGION` (upstream: `kvm_set_memory_region` → `kvm_set_memslot`).
    /// Whatever can fail (the new dirty bitmap, room to record it and the slot) happens before
    /// anything changes, so a refused request leaves the VM as it was.
    fn set_memory_region(&self, req: &memslot::Region) -> Result {
        let req = *req;
        let mut guard = self.slots.lock();
        let s = &mut *guard;
        let change = s.slots.check(&req, crate::ffi::access_ok).map_err(slot_errno)?;
        // Upstream `kvm_prepare_memory_region`: a slot that starts logging gets its bitmap.
        let bitmap_change = dirty::bitmap_change(&change, s.manual_protect);
        let new_bitmap = match (bitmap_change, change.after()) {
            (dirty::BitmapChange::Alloc { all_set }, Some(slot)) => {
                let words = KVVec::from_elem(0u64, 2 * dirty::words(slot.npages), GFP_KERNEL_ACCOUNT)?;
                s.dirty.reserve(1, GFP_KERNEL_ACCOUNT)?;
                Some(DirtyBitmap::new(slot.id, slot.npages, words, all_set))
            }
            _ => None,
        };
        // A new slot needs room in the MMU notifier's index too.
        if let memslot::Change::Create(_) = change {
            self.mmu_index_reserve()?;
        }
        // Guest mappings of a slot that goes away or moves are dropped first (upstream:
        // kvm_invalidate_memslot → kvm_arch_flush_shadow_memslot before
        // kvm_commit_memory_region), flushed before the change is visible.
        if let memslot::Change::Delete(old) | memslot::Change::Move { old, .. } = change {
            let _m = self.mmu.lock();
            if self.arch.unmap_gfn_range(old.base_gfn, old.end_gfn()) {
                self.arch.flush_remote_tlbs();
            }
            self.count_remote_tlb_flush();
        }
        // Fails only for a new slot (no room), before anything was changed.
        s.slots.commit(change).map_err(slot_errno)?;
        // The notifier's index follows (no fault can map the slot meanwhile: faults take the
        // slots lock).
        {
            let mut m = self.mmu.lock();
            match change {
                memslot::Change::Create(slot) => m.index.insert(&slot),
                memslot::Change::Delete(old) => m.index.remove(old.id),
                memslot::Change::Move { old, to, .. } => m.index.set_base_gfn(old.id, to),
                memslot::Change::FlagsOnly { .. } | memslot::Change::Nothing => {}
            }
        }
        // Upstream `kvm_commit_memory_region`: the bitmap follows the flag.
        if let Some(bm) = new_bitmap {
            let i = dirty::insert_index(&s.dirty, bm.id);
            // Cannot fail: room was reserved above.
            SlotVec::insert(&mut s.dirty, i, bm);
        } else if let (dirty::BitmapChange::Free, Some(old)) = (bitmap_change, change.before()) {
            if let Ok(i) = s.dirty.binary_search_by_key(&old.id, |b| b.id) {
                drop(SlotVec::remove(&mut s.dirty, i));
            }
        }
        // x86 `kvm_mmu_slot_apply_flags`: logging turned on for a slot whose pages may already be
        // mapped writable.
        if let Some(slot) = change.after().filter(|_| dirty::protect_on_commit(&change, s.manual_protect)) {
            if self.arch.write_protect_slot(&slot) {
                self.arch.flush_remote_tlbs();
            }
        }
        Ok(())
    }

    /// `KVM_GET_DIRTY_LOG` (upstream `kvm_vm_ioctl_get_dirty_log` → `kvm_get_dirty_log_protect`):
    /// copies the slot's bitmap out. Without manual protect the bitmap is taken (cleared) and the
    /// pages it named write-protected again, all under the slots lock, and flushed before the
    /// copy, so a write after the ioctl returns is in the next log; one racing with it is in
    /// this one (upstream's steps 1–4). If the copy fails (`EFAULT`), the bits go back into the
    /// bitmap (upstream loses them).
    fn get_dirty_log(&self, log: &b::kvm_dirty_log) -> Result {
        // SAFETY: both views of the union are 8 bytes of plain data; rkvm uses the integer one.
        let user = unsafe { log.__bindgen_anon_1.padding2 } as usize;
        let id = dirty::log_slot_id(log.slot).map_err(log_errno)?;
        let mut guard = self.slots.lock();
        let s = &mut *guard;
        let slot = *s.slots.get(id).ok_or(ENOENT)?;
        let bm = dirty::find(&mut s.dirty, id).ok_or(ENOENT)?;
        let (live, snap) = bm.halves();
        if s.manual_protect & dirty::MANUAL_PROTECT_ENABLE != 0 {
            return write_user_words(user, live);
        }
        let mut flush = false;
        dirty::take(live, snap, |offset, mask| flush |= self.arch.write_protect_masked(&slot, offset, mask));
        if flush {
            self.arch.flush_remote_tlbs();
        }
        write_user_words(user, snap).inspect_err(|_| dirty::restore(live, snap))
    }

    /// `KVM_CLEAR_DIRTY_LOG` (upstream `kvm_vm_ioctl_clear_dirty_log` →
    /// `kvm_clear_dirty_log_protect`): clears the bits userspace names and write-protects those
    /// pages again (flushed before the ioctl returns, under the slots lock as for
    /// [`Vm::get_dirty_log`]).
    fn clear_dirty_log(&self, log: &b::kvm_clear_dirty_log) -> Result {
        // SAFETY: as in `get_dirty_log`.
        let user = unsafe { log.__bindgen_anon_1.padding2 } as usize;
        let mut guard = self.slots.lock();
        let s = &mut *guard;
        let (id, range) = dirty::check_clear(log.slot, log.first_page, log.num_pages, |id| {
            dirty::find(&mut s.dirty, id).map(|bm| bm.npages)
        })
        .map_err(log_errno)?;
        let slot = *s.slots.get(id).ok_or(ENOENT)?;
        let bm = dirty::find(&mut s.dirty, id).ok_or(ENOENT)?;
        let (live, buf) = bm.halves();
        let buf = &mut buf[..range.words];
        read_user_words(user, buf)?;
        let mut flush = false;
        dirty::clear(live, &range, buf, |offset, mask| flush |= self.arch.write_protect_masked(&slot, offset, mask));
        if flush {
            self.arch.flush_remote_tlbs();
        }
        Ok(())
    }

    /// `KVM_(UN)REGISTER_COALESCED_MMIO` (upstream `kvm_vm_ioctl_(un)register_coalesced_mmio`):
    /// zones are devices on the MMIO or PIO bus.
    fn coalesced_zone(&self, zone: coalesced::Zone, register: bool) -> Result {
        if register {
            self.buses.register_zone(&zone)
        } else {
            self.buses.unregister_zones(&zone)
        }
    }

    /// A guest write of `len` (at most 8) bytes of `data` at `addr` (a port if `pio`) that no
    /// in-kernel device took: offered to the coalesced zones and ioeventfds on the bus, in
    /// upstream's order (`kvm_io_bus_write` on `KVM_MMIO_BUS` / `KVM_PIO_BUS`). Returns whether
    /// one took it; the guest then goes on without an exit.
    pub(crate) fn io_write(&self, addr: u64, len: u32, data: u64, pio: bool) -> bool {
        let bus = if pio { Bus::Pio } else { Bus::Mmio };
        self.buses.write(bus, addr, len, data, || self.coalesced_append(addr, len, data, pio))
    }

    /// Appends a write to the coalesced ring if it has room (upstream `coalesced_mmio_write`,
    /// once its zone matched).
    fn coalesced_append(&self, addr: u64, len: u32, data: u64, pio: bool) -> bool {
        let _ring = self.ring_lock.lock();
        let max = b::KVM_COALESCED_MMIO_MAX as u32;
        let ring = self.ring();
        // SAFETY: `ring` is the VM's ring page, live as long as `self`; userspace writes
        // `first` concurrently, so both indices are read once, volatile.
        let (first, last) = unsafe {
            (core::ptr::addr_of!((*ring).first).read_volatile(), core::ptr::addr_of!((*ring).last).read_volatile())
        };
        let Some(at) = coalesced::insert_slot(first, last, max) else { return false };
        let mut bytes = [0u8; 8];
        let n = (len as usize).min(8);
        bytes[..n].copy_from_slice(&data.to_le_bytes()[..n]);
        let entry = b::kvm_coalesced_mmio {
            phys_addr: addr,
            len,
            __bindgen_anon_1: b::kvm_coalesced_mmio__bindgen_ty_1 { pio: pio.into() },
            data: bytes,
        };
        // SAFETY: `at < KVM_COALESCED_MMIO_MAX`, the number of entries that fit in the page
        // after the header; the entry is written before `last` moves past it (release
        // ordering below), and writers are serialised by `ring_lock`.
        unsafe {
            let entries = core::ptr::addr_of_mut!((*ring).__bindgen_anon_1.coalesced_mmio).cast::<b::kvm_coalesced_mmio>();
            entries.add(at as usize).write_volatile(entry);
            core::sync::atomic::fence(Ordering::Release);
            core::ptr::addr_of_mut!((*ring).last).write_volatile((at + 1) % max);
        }
        true
    }

    /// The kernel address of the coalesced ring.
    fn ring(&self) -> *mut b::kvm_coalesced_mmio_ring {
        // SAFETY: `ring_page` is a live page allocated by us; its direct-map address is
        // permanent (x86-64 has no highmem).
        unsafe { b::rkvm_page_address(self.ring_page.as_ptr().cast()).cast() }
    }

    /// The page backing the coalesced ring, for the vCPU mmap.
    pub(crate) fn ring_page(&self) -> *mut b::page {
        self.ring_page.as_ptr().cast()
    }

    /// VM statistic `i` (`stats::VM` order).
    pub(crate) fn stat(&self, i: usize) -> u64 {
        match i {
            stats::vm::ONLINE_VCPUS => self.state.lock().vcpus.len() as u64,
            _ => self.stats.get(i),
        }
    }

    /// A vCPU's TSC is set: at its creation (`user` = `None`) or by userspace writing
    /// IA32_TSC. Returns the vCPU's TSC offset (upstream `kvm_synchronize_tsc`; no TSC scaling,
    /// so the rate is the host's).
    ///
    /// `gen` is the vCPU's TSC generation (0 for a new vCPU), which this updates; whether all
    /// vCPUs are then matched decides whether kvmclock may use the master clock (upstream
    /// `kvm_track_tsc_matching` → `KVM_REQ_MASTERCLOCK_UPDATE`).
    pub(crate) fn synchronize_tsc(&self, user: Option<u64>, gen: &mut u64) -> u64 {
        let (offset, matched) = {
            let mut t = self.tsc.lock();
            let host_tsc = crate::vcpu::rdtsc();
            let khz = u64::from(crate::ffi::tsc_khz());
            let off = t.synchronize_vcpu(gen, user, host_tsc, crate::irq::now_ns(), khz, crate::ffi::tsc_unstable());
            (off, t.vcpus_matched())
        };
        self.update_master_clock(matched);
        offset
    }

    /// `KVM_SET_DEVICE_ATTR(KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET)` (upstream
    /// `kvm_arch_tsc_set_attr`): the vCPU's offset is set as given, and counted as matched when
    /// it is the current generation's.
    pub(crate) fn set_tsc_offset(&self, offset: u64, gen: &mut u64) {
        let matched = {
            let mut t = self.tsc.lock();
            let khz = u64::from(crate::ffi::tsc_khz());
            t.set_offset(gen, offset, crate::vcpu::rdtsc(), crate::irq::now_ns(), khz);
            t.vcpus_matched()
        };
        self.update_master_clock(matched);
    }

    /// Whether every vCPU's TSC is in the current generation.
    pub(crate) fn tsc_matched(&self) -> bool {
        self.tsc.lock().vcpus_matched()
    }

    /// The in-kernel irqchip, if `KVM_CREATE_IRQCHIP` made one.
    fn irqchip(&self) -> Option<Arc<Irqchip>> {
        self.state.lock().irqchip.clone()
    }

    /// Whether the caller runs in the address space that created the VM.
    pub(crate) fn is_current_mm(&self) -> bool {
        self.mm.is_current()
    }

    /// One more flush of every CPU's guest translations (VM statistic `remote_tlb_flush`).
    /// Called with the MMU lock held, which makes it the counter's single writer.
    pub(crate) fn count_remote_tlb_flush(&self) {
        self.stats.inc(stats::vm::REMOTE_TLB_FLUSH);
    }

    /// Handles a guest access to frame `gfn` that found no mapping, or a write that found a
    /// read-only one (upstream `kvm_tdp_page_fault` → `direct_page_fault`): maps it from its
    /// slot (under the slots lock, so a concurrent delete or dirty-log ioctl waits), or reports
    /// that no slot backs it (the access is MMIO). A write to a read-only slot is MMIO too.
    ///
    /// A page of a logging slot is mapped writable only for a write, and logged then (upstream
    /// `make_spte` / `fast_pf_fix_direct_spte` → `mark_page_dirty_in_slot`); a read maps it
    /// read-only, so the bitmap names exactly the pages written. (Upstream may map a page
    /// writable, and log it, on a read already, when the host page is writable.)
    ///
    /// `Fault::Retry`: an invalidation of the page's host address ran while it was being looked
    /// up; nothing was mapped and the access should simply be retried (upstream
    /// `RET_PF_RETRY`).
    pub(crate) fn fault_in(&self, gfn: u64, write: bool) -> Result<Fault> {
        let mut guard = self.slots.lock();
        let s = &mut *guard;
        let Some(&slot) = s.slots.find(gfn) else {
            return Ok(Fault::Mmio);
        };
        if write && slot.readonly() {
            return Ok(Fault::Mmio);
        }
        let writable = !slot.readonly() && (write || !slot.logs_dirty());
        if !self.arch.fast_fault(gfn, writable) && !self.map_page(&slot, gfn, writable)? {
            return Ok(Fault::Retry);
        }
        if writable && slot.logs_dirty() {
            mark_page_dirty(&mut s.dirty, &slot, gfn);
        }
        Ok(Fault::Mapped)
    }

    /// Looks up the page the process maps at `gfn`'s address and maps it into the guest,
    /// unless an invalidation of that address ran meanwhile (returns false: retry). Upstream
    /// `kvm_faultin_pfn` (the sequence sampled before the lookup), `is_page_fault_stale`
    /// (`mmu_invalidate_retry_gfn` under `mmu_lock`) and `direct_map`, then
    /// `kvm_release_pfn_clean`: the guest mapping keeps no reference (the notifier removes it
    /// before the page can go). Called with the slots lock held.
    fn map_page(&self, slot: &Memslot, gfn: u64, writable: bool) -> Result<bool> {
        let hva = slot.hva(gfn);
        let seq = {
            let m = self.mmu.lock();
            // No point looking the page up while its address is being invalidated (upstream's
            // `mmu_invalidate_retry_gfn_unsafe` pre-check).
            if m.inval.retry(m.inval.seq(), hva) {
                return Ok(false);
            }
            m.inval.seq()
        };
        self.arch.prepare_map(gfn)?;
        // Looked up for writing whenever the slot is writable, whatever this access is: a page
        // looked up for reading could be the shared zero page, which a later write (made
        // writable by `fast_fault` for dirty logging) must not reach.
        let page = UserPage::get(hva, !slot.readonly()).ok_or(EFAULT)?;
        let m = self.mmu.lock();
        if m.inval.retry(seq, hva) {
            return Ok(false);
        }
        self.arch.map(gfn, page.phys(), writable)?;
        drop(m);
        Ok(true)
    }
}

/// A reference on a page of the current process, from `get_user_pages` (upstream: the page
/// behind the pfn `hva_to_pfn` returns), dropped with the value.
struct UserPage(*mut b::page);

impl UserPage {
    /// The page at `hva`, faulted in for writing if `write`; `None` if there is none.
    fn get(hva: u64, write: bool) -> Option<Self> {
        // SAFETY: looks up (and may fault in) a page of the current process; vCPU ioctls run in
        // the VM owner's address space. A non-null result carries one reference.
        let page = unsafe { b::rkvm_get_user_page(hva as _, write) };
        // (`then`, not `then_some`: a `UserPage` of a null pointer must never exist, even to
        // be dropped.)
        (!page.is_null()).then(|| UserPage(page))
    }

    fn phys(&self) -> u64 {
        // SAFETY: we hold a reference, so the page is live.
        unsafe { b::rkvm_page_to_phys(self.0) }
    }
}

impl Drop for UserPage {
    fn drop(&mut self) {
        // SAFETY: drops the one reference `get` took.
        unsafe { b::rkvm_put_page(self.0) };
    }
}

impl Vm {
    /// Reads guest-physical memory into `buf` through the slots' userspace mappings (the caller
    /// runs in the VM owner's address space: vCPU ioctls do). `EFAULT` outside every slot.
    pub(crate) fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> Result {
        self.for_each_chunk(gpa, buf.len(), false, |hva, r| {
            UserSlice::new(hva, r.len()).reader().read_slice(&mut buf[r])
        })
    }

    /// Whether guest-physical page `gpa` is writable memory (in a slot that is not read-only).
    pub(crate) fn is_writable_ram(&self, gpa: u64) -> bool {
        self.slots.lock().slots.find(gpa >> memslot::PAGE_SHIFT).is_some_and(|s| !s.readonly())
    }

    /// Writes `buf` to guest-physical memory, as [`Vm::read_guest`]. `EFAULT` outside every
    /// slot or in a read-only one (what lies before such a page is written). Pages written in a
    /// logging slot are logged (upstream `kvm_write_guest` → `mark_page_dirty_in_slot`): rkvm
    /// writes guest memory on the guest's behalf here (INS into RAM).
    pub(crate) fn write_guest(&self, gpa: u64, buf: &[u8]) -> Result {
        self.for_each_chunk(gpa, buf.len(), true, |hva, r| {
            UserSlice::new(hva, r.len()).writer().write_slice(&buf[r])
        })
    }

    /// Calls `f(hva, range)` for each within-page piece of `len` bytes at `gpa`, with the
    /// piece's userspace address and its range in the caller's buffer; the slots lock is held.
    /// For a `write`, each page written is logged if its slot logs.
    fn for_each_chunk(
        &self,
        gpa: u64,
        len: usize,
        write: bool,
        mut f: impl FnMut(usize, core::ops::Range<usize>) -> Result,
    ) -> Result {
        let mut guard = self.slots.lock();
        let s = &mut *guard;
        let mut done = 0;
        while done < len {
            let a = gpa + done as u64;
            let gfn = a >> memslot::PAGE_SHIFT;
            let slot = s.slots.find(gfn).ok_or(EFAULT)?;
            if write && slot.readonly() {
                return Err(EFAULT);
            }
            let in_page = (memslot::PAGE_SIZE - (a & (memslot::PAGE_SIZE - 1))) as usize;
            let n = in_page.min(len - done);
            let hva = slot.hva(gfn) + (a & (memslot::PAGE_SIZE - 1));
            f(hva as usize, done..done + n)?;
            if write && slot.logs_dirty() {
                mark_page_dirty(&mut s.dirty, slot, gfn);
            }
            done += n;
        }
        Ok(())
    }
}

/// Upstream `mark_page_dirty_in_slot`: logs a write to frame `gfn` of logging slot `slot`.
fn mark_page_dirty(bitmaps: &mut [Bitmap], slot: &Memslot, gfn: u64) {
    if let Some(bm) = dirty::find(bitmaps, slot.id) {
        let (live, _) = bm.halves();
        dirty::mark(live, gfn - slot.base_gfn);
    }
}

/// The outcome of [`Vm::fault_in`].
pub(crate) enum Fault {
    /// The frame is now mapped; re-enter the guest.
    Mapped,
    /// An invalidation of the frame's host page raced with the fault: nothing was mapped;
    /// re-enter the guest (which faults again) or try again.
    Retry,
    /// No slot (or a read-only slot, for a write): emulate as MMIO.
    Mmio,
}

fn slot_errno(e: SlotError) -> Error {
    match e {
        SlotError::Invalid => EINVAL,
        SlotError::Exists => EEXIST,
        SlotError::NoMemory => ENOMEM,
    }
}

fn log_errno(e: LogError) -> Error {
    match e {
        LogError::Invalid => EINVAL,
        LogError::NoEntry => ENOENT,
    }
}

/// Kernel vectors as slot storage. Inserts and removals shift elements in place.
impl<T> SlotVec<T> for KVec<T> {
    fn as_slice(&self) -> &[T] {
        KVec::as_slice(self)
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        KVec::as_mut_slice(self)
    }

    fn reserve_one(&mut self) -> core::result::Result<(), SlotError> {
        self.reserve(1, GFP_KERNEL_ACCOUNT).map_err(|_| SlotError::NoMemory)
    }

    fn insert(&mut self, index: usize, value: T) {
        // Capacity was reserved by `reserve_one`, so `push` does not allocate and cannot fail.
        if self.push(value, GFP_NOWAIT).is_ok() {
            KVec::as_mut_slice(self)[index..].rotate_right(1);
        }
    }

    fn remove(&mut self, index: usize) -> T {
        let len = self.len();
        KVec::as_mut_slice(self)[index..].rotate_left(1);
        // SAFETY: `len - 1 < len` is initialised; after reading it out we shrink the length so
        // it is not dropped twice.
        unsafe {
            let v = core::ptr::read(self.as_ptr().add(len - 1));
            self.set_len(len - 1);
            v
        }
    }
}

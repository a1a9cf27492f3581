//! The vCPU: its fd (upstream's `kvm_vcpu_ioctl`), its `struct kvm_run` mapping, and the
//! architectural state ioctls.
//!
//! A vCPU fd owns a [`VcpuFile`]: one reference to the VM (so the VM lives while any vCPU fd
//! does) and one to the [`Vcpu`], which the VM also owns. Every ioctl takes the vCPU's mutex
//! (upstream's `vcpu->mutex`); `KVM_RUN` holds it for the whole run, so state ioctls from other
//! threads wait instead of racing the guest.
//!
//! The fd can be mmap'ed: page 0 is `struct kvm_run`, page 1 (`KVM_PIO_PAGE_OFFSET`) the PIO
//! data page. The pages are allocated with the vCPU and faulted in on access (upstream's
//! `kvm_vcpu_fault`); unlike upstream, a mapping that reaches past them is refused at mmap time
//! with `EINVAL` instead of failing later with SIGBUS.

use crate::backend::{BackendVcpu, MsrCtx, RunContext};
use crate::ffi::bindings as b;
use crate::ffi::fileops::{self, FileKind, Fops};
use crate::ffi::uapi::{read_user, read_user_array, write_user, write_user_array};
use crate::vm::Vm;
use crate::x86::{cpuid, cr, mce, msr, msr_filter, pvclock, segment, xsave};
use core::sync::atomic::Ordering;
use kernel::uaccess::UserSlice;
use kernel::page::Page;
use kernel::fmt;
use kernel::prelude::*;
use kernel::str::CString;
use kernel::sync::{Arc, Mutex};

/// Pages of the vCPU mmap: `struct kvm_run` and the PIO data page.
pub(crate) const MMAP_PAGES: usize = 3;
/// `KVM_GET_VCPU_MMAP_SIZE`.
pub(crate) const MMAP_SIZE: usize = MMAP_PAGES * b::PAGE_SIZE as usize;

// The pure x86 files restate architectural constants; they must agree with the kernel headers.
const _: () = {
    assert!(cr::CR0_PE == b::X86_CR0_PE as u64);
    assert!(cr::CR0_ET == b::X86_CR0_ET as u64);
    assert!(cr::CR0_NW == b::X86_CR0_NW as u64);
    assert!(cr::CR0_CD == b::X86_CR0_CD as u64);
    assert!(cr::CR0_PG == b::X86_CR0_PG as u64);
    assert!(cr::CR4_PAE == b::X86_CR4_PAE as u64);
    assert!(cr::CR4_OSXSAVE == b::X86_CR4_OSXSAVE as u64);
    assert!(
        cr::CR4_KNOWN
            == 0x7ff
                | b::X86_CR4_UMIP as u64
                | b::X86_CR4_LA57 as u64
                | b::X86_CR4_VMXE as u64
                | b::X86_CR4_FSGSBASE as u64
                | b::X86_CR4_PCIDE as u64
                | b::X86_CR4_OSXSAVE as u64
                | b::X86_CR4_SMEP as u64
                | b::X86_CR4_SMAP as u64
                | b::X86_CR4_PKE as u64
                | b::X86_CR4_LAM_SUP as u64
    );
    assert!(cr::EFER_SCE == b::EFER_SCE as u64);
    assert!(cr::EFER_LME == b::EFER_LME as u64);
    assert!(cr::EFER_LMA == b::EFER_LMA as u64);
    assert!(cr::EFER_NX == b::EFER_NX as u64);
    assert!(crate::memslot::MEM_READONLY == b::KVM_MEM_READONLY);
    assert!(crate::memslot::MEM_LOG_DIRTY_PAGES == b::KVM_MEM_LOG_DIRTY_PAGES);
    assert!(crate::dirty::MANUAL_PROTECT_ENABLE == b::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE as u64);
    assert!(crate::dirty::INITIALLY_SET == b::KVM_DIRTY_LOG_INITIALLY_SET as u64);
    assert!(crate::memslot::PAGE_SIZE == b::PAGE_SIZE as u64);
    assert!(mce::MAX_BANKS == 32);
    assert!(mce::MCG_CAP == b::MSR_IA32_MCG_CAP);
    assert!(mce::MCG_STATUS == b::MSR_IA32_MCG_STATUS);
    assert!(mce::MCG_CTL == b::MSR_IA32_MCG_CTL);
    assert!(mce::MCG_EXT_CTL == b::MSR_IA32_MCG_EXT_CTL);
    assert!(mce::MC0_CTL == b::MSR_IA32_MC0_CTL);
    assert!(mce::MC0_CTL2 == b::MSR_IA32_MC0_CTL2);
    assert!(mce::P5_MC_ADDR == b::MSR_IA32_P5_MC_ADDR && mce::P5_MC_TYPE == b::MSR_IA32_P5_MC_TYPE);
    assert!(mce::MCG_CTL_P == b::MCG_CTL_P as u64);
    assert!(mce::MCG_CMCI_P == b::MCG_CMCI_P as u64);
    assert!(mce::MCG_SER_P == b::MCG_SER_P as u64);
    assert!(mce::MCG_LMCE_P == b::MCG_LMCE_P as u64);
    assert!(mce::MCG_EXT_CNT_MASK == b::MCG_EXT_CNT_MASK as u64);
    assert!(mce::MCG_STATUS_MCIP == b::MCG_STATUS_MCIP as u64);
    assert!(mce::MCG_EXT_CTL_LMCE_EN == b::MCG_EXT_CTL_LMCE_EN as u64);
    // MCI_STATUS_VAL (bit 63) is beyond what bindgen evaluates; the bits below it are checked.
    assert!(mce::MCI_STATUS_VAL == mce::MCI_STATUS_OVER << 1);
    assert!(mce::MCI_STATUS_OVER == b::MCI_STATUS_OVER as u64);
    assert!(mce::MCI_STATUS_UC == b::MCI_STATUS_UC as u64);
    assert!(mce::MCI_STATUS_EN == b::MCI_STATUS_EN as u64);
    assert!(mce::MCI_STATUS_MISCV == b::MCI_STATUS_MISCV as u64);
    assert!(mce::MCI_STATUS_ADDRV == b::MCI_STATUS_ADDRV as u64);
    assert!(mce::MCI_STATUS_PCC == b::MCI_STATUS_PCC as u64);
    assert!(mce::MCI_STATUS_S == b::MCI_STATUS_S as u64);
    assert!(mce::MCI_STATUS_AR == b::MCI_STATUS_AR as u64);
    assert!(mce::MCI_CTL2_CMCI_EN == b::MCI_CTL2_CMCI_EN as u64);
    assert!(mce::MCI_CTL2_THRESHOLD_MASK == b::MCI_CTL2_CMCI_THRESHOLD_MASK as u64);
    assert!(mce::FEATURE_CONTROL_LMCE == b::FEAT_CTL_LMCE_ENABLED as u64);
    assert!(mce::CR4_MCE == b::X86_CR4_MCE as u64);
    assert!(msr::POWER_CTL == b::MSR_IA32_POWER_CTL);
    assert!(msr::EXIT_REASON_INVAL == b::KVM_MSR_EXIT_REASON_INVAL);
    assert!(msr::EXIT_REASON_UNKNOWN == b::KVM_MSR_EXIT_REASON_UNKNOWN);
    assert!(msr::EXIT_REASON_FILTER == b::KVM_MSR_EXIT_REASON_FILTER);
    assert!(msr::EXIT_REASON_VALID_MASK == b::KVM_MSR_EXIT_REASON_VALID_MASK);
    assert!(msr_filter::MAX_RANGES == b::KVM_MSR_FILTER_MAX_RANGES as usize);
    assert!(msr_filter::MAX_BITMAP_SIZE == b::KVM_MSR_FILTER_MAX_BITMAP_SIZE as usize);
    assert!(msr_filter::READ == b::KVM_MSR_FILTER_READ && msr_filter::WRITE == b::KVM_MSR_FILTER_WRITE);
    assert!(msr_filter::RANGE_VALID_MASK == b::KVM_MSR_FILTER_RANGE_VALID_MASK);
    assert!(msr_filter::DEFAULT_DENY == b::KVM_MSR_FILTER_DEFAULT_DENY);
    assert!(msr_filter::VALID_MASK == b::KVM_MSR_FILTER_VALID_MASK);
    assert!(b::KVM_PIO_PAGE_OFFSET == 1);
    {
        use crate::x86::debug as d;
        assert!(d::ENABLE == b::KVM_GUESTDBG_ENABLE && d::SINGLESTEP == b::KVM_GUESTDBG_SINGLESTEP);
        assert!(d::USE_SW_BP == b::KVM_GUESTDBG_USE_SW_BP && d::USE_HW_BP == b::KVM_GUESTDBG_USE_HW_BP);
        assert!(d::INJECT_DB == b::KVM_GUESTDBG_INJECT_DB && d::INJECT_BP == b::KVM_GUESTDBG_INJECT_BP);
        assert!(d::BLOCKIRQ == b::KVM_GUESTDBG_BLOCKIRQ);
    }
    assert!(b::KVM_COALESCED_MMIO_PAGE_OFFSET == 2);
    // The ring's entries fill the rest of its page.
    assert!(
        core::mem::size_of::<b::kvm_coalesced_mmio_ring>()
            + b::KVM_COALESCED_MMIO_MAX as usize * core::mem::size_of::<b::kvm_coalesced_mmio>()
            <= b::PAGE_SIZE as usize
    );
};

/// A virtual CPU (upstream: `struct kvm_vcpu`).
#[pin_data]
pub(crate) struct Vcpu {
    /// The id given to `KVM_CREATE_VCPU`.
    pub(crate) id: u32,
    /// `struct kvm_run`, shared with userspace through mmap.
    run_page: Page,
    /// The PIO data page (`kvm_run->io.data_offset` points into it).
    pio_page: Page,
    /// The backend's state, under the vCPU mutex.
    #[pin]
    arch: Mutex<KBox<dyn BackendVcpu>>,
    /// The guest's CPUID table (`KVM_SET_CPUID2`; upstream `vcpu->arch.cpuid_entries`). Only
    /// locked with `arch` held.
    #[pin]
    cpuid: Mutex<KVec<cpuid::Entry>>,
    /// The signal mask in force during `KVM_RUN` (`KVM_SET_SIGNAL_MASK`; upstream
    /// `vcpu->sigset` / `sigset_active`). Only locked with `arch` held.
    #[pin]
    sigmask: Mutex<Option<u64>>,
    /// `KVM_GET_STATS_FD`'s counters, bumped by the run loop.
    pub(crate) stats: crate::statsfd::VcpuStats,
}

impl Vcpu {
    /// Allocates vCPU `id` in its RESET state.
    pub(crate) fn new(
        backend: &dyn crate::backend::Backend,
        vm: &dyn crate::backend::BackendVm,
        id: u32,
        apic: Option<crate::irq::VcpuApic>,
    ) -> Result<Arc<Vcpu>> {
        let zeroed = GFP_KERNEL_ACCOUNT | __GFP_ZERO;
        let arch = backend.create_vcpu(vm, id, apic)?;
        Arc::pin_init(
            try_pin_init!(Vcpu {
                id,
                run_page: Page::alloc_page(zeroed)?,
                pio_page: Page::alloc_page(zeroed)?,
                arch <- kernel::new_mutex!(arch),
                cpuid <- kernel::new_mutex!(KVec::new()),
                sigmask <- kernel::new_mutex!(None),
                stats: crate::statsfd::VcpuStats::new(),
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// Sets the TSC offset and generation of a vCPU no one else can reach yet
    /// (`Vm::create_vcpu`).
    pub(crate) fn write_tsc_offset(&self, offset: u64, gen: u64) -> Result {
        self.arch.lock().write_tsc_offset(offset, gen)
    }

    /// The `struct page` backing page `pgoff` of the vCPU mmap.
    fn mmap_page(&self, pgoff: u64) -> Option<*mut b::page> {
        let page = match pgoff {
            0 => &self.run_page,
            p if p == u64::from(b::KVM_PIO_PAGE_OFFSET) => &self.pio_page,
            _ => return None,
        };
        Some(page.as_ptr().cast())
    }

    /// The kernel address of `struct kvm_run`.
    fn run_struct(&self) -> *mut b::kvm_run {
        // SAFETY: `run_page` is a live page allocated by us; `page_address` of a lowmem page
        // (every page on x86-64) is its permanent direct-map address.
        unsafe { b::rkvm_page_address(self.run_page.as_ptr().cast()).cast() }
    }

    /// The kernel address of the PIO data page.
    fn pio_data(&self) -> *mut u8 {
        // SAFETY: as for `run_struct`.
        unsafe { b::rkvm_page_address(self.pio_page.as_ptr().cast()).cast() }
    }
}

/// What a vCPU fd's `private_data` owns.
pub(crate) struct VcpuFile {
    vm: Arc<Vm>,
    vcpu: Arc<Vcpu>,
}

struct VcpuKind;

static VCPU_FOPS: Fops = Fops::new::<VcpuKind>(&crate::THIS_MODULE);

/// Creates the fd of a new vCPU (upstream: `create_vcpu_fd`), named `kvm-vcpu:<id>`.
pub(crate) fn create_fd(vm: Arc<Vm>, vcpu: Arc<Vcpu>) -> Result<i32> {
    let name = CString::try_from_fmt(fmt!("kvm-vcpu:{}", vcpu.id))?;
    let file = KBox::new(VcpuFile { vm, vcpu }, GFP_KERNEL_ACCOUNT)?;
    fileops::create_fd::<VcpuKind>(&VCPU_FOPS, &name, file)
}

impl FileKind for VcpuKind {
    type Data = KBox<VcpuFile>;
    const MMAP: bool = true;

    /// `kvm_vcpu_ioctl`.
    fn ioctl(f: &VcpuFile, cmd: u32, arg: usize) -> Result<isize> {
        if !f.vm.is_current_mm() {
            return Err(EIO);
        }
        if kernel::ioctl::_IOC_TYPE(cmd) != b::KVMIO {
            return Err(EINVAL);
        }
        let mut arch = f.vcpu.arch.lock();
        if cmd == b::KVM_RUN {
            if arg != 0 {
                return Err(EINVAL);
            }
            run(f, &mut **arch)?;
            return Ok(0);
        }
        state_ioctl(f, &mut **arch, cmd, arg)
    }

    fn mmap(f: &VcpuFile, pgoff: u64, pages: u64) -> Result {
        let _ = f;
        match pgoff.checked_add(pages) {
            Some(end) if end <= MMAP_PAGES as u64 => Ok(()),
            _ => Err(EINVAL),
        }
    }

    /// `kvm_vcpu_fault`: the page, with a reference for the mapping.
    fn fault(f: &VcpuFile, pgoff: u64) -> Option<*mut b::page> {
        let page = if pgoff == u64::from(b::KVM_COALESCED_MMIO_PAGE_OFFSET) {
            f.vm.ring_page()
        } else {
            f.vcpu.mmap_page(pgoff)?
        };
        // SAFETY: `page` is one of the vCPU's live pages; the mapping gets its own reference.
        unsafe { b::rkvm_get_page(page) };
        Some(page)
    }
}

/// The vCPU ioctls other than KVM_RUN, on the locked vCPU state (upstream: the rest of
/// `kvm_vcpu_ioctl` and x86's `kvm_arch_vcpu_ioctl`). Not inlined into the ioctl entry: their
/// argument structs (LAPIC page, FPU, CPUID entries) would otherwise sit in the frame under
/// every KVM_RUN (3.3 KiB of it, with the VMX run loop and the host interrupt handlers above).
#[inline(never)]
fn state_ioctl(f: &VcpuFile, arch: &mut dyn BackendVcpu, cmd: u32, arg: usize) -> Result<isize> {
    match cmd {
        b::KVM_GET_REGS => {
            let mut regs = b::kvm_regs::default();
            arch.get_regs(&mut regs)?;
            write_user(arg, &regs)?;
            Ok(0)
        }
        b::KVM_SET_REGS => set_regs(arch, read_user(arg)?).map(|()| 0),
        b::KVM_GET_SREGS => {
            let mut sregs = b::kvm_sregs::default();
            arch.get_sregs(&mut sregs)?;
            write_user(arg, &sregs)?;
            Ok(0)
        }
        b::KVM_SET_SREGS => set_sregs(f, arch, &read_user(arg)?).map(|()| 0),
        // Upstream `kvm_arch_vcpu_ioctl_translate`: a supervisor read through the guest's
        // page tables; `writeable` is always 1 and `usermode` 0, as upstream reports.
        b::KVM_TRANSLATE => {
            let mut t: b::kvm_translation = read_user(arg)?;
            let gpa = arch.translate(&f.vm, t.linear_address)?;
            t.physical_address = gpa.unwrap_or(u64::MAX);
            t.valid = gpa.is_some().into();
            t.writeable = 1;
            t.usermode = 0;
            write_user(arg, &t).map(|()| 0)
        }
        b::KVM_SET_CPUID2 => {
            let mut entries = read_cpuid2(arg, cpuid::MAX_ENTRIES)?.0;
            // Upstream `kvm_update_cpuid_runtime`'s PV part, which follows VM state.
            pvclock::update_runtime(&mut entries, f.vm.hlt_in_guest.load(Ordering::Relaxed));
            let mut table = f.vcpu.cpuid.lock();
            // After the first entry the table may only be set again unchanged, the bits that
            // follow guest state aside (upstream `kvm_set_cpuid`: `__kvm_update_cpuid_runtime`
            // of the new table, then `kvm_cpuid_check_equal`).
            if arch.has_run() {
                let (cr4, xcr0) = arch.cpuid_runtime_state()?;
                let mut old = runtime_copy(&table)?;
                cpuid::update_runtime(&mut old, cr4, xcr0);
                cpuid::update_runtime(&mut entries, cr4, xcr0);
                return if entries[..] == old[..] { Ok(0) } else { Err(EINVAL) };
            }
            *table = entries;
            arch.after_set_cpuid(&table);
            Ok(0)
        }
        // The table with the bits that follow guest state as they are now (upstream keeps
        // its copy updated: `kvm_update_cpuid_runtime`).
        b::KVM_GET_CPUID2 => {
            let nent: u32 = read_user(arg)?;
            let table = f.vcpu.cpuid.lock();
            if (nent as usize) < table.len() {
                return Err(E2BIG);
            }
            let (cr4, xcr0) = arch.cpuid_runtime_state()?;
            let mut out = runtime_copy(&table)?;
            cpuid::update_runtime(&mut out, cr4, xcr0);
            write_cpuid2(arg, &out)?;
            Ok(0)
        }
        b::KVM_GET_FPU => {
            let mut fpu = b::kvm_fpu::default();
            arch.get_fpu(&mut fpu)?;
            write_user(arg, &fpu).map(|()| 0)
        }
        b::KVM_SET_FPU => arch.set_fpu(&read_user(arg)?).map(|()| 0),
        b::KVM_GET_DEBUGREGS => {
            let mut d = b::kvm_debugregs::default();
            arch.get_debugregs(&mut d)?;
            write_user(arg, &d).map(|()| 0)
        }
        b::KVM_SET_DEBUGREGS => {
            let d: b::kvm_debugregs = read_user(arg)?;
            // Upstream `kvm_vcpu_ioctl_x86_set_debugregs`: no flags, 32-bit DR6/DR7.
            if d.flags != 0 || d.dr6 >> 32 != 0 || d.dr7 >> 32 != 0 {
                return Err(EINVAL);
            }
            arch.set_debugregs(&d).map(|()| 0)
        }
        // Upstream `kvm_arch_vcpu_ioctl_set_guest_debug`; rkvm refuses unknown flags and a
        // debugger DR7 with bits 63:32 set (EINVAL) instead of ignoring them or failing the
        // next VM entry (x86/debug.rs).
        b::KVM_SET_GUEST_DEBUG => {
            let dbg: b::kvm_guest_debug = read_user(arg)?;
            if dbg.control & !crate::x86::debug::VALID_MASK != 0 {
                return Err(EINVAL);
            }
            arch.set_guest_debug(&dbg).map(|()| 0)
        }
        b::KVM_GET_XCRS => {
            let mut x = b::kvm_xcrs::default();
            arch.get_xcrs(&mut x)?;
            write_user(arg, &x).map(|()| 0)
        }
        b::KVM_SET_XCRS => {
            let x: b::kvm_xcrs = read_user(arg)?;
            // Upstream `kvm_vcpu_ioctl_x86_set_xcrs`.
            if x.flags != 0 || x.nr_xcrs as usize > x.xcrs.len() {
                return Err(EINVAL);
            }
            arch.set_xcrs(&x).map(|()| 0)
        }
        // RUNNABLE, or HALTED with an in-kernel LAPIC (INIT/SIPI states are not modelled).
        // Without an in-kernel LAPIC a vCPU is always runnable (HLT exits to userspace).
        b::KVM_GET_MP_STATE => {
            let mp_state = arch.apic().map_or(b::KVM_MP_STATE_RUNNABLE, |a| a.mp);
            write_user(arg, &b::kvm_mp_state { mp_state }).map(|()| 0)
        }
        // Upstream `kvm_arch_vcpu_ioctl_set_mpstate`: only RUNNABLE without one.
        b::KVM_SET_MP_STATE => {
            let s: b::kvm_mp_state = read_user(arg)?;
            let sipi = arch.sipi_vector();
            match arch.apic() {
                Some(a) => a.set_mp_state(s.mp_state, sipi).map(|()| 0),
                None if s.mp_state == b::KVM_MP_STATE_RUNNABLE => Ok(0),
                None => Err(EINVAL),
            }
        }
        // EINVAL without an in-kernel LAPIC, checked first (upstream).
        b::KVM_GET_LAPIC => {
            let a = arch.apic().ok_or(EINVAL)?;
            let mut st = b::kvm_lapic_state::default();
            a.get_state(lapic_regs(&mut st));
            write_user(arg, &st).map(|()| 0)
        }
        b::KVM_SET_LAPIC => {
            let a = arch.apic().ok_or(EINVAL)?;
            let mut st: b::kvm_lapic_state = read_user(arg)?;
            a.set_state(lapic_regs(&mut st)).map(|()| 0)
        }
        // Upstream `kvm_vcpu_ioctl_x86_get_xsave` / `_get_xsave2` / `_set_xsave`: the area is
        // `KVM_CAP_XSAVE2` bytes, which is exactly `struct kvm_xsave` here.
        b::KVM_GET_XSAVE | b::KVM_GET_XSAVE2 => {
            let mut area = KVec::from_elem(0u8, xsave::SIZE, GFP_KERNEL_ACCOUNT)?;
            arch.get_xsave(&mut area)?;
            UserSlice::new(arg, xsave::SIZE).writer().write_slice(&area).map(|()| 0)
        }
        b::KVM_SET_XSAVE => {
            let mut area = KVec::from_elem(0u8, xsave::SIZE, GFP_KERNEL_ACCOUNT)?;
            UserSlice::new(arg, xsave::SIZE).reader().read_slice(&mut area)?;
            arch.set_xsave(&area).map(|()| 0)
        }
        b::KVM_SET_SIGNAL_MASK => {
            *f.vcpu.sigmask.lock() = read_sigmask(arg)?;
            Ok(0)
        }
        // No TSC scaling: a vCPU's TSC runs at the host's rate (upstream
        // `vcpu->arch.virtual_tsc_khz`).
        b::KVM_GET_TSC_KHZ => Ok(crate::ffi::tsc_khz() as isize),
        // Userspace irqchip model (upstream `kvm_vcpu_ioctl_interrupt`).
        b::KVM_INTERRUPT => {
            let irq: b::kvm_interrupt = read_user(arg)?;
            if irq.irq >= 256 {
                return Err(EINVAL);
            }
            // Not with an in-kernel PIC.
            if arch.apic().is_some() {
                return Err(ENXIO);
            }
            arch.queue_interrupt(irq.irq as u8).map(|()| 0)
        }
        b::KVM_NMI => arch.queue_nmi().map(|()| 0),
        b::KVM_GET_VCPU_EVENTS => {
            let mut e = b::kvm_vcpu_events::default();
            arch.get_vcpu_events(&mut e)?;
            write_user(arg, &e).map(|()| 0)
        }
        b::KVM_SET_VCPU_EVENTS => set_vcpu_events(arch, &read_user(arg)?).map(|()| 0),
        // Upstream `kvm_vcpu_ioctl`: the range left is copied back whatever the result.
        b::KVM_PRE_FAULT_MEMORY => {
            let mut range: b::kvm_pre_fault_memory = read_user(arg)?;
            let r = pre_fault_memory(&f.vm, &mut range);
            write_user(arg, &range)?;
            r.map(|()| 0)
        }
        b::KVM_GET_STATS_FD => {
            crate::statsfd::create_fd(crate::statsfd::StatsFile::Vcpu(f.vm.clone(), f.vcpu.clone())).map(|fd| fd as isize)
        }
        b::KVM_GET_MSRS | b::KVM_SET_MSRS => {
            let table = f.vcpu.cpuid.lock();
            let ctx = MsrCtx { host: true, vm: &f.vm, cpuid: &table };
            let set = cmd == b::KVM_SET_MSRS;
            msr_io(arg, set, |index, data| {
                if set {
                    arch.set_msr(&ctx, index, *data)
                } else {
                    arch.get_msr(&ctx, index).map(|v| {
                        *data = v.unwrap_or(0);
                        v.is_some()
                    })
                }
            })
        }
        b::KVM_X86_SETUP_MCE => setup_mce(arch, read_user(arg)?).map(|()| 0),
        b::KVM_X86_SET_MCE => set_mce(arch, &read_user(arg)?).map(|()| 0),
        // Upstream `kvm_vcpu_ioctl_enable_cap`: no flags; only the PV CPUID enforcement.
        b::KVM_ENABLE_CAP => {
            let cap: b::kvm_enable_cap = read_user(arg)?;
            if cap.flags != 0 || cap.cap != b::KVM_CAP_ENFORCE_PV_FEATURE_CPUID {
                return Err(EINVAL);
            }
            let table = f.vcpu.cpuid.lock();
            arch.set_pv_enforce(cap.args[0] != 0, &table).map(|()| 0)
        }
        b::KVM_HAS_DEVICE_ATTR | b::KVM_GET_DEVICE_ATTR | b::KVM_SET_DEVICE_ATTR => {
            device_attr(f, arch, cmd, &read_user(arg)?).map(|()| 0)
        }
        // Upstream x86's `kvm_arch_vcpu_ioctl` default.
        _ => Err(EINVAL),
    }
}

/// `KVM_HAS/GET/SET_DEVICE_ATTR` on a vCPU (upstream `kvm_vcpu_ioctl_device_attr` and
/// `kvm_arch_tsc_{has,get,set}_attr`): the only group is `KVM_VCPU_TSC_CTRL` with its one
/// attribute `KVM_VCPU_TSC_OFFSET`, a `u64` at `addr`; anything else is `ENXIO`.
fn device_attr(f: &VcpuFile, arch: &mut dyn BackendVcpu, cmd: u32, attr: &b::kvm_device_attr) -> Result {
    if attr.group != b::KVM_VCPU_TSC_CTRL || attr.attr != u64::from(b::KVM_VCPU_TSC_OFFSET) {
        return Err(ENXIO);
    }
    let addr = attr.addr as usize;
    match cmd {
        b::KVM_HAS_DEVICE_ATTR => arch.get_tsc_offset().map(|_| ()),
        b::KVM_GET_DEVICE_ATTR => write_user(addr, &arch.get_tsc_offset()?),
        _ => {
            let offset: u64 = read_user(addr)?;
            arch.set_tsc_offset(&f.vm, offset)
        }
    }
}

/// `KVM_PRE_FAULT_MEMORY` (upstream `kvm_vcpu_pre_fault_memory` → `kvm_tdp_map_page`): maps
/// the range page by page, moving `gpa`/`size` past what is done. A page outside every slot
/// stops it with `ENOENT`, a signal with `EINTR` (a backend that maps nothing: `ENOEXEC`); once
/// one page is mapped the call succeeds and the range left tells how far it got.
fn pre_fault_memory(vm: &Vm, range: &mut b::kvm_pre_fault_memory) -> Result {
    let page = b::PAGE_SIZE as u64;
    if range.flags != 0
        || range.gpa % page != 0
        || range.size % page != 0
        || range.gpa.checked_add(range.size).map_or(true, |end| end <= range.gpa)
    {
        return Err(EINVAL);
    }
    let full = range.size;
    let mut r = Ok(());
    while range.size != 0 {
        // SAFETY: querying the current task's state.
        if unsafe { b::rkvm_signal_pending() } {
            r = Err(EINTR);
            break;
        }
        match vm.fault_in(range.gpa / page, false) {
            Ok(crate::vm::Fault::Mapped) => {}
            // An invalidation raced with it: the same page again (upstream
            // `kvm_tdp_map_page` loops on RET_PF_RETRY), after the signal check.
            Ok(crate::vm::Fault::Retry) => {
                // SAFETY: may sleep; only the vCPU mutex (a sleeping lock) is held.
                unsafe { b::rkvm_cond_resched() };
                continue;
            }
            Ok(crate::vm::Fault::Mmio) => {
                r = Err(ENOENT);
                break;
            }
            Err(e) => {
                r = Err(e);
                break;
            }
        }
        range.gpa += page;
        range.size -= page;
        // SAFETY: may sleep; only the vCPU mutex (a sleeping lock) is held.
        unsafe { b::rkvm_cond_resched() };
    }
    if range.size != full {
        Ok(())
    } else {
        r
    }
}

/// The register image of a `struct kvm_lapic_state` as bytes.
fn lapic_regs(st: &mut b::kvm_lapic_state) -> &mut [u8; crate::irq::lapic::REG_SIZE] {
    const _: () = assert!(crate::irq::lapic::REG_SIZE == b::KVM_APIC_REG_SIZE as usize);
    // SAFETY: `regs` is `[c_char; KVM_APIC_REG_SIZE]`; `c_char` and `u8` have the same size and
    // alignment and every bit pattern is valid for both; the borrow is tied to `st`.
    unsafe { &mut *st.regs.as_mut_ptr().cast::<[u8; crate::irq::lapic::REG_SIZE]>() }
}

/// `KVM_SET_SIGNAL_MASK`'s argument: `None` (a NULL pointer) turns the mask off; otherwise
/// `len` must be the kernel's `sizeof(sigset_t)`, 8 on x86-64 (upstream `kvm_vcpu_ioctl`).
/// SIGKILL and SIGSTOP can never be blocked.
fn read_sigmask(arg: usize) -> Result<Option<u64>> {
    if arg == 0 {
        return Ok(None);
    }
    let m: b::kvm_signal_mask = read_user(arg)?;
    if m.len != 8 {
        return Err(EINVAL);
    }
    let set: u64 = read_user(arg + core::mem::size_of::<b::kvm_signal_mask>())?;
    let unblockable = (1u64 << (b::SIGKILL - 1)) | (1u64 << (b::SIGSTOP - 1));
    Ok(Some(set & !unblockable))
}

/// The checks upstream's `kvm_vcpu_ioctl_x86_set_vcpu_events` makes before touching state.
/// `KVM_SET_REGS` (RFLAGS bit 1 is always set).
fn set_regs(arch: &mut dyn BackendVcpu, mut regs: b::kvm_regs) -> Result {
    regs.rflags |= segment::reset::RFLAGS;
    arch.set_regs(&regs)
}

/// `KVM_SET_SREGS`, validated against the backend's limits (upstream `kvm_is_valid_sregs`, and
/// `kvm_apic_set_base` as userspace's: any APIC mode change is allowed).
fn set_sregs(f: &VcpuFile, arch: &mut dyn BackendVcpu, sregs: &b::kvm_sregs) -> Result {
    let limits = f.vm.backend.limits();
    let x2apic = cpuid::guest_has_x2apic(&f.vcpu.cpuid.lock(), arch.apic().is_some());
    if !limits.sregs_valid(sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer, sregs.cs.l != 0)
        || !limits.apic_base_valid(sregs.apic_base, x2apic)
    {
        return Err(EINVAL);
    }
    arch.set_sregs(sregs)
}

/// `KVM_X86_SETUP_MCE` (upstream `kvm_vcpu_ioctl_x86_setup_mce`): the bank count and
/// capabilities (`EINVAL` when refused, nothing changed), then the LAPIC's LVT gets or loses its
/// CMCI entry with `MCG_CMCI_P` (`kvm_apic_after_set_mcg_cap`) and, with the VMX backend, the
/// guest may enable LMCE in IA32_FEATURE_CONTROL with `MCG_LMCE_P` (`vmx_setup_mce`).
fn setup_mce(arch: &mut dyn BackendVcpu, mcg_cap: u64) -> Result {
    arch.mce()?.setup(mcg_cap).map_err(|()| EINVAL)?;
    if let Some(a) = arch.apic() {
        a.lapic.set_cmci(mcg_cap & mce::MCG_CMCI_P != 0);
    }
    Ok(())
}

/// `KVM_X86_SET_MCE` (upstream `kvm_vcpu_ioctl_x86_set_mce`): `EINVAL` for a bank beyond the
/// count or an invalid status; otherwise the error is logged in its bank and, as `mce::Mce::inject`
/// decides, raises #MC, shuts the vCPU down (CR4.MCE clear, or a machine check in progress), or,
/// for a UCNA error in a bank with CMCI enabled, is signalled through the in-kernel LAPIC's CMCI
/// entry (`kvm_vcpu_x86_set_ucna`; nothing without an in-kernel LAPIC).
fn set_mce(arch: &mut dyn BackendVcpu, m: &b::kvm_x86_mce) -> Result {
    let mut sregs = b::kvm_sregs::default();
    arch.get_sregs(&mut sregs)?;
    let e = mce::Event { status: m.status, addr: m.addr, misc: m.misc, mcg_status: m.mcg_status, bank: m.bank };
    let outcome = arch.mce()?.inject(&e, sregs.cr4 & mce::CR4_MCE != 0).map_err(|()| EINVAL)?;
    match outcome {
        mce::Outcome::Done => Ok(()),
        mce::Outcome::MachineCheck => arch.queue_machine_check(),
        mce::Outcome::Shutdown => arch.request_shutdown(),
        mce::Outcome::Cmci => {
            if let Some(a) = arch.apic() {
                a.lapic.deliver_cmci();
            }
            Ok(())
        }
    }
}

/// `KVM_SET_VCPU_EVENTS`.
fn set_vcpu_events(arch: &mut dyn BackendVcpu, e: &b::kvm_vcpu_events) -> Result {
    check_vcpu_events(e)?;
    arch.set_vcpu_events(e)
}

/// The `kvm_run->s.regs` parts `KVM_CAP_SYNC_REGS` offers (upstream
/// `KVM_SYNC_X86_VALID_FIELDS`).
pub(crate) const SYNC_REGS_VALID: u64 = (b::KVM_SYNC_X86_REGS | b::KVM_SYNC_X86_SREGS | b::KVM_SYNC_X86_EVENTS) as u64;

/// Before `KVM_RUN`: what userspace marked dirty in `kvm_run->s.regs` is loaded into the vCPU,
/// each part through its ioctl's checks, and its dirty bit cleared (upstream `sync_regs`).
fn sync_regs_in(f: &VcpuFile, arch: &mut dyn BackendVcpu, run: *mut b::kvm_run, dirty: u64) -> Result {
    // SAFETY: `run` is the vCPU's page; the sync area is plain data userspace may change at any
    // time: it is copied out once (volatile), and any bit pattern is a valid value.
    let s = unsafe { core::ptr::addr_of!((*run).s.regs).read_volatile() };
    let clear = |bit: u32| {
        // SAFETY: as above; a plain integer field.
        unsafe {
            let p = core::ptr::addr_of_mut!((*run).kvm_dirty_regs);
            p.write_volatile(p.read_volatile() & !u64::from(bit));
        }
    };
    if dirty & u64::from(b::KVM_SYNC_X86_REGS) != 0 {
        set_regs(arch, s.regs)?;
        clear(b::KVM_SYNC_X86_REGS);
    }
    if dirty & u64::from(b::KVM_SYNC_X86_SREGS) != 0 {
        set_sregs(f, arch, &s.sregs)?;
        clear(b::KVM_SYNC_X86_SREGS);
    }
    if dirty & u64::from(b::KVM_SYNC_X86_EVENTS) != 0 {
        set_vcpu_events(arch, &s.events)?;
        clear(b::KVM_SYNC_X86_EVENTS);
    }
    Ok(())
}

/// After `KVM_RUN`, whatever its result: the parts userspace asked for in `kvm_valid_regs` are
/// stored into `kvm_run->s.regs` (upstream `store_regs`).
fn sync_regs_out(arch: &mut dyn BackendVcpu, run: *mut b::kvm_run, valid: u64) -> Result {
    if valid & u64::from(b::KVM_SYNC_X86_REGS) != 0 {
        let mut regs = b::kvm_regs::default();
        arch.get_regs(&mut regs)?;
        // SAFETY: `run` is the vCPU's page; a plain-data field.
        unsafe { core::ptr::addr_of_mut!((*run).s.regs.regs).write_volatile(regs) };
    }
    if valid & u64::from(b::KVM_SYNC_X86_SREGS) != 0 {
        let mut sregs = b::kvm_sregs::default();
        arch.get_sregs(&mut sregs)?;
        // SAFETY: as above.
        unsafe { core::ptr::addr_of_mut!((*run).s.regs.sregs).write_volatile(sregs) };
    }
    if valid & u64::from(b::KVM_SYNC_X86_EVENTS) != 0 {
        let mut e = b::kvm_vcpu_events::default();
        arch.get_vcpu_events(&mut e)?;
        // SAFETY: as above.
        unsafe { core::ptr::addr_of_mut!((*run).s.regs.events).write_volatile(e) };
    }
    Ok(())
}

/// Exception payloads (`KVM_CAP_EXCEPTION_PAYLOAD`) and triple-fault events
/// (`KVM_CAP_X86_TRIPLE_FAULT_EVENT`) are never enabled, so their flags are invalid; without the
/// payload flag `exception.pending` is ignored. There is no SMM: the SMM flag is accepted only
/// with nothing in SMM (upstream without CONFIG_KVM_SMM).
fn check_vcpu_events(e: &b::kvm_vcpu_events) -> Result {
    let valid = b::KVM_VCPUEVENT_VALID_NMI_PENDING
        | b::KVM_VCPUEVENT_VALID_SIPI_VECTOR
        | b::KVM_VCPUEVENT_VALID_SHADOW
        | b::KVM_VCPUEVENT_VALID_SMM;
    if e.flags & !valid != 0 {
        return Err(EINVAL);
    }
    if e.flags & b::KVM_VCPUEVENT_VALID_SMM != 0 && (e.smi.smm != 0 || e.smi.pending != 0 || e.smi.smm_inside_nmi != 0) {
        return Err(EINVAL);
    }
    let ex = &e.exception;
    if ex.injected != 0 && (ex.nr > 31 || ex.nr == 2) {
        return Err(EINVAL);
    }
    Ok(())
}

/// `KVM_RUN` (upstream: `kvm_arch_vcpu_ioctl_run`): the checks upstream makes before entering
/// the guest, then the backend's run loop.
fn run(f: &VcpuFile, arch: &mut dyn BackendVcpu) -> Result {
    let run = f.vcpu.run_struct();
    // SAFETY: `run` is the vCPU's own page, mapped for its whole life. Userspace may write the
    // page concurrently, so each field is read once, volatile (upstream's READ_ONCE), and the
    // fields read here are plain integers for which any value is valid.
    let (valid_regs, dirty_regs, cr8, immediate_exit) = unsafe {
        core::ptr::addr_of_mut!((*run).flags).write_volatile(0);
        (
            core::ptr::addr_of!((*run).kvm_valid_regs).read_volatile(),
            core::ptr::addr_of!((*run).kvm_dirty_regs).read_volatile(),
            core::ptr::addr_of!((*run).cr8).read_volatile(),
            core::ptr::addr_of!((*run).immediate_exit__unsafe).read_volatile(),
        )
    };
    // KVM_CAP_SYNC_REGS: only the parts it offers.
    if valid_regs & !SYNC_REGS_VALID != 0 || dirty_regs & !SYNC_REGS_VALID != 0 {
        return Err(EINVAL);
    }
    // Userspace irqchip: TPR comes from kvm_run->cr8, 4 bits (upstream ignores it when the
    // LAPIC is in the kernel: `kvm_arch_vcpu_ioctl_run` → `kvm_set_cr8` only without one).
    if cr8 > 15 && arch.apic().is_none() {
        return Err(EINVAL);
    }
    let sigmask = *f.vcpu.sigmask.lock();
    if let Some(mask) = &sigmask {
        // SAFETY: swaps the task's blocked mask for the vCPU's; undone below on every path.
        unsafe { b::rkvm_sigmask_activate(mask) };
    }
    let mut r = if dirty_regs != 0 { sync_regs_in(f, arch, run, dirty_regs) } else { Ok(()) };
    if r.is_ok() {
        r = run_with_mask(f, arch, run, immediate_exit);
    }
    if sigmask.is_some() {
        // SAFETY: restores the mask parked by the activation above.
        unsafe { b::rkvm_sigmask_deactivate() };
    }
    if valid_regs != 0 {
        sync_regs_out(arch, run, valid_regs)?;
    }
    r
}

/// The backend's run, with the signal mask in force. `immediate_exit` and pending signals are
/// the backend's to act on: as upstream, a pending I/O or MMIO completion is finished first
/// (so that `KVM_RUN` with `immediate_exit` completes it, as `vcpu_run_complete_io` expects).
fn run_with_mask(f: &VcpuFile, arch: &mut dyn BackendVcpu, run: *mut b::kvm_run, immediate_exit: u8) -> Result {
    let table = f.vcpu.cpuid.lock();
    let mut ctx = RunContext {
        run,
        pio: f.vcpu.pio_data(),
        vm: &f.vm,
        cpuid: &table,
        stats: &f.vcpu.stats,
        immediate_exit: immediate_exit != 0,
    };
    arch.run(&mut ctx)
}

/// Fills `regs` and `sregs` with the architectural RESET state upstream reports for a new vCPU
/// (`kvm_vcpu_reset` + `vmx_vcpu_reset`), for backends to start from.
pub(crate) fn reset_state(regs: &mut b::kvm_regs, sregs: &mut b::kvm_sregs) {
    use segment::reset;
    *regs = b::kvm_regs { rip: reset::RIP, rflags: reset::RFLAGS, rdx: reset::RDX, ..Default::default() };
    *sregs = b::kvm_sregs::default();
    sregs.cs = to_kvm_segment(&reset::CS);
    for s in [&mut sregs.ds, &mut sregs.es, &mut sregs.fs, &mut sregs.gs, &mut sregs.ss] {
        *s = to_kvm_segment(&reset::DATA);
    }
    sregs.tr = to_kvm_segment(&reset::tr());
    sregs.ldt = to_kvm_segment(&reset::ldtr());
    sregs.gdt.limit = reset::DTABLE_LIMIT;
    sregs.idt.limit = reset::DTABLE_LIMIT;
    sregs.cr0 = reset::CR0;
}

/// Keeps only the lowest pending vector of a KVM_SET_SREGS interrupt bitmap: upstream queues that
/// one interrupt and reports only it back.
pub(crate) fn normalize_interrupt_bitmap(bitmap: &mut [u64; 4]) {
    let mut found = false;
    for word in bitmap.iter_mut() {
        if found {
            *word = 0;
        } else if *word != 0 {
            *word &= word.wrapping_neg();
            found = true;
        }
    }
}

/// Applies the VMX access-rights round trip to a segment being stored (see `x86/segment.rs`).
pub(crate) fn normalize_segment(seg: &mut b::kvm_segment, which: segment::Which) {
    *seg = to_kvm_segment(&segment::normalize(&from_kvm_segment(seg), which));
}

/// A pure segment as the uapi `struct kvm_segment`.
pub(crate) fn to_kvm_segment(s: &segment::Segment) -> b::kvm_segment {
    b::kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present,
        dpl: s.dpl,
        db: s.db,
        s: s.s,
        l: s.l,
        g: s.g,
        avl: s.avl,
        unusable: s.unusable,
        padding: 0,
    }
}

/// The uapi `struct kvm_segment` as a pure segment.
pub(crate) fn from_kvm_segment(s: &b::kvm_segment) -> segment::Segment {
    segment::Segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present,
        dpl: s.dpl,
        db: s.db,
        s: s.s,
        l: s.l,
        g: s.g,
        avl: s.avl,
        unusable: s.unusable,
    }
}

/// Most entries one `KVM_GET_MSRS`/`KVM_SET_MSRS` takes (upstream `MAX_IO_MSRS`).
const MAX_IO_MSRS: u32 = 256;

/// `KVM_GET_MSRS` / `KVM_SET_MSRS` on a vCPU or (get only) on the device fd (upstream
/// `msr_io`): `struct kvm_msrs` with `nmsrs` entries; `one(index, &mut data)` handles each entry
/// in order until one fails (returns false), and the number done is returned (a partial success
/// is not an error). A get (`set` false) copies all entries back, the failed one's data zeroed
/// by `one` (upstream `kvm_do_msr_access`).
pub(crate) fn msr_io(arg: usize, set: bool, mut one: impl FnMut(u32, &mut u64) -> Result<bool>) -> Result<isize> {
    let nmsrs: u32 = read_user(arg)?;
    if nmsrs >= MAX_IO_MSRS {
        return Err(E2BIG);
    }
    // The entries follow the 8-byte header (`nmsrs`, `pad`).
    let entries_at = arg.checked_add(8).ok_or(EFAULT)?;
    let mut entries = read_user_array::<b::kvm_msr_entry>(entries_at, nmsrs as usize)?;
    let mut done = 0;
    for e in entries.iter_mut() {
        if !one(e.index, &mut e.data)? {
            break;
        }
        done += 1;
    }
    if !set {
        write_user_array(entries_at, &entries)?;
    }
    Ok(done)
}

/// The host's TSC (RDTSC).
pub(crate) fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter; no side effects (CR4.TSD only matters in user mode).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reads a `struct kvm_cpuid2` (`nent`, padding, `nent` entries) of at most `max` entries
/// (`E2BIG` beyond); returns the entries and `nent`.
pub(crate) fn read_cpuid2(arg: usize, max: usize) -> Result<(KVec<cpuid::Entry>, u32)> {
    let nent: u32 = read_user(arg)?;
    if nent as usize > max {
        return Err(E2BIG);
    }
    let raw = read_user_array::<b::kvm_cpuid_entry2>(arg.checked_add(8).ok_or(EFAULT)?, nent as usize)?;
    let mut v = KVec::with_capacity(raw.len(), GFP_KERNEL_ACCOUNT)?;
    for e in raw.iter() {
        v.push(
            cpuid::Entry { function: e.function, index: e.index, flags: e.flags, regs: [e.eax, e.ebx, e.ecx, e.edx] },
            GFP_KERNEL_ACCOUNT,
        )?;
    }
    Ok((v, nent))
}

/// A copy of a CPUID table.
fn runtime_copy(table: &[cpuid::Entry]) -> Result<KVec<cpuid::Entry>> {
    let mut v = KVec::with_capacity(table.len(), GFP_KERNEL_ACCOUNT)?;
    for e in table {
        v.push(*e, GFP_KERNEL_ACCOUNT)?;
    }
    Ok(v)
}

/// Writes `entries` as a `struct kvm_cpuid2` at `arg`: the entries, then `nent`.
pub(crate) fn write_cpuid2(arg: usize, entries: &[cpuid::Entry]) -> Result {
    let mut raw = KVec::with_capacity(entries.len(), GFP_KERNEL_ACCOUNT)?;
    for e in entries {
        let [eax, ebx, ecx, edx] = e.regs;
        raw.push(
            b::kvm_cpuid_entry2 { function: e.function, index: e.index, flags: e.flags, eax, ebx, ecx, edx, ..Default::default() },
            GFP_KERNEL_ACCOUNT,
        )?;
    }
    write_user_array(arg.checked_add(8).ok_or(EFAULT)?, &raw)?;
    write_user(arg, &(entries.len() as u32))
}

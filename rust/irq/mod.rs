//! The in-kernel irqchip (`KVM_CREATE_IRQCHIP`): a local APIC per vCPU, one IOAPIC and the
//! 8259 PIC pair per VM, and how interrupts travel between them (upstream: `arch/x86/kvm/`
//! `lapic.c`, `ioapic.c`, `i8259.c`, `irq_comm.c`, and the kick/block half of `kvm_main.c`).
//!
//! The register-level behaviour of each device is pure logic in its own file (`lapic.rs`,
//! `ioapic.rs`, `pic.rs`, tested on the host). This file is the kernel half:
//!
//! ```text
//!  KVM_IRQ_LINE ─▶ Irqchip::set_irq ─┬─▶ Pic (GSI 0-15) ── output ──▶ boot vCPU: ExtINT at entry
//!                                   └─▶ Ioapic (GSI 0-23) ─ Msg ─┐
//!  vCPU A: ICR write ─ Ipi ─────────────────────────────────────┴▶ Irqchip::deliver
//!                                                                   │ for each matching vCPU:
//!                                                                   ▼ Posted::post + kick
//!  vCPU B, before each entry: VcpuApic::sync: posted vectors ─▶ its Lapic's IRR ─▶ injection
//! ```
//!
//! A vCPU's [`Lapic`] lives in its backend state, under the vCPU mutex, like every other
//! register of it. Other threads (another vCPU's IPI, the IOAPIC, the LAPIC timer's hrtimer)
//! never touch it: they set bits in the target's [`Posted`] area (atomics, like a posted-interrupt
//! descriptor) and kick it. The kick bumps a sequence number, wakes the vCPU if it sleeps in HLT,
//! and sends its task a reschedule IPI if it runs guest code on another CPU (upstream:
//! `kvm_vcpu_kick`), which causes a VM exit. The vCPU folds posted work into its LAPIC before
//! every entry, and cancels an entry (with interrupts already off) if a kick came after that, so
//! nothing posted waits for an unrelated exit.
//!
//! Destination matching needs each LAPIC's IDs, LDR, DFR, mode and enables without its lock: the
//! owner publishes them in [`Posted`], packed into one 64-bit word ([`lapic::Dest`]) so that a
//! reader always sees one consistent state, whenever they change (upstream: the APIC map,
//! `kvm_recalculate_apic_map`). Destinations are 32 bits wide (x2APIC); how an 8-bit xAPIC
//! destination reaches an x2APIC-mode LAPIC follows upstream's `kvm_apic_mda`, with the VM's
//! `KVM_CAP_X2APIC_API` flags in [`Irqchip`].
//!
//! Locks: `Irqchip::ioapic` and `Irqchip::pic` are taken before `Irqchip::targets`, never the
//! other way round; none of them is held while sleeping.

#[allow(unreachable_pub, dead_code)] // pure file, also compiled by the host tests
pub(crate) mod ioapic;
#[allow(unreachable_pub, dead_code)] // pure file, also compiled by the host tests
pub(crate) mod lapic;
#[allow(unreachable_pub, dead_code)] // pure file, also compiled by the host tests
pub(crate) mod pic;

use crate::ffi::bindings as b;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use kernel::prelude::*;
use kernel::sync::{Arc, SpinLock};
use lapic::{Dest, Effect, Ipi, Lapic};

/// CLOCK_MONOTONIC now, in ns: the LAPIC timer's time base.
pub(crate) fn now_ns() -> u64 {
    // SAFETY: reads the monotonic clock; no preconditions.
    unsafe { b::rkvm_ktime_ns() }
}

/// A vCPU's wake-up point: the C `struct rkvm_kick` (a wait queue, the task in `KVM_RUN`, and
/// the LAPIC timer's hrtimer).
///
/// # Invariants
///
/// `0` points to a live `rkvm_kick` allocated by `rkvm_kick_alloc`, freed only in `drop`.
pub(crate) struct Kick(NonNull<b::rkvm_kick>);

// SAFETY: every C entry point of `rkvm_kick` synchronises internally (atomics, a wait queue, a
// raw spinlock around the task pointer, the hrtimer's own locking).
unsafe impl Send for Kick {}
// SAFETY: as above.
unsafe impl Sync for Kick {}

impl Kick {
    fn new() -> Result<Kick> {
        // SAFETY: allocates and initialises a fresh object; no preconditions.
        let p = unsafe { b::rkvm_kick_alloc() };
        NonNull::new(p).map(Kick).ok_or(ENOMEM)
    }

    /// Wakes the vCPU: out of HLT, or out of guest mode with an IPI.
    pub(crate) fn kick(&self) {
        // SAFETY: live object (type invariant).
        unsafe { b::rkvm_kick(self.0.as_ptr()) }
    }

    /// The kick sequence: snapshot it before looking for work, then [`Kick::wait`] on it.
    pub(crate) fn seq(&self) -> u32 {
        // SAFETY: live object (type invariant).
        unsafe { b::rkvm_kick_seq(self.0.as_ptr()) }
    }

    /// Sleeps until a kick after the `seq` snapshot; `EINTR` if a signal arrives first.
    pub(crate) fn wait(&self, seq: u32) -> Result {
        // SAFETY: live object (type invariant); called from the vCPU's task, which may sleep
        // (KVM_RUN holds only the vCPU mutex, a sleeping lock).
        match unsafe { b::rkvm_kick_wait(self.0.as_ptr(), seq) } {
            0 => Ok(()),
            _ => Err(EINTR),
        }
    }

    /// Marks the calling task as the one running this vCPU (or none), for kick IPIs.
    pub(crate) fn set_task(&self, running: bool) {
        // SAFETY: live object; the task pointer is cleared by the same task before KVM_RUN
        // returns, so it never outlives the task.
        unsafe { b::rkvm_kick_set_task(self.0.as_ptr(), running) }
    }

    fn timer_start(&self, deadline_ns: u64) {
        // SAFETY: live object (type invariant).
        unsafe { b::rkvm_kick_timer_start(self.0.as_ptr(), deadline_ns) }
    }

    fn timer_cancel(&self) {
        // SAFETY: live object; may wait for a running callback, which never takes our locks.
        unsafe { b::rkvm_kick_timer_cancel(self.0.as_ptr()) }
    }

    fn timer_fired(&self) -> bool {
        // SAFETY: live object (type invariant).
        unsafe { b::rkvm_kick_timer_fired(self.0.as_ptr()) }
    }
}

impl Drop for Kick {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the object is live and this is its only owner; the
        // timer is cancelled before the memory goes.
        unsafe { b::rkvm_kick_free(self.0.as_ptr()) }
    }
}

const SIPI_VALID: u32 = 1 << 8;

/// What other threads deliver to one vCPU's LAPIC without holding its lock (upstream: the
/// posted-interrupt descriptor's PIR, and the `KVM_REQ_*` bits for NMI/events).
pub(crate) struct Posted {
    /// The vCPU id.
    pub(crate) vcpu_id: u32,
    /// The vCPU is the VM's boot CPU (`KVM_SET_BOOT_CPU_ID`, vCPU 0 by default; upstream
    /// `kvm_vcpu_is_reset_bsp`): the PIC is wired to it.
    pub(crate) bsp: bool,
    pub(crate) kick: Kick,
    /// Vectors requested (a 256-bit map), and which of them are level-triggered.
    irr: [AtomicU64; 4],
    tmr: [AtomicU64; 4],
    /// NMIs requested.
    nmi: AtomicU32,
    /// An INIT was sent (upstream `KVM_APIC_INIT` in `apic->pending_events`).
    init: AtomicBool,
    /// A SIPI was sent: `SIPI_VALID | vector` (upstream `KVM_APIC_SIPI` and `sipi_vector`).
    sipi: AtomicU32,
    /// The LAPIC's destination state ([`Dest::pack`]), published by the owner.
    dest: AtomicU64,
}

impl Posted {
    fn post(&self, vector: u8, level: bool) {
        let (w, bit) = (usize::from(vector >> 6), 1u64 << (vector & 63));
        if level {
            self.tmr[w].fetch_or(bit, Ordering::Relaxed);
        } else {
            self.tmr[w].fetch_and(!bit, Ordering::Relaxed);
        }
        // Release: the TMR bit is visible to whoever sees the IRR bit.
        self.irr[w].fetch_or(bit, Ordering::Release);
        self.kick.kick();
    }

    fn post_nmi(&self) {
        self.nmi.fetch_add(1, Ordering::Relaxed);
        self.kick.kick();
    }

    fn post_init(&self) {
        self.init.store(true, Ordering::Release);
        self.kick.kick();
    }

    /// A startup IPI with `vector` (also `KVM_SET_MP_STATE(SIPI_RECEIVED)`).
    pub(crate) fn post_sipi(&self, vector: u8) {
        self.sipi.store(SIPI_VALID | u32::from(vector), Ordering::Release);
        self.kick.kick();
    }

    /// The published destination state.
    fn dest(&self) -> Dest {
        Dest::unpack(self.dest.load(Ordering::Relaxed), self.vcpu_id)
    }
}

/// A message on the APIC bus: an IOAPIC redirection or an IPI.
#[derive(Clone, Copy)]
struct Message {
    vector: u8,
    mode: u8,
    logical: bool,
    level: bool,
    /// 8 bits from xAPIC senders and the IOAPIC, 32 bits from x2APIC senders.
    dest: u32,
    /// ICR destination shorthand (0 for IOAPIC messages).
    shorthand: u8,
    /// The sending vCPU, for the self shorthands.
    from: Option<u32>,
    /// An INIT "level de-assert" IPI, which does nothing (upstream `__apic_accept_irq`).
    init_deassert: bool,
}

/// A VM's PIC and IOAPIC, and the LAPICs they deliver to (upstream: `kvm->arch.vpic`,
/// `kvm->arch.vioapic` and the APIC map).
#[pin_data]
pub(crate) struct Irqchip {
    #[pin]
    pic: SpinLock<pic::Pic>,
    #[pin]
    ioapic: SpinLock<ioapic::Ioapic>,
    /// Every vCPU's posted area, in creation order.
    #[pin]
    targets: SpinLock<KVec<Arc<Posted>>>,
    /// The PIC's INTR line (upstream `kvm_pic.output`), read by the boot vCPU before each entry.
    pic_output: AtomicBool,
    /// `KVM_X2APIC_API_USE_32BIT_IDS` (upstream `kvm->arch.x2apic_format`): `KVM_GET_LAPIC` /
    /// `KVM_SET_LAPIC` carry the whole x2APIC ID.
    x2apic_format: AtomicBool,
    /// `KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK` (upstream
    /// `kvm->arch.x2apic_broadcast_quirk_disabled`).
    x2apic_broadcast_quirk_disabled: AtomicBool,
}

impl Irqchip {
    /// `KVM_CREATE_IRQCHIP`: both devices in their reset state (upstream `kvm_pic_init`,
    /// `kvm_ioapic_init`), with the default routing of GSI n to PIC pin n (n < 16) and IOAPIC
    /// pin n (n < 24).
    /// `x2apic_api`: the `KVM_CAP_X2APIC_API` flags enabled before.
    pub(crate) fn new(x2apic_api: u64) -> Result<Arc<Irqchip>> {
        let chip = Arc::pin_init(
            pin_init!(Irqchip {
                pic <- kernel::new_spinlock!(pic::Pic::new()),
                ioapic <- kernel::new_spinlock!(ioapic::Ioapic::new()),
                targets <- kernel::new_spinlock!(KVec::new()),
                pic_output: AtomicBool::new(false),
                x2apic_format: AtomicBool::new(false),
                x2apic_broadcast_quirk_disabled: AtomicBool::new(false),
            }),
            GFP_KERNEL_ACCOUNT,
        )?;
        chip.enable_x2apic_api(x2apic_api);
        Ok(chip)
    }

    /// `KVM_ENABLE_CAP(KVM_CAP_X2APIC_API)` with valid `flags` (upstream
    /// `kvm_vm_ioctl_enable_cap`): each flag, once set, stays set.
    pub(crate) fn enable_x2apic_api(&self, flags: u64) {
        if flags & u64::from(b::KVM_X2APIC_API_USE_32BIT_IDS) != 0 {
            self.x2apic_format.store(true, Ordering::Relaxed);
        }
        if flags & u64::from(b::KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK) != 0 {
            self.x2apic_broadcast_quirk_disabled.store(true, Ordering::Relaxed);
        }
    }

    /// Sends `m` to every LAPIC it addresses (upstream `kvm_irq_delivery_to_apic`: every
    /// hardware-enabled LAPIC, `kvm_apic_present`, that `kvm_apic_match_dest` picks); returns
    /// whether some LAPIC took it. Lowest-priority messages go to the first match (upstream
    /// arbitrates by priority or vector hashing; any one target is architecturally valid).
    fn deliver(&self, m: Message) -> bool {
        let quirk = !self.x2apic_broadcast_quirk_disabled.load(Ordering::Relaxed);
        let targets = self.targets.lock();
        let mut taken = false;
        for t in targets.iter() {
            let d = t.dest();
            if !d.hw_enabled {
                continue;
            }
            let hit = match m.shorthand {
                1 => m.from == Some(t.vcpu_id),
                2 => true,
                3 => m.from != Some(t.vcpu_id),
                _ => d.matches(d.mda(m.dest, m.from.is_some(), quirk), m.logical),
            };
            if !hit {
                continue;
            }
            match m.mode {
                lapic::MODE_FIXED | lapic::MODE_LOWEST => {
                    // Dropped by a software-disabled LAPIC (upstream `__apic_accept_irq`).
                    if !d.sw_enabled {
                        continue;
                    }
                    t.post(m.vector, m.level);
                }
                lapic::MODE_NMI => t.post_nmi(),
                lapic::MODE_INIT if !m.init_deassert => t.post_init(),
                lapic::MODE_STARTUP => t.post_sipi(m.vector),
                // SMI and ExtINT messages are not supported (see rust/README).
                _ => continue,
            }
            taken = true;
            if m.mode == lapic::MODE_LOWEST {
                break;
            }
        }
        taken
    }

    /// An IOAPIC message (its delivery callback).
    fn deliver_ioapic(&self, msg: ioapic::Msg) -> bool {
        self.deliver(Message {
            vector: msg.vector,
            mode: msg.mode,
            logical: msg.logical,
            level: msg.level,
            dest: msg.dest.into(),
            shorthand: 0,
            from: None,
            init_deassert: false,
        })
    }

    /// Publishes the PIC's INTR line and wakes the boot vCPU when it rises (upstream
    /// `pic_update_irq` → `kvm_vcpu_kick` of the BSP).
    fn pic_changed(&self, p: &pic::Pic) {
        let out = p.output();
        let was = self.pic_output.swap(out, Ordering::AcqRel);
        if out && !was {
            if let Some(t) = self.targets.lock().iter().find(|t| t.bsp) {
                t.kick.kick();
            }
        }
    }

    /// `KVM_IRQ_LINE`: GSI `gsi` to `level` through the default routing; the status
    /// `KVM_IRQ_LINE_STATUS` reports (upstream `kvm_set_irq`: the sum of the non-negative
    /// results of each chip, or -1 if none took it).
    pub(crate) fn set_irq(&self, gsi: u32, level: bool) -> i32 {
        let mut ret = -1;
        let mut add = |r: i32| {
            if r >= 0 {
                ret = r + ret.max(0);
            }
        };
        if gsi < 16 {
            let mut p = self.pic.lock();
            add(p.set_irq(gsi, level));
            self.pic_changed(&p);
        }
        if (gsi as usize) < ioapic::PINS {
            add(self.ioapic.lock().set_irq(gsi, level, &mut |m| self.deliver_ioapic(m)));
        }
        ret
    }

    /// `KVM_GET_IRQCHIP`.
    pub(crate) fn get(&self, chip: &mut b::kvm_irqchip) -> Result {
        match chip.chip_id {
            b::KVM_IRQCHIP_PIC_MASTER | b::KVM_IRQCHIP_PIC_SLAVE => {
                let s = self.pic.lock().get_state(chip.chip_id == b::KVM_IRQCHIP_PIC_SLAVE);
                chip.chip.pic = pic_to_uapi(&s);
            }
            b::KVM_IRQCHIP_IOAPIC => {
                let s = self.ioapic.lock().get_state();
                let mut u = b::kvm_ioapic_state {
                    base_address: s.base_address,
                    ioregsel: s.ioregsel,
                    id: s.id,
                    irr: s.irr,
                    pad: 0,
                    redirtbl: [b::kvm_ioapic_state__bindgen_ty_1 { bits: 0 }; ioapic::PINS],
                };
                for (d, v) in u.redirtbl.iter_mut().zip(s.redirtbl.iter()) {
                    d.bits = *v;
                }
                chip.chip.ioapic = u;
            }
            _ => return Err(EINVAL),
        }
        Ok(())
    }

    /// `KVM_SET_IRQCHIP`.
    pub(crate) fn set(&self, chip: &b::kvm_irqchip) -> Result {
        match chip.chip_id {
            b::KVM_IRQCHIP_PIC_MASTER | b::KVM_IRQCHIP_PIC_SLAVE => {
                // SAFETY: every bit pattern of the union is a valid `kvm_pic_state` (integers).
                let u = unsafe { chip.chip.pic };
                let mut p = self.pic.lock();
                p.set_state(chip.chip_id == b::KVM_IRQCHIP_PIC_SLAVE, &pic_from_uapi(&u));
                self.pic_changed(&p);
            }
            b::KVM_IRQCHIP_IOAPIC => {
                // SAFETY: as above, `kvm_ioapic_state` is integers only (the union's `bits`
                // view covers each redirection entry).
                let u = unsafe { chip.chip.ioapic };
                let mut s = ioapic::State {
                    base_address: u.base_address,
                    ioregsel: u.ioregsel,
                    id: u.id,
                    irr: u.irr,
                    redirtbl: [0; ioapic::PINS],
                };
                for (d, v) in s.redirtbl.iter_mut().zip(u.redirtbl.iter()) {
                    // SAFETY: reading the u64 view of a union of integer views.
                    *d = unsafe { v.bits };
                }
                self.ioapic.lock().set_state(&s, &mut |m| self.deliver_ioapic(m));
            }
            _ => return Err(EINVAL),
        }
        Ok(())
    }
}

macro_rules! pic_fields {
    ($from:expr, $to:ident) => {{
        let s = $from;
        $to {
            last_irr: s.last_irr,
            irr: s.irr,
            imr: s.imr,
            isr: s.isr,
            priority_add: s.priority_add,
            irq_base: s.irq_base,
            read_reg_select: s.read_reg_select,
            poll: s.poll,
            special_mask: s.special_mask,
            init_state: s.init_state,
            auto_eoi: s.auto_eoi,
            rotate_on_auto_eoi: s.rotate_on_auto_eoi,
            special_fully_nested_mode: s.special_fully_nested_mode,
            init4: s.init4,
            elcr: s.elcr,
            elcr_mask: s.elcr_mask,
        }
    }};
}

fn pic_to_uapi(s: &pic::ChipState) -> b::kvm_pic_state {
    use b::kvm_pic_state as T;
    pic_fields!(s, T)
}

fn pic_from_uapi(s: &b::kvm_pic_state) -> pic::ChipState {
    use pic::ChipState as T;
    pic_fields!(s, T)
}

/// The in-kernel half of one vCPU's interrupt state: its LAPIC, its posted area and the VM's
/// irqchip (upstream: `vcpu->arch.apic`). Owned by the backend vCPU, under the vCPU mutex.
pub(crate) struct VcpuApic {
    /// Boxed: the model holds the 1 KiB register page, and a `VcpuApic` travels by value from
    /// `Vm::create_vcpu` through the backend into the vCPU (a by-value `Lapic` put 4.4 KiB on
    /// KVM_CREATE_VCPU's kernel stack frame).
    pub(crate) lapic: KBox<Lapic>,
    pub(crate) posted: Arc<Posted>,
    chip: Arc<Irqchip>,
    /// The timer deadline the hrtimer is armed for.
    armed: Option<u64>,
    /// `KVM_MP_STATE_*`: RUNNABLE, HALTED (HLT, no wake-up event yet), UNINITIALIZED (an
    /// application processor before its first INIT) or INIT_RECEIVED (waiting for a SIPI).
    pub(crate) mp: u32,
}

/// What [`VcpuApic::sync`] found posted besides interrupt vectors.
#[derive(Default)]
pub(crate) struct Work {
    pub(crate) nmis: u32,
    pub(crate) init: bool,
    pub(crate) sipi: Option<u8>,
}

/// Where the next interrupt comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The PIC, through LINT0 in ExtINT mode (vector known only at acknowledge time).
    Pic,
    Lapic(u8),
}

impl VcpuApic {
    /// The LAPIC of new vCPU `id` in its RESET state, registered with `chip`: `bsp` if `id` is
    /// the VM's boot CPU (`KVM_SET_BOOT_CPU_ID`), its timer on a bus of `bus_cycle_ns` ns per
    /// cycle (`KVM_CAP_X86_APIC_BUS_CYCLES_NS`).
    pub(crate) fn new(chip: &Arc<Irqchip>, id: u32, bsp: bool, bus_cycle_ns: u64) -> Result<VcpuApic> {
        let posted = Arc::new(
            Posted {
                vcpu_id: id,
                bsp,
                kick: Kick::new()?,
                irr: Default::default(),
                tmr: Default::default(),
                nmi: AtomicU32::new(0),
                init: AtomicBool::new(false),
                sipi: AtomicU32::new(0),
                dest: AtomicU64::new(0),
            },
            GFP_KERNEL_ACCOUNT,
        )?;
        let lapic = KBox::new(Lapic::new(id, bsp).with_bus_cycle_ns(bus_cycle_ns), GFP_KERNEL_ACCOUNT)?;
        // A spinlock is held: no sleeping allocation (the vector grows rarely, one per vCPU).
        chip.targets.lock().push(posted.clone(), GFP_NOWAIT)?;
        let a = VcpuApic {
            lapic,
            posted,
            chip: chip.clone(),
            armed: None,
            // Upstream `kvm_arch_vcpu_create`: the boot CPU runs, the others wait for INIT
            // and SIPI.
            mp: if bsp { b::KVM_MP_STATE_RUNNABLE } else { b::KVM_MP_STATE_UNINITIALIZED },
        };
        a.publish();
        Ok(a)
    }

    /// Publishes what destination matching needs (upstream `kvm_recalculate_apic_map`).
    fn publish(&self) {
        self.posted.dest.store(self.lapic.dest().pack(), Ordering::Relaxed);
    }

    /// Carries out what a LAPIC register write asked for.
    pub(crate) fn apply(&mut self, e: Effect) {
        if e.dest_changed {
            self.publish();
        }
        if let Some(v) = e.eoi_level {
            // Upstream `kvm_ioapic_update_eoi`: the IOAPIC clears Remote IRR and re-sends a
            // still-asserted level interrupt.
            self.chip.ioapic.lock().eoi(v, &mut |m| self.chip.deliver_ioapic(m));
        }
        if let Some(ipi) = e.ipi {
            self.send_ipi(ipi);
        }
        if e.timer_changed {
            self.rearm();
        }
    }

    /// Upstream `kvm_apic_send_ipi` → `kvm_irq_delivery_to_apic`. The sender's own LAPIC
    /// receives through its posted area like any other, before its next entry.
    fn send_ipi(&self, ipi: Ipi) {
        self.chip.deliver(Message {
            vector: ipi.vector,
            mode: ipi.mode,
            logical: ipi.logical,
            level: false,
            dest: ipi.dest,
            shorthand: ipi.shorthand,
            from: Some(self.posted.vcpu_id),
            init_deassert: ipi.level_trigger && !ipi.assert,
        });
    }

    /// Arms the hrtimer for the LAPIC timer's deadline, or cancels it.
    fn rearm(&mut self) {
        let d = self.lapic.deadline();
        if d == self.armed {
            return;
        }
        match d {
            Some(ns) => self.posted.kick.timer_start(ns),
            None => self.posted.kick.timer_cancel(),
        }
        self.armed = d;
    }

    /// Folds what was posted since the last call into the LAPIC (upstream
    /// `vmx_sync_pir_to_irr`, and `apic_timer_expired` run in the vCPU's context). Returns the
    /// NMIs, INIT and SIPI for the caller to act on.
    pub(crate) fn sync(&mut self) -> Work {
        for w in 0..4 {
            if self.posted.irr[w].load(Ordering::Relaxed) == 0 {
                continue;
            }
            let irr = self.posted.irr[w].swap(0, Ordering::Acquire);
            let tmr = self.posted.tmr[w].load(Ordering::Relaxed);
            let mut bits = irr;
            while bits != 0 {
                let i = bits.trailing_zeros();
                bits &= bits - 1;
                self.lapic.accept((w as u32 * 64 + i) as u8, tmr & (1 << i) != 0);
            }
        }
        if self.armed.is_some() && self.posted.kick.timer_fired() {
            let now = now_ns();
            if self.lapic.deadline().is_some_and(|d| d <= now) {
                self.lapic.expire(now);
            }
            self.armed = None;
            self.rearm();
        }
        let mut w = Work::default();
        if self.posted.nmi.load(Ordering::Relaxed) != 0 {
            w.nmis = self.posted.nmi.swap(0, Ordering::Relaxed);
        }
        if self.posted.init.load(Ordering::Relaxed) {
            w.init = self.posted.init.swap(false, Ordering::Acquire);
        }
        if self.posted.sipi.load(Ordering::Relaxed) != 0 {
            let s = self.posted.sipi.swap(0, Ordering::Acquire);
            w.sipi = (s & SIPI_VALID != 0).then_some(s as u8);
        }
        w
    }

    /// INIT (upstream `kvm_apic_accept_events` → `kvm_vcpu_reset(vcpu, true)`): the LAPIC's
    /// INIT state; the boot CPU runs on, the others wait for a SIPI. The caller resets the
    /// CPU registers.
    pub(crate) fn init(&mut self) {
        let e = self.lapic.reset(true);
        self.apply(e);
        self.mp = if self.posted.bsp { b::KVM_MP_STATE_RUNNABLE } else { b::KVM_MP_STATE_INIT_RECEIVED };
    }

    /// The interrupt to inject next, if any (upstream `kvm_cpu_has_interrupt`: the PIC's
    /// ExtINT first, then the LAPIC).
    pub(crate) fn next(&self) -> Option<Source> {
        if self.posted.bsp && self.lapic.accepts_pic() && self.chip.pic_output.load(Ordering::Acquire) {
            return Some(Source::Pic);
        }
        self.lapic.pending().map(Source::Lapic)
    }

    /// Acknowledges the interrupt `next` returned (upstream `kvm_cpu_get_interrupt`): its vector.
    /// `None` if the PIC's line fell meanwhile.
    pub(crate) fn ack(&mut self, s: Source) -> Option<u8> {
        match s {
            Source::Lapic(v) => {
                self.lapic.ack(v);
                Some(v)
            }
            Source::Pic => {
                let mut p = self.chip.pic.lock();
                if !p.output() {
                    return None;
                }
                let v = p.ack();
                self.chip.pic_changed(&p);
                Some(v)
            }
        }
    }

    /// A guest access to the LAPIC or IOAPIC page at `gpa`: `Some(value)` for a read, `Some(0)`
    /// for a write; `None` if `gpa` is neither (upstream: the in-kernel MMIO devices on
    /// `KVM_MMIO_BUS`).
    ///
    /// The LAPIC's page is where IA32_APIC_BASE puts it, enabled or not (upstream
    /// `apic_mmio_in_range`); [`Lapic::mmio_read`] makes it a hole when the APIC is disabled or
    /// in x2APIC mode.
    pub(crate) fn mmio(&mut self, gpa: u64, len: u32, write: Option<u32>) -> Option<u32> {
        if gpa & !0xfff == self.lapic.mmio_base() {
            let off = (gpa & 0xfff) as u32;
            let now = now_ns();
            return Some(match write {
                Some(v) => {
                    let e = self.lapic.mmio_write(off, len, v, now);
                    self.apply(e);
                    0
                }
                None => self.lapic.mmio_read(off, len, now),
            });
        }
        let mut io = self.chip.ioapic.lock();
        let base = io.base();
        if gpa < base || gpa >= base + 0x100 {
            return None;
        }
        Some(match write {
            Some(v) => {
                io.write(gpa - base, len, v, &mut |m| self.chip.deliver_ioapic(m));
                0
            }
            None => io.read(gpa - base, len),
        })
    }

    /// A guest port access to the PIC (ports 0x20/0x21, 0xa0/0xa1, ELCR 0x4d0/0x4d1); `None`
    /// if the port is not the PIC's. Upstream handles only byte accesses; others read as 0
    /// and are ignored on write (upstream `picdev_read` / `picdev_write`).
    pub(crate) fn pio(&mut self, port: u16, size: u32, write: Option<u32>) -> Option<u32> {
        if !matches!(port, 0x20 | 0x21 | 0xa0 | 0xa1 | 0x4d0 | 0x4d1) {
            return None;
        }
        if size != 1 {
            return Some(0);
        }
        let mut p = self.chip.pic.lock();
        let r = match write {
            Some(v) => {
                p.write_port(port, v as u8);
                0
            }
            None => u32::from(p.read_port(port).unwrap_or(0)),
        };
        self.chip.pic_changed(&p);
        Some(r)
    }

    /// `KVM_SET_MP_STATE` (upstream `kvm_arch_vcpu_ioctl_set_mpstate`): SIPI_RECEIVED becomes
    /// INIT_RECEIVED with a SIPI of `sipi_vector` (`KVM_SET_VCPU_EVENTS`') pending.
    pub(crate) fn set_mp_state(&mut self, s: u32, sipi_vector: u8) -> Result {
        match s {
            b::KVM_MP_STATE_RUNNABLE
            | b::KVM_MP_STATE_UNINITIALIZED
            | b::KVM_MP_STATE_INIT_RECEIVED
            | b::KVM_MP_STATE_HALTED => self.mp = s,
            b::KVM_MP_STATE_SIPI_RECEIVED => {
                self.mp = b::KVM_MP_STATE_INIT_RECEIVED;
                self.posted.post_sipi(sipi_vector);
            }
            _ => return Err(EINVAL),
        }
        Ok(())
    }

    /// `KVM_GET_LAPIC` (upstream `kvm_apic_get_state`).
    pub(crate) fn get_state(&self, out: &mut [u8; lapic::REG_SIZE]) {
        let format = self.chip.x2apic_format.load(Ordering::Relaxed);
        self.lapic.get_state(now_ns(), out, format)
    }

    /// `KVM_SET_LAPIC` (upstream `kvm_apic_set_state`): `EINVAL` for an x2APIC ID other than
    /// the vCPU id with `KVM_X2APIC_API_USE_32BIT_IDS`.
    pub(crate) fn set_state(&mut self, regs: &[u8; lapic::REG_SIZE]) -> Result {
        let format = self.chip.x2apic_format.load(Ordering::Relaxed);
        let e = self.lapic.set_state(regs, now_ns(), format).ok_or(EINVAL)?;
        self.apply(e);
        Ok(())
    }

    /// RDMSR of an x2APIC register MSR (upstream `kvm_x2apic_msr_read`); `None`: #GP.
    pub(crate) fn x2apic_msr_read(&self, msr: u32) -> Option<u64> {
        self.lapic.x2apic_msr_read(msr, now_ns())
    }

    /// WRMSR of an x2APIC register MSR (upstream `kvm_x2apic_msr_write`); `false`: #GP.
    pub(crate) fn x2apic_msr_write(&mut self, msr: u32, data: u64) -> bool {
        let Some(e) = self.lapic.x2apic_msr_write(msr, data, now_ns()) else { return false };
        self.apply(e);
        true
    }

    /// `IA32_APIC_BASE` write (already validated).
    pub(crate) fn set_base(&mut self, v: u64) {
        let e = self.lapic.set_base(v);
        self.apply(e);
    }
}

impl Drop for VcpuApic {
    fn drop(&mut self) {
        self.posted.kick.timer_cancel();
        let mut t = self.chip.targets.lock();
        if let Some(i) = t.iter().position(|p| Arc::ptr_eq(p, &self.posted)) {
            // Not the last reference (`self.posted` is another), so nothing is freed under
            // the spinlock.
            let _ = crate::memslot::SlotVec::remove(&mut *t, i);
        }
    }
}

/* SPDX-License-Identifier: GPL-2.0 */
/*
 * C helpers of rkvm: static inline functions and macros of the kernel that Rust cannot call
 * directly, wrapped as real functions, and the module parameters (declared with the kernel's
 * module_param machinery, which 6.12's `module!` macro does not offer).
 */
#ifndef RKVM_HELPERS_H
#define RKVM_HELPERS_H

#include <linux/types.h>

struct mm_struct;
struct page;
struct vm_area_struct;

/* Module parameters (see helpers.c for their documentation). */
const char *rkvm_param_backend(void);
const char *rkvm_param_devname(void);
int rkvm_param_pt_mode(void);

/* current->mm, and the mm_count reference KVM keeps on it (mmgrab/mmdrop). */
struct mm_struct *rkvm_current_mm(void);
void rkvm_mmgrab(struct mm_struct *mm);
void rkvm_mmdrop(struct mm_struct *mm);

/* access_ok() on the current task's address space. */
bool rkvm_access_ok(unsigned long addr, unsigned long size);

/* Page helpers. */
void rkvm_get_page(struct page *page);
void *rkvm_page_address(struct page *page);

unsigned int rkvm_num_online_cpus(void);

/* --- for the VMX backend ---------------------------------------------------------------------- */

/* MSR access that returns -EIO instead of faulting (Bochs lacks some MSRs real CPUs have). */
int rkvm_rdmsr_safe(u32 msr, u64 *val);
int rkvm_wrmsr_safe(u32 msr, u64 val);

/* Control registers of this CPU, and CR4 updates through the kernel's shadow. */
unsigned long rkvm_read_cr0(void);
unsigned long rkvm_read_cr3(void);
unsigned long rkvm_read_cr4(void);
void rkvm_cr4_set_bits(unsigned long mask);
void rkvm_cr4_clear_bits(unsigned long mask);

/* Per-CPU host state the VMCS host area needs (upstream: vmx_set_constant_host_state and
 * vmx_vcpu_load_vmcs). */
unsigned long rkvm_host_gdt_base(void);
unsigned long rkvm_host_idt_base(void);
unsigned long rkvm_host_tss_base(void);
/* The host's entry point for external-interrupt `vector` (its IDT gate), to be called with an
 * interrupt frame (entry.rs); with FRED the interrupt is delivered here and 0 is returned
 * (upstream: handle_external_interrupt_irqoff). */
unsigned long rkvm_host_irq_entry(unsigned int vector);
/* After a VM exit: TR limit and GDT limit were reset by the CPU (upstream: vmx_prepare_switch_to_host). */
void rkvm_restore_host_descriptors(void);

/* Scheduling and interrupt control around guest entry. */
int rkvm_smp_processor_id(void);
unsigned int rkvm_nr_cpu_ids(void);
void rkvm_preempt_disable(void);
void rkvm_preempt_enable(void);
void rkvm_local_irq_disable(void);
void rkvm_local_irq_enable(void);
bool rkvm_need_resched(void);
void rkvm_cond_resched(void);
bool rkvm_signal_pending(void);
/* The host TSC frequency in kHz (guests run at it: rkvm does no TSC scaling). */
unsigned int rkvm_tsc_khz(void);
/* Whether the host's TSC is marked unstable (upstream kvm_check_tsc_unstable). */
bool rkvm_check_tsc_unstable(void);
/* KVM_SET_SIGNAL_MASK: the mask in force during KVM_RUN (upstream: kvm_sigset_activate /
 * kvm_sigset_deactivate; the task's own mask is parked in current->real_blocked). */
void rkvm_sigmask_activate(const u64 *mask);
void rkvm_sigmask_deactivate(void);

/* Run fn(info) on every online CPU and wait. */
void rkvm_on_each_cpu(void (*fn)(void *), void *info);
/* CPU hotplug: online/offline callbacks (returns the dynamic state or -errno). */
int rkvm_cpuhp_setup(int (*online)(unsigned int), int (*offline)(unsigned int));
void rkvm_cpuhp_remove(int state);

/* Physical address of a direct-map kernel address / of a page. */
u64 rkvm_virt_to_phys(void *addr);
u64 rkvm_page_to_phys(struct page *page);
void *rkvm_phys_to_virt(u64 pa);
struct page *rkvm_phys_to_page(u64 pa);

/*
 * The page the current process maps at `hva`, faulted in (for writing if `write`: a COW break
 * first), with a reference (FOLL_GET, as upstream's hva_to_pfn; not a pin): NULL if there is none
 * (no mapping, a PFN map, no write permission). The reference goes with rkvm_put_page.
 */
struct page *rkvm_get_user_page(unsigned long hva, bool write);
void rkvm_put_page(struct page *page);
/* Marks a page dirty, unless it is reserved (upstream kvm_set_page_dirty). Does not sleep. */
void rkvm_set_page_dirty(struct page *page);

/* FPU: save the user's registers so the guest may use them (kernel_fpu_begin/end). */
void rkvm_fpu_begin(void);
void rkvm_fpu_end(void);

/* User-return notifier, one per CPU (upstream: kvm_user_return_msrs). `rkvm_uret_init` sets the
 * callback run on this CPU's next return to user mode once `rkvm_uret_register` armed it there;
 * both arm/disarm run on the CPU concerned with preemption disabled. */
void rkvm_uret_init(void (*cb)(void));
void rkvm_uret_register(void);
void rkvm_uret_unregister(void);
unsigned long rkvm_local_irq_save(void);
void rkvm_local_irq_restore(unsigned long flags);


/* anon_inode_getfd for a file that supports pread (FMODE_PREAD), as upstream's stats fds. */
struct file_operations;
int rkvm_anon_inode_getfd_pread(const char *name, const struct file_operations *fops, void *priv,
				int flags);

/* --- for the in-kernel irqchip (rust/irq/) ------------------------------------------------------ */

/*
 * A vCPU's wake-up point (upstream: the parts of struct kvm_vcpu that kvm_vcpu_kick and
 * kvm_vcpu_block use, plus the LAPIC timer's hrtimer). Opaque to Rust. Anyone may post work to the
 * vCPU and then call rkvm_kick(); the vCPU snapshots rkvm_kick_seq() before it checks for work and
 * sleeps in rkvm_kick_wait() only while the sequence is unchanged, so no kick is lost.
 */
struct rkvm_kick;
struct rkvm_kick *rkvm_kick_alloc(void);
/* Cancels the timer (waiting for a running callback) and frees. */
void rkvm_kick_free(struct rkvm_kick *k);
/* Wakes the vCPU: bumps the sequence, wakes a sleeper, and IPIs its task if it runs elsewhere. */
void rkvm_kick(struct rkvm_kick *k);
unsigned int rkvm_kick_seq(struct rkvm_kick *k);
/* Sleeps (interruptibly) until the sequence differs from `seq`; -EINTR on a signal. */
int rkvm_kick_wait(struct rkvm_kick *k, unsigned int seq);
/* The task in KVM_RUN (the caller) for IPIs, or none. */
void rkvm_kick_set_task(struct rkvm_kick *k, bool running);
/* The LAPIC timer: fires once at absolute CLOCK_MONOTONIC time `ns` (restarting replaces). */
void rkvm_kick_timer_start(struct rkvm_kick *k, u64 ns);
void rkvm_kick_timer_cancel(struct rkvm_kick *k);
/* Whether the timer fired since the last call (and clears the flag). */
bool rkvm_kick_timer_fired(struct rkvm_kick *k);
/* CLOCK_MONOTONIC now, in ns. */
u64 rkvm_ktime_ns(void);

/* --- for ioeventfds and the I/O buses (rust/ioeventfd.rs) ------------------------------------- */

/* An eventfd's context from a file descriptor (a reference, dropped with rkvm_eventfd_ctx_put):
 * 0, or -EBADF (no such fd) or -EINVAL (not an eventfd), as eventfd_ctx_fdget. */
struct eventfd_ctx;
int rkvm_eventfd_ctx_fdget(int fd, struct eventfd_ctx **ctx);
void rkvm_eventfd_ctx_put(struct eventfd_ctx *ctx);
/* Adds 1 to the eventfd's counter and wakes its readers (eventfd_signal; never sleeps). */
void rkvm_eventfd_signal(struct eventfd_ctx *ctx);

/* A sleepable-RCU domain (upstream kvm->srcu): allocated and initialised, or NULL. */
struct srcu_struct;
struct srcu_struct *rkvm_srcu_alloc(void);
/* Frees it; no reader may be left, no grace period pending. */
void rkvm_srcu_free(struct srcu_struct *s);
int rkvm_srcu_read_lock(struct srcu_struct *s);
void rkvm_srcu_read_unlock(struct srcu_struct *s, int idx);
/* Waits until every reader that started before the call has left (synchronize_srcu_expedited). */
void rkvm_synchronize_srcu(struct srcu_struct *s);

bool rkvm_split_lock_detect(void);
bool rkvm_handle_guest_split_lock(unsigned long ip);

/* --- MMU notifier (rust/mmu_notifier.rs) ------------------------------------------------------- */

/*
 * The callbacks of one VM's MMU notifier (upstream kvm_mmu_notifier_ops), called with the `data`
 * given at registration; none may sleep or fail (see mmu_notifier.rs). `start`/`end` are the
 * host range being invalidated, [start, end).
 */
struct rkvm_mn_ops {
	void (*invalidate_start)(void *data, unsigned long start, unsigned long end);
	void (*invalidate_end)(void *data, unsigned long start, unsigned long end);
	void (*release)(void *data);
};
struct rkvm_mmu_notifier;
/* Registers a notifier on current->mm (mmu_notifier_register: takes the mmap lock for writing,
 * so the caller holds none): the notifier, or NULL with *err = -errno. */
struct rkvm_mmu_notifier *rkvm_mmu_notifier_register(const struct rkvm_mn_ops *ops, void *data,
						     int *err);
/* Unregisters (running `release` unless the mm went first), waits until no callback runs any
 * more, and frees the notifier (mmu_notifier_unregister). May sleep. */
void rkvm_mmu_notifier_unregister(struct rkvm_mmu_notifier *n);

#endif

/* kvmclock and steal time */
bool rkvm_clock_read(u64 *tsc, u64 *base_ns, u64 *real_ns);
bool rkvm_sched_info_on(void);
u64 rkvm_current_run_delay(void);
void rkvm_yield(void);

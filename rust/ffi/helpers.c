// SPDX-License-Identifier: GPL-2.0
/*
 * C helpers of rkvm: thin function wrappers over static inlines and macros, and the module
 * parameters. No logic lives here; see helpers.h.
 */
#include <linux/cpumask.h>
#include <linux/mm.h>
#include <linux/moduleparam.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/uaccess.h>

#include "helpers.h"

static char *backend = "vmx";
module_param(backend, charp, 0444);
MODULE_PARM_DESC(backend, "What runs guests: vmx (Intel VT-x, default) or none (every ioctl but KVM_RUN)");

static char *devname = "rkvm";
module_param(devname, charp, 0444);
MODULE_PARM_DESC(devname, "Device name: rkvm (/dev/rkvm, default) or kvm (/dev/kvm, drop-in)");

static int pt_mode;
module_param(pt_mode, int, 0444);
MODULE_PARM_DESC(pt_mode, "Intel PT with backend=vmx: 0 = system (PT hidden from guests, host trace kept running), 1 = host-guest (host RTIT context saved with tracing stopped before each entry, restored after exit)");

int rkvm_param_pt_mode(void)
{
	return pt_mode;
}

const char *rkvm_param_backend(void)
{
	return backend;
}

const char *rkvm_param_devname(void)
{
	return devname;
}

struct mm_struct *rkvm_current_mm(void)
{
	return current->mm;
}

void rkvm_mmgrab(struct mm_struct *mm)
{
	mmgrab(mm);
}

void rkvm_mmdrop(struct mm_struct *mm)
{
	mmdrop(mm);
}

bool rkvm_access_ok(unsigned long addr, unsigned long size)
{
	return access_ok((void __user *)addr, size);
}

void rkvm_get_page(struct page *page)
{
	get_page(page);
}

void *rkvm_page_address(struct page *page)
{
	return page_address(page);
}

unsigned int rkvm_num_online_cpus(void)
{
	return num_online_cpus();
}

/* --- for the VMX backend ---------------------------------------------------------------------- */
#include <linux/cpuhotplug.h>
#include <linux/io.h>
#include <linux/mm.h>
#include <linux/preempt.h>
#include <linux/sched/signal.h>
#include <linux/smp.h>
#include <linux/user-return-notifier.h>
#include <asm/cpu_entry_area.h>
#include <asm/desc.h>
#include <asm/fpu/api.h>
#ifdef CONFIG_X86_FRED
#include <asm/fred.h>
#endif
#include <asm/msr.h>
#include <asm/special_insns.h>
#include <asm/tlbflush.h>
#include <asm/tsc.h>

int rkvm_rdmsr_safe(u32 msr, u64 *val)
{
	return rdmsrl_safe(msr, val);
}

int rkvm_wrmsr_safe(u32 msr, u64 val)
{
	return wrmsrl_safe(msr, val);
}

unsigned long rkvm_read_cr0(void)
{
	return read_cr0();
}

unsigned long rkvm_read_cr3(void)
{
	return __read_cr3();
}

unsigned long rkvm_read_cr4(void)
{
	return __read_cr4();
}

void rkvm_cr4_set_bits(unsigned long mask)
{
	cr4_set_bits(mask);
}

void rkvm_cr4_clear_bits(unsigned long mask)
{
	cr4_clear_bits(mask);
}

unsigned long rkvm_host_gdt_base(void)
{
	return (unsigned long)get_current_gdt_ro();
}

unsigned long rkvm_host_idt_base(void)
{
	struct desc_ptr dt;

	store_idt(&dt);
	return dt.address;
}

unsigned long rkvm_host_irq_entry(unsigned int vector)
{
	struct desc_ptr dt;

#ifdef CONFIG_X86_FRED
	if (cpu_feature_enabled(X86_FEATURE_FRED)) {
		fred_entry_from_kvm(EVENT_TYPE_EXTINT, vector);
		return 0;
	}
#endif
	store_idt(&dt);
	return gate_offset((gate_desc *)dt.address + vector);
}

unsigned long rkvm_host_tss_base(void)
{
	return (unsigned long)&get_cpu_entry_area(smp_processor_id())->tss.x86_tss;
}

void rkvm_restore_host_descriptors(void)
{
	invalidate_tss_limit();
	load_fixmap_gdt(raw_smp_processor_id());
}

int rkvm_smp_processor_id(void)
{
	return smp_processor_id();
}

unsigned int rkvm_nr_cpu_ids(void)
{
	return nr_cpu_ids;
}

void rkvm_preempt_disable(void)
{
	preempt_disable();
}

void rkvm_preempt_enable(void)
{
	preempt_enable();
}

void rkvm_local_irq_disable(void)
{
	local_irq_disable();
}

void rkvm_local_irq_enable(void)
{
	local_irq_enable();
}

bool rkvm_need_resched(void)
{
	return need_resched();
}

void rkvm_cond_resched(void)
{
	cond_resched();
}

unsigned int rkvm_tsc_khz(void)
{
	return tsc_khz;
}

bool rkvm_check_tsc_unstable(void)
{
	return check_tsc_unstable();
}

void rkvm_sigmask_activate(const u64 *mask)
{
	sigset_t set = { .sig = { *mask } };

	sigprocmask(SIG_SETMASK, &set, &current->real_blocked);
}

void rkvm_sigmask_deactivate(void)
{
	sigprocmask(SIG_SETMASK, &current->real_blocked, NULL);
	sigemptyset(&current->real_blocked);
}

bool rkvm_signal_pending(void)
{
	return signal_pending(current);
}

void rkvm_on_each_cpu(void (*fn)(void *), void *info)
{
	on_each_cpu(fn, info, 1);
}

int rkvm_cpuhp_setup(int (*online)(unsigned int), int (*offline)(unsigned int))
{
	return cpuhp_setup_state(CPUHP_AP_ONLINE_DYN, "rkvm:online", online, offline);
}

void rkvm_cpuhp_remove(int state)
{
	cpuhp_remove_state(state);
}

u64 rkvm_virt_to_phys(void *addr)
{
	return __pa(addr);
}

u64 rkvm_page_to_phys(struct page *page)
{
	return page_to_phys(page);
}

void *rkvm_phys_to_virt(u64 pa)
{
	return __va(pa);
}

struct page *rkvm_phys_to_page(u64 pa)
{
	return pfn_to_page(PHYS_PFN(pa));
}

struct page *rkvm_get_user_page(unsigned long hva, bool write)
{
	unsigned int flags = write ? FOLL_WRITE : 0;
	struct page *page;

	/* As upstream's hva_to_pfn: lockless first, then with the mmap lock (faults, userfaultfd). */
	if (get_user_page_fast_only(hva, flags, &page))
		return page;
	if (get_user_pages_unlocked(hva, 1, &page, flags) != 1)
		return NULL;
	return page;
}

void rkvm_put_page(struct page *page)
{
	put_page(page);
}

void rkvm_set_page_dirty(struct page *page)
{
	if (!PageReserved(page))
		SetPageDirty(page);
}

void rkvm_fpu_begin(void)
{
	kernel_fpu_begin();
}

void rkvm_fpu_end(void)
{
	kernel_fpu_end();
}

static void (*rkvm_uret_cb)(void);
static DEFINE_PER_CPU(struct user_return_notifier, rkvm_urn);

static void rkvm_on_user_return(struct user_return_notifier *urn)
{
	rkvm_uret_cb();
}

void rkvm_uret_init(void (*cb)(void))
{
	int cpu;

	rkvm_uret_cb = cb;
	for_each_possible_cpu(cpu)
		per_cpu(rkvm_urn, cpu).on_user_return = rkvm_on_user_return;
}

void rkvm_uret_register(void)
{
	user_return_notifier_register(this_cpu_ptr(&rkvm_urn));
}

void rkvm_uret_unregister(void)
{
	user_return_notifier_unregister(this_cpu_ptr(&rkvm_urn));
}

unsigned long rkvm_local_irq_save(void)
{
	unsigned long flags;

	local_irq_save(flags);
	return flags;
}

void rkvm_local_irq_restore(unsigned long flags)
{
	local_irq_restore(flags);
}

/* --- in-kernel irqchip: the vCPU wake-up point ------------------------------------------------ */

#include <linux/hrtimer.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/rcuwait.h>

struct rkvm_kick {
	struct hrtimer timer;
	/*
	 * The vCPU task sleeping in rkvm_kick_wait (one at most: it holds the vCPU mutex). An
	 * rcuwait, not a wait queue, as upstream's vcpu->wait: the timer callback wakes it from hard
	 * interrupt context, where a wait queue's spinlock_t is not allowed (it sleeps on
	 * PREEMPT_RT; lockdep's "Invalid wait context" with PROVE_RAW_LOCK_NESTING).
	 */
	struct rcuwait wait;
	atomic_t seq;
	atomic_t timer_fired;
	raw_spinlock_t lock;		/* protects task */
	struct task_struct *task;	/* in KVM_RUN; cleared by itself before it returns */
};

void rkvm_kick(struct rkvm_kick *k)
{
	unsigned long flags;

	atomic_inc(&k->seq);
	/* rcuwait_wake_up orders the increment before its load of the sleeper (smp_mb), pairing
	 * with set_current_state's barrier before the sleeper re-reads the sequence. */
	rcuwait_wake_up(&k->wait);
	raw_spin_lock_irqsave(&k->lock, flags);
	/* A task running guest code elsewhere takes a reschedule IPI, i.e. a VM exit (upstream:
	 * kvm_vcpu_kick's smp_send_reschedule). */
	if (k->task)
		kick_process(k->task);
	raw_spin_unlock_irqrestore(&k->lock, flags);
}

static enum hrtimer_restart rkvm_kick_timer_fn(struct hrtimer *t)
{
	struct rkvm_kick *k = container_of(t, struct rkvm_kick, timer);

	atomic_set(&k->timer_fired, 1);
	rkvm_kick(k);
	return HRTIMER_NORESTART;
}

struct rkvm_kick *rkvm_kick_alloc(void)
{
	struct rkvm_kick *k = kzalloc(sizeof(*k), GFP_KERNEL_ACCOUNT);

	if (!k)
		return NULL;
	hrtimer_init(&k->timer, CLOCK_MONOTONIC, HRTIMER_MODE_ABS_HARD);
	k->timer.function = rkvm_kick_timer_fn;
	rcuwait_init(&k->wait);
	raw_spin_lock_init(&k->lock);
	return k;
}

void rkvm_kick_free(struct rkvm_kick *k)
{
	hrtimer_cancel(&k->timer);
	kfree(k);
}

unsigned int rkvm_kick_seq(struct rkvm_kick *k)
{
	return atomic_read(&k->seq);
}

int rkvm_kick_wait(struct rkvm_kick *k, unsigned int seq)
{
	return rcuwait_wait_event(&k->wait, (unsigned int)atomic_read(&k->seq) != seq, TASK_INTERRUPTIBLE);
}

void rkvm_kick_set_task(struct rkvm_kick *k, bool running)
{
	unsigned long flags;

	raw_spin_lock_irqsave(&k->lock, flags);
	k->task = running ? current : NULL;
	raw_spin_unlock_irqrestore(&k->lock, flags);
}

void rkvm_kick_timer_start(struct rkvm_kick *k, u64 ns)
{
	hrtimer_start(&k->timer, ns_to_ktime(ns), HRTIMER_MODE_ABS_HARD);
}

void rkvm_kick_timer_cancel(struct rkvm_kick *k)
{
	hrtimer_cancel(&k->timer);
	atomic_set(&k->timer_fired, 0);
}

bool rkvm_kick_timer_fired(struct rkvm_kick *k)
{
	return atomic_xchg(&k->timer_fired, 0);
}

u64 rkvm_ktime_ns(void)
{
	return ktime_get_ns();
}

/* --- stats fds ---------------------------------------------------------------------------------- */

#include <linux/anon_inodes.h>
#include <linux/file.h>

int rkvm_anon_inode_getfd_pread(const char *name, const struct file_operations *fops, void *priv,
				int flags)
{
	struct file *file;
	int fd = get_unused_fd_flags(flags);

	if (fd < 0)
		return fd;
	file = anon_inode_getfile(name, fops, priv, flags);
	if (IS_ERR(file)) {
		put_unused_fd(fd);
		return PTR_ERR(file);
	}
	/* Upstream kvm_vm_ioctl_get_stats_fd: readers use pread at the header's offsets. */
	file->f_mode |= FMODE_PREAD;
	fd_install(fd, file);
	return fd;
}

/* --- ioeventfd and the I/O buses (rust/ioeventfd.rs) -------------------------------------------- */

#include <linux/eventfd.h>
#include <linux/srcu.h>

int rkvm_eventfd_ctx_fdget(int fd, struct eventfd_ctx **ctx)
{
	struct eventfd_ctx *e = eventfd_ctx_fdget(fd);

	if (IS_ERR(e))
		return PTR_ERR(e);
	*ctx = e;
	return 0;
}

void rkvm_eventfd_ctx_put(struct eventfd_ctx *ctx)
{
	eventfd_ctx_put(ctx);
}

void rkvm_eventfd_signal(struct eventfd_ctx *ctx)
{
	eventfd_signal(ctx);
}

struct srcu_struct *rkvm_srcu_alloc(void)
{
	struct srcu_struct *s = kzalloc(sizeof(*s), GFP_KERNEL_ACCOUNT);

	if (s && init_srcu_struct(s)) {
		kfree(s);
		s = NULL;
	}
	return s;
}

void rkvm_srcu_free(struct srcu_struct *s)
{
	cleanup_srcu_struct(s);
	kfree(s);
}

int rkvm_srcu_read_lock(struct srcu_struct *s)
{
	return srcu_read_lock(s);
}

void rkvm_srcu_read_unlock(struct srcu_struct *s, int idx)
{
	srcu_read_unlock(s, idx);
}

void rkvm_synchronize_srcu(struct srcu_struct *s)
{
	synchronize_srcu_expedited(s);
}

/* #AC exits (upstream vmx_guest_inject_ac / handle_exception_nmi) */
#include <asm/cpu.h>
#include <asm/cpufeature.h>

bool rkvm_split_lock_detect(void)
{
	return boot_cpu_has(X86_FEATURE_SPLIT_LOCK_DETECT);
}

bool rkvm_handle_guest_split_lock(unsigned long ip)
{
	return handle_guest_split_lock(ip);
}

/* --- MMU notifier (rust/mmu_notifier.rs) ------------------------------------------------------- */
#include <linux/mmu_notifier.h>
#include <linux/slab.h>

#ifndef CONFIG_MMU_NOTIFIER
#error "rkvm needs CONFIG_MMU_NOTIFIER (guest memory follows the VMM's mappings through it)"
#endif

struct rkvm_mmu_notifier {
	struct mmu_notifier mn;
	const struct rkvm_mn_ops *ops;
	void *data;
};

static struct rkvm_mmu_notifier *rkvm_mn(struct mmu_notifier *mn)
{
	return container_of(mn, struct rkvm_mmu_notifier, mn);
}

/*
 * Always 0, blockable or not: the callback never sleeps (spinlocks and a synchronous IPI), and a
 * notifier that has invalidate_range_end may not fail its start (mn_hlist_invalidate_range_start
 * WARNs), exactly as upstream's kvm_mmu_notifier_invalidate_range_start.
 */
static int rkvm_mn_invalidate_range_start(struct mmu_notifier *mn,
					  const struct mmu_notifier_range *range)
{
	struct rkvm_mmu_notifier *n = rkvm_mn(mn);

	n->ops->invalidate_start(n->data, range->start, range->end);
	return 0;
}

static void rkvm_mn_invalidate_range_end(struct mmu_notifier *mn,
					 const struct mmu_notifier_range *range)
{
	struct rkvm_mmu_notifier *n = rkvm_mn(mn);

	n->ops->invalidate_end(n->data, range->start, range->end);
}

static void rkvm_mn_release(struct mmu_notifier *mn, struct mm_struct *mm)
{
	struct rkvm_mmu_notifier *n = rkvm_mn(mn);

	n->ops->release(n->data);
}

static const struct mmu_notifier_ops rkvm_mmu_notifier_ops = {
	.invalidate_range_start = rkvm_mn_invalidate_range_start,
	.invalidate_range_end = rkvm_mn_invalidate_range_end,
	.release = rkvm_mn_release,
};

struct rkvm_mmu_notifier *rkvm_mmu_notifier_register(const struct rkvm_mn_ops *ops, void *data,
						     int *err)
{
	struct rkvm_mmu_notifier *n = kzalloc(sizeof(*n), GFP_KERNEL_ACCOUNT);

	if (!n) {
		*err = -ENOMEM;
		return NULL;
	}
	n->mn.ops = &rkvm_mmu_notifier_ops;
	n->ops = ops;
	n->data = data;
	*err = mmu_notifier_register(&n->mn, current->mm);
	if (*err) {
		kfree(n);
		return NULL;
	}
	return n;
}

void rkvm_mmu_notifier_unregister(struct rkvm_mmu_notifier *n)
{
	/* n->mn.mm holds the mm_count reference mmu_notifier_register took. */
	mmu_notifier_unregister(&n->mn, n->mn.mm);
	kfree(n);
}

/* --- kvmclock and steal time (rust/pv.rs) ----------------------------------------------------- */

#include <linux/sched/stat.h>
#include <linux/timekeeping.h>

/*
 * One reading of the host clocks at a single instant (ktime_get_snapshot): the clocksource's
 * counter, the kvmclock base (the raw monotonic clock plus the time spent suspended, upstream's
 * get_kvmclock_base_ns) and CLOCK_REALTIME. Returns whether the counter is the TSC; when it is
 * not, *tsc is an RDTSC taken right after.
 */
bool rkvm_clock_read(u64 *tsc, u64 *base_ns, u64 *real_ns)
{
	struct system_time_snapshot snap;
	bool is_tsc;

	ktime_get_snapshot(&snap);
	is_tsc = snap.cs_id == CSID_X86_TSC;
	*tsc = is_tsc ? snap.cycles : rdtsc();
	*base_ns = ktime_to_ns(ktime_add(snap.raw, ktime_mono_to_any(0, TK_OFFS_BOOT)));
	*real_ns = ktime_to_ns(snap.real);
	return is_tsc;
}

/* Whether the scheduler accounts run delay (upstream's sched_info_on() for steal time). */
bool rkvm_sched_info_on(void)
{
	return sched_info_on();
}

/* The current task's time spent waiting on a run queue, in ns (sched_info.run_delay). */
u64 rkvm_current_run_delay(void)
{
#ifdef CONFIG_SCHED_INFO
	return current->sched_info.run_delay;
#else
	return 0;
#endif
}

/* A voluntary yield of the CPU (KVM_HC_SCHED_YIELD's fallback). */
void rkvm_yield(void)
{
	yield();
}

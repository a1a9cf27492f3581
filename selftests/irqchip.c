// SPDX-License-Identifier: GPL-2.0
/*
 * The in-kernel irqchip (KVM_CREATE_IRQCHIP): local APICs, IOAPIC and 8259 PICs emulated in the
 * kernel, HLT handled there.
 *
 * API: KVM_CAP_IRQCHIP, KVM_CREATE_IRQCHIP (EEXIST twice, EINVAL after a vCPU), the errnos of
 * KVM_GET/SET_LAPIC, KVM_GET/SET_IRQCHIP, KVM_IRQ_LINE, KVM_INTERRUPT and KVM_SET_MP_STATE with
 * and without an irqchip; the reset images of the LAPIC, PICs and IOAPIC and their round trips;
 * an AP starting KVM_MP_STATE_UNINITIALIZED (KVM_RUN blocks until made runnable);
 * KVM_SET_BOOT_CPU_ID (the boot CPU's LAPIC and the PIC wired to it) and
 * KVM_CAP_X86_APIC_BUS_CYCLES_NS (the LAPIC timer's bus cycle).
 * Guests (selftests/guests/irqchip.S, 32-bit protected mode, loaded from the directory of this
 * program): the LAPIC timer one-shot and periodic, HLT with IF=0 blocking until a signal,
 * KVM_IRQ_LINE through the IOAPIC (edge, and level re-delivered after each EOI while the line
 * is high) and through the PIC (ExtINT via LVT0), a fixed IPI waking a halted vCPU 1, and TPR
 * holding back an interrupt of a class not above it; x2APIC mode: the ID, a self IPI and an IPI
 * to vCPU 1 through MSRs, and KVM_GET/SET_LAPIC's x2APIC format. No guest HLT reaches userspace
 * (KVM_EXIT_HLT fails a case); every KVM_RUN runs under a watchdog signal, so a missing
 * interrupt gives "not ok" (EINTR) rather than a hang (and a KVM_RUN deaf to signals, a
 * "Bail out!" and exit status 1).
 *
 * Upstream references (arch/x86/kvm/): kvm_arch_vm_ioctl's KVM_CREATE_IRQCHIP,
 * KVM_GET/SET_IRQCHIP, kvm_vm_ioctl_{get,set}_irqchip, kvm_vm_ioctl_irq_line (x86.c), KVM_IRQ_LINE
 * in kvm_vm_ioctl (virt/kvm/kvm_main.c), kvm_arch_vcpu_ioctl's KVM_GET/SET_LAPIC and
 * kvm_vcpu_ioctl_interrupt, kvm_arch_vcpu_create's mp_state, kvm_arch_vcpu_ioctl_set_mpstate
 * (x86.c); kvm_lapic_reset, kvm_apic_set_version, kvm_apic_get_state / kvm_apic_set_state,
 * apic_get_tmcct, kvm_apic_accept_pic_intr, kvm_apic_set_base, kvm_x2apic_msr_read/write,
 * kvm_x2apic_icr_write, kvm_apic_state_fixup (lapic.c); KVM_CAP_X2APIC_API in
 * kvm_vm_ioctl_enable_cap (x86.c); kvm_ioapic_reset, ioapic_read_indirect,
 * kvm_ioapic_update_eoi_one (ioapic.c); kvm_pic_init, pic_ioport_write, kvm_pic_read_irq
 * (i8259.c); kvm_setup_default_irq_routing (irq_comm.c); KVM_SET_BOOT_CPU_ID and
 * KVM_CAP_X86_APIC_BUS_CYCLES_NS in kvm_arch_vm_ioctl / kvm_vm_ioctl_enable_cap (x86.c),
 * tmict_to_ns / apic_get_tmcct (lapic.c).
 */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <time.h>
#include "rkvm_util.h"

/* Local APIC register offsets (SDM vol. 3, table 11-1). */
#define APIC_ID		0x20
#define APIC_LVR	0x30
#define APIC_TPR	0x80
#define APIC_PPR	0xa0
#define APIC_LDR	0xd0
#define APIC_DFR	0xe0
#define APIC_SVR	0xf0
#define APIC_ISR	0x100
#define APIC_TMR	0x180
#define APIC_IRR	0x200
#define APIC_ESR	0x280
#define APIC_LVTCMCI	0x2f0
#define APIC_ICR	0x300
#define APIC_ICR2	0x310
#define APIC_LVTT	0x320
#define APIC_LVTTHMR	0x330
#define APIC_LVTPC	0x340
#define APIC_LVT0	0x350
#define APIC_LVT1	0x360
#define APIC_LVTERR	0x370
#define APIC_TMICT	0x380
#define APIC_TMCCT	0x390
#define APIC_TDCR	0x3e0
#define LVT_MASKED	0x10000

#define MSR_IA32_APICBASE	0x1b
/* x2APIC registers: MSR 0x800 + offset / 16. */
#define X2APIC_MSR(off)		(0x800 + ((off) >> 4))

/* Guest layout: RAM at GPA 0 (the guest binary at 0), the GDT, the guest's IDT, two stacks. */
#define MEM_SIZE	0x200000
#define GDT_GPA		0x100000
#define STACK0		0x180000
#define STACK1		0x170000
#define GUEST_BIN	"guest-irqchip.bin"

/* Program numbers: the table at the start of guests/irqchip.S. */
enum program {
	P_HALT_IF0, P_TIMER_ONESHOT, P_TIMER_PERIODIC, P_IOAPIC_EDGE, P_WAIT, P_PIC,
	P_IPI_SENDER, P_TPR, P_X2APIC_WAIT, P_X2APIC_SENDER, P_APIC_MODES,
};

static long now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec t = { ms / 1000, (ms % 1000) * 1000000 };

	while (nanosleep(&t, &t) && errno == EINTR)
		;
}

/*
 * Watchdogs: KVM_RUN must end. Each run is armed with a per-thread timer (SIGALRM, no
 * SA_RESTART) that repeats every 100 ms after its first expiry, so a signal that lands just
 * before the ioctl is not lost: a vCPU waiting for an interrupt that never comes ends with
 * EINTR. Should KVM_RUN ignore signals, a monitor thread bails out (exit status 1) GRACE_MS
 * after the deadline instead of hanging the VM.
 */
#define TIMEOUT_MS	10000
#define GRACE_MS	20000
#define WD_SLOTS	8

static void on_alarm(int sig)
{
	(void)sig;
}

static __thread timer_t wd_timer;
static __thread int wd_made, wd_slot;
static long wd_deadline[WD_SLOTS]; /* CLOCK_MONOTONIC ms by which a run must have ended; 0: none */
static int wd_slots_used;

static void *wd_monitor(void *arg)
{
	static const char msg[] =
		"Bail out! KVM_RUN did not end on its watchdog signal (20 s past the deadline)\n";

	(void)arg;
	for (;;) {
		sleep_ms(500);
		for (int i = 0; i < WD_SLOTS; i++) {
			long d = __atomic_load_n(&wd_deadline[i], __ATOMIC_RELAXED);

			if (d && now_ms() > d) {
				if (write(1, msg, sizeof(msg) - 1) < 0)
					_exit(2);
				_exit(1);
			}
		}
	}
	return NULL;
}

static void wd_init(void)
{
	struct sigaction sa = { .sa_handler = on_alarm };
	pthread_t t;

	sigaction(SIGALRM, &sa, NULL);
	if (!pthread_create(&t, NULL, wd_monitor, NULL))
		pthread_detach(t);
}

static int wd_arm(long ms)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	struct itimerspec it = {
		.it_value = { ms / 1000, (ms % 1000) * 1000000 },
		.it_interval = { 0, 100 * 1000000 },
	};

	pthread_once(&once, wd_init);
	if (!wd_made) {
		struct sigevent sev = { .sigev_notify = SIGEV_THREAD_ID, .sigev_signo = SIGALRM };

		sev._sigev_un._tid = gettid();
		if (timer_create(CLOCK_MONOTONIC, &sev, &wd_timer))
			return -1;
		wd_made = 1;
		wd_slot = __atomic_fetch_add(&wd_slots_used, 1, __ATOMIC_RELAXED) % WD_SLOTS;
	}
	__atomic_store_n(&wd_deadline[wd_slot], now_ms() + ms + GRACE_MS, __ATOMIC_RELAXED);
	return timer_settime(wd_timer, 0, &it, NULL);
}

static void wd_disarm(void)
{
	struct itimerspec it = { 0 };

	if (wd_made) {
		timer_settime(wd_timer, 0, &it, NULL);
		__atomic_store_n(&wd_deadline[wd_slot], 0, __ATOMIC_RELAXED);
	}
}

/* At the end of a thread that ran vCPUs. */
static void wd_free(void)
{
	wd_disarm();
	if (wd_made)
		timer_delete(wd_timer);
	wd_made = 0;
}

/* A VM with (optionally) an in-kernel irqchip, n vCPUs, the guest binary and a flat GDT. */
struct icvm {
	int kvm, vm, n;
	int vcpu[2];
	struct kvm_run *run[2];
	long run_size;
	unsigned char *mem;
};

static int load_guest(unsigned char *mem)
{
	return load_guest_bin(GUEST_BIN, mem, GDT_GPA) > 0 ? 0 : -1;
}

static __u64 gdt_entry(__u32 limit, __u8 access, __u8 flags)
{
	return (limit & 0xffff) | (__u64)access << 40 | (__u64)((limit >> 16) & 0xf) << 48 |
	       (__u64)flags << 52;
}

static struct kvm_segment flat_seg(__u16 sel, __u8 type, __u8 s, __u8 db, __u8 g, __u32 limit)
{
	return (struct kvm_segment){ .limit = limit, .selector = sel, .type = type, .present = 1,
				     .db = db, .s = s, .g = g };
}

/*
 * The supported CPUID as the vCPU's, as VMMs do. Upstream needs it for the LAPIC timer's
 * periodic mode: without a CPUID leaf 1 the LVTT timer-mode bits are not writable
 * (lapic_timer.timer_mode_mask stays 0, set in kvm_vcpu_after_set_cpuid), so 0x20041 would read
 * back as a one-shot 0x41.
 */
static int set_cpuid(struct icvm *v, int i)
{
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + 256 * sizeof(struct kvm_cpuid_entry2));
	int r;

	c->nent = 256;
	r = ioctl(v->kvm, KVM_GET_SUPPORTED_CPUID, c);
	if (!r)
		r = ioctl(v->vcpu[i], KVM_SET_CPUID2, c);
	free(c);
	return r;
}

/* vCPU i in 32-bit flat protected mode at 0 with EAX = program, ESP = stack, CPUID set. */
static int vcpu_prog(struct icvm *v, int i, enum program prog, __u32 stack)
{
	struct kvm_regs regs = { .rax = prog, .rsp = stack, .rip = 0, .rflags = 2 };
	struct kvm_sregs s;
	struct kvm_segment data = flat_seg(0x10, 3, 1, 1, 1, 0xffffffff);

	if (set_cpuid(v, i) || ioctl(v->vcpu[i], KVM_GET_SREGS, &s))
		return -1;
	s.gdt.base = GDT_GPA;
	s.gdt.limit = 4 * 8 - 1;
	s.cs = flat_seg(0x08, 0xb, 1, 1, 1, 0xffffffff);
	s.ds = s.es = s.fs = s.gs = s.ss = data;
	s.tr = flat_seg(0x18, 0xb, 0, 0, 0, 0x67);
	s.cr0 = 0x11; /* PE, ET */
	if (ioctl(v->vcpu[i], KVM_SET_SREGS, &s))
		return -1;
	return ioctl(v->vcpu[i], KVM_SET_REGS, &regs);
}

/* As icvm_create, with KVM_SET_BOOT_CPU_ID(boot) before the vCPUs unless boot is -1. */
static int icvm_create_boot(struct icvm *v, int n, int irqchip, long boot);

static int icvm_create(struct icvm *v, int n, int irqchip)
{
	return icvm_create_boot(v, n, irqchip, -1);
}

static int icvm_create_boot(struct icvm *v, int n, int irqchip, long boot)
{
	struct kvm_userspace_memory_region r = { .slot = 0, .memory_size = MEM_SIZE };
	__u64 *gdt;

	memset(v, 0, sizeof(*v));
	v->vcpu[0] = v->vcpu[1] = -1;
	v->n = n;
	v->kvm = open_dev();
	v->vm = create_vm(v->kvm);
	v->run_size = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	v->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (v->vm < 0 || v->mem == MAP_FAILED || load_guest(v->mem))
		return -1;
	gdt = (__u64 *)(v->mem + GDT_GPA);
	gdt[0] = 0;
	gdt[1] = gdt_entry(0xfffff, 0x9b, 0xc); /* 0x08: code, 32-bit, 4 KiB granularity */
	gdt[2] = gdt_entry(0xfffff, 0x93, 0xc); /* 0x10: data */
	gdt[3] = gdt_entry(0x67, 0x8b, 0);	/* 0x18: busy TSS */
	r.userspace_addr = (__u64)v->mem;
	if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &r))
		return -1;
	if (irqchip && ioctl(v->vm, KVM_CREATE_IRQCHIP, 0))
		return -1;
	if (boot >= 0 && ioctl(v->vm, KVM_SET_BOOT_CPU_ID, boot))
		return -1;
	for (int i = 0; i < n; i++) {
		v->vcpu[i] = ioctl(v->vm, KVM_CREATE_VCPU, i);
		if (v->vcpu[i] < 0)
			return -1;
		v->run[i] = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED,
				 v->vcpu[i], 0);
		if (v->run[i] == MAP_FAILED)
			return -1;
	}
	return 0;
}

static void icvm_free(struct icvm *v)
{
	for (int i = 0; i < v->n; i++) {
		if (v->run[i] && v->run[i] != MAP_FAILED)
			munmap(v->run[i], v->run_size);
		if (v->vcpu[i] >= 0)
			close(v->vcpu[i]);
	}
	if (v->mem && v->mem != MAP_FAILED)
		munmap(v->mem, MEM_SIZE);
	close(v->vm);
	close(v->kvm);
}

/* A program's address: the guest starts with `jmp *programs(,%eax,4)` (ff 24 85 disp32). */
static __u32 prog_addr(struct icvm *v, enum program prog)
{
	return *(__u32 *)(v->mem + *(__u32 *)(v->mem + 3) + 4 * prog);
}

/* One guest VM with an irqchip and vCPU 0 running `prog`. */
static int prog_vm(struct icvm *v, enum program prog)
{
	if (icvm_create(v, 1, 1))
		return -1;
	return vcpu_prog(v, 0, prog, STACK0);
}

/* A step a case cannot go on without: if it (or anything before it) failed, free the VM and end
 * the case rather than wait out watchdogs for nothing. */
#define REQUIRE(cond, v) do {							\
	CHECK(cond);								\
	if (ktap_failed_case) {							\
		icvm_free(v);							\
		return;								\
	}									\
} while (0)

/* One KVM_RUN of vCPU i under a watchdog of ms; returns the ioctl's result (errno kept). */
static int run_timed(struct icvm *v, int i, long ms, long *elapsed)
{
	long t0 = now_ms();
	int r, e;

	if (wd_arm(ms))
		return -1;
	r = ioctl(v->vcpu[i], KVM_RUN, 0);
	e = errno;
	wd_disarm();
	if (elapsed)
		*elapsed = now_ms() - t0;
	errno = e;
	return r;
}

/* Describes an unexpected end of KVM_RUN (r, errno) into buf. */
static void describe_exit(struct icvm *v, int i, int r, int e, char *buf, size_t len)
{
	struct kvm_run *run = v->run[i];

	if (r)
		snprintf(buf, len, "KVM_RUN: %s%s", strerror(e),
			 e == EINTR ? " (watchdog: the guest waited for an event that never came)" : "");
	else if (run->exit_reason == KVM_EXIT_HLT)
		snprintf(buf, len, "KVM_EXIT_HLT: HLT went to userspace, not handled in the kernel");
	else if (run->exit_reason == KVM_EXIT_IO && run->io.port == 0xee)
		snprintf(buf, len, "the guest took unexpected vector 0x%x",
			 *(__u32 *)((char *)run + run->io.data_offset));
	else if (run->exit_reason == KVM_EXIT_IO)
		snprintf(buf, len, "KVM_EXIT_IO %s port 0x%x size %u",
			 run->io.direction ? "out" : "in", run->io.port, run->io.size);
	else
		snprintf(buf, len, "exit reason %u", run->exit_reason);
}

/* Value of the OUT the vCPU stopped at. */
static __u32 out_data(struct kvm_run *run)
{
	char *p = (char *)run + run->io.data_offset;

	return run->io.size == 1 ? *(__u8 *)p : run->io.size == 2 ? *(__u16 *)p : *(__u32 *)p;
}

/*
 * Runs vCPU i to its next exit, which must be an OUT to port; *data gets its value. Prints why
 * not (with the test's line) and returns -1 otherwise. Safe from any thread (no CHECK state).
 */
static int run_to_port_at(struct icvm *v, int i, int port, __u32 *data, long *elapsed, int line)
{
	char why[160];
	int r = run_timed(v, i, TIMEOUT_MS, elapsed), e = errno;

	if (!r && v->run[i]->exit_reason == KVM_EXIT_IO && v->run[i]->io.port == port &&
	    v->run[i]->io.direction == KVM_EXIT_IO_OUT) {
		if (data)
			*data = out_data(v->run[i]);
		return 0;
	}
	describe_exit(v, i, r, e, why, sizeof(why));
	printf("# line %d: vCPU %d: wanted an OUT to port 0x%x, got %s\n", line, i, port, why);
	return -1;
}
#define run_to_port(v, i, port, data) run_to_port_at(v, i, port, data, NULL, __LINE__)

/*
 * Runs vCPU i for ms: the guest must stay blocked (halted in the kernel) until the watchdog's
 * signal ends KVM_RUN with EINTR and KVM_EXIT_INTR.
 */
static int run_blocks_at(struct icvm *v, int i, long ms, int line)
{
	long elapsed;
	char why[160];
	int r = run_timed(v, i, ms, &elapsed), e = errno;

	if (r == -1 && e == EINTR && v->run[i]->exit_reason == KVM_EXIT_INTR && elapsed >= ms - 10)
		return 0;
	if (r == -1 && e == EINTR)
		snprintf(why, sizeof(why), "EINTR with exit reason %u after %ld ms",
			 v->run[i]->exit_reason, elapsed);
	else
		describe_exit(v, i, r, e, why, sizeof(why));
	printf("# line %d: vCPU %d: wanted to stay blocked for %ld ms, got %s\n", line, i, ms, why);
	return -1;
}
#define run_blocks(v, i, ms) run_blocks_at(v, i, ms, __LINE__)

static int mp_state(int vcpu)
{
	struct kvm_mp_state mp = { .mp_state = 0xff };

	if (ioctl(vcpu, KVM_GET_MP_STATE, &mp))
		return -1;
	return mp.mp_state;
}

static int set_mp_state(int vcpu, __u32 state)
{
	struct kvm_mp_state mp = { .mp_state = state };

	return ioctl(vcpu, KVM_SET_MP_STATE, &mp);
}

static __u32 reg(const struct kvm_lapic_state *l, int off)
{
	return *(const __u32 *)(l->regs + off);
}

static void set_reg(struct kvm_lapic_state *l, int off, __u32 val)
{
	*(__u32 *)(l->regs + off) = val;
}

/* Whether vector vec is set in the 256-bit LAPIC register array at base (IRR/ISR/TMR). */
static int vec_bit(const struct kvm_lapic_state *l, int base, int vec)
{
	return (reg(l, base + (vec / 32) * 0x10) >> (vec % 32)) & 1;
}

static int irq_line(int vm, __u32 gsi, __u32 level)
{
	struct kvm_irq_level l = { .irq = gsi, .level = level };

	return ioctl(vm, KVM_IRQ_LINE, &l);
}

static int get_chip(int vm, __u32 id, struct kvm_irqchip *c)
{
	memset(c, 0, sizeof(*c));
	c->chip_id = id;
	return ioctl(vm, KVM_GET_IRQCHIP, c);
}

static __u64 msr(int vcpu, __u32 index)
{
	struct { struct kvm_msrs h; struct kvm_msr_entry e; } m = { { .nmsrs = 1 }, { .index = index } };

	return ioctl(vcpu, KVM_GET_MSRS, &m) == 1 ? m.e.data : ~0ull;
}

/* A thread that raises (and, for an edge, lowers) a GSI after a delay, while a vCPU waits. */
struct pulse {
	int vm, gsi, delay_ms, lower, rc;
	pthread_t thread;
};

static void *pulse_thread(void *arg)
{
	struct pulse *p = arg;

	sleep_ms(p->delay_ms);
	p->rc = irq_line(p->vm, p->gsi, 1);
	if (p->lower && !p->rc)
		p->rc = irq_line(p->vm, p->gsi, 0);
	return NULL;
}

static int pulse_start(struct pulse *p, int vm, int gsi, int delay_ms, int lower)
{
	*p = (struct pulse){ .vm = vm, .gsi = gsi, .delay_ms = delay_ms, .lower = lower, .rc = -1 };
	return pthread_create(&p->thread, NULL, pulse_thread, p);
}

TEST(api_errors)
{
	int kvm = open_dev(), vm = create_vm(kvm), vm2 = create_vm(kvm), vcpu, vcpu1, vcpu2;
	struct kvm_irqchip chip = { .chip_id = KVM_IRQCHIP_IOAPIC };
	struct kvm_lapic_state lapic;
	struct kvm_interrupt intr = { .irq = 0x20 };

	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_IRQCHIP) > 0);
	CHECK(ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_IRQCHIP) > 0);

	/* Without an irqchip (vm): LAPIC ioctls EINVAL (checked before the pointer), IRQCHIP
	 * ioctls ENXIO (after copying the argument in: a bad pointer is EFAULT first), the line
	 * ENXIO, and the halted mp_state needs an in-kernel LAPIC. */
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	vcpu1 = ioctl(vm, KVM_CREATE_VCPU, 1);
	CHECK(vcpu >= 0 && vcpu1 >= 0);
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_GET_LAPIC, &lapic), EINVAL, "no in-kernel irqchip");
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_LAPIC, &lapic), EINVAL, "no in-kernel irqchip");
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_GET_LAPIC, (void *)8), EINVAL,
		    "no in-kernel irqchip, unmapped pointer (irqchip checked first)");
	CHECK_ERRNO_WHY(ioctl(vm, KVM_GET_IRQCHIP, &chip), ENXIO, "no in-kernel irqchip");
	CHECK_ERRNO_WHY(ioctl(vm, KVM_SET_IRQCHIP, &chip), ENXIO, "no in-kernel irqchip");
	CHECK_ERRNO_WHY(ioctl(vm, KVM_GET_IRQCHIP, (void *)8), EFAULT,
		    "no in-kernel irqchip, unmapped pointer (copied in first)");
	CHECK_ERRNO_WHY(irq_line(vm, 5, 1), ENXIO, "no in-kernel irqchip");
	CHECK_ERRNO_WHY(ioctl(vm, KVM_IRQ_LINE, (void *)8), EFAULT, "unmapped pointer (8)");
	CHECK_ERRNO_WHY(set_mp_state(vcpu, KVM_MP_STATE_HALTED), EINVAL,
		    "KVM_MP_STATE_HALTED without an in-kernel irqchip");
	/* Every vCPU starts runnable without an in-kernel LAPIC. */
	CHECK(mp_state(vcpu) == KVM_MP_STATE_RUNNABLE && mp_state(vcpu1) == KVM_MP_STATE_RUNNABLE);
	/* Too late once a vCPU exists. */
	CHECK_ERRNO_WHY(ioctl(vm, KVM_CREATE_IRQCHIP, 0), EINVAL, "after a vCPU was created");
	CHECK_ERRNO_WHY(ioctl(vm, KVM_GET_IRQCHIP, &chip), ENXIO,
		    "no in-kernel irqchip (after a refused KVM_CREATE_IRQCHIP)");

	/* With one (vm2): once only. */
	CHECK(ioctl(vm2, KVM_CREATE_IRQCHIP, 0) == 0);
	CHECK_ERRNO_WHY(ioctl(vm2, KVM_CREATE_IRQCHIP, 0), EEXIST, "irqchip already created");
	vcpu2 = ioctl(vm2, KVM_CREATE_VCPU, 0);
	CHECK(vcpu2 >= 0);
	CHECK_ERRNO_WHY(ioctl(vm2, KVM_CREATE_IRQCHIP, 0), EEXIST,
		    "irqchip already created, vCPU exists");
	CHECK(ioctl(vm2, KVM_GET_IRQCHIP, &chip) == 0);
	chip.chip_id = 3;
	CHECK_ERRNO_WHY(ioctl(vm2, KVM_GET_IRQCHIP, &chip), EINVAL, "chip_id 3");
	CHECK_ERRNO_WHY(ioctl(vm2, KVM_SET_IRQCHIP, &chip), EINVAL, "chip_id 3");
	chip.chip_id = 0x80000000u;
	CHECK_ERRNO_WHY(ioctl(vm2, KVM_GET_IRQCHIP, &chip), EINVAL, "chip_id 0x80000000");
	CHECK_ERRNO_WHY(ioctl(vm2, KVM_GET_IRQCHIP, (void *)8), EFAULT, "unmapped pointer (8)");
	CHECK_ERRNO_WHY(ioctl(vm2, KVM_SET_IRQCHIP, (void *)8), EFAULT, "unmapped pointer (8)");
	CHECK_ERRNO_WHY(ioctl(vcpu2, KVM_GET_LAPIC, (void *)8), EFAULT, "unmapped pointer (8)");
	CHECK_ERRNO_WHY(ioctl(vcpu2, KVM_SET_LAPIC, (void *)8), EFAULT, "unmapped pointer (8)");
	CHECK_ERRNO_WHY(ioctl(vm2, KVM_IRQ_LINE, (void *)8), EFAULT, "unmapped pointer (8)");
	CHECK(irq_line(vm2, 5, 1) == 0 && irq_line(vm2, 5, 0) == 0);
	/* A GSI with no route is not an error: KVM_IRQ_LINE returns 0 (the status says -1). */
	CHECK(irq_line(vm2, 1000, 1) == 0);
	/* KVM_INTERRUPT is for a userspace PIC only: ENXIO with the in-kernel one (a vector
	 * past 255 is EINVAL first, a bad pointer EFAULT). */
	CHECK_ERRNO_WHY(ioctl(vcpu2, KVM_INTERRUPT, &intr), ENXIO,
		    "in-kernel irqchip (KVM_INTERRUPT is for a userspace PIC)");
	intr.irq = 256;
	CHECK_ERRNO_WHY(ioctl(vcpu2, KVM_INTERRUPT, &intr), EINVAL,
		    "vector 256 with the in-kernel irqchip (checked before ENXIO)");
	CHECK_ERRNO_WHY(ioctl(vcpu2, KVM_INTERRUPT, (void *)8), EFAULT, "unmapped pointer (8)");
	/* mp_state: halted is accepted with the in-kernel LAPIC, an unknown state is not. */
	CHECK(set_mp_state(vcpu2, KVM_MP_STATE_HALTED) == 0);
	CHECK(mp_state(vcpu2) == KVM_MP_STATE_HALTED);
	CHECK_ERRNO_WHY(set_mp_state(vcpu2, 100), EINVAL, "unknown mp_state 100");
	CHECK(set_mp_state(vcpu2, KVM_MP_STATE_RUNNABLE) == 0);
	CHECK(mp_state(vcpu2) == KVM_MP_STATE_RUNNABLE);
	close(vcpu2);
	close(vcpu1);
	close(vcpu);
	close(vm2);
	close(vm);
	close(kvm);
}

/*
 * The LAPIC at RESET (kvm_lapic_reset): ID = vCPU id << 24, version 0x14 with 6 LVT entries
 * (max LVT 5; 6 when MCG_CAP has CMCI), every LVT masked except the BSP's LINT0, which is ExtINT
 * (KVM_X86_QUIRK_LINT0_REENABLED, on by default), SVR 0xff (software-disabled), DFR flat, all
 * else 0; the APIC base MSR enabled at 0xfee00000 with BSP only on vCPU 0.
 */
TEST(lapic_reset_state)
{
	static const int zero[] = { APIC_TPR, APIC_PPR, APIC_LDR, APIC_ESR, APIC_ICR, APIC_ICR2,
				    APIC_TDCR, APIC_TMICT, APIC_TMCCT };
	static const int lvts[] = { APIC_LVTT, APIC_LVTTHMR, APIC_LVTPC, APIC_LVT1, APIC_LVTERR };
	struct kvm_lapic_state l;
	struct icvm v;

	REQUIRE(icvm_create(&v, 2, 1) == 0, &v);
	for (int i = 0; i < 2; i++) {
		__u32 lvr, maxlvt;

		memset(&l, 0x5a, sizeof(l));
		CHECK(ioctl(v.vcpu[i], KVM_GET_LAPIC, &l) == 0);
		CHECK(reg(&l, APIC_ID) == (__u32)i << 24);
		lvr = reg(&l, APIC_LVR);
		maxlvt = (lvr >> 16) & 0xff;
		printf("# vCPU %d: APIC version register 0x%x\n", i, lvr);
		/* No directed EOI (bit 24) with the in-kernel IOAPIC. */
		CHECK((lvr & 0xff) == 0x14 && (maxlvt == 5 || maxlvt == 6) && (lvr >> 24) == 0);
		for (unsigned int j = 0; j < sizeof(lvts) / sizeof(lvts[0]); j++)
			CHECK(reg(&l, lvts[j]) == LVT_MASKED);
		if (maxlvt == 6)
			CHECK(reg(&l, APIC_LVTCMCI) == LVT_MASKED);
		CHECK(reg(&l, APIC_LVT0) == (i == 0 ? 0x700 : LVT_MASKED));
		CHECK(reg(&l, APIC_SVR) == 0xff);
		CHECK(reg(&l, APIC_DFR) == 0xffffffff);
		for (unsigned int j = 0; j < sizeof(zero) / sizeof(zero[0]); j++)
			if (reg(&l, zero[j]) != 0) {
				printf("# vCPU %d: register 0x%x = 0x%x\n", i, zero[j], reg(&l, zero[j]));
				CHECK(reg(&l, zero[j]) == 0);
			}
		for (int j = 0; j < 8; j++)
			CHECK(reg(&l, APIC_ISR + j * 0x10) == 0 && reg(&l, APIC_IRR + j * 0x10) == 0 &&
			      reg(&l, APIC_TMR + j * 0x10) == 0);
		if (!no_guests()) /* backend=none vCPUs have no MSRs */
			CHECK(msr(v.vcpu[i], MSR_IA32_APICBASE) == (i == 0 ? 0xfee00900 : 0xfee00800));
	}
	icvm_free(&v);
}

/*
 * With an in-kernel LAPIC only the BSP starts runnable (kvm_arch_vcpu_create): an AP is
 * KVM_MP_STATE_UNINITIALIZED, waiting for INIT/SIPI, and KVM_RUN blocks without entering the
 * guest (kvm_arch_vcpu_ioctl_run) until a signal; KVM_SET_MP_STATE RUNNABLE lets it run.
 */
TEST(ap_starts_uninitialized)
{
	struct icvm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	REQUIRE(icvm_create(&v, 2, 1) == 0, &v);
	CHECK(mp_state(v.vcpu[0]) == KVM_MP_STATE_RUNNABLE);
	CHECK(mp_state(v.vcpu[1]) == KVM_MP_STATE_UNINITIALIZED);
	REQUIRE(vcpu_prog(&v, 1, P_WAIT, STACK1) == 0, &v);
	REQUIRE(run_blocks(&v, 1, 100) == 0, &v);
	CHECK(mp_state(v.vcpu[1]) == KVM_MP_STATE_UNINITIALIZED);
	CHECK(set_mp_state(v.vcpu[1], KVM_MP_STATE_RUNNABLE) == 0);
	CHECK(run_to_port(&v, 1, 0xe0, NULL) == 0);
	icvm_free(&v);
}

/*
 * KVM_SET_LAPIC stores the register page as given, except what the LAPIC computes: the version
 * register (kvm_apic_set_version), PPR (from TPR and ISR), TMCCT (from the running timer). The
 * TMCCT given is where the timer restarts (kvm_apic_set_state: __start_apic_timer(apic,
 * APIC_TMCCT)); 0 there would expire a one-shot at once.
 */
TEST(lapic_set_get_round_trip)
{
	struct kvm_lapic_state l, l2;
	struct icvm v;
	__u32 lvr;

	REQUIRE(icvm_create(&v, 1, 1) == 0, &v);
	CHECK(ioctl(v.vcpu[0], KVM_GET_LAPIC, &l) == 0);
	lvr = reg(&l, APIC_LVR);
	set_reg(&l, APIC_TPR, 0x20);
	set_reg(&l, APIC_LDR, 0x01000000);
	set_reg(&l, APIC_DFR, 0x0fffffff); /* cluster model */
	set_reg(&l, APIC_SVR, 0x1f7);
	set_reg(&l, APIC_LVT1, 0x400); /* NMI */
	set_reg(&l, APIC_LVTERR, 0x33);
	set_reg(&l, APIC_LVTT, LVT_MASKED | 0x40);
	set_reg(&l, APIC_TDCR, 0x3); /* divide by 16 */
	set_reg(&l, APIC_TMICT, 0x40000000);
	set_reg(&l, APIC_TMCCT, 0x20000000);
	set_reg(&l, APIC_LVR, 0);
	set_reg(&l, APIC_PPR, 0x90);
	CHECK(ioctl(v.vcpu[0], KVM_SET_LAPIC, &l) == 0);
	memset(&l2, 0, sizeof(l2));
	CHECK(ioctl(v.vcpu[0], KVM_GET_LAPIC, &l2) == 0);
	CHECK(reg(&l2, APIC_TPR) == 0x20);
	CHECK(reg(&l2, APIC_LDR) == 0x01000000);
	CHECK(reg(&l2, APIC_DFR) == 0x0fffffff);
	CHECK(reg(&l2, APIC_SVR) == 0x1f7);
	CHECK(reg(&l2, APIC_LVT1) == 0x400);
	CHECK(reg(&l2, APIC_LVTERR) == 0x33);
	CHECK(reg(&l2, APIC_LVTT) == (LVT_MASKED | 0x40));
	CHECK(reg(&l2, APIC_TDCR) == 0x3);
	CHECK(reg(&l2, APIC_TMICT) == 0x40000000);
	CHECK(reg(&l2, APIC_ID) == 0 && reg(&l2, APIC_LVT0) == 0x700);
	/* Computed, not stored: the version as before, PPR = TPR (nothing in service), and the
	 * current count of the running (masked) timer, counting down from the TMCCT given (about
	 * 8.6 s at 16 ns a tick). */
	CHECK(reg(&l2, APIC_LVR) == lvr);
	CHECK(reg(&l2, APIC_PPR) == 0x20);
	printf("# TMCCT 0x%x\n", reg(&l2, APIC_TMCCT));
	CHECK(reg(&l2, APIC_TMCCT) > 0x10000000 && reg(&l2, APIC_TMCCT) <= 0x20000000);
	icvm_free(&v);
}

/*
 * KVM_GET_IRQCHIP right after KVM_CREATE_IRQCHIP: the PICs are zeroed, not yet initialised
 * (kvm_pic_init: only elcr_mask is set, 0xf8 and 0xde), the IOAPIC is reset (kvm_ioapic_reset:
 * every RTE masked and otherwise 0, base 0xfec00000, ID 0). KVM_SET_IRQCHIP stores them as given.
 */
TEST(irqchip_reset_state_and_round_trip)
{
	struct kvm_irqchip c, c2;
	struct kvm_pic_state want = { 0 };
	struct icvm v;

	REQUIRE(icvm_create(&v, 1, 1) == 0, &v);
	CHECK(get_chip(v.vm, KVM_IRQCHIP_PIC_MASTER, &c) == 0);
	want.elcr_mask = 0xf8;
	CHECK(memcmp(&c.chip.pic, &want, sizeof(want)) == 0);
	CHECK(get_chip(v.vm, KVM_IRQCHIP_PIC_SLAVE, &c) == 0);
	want.elcr_mask = 0xde;
	CHECK(memcmp(&c.chip.pic, &want, sizeof(want)) == 0);
	CHECK(get_chip(v.vm, KVM_IRQCHIP_IOAPIC, &c) == 0);
	CHECK(c.chip.ioapic.base_address == 0xfec00000);
	CHECK(c.chip.ioapic.id == 0 && c.chip.ioapic.ioregsel == 0 && c.chip.ioapic.irr == 0);
	for (int i = 0; i < KVM_IOAPIC_NUM_PINS; i++)
		if (c.chip.ioapic.redirtbl[i].bits != LVT_MASKED) {
			printf("# RTE %d = 0x%llx\n", i, (unsigned long long)c.chip.ioapic.redirtbl[i].bits);
			CHECK(c.chip.ioapic.redirtbl[i].bits == LVT_MASKED);
		}

	/* Round trips: an initialised master PIC, a slave, an IOAPIC with a few RTEs. */
	memset(&c, 0, sizeof(c));
	c.chip_id = KVM_IRQCHIP_PIC_MASTER;
	c.chip.pic = (struct kvm_pic_state){ .imr = 0xfb, .irq_base = 0x20, .init4 = 1,
					     .elcr = 0x08, .elcr_mask = 0xf8, .priority_add = 3 };
	CHECK(ioctl(v.vm, KVM_SET_IRQCHIP, &c) == 0);
	CHECK(get_chip(v.vm, KVM_IRQCHIP_PIC_MASTER, &c2) == 0);
	CHECK(memcmp(&c.chip.pic, &c2.chip.pic, sizeof(c.chip.pic)) == 0);
	c.chip_id = KVM_IRQCHIP_PIC_SLAVE;
	c.chip.pic = (struct kvm_pic_state){ .imr = 0xff, .irq_base = 0x28, .init4 = 1,
					     .elcr_mask = 0xde, .special_fully_nested_mode = 1 };
	CHECK(ioctl(v.vm, KVM_SET_IRQCHIP, &c) == 0);
	CHECK(get_chip(v.vm, KVM_IRQCHIP_PIC_SLAVE, &c2) == 0);
	CHECK(memcmp(&c.chip.pic, &c2.chip.pic, sizeof(c.chip.pic)) == 0);
	/* The master is left alone by a write to the slave. */
	CHECK(get_chip(v.vm, KVM_IRQCHIP_PIC_MASTER, &c2) == 0 && c2.chip.pic.irq_base == 0x20);

	CHECK(get_chip(v.vm, KVM_IRQCHIP_IOAPIC, &c) == 0);
	c.chip.ioapic.id = 2;
	c.chip.ioapic.ioregsel = 0x12;
	c.chip.ioapic.redirtbl[5].bits = 0x51;				/* edge, unmasked */
	c.chip.ioapic.redirtbl[7].bits = (1ull << 56) | 0x18000 | 0x59;	/* level, masked */
	c.chip.ioapic.redirtbl[23].bits = (3ull << 56) | 0x800 | 0x10062; /* logical, masked */
	CHECK(ioctl(v.vm, KVM_SET_IRQCHIP, &c) == 0);
	CHECK(get_chip(v.vm, KVM_IRQCHIP_IOAPIC, &c2) == 0);
	CHECK(c2.chip.ioapic.base_address == 0xfec00000 && c2.chip.ioapic.id == 2 &&
	      c2.chip.ioapic.ioregsel == 0x12 && c2.chip.ioapic.irr == 0);
	for (int i = 0; i < KVM_IOAPIC_NUM_PINS; i++)
		CHECK(c2.chip.ioapic.redirtbl[i].bits == c.chip.ioapic.redirtbl[i].bits);
	icvm_free(&v);
}

/*
 * The LAPIC timer, one-shot (guest program 1): the interrupt comes once, after TMICT (10 ms),
 * into a guest halted in the kernel; TMCCT reads 0 after expiry, TMICT keeps its value, and a
 * later sti; hlt stays halted (no second interrupt).
 */
TEST(lapic_timer_oneshot)
{
	struct kvm_lapic_state l;
	struct icvm v;
	__u32 d = 0;
	long ms = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	REQUIRE(prog_vm(&v, P_TIMER_ONESHOT) == 0, &v);
	CHECK(run_to_port_at(&v, 0, 0x40, &d, &ms, __LINE__) == 0);
	printf("# one-shot of 10 ms: interrupt after %ld ms\n", ms);
	CHECK(d == 1 && ms >= 9);
	CHECK(run_to_port(&v, 0, 0xe1, &d) == 0);
	CHECK(d == 0); /* TMCCT */
	CHECK(run_to_port(&v, 0, 0xe2, &d) == 0);
	CHECK(d == 10000000); /* TMICT */
	CHECK(run_blocks(&v, 0, 300) == 0);
	CHECK(mp_state(v.vcpu[0]) == KVM_MP_STATE_HALTED);
	CHECK(ioctl(v.vcpu[0], KVM_GET_LAPIC, &l) == 0);
	CHECK(reg(&l, APIC_TMCCT) == 0 && reg(&l, APIC_LVTT) == 0x40 && reg(&l, APIC_SVR) == 0x1ff);
	CHECK(!vec_bit(&l, APIC_IRR, 0x40) && !vec_bit(&l, APIC_ISR, 0x40));
	icvm_free(&v);
}

/* The LAPIC timer, periodic (guest program 2): 5 interrupts of a 1 ms period, counted by the
 * guest's handler; no KVM_EXIT_HLT in between. */
TEST(lapic_timer_periodic)
{
	struct icvm v;
	__u32 d = 0;
	long ms = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	REQUIRE(prog_vm(&v, P_TIMER_PERIODIC) == 0, &v);
	CHECK(run_to_port_at(&v, 0, 0xe1, &d, &ms, __LINE__) == 0);
	printf("# 5 periods of 1 ms took %ld ms; TMCCT in the last handler 0x%x\n", ms, d);
	CHECK(ms >= 4);
	CHECK(d <= 1000000);
	CHECK(run_to_port(&v, 0, 0xe0, &d) == 0);
	CHECK(d == 5);
	icvm_free(&v);
}

/*
 * HLT with IF=0 and nothing pending (guest program 0): KVM_RUN blocks in the kernel until a
 * signal (EINTR, KVM_EXIT_INTR), the vCPU is KVM_MP_STATE_HALTED with RIP past the HLT, and
 * setting it RUNNABLE resumes the guest after the HLT.
 */
TEST(hlt_blocks_until_signal)
{
	struct kvm_regs regs;
	struct icvm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	REQUIRE(prog_vm(&v, P_HALT_IF0) == 0, &v);
	CHECK(run_blocks(&v, 0, 200) == 0);
	CHECK(mp_state(v.vcpu[0]) == KVM_MP_STATE_HALTED);
	CHECK(ioctl(v.vcpu[0], KVM_GET_REGS, &regs) == 0);
	CHECK(regs.rip == prog_addr(&v, P_HALT_IF0) + 2 /* cli; hlt */ && !(regs.rflags & 0x200));
	/* Still halted: a second run blocks as well. */
	CHECK(run_blocks(&v, 0, 100) == 0);
	CHECK(set_mp_state(v.vcpu[0], KVM_MP_STATE_RUNNABLE) == 0);
	CHECK(run_to_port(&v, 0, 0xe3, NULL) == 0);
	icvm_free(&v);
}

/*
 * KVM_IRQ_LINE through the IOAPIC, edge (guest program 3): the guest programs RTE 5 by MMIO
 * (vector 0x51 to APIC ID 0), then halts; a thread raises and lowers GSI 5 100 ms later; the
 * handler runs once, and the guest halts again for good.
 */
TEST(ioapic_edge_irq_line)
{
	struct kvm_irqchip c;
	struct pulse p;
	struct icvm v;
	__u32 d = 0;
	long ms = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	REQUIRE(prog_vm(&v, P_IOAPIC_EDGE) == 0, &v);
	CHECK(run_to_port(&v, 0, 0xe1, &d) == 0);
	CHECK(d == 0x170011); /* 24 RTEs, version 0x11 */
	CHECK(run_to_port(&v, 0, 0xe0, &d) == 0);
	CHECK(d == 0x51);
	/* What the guest wrote by MMIO is the IOAPIC state. */
	CHECK(get_chip(v.vm, KVM_IRQCHIP_IOAPIC, &c) == 0);
	CHECK(c.chip.ioapic.redirtbl[5].bits == 0x51 && c.chip.ioapic.ioregsel == 0x1a);
	CHECK(pulse_start(&p, v.vm, 5, 100, 1) == 0);
	CHECK(run_to_port_at(&v, 0, 0x51, &d, &ms, __LINE__) == 0);
	pthread_join(p.thread, NULL);
	CHECK(p.rc == 0);
	CHECK(d == 1 && ms >= 90);
	CHECK(run_blocks(&v, 0, 300) == 0);
	CHECK(mp_state(v.vcpu[0]) == KVM_MP_STATE_HALTED);
	/* Edge: nothing left pending in the IOAPIC. */
	CHECK(get_chip(v.vm, KVM_IRQCHIP_IOAPIC, &c) == 0);
	CHECK(c.chip.ioapic.irr == 0 && c.chip.ioapic.redirtbl[5].fields.remote_irr == 0);
	/* A second edge gives a second interrupt. */
	CHECK(irq_line(v.vm, 5, 1) == 0 && irq_line(v.vm, 5, 0) == 0);
	CHECK(run_to_port(&v, 0, 0x51, &d) == 0);
	CHECK(d == 2);
	icvm_free(&v);
}

/*
 * KVM_IRQ_LINE through the IOAPIC, level (guest program 4, RTE 5 set with KVM_SET_IRQCHIP:
 * vector 0x52, level, active high): while the line is high each EOI re-delivers the interrupt;
 * remote IRR is set while it is in service; once the line is low, the EOI ends it.
 */
TEST(ioapic_level_irq_line)
{
	struct kvm_lapic_state l;
	struct kvm_irqchip c;
	struct pulse p;
	struct icvm v;
	__u32 d = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	REQUIRE(prog_vm(&v, P_WAIT) == 0, &v);
	CHECK(get_chip(v.vm, KVM_IRQCHIP_IOAPIC, &c) == 0);
	c.chip.ioapic.redirtbl[5].bits = 0x8000 | 0x52; /* level, fixed, physical, dest 0 */
	CHECK(ioctl(v.vm, KVM_SET_IRQCHIP, &c) == 0);
	CHECK(run_to_port(&v, 0, 0xe0, NULL) == 0);
	CHECK(pulse_start(&p, v.vm, 5, 100, 0) == 0);
	CHECK(run_to_port(&v, 0, 0x52, &d) == 0);
	pthread_join(p.thread, NULL);
	CHECK(p.rc == 0 && d == 1);
	/* In service: remote IRR in the RTE, the vector in ISR and TMR (level). */
	CHECK(get_chip(v.vm, KVM_IRQCHIP_IOAPIC, &c) == 0);
	CHECK(c.chip.ioapic.redirtbl[5].fields.remote_irr == 1);
	CHECK(ioctl(v.vcpu[0], KVM_GET_LAPIC, &l) == 0);
	CHECK(vec_bit(&l, APIC_ISR, 0x52) && vec_bit(&l, APIC_TMR, 0x52));
	/* The EOI with the line still high: delivered again. */
	CHECK(run_to_port(&v, 0, 0x52, &d) == 0);
	CHECK(d == 2);
	CHECK(irq_line(v.vm, 5, 0) == 0);
	/* The EOI with the line low: over. */
	CHECK(run_blocks(&v, 0, 300) == 0);
	CHECK(get_chip(v.vm, KVM_IRQCHIP_IOAPIC, &c) == 0);
	CHECK(c.chip.ioapic.redirtbl[5].fields.remote_irr == 0 && c.chip.ioapic.irr == 0);
	CHECK(ioctl(v.vcpu[0], KVM_GET_LAPIC, &l) == 0);
	CHECK(!vec_bit(&l, APIC_ISR, 0x52) && !vec_bit(&l, APIC_IRR, 0x52));
	icvm_free(&v);
}

/*
 * KVM_IRQ_LINE through the 8259 (guest program 5): the guest initialises the master with
 * vector base 0x20 and only IRQ 3 unmasked, LVT0 = ExtINT; GSI 3 raised and lowered while it
 * halts arrives as vector 0x23, in service in the PIC until the guest's non-specific EOI.
 */
TEST(pic_irq_line)
{
	struct kvm_irqchip c;
	struct pulse p;
	struct icvm v;
	__u32 d = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	REQUIRE(prog_vm(&v, P_PIC) == 0, &v);
	CHECK(run_to_port(&v, 0, 0xe0, &d) == 0);
	CHECK(d == 0xf7); /* IMR read back */
	CHECK(get_chip(v.vm, KVM_IRQCHIP_PIC_MASTER, &c) == 0);
	CHECK(c.chip.pic.irq_base == 0x20 && c.chip.pic.imr == 0xf7 && c.chip.pic.init4 == 1 &&
	      c.chip.pic.init_state == 0 && c.chip.pic.auto_eoi == 0);
	CHECK(get_chip(v.vm, KVM_IRQCHIP_PIC_SLAVE, &c) == 0);
	CHECK(c.chip.pic.irq_base == 0x28 && c.chip.pic.imr == 0xff);
	CHECK(pulse_start(&p, v.vm, 3, 100, 1) == 0);
	CHECK(run_to_port(&v, 0, 0x23, &d) == 0);
	pthread_join(p.thread, NULL);
	CHECK(p.rc == 0 && d == 1);
	/* Acknowledged: in service, no longer requested (edge). */
	CHECK(get_chip(v.vm, KVM_IRQCHIP_PIC_MASTER, &c) == 0);
	CHECK(c.chip.pic.isr == 0x08 && c.chip.pic.irr == 0);
	CHECK(run_blocks(&v, 0, 300) == 0);
	CHECK(get_chip(v.vm, KVM_IRQCHIP_PIC_MASTER, &c) == 0);
	CHECK(c.chip.pic.isr == 0);
	/* A masked line (IRQ 4) is held in IRR and not delivered. */
	CHECK(irq_line(v.vm, 4, 1) == 0 && irq_line(v.vm, 4, 0) == 0);
	CHECK(run_blocks(&v, 0, 200) == 0);
	CHECK(get_chip(v.vm, KVM_IRQCHIP_PIC_MASTER, &c) == 0);
	CHECK(c.chip.pic.irr == 0x10 && c.chip.pic.isr == 0);
	icvm_free(&v);
}

/* vCPU 1 waiting in sti; hlt for the IPI, on its own thread. */
struct ipi_target {
	struct icvm *v;
	int rc;
	__u32 count;
	pthread_t thread;
};

static void *ipi_target_thread(void *arg)
{
	struct ipi_target *t = arg;

	t->rc = run_to_port(t->v, 1, 0x60, &t->count);
	wd_free();
	return NULL;
}

/*
 * A fixed IPI between vCPUs: vCPU 1 (made RUNNABLE: an AP starts UNINITIALIZED with an in-kernel
 * LAPIC) enables its APIC and halts with IF=1 in its thread (guest program 4); vCPU 0 sends
 * vector 0x60 to APIC ID 1 (guest program 6), sees delivery status clear, and vCPU 1's handler
 * runs once.
 */
TEST(ipi_wakes_halted_vcpu)
{
	struct ipi_target t = { 0 };
	struct icvm v;
	__u32 d = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	REQUIRE(icvm_create(&v, 2, 1) == 0, &v);
	/* Out of UNINITIALIZED (ap_starts_uninitialized) without INIT/SIPI. */
	CHECK(set_mp_state(v.vcpu[1], KVM_MP_STATE_RUNNABLE) == 0);
	REQUIRE(vcpu_prog(&v, 0, P_IPI_SENDER, STACK0) == 0, &v);
	REQUIRE(vcpu_prog(&v, 1, P_WAIT, STACK1) == 0, &v);
	/* vCPU 1 builds the IDT, enables its APIC, reports ready. */
	REQUIRE(run_to_port(&v, 1, 0xe0, NULL) == 0, &v);
	t.v = &v;
	t.rc = -1;
	CHECK(pthread_create(&t.thread, NULL, ipi_target_thread, &t) == 0);
	sleep_ms(100); /* let vCPU 1 reach its HLT */
	CHECK(run_to_port(&v, 0, 0xe0, &d) == 0);
	CHECK((d & 0xfffff) == 0x4060); /* ICR: delivery status (bit 12) clear */
	pthread_join(t.thread, NULL);
	CHECK(t.rc == 0 && t.count == 1);
	/* Once only: vCPU 1 halts again. */
	CHECK(run_blocks(&v, 1, 300) == 0);
	CHECK(mp_state(v.vcpu[1]) == KVM_MP_STATE_HALTED);
	icvm_free(&v);
}

/*
 * TPR (guest program 7): with TPR 0x50, a pending self-IPI of vector 0x51 is held in IRR
 * through IF=1 and does not end a HLT; KVM_SET_LAPIC with TPR 0x40 lets it in; a guest write of
 * TPR 0 delivers another one at once.
 */
TEST(tpr_masks_interrupts)
{
	struct kvm_lapic_state l;
	struct icvm v;
	__u32 d = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	REQUIRE(prog_vm(&v, P_TPR) == 0, &v);
	CHECK(run_to_port(&v, 0, 0xe1, &d) == 0);
	CHECK(d & (1u << (0x51 - 0x40))); /* IRR bit of 0x51 */
	CHECK(ioctl(v.vcpu[0], KVM_GET_LAPIC, &l) == 0);
	CHECK(reg(&l, APIC_TPR) == 0x50 && reg(&l, APIC_PPR) == 0x50);
	CHECK(vec_bit(&l, APIC_IRR, 0x51) && !vec_bit(&l, APIC_ISR, 0x51));
	CHECK(run_to_port(&v, 0, 0xe2, &d) == 0);
	CHECK(d == 0);
	/* sti; hlt with only a masked interrupt pending: halted. */
	CHECK(run_blocks(&v, 0, 300) == 0);
	CHECK(mp_state(v.vcpu[0]) == KVM_MP_STATE_HALTED);
	CHECK(ioctl(v.vcpu[0], KVM_GET_LAPIC, &l) == 0);
	CHECK(vec_bit(&l, APIC_IRR, 0x51));
	set_reg(&l, APIC_TPR, 0x40);
	CHECK(ioctl(v.vcpu[0], KVM_SET_LAPIC, &l) == 0);
	CHECK(run_to_port(&v, 0, 0x51, &d) == 0);
	CHECK(d == 1);
	CHECK(run_to_port(&v, 0, 0xe3, &d) == 0);
	CHECK(d == 1);
	/* The guest's own TPR write lets the second one in before its next report. */
	CHECK(run_to_port(&v, 0, 0x51, &d) == 0);
	CHECK(d == 2);
	CHECK(run_to_port(&v, 0, 0xe4, &d) == 0);
	CHECK(d == 2);
	icvm_free(&v);
}

static void *x2apic_target_thread(void *arg)
{
	struct ipi_target *t = arg;

	t->rc = run_to_port(t->v, 1, 0x61, &t->count);
	wd_free();
	return NULL;
}

/*
 * x2APIC mode (guest programs 8 and 9): vCPU 1 sets IA32_APIC_BASE.EXTD (CPUID has x2APIC),
 * enables its APIC through the SVR MSR, reads its x2APIC ID from MSR 0x802 (1) and halts; vCPU 0
 * does the same (ID 0), takes a self IPI sent through SELF_IPI (MSR 0x83f), and sends vector 0x61
 * to x2APIC ID 1 with one 64-bit WRMSR of ICR (MSR 0x830), which reads back whole with delivery
 * status clear; vCPU 1's handler runs once (EOI through MSR 0x80b). Userspace sees: no x2APIC
 * MSRs in xAPIC mode; EXTD in IA32_APIC_BASE and the x2APIC MSRs through KVM_GET_MSRS after;
 * KVM_GET_LAPIC's x2APIC format (kvm_apic_state_fixup): ID = vCPU id << 24, LDR derived, ICR's
 * high half in ICR2; the whole ID after KVM_ENABLE_CAP(KVM_CAP_X2APIC_API,
 * KVM_X2APIC_API_USE_32BIT_IDS), and then KVM_SET_LAPIC with another ID is EINVAL.
 */
TEST(x2apic_ipis)
{
	struct kvm_enable_cap cap = { .cap = KVM_CAP_X2APIC_API,
				      .args = { KVM_X2APIC_API_USE_32BIT_IDS } };
	struct ipi_target t = { 0 };
	struct kvm_lapic_state l;
	struct icvm v;
	__u32 d = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	REQUIRE(icvm_create(&v, 2, 1) == 0, &v);
	CHECK(set_mp_state(v.vcpu[1], KVM_MP_STATE_RUNNABLE) == 0);
	REQUIRE(vcpu_prog(&v, 0, P_X2APIC_SENDER, STACK0) == 0, &v);
	REQUIRE(vcpu_prog(&v, 1, P_X2APIC_WAIT, STACK1) == 0, &v);
	CHECK(msr(v.vcpu[1], X2APIC_MSR(APIC_ID)) == ~0ull);
	REQUIRE(run_to_port(&v, 1, 0xe0, &d) == 0, &v);
	CHECK(d == 1);
	CHECK(msr(v.vcpu[1], MSR_IA32_APICBASE) == 0xfee00c00);
	CHECK(msr(v.vcpu[1], X2APIC_MSR(APIC_ID)) == 1);
	CHECK(msr(v.vcpu[1], X2APIC_MSR(APIC_LDR)) == 2); /* cluster 0, bit 1 */
	CHECK(msr(v.vcpu[1], X2APIC_MSR(APIC_DFR)) == ~0ull); /* no DFR in x2APIC mode */
	CHECK(ioctl(v.vcpu[1], KVM_GET_LAPIC, &l) == 0);
	CHECK(reg(&l, APIC_ID) == 1 << 24 && reg(&l, APIC_LDR) == 2 && reg(&l, APIC_SVR) == 0x1ff);
	t.v = &v;
	t.rc = -1;
	CHECK(pthread_create(&t.thread, NULL, x2apic_target_thread, &t) == 0);
	sleep_ms(100); /* let vCPU 1 reach its HLT */
	CHECK(run_to_port(&v, 0, 0xe1, &d) == 0 && d == 0);
	CHECK(run_to_port(&v, 0, 0x62, &d) == 0 && d == 1);
	CHECK(run_to_port(&v, 0, 0xe2, &d) == 0 && d == 1);
	CHECK(run_to_port(&v, 0, 0xe0, &d) == 0);
	CHECK(d == 0x4061);
	CHECK(run_to_port(&v, 0, 0xe3, &d) == 0 && d == 1);
	pthread_join(t.thread, NULL);
	CHECK(t.rc == 0 && t.count == 1);
	CHECK(ioctl(v.vcpu[0], KVM_GET_LAPIC, &l) == 0);
	CHECK(reg(&l, APIC_ID) == 0 && reg(&l, APIC_LDR) == 1);
	CHECK(reg(&l, APIC_ICR) == 0x4061 && reg(&l, APIC_ICR2) == 1);
	/* 32-bit IDs: the vCPU id as it is; KVM_SET_LAPIC insists on it. */
	CHECK(ioctl(v.vm, KVM_ENABLE_CAP, &cap) == 0);
	CHECK(ioctl(v.vcpu[1], KVM_GET_LAPIC, &l) == 0);
	CHECK(reg(&l, APIC_ID) == 1);
	CHECK(ioctl(v.vcpu[1], KVM_SET_LAPIC, &l) == 0);
	set_reg(&l, APIC_ID, 1 << 24);
	CHECK_ERRNO_WHY(ioctl(v.vcpu[1], KVM_SET_LAPIC, &l), EINVAL,
		    "APIC ID register not the vCPU id with KVM_X2APIC_API_USE_32BIT_IDS");
	/* Userspace may take vCPU 1 straight back to xAPIC mode: the xAPIC ID again. */
	{
		struct { struct kvm_msrs h; struct kvm_msr_entry e; } m = {
			{ .nmsrs = 1 }, { .index = MSR_IA32_APICBASE, .data = 0xfee00800 } };

		CHECK(ioctl(v.vcpu[1], KVM_SET_MSRS, &m) == 1);
	}
	CHECK(ioctl(v.vcpu[1], KVM_GET_LAPIC, &l) == 0);
	CHECK(reg(&l, APIC_ID) == 1 << 24);
	CHECK(msr(v.vcpu[1], X2APIC_MSR(APIC_ID)) == ~0ull);
	icvm_free(&v);
}

/*
 * The guest's own IA32_APIC_BASE writes (guest program 10; kvm_apic_set_base without
 * host_initiated): into x2APIC mode only from xAPIC mode, out of it only to disabled, never EXTD
 * without EN; every other attempt is a #GP and changes nothing.
 */
TEST(guest_apic_mode_transitions)
{
	struct icvm v;
	__u32 d = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	REQUIRE(prog_vm(&v, P_APIC_MODES) == 0, &v);
	CHECK(run_to_port(&v, 0, 0xe0, &d) == 0 && d == 2);
	CHECK(run_to_port(&v, 0, 0xe1, &d) == 0 && d == 3);
	CHECK(run_to_port(&v, 0, 0xe2, &d) == 0);
	CHECK(d == 0xfee00d00); /* BSP, EN, EXTD */
	CHECK(run_to_port(&v, 0, 0xe3, &d) == 0 && d == 3);
	CHECK(msr(v.vcpu[0], MSR_IA32_APICBASE) == 0xfee00d00);
	icvm_free(&v);
}

/*
 * KVM_SET_BOOT_CPU_ID (kvm_arch_vm_ioctl): EINVAL above the vCPU id limit (or for an id with
 * bits 63:32), EBUSY once a vCPU exists; KVM_CAP_MAX_VCPU_ID cannot then go below it. The boot
 * CPU is the one that starts runnable with the BSP flag in IA32_APIC_BASE and LINT0 in ExtINT
 * mode (kvm_vcpu_is_reset_bsp), so the PIC reaches it: guest program P_PIC on vCPU 1.
 */
TEST(boot_cpu_id)
{
	struct kvm_enable_cap cap = { .cap = KVM_CAP_MAX_VCPU_ID, .args = { 4 } };
	int kvm = open_dev(), vm = create_vm(kvm), vcpu;
	long max_id = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPU_ID);
	struct kvm_lapic_state l;
	struct pulse p;
	struct icvm v;
	__u32 d = 0;

	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_SET_BOOT_CPU_ID) == 1);
	CHECK_ERRNO_WHY(ioctl(vm, KVM_SET_BOOT_CPU_ID, max_id + 1), EINVAL,
		    "id above KVM_CAP_MAX_VCPU_ID");
	CHECK_ERRNO_WHY(ioctl(vm, KVM_SET_BOOT_CPU_ID, 1UL << 32), EINVAL, "id 2^32");
	CHECK(ioctl(vm, KVM_SET_BOOT_CPU_ID, 5) == 0);
	CHECK_ERRNO_WHY(ioctl(vm, KVM_ENABLE_CAP, &cap), EINVAL,
		    "KVM_CAP_MAX_VCPU_ID at or below the boot CPU id already set");
	cap.args[0] = 8;
	CHECK(ioctl(vm, KVM_ENABLE_CAP, &cap) == 0);
	CHECK_ERRNO_WHY(ioctl(vm, KVM_SET_BOOT_CPU_ID, 9), EINVAL,
		    "id at or above the VM's KVM_CAP_MAX_VCPU_ID");
	CHECK(ioctl(vm, KVM_SET_BOOT_CPU_ID, 1) == 0);
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	CHECK(vcpu >= 0);
	CHECK_ERRNO_WHY(ioctl(vm, KVM_SET_BOOT_CPU_ID, 0), EBUSY, "after a vCPU was created");
	/* Without an irqchip every vCPU is runnable, the boot CPU included. */
	CHECK(mp_state(vcpu) == KVM_MP_STATE_RUNNABLE);
	close(vcpu);
	CHECK_ERRNO_WHY(ioctl(vm, KVM_SET_BOOT_CPU_ID, 0), EBUSY,
		    "after a vCPU was created and its fd closed");
	close(vm);
	close(kvm);

	REQUIRE(icvm_create_boot(&v, 2, 1, 1) == 0, &v);
	CHECK(mp_state(v.vcpu[0]) == KVM_MP_STATE_UNINITIALIZED);
	CHECK(mp_state(v.vcpu[1]) == KVM_MP_STATE_RUNNABLE);
	for (int i = 0; i < 2; i++) {
		CHECK(ioctl(v.vcpu[i], KVM_GET_LAPIC, &l) == 0);
		CHECK(reg(&l, APIC_LVT0) == (i == 1 ? 0x700 : LVT_MASKED));
		if (!no_guests())
			CHECK(msr(v.vcpu[i], MSR_IA32_APICBASE) == (i == 1 ? 0xfee00900 : 0xfee00800));
	}
	if (no_guests()) {
		icvm_free(&v);
		return;
	}
	REQUIRE(vcpu_prog(&v, 1, P_PIC, STACK1) == 0, &v);
	CHECK(run_to_port(&v, 1, 0xe0, &d) == 0);
	CHECK(pulse_start(&p, v.vm, 3, 100, 1) == 0);
	CHECK(run_to_port(&v, 1, 0x23, &d) == 0);
	pthread_join(p.thread, NULL);
	CHECK(p.rc == 0 && d == 1);
	icvm_free(&v);
}

/*
 * KVM_CAP_X86_APIC_BUS_CYCLES_NS: KVM_CHECK_EXTENSION gives the default (1 ns); enabling needs
 * an in-kernel irqchip (ENXIO), a cycle that is not 0 and keeps the longest timer within 64
 * bits (EINVAL), and no vCPU yet (EINVAL). With 40 ns (a 25 MHz bus) a timer of 10^6 counts at
 * divide-by-1 lasts 40 ms, so 10 ms after KVM_SET_LAPIC started it, it still counts (at 1 ns it
 * would have expired after 1 ms).
 */
TEST(apic_bus_cycle)
{
	struct kvm_enable_cap cap = { .cap = KVM_CAP_X86_APIC_BUS_CYCLES_NS, .args = { 40 } };
	int kvm = open_dev(), vm = create_vm(kvm);
	struct kvm_lapic_state l;
	struct icvm v;
	__u32 left;

	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_X86_APIC_BUS_CYCLES_NS) == 1);
	CHECK_ERRNO_WHY(ioctl(vm, KVM_ENABLE_CAP, &cap), ENXIO,
		    "KVM_CAP_X86_APIC_BUS_CYCLES_NS without an in-kernel irqchip");
	close(vm);
	close(kvm);

	REQUIRE(icvm_create(&v, 0, 1) == 0, &v);
	cap.args[0] = 0;
	CHECK_ERRNO_WHY(ioctl(v.vm, KVM_ENABLE_CAP, &cap), EINVAL,
		    "KVM_CAP_X86_APIC_BUS_CYCLES_NS of 0 ns");
	cap.args[0] = ~0ull / (0xffffffffull * 128) + 1;
	CHECK_ERRNO_WHY(ioctl(v.vm, KVM_ENABLE_CAP, &cap), EINVAL,
		    "KVM_CAP_X86_APIC_BUS_CYCLES_NS so long that a timer overflows 64 bits of ns");
	cap.args[0] = 40;
	CHECK(ioctl(v.vm, KVM_ENABLE_CAP, &cap) == 0);
	CHECK(ioctl(v.vm, KVM_ENABLE_CAP, &cap) == 0);
	v.vcpu[0] = ioctl(v.vm, KVM_CREATE_VCPU, 0);
	v.n = 1;
	REQUIRE(v.vcpu[0] >= 0, &v);
	CHECK_ERRNO_WHY(ioctl(v.vm, KVM_ENABLE_CAP, &cap), EINVAL,
		    "KVM_CAP_X86_APIC_BUS_CYCLES_NS after a vCPU was created");
	CHECK(ioctl(v.vcpu[0], KVM_GET_LAPIC, &l) == 0);
	set_reg(&l, APIC_TDCR, 0xb);
	set_reg(&l, APIC_TMICT, 1000000);
	set_reg(&l, APIC_TMCCT, 1000000);
	CHECK(ioctl(v.vcpu[0], KVM_SET_LAPIC, &l) == 0);
	sleep_ms(10);
	CHECK(ioctl(v.vcpu[0], KVM_GET_LAPIC, &l) == 0);
	left = reg(&l, APIC_TMCCT);
	printf("# TMCCT 10 ms into a 10^6-count timer on a 40 ns bus: %u\n", left);
	CHECK(left > 0 && left < 1000000);
	icvm_free(&v);
}

KTAP_MAIN("rkvm irqchip",
	CASE(api_errors),
	CASE(lapic_reset_state),
	CASE(ap_starts_uninitialized),
	CASE(lapic_set_get_round_trip),
	CASE(irqchip_reset_state_and_round_trip),
	CASE(lapic_timer_oneshot),
	CASE(lapic_timer_periodic),
	CASE(hlt_blocks_until_signal),
	CASE(ioapic_edge_irq_line),
	CASE(ioapic_level_irq_line),
	CASE(pic_irq_line),
	CASE(ipi_wakes_halted_vcpu),
	CASE(tpr_masks_interrupts),
	CASE(x2apic_ipis),
	CASE(guest_apic_mode_transitions),
	CASE(boot_cpu_id),
	CASE(apic_bus_cycle))

// SPDX-License-Identifier: GPL-2.0
/*
 * KVM_SET_GUEST_DEBUG and the guest's own debug registers: single-stepping (steps the CPU makes,
 * across a port I/O exit, over the MOV SS and STI shadows, over instructions the kernel
 * emulates, HLT), a software breakpoint and its re-injection, hardware execution breakpoints in
 * DR0-DR3, data watchpoints, KVM_GUESTDBG_INJECT_DB, the guest's own watchpoint replaced by the
 * debugger's and back when debugging ends, the guest single-stepping itself, the capabilities
 * and the error cases.
 *
 * The guest is guests/debug.S (real mode, CS base 0x1000). Checked against the kernel's
 * kvm_intel in Bochs too (RKVM_DEV=/dev/kvm RKVM_UPSTREAM=1): there, after a VM exit taken with
 * RFLAGS.TF = 1 that is not a #DB (an EPT violation, an OUT, a CPUID the kernel emulates...),
 * the next KVM_RUN reports a step without executing anything, because Bochs 2.7 saves a pending
 * single-step trap on such exits (real CPUs save none) and delivers it right after the next
 * entry; the test runs past such a step against upstream only (rkvm clears the trap).
 *
 * Upstream references (arch/x86/kvm/x86.c, vmx/vmx.c): kvm_arch_vcpu_ioctl_set_guest_debug,
 * kvm_update_dr7, kvm_get_rflags/kvm_set_rflags, kvm_skip_emulated_instruction,
 * kvm_vcpu_do_singlestep, handle_exception_nmi, handle_dr, vmx_update_exception_bitmap.
 */
#include "rkvm_util.h"

#define GUEST_BIN	"guest-debug.bin"
#define MEM_SIZE	0x10000
#define CODE		0x1000		/* CS base: labels are IPs */
#define DATA		0x3000
#define STACK		0x800
#define LABELS		0xf00

#define TF		0x100ULL
#define DR6_RESET	0xffff0ff0ULL
#define DR6_BS		(1ULL << 14)
#define DR6_BD		(1ULL << 13)

/* The label table of guests/debug.S, in its order. */
enum label {
	L_STEP, L_STEP1, L_STEP2, L_STEP3, L_STEP4, L_STEP5, L_STEP6, L_STEP7, L_STEP8, L_STEP9,
	L_STEP10, L_STEP11, L_STEP12, L_STEP13, L_STEP14, L_STEP15,
	L_SWBP, L_SWBP1, L_SWBP2,
	L_HWBP, L_HWBP1, L_HWBP2,
	L_WATCH, L_WATCH1, L_WATCH2,
	L_INJECT, L_INJECT1,
	L_OWN, L_OWN1, L_OWN2, L_OWN3, L_OWN4,
	L_TF, L_TF1, L_TF2, L_TF3, L_TF4,
	L_DB_HANDLER, L_BP_HANDLER,
	NLABELS
};

struct dvm {
	int kvm, vm, vcpu;
	long run_size;
	struct kvm_run *run;
	unsigned char *mem;
	__u16 label[NLABELS];
	/* KVM_GUESTDBG_SINGLESTEP is on (for the Bochs quirk, see above). */
	int stepping;
};

static int load_guest(unsigned char *mem)
{
	return load_guest_bin(GUEST_BIN, mem + CODE, DATA - CODE) > LABELS ? 0 : -1;
}

/* A VM with the guest loaded, its #DB/#BP vectors set, and the vCPU at label `start`. */
static int dvm_create(struct dvm *v, enum label start)
{
	struct kvm_userspace_memory_region r = { .slot = 0, .memory_size = MEM_SIZE };
	struct kvm_regs regs = { .rflags = 2, .rsp = STACK };
	struct kvm_sregs s;

	memset(v, 0, sizeof(*v));
	v->vcpu = -1;
	v->kvm = open_dev();
	v->vm = create_vm(v->kvm);
	v->run_size = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	v->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (v->vm < 0 || v->mem == MAP_FAILED || load_guest(v->mem))
		return -1;
	memcpy(v->label, v->mem + CODE + LABELS, sizeof(v->label));
	/* IVT: vector n at 4n, offset then segment. */
	*(__u16 *)(v->mem + 1 * 4) = v->label[L_DB_HANDLER];
	*(__u16 *)(v->mem + 1 * 4 + 2) = CODE >> 4;
	*(__u16 *)(v->mem + 3 * 4) = v->label[L_BP_HANDLER];
	*(__u16 *)(v->mem + 3 * 4 + 2) = CODE >> 4;
	r.userspace_addr = (__u64)v->mem;
	if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &r))
		return -1;
	v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
	if (v->vcpu < 0)
		return -1;
	v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
	if (v->run == MAP_FAILED || ioctl(v->vcpu, KVM_GET_SREGS, &s))
		return -1;
	s.cs.selector = CODE >> 4;
	s.cs.base = CODE;
	regs.rip = v->label[start];
	if (ioctl(v->vcpu, KVM_SET_SREGS, &s) || ioctl(v->vcpu, KVM_SET_REGS, &regs))
		return -1;
	return 0;
}

static void dvm_free(struct dvm *v)
{
	if (v->run && v->run != MAP_FAILED)
		munmap(v->run, v->run_size);
	if (v->vcpu >= 0)
		close(v->vcpu);
	close(v->vm);
	close(v->kvm);
	if (v->mem && v->mem != MAP_FAILED)
		munmap(v->mem, MEM_SIZE);
}

static int set_debug(struct dvm *v, __u32 control, const __u64 *debugreg)
{
	struct kvm_guest_debug d = { .control = control };

	v->stepping = (control & (KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP)) ==
		      (KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP);
	if (debugreg)
		memcpy(d.arch.debugreg, debugreg, sizeof(d.arch.debugreg));
	return ioctl(v->vcpu, KVM_SET_GUEST_DEBUG, &d);
}

static __u64 rip(struct dvm *v)
{
	struct kvm_regs regs;

	return ioctl(v->vcpu, KVM_GET_REGS, &regs) ? ~0ULL : regs.rip;
}

/*
 * KVM_RUN. While single-stepping against upstream in Bochs, a step reported where the vCPU
 * stood, without progress (see the top of the file), is run past.
 */
static int vrun(struct dvm *v)
{
	__u64 from = CODE + rip(v);

	if (ioctl(v->vcpu, KVM_RUN, 0))
		return -1;
	if (upstream() && v->stepping && v->run->exit_reason == KVM_EXIT_DEBUG &&
	    v->run->debug.arch.pc == from) {
		printf("# kvm_intel: a step at 0x%llx without progress (Bochs' pending single-step trap)\n", from);
		return ioctl(v->vcpu, KVM_RUN, 0);
	}
	return 0;
}

/* Runs to a KVM_EXIT_IO on `port`; returns 0 (data in *data) or -1. */
static int run_io(struct dvm *v, int port, __u32 *data)
{
	if (vrun(v))
		return -1;
	if (v->run->exit_reason != KVM_EXIT_IO || v->run->io.port != port) {
		printf("# exit %u (port 0x%x, pc 0x%llx), wanted port 0x%x at rip 0x%llx\n",
		       v->run->exit_reason, v->run->exit_reason == KVM_EXIT_IO ? v->run->io.port : 0,
		       v->run->exit_reason == KVM_EXIT_DEBUG ? v->run->debug.arch.pc : 0, port, rip(v));
		return -1;
	}
	if (data) {
		*data = 0;
		memcpy(data, (char *)v->run + v->run->io.data_offset, v->run->io.size);
	}
	return 0;
}

/* Runs to a KVM_EXIT_DEBUG for `exception` at label `at`; checks dr6 unless it is 0. */
static int run_debug(struct dvm *v, int exception, enum label at, __u64 dr6)
{
	struct kvm_debug_exit_arch *d = &v->run->debug.arch;

	if (ioctl(v->vcpu, KVM_RUN, 0))
		return -1;
	if (v->run->exit_reason != KVM_EXIT_DEBUG || d->exception != (__u32)exception ||
	    d->pc != CODE + v->label[at] || (dr6 && d->dr6 != dr6)) {
		printf("# exit %u exception %u pc 0x%llx dr6 0x%llx, wanted exception %d pc 0x%x dr6 0x%llx\n",
		       v->run->exit_reason, d->exception, d->pc, d->dr6, exception, CODE + v->label[at], dr6);
		return -1;
	}
	return 0;
}

/* One single step, which must stop at label `at` with DR6.BS and leave no TF in the RFLAGS
 * userspace sees. */
static int step(struct dvm *v, enum label at)
{
	struct kvm_debug_exit_arch *d = &v->run->debug.arch;
	struct kvm_regs regs;

	if (vrun(v))
		return -1;
	if (v->run->exit_reason != KVM_EXIT_DEBUG || d->exception != 1 ||
	    d->pc != CODE + v->label[at] || d->dr6 != (DR6_RESET | DR6_BS)) {
		printf("# step: exit %u exception %u pc 0x%llx dr6 0x%llx, wanted pc 0x%x\n",
		       v->run->exit_reason, d->exception, d->pc, d->dr6, CODE + v->label[at]);
		return -1;
	}
	if (ioctl(v->vcpu, KVM_GET_REGS, &regs) || regs.rip != v->label[at] || (regs.rflags & TF)) {
		printf("# step: rip 0x%llx rflags 0x%llx\n", regs.rip, regs.rflags);
		return -1;
	}
	return 0;
}

/* The IP the guest's handler will return to (the top of its interrupt frame). */
static __u16 frame_ip(struct dvm *v)
{
	struct kvm_regs regs;

	if (ioctl(v->vcpu, KVM_GET_REGS, &regs))
		return 0;
	return *(__u16 *)(v->mem + (regs.rsp & 0xffff));
}

TEST(single_step)
{
	const __u32 ss = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
	struct kvm_regs regs;
	struct dvm v;
	__u32 data;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(dvm_create(&v, L_STEP) == 0);
	CHECK(set_debug(&v, ss, NULL) == 0);
	/* Steps the CPU makes. */
	CHECK(step(&v, L_STEP1) == 0);
	CHECK(step(&v, L_STEP2) == 0);
	/* OUT exits to userspace first; the next KVM_RUN completes it and reports its step. */
	CHECK(run_io(&v, 0x10, &data) == 0 && data == 0x35);
	CHECK(rip(&v) == v.label[L_STEP2]);
	CHECK(step(&v, L_STEP3) == 0);
	CHECK(step(&v, L_STEP4) == 0);
	/* MOV SS holds the trap back: one step covers it and the next instruction. */
	CHECK(step(&v, L_STEP6) == 0);
	/* STI does not: a step after it. */
	CHECK(step(&v, L_STEP7) == 0);
	CHECK(step(&v, L_STEP8) == 0);
	CHECK(step(&v, L_STEP9) == 0);
	/* KVM_SET_REGS puts the debugger's TF back only at the RIP of the last
	 * KVM_SET_GUEST_DEBUG (upstream singlestep_rip), which debuggers call before each step. */
	CHECK(set_debug(&v, ss, NULL) == 0);
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0);
	CHECK(ioctl(v.vcpu, KVM_SET_REGS, &regs) == 0);
	CHECK(step(&v, L_STEP10) == 0);
	/* CPUID, emulated by the kernel: its step is made there. */
	CHECK(step(&v, L_STEP11) == 0);
	CHECK(run_io(&v, 0x11, NULL) == 0);
	CHECK(step(&v, L_STEP12) == 0);
	/* HLT without an in-kernel irqchip: the halt exit wins over the step (upstream
	 * kvm_emulate_halt), RIP after it. */
	CHECK(vrun(&v) == 0 && v.run->exit_reason == KVM_EXIT_HLT);
	CHECK(rip(&v) == v.label[L_STEP13]);
	CHECK(run_io(&v, 0x12, NULL) == 0);
	CHECK(step(&v, L_STEP14) == 0);
	CHECK(step(&v, L_STEP15) == 0);
	/* Off: no TF left in the guest, which runs freely. */
	CHECK(set_debug(&v, 0, NULL) == 0);
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0 && !(regs.rflags & TF));
	CHECK(run_io(&v, 0x1f, NULL) == 0);
	dvm_free(&v);
}

TEST(single_step_stops_where_userspace_moves_rip)
{
	struct kvm_regs regs;
	struct dvm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(dvm_create(&v, L_HWBP) == 0);
	CHECK(set_debug(&v, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP, NULL) == 0);
	CHECK(step(&v, L_HWBP1) == 0);
	/* KVM_SET_REGS away from where KVM_SET_GUEST_DEBUG was called: the debugger's TF is not
	 * put back (upstream kvm_set_rflags checks singlestep_rip), so the guest runs to its OUT. */
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0);
	regs.rip = v.label[L_HWBP2];
	CHECK(ioctl(v.vcpu, KVM_SET_REGS, &regs) == 0);
	CHECK(run_io(&v, 0x14, NULL) == 0);
	dvm_free(&v);
}

TEST(software_breakpoint)
{
	const __u32 sw = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP;
	struct kvm_regs regs;
	struct dvm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(dvm_create(&v, L_SWBP) == 0);
	CHECK(set_debug(&v, sw, NULL) == 0);
	/* INT3 exits with RIP on it. */
	CHECK(run_debug(&v, 3, L_SWBP1, 0) == 0);
	CHECK(rip(&v) == v.label[L_SWBP1]);
	/* Not the debugger's: give it to the guest, as if the INT3 had executed. */
	CHECK(set_debug(&v, sw | KVM_GUESTDBG_INJECT_BP, NULL) == 0);
	CHECK(run_io(&v, 0x17, NULL) == 0);
	CHECK(frame_ip(&v) == v.label[L_SWBP2]);
	CHECK(run_io(&v, 0x13, NULL) == 0);
	/* Without USE_SW_BP the guest's INT3 is the guest's. */
	CHECK(set_debug(&v, 0, NULL) == 0);
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0);
	regs.rip = v.label[L_SWBP1];
	CHECK(ioctl(v.vcpu, KVM_SET_REGS, &regs) == 0);
	CHECK(run_io(&v, 0x17, NULL) == 0);
	CHECK(frame_ip(&v) == v.label[L_SWBP2]);
	dvm_free(&v);
}

TEST(hardware_execution_breakpoint)
{
	struct dvm v;
	__u32 data;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(dvm_create(&v, L_HWBP) == 0);
	/* Each of DR0-DR3 (G0-G3); the breakpoint is a fault: RIP stays, and it hits again. */
	for (int i = 0; i < 4; i++) {
		__u64 dr[8] = { 0 };

		dr[i] = CODE + v.label[L_HWBP1];
		dr[7] = 0x400 | 2ULL << (2 * i);
		CHECK(set_debug(&v, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP, dr) == 0);
		CHECK(run_debug(&v, 1, L_HWBP1, DR6_RESET | 1ULL << i) == 0);
		CHECK(v.run->debug.arch.dr7 == dr[7]);
		CHECK(rip(&v) == v.label[L_HWBP1]);
	}
	CHECK(set_debug(&v, 0, NULL) == 0);
	CHECK(run_io(&v, 0x14, &data) == 0 && data == 3);
	dvm_free(&v);
}

TEST(data_watchpoints)
{
	/* DR1: write of the word at DATA (G1, R/W 01, LEN 01); DR3: read or write of DATA + 2. */
	__u64 w[8] = { [1] = DATA, [7] = 0x400 | 1 << 3 | 1 << 20 | 1 << 22 };
	__u64 rw[8] = { [3] = DATA + 2, [7] = 0x400 | 1 << 7 | 3ULL << 28 | 1ULL << 30 };
	const __u32 hw = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
	struct dvm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(dvm_create(&v, L_WATCH) == 0);
	CHECK(set_debug(&v, hw, w) == 0);
	/* A trap: the write is done, RIP after it. */
	CHECK(run_debug(&v, 1, L_WATCH1, DR6_RESET | 1 << 1) == 0);
	CHECK(*(__u16 *)(v.mem + DATA) == 0x1234);
	CHECK(set_debug(&v, hw, rw) == 0);
	CHECK(run_debug(&v, 1, L_WATCH2, DR6_RESET | 1 << 3) == 0);
	CHECK(set_debug(&v, 0, NULL) == 0);
	CHECK(run_io(&v, 0x15, NULL) == 0);
	dvm_free(&v);
}

TEST(inject_db)
{
	struct kvm_debugregs dregs;
	struct kvm_vcpu_events ev;
	struct dvm v;
	__u32 dr6;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(dvm_create(&v, L_INJECT) == 0);
	CHECK(run_io(&v, 0x18, NULL) == 0);
	/* Injection needs no KVM_GUESTDBG_ENABLE; a second one while the first is pending is
	 * EBUSY. */
	CHECK(set_debug(&v, KVM_GUESTDBG_INJECT_DB, NULL) == 0);
	CHECK_ERRNO_WHY(set_debug(&v, KVM_GUESTDBG_INJECT_BP, NULL), EBUSY,
		    "KVM_GUESTDBG_INJECT_BP while an INJECT_DB is pending");
	CHECK(ioctl(v.vcpu, KVM_GET_VCPU_EVENTS, &ev) == 0);
	CHECK(ev.exception.injected == 1 && ev.exception.nr == 1);
	/* The OUT completes first; the #DB arrives after it, DR6 untouched (no payload). */
	CHECK(run_io(&v, 0x16, &dr6) == 0 && dr6 == DR6_RESET);
	CHECK(frame_ip(&v) == v.label[L_INJECT1]);
	CHECK(ioctl(v.vcpu, KVM_GET_DEBUGREGS, &dregs) == 0 && dregs.dr6 == DR6_RESET);
	CHECK(run_io(&v, 0x19, NULL) == 0);
	dvm_free(&v);
}

TEST(debugger_replaces_the_guests_breakpoints_until_it_lets_go)
{
	__u64 dr[8] = { 0 };
	struct kvm_debugregs dregs;
	struct dvm v;
	__u32 dr6;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(dvm_create(&v, L_OWN) == 0);
	/* The guest arms its own write watchpoint on DATA + 0x10. */
	CHECK(run_io(&v, 0x1a, NULL) == 0);
	CHECK(ioctl(v.vcpu, KVM_GET_DEBUGREGS, &dregs) == 0);
	CHECK(dregs.db[0] == DATA + 0x10 && dregs.dr7 == 0x10401);
	/* The debugger's execution breakpoint (DR1) replaces it: the guest's write goes unseen. */
	dr[1] = CODE + v.label[L_OWN2];
	dr[7] = 0x400 | 1 << 3;
	CHECK(set_debug(&v, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP, dr) == 0);
	CHECK(run_debug(&v, 1, L_OWN2, DR6_RESET | 1 << 1) == 0);
	CHECK(v.mem[DATA + 0x10] == 1);
	/* Userspace still sees the guest's registers. */
	CHECK(ioctl(v.vcpu, KVM_GET_DEBUGREGS, &dregs) == 0);
	CHECK(dregs.db[0] == DATA + 0x10 && dregs.db[1] == 0 && dregs.dr7 == 0x10401);
	/* Debugging off: the guest's watchpoint is back and its #DB handler sees B0 in DR6. */
	CHECK(set_debug(&v, 0, NULL) == 0);
	CHECK(run_io(&v, 0x1b, NULL) == 0);
	CHECK(run_io(&v, 0x16, &dr6) == 0 && dr6 == (DR6_RESET | 1));
	CHECK(frame_ip(&v) == v.label[L_OWN4]);
	CHECK(v.mem[DATA + 0x10] == 2);
	CHECK(run_io(&v, 0x1c, NULL) == 0);
	dvm_free(&v);
}

TEST(guest_single_steps_itself)
{
	struct dvm v;
	__u32 dr6;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(dvm_create(&v, L_TF) == 0);
	/* Over the CPUID the kernel emulates: a #DB with DR6.BS after it. */
	CHECK(run_io(&v, 0x16, &dr6) == 0 && dr6 == (DR6_RESET | DR6_BS));
	CHECK(frame_ip(&v) == v.label[L_TF2]);
	CHECK(run_io(&v, 0x1d, NULL) == 0);
	/* Over a NOP: the CPU's #DB, handed to the guest. */
	CHECK(run_io(&v, 0x16, &dr6) == 0 && dr6 == (DR6_RESET | DR6_BS));
	CHECK(frame_ip(&v) == v.label[L_TF4]);
	CHECK(run_io(&v, 0x1e, NULL) == 0);
	dvm_free(&v);
}

TEST(caps_and_errors)
{
	const __u32 mask = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_USE_SW_BP |
			   KVM_GUESTDBG_USE_HW_BP | KVM_GUESTDBG_INJECT_DB | KVM_GUESTDBG_INJECT_BP |
			   KVM_GUESTDBG_BLOCKIRQ;
	__u64 dr[8] = { [7] = 1ULL << 32 | 0x400 };
	struct kvm_vcpu_events ev;
	struct dvm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(dvm_create(&v, L_INJECT) == 0);
	CHECK(ioctl(v.kvm, KVM_CHECK_EXTENSION, KVM_CAP_SET_GUEST_DEBUG) == 1);
	CHECK(ioctl(v.kvm, KVM_CHECK_EXTENSION, KVM_CAP_SET_GUEST_DEBUG2) == mask);
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_SET_GUEST_DEBUG, (void *)8), EFAULT, "unmapped pointer (8)");
	/* Upstream 6.12 x86 ignores unknown flags and loads any DR7 (the entry then fails). */
	if (!upstream()) {
		CHECK_ERRNO_WHY(set_debug(&v, KVM_GUESTDBG_ENABLE | 0x4, NULL), EINVAL,
			    "unknown control bit 2 (rkvm; upstream 6.12 ignores it)");
		CHECK_ERRNO_WHY(set_debug(&v, KVM_GUESTDBG_ENABLE | 1U << 31, NULL), EINVAL,
			    "unknown control bit 31 (rkvm; upstream 6.12 ignores it)");
		CHECK_ERRNO_WHY(set_debug(&v, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP, dr), EINVAL,
			    "KVM_GUESTDBG_USE_HW_BP with DR7 bit 32 set (rkvm; upstream 6.12 loads it)");
	}
	/* One pending injection at a time; other settings may change meanwhile. */
	CHECK(set_debug(&v, KVM_GUESTDBG_INJECT_BP, NULL) == 0);
	CHECK_ERRNO_WHY(set_debug(&v, KVM_GUESTDBG_INJECT_DB, NULL), EBUSY,
		    "KVM_GUESTDBG_INJECT_DB while an INJECT_BP is pending");
	CHECK_ERRNO_WHY(set_debug(&v, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_INJECT_BP, NULL), EBUSY,
		    "KVM_GUESTDBG_ENABLE with INJECT_BP while one is pending");
	CHECK(set_debug(&v, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP, NULL) == 0);
	CHECK(set_debug(&v, 0, NULL) == 0);
	CHECK(ioctl(v.vcpu, KVM_GET_VCPU_EVENTS, &ev) == 0 && ev.exception.nr == 3);
	/* An exception set through KVM_SET_VCPU_EVENTS is "injected", not pending: an injection
	 * replaces it. */
	memset(&ev, 0, sizeof(ev));
	ev.exception.injected = 1;
	ev.exception.nr = 13;
	CHECK(ioctl(v.vcpu, KVM_SET_VCPU_EVENTS, &ev) == 0);
	CHECK(set_debug(&v, KVM_GUESTDBG_INJECT_DB, NULL) == 0);
	CHECK(ioctl(v.vcpu, KVM_GET_VCPU_EVENTS, &ev) == 0);
	CHECK(ev.exception.injected == 1 && ev.exception.nr == 1);
	dvm_free(&v);
}

KTAP_MAIN("rkvm guest_debug",
	CASE(single_step),
	CASE(single_step_stops_where_userspace_moves_rip),
	CASE(software_breakpoint),
	CASE(hardware_execution_breakpoint),
	CASE(data_watchpoints),
	CASE(inject_db),
	CASE(debugger_replaces_the_guests_breakpoints_until_it_lets_go),
	CASE(guest_single_steps_itself),
	CASE(caps_and_errors))

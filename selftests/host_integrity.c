// SPDX-License-Identifier: GPL-2.0
/*
 * Host state around guest entry: on every CPU, the MSRs a VM exit does not restore by itself
 * (or that rkvm must put back) read the same before and after 10^4 exits of a 64-bit guest that
 * first writes its own STAR, LSTAR, CSTAR, SFMASK, TSC_AUX and KERNEL_GS_BASE (each different
 * from any host value), then executes SWAPGS in its loop (so the hardware KERNEL_GS_BASE really
 * holds a guest value while the guest runs). The guest's STAR..TSC_AUX stay loaded after exits
 * until the CPU returns to user mode, so the read after the runs checks the lazy restore too. Read through /dev/cpu/N/msr by the vCPU thread itself, pinned to CPU N, so
 * task-specific values (FS base, the user GS base in KERNEL_GS_BASE) are this task's both times.
 * MSRs the CPU does not have (reads fail: e.g. TSC_AUX without RDTSCP, SPEC_CTRL) are left out.
 *
 * DR7 cannot be read from user mode: host_dr7_restored checks it through its effect instead. A
 * hardware write watchpoint (perf, so the kernel programs DR0/DR7 for this thread) must still
 * fire after 10^3 exits; a VM exit sets DR7 to 0x400, so without rkvm's restore it would not.
 * Also with a guest whose own breakpoint makes rkvm load guest values into DR0-DR3 around every
 * entry (upstream: switch_db_regs, hw_breakpoint_restore).
 *
 * Upstream references: vmx_prepare_switch_to_guest / vmx_prepare_switch_to_host (the lazily
 * restored KERNEL_GS_BASE), the host-state area written by vmx_set_constant_host_state.
 */
#include <linux/hw_breakpoint.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <stdint.h>
#include <sys/syscall.h>
#include "rkvm_util.h"

static const struct { uint32_t index; const char *name; } msrs[] = {
	{ 0xc0000080, "EFER" }, { 0xc0000081, "STAR" }, { 0xc0000082, "LSTAR" },
	{ 0xc0000083, "CSTAR" }, { 0xc0000084, "SFMASK" }, { 0xc0000100, "FS_BASE" },
	{ 0xc0000101, "GS_BASE" }, { 0xc0000102, "KERNEL_GS_BASE" }, { 0xc0000103, "TSC_AUX" },
	{ 0x277, "PAT" }, { 0x174, "SYSENTER_CS" }, { 0x175, "SYSENTER_ESP" },
	{ 0x176, "SYSENTER_EIP" }, { 0x48, "SPEC_CTRL" }, { 0x1d9, "DEBUGCTL" },
};
#define NMSRS (sizeof(msrs) / sizeof(msrs[0]))

/* Reads every MSR on `cpu`; ok[i] says whether MSR i could be read. */
static int read_msrs(int cpu, uint64_t *val, int *ok)
{
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/dev/cpu/%d/msr", cpu);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	for (unsigned int i = 0; i < NMSRS; i++)
		ok[i] = pread(fd, &val[i], 8, msrs[i].index) == 8;
	close(fd);
	return 0;
}

/*
 * A 64-bit guest in 64 KiB at GPA 0: page tables at 0x2000 (2 MiB page identity map), code at
 * 0x1000 (the real_vm layout), GS base 0x5a5a000.
 */
static int make_long_vm(struct real_vm *v, const unsigned char *code, size_t len)
{
	struct kvm_sregs s;
	struct kvm_regs regs = { .rip = 0x1000, .rflags = 2, .rsp = 0x8000 };
	struct kvm_segment cs = { .selector = 8, .type = 11, .present = 1, .s = 1, .l = 1, .g = 1,
				  .limit = 0xffffffff };
	struct kvm_segment ds = { .selector = 16, .type = 3, .present = 1, .s = 1, .db = 1, .g = 1,
				  .limit = 0xffffffff };
	uint64_t *pt;

	if (real_vm_create(v, code, len) || ioctl(v->vcpu, KVM_GET_SREGS, &s))
		return -1;
	pt = (uint64_t *)(v->mem + 0x2000);
	pt[0] = 0x3000 | 3;		/* PML4[0] -> PDPT */
	pt[512] = 0x4000 | 3;		/* PDPT[0] -> PD */
	pt[1024] = 0x83;		/* PD[0]: 2 MiB page at 0 */
	s.cr3 = 0x2000;
	s.cr4 = 1 << 5;			/* PAE */
	s.cr0 = 1 | (1 << 4) | (1u << 31);	/* PE, ET, PG */
	s.efer = (1 << 8) | (1 << 10);	/* LME, LMA */
	s.cs = cs;
	s.ds = s.es = s.fs = s.ss = ds;
	s.gs = ds;
	s.gs.base = 0x5a5a000;
	s.tr.type = 11;			/* busy 64-bit TSS, as IA-32e mode entry requires */
	return ioctl(v->vcpu, KVM_SET_SREGS, &s) || ioctl(v->vcpu, KVM_SET_REGS, &regs) ? -1 : 0;
}

TEST(host_msrs_unchanged_by_exits)
{
	/* wrmsr of each guest value, then 1: swapgs; out 0x80, al; jmp 1b */
	static const struct { uint32_t msr; uint64_t val; } guest[] = {
		{ 0xc0000081, 0x0023001011111111ull },	/* STAR */
		{ 0xc0000082, 0xffff800022222000ull },	/* LSTAR */
		{ 0xc0000083, 0xffff800033333000ull },	/* CSTAR */
		{ 0xc0000084, 0x47700 },		/* SFMASK */
		{ 0xc0000103, 0x5555 },			/* TSC_AUX */
		{ 0xc0000102, 0x66666000 },		/* KERNEL_GS_BASE */
	};
	static const unsigned char loop[] = { 0x0f, 0x01, 0xf8, 0xe6, 0x80, 0xeb, 0xf9 };
	unsigned char code[sizeof(guest) / sizeof(guest[0]) * 17 + sizeof(loop)], *p = code;
	int ncpus = sysconf(_SC_NPROCESSORS_ONLN);
	uint64_t before[NMSRS], after[NMSRS];
	int ok[NMSRS], ok2[NMSRS], compared = 0;
	struct real_vm v = { 0 };

	if (no_guests())
		SKIP("backend=none enters no guest");
	for (unsigned int i = 0; i < sizeof(guest) / sizeof(guest[0]); i++) {
		/* mov ecx, msr; mov eax, low; mov edx, high; wrmsr (a #GP would triple-fault) */
		uint32_t w[3] = { guest[i].msr, (uint32_t)guest[i].val, (uint32_t)(guest[i].val >> 32) };

		for (int k = 0; k < 3; k++) {
			*p++ = (unsigned char[]){ 0xb9, 0xb8, 0xba }[k];
			memcpy(p, &w[k], 4);
			p += 4;
		}
		*p++ = 0x0f;
		*p++ = 0x30;
	}
	memcpy(p, loop, sizeof(loop));
	if (access("/dev/cpu/0/msr", R_OK))
		SKIP("no /dev/cpu/0/msr (CONFIG_X86_MSR)");
	for (int cpu = 0; cpu < ncpus; cpu++) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		CHECK(sched_setaffinity(0, sizeof(set), &set) == 0);
		if (make_long_vm(&v, code, sizeof(code))) {
			CHECK(!"64-bit VM set up");
			break;
		}
		CHECK(read_msrs(cpu, before, ok) == 0);
		/*
		 * An odd number of exits, one SWAPGS each: were KERNEL_GS_BASE left as the guest
		 * left it, it would end up holding the guest's GS base, not flip back to the host's.
		 */
		for (int i = 0; i < 10001; i++) {
			if (ioctl(v.vcpu, KVM_RUN, 0) || v.run->exit_reason != KVM_EXIT_IO) {
				printf("# CPU %d exit %d: errno %d, reason %u\n", cpu, i, errno, v.run->exit_reason);
				CHECK(0);
				break;
			}
		}
		CHECK(read_msrs(cpu, after, ok2) == 0);
		for (unsigned int i = 0; i < NMSRS; i++) {
			if (!ok[i])
				continue;
			compared++;
			if (!ok2[i] || before[i] != after[i]) {
				printf("# CPU %d %s: %#llx before, %#llx after\n", cpu, msrs[i].name,
				       (unsigned long long)before[i], (unsigned long long)after[i]);
				CHECK(0);
			}
		}
		real_vm_free(&v);
	}
	printf("# %d MSR values compared on %d CPUs\n", compared, ncpus);
	CHECK(compared >= 10 * ncpus);
}

static volatile uint32_t watched;

/* Writes `watched` and returns how many times the watchpoint fired so far. */
static long long poke(int fd)
{
	long long n = -1;

	watched++;
	if (read(fd, &n, sizeof(n)) != sizeof(n))
		return -1;
	return n;
}

TEST(host_dr7_restored)
{
	/* 1: out 0x80, al; jmp 1b */
	static const unsigned char code[] = { 0xe6, 0x80, 0xeb, 0xfc };
	struct perf_event_attr a = {
		.type = PERF_TYPE_BREAKPOINT, .size = sizeof(a), .bp_type = HW_BREAKPOINT_W,
		.bp_addr = (uintptr_t)&watched, .bp_len = HW_BREAKPOINT_LEN_4,
		.sample_period = 1, .exclude_kernel = 1, .exclude_hv = 1,
	};
	struct real_vm v = { 0 };
	cpu_set_t set;
	int fd;

	if (no_guests())
		SKIP("backend=none enters no guest");
	/* One CPU, so the watchpoint stays programmed where the guest runs. */
	CPU_ZERO(&set);
	CPU_SET(0, &set);
	CHECK(sched_setaffinity(0, sizeof(set), &set) == 0);
	fd = syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
	if (fd < 0)
		SKIP("no hardware breakpoints (perf_event_open: %s)", strerror(errno));
	if (poke(fd) != 1) {
		close(fd);
		SKIP("the watchpoint does not fire even without a guest (emulator without debug registers)");
	}
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	for (int i = 0; i < 1000; i++) {
		if (ioctl(v.vcpu, KVM_RUN, 0) || v.run->exit_reason != KVM_EXIT_IO) {
			CHECK(!"exit to userspace on OUT");
			break;
		}
	}
	/* Right after KVM_RUN returned, with no reschedule in between to reprogram DR7. */
	CHECK(poke(fd) == 2);
	real_vm_free(&v);
	close(fd);
}

/*
 * The same with a guest that arms a breakpoint of its own (DR0, which the host's watchpoint
 * likely uses too): its DR0-DR3 are loaded around every entry, and the host's must come back.
 */
TEST(host_watchpoint_survives_guest_breakpoints)
{
	/* mov eax, 0x3000; mov dr0, eax; mov eax, 0x10401 (L0, write, 1 byte); mov dr7, eax;
	 * 1: out 0x80, al; jmp 1b */
	static const unsigned char code[] = {
		0x66, 0xb8, 0x00, 0x30, 0x00, 0x00, 0x0f, 0x23, 0xc0,
		0x66, 0xb8, 0x01, 0x04, 0x01, 0x00, 0x0f, 0x23, 0xf8,
		0xe6, 0x80, 0xeb, 0xfc,
	};
	struct perf_event_attr a = {
		.type = PERF_TYPE_BREAKPOINT, .size = sizeof(a), .bp_type = HW_BREAKPOINT_W,
		.bp_addr = (uintptr_t)&watched, .bp_len = HW_BREAKPOINT_LEN_4,
		.sample_period = 1, .exclude_kernel = 1, .exclude_hv = 1,
	};
	struct kvm_debugregs d;
	struct real_vm v = { 0 };
	cpu_set_t set;
	int fd;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CPU_ZERO(&set);
	CPU_SET(0, &set);
	CHECK(sched_setaffinity(0, sizeof(set), &set) == 0);
	fd = syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
	if (fd < 0)
		SKIP("no hardware breakpoints (perf_event_open: %s)", strerror(errno));
	if (poke(fd) != 1) {
		close(fd);
		SKIP("the watchpoint does not fire even without a guest (emulator without debug registers)");
	}
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	for (int i = 0; i < 1000; i++) {
		if (ioctl(v.vcpu, KVM_RUN, 0) || v.run->exit_reason != KVM_EXIT_IO) {
			CHECK(!"exit to userspace on OUT");
			break;
		}
	}
	CHECK(ioctl(v.vcpu, KVM_GET_DEBUGREGS, &d) == 0 && d.db[0] == 0x3000 && d.dr7 == 0x10401);
	CHECK(poke(fd) == 2);
	real_vm_free(&v);
	close(fd);
}

KTAP_MAIN("rkvm host_integrity",
	CASE(host_msrs_unchanged_by_exits),
	CASE(host_dr7_restored),
	CASE(host_watchpoint_survives_guest_breakpoints))

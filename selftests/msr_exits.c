// SPDX-License-Identifier: GPL-2.0
/*
 * Guest MSR accesses handled by userspace and the MSR filter: KVM_ENABLE_CAP of
 * KVM_CAP_X86_USER_SPACE_MSR (valid reason bits only), KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR
 * with their reason (INVAL for a refused value, UNKNOWN for an MSR the kernel does not have,
 * FILTER for a denied access), completion on the next KVM_RUN (the data into EDX:EAX, or #GP
 * with kvm_run->msr.error), #GP when the reason is not enabled; KVM_X86_SET_MSR_FILTER's
 * EINVAL and EFAULT cases in upstream's order, a filter denying a pass-through MSR (FS_BASE,
 * GS_BASE), replaced while the vCPU exists, and never applying to KVM_GET/SET_MSRS; KVM's PV
 * MSRs through the same filter and exits.
 *
 * Upstream references: kvm_vm_ioctl_enable_cap (KVM_CAP_X86_USER_SPACE_MSR),
 * kvm_vm_ioctl_set_msr_filter, kvm_add_msr_filter, kvm_msr_allowed, kvm_emulate_rdmsr /
 * kvm_emulate_wrmsr, kvm_msr_user_space, complete_fast_rdmsr, vmx_msr_filter_changed; the
 * kernel's x86_64/userspace_msr_exit_test.
 */
#include <stdint.h>
#include "rkvm_util.h"

#define FS_BASE		0xc0000100
#define GS_BASE		0xc0000101
#define PAT		0x277
#define SYSTEM_TIME_NEW	0x4b564d01	/* MSR_KVM_SYSTEM_TIME_NEW */
#define POLL_CONTROL	0x4b564d05	/* MSR_KVM_POLL_CONTROL */

struct msrs {
	struct kvm_msrs h;
	struct kvm_msr_entry e[1];
};

static int get1(int vcpu, uint32_t idx, uint64_t *v)
{
	struct msrs m = { .h.nmsrs = 1, .e[0].index = idx };
	int r = ioctl(vcpu, KVM_GET_MSRS, &m);

	*v = m.e[0].data;
	return r;
}

static int set1(int vcpu, uint32_t idx, uint64_t v)
{
	struct msrs m = { .h.nmsrs = 1, .e[0] = { .index = idx, .data = v } };

	return ioctl(vcpu, KVM_SET_MSRS, &m);
}

static int user_space_msr(int vm, __u64 reasons)
{
	struct kvm_enable_cap cap = { .cap = KVM_CAP_X86_USER_SPACE_MSR, .args[0] = reasons };

	return ioctl(vm, KVM_ENABLE_CAP, &cap);
}

/* A real-mode #GP handler at 0x1800 (IVT entry 13): out 0x81, al; hlt. */
static void gp_handler(struct real_vm *v)
{
	static const unsigned char h[] = { 0xe6, 0x81, 0xf4 };

	memcpy(v->mem + 0x1800, h, sizeof(h));
	*(uint32_t *)(v->mem + 13 * 4) = 0x1800;
}

/* KVM_RUN, expecting an OUT to `port`; its 4-byte data in *data if asked. */
static int run_to_port(struct real_vm *v, int port, uint32_t *data)
{
	if (ioctl(v->vcpu, KVM_RUN, 0) || v->run->exit_reason != KVM_EXIT_IO || v->run->io.port != port) {
		printf("# KVM_RUN: errno %d, exit %u port %#x, wanted port %#x\n", errno,
		       v->run->exit_reason, v->run->io.port, port);
		return 0;
	}
	if (data)
		*data = *(uint32_t *)((char *)v->run + v->run->io.data_offset);
	return 1;
}

/* KVM_RUN, expecting a userspace MSR exit of this kind, MSR and reason. */
static int run_to_msr_exit(struct real_vm *v, __u32 exit, __u32 index, __u32 reason)
{
	if (ioctl(v->vcpu, KVM_RUN, 0) || v->run->exit_reason != exit || v->run->msr.index != index ||
	    v->run->msr.reason != reason || v->run->msr.error != 0) {
		printf("# KVM_RUN: errno %d, exit %u msr %#x reason %u error %u; wanted exit %u msr %#x reason %u\n",
		       errno, v->run->exit_reason, v->run->msr.index, v->run->msr.reason,
		       v->run->msr.error, exit, index, reason);
		return 0;
	}
	return 1;
}

TEST(caps_and_enable_cap_bits)
{
	int kvm = open_dev(), vm = create_vm(kvm);
	struct kvm_enable_cap cap = { .cap = KVM_CAP_X86_USER_SPACE_MSR, .flags = 1 };

	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_X86_USER_SPACE_MSR) == 1);
	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_X86_MSR_FILTER) == 1);
	CHECK(ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_X86_USER_SPACE_MSR) == 1);
	/* Every single bit of args[0]: only INVAL, UNKNOWN and FILTER are reasons. */
	for (int bit = 0; bit < 64; bit++) {
		if ((1ull << bit) & KVM_MSR_EXIT_REASON_VALID_MASK)
			CHECK(user_space_msr(vm, 1ull << bit) == 0);
		else
			CHECK_ERRNO_WHY(user_space_msr(vm, 1ull << bit), EINVAL,
				    "KVM_CAP_X86_USER_SPACE_MSR with a reason bit outside KVM_MSR_EXIT_REASON_VALID_MASK");
	}
	CHECK(user_space_msr(vm, KVM_MSR_EXIT_REASON_VALID_MASK) == 0);
	CHECK(user_space_msr(vm, 0) == 0);
	CHECK_ERRNO_WHY(ioctl(vm, KVM_ENABLE_CAP, &cap), EINVAL,
		    "KVM_CAP_X86_USER_SPACE_MSR with nonzero flags");
	CHECK_ERRNO_WHY(ioctl(vm, KVM_ENABLE_CAP, NULL), EFAULT, "NULL pointer");
	close(vm);
	close(kvm);
}

TEST(filter_errors)
{
	int kvm = open_dev(), vm = create_vm(kvm), vcpu;
	static uint8_t bits[KVM_MSR_FILTER_MAX_BITMAP_SIZE];
	struct kvm_msr_filter f;
	long ps = page_size();
	uint8_t *hole;

	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	CHECK(vcpu >= 0);
	hole = mmap(NULL, ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(hole != MAP_FAILED);
#define ONE_RANGE(fl) (struct kvm_msr_filter){ .flags = (fl), .ranges[0] = { \
		.flags = KVM_MSR_FILTER_READ, .nmsrs = 1, .base = 0x10, .bitmap = bits } }
	/* Filter flags: only DEFAULT_DENY (bit 0). */
	for (int bit = 0; bit < 32; bit++) {
		f = ONE_RANGE(1u << bit);
		if (bit == 0)
			CHECK(ioctl(vm, KVM_X86_SET_MSR_FILTER, &f) == 0);
		else
			CHECK_ERRNO_WHY(ioctl(vm, KVM_X86_SET_MSR_FILTER, &f), EINVAL,
				    "filter flag other than KVM_MSR_FILTER_DEFAULT_DENY");
	}
	/* Range flags: READ, WRITE, both; not 0. */
	for (int bit = 0; bit < 32; bit++) {
		f = ONE_RANGE(0);
		f.ranges[0].flags = 1u << bit;
		if (bit < 2)
			CHECK(ioctl(vm, KVM_X86_SET_MSR_FILTER, &f) == 0);
		else
			CHECK_ERRNO_WHY(ioctl(vm, KVM_X86_SET_MSR_FILTER, &f), EINVAL,
				    "range flag other than READ and WRITE");
	}
	f = ONE_RANGE(0);
	f.ranges[0].flags = 0;
	CHECK_ERRNO_WHY(ioctl(vm, KVM_X86_SET_MSR_FILTER, &f), EINVAL, "range with flags 0");
	/* A range of no MSRs is skipped, whatever its flags and bitmap. */
	f = ONE_RANGE(0);
	f.ranges[3] = (struct kvm_msr_filter_range){ .flags = 0xffff, .nmsrs = 0, .bitmap = NULL };
	CHECK(ioctl(vm, KVM_X86_SET_MSR_FILTER, &f) == 0);
	/* Deny by default needs a range; allow with none turns filtering off. */
	f = (struct kvm_msr_filter){ .flags = KVM_MSR_FILTER_DEFAULT_DENY };
	CHECK_ERRNO_WHY(ioctl(vm, KVM_X86_SET_MSR_FILTER, &f), EINVAL,
		    "KVM_MSR_FILTER_DEFAULT_DENY with no range");
	f.flags = 0;
	CHECK(ioctl(vm, KVM_X86_SET_MSR_FILTER, &f) == 0);
	/* The bitmap: at most KVM_MSR_FILTER_MAX_BITMAP_SIZE bytes (nmsrs rounded up to longs). */
	f = ONE_RANGE(0);
	f.ranges[0].nmsrs = KVM_MSR_FILTER_MAX_BITMAP_SIZE * 8;
	CHECK(ioctl(vm, KVM_X86_SET_MSR_FILTER, &f) == 0);
	f.ranges[0].nmsrs++;
	CHECK_ERRNO_WHY(ioctl(vm, KVM_X86_SET_MSR_FILTER, &f), EINVAL,
		    "range bitmap one MSR over KVM_MSR_FILTER_MAX_BITMAP_SIZE");
	f.ranges[0].nmsrs = 0xffffffff;
	CHECK_ERRNO_WHY(ioctl(vm, KVM_X86_SET_MSR_FILTER, &f), EINVAL, "range of 0xffffffff MSRs");
	/* Bad pointers: the filter, a bitmap; ranges are checked and copied in order. */
	CHECK_ERRNO_WHY(ioctl(vm, KVM_X86_SET_MSR_FILTER, NULL), EFAULT, "NULL pointer");
	f = ONE_RANGE(0);
	f.ranges[0].bitmap = NULL;
	CHECK_ERRNO_WHY(ioctl(vm, KVM_X86_SET_MSR_FILTER, &f), EFAULT, "NULL range bitmap");
	f.ranges[0].bitmap = hole;
	CHECK_ERRNO_WHY(ioctl(vm, KVM_X86_SET_MSR_FILTER, &f), EFAULT, "unreadable range bitmap");
	f.ranges[1] = (struct kvm_msr_filter_range){ .flags = 4, .nmsrs = 1, .bitmap = bits };
	CHECK_ERRNO_WHY(ioctl(vm, KVM_X86_SET_MSR_FILTER, &f), EFAULT,
		    "unreadable bitmap in range 0, bad flags in range 1 (ranges copied in order)");
	f.ranges[0].bitmap = bits;
	f.ranges[1].bitmap = hole;
	CHECK_ERRNO_WHY(ioctl(vm, KVM_X86_SET_MSR_FILTER, &f), EINVAL,
		    "bad flags in range 1, unreadable bitmap there (flags checked first)");
	/* All 16 ranges used. */
	f = ONE_RANGE(KVM_MSR_FILTER_DEFAULT_DENY);
	for (int i = 0; i < KVM_MSR_FILTER_MAX_RANGES; i++)
		f.ranges[i] = (struct kvm_msr_filter_range){ .flags = KVM_MSR_FILTER_WRITE,
			.nmsrs = 64, .base = 0x1000 * i, .bitmap = bits };
	CHECK(ioctl(vm, KVM_X86_SET_MSR_FILTER, &f) == 0);
#undef ONE_RANGE
	munmap(hole, ps);
	close(vcpu);
	close(vm);
	close(kvm);
}

/*
 * An MSR the kernel does not have (0xdeadbeef) with UNKNOWN exits: userspace answers RDMSR
 * (EDX:EAX), sees WRMSR's data, and fails the second WRMSR (#GP).
 *   mov ecx, 0xdeadbeef; rdmsr; out 0x80, eax; mov eax, edx; out 0x80, eax
 *   mov eax, 0xaabbccdd; mov edx, 0x01020304; wrmsr; out 0x82, al; wrmsr; hlt
 */
TEST(unknown_msr_exits)
{
	static const unsigned char code[] = {
		0x66, 0xb9, 0xef, 0xbe, 0xad, 0xde, 0x0f, 0x32, 0x66, 0xe7, 0x80, 0x66,
		0x89, 0xd0, 0x66, 0xe7, 0x80, 0x66, 0xb8, 0xdd, 0xcc, 0xbb, 0xaa, 0x66,
		0xba, 0x04, 0x03, 0x02, 0x01, 0x0f, 0x30, 0xe6, 0x82, 0x0f, 0x30, 0xf4,
	};
	struct real_vm v = { 0 };
	uint32_t d = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	gp_handler(&v);
	CHECK(user_space_msr(v.vm, KVM_MSR_EXIT_REASON_UNKNOWN) == 0);
	CHECK(run_to_msr_exit(&v, KVM_EXIT_X86_RDMSR, 0xdeadbeef, KVM_MSR_EXIT_REASON_UNKNOWN));
	v.run->msr.data = 0x1122334455667788ull;
	CHECK(run_to_port(&v, 0x80, &d) && d == 0x55667788);
	CHECK(run_to_port(&v, 0x80, &d) && d == 0x11223344);
	CHECK(run_to_msr_exit(&v, KVM_EXIT_X86_WRMSR, 0xdeadbeef, KVM_MSR_EXIT_REASON_UNKNOWN));
	CHECK(v.run->msr.data == 0x01020304aabbccddull);
	CHECK(run_to_port(&v, 0x82, NULL));
	CHECK(run_to_msr_exit(&v, KVM_EXIT_X86_WRMSR, 0xdeadbeef, KVM_MSR_EXIT_REASON_UNKNOWN));
	v.run->msr.error = 1;
	CHECK(run_to_port(&v, 0x81, NULL));
	real_vm_free(&v);
}

/*
 * The reason decides: a refused value of a known MSR (PAT type 2) exits with INVAL when that is
 * enabled (userspace accepts it: PAT is unchanged); an unknown MSR with only INVAL enabled is
 * #GP.
 *   mov ecx, PAT; mov eax, 2; xor edx, edx; wrmsr; out 0x82, al; mov ecx, 0xdeadbeef; rdmsr; hlt
 */
TEST(exit_reasons)
{
	static const unsigned char code[] = {
		0x66, 0xb9, 0x77, 0x02, 0x00, 0x00, 0x66, 0xb8, 0x02, 0x00, 0x00, 0x00,
		0x66, 0x31, 0xd2, 0x0f, 0x30, 0xe6, 0x82, 0x66, 0xb9, 0xef, 0xbe, 0xad,
		0xde, 0x0f, 0x32, 0xf4,
	};
	struct real_vm v = { 0 };
	uint64_t pat = 0, pat2 = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	gp_handler(&v);
	CHECK(get1(v.vcpu, PAT, &pat) == 1);
	CHECK(user_space_msr(v.vm, KVM_MSR_EXIT_REASON_INVAL) == 0);
	CHECK(run_to_msr_exit(&v, KVM_EXIT_X86_WRMSR, PAT, KVM_MSR_EXIT_REASON_INVAL));
	CHECK(v.run->msr.data == 2);
	CHECK(run_to_port(&v, 0x82, NULL));
	CHECK(get1(v.vcpu, PAT, &pat2) == 1 && pat2 == pat);
	CHECK(run_to_port(&v, 0x81, NULL));
	real_vm_free(&v);
}

/*
 * A filter on the MSRs a VMX guest otherwise accesses without an exit: GS_BASE writes and
 * FS_BASE reads denied (FILTER exits; userspace handles them, the real MSRs stay as they are),
 * then the filter replaced by an empty one (the next RDMSR reads the real FS base, with no exit),
 * then a deny-by-default filter without FILTER exits (#GP). KVM_GET/SET_MSRS are never filtered.
 *   mov ecx, GS_BASE; mov eax, 0x6000; xor edx, edx; wrmsr; out 0x83, al
 *   mov ecx, FS_BASE; rdmsr; out 0x80, eax; rdmsr; out 0x80, eax; rdmsr; hlt
 */
TEST(filter_on_pass_through_msrs)
{
	static const unsigned char code[] = {
		0x66, 0xb9, 0x01, 0x01, 0x00, 0xc0, 0x66, 0xb8, 0x00, 0x60, 0x00, 0x00,
		0x66, 0x31, 0xd2, 0x0f, 0x30, 0xe6, 0x83, 0x66, 0xb9, 0x00, 0x01, 0x00,
		0xc0, 0x0f, 0x32, 0x66, 0xe7, 0x80, 0x0f, 0x32, 0x66, 0xe7, 0x80, 0x0f,
		0x32, 0xf4,
	};
	static uint8_t deny[8], allow_tsc[8] = { 1 };
	struct kvm_msr_filter f = {
		.flags = 0,
		.ranges = {
			{ .flags = KVM_MSR_FILTER_WRITE, .nmsrs = 1, .base = GS_BASE, .bitmap = deny },
			{ .flags = KVM_MSR_FILTER_READ, .nmsrs = 1, .base = FS_BASE, .bitmap = deny },
		},
	};
	struct real_vm v = { 0 };
	uint64_t val = 0;
	uint32_t d = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	gp_handler(&v);
	CHECK(set1(v.vcpu, FS_BASE, 0x5000) == 1);
	CHECK(user_space_msr(v.vm, KVM_MSR_EXIT_REASON_FILTER) == 0);
	CHECK(ioctl(v.vm, KVM_X86_SET_MSR_FILTER, &f) == 0);
	CHECK(run_to_msr_exit(&v, KVM_EXIT_X86_WRMSR, GS_BASE, KVM_MSR_EXIT_REASON_FILTER));
	CHECK(v.run->msr.data == 0x6000);
	CHECK(run_to_port(&v, 0x83, NULL));
	CHECK(get1(v.vcpu, GS_BASE, &val) == 1 && val == 0);
	CHECK(run_to_msr_exit(&v, KVM_EXIT_X86_RDMSR, FS_BASE, KVM_MSR_EXIT_REASON_FILTER));
	/* Userspace's own accesses are not filtered. */
	CHECK(get1(v.vcpu, FS_BASE, &val) == 1 && val == 0x5000);
	CHECK(set1(v.vcpu, GS_BASE, 0x7000) == 1);
	v.run->msr.data = 0x12345678;
	CHECK(run_to_port(&v, 0x80, &d) && d == 0x12345678);
	/* No filter: FS_BASE passes through again. */
	f = (struct kvm_msr_filter){ .flags = 0 };
	CHECK(ioctl(v.vm, KVM_X86_SET_MSR_FILTER, &f) == 0);
	CHECK(run_to_port(&v, 0x80, &d) && d == 0x5000);
	/* Deny by default (only TSC reads allowed), FILTER exits off: #GP. */
	f = (struct kvm_msr_filter){ .flags = KVM_MSR_FILTER_DEFAULT_DENY, .ranges[0] = {
		.flags = KVM_MSR_FILTER_READ, .nmsrs = 1, .base = 0x10, .bitmap = allow_tsc } };
	CHECK(ioctl(v.vm, KVM_X86_SET_MSR_FILTER, &f) == 0);
	CHECK(user_space_msr(v.vm, 0) == 0);
	CHECK(run_to_port(&v, 0x81, NULL));
	CHECK(get1(v.vcpu, GS_BASE, &val) == 1 && val == 0x7000);
	real_vm_free(&v);
}

/*
 * KVM's PV MSRs take the same path as any other MSR (upstream kvm_get/set_msr_with_filter, then
 * kvm_msr_user_space): a filtered-out write of MSR_KVM_SYSTEM_TIME_NEW exits with FILTER and is
 * not done (kvmclock stays off); an allowed read of MSR_KVM_POLL_CONTROL needs no exit (1,
 * polling allowed); a bad value written to it exits with INVAL and is not done; under
 * KVM_CAP_ENFORCE_PV_FEATURE_CPUID with no KVM features in the CPUID, the read exits with UNKNOWN
 * (6.12's KVM_MSR_RET_UNSUPPORTED for a PV feature the guest lacks; userspace answers it), and is
 * #GP once UNKNOWN exits are off.
 *   mov ecx, SYSTEM_TIME_NEW; mov eax, 0x2001; xor edx, edx; wrmsr; out 0x82, al
 *   mov ecx, POLL_CONTROL; rdmsr; out 0x80, eax; mov eax, 2; wrmsr; out 0x82, al
 *   rdmsr; out 0x80, eax; rdmsr; hlt
 */
TEST(pv_msrs_through_filter)
{
	static const unsigned char code[] = {
		0x66, 0xb9, 0x01, 0x4d, 0x56, 0x4b, 0x66, 0xb8, 0x01, 0x20, 0x00, 0x00,
		0x66, 0x31, 0xd2, 0x0f, 0x30, 0xe6, 0x82, 0x66, 0xb9, 0x05, 0x4d, 0x56,
		0x4b, 0x0f, 0x32, 0x66, 0xe7, 0x80, 0x66, 0xb8, 0x02, 0x00, 0x00, 0x00,
		0x0f, 0x30, 0xe6, 0x82, 0x0f, 0x32, 0x66, 0xe7, 0x80, 0x0f, 0x32, 0xf4,
	};
	static uint8_t deny[1];
	struct kvm_msr_filter f = {
		.flags = 0,	/* default allow */
		.ranges[0] = { .flags = KVM_MSR_FILTER_WRITE, .nmsrs = 1, .base = SYSTEM_TIME_NEW, .bitmap = deny },
	};
	struct kvm_enable_cap enforce = { .cap = KVM_CAP_ENFORCE_PV_FEATURE_CPUID, .args[0] = 1 };
	struct real_vm v = { 0 };
	uint64_t val = 1;
	uint32_t d = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	gp_handler(&v);
	CHECK(user_space_msr(v.vm, KVM_MSR_EXIT_REASON_FILTER | KVM_MSR_EXIT_REASON_INVAL) == 0);
	CHECK(ioctl(v.vm, KVM_X86_SET_MSR_FILTER, &f) == 0);
	CHECK(run_to_msr_exit(&v, KVM_EXIT_X86_WRMSR, SYSTEM_TIME_NEW, KVM_MSR_EXIT_REASON_FILTER));
	CHECK(v.run->msr.data == 0x2001);
	CHECK(run_to_port(&v, 0x82, NULL));
	CHECK(get1(v.vcpu, SYSTEM_TIME_NEW, &val) == 1 && val == 0);
	CHECK(run_to_port(&v, 0x80, &d) && d == 1);
	CHECK(run_to_msr_exit(&v, KVM_EXIT_X86_WRMSR, POLL_CONTROL, KVM_MSR_EXIT_REASON_INVAL));
	CHECK(v.run->msr.data == 2);
	CHECK(run_to_port(&v, 0x82, NULL));
	CHECK(get1(v.vcpu, POLL_CONTROL, &val) == 1 && val == 1);
	CHECK(ioctl(v.vcpu, KVM_ENABLE_CAP, &enforce) == 0);
	CHECK(user_space_msr(v.vm, KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_FILTER) == 0);
	CHECK(run_to_msr_exit(&v, KVM_EXIT_X86_RDMSR, POLL_CONTROL, KVM_MSR_EXIT_REASON_UNKNOWN));
	v.run->msr.data = 0x77;
	CHECK(run_to_port(&v, 0x80, &d) && d == 0x77);
	CHECK(user_space_msr(v.vm, KVM_MSR_EXIT_REASON_INVAL | KVM_MSR_EXIT_REASON_FILTER) == 0);
	CHECK(run_to_port(&v, 0x81, NULL));
	real_vm_free(&v);
}

KTAP_MAIN("rkvm msr_exits",
	CASE(caps_and_enable_cap_bits),
	CASE(filter_errors),
	CASE(unknown_msr_exits),
	CASE(exit_reasons),
	CASE(filter_on_pass_through_msrs),
	CASE(pv_msrs_through_filter))

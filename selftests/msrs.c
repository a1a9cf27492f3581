// SPDX-License-Identifier: GPL-2.0
/*
 * MSRs through the API: KVM_GET_MSR_INDEX_LIST on the device fd (count written back, E2BIG when
 * the array is too small), KVM_GET_MSRS / KVM_SET_MSRS on a vCPU (round trips, partial success
 * returning the number done, invalid values, E2BIG, EFAULT), and a guest seeing what userspace set
 * (RDMSR) and userspace seeing what the guest set (WRMSR). The feature MSRs of the device fd
 * (KVM_GET_MSR_FEATURE_INDEX_LIST, KVM_GET_MSRS there). The MSRs whose userspace writes follow
 * other rules than the guest's (host_initiated): IA32_TSC and IA32_TSC_ADJUST (and vCPU TSCs
 * starting together at 0), IA32_FEATURE_CONTROL, IA32_UCODE_REV, MSR_PLATFORM_INFO (and
 * KVM_CAP_MSR_PLATFORM_INFO) with MSR_MISC_FEATURES_ENABLES, MSR_K7_HWCR.
 *
 * Upstream references: kvm_arch_dev_ioctl (KVM_GET_MSR_INDEX_LIST,
 * KVM_GET_MSR_FEATURE_INDEX_LIST, KVM_GET_MSRS), kvm_get_feature_msr, msr_io / __msr_io,
 * kvm_get_msr_common / kvm_set_msr_common, kvm_synchronize_tsc, vmx_get_msr / vmx_set_msr
 * (is_vmx_feature_control_msr_valid), kvm_vm_ioctl_enable_cap (KVM_CAP_MSR_PLATFORM_INFO).
 */
#include <stdint.h>
#include <time.h>
#include "rkvm_util.h"

#define STAR	0xc0000081
#define LSTAR	0xc0000082
#define KGS	0xc0000102
#define SEIP	0x176
#define PAT	0x277
#define TSC	0x10
#define FEAT_CTL	0x3a
#define TSC_ADJUST	0x3b
#define UCODE_REV	0x8b
#define PLATFORM_INFO	0xce
#define MISC_FEATURES	0x140
#define HWCR	0xc0010015

struct msrs {
	struct kvm_msrs h;
	struct kvm_msr_entry e[8];
};

/* KVM_GET_MSRS / KVM_SET_MSRS of n entries with the given indices and data. */
static int msr_io(int vcpu, unsigned long cmd, struct msrs *m, int n, const uint32_t *idx,
		  const uint64_t *data)
{
	memset(m, 0, sizeof(*m));
	m->h.nmsrs = n;
	for (int i = 0; i < n; i++) {
		m->e[i].index = idx[i];
		m->e[i].data = data ? data[i] : 0;
	}
	return ioctl(vcpu, cmd, m);
}

TEST(index_list)
{
	struct kvm_msr_list *l;
	int kvm = open_dev(), n, rc;
	struct kvm_msr_list probe = { .nmsrs = 0 };
	int lstar = 0, star = 0, kgs = 0, dup = 0;

	CHECK(kvm >= 0);
	errno = 0;
	rc = ioctl(kvm, KVM_GET_MSR_INDEX_LIST, &probe);
	n = probe.nmsrs;
	if (no_guests()) {
		/* backend=none: no vCPU has MSRs, the list is empty and fits. */
		CHECK(rc == 0 && n == 0);
		close(kvm);
		return;
	}
	CHECK(rc == -1 && errno == E2BIG);
	CHECK(n >= 10 && n < 1000);
	l = calloc(1, sizeof(*l) + n * sizeof(__u32));
	l->nmsrs = n - 1;
	CHECK_ERRNO_WHY(ioctl(kvm, KVM_GET_MSR_INDEX_LIST, l), E2BIG,
		    "nmsrs one below the list's length");
	CHECK(l->nmsrs == (__u32)n);
	l->nmsrs = n;
	CHECK(ioctl(kvm, KVM_GET_MSR_INDEX_LIST, l) == 0);
	CHECK(l->nmsrs == (__u32)n);
	for (int i = 0; i < n; i++) {
		lstar += l->indices[i] == LSTAR;
		star += l->indices[i] == STAR;
		kgs += l->indices[i] == KGS;
		for (int j = 0; j < i; j++)
			dup += l->indices[i] == l->indices[j];
	}
	CHECK(lstar == 1 && star == 1 && kgs == 1 && dup == 0);
	CHECK_ERRNO_WHY(ioctl(kvm, KVM_GET_MSR_INDEX_LIST, NULL), EFAULT, "NULL pointer");
	free(l);
	close(kvm);
}

TEST(get_set_round_trip_and_partial_success)
{
	static const uint32_t idx[] = { STAR, LSTAR, KGS, SEIP, PAT };
	static const uint64_t val[] = { 0x0023001000000000ull, 0xffffffff81234560ull, 0x7f0012340000ull,
					0xffffffff81000000ull, 0x0006040600070406ull };
	static const uint32_t mixed[] = { LSTAR, 0x12345, STAR };
	static const uint64_t mixed_val[] = { 0xffff800000001000ull, 1, 2 };
	struct real_vm v = { 0 };
	struct msrs m;

	if (no_guests())
		SKIP("backend=none vCPUs have no MSRs");
	CHECK(real_vm_create(&v, (const unsigned char *)"\xf4", 1) == 0);
	CHECK(msr_io(v.vcpu, KVM_SET_MSRS, &m, 5, idx, val) == 5);
	CHECK(msr_io(v.vcpu, KVM_GET_MSRS, &m, 5, idx, NULL) == 5);
	for (int i = 0; i < 5; i++)
		CHECK(m.e[i].data == val[i]);
	/* Stops at the unknown MSR: 1 done, STAR untouched. */
	CHECK(msr_io(v.vcpu, KVM_SET_MSRS, &m, 3, mixed, mixed_val) == 1);
	CHECK(msr_io(v.vcpu, KVM_GET_MSRS, &m, 3, mixed, NULL) == 1);
	CHECK(m.e[0].data == mixed_val[0]);
	CHECK(msr_io(v.vcpu, KVM_GET_MSRS, &m, 1, idx, NULL) == 1 && m.e[0].data == val[0]);
	/* Values the CPU would refuse: 0 done. */
	CHECK(msr_io(v.vcpu, KVM_SET_MSRS, &m, 1, (uint32_t[]){ LSTAR }, (uint64_t[]){ 1ull << 50 }) == 0);
	CHECK(msr_io(v.vcpu, KVM_SET_MSRS, &m, 1, (uint32_t[]){ PAT }, (uint64_t[]){ 2 }) == 0);
	CHECK(msr_io(v.vcpu, KVM_GET_MSRS, &m, 0, idx, NULL) == 0);
	real_vm_free(&v);
}

TEST(bad_requests)
{
	struct real_vm v = { 0 };
	struct kvm_msrs *big;

	if (no_guests())
		SKIP("backend=none vCPUs have no MSRs");
	CHECK(real_vm_create(&v, (const unsigned char *)"\xf4", 1) == 0);
	big = calloc(1, sizeof(*big) + 256 * sizeof(struct kvm_msr_entry));
	big->nmsrs = 256;
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_GET_MSRS, big), E2BIG, "256 MSRs (MAX_IO_MSRS is 256)");
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_SET_MSRS, big), E2BIG, "256 MSRs (MAX_IO_MSRS is 256)");
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_GET_MSRS, NULL), EFAULT, "NULL pointer");
	/* A header that says 4 entries, in front of memory that is not mapped. */
	{
		long ps = page_size();
		char *p = mmap(NULL, 2 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		struct kvm_msrs *h = (struct kvm_msrs *)(p + ps - sizeof(*h));

		munmap(p + ps, ps);
		h->nmsrs = 4;
		CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_SET_MSRS, h), EFAULT,
			    "entries on an unmapped page after the header");
		CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_GET_MSRS, h), EFAULT,
			    "entries on an unmapped page after the header");
		munmap(p, ps);
	}
	free(big);
	real_vm_free(&v);
}

TEST(guest_sees_userspace_values_and_back)
{
	/*
	 * mov ecx, LSTAR; rdmsr; out 0x80, eax; mov ecx, STAR; mov eax, 0x11223344;
	 * mov edx, 0x55667788; wrmsr; hlt (real mode, 32-bit operands)
	 */
	static const unsigned char code[] = {
		0x66, 0xb9, 0x82, 0x00, 0x00, 0xc0, 0x0f, 0x32, 0x66, 0xe7, 0x80,
		0x66, 0xb9, 0x81, 0x00, 0x00, 0xc0, 0x66, 0xb8, 0x44, 0x33, 0x22, 0x11,
		0x66, 0xba, 0x88, 0x77, 0x66, 0x55, 0x0f, 0x30, 0xf4,
	};
	struct real_vm v = { 0 };
	struct msrs m;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	CHECK(msr_io(v.vcpu, KVM_SET_MSRS, &m, 1, (uint32_t[]){ LSTAR },
		     (uint64_t[]){ 0xffff800012345678ull }) == 1);
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_IO);
	CHECK(v.run->io.size == 4 && *(__u32 *)((char *)v.run + v.run->io.data_offset) == 0x12345678);
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_HLT);
	CHECK(msr_io(v.vcpu, KVM_GET_MSRS, &m, 1, (uint32_t[]){ STAR }, NULL) == 1);
	CHECK(m.e[0].data == 0x5566778811223344ull);
	real_vm_free(&v);
}

static int get1(int vcpu, uint32_t idx, uint64_t *v)
{
	struct msrs m;
	int r = msr_io(vcpu, KVM_GET_MSRS, &m, 1, &idx, NULL);

	*v = m.e[0].data;
	return r;
}

static int set1(int vcpu, uint32_t idx, uint64_t v)
{
	struct msrs m;

	return msr_io(vcpu, KVM_SET_MSRS, &m, 1, &idx, &v);
}

static uint64_t msr(int vcpu, uint32_t idx)
{
	uint64_t v = 0;

	CHECK(get1(vcpu, idx, &v) == 1);
	return v;
}

/* KVM_SET_CPUID2 with what KVM_GET_SUPPORTED_CPUID reports. */
static int set_supported_cpuid(int kvm, int vcpu)
{
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + 256 * sizeof(struct kvm_cpuid_entry2));
	int r;

	c->nent = 256;
	r = ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c);
	if (!r)
		r = ioctl(vcpu, KVM_SET_CPUID2, c);
	free(c);
	return r;
}

/* A real-mode #GP handler at 0x1800 (IVT entry 13): out 0x81, al; hlt. */
static void gp_handler(struct real_vm *v)
{
	static const unsigned char h[] = { 0xe6, 0x81, 0xf4 };

	memcpy(v->mem + 0x1800, h, sizeof(h));
	*(uint32_t *)(v->mem + 13 * 4) = 0x1800;
}

/* KVM_RUN, expecting an OUT to `port`. */
static int run_to_port(struct real_vm *v, int port)
{
	if (ioctl(v->vcpu, KVM_RUN, 0) || v->run->exit_reason != KVM_EXIT_IO || v->run->io.port != port) {
		printf("# KVM_RUN: errno %d, exit %u port %#x, wanted port %#x\n", errno,
		       v->run->exit_reason, v->run->io.port, port);
		return 0;
	}
	return 1;
}

/* Whether `got` lies in [want, want + slack]. */
static int near(uint64_t got, uint64_t want, uint64_t slack)
{
	if (got - want > slack) {
		printf("# %#llx is not within %#llx of %#llx\n", (unsigned long long)got,
		       (unsigned long long)slack, (unsigned long long)want);
		return 0;
	}
	return 1;
}

/*
 * KVM_GET_MSR_FEATURE_INDEX_LIST (E2BIG with the count written back, as the index list) and
 * KVM_GET_MSRS on the device fd: the microcode revision is a feature MSR; an unknown index
 * stops the list (the number done is returned).
 */
TEST(feature_msrs)
{
	struct kvm_msr_list probe = { .nmsrs = 0 }, *l;
	int kvm = open_dev(), n, ucode = 0;
	struct msrs m;

	if (no_guests()) {
		CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_GET_MSR_FEATURES) == 0);
		close(kvm);
		SKIP("backend=none has no feature MSRs");
	}
	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_GET_MSR_FEATURES) == 1);
	CHECK_ERRNO_WHY(ioctl(kvm, KVM_GET_MSR_FEATURE_INDEX_LIST, &probe), E2BIG,
		    "nmsrs 0 (too small)");
	n = probe.nmsrs;
	CHECK(n >= 1 && n < 1000);
	l = calloc(1, sizeof(*l) + n * sizeof(__u32));
	l->nmsrs = n;
	CHECK(ioctl(kvm, KVM_GET_MSR_FEATURE_INDEX_LIST, l) == 0 && l->nmsrs == (__u32)n);
	for (int i = 0; i < n; i++) {
		ucode += l->indices[i] == UCODE_REV;
		/* Every listed feature MSR can be read. */
		CHECK(msr_io(kvm, KVM_GET_MSRS, &m, 1, &l->indices[i], NULL) == 1);
	}
	CHECK(ucode == 1);
	CHECK(msr_io(kvm, KVM_GET_MSRS, &m, 2, (uint32_t[]){ UCODE_REV, 0x12345 }, NULL) == 1);
	CHECK(msr_io(kvm, KVM_GET_MSRS, &m, 1, (uint32_t[]){ 0x12345 }, NULL) == 0);
	CHECK_ERRNO_WHY(ioctl(kvm, KVM_GET_MSR_FEATURE_INDEX_LIST, NULL), EFAULT, "NULL pointer");
	CHECK_ERRNO_WHY(ioctl(kvm, KVM_GET_MSRS, NULL), EFAULT,
		    "feature MSRs on /dev/kvm, NULL pointer");
	{
		struct kvm_msrs *big = calloc(1, sizeof(*big) + 256 * sizeof(struct kvm_msr_entry));

		big->nmsrs = 256;
		CHECK_ERRNO_WHY(ioctl(kvm, KVM_GET_MSRS, big), E2BIG,
			    "256 feature MSRs on /dev/kvm (MAX_IO_MSRS is 256)");
		free(big);
	}
	free(l);
	close(kvm);
}

/*
 * vCPUs start with their TSCs together (kvm_synchronize_tsc at creation): a vCPU created 100 ms
 * after the first reads what the first does, and the first counted from 0 at its creation.
 */
TEST(tsc_vcpus_start_together)
{
	int kvm = open_dev(), vm = create_vm(kvm), v0, v1;
	uint64_t khz, t0, t1;
	struct timespec ts = { 0, 100 * 1000 * 1000 };

	if (no_guests())
		SKIP("backend=none vCPUs have no MSRs");
	v0 = ioctl(vm, KVM_CREATE_VCPU, 0);
	nanosleep(&ts, NULL);
	v1 = ioctl(vm, KVM_CREATE_VCPU, 1);
	CHECK(v0 >= 0 && v1 >= 0);
	khz = ioctl(v0, KVM_GET_TSC_KHZ, 0);
	CHECK(khz > 0);
	t0 = msr(v0, TSC);
	t1 = msr(v1, TSC);
	printf("# TSC of vCPU 0 %llu, of vCPU 1 %llu (%llu kHz)\n", (unsigned long long)t0,
	       (unsigned long long)t1, (unsigned long long)khz);
	CHECK(t0 >= khz * 100 && t0 < khz * 5000);
	CHECK(t1 - t0 < khz * 50);
	close(v1);
	close(v0);
	close(vm);
	close(kvm);
}

/*
 * IA32_TSC and IA32_TSC_ADJUST (upstream's tsc_msrs_test): userspace writing the TSC leaves
 * TSC_ADJUST alone and writing TSC_ADJUST leaves the TSC alone; the guest writing either moves
 * both (the guest's CPUID has TSC_ADJUST).
 *   mov ecx, TSC_ADJUST; xor eax, eax; mov edx, 1; wrmsr; out 0x80, al
 *   mov ecx, TSC; xor eax, eax; mov edx, 2; wrmsr; hlt
 */
TEST(tsc_and_tsc_adjust)
{
	static const unsigned char code[] = {
		0x66, 0xb9, 0x3b, 0x00, 0x00, 0x00, 0x66, 0x31, 0xc0, 0x66, 0xba, 0x01, 0x00, 0x00, 0x00,
		0x0f, 0x30, 0xe6, 0x80,
		0x66, 0xb9, 0x10, 0x00, 0x00, 0x00, 0x66, 0x31, 0xc0, 0x66, 0xba, 0x02, 0x00, 0x00, 0x00,
		0x0f, 0x30, 0xf4,
	};
	const uint64_t big = 1ull << 40, g1 = 1ull << 32, g2 = 2ull << 32;
	struct real_vm v = { 0 };
	uint64_t khz, slack, adj;

	if (no_guests())
		SKIP("backend=none vCPUs have no MSRs");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	CHECK(set_supported_cpuid(v.kvm, v.vcpu) == 0);
	khz = ioctl(v.vcpu, KVM_GET_TSC_KHZ, 0);
	slack = khz * 5000; /* 5 s of TSC: Bochs is slow */
	CHECK(near(msr(v.vcpu, TSC), 0, slack));
	CHECK(msr(v.vcpu, TSC_ADJUST) == 0);
	/* Userspace: the TSC moves, TSC_ADJUST does not; and the other way round. */
	CHECK(set1(v.vcpu, TSC, big) == 1);
	CHECK(near(msr(v.vcpu, TSC), big, slack));
	CHECK(msr(v.vcpu, TSC_ADJUST) == 0);
	CHECK(set1(v.vcpu, TSC_ADJUST, 12345) == 1);
	CHECK(msr(v.vcpu, TSC_ADJUST) == 12345);
	CHECK(near(msr(v.vcpu, TSC), big, slack));
	CHECK(set1(v.vcpu, TSC_ADJUST, 0) == 1);
	/* The guest: TSC_ADJUST := 1 << 32 moves the TSC by as much. */
	CHECK(run_to_port(&v, 0x80));
	CHECK(msr(v.vcpu, TSC_ADJUST) == g1);
	CHECK(near(msr(v.vcpu, TSC), big + g1, slack));
	/* The guest: TSC := 2 << 32; TSC_ADJUST moves by as much, so it shows userspace's part. */
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_HLT);
	CHECK(near(msr(v.vcpu, TSC), g2, slack));
	adj = msr(v.vcpu, TSC_ADJUST);
	/* 1 << 32 plus (2 << 32) - (the TSC before the write, big + (1 << 32) + time elapsed). */
	CHECK(near(g2 - big - adj, 0, slack));
	real_vm_free(&v);
}

/*
 * IA32_FEATURE_CONTROL: 0 (unlocked) at creation; the guest may lock it once, then its writes
 * #GP; userspace may write any supported bit whether locked or not (restoring saved state), but
 * not an unknown one.
 *   mov ecx, FEAT_CTL; mov eax, 1; xor edx, edx; wrmsr; out 0x80, al; wrmsr (#GP)
 */
TEST(feature_control)
{
	static const unsigned char code[] = {
		0x66, 0xb9, 0x3a, 0x00, 0x00, 0x00, 0x66, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x66, 0x31, 0xd2,
		0x0f, 0x30, 0xe6, 0x80, 0x0f, 0x30, 0xf4,
	};
	struct real_vm v = { 0 };

	if (no_guests())
		SKIP("backend=none vCPUs have no MSRs");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	gp_handler(&v);
	CHECK(msr(v.vcpu, FEAT_CTL) == 0);
	CHECK(run_to_port(&v, 0x80));
	CHECK(msr(v.vcpu, FEAT_CTL) == 1);
	CHECK(run_to_port(&v, 0x81));
	CHECK(msr(v.vcpu, FEAT_CTL) == 1);
	/* Userspace: lock | VMX outside SMX, then unlocked again; bit 3 is not a known bit. */
	CHECK(set1(v.vcpu, FEAT_CTL, 5) == 1 && msr(v.vcpu, FEAT_CTL) == 5);
	CHECK(set1(v.vcpu, FEAT_CTL, 0) == 1 && msr(v.vcpu, FEAT_CTL) == 0);
	CHECK(set1(v.vcpu, FEAT_CTL, 8) == 0 && msr(v.vcpu, FEAT_CTL) == 0);
	real_vm_free(&v);
}

/*
 * IA32_UCODE_REV: revision 1 (in bits 63:32) at creation; userspace sets it, the guest's writes
 * are ignored (no #GP).
 *   mov ecx, UCODE_REV; xor eax, eax; xor edx, edx; wrmsr; hlt
 */
TEST(ucode_rev)
{
	static const unsigned char code[] = {
		0x66, 0xb9, 0x8b, 0x00, 0x00, 0x00, 0x66, 0x31, 0xc0, 0x66, 0x31, 0xd2, 0x0f, 0x30, 0xf4,
	};
	struct real_vm v = { 0 };

	if (no_guests())
		SKIP("backend=none vCPUs have no MSRs");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	gp_handler(&v);
	CHECK(msr(v.vcpu, UCODE_REV) == 0x100000000ull);
	CHECK(set1(v.vcpu, UCODE_REV, 0x4200000000ull) == 1);
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_HLT);
	CHECK(msr(v.vcpu, UCODE_REV) == 0x4200000000ull);
	real_vm_free(&v);
}

/*
 * MSR_PLATFORM_INFO: CPUID faulting offered (bit 31) at creation; only userspace writes it, and
 * cannot take faulting away while MSR_MISC_FEATURES_ENABLES has it on; the guest reads it unless
 * KVM_ENABLE_CAP(KVM_CAP_MSR_PLATFORM_INFO, 0).
 *   mov ecx, PLATFORM_INFO; rdmsr; out 0x80, al (eax); rdmsr (#GP once disabled); hlt
 */
TEST(platform_info)
{
	static const unsigned char code[] = {
		0x66, 0xb9, 0xce, 0x00, 0x00, 0x00, 0x0f, 0x32, 0x66, 0xe7, 0x80, 0x0f, 0x32, 0xf4,
	};
	struct kvm_enable_cap cap = { .cap = KVM_CAP_MSR_PLATFORM_INFO };
	struct real_vm v = { 0 };
	uint64_t pi;

	if (no_guests())
		SKIP("backend=none vCPUs have no MSRs");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	CHECK(ioctl(v.kvm, KVM_CHECK_EXTENSION, KVM_CAP_MSR_PLATFORM_INFO) == 1);
	gp_handler(&v);
	pi = msr(v.vcpu, PLATFORM_INFO);
	CHECK(pi & (1ull << 31));
	CHECK(set1(v.vcpu, PLATFORM_INFO, pi | 0xff00) == 1);
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_IO &&
	      v.run->io.port == 0x80);
	CHECK(*(__u32 *)((char *)v.run + v.run->io.data_offset) == (__u32)(pi | 0xff00));
	CHECK(ioctl(v.vm, KVM_ENABLE_CAP, &cap) == 0);
	CHECK(run_to_port(&v, 0x81));
	/* Userspace still reads it. */
	CHECK(msr(v.vcpu, PLATFORM_INFO) == (pi | 0xff00));
	/* CPUID faulting on: the offer cannot be withdrawn; only bit 0 exists. */
	CHECK(set1(v.vcpu, MISC_FEATURES, 1) == 1);
	CHECK(set1(v.vcpu, PLATFORM_INFO, 0) == 0);
	CHECK(set1(v.vcpu, MISC_FEATURES, 2) == 0);
	CHECK(set1(v.vcpu, MISC_FEATURES, 0) == 1);
	CHECK(set1(v.vcpu, PLATFORM_INFO, 0) == 1);
	/* Without the offer, faulting cannot be turned on. */
	CHECK(set1(v.vcpu, MISC_FEATURES, 1) == 0);
	real_vm_free(&v);
}

/* MSR_K7_HWCR, emulated on Intel too (upstream's hwcr_msr_test): bits 18 and 24 kept, 3, 6 and
 * 8 ignored, the others refused. */
TEST(hwcr)
{
	struct real_vm v = { 0 };

	if (no_guests())
		SKIP("backend=none vCPUs have no MSRs");
	CHECK(real_vm_create(&v, (const unsigned char *)"\xf4", 1) == 0);
	for (int bit = 0; bit < 64; bit++) {
		uint64_t val = 1ull << bit, valid = 1ull << 18 | 1ull << 24;
		uint64_t legal = valid | 1ull << 3 | 1ull << 6 | 1ull << 8;

		CHECK(set1(v.vcpu, HWCR, val) == ((val & ~legal) ? 0 : 1));
		CHECK(msr(v.vcpu, HWCR) == (val & valid));
		CHECK(set1(v.vcpu, HWCR, 0) == 1);
	}
	real_vm_free(&v);
}

KTAP_MAIN("rkvm msrs",
	CASE(index_list),
	CASE(get_set_round_trip_and_partial_success),
	CASE(bad_requests),
	CASE(guest_sees_userspace_values_and_back),
	CASE(feature_msrs),
	CASE(tsc_vcpus_start_together),
	CASE(tsc_and_tsc_adjust),
	CASE(feature_control),
	CASE(ucode_rev),
	CASE(platform_info),
	CASE(hwcr))

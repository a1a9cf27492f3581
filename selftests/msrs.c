// SPDX-License-Identifier: GPL-2.0
/*
 * MSRs through the API: KVM_GET_MSR_INDEX_LIST on the device fd (count written back, E2BIG when
 * the array is too small), KVM_GET_MSRS / KVM_SET_MSRS on a vCPU (round trips, partial success
 * returning the number done, invalid values, E2BIG, EFAULT), and a guest seeing what userspace set
 * (RDMSR) and userspace seeing what the guest set (WRMSR).
 *
 * Upstream references: kvm_arch_dev_ioctl (KVM_GET_MSR_INDEX_LIST), msr_io / __msr_io,
 * kvm_get_msr_common / kvm_set_msr_common.
 */
#include <stdint.h>
#include "rkvm_util.h"

#define STAR	0xc0000081
#define LSTAR	0xc0000082
#define KGS	0xc0000102
#define SEIP	0x176
#define PAT	0x277

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
	CHECK_ERRNO(ioctl(kvm, KVM_GET_MSR_INDEX_LIST, l), E2BIG);
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
	CHECK_ERRNO(ioctl(kvm, KVM_GET_MSR_INDEX_LIST, NULL), EFAULT);
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
	CHECK_ERRNO(ioctl(v.vcpu, KVM_GET_MSRS, big), E2BIG);
	CHECK_ERRNO(ioctl(v.vcpu, KVM_SET_MSRS, big), E2BIG);
	CHECK_ERRNO(ioctl(v.vcpu, KVM_GET_MSRS, NULL), EFAULT);
	/* A header that says 4 entries, in front of memory that is not mapped. */
	{
		long ps = page_size();
		char *p = mmap(NULL, 2 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		struct kvm_msrs *h = (struct kvm_msrs *)(p + ps - sizeof(*h));

		munmap(p + ps, ps);
		h->nmsrs = 4;
		CHECK_ERRNO(ioctl(v.vcpu, KVM_SET_MSRS, h), EFAULT);
		CHECK_ERRNO(ioctl(v.vcpu, KVM_GET_MSRS, h), EFAULT);
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

KTAP_MAIN("rkvm msrs",
	CASE(index_list),
	CASE(get_set_round_trip_and_partial_success),
	CASE(bad_requests),
	CASE(guest_sees_userspace_values_and_back))

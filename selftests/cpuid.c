// SPDX-License-Identifier: GPL-2.0
/*
 * CPUID through the API: KVM_GET_SUPPORTED_CPUID (E2BIG below the real count, the entries and
 * their count otherwise; what rkvm offers guests), KVM_SET_CPUID2 / KVM_GET_CPUID2 (round trip,
 * E2BIG, EFAULT, no change after the first KVM_RUN), and a guest's CPUID answered from the table
 * (an exact entry, a leaf above the maximum → the highest basic leaf, OSXSAVE following CR4).
 *
 * Upstream references: kvm_dev_ioctl_get_cpuid, kvm_vcpu_ioctl_set_cpuid2 / get_cpuid2,
 * kvm_set_cpuid (kvm_cpuid_check_equal), kvm_cpuid (get_out_of_range_cpuid_entry).
 */
#include <stdint.h>
#include "rkvm_util.h"

#define MAXENT 256

static struct kvm_cpuid2 *alloc_cpuid(int n)
{
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(struct kvm_cpuid_entry2));

	c->nent = n;
	return c;
}

static struct kvm_cpuid_entry2 *find(struct kvm_cpuid2 *c, __u32 fn, __u32 idx)
{
	for (__u32 i = 0; i < c->nent; i++)
		if (c->entries[i].function == fn && c->entries[i].index == idx)
			return &c->entries[i];
	return NULL;
}

static struct kvm_cpuid2 *supported(int kvm)
{
	struct kvm_cpuid2 *c = alloc_cpuid(MAXENT);

	if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c)) {
		free(c);
		return NULL;
	}
	return c;
}

TEST(get_supported_cpuid)
{
	int kvm = open_dev();
	struct kvm_cpuid2 *c, *small = alloc_cpuid(1);
	struct kvm_cpuid_entry2 *e;

	CHECK(kvm >= 0);
	CHECK_ERRNO_WHY(ioctl(kvm, KVM_GET_SUPPORTED_CPUID, small), E2BIG,
		    "nent 1 (too small for the table)");
	CHECK(small->nent == 1);
	CHECK_ERRNO_WHY(ioctl(kvm, KVM_GET_SUPPORTED_CPUID, NULL), EFAULT, "NULL pointer");
	c = supported(kvm);
	CHECK(c != NULL);
	if (!c)
		return;
	CHECK(c->nent > 5 && c->nent < MAXENT);
	CHECK(find(c, 0, 0) && find(c, 1, 0) && find(c, 0x80000000, 0) && find(c, 7, 0));
	e = find(c, 7, 0);
	CHECK(e && e->flags == KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
	e = find(c, 0x40000000, 0);
	CHECK(e && e->ebx == 0x4b4d564b && e->ecx == 0x564b4d56 && e->edx == 0x4d);
	e = find(c, 1, 0);
	CHECK(e != NULL);
	if (!upstream()) {
		struct kvm_cpuid_entry2 *xs = find(c, 0xd, 0), *avx = find(c, 0xd, 2);
		int has_avx = xs && (xs->eax & 4);

		/* rkvm: no nested VMX; AVX exactly when guests get XCR0.AVX, which has its
		 * 0xd.2 leaf (size 256 at offset 576), and nothing beyond x87|SSE|AVX. */
		CHECK(e && !(e->ecx & (1 << 5)));
		CHECK(e && !!(e->ecx & (1 << 28)) == has_avx);
		CHECK(!xs || (xs->eax & ~7u) == 0);
		CHECK(has_avx ? avx && avx->eax == 256 && avx->ebx == 576 : !avx);
	}
	/* x2APIC is emulated (with an in-kernel LAPIC), so offered whatever the host has. */
	if (!no_guests())
		CHECK(e && (e->ecx & (1 << 21)));
	free(small);
	free(c);
	close(kvm);
}

TEST(set_get_cpuid2)
{
	int kvm = open_dev(), vm = create_vm(kvm), vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	struct kvm_cpuid2 *c = supported(kvm), *out, *empty = alloc_cpuid(0), *big = alloc_cpuid(MAXENT + 1);

	CHECK(c != NULL && vcpu >= 0);
	if (!c)
		return;
	/* Nothing set yet: zero entries. */
	CHECK(ioctl(vcpu, KVM_GET_CPUID2, empty) == 0 && empty->nent == 0);
	CHECK(ioctl(vcpu, KVM_SET_CPUID2, c) == 0);
	out = alloc_cpuid(c->nent - 1);
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_GET_CPUID2, out), E2BIG, "nent one below the vCPU's table");
	out->nent = MAXENT;
	out = realloc(out, sizeof(*out) + MAXENT * sizeof(struct kvm_cpuid_entry2));
	CHECK(ioctl(vcpu, KVM_GET_CPUID2, out) == 0);
	CHECK(out->nent == c->nent);
	for (__u32 i = 0; i < c->nent && i < out->nent; i++)
		CHECK(out->entries[i].function == c->entries[i].function &&
		      out->entries[i].index == c->entries[i].index);
	/* The table as set, except the bits that follow guest state (kvm_update_cpuid_runtime):
	 * the XSAVE sizes of 0xd.0/0xd.1 (0xd.0's is for XCR0 = x87 at RESET), and in leaf 1
	 * OSXSAVE and (upstream, from IA32_APIC_BASE) the APIC bit. */
	for (__u32 i = 0; i < c->nent && i < out->nent; i++) {
		struct kvm_cpuid_entry2 *a = &c->entries[i], *b = &out->entries[i];

		if (a->function == 0xd && a->index <= 1)
			CHECK(a->eax == b->eax && (a->index || b->ebx == 576) && a->ecx == b->ecx);
		else if (a->function == 1)
			CHECK(a->eax == b->eax && a->ebx == b->ebx &&
			      (a->ecx ^ b->ecx) == 0 && ((a->edx ^ b->edx) & ~(1u << 9)) == 0);
		else
			CHECK(a->eax == b->eax && a->ebx == b->ebx && a->ecx == b->ecx && a->edx == b->edx);
	}
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_CPUID2, big), E2BIG,
		    "nent 257 (above KVM_MAX_CPUID_ENTRIES)");
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_CPUID2, NULL), EFAULT, "NULL pointer");
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_GET_CPUID2, NULL), EFAULT, "NULL pointer");
	/* On the VM fd it is not a VM ioctl. */
	CHECK(ioctl(vm, KVM_SET_CPUID2, c) == -1);
	free(c);
	free(out);
	free(empty);
	free(big);
	close(vcpu);
	close(vm);
	close(kvm);
}

TEST(guest_cpuid_from_the_table)
{
	/*
	 * xor eax, eax; cpuid; out 0x80, eax (ebx, ecx, edx via mov eax, reg); then leaf 0x77
	 * (above the maximum); then set CR4.OSXSAVE and leaf 1's ECX; hlt.
	 */
	static const unsigned char code[] = {
		0x66, 0x31, 0xc0, 0x0f, 0xa2,			/* xor eax,eax; cpuid */
		0x66, 0x89, 0xd8, 0x66, 0xe7, 0x80,		/* mov eax,ebx; out 0x80,eax */
		0x66, 0xb8, 0x77, 0x00, 0x00, 0x00,		/* mov eax,0x77 */
		0x66, 0x31, 0xc9, 0x0f, 0xa2,			/* xor ecx,ecx; cpuid */
		0x66, 0xe7, 0x80,				/* out 0x80,eax */
		0x0f, 0x20, 0xe0, 0x66, 0x0d, 0x00, 0x00, 0x04, 0x00, /* mov eax,cr4; or eax,1<<18 */
		0x0f, 0x22, 0xe0,				/* mov cr4,eax */
		0x66, 0xb8, 0x01, 0x00, 0x00, 0x00,		/* mov eax,1 */
		0x0f, 0xa2, 0x66, 0x89, 0xc8, 0x66, 0xe7, 0x80,	/* cpuid; mov eax,ecx; out */
		0xf4,
	};
	struct real_vm v = { 0 };
	struct kvm_cpuid2 *c = alloc_cpuid(3);
	__u32 got[3];

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	c->entries[0] = (struct kvm_cpuid_entry2){ .function = 0, .eax = 2, .ebx = 0x6d766b72 };
	c->entries[1] = (struct kvm_cpuid_entry2){ .function = 1, .eax = 0x11, .ecx = 1 << 26 };
	c->entries[2] = (struct kvm_cpuid_entry2){ .function = 2, .eax = 0x22 };
	CHECK(ioctl(v.vcpu, KVM_SET_CPUID2, c) == 0);
	for (int i = 0; i < 3; i++) {
		CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_IO);
		got[i] = *(__u32 *)((char *)v.run + v.run->io.data_offset);
	}
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_HLT);
	CHECK(got[0] == 0x6d766b72);		/* leaf 0 EBX from the table */
	CHECK(got[1] == 0x22);			/* leaf 0x77: the highest basic leaf, 2 */
	CHECK(got[2] == (1 << 26 | 1 << 27));	/* XSAVE from the table, OSXSAVE from CR4 */
	/* After KVM_RUN: the same table is accepted, a different one is not. */
	CHECK(ioctl(v.vcpu, KVM_SET_CPUID2, c) == 0);
	c->entries[2].eax = 0x23;
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_SET_CPUID2, c), EINVAL, "different table after KVM_RUN");
	free(c);
	real_vm_free(&v);
}

KTAP_MAIN("rkvm cpuid",
	CASE(get_supported_cpuid),
	CASE(set_get_cpuid2),
	CASE(guest_cpuid_from_the_table))

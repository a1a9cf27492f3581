// SPDX-License-Identifier: GPL-2.0
/*
 * KVM_SET_USER_MEMORY_REGION: a table of bad requests with the errno each gets, then the
 * create / modify / move / delete rules and the slot limit.
 *
 * Upstream reference: __kvm_set_memory_region and check_memory_region_flags
 * (virt/kvm/kvm_main.c); slot ids ≥ KVM_USER_MEM_SLOTS are EINVAL in kvm_vm_ioctl.
 */
#include "rkvm_util.h"

static int set(int vm, __u32 slot, __u32 flags, __u64 gpa, __u64 size, __u64 hva)
{
	struct kvm_userspace_memory_region r = {
		.slot = slot, .flags = flags, .guest_phys_addr = gpa,
		.memory_size = size, .userspace_addr = hva,
	};

	return ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r);
}

static int kvm, vm;
static char *mem;
static __u64 hva;
#define MB (1UL << 20)

static void setup(void)
{
	if (vm > 0)
		return;
	kvm = open_dev();
	vm = create_vm(kvm);
	mem = mmap(NULL, 4 * MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	hva = (__u64)mem;
	/* Slot 0: 1 MiB at GPA 1 MiB. */
	if (set(vm, 0, 0, MB, MB, hva))
		printf("# setup failed: %s\n", strerror(errno));
}

static const struct bad {
	const char *what;
	__u32 slot, flags;
	__u64 gpa, size, hva_off; /* hva_off: offset from our mapping, or an absolute address if abs */
	int abs, err, rkvm_only;
} bad[] = {
	{ "unknown flag bit 7", 1, 1 << 7, 0, 4096, 0, 0, EINVAL, 0 },
	{ "guest_memfd flag on a v1 region", 1, 1 << 2, 0, 4096, 0, 0, EINVAL, 0 },
	{ "size not page aligned", 1, 0, 0, 4097, 0, 0, EINVAL, 0 },
	{ "gpa not page aligned", 1, 0, 0x10, 4096, 0, 0, EINVAL, 0 },
	{ "hva not page aligned", 1, 0, 0, 4096, 0x10, 0, EINVAL, 0 },
	{ "hva in the kernel half", 1, 0, 0, 4096, 0xffff800000000000UL, 1, EINVAL, 0 },
	{ "hva range wraps", 1, 0, 0, 0x2000, 0xfffffffffffff000UL, 1, EINVAL, 0 },
	{ "slot id 32764 (too large)", 32764, 0, 0, 4096, 0, 0, EINVAL, 0 },
	{ "slot id 0xffff", 0xffff, 0, 0, 4096, 0, 0, EINVAL, 0 },
	{ "address space 1 (rkvm: no SMM)", 1 << 16, 0, 0, 4096, 0, 0, EINVAL, 1 },
	{ "address space 2", 2 << 16, 0, 0, 4096, 0, 0, EINVAL, 0 },
	{ "gpa range wraps", 1, 0, 0xfffffffffffff000UL, 0x2000, 0, 0, EINVAL, 0 },
	{ "delete a slot that does not exist", 5, 0, 0, 0, 0, 0, EINVAL, 0 },
	{ "same range as slot 0", 1, 0, MB, MB, MB, 0, EEXIST, 0 },
	{ "overlaps slot 0 front", 1, 0, MB - 4096, 8192, MB, 0, EEXIST, 0 },
	{ "overlaps slot 0 back", 1, 0, 2 * MB - 4096, 8192, MB, 0, EEXIST, 0 },
	{ "inside slot 0", 1, 0, MB + 0x10000, 4096, MB, 0, EEXIST, 0 },
	{ "contains slot 0", 1, 0, 0, 3 * MB, 0, 0, EEXIST, 0 },
	{ "modify slot 0: new hva", 0, 0, MB, MB, MB, 0, EINVAL, 0 },
	{ "modify slot 0: new size", 0, 0, MB, 2 * MB, 0, 0, EINVAL, 0 },
	{ "modify slot 0: make read-only", 0, KVM_MEM_READONLY, MB, MB, 0, 0, EINVAL, 0 },
};

TEST(bad_requests)
{
	setup();
	for (unsigned int i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const struct bad *b = &bad[i];
		__u64 h = b->abs ? b->hva_off : hva + b->hva_off;
		int r, e;

		if (b->rkvm_only && upstream())
			continue;
		errno = 0;
		r = set(vm, b->slot, b->flags, b->gpa, b->size, h);
		e = errno;
		printf("# %s -> %s\n", b->what, r == 0 ? "accepted" : strerrorname_np(e));
		if (r != -1 || e != b->err) {
			printf("# ^ wanted %s\n", strerrorname_np(b->err));
			ktap_failed_case = 1;
		} else {
			ktap_errno_log("ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r)", e, b->what);
		}
	}
	/* The refusals left slot 0 as it was: the same request is a no-op success. */
	CHECK(set(vm, 0, 0, MB, MB, hva) == 0);
}

TEST(bad_pointer)
{
	setup();
	CHECK_ERRNO_WHY(ioctl(vm, KVM_SET_USER_MEMORY_REGION, NULL), EFAULT, "NULL pointer");
	CHECK_ERRNO_WHY(ioctl(vm, KVM_SET_USER_MEMORY_REGION, (void *)0xffff800000000000UL), EFAULT,
		    "kernel-half pointer");
}

TEST(adjacent_move_delete_reuse)
{
	setup();
	/* Adjacent ranges are fine. */
	CHECK(set(vm, 1, 0, MB - 4096, 4096, hva) == 0);
	CHECK(set(vm, 2, 0, 2 * MB, 4096, hva) == 0);
	/* Move slot 2 (same id, hva, size; new gpa), including onto its own old range. */
	CHECK(set(vm, 2, 0, 3 * MB, 4096, hva) == 0);
	CHECK(set(vm, 2, 0, 3 * MB + 4096, 4096, hva) == 0);
	/* Its old place is free again. */
	CHECK(set(vm, 3, 0, 2 * MB, 4096, hva) == 0);
	/* A move onto another slot is EEXIST. */
	CHECK_ERRNO_WHY(set(vm, 2, 0, 2 * MB, 4096, hva), EEXIST,
		    "move a slot onto another slot's range");
	/* Delete and reuse the id and the range with other parameters. */
	CHECK(set(vm, 3, 0, 2 * MB, 0, hva) == 0);
	CHECK_ERRNO_WHY(set(vm, 3, 0, 2 * MB, 0, hva), EINVAL, "delete a slot that no longer exists");
	CHECK(set(vm, 3, KVM_MEM_READONLY, 2 * MB, 8192, hva + 8192) == 0);
	/* A read-only slot stays read-only. */
	CHECK_ERRNO_WHY(set(vm, 3, 0, 2 * MB, 8192, hva + 8192), EINVAL,
		    "drop KVM_MEM_READONLY from a read-only slot");
	CHECK(set(vm, 3, KVM_MEM_READONLY, 2 * MB, 8192, hva + 8192) == 0);
	/* The same host memory may back several slots. */
	CHECK(set(vm, 4, 0, 8 * MB, 4096, hva) == 0);
	for (int s = 1; s <= 4; s++)
		CHECK(set(vm, s, 0, 0, 0, 0) == 0);
}

TEST(slot_limit)
{
	int kvm2 = open_dev(), vm2 = create_vm(kvm2);
	long n = ioctl(kvm2, KVM_CHECK_EXTENSION, KVM_CAP_NR_MEMSLOTS);

	CHECK(n > 0);
	for (long i = 0; i < n; i++) {
		if (set(vm2, i, 0, (__u64)i << 12, 4096, hva)) {
			printf("# slot %ld: %s\n", i, strerror(errno));
			ktap_failed_case = 1;
			break;
		}
	}
	CHECK_ERRNO_WHY(set(vm2, n, 0, (__u64)n << 12, 4096, hva), EINVAL,
		    "one slot more than KVM_CAP_NR_MEMSLOTS");
	/* Deleting one in the middle frees its id and range. */
	CHECK(set(vm2, 100, 0, 0, 0, 0) == 0);
	CHECK(set(vm2, 100, 0, 100UL << 12, 4096, hva) == 0);
	close(vm2);
	close(kvm2);
}

/* KVM_PRE_FAULT_MEMORY (upstream kvm_vcpu_pre_fault_memory): the range left is written back. */
TEST(pre_fault_memory)
{
	static const unsigned char hlt[] = { 0xf4 };
	long ps = page_size();
	struct kvm_pre_fault_memory r = { .gpa = 0, .size = 4 * ps };
	struct real_vm v = { 0 };

	if (no_guests())
		SKIP("backend=none maps no guest memory");
	CHECK(ioctl(open_dev(), KVM_CHECK_EXTENSION, KVM_CAP_PRE_FAULT_MEMORY) == 1);
	CHECK(real_vm_create(&v, hlt, sizeof(hlt)) == 0);
	CHECK(ioctl(v.vcpu, KVM_PRE_FAULT_MEMORY, &r) == 0);
	CHECK(r.gpa == 4 * ps && r.size == 0);
	/* Past the end of slot 0 (64 KiB): success for what was mapped, the rest is left. */
	r.gpa = 0x10000 - ps;
	r.size = 3 * ps;
	CHECK(ioctl(v.vcpu, KVM_PRE_FAULT_MEMORY, &r) == 0);
	CHECK(r.gpa == 0x10000 && r.size == 2 * ps);
	/* Nothing mapped at all: ENOENT, range unchanged. */
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_PRE_FAULT_MEMORY, &r), ENOENT,
		    "no slot at any gfn of the range (nothing mapped)");
	CHECK(r.gpa == 0x10000 && r.size == 2 * ps);
	r.flags = 1;
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_PRE_FAULT_MEMORY, &r), EINVAL, "nonzero flags");
	r.flags = 0;
	r.gpa = 1;
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_PRE_FAULT_MEMORY, &r), EINVAL, "gpa not page aligned");
	r.gpa = 0;
	r.size = 0;
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_PRE_FAULT_MEMORY, &r), EINVAL, "size 0");
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_PRE_FAULT_MEMORY, NULL), EFAULT, "NULL pointer");
	/* The guest still runs on the pre-faulted memory. */
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_HLT);
	real_vm_free(&v);
}

KTAP_MAIN("rkvm memslots",
	CASE(bad_requests),
	CASE(bad_pointer),
	CASE(adjacent_move_delete_reuse),
	CASE(slot_limit),
	CASE(pre_fault_memory))

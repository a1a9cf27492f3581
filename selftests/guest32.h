/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The 32-bit flat guest of guests/iso32.S (build/guest-iso32.bin, read at run time from the
 * directory of the test program) in a VM whose slot 0 holds it, for selftests/isolation.c and
 * selftests/races.c; and memory with canary pages around it.
 */
#ifndef RKVM_GUEST32_H
#define RKVM_GUEST32_H

#include <limits.h>
#include "rkvm_util.h"

/* iso32.S's programs (EBP) and ports. */
enum { G32_STAMP, G32_FILL, G32_TOUCH, G32_SPIN };
#define G32_PORT_STAMPED 0x10
#define G32_PORT_PASS 0x11
#define G32_PORT_FOREIGN 0x12
#define G32_PORT_TOUCH 0x13

#define G32_CODE_GPA 0x1000
#define G32_SLOT0_SIZE 0x10000
#define CANARY 0xcc

struct g32 {
	int kvm, vm, vcpu;
	long run_size;
	struct kvm_run *run;
	unsigned char *slot0;
};

/*
 * `size` bytes of anonymous shared memory between two canary pages (filled with CANARY; the
 * memory itself with `fill`). Returns the memory, or NULL.
 */
static inline unsigned char *guarded_alloc(size_t size, int fill)
{
	long ps = page_size();
	unsigned char *m = mmap(NULL, size + 2 * ps, PROT_READ | PROT_WRITE,
				MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (m == MAP_FAILED)
		return NULL;
	memset(m, CANARY, ps);
	memset(m + ps, fill, size);
	memset(m + ps + size, CANARY, ps);
	return m + ps;
}

/* Whether the canary pages around guarded_alloc()'s memory are intact. */
static inline int guards_intact(const unsigned char *m, size_t size)
{
	long ps = page_size();

	for (long i = 0; i < ps; i++)
		if (m[i - ps] != CANARY || m[size + i] != CANARY) {
			printf("# canary %s the memory at %p changed\n", m[i - ps] != CANARY ? "before" : "after", m);
			return 0;
		}
	return 1;
}

static inline int set_slot(int vm, __u32 slot, __u32 flags, __u64 gpa, __u64 size, void *hva)
{
	struct kvm_userspace_memory_region r = {
		.slot = slot, .flags = flags, .guest_phys_addr = gpa, .memory_size = size,
		.userspace_addr = (__u64)hva,
	};

	return ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r);
}

/* Reads guest-iso32.bin (next to this program) into slot 0's memory at G32_CODE_GPA. */
static inline int g32_load_code(unsigned char *slot0)
{
	return load_guest_bin("guest-iso32.bin", slot0 + G32_CODE_GPA, 0x1000) > 0 ? 0 : -1;
}

/* Flat 32-bit segments (base 0, limit 4 GiB), CR0.PE; no paging, interrupts off. */
static inline int g32_flat_sregs(int vcpu)
{
	struct kvm_segment code = { .limit = 0xffffffff, .selector = 8, .type = 11, .present = 1,
				    .s = 1, .db = 1, .g = 1 };
	struct kvm_segment data = { .limit = 0xffffffff, .selector = 16, .type = 3, .present = 1,
				    .s = 1, .db = 1, .g = 1 };
	struct kvm_sregs s;

	if (ioctl(vcpu, KVM_GET_SREGS, &s))
		return -1;
	s.cs = code;
	s.ds = s.es = s.fs = s.gs = s.ss = data;
	s.cr0 |= 1;
	return ioctl(vcpu, KVM_SET_SREGS, &s);
}

/* Points the vCPU at iso32.S's program `prog` with its arguments. */
static inline int g32_start(int vcpu, int prog, __u32 esi, __u32 edi, __u32 ebx, __u32 eax)
{
	struct kvm_regs r = { .rip = G32_CODE_GPA, .rflags = 2, .rbp = prog, .rsi = esi,
			      .rdi = edi, .rbx = ebx, .rax = eax };

	return ioctl(vcpu, KVM_SET_REGS, &r);
}

/*
 * A VM (on its own device fd) with slot 0 (G32_SLOT0_SIZE at GPA 0, guarded, iso32.S at
 * G32_CODE_GPA) and vCPU 0 in flat 32-bit mode, kvm_run mapped. Returns 0 or -1.
 */
static inline int g32_create(struct g32 *g)
{
	memset(g, 0, sizeof(*g));
	g->kvm = open_dev();
	g->vm = create_vm(g->kvm);
	g->slot0 = guarded_alloc(G32_SLOT0_SIZE, 0);
	if (g->vm < 0 || !g->slot0 || g32_load_code(g->slot0) ||
	    set_slot(g->vm, 0, 0, 0, G32_SLOT0_SIZE, g->slot0))
		return -1;
	g->vcpu = ioctl(g->vm, KVM_CREATE_VCPU, 0);
	g->run_size = ioctl(g->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	g->run = mmap(NULL, g->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, g->vcpu, 0);
	if (g->vcpu < 0 || g->run == MAP_FAILED)
		return -1;
	return g32_flat_sregs(g->vcpu);
}

static inline void g32_free(struct g32 *g)
{
	long ps = page_size();

	if (g->run && g->run != MAP_FAILED)
		munmap(g->run, g->run_size);
	close(g->vcpu);
	close(g->vm);
	close(g->kvm);
	if (g->slot0)
		munmap(g->slot0 - ps, G32_SLOT0_SIZE + 2 * ps);
}

/* The port and the dword (or byte) of a KVM_EXIT_IO out exit. */
static inline __u32 g32_io_data(const struct kvm_run *run)
{
	__u32 v = 0;

	memcpy(&v, (const char *)run + run->io.data_offset, run->io.size);
	return v;
}

#endif

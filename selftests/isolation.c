// SPDX-License-Identifier: GPL-2.0
/*
 * Isolation: a guest changes host memory only inside its own writable slots.
 *
 * - A guest stamps every page of its physical address space below 8 MiB (and the top MiB below
 *   4 GiB): each write lands in the slot's memory at the right offset or leaves as a
 *   KVM_EXIT_MMIO write of exactly that data; canary pages around every slot's userspace memory
 *   stay intact, a READONLY slot keeps its bytes, slot 0 (the code) is untouched.
 * - Two VMs with a slot at the same GPA, run at once: each guest fills its slot with its own
 *   tag and reads it back, over and over, and never sees the other's.
 * - A READONLY slot: guest writes are MMIO exits and a read right after returns the slot's
 *   bytes; userspace's own changes to the memory are what the guest reads next.
 *
 * Guest: guests/iso32.S (flat 32-bit protected mode). Upstream references: kvm_faultin_pfn and
 * the memslot lookup of the MMU (mmu.c: no slot, or a write to a READONLY one, is emulated
 * MMIO), vcpu_mmio_write / complete_emulated_mmio (x86.c).
 */
#include <pthread.h>
#include "guest32.h"

struct slotdef {
	__u64 gpa, size;
	__u32 flags;
	unsigned char *mem;
};

/* The VM of stamp_all_pages: slot 0 (the code) is g32's; slots 1.. here. */
static struct slotdef slots[] = {
	{ 0x20000, 0x10000, 0 },
	{ 0x100000, 0x103000, 0 },		/* 1 MiB + 12 KiB: not a 2 MiB multiple */
	{ 0x400000, 0x10000, KVM_MEM_READONLY },
	{ 0x7ff000, 0x1000, 0 },		/* one page, ending at 8 MiB */
};
#define NSLOTS (int)(sizeof(slots) / sizeof(slots[0]))
#define FILL 0x5a

/* The writable slot holding `gpa`, or NULL. */
static struct slotdef *ram_at(__u64 gpa)
{
	for (int i = 0; i < NSLOTS; i++)
		if (gpa >= slots[i].gpa && gpa < slots[i].gpa + slots[i].size &&
		    !(slots[i].flags & KVM_MEM_READONLY))
			return &slots[i];
	return NULL;
}

/*
 * Runs the stamp program over [from, to) (4 KiB steps) to its end. Every MMIO exit must be one
 * of the two writes per page, to a page outside the writable slots, in order. Returns the
 * number of MMIO exits, or -1.
 */
static long stamp_range(struct g32 *g, __u32 from, __u32 to)
{
	__u64 next = from;	/* the page whose writes come next */
	int second = 0;		/* its dword was seen, its byte is next */
	long mmio = 0;

	if (g32_start(g->vcpu, G32_STAMP, from, to, 0x1000, 0))
		return -1;
	for (;;) {
		if (ioctl(g->vcpu, KVM_RUN, 0)) {
			printf("# KVM_RUN: %s\n", strerror(errno));
			return -1;
		}
		if (g->run->exit_reason == KVM_EXIT_IO && g->run->io.port == G32_PORT_STAMPED)
			break;
		if (g->run->exit_reason != KVM_EXIT_MMIO) {
			printf("# exit reason %u\n", g->run->exit_reason);
			return -1;
		}
		/* The writes of pages in RAM made no exit: skip them. */
		while (!second && next < to && ram_at(next))
			next += 0x1000;
		__u64 want = second ? next + 0xfff : next;
		__u32 len = second ? 1 : 4, data = 0;

		memcpy(&data, g->run->mmio.data, len);
		if (!g->run->mmio.is_write || g->run->mmio.phys_addr != want || g->run->mmio.len != len ||
		    data != (second ? 0xa5 : (__u32)next)) {
			printf("# MMIO exit %s %#llx len %u data %#x, wanted write %#llx len %u data %#x\n",
			       g->run->mmio.is_write ? "write" : "read", g->run->mmio.phys_addr,
			       g->run->mmio.len, data, want, len, second ? 0xa5 : (__u32)next);
			return -1;
		}
		mmio++;
		if (second)
			next += 0x1000;
		second = !second;
	}
	while (next < to && ram_at(next))
		next += 0x1000;
	if (next != to || second) {
		printf("# stamp ended at %#llx, wanted %#x\n", next, to);
		return -1;
	}
	return mmio;
}

TEST(stamp_all_pages)
{
	unsigned char code[G32_SLOT0_SIZE];
	struct g32 g;
	long n, want = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(g32_create(&g) == 0);
	memcpy(code, g.slot0, sizeof(code));
	for (int i = 0; i < NSLOTS; i++) {
		slots[i].mem = guarded_alloc(slots[i].size, FILL);
		CHECK(slots[i].mem && set_slot(g.vm, i + 1, slots[i].flags, slots[i].gpa, slots[i].size,
					       slots[i].mem) == 0);
	}
	for (__u64 p = G32_SLOT0_SIZE; p < 0x800000; p += 0x1000)
		want += ram_at(p) ? 0 : 2;
	/* Everything from the end of slot 0 to 8 MiB, then the last MiB below 4 GiB but one page. */
	n = stamp_range(&g, G32_SLOT0_SIZE, 0x800000);
	CHECK(n == want);
	ktap_diag("%ld MMIO writes below 8 MiB, %ld wanted", n, want);
	n = stamp_range(&g, 0xfff00000, 0xfffff000);
	CHECK(n == 2 * 255);
	CHECK(memcmp(code, g.slot0, sizeof(code)) == 0);
	CHECK(guards_intact(g.slot0, G32_SLOT0_SIZE));
	for (int i = 0; i < NSLOTS; i++) {
		struct slotdef *s = &slots[i];
		long bad = 0;

		if (!s->mem)
			continue;
		CHECK(guards_intact(s->mem, s->size));
		for (__u64 off = 0; off < s->size; off++) {
			unsigned char want_b = FILL;
			__u64 page = s->gpa + (off & ~0xfffull);

			if (!(s->flags & KVM_MEM_READONLY)) {
				if ((off & 0xfff) < 4)
					want_b = (unsigned char)(page >> (8 * (off & 3)));
				else if ((off & 0xfff) == 0xfff)
					want_b = 0xa5;
			}
			if (s->mem[off] != want_b && bad++ < 4)
				printf("# slot %d: byte at GPA %#llx is %#x, wanted %#x\n", i + 1,
				       s->gpa + off, s->mem[off], want_b);
		}
		CHECK(bad == 0);
		munmap(s->mem - page_size(), s->size + 2 * page_size());
	}
	g32_free(&g);
}

struct tagged {
	pthread_t thread;
	__u32 tag;
	int passes, foreign, bad_exit;
	__u32 foreign_value;
	unsigned char *mem;
};

#define TAG_GPA 0x20000
#define TAG_SIZE 0x40000
#define TAG_PASSES 30

static void *run_tagged(void *arg)
{
	struct tagged *t = arg;
	struct g32 g;

	if (g32_create(&g) || set_slot(g.vm, 1, 0, TAG_GPA, TAG_SIZE, t->mem) ||
	    g32_start(g.vcpu, G32_FILL, TAG_GPA, TAG_GPA + TAG_SIZE, 0, t->tag)) {
		t->bad_exit = 1;
		g32_free(&g);
		return NULL;
	}
	while (t->passes < TAG_PASSES) {
		if (ioctl(g.vcpu, KVM_RUN, 0) || g.run->exit_reason != KVM_EXIT_IO) {
			printf("# VM %#x: KVM_RUN %s, exit %u\n", t->tag, strerror(errno), g.run->exit_reason);
			t->bad_exit = 1;
			break;
		}
		if (g.run->io.port == G32_PORT_FOREIGN) {
			t->foreign = 1;
			t->foreign_value = g32_io_data(g.run);
			break;
		}
		t->passes++;
	}
	g32_free(&g);
	return NULL;
}

TEST(two_vms_never_share_memory)
{
	struct tagged t[2] = { { .tag = 0x11111111 }, { .tag = 0x22222222 } };

	if (no_guests())
		SKIP("backend=none enters no guest");
	for (int i = 0; i < 2; i++) {
		t[i].mem = guarded_alloc(TAG_SIZE, 0);
		CHECK(t[i].mem != NULL);
		if (!t[i].mem)
			return;
	}
	for (int i = 0; i < 2; i++)
		CHECK(pthread_create(&t[i].thread, NULL, run_tagged, &t[i]) == 0);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i].thread, NULL);
	for (int i = 0; i < 2; i++) {
		long other = 0;

		if (t[i].foreign)
			printf("# VM %#x read %#x from its own memory\n", t[i].tag, t[i].foreign_value);
		CHECK(!t[i].foreign && !t[i].bad_exit && t[i].passes == TAG_PASSES);
		for (long off = 0; off < TAG_SIZE; off += 4)
			other += *(__u32 *)(t[i].mem + off) != t[i].tag;
		CHECK(other == 0);
		CHECK(guards_intact(t[i].mem, TAG_SIZE));
	}
}

TEST(readonly_slot_is_never_written)
{
	unsigned char *ro = guarded_alloc(0x10000, FILL);
	struct g32 g;
	int writes = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(g32_create(&g) == 0);
	CHECK(ro && set_slot(g.vm, 1, KVM_MEM_READONLY, 0x400000, 0x10000, ro) == 0);
	/*
	 * fill over the slot's first 256 bytes: 64 dword writes, each an MMIO exit; then the read
	 * back sees the slot's bytes (0x5a5a5a5a), not the tag, and reports it on port 0x12.
	 */
	CHECK(g32_start(g.vcpu, G32_FILL, 0x400000, 0x400100, 0, 0x77777777) == 0);
	for (;;) {
		if (ioctl(g.vcpu, KVM_RUN, 0)) {
			printf("# KVM_RUN: %s\n", strerror(errno));
			ktap_failed_case = 1;
			break;
		}
		if (g.run->exit_reason == KVM_EXIT_MMIO) {
			CHECK(g.run->mmio.is_write && g.run->mmio.len == 4 &&
			      g.run->mmio.phys_addr == 0x400000 + 4 * (__u64)writes &&
			      memcmp(g.run->mmio.data, "\x77\x77\x77\x77", 4) == 0);
			writes++;
			/* Userspace's own write into the slot: the guest reads it back below. */
			if (writes == 64)
				memcpy(ro + 0x80, "\x12\x34\x56\x78", 4);
			continue;
		}
		CHECK(g.run->exit_reason == KVM_EXIT_IO && g.run->io.port == G32_PORT_FOREIGN);
		/* The first dword that is not the tag: the slot's own byte pattern at offset 0. */
		CHECK(g32_io_data(g.run) == 0x5a5a5a5a);
		break;
	}
	CHECK(writes == 64);
	/* Now read-only bytes userspace changed are what the guest sees: fill over 0x80..0x84. */
	CHECK(g32_start(g.vcpu, G32_FILL, 0x400080, 0x400084, 0, 0x77777777) == 0);
	CHECK(ioctl(g.vcpu, KVM_RUN, 0) == 0 && g.run->exit_reason == KVM_EXIT_MMIO);
	CHECK(ioctl(g.vcpu, KVM_RUN, 0) == 0 && g.run->exit_reason == KVM_EXIT_IO &&
	      g.run->io.port == G32_PORT_FOREIGN && g32_io_data(g.run) == 0x78563412);
	for (int off = 0; off < 0x10000; off++)
		if (ro && ro[off] != (off >= 0x80 && off < 0x84 ? "\x12\x34\x56\x78"[off - 0x80] : FILL)) {
			printf("# read-only slot byte %#x is %#x\n", off, ro[off]);
			ktap_failed_case = 1;
			break;
		}
	CHECK(ro && guards_intact(ro, 0x10000));
	g32_free(&g);
}

KTAP_MAIN("rkvm isolation",
	CASE(stamp_all_pages),
	CASE(two_vms_never_share_memory),
	CASE(readonly_slot_is_never_written))

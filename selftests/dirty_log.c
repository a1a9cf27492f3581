// SPDX-License-Identifier: GPL-2.0
/*
 * Dirty page logging: KVM_MEM_LOG_DIRTY_PAGES, KVM_GET_DIRTY_LOG, KVM_CLEAR_DIRTY_LOG and
 * KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2.
 *
 * Real-mode guests write a chosen set of pages of a logging slot (slot 1: 64 pages at GPA
 * 0x20000, page i reached through ES = 0x2000 + 0x100 * i) and stop at an OUT to port 0x80; the
 * log must name exactly the pages written since the last KVM_GET_DIRTY_LOG (or, in manual-protect
 * mode, since KVM_CLEAR_DIRTY_LOG cleared them). The guests only write the logging slot, never
 * read it: upstream may log a page on a read fault already, so reads would make "exactly"
 * implementation-defined. A REP INSB into the slot (guest memory written by the kernel for the
 * guest) counts too. One vCPU thread writing counters while the main thread keeps getting the
 * log checks that no write is lost across the ioctl. The error cases need no guest and run with
 * backend=none too.
 *
 * Upstream references: kvm_get_dirty_log_protect, kvm_clear_dirty_log_protect,
 * kvm_vm_ioctl_enable_cap_generic, kvm_prepare_memory_region, mark_page_dirty_in_slot
 * (virt/kvm/kvm_main.c); kvm_mmu_slot_apply_flags (arch/x86/kvm/x86.c).
 */
#include <pthread.h>
#include "rkvm_util.h"

#define DATA_SLOT 1
#define DATA_GPA 0x20000UL
#define DATA_PAGES 64
#define WORDS 4 /* bitmap buffers: up to 256 pages */
#define TABLE 0x800 /* in slot 0: the guest's list of ES values, 0-terminated */

/*
 * The page writer: for each ES value in the table at DS:0x800, mov byte [es:0x10], 0xab; then
 * out 0x80, al and start over (the table may have changed).
 */
static const unsigned char writer[] = {
	0x31, 0xc0,				/* 0: xor ax, ax */
	0x8e, 0xd8,				/* 2: mov ds, ax */
	0xbe, 0x00, 0x08,			/* 4: mov si, 0x800 */
	0xad,					/* 7: lodsw */
	0x85, 0xc0,				/* 8: test ax, ax */
	0x74, 0x0a,				/* 10: jz 22 */
	0x8e, 0xc0,				/* 12: mov es, ax */
	0x26, 0xc6, 0x06, 0x10, 0x00, 0xab,	/* 14: mov byte [es:0x10], 0xab */
	0xeb, 0xf1,				/* 20: jmp 7 */
	0xe6, 0x80,				/* 22: out 0x80, al */
	0xeb, 0xe6,				/* 24: jmp 0 */
};

/* rep insb of 16 bytes from port 0x1234 to page 50 at offset 0x20, then out 0x80, al; hlt */
static const unsigned char inserter[] = {
	0xb8, 0x00, 0x52,			/* mov ax, 0x2000 + 50 * 0x100 */
	0x8e, 0xc0,				/* mov es, ax */
	0xbf, 0x20, 0x00,			/* mov di, 0x20 */
	0xb9, 0x10, 0x00,			/* mov cx, 16 */
	0xba, 0x34, 0x12,			/* mov dx, 0x1234 */
	0xfc,					/* cld */
	0xf3, 0x6c,				/* rep insb */
	0xe6, 0x80,				/* out 0x80, al */
	0xf4,					/* hlt */
};

/*
 * The counter: page (n % 64) gets the 32-bit count n at offset 0, n = 0, 1, 2, ... until the
 * byte at DS:0x800 is non-zero, then hlt.
 */
static const unsigned char counter[] = {
	0x31, 0xc0,				/* 0: xor ax, ax */
	0x8e, 0xd8,				/* 2: mov ds, ax */
	0x66, 0x31, 0xdb,			/* 4: xor ebx, ebx */
	0x80, 0x3e, 0x00, 0x08, 0x00,		/* 7: cmp byte [0x800], 0 */
	0x75, 0x17,				/* 12: jne 37 */
	0x89, 0xd8,				/* 14: mov ax, bx */
	0x83, 0xe0, 0x3f,			/* 16: and ax, 63 */
	0xc1, 0xe0, 0x08,			/* 19: shl ax, 8 */
	0x05, 0x00, 0x20,			/* 22: add ax, 0x2000 */
	0x8e, 0xc0,				/* 25: mov es, ax */
	0x66, 0x26, 0x89, 0x1e, 0x00, 0x00,	/* 27: mov [es:0], ebx */
	0x66, 0x43,				/* 33: inc ebx */
	0xeb, 0xe2,				/* 35: jmp 7 */
	0xf4,					/* 37: hlt */
};

/* A real-mode VM (slot 0, see rkvm_util.h) with slot 1 of `pages` pages at DATA_GPA. */
struct dvm {
	struct real_vm v;
	unsigned char *data;
	size_t pages;
};

static int set_slot(int vm, __u32 slot, __u32 flags, __u64 gpa, size_t pages, void *hva)
{
	struct kvm_userspace_memory_region r = {
		.slot = slot, .flags = flags, .guest_phys_addr = gpa,
		.memory_size = pages * 4096, .userspace_addr = (__u64)hva,
	};

	return ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r);
}

/* A VM without guest code (for the cases that enter no guest). */
static int dvm_create_bare(struct dvm *d, size_t pages)
{
	d->v.kvm = open_dev();
	d->v.vm = create_vm(d->v.kvm);
	d->v.vcpu = -1;
	d->v.run = NULL;
	d->v.mem = NULL;
	d->pages = pages;
	d->data = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (d->v.vm < 0 || d->data == MAP_FAILED)
		return -1;
	/* Written once by the host, so no page is the shared zero page. */
	memset(d->data, 0, pages * 4096);
	return 0;
}

static int dvm_create(struct dvm *d, const unsigned char *code, size_t len, size_t pages)
{
	if (real_vm_create(&d->v, code, len))
		return -1;
	d->pages = pages;
	d->data = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (d->data == MAP_FAILED)
		return -1;
	memset(d->data, 0, pages * 4096);
	return 0;
}

static int dvm_slot(struct dvm *d, __u32 flags)
{
	return set_slot(d->v.vm, DATA_SLOT, flags, DATA_GPA, d->pages, d->data);
}

static void dvm_free(struct dvm *d)
{
	if (d->v.vcpu >= 0) {
		real_vm_free(&d->v);
	} else {
		close(d->v.vm);
		close(d->v.kvm);
	}
	munmap(d->data, d->pages * 4096);
}

static int get_log(int vm, __u32 slot, void *bitmap)
{
	struct kvm_dirty_log log = { .slot = slot, .dirty_bitmap = bitmap };

	return ioctl(vm, KVM_GET_DIRTY_LOG, &log);
}

static int clear_log(int vm, __u32 slot, __u64 first, __u32 num, void *bitmap)
{
	struct kvm_clear_dirty_log log = {
		.slot = slot, .first_page = first, .num_pages = num, .dirty_bitmap = bitmap,
	};

	return ioctl(vm, KVM_CLEAR_DIRTY_LOG, &log);
}

static int enable_manual(int vm, __u64 arg, __u32 flags)
{
	struct kvm_enable_cap cap = {
		.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, .flags = flags, .args = { arg },
	};

	return ioctl(vm, KVM_ENABLE_CAP, &cap);
}

/* Runs the writer over `pages` (a -1-terminated list) until its OUT to 0x80. */
static int guest_write(struct dvm *d, const int *pages)
{
	__u16 *table = (__u16 *)(d->v.mem + TABLE);
	int n = 0;

	for (; pages[n] >= 0; n++)
		table[n] = 0x2000 + 0x100 * pages[n];
	table[n] = 0;
	if (ioctl(d->v.vcpu, KVM_RUN, 0) || d->v.run->exit_reason != KVM_EXIT_IO ||
	    d->v.run->io.port != 0x80) {
		printf("# KVM_RUN: %s, exit reason %u\n", strerror(errno), d->v.run->exit_reason);
		return 0;
	}
	for (int i = 0; i < n; i++) {
		if (d->data[pages[i] * 4096 + 0x10] != 0xab) {
			printf("# page %d: the guest's write is not in memory\n", pages[i]);
			return 0;
		}
	}
	return 1;
}

/* Whether `bitmap` has exactly the pages of the -1-terminated `want` (of `npages`). */
static int bitmap_is(const __u64 *bitmap, size_t npages, const int *want)
{
	__u64 expect[WORDS] = { 0 };
	int ok = 1;

	for (int i = 0; want[i] >= 0; i++)
		expect[want[i] / 64] |= 1ULL << (want[i] % 64);
	for (size_t w = 0; w < (npages + 63) / 64; w++) {
		if (bitmap[w] != expect[w]) {
			printf("# bitmap word %zu: %#llx, wanted %#llx\n", w, (unsigned long long)bitmap[w],
			       (unsigned long long)expect[w]);
			ok = 0;
		}
	}
	return ok;
}

/* KVM_GET_DIRTY_LOG of the data slot names exactly `want`. */
static int log_is(struct dvm *d, const int *want)
{
	__u64 bitmap[WORDS];

	memset(bitmap, 0x5a, sizeof(bitmap));
	if (get_log(d->v.vm, DATA_SLOT, bitmap)) {
		printf("# KVM_GET_DIRTY_LOG: %s\n", strerror(errno));
		return 0;
	}
	return bitmap_is(bitmap, d->pages, want);
}

#define PAGES(...) ((const int[]){ __VA_ARGS__, -1 })
#define NONE ((const int[]){ -1 })

TEST(capability)
{
	int kvm = open_dev(), vm = create_vm(kvm);

	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) ==
	      (KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET));
	CHECK(ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) ==
	      (KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET));
	/* Upstream's options check: INITIALLY_SET needs MANUAL_PROTECT_ENABLE; flags must be 0. */
	CHECK_ERRNO_WHY(enable_manual(vm, KVM_DIRTY_LOG_INITIALLY_SET, 0), EINVAL,
		    "KVM_DIRTY_LOG_INITIALLY_SET without KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE");
	CHECK_ERRNO_WHY(enable_manual(vm, 4, 0), EINVAL, "unknown option bit 2");
	CHECK_ERRNO_WHY(enable_manual(vm, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | 4, 0), EINVAL,
		    "KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE with unknown bit 2");
	CHECK_ERRNO_WHY(enable_manual(vm, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, 1), EINVAL,
		    "nonzero flags");
	CHECK(enable_manual(vm, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, 0) == 0);
	CHECK(enable_manual(vm, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET, 0) == 0);
	CHECK(enable_manual(vm, 0, 0) == 0);
	close(vm);
	close(kvm);
}

TEST(slot_flags)
{
	struct dvm d;
	__u64 bitmap[WORDS];

	CHECK(dvm_create_bare(&d, DATA_PAGES) == 0);
	/* Created logging, also read-only and logging (both ioctl versions). */
	CHECK(dvm_slot(&d, KVM_MEM_LOG_DIRTY_PAGES) == 0);
	CHECK(set_slot(d.v.vm, 2, KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY, 0x100000, 1, d.data) == 0);
	struct kvm_userspace_memory_region2 r2 = {
		.slot = 3, .flags = KVM_MEM_LOG_DIRTY_PAGES, .guest_phys_addr = 0x200000,
		.memory_size = 4096, .userspace_addr = (__u64)d.data,
	};
	CHECK(ioctl(d.v.vm, KVM_SET_USER_MEMORY_REGION2, &r2) == 0);
	CHECK(get_log(d.v.vm, 2, bitmap) == 0 && bitmap[0] == 0);
	CHECK(get_log(d.v.vm, 3, bitmap) == 0 && bitmap[0] == 0);
	/* Toggled on an existing slot: the bitmap comes and goes with the flag. */
	CHECK(dvm_slot(&d, 0) == 0);
	CHECK_ERRNO_WHY(get_log(d.v.vm, DATA_SLOT, bitmap), ENOENT,
		    "slot whose logging was turned off");
	CHECK(dvm_slot(&d, KVM_MEM_LOG_DIRTY_PAGES) == 0);
	CHECK(get_log(d.v.vm, DATA_SLOT, bitmap) == 0 && bitmap[0] == 0);
	/* Read-only still cannot change. */
	CHECK_ERRNO_WHY(dvm_slot(&d, KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY), EINVAL,
		    "make a logging slot read-only");
	CHECK_ERRNO_WHY(set_slot(d.v.vm, 2, KVM_MEM_LOG_DIRTY_PAGES, 0x100000, 1, d.data), EINVAL,
		    "drop KVM_MEM_READONLY from a read-only logging slot");
	CHECK(set_slot(d.v.vm, 2, KVM_MEM_READONLY, 0x100000, 1, d.data) == 0);
	/* Moved while turning logging off, then on: the log follows. */
	CHECK(set_slot(d.v.vm, 3, 0, 0x300000, 1, d.data) == 0);
	CHECK_ERRNO_WHY(get_log(d.v.vm, 3, bitmap), ENOENT, "slot moved with logging turned off");
	CHECK(set_slot(d.v.vm, 3, KVM_MEM_LOG_DIRTY_PAGES, 0x400000, 1, d.data) == 0);
	CHECK(get_log(d.v.vm, 3, bitmap) == 0);
	/* Deleted: gone. */
	CHECK(set_slot(d.v.vm, 3, 0, 0, 0, NULL) == 0);
	CHECK_ERRNO_WHY(get_log(d.v.vm, 3, bitmap), ENOENT, "deleted slot");
	dvm_free(&d);
}

TEST(get_errors)
{
	struct dvm d;
	__u64 bitmap[WORDS];

	CHECK(dvm_create_bare(&d, DATA_PAGES) == 0);
	CHECK(dvm_slot(&d, KVM_MEM_LOG_DIRTY_PAGES) == 0);
	CHECK(set_slot(d.v.vm, 2, 0, 0x100000, 1, d.data) == 0);
	CHECK_ERRNO_WHY(get_log(d.v.vm, 7, bitmap), ENOENT, "no such slot");	/* no such slot */
	CHECK_ERRNO_WHY(get_log(d.v.vm, 2, bitmap), ENOENT,
		    "slot without logging");	/* slot without logging */
	CHECK_ERRNO_WHY(get_log(d.v.vm, 32764, bitmap), EINVAL,
		    "slot id 32764 (beyond KVM_USER_MEM_SLOTS)");	/* beyond KVM_USER_MEM_SLOTS */
	CHECK_ERRNO_WHY(get_log(d.v.vm, 2 << 16 | DATA_SLOT, bitmap), EINVAL,
		    "address space 2"); /* address space 2 */
	if (!upstream()) /* upstream x86 has an SMM address space 1 (then ENOENT) */
		CHECK_ERRNO_WHY(get_log(d.v.vm, 1 << 16 | DATA_SLOT, bitmap), EINVAL,
			    "address space 1 (rkvm: no SMM; upstream ENOENT)");
	CHECK_ERRNO_WHY(get_log(d.v.vm, DATA_SLOT, NULL), EFAULT, "NULL bitmap");
	CHECK_ERRNO_WHY(get_log(d.v.vm, DATA_SLOT, (void *)0xffff800000000000UL), EFAULT,
		    "kernel-half bitmap pointer");
	CHECK_ERRNO_WHY(ioctl(d.v.vm, KVM_GET_DIRTY_LOG, NULL), EFAULT, "NULL pointer");
	CHECK(get_log(d.v.vm, DATA_SLOT, bitmap) == 0);
	dvm_free(&d);
}

TEST(clear_errors)
{
	struct dvm d;
	__u64 bitmap[WORDS] = { 0 };

	CHECK(dvm_create_bare(&d, 128) == 0);
	CHECK(dvm_slot(&d, KVM_MEM_LOG_DIRTY_PAGES) == 0);
	CHECK(set_slot(d.v.vm, 2, 0, 0x100000, 1, d.data) == 0);
	/* Upstream's order: slot id, first_page alignment, slot, range, then the copy. */
	CHECK_ERRNO_WHY(clear_log(d.v.vm, 32764, 0, 64, bitmap), EINVAL,
		    "slot id 32764 (beyond KVM_USER_MEM_SLOTS)");
	CHECK_ERRNO_WHY(clear_log(d.v.vm, DATA_SLOT, 1, 64, bitmap), EINVAL,
		    "first_page 1 (not a multiple of 64)");	/* misaligned first_page */
	CHECK_ERRNO_WHY(clear_log(d.v.vm, DATA_SLOT, 32, 64, bitmap), EINVAL,
		    "first_page 32 (not a multiple of 64)");
	CHECK_ERRNO_WHY(clear_log(d.v.vm, 7, 1, 64, bitmap), EINVAL,
		    "no such slot and misaligned first_page (alignment checked first)");		/* before ENOENT */
	CHECK_ERRNO_WHY(clear_log(d.v.vm, 7, 0, 64, bitmap), ENOENT, "no such slot");
	CHECK_ERRNO_WHY(clear_log(d.v.vm, 2, 0, 1, bitmap), ENOENT,
		    "slot without logging");		/* no logging */
	CHECK_ERRNO_WHY(clear_log(d.v.vm, DATA_SLOT, 0, 65, bitmap), EINVAL,
		    "num_pages 65 (not a multiple of 64, not at the slot's end)");	/* not a multiple of 64 */
	CHECK_ERRNO_WHY(clear_log(d.v.vm, DATA_SLOT, 0, 192, bitmap), EINVAL,
		    "num_pages 192, past the 64-page slot");	/* beyond the slot */
	CHECK_ERRNO_WHY(clear_log(d.v.vm, DATA_SLOT, 64, 65, bitmap), EINVAL,
		    "range 64 + 65 pages, past the 64-page slot");
	CHECK_ERRNO_WHY(clear_log(d.v.vm, DATA_SLOT, 192, 0, bitmap), EINVAL,
		    "first_page 192, past the 64-page slot");
	CHECK_ERRNO_WHY(clear_log(d.v.vm, DATA_SLOT, 0, 64, NULL), EFAULT, "NULL bitmap");
	CHECK_ERRNO_WHY(ioctl(d.v.vm, KVM_CLEAR_DIRTY_LOG, NULL), EFAULT, "NULL pointer");
	/* Valid: aligned pieces, the whole slot, and empty (nothing read, so NULL is fine). */
	CHECK(clear_log(d.v.vm, DATA_SLOT, 64, 64, bitmap) == 0);
	CHECK(clear_log(d.v.vm, DATA_SLOT, 0, 128, bitmap) == 0);
	CHECK(clear_log(d.v.vm, DATA_SLOT, 128, 0, NULL) == 0);
	CHECK(clear_log(d.v.vm, DATA_SLOT, 0, 0, NULL) == 0);
	dvm_free(&d);
}

TEST(initially_set)
{
	struct dvm d;
	__u64 bitmap[WORDS], ones[WORDS];
	int all[101];

	for (int i = 0; i < 100; i++)
		all[i] = i;
	all[100] = -1;
	memset(ones, 0xff, sizeof(ones));
	CHECK(dvm_create_bare(&d, 100) == 0);
	/* A bitmap made before the option starts clear. */
	CHECK(set_slot(d.v.vm, 2, KVM_MEM_LOG_DIRTY_PAGES, 0x100000, 1, d.data) == 0);
	CHECK(enable_manual(d.v.vm, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET, 0) == 0);
	CHECK(get_log(d.v.vm, 2, bitmap) == 0 && bitmap[0] == 0);
	/* A new one has exactly the slot's 100 pages set, and GET (manual) leaves them. */
	CHECK(dvm_slot(&d, KVM_MEM_LOG_DIRTY_PAGES) == 0);
	CHECK(get_log(d.v.vm, DATA_SLOT, bitmap) == 0 && bitmap_is(bitmap, 100, all));
	CHECK(get_log(d.v.vm, DATA_SLOT, bitmap) == 0 && bitmap_is(bitmap, 100, all));
	/* The last, partial word reaches the end of the slot: num_pages need not be a multiple. */
	CHECK(clear_log(d.v.vm, DATA_SLOT, 64, 36, ones) == 0);
	CHECK(get_log(d.v.vm, DATA_SLOT, bitmap) == 0 && bitmap[0] == ~0ULL && bitmap[1] == 0);
	CHECK(clear_log(d.v.vm, DATA_SLOT, 0, 100, ones) == 0);
	CHECK(get_log(d.v.vm, DATA_SLOT, bitmap) == 0 && bitmap_is(bitmap, 100, NONE));
	/* Logging off and on again: a new, all-set bitmap. */
	CHECK(dvm_slot(&d, 0) == 0);
	CHECK(dvm_slot(&d, KVM_MEM_LOG_DIRTY_PAGES) == 0);
	CHECK(get_log(d.v.vm, DATA_SLOT, bitmap) == 0 && bitmap_is(bitmap, 100, all));
	/* Manual mode off: GET takes the bits. */
	CHECK(enable_manual(d.v.vm, 0, 0) == 0);
	CHECK(get_log(d.v.vm, DATA_SLOT, bitmap) == 0 && bitmap_is(bitmap, 100, all));
	CHECK(get_log(d.v.vm, DATA_SLOT, bitmap) == 0 && bitmap_is(bitmap, 100, NONE));
	dvm_free(&d);
}

TEST(guest_writes_are_logged)
{
	struct dvm d;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(dvm_create(&d, writer, sizeof(writer), DATA_PAGES) == 0);
	CHECK(dvm_slot(&d, KVM_MEM_LOG_DIRTY_PAGES) == 0);
	CHECK(log_is(&d, NONE));
	CHECK(guest_write(&d, PAGES(0, 1, 5, 63)));
	CHECK(log_is(&d, PAGES(0, 1, 5, 63)));
	/* The next log has only what was written since. */
	CHECK(guest_write(&d, PAGES(2, 7, 40)));
	CHECK(log_is(&d, PAGES(2, 7, 40)));
	/* Pages logged before were write-protected again: a new write to one is caught. */
	CHECK(guest_write(&d, PAGES(0, 40)));
	CHECK(log_is(&d, PAGES(0, 40)));
	CHECK(guest_write(&d, NONE));
	CHECK(log_is(&d, NONE));
	dvm_free(&d);
}

TEST(string_io_into_ram_is_logged)
{
	struct dvm d;
	int done = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(dvm_create(&d, inserter, sizeof(inserter), DATA_PAGES) == 0);
	CHECK(dvm_slot(&d, KVM_MEM_LOG_DIRTY_PAGES) == 0);
	CHECK(log_is(&d, NONE));
	/* Serve the IN exits (however the implementation batches them) up to the OUT to 0x80. */
	for (int n = 0; n < 32; n++) {
		struct kvm_run *run = d.v.run;

		if (ioctl(d.v.vcpu, KVM_RUN, 0) || run->exit_reason != KVM_EXIT_IO) {
			printf("# KVM_RUN: %s, exit reason %u\n", strerror(errno), run->exit_reason);
			break;
		}
		if (run->io.port == 0x80) {
			done = 1;
			break;
		}
		CHECK(run->io.port == 0x1234 && run->io.direction == KVM_EXIT_IO_IN && run->io.size == 1);
		memset((char *)run + run->io.data_offset, 0x5a, run->io.count);
	}
	CHECK(done);
	for (int i = 0; i < 16; i++)
		CHECK(d.data[50 * 4096 + 0x20 + i] == 0x5a);
	CHECK(log_is(&d, PAGES(50)));
	CHECK(log_is(&d, NONE));
	dvm_free(&d);
}

TEST(manual_protect_and_clear)
{
	__u64 mask[WORDS];
	struct dvm d;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(dvm_create(&d, writer, sizeof(writer), DATA_PAGES) == 0);
	CHECK(enable_manual(d.v.vm, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, 0) == 0);
	CHECK(dvm_slot(&d, KVM_MEM_LOG_DIRTY_PAGES) == 0);
	CHECK(guest_write(&d, PAGES(3, 4)));
	/* GET leaves the bits (and the pages writable) until CLEAR. */
	CHECK(log_is(&d, PAGES(3, 4)));
	CHECK(log_is(&d, PAGES(3, 4)));
	/* Clear page 3 only: it is clean and write-protected again. */
	mask[0] = 1ULL << 3;
	CHECK(clear_log(d.v.vm, DATA_SLOT, 0, 64, mask) == 0);
	CHECK(log_is(&d, PAGES(4)));
	CHECK(guest_write(&d, PAGES(3)));
	CHECK(log_is(&d, PAGES(3, 4)));
	/* Clearing bits of clean pages changes nothing. */
	mask[0] = 1ULL << 9 | 1ULL << 10;
	CHECK(clear_log(d.v.vm, DATA_SLOT, 0, 64, mask) == 0);
	CHECK(log_is(&d, PAGES(3, 4)));
	/* Clear everything; then only new writes show. */
	mask[0] = ~0ULL;
	CHECK(clear_log(d.v.vm, DATA_SLOT, 0, 64, mask) == 0);
	CHECK(log_is(&d, NONE));
	CHECK(guest_write(&d, PAGES(4, 9)));
	CHECK(log_is(&d, PAGES(4, 9)));
	dvm_free(&d);
}

TEST(initially_set_with_guest)
{
	__u64 ones[WORDS];
	struct dvm d;
	int all[DATA_PAGES + 1];

	if (no_guests())
		SKIP("backend=none enters no guest");
	for (int i = 0; i < DATA_PAGES; i++)
		all[i] = i;
	all[DATA_PAGES] = -1;
	memset(ones, 0xff, sizeof(ones));
	CHECK(dvm_create(&d, writer, sizeof(writer), DATA_PAGES) == 0);
	CHECK(enable_manual(d.v.vm, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET, 0) == 0);
	CHECK(dvm_slot(&d, KVM_MEM_LOG_DIRTY_PAGES) == 0);
	CHECK(log_is(&d, all));
	CHECK(guest_write(&d, PAGES(1, 2)));
	CHECK(log_is(&d, all));
	/* CLEAR write-protects what the guest mapped writable meanwhile. */
	CHECK(clear_log(d.v.vm, DATA_SLOT, 0, DATA_PAGES, ones) == 0);
	CHECK(log_is(&d, NONE));
	CHECK(guest_write(&d, PAGES(1, 60)));
	CHECK(log_is(&d, PAGES(1, 60)));
	dvm_free(&d);
}

TEST(logging_turned_on_for_a_mapped_slot)
{
	__u64 bitmap[WORDS];
	struct dvm d;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(dvm_create(&d, writer, sizeof(writer), DATA_PAGES) == 0);
	CHECK(dvm_slot(&d, 0) == 0);
	/* Mapped writable before logging starts. */
	CHECK(guest_write(&d, PAGES(0, 1, 2, 3)));
	CHECK(dvm_slot(&d, KVM_MEM_LOG_DIRTY_PAGES) == 0);
	CHECK(log_is(&d, NONE));
	CHECK(guest_write(&d, PAGES(1)));
	CHECK(log_is(&d, PAGES(1)));
	/* Off: no log, and the write-protected pages are writable again for the guest. */
	CHECK(dvm_slot(&d, 0) == 0);
	CHECK_ERRNO_WHY(get_log(d.v.vm, DATA_SLOT, bitmap), ENOENT,
		    "slot whose logging was turned off after a guest ran");
	CHECK(guest_write(&d, PAGES(1, 2)));
	/* On again: a fresh log. */
	CHECK(dvm_slot(&d, KVM_MEM_LOG_DIRTY_PAGES) == 0);
	CHECK(log_is(&d, NONE));
	CHECK(guest_write(&d, PAGES(2)));
	CHECK(log_is(&d, PAGES(2)));
	dvm_free(&d);
}

TEST(failed_copy_keeps_the_log)
{
	struct dvm d;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(dvm_create(&d, writer, sizeof(writer), DATA_PAGES) == 0);
	CHECK(dvm_slot(&d, KVM_MEM_LOG_DIRTY_PAGES) == 0);
	CHECK(guest_write(&d, PAGES(3)));
	CHECK_ERRNO_WHY(get_log(d.v.vm, DATA_SLOT, NULL), EFAULT,
		    "NULL bitmap, guest wrote pages (the log is kept)");
	/* rkvm puts the bits back; upstream has already cleared them (lost). */
	if (!upstream())
		CHECK(log_is(&d, PAGES(3)));
	CHECK(guest_write(&d, PAGES(5)));
	CHECK(log_is(&d, PAGES(5)));
	dvm_free(&d);
}

struct counter_run {
	struct dvm *d;
	int ok;
};

static void *run_counter(void *arg)
{
	struct counter_run *c = arg;

	c->ok = ioctl(c->d->v.vcpu, KVM_RUN, 0) == 0 && c->d->v.run->exit_reason == KVM_EXIT_HLT;
	return NULL;
}

static void read_counters(struct dvm *d, __u32 *vals)
{
	for (int p = 0; p < DATA_PAGES; p++)
		vals[p] = __atomic_load_n((__u32 *)(d->data + p * 4096), __ATOMIC_SEQ_CST);
}

/*
 * A write that changed a page between the reads after log k-1 and log k happened after log k-1
 * returned, so log k or log k+1 must name the page.
 */
TEST(no_write_lost_while_the_guest_runs)
{
	enum { ROUNDS = 40 };
	__u32 vals[2][DATA_PAGES];
	__u64 logs[2][WORDS];
	struct kvm_regs regs;
	struct counter_run c;
	pthread_t t;
	struct dvm d;
	int changed_rounds = 0, lost = 0, cur = 0;
	__u64 changed = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(dvm_create(&d, counter, sizeof(counter), DATA_PAGES) == 0);
	CHECK(dvm_slot(&d, KVM_MEM_LOG_DIRTY_PAGES) == 0);
	/* IF=1: a guest spinning with interrupts masked can stop a 1-CPU Bochs host for good. */
	CHECK(ioctl(d.v.vcpu, KVM_GET_REGS, &regs) == 0);
	regs.rflags = 0x202;
	CHECK(ioctl(d.v.vcpu, KVM_SET_REGS, &regs) == 0);
	c.d = &d;
	CHECK(get_log(d.v.vm, DATA_SLOT, logs[cur]) == 0);
	read_counters(&d, vals[cur]);
	CHECK(pthread_create(&t, NULL, run_counter, &c) == 0);
	for (int k = 1; k <= ROUNDS + 1; k++) {
		int prev = cur;

		cur ^= 1;
		if (k == ROUNDS + 1) {
			/* Stop the guest; the last log covers everything up to its HLT. */
			__atomic_store_n(d.v.mem + TABLE, 1, __ATOMIC_SEQ_CST);
			pthread_join(t, NULL);
		} else {
			usleep(2000);
		}
		CHECK(get_log(d.v.vm, DATA_SLOT, logs[cur]) == 0);
		/* `changed` (pages changed in round k-1) must be in log k-1 or log k. */
		for (int p = 0; p < DATA_PAGES; p++) {
			if ((changed >> p & 1) && !(logs[prev][0] >> p & 1) && !(logs[cur][0] >> p & 1)) {
				if (lost++ < 10)
					printf("# round %d: page %d changed but is in neither log\n", k - 1, p);
			}
		}
		read_counters(&d, vals[cur]);
		changed = 0;
		for (int p = 0; p < DATA_PAGES; p++)
			if (vals[cur][p] != vals[prev][p])
				changed |= 1ULL << p;
		changed_rounds += changed != 0;
	}
	/* The last round's changes happened before the HLT, hence before the last log. */
	for (int p = 0; p < DATA_PAGES; p++) {
		if ((changed >> p & 1) && !(logs[cur][0] >> p & 1)) {
			if (lost++ < 10)
				printf("# last round: page %d changed but is not in the last log\n", p);
		}
	}
	CHECK(c.ok);
	if (lost)
		printf("# %d pages changed without being logged\n", lost);
	CHECK(lost == 0);
	ktap_diag("%d of %d rounds saw the guest write", changed_rounds, ROUNDS + 1);
	CHECK(changed_rounds > 0);
	dvm_free(&d);
}

KTAP_MAIN("rkvm dirty_log",
	CASE(capability),
	CASE(slot_flags),
	CASE(get_errors),
	CASE(clear_errors),
	CASE(initially_set),
	CASE(guest_writes_are_logged),
	CASE(string_io_into_ram_is_logged),
	CASE(manual_protect_and_clear),
	CASE(initially_set_with_guest),
	CASE(logging_turned_on_for_a_mapped_slot),
	CASE(failed_copy_keeps_the_log),
	CASE(no_write_lost_while_the_guest_runs))

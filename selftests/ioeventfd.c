// SPDX-License-Identifier: GPL-2.0
/*
 * KVM_IOEVENTFD: guest writes that match an ioeventfd signal its eventfd in the kernel (no exit
 * to userspace); writes that do not match, and reads, exit as before.
 *
 * The ioctl cases (caps, errnos in upstream's order, limits, deassignment, fd lifetimes) run on
 * every backend; the guest cases (guests/ioeventfd.S, 64-bit) need one that enters guests. Every
 * case is meant to pass against the kernel's KVM too (RKVM_DEV=/dev/kvm RKVM_UPSTREAM=1).
 *
 * Upstream references: virt/kvm/eventfd.c (kvm_ioeventfd, kvm_assign_ioeventfd(_idx),
 * kvm_deassign_ioeventfd_idx, ioeventfd_in_range, ioeventfd_check_collision), virt/kvm/kvm_main.c
 * (kvm_io_bus_register_dev, kvm_io_bus_get_first_dev, __kvm_io_bus_write), coalesced_mmio.c.
 */
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include "rkvm_util.h"

#define MMIO		0x10000000ull
#define MEM_SIZE	0x10000
#define GUEST_BIN	"guest-ioeventfd.bin"
#define SYNC_PORT	0x80

#define DM	KVM_IOEVENTFD_FLAG_DATAMATCH
#define PIO	KVM_IOEVENTFD_FLAG_PIO
#define DEASSIGN KVM_IOEVENTFD_FLAG_DEASSIGN
#define CCW	KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY

/* Program numbers: the table at the start of guests/ioeventfd.S. */
enum program { P_SIZES, P_PIO_LOOP, P_MMIO_LOOP, P_ORDER };

static int ioeventfd(int vm, __u64 addr, __u32 len, int fd, __u32 flags, __u64 datamatch)
{
	struct kvm_ioeventfd a = {
		.datamatch = datamatch, .addr = addr, .len = len, .fd = fd, .flags = flags,
	};

	return ioctl(vm, KVM_IOEVENTFD, &a);
}

static int new_eventfd(void)
{
	return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

/* Takes the eventfd's counter (0 if it was 0). */
static __u64 take(int efd)
{
	uint64_t n;

	if (read(efd, &n, sizeof(n)) != sizeof(n))
		return errno == EAGAIN ? 0 : ~0ull;
	return n;
}

TEST(caps)
{
	int kvm = open_dev(), vm = create_vm(kvm);

	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_IOEVENTFD) == 1);
	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_IOEVENTFD_NO_LENGTH) == 1);
	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_IOEVENTFD_ANY_LENGTH) == 1);
	CHECK(ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_IOEVENTFD) == 1);
	CHECK(ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_IOEVENTFD_NO_LENGTH) == 1);
	CHECK(ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_IOEVENTFD_ANY_LENGTH) == 1);
	close(vm);
	close(kvm);
}

/* The argument checks come first, in upstream's order, then the eventfd, then the bus. */
TEST(assign_errors)
{
	int kvm = open_dev(), vm = create_vm(kvm), efd = new_eventfd(), closed = dup(efd);

	close(closed);
	CHECK_ERRNO_WHY(ioctl(vm, KVM_IOEVENTFD, NULL), EFAULT, "NULL pointer");
	for (__u32 len = 3; len < 17; len++)
		if (len != 4 && len != 8)
			CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, len, efd, 0, 0), EINVAL,
				    "length other than 0, 1, 2, 4, 8");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 3, -1, 0, 0), EINVAL,
		    "length 3 with fd -1 (length checked before the fd)"); /* before the fd */
	CHECK_ERRNO_WHY(ioeventfd(vm, -4ull, 4, efd, 0, 0), EINVAL,
		    "MMIO range ending at 2^64 (wraps)"); /* ends at 2^64: wraps */
	CHECK_ERRNO_WHY(ioeventfd(vm, -2ull, 4, efd, PIO, 0), EINVAL,
		    "PIO range ending past 2^64 (wraps)");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 4, efd, 1 << 5, 0), EINVAL, "unknown flag bit 5");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 4, efd, 0x80000000, 0), EINVAL, "unknown flag bit 31");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 0, efd, DM, 0), EINVAL,
		    "KVM_IOEVENTFD_FLAG_DATAMATCH with length 0");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 0, efd, DM | PIO, 0), EINVAL,
		    "DATAMATCH with length 0 on the PIO bus");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 4, -1, 0, 0), EBADF, "fd -1");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 4, closed, 0, 0), EBADF, "closed fd");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 4, vm, 0, 0), EINVAL,
		    "fd that is not an eventfd (a VM fd)"); /* not an eventfd */
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 4, kvm, 0, 0), EINVAL,
		    "fd that is not an eventfd (/dev/kvm)");
	/* What is accepted: every length (0 on both buses), the last byte of the address space,
	 * the flag bit upstream reserves for fast MMIO, and virtio-ccw (its own bus, never written
	 * on x86). */
	CHECK(ioeventfd(vm, 0x1000, 0, efd, 0, 0) == 0);
	CHECK(ioeventfd(vm, 0x1000, 0, efd, PIO, 0) == 0);
	CHECK(ioeventfd(vm, 0x2000, 1, efd, DM, 0x11) == 0);
	CHECK(ioeventfd(vm, 0x2000, 2, efd, DM | PIO, 0x11) == 0);
	CHECK(ioeventfd(vm, 0x2000, 4, efd, 0, 0) == 0);
	CHECK(ioeventfd(vm, 0x2000, 8, efd, 0, 0) == 0);
	CHECK(ioeventfd(vm, -5ull, 4, efd, 0, 0) == 0);
	CHECK(ioeventfd(vm, -1ull, 0, efd, 0, 0) == 0);
	CHECK(ioeventfd(vm, 0x3000, 4, efd, 1 << 4, 0) == 0);
	CHECK(ioeventfd(vm, 0x3000, 4, efd, CCW, 0) == 0);
	CHECK(ioeventfd(vm, 0x3000, 4, efd, CCW | DEASSIGN, 0) == 0);
	CHECK(ioeventfd(vm, 0x3000, 4, efd, CCW | PIO, 0) == 0); /* PIO wins */
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x3000, 4, efd, PIO, 0), EEXIST,
		    "same PIO address, length and eventfd already assigned (by CCW and PIO: PIO wins)");
	close(efd);
	close(vm);
	close(kvm);
}

/* Upstream ioeventfd_check_collision: per bus, by address, length and data; not by eventfd. */
TEST(duplicates)
{
	int kvm = open_dev(), vm = create_vm(kvm), e1 = new_eventfd(), e2 = new_eventfd();

	CHECK(ioeventfd(vm, 0x1000, 4, e1, DM, 1) == 0);
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 4, e1, DM, 1), EEXIST,
		    "same address, length, data and eventfd again");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 4, e2, DM, 1), EEXIST,
		    "same address, length and data with another eventfd");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 4, e2, 0, 0), EEXIST,
		    "wildcard over an address with a DATAMATCH entry");	/* any data covers 1 */
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 0, e2, 0, 0), EEXIST,
		    "length 0 over an address with a 4-byte entry");	/* any length covers 4 */
	CHECK(ioeventfd(vm, 0x1000, 4, e2, DM, 2) == 0);
	CHECK(ioeventfd(vm, 0x1000, 2, e2, DM, 1) == 0);
	CHECK(ioeventfd(vm, 0x1000, 4, e1, DM | PIO, 1) == 0);	/* the other bus */
	CHECK(ioeventfd(vm, 0x1001, 4, e1, DM, 1) == 0);
	CHECK(ioeventfd(vm, 0x2000, 0, e1, PIO, 0) == 0);
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x2000, 1, e2, DM | PIO, 7), EEXIST,
		    "DATAMATCH over a PIO address with a length-0 wildcard");
	CHECK(ioeventfd(vm, 0x2000, 1, e2, DM, 7) == 0);
	close(e1);
	close(e2);
	close(vm);
	close(kvm);
}

/* Deassignment must name the same eventfd, bus, address, length and data match. */
TEST(deassign)
{
	int kvm = open_dev(), vm = create_vm(kvm), e1 = new_eventfd(), e2 = new_eventfd();
	int e1dup = dup(e1);

	CHECK(ioeventfd(vm, 0x1000, 4, e1, DM, 1) == 0);
	CHECK(ioeventfd(vm, 0x2000, 2, e1, PIO, 0) == 0);
	CHECK(ioeventfd(vm, 0x3000, 0, e2, 0, 0) == 0);
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 4, e1, DEASSIGN | DM, 2), ENOENT,
		    "deassign with another data value");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 4, e1, DEASSIGN, 1), ENOENT,
		    "deassign without DATAMATCH (entry has it)");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 4, e2, DEASSIGN | DM, 1), ENOENT,
		    "deassign with another eventfd");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 2, e1, DEASSIGN | DM, 1), ENOENT,
		    "deassign with another length");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 4, e1, DEASSIGN | DM | PIO, 1), ENOENT,
		    "deassign on the other bus (PIO)");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 3, e1, DEASSIGN | DM, 1), ENOENT,
		    "deassign with length 3 (no length check on deassign)"); /* no length check */
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 4, -1, DEASSIGN | DM, 1), EBADF, "deassign with fd -1");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 4, vm, DEASSIGN | DM, 1), EINVAL,
		    "deassign with a fd that is not an eventfd");
	CHECK(ioeventfd(vm, 0x1000, 4, e1dup, DEASSIGN | DM, 1) == 0); /* same eventfd, other fd */
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x1000, 4, e1, DEASSIGN | DM, 1), ENOENT,
		    "deassign an entry already removed through a dup of its eventfd");
	CHECK(ioeventfd(vm, 0x1000, 4, e1, DM, 1) == 0);		/* again */
	CHECK(ioeventfd(vm, 0x2000, 2, e1, DEASSIGN | PIO, 0x55) == 0); /* data ignored: wildcard */
	CHECK(ioeventfd(vm, 0x3000, 0, e2, DEASSIGN, 0) == 0);
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x3000, 0, e2, DEASSIGN, 0), ENOENT,
		    "deassign a wildcard already removed");
	/* Extra flags are not checked on deassignment. */
	CHECK(ioeventfd(vm, 0x1000, 4, e1, DEASSIGN | DM | (1 << 20), 1) == 0);
	close(e1dup);
	close(e1);
	close(e2);
	close(vm);
	close(kvm);
}

/*
 * NR_IOBUS_DEVS (1000) bounds the devices on a bus other than ioeventfds: 1000 coalesced MMIO
 * zones fill the MMIO bus, so an MMIO ioeventfd gets ENOSPC (after the EEXIST check), a PIO
 * one does not; 1100 ioeventfds do not fill a bus.
 */
TEST(limits)
{
	int kvm = open_dev(), vm = create_vm(kvm), efd = new_eventfd(), ok = 1;
	struct kvm_coalesced_mmio_zone z = { .size = 4 };

	for (int i = 0; i < 1100 && ok; i++)
		ok = ioeventfd(vm, 0x100000 + 8 * i, 4, efd, 0, 0) == 0;
	CHECK(ok);
	for (int i = 0; i < 1000 && ok; i++) {
		z.addr = 0x200000 + 8 * i;
		ok = ioctl(vm, KVM_REGISTER_COALESCED_MMIO, &z) == 0;
	}
	CHECK(ok);
	z.addr = 0x300000;
	CHECK_ERRNO_WHY(ioctl(vm, KVM_REGISTER_COALESCED_MMIO, &z), ENOSPC,
		    "coalesced MMIO zone beyond NR_IOBUS_DEVS (1000) on the MMIO bus");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x400000, 4, efd, 0, 0), ENOSPC,
		    "MMIO ioeventfd on a full MMIO bus (1000 coalesced zones)");
	CHECK_ERRNO_WHY(ioeventfd(vm, 0x100000, 4, efd, 0, 0), EEXIST,
		    "full MMIO bus, address already assigned (EEXIST checked first)");
	CHECK(ioeventfd(vm, 0x400000, 4, efd, PIO, 0) == 0);
	z.pio = 1;
	CHECK(ioctl(vm, KVM_REGISTER_COALESCED_MMIO, &z) == 0);	/* the PIO bus has room */
	z.pio = 0;
	z.addr = 0x200000;
	CHECK(ioctl(vm, KVM_UNREGISTER_COALESCED_MMIO, &z) == 0);
	CHECK(ioeventfd(vm, 0x400000, 4, efd, 0, 0) == 0);
	close(efd);
	close(vm);
	close(kvm);
}

/*
 * The VM keeps its own reference on each eventfd: closing the eventfd first, then the VM (or
 * the VM while an eventfd is still open) leaves nothing behind (the kmemleak scan after the
 * tests counts leaked eventfd contexts too).
 */
TEST(eventfd_closed_before_vm)
{
	for (int round = 0; round < 2; round++) {
		int kvm = open_dev(), vm = create_vm(kvm), efd = new_eventfd();

		CHECK(ioeventfd(vm, 0x1000, 4, efd, 0, 0) == 0);
		CHECK(ioeventfd(vm, 0x1000, 0, efd, PIO, 0) == 0);
		CHECK(ioeventfd(vm, 0x2000, 0, efd, 0, 0) == 0);
		if (round == 0) {
			close(efd);
			close(vm);
		} else {
			close(vm);
			CHECK(take(efd) == 0);
			close(efd);
		}
		close(kvm);
	}
}

/* --- guests ------------------------------------------------------------------------------------- */

struct gvm {
	int kvm, vm, vcpu;
	struct kvm_run *run;
	long run_size;
	unsigned char *mem;
};

static int load_guest(unsigned char *mem)
{
	return load_guest_bin(GUEST_BIN, mem, 0x8000) > 0 ? 0 : -1;
}

/* The supported CPUID as the vCPU's (upstream wants long mode in it for EFER.LME). */
static int set_cpuid(struct gvm *v)
{
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + 256 * sizeof(struct kvm_cpuid_entry2));
	int r;

	c->nent = 256;
	r = ioctl(v->kvm, KVM_GET_SUPPORTED_CPUID, c);
	if (!r)
		r = ioctl(v->vcpu, KVM_SET_CPUID2, c);
	free(c);
	return r;
}

/* Points the vCPU at program `prog` with RCX = `rcx`. */
static int gvm_start(struct gvm *v, enum program prog, __u64 rcx)
{
	struct kvm_regs regs = { .rax = prog, .rcx = rcx, .rip = 0, .rsp = 0xf000, .rflags = 2 };

	return ioctl(v->vcpu, KVM_SET_REGS, &regs);
}

/*
 * A 64-bit vCPU: 64 KiB of RAM at 0 holding the guest binary, page tables at 0x8000 mapping
 * the first GiB with 2 MiB pages (the MMIO window included).
 */
static int gvm_create(struct gvm *v)
{
	struct kvm_userspace_memory_region r = { .slot = 0, .memory_size = MEM_SIZE };
	struct kvm_segment cs = { .selector = 8, .type = 11, .present = 1, .s = 1, .l = 1, .g = 1,
				  .limit = 0xffffffff };
	struct kvm_segment ds = { .selector = 16, .type = 3, .present = 1, .s = 1, .db = 1, .g = 1,
				  .limit = 0xffffffff };
	struct kvm_sregs s;
	uint64_t *pt;

	memset(v, 0, sizeof(*v));
	v->kvm = open_dev();
	v->vm = create_vm(v->kvm);
	v->run_size = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	v->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (v->vm < 0 || v->mem == MAP_FAILED || load_guest(v->mem))
		return -1;
	pt = (uint64_t *)(v->mem + 0x8000);
	pt[0] = 0x9000 | 3;			/* PML4[0] -> PDPT */
	pt[512] = 0xa000 | 3;			/* PDPT[0] -> PD */
	for (int i = 0; i < 512; i++)
		pt[1024 + i] = ((uint64_t)i << 21) | 0x83; /* 2 MiB pages */
	r.userspace_addr = (__u64)v->mem;
	if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &r))
		return -1;
	v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
	if (v->vcpu < 0 || set_cpuid(v))
		return -1;
	v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
	if (v->run == MAP_FAILED || ioctl(v->vcpu, KVM_GET_SREGS, &s))
		return -1;
	s.cr3 = 0x8000;
	s.cr4 = 1 << 5;				/* PAE */
	s.cr0 = 1 | (1 << 4) | (1u << 31);	/* PE, ET, PG */
	s.efer = (1 << 8) | (1 << 10);		/* LME, LMA */
	s.cs = cs;
	s.ds = s.es = s.fs = s.gs = s.ss = ds;
	s.tr.type = 11;				/* busy 64-bit TSS */
	return ioctl(v->vcpu, KVM_SET_SREGS, &s);
}

static void gvm_free(struct gvm *v)
{
	if (v->run && v->run != MAP_FAILED)
		munmap(v->run, v->run_size);
	close(v->vcpu);
	close(v->vm);
	close(v->kvm);
	if (v->mem && v->mem != MAP_FAILED)
		munmap(v->mem, MEM_SIZE);
}

/* An exit the test expects: kind, address or port, size, direction and written data. */
enum kind { IO, MMIO_EXIT, SYNC };
struct step {
	enum kind kind;
	__u64 addr;
	__u32 size;
	int write;
	__u64 data;
};

#define OUT(port, size, data)	{ IO, port, size, 1, data }
#define IN(port, size)		{ IO, port, size, 0, 0 }
#define MW(off, size, data)	{ MMIO_EXIT, MMIO + (off), size, 1, data }
#define MR(off, size)		{ MMIO_EXIT, MMIO + (off), size, 0, 0 }
#define STEP(n)			{ SYNC, SYNC_PORT, 1, 1, n }

static __u64 masked(__u64 v, __u32 size)
{
	return size >= 8 ? v : v & ((1ull << (8 * size)) - 1);
}

/* Runs the vCPU to its next exit and checks it is `want` (printing what it got if not). */
static int run_to(struct gvm *v, const struct step *want)
{
	struct kvm_run *run = v->run;
	__u64 data = 0;

	if (ioctl(v->vcpu, KVM_RUN, 0)) {
		printf("# KVM_RUN: %s\n", strerror(errno));
		return 0;
	}
	if (run->exit_reason == KVM_EXIT_IO && (want->kind == IO || want->kind == SYNC)) {
		memcpy(&data, (char *)run + run->io.data_offset, run->io.size);
		if (run->io.port == want->addr && run->io.size == want->size && run->io.count == 1 &&
		    run->io.direction == (want->write ? KVM_EXIT_IO_OUT : KVM_EXIT_IO_IN) &&
		    (!want->write || data == masked(want->data, want->size)))
			return 1;
		printf("# got IO %s port %#x size %u count %u data %#llx\n",
		       run->io.direction == KVM_EXIT_IO_OUT ? "out" : "in", run->io.port, run->io.size,
		       run->io.count, data);
	} else if (run->exit_reason == KVM_EXIT_MMIO && want->kind == MMIO_EXIT) {
		memcpy(&data, run->mmio.data, 8);
		if (run->mmio.phys_addr == want->addr && run->mmio.len == want->size &&
		    run->mmio.is_write == want->write &&
		    (!want->write || masked(data, want->size) == masked(want->data, want->size)))
			return 1;
		printf("# got MMIO %s %#llx len %u data %#llx\n", run->mmio.is_write ? "write" : "read",
		       run->mmio.phys_addr, run->mmio.len, data);
	} else if (run->exit_reason == KVM_EXIT_MMIO) {
		printf("# got MMIO %s %#llx len %u\n", run->mmio.is_write ? "write" : "read",
		       run->mmio.phys_addr, run->mmio.len);
	} else if (run->exit_reason == KVM_EXIT_IO) {
		printf("# got IO port %#x size %u\n", run->io.port, run->io.size);
	} else {
		printf("# got exit reason %u\n", run->exit_reason);
	}
	printf("# wanted %s %#llx size %u %s data %#llx\n",
	       want->kind == MMIO_EXIT ? "MMIO" : "IO", want->addr, want->size,
	       want->write ? "write" : "read", want->data);
	return 0;
}

/* Runs through `steps`; returns the number that matched before the first mismatch. */
static int run_steps(struct gvm *v, const struct step *steps, int n)
{
	for (int i = 0; i < n; i++)
		if (!run_to(v, &steps[i])) {
			printf("# at step %d\n", i);
			return i;
		}
	return n;
}

/* The ioeventfds of program 0, one eventfd each; `hits` are its writes that match. */
static const struct {
	__u64 addr;
	__u32 len, flags;
	__u64 datamatch;
	int hits;
} sizes_evs[] = {
	{ 0x510, 1, PIO | DM, 0x11, 1 },
	{ 0x512, 2, PIO | DM, 0x2222, 1 },
	{ 0x514, 4, PIO | DM, 0x44444444, 1 },
	{ 0x518, 1, PIO, 0, 1 },
	{ 0x51c, 0, PIO, 0, 3 },
	{ MMIO + 0x00, 1, DM, 0x11, 1 },
	{ MMIO + 0x10, 2, DM, 0x2222, 1 },
	{ MMIO + 0x20, 4, DM, 0x44444444, 1 },
	{ MMIO + 0x30, 8, DM, 0x8888888877777777ull, 1 },
	{ MMIO + 0x40, 4, 0, 0, 1 },
	{ MMIO + 0x50, 0, 0, 0, 4 },
};
#define NEVS (int)(sizeof(sizes_evs) / sizeof(sizes_evs[0]))

/* The exits of program 0: every write that matches no ioeventfd, and the reads. */
static const struct step sizes_pio[] = {
	OUT(0x510, 1, 0x12), OUT(0x512, 2, 0x2223), OUT(0x514, 4, 0x44444445), OUT(0x514, 1, 0x44),
	OUT(0x518, 2, 0x9999), OUT(0x51d, 1, 0x99), IN(0x514, 4), STEP(1),
};
static const struct step sizes_mmio[] = {
	MW(0x00, 1, 0x12), MW(0x10, 2, 0x2223), MW(0x20, 4, 0x44444445),
	MW(0x30, 8, 0x8888888877777778ull), MW(0x30, 4, 0x77777777), MW(0x51, 1, 5), MR(0x20, 4),
	STEP(2),
};

/* Every size on both buses, with and without a data match and with no length. */
TEST(guest_writes_of_each_size)
{
	int efd[NEVS];
	struct gvm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(gvm_create(&v) == 0);
	for (int i = 0; i < NEVS; i++) {
		efd[i] = new_eventfd();
		CHECK(ioeventfd(v.vm, sizes_evs[i].addr, sizes_evs[i].len, efd[i], sizes_evs[i].flags,
				sizes_evs[i].datamatch) == 0);
	}
	CHECK(gvm_start(&v, P_SIZES, 0) == 0);
	CHECK(run_steps(&v, sizes_pio, 8) == 8);
	for (int i = 0; i < NEVS; i++) {
		__u64 n = take(efd[i]), want = sizes_evs[i].flags & PIO ? sizes_evs[i].hits : 0;

		if (n != want) {
			printf("# PIO part: ioeventfd %#llx/%u signalled %llu times, wanted %llu\n",
			       sizes_evs[i].addr, sizes_evs[i].len, n, want);
			ktap_failed_case = 1;
		}
	}
	CHECK(run_steps(&v, sizes_mmio, 8) == 8);
	for (int i = 0; i < NEVS; i++) {
		__u64 n = take(efd[i]), want = sizes_evs[i].flags & PIO ? 0 : sizes_evs[i].hits;

		if (n != want) {
			printf("# MMIO part: ioeventfd %#llx/%u signalled %llu times, wanted %llu\n",
			       sizes_evs[i].addr, sizes_evs[i].len, n, want);
			ktap_failed_case = 1;
		}
	}
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_HLT);
	/* The eventfd became readable through poll too (nothing pending now). */
	{
		struct pollfd p = { .fd = efd[0], .events = POLLIN };

		CHECK(poll(&p, 1, 0) == 0);
	}
	for (int i = 0; i < NEVS; i++)
		close(efd[i]);
	gvm_free(&v);
}

/* Deassigning restores the exit; an eventfd closed by userspace is still signalled. */
TEST(deassign_restores_exits)
{
	/* The port write's data is AL: the program number the vCPU started with. */
	static const struct step mmio = MW(0x60, 4, 1), pio = OUT(0x520, 1, P_PIO_LOOP), step3 = STEP(3);
	int efd = new_eventfd(), copy = dup(efd), closed = new_eventfd();
	struct gvm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(gvm_create(&v) == 0);
	CHECK(ioeventfd(v.vm, MMIO + 0x60, 4, efd, DM, 1) == 0);
	CHECK(gvm_start(&v, P_MMIO_LOOP, 3) == 0);
	CHECK(run_to(&v, &step3) && take(efd) == 3);
	CHECK(ioeventfd(v.vm, MMIO + 0x60, 4, efd, DM | DEASSIGN, 1) == 0);
	CHECK(gvm_start(&v, P_MMIO_LOOP, 2) == 0);
	CHECK(run_to(&v, &mmio) && run_to(&v, &mmio) && run_to(&v, &step3) && take(efd) == 0);
	/* Port 0x520 with an eventfd the test has closed: the VM's reference keeps it alive, so
	 * writes are still taken (and counted, as a dup of the fd shows). */
	CHECK(ioeventfd(v.vm, 0x520, 1, efd, PIO, 0) == 0);
	close(efd);
	CHECK(ioeventfd(v.vm, 0x520, 0, closed, PIO, 0) == -1 && errno == EEXIST);
	close(closed);
	CHECK(gvm_start(&v, P_PIO_LOOP, 5) == 0);
	CHECK(run_to(&v, &step3) && take(copy) == 5);
	CHECK(ioeventfd(v.vm, 0x520, 1, copy, PIO | DEASSIGN, 0) == 0);
	CHECK(gvm_start(&v, P_PIO_LOOP, 1) == 0);
	CHECK(run_to(&v, &pio) && run_to(&v, &step3) && take(copy) == 0);
	close(copy);
	gvm_free(&v);
}

/*
 * Coalesced zones and ioeventfds over the same addresses, in upstream's bus order: an
 * ioeventfd inside a zone registered before it loses to the zone while the ring has room (and
 * upstream's binary search then misses the part of the zone past the ioeventfd: those writes
 * exit); one registered before the zone, or at the zone's start (a shorter range sorts first),
 * wins.
 */
TEST(order_against_coalesced_zones)
{
	struct kvm_coalesced_mmio_zone za = { .addr = MMIO + 0x100, .size = 0x100 };
	struct kvm_coalesced_mmio_zone zb = { .addr = MMIO + 0x200, .size = 0x100 };
	struct kvm_coalesced_mmio_zone zc = { .addr = MMIO + 0x300, .size = 0x100 };
	static const struct step round_room[] = { MW(0x120, 4, 2), STEP(4) };
	static const struct step round_full[] = {
		MW(0x120, 4, 2), MW(0x104, 4, 3), MW(0x210, 2, 5), STEP(4),
	};
	static const struct step round_no_a[] = { MW(0x120, 4, 2), MW(0x104, 4, 3), STEP(4) };
	struct kvm_coalesced_mmio_ring *ring;
	struct kvm_coalesced_mmio *e;
	int ea = new_eventfd(), eb = new_eventfd(), ec = new_eventfd();
	struct gvm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(gvm_create(&v) == 0);
	ring = (void *)((char *)v.run + KVM_COALESCED_MMIO_PAGE_OFFSET * page_size());
	e = ring->coalesced_mmio;
	CHECK(ioctl(v.vm, KVM_REGISTER_COALESCED_MMIO, &za) == 0);
	CHECK(ioeventfd(v.vm, MMIO + 0x110, 4, ea, 0, 0) == 0);
	CHECK(ioeventfd(v.vm, MMIO + 0x210, 4, eb, 0, 0) == 0);
	CHECK(ioctl(v.vm, KVM_REGISTER_COALESCED_MMIO, &zb) == 0);
	CHECK(ioctl(v.vm, KVM_REGISTER_COALESCED_MMIO, &zc) == 0);
	CHECK(ioeventfd(v.vm, MMIO + 0x300, 4, ec, 0, 0) == 0);
	CHECK(gvm_start(&v, P_ORDER, 0) == 0);
	/* Ring with room: 0x110 and 0x104 coalesced, 0x120 exits, 0x210/4 signalled, 0x210/2
	 * coalesced, 0x300 signalled. */
	CHECK(run_steps(&v, round_room, 2) == 2);
	CHECK(ring->first == 0 && ring->last == 3);
	CHECK(e[0].phys_addr == MMIO + 0x110 && e[0].len == 4 && *(__u32 *)e[0].data == 1);
	CHECK(e[1].phys_addr == MMIO + 0x104 && e[1].len == 4 && *(__u32 *)e[1].data == 3);
	CHECK(e[2].phys_addr == MMIO + 0x210 && e[2].len == 2 && *(__u16 *)e[2].data == 5);
	CHECK(take(ea) == 0 && take(eb) == 1 && take(ec) == 1);
	/* Ring full: the zone passes the write on to the ioeventfd behind it, or it exits. */
	ring->first = ring->last + 1;
	CHECK(run_steps(&v, round_full, 4) == 4);
	CHECK(ring->last == 3);
	CHECK(take(ea) == 1 && take(eb) == 1 && take(ec) == 1);
	/* Without zone A its writes reach only the ioeventfd or exit. */
	ring->first = ring->last = 0;
	CHECK(ioctl(v.vm, KVM_UNREGISTER_COALESCED_MMIO, &za) == 0);
	CHECK(run_steps(&v, round_no_a, 3) == 3);
	CHECK(ring->last == 1 && e[0].phys_addr == MMIO + 0x210 && e[0].len == 2);
	CHECK(take(ea) == 1 && take(eb) == 1 && take(ec) == 1);
	close(ea);
	close(eb);
	close(ec);
	gvm_free(&v);
}

/*
 * A vCPU thread writes while the main thread assigns and deassigns the ioeventfd over and
 * over: every write is either signalled or an exit, none lost or doubled.
 */
struct race {
	struct gvm *v;
	int bus_pio;
	long n, exits, bad;
	volatile int done;
};

static void *race_vcpu(void *arg)
{
	struct race *r = arg;
	struct kvm_run *run = r->v->run;

	for (;;) {
		if (ioctl(r->v->vcpu, KVM_RUN, 0)) {
			r->bad++;
			break;
		}
		if (run->exit_reason == KVM_EXIT_IO && run->io.port == SYNC_PORT)
			break;
		if (r->bus_pio ? run->exit_reason == KVM_EXIT_IO && run->io.port == 0x520
			       : run->exit_reason == KVM_EXIT_MMIO && run->mmio.phys_addr == MMIO + 0x60)
			r->exits++;
		else {
			r->bad++;
			break;
		}
	}
	r->done = 1;
	return NULL;
}

TEST(assign_deassign_while_running)
{
	for (int pio = 1; pio >= 0; pio--) {
		struct race r = { .bus_pio = pio, .n = pio ? 3000 : 1000 };
		__u64 addr = pio ? 0x520 : MMIO + 0x60;
		__u32 flags = pio ? PIO : 0;
		int efd = new_eventfd(), flips = 0;
		struct gvm v;
		pthread_t t;
		__u64 hits;

		if (no_guests())
			SKIP("backend=none enters no guest");
		CHECK(gvm_create(&v) == 0);
		r.v = &v;
		CHECK(gvm_start(&v, pio ? P_PIO_LOOP : P_MMIO_LOOP, r.n) == 0);
		CHECK(ioeventfd(v.vm, addr, pio ? 1 : 4, efd, flags, 0) == 0);
		CHECK(pthread_create(&t, NULL, race_vcpu, &r) == 0);
		while (!r.done) {
			int on = flips % 2;

			if (ioeventfd(v.vm, addr, pio ? 1 : 4, efd, flags | (on ? 0 : DEASSIGN), 0)) {
				printf("# flip %d: %s\n", flips, strerror(errno));
				ktap_failed_case = 1;
				break;
			}
			flips++;
			if (flips % 8 == 0)
				usleep(100);
		}
		pthread_join(t, NULL);
		hits = take(efd);
		printf("# %s: %ld writes: %llu signalled, %ld exits, %d assign/deassign calls\n",
		       pio ? "PIO" : "MMIO", r.n, hits, r.exits, flips);
		CHECK(r.bad == 0);
		CHECK((long)hits + r.exits == r.n);
		close(efd);
		gvm_free(&v);
	}
}

KTAP_MAIN("rkvm ioeventfd",
	CASE(caps),
	CASE(assign_errors),
	CASE(duplicates),
	CASE(deassign),
	CASE(limits),
	CASE(eventfd_closed_before_vm),
	CASE(guest_writes_of_each_size),
	CASE(deassign_restores_exits),
	CASE(order_against_coalesced_zones),
	CASE(assign_deassign_while_running))

// SPDX-License-Identifier: GPL-2.0
/*
 * Guest memory follows the VMM's mappings (MMU notifiers): when the process unmaps, replaces or
 * drops a page behind a live memory slot, the guest sees the new page from its next access,
 * and what it writes then is what the process reads.
 *
 * A 64-bit guest (guests/mmu_notifier.S) reads and writes 32-bit values at guest-physical
 * addresses on the test's command (each step a port exit), or keeps incrementing one value.
 * Slot 1 (DATA_GPA) is backed by memory each case maps and changes: MADV_DONTNEED, munmap and
 * mmap(MAP_FIXED), mmap(MAP_FIXED) over a live mapping, mremap onto it, a hole punched in the
 * memfd behind a read-only slot, fork and copy-on-write, and a vCPU thread that keeps writing
 * while the page is dropped again and again, then unmapped (KVM_RUN: EFAULT).
 *
 * Every case must pass against the kernel's KVM too (RKVM_DEV=/dev/kvm RKVM_UPSTREAM=1).
 * Upstream references: kvm_mmu_notifier_invalidate_range_start/_end, kvm_mmu_notifier_release
 * (virt/kvm/kvm_main.c); kvm_faultin_pfn, is_page_fault_stale, kvm_handle_error_pfn
 * (arch/x86/kvm/mmu/mmu.c).
 */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include "rkvm_util.h"

#define MEM_SIZE	0x10000
#define GUEST_BIN	"guest-mmu_notifier.bin"
#define DATA_SLOT	1
#define DATA_GPA	0x100000ull
#define PAGE		4096ul

#define PORT_CMD	0x90
#define PORT_ADDR	0x91
#define PORT_VALUE	0x92
#define PORT_DATA	0x93
#define PORT_TICK	0x94

/* Program numbers: the table at the start of guests/mmu_notifier.S. */
enum program { P_COMMANDS, P_INCREMENT };

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

/*
 * A 64-bit vCPU: 64 KiB of RAM at 0 holding the guest binary, page tables at 0x8000 mapping
 * the first GiB with 2 MiB pages, entered at program `prog` with RBX = `rbx`.
 */
static int gvm_create(struct gvm *v, enum program prog, __u64 rbx)
{
	struct kvm_userspace_memory_region r = { .slot = 0, .memory_size = MEM_SIZE };
	struct kvm_segment cs = { .selector = 8, .type = 11, .present = 1, .s = 1, .l = 1, .g = 1,
				  .limit = 0xffffffff };
	struct kvm_segment ds = { .selector = 16, .type = 3, .present = 1, .s = 1, .db = 1, .g = 1,
				  .limit = 0xffffffff };
	struct kvm_regs regs = { .rax = prog, .rbx = rbx, .rip = 0, .rsp = 0xf000, .rflags = 2 };
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
	if (ioctl(v->vcpu, KVM_SET_SREGS, &s) || ioctl(v->vcpu, KVM_SET_REGS, &regs))
		return -1;
	return 0;
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

static int set_data_slot(struct gvm *v, void *hva, size_t pages, __u32 flags)
{
	struct kvm_userspace_memory_region r = {
		.slot = DATA_SLOT, .flags = flags, .guest_phys_addr = DATA_GPA,
		.memory_size = pages * PAGE, .userspace_addr = (__u64)hva,
	};

	return ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &r);
}

/* Runs to the next exit, which must be port I/O on `port` in direction `dir`. */
static int run_to(struct gvm *v, __u16 port, __u8 dir)
{
	if (ioctl(v->vcpu, KVM_RUN, 0)) {
		printf("# KVM_RUN: %s\n", strerror(errno));
		return -1;
	}
	if (v->run->exit_reason != KVM_EXIT_IO || v->run->io.port != port ||
	    v->run->io.direction != dir) {
		printf("# exit %u (port %#x dir %u), wanted I/O on port %#x dir %u\n",
		       v->run->exit_reason, v->run->io.port, v->run->io.direction, port, dir);
		return -1;
	}
	return 0;
}

static __u32 *io_data(struct gvm *v)
{
	return (__u32 *)((char *)v->run + v->run->io.data_offset);
}

/* Program P_COMMANDS: enter it and stop at its first command read. */
static int commands_start(struct gvm *v)
{
	return run_to(v, PORT_CMD, KVM_EXIT_IO_IN);
}

/* The 32-bit value the guest reads at `gpa` (~0 and a failed case if it cannot). */
static __u32 guest_read(struct gvm *v, __u64 gpa)
{
	__u32 val;

	*io_data(v) = 1;
	if (run_to(v, PORT_ADDR, KVM_EXIT_IO_IN))
		goto fail;
	*io_data(v) = gpa;
	if (run_to(v, PORT_VALUE, KVM_EXIT_IO_OUT))
		goto fail;
	val = *io_data(v);
	if (run_to(v, PORT_CMD, KVM_EXIT_IO_IN))
		goto fail;
	return val;
fail:
	ktap_failed_case = 1;
	return ~0u;
}

static void guest_write(struct gvm *v, __u64 gpa, __u32 val)
{
	*io_data(v) = 2;
	if (run_to(v, PORT_ADDR, KVM_EXIT_IO_IN))
		goto fail;
	*io_data(v) = gpa;
	if (run_to(v, PORT_DATA, KVM_EXIT_IO_IN))
		goto fail;
	*io_data(v) = val;
	if (run_to(v, PORT_CMD, KVM_EXIT_IO_IN))
		goto fail;
	return;
fail:
	ktap_failed_case = 1;
}

static void *map_anon(void *at, size_t len, int flags)
{
	return mmap(at, len, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS | (at ? MAP_FIXED : 0),
		    -1, 0);
}

/* A memfd of `pages` pages, page i holding `first + i` at offset 0. */
static int memfd_with(size_t pages, __u32 first)
{
	int fd = syscall(SYS_memfd_create, "mmu_notifier", 0);

	if (fd < 0 || ftruncate(fd, pages * PAGE))
		return -1;
	for (size_t i = 0; i < pages; i++) {
		__u32 v = first + i;

		if (pwrite(fd, &v, sizeof(v), i * PAGE) != sizeof(v))
			return -1;
	}
	return fd;
}

/*
 * MADV_DONTNEED on private anonymous memory: the process's page is gone, the next read finds
 * a zero page. The guest must read 0 too, and what it writes then is what the process reads
 * (and the other way round); the neighbouring page is untouched.
 */
TEST(dontneed_drops_the_guest_page)
{
	struct gvm v;
	__u32 *mem;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(gvm_create(&v, P_COMMANDS, 0) == 0);
	mem = map_anon(NULL, 2 * PAGE, MAP_PRIVATE);
	CHECK(mem != MAP_FAILED);
	mem[0] = 0x11111111;
	mem[PAGE / 4] = 0x22222222;
	CHECK(set_data_slot(&v, mem, 2, 0) == 0);
	CHECK(commands_start(&v) == 0);
	CHECK(guest_read(&v, DATA_GPA) == 0x11111111);
	CHECK(guest_read(&v, DATA_GPA + PAGE) == 0x22222222);
	CHECK(madvise(mem, PAGE, MADV_DONTNEED) == 0);
	CHECK(guest_read(&v, DATA_GPA) == 0);
	CHECK(guest_read(&v, DATA_GPA + PAGE) == 0x22222222);
	guest_write(&v, DATA_GPA + 8, 0x33333333);
	CHECK(mem[2] == 0x33333333);
	mem[3] = 0x44444444;
	CHECK(guest_read(&v, DATA_GPA + 12) == 0x44444444);
	/* Dropped again after the guest wrote it: its write is gone too. */
	CHECK(madvise(mem, 2 * PAGE, MADV_DONTNEED) == 0);
	CHECK(guest_read(&v, DATA_GPA + 8) == 0);
	CHECK(guest_read(&v, DATA_GPA + PAGE) == 0);
	gvm_free(&v);
	munmap(mem, 2 * PAGE);
}

/*
 * munmap and a new mmap(MAP_FIXED) at the same address under the live slot, then
 * mmap(MAP_FIXED) of a memfd straight over the live mapping: the guest reads the new pages.
 */
TEST(mmap_fixed_replaces_the_guest_page)
{
	struct gvm v;
	__u32 *mem, *again, *file;
	int fd = memfd_with(2, 0xf00d0000);

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(fd >= 0);
	CHECK(gvm_create(&v, P_COMMANDS, 0) == 0);
	mem = map_anon(NULL, 2 * PAGE, MAP_SHARED);
	CHECK(mem != MAP_FAILED);
	mem[0] = 0xaaaa0000;
	mem[PAGE / 4] = 0xaaaa0001;
	CHECK(set_data_slot(&v, mem, 2, 0) == 0);
	CHECK(commands_start(&v) == 0);
	CHECK(guest_read(&v, DATA_GPA) == 0xaaaa0000);
	CHECK(guest_read(&v, DATA_GPA + PAGE) == 0xaaaa0001);

	CHECK(munmap(mem, PAGE) == 0);
	again = map_anon(mem, PAGE, MAP_SHARED);
	CHECK(again == mem);
	again[0] = 0xbbbb0000;
	CHECK(guest_read(&v, DATA_GPA) == 0xbbbb0000);
	CHECK(guest_read(&v, DATA_GPA + PAGE) == 0xaaaa0001);

	file = mmap(mem, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
	CHECK(file == (void *)mem);
	CHECK(guest_read(&v, DATA_GPA) == 0xf00d0000);
	CHECK(guest_read(&v, DATA_GPA + PAGE) == 0xf00d0001);
	/* The guest now writes the file. */
	guest_write(&v, DATA_GPA + PAGE + 4, 0xcafe);
	{
		__u32 got = 0;

		CHECK(pread(fd, &got, sizeof(got), PAGE + 4) == sizeof(got));
		CHECK(got == 0xcafe);
	}
	gvm_free(&v);
	munmap(mem, 2 * PAGE);
	close(fd);
}

/* mremap of another mapping onto the slot's page (MREMAP_FIXED) replaces it for the guest. */
TEST(mremap_onto_slot_memory)
{
	struct gvm v;
	__u32 *mem, *other, *moved;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(gvm_create(&v, P_COMMANDS, 0) == 0);
	mem = map_anon(NULL, 2 * PAGE, MAP_PRIVATE);
	other = map_anon(NULL, PAGE, MAP_PRIVATE);
	CHECK(mem != MAP_FAILED && other != MAP_FAILED);
	mem[0] = 0x12340000;
	mem[PAGE / 4] = 0x12340001;
	other[0] = 0x56780000;
	CHECK(set_data_slot(&v, mem, 2, 0) == 0);
	CHECK(commands_start(&v) == 0);
	CHECK(guest_read(&v, DATA_GPA + PAGE) == 0x12340001);
	moved = mremap(other, PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, (char *)mem + PAGE);
	CHECK(moved == (void *)((char *)mem + PAGE));
	CHECK(guest_read(&v, DATA_GPA + PAGE) == 0x56780000);
	CHECK(guest_read(&v, DATA_GPA) == 0x12340000);
	guest_write(&v, DATA_GPA + PAGE, 0x9abc0000);
	CHECK(mem[PAGE / 4] == 0x9abc0000);
	gvm_free(&v);
	munmap(mem, 2 * PAGE);
}

/*
 * A read-only slot over a memfd mapped MAP_PRIVATE, PROT_READ (the guest reads the page cache):
 * a hole punched in the file drops the page, and the guest then reads the hole (zeroes), then
 * what is written to the file.
 */
TEST(readonly_slot_follows_the_file)
{
	struct gvm v;
	__u32 *mem;
	__u32 val = 0x77770000;
	int fd = memfd_with(2, 0x66660000);

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(fd >= 0);
	CHECK(gvm_create(&v, P_COMMANDS, 0) == 0);
	mem = mmap(NULL, 2 * PAGE, PROT_READ, MAP_PRIVATE, fd, 0);
	CHECK(mem != MAP_FAILED);
	CHECK(set_data_slot(&v, mem, 2, KVM_MEM_READONLY) == 0);
	CHECK(commands_start(&v) == 0);
	CHECK(guest_read(&v, DATA_GPA) == 0x66660000);
	CHECK(guest_read(&v, DATA_GPA + PAGE) == 0x66660001);
	CHECK(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, PAGE) == 0);
	CHECK(guest_read(&v, DATA_GPA) == 0);
	CHECK(pwrite(fd, &val, sizeof(val), 0) == sizeof(val));
	CHECK(guest_read(&v, DATA_GPA) == 0x77770000);
	CHECK(guest_read(&v, DATA_GPA + PAGE) == 0x66660001);
	gvm_free(&v);
	munmap(mem, 2 * PAGE);
	close(fd);
}

/*
 * fork() shares the slot's private page copy-on-write: the parent's next write copies it, and
 * the guest follows the parent's copy both ways; the child keeps the value from before.
 */
TEST(fork_copy_on_write)
{
	struct gvm v;
	__u32 *mem;
	int to_child[2], from_child[2];
	__u32 seen = 0;
	pid_t pid;
	char go = 'g';

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(pipe(to_child) == 0 && pipe(from_child) == 0);
	CHECK(gvm_create(&v, P_COMMANDS, 0) == 0);
	mem = map_anon(NULL, PAGE, MAP_PRIVATE);
	CHECK(mem != MAP_FAILED);
	mem[0] = 0x11110000;
	CHECK(set_data_slot(&v, mem, 1, 0) == 0);
	CHECK(commands_start(&v) == 0);
	CHECK(guest_read(&v, DATA_GPA) == 0x11110000);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		/* The child reports its copy once the parent and the guest have written theirs. */
		if (read(to_child[0], &go, 1) != 1)
			_exit(1);
		_exit(write(from_child[1], &mem[0], sizeof(mem[0])) == sizeof(mem[0]) ? 0 : 1);
	}
	CHECK(pid > 0);
	mem[0] = 0x22220000;			/* copy-on-write in the parent */
	CHECK(guest_read(&v, DATA_GPA) == 0x22220000);
	guest_write(&v, DATA_GPA + 4, 0x33330000);
	CHECK(mem[1] == 0x33330000);
	if (pid > 0) {
		int status = 0;

		CHECK(write(to_child[1], &go, 1) == 1);
		CHECK(read(from_child[0], &seen, sizeof(seen)) == sizeof(seen));
		CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
		CHECK(seen == 0x11110000);
	}
	gvm_free(&v);
	munmap(mem, PAGE);
	for (int i = 0; i < 2; i++) {
		close(to_child[i]);
		close(from_child[i]);
	}
}

/* A vCPU thread running P_INCREMENT on the first data page until told to stop or KVM_RUN fails. */
struct spinner {
	struct gvm *v;
	volatile int stop;
	volatile long ticks;
	int err;		/* errno of a failed KVM_RUN, 0 if none */
	int bad_exit;		/* an exit other than the tick */
};

static void *spin_vcpu(void *arg)
{
	struct spinner *s = arg;

	while (!s->stop) {
		if (ioctl(s->v->vcpu, KVM_RUN, 0)) {
			s->err = errno;
			break;
		}
		if (s->v->run->exit_reason != KVM_EXIT_IO || s->v->run->io.port != PORT_TICK) {
			s->bad_exit = 1;
			break;
		}
		s->ticks++;
	}
	return NULL;
}

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* Waits (yielding) until `cond` holds or `secs` pass; returns whether it held. */
#define WAIT_FOR(cond, secs) ({							\
	double _end = now() + (secs);						\
	int _ok;								\
	while (!(_ok = (cond)) && now() < _end)					\
		sched_yield();							\
	_ok;									\
})

/*
 * While a vCPU thread keeps incrementing a value in the slot, the process drops the page again
 * and again (MADV_DONTNEED): each time the value starts over from 0 and the process sees the
 * guest's increments resume in its new page.
 */
TEST(dontneed_while_the_guest_writes)
{
	struct spinner s = { 0 };
	struct gvm v;
	volatile __u32 *mem;
	pthread_t t;
	int rounds = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(gvm_create(&v, P_INCREMENT, DATA_GPA) == 0);
	mem = map_anon(NULL, PAGE, MAP_PRIVATE);
	CHECK(mem != MAP_FAILED);
	mem[0] = 1;
	CHECK(set_data_slot(&v, (void *)mem, 1, 0) == 0);
	s.v = &v;
	CHECK(pthread_create(&t, NULL, spin_vcpu, &s) == 0);
	CHECK(WAIT_FOR(mem[0] > 1000 || s.err || s.bad_exit, 30));
	for (; rounds < 20 && !s.err && !s.bad_exit; rounds++) {
		long ticks = s.ticks;

		CHECK(madvise((void *)mem, PAGE, MADV_DONTNEED) == 0);
		/* Increments since the drop land in the process's new page. */
		if (!WAIT_FOR(s.ticks > ticks + 2 && mem[0] >= 64, 30)) {
			printf("# round %d: the process's page stays at %u (%ld ticks)\n", rounds,
			       mem[0], s.ticks);
			ktap_failed_case = 1;
			break;
		}
	}
	s.stop = 1;
	pthread_join(t, NULL);
	printf("# %d drops, %ld ticks, last value %u\n", rounds, s.ticks, mem[0]);
	CHECK(s.err == 0 && s.bad_exit == 0);
	gvm_free(&v);
	munmap((void *)mem, PAGE);
}

/*
 * The slot's memory is unmapped while the vCPU thread keeps writing it: the guest's next access
 * finds nothing to map and KVM_RUN fails with EFAULT and exit reason KVM_EXIT_UNKNOWN (upstream
 * kvm_handle_error_pfn, vcpu_run). The VM is then torn down with the slot still pointing at
 * nothing.
 */
TEST(unmapped_while_the_guest_writes)
{
	struct spinner s = { 0 };
	struct gvm v;
	volatile __u32 *mem;
	pthread_t t;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(gvm_create(&v, P_INCREMENT, DATA_GPA) == 0);
	mem = map_anon(NULL, 4 * PAGE, MAP_SHARED);
	CHECK(mem != MAP_FAILED);
	CHECK(set_data_slot(&v, (void *)mem, 4, 0) == 0);
	s.v = &v;
	CHECK(pthread_create(&t, NULL, spin_vcpu, &s) == 0);
	CHECK(WAIT_FOR(mem[0] > 1000 || s.err || s.bad_exit, 30));
	CHECK(munmap((void *)mem, 4 * PAGE) == 0);
	CHECK(WAIT_FOR(s.err || s.bad_exit, 30));
	s.stop = 1;
	pthread_join(t, NULL);
	printf("# KVM_RUN after %ld ticks: %s, exit reason %u\n", s.ticks, strerror(s.err),
	       v.run->exit_reason);
	CHECK(s.err == EFAULT);
	CHECK(v.run->exit_reason == KVM_EXIT_UNKNOWN);
	CHECK(s.bad_exit == 0);
	gvm_free(&v);
}

KTAP_MAIN("rkvm mmu_notifier",
	CASE(dontneed_drops_the_guest_page),
	CASE(mmap_fixed_replaces_the_guest_page),
	CASE(mremap_onto_slot_memory),
	CASE(readonly_slot_follows_the_file),
	CASE(fork_copy_on_write),
	CASE(dontneed_while_the_guest_writes),
	CASE(unmapped_while_the_guest_writes))

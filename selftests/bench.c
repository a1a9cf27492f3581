// SPDX-License-Identifier: GPL-2.0
/*
 * rkvm's benchmark (not a pass/fail test): the same four figures against the device in $RKVM_DEV
 * (default /dev/rkvm), so that `make bench` can run it against rkvm and then against the kernel's
 * kvm_intel in one Bochs boot and compare them. Each figure is one `BENCH <key> <integer>` line;
 * lines starting with '#' are comments. Exits nonzero on any unexpected ioctl result or exit.
 *
 *   pio_exit_tsc      L1 TSC per userspace PIO round trip: a real-mode guest does OUT to 0x3f8
 *                     PIO_N times then HLT; rdtsc around the whole KVM_RUN loop (every OUT a
 *                     KVM_EXIT_IO to this program), divided by PIO_N. Median of REPS runs.
 *   kernel_exit_tsc   L1 TSC per exit handled in the kernel: the guest does CPUID CPUID_N times
 *                     then HLT, one KVM_RUN ending at KVM_EXIT_HLT; minus the same run with 0
 *                     iterations, divided by CPUID_N. Median of REPS runs of each.
 *   vm_lifecycle_tsc  L1 TSC per VM life: KVM_CREATE_VM, 64 KiB slot, KVM_CREATE_VCPU, mmap of
 *                     kvm_run, sregs and regs, KVM_RUN of a `hlt` guest to KVM_EXIT_HLT, munmap,
 *                     close vCPU and VM. Mean of LIFE_N after LIFE_WARM warm-up lives.
 *   vm_mem_bytes      kernel memory per VM (no memslot, no vCPU) and per vCPU (kvm_run mmapped,
 *   vcpu_mem_bytes    not touched): free memory before and after creating MEM_N of them, divided
 *                     by MEM_N; median of 3. Free memory = MemFree (/proc/meminfo) plus the pages
 *                     on the per-CPU free lists (/proc/zoneinfo "count:"; MemFree leaves them
 *                     out, so an allocation served from them would not show), read after
 *                     /proc/sys/vm/stat_refresh folds the per-CPU counters.
 *
 * Under Bochs the TSC advances by one per emulated instruction (L1 and L2 alike; VM entries and
 * exits get no extra latency), so the TSC figures are close to the instruction counts of the
 * software paths and repeat from boot to boot.
 */
#include "rkvm_util.h"

#define PIO_N 2000
#define CPUID_N 2000
#define REPS 3
#define LIFE_WARM 2
#define LIFE_N 20
#define MEM_N 32
#define MEM_REPS 3

static int kvm;
static long run_size;

static unsigned long long rdtsc(void)
{
	return __builtin_ia32_rdtsc();
}

static void fail(const char *what)
{
	printf("# FAIL: %s (errno %d: %s)\n", what, errno, strerror(errno));
	fflush(stdout);
	exit(1);
}

static int cmp_ull(const void *a, const void *b)
{
	unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;

	return x < y ? -1 : x > y;
}

static unsigned long long median(unsigned long long *v, int n)
{
	qsort(v, n, sizeof(*v), cmp_ull);
	return v[n / 2];
}

static void set_regs(struct real_vm *v, unsigned long rsi)
{
	struct kvm_regs regs = { .rip = 0x1000, .rflags = 2, .rsi = rsi };

	if (ioctl(v->vcpu, KVM_SET_REGS, &regs))
		fail("KVM_SET_REGS");
}

static void make_vm(struct real_vm *v, const unsigned char *code, size_t len)
{
	if (real_vm_create(v, code, len))
		fail("creating a VM with a real-mode vCPU");
}

/*
 * 1. mov dx, 0x3f8; mov cx, PIO_N; 1: out dx, al; loop 1b; hlt.
 * Returns the TSC of one run of the whole KVM_RUN loop.
 */
static unsigned long long pio_run(struct real_vm *v)
{
	unsigned long long t0, t1;
	int exits = 0;

	set_regs(v, 0);
	t0 = rdtsc();
	for (;;) {
		if (ioctl(v->vcpu, KVM_RUN, 0))
			fail("KVM_RUN (PIO loop)");
		if (v->run->exit_reason == KVM_EXIT_HLT)
			break;
		if (v->run->exit_reason != KVM_EXIT_IO || v->run->io.port != 0x3f8 ||
		    v->run->io.direction != KVM_EXIT_IO_OUT || v->run->io.size != 1 ||
		    v->run->io.count != 1) {
			printf("# exit reason %u after %d OUTs\n", v->run->exit_reason, exits);
			fail("PIO loop: unexpected exit");
		}
		exits++;
	}
	t1 = rdtsc();
	if (exits != PIO_N) {
		printf("# %d OUT exits, wanted %d\n", exits, PIO_N);
		fail("PIO loop: wrong exit count");
	}
	return t1 - t0;
}

static void bench_pio(void)
{
	const unsigned char code[] = {
		0xba, 0xf8, 0x03,			/* mov dx, 0x3f8 */
		0xb9, PIO_N & 0xff, PIO_N >> 8,		/* mov cx, PIO_N */
		0xee,					/* 1: out dx, al */
		0xe2, 0xfd,				/* loop 1b */
		0xf4,					/* hlt */
	};
	unsigned long long t[REPS];
	struct real_vm v;

	make_vm(&v, code, sizeof(code));
	pio_run(&v);	/* warm-up */
	for (int i = 0; i < REPS; i++)
		t[i] = pio_run(&v);
	real_vm_free(&v);
	printf("# PIO loop: %d OUT exits to userspace, median of %d runs: %llu TSC\n", PIO_N, REPS,
	       median(t, REPS));
	printf("BENCH pio_exit_tsc %llu\n", median(t, REPS) / PIO_N);
}

/*
 * 2. test si, si; jz 2f; 1: xor eax, eax; cpuid; dec si; jnz 1b; 2: hlt (SI from KVM_SET_REGS).
 * Returns the TSC of the one KVM_RUN, which must end at the HLT.
 */
static unsigned long long cpuid_run(struct real_vm *v, int n)
{
	unsigned long long t0, t1;

	set_regs(v, n);
	t0 = rdtsc();
	if (ioctl(v->vcpu, KVM_RUN, 0))
		fail("KVM_RUN (CPUID loop)");
	t1 = rdtsc();
	if (v->run->exit_reason != KVM_EXIT_HLT) {
		printf("# exit reason %u, wanted KVM_EXIT_HLT (%u)\n", v->run->exit_reason,
		       KVM_EXIT_HLT);
		fail("CPUID loop: unexpected exit");
	}
	return t1 - t0;
}

static void bench_cpuid(void)
{
	const unsigned char code[] = {
		0x85, 0xf6,				/* test si, si */
		0x74, 0x08,				/* jz 2f */
		0x66, 0x31, 0xc0,			/* 1: xor eax, eax */
		0x0f, 0xa2,				/* cpuid */
		0x4e,					/* dec si */
		0x75, 0xf8,				/* jnz 1b */
		0xf4,					/* 2: hlt */
	};
	unsigned long long base[REPS], loop[REPS], b, l;
	struct real_vm v;

	make_vm(&v, code, sizeof(code));
	cpuid_run(&v, 0);	/* warm-up */
	cpuid_run(&v, CPUID_N);
	for (int i = 0; i < REPS; i++) {
		base[i] = cpuid_run(&v, 0);
		loop[i] = cpuid_run(&v, CPUID_N);
	}
	real_vm_free(&v);
	b = median(base, REPS);
	l = median(loop, REPS);
	if (l <= b)
		fail("CPUID loop no slower than its baseline");
	printf("# CPUID loop: %d in-kernel exits %llu TSC, baseline (0 iterations, just HLT) %llu TSC\n",
	       CPUID_N, l, b);
	printf("BENCH kernel_exit_tsc %llu\n", (l - b) / CPUID_N);
}

/* 3. One VM life, from KVM_CREATE_VM to the close of the VM fd. */
static void one_life(unsigned char *mem)
{
	struct kvm_userspace_memory_region r = {
		.slot = 0, .memory_size = 0x10000, .userspace_addr = (__u64)mem,
	};
	struct kvm_regs regs = { .rip = 0x1000, .rflags = 2 };
	struct kvm_run *run;
	struct kvm_sregs s;
	int vm, vcpu;

	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		fail("KVM_CREATE_VM");
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r))
		fail("KVM_SET_USER_MEMORY_REGION");
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		fail("KVM_CREATE_VCPU");
	run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		fail("mmap of kvm_run");
	if (ioctl(vcpu, KVM_GET_SREGS, &s))
		fail("KVM_GET_SREGS");
	s.cs.base = 0;
	s.cs.selector = 0;
	if (ioctl(vcpu, KVM_SET_SREGS, &s) || ioctl(vcpu, KVM_SET_REGS, &regs))
		fail("KVM_SET_SREGS/KVM_SET_REGS");
	if (ioctl(vcpu, KVM_RUN, 0))
		fail("KVM_RUN (VM life)");
	if (run->exit_reason != KVM_EXIT_HLT) {
		printf("# exit reason %u, wanted KVM_EXIT_HLT\n", run->exit_reason);
		fail("VM life: unexpected exit");
	}
	munmap(run, run_size);
	close(vcpu);
	close(vm);
}

static void bench_lifecycle(void)
{
	unsigned char *mem = mmap(NULL, 0x10000, PROT_READ | PROT_WRITE,
				  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	unsigned long long t0, t1;

	if (mem == MAP_FAILED)
		fail("mmap of guest memory");
	memset(mem, 0xf4, 0x10000);	/* hlt everywhere; every page touched */
	for (int i = 0; i < LIFE_WARM; i++)
		one_life(mem);
	t0 = rdtsc();
	for (int i = 0; i < LIFE_N; i++)
		one_life(mem);
	t1 = rdtsc();
	munmap(mem, 0x10000);
	printf("# VM life: %d lives (after %d warm-up) in %llu TSC\n", LIFE_N, LIFE_WARM, t1 - t0);
	printf("BENCH vm_lifecycle_tsc %llu\n", (t1 - t0) / LIFE_N);
}

/* The number after `key` in a /proc file, summed over every line that starts with it. */
static long long proc_sum(const char *path, const char *key)
{
	static char buf[1 << 16];
	long long sum = 0;
	size_t klen = strlen(key);
	ssize_t n, len = 0;
	int fd = open(path, O_RDONLY);

	if (fd < 0)
		fail(path);
	while ((n = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0)
		len += n;
	close(fd);
	buf[len] = 0;
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		line += strspn(line, " \t");
		if (!strncmp(line, key, klen))
			sum += strtoll(line + klen, NULL, 10);
	}
	return sum;
}

/* Free memory in bytes: MemFree plus the per-CPU free lists, counters folded first. */
static long long free_bytes(void)
{
	int fd = open("/proc/sys/vm/stat_refresh", O_WRONLY);

	if (fd >= 0) {
		/* Best effort: without it the counters still fold within a second. */
		ssize_t n __attribute__((unused)) = write(fd, "1", 1);

		close(fd);
	}
	return proc_sum("/proc/meminfo", "MemFree:") * 1024 +
	       proc_sum("/proc/zoneinfo", "count:") * page_size();
}

/* Lets deferred frees (RCU callbacks, workqueues) of the previous round finish. */
static void settle(void)
{
	usleep(200000);
}

static void bench_memory(void)
{
	unsigned long long per_vm[MEM_REPS], per_vcpu[MEM_REPS];
	struct kvm_run *runs[MEM_N];
	int fds[MEM_N], vm, vcpu;
	long long before, after;

	/* Warm-up: one VM with one vCPU. */
	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	vcpu = vm < 0 ? -1 : ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		fail("warm-up VM");
	close(vcpu);
	close(vm);
	for (int r = 0; r < MEM_REPS; r++) {
		settle();
		before = free_bytes();
		for (int i = 0; i < MEM_N; i++) {
			fds[i] = ioctl(kvm, KVM_CREATE_VM, 0);
			if (fds[i] < 0)
				fail("KVM_CREATE_VM (memory)");
		}
		after = free_bytes();
		for (int i = 0; i < MEM_N; i++)
			close(fds[i]);
		per_vm[r] = before > after ? (before - after) / MEM_N : 0;
		printf("# %d VMs: free memory %lld -> %lld bytes\n", MEM_N, before, after);
	}
	for (int r = 0; r < MEM_REPS; r++) {
		settle();
		vm = ioctl(kvm, KVM_CREATE_VM, 0);
		if (vm < 0)
			fail("KVM_CREATE_VM (vCPU memory)");
		settle();
		before = free_bytes();
		for (int i = 0; i < MEM_N; i++) {
			fds[i] = ioctl(vm, KVM_CREATE_VCPU, i);
			if (fds[i] < 0)
				fail("KVM_CREATE_VCPU (memory)");
			runs[i] = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i], 0);
			if (runs[i] == MAP_FAILED)
				fail("mmap of kvm_run (memory)");
		}
		after = free_bytes();
		for (int i = 0; i < MEM_N; i++) {
			munmap(runs[i], run_size);
			close(fds[i]);
		}
		close(vm);
		per_vcpu[r] = before > after ? (before - after) / MEM_N : 0;
		printf("# %d vCPUs: free memory %lld -> %lld bytes\n", MEM_N, before, after);
	}
	printf("BENCH vm_mem_bytes %llu\n", median(per_vm, MEM_REPS));
	printf("BENCH vcpu_mem_bytes %llu\n", median(per_vcpu, MEM_REPS));
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	kvm = open_dev();
	if (kvm < 0)
		return 1;
	run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size <= 0)
		fail("KVM_GET_VCPU_MMAP_SIZE");
	printf("# bench on %s: L1 TSC counts (Bochs: one tick per emulated instruction) and kernel\n"
	       "# memory from free memory (MemFree + per-CPU free lists) before and after creating\n"
	       "# %d VMs / %d vCPUs, median of %d\n", dev_path(), MEM_N, MEM_N, MEM_REPS);
	bench_pio();
	bench_cpuid();
	bench_lifecycle();
	bench_memory();
	close(kvm);
	return 0;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * Races between threads of one process on one VM; meant for the debug kernel (KASAN, lockdep,
 * atomic-sleep checks), where the VM runner fails the run on any kernel report.
 *
 * - Eight threads share a VM for a fixed time (two rounds of 1 s each, or $RKVM_RACE_SECONDS),
 *   each doing at random: create a vCPU, close one, run one (on a dup of its fd, so another
 *   thread may close the original meanwhile), get/set its registers, create/move/delete memory
 *   slots (with and without dirty logging), read the dirty log, open and read a stats fd. Every call must succeed or fail with one of the errnos
 *   upstream gives in that situation; afterwards a new VM runs a guest and every module
 *   reference is back.
 * - A vCPU fd closed (and the VM fd) while another thread is inside KVM_RUN on it: KVM_RUN goes
 *   on, a signal ends it (EINTR), the next call is EBADF, and then everything is released.
 * - A slot deleted while a vCPU on another CPU keeps writing into it: once the ioctl returns,
 *   the slot's memory never changes again (the writes are MMIO exits), and re-adding it makes
 *   them land again; ten times.
 * - The memory behind a slot munmapped while the guest writes into it: KVM_RUN goes on or fails
 *   with EFAULT, and the guest's writes never reach memory the process maps afterwards.
 *
 * Guest: guests/iso32.S. Upstream references: kvm_vcpu_ioctl (vcpu->mutex), kvm_vcpu_release,
 * kvm_set_memslot and kvm_invalidate_memslot (the old slot is made invalid and zapped before
 * the ioctl returns), kvm_mmu_notifier_invalidate_range_start (munmap).
 */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <time.h>
#include "guest32.h"

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/*
 * The module whose reference count the fds hold: rkvm, or upstream's vendor module (kvm_init
 * makes it the owner of the device, VM and vCPU fops).
 */
static long module_refcnt(void)
{
	char path[64], buf[32] = "";
	FILE *f;

	snprintf(path, sizeof(path), "/sys/module/%s/refcnt", upstream() ? "kvm_intel" : "rkvm");
	if (upstream() && access(path, F_OK))
		snprintf(path, sizeof(path), "/sys/module/kvm_amd/refcnt");
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = 0;
	fclose(f);
	return buf[0] ? atol(buf) : -1;
}

static void on_sigusr1(int sig)
{
	(void)sig;
}

static void catch_sigusr1(void)
{
	struct sigaction sa = { .sa_handler = on_sigusr1 };	/* no SA_RESTART: EINTR */

	sigaction(SIGUSR1, &sa, NULL);
}

static int pin_to(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set);
}

/* ---- eight threads, one VM ------------------------------------------------------------------ */

#define NTHREADS 8
#define RACE_VCPUS 64
#define RACE_SLOTS 4
#define RACE_SLOT_SIZE 0x10000
#define ROUNDS 2
/* Each round's length: 1 s, or $RKVM_RACE_SECONDS (for a longer soak). */
static double round_seconds(void)
{
	const char *e = getenv("RKVM_RACE_SECONDS");

	return e && atof(e) > 0 ? atof(e) : 1.0;
}

enum { OP_CREATE, OP_CLOSE, OP_RUN, OP_REGS, OP_SLOT_SET, OP_SLOT_DELETE, OP_DIRTY_LOG, OP_STATS, NOPS };
static const char *const op_names[NOPS] = {
	"create vCPU", "close vCPU", "KVM_RUN", "regs", "set slot", "delete slot", "dirty log", "stats fd",
};

struct shared {
	int kvm, vm;
	long run_size;
	pthread_mutex_t lock;
	int vcpu_fd[RACE_VCPUS];
	struct kvm_run *run[RACE_VCPUS];	/* mappings live until the round ends */
	unsigned char *code;			/* slot 0, for good */
	unsigned char *slot_mem[RACE_SLOTS];	/* slots 1..RACE_SLOTS */
	int stop, guests;
	long ops[NOPS], errs[NOPS], unexpected;
};

struct racer {
	pthread_t thread;
	struct shared *sh;
	unsigned int seed;
};

/* Records a result: ret >= 0, or errno among the allowed ones (0-terminated). */
static void result(struct shared *sh, int op, long ret, int err, const int *allowed)
{
	if (ret < 0) {
		for (; *allowed; allowed++)
			if (*allowed == err)
				break;
		if (!*allowed) {
			if (__atomic_fetch_add(&sh->unexpected, 1, __ATOMIC_RELAXED) < 5)
				printf("# %s: unexpected errno %d (%s)\n", op_names[op], err, strerror(err));
			return;
		}
		__atomic_fetch_add(&sh->errs[op], 1, __ATOMIC_RELAXED);
		return;
	}
	__atomic_fetch_add(&sh->ops[op], 1, __ATOMIC_RELAXED);
}

/* How often each operation is picked (of 16). */
static const int op_weight[NOPS] = { 1, 1, 5, 2, 3, 2, 1, 1 };

static int pick_op(unsigned int *seed)
{
	int x = rand_r(seed) % 16, op = 0;

	while (x >= op_weight[op])
		x -= op_weight[op++];
	return op;
}

/* A dup of a random live vCPU fd (its id in *id), or -1. */
static int borrow_vcpu(struct shared *sh, unsigned int *seed, int *id)
{
	int fd = -1, start = rand_r(seed) % RACE_VCPUS;

	pthread_mutex_lock(&sh->lock);
	for (int i = 0; i < RACE_VCPUS && fd < 0; i++) {
		*id = (start + i) % RACE_VCPUS;
		if (sh->vcpu_fd[*id] >= 0)
			fd = dup(sh->vcpu_fd[*id]);
	}
	pthread_mutex_unlock(&sh->lock);
	return fd;
}

static void *racer(void *arg)
{
	static const int none[] = { 0 };
	static const int create_errs[] = { EEXIST, 0 };
	static const int run_errs[] = { ENOEXEC, EINTR, EFAULT, 0 };
	static const int set_errs[] = { EEXIST, 0 };
	static const int delete_errs[] = { EINVAL, 0 };
	static const int log_errs[] = { ENOENT, 0 };
	struct racer *r = arg;
	struct shared *sh = r->sh;
	unsigned long bitmap[RACE_SLOT_SIZE / 4096 / 64 + 1];

	while (!__atomic_load_n(&sh->stop, __ATOMIC_RELAXED)) {
		int op = pick_op(&r->seed), id, fd, slot = rand_r(&r->seed) % RACE_SLOTS;
		long ret;

		switch (op) {
		case OP_CREATE:
			id = rand_r(&r->seed) % RACE_VCPUS;
			fd = ioctl(sh->vm, KVM_CREATE_VCPU, id);
			result(sh, op, fd, errno, create_errs);
			if (fd < 0)
				break;
			/* The guest touches a slot that may come and go (MMIO exits meanwhile). */
			if (g32_flat_sregs(fd) ||
			    g32_start(fd, G32_TOUCH, 0x100000 * (1 + slot) + 64 * id, 0, 0, 0))
				result(sh, OP_REGS, -1, errno, none);
			pthread_mutex_lock(&sh->lock);
			sh->run[id] = mmap(NULL, sh->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
			sh->vcpu_fd[id] = fd;
			pthread_mutex_unlock(&sh->lock);
			break;
		case OP_CLOSE:
			pthread_mutex_lock(&sh->lock);
			id = rand_r(&r->seed) % RACE_VCPUS;
			fd = sh->vcpu_fd[id];
			sh->vcpu_fd[id] = -1;
			pthread_mutex_unlock(&sh->lock);
			if (fd >= 0)
				result(sh, op, close(fd), errno, none);
			break;
		case OP_RUN:
			fd = borrow_vcpu(sh, &r->seed, &id);
			if (fd < 0)
				break;
			if (sh->guests || rand_r(&r->seed) % 8 == 0) {
				ret = ioctl(fd, KVM_RUN, 0);
				result(sh, op, ret, errno, run_errs);
			}
			close(fd);
			break;
		case OP_REGS: {
			struct kvm_regs regs;
			struct kvm_sregs sregs;

			fd = borrow_vcpu(sh, &r->seed, &id);
			if (fd < 0)
				break;
			ret = ioctl(fd, KVM_GET_REGS, &regs);
			if (!ret)
				ret = ioctl(fd, KVM_GET_SREGS, &sregs);
			if (!ret)
				ret = g32_start(fd, G32_TOUCH, 0x100000 * (1 + slot) + 64 * id, 0, 0, regs.rcx);
			result(sh, op, ret, errno, none);
			close(fd);
			break;
		}
		case OP_SLOT_SET: {
			/* Created, moved (another GPA) or its logging toggled: same memory and size. */
			__u64 gpa = 0x100000 * (1 + rand_r(&r->seed) % 6);
			__u32 flags = rand_r(&r->seed) % 2 ? KVM_MEM_LOG_DIRTY_PAGES : 0;

			ret = set_slot(sh->vm, 1 + slot, flags, gpa, RACE_SLOT_SIZE, sh->slot_mem[slot]);
			result(sh, op, ret, errno, set_errs);
			break;
		}
		case OP_SLOT_DELETE:
			ret = set_slot(sh->vm, 1 + slot, 0, 0, 0, sh->slot_mem[slot]);
			result(sh, op, ret, errno, delete_errs);
			break;
		case OP_DIRTY_LOG: {
			struct kvm_dirty_log log = { .slot = 1 + slot, .dirty_bitmap = bitmap };

			ret = ioctl(sh->vm, KVM_GET_DIRTY_LOG, &log);
			result(sh, op, ret, errno, log_errs);
			break;
		}
		case OP_STATS: {
			struct kvm_stats_header h;

			fd = ioctl(sh->vm, KVM_GET_STATS_FD, 0);
			ret = fd < 0 ? fd : pread(fd, &h, sizeof(h), 0) == sizeof(h) ? 0 : -1;
			result(sh, op, ret, errno, none);
			if (fd >= 0)
				close(fd);
			break;
		}
		}
	}
	return NULL;
}

static void race_round(struct shared *sh, unsigned int seed)
{
	struct racer r[NTHREADS];
	double end;

	sh->kvm = open_dev();
	sh->vm = create_vm(sh->kvm);
	sh->run_size = ioctl(sh->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	CHECK(sh->vm >= 0 && sh->run_size > 0);
	for (int i = 0; i < RACE_VCPUS; i++) {
		sh->vcpu_fd[i] = -1;
		sh->run[i] = NULL;
	}
	sh->code = guarded_alloc(G32_SLOT0_SIZE, 0);
	CHECK(sh->code && g32_load_code(sh->code) == 0 &&
	      set_slot(sh->vm, 0, 0, 0, G32_SLOT0_SIZE, sh->code) == 0);
	for (int s = 0; s < RACE_SLOTS; s++)
		CHECK((sh->slot_mem[s] = guarded_alloc(RACE_SLOT_SIZE, 0)) != NULL);
	sh->stop = 0;
	for (int i = 0; i < NTHREADS; i++) {
		r[i].sh = sh;
		r[i].seed = seed + i;
		CHECK(pthread_create(&r[i].thread, NULL, racer, &r[i]) == 0);
	}
	end = now() + round_seconds();
	while (now() < end)
		usleep(50000);
	__atomic_store_n(&sh->stop, 1, __ATOMIC_RELAXED);
	/* A thread inside KVM_RUN of a guest spinning between exits is back at its next exit. */
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(r[i].thread, NULL);
	for (int i = 0; i < RACE_VCPUS; i++) {
		if (sh->vcpu_fd[i] >= 0)
			close(sh->vcpu_fd[i]);
		if (sh->run[i] && sh->run[i] != MAP_FAILED)
			munmap(sh->run[i], sh->run_size);
	}
	close(sh->vm);
	close(sh->kvm);
	for (int s = 0; s < RACE_SLOTS; s++) {
		CHECK(sh->slot_mem[s] && guards_intact(sh->slot_mem[s], RACE_SLOT_SIZE));
		if (sh->slot_mem[s])
			munmap(sh->slot_mem[s] - page_size(), RACE_SLOT_SIZE + 2 * page_size());
	}
	CHECK(sh->code && guards_intact(sh->code, G32_SLOT0_SIZE));
	if (sh->code)
		munmap(sh->code - page_size(), G32_SLOT0_SIZE + 2 * page_size());
}

TEST(eight_threads_share_one_vm)
{
	static struct shared sh = { .lock = PTHREAD_MUTEX_INITIALIZER };
	long base = module_refcnt();
	static const unsigned char hlt[] = { 0xf4 };
	struct real_vm v;

	sh.guests = !no_guests();
	for (int round = 0; round < ROUNDS; round++)
		race_round(&sh, 1000 * round + 1);
	for (int op = 0; op < NOPS; op++)
		ktap_diag("%s: %ld done, %ld refused as expected", op_names[op], sh.ops[op], sh.errs[op]);
	CHECK(sh.unexpected == 0);
	/* Every kind of call was made (the run was not starved or stuck). */
	for (int op = 0; op < NOPS; op++)
		CHECK(sh.ops[op] + sh.errs[op] > 0);
	/* Everything was released, and a new VM works. */
	CHECK(module_refcnt() == base);
	CHECK(real_vm_create(&v, hlt, sizeof(hlt)) == 0);
	if (sh.guests)
		CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_HLT);
	real_vm_free(&v);
}

/* ---- a vCPU fd closed under KVM_RUN --------------------------------------------------------- */

struct runner {
	pthread_t thread;
	struct g32 *g;
	int ret, err, ret2, err2, done;
	__u32 reason;
};

static void *run_twice(void *arg)
{
	struct runner *r = arg;

	r->ret = ioctl(r->g->vcpu, KVM_RUN, 0);
	r->err = errno;
	r->reason = r->g->run->exit_reason;
	__atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
	r->ret2 = ioctl(r->g->vcpu, KVM_RUN, 0);
	r->err2 = errno;
	return NULL;
}

TEST(vcpu_fd_closed_during_run)
{
	struct runner r = { 0 };
	struct g32 g;
	long base = module_refcnt();

	if (no_guests())
		SKIP("backend=none enters no guest");
	catch_sigusr1();
	CHECK(g32_create(&g) == 0);
	CHECK(g32_start(g.vcpu, G32_SPIN, 0, 0, 0, 0) == 0);
	r.g = &g;
	CHECK(pthread_create(&r.thread, NULL, run_twice, &r) == 0);
	usleep(300000);
	CHECK(!__atomic_load_n(&r.done, __ATOMIC_ACQUIRE));
	/* The fd goes while the other thread is inside KVM_RUN on it: that call goes on. */
	CHECK(close(g.vcpu) == 0);
	CHECK(close(g.vm) == 0);
	CHECK(close(g.kvm) == 0);
	usleep(200000);
	CHECK(!__atomic_load_n(&r.done, __ATOMIC_ACQUIRE));
	CHECK(module_refcnt() > base);
	pthread_kill(r.thread, SIGUSR1);
	pthread_join(r.thread, NULL);
	CHECK(r.ret == -1 && r.err == EINTR && r.reason == KVM_EXIT_INTR);
	CHECK(r.ret2 == -1 && r.err2 == EBADF);
	/* The kvm_run mapping is the last thing holding the vCPU (and so the VM). */
	CHECK(module_refcnt() > base);
	munmap(g.run, g.run_size);
	g.run = NULL;
	CHECK(module_refcnt() == base);
	g.vcpu = g.vm = g.kvm = -1;
	g32_free(&g);
}

/* ---- a slot deleted, or its memory unmapped, under a running guest -------------------------- */

#define TOUCH_GPA 0x100000
#define TOUCH_SIZE 0x10000

struct toucher {
	pthread_t thread;
	struct g32 *g;
	int cpu, stop, efault, bad;
	long io, mmio;
};

static void *touch_loop(void *arg)
{
	struct toucher *t = arg;

	if (t->cpu >= 0)
		pin_to(t->cpu);
	while (!__atomic_load_n(&t->stop, __ATOMIC_ACQUIRE)) {
		if (ioctl(t->g->vcpu, KVM_RUN, 0)) {
			if (errno == EFAULT) {
				__atomic_store_n(&t->efault, 1, __ATOMIC_RELEASE);
				break;
			}
			printf("# KVM_RUN: %s\n", strerror(errno));
			t->bad = 1;
			break;
		}
		if (t->g->run->exit_reason == KVM_EXIT_IO && t->g->run->io.port == G32_PORT_TOUCH) {
			__atomic_fetch_add(&t->io, 1, __ATOMIC_RELEASE);
		} else if (t->g->run->exit_reason == KVM_EXIT_MMIO && t->g->run->mmio.is_write &&
			   t->g->run->mmio.phys_addr == TOUCH_GPA && t->g->run->mmio.len == 4) {
			__atomic_fetch_add(&t->mmio, 1, __ATOMIC_RELEASE);
		} else {
			printf("# exit reason %u\n", t->g->run->exit_reason);
			t->bad = 1;
			break;
		}
	}
	return NULL;
}

/* Waits until *counter grew by n (or the toucher stopped); 0 if it did. */
static int wait_for(struct toucher *t, long *counter, long n)
{
	long want = __atomic_load_n(counter, __ATOMIC_ACQUIRE) + n;
	double end = now() + 20;

	while (__atomic_load_n(counter, __ATOMIC_ACQUIRE) < want) {
		if (t->bad || __atomic_load_n(&t->efault, __ATOMIC_ACQUIRE) || now() > end)
			return -1;
		usleep(1000);
	}
	return 0;
}

static int start_toucher(struct toucher *t, struct g32 *g, unsigned char *mem)
{
	int ncpus = sysconf(_SC_NPROCESSORS_ONLN);

	if (g32_create(g) || set_slot(g->vm, 1, 0, TOUCH_GPA, TOUCH_SIZE, mem) ||
	    g32_start(g->vcpu, G32_TOUCH, TOUCH_GPA, 0, 0, 0))
		return -1;
	/* The guest on CPU 1, this thread on CPU 0: the slot goes while the guest runs. */
	t->g = g;
	t->cpu = ncpus >= 2 ? 1 : -1;
	if (ncpus >= 2)
		pin_to(0);
	return pthread_create(&t->thread, NULL, touch_loop, t);
}

static void stop_toucher(struct toucher *t)
{
	__atomic_store_n(&t->stop, 1, __ATOMIC_RELEASE);
	pthread_join(t->thread, NULL);
	pin_to(0);
	{
		cpu_set_t all;

		CPU_ZERO(&all);
		for (int i = 0; i < CPU_SETSIZE; i++)
			CPU_SET(i, &all);
		sched_setaffinity(0, sizeof(all), &all);
	}
}

TEST(slot_deleted_while_guest_writes_it)
{
	unsigned char *mem = guarded_alloc(TOUCH_SIZE, 0);
	struct toucher t = { 0 };
	struct g32 g;
	long base = module_refcnt();

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(mem && start_toucher(&t, &g, mem) == 0);
	for (int i = 0; i < 10 && !ktap_failed_case; i++) {
		__u32 before;

		CHECK(wait_for(&t, &t.io, 2) == 0);
		CHECK(set_slot(g.vm, 1, 0, TOUCH_GPA, 0, mem) == 0);
		before = *(volatile __u32 *)mem;
		/* The guest's writes are now MMIO exits, and none reaches the old memory. */
		CHECK(wait_for(&t, &t.mmio, 3) == 0);
		CHECK(*(volatile __u32 *)mem == before);
		CHECK(set_slot(g.vm, 1, 0, TOUCH_GPA, TOUCH_SIZE, mem) == 0);
		CHECK(wait_for(&t, &t.io, 2) == 0);
		CHECK(*(volatile __u32 *)mem != before);
	}
	stop_toucher(&t);
	CHECK(!t.bad && !t.efault);
	CHECK(guards_intact(mem, TOUCH_SIZE));
	g32_free(&g);
	CHECK(module_refcnt() == base);
}

TEST(munmap_while_guest_writes)
{
	unsigned char *mem = guarded_alloc(TOUCH_SIZE, 0);
	const size_t later_size = 8 << 20;
	unsigned char *later;
	struct toucher t = { 0 };
	struct g32 g;
	long nonzero = 0, base = module_refcnt();

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(mem && start_toucher(&t, &g, mem) == 0);
	CHECK(wait_for(&t, &t.io, 2) == 0);
	CHECK(munmap(mem, TOUCH_SIZE) == 0);
	/* Freshly faulted memory, likely on the pages just freed if nothing held them. */
	later = mmap(NULL, later_size, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	CHECK(later != MAP_FAILED);
	/* The guest goes on writing (into pages rkvm holds) or KVM_RUN fails with EFAULT. */
	if (wait_for(&t, &t.io, 4))
		CHECK(__atomic_load_n(&t.efault, __ATOMIC_ACQUIRE) && !t.bad);
	for (size_t off = 0; later != MAP_FAILED && off < later_size; off += 4)
		nonzero += *(__u32 *)(later + off) != 0;
	CHECK(nonzero == 0);
	stop_toucher(&t);
	CHECK(!t.bad);
	/* Deleting the slot of unmapped memory, then everything. */
	CHECK(set_slot(g.vm, 1, 0, TOUCH_GPA, 0, mem) == 0);
	g32_free(&g);
	CHECK(module_refcnt() == base);
	munmap(later, later_size);
}

KTAP_MAIN("rkvm races",
	CASE(eight_threads_share_one_vm),
	CASE(vcpu_fd_closed_during_run),
	CASE(slot_deleted_while_guest_writes_it),
	CASE(munmap_while_guest_writes))

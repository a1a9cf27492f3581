// SPDX-License-Identifier: GPL-2.0
/*
 * Object lifetimes: every open device, VM, vCPU or stats fd (and vCPU mapping) pins the module,
 * so `rmmod rkvm` fails while any lives and succeeds once all are gone, whatever order they were
 * closed in; the module then loads again (100 times over, with a VM made, run and destroyed
 * after each load, and free memory back where it was). A process killed while its threads are
 * inside KVM_RUN (and one waits for a vCPU another thread runs) releases everything: the module
 * unloads right after. Also the drop-in mode (devname=kvm → /dev/kvm) and its refusal while the
 * kernel's own KVM holds /dev/kvm.
 *
 * The module is reloaded with the parameters it was loaded with, read from
 * /sys/module/rkvm/parameters, from /lib/modules/rkvm.ko. Needs root; skipped for upstream KVM.
 * Upstream reference: fops_get/try_module_get through file_operations.owner; misc_register's
 * minor check (KVM_MINOR 232).
 */
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include "guest32.h"

#define MODULE_FILE "/lib/modules/rkvm.ko"
static char params[128];

static void read_params(void)
{
	char buf[64];
	FILE *f;

	if (params[0])
		return;
	f = fopen("/sys/module/rkvm/parameters/backend", "r");
	snprintf(params, sizeof(params), "backend=%s", f && fgets(buf, sizeof(buf), f) ? strtok(buf, "\n") : "vmx");
	if (f)
		fclose(f);
}

static int unload(const char *name)
{
	return syscall(__NR_delete_module, name, O_NONBLOCK);
}

static int load(const char *file, const char *args)
{
	int fd = open(file, O_RDONLY | O_CLOEXEC), r;

	if (fd < 0)
		return -1;
	r = syscall(__NR_finit_module, fd, args, 0);
	close(fd);
	return r;
}

static int reload(void)
{
	return load(MODULE_FILE, params);
}

/* Opens dev, VM, vCPU and maps kvm_run, then closes in the order given (0 dev, 1 vm, 2 vcpu,
 * 3 munmap), checking after each step that rmmod is refused until the last. */
static void close_order(const int order[4])
{
	int fds[3];
	void *run;
	long sz;

	fds[0] = open_dev();
	fds[1] = create_vm(fds[0]);
	fds[2] = ioctl(fds[1], KVM_CREATE_VCPU, 0);
	sz = ioctl(fds[0], KVM_GET_VCPU_MMAP_SIZE, 0);
	run = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, fds[2], 0);
	CHECK(fds[0] >= 0 && fds[1] >= 0 && fds[2] >= 0 && run != MAP_FAILED);
	/* Touch the page so it is really mapped. */
	((volatile char *)run)[0];
	for (int i = 0; i < 4; i++) {
		errno = 0;
		CHECK(unload("rkvm") == -1 && (errno == EBUSY || errno == EWOULDBLOCK || errno == EAGAIN));
		if (order[i] == 3)
			CHECK(munmap(run, sz) == 0);
		else
			close(fds[order[i]]);
	}
	CHECK(unload("rkvm") == 0);
	CHECK(reload() == 0);
}

TEST(close_orders)
{
	static const int orders[][4] = {
		{ 0, 1, 2, 3 }, { 3, 2, 1, 0 }, { 1, 0, 3, 2 }, { 2, 3, 0, 1 },
		{ 1, 2, 3, 0 }, { 0, 3, 2, 1 }, { 2, 1, 0, 3 }, { 3, 0, 1, 2 },
	};

	if (upstream())
		SKIP("reloads rkvm");
	read_params();
	for (unsigned int i = 0; i < sizeof(orders) / sizeof(orders[0]); i++)
		close_order(orders[i]);
}

TEST(many_vms_then_unload)
{
	int kvm, vms[16];

	if (upstream())
		SKIP("reloads rkvm");
	read_params();
	kvm = open_dev();
	for (int i = 0; i < 16; i++) {
		vms[i] = create_vm(kvm);
		for (int j = 0; j < 4; j++)
			ioctl(vms[i], KVM_CREATE_VCPU, j); /* fds leak on purpose: closed at exit below */
	}
	close(kvm);
	CHECK_ERRNO_WHY(unload("rkvm"), EWOULDBLOCK,
		    "rmmod rkvm while 16 VMs with 4 vCPUs each are open");
	for (int fd = 3; fd < 256; fd++)
		close(fd);
	CHECK(unload("rkvm") == 0);
	CHECK(reload() == 0);
}

/* MemFree plus the per-CPU free lists, in KiB, counters folded first (as selftests/bench.c). */
static long free_kib(void)
{
	static const char *const keys[] = { "MemFree:", "count:" };
	static const char *const files[] = { "/proc/meminfo", "/proc/zoneinfo" };
	long sum = 0, v;
	char line[256], key[64];
	int fd = open("/proc/sys/vm/stat_refresh", O_WRONLY);

	if (fd >= 0) {
		ssize_t n __attribute__((unused)) = write(fd, "1", 1);

		close(fd);
	}
	for (int i = 0; i < 2; i++) {
		FILE *f = fopen(files[i], "r");

		while (f && fgets(line, sizeof(line), f))
			if (sscanf(line, " %63s %ld", key, &v) == 2 && !strcmp(key, keys[i]))
				sum += i ? v * (page_size() / 1024) : v;
		if (f)
			fclose(f);
	}
	return sum;
}

/* One VM's life after a load: two slots (one logging dirty pages), two vCPUs, a guest run. */
static void one_vm_life(void)
{
	static const unsigned char hlt[] = { 0xf4 };
	unsigned long bitmap[1];
	struct kvm_dirty_log log = { .slot = 1, .dirty_bitmap = bitmap };
	unsigned char *mem2 = mmap(NULL, 0x10000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct real_vm v = { 0 };
	int vcpu1, stats;

	CHECK(real_vm_create(&v, hlt, sizeof(hlt)) == 0);
	CHECK(set_slot(v.vm, 1, KVM_MEM_LOG_DIRTY_PAGES, 0x100000, 0x10000, mem2) == 0);
	vcpu1 = ioctl(v.vm, KVM_CREATE_VCPU, 1);
	stats = ioctl(v.vm, KVM_GET_STATS_FD, 0);
	CHECK(vcpu1 >= 0 && stats >= 0);
	if (!no_guests())
		CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_HLT);
	CHECK(ioctl(v.vm, KVM_GET_DIRTY_LOG, &log) == 0);
	close(stats);
	close(vcpu1);
	real_vm_free(&v);
	munmap(mem2, 0x10000);
}

#define RELOADS_WARM 10

/* 100 load cycles, or $RKVM_RELOADS (more than RELOADS_WARM; make check's debug stage: 20). */
static int reloads(void)
{
	const char *e = getenv("RKVM_RELOADS");

	return e && atoi(e) > RELOADS_WARM ? atoi(e) : 100;
}

/* Whether the kernel runs KASAN (its boot line is in the kernel log). */
static int kernel_has_kasan(void)
{
	char line[512];
	int found = 0;
	FILE *f = popen("dmesg", "r");

	while (f && fgets(line, sizeof(line), f))
		found |= strstr(line, "KernelAddressSanitizer initialized") != NULL;
	if (f)
		pclose(f);
	return found;
}

TEST(reload_cycles_with_vms)
{
	long before = 0, after;
	int n = reloads();

	if (upstream())
		SKIP("reloads rkvm");
	read_params();
	/*
	 * 100 unload/load cycles (VMXOFF then VMXON on every CPU with backend=vmx), each followed by
	 * a VM's life, so VMX operation really works again after each load. Nothing may stay
	 * behind: kmemleak (kmemleak_check, after all tests) sees leaked objects, and free memory
	 * sees leaked pages, which kmemleak does not track: after the first 10 cycles (the
	 * kernel's own caches warm), free memory may drop by less than a page per cycle. Not under
	 * KASAN: its quarantine holds freed objects back, and the stack depot keeps every new
	 * allocation stack, which a module loaded at a new address makes (about 12 KiB per cycle).
	 */
	for (int i = 0; i < n && !ktap_failed_case; i++) {
		if (i == RELOADS_WARM) {
			usleep(200000);
			before = free_kib();
		}
		CHECK(unload("rkvm") == 0);
		CHECK(reload() == 0);
		one_vm_life();
	}
	usleep(200000);
	after = free_kib();
	ktap_diag("free memory after %d more load cycles: %+ld KiB", n - RELOADS_WARM, after - before);
	if (!kernel_has_kasan())
		CHECK(before - after < (n - RELOADS_WARM) * page_size() / 1024);
}

TEST(stats_fds_pin_the_module)
{
	int kvm, vm, vcpu, vm_stats, vcpu_stats;

	if (upstream())
		SKIP("reloads rkvm");
	read_params();
	kvm = open_dev();
	vm = create_vm(kvm);
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	vm_stats = ioctl(vm, KVM_GET_STATS_FD, 0);
	vcpu_stats = ioctl(vcpu, KVM_GET_STATS_FD, 0);
	CHECK(vm_stats >= 0 && vcpu_stats >= 0);
	close(vcpu);
	close(vm);
	close(kvm);
	CHECK_ERRNO_WHY(unload("rkvm"), EWOULDBLOCK,
		    "rmmod rkvm while a VM's and a vCPU's stats fds are open (all else closed)");
	close(vm_stats);
	CHECK_ERRNO_WHY(unload("rkvm"), EWOULDBLOCK,
		    "rmmod rkvm while a vCPU's stats fd is open (all else closed)");
	close(vcpu_stats);
	CHECK(unload("rkvm") == 0);
	CHECK(reload() == 0);
}

static void *spin_in_run(void *arg)
{
	int vcpu = *(int *)arg;

	ioctl(vcpu, KVM_RUN, 0);
	return NULL;
}

static void *wait_for_vcpu(void *arg)
{
	struct kvm_regs regs;

	ioctl(*(int *)arg, KVM_GET_REGS, &regs);
	return NULL;
}

/*
 * The child of killed_mid_run: a VM with two vCPUs, each spinning in KVM_RUN on its own thread
 * (or, without guests, the threads sleep), a third thread waiting in KVM_GET_REGS for vCPU 0;
 * says so on `ready` and waits to be killed.
 */
static void child_in_run(int ready)
{
	pthread_t t[3];
	struct g32 g;
	int vcpu1;

	if (g32_create(&g) || g32_start(g.vcpu, G32_SPIN, 0, 0, 0, 0))
		_exit(2);
	vcpu1 = ioctl(g.vm, KVM_CREATE_VCPU, 1);
	if (vcpu1 < 0 || g32_flat_sregs(vcpu1) || g32_start(vcpu1, G32_SPIN, 0, 0, 0, 0) ||
	    mmap(NULL, g.run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu1, 0) == MAP_FAILED)
		_exit(3);
	if (!no_guests()) {
		pthread_create(&t[0], NULL, spin_in_run, &g.vcpu);
		pthread_create(&t[1], NULL, spin_in_run, &vcpu1);
		usleep(100000);
		pthread_create(&t[2], NULL, wait_for_vcpu, &g.vcpu);
		usleep(100000);
	}
	if (write(ready, "r", 1) != 1)
		_exit(4);
	for (;;)
		pause();
}

TEST(killed_mid_run)
{
	int p[2], status;
	pid_t pid;
	char c;

	if (upstream())
		SKIP("reloads rkvm");
	read_params();
	CHECK(pipe(p) == 0);
	pid = fork();
	if (pid == 0) {
		close(p[0]);
		child_in_run(p[1]);
	}
	close(p[1]);
	CHECK(pid > 0 && read(p[0], &c, 1) == 1);
	close(p[0]);
	/* The child holds the module; SIGKILL while its threads are inside KVM_RUN. */
	CHECK_ERRNO_WHY(unload("rkvm"), EWOULDBLOCK,
		    "rmmod rkvm while a process has vCPUs inside KVM_RUN");
	CHECK(kill(pid, SIGKILL) == 0);
	CHECK(waitpid(pid, &status, 0) == pid && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	/* Its files were released on the way out: nothing holds the module any more. */
	CHECK(unload("rkvm") == 0);
	CHECK(reload() == 0);
}

TEST(dropin_dev_kvm)
{
	struct stat st;
	char args[160];
	int fd;

	if (upstream())
		SKIP("reloads rkvm");
	read_params();
	if (stat("/dev/kvm", &st) == 0)
		SKIP("/dev/kvm already exists");
	CHECK(unload("rkvm") == 0);
	snprintf(args, sizeof(args), "%s devname=kvm", params);
	CHECK(load(MODULE_FILE, args) == 0);
	CHECK(stat("/dev/kvm", &st) == 0 && S_ISCHR(st.st_mode));
	CHECK(major(st.st_rdev) == 10 && minor(st.st_rdev) == 232);
	CHECK(stat("/dev/rkvm", &st) == -1 && errno == ENOENT);
	fd = open("/dev/kvm", O_RDWR);
	CHECK(fd >= 0 && ioctl(fd, KVM_GET_API_VERSION, 0) == 12);
	close(fd);
	CHECK(unload("rkvm") == 0);
	CHECK(reload() == 0);
	CHECK(stat("/dev/rkvm", &st) == 0);
}

/* Loads the kernel's KVM (vendor module that works on this CPU): returns its name or NULL. */
static const char *load_upstream_kvm(void)
{
	if (load("/lib/modules/irqbypass.ko", "") != 0 && errno != EEXIST)
		return NULL;
	if (load("/lib/modules/kvm.ko", "") != 0 && errno != EEXIST) {
		unload("irqbypass");
		return NULL;
	}
	if (load("/lib/modules/kvm-amd.ko", "") == 0)
		return "kvm_amd";
	if (load("/lib/modules/kvm-intel.ko", "") == 0)
		return "kvm_intel";
	unload("kvm");
	unload("irqbypass");
	return NULL;
}

TEST(dropin_refused_while_kvm_loaded)
{
	char args[160], line[512];
	const char *vendor;
	int found = 0;
	FILE *f;

	if (upstream())
		SKIP("reloads rkvm");
	read_params();
	CHECK(unload("rkvm") == 0);
	vendor = load_upstream_kvm();
	if (!vendor) {
		CHECK(reload() == 0);
		SKIP("the kernel's KVM does not load on this CPU (needs VMX or SVM)");
	}
	snprintf(args, sizeof(args), "%s devname=kvm", params);
	CHECK_ERRNO_WHY(load(MODULE_FILE, args), EBUSY,
		    "insmod rkvm devname=kvm while kvm_intel holds /dev/kvm");
	/*
	 * One clear line in the kernel log says why: /dev/kvm is taken, or (backend=vmx) VMX itself
	 * is already owned by kvm_intel, which is checked first.
	 */
	f = popen("dmesg", "r");
	while (f && fgets(line, sizeof(line), f))
		if (strstr(line, "rkvm") && (strstr(line, "devname=kvm refused") ||
					     strstr(line, "already in use by another hypervisor")))
			found = 1;
	if (f)
		pclose(f);
	CHECK(found);
	CHECK(unload(vendor) == 0);
	/*
	 * kvm.ko and irqbypass.ko stay loaded: without a vendor module they hold neither VMX nor
	 * /dev/kvm, and `rmmod kvm` after kvm_intel never returns in Bochs with 2 CPUs (measured;
	 * upstream's module exit, not rkvm's business).
	 */
	CHECK(reload() == 0);
}

KTAP_MAIN("rkvm lifetime",
	CASE(close_orders),
	CASE(many_vms_then_unload),
	CASE(reload_cycles_with_vms),
	CASE(stats_fds_pin_the_module),
	CASE(killed_mid_run),
	CASE(dropin_dev_kvm),
	CASE(dropin_refused_while_kvm_loaded))

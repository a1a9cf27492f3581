// SPDX-License-Identifier: GPL-2.0
/*
 * Resource limits and permissions.
 *
 * - VM memory is charged to the caller's memory cgroup (GFP_KERNEL_ACCOUNT, as upstream): VMs
 *   with a vCPU and a slot logging dirty pages, made in a cgroup, raise its memory.current,
 *   closing them gives it back, and under a memory.max making more stops with ENOMEM, not the OOM
 *   killer (the caller has oom_score_adj -1000, so the cgroup's OOM killer finds no victim and
 *   the charge fails, as it does for upstream KVM).
 * - The device node is root's, mode 0600 (misc device default, as /dev/kvm without udev rules):
 *   another user gets EACCES; given access (chmod 0666, as a udev rule would), that user makes
 *   and runs VMs; the module parameters are read-only.
 *
 * (The vCPU and memory slot limits are in api_basics' vcpu_ids_and_limits and memslots'
 * slot_limit.) Needs root, cgroup v2 with the memory controller (mounted here if absent).
 * Upstream references: kvm_arch_alloc_vm / kvm_vcpu_cache / kvm_alloc_dirty_bitmap
 * (GFP_KERNEL_ACCOUNT), kvm_dev (misc device, mode from devtmpfs or udev).
 */
#include <grp.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include "guest32.h"

#define CG "/sys/fs/cgroup"
#define CG_TEST CG "/rkvm-limits"

static int write_file(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY), ok;

	if (fd < 0)
		return -1;
	ok = write(fd, s, strlen(s)) == (ssize_t)strlen(s);
	close(fd);
	return ok ? 0 : -1;
}

/* The value of `key` in a flat-keyed file (memory.events), or the first number in the file. */
static long read_val(const char *path, const char *key)
{
	char line[256], k[64];
	long v = -1, x;
	FILE *f = fopen(path, "r");

	while (f && fgets(line, sizeof(line), f)) {
		if (!key) {
			v = atol(line);
			break;
		}
		if (sscanf(line, "%63s %ld", k, &x) == 2 && !strcmp(k, key))
			v = x;
	}
	if (f)
		fclose(f);
	return v;
}

/* A cgroup with the memory controller for this test, or a reason to skip. */
static const char *memcg_setup(void)
{
	if (access(CG "/cgroup.controllers", F_OK) &&
	    mount("none", CG, "cgroup2", 0, NULL))
		return "no cgroup v2 (mount failed)";
	if (write_file(CG "/cgroup.subtree_control", "+memory"))
		return "no memory controller";
	rmdir(CG_TEST);
	if (mkdir(CG_TEST, 0755))
		return "cannot make a cgroup";
	return NULL;
}

#define BATCH 16
#define MAX_VMS 4096
#define BIG_SLOT (1ul << 30)

static void *big_hva;

/* The call of make_vm() that failed last (an index into make_vm_calls), printed by the child. */
static int make_vm_step;
static const char *const make_vm_calls[] = {
	"KVM_CREATE_VM", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION",
};

/*
 * A VM with one vCPU and a 1 GiB slot logging dirty pages (its two 32 KiB bitmaps make the VM
 * big enough to see: memcg charges in per-CPU batches of 64 pages). Returns 0, or -1 with errno.
 */
static int make_vm(int kvm, int *vm, int *vcpu)
{
	*vcpu = -1;
	make_vm_step = 0;
	*vm = create_vm(kvm);
	if (*vm < 0)
		return -1;
	make_vm_step = 1;
	*vcpu = ioctl(*vm, KVM_CREATE_VCPU, 0);
	if (*vcpu < 0)
		return -1;
	make_vm_step = 2;
	return set_slot(*vm, 1, KVM_MEM_LOG_DIRTY_PAGES, 1ul << 32, BIG_SLOT, big_hva);
}

static void free_vm(int vm, int vcpu)
{
	if (vcpu >= 0)
		close(vcpu);
	if (vm >= 0)
		close(vm);
}

/*
 * In the child, inside the cgroup: exit status 0 when all checks passed, else the number of
 * the failed step. Prints its findings.
 */
static int charged_child(void)
{
	static int vms[MAX_VMS], vcpus[MAX_VMS];
	long base, with, back, limit;
	int kvm = open_dev(), n = 0, err = 0;
	char buf[32];

	if (write_file("/proc/self/oom_score_adj", "-1000"))
		return 1;
	big_hva = mmap(NULL, BIG_SLOT, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (big_hva == MAP_FAILED)
		return 2;
	base = read_val(CG_TEST "/memory.current", NULL);
	/* A batch of VMs: charged here. */
	for (int i = 0; i < BATCH; i++)
		if (make_vm(kvm, &vms[i], &vcpus[i]))
			return 3;
	with = read_val(CG_TEST "/memory.current", NULL);
	for (int i = 0; i < BATCH; i++)
		free_vm(vms[i], vcpus[i]);
	usleep(100000);
	back = read_val(CG_TEST "/memory.current", NULL);
	printf("# memory.current: %ld KiB, with %d VMs (a vCPU, a logged 1 GiB slot) %ld KiB, after closing them %ld KiB\n",
	       base / 1024, BATCH, with / 1024, back / 1024);
	/* At least the dirty bitmaps, 64 KiB per VM. */
	if (with - base < BATCH * 64 * 1024)
		return 4;
	if (back - base > (with - base) / 4)
		return 5;
	/* Under a limit 4 MiB above what is used now, making VMs ends with ENOMEM. */
	limit = read_val(CG_TEST "/memory.current", NULL) + (4 << 20);
	snprintf(buf, sizeof(buf), "%ld", limit);
	if (write_file(CG_TEST "/memory.max", buf))
		return 6;
	for (n = 0; n < MAX_VMS; n++)
		if (make_vm(kvm, &vms[n], &vcpus[n])) {
			err = errno;
			free_vm(vms[n], vcpus[n]);
			break;
		}
	printf("# under memory.max (+4 MiB): %d VMs, then %s: errno %d (%s)\n", n,
	       make_vm_calls[make_vm_step], err, strerror(err));
	if (err != ENOMEM)
		return 7;
	for (int i = 0; i < n; i++)
		free_vm(vms[i], vcpus[i]);
	/* With the memory back, VMs can be made again. */
	if (make_vm(kvm, &vms[0], &vcpus[0]))
		return 8;
	return 0;
}

TEST(vm_memory_is_charged_to_the_caller)
{
	const char *why = memcg_setup();
	long oom_kills;
	int status;
	pid_t pid;

	if (why)
		SKIP("%s", why);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		char me[16];

		snprintf(me, sizeof(me), "%d", getpid());
		if (write_file(CG_TEST "/cgroup.procs", me))
			_exit(100);
		_exit(charged_child());
	}
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
	if (WIFSIGNALED(status))
		printf("# the child was killed by signal %d\n", WTERMSIG(status));
	else if (WEXITSTATUS(status))
		printf("# the child's check %d failed\n", WEXITSTATUS(status));
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	oom_kills = read_val(CG_TEST "/memory.events", "oom_kill");
	CHECK(oom_kills == 0);
	/*
	 * The child checked the errno (ENOMEM, its step 7): one row of the README's errno table.
	 * Which of make_vm()'s three calls reaches the limit varies from run to run (the child
	 * prints it), so the row names all three.
	 */
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		ktap_errno_log("ioctl(fd, KVM_CREATE_VM / KVM_CREATE_VCPU / KVM_SET_USER_MEMORY_REGION, ...)", ENOMEM,
			       "the caller's memory cgroup at memory.max: VMs (a vCPU, a logged 1 GiB slot) made until one of the three calls fails (not an OOM kill)");
	CHECK(rmdir(CG_TEST) == 0);
}

/* Runs fn in a child as user and group 65534 (nobody); returns its exit status, or -1. */
static int as_nobody(int (*fn)(void))
{
	int status;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		if (setgroups(0, NULL) || setgid(65534) || setuid(65534))
			_exit(100);
		_exit(fn());
	}
	if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

static int open_denied(void)
{
	int fd = open(dev_path(), O_RDWR);

	return fd < 0 && errno == EACCES ? 0 : 1;
}

static int make_and_run_vm(void)
{
	static const unsigned char hlt[] = { 0xf4 };
	struct real_vm v = { 0 };
	int param;

	if (real_vm_create(&v, hlt, sizeof(hlt)))
		return 1;
	if (!no_guests() && (ioctl(v.vcpu, KVM_RUN, 0) || v.run->exit_reason != KVM_EXIT_HLT))
		return 2;
	real_vm_free(&v);
	param = open("/sys/module/rkvm/parameters/backend", O_WRONLY);
	if (!upstream() && (param >= 0 || errno != EACCES))
		return 3;
	return 0;
}

TEST(device_access_for_other_users)
{
	struct stat st;

	CHECK(stat(dev_path(), &st) == 0 && (st.st_mode & 0777) == 0600 && st.st_uid == 0);
	CHECK(as_nobody(open_denied) == 0);
	/* open_denied's check, for the errno table (logged only if this case passes). */
	ktap_errno_log("open(dev_path(), O_RDWR)", EACCES,
		       "another user opens the device node (root's, mode 0600)");
	/* Access given as a udev rule would (mode 0666, or a kvm group): a plain user runs VMs. */
	CHECK(chmod(dev_path(), 0666) == 0);
	CHECK(as_nobody(make_and_run_vm) == 0);
	CHECK(chmod(dev_path(), st.st_mode & 07777) == 0);
	CHECK(as_nobody(open_denied) == 0);
	if (!upstream()) {
		/* The module's parameters: readable, written by nobody (root included: mode 0444). */
		CHECK(stat("/sys/module/rkvm/parameters/backend", &st) == 0 && (st.st_mode & 0777) == 0444);
	}
}

KTAP_MAIN("rkvm limits",
	CASE(vm_memory_is_charged_to_the_caller),
	CASE(device_access_for_other_users))

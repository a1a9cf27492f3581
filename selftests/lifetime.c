// SPDX-License-Identifier: GPL-2.0
/*
 * Object lifetimes: every open device, VM or vCPU fd (and vCPU mapping) pins the module, so
 * `rmmod rkvm` fails while any lives and succeeds once all are gone, whatever order they were
 * closed in; the module then loads again (20 times over, with a guest run after each load).
 * Also the drop-in mode (devname=kvm → /dev/kvm) and its refusal while the kernel's own KVM
 * holds /dev/kvm.
 *
 * The module is reloaded with the parameters it was loaded with, read from
 * /sys/module/rkvm/parameters, from /lib/modules/rkvm.ko. Needs root; skipped for upstream KVM.
 * Upstream reference: fops_get/try_module_get through file_operations.owner; misc_register's
 * minor check (KVM_MINOR 232).
 */
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include "rkvm_util.h"

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
	CHECK_ERRNO(unload("rkvm"), EWOULDBLOCK);
	for (int fd = 3; fd < 256; fd++)
		close(fd);
	CHECK(unload("rkvm") == 0);
	CHECK(reload() == 0);
}

TEST(reload_cycles_with_guests)
{
	static const unsigned char hlt[] = { 0xf4 };
	struct real_vm v;

	if (upstream())
		SKIP("reloads rkvm");
	read_params();
	/*
	 * 20 unload/load cycles (VMXOFF then VMXON on every CPU with backend=vmx), each followed by
	 * a VM whose vCPU runs a HLT guest, so VMX operation really works again after each load.
	 */
	for (int i = 0; i < 20; i++) {
		CHECK(unload("rkvm") == 0);
		CHECK(reload() == 0);
		CHECK(real_vm_create(&v, hlt, sizeof(hlt)) == 0);
		if (!no_guests())
			CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_HLT);
		real_vm_free(&v);
	}
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
	CHECK_ERRNO(load(MODULE_FILE, args), EBUSY);
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
	CASE(reload_cycles_with_guests),
	CASE(dropin_dev_kvm),
	CASE(dropin_refused_while_kvm_loaded))

/* SPDX-License-Identifier: GPL-2.0 */
/* Shared helpers of rkvm's selftests: opening the device, making VMs and vCPUs. */
#ifndef RKVM_UTIL_H
#define RKVM_UTIL_H

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "ktap.h"

/* The device under test: $RKVM_DEV, default /dev/rkvm. */
/*
 * Reads the guest binary NAME (built next to this program, selftests/guests/) into DST, at most
 * MAX bytes: the number of bytes read, or -1 with a diagnostic line.
 */
static inline ssize_t load_guest_bin(const char *name, void *dst, size_t max)
{
	char path[4096], *slash;
	ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - strlen(name) - 1);
	int fd;

	if (n <= 0)
		return -1;
	path[n] = 0;
	slash = strrchr(path, '/');
	strcpy(slash ? slash + 1 : path, name);
	fd = open(path, O_RDONLY);
	if (fd < 0) {
		printf("# %s: %s\n", path, strerror(errno));
		return -1;
	}
	n = read(fd, dst, max);
	close(fd);
	return n;
}

static inline const char *dev_path(void)
{
	const char *p = getenv("RKVM_DEV");

	return p && *p ? p : "/dev/rkvm";
}

/* Whether the device is the kernel's own KVM (to validate the tests): rkvm-only checks skip. */
static inline int upstream(void)
{
	const char *p = getenv("RKVM_UPSTREAM");

	return p && *p == '1';
}

static inline int open_dev(void)
{
	int fd = open(dev_path(), O_RDWR | O_CLOEXEC);

	if (fd < 0)
		printf("# open %s: %s\n", dev_path(), strerror(errno));
	return fd;
}

static inline int create_vm(int kvm)
{
	return ioctl(kvm, KVM_CREATE_VM, 0);
}

static inline long page_size(void)
{
	return sysconf(_SC_PAGESIZE);
}

/* With backend=none (RKVM_BACKEND_NONE, or rkvm's parameter) no guest is entered. */
struct real_vm {
	int kvm, vm, vcpu;
	struct kvm_run *run;
	unsigned char *mem;
};

/*
 * For guest-entering tests: a VM with 64 KiB of memory at GPA 0 (slot 0) holding `code` at
 * 0x1000, one vCPU in real mode at CS base 0, RIP 0x1000, RFLAGS 2. Returns 0 or -1.
 */
static inline int real_vm_create(struct real_vm *v, const unsigned char *code, size_t len)
{
	struct kvm_userspace_memory_region r = { .slot = 0, .memory_size = 0x10000 };
	struct kvm_sregs s;
	struct kvm_regs regs = { .rip = 0x1000, .rflags = 2 };

	v->kvm = open_dev();
	v->vm = create_vm(v->kvm);
	v->mem = mmap(NULL, 0x10000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	memcpy(v->mem + 0x1000, code, len);
	r.userspace_addr = (__u64)v->mem;
	if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &r))
		return -1;
	v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
	v->run = mmap(NULL, ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0), PROT_READ | PROT_WRITE,
		      MAP_SHARED, v->vcpu, 0);
	if (v->vcpu < 0 || v->run == MAP_FAILED || ioctl(v->vcpu, KVM_GET_SREGS, &s))
		return -1;
	s.cs.base = 0;
	s.cs.selector = 0;
	if (ioctl(v->vcpu, KVM_SET_SREGS, &s) || ioctl(v->vcpu, KVM_SET_REGS, &regs))
		return -1;
	return 0;
}

static inline void real_vm_free(struct real_vm *v)
{
	munmap(v->run, ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0));
	close(v->vcpu);
	close(v->vm);
	close(v->kvm);
	munmap(v->mem, 0x10000);
}

static inline int no_guests(void)
{
	char buf[16] = "";
	FILE *f;

	if (getenv("RKVM_BACKEND_NONE"))
		return 1;
	if (upstream())
		return 0;
	f = fopen("/sys/module/rkvm/parameters/backend", "r");
	if (f) {
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = 0;
		fclose(f);
	}
	return strncmp(buf, "none", 4) == 0;
}

#endif

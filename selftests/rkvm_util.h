/* SPDX-License-Identifier: GPL-2.0 */
/* Shared helpers of rkvm's selftests: opening the device, making VMs and vCPUs. */
#ifndef RKVM_UTIL_H
#define RKVM_UTIL_H

#include <fcntl.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "ktap.h"

/* The device under test: $RKVM_DEV, default /dev/rkvm. */
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

#endif

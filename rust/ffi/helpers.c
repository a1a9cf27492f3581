// SPDX-License-Identifier: GPL-2.0
/*
 * C helpers of rkvm: thin function wrappers over static inlines and macros, and the module
 * parameters. No logic lives here; see helpers.h.
 */
#include <linux/cpumask.h>
#include <linux/mm.h>
#include <linux/moduleparam.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/uaccess.h>

#include "helpers.h"

static char *backend = "none";
module_param(backend, charp, 0444);
MODULE_PARM_DESC(backend, "Backend behind the vm/vcpu code: none (never enters a guest)");

static char *devname = "rkvm";
module_param(devname, charp, 0444);
MODULE_PARM_DESC(devname, "Device name: rkvm (/dev/rkvm, default) or kvm (/dev/kvm, drop-in)");

const char *rkvm_param_backend(void)
{
	return backend;
}

const char *rkvm_param_devname(void)
{
	return devname;
}

struct mm_struct *rkvm_current_mm(void)
{
	return current->mm;
}

void rkvm_mmgrab(struct mm_struct *mm)
{
	mmgrab(mm);
}

void rkvm_mmdrop(struct mm_struct *mm)
{
	mmdrop(mm);
}

bool rkvm_access_ok(unsigned long addr, unsigned long size)
{
	return access_ok((void __user *)addr, size);
}

void rkvm_get_page(struct page *page)
{
	get_page(page);
}

void *rkvm_page_address(struct page *page)
{
	return page_address(page);
}

unsigned int rkvm_num_online_cpus(void)
{
	return num_online_cpus();
}

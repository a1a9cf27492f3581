// SPDX-License-Identifier: GPL-2.0
/*
 * rkvm_splat: the splat canary of `make check`'s debug stage (not part of rkvm).
 *
 * `insmod rkvm_splat.ko what=KIND` makes the debug kernel print one real report of KIND and
 * fails the load (-EAGAIN), so scripts/check.sh can verify that scripts/vm-run.py's console
 * scan fails a run on each report format the debug kernel can print:
 *
 *   warn     WARN_ON(1)                          "WARNING: CPU: ... at ..." (KERN_WARNING)
 *   kasan    a read past a kmalloc'ed object      "BUG: KASAN: slab-out-of-bounds in ..."
 *   uaf      a read of a kfree'd object           "BUG: KASAN: slab-use-after-free in ..."
 *   lockdep  two mutexes taken in both orders     "WARNING: possible circular locking ..."
 *   atomic   might_sleep() with preemption off    "BUG: sleeping function called from ..."
 *   rcu      rcu_dereference_check() unprotected  "WARNING: suspicious RCU usage" (KERN_WARNING)
 *
 * None of them corrupts anything: the reads stay inside KASAN's redzone/quarantine, the mutexes
 * are taken one after the other by one thread.
 */
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/rcupdate.h>
#include <linux/slab.h>
#include <linux/string.h>

static char *what = "";
module_param(what, charp, 0444);
MODULE_PARM_DESC(what, "warn, kasan, uaf, lockdep, atomic or rcu");

static DEFINE_MUTEX(lock_a);
static DEFINE_MUTEX(lock_b);
static int __rcu *rcu_ptr;

static noinline int read_byte(volatile char *p)
{
	return *p;
}

static int __init splat_init(void)
{
	if (!strcmp(what, "warn")) {
		WARN_ON(1);
	} else if (!strcmp(what, "kasan")) {
		char *p = kmalloc(40, GFP_KERNEL);

		if (!p)
			return -ENOMEM;
		pr_info("rkvm_splat: %d\n", read_byte(p + 40));
		kfree(p);
	} else if (!strcmp(what, "uaf")) {
		char *p = kmalloc(40, GFP_KERNEL);

		if (!p)
			return -ENOMEM;
		kfree(p);
		pr_info("rkvm_splat: %d\n", read_byte(p));
	} else if (!strcmp(what, "lockdep")) {
		mutex_lock(&lock_a);
		mutex_lock(&lock_b);
		mutex_unlock(&lock_b);
		mutex_unlock(&lock_a);
		mutex_lock(&lock_b);
		mutex_lock(&lock_a);
		mutex_unlock(&lock_a);
		mutex_unlock(&lock_b);
	} else if (!strcmp(what, "atomic")) {
		preempt_disable();
		might_sleep();
		preempt_enable();
	} else if (!strcmp(what, "rcu")) {
		pr_info("rkvm_splat: %p\n", rcu_dereference_check(rcu_ptr, 0));
	} else {
		return -EINVAL;
	}
	return -EAGAIN;
}
module_init(splat_init);

MODULE_DESCRIPTION("Prints one real kernel report of a chosen kind (check of the VM runner's splat scan)");
MODULE_LICENSE("GPL");

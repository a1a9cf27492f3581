/* SPDX-License-Identifier: GPL-2.0 */
/*
 * C helpers of rkvm: static inline functions and macros of the kernel that Rust cannot call
 * directly, wrapped as real functions, and the module parameters (declared with the kernel's
 * module_param machinery, which 6.12's `module!` macro does not offer).
 */
#ifndef RKVM_HELPERS_H
#define RKVM_HELPERS_H

#include <linux/types.h>

struct mm_struct;
struct page;
struct vm_area_struct;

/* Module parameters (see helpers.c for their documentation). */
const char *rkvm_param_backend(void);
const char *rkvm_param_devname(void);

/* current->mm, and the mm_count reference KVM keeps on it (mmgrab/mmdrop). */
struct mm_struct *rkvm_current_mm(void);
void rkvm_mmgrab(struct mm_struct *mm);
void rkvm_mmdrop(struct mm_struct *mm);

/* access_ok() on the current task's address space. */
bool rkvm_access_ok(unsigned long addr, unsigned long size);

/* Page helpers. */
void rkvm_get_page(struct page *page);
void *rkvm_page_address(struct page *page);

unsigned int rkvm_num_online_cpus(void);

#endif

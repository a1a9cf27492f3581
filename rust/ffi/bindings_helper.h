/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What rkvm's module-private bindings are generated from.
 *
 * Kbuild runs bindgen over this header with the kernel's own C flags (see ../../Kbuild), so every
 * struct layout, constant and ioctl number rkvm uses comes from the real kernel headers. Only the
 * items matched by the allowlist in ../../Kbuild are emitted (plus what they depend on).
 *
 * Function-like macros (the _IO* ioctl encodings, some flag sets) cannot be evaluated by bindgen,
 * so they are captured below as `const` variables named RKVM_CONST_<NAME>, which bindgen evaluates;
 * Kbuild renames them to <NAME> in the generated Rust, as the kernel's own bindings do with
 * RUST_CONST_HELPER_.
 */
#include <linux/anon_inodes.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mm_types.h>
#include <linux/sched/mm.h>
#include <linux/uaccess.h>
#include <linux/kvm.h>
#include <linux/kvm_para.h>
#include <asm/pvclock-abi.h>
#include <linux/signal.h>
#include <asm/mce.h>
#include <asm/msr-index.h>
#include <asm/vmx.h>

#include "helpers.h"

#define RKVM_CONST(type, name) const type RKVM_CONST_##name = name

/* /dev/kvm (system) ioctls */
RKVM_CONST(unsigned int, KVM_GET_API_VERSION);
RKVM_CONST(unsigned int, KVM_CREATE_VM);
RKVM_CONST(unsigned int, KVM_CHECK_EXTENSION);
RKVM_CONST(unsigned int, KVM_GET_VCPU_MMAP_SIZE);
RKVM_CONST(unsigned int, KVM_GET_MSR_INDEX_LIST);
RKVM_CONST(unsigned int, KVM_GET_MSR_FEATURE_INDEX_LIST);
RKVM_CONST(unsigned int, KVM_GET_SUPPORTED_CPUID);
RKVM_CONST(unsigned int, KVM_X86_GET_MCE_CAP_SUPPORTED);

/* VM ioctls */
RKVM_CONST(unsigned int, KVM_CREATE_VCPU);
RKVM_CONST(unsigned int, KVM_SET_USER_MEMORY_REGION);
RKVM_CONST(unsigned int, KVM_SET_TSS_ADDR);
RKVM_CONST(unsigned int, KVM_SET_IDENTITY_MAP_ADDR);
RKVM_CONST(unsigned int, KVM_SET_USER_MEMORY_REGION2);
RKVM_CONST(unsigned int, KVM_GET_TSC_KHZ);
RKVM_CONST(unsigned int, KVM_GET_DIRTY_LOG);
RKVM_CONST(unsigned int, KVM_CLEAR_DIRTY_LOG);
RKVM_CONST(unsigned int, KVM_SET_BOOT_CPU_ID);
RKVM_CONST(unsigned int, KVM_X86_SET_MSR_FILTER);

/* vCPU ioctls */
RKVM_CONST(unsigned int, KVM_RUN);
RKVM_CONST(unsigned int, KVM_GET_REGS);
RKVM_CONST(unsigned int, KVM_SET_REGS);
RKVM_CONST(unsigned int, KVM_GET_SREGS);
RKVM_CONST(unsigned int, KVM_SET_SREGS);
RKVM_CONST(unsigned int, KVM_GET_MSRS);
RKVM_CONST(unsigned int, KVM_SET_MSRS);
RKVM_CONST(unsigned int, KVM_GET_CPUID2);
RKVM_CONST(unsigned int, KVM_SET_CPUID2);
RKVM_CONST(unsigned int, KVM_GET_FPU);
RKVM_CONST(unsigned int, KVM_SET_FPU);
RKVM_CONST(unsigned int, KVM_GET_DEBUGREGS);
RKVM_CONST(unsigned int, KVM_SET_DEBUGREGS);
RKVM_CONST(unsigned int, KVM_SET_GUEST_DEBUG);
RKVM_CONST(unsigned int, KVM_GET_XCRS);
RKVM_CONST(unsigned int, KVM_SET_XCRS);
RKVM_CONST(unsigned int, KVM_GET_MP_STATE);
RKVM_CONST(unsigned int, KVM_SET_MP_STATE);
RKVM_CONST(unsigned int, KVM_SET_SIGNAL_MASK);
RKVM_CONST(unsigned int, KVM_TRANSLATE);
RKVM_CONST(unsigned int, KVM_GET_XSAVE);
RKVM_CONST(unsigned int, KVM_SET_XSAVE);
RKVM_CONST(unsigned int, KVM_GET_XSAVE2);
RKVM_CONST(unsigned int, KVM_INTERRUPT);
RKVM_CONST(unsigned int, KVM_CREATE_IRQCHIP);
RKVM_CONST(unsigned int, KVM_ENABLE_CAP);
RKVM_CONST(unsigned int, KVM_GET_STATS_FD);
RKVM_CONST(unsigned int, KVM_PRE_FAULT_MEMORY);
RKVM_CONST(unsigned int, KVM_REGISTER_COALESCED_MMIO);
RKVM_CONST(unsigned int, KVM_UNREGISTER_COALESCED_MMIO);
RKVM_CONST(unsigned int, KVM_IOEVENTFD);
RKVM_CONST(unsigned int, KVM_IOEVENTFD_FLAG_DATAMATCH);
RKVM_CONST(unsigned int, KVM_IOEVENTFD_FLAG_PIO);
RKVM_CONST(unsigned int, KVM_IOEVENTFD_FLAG_DEASSIGN);
RKVM_CONST(unsigned int, KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY);
RKVM_CONST(unsigned int, KVM_IOEVENTFD_VALID_FLAG_MASK);
RKVM_CONST(unsigned int, KVM_COALESCED_MMIO_MAX);
RKVM_CONST(unsigned int, KVM_SET_NR_MMU_PAGES);
RKVM_CONST(unsigned int, KVM_IRQ_LINE);
RKVM_CONST(unsigned int, KVM_IRQ_LINE_STATUS);
RKVM_CONST(unsigned int, KVM_GET_IRQCHIP);
RKVM_CONST(unsigned int, KVM_SET_IRQCHIP);
RKVM_CONST(unsigned int, KVM_GET_LAPIC);
RKVM_CONST(unsigned int, KVM_SET_LAPIC);
RKVM_CONST(unsigned int, KVM_NMI);
RKVM_CONST(unsigned int, KVM_GET_VCPU_EVENTS);
RKVM_CONST(unsigned int, KVM_SET_VCPU_EVENTS);
RKVM_CONST(unsigned int, KVM_X86_SETUP_MCE);
RKVM_CONST(unsigned int, KVM_X86_SET_MCE);

/* machine-check architecture bits (BIT_ULL macros in asm/mce.h), checked against rust/x86/mce.rs */
RKVM_CONST(unsigned long long, MCG_CTL_P);
RKVM_CONST(unsigned long long, MCG_CMCI_P);
RKVM_CONST(unsigned long long, MCG_SER_P);
RKVM_CONST(unsigned long long, MCG_LMCE_P);
RKVM_CONST(unsigned long long, MCG_EXT_CNT_MASK);
RKVM_CONST(unsigned long long, MCG_STATUS_MCIP);
RKVM_CONST(unsigned long long, MCG_EXT_CTL_LMCE_EN);
RKVM_CONST(unsigned long long, MCI_STATUS_OVER);
RKVM_CONST(unsigned long long, MCI_STATUS_UC);
RKVM_CONST(unsigned long long, MCI_STATUS_EN);
RKVM_CONST(unsigned long long, MCI_STATUS_MISCV);
RKVM_CONST(unsigned long long, MCI_STATUS_ADDRV);
RKVM_CONST(unsigned long long, MCI_STATUS_PCC);
RKVM_CONST(unsigned long long, MCI_STATUS_S);
RKVM_CONST(unsigned long long, MCI_STATUS_AR);
RKVM_CONST(unsigned long long, MCI_CTL2_CMCI_EN);
RKVM_CONST(unsigned long long, MCI_CTL2_CMCI_THRESHOLD_MASK);
RKVM_CONST(unsigned long long, FEAT_CTL_LMCE_ENABLED);
RKVM_CONST(unsigned long, X86_CR4_MCE);

/* file and mm flags that are macros over other macros */
RKVM_CONST(unsigned int, O_RDWR);
RKVM_CONST(unsigned int, O_RDONLY);
RKVM_CONST(unsigned int, SIGKILL);
RKVM_CONST(unsigned int, SIGSTOP);
RKVM_CONST(unsigned int, O_CLOEXEC);
RKVM_CONST(unsigned int, VM_FAULT_SIGBUS);
RKVM_CONST(unsigned long, PAGE_SIZE);
RKVM_CONST(unsigned int, PAGE_SHIFT);

/* architectural bits (function-like macros in the headers), checked against rust/x86/ */
RKVM_CONST(unsigned long, X86_CR0_PE);
RKVM_CONST(unsigned long, X86_CR0_ET);
RKVM_CONST(unsigned long, X86_CR0_NW);
RKVM_CONST(unsigned long, X86_CR0_CD);
RKVM_CONST(unsigned long, X86_CR0_PG);
RKVM_CONST(unsigned long, X86_CR4_PAE);
RKVM_CONST(unsigned long, X86_CR4_UMIP);
RKVM_CONST(unsigned long, X86_CR4_LA57);
RKVM_CONST(unsigned long, X86_CR4_VMXE);
RKVM_CONST(unsigned long, X86_CR4_FSGSBASE);
RKVM_CONST(unsigned long, X86_CR4_PCIDE);
RKVM_CONST(unsigned long, X86_CR4_OSXSAVE);
RKVM_CONST(unsigned long, X86_CR4_SMEP);
RKVM_CONST(unsigned long, X86_CR4_SMAP);
RKVM_CONST(unsigned long, X86_CR4_PKE);
RKVM_CONST(unsigned long, X86_CR4_LAM_SUP);
RKVM_CONST(unsigned long long, EFER_SCE);
RKVM_CONST(unsigned long long, EFER_LME);
RKVM_CONST(unsigned long long, EFER_LMA);
RKVM_CONST(unsigned long long, EFER_NX);

/* VMX: execution-control bits (VMCS_CONTROL_BIT(...) macros) and feature-control bits. */
RKVM_CONST(unsigned int, PIN_BASED_EXT_INTR_MASK);
RKVM_CONST(unsigned int, PIN_BASED_NMI_EXITING);
RKVM_CONST(unsigned int, PIN_BASED_VIRTUAL_NMIS);
RKVM_CONST(unsigned int, PIN_BASED_VMX_PREEMPTION_TIMER);
RKVM_CONST(unsigned int, CPU_BASED_HLT_EXITING);
RKVM_CONST(unsigned int, CPU_BASED_INTR_WINDOW_EXITING);
RKVM_CONST(unsigned int, CPU_BASED_NMI_WINDOW_EXITING);
RKVM_CONST(unsigned int, GUEST_INTR_STATE_STI);
RKVM_CONST(unsigned int, GUEST_INTR_STATE_MOV_SS);
RKVM_CONST(unsigned int, GUEST_INTR_STATE_NMI);
RKVM_CONST(unsigned int, CPU_BASED_MWAIT_EXITING);
RKVM_CONST(unsigned int, CPU_BASED_RDPMC_EXITING);
RKVM_CONST(unsigned int, CPU_BASED_CR3_LOAD_EXITING);
RKVM_CONST(unsigned int, CPU_BASED_CR3_STORE_EXITING);
RKVM_CONST(unsigned int, CPU_BASED_MOV_DR_EXITING);
RKVM_CONST(unsigned int, CPU_BASED_CR8_LOAD_EXITING);
RKVM_CONST(unsigned int, CPU_BASED_CR8_STORE_EXITING);
RKVM_CONST(unsigned int, CPU_BASED_UNCOND_IO_EXITING);
RKVM_CONST(unsigned int, CPU_BASED_MONITOR_EXITING);
RKVM_CONST(unsigned int, CPU_BASED_USE_MSR_BITMAPS);
RKVM_CONST(unsigned int, CPU_BASED_USE_TSC_OFFSETTING);
RKVM_CONST(unsigned int, CPU_BASED_ACTIVATE_SECONDARY_CONTROLS);
RKVM_CONST(unsigned int, SECONDARY_EXEC_ENABLE_EPT);
RKVM_CONST(unsigned int, SECONDARY_EXEC_ENABLE_VPID);

/* Kernel segment selectors, for the interrupt frame built after an external-interrupt exit. */
RKVM_CONST(unsigned long, __KERNEL_CS);
RKVM_CONST(unsigned long, __KERNEL_DS);
RKVM_CONST(unsigned int, SECONDARY_EXEC_UNRESTRICTED_GUEST);
RKVM_CONST(unsigned int, SECONDARY_EXEC_ENABLE_RDTSCP);
RKVM_CONST(unsigned long long, FEAT_CTL_LOCKED);
RKVM_CONST(unsigned long long, FEAT_CTL_VMX_ENABLED_OUTSIDE_SMX);

/* Paravirtual interface (rust/pv.rs, rust/x86/pvclock.rs) */
RKVM_CONST(unsigned int, KVM_GET_CLOCK);
RKVM_CONST(unsigned int, KVM_SET_CLOCK);
RKVM_CONST(unsigned int, KVM_HAS_DEVICE_ATTR);
RKVM_CONST(unsigned int, KVM_GET_DEVICE_ATTR);
RKVM_CONST(unsigned int, KVM_SET_DEVICE_ATTR);
RKVM_CONST(unsigned int, MSR_KVM_WALL_CLOCK);
RKVM_CONST(unsigned int, MSR_KVM_SYSTEM_TIME);
RKVM_CONST(unsigned int, MSR_KVM_WALL_CLOCK_NEW);
RKVM_CONST(unsigned int, MSR_KVM_SYSTEM_TIME_NEW);
RKVM_CONST(unsigned int, MSR_KVM_ASYNC_PF_EN);
RKVM_CONST(unsigned int, MSR_KVM_STEAL_TIME);
RKVM_CONST(unsigned int, MSR_KVM_PV_EOI_EN);
RKVM_CONST(unsigned int, MSR_KVM_POLL_CONTROL);
RKVM_CONST(unsigned int, MSR_KVM_ASYNC_PF_INT);
RKVM_CONST(unsigned int, MSR_KVM_ASYNC_PF_ACK);
RKVM_CONST(unsigned long long, KVM_EXIT_HYPERCALL_LONG_MODE);
RKVM_CONST(unsigned int, GUEST_ACTIVITY_ACTIVE);
RKVM_CONST(unsigned int, GUEST_ACTIVITY_HLT);

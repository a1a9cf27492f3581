// SPDX-License-Identifier: GPL-2.0
/*
 * Machine-check ioctls and MSRs: KVM_CAP_MCE (the bank limit), KVM_X86_GET_MCE_CAP_SUPPORTED on
 * the device fd, KVM_X86_SETUP_MCE (bank count, capability bits, EFAULT) and what it sets up
 * (IA32_MCG_CAP, MCG_CTL and every MCi_CTL all ones, the LAPIC's LVT CMCI entry with
 * MCG_CMCI_P), KVM_X86_SET_MCE (bank range, VAL, EFAULT): a corrected error logged with
 * overflow, an uncorrected one raising #MC in the guest, or shutting it down when a machine
 * check is in progress or CR4.MCE is clear, or dropped when MCG_CTL disables reporting, a UCNA
 * error signalled through LVT CMCI when the bank's MCi_CTL2 enables it; the write rules of
 * MCG_CTL, MCi_CTL, MCi_STATUS and MCi_CTL2.
 *
 * Upstream references: kvm_vcpu_ioctl_x86_setup_mce, kvm_vcpu_ioctl_x86_set_mce,
 * kvm_vcpu_x86_set_ucna, set_msr_mce / get_msr_mce, kvm_apic_after_set_mcg_cap; the kernel's
 * x86_64/ucna_injection_test.
 */
#include <stdint.h>
#include "rkvm_util.h"

#define MCG_CAP		0x179
#define MCG_STATUS	0x17a
#define MCG_CTL		0x17b
#define MC_CTL(i)	(0x400 + 4 * (i))
#define MC_CTL2(i)	(0x280 + (i))

#define MCG_CTL_P	(1ull << 8)
#define MCG_EXT_P	(1ull << 9)
#define MCG_CMCI_P	(1ull << 10)
#define MCG_TES_P	(1ull << 11)
#define MCG_SER_P	(1ull << 24)
#define MCG_LMCE_P	(1ull << 27)
#define MCI_VAL		(1ull << 63)
#define MCI_OVER	(1ull << 62)
#define MCI_UC		(1ull << 61)
#define MCI_EN		(1ull << 60)
#define MCI_MISCV	(1ull << 59)
#define MCI_ADDRV	(1ull << 58)
#define MCI_PCC		(1ull << 57)
#define CMCI_EN		(1ull << 30)
#define CR4_MCE		(1ull << 6)

/* A corrected error, an uncorrected one, an uncorrected no-action one (upstream's test). */
#define CE	(MCI_VAL | MCI_EN | 0x17)
#define UC	(MCI_VAL | MCI_UC | MCI_EN | MCI_PCC | 0x150)
#define UCNA	(MCI_VAL | MCI_UC | MCI_EN | MCI_MISCV | MCI_ADDRV | 0x10090)

struct msrs {
	struct kvm_msrs h;
	struct kvm_msr_entry e[1];
};

static int get1(int vcpu, uint32_t idx, uint64_t *v)
{
	struct msrs m = { .h.nmsrs = 1, .e[0].index = idx };
	int r = ioctl(vcpu, KVM_GET_MSRS, &m);

	*v = m.e[0].data;
	return r;
}

static uint64_t msr(int vcpu, uint32_t idx)
{
	uint64_t v = 0;

	CHECK(get1(vcpu, idx, &v) == 1);
	return v;
}

static int set1(int vcpu, uint32_t idx, uint64_t v)
{
	struct msrs m = { .h.nmsrs = 1, .e[0] = { .index = idx, .data = v } };

	return ioctl(vcpu, KVM_SET_MSRS, &m);
}

static int setup_mce(int vcpu, uint64_t cap)
{
	return ioctl(vcpu, KVM_X86_SETUP_MCE, &cap);
}

static int set_mce(int vcpu, uint8_t bank, uint64_t status, uint64_t mcg_status, uint64_t addr)
{
	struct kvm_x86_mce m = { .status = status, .addr = addr, .misc = 0x86,
				 .mcg_status = mcg_status, .bank = bank };

	return ioctl(vcpu, KVM_X86_SET_MCE, &m);
}

TEST(caps_and_supported)
{
	int kvm = open_dev();
	uint64_t sup = 0;

	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_MCE) == 32);
	CHECK(ioctl(kvm, KVM_X86_GET_MCE_CAP_SUPPORTED, &sup) == 0);
	/* x86 offers MCG_CTL_P and MCG_SER_P; VMX adds LMCE and CMCI. */
	CHECK(sup == (MCG_CTL_P | MCG_SER_P | MCG_LMCE_P | MCG_CMCI_P));
	CHECK_ERRNO_WHY(ioctl(kvm, KVM_X86_GET_MCE_CAP_SUPPORTED, NULL), EFAULT, "NULL pointer");
	close(kvm);
}

TEST(setup_and_set_mce_errors)
{
	int kvm = open_dev(), vm = create_vm(kvm), vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	struct kvm_x86_mce m = { .status = CE, .bank = 0 };

	CHECK(vcpu >= 0);
	/* Before any KVM_X86_SETUP_MCE a vCPU has 32 banks. */
	CHECK(set_mce(vcpu, 31, CE, 0, 0) == 0);
	CHECK_ERRNO_WHY(set_mce(vcpu, 32, CE, 0, 0), EINVAL,
		    "bank 32 before KVM_X86_SETUP_MCE (32 banks by default)");
	/* 1 to 32 banks, supported capabilities and the extended-register count only. */
	CHECK_ERRNO_WHY(setup_mce(vcpu, 0), EINVAL, "0 banks");
	CHECK_ERRNO_WHY(setup_mce(vcpu, MCG_CTL_P), EINVAL, "MCG_CTL_P with 0 banks");
	CHECK_ERRNO_WHY(setup_mce(vcpu, 33), EINVAL, "33 banks");
	CHECK_ERRNO_WHY(setup_mce(vcpu, 0xff), EINVAL, "255 banks");
	CHECK_ERRNO_WHY(setup_mce(vcpu, MCG_EXT_P | 4), EINVAL,
		    "MCG_EXT_P (not supported) with 4 banks");
	CHECK_ERRNO_WHY(setup_mce(vcpu, MCG_TES_P | 4), EINVAL,
		    "MCG_TES_P (not supported) with 4 banks");
	CHECK_ERRNO_WHY(setup_mce(vcpu, (1ull << 40) | 4), EINVAL,
		    "capability bit 40 (not supported) with 4 banks");
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_X86_SETUP_MCE, NULL), EFAULT, "NULL pointer");
	CHECK(setup_mce(vcpu, MCG_CTL_P | MCG_SER_P | MCG_LMCE_P | MCG_CMCI_P | 0x30000 | 32) == 0);
	CHECK(setup_mce(vcpu, MCG_CTL_P | 4) == 0);
	/* SET_MCE: a bank within the count, a valid status. */
	CHECK(set_mce(vcpu, 3, CE, 0, 0) == 0);
	CHECK_ERRNO_WHY(set_mce(vcpu, 4, CE, 0, 0), EINVAL,
		    "bank 4 after KVM_X86_SETUP_MCE with 4 banks");
	CHECK_ERRNO_WHY(set_mce(vcpu, 255, CE, 0, 0), EINVAL,
		    "bank 255 after KVM_X86_SETUP_MCE with 4 banks");
	CHECK_ERRNO_WHY(set_mce(vcpu, 0, CE & ~MCI_VAL, 0, 0), EINVAL, "status without MCI_STATUS_VAL");
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_X86_SET_MCE, NULL), EFAULT, "NULL pointer");
	CHECK(ioctl(vcpu, KVM_X86_SET_MCE, &m) == 0);
	close(vcpu);
	close(vm);
	close(kvm);
}

/* The LVT gets its seventh entry, CMCI (0x2f0), masked, with MCG_CMCI_P; LVR counts it. */
TEST(lapic_cmci_entry)
{
	int kvm = open_dev(), vm = create_vm(kvm), vcpu;
	struct kvm_lapic_state st;

	CHECK(ioctl(vm, KVM_CREATE_IRQCHIP, 0) == 0);
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	CHECK(vcpu >= 0);
#define REG(off) (*(uint32_t *)&st.regs[(off)])
	CHECK(ioctl(vcpu, KVM_GET_LAPIC, &st) == 0);
	CHECK(((REG(0x30) >> 16) & 0xff) == 5);
	CHECK(setup_mce(vcpu, MCG_CMCI_P | 8) == 0);
	CHECK(ioctl(vcpu, KVM_GET_LAPIC, &st) == 0);
	CHECK(((REG(0x30) >> 16) & 0xff) == 6);
	CHECK(REG(0x2f0) == 0x10000);
	/* Restoring the image keeps the entry; without MCG_CMCI_P it is gone again. */
	REG(0x2f0) = 0x100a9;
	CHECK(ioctl(vcpu, KVM_SET_LAPIC, &st) == 0);
	CHECK(ioctl(vcpu, KVM_GET_LAPIC, &st) == 0);
	CHECK(REG(0x2f0) == 0x100a9 && ((REG(0x30) >> 16) & 0xff) == 6);
	CHECK(setup_mce(vcpu, 8) == 0);
	CHECK(ioctl(vcpu, KVM_GET_LAPIC, &st) == 0);
	CHECK(((REG(0x30) >> 16) & 0xff) == 5);
#undef REG
	close(vcpu);
	close(vm);
	close(kvm);
}

/* The MSRs after KVM_X86_SETUP_MCE, their write rules, and corrected errors in the banks. */
TEST(mce_msrs_and_corrected_errors)
{
	int kvm = open_dev(), vm = create_vm(kvm), vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	uint64_t cap = MCG_CTL_P | MCG_SER_P | MCG_CMCI_P | 4, v;

	if (no_guests())
		SKIP("backend=none vCPUs have no MSRs");
	CHECK(msr(vcpu, MCG_CAP) == 32);
	CHECK(setup_mce(vcpu, cap) == 0);
	CHECK(msr(vcpu, MCG_CAP) == cap);
	CHECK(msr(vcpu, MCG_CTL) == ~0ull);
	for (int i = 0; i < 4; i++)
		CHECK(msr(vcpu, MC_CTL(i)) == ~0ull && msr(vcpu, MC_CTL2(i)) == 0);
	/* Bank 4 does not exist. */
	CHECK(get1(vcpu, MC_CTL(4), &v) == 0);
	CHECK(get1(vcpu, MC_CTL2(4), &v) == 0);
	CHECK(set1(vcpu, MC_CTL(4) + 2, 0) == 0);
	/* Write rules (userspace): MCG_CTL 0 or all ones, MCi_CTL likewise (bits 10 and 0 may be
	 * clear), MCi_STATUS anything, MCi_CTL2 CMCI_EN and the threshold; MCG_CAP read-only. */
	CHECK(set1(vcpu, MCG_CTL, 5) == 0);
	CHECK(set1(vcpu, MC_CTL(1), 0x1234) == 0);
	CHECK(set1(vcpu, MC_CTL(1), ~(1ull << 10)) == 1);
	CHECK(set1(vcpu, MC_CTL(1), ~0ull) == 1);
	CHECK(set1(vcpu, MC_CTL2(1), CMCI_EN | 0x7fff) == 1);
	CHECK(set1(vcpu, MC_CTL2(1), 1ull << 29) == 0);
	CHECK(set1(vcpu, MC_CTL2(1), 0) == 1);
	CHECK(set1(vcpu, MCG_CAP, cap) == 0);
	/* A corrected error is logged; a second one overwrites it, with OVER. */
	CHECK(set_mce(vcpu, 1, CE, 0, 0x1000) == 0);
	CHECK(msr(vcpu, MC_CTL(1) + 1) == CE && msr(vcpu, MC_CTL(1) + 2) == 0x1000);
	CHECK(msr(vcpu, MC_CTL(1) + 3) == 0x86);
	CHECK(set_mce(vcpu, 1, CE | 1, 0, 0x2000) == 0);
	CHECK(msr(vcpu, MC_CTL(1) + 1) == (CE | 1 | MCI_OVER) && msr(vcpu, MC_CTL(1) + 2) == 0x2000);
	CHECK(set1(vcpu, MC_CTL(1) + 1, 0) == 1);
	close(vcpu);
	close(vm);
	close(kvm);
}

/*
 * An uncorrected error raises #MC (real-mode handler at 0x1900, IVT entry 18: out 0x82, al);
 * a second one while MCG_STATUS.MCIP is set shuts the vCPU down (KVM_EXIT_SHUTDOWN), as one
 * with CR4.MCE clear does; with MCG_CTL not all ones it is dropped.
 *   out 0x80, al; out 0x80, al; hlt
 */
TEST(uncorrected_error_in_the_guest)
{
	static const unsigned char code[] = { 0xe6, 0x80, 0xe6, 0x80, 0xf4 };
	static const unsigned char handler[] = { 0xe6, 0x82, 0xf4 };
	struct real_vm v = { 0 };
	struct kvm_sregs s;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	memcpy(v.mem + 0x1900, handler, sizeof(handler));
	*(uint32_t *)(v.mem + 18 * 4) = 0x1900;
	CHECK(setup_mce(v.vcpu, MCG_CTL_P | MCG_SER_P | 4) == 0);
	CHECK(ioctl(v.vcpu, KVM_GET_SREGS, &s) == 0);
	s.cr4 |= CR4_MCE;
	CHECK(ioctl(v.vcpu, KVM_SET_SREGS, &s) == 0);
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_IO && v.run->io.port == 0x80);
	/* MCIP | EIPV | RIPV. */
	CHECK(set_mce(v.vcpu, 2, UC, 7, 0xabc000) == 0);
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_IO && v.run->io.port == 0x82);
	CHECK(msr(v.vcpu, MC_CTL(2) + 1) == UC && msr(v.vcpu, MC_CTL(2) + 2) == 0xabc000);
	CHECK(msr(v.vcpu, MCG_STATUS) == 7);
	CHECK(set_mce(v.vcpu, 3, UC, 7, 0) == 0);
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_SHUTDOWN);
	CHECK(msr(v.vcpu, MC_CTL(3) + 1) == 0);
	real_vm_free(&v);

	/* CR4.MCE clear: shutdown; MCG_CTL 0: dropped, the guest goes on. */
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	CHECK(setup_mce(v.vcpu, MCG_CTL_P | 4) == 0);
	CHECK(set1(v.vcpu, MCG_CTL, 0) == 1);
	CHECK(set_mce(v.vcpu, 0, UC, 5, 0) == 0);
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_IO && v.run->io.port == 0x80);
	CHECK(msr(v.vcpu, MC_CTL(0) + 1) == 0);
	CHECK(set1(v.vcpu, MCG_CTL, ~0ull) == 1);
	CHECK(set_mce(v.vcpu, 0, UC, 5, 0) == 0);
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_SHUTDOWN);
	real_vm_free(&v);
}

/*
 * A UCNA error (upstream's ucna_injection_test, without a guest): logged in its bank whether or
 * not CMCI is enabled there; with MCi_CTL2.CMCI_EN its LVT CMCI vector becomes pending in IRR.
 */
TEST(ucna_signalled_by_cmci)
{
	int kvm = open_dev(), vm = create_vm(kvm), vcpu;
	struct kvm_lapic_state st;
	const int vec = 0xa9;

	if (no_guests())
		SKIP("backend=none vCPUs have no MSRs");
	CHECK(ioctl(vm, KVM_CREATE_IRQCHIP, 0) == 0);
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	CHECK(vcpu >= 0);
	CHECK(setup_mce(vcpu, MCG_CTL_P | MCG_SER_P | MCG_CMCI_P | 8) == 0);
#define REG(off) (*(uint32_t *)&st.regs[(off)])
#define IRR_SET() ((REG(0x200 + (vec / 32) * 0x10) >> (vec % 32)) & 1)
	CHECK(ioctl(vcpu, KVM_GET_LAPIC, &st) == 0);
	REG(0xf0) = 0x1ff;
	REG(0x2f0) = vec;
	CHECK(ioctl(vcpu, KVM_SET_LAPIC, &st) == 0);
	CHECK(set_mce(vcpu, 7, UCNA, 0, 0xdeadbeef) == 0);
	CHECK(msr(vcpu, MC_CTL(7) + 2) == 0xdeadbeef);
	CHECK(ioctl(vcpu, KVM_GET_LAPIC, &st) == 0);
	CHECK(!IRR_SET());
	CHECK(set1(vcpu, MC_CTL2(7), CMCI_EN) == 1);
	CHECK(set_mce(vcpu, 7, UCNA, 0, 0xcafeb0ba) == 0);
	CHECK(msr(vcpu, MC_CTL(7) + 2) == 0xcafeb0ba && msr(vcpu, MC_CTL(7) + 1) == UCNA);
	CHECK(ioctl(vcpu, KVM_GET_LAPIC, &st) == 0);
	CHECK(IRR_SET());
#undef IRR_SET
#undef REG
	close(vcpu);
	close(vm);
	close(kvm);
}

KTAP_MAIN("rkvm mce",
	CASE(caps_and_supported),
	CASE(setup_and_set_mce_errors),
	CASE(lapic_cmci_entry),
	CASE(mce_msrs_and_corrected_errors),
	CASE(uncorrected_error_in_the_guest),
	CASE(ucna_signalled_by_cmci))

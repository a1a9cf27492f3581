// SPDX-License-Identifier: GPL-2.0
/*
 * Exits of a running guest on the VMX backend that end KVM_RUN without port I/O: a pending
 * signal (EINTR with KVM_EXIT_INTR), a triple fault (KVM_EXIT_SHUTDOWN), and VM entry with an
 * invalid guest state (KVM_EXIT_FAIL_ENTRY with the full exit reason, 0x80000021).
 * Skipped with backend=none, which enters no guest.
 *
 * Upstream references: vcpu_run / kvm_handle_signal_exit (arch/x86/kvm/x86.c),
 * handle_triple_fault and the VM-entry failure path of __vmx_handle_exit (vmx.c).
 */
#include <signal.h>
#include <sys/time.h>
#include "rkvm_util.h"

static void on_alarm(int sig)
{
	(void)sig;
}

TEST(signal_ends_run_with_eintr)
{
	static const unsigned char spin[] = { 0xeb, 0xfe }; /* jmp . */
	struct sigaction sa = { .sa_handler = on_alarm }; /* no SA_RESTART */
	struct itimerval it = { .it_value = { .tv_usec = 300000 } };
	struct kvm_regs regs;
	struct real_vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(real_vm_create(&v, spin, sizeof(spin)) == 0);
	/*
	 * The spinning guest runs with RFLAGS.IF=1. External-interrupt exiting makes host interrupts
	 * exit whatever the guest's IF (SDM 26.2), and real CPUs do so; Bochs 2.7 does not: entered
	 * with the host's IF=0 and a guest IF=0 it keeps interrupts masked and the CPU spins in the
	 * guest for ever. Interrupts never reach the guest either way (rkvm injects none here).
	 */
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0);
	regs.rflags = 0x202;
	CHECK(ioctl(v.vcpu, KVM_SET_REGS, &regs) == 0);
	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &it, NULL);
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_RUN, 0), EINTR,
		    "a signal (SIGALRM) arrives while the guest runs");
	CHECK(v.run->exit_reason == KVM_EXIT_INTR);
	/* The guest was running its loop and can be inspected. */
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0 && regs.rip == 0x1000);
	real_vm_free(&v);
}

TEST(triple_fault_is_shutdown)
{
	/* lidt [0x2000] (a zero-limit IVT), then int3: #GP, #DF, triple fault. */
	static const unsigned char tf[] = { 0x0f, 0x01, 0x1e, 0x00, 0x20, 0xcc };
	struct real_vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(real_vm_create(&v, tf, sizeof(tf)) == 0);
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0);
	CHECK(v.run->exit_reason == KVM_EXIT_SHUTDOWN);
	real_vm_free(&v);
}

TEST(invalid_guest_state_is_fail_entry)
{
	static const unsigned char hlt[] = { 0xf4 };
	struct kvm_sregs s;
	struct real_vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(real_vm_create(&v, hlt, sizeof(hlt)) == 0);
	/* An unusable TR passes KVM_SET_SREGS (as upstream) but fails the VM-entry checks. */
	CHECK(ioctl(v.vcpu, KVM_GET_SREGS, &s) == 0);
	s.tr.present = 0;
	CHECK(ioctl(v.vcpu, KVM_SET_SREGS, &s) == 0);
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0);
	CHECK(v.run->exit_reason == KVM_EXIT_FAIL_ENTRY);
	CHECK(v.run->fail_entry.hardware_entry_failure_reason == 0x80000021);
	/* Fixing the state makes the vCPU runnable again. */
	s.tr.present = 1;
	CHECK(ioctl(v.vcpu, KVM_SET_SREGS, &s) == 0);
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0);
	CHECK(v.run->exit_reason == KVM_EXIT_HLT);
	real_vm_free(&v);
}

KTAP_MAIN("rkvm vmx_exits",
	CASE(signal_ends_run_with_eintr),
	CASE(triple_fault_is_shutdown),
	CASE(invalid_guest_state_is_fail_entry))

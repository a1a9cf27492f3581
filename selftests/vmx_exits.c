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

struct vm {
	int kvm, vm, vcpu;
	struct kvm_run *run;
	unsigned char *mem;
};

/* A VM with 64 KiB of memory at GPA 0 holding `code` at 0x1000, real mode, RIP 0x1000. */
static int make_vm(struct vm *v, const unsigned char *code, size_t len)
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

static void free_vm(struct vm *v)
{
	munmap(v->run, ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0));
	close(v->vcpu);
	close(v->vm);
	close(v->kvm);
	munmap(v->mem, 0x10000);
}

static int no_guests(void)
{
	return getenv("RKVM_BACKEND_NONE") != NULL;
}

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
	struct vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(make_vm(&v, spin, sizeof(spin)) == 0);
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
	CHECK_ERRNO(ioctl(v.vcpu, KVM_RUN, 0), EINTR);
	CHECK(v.run->exit_reason == KVM_EXIT_INTR);
	/* The guest was running its loop and can be inspected. */
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0 && regs.rip == 0x1000);
	free_vm(&v);
}

TEST(triple_fault_is_shutdown)
{
	/* lidt [0x2000] (a zero-limit IVT), then int3: #GP, #DF, triple fault. */
	static const unsigned char tf[] = { 0x0f, 0x01, 0x1e, 0x00, 0x20, 0xcc };
	struct vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(make_vm(&v, tf, sizeof(tf)) == 0);
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0);
	CHECK(v.run->exit_reason == KVM_EXIT_SHUTDOWN);
	free_vm(&v);
}

TEST(invalid_guest_state_is_fail_entry)
{
	static const unsigned char hlt[] = { 0xf4 };
	struct kvm_sregs s;
	struct vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(make_vm(&v, hlt, sizeof(hlt)) == 0);
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
	free_vm(&v);
}

KTAP_MAIN("rkvm vmx_exits",
	CASE(signal_ends_run_with_eintr),
	CASE(triple_fault_is_shutdown),
	CASE(invalid_guest_state_is_fail_entry))

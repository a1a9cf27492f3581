// SPDX-License-Identifier: GPL-2.0
/*
 * Events in the userspace-irqchip model, and the vCPU ioctls around KVM_RUN:
 * KVM_INTERRUPT with request_interrupt_window / KVM_EXIT_IRQ_WINDOW_OPEN /
 * ready_for_interrupt_injection / if_flag, KVM_NMI (virtual-NMI blocking until IRET),
 * KVM_GET/SET_VCPU_EVENTS (exception injection, interrupt shadow, NMI mask, error cases),
 * KVM_SET_SIGNAL_MASK, kvm_run->s.regs (KVM_CAP_SYNC_REGS), KVM_TRANSLATE, KVM_GET_TSC_KHZ and
 * KVM_SET_USER_MEMORY_REGION2.
 *
 * The guests run in real mode: IVT entries point at handlers that report through port I/O.
 * Upstream references (arch/x86/kvm/x86.c): kvm_vcpu_ioctl_interrupt, kvm_vcpu_ioctl_nmi,
 * post_kvm_run_save, vcpu_run's dm_request_for_irq_injection exit,
 * kvm_vcpu_ioctl_x86_{get,set}_vcpu_events; kvm_vcpu_ioctl_set_sigmask (kvm_main.c).
 */
#include <signal.h>
#include "rkvm_util.h"

/*
 * Main program at 0x1000:
 *   cli; out 0x10, al       exit 1: IF=0, not ready for injection
 *   sti; nop                the window opens after the STI shadow
 *   jmp .                   spin with IF=1
 * Handlers: 0x1100 (vector 0x20): mov al, 0x42; out 0x11, al; iret
 *           0x1200 (NMI):         out 0x12, al; iret
 *           0x1300 (#UD):         out 0x16, al; iret
 * Entry at 0x1400: pushf; push cs; push 0x1000; iret  (to the main program, flags unchanged)
 *
 * The entry's IRET is for Bochs 2.7: its VM entry sets virtual-NMI blocking when the VMCS
 * interruptibility state says so but never clears it (newer Bochs unmasks first; real CPUs load
 * the state), so a vCPU can start NMI-blocked after another guest on that CPU was left blocked
 * (the fuzzer's guests). Only a guest IRET clears it there. Without it, KVM_NMI in
 * nmi_blocked_until_iret waited for an NMI window that never came (2-CPU Bochs after rkvm-fuzz,
 * 1 of 6 boots in session 8: KVM_RUN never returned).
 */
static const unsigned char guest[] = {
	0xfa, 0xe6, 0x10, 0xfb, 0x90, 0xeb, 0xfe,
};

static int events_vm(struct real_vm *v)
{
	static const unsigned char h20[] = { 0xb0, 0x42, 0xe6, 0x11, 0xcf };
	static const unsigned char hnmi[] = { 0xe6, 0x12, 0xcf };
	static const unsigned char hud[] = { 0xe6, 0x16, 0xcf };
	static const unsigned char entry[] = { 0x9c, 0x0e, 0x68, 0x00, 0x10, 0xcf };
	struct kvm_regs regs;

	if (real_vm_create(v, guest, sizeof(guest)))
		return -1;
	memcpy(v->mem + 0x1100, h20, sizeof(h20));
	memcpy(v->mem + 0x1200, hnmi, sizeof(hnmi));
	memcpy(v->mem + 0x1300, hud, sizeof(hud));
	memcpy(v->mem + 0x1400, entry, sizeof(entry));
	/* IVT entries: offset, segment 0. */
	*(__u32 *)(v->mem + 0x20 * 4) = 0x1100;
	*(__u32 *)(v->mem + 2 * 4) = 0x1200;
	*(__u32 *)(v->mem + 6 * 4) = 0x1300;
	/* A stack below the code. */
	if (ioctl(v->vcpu, KVM_GET_REGS, &regs))
		return -1;
	regs.rsp = 0x800;
	regs.rip = 0x1400;
	return ioctl(v->vcpu, KVM_SET_REGS, &regs);
}

static int run_to_port(struct real_vm *v, int port)
{
	if (ioctl(v->vcpu, KVM_RUN, 0))
		return -1;
	if (v->run->exit_reason != KVM_EXIT_IO || v->run->io.port != port) {
		printf("# exit %u (port %u), wanted port 0x%x\n", v->run->exit_reason,
		       v->run->exit_reason == KVM_EXIT_IO ? v->run->io.port : 0, port);
		return -1;
	}
	return 0;
}

TEST(interrupt_window_then_injection)
{
	struct kvm_vcpu_events ev;
	struct kvm_interrupt irq = { .irq = 0x20 };
	struct real_vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(events_vm(&v) == 0);
	CHECK(run_to_port(&v, 0x10) == 0);
	CHECK(v.run->if_flag == 0 && v.run->ready_for_interrupt_injection == 0);
	/* Ask to be told when the guest can take an interrupt: after STI and its shadow. */
	v.run->request_interrupt_window = 1;
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0);
	CHECK(v.run->exit_reason == KVM_EXIT_IRQ_WINDOW_OPEN);
	CHECK(v.run->if_flag == 1 && v.run->ready_for_interrupt_injection == 1);
	v.run->request_interrupt_window = 0;
	CHECK(ioctl(v.vcpu, KVM_INTERRUPT, &irq) == 0);
	CHECK(ioctl(v.vcpu, KVM_GET_VCPU_EVENTS, &ev) == 0);
	CHECK(ev.interrupt.injected == 1 && ev.interrupt.nr == 0x20);
	/* Delivered through IVT entry 0x20: the handler reports 0x42 on port 0x11. */
	CHECK(run_to_port(&v, 0x11) == 0);
	CHECK(*((__u8 *)v.run + v.run->io.data_offset) == 0x42);
	CHECK(ioctl(v.vcpu, KVM_GET_VCPU_EVENTS, &ev) == 0 && ev.interrupt.injected == 0);
	/* Inside the handler IF=0 (the interrupt gate cleared it). */
	CHECK(v.run->if_flag == 0 && v.run->ready_for_interrupt_injection == 0);
	irq.irq = 256;
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_INTERRUPT, &irq), EINVAL,
		    "vector 256 with the userspace irqchip");
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_INTERRUPT, (void *)8), EFAULT, "unmapped pointer (8)");
	real_vm_free(&v);
}

TEST(interrupt_queued_early_waits_for_the_guest)
{
	struct kvm_interrupt irq = { .irq = 0x20 };
	struct kvm_regs regs;
	struct real_vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	/* Upstream injects at the next entry whatever IF says: VM entry fails (FAIL_ENTRY). */
	if (upstream())
		SKIP("rkvm-specific: upstream leaves the timing to userspace");
	CHECK(events_vm(&v) == 0);
	CHECK(run_to_port(&v, 0x10) == 0);
	/* Queued while IF=0: held back (no failed VM entry) until STI and its shadow. */
	CHECK(ioctl(v.vcpu, KVM_INTERRUPT, &irq) == 0);
	CHECK(run_to_port(&v, 0x11) == 0);
	/* It arrived at the JMP after STI; NOP: the IRET frame holds 0x1005. */
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0);
	CHECK(*(__u16 *)(v.mem + regs.rsp) == 0x1005);
	real_vm_free(&v);
}

TEST(nmi_blocked_until_iret)
{
	struct kvm_vcpu_events ev;
	struct real_vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(events_vm(&v) == 0);
	CHECK(run_to_port(&v, 0x10) == 0);
	/* NMIs do not wait for IF. */
	CHECK(ioctl(v.vcpu, KVM_NMI) == 0);
	CHECK(ioctl(v.vcpu, KVM_GET_VCPU_EVENTS, &ev) == 0 && ev.nmi.pending == 1);
	CHECK(run_to_port(&v, 0x12) == 0);
	/* In the handler: NMIs blocked until IRET. A second NMI stays pending meanwhile. */
	CHECK(ioctl(v.vcpu, KVM_GET_VCPU_EVENTS, &ev) == 0);
	CHECK(ev.nmi.masked == 1 && ev.nmi.pending == 0 && ev.nmi.injected == 0);
	CHECK(ioctl(v.vcpu, KVM_NMI) == 0);
	CHECK(ioctl(v.vcpu, KVM_GET_VCPU_EVENTS, &ev) == 0 && ev.nmi.pending == 1);
	/* IRET unblocks: the second NMI is delivered at once (NMI-window exit). */
	CHECK(run_to_port(&v, 0x12) == 0);
	CHECK(ioctl(v.vcpu, KVM_GET_VCPU_EVENTS, &ev) == 0 && ev.nmi.pending == 0 && ev.nmi.masked == 1);
	/* Let the handler IRET (the guest then stops at its interrupt window): NMIs unblocked. */
	v.run->request_interrupt_window = 1;
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_IRQ_WINDOW_OPEN);
	CHECK(ioctl(v.vcpu, KVM_GET_VCPU_EVENTS, &ev) == 0 && ev.nmi.masked == 0);
	real_vm_free(&v);
}

TEST(vcpu_events_inject_an_exception)
{
	struct kvm_vcpu_events ev;
	struct real_vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(events_vm(&v) == 0);
	CHECK(run_to_port(&v, 0x10) == 0);
	CHECK(ioctl(v.vcpu, KVM_GET_VCPU_EVENTS, &ev) == 0);
	CHECK(ev.flags & KVM_VCPUEVENT_VALID_SHADOW);
	/* nmi.masked too: the entry's IRET cleared any stale Bochs blocking (events_vm). */
	CHECK(ev.exception.injected == 0 && ev.interrupt.injected == 0 && ev.nmi.masked == 0);
	ev.exception.injected = 1;
	ev.exception.nr = 6;
	CHECK(ioctl(v.vcpu, KVM_SET_VCPU_EVENTS, &ev) == 0);
	memset(&ev, 0, sizeof(ev));
	CHECK(ioctl(v.vcpu, KVM_GET_VCPU_EVENTS, &ev) == 0);
	CHECK(ev.exception.injected == 1 && ev.exception.nr == 6 && ev.exception.has_error_code == 0);
	/* #UD is delivered through IVT entry 6. */
	CHECK(run_to_port(&v, 0x16) == 0);
	CHECK(ioctl(v.vcpu, KVM_GET_VCPU_EVENTS, &ev) == 0 && ev.exception.injected == 0);
	/* The interrupt shadow and the NMI mask round-trip. */
	ev.flags = KVM_VCPUEVENT_VALID_SHADOW;
	ev.interrupt.shadow = KVM_X86_SHADOW_INT_MOV_SS;
	ev.nmi.masked = 1;
	CHECK(ioctl(v.vcpu, KVM_SET_VCPU_EVENTS, &ev) == 0);
	memset(&ev, 0, sizeof(ev));
	CHECK(ioctl(v.vcpu, KVM_GET_VCPU_EVENTS, &ev) == 0);
	CHECK(ev.interrupt.shadow == KVM_X86_SHADOW_INT_MOV_SS && ev.nmi.masked == 1);
	/* Unmasked again before the VM goes (see above; no entry happens in between). */
	ev.nmi.masked = 0;
	CHECK(ioctl(v.vcpu, KVM_SET_VCPU_EVENTS, &ev) == 0);
	real_vm_free(&v);
}

TEST(vcpu_events_bad_input)
{
	int kvm = open_dev(), vm = create_vm(kvm), vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	struct kvm_vcpu_events ev = { 0 };

	CHECK(vcpu >= 0);
	/* Payloads and triple-fault events are not enabled; unknown flags are refused. */
	ev.flags = KVM_VCPUEVENT_VALID_PAYLOAD;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_VCPU_EVENTS, &ev), EINVAL,
		    "KVM_VCPUEVENT_VALID_PAYLOAD without KVM_CAP_EXCEPTION_PAYLOAD enabled");
	ev.flags = KVM_VCPUEVENT_VALID_TRIPLE_FAULT;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_VCPU_EVENTS, &ev), EINVAL,
		    "KVM_VCPUEVENT_VALID_TRIPLE_FAULT without KVM_CAP_X86_TRIPLE_FAULT_EVENT enabled");
	ev.flags = 1u << 30;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_VCPU_EVENTS, &ev), EINVAL, "unknown flag bit 30");
	/* Exception vectors above 31, and NMI as an exception. */
	ev.flags = 0;
	ev.exception.injected = 1;
	ev.exception.nr = 32;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_VCPU_EVENTS, &ev), EINVAL, "exception vector 32");
	ev.exception.nr = 2;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_VCPU_EVENTS, &ev), EINVAL, "exception vector 2 (NMI)");
	/* No SMM: the SMM flag only with nothing in SMM. */
	memset(&ev, 0, sizeof(ev));
	ev.flags = KVM_VCPUEVENT_VALID_SMM;
	ev.smi.smm = 1;
	if (!upstream()) /* upstream kernels built with CONFIG_KVM_SMM accept it */
		CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_VCPU_EVENTS, &ev), EINVAL,
			    "KVM_VCPUEVENT_VALID_SMM with smi.smm = 1 (rkvm: no SMM)");
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_VCPU_EVENTS, (void *)8), EFAULT, "unmapped pointer (8)");
	if (!no_guests()) /* backend=none has no events: EINVAL first */
		CHECK_ERRNO_WHY(ioctl(vcpu, KVM_GET_VCPU_EVENTS, (void *)8), EFAULT,
			    "unmapped pointer (8)");
	if (!no_guests() && !upstream()) {
		ev.smi.smm = 0;
		CHECK(ioctl(vcpu, KVM_SET_VCPU_EVENTS, &ev) == 0);
	}
	close(vcpu);
	close(vm);
	close(kvm);
}

static volatile int got_usr1;

static void on_usr1(int sig)
{
	(void)sig;
	got_usr1 = 1;
}

TEST(signal_mask_applies_during_run)
{
	struct sigaction sa = { .sa_handler = on_usr1 };
	struct { struct kvm_signal_mask m; __u64 set; } mask = { { .len = 8 }, 0 };
	sigset_t usr1, pending;
	struct real_vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(events_vm(&v) == 0);
	/* Errors: a sigset of the wrong size, an unreadable argument. */
	mask.m.len = 4;
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_SET_SIGNAL_MASK, &mask), EINVAL, "sigset length 4 (not 8)");
	mask.m.len = 8;
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_SET_SIGNAL_MASK, (void *)8), EFAULT, "unmapped pointer (8)");
	/* SIGUSR1 blocked in the thread and pending. */
	sigaction(SIGUSR1, &sa, NULL);
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);
	raise(SIGUSR1);
	/* Without a vCPU mask the thread's mask holds: the guest runs to its first exit. */
	CHECK(run_to_port(&v, 0x10) == 0);
	/* With an empty vCPU mask, SIGUSR1 is deliverable inside KVM_RUN: EINTR at once. */
	CHECK(ioctl(v.vcpu, KVM_SET_SIGNAL_MASK, &mask) == 0);
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_RUN, 0), EINTR,
		    "signal unblocked by the vCPU's mask arrives during KVM_RUN");
	CHECK(v.run->exit_reason == KVM_EXIT_INTR);
	/* The thread's own mask is back, so the signal is still pending, not delivered. */
	CHECK(sigpending(&pending) == 0 && sigismember(&pending, SIGUSR1) && !got_usr1);
	/* A NULL mask turns the vCPU mask off again: the guest runs (to its window exit). */
	CHECK(ioctl(v.vcpu, KVM_SET_SIGNAL_MASK, NULL) == 0);
	v.run->request_interrupt_window = 1;
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_IRQ_WINDOW_OPEN);
	pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
	CHECK(got_usr1);
	real_vm_free(&v);
}

TEST(tsc_khz)
{
	int kvm = open_dev(), vm = create_vm(kvm), vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	long vm_khz = ioctl(vm, KVM_GET_TSC_KHZ, 0), vcpu_khz = ioctl(vcpu, KVM_GET_TSC_KHZ, 0);

	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_GET_TSC_KHZ) == 1);
	printf("# TSC: %ld kHz\n", vcpu_khz);
	CHECK(vm_khz > 0 && vm_khz == vcpu_khz);
	close(vcpu);
	close(vm);
	close(kvm);
}

TEST(user_memory_region2)
{
	int kvm = open_dev(), vm = create_vm(kvm);
	void *mem = mmap(NULL, 0x4000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct kvm_userspace_memory_region2 r = {
		.slot = 3, .guest_phys_addr = 0x100000, .memory_size = 0x4000,
		.userspace_addr = (__u64)mem,
	};
	struct kvm_userspace_memory_region r1 = { .slot = 4, .guest_phys_addr = 0x102000,
						  .memory_size = 0x1000, .userspace_addr = (__u64)mem };

	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY2) == 1);
	CHECK(ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &r) == 0);
	/* The same slots as KVM_SET_USER_MEMORY_REGION: an overlap is refused. */
	CHECK_ERRNO_WHY(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r1), EEXIST,
		    "range overlapping a slot made by KVM_SET_USER_MEMORY_REGION2");
	/* No private memory in a default VM: KVM_MEM_GUEST_MEMFD is an invalid flag. */
	r.slot = 5;
	r.guest_phys_addr = 0x200000;
	r.flags = KVM_MEM_GUEST_MEMFD;
	CHECK_ERRNO_WHY(ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &r), EINVAL,
		    "KVM_MEM_GUEST_MEMFD flag (no guest_memfd)");
	r.flags = 0;
	CHECK_ERRNO_WHY(ioctl(vm, KVM_SET_USER_MEMORY_REGION2, (void *)8), EFAULT,
		    "unmapped pointer (8)");
	/* Deleted through the old ioctl. */
	r1.slot = 3;
	r1.memory_size = 0;
	CHECK(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r1) == 0);
	munmap(mem, 0x4000);
	close(vm);
	close(kvm);
}

TEST(sync_regs)
{
	struct real_vm v;
	__u8 *data;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(ioctl(open_dev(), KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS) ==
	      (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS));
	CHECK(events_vm(&v) == 0);
	/* Parts not offered are refused. */
	v.run->kvm_valid_regs = 1 << 5;
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_RUN, 0), EINVAL,
		    "kvm_run->kvm_valid_regs bit 5 (not offered)");
	v.run->kvm_valid_regs = 0;
	v.run->kvm_dirty_regs = 1 << 5;
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_RUN, 0), EINVAL,
		    "kvm_run->kvm_dirty_regs bit 5 (not offered)");
	v.run->kvm_dirty_regs = 0;
	/* Stored after the run: registers, segments, events. */
	v.run->kvm_valid_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS;
	CHECK(run_to_port(&v, 0x10) == 0);
	/* RIP stays on the OUT until the next KVM_RUN completes it (as upstream). */
	CHECK(v.run->s.regs.regs.rip == 0x1001 && v.run->s.regs.regs.rsp == 0x800);
	CHECK(v.run->s.regs.sregs.cs.base == 0 && (v.run->s.regs.sregs.cr0 & 1) == 0);
	CHECK(v.run->s.regs.events.flags & KVM_VCPUEVENT_VALID_SHADOW);
	/*
	 * Loaded before the run when marked dirty: back to the CLI before the OUT, with another
	 * AL. RIP moved, so the pending OUT is not completed (no skip), as upstream.
	 */
	v.run->s.regs.regs.rip = 0x1000;
	v.run->s.regs.regs.rax = 0x77;
	v.run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
	CHECK(run_to_port(&v, 0x10) == 0);
	data = (__u8 *)v.run + v.run->io.data_offset;
	CHECK(*data == 0x77 && v.run->kvm_dirty_regs == 0);
	/* Dirty sregs go through KVM_SET_SREGS' checks: CR0.PG without PE is refused. */
	v.run->s.regs.sregs.cr0 |= 0x80000000;
	v.run->kvm_dirty_regs = KVM_SYNC_X86_SREGS;
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_RUN, 0), EINVAL,
		    "dirty sync sregs with CR0.PG without CR0.PE");
	real_vm_free(&v);
}

TEST(translate)
{
	struct kvm_translation t = { .linear_address = 0x1234 };
	struct kvm_sregs s;
	struct real_vm v;

	if (no_guests())
		SKIP("backend=none has no guest paging");
	CHECK(events_vm(&v) == 0);
	/* Real mode: linear = physical. */
	CHECK(ioctl(v.vcpu, KVM_TRANSLATE, &t) == 0);
	CHECK(t.valid == 1 && t.physical_address == 0x1234);
	/* 32-bit paging with a 4 MiB page: 0x400000.. maps to 0; 0x800000 is not present. */
	*(__u32 *)(v.mem + 0x3000 + 1 * 4) = 0x0 | 0x83; /* P, RW, PS */
	CHECK(ioctl(v.vcpu, KVM_GET_SREGS, &s) == 0);
	s.cr0 |= 0x80000001;
	s.cr3 = 0x3000;
	s.cr4 |= 0x10; /* PSE */
	CHECK(ioctl(v.vcpu, KVM_SET_SREGS, &s) == 0);
	t.linear_address = 0x401234;
	CHECK(ioctl(v.vcpu, KVM_TRANSLATE, &t) == 0);
	CHECK(t.valid == 1 && t.physical_address == 0x1234 && t.writeable == 1 && t.usermode == 0);
	t.linear_address = 0x801234;
	CHECK(ioctl(v.vcpu, KVM_TRANSLATE, &t) == 0 && t.valid == 0);
	CHECK_ERRNO_WHY(ioctl(v.vcpu, KVM_TRANSLATE, (void *)8), EFAULT, "unmapped pointer (8)");
	real_vm_free(&v);
}

KTAP_MAIN("rkvm events",
	CASE(interrupt_window_then_injection),
	CASE(interrupt_queued_early_waits_for_the_guest),
	CASE(nmi_blocked_until_iret),
	CASE(vcpu_events_inject_an_exception),
	CASE(vcpu_events_bad_input),
	CASE(signal_mask_applies_during_run),
	CASE(sync_regs),
	CASE(translate),
	CASE(tsc_khz),
	CASE(user_memory_region2))

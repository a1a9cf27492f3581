// SPDX-License-Identifier: GPL-2.0
/*
 * Reproducers of what userspace/rkvm-fuzz found, one case each, smallest form: each names the
 * fuzz seed that found it. They must pass (and leave no kernel splat: vm-run.py checks the
 * console) on rkvm, and the same calls pass against the kernel's KVM (RKVM_DEV=/dev/kvm).
 */
#include <errno.h>
#include <linux/hw_breakpoint.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/syscall.h>
#include "rkvm_util.h"

/*
 * A coalesced-MMIO zone whose end wraps past 2^64 (upstream accepts it: only `pio` is checked),
 * then an unregister of a range inside it. rkvm computed the zone's end with an overflowing add:
 * with CONFIG_RUST_OVERFLOW_CHECKS, a kernel BUG (Rust panic "attempt to add with overflow") in
 * `Zone::contains`. Upstream's `coalesced_mmio_in_range` wraps: the range is not "inside" the
 * zone, which stays registered; both calls return 0.
 */
TEST(coalesced_zone_wrapping_the_address_space)
{
	int kvm = open_dev(), vm = create_vm(kvm);
	struct kvm_coalesced_mmio_zone z = { .addr = 0xfffffffffffff000ull, .size = 0x2000 };
	struct kvm_coalesced_mmio_zone inside = { .addr = 0xfffffffffffff800ull, .size = 8 };

	CHECK(vm >= 0);
	CHECK(ioctl(vm, KVM_REGISTER_COALESCED_MMIO, &z) == 0);
	CHECK(ioctl(vm, KVM_UNREGISTER_COALESCED_MMIO, &inside) == 0);
	/* The same for a port-I/O zone, and an unregister of exactly the zone. */
	z.pio = 1;
	inside.pio = 1;
	CHECK(ioctl(vm, KVM_REGISTER_COALESCED_MMIO, &z) == 0);
	CHECK(ioctl(vm, KVM_UNREGISTER_COALESCED_MMIO, &inside) == 0);
	CHECK(ioctl(vm, KVM_UNREGISTER_COALESCED_MMIO, &z) == 0);
	close(vm);
	close(kvm);
}

static volatile uint32_t watched;
static volatile sig_atomic_t sigtraps;

static void on_sigtrap(int sig)
{
	(void)sig;
	sigtraps++;
}

/* Writes `watched`; returns how many times the watchpoint fired so far. */
static long long poke(int fd)
{
	long long n = -1;

	watched++;
	if (read(fd, &n, sizeof(n)) != sizeof(n))
		return -1;
	return n;
}

/*
 * A guest that single-steps (RFLAGS.TF, its #DB handler IRETs) took its #DBs natively, and each
 * set DR6.BS in the CPU's DR6, which rkvm left there: the host's next #DB (here a perf write
 * watchpoint) found BS set, and the kernel sent the process a SIGTRAP for a single step it never
 * asked for (seen as host_integrity dying of SIGTRAP after a fuzz run: rkvm-fuzz --seed 1 --count
 * 8000 in 1-CPU Bochs). Upstream intercepts #DB, so a guest never writes the host's DR6.
 */
TEST(guest_single_step_leaves_host_dr6_clean)
{
	/* 0x1000: nop; nop; nop; out 0x80, al; hlt. 0x1100: iret (the #DB handler). */
	static const unsigned char code[] = { 0x90, 0x90, 0x90, 0xe6, 0x80, 0xf4 };
	struct perf_event_attr a = {
		.type = PERF_TYPE_BREAKPOINT, .size = sizeof(a), .bp_type = HW_BREAKPOINT_W,
		.bp_addr = (uintptr_t)&watched, .bp_len = HW_BREAKPOINT_LEN_4,
		.sample_period = 1, .exclude_kernel = 1, .exclude_hv = 1,
	};
	struct real_vm v = { 0 };
	struct kvm_regs regs;
	cpu_set_t set;
	int fd;

	if (no_guests())
		SKIP("backend=none enters no guest");
	/* One CPU: DR6 is per CPU. */
	CPU_ZERO(&set);
	CPU_SET(0, &set);
	CHECK(sched_setaffinity(0, sizeof(set), &set) == 0);
	signal(SIGTRAP, on_sigtrap);
	fd = syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
	if (fd < 0)
		SKIP("no hardware breakpoints (perf_event_open: %s)", strerror(errno));
	if (poke(fd) != 1 || sigtraps) {
		close(fd);
		SKIP("the watchpoint does not fire cleanly even without a guest");
	}
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	/* Real-mode IVT: vector 1 at 0000:1100. */
	v.mem[4] = 0x00;
	v.mem[5] = 0x11;
	v.mem[6] = v.mem[7] = 0;
	v.mem[0x1100] = 0xcf;
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0);
	regs.rflags |= 0x100;
	CHECK(ioctl(v.vcpu, KVM_SET_REGS, &regs) == 0);
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0);
	CHECK(v.run->exit_reason == KVM_EXIT_IO && v.run->io.port == 0x80);
	/* The host's next #DB: the watchpoint, and nothing else. */
	CHECK(poke(fd) == 2);
	CHECK(sigtraps == 0);
	if (sigtraps)
		printf("# %d SIGTRAP(s) after the guest single-stepped\n", (int)sigtraps);
	real_vm_free(&v);
	close(fd);
	signal(SIGTRAP, SIG_DFL);
}

KTAP_MAIN("rkvm fuzz_regressions",
	  CASE(coalesced_zone_wrapping_the_address_space),
	  CASE(guest_single_step_leaves_host_dr6_clean))

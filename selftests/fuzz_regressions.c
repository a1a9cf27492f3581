// SPDX-License-Identifier: GPL-2.0
/*
 * Reproducers of what userspace/rkvm-fuzz found, one case each, smallest form: each names the
 * fuzz seed that found it. They must pass (and leave no kernel splat: vm-run.py checks the
 * console) on rkvm, and the same calls pass against the kernel's KVM (RKVM_DEV=/dev/kvm).
 */
#include <errno.h>
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

KTAP_MAIN("rkvm fuzz_regressions",
	  CASE(coalesced_zone_wrapping_the_address_space))

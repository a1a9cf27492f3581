# SPDX-License-Identifier: GPL-2.0
#
# rkvm top-level Makefile. The two commands a newcomer needs:
#
#   make demo    build everything, boot Bochs (emulated VMX), insmod rkvm, run the demo guest
#   make check   build everything and run every test (host unit tests, QEMU and Bochs VMs)
#
# Both install what is missing first (scripts/deps.sh) and reuse the cached test kernel.
# `make bench` (same prerequisites) boots Bochs once and measures exit costs, VM lifecycle and
# kernel memory of rkvm and then of the kernel's kvm_intel, side by side (scripts/bench.sh).
# `make upstream-selftests` runs the kernel's own KVM selftests (selftests/upstream/list) against
# rkvm and then kvm_intel in one Bochs boot and prints a table (scripts/upstream-selftests.sh).
# Kbuild (not this file) describes the module itself; this file wraps `make -C $KDIR M=$PWD`.

SHELL := /bin/bash
TOP := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
ENV := source $(TOP)/scripts/env.sh

# The VM runner's knobs (see scripts/vm-run.py --help).
EMULATOR ?= qemu
CPUS ?= 1
RUN ?= true
EXTRA ?=
MODARGS ?=
TIMEOUT ?=

.PHONY: all deps kernel module userspace selftests hosttest demo check bench vm-run clean \
	upstream-selftests-build upstream-selftests fuzz

all: module userspace selftests

deps:
	@$(TOP)/scripts/deps.sh

# The cached test kernel; prints nothing when warm.
kernel: deps
	@$(TOP)/scripts/kernel.sh >/dev/null

# KDIR: the kernel build tree to build against (default: the cached test kernel).
module: kernel
	@$(ENV); kdir=$${KDIR:-$$($(TOP)/scripts/kernel.sh)/linux}; \
	  say "module: building rkvm.ko against $$kdir"; \
	  $(MAKE) -C $$kdir $$(kmake_args) M=$(TOP) modules

userspace: deps
	@$(ENV); say "userspace: cargo build --release (static)"; \
	  cd $(TOP)/userspace && cargo build --release --quiet

selftests: kernel
	@$(ENV); kdir=$$($(TOP)/scripts/kernel.sh); \
	  $(MAKE) -s -C $(TOP)/selftests KHDR=$$kdir/usr/include

# Host unit tests of the pure files of the module (no kernel needed).
hosttest:
	@cd $(TOP)/rust/tests && cargo test --quiet

vm-run: module userspace selftests
	@python3 $(TOP)/scripts/vm-run.py --emulator $(EMULATOR) --cpus $(CPUS) \
	  $(if $(MODARGS),--modargs '$(MODARGS)') --run '$(RUN)' $(if $(EXTRA),--extra $(EXTRA)) \
	  $(if $(TIMEOUT),--timeout $(TIMEOUT))

demo: module userspace selftests
	@$(TOP)/scripts/demo.sh

check: module userspace selftests upstream-selftests-build
	@$(TOP)/scripts/check.sh

bench: module userspace selftests
	@$(TOP)/scripts/bench.sh

# The ioctl fuzzer (userspace/rkvm-fuzz) in a VM, then rmmod and a kmemleak scan:
#   make fuzz [EMULATOR=qemu|vmx] [COUNT=ioctls] [SECONDS=s] [SEED=n] [THREADS=n] [CPUS=n]
fuzz: module userspace selftests
	@EMULATOR=$(EMULATOR) COUNT=$(COUNT) FUZZ_SECONDS=$(SECONDS) SEED=$(SEED) THREADS=$(THREADS) \
	  CPUS=$(CPUS) $(TOP)/scripts/fuzz.sh

# The kernel's KVM selftests, static, cached under ~/.cache/rkvm/kvm-selftests-*; prints nothing when warm.
upstream-selftests-build: kernel
	@$(TOP)/scripts/upstream-selftests.sh build >/dev/null

upstream-selftests: module upstream-selftests-build
	@$(TOP)/scripts/upstream-selftests.sh run

clean:
	@$(ENV); kdir=$$($(TOP)/scripts/kernel.sh 2>/dev/null)/linux; \
	  [ -d $$kdir ] && $(MAKE) -s -C $$kdir M=$(TOP) clean || true
	rm -rf $(TOP)/userspace/target $(TOP)/rust/tests/target $(TOP)/selftests/build

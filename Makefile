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
# `make errno-table` regenerates the README's table of bad inputs and their errnos from what the
# selftests verify (scripts/errno-table.sh: one QEMU and one Bochs boot; FROM=build/check reuses
# the logs of a `make check`).
# Kbuild (not this file) describes the module itself; this file wraps `make -C $KDIR M=$PWD`.
#
# KERNEL=base|debug picks the test kernel flavour (scripts/kernel.sh; kernel/rkvm-debug.config:
# KASAN, lockdep, ...) for `kernel`, `module`, `vm-run`, `demo`, `bench`. rkvm.ko of the base
# kernel is built here in the checkout (./rkvm.ko); that of another flavour in its own copy of the
# module sources, build/kmod-FLAVOUR/ (Kbuild in 6.12 writes objects next to the sources of an M=
# build, so one tree cannot hold two kernels' objects), giving build/kmod-FLAVOUR/rkvm.ko.
# `make check` builds and uses both.

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
KERNEL ?= base
# The VM runner (also under demo.sh and bench.sh) boots this flavour.
export RKVM_KERNEL := $(KERNEL)
# Where `make module` builds: the checkout itself for the base kernel, a synced copy otherwise.
KMOD_DIR = $(if $(filter base,$(1)),$(TOP),$(TOP)/build/kmod-$(1))
# The module's sources (what Kbuild reads), synced into build/kmod-FLAVOUR/.
KMOD_SRC := Kbuild Kconfig rust uapi

.PHONY: all deps kernel module module-debug splat-canary hoststate hoststate-debug userspace selftests hosttest demo check bench vm-run clean \
	upstream-selftests-build upstream-selftests fuzz errno-table

all: module userspace selftests

deps:
	@$(TOP)/scripts/deps.sh

# The cached test kernel (flavour $(KERNEL)); prints nothing when warm.
kernel: deps
	@$(TOP)/scripts/kernel.sh $(KERNEL) >/dev/null

# KDIR: the kernel build tree to build against (default: the cached test kernel of $(KERNEL)).
module: kernel
	@$(ENV); kdir=$${KDIR:-$$($(TOP)/scripts/kernel.sh $(KERNEL))/linux}; \
	  out=$(call KMOD_DIR,$(KERNEL)); \
	  if [ "$$out" != $(TOP) ]; then \
	    mkdir -p $$out && cd $(TOP) && rsync -a --delete --exclude target --exclude '*.o' \
	      --exclude '.*.cmd' --exclude '*.d' --exclude bindings_generated.rs \
	      --exclude '*.rmeta' --exclude '*.a' $(KMOD_SRC) $$out/ || exit 1; \
	  fi; \
	  say "module: building $$out/rkvm.ko against $$kdir"; \
	  $(MAKE) -C $$kdir $$(kmake_args) M=$$out modules

# rkvm.ko for the debug kernel (build/kmod-debug/rkvm.ko), as `make check` needs it.
module-debug: deps
	@$(MAKE) --no-print-directory module KERNEL=debug

# selftests/splat: a module that prints one real kernel report on demand (KASAN, lockdep, ...),
# for the check that the VM runner's splat scan catches each format; debug kernel only.
splat-canary: deps
	@$(ENV); kdir=$$($(TOP)/scripts/kernel.sh debug)/linux; out=$(TOP)/build/splat-debug; \
	  mkdir -p $$out && rsync -a $(TOP)/selftests/splat/Kbuild $(TOP)/selftests/splat/rkvm_splat.c $$out/ && \
	  $(MAKE) -s -C $$kdir $$(kmake_args) M=$$out modules

# selftests/hoststate: a module whose parameter file shows each CPU's control registers, DR6/DR7,
# descriptor tables and host MSRs, compared before and after the fuzzer's guests; for the
# kernel flavour $(KERNEL) (hoststate-debug: the debug kernel's).
hoststate: kernel
	@$(ENV); kdir=$$($(TOP)/scripts/kernel.sh $(KERNEL))/linux; out=$(TOP)/build/hoststate-$(KERNEL); \
	  mkdir -p $$out && rsync -a $(TOP)/selftests/hoststate/Kbuild $(TOP)/selftests/hoststate/rkvm_hoststate.c $$out/ && \
	  $(MAKE) -s -C $$kdir $$(kmake_args) M=$$out modules

hoststate-debug: deps
	@$(MAKE) --no-print-directory hoststate KERNEL=debug

userspace: deps
	@$(ENV); say "userspace: cargo build --release (static)"; \
	  cd $(TOP)/userspace && cargo build --release --quiet

selftests: kernel
	@$(ENV); kdir=$$($(TOP)/scripts/kernel.sh $(KERNEL)); \
	  $(MAKE) -s -C $(TOP)/selftests KHDR=$$kdir/usr/include

# Host unit tests of the pure files of the module (no kernel needed).
hosttest:
	@cd $(TOP)/rust/tests && cargo test --quiet

vm-run: module userspace selftests
	@python3 $(TOP)/scripts/vm-run.py --kernel $(KERNEL) --emulator $(EMULATOR) --cpus $(CPUS) \
	  $(if $(MODARGS),--modargs '$(MODARGS)') --run '$(RUN)' $(if $(EXTRA),--extra $(EXTRA)) \
	  $(if $(TIMEOUT),--timeout $(TIMEOUT))

demo: module userspace selftests
	@$(TOP)/scripts/demo.sh

# The debug stage (kernel/rkvm-debug.config) needs the debug kernel and its rkvm.ko; CHECK_ONLY of
# another stage skips building them. Its other stages use the base kernel whatever KERNEL says.
check: override KERNEL := base
check: module userspace selftests hoststate upstream-selftests-build $(if $(filter-out debug,$(CHECK_ONLY)),,module-debug splat-canary hoststate-debug)
	@$(TOP)/scripts/check.sh

bench: module userspace selftests
	@$(TOP)/scripts/bench.sh

# The ioctl fuzzer (userspace/rkvm-fuzz) in a VM, then rmmod and a kmemleak scan; on the debug
# kernel unless KERNEL=base is given:
#   make fuzz [EMULATOR=qemu|vmx] [COUNT=ioctls] [SECONDS=s] [SEED=n] [THREADS=n] [CPUS=n] [KERNEL=base]
fuzz: override KERNEL := $(if $(filter command line environment,$(origin KERNEL)),$(KERNEL),debug)
fuzz: module userspace selftests hoststate
	@RKVM_KERNEL=$(KERNEL) EMULATOR=$(EMULATOR) COUNT=$(COUNT) FUZZ_SECONDS=$(SECONDS) SEED=$(SEED) THREADS=$(THREADS) \
	  CPUS=$(CPUS) $(TOP)/scripts/fuzz.sh

# The README's "Bad input and its errno" table from the selftests' passed CHECK_ERRNO_WHYs.
errno-table: override KERNEL := base
errno-table: $(if $(FROM),,module userspace selftests)
	@FROM=$(FROM) $(TOP)/scripts/errno-table.sh

# The kernel's KVM selftests, static, cached under ~/.cache/rkvm/kvm-selftests-*; prints nothing when warm.
upstream-selftests-build: kernel
	@$(TOP)/scripts/upstream-selftests.sh build >/dev/null

upstream-selftests: module upstream-selftests-build
	@$(TOP)/scripts/upstream-selftests.sh run

clean:
	@$(ENV); kdir=$$($(TOP)/scripts/kernel.sh 2>/dev/null)/linux; \
	  [ -d $$kdir ] && $(MAKE) -s -C $$kdir M=$(TOP) clean || true
	rm -rf $(TOP)/userspace/target $(TOP)/rust/tests/target $(TOP)/selftests/build

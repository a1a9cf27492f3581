# Common environment for rkvm's scripts (sourced, not executed).
# Everything that names a tool version or a cache path lives here, so the Makefile,
# the kernel build, the module build and the VM runner agree.

RKVM_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RKVM_CACHE=${RKVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rkvm}
# The kernel side must use Debian's rustc (rustc-web, with rust-web-src as its
# library source); rustup's toolchain has no rust-src.
KRUSTC=/usr/bin/rustc
BINDGEN_VERSION=0.71.1
BINDGEN=${CARGO_HOME:-$HOME/.cargo}/bin/bindgen
KLLVM=-19
export LIBCLANG_PATH=/usr/lib/llvm-19/lib

# make arguments for anything built against the test kernel
kmake_args() {
    echo "LLVM=$KLLVM RUSTC=$KRUSTC HOSTRUSTC=$KRUSTC BINDGEN=$BINDGEN"
}

# Print a progress line (stderr) so long steps are visibly alive.
say() { printf '[rkvm] %s\n' "$*" >&2; }

# VM-side shell around a fuzz run for the host-state probe (selftests/hoststate: CR0/CR4/EFER,
# GDT/IDT/TR, DR6/DR7 and host MSRs of every CPU; the VM needs --extra
# build/hoststate-<kernel>/rkvm_hoststate.ko). hoststate_before: load the probe, first reading.
# hoststate_after N VAR: second reading, KTAP line N saying whether both are equal, VAR=1 in the
# VM if not.
HOSTSTATE=/sys/module/rkvm_hoststate/parameters/state
hoststate_before() { echo "insmod /extra/rkvm_hoststate.ko && cat $HOSTSTATE > /tmp/host-before;"; }
hoststate_after() {
  echo "if cat $HOSTSTATE > /tmp/host-after && [ -s /tmp/host-before ] && cmp -s /tmp/host-before /tmp/host-after; then \
    echo 'ok $1 - host registers unchanged on every CPU after fuzzing'; \
  else echo 'not ok $1 - host registers changed by fuzzing'; diff /tmp/host-before /tmp/host-after | sed 's/^/# /'; $2=1; fi;"
}

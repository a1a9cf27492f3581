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

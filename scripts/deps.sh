#!/usr/bin/env bash
# Install what rkvm needs on a Debian 12 machine, only what is missing (idempotent).
set -euo pipefail
. "$(dirname "$0")/env.sh"

PKGS=(
  linux-source-6.12 rustc-web rust-web-src
  clang-19 lld-19 llvm-19 libclang-19-dev
  qemu-system-x86 bochs bochsbios vgabios busybox-static
  isolinux syslinux-common xorriso cpio
  make gcc libc6-dev binutils bc flex bison libelf-dev libssl-dev kmod python3 xz-utils util-linux
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" \
    | grep --line-buffered -E '^(Setting up|Unpacking|Get:)' | sed -u 's/^/[apt] /' || true
  for p in "${missing[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
      || { say "package $p failed to install"; exit 1; }
  done
fi

if ! command -v cargo >/dev/null; then
  say "cargo is needed (rustup toolchain or Debian cargo)"; exit 1
fi
if [ "$("$BINDGEN" --version 2>/dev/null | awk '{print $2}')" != "$BINDGEN_VERSION" ]; then
  say "installing bindgen-cli $BINDGEN_VERSION with cargo (a few minutes)"
  cargo install bindgen-cli --version "$BINDGEN_VERSION" --locked 2>&1 \
    | grep --line-buffered -E 'Compiling|Installed|error' | sed -u 's/^/[cargo] /'
  [ "$("$BINDGEN" --version | awk '{print $2}')" = "$BINDGEN_VERSION" ]
fi
say "dependencies present"

#!/usr/bin/env bash
# Build (once) and cache the rkvm test kernel; print its build directory on stdout.
#
#   scripts/kernel.sh [base|...]
#
# The cache lives outside the checkout, under $RKVM_CACHE (default ~/.cache/rkvm), in a
# directory named by a key made of every input: the linux-source package version, the
# config fragment(s), rustc, bindgen and clang versions, and this script. A warm call
# returns at once; an interrupted build resumes where make stopped.
set -euo pipefail
. "$(dirname "$0")/env.sh"

flavour=${1:-base}
frags=("$RKVM_TOP/kernel/rkvm-test.config")
if [ "$flavour" != base ]; then
  frags+=("$RKVM_TOP/kernel/rkvm-$flavour.config")
fi

RECIPE=1
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.12)
key=$( {
  echo "$srcver"; cat "${frags[@]}"; "$KRUSTC" --version; "$BINDGEN" --version
  clang$KLLVM --version | head -1; echo "recipe $RECIPE"
} | sha256sum | cut -c1-16)
dir="$RKVM_CACHE/kernel-$flavour-$key"

if [ -f "$dir/.done" ]; then
  echo "$dir"; exit 0
fi

mkdir -p "$dir"
# One build at a time per cache entry: a second caller waits for the first and reuses its result.
exec 9>"$dir/.lock"
if ! flock -n 9; then
  say "kernel: another build of $dir is running; waiting for it"
  flock 9
fi
if [ -f "$dir/.done" ]; then
  echo "$dir"; exit 0
fi
src="$dir/linux"
if [ ! -f "$src/.extracted" ]; then
  say "kernel: extracting linux-source $srcver into $src"
  rm -rf "$src"; mkdir -p "$src"
  tar -xf /usr/src/linux-source-6.12.tar.xz -C "$src" --strip-components=1
  touch "$src/.extracted"
fi

km() { make -C "$src" $(kmake_args) "$@"; }
if [ ! -f "$src/.configured" ]; then
  say "kernel: configuring (tinyconfig + ${frags[*]##*/})"
  km -s tinyconfig
  "$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "${frags[@]}" >/dev/null
  km -s olddefconfig
  # Every option the fragments set must have survived olddefconfig.
  bad=0
  while read -r line; do
    case "$line" in
      CONFIG_*=*) grep -qx "$line" "$src/.config" || { say "config: $line did not stick"; bad=1; } ;;
      "# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}
         ! grep -q "^$opt=" "$src/.config" || { say "config: $opt should be unset"; bad=1; } ;;
    esac
  done < <(cat "${frags[@]}")
  [ $bad = 0 ] || exit 1
  touch "$src/.configured"
fi

say "kernel: building bzImage + modules in $src (~5-6 min on 2 idle cores, base or debug; log: $dir/build.log)"
start=$(date +%s)
( km -j"$(nproc)" bzImage modules > "$dir/build.log" 2>&1; echo $? > "$dir/build.rc" ) &
pid=$!
while kill -0 $pid 2>/dev/null; do
  sleep 20
  n=$(grep -cE '^\s+(CC|RUSTC|LD|AR|AS)' "$dir/build.log" || true)
  say "kernel: $(( $(date +%s) - start ))s, $n objects, last: $(tail -1 "$dir/build.log" | cut -c1-70)"
done
wait $pid || true
if [ "$(cat "$dir/build.rc")" != 0 ]; then
  tail -30 "$dir/build.log" >&2; say "kernel build failed"; exit 1
fi
km -s INSTALL_HDR_PATH="$dir/usr" headers_install
cp "$src/arch/x86/boot/bzImage" "$dir/bzImage"
echo "$key" > "$dir/.done"
# Older cache entries (other keys) are not reused: drop them to save disk (~1.5 GiB each).
for old in "$RKVM_CACHE"/kernel-"$flavour"-*; do
  [ "$old" = "$dir" ] || { say "kernel: removing stale cache $old"; rm -rf "$old"; }
done
say "kernel: built in $(( $(date +%s) - start ))s"
echo "$dir"

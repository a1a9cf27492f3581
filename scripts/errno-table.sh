#!/usr/bin/env bash
# `make errno-table`: regenerates the README's table "Bad input and its errno" from the rows the
# selftests verify (scripts/errno-table.py). Boots the two runs make check takes them from, the
# selftests only, with RKVM_ERRNO_LOG=1: QEMU with 2 CPUs and backend=none, and the VMX emulator
# (Bochs here) with 1 CPU and backend=vmx. FROM=DIR takes the logs of a make check instead
# (DIR/qemu-selftests.log and DIR/bochs-vmx-1cpu.log, e.g. FROM=build/check).
set -uo pipefail
. "$(dirname "$0")/env.sh"
cd "$RKVM_TOP"
if [ -n "${FROM:-}" ]; then
  logs=("$FROM/qemu-selftests.log" "$FROM/bochs-vmx-1cpu.log")
else
  out=$RKVM_TOP/build/errno-table
  mkdir -p "$out"
  logs=("$out/qemu-selftests.log" "$out/bochs-vmx-1cpu.log")
  say "errno-table: selftests in QEMU (2 CPUs, backend=none)"
  python3 scripts/vm-run.py --kernel base --emulator qemu --cpus 2 --modargs backend=none \
    --run 'export RKVM_ERRNO_LOG=1; /selftests/run_tests' > "${logs[0]}" 2>&1 ||
    say "errno-table: QEMU run failed (exit $?): failed cases make no rows (log: ${logs[0]})"
  say "errno-table: selftests in Bochs (1 CPU, backend=vmx; a few minutes)"
  python3 scripts/vm-run.py --kernel base --emulator vmx --cpus 1 --modargs backend=vmx --timeout 900 \
    --run 'export RKVM_ERRNO_LOG=1; /selftests/run_tests' > "${logs[1]}" 2>&1 ||
    say "errno-table: Bochs run failed (exit $?): failed cases make no rows (log: ${logs[1]})"
fi
for l in "${logs[@]}"; do
  [ -f "$l" ] || { echo "errno-table: no $l" >&2; exit 1; }
  grep -E '^# rkvm selftests:' "$l" | sed "s|^|  $(basename "$l"): |"
done
exec python3 scripts/errno-table.py --write "${logs[@]}"

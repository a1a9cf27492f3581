#!/usr/bin/env bash
# `make errno-table`: regenerates the README's table "Bad input and its errno" from the rows the
# selftests verify (scripts/errno-table.py). Boots the two runs make check takes them from, the
# selftests only, with RKVM_ERRNO_LOG=/tmp/errno-log: QEMU with 2 CPUs and backend=none, and the
# VMX emulator (Bochs here) with 1 CPU and backend=vmx. FROM=DIR takes the logs of a make check instead
# (DIR/qemu-selftests.log and DIR/bochs-vmx-1cpu.log, e.g. FROM=build/check).
# UPSTREAM=1 also boots Bochs with the kernel's kvm_intel and runs the selftests that check errnos
# against it (RKVM_DEV=/dev/kvm RKVM_UPSTREAM=1), refreshing the table's kvm_intel column
# (selftests/errno-table-kvm_intel.txt, committed so that make check needs no such boot).
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
    --run 'export RKVM_ERRNO_LOG=/tmp/errno-log; /selftests/run_tests' > "${logs[0]}" 2>&1 ||
    say "errno-table: QEMU run failed (exit $?): failed cases make no rows (log: ${logs[0]})"
  say "errno-table: selftests in Bochs (1 CPU, backend=vmx; a few minutes)"
  python3 scripts/vm-run.py --kernel base --emulator vmx --cpus 1 --modargs backend=vmx --timeout 900 \
    --run 'export RKVM_ERRNO_LOG=/tmp/errno-log; /selftests/run_tests' > "${logs[1]}" 2>&1 ||
    say "errno-table: Bochs run failed (exit $?): failed cases make no rows (log: ${logs[1]})"
fi
if [ "${UPSTREAM:-}" = 1 ]; then
  mkdir -p build/errno-table
  ulog=build/errno-table/kvm_intel.log
  suites=$(for t in $(sed -n 's/^tests=${\*:-"\(.*\)"}$/\1/p' selftests/run_tests); do
             grep -qE 'CHECK_ERRNO_WHY|ktap_errno_log' "selftests/$t.c" && echo "$t"; done | tr '\n' ' ')
  say "errno-table: selftests against kvm_intel in Bochs (1 CPU): $suites"
  python3 scripts/vm-run.py --kernel base --emulator vmx --cpus 1 --no-load --timeout 1200 --run \
    "insmod /lib/modules/irqbypass.ko && insmod /lib/modules/kvm.ko && insmod /lib/modules/kvm-intel.ko nested=0 || exit 3; \
     export RKVM_ERRNO_LOG=/tmp/errno-log RKVM_DEV=/dev/kvm RKVM_UPSTREAM=1; /selftests/run_tests $suites" > "$ulog" 2>&1 ||
    say "errno-table: kvm_intel run exit $? (failed cases make no rows; log: $ulog)"
  grep -E '^# rkvm selftests:' "$ulog" | sed 's|^|  kvm_intel: |'
  { echo "errno-log lines of rkvm's selftests run against kvm_intel (make errno-table UPSTREAM=1; kvm_intel of the test kernel, Bochs 1 CPU, $(date -u +%F))"
    tr -d '\r' < "$ulog" | grep -E '^# errno-log: ' | LC_ALL=C sort -u; } > selftests/errno-table-kvm_intel.txt
fi
for l in "${logs[@]}"; do
  [ -f "$l" ] || { echo "errno-table: no $l" >&2; exit 1; }
  grep -E '^# rkvm selftests:' "$l" | sed "s|^|  $(basename "$l"): |"
done
exec python3 scripts/errno-table.py --write "${logs[@]}"

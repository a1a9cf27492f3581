#!/usr/bin/env bash
# `make fuzz`: runs userspace/rkvm-fuzz in a VM against rkvm, then unloads the module and scans
# for leaks. Knobs (environment, or make variables of the same name):
#
#   EMULATOR  qemu (TCG, backend=none: the ioctl surface) or vmx/bochs (backend=vmx: KVM_RUN
#             enters random guests); default qemu
#   COUNT     ioctls to issue (default 20000); FUZZ_SECONDS (make: SECONDS) bounds the time too
#   SEED      the run's seed (default 1); THREADS (default 1); CPUS (default 1)
#   RKVM_KERNEL  the test kernel flavour, debug (KASAN, lockdep, ...; make fuzz's default) or base
#
# Output is KTAP (the fuzzer's 4 checks, rmmod, host registers unchanged, kmemleak) ending in "N passed, N failed"; the
# console is saved in build/fuzz/. Exit 0 only if every check passed and the VM saw no kernel
# splat (vm-run.py fails the run on any WARNING/BUG/Oops/KASAN/lockdep line).
set -uo pipefail
. "$(dirname "$0")/env.sh"
cd "$RKVM_TOP"
emu=${EMULATOR:-qemu}
count=${COUNT:-20000}
secs=${FUZZ_SECONDS:-0}
seed=${SEED:-1}
threads=${THREADS:-1}
cpus=${CPUS:-1}
kernel=${RKVM_KERNEL:-debug}
case $emu in
  qemu) modargs=backend=none; limit=$((secs > 0 ? secs + 300 : 1800)) ;;
  vmx|bochs) modargs=backend=vmx; limit=$((secs > 0 ? secs + 600 : 3600)) ;;
  *) echo "fuzz: EMULATOR must be qemu, vmx or bochs" >&2; exit 2 ;;
esac
# kmemleak's scan did not finish within 5 minutes in 2-CPU Bochs (as in make check): 1 CPU only.
leak='/selftests/kmemleak_check || s=1'
if [ "$emu" != qemu ] && [ "$cpus" -gt 1 ]; then leak='echo "# kmemleak scan skipped: Bochs with more than 1 CPU"'; fi
[ "$kernel" = base ] || limit=$((limit * 3))  # KASAN and lockdep: the debug kernel is slower
logs=$RKVM_TOP/build/fuzz; mkdir -p "$logs"
log=$logs/fuzz-$kernel-$emu-seed$seed.log
say "fuzz: $kernel kernel, $emu ($modargs, $cpus CPU), seed $seed, count $count${secs:+, at most $secs s}, $threads thread(s); console: $log"
# Host state on every CPU (selftests/hoststate: control, debug and descriptor-table registers,
# host MSRs) before the fuzzing and after it must be the same.
python3 scripts/vm-run.py --kernel "$kernel" --emulator "$emu" --cpus "$cpus" --modargs "$modargs" --timeout "$limit" \
  --extra "build/hoststate-$kernel/rkvm_hoststate.ko" --run \
  "$(hoststate_before)
   rkvm-fuzz --seed $seed --count $count --seconds $secs --threads $threads; s=\$?
   $(hoststate_after 5 s)
   if rmmod rkvm; then echo 'ok 6 - rmmod rkvm after fuzzing'; else echo 'not ok 6 - rmmod rkvm after fuzzing'; s=1; fi
   $leak
   exit \$s" > "$log" 2>&1
rc=$?
grep -E '^(# rkvm-fuzz|# KVM_RUN|# FAILURE|# reproduce|(not )?ok [0-9]+ |not ok -)' "$log" | tr -d '\r'
p=$(tr -d '\r' < "$log" | grep -cE '^ok [0-9]+ ')
f=$(tr -d '\r' < "$log" | grep -cE '^not ok')
if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
  f=1; echo "not ok - the VM run failed (exit $rc: 124 timeout, 125 kernel splat); see $log"
  grep -E 'vm-run:' "$log" | tail -5
fi
echo "$p passed, $f failed"
[ "$rc" = 0 ] && [ "$f" = 0 ]

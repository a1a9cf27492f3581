#!/usr/bin/env bash
# `make check`: every test of rkvm, ending with the line "N passed, N failed[, N skipped]".
#
#   host   cargo test: the module's pure files (rust/tests), the userspace workspace
#   qemu   QEMU TCG, 2 CPUs, backend=none: the selftests (whole ioctl surface, lifetimes,
#          drop-in mode); and the refusal to load without VMX unless backend=none
#   bochs  Bochs (emulated VMX + EPT), backend=vmx, 1 and 2 CPUs: the demo guest (must print 4
#          and KVM_EXIT_HLT), the rust-vmm kvm-ioctls client (rkvm-kvm-ioctls-test), guests in
#          all four CPU modes and port I/O (vmx_guests), and the selftests against the VMX backend;
#          in the 1-CPU boot first a short fuzz run with KVM_RUN (rkvm-fuzz) between two reads of
#          the host-state probe, rmmod and insmod
#   fuzz   (part of the qemu stage) rkvm-fuzz, 2*10^4 ioctls with backend=none, then rmmod and
#          a kmemleak scan
#   debug  the debug kernel (kernel/rkvm-debug.config: KASAN, lockdep, atomic-sleep checks, full
#          preemption, list/object debugging): first the splat canary (each kind of report fails a
#          VM run), then the QEMU selftests and the Bochs 1-CPU run again, any report failing them
#   upstream  the kernel's own KVM selftests in 1-CPU Bochs, on rkvm and on kvm_intel, side by
#          side (scripts/upstream-selftests.sh; rkvm's results count)
#
# Every KTAP "ok"/"not ok" line and every cargo test counts; each VM run also counts as one test
# of its own (it must boot, run and exit with the expected status, with no kernel splat).
# Logs: build/check/. CHECK_ONLY=host|qemu|bochs|debug|upstream runs one stage.
set -uo pipefail
. "$(dirname "$0")/env.sh"
cd "$RKVM_TOP"
logs=$RKVM_TOP/build/check
rm -rf "$logs"; mkdir -p "$logs"
pass=0 fail=0 skip=0
start=$(date +%s)

stage() { [ -z "${CHECK_ONLY:-}" ] || [ "$CHECK_ONLY" = "$1" ]; }

count_cargo() {
  local p f
  p=$(grep -E '^test result:' "$1" | awk '{s+=$4} END {print s+0}')
  f=$(grep -E '^test result:' "$1" | awk '{s+=$6} END {print s+0}')
  if ! grep -q '^test result:' "$1"; then f=1; tail -20 "$1" >&2; fi
  pass=$((pass + p)); fail=$((fail + f))
  say "  $2: $p passed, $f failed"
}

count_ktap() {
  local p f s
  p=$(tr -d '\r' < "$1" | grep -cE '^ok [0-9]+ ')
  s=$(tr -d '\r' < "$1" | grep -cE '^ok [0-9]+ .*# SKIP')
  f=$(tr -d '\r' < "$1" | grep -cE '^not ok ')
  p=$((p - s))
  pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
  say "  $2: $p passed, $f failed, $s skipped"
  tr -d '\r' < "$1" | grep -E '^not ok ' | sed 's/^/    FAIL: /' >&2 || true
}

# vm_case NAME WANTED_STATUS vm-run-args...: one VM run, itself one test.
vm_case() {
  local name=$1 want=$2; shift 2
  local log=$logs/$name.log rc t0=$(date +%s)
  say "vm: $name"
  python3 scripts/vm-run.py "$@" > "$log" 2>&1; rc=$?
  if [ "$rc" = "$want" ]; then
    pass=$((pass + 1)); say "  ok - $name ($(( $(date +%s) - t0 )) s)"
  else
    fail=$((fail + 1)); say "  FAIL - $name: exit $rc, wanted $want (log: $log)"
    tail -25 "$log" | sed 's/^/    | /' >&2
  fi
}

# fuzz_with_probe COUNT THREADS: VM-side shell for a Bochs run (rkvm loaded with backend=vmx):
# the fuzzer entering random guests between two readings of the host-state probe, which must be
# equal (hoststate_before/after in env.sh); then rkvm unloads and loads again. Sets f=1 in the VM if any of that failed. The VM needs
# --extra build/hoststate-<kernel>/rkvm_hoststate.ko.
fuzz_with_probe() {
  echo "$(hoststate_before) rkvm-fuzz --seed 1 --count $1 --threads $2; f=\$?; $(hoststate_after 5 f) \
    if rmmod rkvm && insmod /lib/modules/rkvm.ko backend=vmx; then echo 'ok 6 - rmmod and insmod after fuzzing'; \
    else echo 'not ok 6 - rmmod and insmod after fuzzing'; f=1; fi;"
}

if stage host; then
  say "host: cargo test"
  (cd rust/tests && cargo test 2>&1) > "$logs/host-pure.log"; count_cargo "$logs/host-pure.log" "module pure files"
  (cd userspace && cargo test --release 2>&1) > "$logs/host-userspace.log"; count_cargo "$logs/host-userspace.log" "userspace"
fi

if stage qemu; then
  vm_case qemu-selftests 0 --kernel base --emulator qemu --cpus 2 --modargs backend=none --run \
    'export RKVM_ERRNO_LOG=/tmp/errno-log; test "$(nproc)" = 2 || echo "not ok - expected 2 CPUs, got $(nproc)"; rkvm-kvm-ioctls-test; /selftests/run_tests; s=$?; /selftests/kmemleak_check && exit $s'
  count_ktap "$logs/qemu-selftests.log" "selftests (QEMU, backend=none, 2 CPUs)"
  # The ioctl fuzzer (scripts/fuzz.sh runs longer ones): its four checks, rmmod, kmemleak.
  vm_case qemu-fuzz 0 --kernel base --emulator qemu --cpus 2 --modargs backend=none --run \
    'rkvm-fuzz --seed 1 --count 20000; s=$?; if rmmod rkvm; then echo "ok 5 - rmmod rkvm after fuzzing"; else echo "not ok 5 - rmmod rkvm after fuzzing"; s=1; fi; /selftests/kmemleak_check || s=1; exit $s'
  count_ktap "$logs/qemu-fuzz.log" "fuzz (QEMU, backend=none, 2*10^4 ioctls)"
  # Without VMX, the default backend refuses to load, with one clear line; backend=none loads.
  vm_case qemu-no-vmx-refusal 0 --kernel base --emulator qemu --no-load --run \
    'insmod /lib/modules/rkvm.ko 2>/dev/null && exit 1; dmesg | grep -q "rkvm: no VMX on this CPU" || exit 2; insmod /lib/modules/rkvm.ko backend=none && test -c /dev/rkvm'
fi

if stage bochs; then
  # Per-run limits well above the measured times (1 CPU ~60 s plus the fuzz run, 2 CPUs ~4 min,
  # warm; several times that on a loaded machine), so a hang fails fast instead of eating the CI
  # budget. The kmemleak scan runs in the 1-CPU boot only:
  # with 2 emulated CPUs one scan did not finish within 5 minutes.
  # The 1-CPU boot starts with a short fuzz run entering random guests (8000 ioctls, about 20 s)
  # between two reads of the host-state probe, then reloads the module (it must unload cleanly)
  # before the other tests; its kmemleak scan at the end covers the fuzz run too.
  # The 2-CPU boot has no fuzz run: with a 2-thread one first, a clean-clone CI of session 8 (after
  # the serial-drain fix in vm-run.py) printed every test's output and then neither the end
  # marker nor poweroff's message for 900 s: a hang at the end, not explained (README "Bochs 2.7
  # quirks"). `make fuzz EMULATOR=vmx CPUS=2 THREADS=2` runs it, the probe comparing both CPUs.
  for n in 1 2; do
    if [ "$n" = 1 ]; then
      pre=$(fuzz_with_probe 8000 1); leak='[ $f = 0 ] || s=1; /selftests/kmemleak_check && exit $s'
    else
      pre=''; leak='exit $s'
    fi
    vm_case "bochs-vmx-${n}cpu" 0 --emulator vmx --kernel base --cpus "$n" --modargs backend=vmx --timeout $((n * 300 + 300)) \
      --extra build/hoststate-base/rkvm_hoststate.ko --run \
      "export RKVM_ERRNO_LOG=/tmp/errno-log; $pre test \"\$(nproc)\" = $n || echo 'not ok - expected $n CPUs'; rkvm-demo > /tmp/demo.out 2>&1; cat /tmp/demo.out; \
       if [ \"\$(cat /tmp/demo.out)\" = \"\$(printf '4\nKVM_EXIT_HLT')\" ]; then echo 'ok 1 - demo guest prints 4 and KVM_EXIT_HLT'; else echo 'not ok 1 - demo guest'; fi; \
       rkvm-kvm-ioctls-test; /selftests/vmx_guests; /selftests/run_tests; s=\$?; $leak"
    count_ktap "$logs/bochs-vmx-${n}cpu.log" "demo + selftests (Bochs, backend=vmx, $n CPU)"
  done
fi

# The README's table "Bad input and its errno" (scripts/errno-table.py) against the rows this run
# verified (RKVM_ERRNO_LOG above): the union of the QEMU run and the 1-CPU Bochs run must give the
# README's table exactly; with only one of them (CHECK_ONLY=qemu|bochs), each of its rows must be
# in the README's table. A changed errno or a new CHECK_ERRNO_WHY without `make errno-table` fails.
if stage qemu || stage bochs; then
  errno_logs=()
  for l in "$logs/qemu-selftests.log" "$logs/bochs-vmx-1cpu.log"; do [ -f "$l" ] && errno_logs+=("$l"); done
  mode=--subset; [ "${#errno_logs[@]}" = 2 ] && mode=--check
  if python3 scripts/errno-table.py $mode "${errno_logs[@]}" > "$logs/errno-table.log" 2>&1; then
    pass=$((pass + 1)); say "  ok - README errno table ($(tail -1 "$logs/errno-table.log"))"
  else
    fail=$((fail + 1)); say "  FAIL - README errno table $mode (a failed case makes no rows; log: $logs/errno-table.log)"
    tail -25 "$logs/errno-table.log" | sed 's/^/    | /' >&2
  fi
fi

if stage debug; then
  # The splat canary: one boot printing a real report of each kind (selftests/splat); the run
  # must fail (125) and the runner must have named every one of them. Lockdep's and RCU's come
  # first: lockdep stops after its first report, and a KASAN report turns it off.
  log=$logs/debug-splat-canary.log t0=$(date +%s)
  say "vm: debug-splat-canary"
  python3 scripts/vm-run.py --kernel debug --emulator qemu --cpus 1 --no-load \
    --extra build/splat-debug/rkvm_splat.ko --run \
    'for w in rcu lockdep atomic warn kasan uaf; do insmod /extra/rkvm_splat.ko what=$w; done; exit 0' \
    > "$log" 2>&1; rc=$?
  missing=
  for sig in 'WARNING: CPU: .* \[rkvm_splat\]' 'BUG: KASAN: slab-out-of-bounds' 'BUG: KASAN: slab-use-after-free' \
             'WARNING: suspicious RCU usage' 'BUG: sleeping function called from invalid context' \
             'WARNING: possible circular locking dependency detected'; do
    grep -qE "^vm-run:   .*$sig" "$log" || missing="$missing; $sig"
  done
  if [ "$rc" = 125 ] && [ -z "$missing" ]; then
    pass=$((pass + 1)); say "  ok - debug-splat-canary: every report failed the run ($(( $(date +%s) - t0 )) s)"
  else
    fail=$((fail + 1)); say "  FAIL - debug-splat-canary: exit $rc (wanted 125), not caught: ${missing#; } (log: $log)"
  fi
  # Bochs: every selftest but irqchip's lapic_timer_periodic (it shows as skipped, "not selected
  # on the command line"): on this kernel in Bochs one pass of rkvm's run loop takes longer than
  # the guest's 1 ms timer period, the timer is always behind, and each entry is cancelled by the
  # kick of the expiry just re-armed at "now" (see README, "The debug kernel"), so that guest
  # never runs again.
  debug_tests=$(sed -n 's/^tests=${\*:-"\(.*\)"}$/\1/p' selftests/run_tests | sed 's/ irqchip / /')
  debug_irqchip=$(grep -o 'CASE([a-z0-9_]*)' selftests/irqchip.c | sed 's/CASE(\(.*\))/\1/' | grep -vx lapic_timer_periodic | tr '\n' ' ')
  # 20 module load cycles instead of 100 here (lifetime's RKVM_RELOADS): about 2.5 s each in
  # Bochs on this kernel; the base stages run all 100.
  vm_case debug-qemu-selftests 0 --kernel debug --emulator qemu --cpus 2 --modargs backend=none --run \
    'export RKVM_RELOADS=20; test "$(nproc)" = 2 || echo "not ok - expected 2 CPUs, got $(nproc)"; rkvm-kvm-ioctls-test; /selftests/run_tests; s=$?; /selftests/kmemleak_check && exit $s'
  count_ktap "$logs/debug-qemu-selftests.log" "selftests (debug kernel, QEMU, backend=none, 2 CPUs)"
  # The fuzzer on the debug kernel (issue 5: `make fuzz` runs there): 2*10^4 ioctls from two
  # threads sharing the fds, then rmmod and a kmemleak scan.
  vm_case debug-qemu-fuzz 0 --kernel debug --emulator qemu --cpus 2 --modargs backend=none --run \
    'rkvm-fuzz --seed 3 --count 20000 --threads 2; s=$?; if rmmod rkvm; then echo "ok 5 - rmmod rkvm after fuzzing"; else echo "not ok 5 - rmmod rkvm after fuzzing"; s=1; fi; /selftests/kmemleak_check || s=1; exit $s'
  count_ktap "$logs/debug-qemu-fuzz.log" "fuzz (debug kernel, QEMU, backend=none, 2*10^4 ioctls, 2 threads)"
  # In Bochs it first enters random guests (4000 ioctls, about 2 minutes here) with the
  # host-state probe around them, then unloads and reloads rkvm before the selftests; the final
  # kmemleak scan covers it.
  dfuzz=$(fuzz_with_probe 4000 1)
  vm_case debug-bochs-vmx-1cpu 0 --kernel debug --emulator vmx --cpus 1 --modargs backend=vmx --timeout 2700 \
    --extra build/hoststate-debug/rkvm_hoststate.ko --run \
    "export RKVM_RELOADS=20; $dfuzz rkvm-demo > /tmp/demo.out 2>&1; cat /tmp/demo.out; \
     if [ \"\$(cat /tmp/demo.out)\" = \"\$(printf '4\nKVM_EXIT_HLT')\" ]; then echo 'ok 1 - demo guest prints 4 and KVM_EXIT_HLT'; else echo 'not ok 1 - demo guest'; fi; \
     rkvm-kvm-ioctls-test; /selftests/vmx_guests; /selftests/run_tests $debug_tests; s=\$?; \
     /selftests/irqchip $debug_irqchip || s=1; [ \$f = 0 ] || s=1; /selftests/kmemleak_check && exit \$s"
  count_ktap "$logs/debug-bochs-vmx-1cpu.log" "demo + selftests (debug kernel, Bochs, backend=vmx, 1 CPU)"
fi

if stage upstream; then
  # The kernel's own KVM selftests (selftests/upstream/list), one 1-CPU Bochs boot: against rkvm
  # (drop-in /dev/kvm), then against kvm_intel. rkvm's column counts (pass / fail / skip; a test
  # listed "#~" as unable to run in Bochs counts as skipped); kvm_intel's is printed beside it for
  # comparison and not counted. The VM run itself is one more test (boots, no splat, no timeout).
  say "upstream: the kernel's KVM selftests on rkvm and on kvm_intel (one Bochs boot, ~6 min)"
  t0=$(date +%s)
  UPSTREAM_MODES="rkvm kvm_intel" scripts/upstream-selftests.sh run > "$logs/upstream.log" 2>&1; rc=$?
  table=build/upstream-selftests/table.txt
  if [ "$rc" = 0 ]; then
    pass=$((pass + 1)); say "  ok - upstream selftests VM run ($(( $(date +%s) - t0 )) s)"
  else
    fail=$((fail + 1)); say "  FAIL - upstream selftests VM run: exit $rc (log: $logs/upstream.log)"
    tail -25 "$logs/upstream.log" | sed 's/^/    | /' >&2
  fi
  # The table is written even when the VM run failed: a test the VM stopped in counts as failed.
  if [ -f "$table" ] && [ "$table" -nt "$logs" ]; then
    cp "$table" "$logs/upstream-table.txt"
    grep -v '^#' "$table" | grep -v '^upstream selftests on'
    read -r p f s < <(sed -n 's/^upstream selftests on rkvm: \([0-9]*\) passed, \([0-9]*\) failed, \([0-9]*\) skipped$/\1 \2 \3/p' "$table")
    nr=$(sed -n 's/^# (and \([0-9]*\) listed but not run in Bochs on rkvm)$/\1/p' "$table")
    s=$((s + ${nr:-0}))
    pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
    say "  upstream selftests on rkvm: $p passed, $f failed, $s skipped (kvm_intel, same boot:" \
        "$(sed -n 's/^upstream selftests on kvm_intel: //p' "$table"))"
    awk -F' *[|] *' '!/^#/ && NF == 3 && $2 ~ /^fail/ { print "    FAIL: upstream " $1 ": " $2 }' "$table" >&2
  fi
fi

say "check took $(( $(date +%s) - start ))s; logs in $logs"
line="$pass passed, $fail failed"
[ "$skip" -gt 0 ] && line="$line, $skip skipped"
echo "$line"
[ "$fail" = 0 ]

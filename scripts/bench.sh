#!/usr/bin/env bash
# `make bench`: one Bochs boot (emulated VMX, 1 CPU) runs selftests/bench against rkvm
# (backend=vmx), then unloads rkvm, loads the kernel's kvm_intel and runs it again
# (selftests/bench_run); prints the figures side by side with the rkvm/KVM ratio.
# The console goes to build/bench/bochs.log, the table also to build/bench/table.txt.
set -uo pipefail
. "$(dirname "$0")/env.sh"
cd "$RKVM_TOP"
out=$RKVM_TOP/build/bench
mkdir -p "$out"
log=$out/bochs.log
t0=$(date +%s)
say "bench: booting Bochs (emulated VMX, 1 CPU): bench against rkvm, then against kvm_intel (about half a minute)"
python3 scripts/vm-run.py --emulator bochs --cpus 1 --modargs backend=vmx --timeout 600 \
  --run 'bench_run' >"$log" 2>&1
rc=$?
if [ "$rc" != 0 ]; then
  tail -n 30 "$log" >&2
  say "bench: FAILED: the VM run exited with status $rc; see $log"
  exit 1
fi

# key unit description, in table order
figures="pio_exit_tsc|TSC/exit|userspace PIO round trip (OUT, KVM_EXIT_IO, KVM_RUN)
kernel_exit_tsc|TSC/exit|exit handled in the kernel (CPUID)
vm_lifecycle_tsc|TSC/VM|VM lifecycle (create, slot, vCPU, run to HLT, close)
vm_mem_bytes|bytes|kernel memory per VM (no slot, no vCPU)
vcpu_mem_bytes|bytes|kernel memory per vCPU (kvm_run mmapped)"

# value IMPL KEY: the figure from the log, or nothing
value() {
  awk -v impl="$1" -v key="$2" '
    { sub(/\r$/, "") }
    $1 == "BENCH-IMPL" { cur = $2; next }
    cur == impl && $1 == "BENCH" && $2 == key && $3 ~ /^[0-9]+$/ { v = $3 }
    END { if (v != "") print v }' "$log"
}

missing=0
table=$(
  printf '%-52s %-9s %10s %10s %9s\n' figure unit rkvm kvm rkvm/kvm
  while IFS='|' read -r key unit desc; do
    r=$(value rkvm "$key"); k=$(value kvm "$key")
    if [ -z "$r" ] || [ -z "$k" ]; then
      printf '%-52s %-9s %10s %10s %9s\n' "$desc" "$unit" "${r:-MISSING}" "${k:-MISSING}" -
      continue
    fi
    ratio=$(awk -v r="$r" -v k="$k" 'BEGIN { if (k > 0) printf "%.2f", r / k; else print "n/a" }')
    printf '%-52s %-9s %10s %10s %9s\n' "$desc" "$unit" "$r" "$k" "$ratio"
  done <<<"$figures"
)
grep -q MISSING <<<"$table" && missing=1

{
  echo "# rkvm vs kvm_intel, one Bochs boot ($(grep -o 'RUN-START@@ .*' "$log" | cut -d' ' -f2-))"
  echo "# TSC: L1 rdtsc (Bochs: one tick per emulated instruction), medians/means as in selftests/bench.c"
  echo "# memory: drop in free memory (MemFree + per-CPU free lists) over 32 VMs / 32 vCPUs, median of 3"
  echo "$table"
} | tee "$out/table.txt"

if [ "$missing" = 1 ]; then
  say "bench: FAILED: a figure is missing; see $log"
  exit 1
fi
say "bench: done in $(( $(date +%s) - t0 )) s; console in $log"

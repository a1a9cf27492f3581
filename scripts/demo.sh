#!/usr/bin/env bash
# `make demo`: boot a VMX-capable emulator (Bochs here; QEMU -accel kvm on a host with nested
# VMX), insmod rkvm, and run the demo client: the seed document's real-mode guest, which writes
# '0'+2+2 and '\n' to port 0x3f8 and halts. Expected output: "4" and "KVM_EXIT_HLT".
set -uo pipefail
. "$(dirname "$0")/env.sh"
cd "$RKVM_TOP"
mkdir -p build
log=$RKVM_TOP/build/demo.log
say "demo: booting a VMX guest-capable VM with rkvm (Bochs: about half a minute)"
python3 scripts/vm-run.py --emulator vmx --cpus 1 --modargs backend=vmx \
  --run 'rkvm-demo /dev/rkvm' 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
if [ "$rc" = 0 ] && grep -q '^KVM_EXIT_HLT' "$log" && grep -qx '4' "$log"; then
  say "demo: the guest ran on rkvm's VMX backend: it printed 4 and halted (KVM_EXIT_HLT)"
else
  say "demo: FAILED (exit $rc); see $log"
  exit 1
fi

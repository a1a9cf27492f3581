#!/usr/bin/env bash
# The kernel's own KVM selftests (tools/testing/selftests/kvm of the test kernel's source) against
# rkvm and against kvm_intel, side by side.
#
#   scripts/upstream-selftests.sh build   build (once) and cache the static, stripped binaries of
#                                         the tests in selftests/upstream/list; prints the cache
#                                         directory on stdout
#   scripts/upstream-selftests.sh run     build, then one Bochs boot (1 CPU) runs the list against
#                                         rkvm (drop-in /dev/kvm), then against kvm_intel; prints
#                                         the table and one summary line per implementation
#
# The cache lives outside the checkout, under $RKVM_CACHE (default ~/.cache/rkvm), in
# kvm-selftests-<key>, the key made of the linux-source version, the test names of the list, gcc's
# version and this script's recipe number (changing a test's arguments does not rebuild). The
# kernel tree is not written to: objects go to the cache (OUTPUT=), the uapi headers are the ones
# scripts/kernel.sh installed next to the tree.
#
# `run` knobs (environment): UPSTREAM_TIMEOUT per-test timeout in seconds (default 120),
# UPSTREAM_VM_TIMEOUT the whole Bochs run (default 1200; a full run takes about 5 minutes),
# UPSTREAM_TESTS (space-separated names: run only these, in list order), UPSTREAM_MODES (default
# "rkvm-nosysfs rkvm kvm_intel"; see selftests/upstream/run_upstream), UPSTREAM_MEGS the VM's RAM
# in MiB (default 2048).
# Output: build/upstream-selftests/{bochs.log,table.txt,logs/MODE/TEST.log}.
set -euo pipefail
. "$(dirname "$0")/env.sh"

RECIPE=1
LIST=$RKVM_TOP/selftests/upstream/list
RUNNER=$RKVM_TOP/selftests/upstream/run_upstream
OUT=$RKVM_TOP/build/upstream-selftests

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# The tests to build (first word of each non-comment line, and of "#~ NAME: ..." lines: listed
# but not run in Bochs), in list order.
list_tests() {
  awk '/^#~ / { n = $2; sub(/:$/, "", n); print n; next } !/^[[:space:]]*#/ && NF { print $1 }' "$LIST"
}

# Every TEST_GEN_PROGS_x86_64 entry of the Makefile must be in the list, run or excluded (#- NAME:),
# and the list must name nothing else.
check_list() {
  local mk=$1 bad=0
  local want have
  want=$(awk '$1 == "TEST_GEN_PROGS_x86_64" && ($2 == "=" || $2 == "+=") { print $3 }' "$mk" | sort)
  have=$( { list_tests; sed -n 's/^#- *\([^: ]*\):.*/\1/p' "$LIST"; } | sort)
  local dup
  dup=$(uniq -d <<<"$have")
  [ -z "$dup" ] || { say "upstream: listed twice in $LIST: $(echo $dup)"; bad=1; }
  local missing extra
  missing=$(comm -23 <(echo "$want") <(sort -u <<<"$have"))
  extra=$(comm -13 <(echo "$want") <(sort -u <<<"$have"))
  [ -z "$missing" ] || { say "upstream: in the Makefile but not in $LIST: $(echo $missing)"; bad=1; }
  [ -z "$extra" ] || { say "upstream: in $LIST but not in TEST_GEN_PROGS_x86_64: $(echo $extra)"; bad=1; }
  return $bad
}

build() {
  local kdir src kvm
  kdir=$("$RKVM_TOP/scripts/kernel.sh")
  src=$kdir/linux
  kvm=$src/tools/testing/selftests/kvm
  check_list "$kvm/Makefile"

  local srcver key dir
  srcver=$(dpkg-query -W -f='${Version}' linux-source-6.12)
  key=$( { echo "$srcver"; list_tests; gcc --version | head -1; echo "recipe $RECIPE"; } \
         | sha256sum | cut -c1-16)
  dir=$RKVM_CACHE/kvm-selftests-$key
  if [ -f "$dir/.done" ]; then
    echo "$dir"; return 0
  fi
  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  if ! flock -n 9; then
    say "upstream: another build of $dir is running; waiting for it"
    flock 9
  fi
  if [ -f "$dir/.done" ]; then
    echo "$dir"; return 0
  fi

  # uapi headers: the ones kernel.sh installed (outside the source tree); else install our own.
  local hdr=$kdir/usr
  if [ ! -f "$hdr/include/linux/kvm.h" ]; then
    hdr=$dir/usr
    say "upstream: installing uapi headers into $hdr"
    make -C "$src" $(kmake_args) -s INSTALL_HDR_PATH="$hdr" headers_install
  fi

  local tests n targets=()
  mapfile -t tests < <(list_tests)
  n=${#tests[@]}
  for t in "${tests[@]}"; do targets+=("$dir/build/$t"); done
  say "upstream: building $n KVM selftests from $kvm (static; log: $dir/build.log; about 10 s on 2 cores)"
  local start pid
  start=$(date +%s)
  # EXTRA_CFLAGS reaches both the compile and the link lines (the link rule passes CFLAGS), so
  # the Makefile's own LDFLAGS (-pthread -no-pie) stay. OUTPUT keeps every object out of the tree,
  # TMPOUT the compiler probes' scratch files.
  ( make -C "$kvm" -j"$(nproc)" OUTPUT="$dir/build" TMPOUT="$dir/tmp" INSTALL_HDR_PATH="$hdr" \
      KHDR_INCLUDES="-isystem $hdr/include" EXTRA_CFLAGS=-static "${targets[@]}" \
      > "$dir/build.log" 2>&1; echo $? > "$dir/build.rc" ) &
  pid=$!
  local tick=0
  while kill -0 $pid 2>/dev/null; do
    sleep 1
    tick=$((tick + 1))
    [ $((tick % 15)) = 0 ] && kill -0 $pid 2>/dev/null || continue
    local objs bins=0
    objs=$(find "$dir/build" -name '*.o' 2>/dev/null | wc -l)
    for t in "${targets[@]}"; do [ -x "$t" ] && bins=$((bins + 1)); done
    say "upstream: $(( $(date +%s) - start ))s, $objs objects, $bins/$n tests linked"
  done
  wait $pid || true
  if [ "$(cat "$dir/build.rc")" != 0 ]; then
    grep -E 'error|Error' "$dir/build.log" | head -20 >&2
    say "upstream: build FAILED (see $dir/build.log)"; exit 1
  fi
  local secs=$(( $(date +%s) - start ))

  rm -rf "$dir/bin"
  for t in "${tests[@]}"; do
    install -D -m 0755 "$dir/build/$t" "$dir/bin/$t"
    strip "$dir/bin/$t"
  done
  # The binaries are ~1 MiB each and mostly the same code (static glibc + libkvm): xz with a
  # dictionary larger than the whole tar packs them 25:1 (gzip's 32 KiB window only 2:1).
  say "upstream: packing $dir/kvm-selftests.tar.xz (xz, 64 MiB dictionary; ~20 s)"
  tar -C "$dir/bin" -cf - . | xz -T1 --lzma2=preset=6,dict=64MiB > "$dir/kvm-selftests.tar.xz"
  local unstripped stripped tgz
  unstripped=$(cd "$dir/build" && du -cb "${tests[@]}" | tail -1 | cut -f1)
  stripped=$(du -sb "$dir/bin" | cut -f1)
  tgz=$(stat -c %s "$dir/kvm-selftests.tar.xz")
  {
    echo "tests $n"
    echo "build_seconds $secs"
    echo "unstripped_bytes $unstripped"
    echo "stripped_bytes $stripped"
    echo "tarball_bytes $tgz"
  } > "$dir/stats"
  say "upstream: built $n tests in ${secs}s: $(mib $unstripped) MiB unstripped," \
      "$(mib $stripped) MiB stripped, $(mib $tgz) MiB as tar.xz ($dir)"
  echo "$key" > "$dir/.done"
  for old in "$RKVM_CACHE"/kvm-selftests-*; do
    [ "$old" = "$dir" ] || { say "upstream: removing stale cache $old"; rm -rf "$old"; }
  done
  echo "$dir"
}

# The console's "UPSTREAM-RESULT MODE TEST STATUS SECONDS REASON..." lines as
# MODE|TEST|STATUS|SECONDS|REASON; a test started (UPSTREAM-START) without a result is the one the
# VM stopped in: a failure.
results() {
  awk '{ sub(/\r$/, "") }
       $1 == "UPSTREAM-START" { started = $2 "|" $3 }
       $1 == "UPSTREAM-RESULT" {
         started = ""
         reason = ""; for (i = 6; i <= NF; i++) reason = reason (i > 6 ? " " : "") $i
         print $2 "|" $3 "|" $4 "|" $5 "|" reason }
       END { if (started != "") print started "|fail|-|the VM stopped during this test (no result)" }' "$1"
}

# Shorter reasons for the table: "X failed, rc: -1 errno: 25 (Inappropriate ioctl for device)"
# becomes "X failed: ENOTTY" (the logs keep the original).
shorten() {
  local args=() e
  for e in 1:EPERM 2:ENOENT 4:EINTR 6:ENXIO 7:E2BIG 9:EBADF 12:ENOMEM 14:EFAULT 16:EBUSY 17:EEXIST \
           19:ENODEV 22:EINVAL 24:EMFILE 25:ENOTTY 28:ENOSPC 38:ENOSYS 95:EOPNOTSUPP; do
    args+=(-e "s/,? rc: -?[0-9]+ errno: ${e%%:*} \([^)]*\)/: ${e#*:}/g")
  done
  sed -E "${args[@]}"
}

run() {
  local dir
  dir=$(build)
  [ -f "$RKVM_TOP/rkvm.ko" ] || { say "upstream: rkvm.ko is not built (make module)"; exit 1; }
  # Which rkvm.ko ran: the checkout may hold uncommitted changes.
  local rev
  rev=$(git -C "$RKVM_TOP" rev-parse --short HEAD 2>/dev/null || echo unknown)
  git -C "$RKVM_TOP" diff --quiet HEAD -- rust Kbuild 2>/dev/null || rev="$rev+uncommitted changes in rust/"
  local modinfo="rkvm.ko of $(date -r "$RKVM_TOP/rkvm.ko" '+%F %T'), source $rev"
  mkdir -p "$OUT"
  rm -rf "$OUT/logs"
  local log=$OUT/bochs.log
  local timeout=${UPSTREAM_TIMEOUT:-120}
  local vmtimeout=${UPSTREAM_VM_TIMEOUT:-1200}
  local modes=${UPSTREAM_MODES:-rkvm-nosysfs rkvm kvm_intel}
  local only=${UPSTREAM_TESTS:-}
  local n t
  n=$(list_tests | wc -l)
  [ -z "$only" ] || n=$(wc -w <<<"$only")
  # A name the list does not have would show as "not run": refuse it, with the list's spelling
  # when only the x86_64/ prefix differs (steal_time and system_counter_offset_test have none).
  for t in $only; do
    list_tests | grep -qxF -- "$t" && continue
    local alt
    alt=$(list_tests | grep -xF -e "x86_64/$t" -e "${t#x86_64/}" | head -1)
    echo "upstream: UPSTREAM_TESTS: no test '$t' in selftests/upstream/list${alt:+ (did you mean '$alt'?)}" >&2
    exit 2
  done
  say "upstream: one Bochs boot (1 CPU): $n tests against rkvm, then against kvm_intel" \
      "(per-test timeout ${timeout}s, whole run at most ${vmtimeout}s; console: $log)"
  local t0 rc
  t0=$(date +%s)
  set +e
  # --modargs: rkvm loaded by /init in drop-in mode, so /dev/kvm is rkvm from the start.
  # 2 GiB of RAM: dirty_log_test maps a 1 GiB test region whatever its arguments.
  # Kernel reports once kvm_intel's half began are printed but do not fail the run: that half is
  # the comparison (its guests spinning with IF=0 make Bochs starve the host: RCU stall reports).
  RKVM_BOCHS_MEGS=${UPSTREAM_MEGS:-2048} python3 "$RKVM_TOP/scripts/vm-run.py" --emulator bochs --cpus 1 --modargs 'backend=vmx devname=kvm' \
    --splats-uncounted-after '^UPSTREAM-MODE kvm_intel' --timeout "$vmtimeout" --extra "$dir/kvm-selftests.tar.xz" "$RUNNER" "$LIST" \
    --run "run_upstream -t $timeout -l /extra/list -x /extra/kvm-selftests.tar.xz $modes${only:+ -- $only}" \
    2>&1 | tee "$log" | awk -v tot="$n" '
      { sub(/\r$/, "") }
      $1 == "UPSTREAM-INFO" { printf "[rkvm] upstream: %s\n", substr($0, 15) > "/dev/stderr" }
      $1 == "UPSTREAM-MODE" { printf "[rkvm] upstream: %s\n", substr($0, 15) > "/dev/stderr"; k = 0 }
      $1 == "UPSTREAM-RESULT" { k++; printf "[rkvm] upstream: %-12s %3d/%d %-45s %s %ss\n", $2, k, tot, $3, $4, $5 > "/dev/stderr" }'
  rc=${PIPESTATUS[0]}
  set -e
  local secs=$(( $(date +%s) - t0 ))

  # Per-test logs (the runner prints each non-passing test's log tail between markers).
  awk -v out="$OUT/logs" '
    { sub(/\r$/, "") }
    $1 == "UPSTREAM-LOG-BEGIN" { f = out "/" $2 "/" $3 ".log"; gsub(/\/x86_64\//, "/x86_64-", f);
                                 system("mkdir -p \"" out "/" $2 "\""); printf "" > f; next }
    $1 == "UPSTREAM-LOG-END" { close(f); f = ""; next }
    f != "" { print > f }' "$log"

  local res
  res=$(results "$log" | shorten)
  {
    echo "# upstream KVM selftests ($(list_tests | wc -l) listed in selftests/upstream/list), one Bochs boot" \
         "($(grep -ao 'RUN-START@@ .*' "$log" | head -1 | cut -d' ' -f2- | tr -d '\r'), per-test timeout ${timeout}s)"
    echo "# rkvm: insmod rkvm.ko devname=kvm ($modinfo), /sys/module/kvm{,_intel}/parameters shimmed (run_upstream);"
    echo "# kvm_intel: insmod irqbypass.ko kvm.ko kvm-intel.ko nested=0"
    awk '{ v[$1] = $2 } END { printf "# binaries: %d static, %.1f MiB stripped, %.1f MiB as tar.xz", v["tests"],
           v["stripped_bytes"] / 1048576, v["tarball_bytes"] / 1048576 }' "$dir/stats"
    echo "$(grep -a '^UPSTREAM-INFO' "$log" | head -1 | sed 's/^UPSTREAM-INFO/; in the VM:/' | tr -d '\r')"
    printf '%-45s | %-40s | %s\n' test rkvm kvm_intel
    local t cell m
    while read -r t; do
      [ -z "$only" ] || grep -qw -- "$t" <<<"$only" || continue
      local cells=()
      for m in rkvm kvm_intel; do
        cell=$(awk -F'|' -v m="$m" -v t="$t" '$1 == m && $2 == t {
                 if ($3 == "pass") c = "pass"; else if ($3 == "notrun") c = "not run (" $5 ")"
                 else c = $3 " (" $5 ")" }
                 END { print (c == "" ? "not run" : c) }' <<<"$res")
        [ "$cell" != "not run" ] || [ "$rc" = 0 ] || cell="not run (the VM run ended early)"
        cells+=("$cell")
      done
      printf '%-45s | %-40s | %s\n' "$t" "${cells[0]}" "${cells[1]}"
    done < <(list_tests)
    for m in rkvm kvm_intel; do
      awk -F'|' -v m="$m" '$1 == m { c[$3]++ }
        END { printf "upstream selftests on %s: %d passed, %d failed, %d skipped\n", m, c["pass"], c["fail"], c["skip"]
              if (c["notrun"]) printf "# (and %d listed but not run in Bochs on %s)\n", c["notrun"], m }' <<<"$res"
    done
    if grep -q '^rkvm-nosysfs|' <<<"$res"; then
      echo "# rkvm without the /sys/module shim (what a plain drop-in run sees):"
      awk -F'|' '$1 == "rkvm-nosysfs" { c[$3 " (" $5 ")"]++ } END { for (k in c) printf "#   %d x %s\n", c[k], k }' <<<"$res"
    fi
    if grep -q '^UPSTREAM-PARAMS' "$log"; then
      echo "# module parameters read through the shim (rkvm run), besides kvm.force_emulation_prefix (every test):"
      awk '{ sub(/\r$/, "") } $1 == "UPSTREAM-PARAMS" && NF > 2 {
             s = ""; for (i = 3; i <= NF; i++) if ($i != "kvm.force_emulation_prefix") s = s " " $i
             if (s != "") printf "#   %s:%s\n", $2, s }' "$log"
    fi
  } > "$OUT/table.txt"
  cat "$OUT/table.txt"
  say "upstream: Bochs boot + run took ${secs}s (vm-run status $rc); logs of non-passing tests in $OUT/logs"
  if [ "$rc" != 0 ]; then
    tail -n 20 "$log" >&2
    say "upstream: FAILED: the VM run exited with status $rc (124: timeout, 125: kernel splat); see $log"
    exit 1
  fi
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac

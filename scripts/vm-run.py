#!/usr/bin/env python3
"""Boot the cached rkvm test kernel in an emulator, load rkvm, run a command, report.

    scripts/vm-run.py --emulator qemu|bochs|vmx --cpus N --run 'command' [--extra FILE ...]
                      [--modargs 'backend=none'] [--no-load] [--timeout S]
                      [--kernel base|debug] [--kernel-dir DIR]

(also `make vm-run EMULATOR=... CPUS=... RUN='...' EXTRA='...' MODARGS='...' KERNEL=...`)

--kernel picks the cached test kernel's flavour (scripts/kernel.sh FLAVOUR; default
$RKVM_KERNEL, else base) and the rkvm.ko built against it: ./rkvm.ko for base,
build/kmod-FLAVOUR/rkvm.ko otherwise (`make module KERNEL=FLAVOUR`). The debug flavour
(kernel/rkvm-debug.config: KASAN, lockdep, ...) runs slower: its default timeouts are 3x.

The initramfs holds busybox, /lib/modules/rkvm.ko (and upstream irqbypass.ko, kvm.ko,
kvm-intel.ko and kvm-amd.ko for side-by-side runs), the userspace binaries in /bin, the selftests in /selftests
and the EXTRA files in /extra (on PATH). /init loads rkvm with MODARGS unless --no-load, runs RUN
with `sh -c`, and prints an end marker with RUN's exit status; the runner streams the console,
stops the emulator at the marker and exits with that status.

It fails (exit 124/125) on a timeout, on the emulator dying without the marker, and on any kernel
splat printed after the kernel handed over to /init: WARNING:, BUG:, Oops, KASAN, lockdep reports,
general protection faults, panics, hung tasks, RCU stalls. The kernel boots with loglevel=4 (a
quiet console); /init raises the console level to show KERN_WARNING too before RUN, since
WARN() and some debug reports print at that level. (Bochs' CPU models make the kernel WARN
during early boot about legacy topology; that comes before /init and is not ours.)

Emulators: `qemu` (TCG; no VMX, so only backend=none makes sense there), `bochs` (emulated VMX
with EPT, model corei7_haswell_4770, or $RKVM_BOCHS_CPU), `vmx` = the fastest VMX-capable choice: QEMU with
`-accel kvm -cpu host` when this host's /dev/kvm works and the CPU has VMX, else Bochs.
$RKVM_BOCHS_MEGS sets Bochs' RAM (default 512 MiB).
$RKVM_CMDLINE_EXTRA is appended to the Bochs kernel command line (for experiments, e.g.
`clearcpuid=monitor`).
"""

import argparse
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "@@RKVM-VM-RUN-EXIT@@"
# Bochs' CPU model: Haswell has VMX with EPT, unrestricted guest and VPID, and XSAVE (x87, SSE,
# AVX) that the kernel accepts. (corei7_skylake_x's XSAVE sizes are inconsistent: the kernel
# WARNs and runs without XSAVE, so XCR0 switching would go untested.)
BOCHS_CPU = "corei7_haswell_4770"
START = "@@RKVM-VM-RUN-START@@"
SPLAT = re.compile(
    r"WARNING:|BUG:|Oops|KASAN|possible recursive locking|possible circular locking|"
    r"inconsistent lock state|lockdep is turned off|DEBUG_LOCKS_WARN_ON|general protection|"
    r"Kernel panic|kernel BUG|UBSAN|unreferenced object|segfault at .* in rkvm|"
    r"blocked for more than|detected stalls?|stack-protector|ODEBUG|list_(add|del) corruption"
)
# A stack frame of a backtrace ("[ 12.3]  ? lockdep_hardirqs_on+0x86/0x110"): never a splat by
# itself (the report it belongs to has its own header line), and function names would match.
FRAME = re.compile(r"^\[[ 0-9.]+\]\s+(\? )?[\w.$]+\+0x[0-9a-f]+/0x[0-9a-f]+")

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
# kmemleak's periodic scan of all memory takes minutes under emulation: scans are explicit
# (selftests/kmemleak_check).
mount -t debugfs none /sys/kernel/debug 2>/dev/null && \
    [ -e /sys/kernel/debug/kmemleak ] && echo scan=off > /sys/kernel/debug/kmemleak
export PATH=/extra:/bin:/selftests HOME=/tmp
. /etc/vm-run.env
echo "@@RKVM-VM-RUN-START@@ $(uname -r) cpus=$(nproc)"
# From here on the console shows KERN_WARNING and above (WARN(), lockdep, ODEBUG), for the
# runner's splat scan; the boot stays quiet (loglevel=4).
echo 5 > /proc/sys/kernel/printk
status=0
if [ "$LOAD" = 1 ]; then
    insmod /lib/modules/rkvm.ko $MODARGS || { echo "vm-run: insmod rkvm.ko $MODARGS failed"; dmesg | tail -5; status=99; }
fi
if [ $status = 0 ]; then
    sh /etc/vm-run.cmd
    status=$?
fi
# Let the serial port drain before the marker and the power-off: Bochs' UART sends about 900
# bytes per second of guest time, and the tty can still hold KBs of a burst that ended just now
# (a fixed 2 s here lost the last lines and the marker after a 6 KB burst). Waits until the
# UART's transmit count (/proc/tty/driver/serial) stops moving, at most about a minute.
drain() {
    prev=none; i=0
    while [ $i -lt 200 ]; do
        cur=$(sed -n 's/.*tx:\([0-9]*\).*/\1/p' /proc/tty/driver/serial 2>/dev/null | head -1)
        [ "$cur" = "$prev" ] && break
        prev=$cur; i=$((i + 1)); sleep 0.3
    done
}
drain
echo "@@RKVM-VM-RUN-EXIT@@ $status"
drain
sleep 0.2
poweroff -f
"""


def log(msg):
    print(f"vm-run: {msg}", file=sys.stderr, flush=True)


def kernel_dir(args):
    if args.kernel_dir:
        return args.kernel_dir
    out = subprocess.run([os.path.join(TOP, "scripts/kernel.sh"), args.kernel], check=True,
                         stdout=subprocess.PIPE, text=True).stdout.strip()
    return out.splitlines()[-1]


def module_path(flavour):
    """rkvm.ko built against the kernel of this flavour (see the Makefile's `module`)."""
    if flavour == "base":
        return os.path.join(TOP, "rkvm.ko")
    return os.path.join(TOP, "build", f"kmod-{flavour}", "rkvm.ko")


def host_kvm_usable():
    """Whether this host can run QEMU with -accel kvm for VMX guests (nested VMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            if " vmx" not in f.read():
                return False
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    try:
        KVM_CREATE_VM = 0xAE01
        vm = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        os.close(vm)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def build_initramfs(work, kdir, args):
    root = os.path.join(work, "root")
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc", "lib/modules", "selftests", "extra"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    ko = module_path(args.kernel)
    if os.path.exists(ko):
        shutil.copy(ko, os.path.join(root, "lib/modules"))
    elif not args.no_load:
        sys.exit(f"vm-run: {ko} is not built (make module KERNEL={args.kernel})")
    for m in ["arch/x86/kvm/kvm.ko", "arch/x86/kvm/kvm-intel.ko", "arch/x86/kvm/kvm-amd.ko",
              "virt/lib/irqbypass.ko"]:
        p = os.path.join(kdir, "linux", m)
        if os.path.exists(p):
            shutil.copy(p, os.path.join(root, "lib/modules"))
    rel = os.path.join(TOP, "userspace/target/release")
    for b in ["rkvm-run", "rkvm-demo", "rkvm-kvm-ioctls-test", "rkvm-fuzz"]:
        if os.path.exists(os.path.join(rel, b)):
            shutil.copy(os.path.join(rel, b), os.path.join(root, "bin"))
    st = os.path.join(TOP, "selftests/build")
    if os.path.isdir(st):
        for f in os.listdir(st):
            shutil.copy(os.path.join(st, f), os.path.join(root, "selftests"))
    for e in args.extra:
        if not os.path.exists(e):
            sys.exit(f"vm-run: EXTRA file {e} does not exist")
        shutil.copy(e, os.path.join(root, "extra"))
    with open(os.path.join(root, "init"), "w") as f:
        f.write(INIT)
    os.chmod(os.path.join(root, "init"), 0o755)
    with open(os.path.join(root, "etc/vm-run.env"), "w") as f:
        f.write(f"LOAD={0 if args.no_load else 1}\nMODARGS={shlex.quote(args.modargs)}\n")
    with open(os.path.join(root, "etc/vm-run.cmd"), "w") as f:
        f.write(args.run + "\n")
    # The debug kernel unpacks a gzip'ed initramfs slowly (inflate under KASAN: 19 s of 25 s to
    # /init in QEMU TCG, ~100 s in Bochs): it gets it uncompressed.
    gz = os.environ.get("RKVM_INITRD_GZIP", "1" if args.kernel == "base" else "0") == "1"
    img = os.path.join(work, "initramfs.cpio" + (".gz" if gz else ""))
    subprocess.run(f"cd {shlex.quote(root)} && find . | cpio -o -H newc --quiet {'| gzip -1 ' if gz else ''}> {shlex.quote(img)}",
                   shell=True, check=True)
    return img


CMDLINE = "console=ttyS0 panic=-1 loglevel=4 printk.time=1"
# Bochs: its ACPI tables leave the serial port's interrupt undelivered (long output stalls);
# without ACPI the kernel uses Bochs' MP table, which describes its CPUs and IRQs correctly.
# (QEMU needs ACPI: its MP table lists only the first CPU.)


def cmdline(args):
    # The debug kernel: every KASAN report, not only the first (the run fails on the first anyway;
    # the others say more).
    return CMDLINE + ("" if args.kernel == "base" else " kasan_multi_shot")


def qemu_cmd(kdir, img, args, kvm):
    cmd = ["qemu-system-x86_64", "-m", "1G", "-smp", str(args.cpus), "-nographic", "-no-reboot",
           "-kernel", os.path.join(kdir, "bzImage"), "-initrd", img, "-append", cmdline(args)]
    if kvm:
        cmd += ["-accel", "kvm", "-cpu", "host"]
    else:
        cmd += ["-accel", "tcg", "-cpu", "max"]
    return cmd, None


def bochs_cmd(kdir, img, args, work):
    iso = os.path.join(work, "iso")
    os.makedirs(os.path.join(iso, "isolinux"))
    shutil.copy("/usr/lib/ISOLINUX/isolinux.bin", os.path.join(iso, "isolinux"))
    shutil.copy("/usr/lib/syslinux/modules/bios/ldlinux.c32", os.path.join(iso, "isolinux"))
    shutil.copy(os.path.join(kdir, "bzImage"), os.path.join(iso, "vmlinuz"))
    shutil.copy(img, os.path.join(iso, "initrd.gz"))
    with open(os.path.join(iso, "isolinux/isolinux.cfg"), "w") as f:
        f.write(f"default linux\nprompt 0\nlabel linux\n  kernel /vmlinuz\n"
                f"  append initrd=/initrd.gz {cmdline(args)} acpi=off {os.environ.get('RKVM_CMDLINE_EXTRA', '')}\n")
    isofile = os.path.join(work, "boot.iso")
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", isofile, "-b", "isolinux/isolinux.bin",
                    "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4",
                    "-boot-info-table", iso], check=True, stderr=subprocess.DEVNULL)
    serial = os.path.join(work, "serial.out")
    rc = os.path.join(work, "bochsrc")
    with open(rc, "w") as f:
        f.write(f"""megs: {os.environ.get("RKVM_BOCHS_MEGS", "512")}
cpu: model={os.environ.get("RKVM_BOCHS_CPU", BOCHS_CPU)}, count={args.cpus}, ips=50000000
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest
ata0-master: type=cdrom, path={isofile}, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev={serial}
display_library: rfb, options="timeout=0"
sound: driver=dummy
log: {os.path.join(work, 'bochs.log')}
clock: sync=none
""")
    cont = os.path.join(work, "cont")
    with open(cont, "w") as f:
        f.write("c\n")
    return ["bochs", "-q", "-f", rc, "-rc", cont], serial


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--emulator", default="qemu", choices=["qemu", "bochs", "vmx"])
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--run", default="true")
    ap.add_argument("--extra", nargs="*", default=[])
    ap.add_argument("--modargs", default=None,
                    help="rkvm.ko parameters (default: backend=none under QEMU TCG, backend=vmx otherwise)")
    ap.add_argument("--no-load", action="store_true")
    ap.add_argument("--timeout", type=int, default=0, help="seconds (default 300 qemu, 900 bochs)")
    ap.add_argument("--kernel", default=os.environ.get("RKVM_KERNEL") or "base",
                    help="test kernel flavour: base or debug (default $RKVM_KERNEL, else base)")
    ap.add_argument("--kernel-dir", help="a kernel cache directory (bzImage, linux/) instead")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--splats-uncounted-after", metavar="REGEX",
                    help="kernel reports after the first console line matching REGEX are shown but do "
                         "not fail the run (upstream-selftests.sh: the kvm_intel comparison half)")
    args = ap.parse_args()
    args.extra = [e for x in args.extra for e in x.split()]

    kdir = kernel_dir(args)
    emulator = args.emulator
    kvm = False
    if emulator == "vmx":
        kvm = host_kvm_usable()
        emulator = "qemu" if kvm else "bochs"
        log(f"VMX guests run in {'QEMU -accel kvm -cpu host (nested VMX)' if kvm else 'Bochs (emulated VMX + EPT)'}")
    timeout = args.timeout or (300 if emulator == "qemu" else 900) * (1 if args.kernel == "base" else 3)
    if args.modargs is None:
        args.modargs = "backend=none" if emulator == "qemu" and not kvm else "backend=vmx"

    work = tempfile.mkdtemp(prefix="rkvm-vm-")
    t0 = time.time()
    try:
        img = build_initramfs(work, kdir, args)
        if emulator == "qemu":
            cmd, serial = qemu_cmd(kdir, img, args, kvm)
        else:
            cmd, serial = bochs_cmd(kdir, img, args, work)
        status = run(cmd, serial, timeout, args.splats_uncounted_after)
    finally:
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    log(f"{emulator} ({args.cpus} CPU{'s' if args.cpus > 1 else ''}) boot+run took {time.time() - t0:.1f} s")
    sys.exit(status)


def run(cmd, serial, timeout, uncounted_after=None):
    """Runs the emulator; streams its console; returns RUN's status or a failure code."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE if serial is None else subprocess.DEVNULL,
                            stderr=subprocess.STDOUT if serial is None else subprocess.DEVNULL)
    lines = []
    done = threading.Event()

    def reader():
        if serial is None:
            buf = b""
            for chunk in iter(lambda: proc.stdout.read1(4096), b""):
                buf += chunk
                *complete, buf = buf.split(b"\n")
                for l in complete:
                    lines.append(l.decode(errors="replace").rstrip("\r"))
            if buf:
                lines.append(buf.decode(errors="replace"))
        else:
            pos, buf = 0, b""
            while not done.is_set():
                try:
                    with open(serial, "rb") as f:
                        f.seek(pos)
                        data = f.read()
                        pos += len(data)
                except FileNotFoundError:
                    data = b""
                buf += data
                *complete, buf = buf.split(b"\n")
                for l in complete:
                    lines.append(l.decode(errors="replace").rstrip("\r"))
                if not data:
                    if proc.poll() is not None:
                        break
                    time.sleep(0.2)
        done.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    deadline = time.time() + timeout
    shown, started, status, splats, ignored, uncounted = 0, False, None, [], [], False
    while True:
        while shown < len(lines):
            l = lines[shown]
            shown += 1
            print(l, flush=True)
            if START in l:
                started = True
            elif MARKER in l:
                # Anywhere in the line: a kernel message can precede it on the same line (the
                # console prints printk output between two writes of the tty's).
                status = int(l.split(MARKER, 1)[1].split()[0])
            elif uncounted_after and not uncounted and re.search(uncounted_after, l):
                uncounted = True
            elif started and SPLAT.search(l) and not FRAME.search(l):
                (ignored if uncounted else splats).append(l)
        if status is not None:
            break
        if done.is_set() and shown >= len(lines):
            break
        if time.time() > deadline:
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    done.set()
    if status is None:
        if time.time() > deadline:
            log(f"FAIL: timeout after {timeout} s without the end marker")
        else:
            log("FAIL: the emulator stopped without the end marker")
        return 124
    if ignored:
        log(f"kernel reports after /{uncounted_after}/, shown and not counted:")
        for s in ignored:
            log(f"  {s}")
    if splats:
        log("FAIL: kernel splat on the console:")
        for s in splats:
            log(f"  {s}")
        return 125
    return status


if __name__ == "__main__":
    main()

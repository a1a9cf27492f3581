//! rkvm-fuzz: a seeded ioctl fuzzer of /dev/rkvm (or any KVM device).
//!
//! ```text
//! rkvm-fuzz [--seed N] [--count IOCTLS] [--seconds S] [--threads N] [--device PATH]
//!           [--run | --no-run] [--no-kvm-run] [--trace | --trace-from IOCTL]
//! ```
//!
//! Random but structured sequences over the device, VM and vCPU fds (see `fuzz.rs` and the
//! ioctl table in `table.rs`), bounded by `--count` ioctls and/or `--seconds`, with progress
//! lines and a per-ioctl errno histogram. Afterwards it closes every fd it holds and checks that
//! the module still works (a VM, a vCPU, a tiny real-mode guest doing OUT and HLT; with
//! `backend=none` KVM_RUN must answer ENOEXEC) and that no fd is left open. Output is KTAP; exit
//! 0 only if every check passed. A call that stays in the kernel for a minute despite the
//! watchdog's signals is a hang: reported, exit 3. `--run`/`--no-run` say whether guests can be
//! entered (default: rkvm's `backend` parameter); `--no-kvm-run` never calls KVM_RUN.
//!
//! Single-threaded runs (the default) issue exactly the same ioctls with the same arguments for
//! the same seed; `--trace` prints each one. With `--threads N` each thread's choices are still
//! seeded, but which objects exist when a thread picks one depends on the interleaving.

mod fuzz;
mod gens;
mod guest;
mod rng;
mod sys;
mod table;

use fuzz::{Ctx, Hist, Shared, Watch};
use table::On;
use std::ffi::CString;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sys::{errno, errno_name, PAGE};

/// A call in the kernel longer than this gets SIGUSR1 (again every KICK).
const KICK: Duration = Duration::from_millis(20);
/// A call still in the kernel after this long is a hang.
const HANG: Duration = Duration::from_secs(60);

struct Opts {
    seed: u64,
    count: u64,
    seconds: u64,
    threads: usize,
    device: String,
    can_run: Option<bool>,
    no_kvm_run: bool,
    trace_from: u64,
}

fn usage() -> ! {
    eprintln!("usage: rkvm-fuzz [--seed N] [--count IOCTLS] [--seconds S] [--threads N] [--device PATH] [--run|--no-run] [--no-kvm-run] [--trace | --trace-from IOCTL]");
    std::process::exit(2)
}

fn parse() -> Opts {
    let mut o = Opts {
        seed: 1,
        count: 10_000,
        seconds: 0,
        threads: 1,
        device: std::env::var("RKVM_DEV").unwrap_or_else(|_| "/dev/rkvm".into()),
        can_run: None,
        no_kvm_run: false,
        trace_from: u64::MAX,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let num = |args: &mut std::iter::Skip<std::env::Args>| -> u64 {
            let v = args.next().unwrap_or_else(|| usage());
            let v = v.trim();
            let r = if let Some(h) = v.strip_prefix("0x") { u64::from_str_radix(h, 16) } else { v.parse() };
            r.unwrap_or_else(|_| usage())
        };
        match a.as_str() {
            "--seed" => o.seed = num(&mut args),
            "--count" => o.count = num(&mut args),
            "--seconds" => o.seconds = num(&mut args),
            "--threads" => o.threads = num(&mut args).clamp(1, 16) as usize,
            "--device" => o.device = args.next().unwrap_or_else(|| usage()),
            "--run" => o.can_run = Some(true),
            "--no-run" => o.can_run = Some(false),
            "--no-kvm-run" => o.no_kvm_run = true,
            "--trace" => o.trace_from = 0,
            "--trace-from" => o.trace_from = num(&mut args),
            _ => usage(),
        }
    }
    o
}

extern "C" fn on_kick(_: libc::c_int) {}

extern "C" fn on_crash(sig: libc::c_int) {
    let msg: &[u8] = if sig == libc::SIGBUS { b"\nnot ok - rkvm-fuzz got SIGBUS (a vCPU mapping page the kernel refused?)\n" } else { b"\nnot ok - rkvm-fuzz got SIGSEGV\n" };
    // SAFETY: async-signal-safe calls only.
    unsafe {
        libc::write(1, msg.as_ptr().cast(), msg.len());
        libc::_exit(70);
    }
}

fn install_signals() {
    // SAFETY: installing handlers; `on_kick` does nothing (it only interrupts a system call:
    // no SA_RESTART), `on_crash` makes only async-signal-safe calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
        sa.sa_sigaction = on_crash as *const () as usize;
        libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}

/// Raw ioctl for the set-up and the final check (not counted).
fn raw(fd: i32, cmd: u64, arg: u64) -> Result<i64, i32> {
    // SAFETY: an ioctl on our own fd with an integer or a pointer to a live local.
    let r = unsafe { libc::ioctl(fd, cmd as libc::Ioctl, arg as usize) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as i64)
    }
}

fn cmd(name: &str, on: On) -> u64 {
    table::DEFS.iter().find(|d| d.name == name && d.on == on).unwrap().cmd
}

fn open_dev(path: &CString) -> Result<i32, String> {
    // SAFETY: open(2) of a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        Err(format!("open {}: {}", path.to_string_lossy(), errno_name(errno())))
    } else {
        Ok(fd)
    }
}

/// Whether the module can enter guests: rkvm's `backend` parameter, when it is rkvm.
fn detect_run() -> bool {
    match std::fs::read_to_string("/sys/module/rkvm/parameters/backend") {
        Ok(b) => b.trim() != "none",
        Err(_) => std::env::var_os("RKVM_BACKEND_NONE").is_none(),
    }
}

/// After fuzzing: a fresh VM and vCPU, and a real-mode guest that does `out 0x3f8, '4'; hlt`.
fn module_works(path: &CString, mmap_size: usize, can_run: bool, no_kvm_run: bool) -> Result<String, String> {
    let e = |what: &str, e: i32| format!("{what}: {}", errno_name(e));
    let dev = open_dev(path)?;
    let mut fds = vec![dev];
    let result = (|| {
        let v = raw(dev, cmd("KVM_GET_API_VERSION", On::Dev), 0).map_err(|x| e("KVM_GET_API_VERSION", x))?;
        if v != 12 {
            return Err(format!("API version {v}"));
        }
        let vm = raw(dev, cmd("KVM_CREATE_VM", On::Dev), 0).map_err(|x| e("KVM_CREATE_VM", x))? as i32;
        fds.push(vm);
        let ram = sys::Mem::anon(0x1_0000, libc::PROT_READ | libc::PROT_WRITE).ok_or("mmap")?;
        let code = [0xb0, b'4', 0xba, 0xf8, 0x03, 0xee, 0xf4];
        // SAFETY: our own fresh 64 KiB mapping; the code goes at 0x8000.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), ram.ptr().add(0x8000), code.len()) };
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: 0x1_0000,
            userspace_addr: ram.addr() as u64,
        };
        raw(vm, cmd("KVM_SET_USER_MEMORY_REGION", On::Vm), &region as *const _ as u64).map_err(|x| e("KVM_SET_USER_MEMORY_REGION", x))?;
        let vcpu = raw(vm, cmd("KVM_CREATE_VCPU", On::Vm), 0).map_err(|x| e("KVM_CREATE_VCPU", x))? as i32;
        fds.push(vcpu);
        let mut sregs: kvm_bindings::kvm_sregs = sys::zeroed();
        raw(vcpu, cmd("KVM_GET_SREGS", On::Vcpu), &mut sregs as *mut _ as u64).map_err(|x| e("KVM_GET_SREGS", x))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        raw(vcpu, cmd("KVM_SET_SREGS", On::Vcpu), &sregs as *const _ as u64).map_err(|x| e("KVM_SET_SREGS", x))?;
        let regs = kvm_bindings::kvm_regs { rip: 0x8000, rflags: 2, ..Default::default() };
        raw(vcpu, cmd("KVM_SET_REGS", On::Vcpu), &regs as *const _ as u64).map_err(|x| e("KVM_SET_REGS", x))?;
        let run = sys::Mem::map(mmap_size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, vcpu, 0).ok_or("mmap of the vCPU")?;
        let runp = run.ptr().cast::<kvm_bindings::kvm_run>();
        if no_kvm_run {
            return Ok("a new VM and vCPU took their registers (--no-kvm-run: no guest entered)".to_string());
        }
        let r = raw(vcpu, cmd("KVM_RUN", On::Vcpu), 0);
        if !can_run {
            return match r {
                Err(libc::ENOEXEC) => Ok("KVM_RUN answers ENOEXEC (backend=none)".to_string()),
                other => Err(format!("KVM_RUN without a backend that runs: {other:?}, wanted ENOEXEC")),
            };
        }
        r.map_err(|x| e("KVM_RUN", x))?;
        // SAFETY: the kvm_run mapping of our vCPU; plain fields the kernel filled.
        let (reason, io) = unsafe { ((*runp).exit_reason, (*runp).__bindgen_anon_1.io) };
        if reason != kvm_bindings::KVM_EXIT_IO || io.port != 0x3f8 || io.direction != 1 || io.size != 1 {
            return Err(format!("first exit {reason}, wanted KVM_EXIT_IO out 0x3f8"));
        }
        // SAFETY: the data lies inside the vCPU mapping at the offset the kernel gave.
        let byte = unsafe { *run.ptr().add(io.data_offset as usize) };
        if byte != b'4' || io.data_offset as usize >= mmap_size {
            return Err(format!("OUT data {byte:#x}, wanted '4'"));
        }
        raw(vcpu, cmd("KVM_RUN", On::Vcpu), 0).map_err(|x| e("second KVM_RUN", x))?;
        // SAFETY: as above.
        let reason = unsafe { (*runp).exit_reason };
        if reason != kvm_bindings::KVM_EXIT_HLT {
            return Err(format!("second exit {reason}, wanted KVM_EXIT_HLT"));
        }
        Ok("a new VM ran OUT 0x3f8 '4' and HLT".to_string())
    })();
    for fd in fds.into_iter().rev() {
        // SAFETY: fds opened above.
        if unsafe { libc::close(fd) } != 0 {
            return Err(format!("close({fd}) after the check failed"));
        }
    }
    result
}

const EXIT_NAMES: &[(u32, &str)] = &[
    (0, "UNKNOWN"),
    (1, "EXCEPTION"),
    (2, "IO"),
    (3, "HYPERCALL"),
    (4, "DEBUG"),
    (5, "HLT"),
    (6, "MMIO"),
    (7, "IRQ_WINDOW_OPEN"),
    (8, "SHUTDOWN"),
    (9, "FAIL_ENTRY"),
    (10, "INTR"),
    (17, "INTERNAL_ERROR"),
    (24, "SYSTEM_EVENT"),
    (29, "X86_RDMSR"),
    (30, "X86_WRMSR"),
];

fn print_hist(h: &Hist) {
    println!("# errno histogram (calls by result):");
    for (name, m) in &h.by_name {
        let total: u64 = m.values().sum();
        let parts: Vec<String> = m.iter().map(|(e, n)| format!("{}={n}", errno_name(*e))).collect();
        println!("#   {name:<32} {total:>9}  {}", parts.join(" "));
    }
    if !h.exits.is_empty() {
        let parts: Vec<String> = h
            .exits
            .iter()
            .map(|(r, n)| {
                let name = EXIT_NAMES.iter().find(|(x, _)| x == r).map_or_else(|| format!("exit{r}"), |(_, s)| s.to_string());
                format!("{name}={n}")
            })
            .collect();
        println!("# KVM_RUN exit reasons: {}", parts.join(" "));
    }
}

fn main() {
    let o = parse();
    install_signals();
    let fds_before = sys::open_fds();
    let path = CString::new(o.device.clone()).unwrap_or_else(|_| usage());
    let can_run = o.can_run.unwrap_or_else(detect_run);
    println!("TAP version 13");
    println!("# rkvm-fuzz: device {}, seed {}, count {}, seconds {}, threads {}, KVM_RUN {}", o.device, o.seed, o.count, o.seconds, o.threads, if can_run { "enters guests" } else { "cannot enter guests" });
    println!("1..4");
    // What the run needs to know up front.
    let (mmap_size, nr_slots) = match open_dev(&path) {
        Ok(fd) => {
            let m = raw(fd, cmd("KVM_GET_VCPU_MMAP_SIZE", On::Dev), 0).unwrap_or(PAGE as i64) as usize;
            let s = raw(fd, cmd("KVM_CHECK_EXTENSION", On::Dev), u64::from(kvm_bindings::KVM_CAP_NR_MEMSLOTS)).unwrap_or(32) as u32;
            // SAFETY: our fd.
            unsafe { libc::close(fd) };
            (m, s)
        }
        Err(e) => {
            println!("not ok 1 - {e}");
            std::process::exit(1);
        }
    };
    let flaky = sys::Mem::anon(4 * PAGE, libc::PROT_READ | libc::PROT_WRITE).expect("mmap");
    let flaky_addr = flaky.addr();
    std::mem::forget(flaky); // the flaky op owns this range from now on
    let start = Instant::now();
    let sh = Arc::new(Shared {
        table: Mutex::new(Default::default()),
        dev_path: path.clone(),
        mmap_size,
        can_run,
        no_kvm_run: o.no_kvm_run,
        ioctls: Default::default(),
        syscalls: Default::default(),
        stop: Default::default(),
        count: o.count,
        deadline: (o.seconds > 0).then(|| start + Duration::from_secs(o.seconds)),
        start,
        trace_from: o.trace_from,
        failures: Mutex::new(Vec::new()),
        watch: (0..o.threads).map(|_| Watch::default()).collect(),
        flaky: flaky_addr,
        nr_slots,
    });

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let sh = sh.clone();
        let done = done.clone();
        std::thread::spawn(move || watchdog(&sh, &done))
    };
    let workers: Vec<_> = (0..o.threads)
        .map(|tid| {
            let sh = sh.clone();
            let seed = if o.threads == 1 { o.seed } else { rng::Rng::derive(o.seed, tid as u64) };
            std::thread::spawn(move || {
                // SAFETY: gettid of the calling thread.
                sh.watch[tid].thread.store(unsafe { libc::gettid() } as u64, Ordering::SeqCst);
                let mut c = Ctx::new(sh.clone(), seed, tid);
                loop {
                    if sh.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if sh.ioctls.load(Ordering::Relaxed) >= sh.count || sh.deadline.is_some_and(|d| Instant::now() >= d) {
                        sh.stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    fuzz::step(&mut c);
                }
                c.hist
            })
        })
        .collect();
    let mut hist = Hist::default();
    for w in workers {
        match w.join() {
            Ok(h) => hist.merge(&h),
            Err(_) => sh.fail("a fuzzing thread panicked".into()),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    let n = sh.ioctls.load(Ordering::Relaxed);
    let closed = fuzz::close_all(&sh);
    print_hist(&hist);
    println!(
        "# rkvm-fuzz: seed {}: {n} ioctls and {} other calls in {elapsed:.1} s ({:.0} ioctls/s), {} thread(s)",
        o.seed,
        sh.syscalls.load(Ordering::Relaxed),
        n as f64 / elapsed.max(1e-9),
        o.threads
    );
    println!("# reproduce: rkvm-fuzz --seed {} --count {n}{} (add --trace to see each ioctl)", o.seed, if o.threads > 1 { format!(" --threads {}", o.threads) } else { String::new() });
    let mut ok = true;
    let mut report = |good: bool, i: u32, what: String| {
        println!("{} {i} - {what}", if good { "ok" } else { "not ok" });
        ok &= good;
    };
    let by_time = sh.deadline.is_some_and(|d| Instant::now() >= d);
    report(n > 0 && (n >= o.count || by_time), 1, format!("fuzzing issued {n} ioctls (count {}, {})", o.count, if by_time { "stopped by --seconds" } else { "stopped by --count" }));
    let mut failures = sh.failures.lock().unwrap().clone();
    if let Err(e) = &closed {
        failures.push(e.clone());
    }
    report(failures.is_empty(), 2, format!("no hang, every close succeeded, fuzzer-side checks passed{}", if failures.is_empty() { String::new() } else { format!(": {}", failures.join("; ")) }));
    match module_works(&path, mmap_size, can_run, o.no_kvm_run) {
        Ok(s) => report(true, 3, format!("the module still works: {s}")),
        Err(s) => report(false, 3, format!("the module still works: {s}")),
    }
    let fds_after = sys::open_fds();
    let extra: Vec<String> = fds_after.iter().filter(|f| !fds_before.contains(f)).map(|(fd, t)| format!("{fd} -> {t}")).collect();
    report(
        extra.is_empty(),
        4,
        format!(
            "every fd closed ({} open before, {} after, {} closed at the end){}",
            fds_before.len(),
            fds_after.len(),
            closed.unwrap_or(0),
            if extra.is_empty() { String::new() } else { format!(": still open: {}", extra.join(", ")) }
        ),
    );
    std::process::exit(if ok { 0 } else { 1 });
}

/// Kicks calls that stay in the kernel, reports hangs, prints progress every 2 s.
fn watchdog(sh: &Shared, done: &std::sync::atomic::AtomicBool) {
    let mut last = (Instant::now(), 0u64);
    let mut kicked = vec![0u64; sh.watch.len()];
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
        let now = sh.now_ns();
        for (i, w) in sh.watch.iter().enumerate() {
            let since = w.since_ns.load(Ordering::SeqCst);
            if since == 0 {
                continue;
            }
            let stuck = now.saturating_sub(since);
            if stuck > HANG.as_nanos() as u64 {
                println!(
                    "not ok 2 - HANG: thread {i} has been in {} (ioctl #{}) for {} s despite SIGUSR1 every {} ms",
                    fuzz::name_of(w.name.load(Ordering::Relaxed)),
                    w.seq.load(Ordering::Relaxed),
                    HANG.as_secs(),
                    KICK.as_millis()
                );
                std::process::exit(3);
            }
            if stuck > KICK.as_nanos() as u64 && now - kicked[i] > KICK.as_nanos() as u64 {
                kicked[i] = now;
                // SAFETY: tgkill confines the signal to this process: a thread that has exited
                // meanwhile gives ESRCH, never another process's thread.
                unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), w.thread.load(Ordering::SeqCst) as libc::pid_t, libc::SIGUSR1) };
            }
        }
        if last.0.elapsed() >= Duration::from_secs(2) {
            let n = sh.ioctls.load(Ordering::Relaxed);
            let (vms, vcpus) = {
                let t = sh.table.lock().unwrap();
                (t.vms.len(), t.vcpus.len())
            };
            println!(
                "# progress: {n} ioctls, {:.0}/s, {:.0} s, {vms} VMs and {vcpus} vCPUs open",
                (n - last.1) as f64 / last.0.elapsed().as_secs_f64(),
                sh.start.elapsed().as_secs_f64()
            );
            last = (Instant::now(), n);
        }
    }
}

//! `rkvm-run`: run a flat guest binary on /dev/rkvm (or any KVM device) in a chosen CPU mode.
//!
//! ```text
//! rkvm-run [--dev PATH] [--mode real|prot32|paged32|long64] [--load-addr GPA] [--entry GPA]
//!          [--mem-size BYTES] [--reg NAME=VALUE]... [--max-exits N] [--print-regs]
//!          [--dump GPA:LEN]... [--quiet] GUEST.bin
//! ```
//!
//! Guest memory is one slot at GPA 0 (`--mem-size`, default 2 MiB). The binary is copied to the
//! load address (default 0x8000 in real mode, 0x100000 otherwise) and the vCPU starts there with
//! the mode's descriptor and page tables (see `setup.rs`) and its stack at the top of memory.
//! Port output goes to stdout (the bytes written); byte i of every port input reads `'a' + i`
//! (so guests can check IN of each size); MMIO is reported on stderr and byte i of every MMIO
//! read is `0x81 + i` (high bit set, so guests can check sign and zero extension). The run
//! ends at HLT (exit status 0), or with a report and status 1 on SHUTDOWN, FAIL_ENTRY,
//! INTERNAL_ERROR, an unexpected exit, a KVM_RUN error or `--max-exits`.
//! `--print-regs` prints the final general registers as `name=0x...` lines on stderr;
//! `--dump GPA:LEN` prints guest memory as `mem[GPA]=xx xx ...` on stderr at the end.

mod setup;

use kvm_bindings::{kvm_regs, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};
use setup::Mode;
use std::ffi::CString;
use std::io::Write;
use std::process::exit;

struct Opts {
    dev: String,
    mode: Mode,
    load: Option<u64>,
    entry: Option<u64>,
    mem_size: u64,
    regs: Vec<(String, u64)>,
    max_exits: u64,
    print_regs: bool,
    dump: Vec<(u64, u64)>,
    quiet: bool,
    file: String,
}

fn usage() -> ! {
    eprintln!(
        "usage: rkvm-run [--dev PATH] [--mode real|prot32|paged32|long64] [--load-addr GPA] \
         [--entry GPA] [--mem-size BYTES] [--reg NAME=VALUE]... [--max-exits N] [--print-regs] \
         [--dump GPA:LEN]... [--quiet] GUEST.bin"
    );
    exit(2)
}

fn num(s: &str) -> u64 {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.unwrap_or_else(|_| {
        eprintln!("rkvm-run: bad number {s:?}");
        exit(2)
    })
}

fn parse() -> Opts {
    let mut o = Opts {
        dev: "/dev/rkvm".into(),
        mode: Mode::Real,
        load: None,
        entry: None,
        mem_size: 2 << 20,
        regs: Vec::new(),
        max_exits: 1_000_000,
        print_regs: false,
        dump: Vec::new(),
        quiet: false,
        file: String::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--dev" => o.dev = val(),
            "--mode" => o.mode = Mode::parse(&val()).unwrap_or_else(|| usage()),
            "--load-addr" => o.load = Some(num(&val())),
            "--entry" => o.entry = Some(num(&val())),
            "--mem-size" => o.mem_size = num(&val()),
            "--max-exits" => o.max_exits = num(&val()),
            "--reg" => {
                let v = val();
                let (n, x) = v.split_once('=').unwrap_or_else(|| usage());
                o.regs.push((n.to_string(), num(x)));
            }
            "--print-regs" => o.print_regs = true,
            "--dump" => {
                let v = val();
                let (a, l) = v.split_once(':').unwrap_or_else(|| usage());
                o.dump.push((num(a), num(l)));
            }
            "--quiet" => o.quiet = true,
            "-h" | "--help" => usage(),
            f if !f.starts_with('-') && o.file.is_empty() => o.file = f.to_string(),
            _ => usage(),
        }
    }
    if o.file.is_empty() || o.mem_size == 0 || o.mem_size % 4096 != 0 {
        usage();
    }
    o
}

fn die(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("rkvm-run: {what}: {e}");
    exit(1)
}

fn set_reg(r: &mut kvm_regs, name: &str, v: u64) {
    let slot = match name {
        "rax" => &mut r.rax,
        "rbx" => &mut r.rbx,
        "rcx" => &mut r.rcx,
        "rdx" => &mut r.rdx,
        "rsi" => &mut r.rsi,
        "rdi" => &mut r.rdi,
        "rsp" => &mut r.rsp,
        "rbp" => &mut r.rbp,
        "r8" => &mut r.r8,
        "r9" => &mut r.r9,
        "r10" => &mut r.r10,
        "r11" => &mut r.r11,
        "r12" => &mut r.r12,
        "r13" => &mut r.r13,
        "r14" => &mut r.r14,
        "r15" => &mut r.r15,
        "rip" => &mut r.rip,
        "rflags" => &mut r.rflags,
        _ => die("--reg", format!("unknown register {name}")),
    };
    *slot = v;
}

fn main() {
    let o = parse();
    let code = std::fs::read(&o.file).unwrap_or_else(|e| die(&o.file, e));
    let load = o.load.unwrap_or(setup::default_load_addr(o.mode));
    let entry = o.entry.unwrap_or(load);
    if load.checked_add(code.len() as u64).map_or(true, |end| end > o.mem_size) {
        die(&o.file, "does not fit in guest memory at the load address");
    }

    let path = CString::new(o.dev.clone()).unwrap_or_else(|e| die(&o.dev, e));
    let kvm = Kvm::new_with_path(&path).unwrap_or_else(|e| die(&o.dev, e));
    let vm = kvm.create_vm().unwrap_or_else(|e| die("KVM_CREATE_VM", e));

    // SAFETY: a fresh anonymous private mapping, checked below, alive until the process exits.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            o.mem_size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        die("mmap guest memory", std::io::Error::last_os_error());
    }
    // SAFETY: `mem` is a writable mapping of `mem_size` bytes owned by this process; the guest
    // only accesses it while we wait in KVM_RUN.
    let guest = unsafe { std::slice::from_raw_parts_mut(mem.cast::<u8>(), o.mem_size as usize) };
    guest[load as usize..load as usize + code.len()].copy_from_slice(&code);
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: o.mem_size,
        userspace_addr: mem as u64,
    };
    // SAFETY: the region is our live mapping, which outlives the VM.
    unsafe { vm.set_user_memory_region(region) }.unwrap_or_else(|e| die("KVM_SET_USER_MEMORY_REGION", e));

    let mut vcpu = vm.create_vcpu(0).unwrap_or_else(|e| die("KVM_CREATE_VCPU", e));
    let mut sregs = vcpu.get_sregs().unwrap_or_else(|e| die("KVM_GET_SREGS", e));
    let mut regs = kvm_regs::default();
    let stack = if o.mode == Mode::Real { 0x7000 } else { o.mem_size - 16 };
    setup::setup(o.mode, guest, &mut sregs, &mut regs, entry, stack);
    for (n, v) in &o.regs {
        set_reg(&mut regs, n, *v);
    }
    vcpu.set_sregs(&sregs).unwrap_or_else(|e| die("KVM_SET_SREGS", e));
    vcpu.set_regs(&regs).unwrap_or_else(|e| die("KVM_SET_REGS", e));

    let mut out = std::io::stdout();
    let mut exits = 0u64;
    let status = loop {
        if exits == o.max_exits {
            eprintln!("rkvm-run: stopped after {exits} exits (--max-exits)");
            break 1;
        }
        exits += 1;
        match vcpu.run() {
            Ok(VcpuExit::Hlt) => {
                if !o.quiet {
                    eprintln!("rkvm-run: exit HLT after {exits} exits");
                }
                break 0;
            }
            Ok(VcpuExit::IoOut(_port, data)) => {
                let _ = out.write_all(data);
                let _ = out.flush();
            }
            Ok(VcpuExit::IoIn(_port, data)) => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = b'a' + i as u8;
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                eprintln!("rkvm-run: MMIO read of {} bytes at {addr:#x}", data.len());
                for (i, b) in data.iter_mut().enumerate() {
                    *b = 0x81 + i as u8;
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => eprintln!("rkvm-run: MMIO write {data:02x?} at {addr:#x}"),
            Ok(VcpuExit::Shutdown) => {
                eprintln!("rkvm-run: exit SHUTDOWN (triple fault) after {exits} exits");
                break 1;
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                eprintln!("rkvm-run: exit FAIL_ENTRY: hardware_entry_failure_reason {reason:#x} on CPU {cpu}");
                break 1;
            }
            Ok(VcpuExit::InternalError) => {
                // SAFETY: the exit reason says the `internal` member is the valid one.
                let i = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
                let n = (i.ndata as usize).min(i.data.len());
                eprintln!("rkvm-run: exit INTERNAL_ERROR: suberror {:#x}, data {:x?}", i.suberror, &i.data[..n]);
                break 1;
            }
            Ok(other) => {
                eprintln!("rkvm-run: unexpected exit {other:?}");
                break 1;
            }
            Err(e) => {
                eprintln!("rkvm-run: KVM_RUN: {e} (errno {})", e.errno());
                break 1;
            }
        }
    };
    if o.print_regs {
        if let Ok(r) = vcpu.get_regs() {
            for (n, v) in [("rax", r.rax), ("rbx", r.rbx), ("rcx", r.rcx), ("rdx", r.rdx), ("rsi", r.rsi),
                ("rdi", r.rdi), ("rsp", r.rsp), ("rbp", r.rbp), ("r8", r.r8), ("r9", r.r9), ("r10", r.r10),
                ("r11", r.r11), ("r12", r.r12), ("r13", r.r13), ("r14", r.r14), ("r15", r.r15), ("rip", r.rip),
                ("rflags", r.rflags)]
            {
                eprintln!("{n}={v:#x}");
            }
            if let Ok(s) = vcpu.get_sregs() {
                match setup::translate(o.mode, guest, s.cr3, r.rip) {
                    Some(pa) => eprintln!("rip_phys={pa:#x}"),
                    None => eprintln!("rip_phys=unmapped"),
                }
            }
        }
    }
    for (addr, len) in &o.dump {
        match guest.get(*addr as usize..(*addr + *len) as usize) {
            Some(bytes) => eprintln!("mem[{addr:#x}]={}", bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")),
            None => eprintln!("mem[{addr:#x}]=out of range"),
        }
    }
    exit(status)
}

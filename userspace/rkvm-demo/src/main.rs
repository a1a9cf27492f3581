//! rkvm's demo client: the classic first KVM program, run against `/dev/rkvm`.
//!
//! Behaves like the C demo in the seed notes (`shared/seeds/003_*.txt`): one VM, one page of
//! guest memory at guest-physical 0x1000 holding a real-mode program that adds AL and BL, prints
//! the digit and a newline on port 0x3f8 and halts; one vCPU with CS base 0 and RIP 0x1000,
//! AX = BX = 2. Against a working hypervisor it prints `4`, a newline and `KVM_EXIT_HLT`.
//! It uses the rust-vmm `kvm-ioctls` crate unchanged, opening the device by path, to show that an
//! unmodified KVM client works against rkvm.
//!
//! Usage: `rkvm-demo [DEVICE]` (default `/dev/rkvm`). Exit status 0 after `KVM_EXIT_HLT`, 1 on
//! any error (reported like C's `err(3)`: `rkvm-demo: WHAT: strerror`).

use kvm_bindings::{kvm_regs, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};
use std::ffi::CString;
use std::io::Write;
use std::process::exit;

/// The guest: real-mode code, loaded at guest-physical 0x1000.
const GUEST_CODE: [u8; 12] = [
    0xba, 0xf8, 0x03, // mov $0x3f8, %dx
    0x00, 0xd8, //       add %bl, %al
    0x04, b'0', //       add $'0', %al
    0xee, //             out %al, (%dx)
    0xb0, b'\n', //      mov $'\n', %al
    0xee, //             out %al, (%dx)
    0xf4, //             hlt
];
const GUEST_ADDR: u64 = 0x1000;
const MEM_SIZE: usize = 0x1000;

/// Prints `rkvm-demo: what: error` and exits 1, like C's `err(1, what)`.
fn die(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("rkvm-demo: {what}: {e}");
    exit(1)
}

fn main() {
    let dev = std::env::args().nth(1).unwrap_or_else(|| "/dev/rkvm".into());
    let path = CString::new(dev.clone()).unwrap_or_else(|e| die(&dev, e));
    let kvm = Kvm::new_with_path(&path).unwrap_or_else(|e| die(&dev, e));

    let version = kvm.get_api_version();
    if version != 12 {
        die("KVM_GET_API_VERSION", format!("{version}, expected 12"));
    }
    let vm = kvm.create_vm().unwrap_or_else(|e| die("KVM_CREATE_VM", e));

    // Guest memory: one anonymous shared page holding the code.
    // SAFETY: a fresh anonymous mapping; checked for failure below and never unmapped (the
    // process exits while the VM still uses it).
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        die("allocating guest memory", std::io::Error::last_os_error());
    }
    // SAFETY: `mem` is a writable mapping of MEM_SIZE bytes and GUEST_CODE is smaller.
    unsafe { std::ptr::copy_nonoverlapping(GUEST_CODE.as_ptr(), mem.cast::<u8>(), GUEST_CODE.len()) };
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: GUEST_ADDR,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem as u64,
    };
    // SAFETY: the region describes our live mapping, which outlives the VM.
    unsafe { vm.set_user_memory_region(region) }.unwrap_or_else(|e| die("KVM_SET_USER_MEMORY_REGION", e));

    // kvm-ioctls maps `struct kvm_run` (KVM_GET_VCPU_MMAP_SIZE bytes) as part of creating the vCPU.
    let mut vcpu = vm.create_vcpu(0).unwrap_or_else(|e| die("KVM_CREATE_VCPU", e));

    let mut sregs = vcpu.get_sregs().unwrap_or_else(|e| die("KVM_GET_SREGS", e));
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap_or_else(|e| die("KVM_SET_SREGS", e));
    let regs = kvm_regs { rip: GUEST_ADDR, rax: 2, rbx: 2, rflags: 0x2, ..Default::default() };
    vcpu.set_regs(&regs).unwrap_or_else(|e| die("KVM_SET_REGS", e));

    let mut out = std::io::stdout();
    loop {
        match vcpu.run() {
            Ok(VcpuExit::Hlt) => {
                println!("KVM_EXIT_HLT");
                exit(0);
            }
            Ok(VcpuExit::IoOut(0x3f8, data)) if data.len() == 1 => {
                let _ = out.write_all(data);
                let _ = out.flush();
            }
            Ok(VcpuExit::IoOut(..)) | Ok(VcpuExit::IoIn(..)) => die("KVM_EXIT_IO", "unhandled KVM_EXIT_IO"),
            Ok(VcpuExit::FailEntry(reason, _cpu)) => {
                eprintln!("rkvm-demo: KVM_EXIT_FAIL_ENTRY: hardware_entry_failure_reason = 0x{reason:x}");
                exit(1)
            }
            Ok(VcpuExit::InternalError) => {
                // SAFETY: the run structure is valid and the exit reason says `internal` is set.
                let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                eprintln!("rkvm-demo: KVM_EXIT_INTERNAL_ERROR: suberror = 0x{suberror:x}");
                exit(1)
            }
            Ok(other) => die("KVM_RUN", format!("exit_reason = {other:?}")),
            Err(e) => {
                if e.errno() == libc::ENOEXEC {
                    eprintln!("rkvm-demo: the hypervisor has no backend able to enter a guest (rkvm backend=none)");
                }
                die("KVM_RUN", e)
            }
        }
    }
}

//! The fuzzing engine: the objects a run holds (device, VM, vCPU and stats fds, guest memory,
//! vCPU mappings), one random step at a time, and the hand-built arguments of the table's
//! `Arg::Custom` ioctls.
//!
//! Determinism: every choice comes from the thread's [`Rng`]; results feed back only through the
//! fds that creating ioctls return (a failed creation leaves nothing to pick), so a
//! single-threaded run issues exactly the same ioctls with the same arguments for the same seed
//! and module. What a guest does in `KVM_RUN` depends on timing (the watchdog's signals end long
//! runs), but nothing the fuzzer chooses depends on it.

use crate::gens;
use crate::guest;
use crate::rng::Rng;
use crate::sys::{bytes_of, errno, from_bytes, zeroed, Mem, PAGE};
use crate::table::{self, Arg, Creates, Def, Dir, On, DEFS};
use kvm_bindings as kb;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Bounds on what one run holds at a time (memory of a 512 MiB Bochs VM).
pub const MAX_DEVS: usize = 2;
pub const MAX_VMS: usize = 4;
pub const MAX_VCPUS_PER_VM: u32 = 6;
/// vCPU fds held in all (those of closed VMs keep their VM alive).
pub const MAX_VCPUS: usize = 16;
pub const MAX_STATS: usize = 6;
pub const MAX_MAPS: usize = 12;
pub const MAX_REGIONS: usize = 12;
/// Eventfds held for `KVM_IOEVENTFD` (and ioeventfds remembered per VM).
pub const MAX_EVENTFDS: usize = 4;
pub const MAX_IOEVENTFDS: usize = 16;

/// Size of the per-thread argument buffer (holds the largest arrays: 256 CPUID entries).
const ARENA: usize = 64 * 1024;

/// A guest memory region the fuzzer registered (or tried to).
pub struct Region {
    pub slot: u32,
    pub gpa: u64,
    pub len: u64,
    /// The backing, if the fuzzer owns it (hostile addresses have none).
    pub mem: Option<Arc<Mem>>,
    /// Whether the fuzzer may write the backing (not made read-only, starts at the slot).
    pub writable: bool,
    /// The slot logs dirty pages.
    pub logging: bool,
}

pub struct VmObj {
    pub fd: i32,
    /// The regions; also held while the fuzzer writes guest memory, so that no thread neuters
    /// a backing under another's writes.
    pub regions: Mutex<Vec<Region>>,
    /// Backings no slot of ours uses any more, neutered but kept reserved until the VM object
    /// goes (only then are they unmapped: the kernel may still map them for the guest).
    pub graveyard: Mutex<Vec<Arc<Mem>>>,
    pub vcpus_made: AtomicU32,
    /// The ioeventfds `KVM_IOEVENTFD` accepted and no deassignment removed (most recent last):
    /// deassignment targets and what guests write to.
    pub ioeventfds: Mutex<Vec<kb::kvm_ioeventfd>>,
    /// MSRs the filter in force covers (guests read and write them).
    pub filter_msrs: Mutex<Vec<u32>>,
}

impl VmObj {
    pub fn new(fd: i32) -> VmObj {
        VmObj {
            fd,
            regions: Mutex::new(Vec::new()),
            graveyard: Mutex::new(Vec::new()),
            vcpus_made: AtomicU32::new(0),
            ioeventfds: Mutex::new(Vec::new()),
            filter_msrs: Mutex::new(Vec::new()),
        }
    }

    /// What a guest of this VM should aim at: its ioeventfds and filtered MSRs.
    pub fn hints(&self) -> guest::Hints {
        let mut h = guest::Hints::default();
        for e in self.ioeventfds.lock().unwrap().iter() {
            let dm = (e.flags & gens::IOEVENTFD_DATAMATCH != 0).then_some(e.datamatch);
            if e.flags & gens::IOEVENTFD_PIO != 0 {
                h.ports.push((e.addr as u16, e.len, dm));
            } else if e.addr < 0x1_0000_0000 {
                h.mmio.push((e.addr, e.len, dm));
            }
        }
        h.msrs = self.filter_msrs.lock().unwrap().clone();
        h
    }
}

impl VmObj {
    /// Retires a backing: neutered now, unmapped with the VM object.
    pub fn bury(&self, mem: Option<Arc<Mem>>) {
        if let Some(m) = mem {
            m.neuter();
            self.graveyard.lock().unwrap().push(m);
        }
    }
}

impl VmObj {
    /// Slots the fuzzer registered.
    pub fn slots(&self) -> Vec<u32> {
        self.regions.lock().unwrap().iter().map(|r| r.slot).collect()
    }

    /// Slots registered with KVM_MEM_LOG_DIRTY_PAGES.
    pub fn dirty_slots(&self) -> Vec<u32> {
        self.regions.lock().unwrap().iter().filter(|r| r.logging).map(|r| r.slot).collect()
    }

    /// Guest-physical ranges the fuzzer registered.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.regions.lock().unwrap().iter().map(|r| (r.gpa, r.len)).collect()
    }

    /// Runs `f` on the fuzzer-owned RAM at guest-physical 0 of at least `min` bytes, if
    /// registered, with the regions locked.
    pub fn with_low_ram<R>(&self, min: u64, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        let regions = self.regions.lock().unwrap();
        let mem = regions.iter().rev().find(|r| r.gpa == 0 && r.len >= min && r.writable).and_then(|r| r.mem.as_ref())?;
        // SAFETY: our own read-write mapping (never neutered while the regions lock is held and
        // it is listed); the guest may write it concurrently, which only changes bytes.
        Some(f(unsafe { std::slice::from_raw_parts_mut(mem.ptr(), mem.len) }))
    }
}

pub struct VcpuObj {
    pub fd: i32,
    pub vm: Arc<VmObj>,
    /// The `struct kvm_run` mapping (whole `KVM_GET_VCPU_MMAP_SIZE`), made at creation.
    pub run: Option<Mem>,
    /// Machine-check banks of the last `KVM_X86_SETUP_MCE` that succeeded (32 at creation).
    pub mce_banks: AtomicU32,
}

/// Whatever a thread picked to issue an ioctl on.
#[derive(Clone)]
pub enum Target {
    Dev(i32),
    Vm(Arc<VmObj>),
    Vcpu(Arc<VcpuObj>),
    /// Any fd, of whatever kind (wrong-fd ioctls, stats fds).
    Raw(i32),
}

impl Target {
    pub fn fd(&self) -> i32 {
        match self {
            Target::Dev(fd) | Target::Raw(fd) => *fd,
            Target::Vm(v) => v.fd,
            Target::Vcpu(v) => v.fd,
        }
    }

    /// The VM object, for a VM target.
    pub fn vm(&self) -> Option<&Arc<VmObj>> {
        match self {
            Target::Vm(v) => Some(v),
            Target::Vcpu(v) => Some(&v.vm),
            _ => None,
        }
    }

    /// The target's VM as a target (a vCPU's VM, or itself).
    pub fn vm_of(&self) -> Target {
        match self {
            Target::Vcpu(v) => Target::Vm(v.vm.clone()),
            t => t.clone(),
        }
    }
}

/// Everything threads share.
#[derive(Default)]
pub struct Table {
    pub devs: Vec<i32>,
    pub vms: Vec<Arc<VmObj>>,
    pub vcpus: Vec<Arc<VcpuObj>>,
    pub stats: Vec<i32>,
    pub maps: Vec<Mem>,
    /// Eventfds for `KVM_IOEVENTFD` (non-blocking).
    pub eventfds: Vec<i32>,
}

/// One watched thread: which ioctl it is in and since when (0 = not in one).
#[derive(Default)]
pub struct Watch {
    pub thread: AtomicU64,
    pub since_ns: AtomicU64,
    pub name: AtomicUsize,
    pub seq: AtomicU64,
}

pub struct Shared {
    pub table: Mutex<Table>,
    pub dev_path: std::ffi::CString,
    pub mmap_size: usize,
    pub can_run: bool,
    /// `--no-kvm-run`: never issue KVM_RUN (for devices whose guests cannot be bounded, e.g.
    /// kvm_intel in Bochs, where a guest spinning with IF=0 stops the machine).
    pub no_kvm_run: bool,
    pub ioctls: AtomicU64,
    pub syscalls: AtomicU64,
    pub stop: AtomicBool,
    pub count: u64,
    pub deadline: Option<Instant>,
    pub start: Instant,
    /// Trace calls from this ioctl number on (`u64::MAX`: no trace).
    pub trace_from: u64,
    /// Fuzzer-side checks that failed (e.g. an ioctl from a forked child not refused with EIO).
    pub failures: Mutex<Vec<String>>,
    pub watch: Vec<Watch>,
    /// A region threads map and unmap under each other's ioctls.
    pub flaky: usize,
    /// Largest slot count (`KVM_CAP_NR_MEMSLOTS`).
    pub nr_slots: u32,
}

impl Shared {
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64 + 1
    }

    pub fn fail(&self, what: String) {
        println!("# FAILURE: {what}");
        self.failures.lock().unwrap().push(what);
    }
}

/// Per-thread results: calls by name and errno (0 = success), and KVM_RUN exit reasons.
#[derive(Default)]
pub struct Hist {
    pub by_name: BTreeMap<&'static str, BTreeMap<i32, u64>>,
    pub exits: BTreeMap<u32, u64>,
}

impl Hist {
    pub fn record(&mut self, name: &'static str, e: i32) {
        *self.by_name.entry(name).or_default().entry(e).or_default() += 1;
    }

    pub fn merge(&mut self, o: &Hist) {
        for (n, m) in &o.by_name {
            let d = self.by_name.entry(n).or_default();
            for (e, c) in m {
                *d.entry(*e).or_default() += c;
            }
        }
        for (r, c) in &o.exits {
            *self.exits.entry(*r).or_default() += c;
        }
    }
}

/// Where an argument pointer points.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Place {
    /// Into the thread's buffer at this offset: the kernel's output can be read back.
    Valid(usize),
    Hostile,
}

/// A thread's fuzzing context.
pub struct Ctx {
    pub rng: Rng,
    pub sh: Arc<Shared>,
    pub tid: usize,
    pub hist: Hist,
    templates: HashMap<&'static str, Vec<u8>>,
    /// Numbers of eventfds this thread closed (ioeventfds name them: EBADF, or whatever reuses
    /// the number).
    closed_fds: Vec<i32>,
    /// ARENA bytes read-write, then a PROT_NONE guard page.
    arena: Mem,
    /// A read-only page of random bytes.
    ro: Mem,
    /// An inaccessible page.
    gone: Mem,
}

fn map_or_die(len: usize, prot: i32) -> Mem {
    Mem::anon(len, prot).unwrap_or_else(|| {
        eprintln!("rkvm-fuzz: mmap of {len} bytes failed: errno {}", errno());
        std::process::exit(2)
    })
}

impl Ctx {
    pub fn new(sh: Arc<Shared>, seed: u64, tid: usize) -> Ctx {
        let arena = map_or_die(ARENA + PAGE, libc::PROT_READ | libc::PROT_WRITE);
        // SAFETY: the last page of our own mapping becomes the guard.
        unsafe { libc::mprotect(arena.ptr().add(ARENA).cast(), PAGE, libc::PROT_NONE) };
        let ro = map_or_die(PAGE, libc::PROT_READ | libc::PROT_WRITE);
        let mut rng = Rng::new(seed);
        let mut junk = vec![0u8; PAGE];
        rng.fill(&mut junk);
        // SAFETY: `ro` is a fresh page-sized mapping of ours; then it is made read-only.
        unsafe {
            std::ptr::copy_nonoverlapping(junk.as_ptr(), ro.ptr(), PAGE);
            libc::mprotect(ro.ptr().cast(), PAGE, libc::PROT_READ);
        }
        // Kept mapped (inaccessible) so the address is never reused by a later mapping of ours.
        let gone = map_or_die(PAGE, libc::PROT_NONE);
        Ctx { rng, sh, tid, hist: Hist::default(), templates: HashMap::new(), closed_fds: Vec::new(), arena, ro, gone }
    }

    /// The arena as a mutable slice.
    fn arena(&mut self) -> &mut [u8] {
        // SAFETY: ARENA read-write bytes of this thread's own mapping; the kernel writes into it
        // only during this thread's own ioctls.
        unsafe { std::slice::from_raw_parts_mut(self.arena.ptr(), ARENA) }
    }

    /// A pointer the kernel should not be able to use, or a surprising valid one.
    pub fn bad_ptr(&mut self) -> u64 {
        match self.rng.below(9) {
            0 => 0,
            1 => self.ro.addr() as u64,
            2 => (self.arena.addr() + ARENA) as u64,
            3 => self.gone.addr() as u64,
            4 => *self.rng.pick(&[0xffff_8880_0000_0000u64, 0xffff_ffff_8100_0000, 0xffff_ffff_ff60_0000]),
            5 => *self.rng.pick(&[0x8000_0000_0000u64, 0x8000_0000_0000_0000, 0x7fff_ffff_f000]),
            6 => self.sh.flaky as u64,
            7 => self.rng.below(0x1_0000),
            _ => self.rng.next(),
        }
    }

    /// Copies `bytes` somewhere and returns the pointer for the ioctl: into the arena 80% of the
    /// time (sometimes misaligned), else across the guard page or at a bad address.
    pub fn place(&mut self, bytes: &[u8]) -> (u64, Place) {
        let len = bytes.len().min(ARENA);
        let r = self.rng.below(100);
        if r < 82 {
            let off = if self.rng.percent(5) { 1 + self.rng.index(7) } else { 0 };
            let off = off.min(ARENA - len);
            self.arena()[off..off + len].copy_from_slice(&bytes[..len]);
            ((self.arena.addr() + off) as u64, Place::Valid(off))
        } else if r < 88 && len > 0 {
            // The struct's tail lies in the guard page: a partial copy must fail cleanly.
            let inside = self.rng.index(len);
            let off = ARENA - inside;
            self.arena()[off..].copy_from_slice(&bytes[..inside]);
            ((self.arena.addr() + off) as u64, Place::Hostile)
        } else {
            (self.bad_ptr(), Place::Hostile)
        }
    }

    /// Reads back `len` bytes the kernel wrote at a valid place.
    pub fn read_back(&mut self, place: Place, len: usize) -> Option<Vec<u8>> {
        match place {
            Place::Valid(off) if off + len <= ARENA => Some(self.arena()[off..off + len].to_vec()),
            _ => None,
        }
    }

    /// A dirty-bitmap pointer: the second half of the arena (room for 256 Ki pages) mostly.
    pub fn bitmap_ptr(&mut self) -> u64 {
        if self.rng.percent(80) {
            (self.arena.addr() + ARENA / 2) as u64
        } else {
            self.bad_ptr()
        }
    }

    /// Mask of the low bits cleared in a generated address: page-aligned mostly.
    pub fn align_mask(&mut self) -> u64 {
        if self.rng.percent(85) {
            0xfff
        } else {
            0
        }
    }

    /// Writes `bytes` into the arena at `off` (clamped to fit) and returns their address.
    pub fn scratch(&mut self, off: usize, bytes: &[u8]) -> u64 {
        let len = bytes.len().min(ARENA);
        let off = off.min(ARENA - len);
        self.arena()[off..off + len].copy_from_slice(&bytes[..len]);
        (self.arena.addr() + off) as u64
    }

    /// The fds an ioeventfd may name; makes an eventfd first while there are few.
    pub fn fds(&mut self) -> gens::Fds {
        let have = self.sh.table.lock().unwrap().eventfds.len();
        if have < 2 || (have < MAX_EVENTFDS && self.rng.percent(10)) {
            // SAFETY: eventfd(2) creates a new fd; no pointers.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if self.syscall("eventfd", i64::from(fd)) >= 0 {
                self.sh.table.lock().unwrap().eventfds.push(fd);
            }
        }
        let t = self.sh.table.lock().unwrap();
        let mut others: Vec<i32> = t.devs.clone();
        others.extend(t.vms.iter().take(2).map(|v| v.fd));
        others.extend(t.stats.iter().take(1));
        others.push(0);
        gens::Fds { eventfds: t.eventfds.clone(), closed: self.closed_fds.clone(), others }
    }

    pub fn template(&self, key: &str) -> Option<&Vec<u8>> {
        self.templates.get(key)
    }

    pub fn save(&mut self, key: &'static str, bytes: Vec<u8>) {
        self.templates.insert(key, bytes);
    }

    /// Mutates argument bytes; sometimes plants one of our pointers (valid or not) in an
    /// 8-aligned field, for structs that carry pointers.
    pub fn mutate(&mut self, bytes: &mut [u8]) {
        self.rng.mutate(bytes, 4);
        if bytes.len() >= 8 && self.rng.percent(10) {
            let at = self.rng.index(bytes.len() / 8) * 8;
            let p = if self.rng.percent(50) { self.arena.addr() as u64 } else { self.bad_ptr() };
            bytes[at..at + 8].copy_from_slice(&p.to_le_bytes());
        }
    }

    /// Issues one ioctl, watched and counted. Returns the result or `-errno`.
    pub fn ioctl(&mut self, name: &'static str, fd: i32, cmd: u64, arg: u64) -> i64 {
        let seq = self.sh.ioctls.fetch_add(1, Ordering::Relaxed);
        let trace = seq >= self.sh.trace_from;
        if trace {
            println!("# [{}] #{seq} {name} fd={fd} cmd={cmd:#x} arg={arg:#x}", self.tid);
        }
        let w = &self.sh.watch[self.tid];
        w.name.store(name_id(name), Ordering::Relaxed);
        w.seq.store(seq, Ordering::Relaxed);
        w.since_ns.store(self.sh.now_ns(), Ordering::SeqCst);
        // SAFETY: an ioctl on an fd of ours; the argument is an integer or a pointer into our
        // own buffers (or a deliberately bad one, which the kernel must refuse).
        let r = unsafe { libc::ioctl(fd, cmd as libc::Ioctl, arg as usize) };
        let e = if r < 0 { errno() } else { 0 };
        w.since_ns.store(0, Ordering::SeqCst);
        self.hist.record(name, e);
        if trace {
            println!("# [{}] #{seq} -> {}", self.tid, if r < 0 { crate::sys::errno_name(e) } else { r.to_string() });
        }
        if r < 0 {
            -(e as i64)
        } else {
            r as i64
        }
    }

    /// Counts a non-ioctl system call in the histogram.
    pub fn syscall(&mut self, name: &'static str, r: i64) -> i64 {
        self.sh.syscalls.fetch_add(1, Ordering::Relaxed);
        let e = if r < 0 { errno() } else { 0 };
        self.hist.record(name, e);
        if self.sh.ioctls.load(Ordering::Relaxed) >= self.sh.trace_from {
            println!("# [{}] {name} -> {}", self.tid, if r < 0 { crate::sys::errno_name(e) } else { r.to_string() });
        }
        r
    }
}

/// Names of watched calls, as small integers (for the watchdog).
static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

fn name_id(name: &'static str) -> usize {
    let mut n = NAMES.lock().unwrap();
    if let Some(i) = n.iter().position(|&x| std::ptr::eq(x, name)) {
        return i;
    }
    n.push(name);
    n.len() - 1
}

pub fn name_of(id: usize) -> &'static str {
    NAMES.lock().unwrap().get(id).copied().unwrap_or("?")
}

fn def(name: &str, on: On) -> &'static Def {
    DEFS.iter().find(|d| d.name == name && d.on == on).expect("table entry")
}

/// One random step. Weighted operations; table ioctls dominate.
pub fn step(c: &mut Ctx) {
    const W_TABLE: u32 = 70;
    let weights: [u32; 10] = [
        W_TABLE,
        if c.sh.no_kvm_run { 0 } else if c.sh.can_run { 10 } else { 2 }, // guest set-up and runs
        3,                                 // wrong fd or random command
        3,                                 // close something
        3,                                 // vCPU mmap games
        2,                                 // stats fd reads
        1,                                 // fork: ioctls from another mm
        1,                                 // the flaky region
        1,                                 // open the device
        1,                                 // read or close an eventfd
    ];
    match c.rng.weighted(&weights) {
        0 => {
            let w: Vec<u32> = DEFS.iter().map(|d| if c.sh.no_kvm_run && d.name == "KVM_RUN" { 0 } else { d.weight }).collect();
            let d = &DEFS[c.rng.weighted(&w)];
            if let Some(t) = target_for(c, d.on) {
                issue(c, d, &t);
            }
        }
        1 => guest_session(c),
        2 => wrong_fd(c),
        3 => close_something(c),
        4 => vcpu_mmap(c),
        5 => stats_read(c),
        6 => fork_child(c),
        7 => flaky(c),
        8 => {
            open_dev(c);
        }
        _ => eventfd_op(c),
    }
}

/// Opens the device if there is room; returns its fd.
fn open_dev(c: &mut Ctx) -> Option<i32> {
    let sh = c.sh.clone();
    let mut t = sh.table.lock().unwrap();
    if t.devs.len() >= MAX_DEVS {
        return t.devs.first().copied();
    }
    // SAFETY: open(2) of a NUL-terminated path.
    let fd = unsafe { libc::open(c.sh.dev_path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    let r = c.syscall("open(dev)", fd as i64);
    if r >= 0 {
        t.devs.push(fd);
        Some(fd)
    } else {
        None
    }
}

/// A target of kind `on`, creating the missing parents (device, VM, vCPU) through the table.
fn target_for(c: &mut Ctx, on: On) -> Option<Target> {
    {
        let t = c.sh.table.lock().unwrap();
        let pick = match on {
            On::Dev if !t.devs.is_empty() => Some(Target::Dev(t.devs[c.rng.index(t.devs.len())])),
            On::Vm if !t.vms.is_empty() => Some(Target::Vm(t.vms[c.rng.index(t.vms.len())].clone())),
            On::Vcpu if !t.vcpus.is_empty() => Some(Target::Vcpu(t.vcpus[c.rng.index(t.vcpus.len())].clone())),
            _ => None,
        };
        if pick.is_some() {
            return pick;
        }
    }
    match on {
        On::Dev => open_dev(c).map(Target::Dev),
        On::Vm => {
            let dev = target_for(c, On::Dev)?;
            issue_create(c, def("KVM_CREATE_VM", On::Dev), &dev, 0);
            let t = c.sh.table.lock().unwrap();
            t.vms.last().cloned().map(Target::Vm)
        }
        On::Vcpu => {
            let vm = target_for(c, On::Vm)?;
            let id = c.rng.below(4);
            issue_create(c, def("KVM_CREATE_VCPU", On::Vm), &vm, id);
            let t = c.sh.table.lock().unwrap();
            t.vcpus.last().cloned().map(Target::Vcpu)
        }
    }
}

/// Issues a table ioctl on `t`.
pub fn issue(c: &mut Ctx, d: &'static Def, t: &Target) {
    match &d.arg {
        Arg::Int(gen) => {
            let arg = gen(&mut c.rng);
            issue_create(c, d, t, arg);
        }
        Arg::Buf { size, dir, key, gen } => {
            let fresh = c.rng.percent(15);
            let mut bytes = match c.template(key) {
                Some(b) if b.len() == *size && !fresh => b.clone(),
                _ => vec![0u8; *size],
            };
            if *dir == Dir::Out {
                c.rng.fill(&mut bytes);
            } else {
                if let Some(g) = gen {
                    if c.rng.percent(70) {
                        g(c, t, &mut bytes);
                    }
                }
                if c.rng.percent(25) {
                    c.mutate(&mut bytes);
                }
            }
            let (arg, place) = c.place(&bytes);
            let r = c.ioctl(d.name, t.fd(), d.cmd, arg);
            if r >= 0 && matches!(place, Place::Valid(_)) {
                // What the kernel returned, or what it accepted: the next call of the same key
                // starts from it (a GET's state for its SET, a registered zone for the
                // unregister).
                if *dir == Dir::In {
                    c.save(key, bytes);
                } else if let Some(out) = c.read_back(place, *size) {
                    c.save(key, out);
                }
            }
        }
        Arg::Custom(f) => f(c, t, d),
    }
}

/// Issues an integer-argument ioctl and registers the fd it creates.
fn issue_create(c: &mut Ctx, d: &'static Def, t: &Target, mut arg: u64) {
    // Room first: close an old object of the kind this creates, deterministically.
    match d.creates {
        Creates::Vm => {
            if c.sh.table.lock().unwrap().vms.len() >= MAX_VMS {
                close_kind(c, 1);
            }
        }
        Creates::Vcpu => {
            if c.sh.table.lock().unwrap().vcpus.len() >= MAX_VCPUS {
                close_kind(c, 3);
            }
            if let Some(vm) = t.vm() {
                if vm.vcpus_made.load(Ordering::Relaxed) >= MAX_VCPUS_PER_VM {
                    // The VM's vCPUs live as long as it does: id 0 instead, a duplicate once it
                    // exists (whatever it gives is registered below).
                    arg = 0;
                }
            }
        }
        Creates::Stats => {
            if c.sh.table.lock().unwrap().stats.len() >= MAX_STATS {
                close_kind(c, 2);
            }
        }
        Creates::Nothing => {}
    }
    let r = c.ioctl(d.name, t.fd(), d.cmd, arg);
    if r < 0 || d.creates == Creates::Nothing {
        return;
    }
    let fd = r as i32;
    let mut tab = c.sh.table.lock().unwrap();
    match (d.creates, t) {
        (Creates::Vm, Target::Dev(_)) => {
            tab.vms.push(Arc::new(VmObj::new(fd)))
        }
        (Creates::Vcpu, Target::Vm(vm)) => {
            vm.vcpus_made.fetch_add(1, Ordering::Relaxed);
            let run = Mem::map(c.sh.mmap_size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0);
            tab.vcpus.push(Arc::new(VcpuObj { fd, vm: vm.clone(), run, mce_banks: AtomicU32::new(32) }));
        }
        (Creates::Stats, _) => tab.stats.push(fd),
        // A creating ioctl that succeeded on an fd of another kind (fd reuse between threads):
        // keep the fd closable.
        _ => tab.stats.push(fd),
    }
}

/// Closes one object: 0 device, 1 VM, 2 stats, 3 vCPU, 4 a vCPU mapping.
fn close_kind(c: &mut Ctx, kind: u64) {
    let mut t = c.sh.table.lock().unwrap();
    let fd = match kind {
        0 if !t.devs.is_empty() => {
            let i = c.rng.index(t.devs.len());
            t.devs.swap_remove(i)
        }
        1 if !t.vms.is_empty() => {
            let i = c.rng.index(t.vms.len());
            t.vms.swap_remove(i).fd
        }
        2 if !t.stats.is_empty() => {
            let i = c.rng.index(t.stats.len());
            t.stats.swap_remove(i)
        }
        3 if !t.vcpus.is_empty() => {
            let i = c.rng.index(t.vcpus.len());
            t.vcpus.swap_remove(i).fd
        }
        4 if !t.maps.is_empty() => {
            let i = c.rng.index(t.maps.len());
            drop(t.maps.swap_remove(i));
            return;
        }
        _ => return,
    };
    // Under the table lock, so the number cannot be handed out again before it is out of
    // the table. Objects still used by other threads keep their mappings (Arc), not the fd.
    // SAFETY: an fd this process opened and just removed from the table.
    let r = unsafe { libc::close(fd) };
    drop(t);
    if c.syscall("close", r as i64) < 0 {
        let e = errno();
        c.sh.fail(format!("close({fd}) failed: errno {e}"));
    }
}

fn close_something(c: &mut Ctx) {
    let kind = c.rng.weighted(&[1, 3, 2, 3, 1]) as u64;
    close_kind(c, kind);
}

/// A table ioctl on an fd of another kind, or a random command number on any fd.
fn wrong_fd(c: &mut Ctx) {
    let fds: Vec<i32> = {
        let t = c.sh.table.lock().unwrap();
        t.devs.iter().copied().chain(t.vms.iter().map(|v| v.fd)).chain(t.vcpus.iter().map(|v| v.fd)).chain(t.stats.iter().copied()).collect()
    };
    if fds.is_empty() {
        return;
    }
    let fd = *c.rng.pick(&fds);
    if c.rng.percent(50) {
        let d = &DEFS[c.rng.index(DEFS.len())];
        if c.sh.no_kvm_run && d.name == "KVM_RUN" {
            return;
        }
        issue(c, d, &Target::Raw(fd));
    } else {
        // KVMIO commands with any number, direction and size; or anything at all.
        let cmd = if c.rng.percent(80) {
            let dir = c.rng.below(4);
            let size = if c.rng.percent(50) { c.rng.below(0x200) } else { c.rng.below(0x4000) };
            (dir << 30) | (size << 16) | (u64::from(kb::KVMIO) << 8) | c.rng.below(256)
        } else {
            c.rng.next() & 0xffff_ffff
        };
        if c.sh.no_kvm_run && cmd & 0xffff == u64::from(kb::KVMIO) << 8 | 0x80 {
            return;
        }
        let mut junk = vec![0u8; 512];
        c.rng.fill(&mut junk);
        let (arg, _) = c.place(&junk);
        let r = c.ioctl("random-cmd", fd, cmd, arg);
        adopt_if_new_fd(c, r);
    }
}

/// A random command may have been a creating one: an fd the result names that is open, of the
/// anon-inode kind, and not in the table is new; it joins the table so it gets closed.
fn adopt_if_new_fd(c: &mut Ctx, r: i64) {
    if r <= 2 || r > i64::from(i32::MAX) {
        return;
    }
    let fd = r as i32;
    let mut t = c.sh.table.lock().unwrap();
    let known = t.devs.contains(&fd) || t.stats.contains(&fd) || t.vms.iter().any(|v| v.fd == fd) || t.vcpus.iter().any(|v| v.fd == fd);
    if !known && crate::sys::fd_target(fd).is_some_and(|l| l.starts_with("anon_inode:")) {
        t.stats.push(fd);
    }
}

/// mmap of a vCPU fd at random offsets, sizes, protections; touches only the pages a vCPU
/// mapping has (`KVM_GET_VCPU_MMAP_SIZE`), then keeps, moves or drops the mapping.
fn vcpu_mmap(c: &mut Ctx) {
    let Some(Target::Vcpu(v)) = target_for(c, On::Vcpu) else { return };
    let pages = (c.sh.mmap_size / PAGE) as u64;
    let pgoff = if c.rng.percent(80) { c.rng.below(pages + 2) } else { c.rng.interesting() & 0xf_ffff_ffff };
    let len = if c.rng.percent(85) { (1 + c.rng.below(pages + 1)) * PAGE as u64 } else { c.rng.interesting() & 0xfff_ffff_ffff };
    let prot = *c.rng.pick(&[
        libc::PROT_READ | libc::PROT_WRITE,
        libc::PROT_READ,
        libc::PROT_WRITE,
        libc::PROT_NONE,
        libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
    ]);
    let flags = if c.rng.percent(75) { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
    let m = Mem::map(len as usize, prot, flags, v.fd, (pgoff as i64).wrapping_mul(PAGE as i64));
    c.syscall("mmap(vcpu)", if m.is_some() { 0 } else { -1 });
    let Some(mut m) = m else { return };
    // Optionally grow or move it first (the mapping has no VM_DONTEXPAND, as upstream).
    if c.rng.percent(20) {
        let new_len = m.len + PAGE * (1 + c.rng.index(2));
        // SAFETY: resizes our own mapping; MREMAP_MAYMOVE lets the kernel move it.
        let p = unsafe { libc::mremap(m.ptr().cast(), m.len, new_len, libc::MREMAP_MAYMOVE) };
        if c.syscall("mremap(vcpu)", if p == libc::MAP_FAILED { -1 } else { 0 }) >= 0 {
            m.forget();
            m = Mem::adopt(p as usize, new_len);
        }
    }
    if prot != libc::PROT_NONE && prot != libc::PROT_WRITE {
        let m_pages = (m.len / PAGE) as u64;
        for i in 0..m_pages.min(8) {
            if pgoff + i < pages {
                // SAFETY: page `pgoff + i` of the vCPU mapping exists (below the mmap size), so
                // reading (and, if writable, writing) it cannot fault.
                unsafe {
                    let p = m.ptr().add(i as usize * PAGE);
                    let _ = std::ptr::read_volatile(p.add(c.rng.index(PAGE)));
                    if prot & libc::PROT_WRITE != 0 && c.rng.percent(30) {
                        // Anything userspace can write the kernel must re-check: kvm_run's
                        // fields and exit data, the PIO data, the coalesced ring's indices
                        // (`first`, `last` at the start of its page) and entries.
                        let at = if c.rng.percent(30) { c.rng.index(16) } else { c.rng.index(PAGE) };
                        std::ptr::write_volatile(p.add(at), c.rng.next() as u8);
                    }
                }
            }
        }
    }
    let mut t = c.sh.table.lock().unwrap();
    if t.maps.len() < MAX_MAPS && c.rng.percent(50) {
        t.maps.push(m);
    }
}

/// pread/read of a stats fd with random offsets, sizes and buffers; sometimes an ioctl.
fn stats_read(c: &mut Ctx) {
    let fd = {
        let t = c.sh.table.lock().unwrap();
        if t.stats.is_empty() {
            None
        } else {
            Some(t.stats[c.rng.index(t.stats.len())])
        }
    };
    let Some(fd) = fd else {
        // Make one through the table.
        let on = if c.rng.percent(50) { On::Vm } else { On::Vcpu };
        if let Some(t) = target_for(c, on) {
            issue_create(c, def("KVM_GET_STATS_FD", on), &t, 0);
        }
        return;
    };
    let len = if c.rng.percent(80) { c.rng.below(ARENA as u64 / 2) } else { c.rng.interesting() };
    let off = if c.rng.percent(70) { c.rng.below(0x1000) } else { c.rng.interesting() };
    let junk = vec![0u8; (len as usize).min(ARENA / 2)];
    let (buf, _) = c.place(&junk);
    let len = if buf == c.arena.addr() as u64 { len.min(ARENA as u64 - 8) } else { len };
    let r = if c.rng.percent(80) {
        // SAFETY: reads into our arena (length bounded by it) or into a bad pointer, which the
        // kernel must refuse with EFAULT.
        unsafe { libc::pread(fd, buf as *mut libc::c_void, len as usize, off as i64) }
    } else {
        // SAFETY: as for the pread above: our arena, bounded, or a pointer the kernel refuses.
        unsafe { libc::read(fd, buf as *mut libc::c_void, len as usize) }
    };
    c.syscall("read(stats)", r as i64);
}

/// fork(): the child's VM and vCPU ioctls must get EIO (another mm), and it may hold the last
/// reference to a VM when it exits (the parent sometimes closes its copy at once).
fn fork_child(c: &mut Ctx) {
    let on = if c.rng.percent(50) { On::Vm } else { On::Vcpu };
    let Some(t) = target_for(c, on) else { return };
    let fd = t.fd();
    let cmd = match t {
        Target::Vm(_) => def("KVM_CHECK_EXTENSION", On::Vm).cmd,
        _ => def("KVM_GET_MP_STATE", On::Vcpu).cmd,
    };
    let (arg, _) = c.place(&[0u8; 8]);
    let delay = c.rng.below(3) as u32 * 500;
    let close_parent = c.rng.percent(30);
    let sh = c.sh.clone();
    let table = sh.table.lock().unwrap();
    // Another thread may have closed the target (and its number been reused) since it was
    // picked: fork only while it is still in the table, so the child's fd is that object.
    let live = match &t {
        Target::Vm(v) => table.vms.iter().any(|x| Arc::ptr_eq(x, v)),
        Target::Vcpu(v) => table.vcpus.iter().any(|x| Arc::ptr_eq(x, v)),
        _ => false,
    };
    if !live {
        return;
    }
    // SAFETY: fork in a threaded process; the child only makes raw system calls (ioctl, usleep,
    // _exit): no allocation, no locks.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            let r = libc::ioctl(fd, cmd as libc::Ioctl, arg as usize);
            let bad = r >= 0 || *libc::__errno_location() != libc::EIO;
            libc::usleep(delay);
            libc::_exit(if bad { 1 } else { 0 });
        }
    }
    drop(table);
    c.sh.ioctls.fetch_add(1, Ordering::Relaxed);
    c.hist.record("child ioctl (wants EIO)", 0);
    // (0 rather than the pid, so that traces of the same seed compare equal.)
    if c.syscall("fork", if pid < 0 { -1 } else { 0 }) < 0 {
        return;
    }
    if close_parent {
        close_kind(c, if matches!(t, Target::Vm(_)) { 1 } else { 3 });
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        c.sh.fail(format!("an ioctl on fd {fd} from a forked child was not refused with EIO (status {status:#x})"));
    }
}

/// Makes the shared flaky region accessible or not under other threads' ioctls.
fn flaky(c: &mut Ctx) {
    let a = c.sh.flaky as *mut libc::c_void;
    // mprotect, not munmap: an unmapped range could be handed to a later mapping of ours.
    let prot = if c.rng.percent(50) { libc::PROT_NONE } else { libc::PROT_READ | libc::PROT_WRITE };
    // SAFETY: the flaky region's address range is reserved for this: nothing of ours but bad
    // pointers ever points there, and the fuzzer never dereferences it.
    let r = unsafe { libc::mprotect(a, 4 * PAGE, prot) as i64 };
    c.syscall("flaky map/unmap", r);
}

// ---- Arg::Custom ioctls ----

/// `KVM_GET_SUPPORTED_CPUID`: room for a random number of entries; the table read back is the
/// template of `KVM_SET_CPUID2`.
pub fn get_supported_cpuid(c: &mut Ctx, t: &Target, d: &Def) {
    cpuid2_out(c, t, d, "supported_cpuid");
}

pub fn get_cpuid2(c: &mut Ctx, t: &Target, d: &Def) {
    cpuid2_out(c, t, d, "cpuid2");
}

const CPUID_ENTRY: usize = std::mem::size_of::<kb::kvm_cpuid_entry2>();

fn cpuid2_out(c: &mut Ctx, t: &Target, d: &Def, key: &'static str) {
    let nent = if c.rng.percent(80) { 64 + c.rng.below(200) as u32 } else { c.rng.interesting() as u32 };
    let room = (nent as usize).min(256);
    let mut bytes = vec![0u8; 8 + room * CPUID_ENTRY];
    bytes[..4].copy_from_slice(&nent.to_le_bytes());
    let (arg, place) = c.place(&bytes);
    if c.ioctl(d.name, t.fd(), d.cmd, arg) >= 0 {
        if let Some(out) = c.read_back(place, bytes.len()) {
            let n = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
            if n <= room {
                c.save(key, out[..8 + n * CPUID_ENTRY].to_vec());
            }
        }
    }
}

/// `KVM_SET_CPUID2`: the supported table (or the vCPU's), mutated, with `nent` sometimes lying.
pub fn set_cpuid2(c: &mut Ctx, t: &Target, d: &Def) {
    let key = if c.rng.percent(70) { "supported_cpuid" } else { "cpuid2" };
    let mut bytes = match c.template(key).cloned() {
        Some(b) => b,
        None => {
            let mut b = vec![0u8; 8 + CPUID_ENTRY * (1 + c.rng.index(4))];
            c.rng.fill(&mut b[8..]);
            let n = ((b.len() - 8) / CPUID_ENTRY) as u32;
            b[..4].copy_from_slice(&n.to_le_bytes());
            b
        }
    };
    if c.rng.percent(40) {
        c.mutate(&mut bytes[8..]);
    }
    if c.rng.percent(10) {
        let n = c.rng.interesting() as u32;
        bytes[..4].copy_from_slice(&n.to_le_bytes());
    }
    let (arg, _) = c.place(&bytes);
    c.ioctl(d.name, t.fd(), d.cmd, arg);
}

/// `KVM_GET_MSR_INDEX_LIST` / `_FEATURE_INDEX_LIST`: capacity random; indices kept for MSR
/// ioctls.
pub fn msr_list(c: &mut Ctx, t: &Target, d: &Def) {
    let cap = if c.rng.percent(80) { c.rng.below(400) as u32 } else { c.rng.interesting() as u32 };
    let room = (cap as usize).min(1024);
    let mut bytes = vec![0u8; 4 + room * 4];
    bytes[..4].copy_from_slice(&cap.to_le_bytes());
    let (arg, place) = c.place(&bytes);
    if c.ioctl(d.name, t.fd(), d.cmd, arg) >= 0 {
        if let Some(out) = c.read_back(place, bytes.len()) {
            let n = (u32::from_le_bytes(out[..4].try_into().unwrap()) as usize).min(room);
            let key = if d.name.contains("FEATURE") { "feature_msrs" } else { "msr_indices" };
            c.save(key, out[4..4 + n * 4].to_vec());
        }
    }
}

/// MSR indices worth trying besides the lists'.
const MSRS: &[u32] = &[
    0x10, 0x1b, 0x3a, 0x3b, 0x48, 0x49, 0x8b, 0xce, 0xfe, 0x174, 0x175, 0x176, 0x179, 0x17a, 0x1a0, 0x1d9, 0x277,
    0x2ff, 0x6e0, 0x800, 0x802, 0x808, 0x80b, 0x80f, 0x830, 0x838, 0x83f, 0x8ff, 0x480, 0x48d, 0x4d0, 0xc000_0080,
    0xc000_0081, 0xc000_0082, 0xc000_0084, 0xc000_0100, 0xc000_0101, 0xc000_0102, 0xc000_0103, 0xc001_0015,
    0x4b56_4d00, 0x4b56_4d01, 0x4000_0000,
];

/// `KVM_GET_MSRS` / `KVM_SET_MSRS` (vCPU) and `KVM_GET_MSRS` of feature MSRs (device).
pub fn msrs(c: &mut Ctx, t: &Target, d: &Def) {
    let nmsrs = if c.rng.percent(85) { c.rng.below(12) as u32 } else { c.rng.interesting() as u32 };
    let room = (nmsrs as usize).min(300);
    let mut bytes = vec![0u8; 8 + room * 16];
    bytes[..4].copy_from_slice(&nmsrs.to_le_bytes());
    let list: Vec<u32> = {
        let key = if matches!(t, Target::Dev(_)) { "feature_msrs" } else { "msr_indices" };
        c.template(key).map(|b| b.chunks(4).map(|x| u32::from_le_bytes(x.try_into().unwrap())).collect()).unwrap_or_default()
    };
    for i in 0..room {
        let e = &mut bytes[8 + i * 16..8 + (i + 1) * 16];
        let index = match c.rng.below(5) {
            0 | 1 if !list.is_empty() => *c.rng.pick(&list),
            0..=2 => *c.rng.pick(MSRS),
            3 => c.rng.next() as u32,
            _ => (*c.rng.pick(MSRS)).wrapping_add(c.rng.below(4) as u32),
        };
        let data = if c.rng.percent(30) { 0 } else { c.rng.interesting() };
        e[..4].copy_from_slice(&index.to_le_bytes());
        e[8..].copy_from_slice(&data.to_le_bytes());
    }
    let (arg, _) = c.place(&bytes);
    c.ioctl(d.name, t.fd(), d.cmd, arg);
}

/// `KVM_SET_SIGNAL_MASK`: NULL, a mask of the right or wrong length. The watchdog's signal is
/// never blocked, so a vCPU can always be kicked out of KVM_RUN.
pub fn signal_mask(c: &mut Ctx, t: &Target, d: &Def) {
    let arg = match c.rng.below(6) {
        0 => 0,
        1 => c.bad_ptr(),
        _ => {
            let len: u32 = if c.rng.percent(80) { 8 } else { c.rng.interesting() as u32 };
            let set = c.rng.next() & !(1u64 << (libc::SIGUSR1 - 1));
            let mut b = len.to_le_bytes().to_vec();
            b.extend_from_slice(&set.to_le_bytes());
            c.place(&b).0
        }
    };
    c.ioctl(d.name, t.fd(), d.cmd, arg);
}

/// `KVM_SET_USER_MEMORY_REGION(2)`: slots, flags, addresses and sizes from sane to hostile.
/// Fresh memory backs a sane region; a hostile one points at nothing, at a read-only page, at
/// the kernel, or at memory that is unmapped right after.
pub fn memory_region(c: &mut Ctx, t: &Target, d: &Def) {
    let vm = t.vm().cloned();
    let slot = table::slot(c, t);
    let flags: u32 = match c.rng.below(10) {
        0..=5 => 0,
        6 => kb::KVM_MEM_LOG_DIRTY_PAGES,
        7 => kb::KVM_MEM_READONLY,
        8 => c.rng.below(8) as u32,
        _ => c.rng.interesting() as u32,
    };
    let delete = c.rng.percent(20);
    let sane = c.rng.percent(75);
    let (gpa, size) = if delete {
        (table::gpa(c, t) & !0xfff, 0)
    } else if sane {
        let pages = if c.rng.percent(80) { 1 + c.rng.below(32) } else { 1 + c.rng.below(512) };
        let gpa = if c.rng.percent(30) { 0 } else { c.rng.below(0x400) * 0x1_0000 };
        (gpa, pages * PAGE as u64)
    } else {
        let gpa = table::gpa(c, t);
        let size = match c.rng.below(4) {
            0 => c.rng.interesting(),
            1 => (1 + c.rng.below(0x10_0000)) << 12,
            _ => *c.rng.pick(&[1u64 << 30, 1 << 40, 0x1001, 0xfff, 1 << 32, (1u64 << 52) - 0x1000, u64::MAX & !0xfff]),
        };
        // A dirty bitmap for a huge slot is a huge kernel allocation: keep those sane-ish.
        let size = if flags & kb::KVM_MEM_LOG_DIRTY_PAGES != 0 { size & 0xffff_ffff } else { size };
        (gpa, size)
    };
    // The backing.
    let mut owned: Option<Arc<Mem>> = None;
    let mut writable = false;
    let uaddr: u64 = if size != 0 && size <= (2 << 20) && (sane || c.rng.percent(50)) {
        match Mem::anon(size as usize, libc::PROT_READ | libc::PROT_WRITE) {
            Some(m) => {
                let a = m.addr() as u64;
                writable = true;
                if c.rng.percent(10) {
                    // Read-only backing: writes through a writable slot must not work.
                    // SAFETY: our own fresh mapping.
                    unsafe { libc::mprotect(m.ptr().cast(), m.len, libc::PROT_READ) };
                    writable = false;
                }
                owned = Some(Arc::new(m));
                if c.rng.percent(5) {
                    writable = false;
                    a + c.rng.below(0x1000)
                } else {
                    a
                }
            }
            None => c.bad_ptr(),
        }
    } else if c.rng.percent(30) {
        0x7000_0000_0000u64 & !0xfff
    } else {
        c.bad_ptr()
    };
    let mut r2: kb::kvm_userspace_memory_region2 = zeroed();
    r2.slot = slot;
    r2.flags = flags;
    r2.guest_phys_addr = gpa;
    r2.memory_size = size;
    r2.userspace_addr = uaddr;
    if c.rng.percent(10) {
        r2.guest_memfd = c.rng.below(20) as u32;
        r2.guest_memfd_offset = c.rng.interesting();
    }
    if c.rng.percent(5) {
        r2.pad1 = c.rng.next() as u32;
    }
    let bytes = if d.name.ends_with('2') {
        bytes_of(&r2)
    } else {
        let r1 = kb::kvm_userspace_memory_region { slot, flags, guest_phys_addr: gpa, memory_size: size, userspace_addr: uaddr };
        bytes_of(&r1)
    };
    let (arg, _) = c.place(&bytes);
    let r = c.ioctl(d.name, t.fd(), d.cmd, arg);
    let Some(vm) = vm else { return };
    if r < 0 {
        return;
    }
    let logging = flags & kb::KVM_MEM_LOG_DIRTY_PAGES != 0;
    let mut regions = vm.regions.lock().unwrap();
    let (old, mut keep): (Vec<Region>, Vec<Region>) = regions.drain(..).partition(|x| x.slot == slot);
    for r in old {
        vm.bury(r.mem);
    }
    if size != 0 {
        // Sometimes the fuzzer takes the memory away at once: the slot stays, backed by an
        // inaccessible range.
        if c.rng.percent(10) {
            vm.bury(owned);
            keep.push(Region { slot, gpa, len: size, mem: None, writable: false, logging });
        } else {
            keep.push(Region { slot, gpa, len: size, mem: owned, writable, logging });
        }
        if keep.len() > MAX_REGIONS {
            let r = keep.remove(0);
            vm.bury(r.mem);
        }
    }
    *regions = keep;
}

/// `KVM_RUN`, with the `kvm_run` fields userspace owns set at random first.
pub fn run(c: &mut Ctx, t: &Target, d: &Def) {
    let arg = if c.rng.percent(97) { 0 } else { c.rng.interesting() };
    if let Target::Vcpu(v) = t {
        if let Some(m) = &v.run {
            let run = m.ptr().cast::<kb::kvm_run>();
            // SAFETY: `run` is this vCPU's kvm_run mapping (MAP_SHARED, read-write, alive as long
            // as `v`); the fields written are plain integers userspace owns.
            unsafe {
                let immediate = u8::from(c.rng.percent(8));
                std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(immediate);
                std::ptr::addr_of_mut!((*run).request_interrupt_window).write_volatile(u8::from(c.rng.percent(20)));
                let cr8 = if c.rng.percent(90) { 0 } else if c.rng.percent(70) { c.rng.below(16) } else { c.rng.interesting() };
                std::ptr::addr_of_mut!((*run).cr8).write_volatile(cr8);
                let (valid, dirty) = if c.rng.percent(80) {
                    (0, 0)
                } else if c.rng.percent(80) {
                    (c.rng.below(8), c.rng.below(8))
                } else {
                    (c.rng.interesting(), c.rng.interesting())
                };
                std::ptr::addr_of_mut!((*run).kvm_valid_regs).write_volatile(valid);
                std::ptr::addr_of_mut!((*run).kvm_dirty_regs).write_volatile(dirty);
                if dirty != 0 && c.rng.percent(30) {
                    // Junk in the synced registers.
                    let s = std::ptr::addr_of_mut!((*run).s).cast::<u8>();
                    for _ in 0..1 + c.rng.below(8) {
                        s.add(c.rng.index(std::mem::size_of::<kb::kvm_run__bindgen_ty_2>())).write_volatile(c.rng.next() as u8);
                    }
                }
                // An MSR exit (a filtered or unknown MSR, KVM_CAP_X86_USER_SPACE_MSR) is completed
                // with userspace's answer: the data of an RDMSR, or an error (#GP). The values are
                // drawn whatever the last exit was, so the choices never depend on the guest.
                let msr_error = u8::from(c.rng.percent(25));
                let msr_data = c.rng.interesting();
                let last = std::ptr::addr_of!((*run).exit_reason).read_volatile();
                if last == kb::KVM_EXIT_X86_RDMSR || last == kb::KVM_EXIT_X86_WRMSR {
                    let m = std::ptr::addr_of_mut!((*run).__bindgen_anon_1.msr);
                    std::ptr::addr_of_mut!((*m).error).write_volatile(msr_error);
                    std::ptr::addr_of_mut!((*m).data).write_volatile(msr_data);
                }
                if c.rng.percent(10) {
                    // Junk in the exit data (completion of an I/O or MMIO exit reads it).
                    let e = std::ptr::addr_of_mut!((*run).__bindgen_anon_1).cast::<u8>();
                    for _ in 0..1 + c.rng.below(8) {
                        e.add(c.rng.index(256)).write_volatile(c.rng.next() as u8);
                    }
                }
            }
        }
    }
    let r = c.ioctl(d.name, t.fd(), d.cmd, arg);
    if r >= 0 {
        if let Target::Vcpu(v) = t {
            if let Some(m) = &v.run {
                // SAFETY: as above; a plain integer field the kernel filled.
                let reason = unsafe { std::ptr::addr_of!((*m.ptr().cast::<kb::kvm_run>()).exit_reason).read_volatile() };
                *c.hist.exits.entry(reason).or_default() += 1;
            }
        }
    }
}

/// A guest set up from scratch and run: RAM at 0 (registered if missing), code and tables for a
/// random CPU mode, registers, then a few KVM_RUNs (all through the table's ioctls).
fn guest_session(c: &mut Ctx) {
    let Some(Target::Vcpu(v)) = target_for(c, On::Vcpu) else { return };
    let t = Target::Vcpu(v.clone());
    let vm_t = Target::Vm(v.vm.clone());
    if v.vm.with_low_ram(guest::RAM_MIN, |_| ()).is_none() {
        let Some(m) = Mem::anon(guest::RAM_MIN as usize * (1 + c.rng.index(4)), libc::PROT_READ | libc::PROT_WRITE) else { return };
        let slot = c.rng.below(8) as u32;
        let flags = if c.rng.percent(20) { kb::KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
        let r = kb::kvm_userspace_memory_region { slot, flags, guest_phys_addr: 0, memory_size: m.len as u64, userspace_addr: m.addr() as u64 };
        let d = def("KVM_SET_USER_MEMORY_REGION", On::Vm);
        let (arg, _) = c.place(&bytes_of(&r));
        if c.ioctl(d.name, vm_t.fd(), d.cmd, arg) < 0 {
            return;
        }
        let mut regions = v.vm.regions.lock().unwrap();
        let (old, mut keep): (Vec<Region>, Vec<Region>) = regions.drain(..).partition(|x| x.slot == slot);
        for r in old {
            v.vm.bury(r.mem);
        }
        keep.push(Region { slot, gpa: 0, len: m.len as u64, mem: Some(Arc::new(m)), writable: true, logging: flags != 0 });
        *regions = keep;
    }
    // The VM's newer devices first, so that the guest can aim at them: ioeventfds on ports and
    // addresses the guests write, an MSR filter whose denials exit to userspace or raise #GP,
    // machine-check banks.
    if c.rng.percent(35) {
        for _ in 0..1 + c.rng.below(3) {
            let p = prep_ioeventfd(c, &vm_t, true);
            side_now(c, p);
        }
    }
    if c.rng.percent(35) {
        let mut p = prep_user_space_msr(c, &vm_t);
        if c.rng.percent(70) {
            // Filter denials exit to userspace (KVM_MSR_EXIT_REASON_FILTER), mostly.
            let mut e: kb::kvm_enable_cap = zeroed();
            e.cap = kb::KVM_CAP_X86_USER_SPACE_MSR;
            e.args[0] = u64::from(kb::KVM_MSR_EXIT_REASON_FILTER) | c.rng.below(4);
            let (arg, _) = c.place(&bytes_of(&e));
            p.arg = arg;
        }
        side_now(c, p);
        let p = prep_msr_filter(c, &v.vm);
        side_now(c, p);
    }
    if c.rng.percent(10) {
        let p = prep_setup_mce(c, &v);
        side_now(c, p);
    }
    let hints = v.vm.hints();
    let mode = *c.rng.pick(&guest::MODES);
    let mut sregs: kb::kvm_sregs = c.template("sregs").map(|b| from_bytes(b)).unwrap_or_else(zeroed);
    let mut regs: kb::kvm_regs = zeroed();
    let rng = &mut c.rng;
    if v.vm.with_low_ram(guest::RAM_MIN, |mem| guest::build(rng, mode, &hints, mem, &mut sregs, &mut regs)).is_none() {
        return;
    }
    let sd = def("KVM_SET_SREGS", On::Vcpu);
    let (arg, _) = c.place(&bytes_of(&sregs));
    c.ioctl(sd.name, t.fd(), sd.cmd, arg);
    let rd = def("KVM_SET_REGS", On::Vcpu);
    let (arg, _) = c.place(&bytes_of(&regs));
    c.ioctl(rd.name, t.fd(), rd.cmd, arg);
    if c.rng.percent(30) {
        issue(c, def("KVM_SET_CPUID2", On::Vcpu), &t);
    }
    if c.rng.percent(15) {
        let p = prep_guest_debug(c, &v);
        side_now(c, p);
    }
    let rund = def("KVM_RUN", On::Vcpu);
    for _ in 0..1 + c.rng.below(6) {
        // Between runs, or during one from another thread: an ioeventfd comes or goes, the
        // filter changes, single-step or breakpoints start or stop, a machine check arrives.
        if c.rng.percent(30) {
            let p = prep_side(c, &v);
            if c.rng.percent(50) {
                side_during_run(c, &t, rund, p);
                continue;
            }
            side_now(c, p);
        }
        run(c, &t, rund);
    }
}

/// An ioctl prepared for a guest session (its argument placed in the arena), and what to
/// remember if it succeeds.
struct Side {
    d: &'static Def,
    fd: i32,
    arg: u64,
    post: Post,
}

enum Post {
    Nothing,
    Ioeventfd(Arc<VmObj>, kb::kvm_ioeventfd),
    Filter(Arc<VmObj>, Vec<u32>),
    Banks(Arc<VcpuObj>, u32),
}

/// Records what a successful call changed.
fn side_done(post: Post, r: i64) {
    if r < 0 {
        return;
    }
    match post {
        Post::Nothing => {}
        Post::Ioeventfd(vm, e) => {
            let mut l = vm.ioeventfds.lock().unwrap();
            if e.flags & gens::IOEVENTFD_DEASSIGN != 0 {
                let same = |x: &kb::kvm_ioeventfd| {
                    let m = gens::IOEVENTFD_PIO | gens::IOEVENTFD_DATAMATCH;
                    x.addr == e.addr
                        && x.len == e.len
                        && x.flags & m == e.flags & m
                        && (e.flags & gens::IOEVENTFD_DATAMATCH == 0 || x.datamatch == e.datamatch)
                };
                if let Some(i) = l.iter().position(same) {
                    l.remove(i);
                }
            } else {
                if l.len() >= MAX_IOEVENTFDS {
                    l.remove(0);
                }
                l.push(e);
            }
        }
        Post::Filter(vm, msrs) => *vm.filter_msrs.lock().unwrap() = msrs,
        Post::Banks(v, banks) => v.mce_banks.store(banks, Ordering::Relaxed),
    }
}

/// Issues a prepared call now.
fn side_now(c: &mut Ctx, p: Side) {
    let r = c.ioctl(p.d.name, p.fd, p.d.cmd, p.arg);
    side_done(p.post, r);
}

/// The histogram's name of a call made from a helper thread during KVM_RUN.
fn during(name: &str) -> &'static str {
    match name {
        "KVM_IOEVENTFD" => "KVM_IOEVENTFD (during KVM_RUN)",
        "KVM_X86_SET_MSR_FILTER" => "KVM_X86_SET_MSR_FILTER (during KVM_RUN)",
        "KVM_SET_GUEST_DEBUG" => "KVM_SET_GUEST_DEBUG (during KVM_RUN)",
        "KVM_X86_SET_MCE" => "KVM_X86_SET_MCE (during KVM_RUN)",
        "KVM_X86_SETUP_MCE" => "KVM_X86_SETUP_MCE (during KVM_RUN)",
        "KVM_ENABLE_CAP" => "KVM_ENABLE_CAP (during KVM_RUN)",
        _ => "other (during KVM_RUN)",
    }
}

/// KVM_RUN on this thread while a helper thread issues the prepared call after a short,
/// seeded delay (a VM ioctl runs alongside the guest; a vCPU one waits for the vCPU). The
/// arena holds the argument: nothing else uses it until both are done.
fn side_during_run(c: &mut Ctx, t: &Target, rund: &'static Def, p: Side) {
    let delay = std::time::Duration::from_micros(c.rng.below(3000));
    let (fd, cmd, arg) = (p.fd, p.d.cmd, p.arg);
    let seq = c.sh.ioctls.fetch_add(1, Ordering::Relaxed);
    let r = std::thread::scope(|s| {
        let h = s.spawn(move || {
            std::thread::sleep(delay);
            // SAFETY: an ioctl on an fd of ours with an argument in this thread's arena (or a
            // deliberately bad pointer), which stays untouched until the join below.
            let r = unsafe { libc::ioctl(fd, cmd as libc::Ioctl, arg as usize) };
            if r < 0 {
                -(errno() as i64)
            } else {
                r as i64
            }
        });
        run(c, t, rund);
        h.join().unwrap_or(-(libc::EIO as i64))
    });
    let name = during(p.d.name);
    c.hist.record(name, if r < 0 { -r as i32 } else { 0 });
    if seq >= c.sh.trace_from {
        println!("# [{}] #{seq} {name} fd={fd} cmd={cmd:#x} arg={arg:#x} -> {r}", c.tid);
    }
    side_done(p.post, r);
}

/// One of the session's side calls, at random.
fn prep_side(c: &mut Ctx, v: &Arc<VcpuObj>) -> Side {
    let vm_t = Target::Vm(v.vm.clone());
    match c.rng.below(8) {
        0 | 1 => {
            let g = c.rng.percent(50);
            prep_ioeventfd(c, &vm_t, g)
        }
        2 => prep_msr_filter(c, &v.vm),
        3 => prep_user_space_msr(c, &vm_t),
        4 | 5 => prep_guest_debug(c, v),
        6 => prep_set_mce(c, v),
        _ => prep_setup_mce(c, v),
    }
}

/// Places `bytes` (mutated sometimes) for `d` on `fd`.
fn prep_bytes(c: &mut Ctx, d: &'static Def, fd: i32, mut bytes: Vec<u8>, post: Post) -> Side {
    let post = if c.rng.percent(8) {
        c.mutate(&mut bytes);
        Post::Nothing
    } else {
        post
    };
    let (arg, place) = c.place(&bytes);
    let post = if matches!(place, Place::Valid(_)) { post } else { Post::Nothing };
    Side { d, fd, arg, post }
}

/// `KVM_IOEVENTFD` (`gens::ioeventfd`); `for_guest`: a real eventfd on a port or address the
/// guests write, of a width they use.
fn prep_ioeventfd(c: &mut Ctx, t: &Target, for_guest: bool) -> Side {
    let d = def("KVM_IOEVENTFD", On::Vm);
    let fds = c.fds();
    let (ranges, reg) = t.vm().map(|v| (v.ranges(), v.ioeventfds.lock().unwrap().clone())).unwrap_or_default();
    let mut e = gens::ioeventfd(&mut c.rng, &ranges, &reg, &fds);
    if for_guest {
        let pio = c.rng.percent(50);
        e.flags &= gens::IOEVENTFD_DATAMATCH;
        e.len = *c.rng.pick(if pio { &[1u32, 2, 4, 4][..] } else { &[1u32, 2, 4, 8, 4][..] });
        if pio {
            e.flags |= gens::IOEVENTFD_PIO;
            e.addr = *c.rng.pick(gens::GUEST_PORTS);
        } else {
            e.addr = *c.rng.pick(gens::GUEST_MMIO);
        }
        e.datamatch &= if e.len == 8 { u64::MAX } else { (1 << (8 * e.len)) - 1 };
        if !fds.eventfds.is_empty() {
            e.fd = *c.rng.pick(&fds.eventfds);
        }
    }
    let post = match t.vm() {
        Some(vm) => Post::Ioeventfd(vm.clone(), e),
        None => Post::Nothing,
    };
    prep_bytes(c, d, t.fd(), bytes_of(&e), post)
}

/// Where MSR filter bitmaps go in the arena: 16 slots of the largest size, past the argument.
const BITMAPS: usize = 0x4000;

/// `KVM_X86_SET_MSR_FILTER` (`gens::msr_filter`), bitmaps written into the arena.
fn prep_msr_filter(c: &mut Ctx, vm: &Arc<VmObj>) -> Side {
    let (bytes, msrs) = msr_filter_bytes(c);
    prep_bytes(c, def("KVM_X86_SET_MSR_FILTER", On::Vm), vm.fd, bytes, Post::Filter(vm.clone(), msrs))
}

fn msr_filter_bytes(c: &mut Ctx) -> (Vec<u8>, Vec<u32>) {
    let (flags, ranges) = gens::msr_filter(&mut c.rng);
    let mut f: kb::kvm_msr_filter = zeroed();
    f.flags = flags;
    let max = kb::KVM_MSR_FILTER_MAX_BITMAP_SIZE as usize;
    for (i, g) in ranges.iter().enumerate().take(f.ranges.len()) {
        let ptr = match g.at {
            gens::BitmapAt::Area => c.scratch(BITMAPS + i * max, &g.bitmap),
            gens::BitmapAt::AcrossGuard => {
                let half = g.bitmap.len() / 2;
                c.scratch(ARENA - half, &g.bitmap[..half])
            }
            gens::BitmapAt::Bad => c.bad_ptr(),
        };
        f.ranges[i] = kb::kvm_msr_filter_range { flags: g.flags, nmsrs: g.nmsrs, base: g.base, bitmap: ptr as *mut u8 };
    }
    (bytes_of(&f), gens::filter_msrs(&ranges))
}

/// `KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)`.
fn prep_user_space_msr(c: &mut Ctx, t: &Target) -> Side {
    let mut e: kb::kvm_enable_cap = zeroed();
    e.cap = kb::KVM_CAP_X86_USER_SPACE_MSR;
    e.args[0] = gens::user_space_msr_mask(&mut c.rng);
    if c.rng.percent(5) {
        e.flags = c.rng.interesting() as u32;
    }
    prep_bytes(c, def("KVM_ENABLE_CAP", On::Vm), t.fd(), bytes_of(&e), Post::Nothing)
}

fn prep_guest_debug(c: &mut Ctx, v: &Arc<VcpuObj>) -> Side {
    let g = gens::guest_debug(&mut c.rng, guest::CODE);
    prep_bytes(c, def("KVM_SET_GUEST_DEBUG", On::Vcpu), v.fd, bytes_of(&g), Post::Nothing)
}

fn prep_setup_mce(c: &mut Ctx, v: &Arc<VcpuObj>) -> Side {
    let cap = gens::mcg_cap(&mut c.rng);
    prep_bytes(c, def("KVM_X86_SETUP_MCE", On::Vcpu), v.fd, cap.to_le_bytes().to_vec(), Post::Banks(v.clone(), (cap & 0xff) as u32))
}

fn prep_set_mce(c: &mut Ctx, v: &Arc<VcpuObj>) -> Side {
    let m = gens::mce(&mut c.rng, v.mce_banks.load(Ordering::Relaxed));
    prep_bytes(c, def("KVM_X86_SET_MCE", On::Vcpu), v.fd, bytes_of(&m), Post::Nothing)
}

// Table entries of the same ioctls (any target, wrong kinds included).

/// `KVM_IOEVENTFD` from the table.
pub fn ioeventfd(c: &mut Ctx, t: &Target, _: &Def) {
    let g = c.rng.percent(20);
    let p = prep_ioeventfd(c, t, g);
    side_now(c, p);
}

/// `KVM_X86_SET_MSR_FILTER` from the table.
pub fn msr_filter(c: &mut Ctx, t: &Target, d: &Def) {
    match t.vm() {
        Some(vm) => {
            let p = prep_msr_filter(c, &vm.clone());
            side_now(c, p);
        }
        None => {
            let (bytes, _) = msr_filter_bytes(c);
            let (arg, _) = c.place(&bytes);
            c.ioctl(d.name, t.fd(), d.cmd, arg);
        }
    }
}

/// `KVM_X86_SETUP_MCE` / `KVM_X86_SET_MCE` from the table.
pub fn mce(c: &mut Ctx, t: &Target, d: &Def) {
    match t {
        Target::Vcpu(v) if d.name == "KVM_X86_SETUP_MCE" => {
            let p = prep_setup_mce(c, v);
            side_now(c, p);
        }
        Target::Vcpu(v) => {
            let p = prep_set_mce(c, v);
            side_now(c, p);
        }
        _ => {
            let bytes = if d.name == "KVM_X86_SETUP_MCE" { gens::mcg_cap(&mut c.rng).to_le_bytes().to_vec() } else { bytes_of(&gens::mce(&mut c.rng, 32)) };
            let (arg, _) = c.place(&bytes);
            c.ioctl(d.name, t.fd(), d.cmd, arg);
        }
    }
}

/// A non-blocking read of an eventfd (did an ioeventfd fire?), or its close (the ioeventfds
/// that name it keep their reference; later ones get its number, closed or reused).
fn eventfd_op(c: &mut Ctx) {
    let close = c.rng.percent(15);
    let mut t = c.sh.table.lock().unwrap();
    if t.eventfds.is_empty() {
        return;
    }
    let i = c.rng.index(t.eventfds.len());
    let fd = t.eventfds[i];
    if close {
        t.eventfds.swap_remove(i);
        // SAFETY: an eventfd this process opened, just removed from the table (under its lock,
        // so its number is not handed out again before).
        let r = unsafe { libc::close(fd) };
        drop(t);
        c.syscall("close(eventfd)", i64::from(r));
        if c.closed_fds.len() < 8 {
            c.closed_fds.push(fd);
        }
        return;
    }
    drop(t);
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a local; a non-blocking eventfd (or, after a race with another
    // thread's close, whatever has the number: the read fails or fills the local).
    let r = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    c.syscall("read(eventfd)", r as i64);
}

/// Everything still open, closed at the end: every close must succeed.
pub fn close_all(sh: &Shared) -> Result<usize, String> {
    let mut t = sh.table.lock().unwrap();
    let mut fds: Vec<i32> = t.stats.drain(..).collect();
    fds.extend(t.eventfds.drain(..));
    fds.extend(t.vcpus.iter().map(|v| v.fd));
    fds.extend(t.vms.iter().map(|v| v.fd));
    fds.extend(t.devs.drain(..));
    let n = fds.len();
    // Close order: random-ish is what the run did; here stats, vCPUs, VMs, devices.
    for fd in fds {
        // SAFETY: fds this process opened and still holds.
        if unsafe { libc::close(fd) } != 0 {
            return Err(format!("close({fd}): errno {}", errno()));
        }
    }
    t.vcpus.clear();
    t.vms.clear();
    t.maps.clear();
    Ok(n)
}

//! Pure x86 knowledge: control-register and EFER rules, segment access rights, RESET state,
//! guest debugging (debug registers, `KVM_SET_GUEST_DEBUG`), the MMIO instruction decoder, guest
//! page-table walks, guest MSR, TSC and CPUID rules, the XSAVE area of a vCPU with x87, SSE and
//! AVX, the MSR filter and the machine-check architecture.
//!
//! No kernel dependency: host `cargo test` runs these files (see `rust/tests/`). The architectural
//! bit values here are checked against the kernel's own headers at build time (`vcpu.rs` asserts
//! each equals its bindgen constant), so they cannot drift.

pub mod cpuid;
pub mod cr;
pub mod debug;
pub mod decode;
pub mod mce;
pub mod msr;
pub mod msr_filter;
pub mod segment;
pub mod pvclock;
pub mod tsc;
pub mod walk;
pub mod xsave;

// SPDX-License-Identifier: GPL-2.0

//! rkvm: a KVM-compatible hypervisor module in Rust.
//!
//! This is the crate root. It registers the misc device (`/dev/rkvm`, or `/dev/kvm` with
//! `devname=kvm`) whose file operations lead, as in upstream KVM, through three kinds of file:
//!
//! ```text
//! /dev/rkvm ──ioctl──▶ dev::ioctl   (kvm_dev_ioctl)   ──KVM_CREATE_VM──▶  VM fd
//! VM fd     ──ioctl──▶ vm::ioctl    (kvm_vm_ioctl)    ──KVM_CREATE_VCPU─▶ vCPU fd
//! vCPU fd   ──ioctl──▶ vcpu::ioctl  (kvm_vcpu_ioctl)  ──KVM_RUN─────────▶ backend
//! ```
//!
//! The backend (the `kvm_x86_ops` analogue, chosen with `backend=`) sits behind the vm/vcpu code.
//! Module parameters are declared in `ffi/helpers.c` (6.12's `module!` has none):
//! `backend=vmx|none` and `devname=rkvm|kvm`.

// `pin_init!` munches one field per recursion step: `Vm` (slots, coalesced ring, stats, TSC
// synchronisation, VM-wide MSR settings) outgrows the default limit of 128.
#![recursion_limit = "256"]

use kernel::prelude::*;

mod backend;
mod caps;
#[allow(unreachable_pub)] // pure file, also compiled by the host tests
mod coalesced;
mod dev;
// Pure: dirty page logging rules (host-tested).
#[allow(dead_code, unreachable_pub)]
mod dirty;
mod ffi;
// Pure: the MMU notifier's invalidation window and hva index (host-tested).
#[allow(dead_code, unreachable_pub)]
mod invalidate;
#[allow(unreachable_pub)] // pure file, also compiled by the host tests
mod iobus;
mod ioeventfd;
mod irq;
// The pure modules carry API that host tests and later backends use.
#[allow(dead_code, unreachable_pub)]
mod memslot;
mod mmu_notifier;
mod none;
mod pv;
#[allow(unreachable_pub)] // pure file, also compiled by the host tests
mod stats;
mod statsfd;
mod vcpu;
mod vm;
mod vmx;
#[allow(dead_code, unreachable_pub)]
mod x86;

module! {
    type: Rkvm,
    name: "rkvm",
    author: "The rkvm developers",
    description: "KVM-compatible hypervisor written in Rust",
    license: "GPL",
}

/// The loaded module: the registered device, which owns the selected backend.
struct Rkvm {
    _dev: ffi::miscdev::Registration<dev::DeviceData>,
}

impl kernel::Module for Rkvm {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let backend = backend::select(ffi::param(ffi::bindings::rkvm_param_backend))?;
        let dev = dev::register(ffi::param(ffi::bindings::rkvm_param_devname), backend)?;
        Ok(Rkvm { _dev: dev })
    }
}

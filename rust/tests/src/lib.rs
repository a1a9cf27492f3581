//! Host unit tests of rkvm's kernel-independent files.
//!
//! The module's pure files are compiled here unchanged (through `#[path]`), so what is tested is
//! exactly what the kernel build compiles.

#[path = "../../coalesced.rs"]
pub mod coalesced;
/// I/O buses: coalesced zones and ioeventfds in upstream's order.
#[path = "../../iobus.rs"]
pub mod iobus;
#[path = "../../memslot.rs"]
pub mod memslot;
/// The MMU notifier's invalidation window and hva index.
#[path = "../../invalidate.rs"]
pub mod invalidate;
/// Dirty page logging rules.
#[path = "../../dirty.rs"]
pub mod dirty;
#[path = "../../stats.rs"]
pub mod stats;
#[path = "../../x86/mod.rs"]
pub mod x86;
/// The pure part of the VMX backend.
#[path = "../../vmx/config.rs"]
pub mod vmx_config;
/// Event injection rules of the VMX backend.
#[path = "../../vmx/events.rs"]
pub mod vmx_events;
/// Intel PT context rules of the VMX backend.
#[path = "../../vmx/pt.rs"]
pub mod vmx_pt;
/// The local APIC model.
#[path = "../../irq/lapic.rs"]
pub mod lapic;
/// The in-kernel IOAPIC.
#[path = "../../irq/ioapic.rs"]
pub mod ioapic;
/// The in-kernel PIC pair and ELCR.
#[path = "../../irq/pic.rs"]
pub mod pic;

#[cfg(test)]
mod coalesced_tests;
#[cfg(test)]
mod cpuid_tests;
#[cfg(test)]
mod debug_tests;
#[cfg(test)]
mod decode_tests;
#[cfg(test)]
mod dirty_tests;
#[cfg(test)]
mod events_tests;
#[cfg(test)]
mod invalidate_tests;
#[cfg(test)]
mod iobus_tests;
#[cfg(test)]
mod ioapic_tests;
#[cfg(test)]
mod lapic_tests;
#[cfg(test)]
mod mce_tests;
#[cfg(test)]
mod memslot_tests;
#[cfg(test)]
mod msr_filter_tests;
#[cfg(test)]
mod msr_tests;
#[cfg(test)]
mod pic_tests;
#[cfg(test)]
mod pt_tests;
#[cfg(test)]
mod stats_tests;
#[cfg(test)]
mod tsc_tests;
#[cfg(test)]
mod pvclock_tests;
#[cfg(test)]
mod vmx_config_tests;
#[cfg(test)]
mod x86_tests;
#[cfg(test)]
mod xsave_tests;

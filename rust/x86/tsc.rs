//! The guest TSC: how the VM keeps its vCPUs' TSCs in step when they are created or when
//! userspace writes IA32_TSC (upstream: `kvm_synchronize_tsc` / `__kvm_synchronize_tsc` in
//! arch/x86/kvm/x86.c), and how guest writes of IA32_TSC and IA32_TSC_ADJUST move a vCPU's offset
//! (upstream: the `MSR_IA32_TSC` and `MSR_IA32_TSC_ADJUST` cases of `kvm_set_msr_common`).
//!
//! rkvm has no TSC scaling: a guest's TSC runs at the host's rate, so the guest TSC is always
//! `host TSC + offset` (upstream's `kvm_compute_l1_tsc_offset` with a ratio of 1).
//!
//! Pure: the host TSC, the time and the TSC rate come in as arguments, so host `cargo test`
//! checks the rules.

/// The VM-wide record of the last TSC write (upstream: the `last_tsc_*` / `cur_tsc_*` fields of
/// `struct kvm_arch`, under `tsc_write_lock`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TscSync {
    /// When the last write happened (ns) and the value written (`last_tsc_nsec`,
    /// `last_tsc_write`).
    pub last_ns: u64,
    pub last_write: u64,
    /// The TSC rate of the last write, 0 before the first (`last_tsc_khz`).
    pub last_khz: u64,
    /// The offset of the current generation of matched writes (`cur_tsc_offset`).
    pub cur_offset: u64,
    /// Userspace has written IA32_TSC at least once (`user_set_tsc`).
    pub user_set: bool,
}

impl TscSync {
    /// A vCPU's TSC is being set (upstream `kvm_synchronize_tsc`): `user` is the value
    /// userspace wrote to IA32_TSC, `None` at vCPU creation (which means 0). Returns the vCPU's
    /// new TSC offset.
    ///
    /// A creation, a write of 0, or (once userspace has written before) a write within one
    /// second of where the previous write's TSC would be now, "matches": the vCPU gets the
    /// current generation's offset, so vCPUs created or restored one after the other share one
    /// TSC. With an unstable host TSC the elapsed time is added to the value instead.
    pub fn synchronize(&mut self, user: Option<u64>, host_tsc: u64, now_ns: u64, khz: u64, unstable: bool) -> u64 {
        let mut data = user.unwrap_or(0);
        let mut offset = data.wrapping_sub(host_tsc);
        let elapsed = now_ns.wrapping_sub(self.last_ns);
        let synchronizing = khz != 0
            && (data == 0 || {
                self.user_set && {
                    let exp = self.last_write.wrapping_add(cycles(elapsed, khz));
                    let hz = khz * 1000;
                    data < exp.wrapping_add(hz) && data.wrapping_add(hz) > exp
                }
            });
        if user.is_some() {
            self.user_set = true;
        }
        let matched = synchronizing && khz == self.last_khz;
        if matched {
            if unstable {
                data = data.wrapping_add(cycles(elapsed, khz));
                offset = data.wrapping_sub(host_tsc);
            } else {
                offset = self.cur_offset;
            }
        }
        self.last_ns = now_ns;
        self.last_write = data;
        self.last_khz = khz;
        if !matched {
            self.cur_offset = offset;
        }
        offset
    }
}

/// TSC cycles in `ns` nanoseconds at `khz` (upstream `nsec_to_cycles`), saturating. No u128
/// division (the kernel does not link it): whole milliseconds and the rest apart.
pub fn cycles(ns: u64, khz: u64) -> u64 {
    const MS: u64 = 1_000_000;
    (ns / MS).saturating_mul(khz).saturating_add((ns % MS).saturating_mul(khz) / MS)
}

/// One vCPU's TSC state besides its offset (upstream `vcpu->arch.ia32_tsc_adjust_msr`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TscAdjust(pub u64);

impl TscAdjust {
    /// A guest WRMSR of IA32_TSC (upstream `kvm_set_msr_common`, not host-initiated): the
    /// offset moves so the TSC reads `value` now, and IA32_TSC_ADJUST moves by as much.
    /// Returns the new offset.
    pub fn guest_write_tsc(&mut self, offset: u64, value: u64, host_tsc: u64) -> u64 {
        let adj = value.wrapping_sub(host_tsc).wrapping_sub(offset);
        self.0 = self.0.wrapping_add(adj);
        offset.wrapping_add(adj)
    }

    /// A write of IA32_TSC_ADJUST when the guest's CPUID has TSC_ADJUST: from the guest, the
    /// TSC moves by the difference; from userspace only the MSR changes (migration restores
    /// the TSC separately). Returns the new offset.
    pub fn write_adjust(&mut self, offset: u64, value: u64, host: bool) -> u64 {
        let adj = value.wrapping_sub(self.0);
        self.0 = value;
        if host {
            offset
        } else {
            offset.wrapping_add(adj)
        }
    }
}

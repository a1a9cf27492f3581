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
    /// The generation of matched writes (`cur_tsc_generation`): each write that does not match
    /// starts a new one. 0 before the first write.
    pub generation: u64,
    /// vCPUs that joined the current generation besides the one that started it
    /// (`nr_vcpus_matched_tsc`).
    pub nr_matched: u32,
    /// vCPUs created (upstream reads `online_vcpus`).
    pub vcpus: u32,
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
            self.generation += 1;
        }
        offset
    }

    /// [`TscSync::synchronize`] for a vCPU whose TSC generation is `*gen` (upstream
    /// `this_tsc_generation`; 0 for a new vCPU), which it updates: a match counts the vCPU into
    /// the current generation once (upstream `kvm_track_tsc_matching`'s bookkeeping in
    /// `__kvm_synchronize_tsc`), a mismatch starts a new one with only this vCPU.
    pub fn synchronize_vcpu(
        &mut self,
        gen: &mut u64,
        user: Option<u64>,
        host_tsc: u64,
        now_ns: u64,
        khz: u64,
        unstable: bool,
    ) -> u64 {
        if user.is_none() {
            self.vcpus += 1;
        }
        let before = self.generation;
        let offset = self.synchronize(user, host_tsc, now_ns, khz, unstable);
        self.track(gen, self.generation == before);
        offset
    }

    /// Userspace sets a vCPU's TSC offset directly (`KVM_SET_DEVICE_ATTR` with
    /// `KVM_VCPU_TSC_OFFSET`; upstream `kvm_arch_tsc_set_attr` → `__kvm_synchronize_tsc`): it
    /// matches when the rate is the last write's and the offset is the current generation's.
    pub fn set_offset(&mut self, gen: &mut u64, offset: u64, host_tsc: u64, now_ns: u64, khz: u64) {
        let matched = khz != 0 && khz == self.last_khz && offset == self.cur_offset && self.generation != 0;
        self.user_set = true;
        self.last_ns = now_ns;
        self.last_write = host_tsc.wrapping_add(offset);
        self.last_khz = khz;
        if !matched {
            self.cur_offset = offset;
            self.generation += 1;
        }
        self.track(gen, matched);
    }

    fn track(&mut self, gen: &mut u64, matched: bool) {
        if !matched {
            self.nr_matched = 0;
        } else if *gen != self.generation {
            self.nr_matched += 1;
        }
        *gen = self.generation;
    }

    /// Every vCPU's TSC is in the current generation (upstream `vcpus_matched` in
    /// `pvclock_update_vm_gtod_copy`: `nr_vcpus_matched_tsc + 1 == online_vcpus`).
    pub fn vcpus_matched(&self) -> bool {
        self.nr_matched + 1 == self.vcpus
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

// SPDX-License-Identifier: GPL-2.0
/*
 * rkvm_hoststate: a probe of the host CPU state a hypervisor must leave as it found it (not
 * part of rkvm; used by scripts/check.sh and scripts/fuzz.sh around the fuzzer's KVM_RUN phase).
 *
 * Reading /sys/module/rkvm_hoststate/parameters/state runs a function on every online CPU (an
 * IPI, so it reads the CPU's own registers, in kernel mode) and returns one line per CPU:
 *
 *   cpu0 cr0=... cr4=... efer=... gdt=... idt=... tr=... dr6=... dr7=... msr174=... ...
 *
 * Only state that stays put on an idle host is listed: control registers CR0 and CR4 (CR3 and
 * CR2 change with every task and fault), EFER, the descriptor-table bases and limits and the
 * task register (a VM exit loads fixed host values there and sets both limits to 0xffff: the GDT
 * limit must be put back, as upstream's load_fixmap_gdt() in vmx_prepare_switch_to_host(); the
 * IDT limit is left at 0xffff by upstream KVM too (checked: kvm_intel in Bochs), harmless since
 * the CPU never indexes the IDT past vector 255, so only the IDT base is shown), DR6/DR7 (a VM
 * exit sets DR7 to 0x400; a guest can leave bits in DR6), the SYSCALL/SYSENTER MSRs, PAT, GS base (the per-CPU base in kernel mode),
 * DEBUGCTL, SPEC_CTRL, the Intel PT control MSR and the VMX feature control. FS base and
 * KERNEL_GS_BASE are per task and left out. An MSR the CPU lacks (Bochs: DEBUGCTL, PT) reads as
 * "-" (rdmsrl_safe), so the same line compares equal on the same machine.
 *
 * The caller snapshots the file before the guests run and compares after: any difference is a
 * register rkvm failed to restore.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/smp.h>
#include <linux/cpu.h>
#include <linux/slab.h>
#include <asm/desc.h>
#include <asm/debugreg.h>
#include <asm/msr.h>
#include <asm/special_insns.h>
#include <asm/apic.h>

#define LINE_MAX 512

static const struct { u32 index; const char *name; } probe_msrs[] = {
	{ MSR_STAR, "star" }, { MSR_LSTAR, "lstar" }, { MSR_CSTAR, "cstar" },
	{ MSR_SYSCALL_MASK, "sfmask" }, { MSR_IA32_SYSENTER_CS, "sysenter_cs" },
	{ MSR_IA32_SYSENTER_ESP, "sysenter_esp" }, { MSR_IA32_SYSENTER_EIP, "sysenter_eip" },
	{ MSR_IA32_CR_PAT, "pat" }, { MSR_GS_BASE, "gs_base" }, { MSR_IA32_DEBUGCTLMSR, "debugctl" },
	{ MSR_IA32_SPEC_CTRL, "spec_ctrl" }, { MSR_IA32_RTIT_CTL, "rtit_ctl" },
	{ MSR_IA32_FEAT_CTL, "feature_control" }, { MSR_TSC_AUX, "tsc_aux" },
};

struct probe {
	char *buf;	/* LINE_MAX bytes per possible CPU */
};

static void probe_cpu(void *data)
{
	struct probe *p = data;
	int cpu = smp_processor_id();
	char *line = p->buf + cpu * LINE_MAX;
	struct desc_ptr gdt, idt;
	unsigned long dr6, dr7;
	u64 efer;
	int n;

	native_store_gdt(&gdt);
	store_idt(&idt);
	get_debugreg(dr6, 6);
	get_debugreg(dr7, 7);
	rdmsrl(MSR_EFER, efer);
	n = scnprintf(line, LINE_MAX,
		      "cpu%d cr0=%lx cr4=%lx efer=%llx gdt=%lx/%x idt=%lx tr=%x dr6=%lx dr7=%lx",
		      cpu, native_read_cr0(), __read_cr4(), (unsigned long long)efer,
		      gdt.address, gdt.size, idt.address, (unsigned int)native_store_tr(),
		      dr6, dr7);
	for (int i = 0; i < ARRAY_SIZE(probe_msrs); i++) {
		u64 v;

		if (rdmsrl_safe(probe_msrs[i].index, &v))
			n += scnprintf(line + n, LINE_MAX - n, " %s=-", probe_msrs[i].name);
		else
			n += scnprintf(line + n, LINE_MAX - n, " %s=%llx", probe_msrs[i].name, v);
	}
}

/*
 * The `apic` file: each CPU's local-APIC in-service and request registers (ISR, IRR: 256 bits
 * each, highest word first), read on that CPU. Not compared (the IPI that reads them is in
 * service then); a diagnostic for lost interrupts: an ISR bit that stays set outside an
 * interrupt handler blocks every vector of its priority class and below on that CPU, which is
 * what an interrupt acknowledged by a VM exit and never handled would leave.
 */
static u32 apic_reg(u32 reg)
{
	/* apic_read() is a static call modules cannot use; both of its native forms are inline. */
	return x2apic_enabled() ? native_apic_msr_read(reg) : native_apic_mem_read(reg);
}

static void apic_cpu(void *data)
{
	struct probe *p = data;
	int cpu = smp_processor_id();
	char *line = p->buf + cpu * LINE_MAX;
	int n = scnprintf(line, LINE_MAX, "cpu%d isr=", cpu);

	for (int i = 7; i >= 0; i--)
		n += scnprintf(line + n, LINE_MAX - n, "%08x", apic_reg(APIC_ISR + i * 0x10));
	n += scnprintf(line + n, LINE_MAX - n, " irr=");
	for (int i = 7; i >= 0; i--)
		n += scnprintf(line + n, LINE_MAX - n, "%08x", apic_reg(APIC_IRR + i * 0x10));
}

static int each_cpu_get(char *out, smp_call_func_t fn)
{
	struct probe p;
	int cpu, len = 0;

	p.buf = kcalloc(nr_cpu_ids, LINE_MAX, GFP_KERNEL);
	if (!p.buf)
		return -ENOMEM;
	cpus_read_lock();
	on_each_cpu(fn, &p, 1);
	for_each_online_cpu(cpu)
		len += scnprintf(out + len, PAGE_SIZE - len, "%s\n", p.buf + cpu * LINE_MAX);
	cpus_read_unlock();
	kfree(p.buf);
	return len;
}

static int apic_get(char *out, const struct kernel_param *kp)
{
	return each_cpu_get(out, apic_cpu);
}

static const struct kernel_param_ops apic_ops = {
	.get = apic_get,
};
module_param_cb(apic, &apic_ops, NULL, 0444);
MODULE_PARM_DESC(apic, "each online CPU's local-APIC ISR and IRR (diagnostic)");

static int state_get(char *out, const struct kernel_param *kp)
{
	return each_cpu_get(out, probe_cpu);
}

static const struct kernel_param_ops state_ops = {
	.get = state_get,
};
module_param_cb(state, &state_ops, NULL, 0444);
MODULE_PARM_DESC(state, "one line of host registers per online CPU");

MODULE_DESCRIPTION("rkvm selftests: host CPU state probe");
MODULE_LICENSE("GPL");

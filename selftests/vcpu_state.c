// SPDX-License-Identifier: GPL-2.0
/*
 * The vCPU fd without entering a guest: RESET state of KVM_GET_REGS/KVM_GET_SREGS, round trips,
 * KVM_SET_SREGS validation, the kvm_run mmap rules, and the KVM_RUN checks made before entry.
 *
 * Upstream references: kvm_vcpu_reset and vmx_vcpu_reset (RESET values), __set_sregs_common and
 * kvm_is_valid_sregs (arch/x86/kvm), kvm_vcpu_mmap / kvm_vcpu_fault (virt/kvm/kvm_main.c),
 * kvm_arch_vcpu_ioctl_run (the checks before vcpu_run).
 */
#include <signal.h>
#include <setjmp.h>
#include "rkvm_util.h"

static int kvm, vm, vcpu;

static void fresh(void)
{
	if (vcpu > 0)
		close(vcpu);
	if (vm > 0)
		close(vm);
	if (kvm <= 0)
		kvm = open_dev();
	vm = create_vm(kvm);
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
}

static int seg_is(const struct kvm_segment *s, __u64 base, __u32 limit, __u16 sel, __u8 type,
		  __u8 sflag)
{
	return s->base == base && s->limit == limit && s->selector == sel && s->type == type &&
	       s->s == sflag && s->present == 1 && s->dpl == 0 && s->db == 0 && s->l == 0 &&
	       s->g == 0 && s->avl == 0 && s->unusable == 0;
}

TEST(reset_regs)
{
	struct kvm_regs r;

	fresh();
	CHECK(ioctl(vcpu, KVM_GET_REGS, &r) == 0);
	CHECK(r.rip == 0xfff0 && r.rflags == 0x2 && r.rdx == 0x600);
	CHECK(!r.rax && !r.rbx && !r.rcx && !r.rsi && !r.rdi && !r.rsp && !r.rbp);
	CHECK(!r.r8 && !r.r9 && !r.r10 && !r.r11 && !r.r12 && !r.r13 && !r.r14 && !r.r15);
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_GET_REGS, NULL), EFAULT, "NULL pointer");
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_REGS, NULL), EFAULT, "NULL pointer");
}

TEST(reset_sregs)
{
	struct kvm_sregs s;

	fresh();
	CHECK(ioctl(vcpu, KVM_GET_SREGS, &s) == 0);
	CHECK(seg_is(&s.cs, 0xffff0000, 0xffff, 0xf000, 0xb, 1));
	CHECK(seg_is(&s.ds, 0, 0xffff, 0, 3, 1) && seg_is(&s.es, 0, 0xffff, 0, 3, 1));
	CHECK(seg_is(&s.fs, 0, 0xffff, 0, 3, 1) && seg_is(&s.gs, 0, 0xffff, 0, 3, 1));
	CHECK(seg_is(&s.ss, 0, 0xffff, 0, 3, 1));
	CHECK(seg_is(&s.tr, 0, 0xffff, 0, 0xb, 0));
	CHECK(seg_is(&s.ldt, 0, 0xffff, 0, 2, 0));
	CHECK(s.gdt.base == 0 && s.gdt.limit == 0xffff && s.idt.base == 0 && s.idt.limit == 0xffff);
	CHECK(s.cr0 == 0x60000010 && !s.cr2 && !s.cr3 && !s.cr4 && !s.cr8 && !s.efer);
	CHECK(s.apic_base == 0);
	for (int i = 0; i < 4; i++)
		CHECK(s.interrupt_bitmap[i] == 0);
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_GET_SREGS, (void *)8), EFAULT, "unmapped pointer (8)");
}

TEST(regs_round_trip)
{
	struct kvm_regs r, back;

	fresh();
	for (unsigned int i = 0; i < sizeof(r) / 8; i++)
		((__u64 *)&r)[i] = 0x1111111111111111ULL * (i + 1);
	r.rflags = 0x246 & ~2; /* bit 1 comes back set */
	CHECK(ioctl(vcpu, KVM_SET_REGS, &r) == 0);
	CHECK(ioctl(vcpu, KVM_GET_REGS, &back) == 0);
	r.rflags |= 2;
	CHECK(memcmp(&r, &back, sizeof(r)) == 0);
}

static void long_mode(struct kvm_sregs *s)
{
	s->cr0 = 0x80000011;
	s->cr4 = 0x20;
	s->efer = 0x500;
	s->cr3 = 0x1000;
	s->cs.l = 1;
	s->cs.db = 0;
	s->cs.selector = 8;
	s->cs.base = 0;
	s->cs.limit = 0xffffffff;
	s->cs.g = 1;
}

TEST(sregs_round_trip)
{
	struct kvm_sregs s, back;

	fresh();
	CHECK(ioctl(vcpu, KVM_GET_SREGS, &s) == 0);
	/* The demo's real-mode change. */
	s.cs.base = 0;
	s.cs.selector = 0;
	CHECK(ioctl(vcpu, KVM_SET_SREGS, &s) == 0);
	CHECK(ioctl(vcpu, KVM_GET_SREGS, &back) == 0);
	CHECK(memcmp(&s, &back, sizeof(s)) == 0);
	/* A long-mode state entered directly, without KVM_SET_CPUID2 (rkvm accepts EFER.LME then). */
	long_mode(&s);
	s.gdt.base = 0x500;
	s.gdt.limit = 31;
	s.cr2 = 0x1234;
	if (upstream())
		SKIP("upstream refuses EFER.LME without a CPUID table");
	CHECK(ioctl(vcpu, KVM_SET_SREGS, &s) == 0);
	CHECK(ioctl(vcpu, KVM_GET_SREGS, &back) == 0);
	CHECK(memcmp(&s, &back, sizeof(s)) == 0);
}

TEST(sregs_normalisation)
{
	struct kvm_sregs s, back;

	fresh();
	CHECK(ioctl(vcpu, KVM_GET_SREGS, &s) == 0);
	/* A not-present segment reads back unusable with cleared attributes (VMX AR encoding). */
	s.fs.present = 0;
	s.fs.type = 3;
	s.fs.selector = 0x10;
	/* The Accessed bit is set on all segments but LDTR. */
	s.ds.type = 2;
	/* Only the lowest pending interrupt is kept. */
	s.interrupt_bitmap[1] = 0x30;
	s.interrupt_bitmap[2] = 1;
	CHECK(ioctl(vcpu, KVM_SET_SREGS, &s) == 0);
	CHECK(ioctl(vcpu, KVM_GET_SREGS, &back) == 0);
	CHECK(back.fs.unusable == 1 && back.fs.present == 0 && back.fs.type == 0 && back.fs.selector == 0x10);
	CHECK(back.ds.type == 3);
	CHECK(back.interrupt_bitmap[1] == 0x10 && back.interrupt_bitmap[2] == 0);
}

TEST(sregs_invalid)
{
	struct kvm_sregs good, s;

	fresh();
	CHECK(ioctl(vcpu, KVM_GET_SREGS, &good) == 0);
#define BAD(what, stmt) do { s = good; stmt; errno = 0;					\
	if (ioctl(vcpu, KVM_SET_SREGS, &s) != -1 || errno != EINVAL) {			\
		printf("# %s: accepted or wrong errno %d\n", what, errno); ktap_failed_case = 1; } \
	else ktap_errno_log("ioctl(vcpu, KVM_SET_SREGS, &s)", EINVAL, what);			\
	} while (0)
	BAD("EFER.LMA without LME and paging", s.efer = 0x400);
	BAD("64-bit paging without CR4.PAE", (long_mode(&s), s.cr4 = 0));
	BAD("EFER.LME + CR0.PG without LMA", (long_mode(&s), s.efer = 0x100));
	BAD("CS.L outside long mode", s.cs.l = 1);
	BAD("CR0.PG without CR0.PE", s.cr0 = 0x80000010);
	BAD("CR0.NW without CR0.CD", s.cr0 = 0x20000010);
	BAD("CR0 bit 32", s.cr0 = 0x100000010ULL);
	BAD("CR4 bit 63", s.cr4 = 1ULL << 63);
	BAD("EFER bit 1", s.efer = 2);
	BAD("APIC base reserved bits", s.apic_base = 0xfee00001);
	BAD("APIC base EXTD without EN", s.apic_base = 0xfee00400);
	BAD("APIC base x2APIC without x2APIC in CPUID", s.apic_base = 0xfee00c00);
	BAD("CR3 beyond MAXPHYADDR in long mode", (long_mode(&s), s.cr3 = 1ULL << 52));
#undef BAD
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_SREGS, NULL), EFAULT, "NULL pointer");
	/* Nothing was changed by the refusals. */
	CHECK(ioctl(vcpu, KVM_GET_SREGS, &s) == 0);
	CHECK(memcmp(&s, &good, sizeof(s)) == 0);
}

static sigjmp_buf jb;

static void on_sigbus(int sig)
{
	siglongjmp(jb, sig);
}

TEST(mmap_rules)
{
	long ps = page_size(), sz;
	struct kvm_run *run;
	char *p;

	fresh();
	sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	run = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	CHECK(run != MAP_FAILED);
	if (run == MAP_FAILED)
		return;
	/* A fresh kvm_run: nothing has exited yet. */
	CHECK(run->exit_reason == KVM_EXIT_UNKNOWN);
	/* The PIO data page is mapped at page offset 1 (KVM_PIO_PAGE_OFFSET) too, same memory. */
	p = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, KVM_PIO_PAGE_OFFSET * ps);
	CHECK(p != MAP_FAILED);
	if (p != MAP_FAILED) {
		((char *)run)[KVM_PIO_PAGE_OFFSET * ps + 7] = 0x5a;
		CHECK(p[7] == 0x5a);
		munmap(p, ps);
	}
	if (!upstream()) {
		CHECK_ERRNO_WHY(mmap(NULL, sz + ps, PROT_READ, MAP_SHARED, vcpu, 0) == MAP_FAILED ? -1 : 0, EINVAL,
			    "mapping longer than KVM_GET_VCPU_MMAP_SIZE (rkvm; upstream SIGBUSes on access)");
		CHECK_ERRNO_WHY(mmap(NULL, ps, PROT_READ, MAP_SHARED, vcpu, sz) == MAP_FAILED ? -1 : 0, EINVAL,
			    "mapping at the offset KVM_GET_VCPU_MMAP_SIZE (rkvm; upstream SIGBUSes on access)");
		CHECK_ERRNO_WHY(mmap(NULL, ps, PROT_READ, MAP_SHARED, vcpu, 100 * ps) == MAP_FAILED ? -1 : 0, EINVAL,
			    "mapping at page offset 100 (rkvm; upstream SIGBUSes on access)");
	}
	/* The mapping outlives the vCPU fd (and the VM fd). */
	close(vcpu);
	vcpu = -1;
	close(vm);
	vm = -1;
	run->request_interrupt_window = 1;
	CHECK(run->request_interrupt_window == 1);
	/* Growing the mapping beyond the vCPU pages faults with SIGBUS, never maps anything else. */
	if (!upstream()) {
		void *big = mremap(run, sz, sz + ps, MREMAP_MAYMOVE);

		if (big != MAP_FAILED) {
			struct sigaction sa = { .sa_handler = on_sigbus }, old;
			volatile int got = 0;

			sigaction(SIGBUS, &sa, &old);
			if (sigsetjmp(jb, 1) == 0)
				got = ((volatile char *)big)[sz];
			else
				got = -1;
			sigaction(SIGBUS, &old, NULL);
			CHECK(got == -1);
			run = big;
			sz += ps;
		}
	}
	CHECK(munmap(run, sz) == 0);
}

TEST(run_prechecks)
{
	long sz;
	struct kvm_run *run;

	fresh();
	sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	run = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	CHECK(run != MAP_FAILED);
	if (run == MAP_FAILED)
		return;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_RUN, 1), EINVAL, "nonzero argument");
	/* Sync-register bits beyond KVM_SYNC_X86_VALID_FIELDS are refused. */
	run->kvm_valid_regs = 1 << 8;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_RUN, 0), EINVAL,
		    "kvm_run->kvm_valid_regs bit beyond KVM_SYNC_X86_VALID_FIELDS");
	run->kvm_valid_regs = 0;
	run->kvm_dirty_regs = 1 << 3;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_RUN, 0), EINVAL,
		    "kvm_run->kvm_dirty_regs bit beyond KVM_SYNC_X86_VALID_FIELDS");
	run->kvm_dirty_regs = 0;
	/* Userspace irqchip: kvm_run->cr8 is the TPR, 4 bits. */
	run->cr8 = 16;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_RUN, 0), EINVAL,
		    "kvm_run->cr8 = 16 with the userspace irqchip (TPR has 4 bits)");
	run->cr8 = 0;
	/* immediate_exit: EINTR before anything runs (exit_reason untouched, as upstream). */
	run->immediate_exit = 1;
	run->exit_reason = 0x1234;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_RUN, 0), EINTR, "kvm_run->immediate_exit set");
	CHECK(run->exit_reason == 0x1234);
	run->immediate_exit = 0;
	/* With backend=none nothing can run: ENOEXEC. */
	if (getenv("RKVM_BACKEND_NONE"))
		CHECK_ERRNO_WHY(ioctl(vcpu, KVM_RUN, 0), ENOEXEC,
			    "backend=none (rkvm: no guest can run)");
	munmap(run, sz);
}

/*
 * KVM_GET/SET_FPU: RESET values (FCW 0x37f), a round trip. As upstream, MXCSR is neither
 * reported (0) nor set (a client zeroing kvm_fpu keeps the guest's 0x1f80).
 */
TEST(fpu)
{
	struct kvm_fpu f, g;

	if (no_guests())
		SKIP("backend=none vCPUs have no FPU state");
	fresh();
	CHECK(ioctl(vcpu, KVM_GET_FPU, &f) == 0);
	CHECK(f.fcw == 0x37f && f.mxcsr == 0 && f.fsw == 0);
	f.fcw = 0x27f;
	f.mxcsr = 0x1fc0;
	f.last_ip = 0x123456789a;
	memset(f.xmm[15], 0xa5, 16);
	memset(f.fpr[7], 0x5a, 10);
	CHECK(ioctl(vcpu, KVM_SET_FPU, &f) == 0);
	CHECK(ioctl(vcpu, KVM_GET_FPU, &g) == 0);
	CHECK(g.fcw == 0x27f && g.mxcsr == 0 && g.last_ip == 0x123456789a);
	CHECK(memcmp(g.xmm[15], f.xmm[15], 16) == 0 && memcmp(g.fpr[7], f.fpr[7], 10) == 0);
	/* Reserved MXCSR bits are not looked at either (FXRSTOR would fault on them). */
	f.mxcsr = 1u << 20;
	CHECK(ioctl(vcpu, KVM_SET_FPU, &f) == 0);
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_GET_FPU, NULL), EFAULT, "NULL pointer");
}

/* KVM_GET/SET_DEBUGREGS: RESET DR6/DR7, a round trip, flags and high bits refused. */
TEST(debugregs)
{
	struct kvm_debugregs d, e;

	if (ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_DEBUGREGS) <= 0)
		SKIP("no KVM_CAP_DEBUGREGS");
	fresh();
	CHECK(ioctl(vcpu, KVM_GET_DEBUGREGS, &d) == 0);
	CHECK(d.dr6 == 0xffff0ff0 && d.dr7 == 0x400 && d.db[0] == 0);
	d.db[0] = 0x1000;
	d.db[3] = 0xffffffff81000000ull;
	d.dr7 = 0x401;
	CHECK(ioctl(vcpu, KVM_SET_DEBUGREGS, &d) == 0);
	CHECK(ioctl(vcpu, KVM_GET_DEBUGREGS, &e) == 0);
	CHECK(e.db[0] == 0x1000 && e.db[3] == d.db[3] && e.dr7 == 0x401);
	d.flags = 1;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_DEBUGREGS, &d), EINVAL, "nonzero flags");
	d.flags = 0;
	d.dr7 = 1ull << 32;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_DEBUGREGS, &d), EINVAL, "DR7 with bit 32 set");
}

/*
 * KVM_GET/SET_XSAVE(2): the legacy region is the FPU state (FCW 0x37f, MXCSR 0x1f80 at RESET),
 * the header's XSTATE_BV/XCOMP_BV are checked, the size is KVM_CAP_XSAVE2's.
 */
TEST(xsave)
{
	static __u8 x[4096], y[8192];
	struct kvm_fpu f;
	long size;

	if (no_guests())
		SKIP("backend=none vCPUs have no FPU state");
	fresh();
	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE) == 1);
	size = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
	CHECK(size >= 4096 && size <= (long)sizeof(y));
	CHECK(ioctl(vcpu, KVM_GET_XSAVE, x) == 0);
	CHECK(*(__u16 *)x == 0x37f && *(__u32 *)(x + 24) == 0x1f80);
	if (!upstream())
		CHECK(*(__u64 *)(x + 512) == 3);
	memset(y, 0xee, sizeof(y));
	CHECK(ioctl(vcpu, KVM_GET_XSAVE2, y) == 0);
	CHECK(memcmp(x, y, 4096) == 0 && y[size - 1] != 0xee && (size == sizeof(y) || y[size] == 0xee));
	/* XMM7 and MXCSR through the XSAVE area show in KVM_GET_FPU and the area. */
	*(__u64 *)(x + 512) |= 3;
	memset(x + 160 + 7 * 16, 0x3c, 16);
	*(__u32 *)(x + 24) = 0x1fc0;
	CHECK(ioctl(vcpu, KVM_SET_XSAVE, x) == 0);
	CHECK(ioctl(vcpu, KVM_GET_FPU, &f) == 0 && f.xmm[7][0] == 0x3c && f.xmm[7][15] == 0x3c);
	CHECK(ioctl(vcpu, KVM_GET_XSAVE, y) == 0 && *(__u32 *)(y + 24) == 0x1fc0);
	/* Compacted format and reserved MXCSR bits are refused. */
	*(__u64 *)(x + 520) = 1ull << 63;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_XSAVE, x), EINVAL,
		    "XSAVE header XCOMP_BV bit 63 (compacted format)");
	*(__u64 *)(x + 520) = 0;
	*(__u32 *)(x + 24) = 1u << 20;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_XSAVE, x), EINVAL, "reserved MXCSR bit 20");
	*(__u32 *)(x + 24) = 0x1f80;
	/* A component the guest cannot have (rkvm: anything beyond x87|SSE|AVX; bit 62 anywhere). */
	*(__u64 *)(x + 512) = 3 | (1ull << 62);
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_XSAVE, x), EINVAL,
		    "XSTATE_BV with a component the guest cannot have (bit 62)");
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_GET_XSAVE, (void *)8), EFAULT, "unmapped pointer (8)");
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_XSAVE, (void *)8), EFAULT, "unmapped pointer (8)");
}

/*
 * The AVX component (upper halves of YMM0-15) when KVM_GET_SUPPORTED_CPUID offers XCR0.AVX (and
 * the vCPU's CPUID is that): set through KVM_SET_XSAVE, it survives a guest run (the state is
 * switched with XSAVE/XRSTOR) and reads back with its XSTATE_BV bit.
 */
TEST(xsave_avx)
{
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + 256 * sizeof(struct kvm_cpuid_entry2));
	static __u8 x[4096], y[4096];
	struct real_vm v = { 0 };
	__u64 xcr0 = 0;

	if (no_guests())
		SKIP("backend=none enters no guest");
	fresh();
	c->nent = 256;
	CHECK(ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c) == 0);
	for (__u32 i = 0; i < c->nent; i++)
		if (c->entries[i].function == 0xd && c->entries[i].index == 0)
			xcr0 = c->entries[i].eax | (__u64)c->entries[i].edx << 32;
	if (!(xcr0 & 4)) {
		free(c);
		SKIP("no XCR0.AVX for guests on this host");
	}
	CHECK(real_vm_create(&v, (const unsigned char *)"\xf4", 1) == 0);
	/* Upstream reports only the components the guest's CPUID allows. */
	CHECK(ioctl(v.vcpu, KVM_SET_CPUID2, c) == 0);
	free(c);
	CHECK(ioctl(v.vcpu, KVM_GET_XSAVE, x) == 0);
	*(__u64 *)(x + 512) |= 4;
	for (int i = 0; i < 256; i++)
		x[576 + i] = i ^ 0x5a;
	CHECK(ioctl(v.vcpu, KVM_SET_XSAVE, x) == 0);
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_HLT);
	CHECK(ioctl(v.vcpu, KVM_GET_XSAVE, y) == 0);
	CHECK(*(__u64 *)(y + 512) & 4);
	CHECK(memcmp(x + 576, y + 576, 256) == 0);
	real_vm_free(&v);
}

/* KVM_GET/SET_XCRS: XCR0 = 1 at RESET, 3 accepted, x87 cleared or unknown XCRs refused. */
TEST(xcrs)
{
	struct kvm_xcrs x, y;

	if (ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_XCRS) <= 0)
		SKIP("no KVM_CAP_XCRS");
	fresh();
	CHECK(ioctl(vcpu, KVM_GET_XCRS, &x) == 0);
	CHECK(x.nr_xcrs == 1 && x.xcrs[0].xcr == 0 && x.xcrs[0].value == 1);
	x.xcrs[0].value = 3;
	CHECK(ioctl(vcpu, KVM_SET_XCRS, &x) == 0);
	CHECK(ioctl(vcpu, KVM_GET_XCRS, &y) == 0 && y.xcrs[0].value == 3);
	x.xcrs[0].value = 2;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_XCRS, &x), EINVAL, "XCR0 = 2 (SSE without x87)");
	x.xcrs[0].value = 3;
	x.xcrs[0].xcr = 1;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_XCRS, &x), EINVAL, "unknown XCR index 1");
	x.xcrs[0].xcr = 0;
	x.nr_xcrs = 17;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_XCRS, &x), EINVAL, "nr_xcrs = 17 (above KVM_MAX_XCRS)");
	x.nr_xcrs = 1;
	x.flags = 1;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_XCRS, &x), EINVAL, "nonzero flags");
}

/* KVM_GET/SET_MP_STATE without an in-kernel irqchip: runnable, and only runnable. */
TEST(mp_state)
{
	struct kvm_mp_state m = { .mp_state = 99 };

	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_MP_STATE) == 1);
	fresh();
	CHECK(ioctl(vcpu, KVM_GET_MP_STATE, &m) == 0 && m.mp_state == KVM_MP_STATE_RUNNABLE);
	CHECK(ioctl(vcpu, KVM_SET_MP_STATE, &m) == 0);
	m.mp_state = KVM_MP_STATE_HALTED;
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_SET_MP_STATE, &m), EINVAL,
		    "KVM_MP_STATE_HALTED without an in-kernel irqchip");
}

KTAP_MAIN("rkvm vcpu_state",
	CASE(reset_regs),
	CASE(reset_sregs),
	CASE(regs_round_trip),
	CASE(sregs_round_trip),
	CASE(sregs_normalisation),
	CASE(sregs_invalid),
	CASE(mmap_rules),
	CASE(run_prechecks),
	CASE(fpu),
	CASE(debugregs),
	CASE(xsave),
	CASE(xsave_avx),
	CASE(xcrs),
	CASE(mp_state))

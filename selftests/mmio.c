// SPDX-License-Identifier: GPL-2.0
/*
 * Guest memory accesses that leave the guest on the VMX backend: MMIO reads and writes outside
 * every slot (KVM_EXIT_MMIO, reads completed into the register on the next KVM_RUN), writes to a
 * KVM_MEM_READONLY slot, a slot deleted and re-added while the vCPU lives (its EPT entries must
 * go with it), and an access the emulator cannot decode (KVM_EXIT_INTERNAL_ERROR, emulation; with
 * KVM_CAP_EXIT_ON_EMULATION_FAILURE, the instruction bytes and no #UD).
 * Real-mode guests, hand-assembled; DS=ES=0x2000 points at GPA 0x20000, beyond slot 0.
 *
 * Upstream references: handle_ept_violation / handle_ept_misconfig (vmx.c),
 * kvm_mmu_page_fault and x86_emulate_instruction (mmu.c, x86.c), complete_emulated_mmio,
 * handle_emulation_failure / prepare_emulation_failure_exit (x86.c).
 */
#include "rkvm_util.h"

/* KVM_STATS_NAME_SIZE (include/linux/kvm_host.h): a stats header's name_size. */
#define STATS_NAME_SIZE 48

/* mov ax, 0x2000; mov ds, ax; mov es, ax */
#define SEGS_AT_0x20000 0xb8, 0x00, 0x20, 0x8e, 0xd8, 0x8e, 0xc0
/* out 0x80, al: a port exit the tests use as a pause point */
#define PAUSE 0xe6, 0x80
#define HLT 0xf4

static int run_expect(struct real_vm *v, __u32 reason)
{
	if (ioctl(v->vcpu, KVM_RUN, 0)) {
		printf("# KVM_RUN: %s\n", strerror(errno));
		return 0;
	}
	if (v->run->exit_reason != reason) {
		printf("# exit reason %u, wanted %u\n", v->run->exit_reason, reason);
		return 0;
	}
	return 1;
}

static int mmio_is(struct real_vm *v, __u64 gpa, __u32 len, int write)
{
	if (v->run->mmio.phys_addr != gpa || v->run->mmio.len != len || v->run->mmio.is_write != write) {
		printf("# mmio at %#llx len %u write %u, wanted %#llx %u %d\n", v->run->mmio.phys_addr,
		       v->run->mmio.len, v->run->mmio.is_write, gpa, len, write);
		return 0;
	}
	return 1;
}

/* A second slot (1) of one page at GPA 0x20000, filled with `fill`. */
static unsigned char *add_slot1(struct real_vm *v, unsigned char fill, __u32 flags, int *ret)
{
	unsigned char *m = mmap(NULL, 0x1000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct kvm_userspace_memory_region r = {
		.slot = 1, .flags = flags, .guest_phys_addr = 0x20000, .memory_size = 0x1000,
		.userspace_addr = (__u64)m,
	};

	memset(m, fill, 0x1000);
	*ret = ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &r);
	return m;
}

static int delete_slot1(struct real_vm *v)
{
	struct kvm_userspace_memory_region r = { .slot = 1, .guest_phys_addr = 0x20000 };

	return ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &r);
}

TEST(mmio_reads_complete_into_registers)
{
	static const unsigned char code[] = {
		SEGS_AT_0x20000,
		0xb8, 0x34, 0x12,			/* mov ax, 0x1234 */
		0x8b, 0x1e, 0x10, 0x00,			/* mov bx, [0x10]: 2 bytes */
		0x8a, 0x26, 0x20, 0x00,			/* mov ah, [0x20]: 1 byte, AL kept */
		0x66, 0x0f, 0xbe, 0x0e, 0x30, 0x00,	/* movsx ecx, byte [0x30] */
		0x66, 0xa1, 0x40, 0x00,			/* mov eax, [0x40] (moffs): 4 bytes */
		HLT,
	};
	struct kvm_regs regs;
	struct real_vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	CHECK(run_expect(&v, KVM_EXIT_MMIO) && mmio_is(&v, 0x20010, 2, 0));
	memcpy(v.run->mmio.data, "\xef\xbe", 2);
	CHECK(run_expect(&v, KVM_EXIT_MMIO) && mmio_is(&v, 0x20020, 1, 0));
	v.run->mmio.data[0] = 0x5a;
	CHECK(ioctl(v.vcpu, KVM_RUN, 0) == 0 && v.run->exit_reason == KVM_EXIT_MMIO);
	CHECK(mmio_is(&v, 0x20030, 1, 0));
	/* AH must hold 0x5a with AL intact: the previous read was completed first. */
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0);
	CHECK((regs.rax & 0xffff) == 0x5a34 && (regs.rbx & 0xffff) == 0xbeef);
	v.run->mmio.data[0] = 0x80;
	CHECK(run_expect(&v, KVM_EXIT_MMIO) && mmio_is(&v, 0x20040, 4, 0));
	memcpy(v.run->mmio.data, "\x78\x56\x34\x12", 4);
	CHECK(run_expect(&v, KVM_EXIT_HLT));
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0);
	CHECK((regs.rcx & 0xffffffff) == 0xffffff80);
	CHECK((regs.rax & 0xffffffff) == 0x12345678);
	CHECK(regs.rip == 0x1000 + sizeof(code));
	real_vm_free(&v);
}

TEST(mmio_writes_report_their_data)
{
	static const unsigned char code[] = {
		SEGS_AT_0x20000,
		0xc7, 0x06, 0x40, 0x00, 0xfe, 0xca,	/* mov word [0x40], 0xcafe */
		0xbb, 0x88, 0x77,			/* mov bx, 0x7788 */
		0x88, 0x3e, 0x44, 0x00,			/* mov [0x44], bh */
		0xbf, 0x50, 0x00,			/* mov di, 0x50 */
		0x66, 0xb8, 0x44, 0x33, 0x22, 0x11,	/* mov eax, 0x11223344 */
		0x66, 0xab,				/* stosd: es:[di], di += 4 */
		HLT,
	};
	struct kvm_regs regs;
	struct real_vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	CHECK(run_expect(&v, KVM_EXIT_MMIO) && mmio_is(&v, 0x20040, 2, 1));
	CHECK(memcmp(v.run->mmio.data, "\xfe\xca", 2) == 0);
	CHECK(run_expect(&v, KVM_EXIT_MMIO) && mmio_is(&v, 0x20044, 1, 1));
	CHECK(v.run->mmio.data[0] == 0x77);
	CHECK(run_expect(&v, KVM_EXIT_MMIO) && mmio_is(&v, 0x20050, 4, 1));
	CHECK(memcmp(v.run->mmio.data, "\x44\x33\x22\x11", 4) == 0);
	CHECK(run_expect(&v, KVM_EXIT_HLT));
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0);
	CHECK((regs.rdi & 0xffff) == 0x54 && regs.rip == 0x1000 + sizeof(code));
	real_vm_free(&v);
}

TEST(readonly_slot_write_is_mmio)
{
	static const unsigned char code[] = {
		SEGS_AT_0x20000,
		0x8b, 0x1e, 0x10, 0x00,			/* mov bx, [0x10]: read from the slot */
		0xc7, 0x06, 0x10, 0x00, 0x34, 0x12,	/* mov word [0x10], 0x1234 */
		HLT,
	};
	struct kvm_regs regs;
	struct real_vm v;
	unsigned char *ro;
	int ret;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	CHECK(ioctl(v.vm, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM) == 1);
	ro = add_slot1(&v, 0xab, KVM_MEM_READONLY, &ret);
	CHECK(ret == 0);
	CHECK(run_expect(&v, KVM_EXIT_MMIO) && mmio_is(&v, 0x20010, 2, 1));
	CHECK(memcmp(v.run->mmio.data, "\x34\x12", 2) == 0);
	CHECK(run_expect(&v, KVM_EXIT_HLT));
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0 && (regs.rbx & 0xffff) == 0xabab);
	CHECK(ro[0x10] == 0xab && ro[0x11] == 0xab);
	real_vm_free(&v);
	munmap(ro, 0x1000);
}

TEST(slot_deleted_then_readded)
{
	static const unsigned char code[] = {
		SEGS_AT_0x20000,
		0x8b, 0x1e, 0x10, 0x00, PAUSE,		/* mov bx, [0x10]: the first slot's memory */
		0x8b, 0x0e, 0x10, 0x00, PAUSE,		/* mov cx, [0x10]: no slot, MMIO */
		0x8b, 0x16, 0x10, 0x00,			/* mov dx, [0x10]: the new slot's memory */
		HLT,
	};
	struct kvm_regs regs;
	struct real_vm v;
	unsigned char *a, *b;
	int ret;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	a = add_slot1(&v, 0xab, 0, &ret);
	CHECK(ret == 0);
	CHECK(run_expect(&v, KVM_EXIT_IO));
	/* The page is mapped in EPT now; deleting the slot must unmap it. */
	CHECK(delete_slot1(&v) == 0);
	munmap(a, 0x1000);
	CHECK(run_expect(&v, KVM_EXIT_MMIO) && mmio_is(&v, 0x20010, 2, 0));
	memcpy(v.run->mmio.data, "\x44\x44", 2);
	CHECK(run_expect(&v, KVM_EXIT_IO));
	b = add_slot1(&v, 0xcd, 0, &ret);
	CHECK(ret == 0);
	CHECK(run_expect(&v, KVM_EXIT_HLT));
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0);
	CHECK((regs.rbx & 0xffff) == 0xabab);
	CHECK((regs.rcx & 0xffff) == 0x4444);
	CHECK((regs.rdx & 0xffff) == 0xcdcd);
	real_vm_free(&v);
	munmap(b, 0x1000);
}

TEST(undecodable_mmio_is_internal_error)
{
	static const unsigned char code[] = {
		SEGS_AT_0x20000,
		0x01, 0x06, 0x10, 0x00,			/* add [0x10], ax: not emulated */
		HLT,
	};
	struct real_vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	if (upstream())
		SKIP("upstream KVM emulates ADD to memory");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	CHECK(run_expect(&v, KVM_EXIT_INTERNAL_ERROR));
	CHECK(v.run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION);
	real_vm_free(&v);
}

/* The value of statistic `name` of a vCPU (KVM_GET_STATS_FD), or ~0 if absent. */
static __u64 stat_value(int vcpu, const char *name)
{
	int fd = ioctl(vcpu, KVM_GET_STATS_FD, 0);
	struct kvm_stats_header h;
	char desc[sizeof(struct kvm_stats_desc) + STATS_NAME_SIZE];
	struct kvm_stats_desc *d = (void *)desc;
	__u64 v = ~0ULL;

	if (fd < 0 || pread(fd, &h, sizeof(h), 0) != sizeof(h))
		return v;
	for (unsigned int i = 0; i < h.num_desc; i++) {
		if (pread(fd, desc, sizeof(desc), h.desc_offset + i * sizeof(desc)) != sizeof(desc))
			break;
		if (!strcmp(d->name, name) && pread(fd, &v, 8, h.data_offset + d->offset) != 8)
			v = ~0ULL;
		if (!strcmp(d->name, name))
			break;
	}
	close(fd);
	return v;
}

/*
 * Coalesced MMIO and PIO (upstream coalesced_mmio.c): writes to registered zones go to the ring
 * page at KVM_COALESCED_MMIO_PAGE_OFFSET of the vCPU mmap instead of exiting; a full ring (one
 * entry is always kept free) exits as usual; unregistering restores exits.
 */
TEST(coalesced_mmio_and_pio)
{
	static const unsigned char code[] = {
		SEGS_AT_0x20000,
		0xc7, 0x06, 0x10, 0x00, 0x34, 0x12, /* 7: mov word [0x10], 0x1234 (zone) */
		0xb8, 0x78, 0x56,                   /* mov ax, 0x5678 */
		0xe7, 0x70,                         /* out 0x70, ax (PIO zone) */
		0xc7, 0x06, 0x10, 0x00, 0xbc, 0x9a, /* mov word [0x10], 0x9abc (zone) */
		0xc7, 0x06, 0x20, 0x00, 0x11, 0x11, /* mov word [0x20], 0x1111: exits */
		0xeb, 0xe7,                         /* jmp 7 */
	};
	struct kvm_coalesced_mmio_zone mz = { .addr = 0x20010, .size = 4 };
	struct kvm_coalesced_mmio_zone pz = { .addr = 0x70, .size = 2, .pio = 1 };
	struct kvm_coalesced_mmio_zone bad = { .addr = 0x70, .size = 2, .pio = 2 };
	struct kvm_coalesced_mmio_ring *ring;
	struct kvm_coalesced_mmio *e;
	long psz = page_size(), max = (psz - sizeof(*ring)) / sizeof(*e);
	struct real_vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(ioctl(open_dev(), KVM_CHECK_EXTENSION, KVM_CAP_COALESCED_MMIO) == KVM_COALESCED_MMIO_PAGE_OFFSET);
	CHECK(ioctl(open_dev(), KVM_CHECK_EXTENSION, KVM_CAP_COALESCED_PIO) == 1);
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	CHECK(ioctl(v.kvm, KVM_GET_VCPU_MMAP_SIZE, 0) == 3 * psz);
	ring = (void *)((char *)v.run + KVM_COALESCED_MMIO_PAGE_OFFSET * psz);
	e = ring->coalesced_mmio;
	CHECK_ERRNO_WHY(ioctl(v.vm, KVM_REGISTER_COALESCED_MMIO, &bad), EINVAL,
		    "zone with pio = 2 (not 0 or 1)");
	CHECK_ERRNO_WHY(ioctl(v.vm, KVM_REGISTER_COALESCED_MMIO, NULL), EFAULT, "NULL pointer");
	CHECK(ioctl(v.vm, KVM_REGISTER_COALESCED_MMIO, &mz) == 0);
	CHECK(ioctl(v.vm, KVM_REGISTER_COALESCED_MMIO, &pz) == 0);
	/* Three writes coalesced, in order; the fourth, outside every zone, exits. */
	CHECK(run_expect(&v, KVM_EXIT_MMIO) && mmio_is(&v, 0x20020, 2, 1));
	CHECK(ring->first == 0 && ring->last == 3);
	CHECK(e[0].phys_addr == 0x20010 && e[0].len == 2 && !e[0].pio && *(__u16 *)e[0].data == 0x1234);
	CHECK(e[1].phys_addr == 0x70 && e[1].len == 2 && e[1].pio && *(__u16 *)e[1].data == 0x5678);
	CHECK(e[2].phys_addr == 0x20010 && e[2].len == 2 && !e[2].pio && *(__u16 *)e[2].data == 0x9abc);
	/* A full ring (last + 1 == first) exits instead. */
	ring->first = 1;
	ring->last = 0;
	CHECK(run_expect(&v, KVM_EXIT_MMIO) && mmio_is(&v, 0x20010, 2, 1));
	CHECK(*(__u16 *)v.run->mmio.data == 0x1234 && ring->last == 0);
	/* Without the MMIO zone its write exits; the PIO zone still coalesces. */
	CHECK(ioctl(v.vm, KVM_UNREGISTER_COALESCED_MMIO, &mz) == 0);
	ring->first = ring->last = max - 1;
	CHECK(run_expect(&v, KVM_EXIT_MMIO) && mmio_is(&v, 0x20010, 2, 1));
	CHECK(*(__u16 *)v.run->mmio.data == 0x9abc);
	CHECK(ring->last == 0 && e[max - 1].pio && e[max - 1].phys_addr == 0x70);
	CHECK_ERRNO_WHY(ioctl(v.vm, KVM_UNREGISTER_COALESCED_MMIO, &bad), EINVAL,
		    "zone with pio = 2 (not 0 or 1)");
	/* Binary stats: three MMIO exits to userspace, each at least one VM exit. */
	if (!upstream()) {
		__u64 exits = stat_value(v.vcpu, "exits"), mmio = stat_value(v.vcpu, "mmio_exits");

		printf("# stats: exits %llu, mmio_exits %llu\n", exits, mmio);
		CHECK(mmio == 3 && exits >= mmio);
	}
	real_vm_free(&v);
}

/*
 * KVM_CAP_EXIT_ON_EMULATION_FAILURE: an MMIO instruction no emulator handles (fld dword [0x10],
 * as upstream's exit_on_emulation_failure_test) exits with KVM_INTERNAL_ERROR_EMULATION, the
 * instruction bytes and the exit information; userspace skips it and the guest goes on, no #UD
 * queued. The cap takes 0 or 1 only.
 */
TEST(exit_on_emulation_failure)
{
	static const unsigned char code[] = {
		SEGS_AT_0x20000,
		0xd9, 0x06, 0x10, 0x00,			/* fld dword [0x10]: not emulated */
		HLT,
	};
	struct kvm_enable_cap cap = { .cap = KVM_CAP_EXIT_ON_EMULATION_FAILURE, .args = { 2 } };
	struct kvm_regs regs;
	struct real_vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(real_vm_create(&v, code, sizeof(code)) == 0);
	CHECK(ioctl(v.kvm, KVM_CHECK_EXTENSION, KVM_CAP_EXIT_ON_EMULATION_FAILURE) == 1);
	CHECK_ERRNO_WHY(ioctl(v.vm, KVM_ENABLE_CAP, &cap), EINVAL,
		    "KVM_CAP_EXIT_ON_EMULATION_FAILURE with args[0] = 2 (not 0 or 1)");
	cap.args[0] = 1;
	CHECK(ioctl(v.vm, KVM_ENABLE_CAP, &cap) == 0);
	CHECK(run_expect(&v, KVM_EXIT_INTERNAL_ERROR));
	CHECK(v.run->emulation_failure.suberror == KVM_INTERNAL_ERROR_EMULATION);
	CHECK(v.run->emulation_failure.ndata >= 3);
	CHECK(v.run->emulation_failure.flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES);
	CHECK(v.run->emulation_failure.insn_size >= 4);
	CHECK(!memcmp(v.run->emulation_failure.insn_bytes, code + 7, 4));
	CHECK(ioctl(v.vcpu, KVM_GET_REGS, &regs) == 0 && regs.rip == 0x1007);
	regs.rip += 4;
	CHECK(ioctl(v.vcpu, KVM_SET_REGS, &regs) == 0);
	CHECK(run_expect(&v, KVM_EXIT_HLT));
	real_vm_free(&v);
}

KTAP_MAIN("rkvm mmio",
	CASE(mmio_reads_complete_into_registers),
	CASE(mmio_writes_report_their_data),
	CASE(readonly_slot_write_is_mmio),
	CASE(slot_deleted_then_readded),
	CASE(undecodable_mmio_is_internal_error),
	CASE(coalesced_mmio_and_pio),
	CASE(exit_on_emulation_failure))

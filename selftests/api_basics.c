// SPDX-License-Identifier: GPL-2.0
/*
 * The device and VM fds: API version, KVM_CHECK_EXTENSION (every answer, on both fds, and
 * behaviourally where a cap promises something), KVM_CREATE_VM, KVM_GET_VCPU_MMAP_SIZE,
 * KVM_CREATE_VCPU and its limits, unknown ioctls on each kind of fd, and ioctls from another
 * address space.
 *
 * Upstream references: kvm_dev_ioctl, kvm_vm_ioctl_check_extension_generic,
 * kvm_vm_ioctl_create_vcpu (virt/kvm/kvm_main.c), kvm_arch_dev_ioctl, kvm_arch_vm_ioctl,
 * kvm_arch_vcpu_ioctl (arch/x86/kvm/x86.c: unknown → EINVAL / ENOTTY / EINVAL).
 */
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <linux/kvm_para.h>
#include "rkvm_util.h"

/* KVM_STATS_NAME_SIZE (include/linux/kvm_host.h): a stats header's name_size. */
#define STATS_NAME_SIZE 48

TEST(api_version)
{
	int kvm = open_dev();

	CHECK(kvm >= 0);
	CHECK(ioctl(kvm, KVM_GET_API_VERSION, 0) == 12);
	CHECK_ERRNO_WHY(ioctl(kvm, KVM_GET_API_VERSION, 1), EINVAL, "nonzero argument");
	close(kvm);
}

TEST(create_vm_types)
{
	int kvm = open_dev(), vm;
	char link[64], target[64] = "";

	vm = create_vm(kvm);
	CHECK(vm >= 0);
	CHECK(fcntl(vm, F_GETFD) & FD_CLOEXEC);
	snprintf(link, sizeof(link), "/proc/self/fd/%d", vm);
	CHECK(readlink(link, target, sizeof(target) - 1) > 0);
	CHECK(strcmp(target, "anon_inode:kvm-vm") == 0);
	CHECK_ERRNO_WHY(ioctl(kvm, KVM_CREATE_VM, 1), EINVAL,
		    "VM type 1 (KVM_X86_SW_PROTECTED_VM, not offered)");
	CHECK_ERRNO_WHY(ioctl(kvm, KVM_CREATE_VM, 0xff), EINVAL, "unknown VM type 0xff");
	CHECK_ERRNO_WHY(ioctl(kvm, KVM_CREATE_VM, ~0UL), EINVAL, "VM type ~0");
	close(vm);
	close(kvm);
}

TEST(vcpu_mmap_size)
{
	int kvm = open_dev();
	long sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);

	CHECK(sz >= (long)sizeof(struct kvm_run));
	CHECK(sz % page_size() == 0);
	if (!upstream())
		CHECK(sz == 3 * page_size()); /* kvm_run, PIO page, coalesced MMIO ring */
	CHECK_ERRNO_WHY(ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 1), EINVAL, "nonzero argument");
	close(kvm);
}

/* The caps rkvm reports, with their answers (-1: checked separately). */
static const struct { int cap; long want; } caps[] = {
	{ KVM_CAP_USER_MEMORY, 1 },
	{ KVM_CAP_DESTROY_MEMORY_REGION_WORKS, 1 },
	{ KVM_CAP_READONLY_MEM, 1 },
	{ KVM_CAP_SET_TSS_ADDR, 1 },
	{ KVM_CAP_SET_IDENTITY_MAP_ADDR, 1 },
	{ KVM_CAP_IMMEDIATE_EXIT, 1 },
	{ KVM_CAP_CHECK_EXTENSION_VM, 1 },
	{ KVM_CAP_EXT_CPUID, 1 },
	{ KVM_CAP_MP_STATE, 1 },
	{ KVM_CAP_USER_MEMORY2, 1 },
	{ KVM_CAP_GET_TSC_KHZ, 1 },
	{ KVM_CAP_SYNC_REGS, KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS },
	{ KVM_CAP_NR_VCPUS, -1 },
	{ KVM_CAP_MAX_VCPUS, 1024 },
	{ KVM_CAP_MAX_VCPU_ID, 4096 },
	{ KVM_CAP_IRQCHIP, 1 },
	{ KVM_CAP_IRQ_INJECT_STATUS, 1 },
	{ KVM_CAP_ENABLE_CAP_VM, 1 },
	{ KVM_CAP_MMU_SHADOW_CACHE_CONTROL, 1 },
	{ KVM_CAP_COALESCED_MMIO, KVM_COALESCED_MMIO_PAGE_OFFSET },
	{ KVM_CAP_COALESCED_PIO, 1 },
	{ KVM_CAP_BINARY_STATS_FD, 1 },
	{ KVM_CAP_NR_MEMSLOTS, 32764 },
	{ KVM_CAP_VM_TYPES, 1 },
	{ KVM_CAP_X2APIC_API, KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK },
	{ KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
	  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET },
	{ KVM_CAP_SET_BOOT_CPU_ID, 1 },
	{ KVM_CAP_X86_APIC_BUS_CYCLES_NS, 1 },
	{ KVM_CAP_IOEVENTFD, 1 },
	{ KVM_CAP_IOEVENTFD_NO_LENGTH, 1 },
	{ KVM_CAP_IOEVENTFD_ANY_LENGTH, 1 },
	{ KVM_CAP_X86_USER_SPACE_MSR, 1 },
	{ KVM_CAP_X86_MSR_FILTER, 1 },
	{ KVM_CAP_MCE, 32 },
	{ KVM_CAP_ADJUST_CLOCK, KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC },
};

/* Caps only the VMX backend reports (the Bochs models have XSAVE, so XCRS is 1 there). */
static const int vmx_caps[] = {
	KVM_CAP_DEBUGREGS, KVM_CAP_XCRS, KVM_CAP_USER_NMI, KVM_CAP_VCPU_EVENTS, KVM_CAP_INTR_SHADOW,
	KVM_CAP_XSAVE, KVM_CAP_PRE_FAULT_MEMORY, KVM_CAP_GET_MSR_FEATURES, KVM_CAP_MSR_PLATFORM_INFO,
	KVM_CAP_EXIT_ON_EMULATION_FAILURE, KVM_CAP_SET_GUEST_DEBUG,
	KVM_CAP_ENABLE_CAP, KVM_CAP_ENFORCE_PV_FEATURE_CPUID, KVM_CAP_VCPU_ATTRIBUTES,
};

static long want_for(int cap)
{
	for (unsigned int i = 0; i < sizeof(caps) / sizeof(caps[0]); i++)
		if (caps[i].cap == cap)
			return caps[i].want;
	for (unsigned int i = 0; i < sizeof(vmx_caps) / sizeof(vmx_caps[0]); i++)
		if (vmx_caps[i] == cap)
			return !no_guests();
	if (cap == KVM_CAP_XSAVE2)
		return no_guests() ? 0 : 4096;
	/* The KVM_GUESTDBG_* flags KVM_SET_GUEST_DEBUG takes (upstream KVM_GUESTDBG_VALID_MASK). */
	if (cap == KVM_CAP_SET_GUEST_DEBUG2)
		return no_guests() ? 0 :
		       KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_USE_SW_BP |
		       KVM_GUESTDBG_USE_HW_BP | KVM_GUESTDBG_INJECT_DB | KVM_GUESTDBG_INJECT_BP |
		       KVM_GUESTDBG_BLOCKIRQ;
	/* The exits and hypercall exits the VMX backend can honour. */
	if (cap == KVM_CAP_X86_DISABLE_EXITS)
		return no_guests() ? 0 : KVM_X86_DISABLE_EXITS_HLT | KVM_X86_DISABLE_EXITS_PAUSE;
	if (cap == KVM_CAP_EXIT_HYPERCALL)
		return no_guests() ? 0 : 1 << KVM_HC_MAP_GPA_RANGE;
	return 0;
}

TEST(check_extension_table)
{
	int kvm = open_dev(), vm = create_vm(kvm);
	long ncpus = sysconf(_SC_NPROCESSORS_ONLN);

	if (upstream())
		SKIP("rkvm-specific answers");
	for (int cap = 0; cap < 300; cap++) {
		long want = want_for(cap);
		long got = ioctl(kvm, KVM_CHECK_EXTENSION, cap);
		long got_vm = ioctl(vm, KVM_CHECK_EXTENSION, cap);

		if (cap == KVM_CAP_NR_VCPUS)
			want = ncpus < 1024 ? ncpus : 1024;
		if (got != want || got_vm != want) {
			printf("# cap %d: dev fd %ld, vm fd %ld, wanted %ld\n", cap, got, got_vm, want);
			ktap_failed_case = 1;
		}
	}
	/* Out-of-range and negative cap numbers are simply unknown. */
	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, -1L) == 0);
	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, 1UL << 40) == 0);
	close(vm);
	close(kvm);
}

TEST(vcpu_ids_and_limits)
{
	int kvm = open_dev(), vm = create_vm(kvm);
	long max_vcpus = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
	long max_id = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPU_ID);
	static int fds[1024];
	int n = 0, fd;
	char link[64], target[64] = "";
	/* One fd per vCPU, plus a few: above the default limit of 1024 open files. */
	struct rlimit rl = { max_vcpus + 64, max_vcpus + 64 };

	CHECK(max_vcpus > 0 && max_vcpus <= 1024 && max_id >= max_vcpus);
	CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
	CHECK_ERRNO_WHY(ioctl(vm, KVM_CREATE_VCPU, max_id), EINVAL,
		    "vCPU id equal to KVM_CAP_MAX_VCPU_ID");
	CHECK_ERRNO_WHY(ioctl(vm, KVM_CREATE_VCPU, 1UL << 32), EINVAL, "vCPU id 2^32 (above 32 bits)");
	fd = ioctl(vm, KVM_CREATE_VCPU, max_id - 1);
	CHECK(fd >= 0);
	fds[n++] = fd;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	CHECK(readlink(link, target, sizeof(target) - 1) > 0);
	snprintf(link, sizeof(link), "anon_inode:kvm-vcpu:%ld", max_id - 1);
	CHECK(strcmp(target, link) == 0);
	CHECK_ERRNO_WHY(ioctl(vm, KVM_CREATE_VCPU, max_id - 1), EEXIST, "vCPU id already in use");
	for (long id = 0; n < max_vcpus; id++) {
		fd = ioctl(vm, KVM_CREATE_VCPU, id);
		CHECK(fd >= 0);
		if (fd < 0)
			break;
		fds[n++] = fd;
	}
	/* The VM is full: one more is EINVAL, even for a duplicate id (limit checked first). */
	CHECK_ERRNO_WHY(ioctl(vm, KVM_CREATE_VCPU, max_vcpus + 1), EINVAL,
		    "VM already has KVM_CAP_MAX_VCPUS vCPUs");
	CHECK_ERRNO_WHY(ioctl(vm, KVM_CREATE_VCPU, 0), EINVAL,
		    "VM full, id already in use (the limit is checked first)");
	/* Closing a vCPU fd does not free its id: the vCPU lives as long as the VM. */
	close(fds[1]);
	fds[1] = -1;
	CHECK_ERRNO_WHY(ioctl(vm, KVM_CREATE_VCPU, 0), EINVAL,
		    "id of a vCPU whose fd was closed (the vCPU lives on)");
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	close(vm);
	/* A fresh VM starts with no vCPUs. */
	vm = create_vm(kvm);
	fd = ioctl(vm, KVM_CREATE_VCPU, 0);
	CHECK(fd >= 0);
	close(fd);
	close(vm);
	close(kvm);
}

TEST(unknown_ioctls)
{
	int kvm = open_dev(), vm = create_vm(kvm), vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);

	CHECK(vcpu >= 0);
	/* 0xff is no KVM ioctl number in any direction. */
	CHECK_ERRNO_WHY(ioctl(kvm, _IO(KVMIO, 0xff), 0), EINVAL,
		    "unknown ioctl number (KVMIO 0xff) on /dev/kvm");
	CHECK_ERRNO_WHY(ioctl(vm, _IO(KVMIO, 0xff), 0), ENOTTY,
		    "unknown ioctl number (KVMIO 0xff) on a VM fd");
	CHECK_ERRNO_WHY(ioctl(vcpu, _IO(KVMIO, 0xff), 0), EINVAL,
		    "unknown ioctl number (KVMIO 0xff) on a vCPU fd");
	/* vCPU ioctls on the VM fd and VM ioctls on the vCPU fd. */
	CHECK_ERRNO_WHY(ioctl(vm, KVM_RUN, 0), ENOTTY, "vCPU ioctl on a VM fd");
	CHECK_ERRNO_WHY(ioctl(vcpu, KVM_CREATE_VCPU, 1), EINVAL, "VM ioctl on a vCPU fd");
	/* A foreign ioctl type on the vCPU fd. */
	CHECK_ERRNO_WHY(ioctl(vcpu, _IO('T', 1), 0), EINVAL, "foreign ioctl type ('T') on a vCPU fd");
	/* Device ioctls on the VM fd that it does not take. */
	CHECK_ERRNO_WHY(ioctl(vm, KVM_CREATE_VM, 0), ENOTTY, "device ioctl on a VM fd");
	close(vcpu);
	close(vm);
	close(kvm);
}

TEST(other_address_space_gets_eio)
{
	int kvm = open_dev(), vm = create_vm(kvm), vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	struct kvm_regs regs;
	int status = 0;
	pid_t pid = fork();

	if (pid == 0) {
		int bad = 0;

		errno = 0;
		if (ioctl(vm, KVM_CREATE_VCPU, 1) != -1 || errno != EIO)
			bad |= 1;
		errno = 0;
		if (ioctl(vcpu, KVM_GET_REGS, &regs) != -1 || errno != EIO)
			bad |= 2;
		/* The device fd has no owner: it works from anywhere. */
		if (ioctl(kvm, KVM_GET_API_VERSION, 0) != 12)
			bad |= 4;
		_exit(bad);
	}
	CHECK(pid > 0);
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	if (WEXITSTATUS(status))
		ktap_diag("child failures mask %d", WEXITSTATUS(status));
	/* The child's checks, for the errno table (logged only if this case passes). */
	ktap_errno_log("ioctl(vm, KVM_CREATE_VCPU, 1)", EIO, "VM fd used by a forked child (another mm)");
	ktap_errno_log("ioctl(vcpu, KVM_GET_REGS, &regs)", EIO,
		       "vCPU fd used by a forked child (another mm)");
	/* The parent still can. */
	CHECK(ioctl(vcpu, KVM_GET_REGS, &regs) == 0);
	close(vcpu);
	close(vm);
	close(kvm);
}

TEST(tss_and_identity_map_addr)
{
	int kvm = open_dev(), vm = create_vm(kvm), vcpu;
	__u64 addr = 0xfffbc000;

	CHECK(ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL) == 0);
	CHECK(ioctl(vm, KVM_SET_TSS_ADDR, 0xfffff000UL - 2 * 0x1000) == 0);
	CHECK_ERRNO_WHY(ioctl(vm, KVM_SET_TSS_ADDR, 0xfffff000UL - 2 * 0x1000 + 1), EINVAL,
		    "TSS (3 pages) would cross 4 GiB");
	CHECK_ERRNO_WHY(ioctl(vm, KVM_SET_TSS_ADDR, 1UL << 32), EINVAL, "address at 4 GiB");
	CHECK_ERRNO_WHY(ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, NULL), EFAULT, "NULL pointer");
	CHECK(ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &addr) == 0);
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	CHECK(vcpu >= 0);
	/* Only before the first vCPU. */
	CHECK_ERRNO_WHY(ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &addr), EINVAL,
		    "after the first vCPU was created");
	close(vcpu);
	close(vm);
	close(kvm);
}

/* KVM_ENABLE_CAP(KVM_CAP_MAX_VCPU_ID) (upstream x86 kvm_vm_ioctl_enable_cap) and
 * KVM_SET_NR_MMU_PAGES (kvm_vm_ioctl_set_nr_mmu_pages). */
TEST(enable_cap_and_nr_mmu_pages)
{
	int kvm = open_dev(), vm = create_vm(kvm), fd;
	long max_id = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPU_ID);
	struct kvm_enable_cap cap = { .cap = KVM_CAP_MAX_VCPU_ID, .args = { max_id + 1 } };

	CHECK(ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_ENABLE_CAP_VM) == 1);
	/* Beyond the global limit, nonzero flags, a cap that cannot be enabled: EINVAL. */
	CHECK_ERRNO_WHY(ioctl(vm, KVM_ENABLE_CAP, &cap), EINVAL,
		    "KVM_CAP_MAX_VCPU_ID above KVM_CAP_MAX_VCPU_ID's own limit");
	cap.args[0] = 2;
	cap.flags = 1;
	CHECK_ERRNO_WHY(ioctl(vm, KVM_ENABLE_CAP, &cap), EINVAL, "nonzero flags");
	cap.flags = 0;
	cap.cap = KVM_CAP_USER_MEMORY;
	CHECK_ERRNO_WHY(ioctl(vm, KVM_ENABLE_CAP, &cap), EINVAL,
		    "cap that cannot be enabled (KVM_CAP_USER_MEMORY)");
	CHECK_ERRNO_WHY(ioctl(vm, KVM_ENABLE_CAP, NULL), EFAULT, "NULL pointer");
	cap.cap = KVM_CAP_MAX_VCPU_ID;
	CHECK(ioctl(vm, KVM_ENABLE_CAP, &cap) == 0);
	/* The same value again is fine, another one is not. */
	CHECK(ioctl(vm, KVM_ENABLE_CAP, &cap) == 0);
	cap.args[0] = 3;
	CHECK_ERRNO_WHY(ioctl(vm, KVM_ENABLE_CAP, &cap), EINVAL,
		    "KVM_CAP_MAX_VCPU_ID changed once set");
	CHECK_ERRNO_WHY(ioctl(vm, KVM_CREATE_VCPU, 2), EINVAL,
		    "vCPU id at the VM's KVM_CAP_MAX_VCPU_ID");
	fd = ioctl(vm, KVM_CREATE_VCPU, 1);
	CHECK(fd >= 0);
	close(fd);
	/* At least KVM_MIN_ALLOC_MMU_PAGES (64). */
	CHECK_ERRNO_WHY(ioctl(vm, KVM_SET_NR_MMU_PAGES, 63UL), EINVAL,
		    "63 pages (below the minimum of 64)");
	CHECK(ioctl(vm, KVM_SET_NR_MMU_PAGES, 64UL) == 0);
	/*
	 * KVM_CAP_X2APIC_API: only the flags KVM_CHECK_EXTENSION reports; any time, again and again
	 * (here after a vCPU exists, and without an irqchip).
	 */
	cap.cap = KVM_CAP_X2APIC_API;
	cap.args[0] = ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_X2APIC_API);
	CHECK(cap.args[0] == (KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK));
	CHECK(ioctl(vm, KVM_ENABLE_CAP, &cap) == 0);
	cap.args[0] = KVM_X2APIC_API_USE_32BIT_IDS;
	CHECK(ioctl(vm, KVM_ENABLE_CAP, &cap) == 0);
	cap.args[0] = 4;
	CHECK_ERRNO_WHY(ioctl(vm, KVM_ENABLE_CAP, &cap), EINVAL,
		    "KVM_CAP_X2APIC_API with an unknown flag (4)");
	cap.args[0] = 1ULL << 63;
	CHECK_ERRNO_WHY(ioctl(vm, KVM_ENABLE_CAP, &cap), EINVAL, "KVM_CAP_X2APIC_API with flag bit 63");
	close(vm);
	close(kvm);
}

/* Reads a stats fd's header, id and descriptors; returns the number of statistics. */
static int read_stats(int fd, char *id, struct kvm_stats_header *h)
{
	if (pread(fd, h, sizeof(*h), 0) != sizeof(*h) || h->name_size != STATS_NAME_SIZE)
		return -1;
	if (pread(fd, id, h->name_size, h->id_offset) != h->name_size)
		return -1;
	return h->num_desc;
}

/* KVM_GET_STATS_FD (upstream kvm_vm_ioctl_get_stats_fd / kvm_stats_read). */
TEST(binary_stats_fd)
{
	int kvm = open_dev(), vm = create_vm(kvm), vcpu = ioctl(vm, KVM_CREATE_VCPU, 3);
	int vfd = ioctl(vm, KVM_GET_STATS_FD, 0), cfd = ioctl(vcpu, KVM_GET_STATS_FD, 0);
	struct kvm_stats_header h;
	char id[STATS_NAME_SIZE], want[64], desc[sizeof(struct kvm_stats_desc) + STATS_NAME_SIZE];
	struct kvm_stats_desc *d = (void *)desc;
	int n, found = 0;
	__u64 v;

	CHECK(ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_BINARY_STATS_FD) == 1);
	CHECK(vfd >= 0 && cfd >= 0);
	CHECK((fcntl(vfd, F_GETFL) & O_ACCMODE) == O_RDONLY && (fcntl(vfd, F_GETFD) & FD_CLOEXEC));
	CHECK_ERRNO_WHY(write(vfd, "x", 1), EBADF, "write to a (read-only) stats fd");
	CHECK(read_stats(vfd, id, &h) > 0);
	snprintf(want, sizeof(want), "kvm-%d", getpid());
	CHECK(strcmp(id, want) == 0);
	n = read_stats(cfd, id, &h);
	CHECK(n > 0);
	snprintf(want, sizeof(want), "kvm-%d/vcpu-3", getpid());
	CHECK(strcmp(id, want) == 0);
	CHECK(h.desc_offset >= sizeof(h) && h.data_offset >= h.desc_offset + n * sizeof(desc));
	for (int i = 0; i < n; i++) {
		CHECK(pread(cfd, desc, sizeof(desc), h.desc_offset + i * sizeof(desc)) == sizeof(desc));
		CHECK(d->size == 1 && d->bucket_size == 0 && strlen(d->name) < STATS_NAME_SIZE);
		if (!strcmp(d->name, "exits")) {
			found = 1;
			/* Nothing ran yet. */
			CHECK(pread(cfd, &v, 8, h.data_offset + d->offset) == 8 && v == 0);
		}
	}
	CHECK(found);
	/* Past the end: 0 bytes. */
	CHECK(pread(cfd, &v, 8, h.data_offset + n * 8) == 0);
	/* The stats fd keeps working after the VM and vCPU fds are closed. */
	close(vcpu);
	close(vm);
	CHECK(read_stats(cfd, id, &h) == n);
	close(vfd);
	close(cfd);
	close(kvm);
}

TEST(device_node_mode)
{
	struct stat st;

	if (upstream())
		SKIP("rkvm-specific node");
	CHECK(stat(dev_path(), &st) == 0);
	CHECK(S_ISCHR(st.st_mode));
	CHECK((st.st_mode & 0777) == 0600);
	CHECK(st.st_uid == 0);
}

KTAP_MAIN("rkvm api_basics",
	CASE(api_version),
	CASE(create_vm_types),
	CASE(vcpu_mmap_size),
	CASE(check_extension_table),
	CASE(vcpu_ids_and_limits),
	CASE(unknown_ioctls),
	CASE(other_address_space_gets_eio),
	CASE(tss_and_identity_map_addr),
	CASE(enable_cap_and_nr_mmu_pages),
	CASE(binary_stats_fd),
	CASE(device_node_mode))

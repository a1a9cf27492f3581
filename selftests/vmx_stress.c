// SPDX-License-Identifier: GPL-2.0
/*
 * Many exits on the VMX backend: one vCPU thread hopping between CPUs while its guest makes 10^4
 * port exits (its VMCS must be VMCLEARed on the old CPU and loaded on the new one each time), and
 * two VMs running at once on their own threads. The guest counts in CX and writes the count to
 * port 0x3f8 in a loop, so every exit carries the number userspace expects next.
 *
 * CPU hotplug: a CPU holding a vCPU's VMCS goes offline (rkvm VMCLEARs it there and leaves VMX
 * operation), the vCPU runs on elsewhere, the CPU comes back (VMXON again) and runs it again.
 *
 * Upstream references: vmx_vcpu_load / loaded_vmcs_clear (vmx.c), kvm_arch_vcpu_load,
 * kvm_online_cpu / kvm_offline_cpu and vmx_hardware_disable (CPU hotplug).
 */
#include <pthread.h>
#include <sched.h>
#include "rkvm_util.h"

/* xor cx, cx; mov dx, 0x3f8; 1: inc cx; mov ax, cx; out dx, ax; jmp 1b */
static const unsigned char counter[] = {
	0x31, 0xc9, 0xba, 0xf8, 0x03, 0x41, 0x89, 0xc8, 0xef, 0xeb, 0xfa,
};

/* Runs `n` exits; each must be a 2-byte OUT to 0x3f8 of the next count. Returns the exits done. */
static int count_exits(struct real_vm *v, int n, int hop_every, int ncpus)
{
	int i;

	for (i = 1; i <= n; i++) {
		if (hop_every && i % hop_every == 0) {
			cpu_set_t set;
			int cpu = (i / hop_every) % ncpus;

			CPU_ZERO(&set);
			CPU_SET(cpu, &set);
			if (sched_setaffinity(0, sizeof(set), &set) || sched_getcpu() != cpu) {
				printf("# could not move to CPU %d\n", cpu);
				return i - 1;
			}
		}
		if (ioctl(v->vcpu, KVM_RUN, 0) || v->run->exit_reason != KVM_EXIT_IO ||
		    v->run->io.port != 0x3f8 || v->run->io.size != 2 ||
		    v->run->io.direction != KVM_EXIT_IO_OUT ||
		    *(__u16 *)((char *)v->run + v->run->io.data_offset) != (__u16)i) {
			printf("# exit %d: errno %d, reason %u, data %#x\n", i, errno, v->run->exit_reason,
			       *(__u16 *)((char *)v->run + v->run->io.data_offset));
			return i - 1;
		}
	}
	return n;
}

TEST(vcpu_hops_between_cpus)
{
	int ncpus = sysconf(_SC_NPROCESSORS_ONLN);
	struct real_vm v;

	if (no_guests())
		SKIP("backend=none enters no guest");
	if (ncpus < 2)
		SKIP("one CPU online");
	CHECK(real_vm_create(&v, counter, sizeof(counter)) == 0);
	/* 10^4 exits, a new CPU every 50. */
	CHECK(count_exits(&v, 10000, 50, ncpus) == 10000);
	real_vm_free(&v);
}

struct runner {
	pthread_t thread;
	int cpu, done;
};

static void *run_one_vm(void *arg)
{
	struct runner *r = arg;
	struct real_vm v;

	if (r->cpu >= 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(r->cpu, &set);
		sched_setaffinity(0, sizeof(set), &set);
	}
	if (real_vm_create(&v, counter, sizeof(counter)) == 0) {
		r->done = count_exits(&v, 3000, 0, 1);
		real_vm_free(&v);
	}
	return NULL;
}

TEST(two_vms_at_once)
{
	int ncpus = sysconf(_SC_NPROCESSORS_ONLN);
	struct runner r[2];
	int i;

	if (no_guests())
		SKIP("backend=none enters no guest");
	/* One VM per CPU when there are two; else both share the CPU and preempt each other. */
	for (i = 0; i < 2; i++) {
		r[i].cpu = ncpus >= 2 ? i : -1;
		r[i].done = 0;
		CHECK(pthread_create(&r[i].thread, NULL, run_one_vm, &r[i]) == 0);
	}
	for (i = 0; i < 2; i++)
		pthread_join(r[i].thread, NULL);
	CHECK(r[0].done == 3000);
	CHECK(r[1].done == 3000);
}

static int pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set) == 0 && sched_getcpu() == cpu ? 0 : -1;
}

static int set_online(int cpu, int on)
{
	char path[64];
	int fd, ok;

	snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%d/online", cpu);
	fd = open(path, O_WRONLY);
	if (fd < 0)
		return -1;
	ok = write(fd, on ? "1" : "0", 1) == 1;
	close(fd);
	return ok ? 0 : -1;
}

/* `n` more exits of the counter guest, whose count goes on from *next. */
static int more_exits(struct real_vm *v, int n, __u16 *next)
{
	for (int i = 0; i < n; i++, (*next)++) {
		if (ioctl(v->vcpu, KVM_RUN, 0) || v->run->exit_reason != KVM_EXIT_IO ||
		    *(__u16 *)((char *)v->run + v->run->io.data_offset) != *next) {
			printf("# exit %u: errno %d, reason %u\n", *next, errno, v->run->exit_reason);
			return -1;
		}
	}
	return 0;
}

TEST(cpu_offline_and_back_with_a_loaded_vmcs)
{
	struct real_vm v, w;
	__u16 next = 1, next2 = 1;

	if (no_guests())
		SKIP("backend=none enters no guest");
	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
		SKIP("one CPU online");
	if (access("/sys/devices/system/cpu/cpu1/online", W_OK))
		SKIP("CPU 1 cannot go offline");
	CHECK(real_vm_create(&v, counter, sizeof(counter)) == 0);
	/* The VMCS is loaded (current and launched) on CPU 1. */
	CHECK(pin(1) == 0);
	CHECK(more_exits(&v, 20, &next) == 0);
	CHECK(pin(0) == 0);
	CHECK(set_online(1, 0) == 0);
	/* A vCPU created while CPU 1 is offline. */
	CHECK(real_vm_create(&w, counter, sizeof(counter)) == 0);
	/*
	 * Entering guests while CPU 1 is offline is optional (RKVM_HOTPLUG_RUN_OFFLINE=1): in
	 * 2-CPU Bochs, a guest run on CPU 0 while CPU 1 is parked in mwait_play_dead sometimes
	 * leaves CPU 1 unable to wake from idle once it is back (no reschedule IPI or timer
	 * reaches it, as if its MWAIT missed the wakeup write), so the online never completes.
	 * It did not happen with the offline CPU parked by HLT (clearcpuid=monitor), nor in 10
	 * cycles with kvm_intel; the cause is not found yet.
	 */
	if (getenv("RKVM_HOTPLUG_RUN_OFFLINE")) {
		/* Cleared by CPU 1's offline callback: loaded afresh here, VMLAUNCH again. */
		CHECK(more_exits(&v, 20, &next) == 0);
		CHECK(more_exits(&w, 20, &next2) == 0);
	}
	CHECK(set_online(1, 1) == 0);
	/* v's VMCS was cleared by CPU 1's offline callback: it is loaded afresh (VMLAUNCH again). */
	CHECK(more_exits(&v, 20, &next) == 0);
	/* CPU 1 is in VMX operation again: both run there. */
	CHECK(pin(1) == 0);
	CHECK(more_exits(&v, 20, &next) == 0);
	CHECK(more_exits(&w, 20, &next2) == 0);
	CHECK(pin(0) == 0);
	CHECK(more_exits(&v, 20, &next) == 0);
	real_vm_free(&w);
	real_vm_free(&v);
}

/*
 * One thread, two vCPUs of two VMs, alternating on one CPU: each KVM_RUN must make its own VMCS
 * current again (both stay active on the CPU), every exit must carry its own guest's count.
 */
TEST(two_vcpus_alternating_on_one_cpu)
{
	struct real_vm a, b;
	__u16 na = 1, nb = 1;

	if (no_guests())
		SKIP("backend=none enters no guest");
	CHECK(pin(0) == 0);
	CHECK(real_vm_create(&a, counter, sizeof(counter)) == 0);
	CHECK(real_vm_create(&b, counter, sizeof(counter)) == 0);
	/* b runs twice per round, so the two counts differ. */
	for (int i = 0; i < 1000; i++) {
		if (more_exits(&a, 1, &na) || more_exits(&b, 2, &nb)) {
			CHECK(!"each exit carries its own guest's count");
			break;
		}
	}
	CHECK(na == 1001 && nb == 2001);
	real_vm_free(&b);
	real_vm_free(&a);
}

KTAP_MAIN("rkvm vmx_stress",
	CASE(vcpu_hops_between_cpus),
	CASE(two_vms_at_once),
	CASE(cpu_offline_and_back_with_a_loaded_vmcs),
	CASE(two_vcpus_alternating_on_one_cpu))

// SPDX-License-Identifier: GPL-2.0
/*
 * Many exits on the VMX backend: one vCPU thread hopping between CPUs while its guest makes 10^4
 * port exits (its VMCS must be VMCLEARed on the old CPU and loaded on the new one each time), and
 * two VMs running at once on their own threads. The guest counts in CX and writes the count to
 * port 0x3f8 in a loop, so every exit carries the number userspace expects next.
 *
 * Upstream references: vmx_vcpu_load / loaded_vmcs_clear (vmx.c), kvm_arch_vcpu_load.
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

KTAP_MAIN("rkvm vmx_stress",
	CASE(vcpu_hops_between_cpus),
	CASE(two_vms_at_once))

/*
 * The guest of selftests/pvclock.c: KVM's paravirtual clock and hypercalls as a Linux guest uses
 * them.
 *
 * 64-bit long mode, loaded at GPA 0 and entered at 0 with RAX = the program number (the table
 * below). `out al, 0x80` is a pause point where the test looks at the results in guest memory:
 *   0x3000  struct pvclock_vcpu_time_info (MSR_KVM_SYSTEM_TIME_NEW)
 *   0x3100  struct pvclock_wall_clock (MSR_KVM_WALL_CLOCK_NEW)
 *   0x4000  the last kvmclock reading (ns)
 *   0x4008  how many of the readings of program 1 went backwards
 *   0x4010  the readings of program 1
 *   0x4018  the flags byte of the time information at the last reading
 *   0x4020  hypercall results (program 2), 8 bytes each
 */
	.code64
	.set SYNC,		0x80
	.set PVTI,		0x3000
	.set WALL,		0x3100
	.set RES,		0x4000
	.set MSR_WALL_CLOCK_NEW,	0x4b564d00
	.set MSR_SYSTEM_TIME_NEW,	0x4b564d01

	.globl _start
_start:
	mov	$0xf000, %rsp
	jmp	*programs(,%rax,8)

	.align 8
programs:			/* numbered as enum program in pvclock.c */
	.quad	p_enable	/* 0 */
	.quad	p_read		/* 1 */
	.quad	p_hypercalls	/* 2 */
	.quad	p_map_gpa	/* 3 */
	.quad	p_hlt		/* 4 */

/* 0: kvmclock on (time information at PVTI), the wall clock written at WALL; then one reading. */
p_enable:
	mov	$MSR_SYSTEM_TIME_NEW, %ecx
	mov	$PVTI | 1, %eax
	xor	%edx, %edx
	wrmsr
	mov	$MSR_WALL_CLOCK_NEW, %ecx
	mov	$WALL, %eax
	wrmsr
	call	kvmclock
	mov	%rax, RES
	mov	$0, %al
	out	%al, $SYNC
	/* later entries: program 1 */

/* 1: 10000 readings, counting those that went backwards; the last one at RES; pause; again. */
p_read:
	movq	$0, RES + 8
	movq	$0, RES + 0x10
	call	kvmclock
	mov	%rax, %r12
	mov	$10000, %r13d
1:	call	kvmclock
	incq	RES + 0x10
	cmp	%r12, %rax
	jae	2f
	incq	RES + 8
2:	mov	%rax, %r12
	dec	%r13d
	jnz	1b
	mov	%r12, RES
	mov	$1, %al
	out	%al, $SYNC
	jmp	p_read

/*
 * 2: hypercalls: KVM_HC_VAPIC_POLL_IRQ (1) by VMCALL, an unknown number (999), KVM_HC_KICK_CPU
 * (5, not implemented), KVM_HC_SCHED_YIELD (11) by VMMCALL, which the default quirk rewrites into
 * VMCALL; results at RES + 0x20... and the rewritten bytes at RES + 0x40.
 */
p_hypercalls:
	mov	$1, %eax
	vmcall
	mov	%rax, RES + 0x20
	mov	$999, %eax
	vmcall
	mov	%rax, RES + 0x28
	mov	$5, %eax
	xor	%ebx, %ebx
	mov	$1, %ecx
	vmcall
	mov	%rax, RES + 0x30
	mov	$11, %eax
	xor	%ebx, %ebx
patched:
	vmmcall
	mov	%rax, RES + 0x38
	mov	patched(%rip), %eax
	mov	%eax, RES + 0x40
	mov	$2, %al
	out	%al, $SYNC
	hlt

/*
 * 3: KVM_HC_MAP_GPA_RANGE (12) of 4 pages at 1 MiB with attributes 0x10 (userspace's answer at
 * RES + 0x48), then of an unaligned address (RES + 0x50).
 */
p_map_gpa:
	mov	$12, %eax
	mov	$0x100000, %ebx
	mov	$4, %ecx
	mov	$0x10, %edx
	vmcall
	mov	%rax, RES + 0x48
	mov	$12, %eax
	mov	$0x100001, %ebx
	vmcall
	mov	%rax, RES + 0x50
	mov	$3, %al
	out	%al, $SYNC
	hlt

/*
 * 4: HLT with interrupts on (under KVM_X86_DISABLE_EXITS_HLT: no exit); an interrupt at vector
 * 0x20 (IDT at 0x5000, a handler that only returns) ends it; then pause 4.
 */
p_hlt:
	lea	irq(%rip), %rax
	mov	$0x5000 + 0x20 * 16, %edi
	mov	%ax, (%rdi)
	mov	%cs, %ecx
	mov	%cx, 2(%rdi)
	movw	$0x8e00, 4(%rdi)
	shr	$16, %rax
	mov	%ax, 6(%rdi)
	shr	$16, %rax
	mov	%eax, 8(%rdi)
	movl	$0, 12(%rdi)
	lidt	idtr(%rip)
	sti
	hlt
	mov	$4, %al
	out	%al, $SYNC
	hlt
irq:
	iretq
idtr:
	.word	0x1000 - 1
	.quad	0x5000

/*
 * The kvmclock in RAX (Linux's pvclock_clocksource_read): retried while the version is odd or
 * changes; ns = system_time + ((tsc - tsc_timestamp) << shift) * mul >> 32. The flags byte goes
 * to RES + 0x18.
 */
kvmclock:
	push	%rbx
	push	%rcx
	push	%rdx
	push	%rsi
	push	%rdi
1:	mov	PVTI, %esi		/* version */
	test	$1, %esi
	jnz	1b
	lfence
	rdtsc
	shl	$32, %rdx
	or	%rdx, %rax
	sub	PVTI + 8, %rax		/* tsc - tsc_timestamp */
	movsbl	PVTI + 28, %ecx		/* tsc_shift */
	test	%ecx, %ecx
	js	2f
	shl	%cl, %rax
	jmp	3f
2:	neg	%ecx
	shr	%cl, %rax
3:	mov	PVTI + 24, %ebx		/* tsc_to_system_mul */
	mul	%rbx
	shrd	$32, %rdx, %rax
	add	PVTI + 16, %rax		/* system_time */
	movzbl	PVTI + 29, %edi
	lfence
	cmp	PVTI, %esi
	jne	1b
	mov	%rdi, RES + 0x18
	pop	%rdi
	pop	%rsi
	pop	%rdx
	pop	%rcx
	pop	%rbx
	ret

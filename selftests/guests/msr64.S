/* 64-bit long mode: MSRs and XCR0 handled in the kernel (RDMSR/WRMSR/XSETBV exits) and the guest
 * values really in the CPU while the guest runs, across exits to userspace ('a' 'b' 'c' on port
 * 0x3f8, after 'S'):
 *  - SYSCALL through guest-written EFER.SCE, STAR, LSTAR and SFMASK (DF masked): r13 = RCX minus
 *    the return address (0), r14 = old RFLAGS.DF from R11 (0x400), r12 = RFLAGS.DF in the target (0),
 *    rdi = LSTAR read back minus the target (0);
 *  - KERNEL_GS_BASE written, SWAPGS, GS_BASE read without an exit: rbx = 0x5a5a5000; SWAPGS back,
 *    KERNEL_GS_BASE read back: rsi = 0x5a5a5000;
 *  - TSC_AUX written, RDTSCP: r9 = 0xabcd;
 *  - CR4.OSXSAVE set: CPUID.1:ECX.OSXSAVE r10 = 1; XSETBV 3 then XGETBV: r8 = 3;
 *  - #GP (counted in r15 by the guest's handler, which skips rbp bytes): RDMSR of an unknown MSR,
 *    WRMSR of a non-canonical LSTAR, WRMSR of a reserved EFER bit, XSETBV of AVX without SSE:
 *    r15 = 4;
 *  - debug registers: DR0 written and read back into memory at 0x600, DR7 = 1 reads 0x401 (r11),
 *    DR6 reads its fixed bits 0xffff0ff0 (rax). */
	.code64
	.globl _start
_start:
	mov	$0x3f8, %dx
	mov	$'S', %al
	out	%al, %dx
	xor	%r15d, %r15d
	/* IDT at 0x8000 with a #GP gate (vector 13) only */
	lea	gp_handler(%rip), %rax
	mov	$0x8000 + 13 * 16, %edi
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

	/* EFER.SCE; STAR (SYSCALL CS = our CS, SS = CS + 8); LSTAR; SFMASK = DF */
	mov	$0xc0000080, %ecx
	rdmsr
	or	$1, %eax
	wrmsr
	mov	$0xc0000081, %ecx
	xor	%eax, %eax
	mov	%cs, %edx
	wrmsr
	lea	syscall_target(%rip), %rax
	mov	%rax, %rdx
	shr	$32, %rdx
	mov	$0xc0000082, %ecx
	wrmsr
	mov	$0xc0000084, %ecx
	mov	$0x400, %eax
	xor	%edx, %edx
	wrmsr
	mov	$0x3f8, %dx		/* exit to userspace: the host's LSTAR is back meanwhile */
	mov	$'a', %al
	out	%al, %dx
	std
	syscall
after_syscall:
	lea	after_syscall(%rip), %rax
	sub	%rax, %r13
	and	$0x400, %r14
	and	$0x400, %r12
	mov	$0xc0000082, %ecx
	rdmsr
	shl	$32, %rdx
	or	%rax, %rdx
	lea	syscall_target(%rip), %rax
	sub	%rax, %rdx
	mov	%rdx, %rdi

	/* KERNEL_GS_BASE, across an exit to userspace */
	mov	$0xc0000102, %ecx
	mov	$0x5a5a5000, %eax
	xor	%edx, %edx
	wrmsr
	mov	$0x3f8, %dx
	mov	$'b', %al
	out	%al, %dx
	swapgs
	mov	$0xc0000101, %ecx
	rdmsr
	shl	$32, %rdx
	or	%rax, %rdx
	mov	%rdx, %rbx
	swapgs
	mov	$0xc0000102, %ecx
	rdmsr
	shl	$32, %rdx
	or	%rax, %rdx
	mov	%rdx, %rsi

	/* TSC_AUX, across an exit to userspace */
	mov	$0xc0000103, %ecx
	mov	$0xabcd, %eax
	xor	%edx, %edx
	wrmsr
	mov	$0x3f8, %dx
	mov	$'c', %al
	out	%al, %dx
	rdtscp
	mov	%rcx, %r9

	/* XCR0: CR4.OSXSAVE, CPUID, XSETBV 3 (x87 + SSE) */
	mov	%cr4, %rax
	or	$1 << 18, %rax
	mov	%rax, %cr4
	push	%rbx			/* CPUID writes EBX */
	mov	$1, %eax
	cpuid
	pop	%rbx
	shr	$27, %ecx
	and	$1, %ecx
	mov	%rcx, %r10
	xor	%ecx, %ecx
	mov	$3, %eax
	xor	%edx, %edx
	xsetbv
	xor	%ecx, %ecx
	xgetbv
	mov	%rax, %r8

	/* #GP cases */
	mov	$2, %ebp
	mov	$0x12345, %ecx		/* unknown MSR */
	rdmsr
	mov	$0xc0000082, %ecx	/* non-canonical LSTAR */
	xor	%eax, %eax
	mov	$0x8000, %edx
	wrmsr
	mov	$0xc0000080, %ecx	/* EFER bit 2 is reserved */
	mov	$0x504, %eax
	xor	%edx, %edx
	wrmsr
	mov	$3, %ebp
	xor	%ecx, %ecx		/* AVX without SSE: invalid on any CPU */
	mov	$5, %eax
	xor	%edx, %edx
	xsetbv

	/* Debug registers (MOV DR exits, kept in software) */
	movabs	$0x123456789, %rax
	mov	%rax, %dr0
	mov	%dr0, %rcx
	mov	%rcx, 0x600
	mov	$1, %eax
	mov	%rax, %dr7
	mov	%dr7, %r11
	mov	%dr6, %rax
	hlt

syscall_target:
	pushf
	pop	%r12
	mov	%rcx, %r13
	mov	%r11, %r14
	jmp	*%rcx

gp_handler:
	inc	%r15
	add	$8, %rsp		/* error code */
	add	%rbp, (%rsp)		/* skip the faulting instruction */
	iretq

idtr:
	.word	256 * 16 - 1
	.quad	0x8000

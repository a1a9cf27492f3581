/* 64-bit long mode, 6 MiB of memory: string I/O whose memory operand faults gets the guest's own
 * #PF (error code and CR2) instead of any I/O, the guest's handler recording it:
 *  - REP INSB into a read-only 2 MiB page with CR0.WP set: #PF P|W (r8 = 3), CR2 = 0x200000
 *    (r9), rCX untouched (r10 = 3), no IN exit;
 *  - REP OUTSB of 4 bytes from 0x3ffffe, whose last two are in a not-present page: the first two
 *    go out ("xy" after 'F'), then #PF 0 (r12 = 0) at CR2 = 0x400000 (r13), with rCX = 2 (r11)
 *    and rSI = 0x400000 (r15) left for the faulting element. */
	.code64
	.globl _start
_start:
	mov	$0x1ff000, %esp
	mov	$0x3f8, %dx
	mov	$'F', %al
	out	%al, %dx
	movw	$0x7978, 0x3ffffe	/* "xy", while the page is still writable */
	/* IDT at 0x8000 with a #PF gate (vector 14) only */
	lea	pf_handler(%rip), %rax
	mov	$0x8000 + 14 * 16, %edi
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
	/* CR0.WP; PD[1] read-only, PD[2] not present (PD found through CR3) */
	mov	%cr0, %rax
	or	$1 << 16, %rax
	mov	%rax, %cr0
	mov	%cr3, %rax
	and	$~0xfff, %rax
	mov	(%rax), %rax
	and	$~0xfff, %rax
	mov	(%rax), %rbx
	and	$~0xfff, %rbx
	movq	$0x200081, 8(%rbx)
	movq	$0, 16(%rbx)
	invlpg	0x200000
	invlpg	0x400000

	mov	$0x3f8, %dx
	mov	$0x200000, %edi
	mov	$3, %ecx
	lea	1f(%rip), %r14
	rep insb
1:	mov	%r12, %r8
	mov	%r13, %r9
	mov	%rcx, %r10

	mov	$0x3ffffe, %esi
	mov	$4, %ecx
	lea	2f(%rip), %r14
	rep outsb
2:	mov	%rcx, %r11
	mov	%rsi, %r15
	hlt

pf_handler:
	pop	%r12			/* error code */
	mov	%cr2, %r13
	mov	%r14, (%rsp)		/* resume after the faulting instruction */
	iretq

idtr:
	.word	256 * 16 - 1
	.quad	0x8000

/*
 * The guest of selftests/ioeventfd.c: port and MMIO writes of each size, some of which match an
 * ioeventfd (no exit: the eventfd is signalled) and some not (an exit to userspace).
 *
 * 64-bit long mode, loaded at GPA 0 and entered at 0 with RAX = the program number (the table
 * below) and RCX = a repeat count where a program takes one. MMIO goes to GPA 0x10000000
 * (RSI), outside guest memory. `out al, 0x80` with AL = a step number is a pause point: the
 * test checks the eventfd counters there. Which write is expected to hit which ioeventfd is
 * listed in selftests/ioeventfd.c next to the test's table of exits.
 */
	.code64
	.set MMIO,	0x10000000
	.set SYNC,	0x80

	.globl _start
_start:
	mov	$MMIO, %esi
	jmp	*programs(,%rax,8)

	.align 8
programs:			/* numbered as enum program in ioeventfd.c */
	.quad	p_sizes		/* 0 */
	.quad	p_pio_loop	/* 1 */
	.quad	p_mmio_loop	/* 2 */
	.quad	p_order		/* 3 */

/* 0: every size, matching and not, on both buses; reads too. */
p_sizes:
	mov	$0x510, %dx		/* len 1, data 0x11 */
	mov	$0x11, %al
	outb	%al, %dx		/* hit */
	mov	$0x12, %al
	outb	%al, %dx		/* exit: other data */
	mov	$0x512, %dx		/* len 2, data 0x2222 */
	mov	$0x2222, %ax
	outw	%ax, %dx		/* hit */
	mov	$0x2223, %ax
	outw	%ax, %dx		/* exit */
	mov	$0x514, %dx		/* len 4, data 0x44444444 */
	mov	$0x44444444, %eax
	outl	%eax, %dx		/* hit */
	mov	$0x44444445, %eax
	outl	%eax, %dx		/* exit */
	mov	$0x44, %al
	outb	%al, %dx		/* exit: other length (data 0x44 as a byte would match) */
	mov	$0x518, %dx		/* len 1, any data */
	mov	$0x99, %al
	outb	%al, %dx		/* hit */
	mov	$0x9999, %ax
	outw	%ax, %dx		/* exit: other length */
	mov	$0x51c, %dx		/* len 0: any length, any data */
	outb	%al, %dx		/* hit */
	outw	%ax, %dx		/* hit */
	outl	%eax, %dx		/* hit */
	mov	$0x51d, %dx
	outb	%al, %dx		/* exit: other port */
	mov	$0x514, %dx
	inl	%dx, %eax		/* exit: a read */
	mov	$1, %al
	out	%al, $SYNC

	movb	$0x11, (%rsi)		/* +0x00: len 1, data 0x11: hit */
	movb	$0x12, (%rsi)		/* exit */
	movw	$0x2222, 0x10(%rsi)	/* +0x10: len 2, data 0x2222: hit */
	movw	$0x2223, 0x10(%rsi)	/* exit */
	movl	$0x44444444, 0x20(%rsi)	/* +0x20: len 4, data 0x44444444: hit */
	movl	$0x44444445, 0x20(%rsi)	/* exit */
	movabs	$0x8888888877777777, %r9
	mov	%r9, 0x30(%rsi)		/* +0x30: len 8, data 0x8888888877777777: hit */
	movabs	$0x8888888877777778, %r9
	mov	%r9, 0x30(%rsi)		/* exit */
	movl	$0x77777777, 0x30(%rsi)	/* exit: other length */
	movl	$0x5555, 0x40(%rsi)	/* +0x40: len 4, any data: hit */
	movb	$1, 0x50(%rsi)		/* +0x50: len 0: hit */
	movw	$2, 0x50(%rsi)		/* hit */
	movl	$3, 0x50(%rsi)		/* hit */
	movq	$4, 0x50(%rsi)		/* hit */
	movb	$5, 0x51(%rsi)		/* exit: other address */
	mov	0x20(%rsi), %eax	/* exit: a read */
	mov	$2, %al
	out	%al, $SYNC
	hlt

/* 1: RCX byte writes to port 0x520, then step 3. */
p_pio_loop:
	mov	$0x520, %dx
1:	outb	%al, %dx
	loop	1b
	mov	$3, %al
	out	%al, $SYNC
	hlt

/* 2: RCX dword writes to MMIO +0x60, then step 3. */
p_mmio_loop:
1:	movl	$1, 0x60(%rsi)
	loop	1b
	mov	$3, %al
	out	%al, $SYNC
	hlt

/* 3: zones and ioeventfds over the same addresses; step 4 after each round. */
p_order:
1:	movl	$1, 0x110(%rsi)		/* zone [0x100, 0x200) first, then ioeventfd 0x110/4 */
	movl	$2, 0x120(%rsi)		/* the same zone, past the ioeventfd */
	movl	$3, 0x104(%rsi)		/* the same zone, before the ioeventfd */
	movl	$4, 0x210(%rsi)		/* ioeventfd 0x210/4 first, then zone [0x200, 0x300) */
	movw	$5, 0x210(%rsi)		/* the same, a length the ioeventfd does not take */
	movl	$6, 0x300(%rsi)		/* zone [0x300, 0x400) first, then ioeventfd 0x300/4 */
	mov	$4, %al
	out	%al, $SYNC
	jmp	1b

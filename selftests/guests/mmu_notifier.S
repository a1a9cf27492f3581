/*
 * The guest of selftests/mmu_notifier.c: reads and writes of guest memory on the test's
 * command, and a loop that keeps writing one page.
 *
 * 64-bit long mode, loaded at GPA 0 and entered at 0 with RAX = the program number (the table
 * below) and RBX = a guest-physical address where a program takes one. Every exit is port I/O.
 */
	.code64
	.set CMD,	0x90	/* in: the next command (0 = hlt, 1 = read, 2 = write) */
	.set ADDR,	0x91	/* in: its guest-physical address */
	.set VALUE,	0x92	/* out: what a read found */
	.set DATA,	0x93	/* in: what a write stores */
	.set TICK,	0x94	/* out: the loop's counter, every 64 increments */

	.globl _start
_start:
	jmp	*programs(,%rax,8)

	.align 8
programs:			/* numbered as enum program in mmu_notifier.c */
	.quad	p_commands	/* 0 */
	.quad	p_increment	/* 1 */

/* 0: reads and writes 32-bit values where the test says, until command 0. */
p_commands:
	in	$CMD, %eax
	test	%eax, %eax
	jz	1f
	mov	%eax, %ecx
	in	$ADDR, %eax
	mov	%eax, %ebx
	cmp	$1, %ecx
	jne	2f
	mov	(%rbx), %eax
	out	%eax, $VALUE
	jmp	p_commands
2:	in	$DATA, %eax
	mov	%eax, (%rbx)
	jmp	p_commands
1:	hlt

/* 1: forever: 64 increments of the 32-bit value at RBX, then its value out on TICK. */
p_increment:
	mov	$64, %ecx
3:	incl	(%rbx)
	loop	3b
	mov	(%rbx), %eax
	out	%eax, $TICK
	jmp	p_increment

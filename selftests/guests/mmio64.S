/* 64-bit long mode MMIO at GPA 0x10000000 (outside guest memory): MOV stores of each size from
 * registers (REX, AH) and immediates (sign-extended imm32), loads of each size with MOVZX/MOVSX,
 * and STOS. rkvm-run answers byte i of every MMIO read with 0x81 + i. 'M' on port 0x3f8 first. */
	.code64
	.globl _start
_start:
	mov	$0x3f8, %dx
	mov	$'M', %al
	out	%al, %dx
	mov	$0x10000000, %esi
	movb	$0x11, (%rsi)
	movw	$0x2233, 2(%rsi)
	movl	$0x44556677, 4(%rsi)
	movq	$-2, 8(%rsi)
	movabs	$0x0102030405060708, %r9
	mov	%r9, 16(%rsi)
	mov	$0x9988, %eax
	mov	%ah, 24(%rsi)
	movabs	$0x1111111111111111, %rbx
	mov	32(%rsi), %bl		/* rbx = 0x1111111111111181 */
	mov	32(%rsi), %ecx		/* rcx = 0x84838281 (upper half zeroed) */
	movsbq	32(%rsi), %rdx		/* rdx = 0xffffffffffffff81 */
	movzwl	32(%rsi), %r8d		/* r8 = 0x8281 */
	movswq	32(%rsi), %r10		/* r10 = 0xffffffffffff8281 */
	mov	32(%rsi), %r11		/* r11 = 0x8887868584838281 */
	lea	48(%rsi), %rdi
	mov	$0xdeadbeef, %eax
	stosl				/* rdi = 0x10000034 */
	hlt

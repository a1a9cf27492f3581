/* Real mode: 6 * 7 into AX and memory at 0x600, 'R' on port 0x3f8, halt. */
	.code16
	.globl _start
_start:
	mov	$6, %ax
	mov	$7, %bx
	mul	%bx
	mov	%ax, 0x600
	mov	$0x3f8, %dx
	mov	%al, %cl
	mov	$'R', %al
	out	%al, %dx
	mov	%cl, %al
	hlt

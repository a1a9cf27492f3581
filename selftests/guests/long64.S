/* 64-bit long mode: a 64-bit value into RAX and memory at 0x600, 'L' on port 0x3f8. */
	.code64
	.globl _start
_start:
	movabs	$0x123456789abcdef0, %rax
	add	$0x10, %rax
	mov	%rax, 0x600
	mov	%rax, %rbx
	mov	$0x3f8, %dx
	mov	$'L', %al
	out	%al, %dx
	mov	%rbx, %rax
	hlt

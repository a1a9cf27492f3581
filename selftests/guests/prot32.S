/* 32-bit protected mode (run flat and with paging): 1 + ... + 100 = 5050 into EAX and 0x600. */
	.code32
	.globl _start
_start:
	xor	%eax, %eax
	mov	$100, %ecx
1:	add	%ecx, %eax
	loop	1b
	mov	%eax, 0x600
	mov	%eax, %ebx
	mov	$0x3f8, %dx
	mov	$'P', %al
	out	%al, %dx
	mov	%ebx, %eax
	hlt

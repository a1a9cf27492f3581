/* 32-bit paging (4 MiB identity pages): 1 + 2 + ... + 100 = 5050 into EAX and 0x600. */
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
	mov	$'G', %al
	out	%al, %dx
	mov	%ebx, %eax
	hlt

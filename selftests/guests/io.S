/* Real mode port I/O of each size and direction. OUT: 'A', "BC", "DEFG". IN: rkvm-run answers
 * byte i of every IN with 'a' + i; the guest echoes what it got with OUTs of the same size,
 * printing "a", "ab", "abcd". */
	.code16
	.globl _start
_start:
	mov	$0x3f8, %dx
	mov	$'A', %al
	outb	%al, %dx
	mov	$0x4342, %ax		/* "BC" */
	outw	%ax, %dx
	mov	$0x47464544, %eax	/* "DEFG" */
	outl	%eax, %dx
	mov	$0x1234, %ax
	inb	%dx, %al		/* AH must survive a byte IN */
	outb	%al, %dx
	cmp	$0x12, %ah
	jne	1f
	inw	%dx, %ax
	outw	%ax, %dx
	inl	%dx, %eax
	outl	%eax, %dx
1:	hlt

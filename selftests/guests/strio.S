/* Real mode string I/O on port 0x3f8: REP OUTSB/OUTSW/INSW, DF=1, OUTSB without REP, a REP
 * OUTSB of 5000 bytes (more than one PIO page: two batches), and REP with CX=0 (no exit).
 * rkvm-run answers byte i of every IN batch with 'a' + i. Stdout: "helloabcdefollehh" and 5000
 * 'z'; "abcdef" lands at 0x800. */
	.code16
	.globl _start
_start:
	cld
	movl	$0x6c6c6568, 0x700	/* "hell" */
	movb	$'o', 0x704
	mov	$0x3f8, %dx
	mov	$0x700, %si
	mov	$5, %cx
	rep outsb			/* "hello" */
	mov	$0x800, %di
	mov	$3, %cx
	rep insw			/* "abcdef" to 0x800 */
	mov	$0x800, %si
	mov	$3, %cx
	rep outsw			/* "abcdef" */
	std
	mov	$0x704, %si
	mov	$5, %cx
	rep outsb			/* "olleh" */
	cld
	mov	$0x700, %si
	outsb				/* "h" */
	mov	$0x1000, %di
	mov	$'z', %al
	mov	$5000, %cx
	rep stosb
	mov	$0x1000, %si
	mov	$5000, %cx
	rep outsb			/* 4096 + 904 */
	rep outsb			/* CX=0: nothing */
	hlt

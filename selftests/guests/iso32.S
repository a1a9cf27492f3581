/*
 * 32-bit flat protected mode guest of selftests/isolation.c and selftests/races.c (loaded at
 * 0x1000, no GDT or IDT needed: interrupts stay off). EBP picks the program; ESI, EDI, EBX, EAX
 * are its arguments, set by KVM_SET_REGS:
 *
 *   0 stamp  every page [ESI, EDI) step EBX: its GPA as a dword at its start and 0xa5 in its
 *            last byte; then OUT to port 0x10 and HLT
 *   1 fill   forever: the dword EAX over [ESI, EDI), read it all back (a dword that is not EAX:
 *            OUT of it to port 0x12, then HLT), OUT to port 0x11 after each pass
 *   2 touch  forever: ECX+1 into the dword at ESI, an OUT to port 0x13 (EAX = ECX) every 256
 *   3 spin   forever: a jump to itself (KVM_RUN only ends on a signal)
 */
	.code32
	.globl _start
_start:
	cmp	$1, %ebp
	je	fill
	cmp	$2, %ebp
	je	touch
	cmp	$3, %ebp
	je	spin
stamp:
	cmp	%edi, %esi
	jae	1f
	mov	%esi, (%esi)
	movb	$0xa5, 0xfff(%esi)
	add	%ebx, %esi
	jmp	stamp
1:	out	%al, $0x10
	hlt

fill:
	mov	%esi, %ecx
2:	mov	%eax, (%ecx)
	add	$4, %ecx
	cmp	%edi, %ecx
	jb	2b
	mov	%esi, %ecx
3:	cmp	%eax, (%ecx)
	jne	4f
	add	$4, %ecx
	cmp	%edi, %ecx
	jb	3b
	out	%al, $0x11
	jmp	fill
4:	mov	(%ecx), %eax
	out	%eax, $0x12
	hlt

touch:
	inc	%ecx
	mov	%ecx, (%esi)
	test	$0xff, %ecx
	jnz	touch
	mov	%ecx, %eax
	out	%eax, $0x13
	jmp	touch

spin:
	jmp	spin

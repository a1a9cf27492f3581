/*
 * The guest of selftests/guest_debug.c (KVM_SET_GUEST_DEBUG, the guest's own debug registers).
 *
 * Real mode. Loaded at GPA 0x1000 and run with CS = 0x100 (base 0x1000), so that every label is
 * also the IP; DS = ES = SS = 0, SP = 0x800. The test enters one program at its fixed offset
 * and follows it exit by exit. The offsets of the labels it needs are in the table at 0xf00, in
 * the order of enum label in guest_debug.c. Reports go through port I/O: the port says what
 * happened, AL or EAX carries data. The test points interrupt vectors 1 (#DB) and 3 (#BP) at
 * the handlers at 0x600 and 0x640.
 */
	.code16
	.set DATA, 0x3000		/* data the watchpoints watch (linear, DS = 0) */

/* Single-stepped by the test: steps the CPU makes, an OUT that exits to userspace (the step
 * is completed by the next KVM_RUN), the MOV SS and STI shadows, a CPUID rkvm emulates, HLT. */
	.org 0x000
	.globl _start
_start:
step:	mov	$0x1234, %ax
step1:	inc	%ax
step2:	out	%al, $0x10
step3:	mov	%ss, %bx
step4:	mov	%bx, %ss		/* traps are held back for one instruction */
step5:	inc	%ax
step6:	sti
step7:	nop
step8:	cli
step9:	xor	%eax, %eax
step10:	cpuid
step11:	out	%al, $0x11
step12:	hlt
step13:	out	%al, $0x12
step14:	nop
step15:	out	%al, $0x1f
	jmp	end

/* A software breakpoint. */
	.org 0x100
swbp:	mov	$1, %al
swbp1:	int3
swbp2:	out	%al, $0x13
	jmp	end

/* A hardware execution breakpoint on hwbp1. */
	.org 0x200
hwbp:	mov	$2, %al
hwbp1:	inc	%ax
hwbp2:	out	%al, $0x14
	jmp	end

/* Data watchpoints: a write of DATA, a read of DATA + 2. */
	.org 0x300
watch:	movw	$0x1234, DATA
watch1:	mov	DATA + 2, %ax
watch2:	out	%al, $0x15
	jmp	end

/* Exceptions injected by userspace at the two OUTs. */
	.org 0x400
inject:	mov	$4, %al
	out	%al, $0x18
inject1: nop
	out	%al, $0x19
	jmp	end

/* The guest's own write watchpoint on DATA + 0x10 (DR0, L0, 1 byte); a debugger takes over,
 * then lets go. */
	.org 0x500
own:	mov	$DATA + 0x10, %eax
	mov	%eax, %dr0
	mov	$0x10401, %eax
	mov	%eax, %dr7
	out	%al, $0x1a
own1:	movb	$1, DATA + 0x10
own2:	nop
	out	%al, $0x1b
own3:	movb	$2, DATA + 0x10
own4:	out	%al, $0x1c
	jmp	end

/* The guest single-steps itself (RFLAGS.TF through POPF): over a CPUID rkvm emulates, then
 * over a NOP. The #DB handler turns TF off again each time. */
	.org 0x580
tf:	pushf
	pop	%ax
	or	$0x100, %ax
	push	%ax
	popf
tf1:	cpuid
tf2:	out	%al, $0x1d
	pushf
	pop	%ax
	or	$0x100, %ax
	push	%ax
	popf
tf3:	nop
tf4:	out	%al, $0x1e
	jmp	end

/* Where every program ends: a test that lost its way gets port 0xff instead of a guest that
 * spins for ever. */
end:	out	%al, $0xff
	jmp	end

/* #DB: reports the guest's DR6 on port 0x16 and clears TF in the interrupted FLAGS. */
	.org 0x600
db_handler:
	mov	%sp, %bp
	andw	$0xfeff, 4(%bp)
	mov	%dr6, %eax
	out	%eax, $0x16
	iret

/* #BP: reports on port 0x17. */
	.org 0x640
bp_handler:
	out	%al, $0x17
	iret

	.org 0xf00
labels:
	.word	step, step1, step2, step3, step4, step5, step6, step7, step8, step9, step10
	.word	step11, step12, step13, step14, step15
	.word	swbp, swbp1, swbp2
	.word	hwbp, hwbp1, hwbp2
	.word	watch, watch1, watch2
	.word	inject, inject1
	.word	own, own1, own2, own3, own4
	.word	tf, tf1, tf2, tf3, tf4
	.word	db_handler, bp_handler

/*
 * The guest of selftests/irqchip.c (in-kernel irqchip: local APIC, IOAPIC, 8259 PIC).
 *
 * 32-bit protected mode, flat segments, no paging. Loaded at GPA 0 and entered at 0 with
 * EAX = the program number (the table below), ESP = a stack, CS = 0x08 and DS/ES/SS = 0x10 of
 * the flat GDT the test writes at 0x100000. Each program builds its IDT at 0x101000 (every
 * vector first points at a stub that reports it as unexpected), enables what it needs and
 * reports through port I/O:
 *   port = vector   an interrupt handler ran; data = its count so far (32-bit OUT)
 *   0xe0 - 0xe4     the program's own reports (values documented per program)
 *   0xee            an unexpected vector or exception; data = the vector
 *   0xef            the program has finished (repeats: the test does not resume it)
 * The in-kernel devices: the local APIC at 0xfee00000 and the IOAPIC at 0xfec00000 (MMIO), the
 * PICs at ports 0x20/0x21 and 0xa0/0xa1. No RAM lies there. In x2APIC mode (programs 8 and 9)
 * the local APIC's registers are MSRs 0x800 + offset / 16 instead.
 */
	.code32

	.set APIC,		0xfee00000
	.set APIC_TPR,		APIC + 0x080
	.set APIC_PPR,		APIC + 0x0a0
	.set APIC_EOI,		APIC + 0x0b0
	.set APIC_SVR,		APIC + 0x0f0
	.set APIC_IRR,		APIC + 0x200
	.set APIC_ICR,		APIC + 0x300
	.set APIC_ICR2,		APIC + 0x310
	.set APIC_LVTT,		APIC + 0x320
	.set APIC_LVT0,		APIC + 0x350
	.set APIC_TMICT,	APIC + 0x380
	.set APIC_TMCCT,	APIC + 0x390
	.set APIC_TDCR,		APIC + 0x3e0
	.set IOAPIC_SEL,	0xfec00000
	.set IOAPIC_WIN,	0xfec00010
	.set IDT,		0x101000
	.set MSR_APICBASE,	0x1b
	.set X2APIC_ID,		0x802
	.set X2APIC_EOI,	0x80b
	.set X2APIC_SVR,	0x80f
	.set X2APIC_ICR,	0x830
	.set X2APIC_SELF_IPI,	0x83f

	.globl _start
_start:
	jmp	*programs(,%eax,4)

	.align 4
programs:			/* numbered as enum program in irqchip.c */
	.long	p_halt_if0	/* 0 */
	.long	p_timer_oneshot	/* 1 */
	.long	p_timer_periodic /* 2 */
	.long	p_ioapic_edge	/* 3 */
	.long	p_wait		/* 4 */
	.long	p_pic		/* 5 */
	.long	p_ipi_sender	/* 6 */
	.long	p_tpr		/* 7 */
	.long	p_x2apic_wait	/* 8 */
	.long	p_x2apic_sender	/* 9 */
	.long	p_apic_modes	/* 10 */

/* IDT: all 256 vectors to their "unexpected" stubs, then the IDTR; IF stays 0. Masks the PICs. */
setup:
	mov	$IDT, %edi
	mov	$stubs, %edx
	mov	$256, %ecx
1:	mov	%edx, %eax
	call	put_gate
	add	$8, %edi
	add	$16, %edx
	loop	1b
	lidt	idt_desc
	/* The PICs come up with IMR 0: mask every line so a GSI raised for the IOAPIC does
	 * not also reach the CPU as an ExtINT through LVT0. p_pic reprograms them. */
	mov	$0xff, %al
	out	%al, $0x21
	out	%al, $0xa1
	ret

/* A 32-bit interrupt gate (selector 0x08, DPL 0) at EDI for the handler in EAX. */
put_gate:
	push	%eax
	and	$0xffff, %eax
	or	$0x00080000, %eax
	mov	%eax, (%edi)
	pop	%eax
	and	$0xffff0000, %eax
	or	$0x8e00, %eax
	mov	%eax, 4(%edi)
	ret

.macro GATE vec, handler
	lea	IDT + \vec * 8, %edi
	mov	$\handler, %eax
	call	put_gate
.endm

/* Software-enables the local APIC (SVR bit 8; spurious vector 0xff). */
apic_on:
	movl	$0x1ff, APIC_SVR
	ret

/* Enters x2APIC mode (IA32_APIC_BASE.EN and EXTD, from xAPIC mode) and software-enables the
 * APIC through the SVR MSR (spurious vector 0xff). */
x2apic_on:
	mov	$MSR_APICBASE, %ecx
	rdmsr
	or	$0xc00, %eax
	wrmsr
	mov	$X2APIC_SVR, %ecx
	mov	$0x1ff, %eax
	xor	%edx, %edx
	wrmsr
	ret

finish:
	out	%al, $0xef
	jmp	finish

	.align 8
idt_desc:
	.word	256 * 8 - 1
	.long	IDT

/*
 * Handlers: count, report (port = vector, data = count), EOI. The report comes before the EOI,
 * so the test sees the interrupt in service (ISR, IOAPIC remote IRR, PIC ISR) at that exit.
 */
.macro LAPIC_HANDLER vec
h_\vec:
	push	%eax
	incl	cnt_\vec
	mov	cnt_\vec, %eax
	out	%eax, $\vec
	movl	$0, APIC_EOI
	pop	%eax
	iret
	.align 4
cnt_\vec:
	.long	0
.endm

	LAPIC_HANDLER 0x40	/* LAPIC timer, one-shot */
	LAPIC_HANDLER 0x51	/* IOAPIC GSI 5 edge; self-IPI under TPR */
	LAPIC_HANDLER 0x52	/* IOAPIC GSI 5 level */
	LAPIC_HANDLER 0x60	/* IPI from vCPU 0 */

/* The same for x2APIC mode, where the MMIO page is a hole: EOI through its MSR. */
.macro X2APIC_HANDLER vec
h_\vec:
	push	%eax
	push	%ecx
	push	%edx
	incl	cnt_\vec
	mov	cnt_\vec, %eax
	out	%eax, $\vec
	mov	$X2APIC_EOI, %ecx
	xor	%eax, %eax
	xor	%edx, %edx
	wrmsr
	pop	%edx
	pop	%ecx
	pop	%eax
	iret
	.align 4
cnt_\vec:
	.long	0
.endm

	X2APIC_HANDLER 0x61	/* x2APIC IPI from vCPU 0 */
	X2APIC_HANDLER 0x62	/* x2APIC self IPI */

/* #GP from a WRMSR: count it and resume after the (2-byte) instruction. */
h_gp_wrmsr:
	incl	cnt_gp
	addl	$2, 4(%esp)	/* the return EIP, above the error code */
	add	$4, %esp
	iret
	.align 4
cnt_gp:
	.long	0

/* LAPIC timer, periodic: no report per interrupt; keeps the TMCCT it read. */
h_0x41:
	push	%eax
	incl	cnt_0x41
	mov	APIC_TMCCT, %eax
	mov	%eax, tmcct_0x41
	movl	$0, APIC_EOI
	pop	%eax
	iret
	.align 4
cnt_0x41:
	.long	0
tmcct_0x41:
	.long	0

/* PIC IRQ 3 (vector 0x23 after ICW2 = 0x20): report, then a non-specific EOI to the master. */
h_0x23:
	push	%eax
	incl	cnt_0x23
	mov	cnt_0x23, %eax
	out	%eax, $0x23
	mov	$0x20, %al
	out	%al, $0x20
	pop	%eax
	iret
	.align 4
cnt_0x23:
	.long	0

/*
 * 0: HLT with IF=0 and nothing pending: blocks in the kernel. Should it ever complete, 0xe3.
 */
p_halt_if0:
	cli
	hlt
	out	%al, $0xe3
	jmp	finish

/*
 * 1: LAPIC timer one-shot: vector 0x40, divide by 1, TMICT 10^7 (10 ms at KVM's 1 ns bus cycle).
 * Waits with sti; hlt. Then 0xe1 = TMCCT (0 after expiry), 0xe2 = TMICT (kept), and halts with
 * IF=1 for good: a second timer interrupt would report 0x40 again, a wake-up without one 0xe3.
 */
p_timer_oneshot:
	call	setup
	GATE	0x40, h_0x40
	call	apic_on
	movl	$0xb, APIC_TDCR
	movl	$0x40, APIC_LVTT
	movl	$10000000, APIC_TMICT
1:	cli
	cmpl	$0, cnt_0x40
	jne	2f
	sti
	hlt
	jmp	1b
2:	mov	APIC_TMCCT, %eax
	out	%eax, $0xe1
	mov	APIC_TMICT, %eax
	out	%eax, $0xe2
3:	sti
	hlt
	out	%al, $0xe3
	jmp	3b

/*
 * 2: LAPIC timer periodic: vector 0x41, divide by 1, TMICT 10^6 (1 ms); after 5 interrupts
 * (counted with IF=0 around the check) masks and stops it. 0xe1 = the TMCCT read in the last
 * handler, 0xe0 = the count (5).
 */
p_timer_periodic:
	call	setup
	GATE	0x41, h_0x41
	call	apic_on
	movl	$0xb, APIC_TDCR
	movl	$0x20041, APIC_LVTT
	movl	$1000000, APIC_TMICT
1:	cli
	cmpl	$5, cnt_0x41
	jae	2f
	sti
	hlt
	jmp	1b
2:	movl	$0x10041, APIC_LVTT
	movl	$0, APIC_TMICT
	mov	tmcct_0x41, %eax
	out	%eax, $0xe1
	mov	cnt_0x41, %eax
	out	%eax, $0xe0
	jmp	finish

/*
 * 3: IOAPIC through MMIO: 0xe1 = the version register (index 1); RTE 5 = vector 0x51, fixed,
 * physical, edge, active high, unmasked, destination APIC ID 0 (high dword first); 0xe0 = RTE 5's
 * low dword read back. Then waits in sti; hlt for ever (each interrupt reports 0x51).
 */
p_ioapic_edge:
	call	setup
	GATE	0x51, h_0x51
	call	apic_on
	movl	$1, IOAPIC_SEL
	mov	IOAPIC_WIN, %eax
	out	%eax, $0xe1
	movl	$0x1b, IOAPIC_SEL
	movl	$0, IOAPIC_WIN
	movl	$0x1a, IOAPIC_SEL
	movl	$0x51, IOAPIC_WIN
	mov	IOAPIC_WIN, %eax
	out	%eax, $0xe0
1:	sti
	hlt
	jmp	1b

/*
 * 4: handlers for 0x52 and 0x60, APIC on, 0xe0 (ready), then sti; hlt for ever: the test (or
 * another vCPU) routes interrupts here.
 */
p_wait:
	call	setup
	GATE	0x52, h_0x52
	GATE	0x60, h_0x60
	call	apic_on
	out	%al, $0xe0
1:	sti
	hlt
	jmp	1b

/*
 * 5: 8259 PIC: LVT0 = ExtINT, master ICW1 0x11 (edge, cascade, ICW4), ICW2 0x20, ICW3 4,
 * ICW4 1 (8086); slave 0x11, 0x28, 2, 1; OCW1: master 0xf7 (only IRQ 3), slave 0xff.
 * 0xe0 = the master IMR read back (0xf7). Then sti; hlt for ever (IRQ 3 reports 0x23).
 */
p_pic:
	call	setup
	GATE	0x23, h_0x23
	call	apic_on
	movl	$0x700, APIC_LVT0
	mov	$0x11, %al
	out	%al, $0x20
	out	%al, $0xa0
	mov	$0x20, %al
	out	%al, $0x21
	mov	$0x28, %al
	out	%al, $0xa1
	mov	$4, %al
	out	%al, $0x21
	mov	$2, %al
	out	%al, $0xa1
	mov	$1, %al
	out	%al, $0x21
	out	%al, $0xa1
	mov	$0xf7, %al
	out	%al, $0x21
	mov	$0xff, %al
	out	%al, $0xa1
	xor	%eax, %eax
	in	$0x21, %al
	out	%eax, $0xe0
1:	sti
	hlt
	jmp	1b

/*
 * 6: IPI sender: ICR2 = APIC ID 1 << 24, ICR = 0x4060 (fixed, physical, assert, vector 0x60);
 * waits for delivery status (bit 12) to clear; 0xe0 = ICR read back.
 */
p_ipi_sender:
	lidt	idt_desc	/* the IDT vCPU 1 built */
	call	apic_on
	movl	$0x01000000, APIC_ICR2
	movl	$0x4060, APIC_ICR
1:	testl	$0x1000, APIC_ICR
	jnz	1b
	mov	APIC_ICR, %eax
	out	%eax, $0xe0
	jmp	finish

/*
 * 7: TPR: with TPR 0x50 a self-IPI of vector 0x51 (class 5, not above TPR class 5) stays
 * pending through a spin with IF=1: 0xe1 = IRR[0x40..0x5f] (bit 17 set), 0xe2 = count (0). Then
 * sti; hlt must not complete while it is masked; the test lowers TPR with KVM_SET_LAPIC, the
 * interrupt arrives (0x51, count 1), 0xe3 = count (1). Then the guest itself: TPR 0x50, another
 * self-IPI, TPR 0: delivered at that write (0x51, count 2) before 0xe4 = count (2).
 */
p_tpr:
	call	setup
	GATE	0x51, h_0x51
	call	apic_on
	movl	$0x50, APIC_TPR
	sti
	movl	$0x44051, APIC_ICR	/* self, fixed, assert, vector 0x51 */
	mov	$100000, %ecx
1:	loop	1b
	cli
	mov	APIC_IRR + 0x20, %eax
	out	%eax, $0xe1
	mov	cnt_0x51, %eax
	out	%eax, $0xe2
	sti
	hlt
	mov	cnt_0x51, %eax
	out	%eax, $0xe3
	movl	$0x50, APIC_TPR
	movl	$0x44051, APIC_ICR
	nop
	movl	$0, APIC_TPR
	mov	cnt_0x51, %eax
	out	%eax, $0xe4
	jmp	finish

/*
 * 8: x2APIC waiter: handlers for 0x61 and 0x62 (in the IDT program 9 uses too), x2APIC on,
 * 0xe0 = its x2APIC ID (MSR 0x802), then sti; hlt for ever.
 */
p_x2apic_wait:
	call	setup
	GATE	0x61, h_0x61
	GATE	0x62, h_0x62
	call	x2apic_on
	mov	$X2APIC_ID, %ecx
	rdmsr
	out	%eax, $0xe0
1:	sti
	hlt
	jmp	1b

/*
 * 9: x2APIC sender (with the IDT program 8 built): x2APIC on; 0xe1 = its x2APIC ID (MSR
 * 0x802); a self IPI of vector 0x62 through SELF_IPI (MSR 0x83f), waited for with IF=1 (0x62 =
 * count), 0xe2 = the count after it (1); then one 64-bit WRMSR of ICR (MSR 0x830): x2APIC ID 1
 * in EDX (bits 63:32), 0x4061 in EAX (fixed, physical, assert, vector 0x61); 0xe0 = ICR bits
 * 31:0 read back (delivery status clear), 0xe3 = bits 63:32.
 */
p_x2apic_sender:
	lidt	idt_desc
	call	x2apic_on
	mov	$X2APIC_ID, %ecx
	rdmsr
	out	%eax, $0xe1
	mov	$X2APIC_SELF_IPI, %ecx
	mov	$0x62, %eax
	xor	%edx, %edx
	sti
	wrmsr
1:	cmpl	$0, cnt_0x62
	je	1b
	cli
	mov	cnt_0x62, %eax
	out	%eax, $0xe2
	mov	$X2APIC_ICR, %ecx
	mov	$0x4061, %eax
	mov	$1, %edx
	wrmsr
	rdmsr
	out	%eax, $0xe0
	mov	%edx, %eax
	out	%eax, $0xe3
	jmp	finish

/*
 * 10: the APIC mode changes a guest's WRMSR of IA32_APIC_BASE may make (SDM 11.12.5), each #GP
 * counted and skipped: xAPIC -> x2APIC; x2APIC -> xAPIC (#GP); x2APIC -> EXTD without EN (#GP);
 * x2APIC -> disabled; disabled -> x2APIC (#GP); disabled -> xAPIC -> x2APIC. 0xe0 = the #GP
 * count after the first two refusals (2), 0xe1 = after the third (3), 0xe2 = IA32_APIC_BASE at
 * the end, 0xe3 = the #GP count at the end (3).
 */
p_apic_modes:
	call	setup
	GATE	13, h_gp_wrmsr
	mov	$MSR_APICBASE, %ecx
	rdmsr
	or	$0xc00, %eax		/* xAPIC -> x2APIC */
	wrmsr
	and	$~0x400, %eax		/* x2APIC -> xAPIC: #GP */
	wrmsr
	or	$0x400, %eax
	and	$~0x800, %eax		/* x2APIC -> EXTD alone: #GP */
	wrmsr
	mov	cnt_gp, %eax
	out	%eax, $0xe0
	rdmsr
	and	$~0xc00, %eax		/* x2APIC -> disabled */
	wrmsr
	or	$0xc00, %eax		/* disabled -> x2APIC: #GP */
	wrmsr
	mov	cnt_gp, %eax
	out	%eax, $0xe1
	rdmsr
	or	$0x800, %eax		/* disabled -> xAPIC */
	wrmsr
	or	$0x400, %eax		/* xAPIC -> x2APIC */
	wrmsr
	rdmsr
	out	%eax, $0xe2
	mov	cnt_gp, %eax
	out	%eax, $0xe3
	jmp	finish

/* Unexpected vectors: stub n pushes n; 0xee = n. */
	.align 16
stubs:
	.set vec, 0
	.rept 256
	.align 16
	push	$vec
	jmp	unexpected
	.set vec, vec + 1
	.endr
unexpected:
	pop	%eax
	out	%eax, $0xee
	jmp	finish

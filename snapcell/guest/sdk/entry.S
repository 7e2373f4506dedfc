/*
 * snapcell guest SDK: the system call entry point (docs/guest-abi.md, "System calls").
 *
 * MSR_LSTAR points at __sc_syscall_entry. Under PVM `syscall` stays at CPL3 and arrives here
 * on the guest's own stack with:
 *   rax = number, rdi, rsi, rdx, r10, r8, r9 = arguments,
 *   rcx = return RIP, r11 = RFLAGS at the `syscall`.
 * Like Linux, we preserve every register except rax (result), rcx and r11, plus the whole
 * x87/SSE state, and return with RIP <- rcx, RFLAGS <- r11.
 *
 * Stack use (all below the interrupted code's 128-byte red zone, which is never touched):
 *   saved rcx, r11, rbp, rbx, rdi, rsi, rdx, r8, r9, r10, r12-r15 (14 x 8 bytes),
 *   a 16-byte aligned 512-byte fxsave area, and the 7th C argument.
 *
 * C handler: long __sc_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5)
 * (System V ABI: rdi, rsi, rdx, rcx, r8, r9, then a5 on the stack).
 */

    .text
    .globl  __sc_syscall_entry
    .type   __sc_syscall_entry, @function
    .p2align 4
__sc_syscall_entry:
    lea     -128(%rsp), %rsp        /* skip the red zone (lea leaves the flags alone) */
    push    %rcx                    /* return RIP */
    push    %r11                    /* RFLAGS */
    push    %rbp
    push    %rbx
    push    %rdi
    push    %rsi
    push    %rdx
    push    %r8
    push    %r9
    push    %r10
    push    %r12
    push    %r13
    push    %r14
    push    %r15
    mov     %rsp, %rbp              /* rbp: the saved registers (callee-saved in C) */

    sub     $(512 + 16), %rsp       /* fxsave area at 16(%rsp), 7th argument at 0(%rsp) */
    and     $-16, %rsp              /* 16-byte aligned: for fxsave64 and for the call */
    fxsave64 16(%rsp)

    /* Linux syscall registers -> C arguments. Each source is read before it is overwritten. */
    mov     %r9, (%rsp)             /* a5 -> stack */
    mov     %r8, %r9                /* a4 */
    mov     %r10, %r8               /* a3 */
    mov     %rdx, %rcx              /* a2 */
    mov     %rsi, %rdx              /* a1 */
    mov     %rdi, %rsi              /* a0 */
    mov     %rax, %rdi              /* nr */
    cld                             /* the C ABI wants DF = 0; RFLAGS is restored from r11 */
    call    __sc_syscall            /* result in rax */

    fxrstor64 16(%rsp)
    mov     %rbp, %rsp
    pop     %r15
    pop     %r14
    pop     %r13
    pop     %r12
    pop     %r10
    pop     %r9
    pop     %r8
    pop     %rdx
    pop     %rsi
    pop     %rdi
    pop     %rbx
    pop     %rbp
    pop     %r11                    /* RFLAGS */
    pop     %rcx                    /* return RIP */
    push    %r11                    /* still below the red zone */
    popfq                           /* RFLAGS <- r11 */
    lea     128(%rsp), %rsp         /* undo the red-zone skip (lea leaves the flags alone) */
    jmp     *%rcx                   /* RIP <- rcx; rcx and r11 hold RIP and RFLAGS, as on Linux */
    .size   __sc_syscall_entry, . - __sc_syscall_entry

    .section .note.GNU-stack,"",@progbits

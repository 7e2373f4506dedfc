/*
 * adversary: the malicious guest of the isolation suite (tests/adversarial/). Every function
 * but Probe tries to leave state behind in the vCPU, the ABI page, the kernel stacks or guest
 * memory, or to confuse the host. Probe is the victim's measurement: a checksum of everything
 * a previous tenant could have left in reach of this guest (uninitialised stack and heap, the
 * ABI page, vector registers, MXCSR, the x87 control word, FS/GS bases, RFLAGS).
 * Run is a compromised interpreter guest (tests/adversarial/test_code_guest.py): it answers a
 * code sandbox's Run request with whatever bytes the "code" asks for.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msgpuck.h"
#include "snapcell.h"
#include "snapcell_abi.h"

/* ---- the victim's probe ------------------------------------------------------------------- */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const volatile uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

static uint64_t probe_count;

__attribute__((noinline)) static uint64_t probe_stack(uint64_t h)
{
    volatile uint8_t below[64 * 1024];      /* never written: whatever the stack held before */
    return fnv(h, (const void *)below, sizeof below);
}

static sc_value Probe(const sc_value *a)
{
    (void)a;
    uint8_t vec[16 * 16];
    uint32_t mxcsr;
    uint16_t fcw;
    uint64_t rflags, fs, gs;
    __asm__ volatile(
        "movdqu %%xmm0, 0(%0)\n\tmovdqu %%xmm1, 16(%0)\n\tmovdqu %%xmm2, 32(%0)\n\t"
        "movdqu %%xmm3, 48(%0)\n\tmovdqu %%xmm4, 64(%0)\n\tmovdqu %%xmm5, 80(%0)\n\t"
        "movdqu %%xmm6, 96(%0)\n\tmovdqu %%xmm7, 112(%0)\n\tmovdqu %%xmm8, 128(%0)\n\t"
        "movdqu %%xmm9, 144(%0)\n\tmovdqu %%xmm10, 160(%0)\n\tmovdqu %%xmm11, 176(%0)\n\t"
        "movdqu %%xmm12, 192(%0)\n\tmovdqu %%xmm13, 208(%0)\n\tmovdqu %%xmm14, 224(%0)\n\t"
        "movdqu %%xmm15, 240(%0)" : : "r"(vec) : "memory");
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fcw));
    __asm__ volatile("pushfq; popq %0" : "=r"(rflags));
    __asm__ volatile("rdfsbase %0" : "=r"(fs));
    __asm__ volatile("rdgsbase %0" : "=r"(gs));
    uint64_t h = 0xcbf29ce484222325ULL;
    h = fnv(h, vec, sizeof vec);
    h = fnv(h, &mxcsr, sizeof mxcsr);
    h = fnv(h, &fcw, sizeof fcw);
    rflags &= ~(uint64_t)0x8d5;               /* arithmetic flags vary with the code above */
    h = fnv(h, &rflags, sizeof rflags);
    h = fnv(h, &fs, sizeof fs);
    h = fnv(h, &gs, sizeof gs);
    /* the ABI page, except the generation + seed the host writes fresh for every sandbox */
    h = fnv(h, (const void *)(uintptr_t)SC_ABI_PAGE_ADDR, 0x48);
    h = fnv(h, (const void *)(uintptr_t)(SC_ABI_PAGE_ADDR + 0x70), SC_PAGE_SIZE - 0x70);
    h = probe_stack(h);
    size_t n = 1 << 20;
    uint8_t *heap = malloc(n);                /* not cleared: what a previous tenant left? */
    if (heap) {
        h = fnv(h, heap, n);
        free(heap);
    }
    volatile double third = 1.0 / 3.0;        /* depends on the rounding mode in MXCSR */
    h = fnv(h, (const void *)&third, sizeof third);
    probe_count++;
    h = fnv(h, &probe_count, sizeof probe_count);
    return sc_u64(h);
}

/* ---- port I/O on granted ports (the TSS bitmap cannot grant `out` without `in`) ----------- */

static uint8_t io_buf[1 << 20];

static sc_value PortIn(const sc_value *a)
{
    uint16_t port = (uint16_t)a[0].u32;
    uint32_t v = 0;
    switch (a[1].u32) {
    case 1: __asm__ volatile("inb %%dx, %%al" : "+a"(v) : "d"(port)); break;
    case 2: __asm__ volatile("inw %%dx, %%ax" : "+a"(v) : "d"(port)); break;
    default: __asm__ volatile("inl %%dx, %%eax" : "+a"(v) : "d"(port)); break;
    }
    return sc_u32(v);
}

static sc_value PortInString(const sc_value *a)
{
    uint16_t port = (uint16_t)a[0].u32;
    uint64_t count = a[2].u64;
    void *dst = io_buf;
    switch (a[1].u32) {
    case 1: __asm__ volatile("rep insb" : "+D"(dst), "+c"(count) : "d"(port) : "memory"); break;
    case 2: __asm__ volatile("rep insw" : "+D"(dst), "+c"(count) : "d"(port) : "memory"); break;
    default: __asm__ volatile("rep insl" : "+D"(dst), "+c"(count) : "d"(port) : "memory"); break;
    }
    return sc_u64(count);
}

static sc_value PortOutString(const sc_value *a)
{
    uint16_t port = (uint16_t)a[0].u32;
    uint64_t count = a[2].u64;
    const void *src = io_buf;
    switch (a[1].u32) {
    case 1: __asm__ volatile("rep outsb" : "+S"(src), "+c"(count) : "d"(port) : "memory"); break;
    case 2: __asm__ volatile("rep outsw" : "+S"(src), "+c"(count) : "d"(port) : "memory"); break;
    default: __asm__ volatile("rep outsl" : "+S"(src), "+c"(count) : "d"(port) : "memory"); break;
    }
    return sc_u64(count);
}

static sc_value PortOutWide(const sc_value *a)
{
    uint16_t port = (uint16_t)a[0].u32;
    uint32_t v = 0;
    if (a[1].u32 == 2)
        __asm__ volatile("outw %%ax, %%dx" : : "a"(v), "d"(port) : "memory");
    else
        __asm__ volatile("outl %%eax, %%dx" : : "a"(v), "d"(port) : "memory");
    return sc_void();
}

/* ---- leftovers ---------------------------------------------------------------------------- */

static sc_value ScribbleAbi(const sc_value *a)
{
    uint8_t pattern = (uint8_t)a[0].u32;
    /* the header (input/output addresses...) too: the host must never read it back */
    memset((void *)(uintptr_t)SC_ABI_PAGE_ADDR, pattern, SC_PAGE_SIZE);
    return sc_void();
}

/* Scribble over the syscall block the way a syscall would, then make a real syscall. */
static sc_value ScribbleSyscallBlock(const sc_value *a)
{
    volatile uint64_t *blk = (volatile uint64_t *)(uintptr_t)(SC_ABI_PAGE_ADDR + SC_ABI_OFF_SYSCALL_NR);
    for (int i = 0; i < 8; i++)
        blk[i] = a[0].u64 + (uint64_t)i;
    return sc_void();
}

static sc_value DirtyStackAndHeap(const sc_value *a)
{
    volatile uint8_t below[96 * 1024];
    memset((void *)below, (int)a[0].u32, sizeof below);
    uint8_t *p = malloc(1 << 20);
    if (p) {
        memset(p, (int)a[0].u32, 1 << 20);
        free(p);
    }
    return sc_u32(below[100]);
}

/* Leave junk in every vector register, MXCSR (rounding mode, FTZ/DAZ) and the x87 control
 * word, then return normally: the next tenant must not see any of it. */
static sc_value DirtyFpu(const sc_value *a)
{
    uint64_t junk[2] = {a[0].u64, ~a[0].u64};
    uint32_t mxcsr = 0x7fc0;                  /* round toward zero, FTZ, DAZ, all masked */
    uint16_t fcw = 0x0c7f;                    /* x87 round toward zero */
    __asm__ volatile(
        "movdqu (%0), %%xmm0\n\tmovdqa %%xmm0, %%xmm1\n\tmovdqa %%xmm0, %%xmm2\n\t"
        "movdqa %%xmm0, %%xmm3\n\tmovdqa %%xmm0, %%xmm4\n\tmovdqa %%xmm0, %%xmm5\n\t"
        "movdqa %%xmm0, %%xmm6\n\tmovdqa %%xmm0, %%xmm7\n\tmovdqa %%xmm0, %%xmm8\n\t"
        "movdqa %%xmm0, %%xmm9\n\tmovdqa %%xmm0, %%xmm10\n\tmovdqa %%xmm0, %%xmm11\n\t"
        "movdqa %%xmm0, %%xmm12\n\tmovdqa %%xmm0, %%xmm13\n\tmovdqa %%xmm0, %%xmm14\n\t"
        "movdqa %%xmm0, %%xmm15" : : "r"(junk) : "memory", "xmm0", "xmm1", "xmm2", "xmm3",
        "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",
        "xmm14", "xmm15");
    __asm__ volatile("ldmxcsr %0" : : "m"(mxcsr));
    __asm__ volatile("fldcw %0" : : "m"(fcw));
    return sc_void();
}

static sc_value SetFsBase(const sc_value *a)
{
    __asm__ volatile("wrfsbase %0" : : "r"(a[0].u64));
    return sc_void();
}

/* FS is the TLS pointer: return through the runtime without touching TLS afterwards. */
static sc_value SetGsBase(const sc_value *a)
{
    __asm__ volatile("wrgsbase %0" : : "r"(a[0].u64));
    return sc_void();
}

/* Report a void result with RSP = a[0] at the `out`, then put RSP back when resumed. */
static sc_value ReturnWithRsp(const sc_value *a)
{
    static const uint8_t frame[] = {0x03, 0x00, 0x00, 0x00, 0x92, 0x00, 0xc0};   /* [0, nil] */
    memcpy((void *)(uintptr_t)SC_ABI_PAGE->output_addr, frame, sizeof frame);
    __asm__ volatile(
        "movq %%rsp, %%rbx\n\t"
        "movq %0, %%rsp\n\t"
        "outb %%al, %%dx\n\t"
        "movq %%rbx, %%rsp"
        : : "r"(a[0].u64), "a"(0), "d"((uint16_t)SC_OUT_RETURN) : "rbx", "memory");
    return sc_void();
}

/* Return (raw `out` of a valid void result) with RFLAGS | a[0]: TF, AC, DF, NT... */
static sc_value ReturnWithFlags(const sc_value *a)
{
    static const uint8_t frame[] = {0x03, 0x00, 0x00, 0x00, 0x92, 0x00, 0xc0};
    memcpy((void *)(uintptr_t)SC_ABI_PAGE->output_addr, frame, sizeof frame);
    __asm__ volatile(
        "pushfq\n\t"
        "pushfq\n\t"
        "orq %0, (%%rsp)\n\t"
        "popfq\n\t"
        "outb %%al, %%dx\n\t"
        "popfq"
        : : "r"(a[0].u64), "a"(0), "d"((uint16_t)SC_OUT_RETURN) : "memory", "cc");
    return sc_void();
}

/* A Linux syscall (getpid: -ENOSYS from the host) with RFLAGS | a[0] or a bad RSP. */
static sc_value SyscallWithFlags(const sc_value *a)
{
    long r;
    __asm__ volatile(
        "pushfq\n\t"
        "pushfq\n\t"
        "orq %1, (%%rsp)\n\t"
        "popfq\n\t"
        "syscall\n\t"
        "popfq"
        : "=a"(r) : "r"(a[0].u64), "a"(39L) : "rcx", "r11", "memory", "cc");
    return sc_i64(r);
}

static sc_value SyscallWithRsp(const sc_value *a)
{
    long r;
    __asm__ volatile(
        "movq %%rsp, %%rbx\n\t"
        "movq %1, %%rsp\n\t"
        "syscall\n\t"
        "movq %%rbx, %%rsp"
        : "=a"(r) : "r"(a[0].u64), "a"(39L) : "rbx", "rcx", "r11", "memory");
    return sc_i64(r);
}

static sc_value FaultWithRsp(const sc_value *a)
{
    __asm__ volatile("movq %0, %%rsp\n\tud2" : : "r"(a[0].u64) : "memory");
    return sc_void();
}

/* ---- every `int N` ------------------------------------------------------------------------ */

__asm__(
    ".pushsection .text\n"
    ".globl adv_int_table\n"
    ".p2align 4\n"
    "adv_int_table:\n"
    ".set n, 0\n"
    ".rept 256\n"
    "  .p2align 3\n"
    "  int $n\n"
    "  ret\n"
    "  .set n, n + 1\n"
    ".endr\n"
    ".popsection\n");
extern char adv_int_table[];

static sc_value IntN(const sc_value *a)
{
    uint32_t n = a[0].u32 & 0xff;
    void (*stub)(void) = (void (*)(void))(void *)(adv_int_table + 8 * n);
    stub();
    return sc_void();
}

/* ---- privileged and odd instructions at CPL3 ---------------------------------------------- */

static sc_value Instruction(const sc_value *a)
{
    uint64_t v = 0;
    uint8_t desc[16] = {0};
    switch (a[0].u32) {
    case 0: __asm__ volatile("hlt"); break;
    case 1: __asm__ volatile("cli"); break;
    case 2: __asm__ volatile("sti"); break;
    case 3: __asm__ volatile("wrmsr" : : "c"(0xc0000082u), "a"(0), "d"(0)); break;   /* LSTAR */
    case 4: __asm__ volatile("rdmsr" : "=a"(v) : "c"(0xc0000080u) : "rdx"); break;  /* EFER */
    case 5: __asm__ volatile("movq %%cr3, %0" : "=r"(v)); break;
    case 6: __asm__ volatile("movq %0, %%cr3" : : "r"(0x1000ULL)); break;
    case 7: __asm__ volatile("lgdt %0" : : "m"(desc)); break;
    case 8: __asm__ volatile("lidt %0" : : "m"(desc)); break;
    case 9: __asm__ volatile("ltr %w0" : : "r"(0x30)); break;
    case 10: __asm__ volatile("invlpg (%0)" : : "r"(0x400000ULL) : "memory"); break;
    case 11: __asm__ volatile("wbinvd"); break;
    case 12: __asm__ volatile("swapgs"); break;
    case 13: __asm__ volatile("sysretq"); break;
    case 14: /* iretq to CPL0 code: CS 0x08 */
        __asm__ volatile("movq %%rsp, %%rax\n\tpushq $0x10\n\tpushq %%rax\n\tpushfq\n\t"
                         "pushq $0x08\n\tleaq 1f(%%rip), %%rax\n\tpushq %%rax\n\tiretq\n1:"
                         : : : "rax", "memory");
        break;
    case 15: __asm__ volatile("movq %0, %%dr7" : : "r"(0x3ULL)); break;
    case 16: __asm__ volatile("rdpmc" : : "c"(0) : "rax", "rdx"); break;
    case 17: __asm__ volatile("xsetbv" : : "c"(0), "a"(3), "d"(0)); break;
    case 18: __asm__ volatile("clts"); break;
    case 19: __asm__ volatile("inb $0x80, %%al" : : : "rax"); break;           /* not granted */
    case 20: __asm__ volatile("outb %%al, $0x46" : : "a"(0)); break;           /* a trap port */
    case 21: __asm__ volatile(".byte 0xf1"); break;                              /* int1 / icebp */
    case 22: __asm__ volatile("monitor" : : "a"(io_buf), "c"(0), "d"(0)); break;
    case 23: __asm__ volatile("mwait" : : "a"(0), "c"(0)); break;
    case 24: __asm__ volatile("sgdt %0" : "=m"(desc)); v = *(uint64_t *)(desc + 2); break;
    case 25: __asm__ volatile("sidt %0" : "=m"(desc)); v = *(uint64_t *)(desc + 2); break;
    case 26: __asm__ volatile("smsw %0" : "=r"(v)); break;
    case 27: __asm__ volatile("sldt %0" : "=r"(v)); break;
    case 28: __asm__ volatile("str %0" : "=r"(v)); break;
    case 29: __asm__ volatile("movw $0x30, %%ax\n\tmovw %%ax, %%ds" : : : "rax"); break; /* TSS */
    case 30: __asm__ volatile("movw $0x08, %%ax\n\tmovw %%ax, %%ds" : : : "rax"); break; /* kcode */
    case 31: __asm__ volatile("movw $0x10, %%ax\n\tmovw %%ax, %%ss" : : : "rax"); break; /* kdata */
    case 32: __asm__ volatile("vmcall" : "+a"(v) : : "memory"); break;      /* KVM hypercall */
    case 33: __asm__ volatile("vmmcall" : "+a"(v) : : "memory"); break;
    case 34: __asm__ volatile("sysenter"); break;
    case 35: __asm__ volatile("movw $0x23, %%ax\n\tmovw %%ax, %%ds\n\tmovw %%ax, %%es" : : : "rax"); break;
    case 36: __asm__ volatile("movw $0, %%ax\n\tmovw %%ax, %%ds\n\tmovw %%ax, %%es" : : : "rax"); break;
    case 37: __asm__ volatile("int3"); break;
    case 38: __asm__ volatile("ud2"); break;
    case 39: __asm__ volatile("lock; nop"); break;                 /* #UD: lock on a non-RMW */
    case 40: __asm__ volatile("pushq $0\n\tpopfq" : : : "memory", "cc"); break;   /* DF/TF/AC=0 */
    case 41: __asm__ volatile("movq $0x2b, %%rax\n\tmovw %%ax, %%es" : : : "rax"); break; /* user code */
    case 42: __asm__ volatile("cpuid" : "=a"(v) : "a"(0) : "rbx", "rcx", "rdx"); break;
    case 43: __asm__ volatile("rdtscp" : "=a"(v) : : "rcx", "rdx"); break;
    case 44: __asm__ volatile("lsl %1, %0" : "=r"(v) : "r"(0x30ULL) : "cc"); break;
    case 45: __asm__ volatile("lar %1, %0" : "=r"(v) : "r"(0x30ULL) : "cc"); break;
    case 46: __asm__ volatile("verw %0" : : "m"(desc[0]) : "cc"); break;
    case 47: __asm__ volatile("invd"); break;
    case 48: __asm__ volatile("movq %0, %%cr4" : : "r"(0ULL)); break;
    case 49: __asm__ volatile("movq %0, %%cr0" : : "r"(0ULL)); break;
    default: return sc_error(1, "no instruction %u", a[0].u32);
    }
    return sc_u64(v);
}

/* ---- messages ----------------------------------------------------------------------------- */

/* Copy raw bytes into the output buffer and `out` to a port: corrupt results, host-call
 * requests and abort messages. */
static sc_value RawOut(const sc_value *a)
{
    uint64_t cap = SC_ABI_PAGE->output_size;
    uint32_t n = a[0].bytes.len < cap ? a[0].bytes.len : (uint32_t)cap;
    memcpy((void *)(uintptr_t)SC_ABI_PAGE->output_addr, a[0].bytes.ptr, n);
    __asm__ volatile("outb %%al, %%dx" : : "a"(0), "d"((uint16_t)a[1].u32) : "memory");
    return sc_void();
}

/* ---- host-function misbehaviour ----------------------------------------------------------- */

static sc_value CallHost(const sc_value *a)
{
    sc_value r;
    if (sc_call_host(a[0].str.ptr, SC_I32, &r, 1, sc_i32(a[1].i32)) != 0)
        return sc_error(2, "%s", sc_host_error());
    return sc_i32(r.i32);
}

static sc_value Print(const sc_value *a)
{
    int n = printf("%s", a[0].str.ptr);
    fflush(stdout);
    return sc_i32(n);
}

static sc_value Spin(const sc_value *a)
{
    (void)a;
    for (;;)
        __asm__ volatile("" ::: "memory");
    return sc_void();
}

/* ---- a compromised interpreter guest ------------------------------------------------------ */

/* Run(request) -> response, speaking the code protocol (guests/common/codebox.h). The request's
 * code (raw, or a str "hex:<hex digits>") is the response to send: raw bytes, or — when it
 * is the MessagePack array
 * [head(bin), fill(uint), count(uint), tail(bin), [tool_request(bin), ...]] — the tool requests
 * are sent to the CodeTool host function first (their replies ignored), then the response is
 * head, `count` bytes of `fill`, tail (large responses from a small request). */
static sc_value Run(const sc_value *a)
{
    static char *out;
    const char *r = (const char *)a[0].bytes.ptr, *end = r + a[0].bytes.len, *chk = r;
    if (mp_check(&chk, end) || mp_typeof(*r) != MP_ARRAY || mp_decode_array(&r) < 1)
        return sc_error(1, "Run: not a request");
    const char *code;
    uint32_t n;
    if (mp_typeof(*r) == MP_STR)
        code = mp_decode_str(&r, &n);
    else if (mp_typeof(*r) == MP_BIN)
        code = mp_decode_bin(&r, &n);
    else
        return sc_error(1, "Run: code is not str or bin");
    static char *unhexed;
    if (n >= 4 && memcmp(code, "hex:", 4) == 0) {   /* "hex:..." (JSON carries no raw bytes) */
        free(unhexed);
        if (!(unhexed = malloc(n / 2 + 1)))
            return sc_error(1, "Run: out of memory");
        uint32_t k = 0;
        for (uint32_t i = 4; i + 1 < n; i += 2) {
            unsigned v;
            if (sscanf(code + i, "%2x", &v) != 1)
                return sc_error(1, "Run: bad hex");
            unhexed[k++] = (char)v;
        }
        code = unhexed;
        n = k;
    }
    const char *c = code, *cend = code + n;
    chk = c;
    if (n == 0 || mp_typeof(*c) != MP_ARRAY || mp_check(&chk, cend) || chk != cend
            || mp_decode_array(&c) != 5)
        return sc_bytes(code, n);
    uint32_t hl, tl;
    if (mp_typeof(*c) != MP_BIN)
        return sc_bytes(code, n);
    const char *head = mp_decode_bin(&c, &hl);
    if (mp_typeof(*c) != MP_UINT)
        return sc_bytes(code, n);
    int fill = (int)mp_decode_uint(&c);
    if (mp_typeof(*c) != MP_UINT)
        return sc_bytes(code, n);
    uint64_t count = mp_decode_uint(&c);
    if (mp_typeof(*c) != MP_BIN)
        return sc_bytes(code, n);
    const char *tail = mp_decode_bin(&c, &tl);
    if (mp_typeof(*c) != MP_ARRAY)
        return sc_bytes(code, n);
    for (uint32_t i = 0, calls = mp_decode_array(&c); i < calls; i++) {
        if (mp_typeof(*c) != MP_BIN)
            return sc_bytes(code, n);
        uint32_t ql;
        const char *q = mp_decode_bin(&c, &ql);
        sc_value reply;
        (void)sc_call_host("CodeTool", SC_BYTES, &reply, 1, sc_bytes(q, ql));
    }
    uint64_t cap = SC_ABI_PAGE->output_size;
    if (count > cap)
        count = cap;
    free(out);
    out = malloc(hl + count + tl + 1);
    if (!out)
        return sc_error(1, "Run: out of memory");
    memcpy(out, head, hl);
    memset(out + hl, fill, count);
    memcpy(out + hl + count, tail, tl);
    return sc_bytes(out, (uint32_t)(hl + count + tl));
}

void snapcell_main(void)
{
    sc_register("Run", Run, SC_BYTES, 1, SC_BYTES);
    sc_register("Probe", Probe, SC_U64, 0);
    sc_register("PortIn", PortIn, SC_U32, 2, SC_U32, SC_U32);
    sc_register("PortInString", PortInString, SC_U64, 3, SC_U32, SC_U32, SC_U64);
    sc_register("PortOutString", PortOutString, SC_U64, 3, SC_U32, SC_U32, SC_U64);
    sc_register("PortOutWide", PortOutWide, SC_VOID, 2, SC_U32, SC_U32);
    sc_register("ScribbleAbi", ScribbleAbi, SC_VOID, 1, SC_U32);
    sc_register("ScribbleSyscallBlock", ScribbleSyscallBlock, SC_VOID, 1, SC_U64);
    sc_register("DirtyStackAndHeap", DirtyStackAndHeap, SC_U32, 1, SC_U32);
    sc_register("DirtyFpu", DirtyFpu, SC_VOID, 1, SC_U64);
    sc_register("SetFsBase", SetFsBase, SC_VOID, 1, SC_U64);
    sc_register("SetGsBase", SetGsBase, SC_VOID, 1, SC_U64);
    sc_register("ReturnWithRsp", ReturnWithRsp, SC_VOID, 1, SC_U64);
    sc_register("ReturnWithFlags", ReturnWithFlags, SC_VOID, 1, SC_U64);
    sc_register("SyscallWithFlags", SyscallWithFlags, SC_I64, 1, SC_U64);
    sc_register("SyscallWithRsp", SyscallWithRsp, SC_I64, 1, SC_U64);
    sc_register("FaultWithRsp", FaultWithRsp, SC_VOID, 1, SC_U64);
    sc_register("IntN", IntN, SC_VOID, 1, SC_U32);
    sc_register("Instruction", Instruction, SC_U64, 1, SC_U32);
    sc_register("RawOut", RawOut, SC_VOID, 2, SC_BYTES, SC_U32);
    sc_register("CallHost", CallHost, SC_I32, 2, SC_STR, SC_I32);
    sc_register("Print", Print, SC_I32, 1, SC_STR);
    sc_register("Spin", Spin, SC_VOID, 0);
}

/*
 * simpleguest: the test guest of the snapcell test suite. Function names and signatures are
 * relied upon by the tests; see snapcell_main() at the bottom for the full list.
 *
 * Build:
 *   musl-gcc -static -no-pie -O2 -g -Wall -Wextra -iquote /usr/include -I snapcell/guest/sdk \
 *     -o build/guests/simpleguest.elf guests/simpleguest.c snapcell/guest/sdk/{memory,syscalls,\
 *     messages,dispatch,fs}.c snapcell/guest/sdk/entry.S -lm      (or: snapcell guest build)
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "snapcell.h"
#include "snapcell_abi.h"

/* ---- echoes ------------------------------------------------------------------------------- */

/* args are runtime-owned copies valid until the result is encoded: returning them is fine */
static sc_value Echo(const sc_value *a) { return a[0]; }
static sc_value EchoI32(const sc_value *a) { return sc_i32(a[0].i32); }
static sc_value EchoU32(const sc_value *a) { return sc_u32(a[0].u32); }
static sc_value EchoI64(const sc_value *a) { return sc_i64(a[0].i64); }
static sc_value EchoU64(const sc_value *a) { return sc_u64(a[0].u64); }
static sc_value EchoF32(const sc_value *a) { return sc_f32(a[0].f32); }
static sc_value EchoF64(const sc_value *a) { return sc_f64(a[0].f64); }
static sc_value EchoBool(const sc_value *a) { return sc_bool(a[0].b); }
static sc_value EchoBytes(const sc_value *a) { return sc_bytes(a[0].bytes.ptr, a[0].bytes.len); }

static sc_value NoOp(const sc_value *a) { (void)a; return sc_void(); }

/* ---- state -------------------------------------------------------------------------------- */

static int32_t counter;

static sc_value AddToStatic(const sc_value *a)
{
    counter += a[0].i32;
    return sc_i32(counter);
}

/* For the debugger walkthrough (docs/debugging.md): a helper with arguments and a local. */
__attribute__((noinline)) static int32_t scale(int32_t v, int32_t factor)
{
    int32_t product = v * factor;
    return product + 1;
}

static sc_value Compute(const sc_value *a)
{
    int32_t input = a[0].i32;
    int32_t result = scale(input, 3);
    return sc_i32(result);
}

static sc_value GetStatic(const sc_value *a) { (void)a; return sc_i32(counter); }

static sc_value AddToStaticAndFail(const sc_value *a)
{
    (void)a;
    counter += 10;
    return sc_error(1, "Crash on purpose");
}

static sc_value PrintOutput(const sc_value *a)
{
    printf("%s", a[0].str.ptr);
    return sc_i32((int32_t)strlen(a[0].str.ptr));
}

/* ---- host calls --------------------------------------------------------------------------- */

static sc_value Add(const sc_value *a)
{
    sc_value r;
    if (sc_call_host("HostAdd", SC_I32, &r, 2, sc_i32(a[0].i32), sc_i32(a[1].i32)) != 0)
        return sc_error(2, "%s", sc_host_error());
    return r;
}

static sc_value round_trip(const char *host_fn, sc_type t, sc_value arg)
{
    sc_value r;
    if (sc_call_host(host_fn, t, &r, 1, arg) != 0)
        return sc_error(2, "%s", sc_host_error());
    return r; /* str/bytes: runtime-owned copy, valid until the result is encoded */
}

static sc_value RoundTripHostStr(const sc_value *a) { return round_trip("HostEchoStr", SC_STR, a[0]); }
static sc_value RoundTripHostI32(const sc_value *a) { return round_trip("HostEchoI32", SC_I32, a[0]); }
static sc_value RoundTripHostU32(const sc_value *a) { return round_trip("HostEchoU32", SC_U32, a[0]); }
static sc_value RoundTripHostI64(const sc_value *a) { return round_trip("HostEchoI64", SC_I64, a[0]); }
static sc_value RoundTripHostU64(const sc_value *a) { return round_trip("HostEchoU64", SC_U64, a[0]); }
static sc_value RoundTripHostF32(const sc_value *a) { return round_trip("HostEchoF32", SC_F32, a[0]); }
static sc_value RoundTripHostF64(const sc_value *a) { return round_trip("HostEchoF64", SC_F64, a[0]); }
static sc_value RoundTripHostBool(const sc_value *a) { return round_trip("HostEchoBool", SC_BOOL, a[0]); }
static sc_value RoundTripHostBytes(const sc_value *a) { return round_trip("HostEchoBytes", SC_BYTES, a[0]); }

static sc_value CallHostByName(const sc_value *a)
{
    if (sc_call_host(a[0].str.ptr, SC_VOID, NULL, 0) != 0)
        return sc_error(2, "%s", sc_host_error());
    return sc_void();
}

static sc_value CallHostSpin(const sc_value *a)
{
    (void)a;
    if (sc_call_host("Spin", SC_VOID, NULL, 0) != 0)
        return sc_error(2, "%s", sc_host_error());
    return sc_void();
}

/* ---- faults, aborts, timeouts ------------------------------------------------------------- */

static sc_value Spin(const sc_value *a)
{
    (void)a;
    for (;;)
        __asm__ volatile("" ::: "memory");
    return sc_void(); /* not reached */
}

static sc_value GuestAbortWithCode(const sc_value *a)
{
    sc_abort(a[0].i32, "%s", ""); /* empty message (sc_abort(code, "") would trip -Wformat-zero-length) */
}

static sc_value GuestAbortWithMessage(const sc_value *a)
{
    sc_abort(a[0].i32, "%s", a[1].str.ptr);
}

static sc_value TriggerException(const sc_value *a)
{
    (void)a;
    __asm__ volatile("ud2");
    return sc_void();
}

static sc_value DivideByZero(const sc_value *a)
{
    (void)a;
    volatile int32_t num = 1, den = 0;
    int32_t n = num, d = den;
    int32_t q;
    /* an explicit idiv: the compiler may not fold or trap-optimise a division by zero */
    __asm__ volatile("cltd\n\tidivl %[d]" : "=a"(q) : "a"(n), [d] "rm"(d) : "rdx", "cc");
    return sc_i32(q);
}

static sc_value ReadAddress(const sc_value *a)
{
    return sc_u64(*(volatile uint64_t *)(uintptr_t)a[0].u64);
}

static sc_value WriteAddress(const sc_value *a)
{
    *(volatile uint64_t *)(uintptr_t)a[0].u64 = a[1].u64;
    return sc_void();
}

static sc_value ExecuteOnHeap(const sc_value *a)
{
    (void)a;
    volatile uint8_t *code = malloc(64);
    if (!code)
        return sc_error(3, "malloc failed");
    code[0] = 0xC3; /* ret */
    void (*fn)(void) = (void (*)(void))(uintptr_t)code;
    fn(); /* heap pages are NX: page fault (instruction fetch) */
    free((void *)code);
    return sc_void();
}

#define FRAME_BYTES 16384

/* One 16 KiB frame per level. A 16 KiB frame could jump over the single 4 KiB guard page below
 * the stack, so the frame is touched (written) from its top down in steps of 2 KiB: a stack
 * overflow faults, as a write, in the guard page. (No -fstack-clash-protection: its probes are
 * read-modify-writes.) The volatile accesses after the recursive call keep the recursion from
 * being turned into a loop. */
static __attribute__((noinline, noclone)) int32_t recurse(int32_t depth)
{
    volatile uint8_t frame[FRAME_BYTES];
    for (int i = FRAME_BYTES - 1; i >= 0; i -= 2048)
        frame[i] = (uint8_t)depth;
    frame[0] = (uint8_t)depth;
    if (depth <= 1)
        return 1 + (frame[0] & 0) + (frame[FRAME_BYTES - 1] & 0);
    int32_t reached = recurse(depth - 1);
    return reached + 1 + (frame[0] & 0) + (frame[FRAME_BYTES - 1] & 0);
}

static sc_value StackOverflow(const sc_value *a)
{
    if (a[0].i32 <= 0)
        return sc_i32(0);
    return sc_i32(recurse(a[0].i32));
}

/* Fault catalogue helpers: a privileged instruction at CPL3, and output that breaks the ABI. */
static sc_value Privileged(const sc_value *a)
{
    (void)a;
    __asm__ volatile("hlt");
    return sc_void();
}

static void raw_return(const void *frame, uint32_t len)
{
    uint8_t *out = (uint8_t *)(uintptr_t)SC_ABI_PAGE->output_addr;
    memcpy(out, frame, len);
    __asm__ volatile("outb %%al, %%dx" : : "a"(0), "d"((uint16_t)SC_OUT_RETURN) : "memory");
}

static sc_value CorruptOutputSize(const sc_value *a)
{
    (void)a;
    static const uint8_t frame[] = {0xff, 0xff, 0xff, 0x7f, 0x92, 0x00, 0x01};
    raw_return(frame, sizeof frame);
    return sc_void();
}

static sc_value CorruptOutputMsgpack(const sc_value *a)
{
    (void)a;
    static const uint8_t frame[] = {0x03, 0x00, 0x00, 0x00, 0x92, 0x00, 0xc1};  /* 0xc1: never used */
    raw_return(frame, sizeof frame);
    return sc_void();
}

static sc_value OutbWithPort(const sc_value *a)
{
    uint16_t port = (uint16_t)a[0].u32;
    uint8_t value = (uint8_t)a[1].u32;
    __asm__ volatile("outb %%al, %%dx" : : "a"(value), "d"(port) : "memory");
    return sc_void();
}

/* ---- memory ------------------------------------------------------------------------------- */

static uint8_t *pattern;
static uint32_t pattern_len;

static sc_value AllocAndWritePattern(const sc_value *a)
{
    uint64_t size = a[0].u64;
    free(pattern);
    pattern = NULL;
    pattern_len = 0;
    if (size > UINT32_MAX)
        return sc_error(3, "size %llu too large", (unsigned long long)size);
    pattern = malloc(size ? (size_t)size : 1);
    if (!pattern)
        return sc_error(3, "malloc failed");
    for (uint64_t i = 0; i < size; i++)
        pattern[i] = (uint8_t)((i * 7 + 3) & 0xFF);
    pattern_len = (uint32_t)size;
    return sc_void();
}

static sc_value ReadPattern(const sc_value *a)
{
    (void)a;
    return sc_bytes(pattern, pattern_len); /* static pointer, not freed by the runtime */
}

static sc_value MallocAndFree(const sc_value *a)
{
    int32_t size = a[0].i32;
    if (size < 0)
        return sc_error(3, "negative size %d", size);
    uint8_t *p = malloc((size_t)size);
    if (!p)
        return sc_error(3, "malloc failed");
    memset(p, 0x5A, (size_t)size);
    for (int32_t i = 0; i < size; i++)
        if (p[i] != 0x5A) {
            free(p);
            return sc_error(3, "memory mismatch at %d", i);
        }
    free(p);
    return sc_i32(size);
}

static sc_value NextRandom(const sc_value *a)
{
    (void)a;
    uint64_t v = 0;
    ssize_t n = getrandom(&v, sizeof v, 0);
    if (n != (ssize_t)sizeof v)
        return sc_error(4, "getrandom returned %zd", n);
    return sc_u64(v);
}

static sc_value LargeParameters(const sc_value *a)
{
    return sc_i64((int64_t)a[0].bytes.len + (int64_t)a[1].str.len);
}

#define BIG_STATIC (1 << 20)
static uint8_t big_static[BIG_STATIC];

static sc_value SetStatic(const sc_value *a)
{
    (void)a;
    for (int i = 0; i < BIG_STATIC; i++)
        big_static[i] = (uint8_t)(i & 0xFF);
    /* the array escapes: the stores (and the 1 MiB of .bss) cannot be optimised away */
    __asm__ volatile("" : : "r"(big_static) : "memory");
    return sc_i32(BIG_STATIC);
}

/* A static buffer grown on demand (kept between calls, so nothing leaks). */
static char *grow(char **buf, size_t *cap, size_t need)
{
    if (need > *cap) {
        char *p = realloc(*buf, need);
        if (!p)
            return NULL;
        *buf = p;
        *cap = need;
    }
    return *buf;
}

static sc_value FormatValues(const sc_value *a)
{
    static char *buf;
    static size_t cap;
    int32_t i = a[0].i32;
    double d = a[1].f64;
    const char *s = a[2].str.ptr;
    int n = snprintf(NULL, 0, "%d|%.3f|%s|%x|%e", i, d, s, (unsigned)i, d);
    if (n < 0)
        return sc_error(5, "snprintf failed");
    if (!grow(&buf, &cap, (size_t)n + 1))
        return sc_error(3, "malloc failed");
    snprintf(buf, cap, "%d|%.3f|%s|%x|%e", i, d, s, (unsigned)i, d);
    return sc_str_n(buf, (uint32_t)n);
}

/* Upper-cased (ASCII), then reversed by UTF-8 character so the result stays valid UTF-8. */
static sc_value StringOps(const sc_value *a)
{
    static char *up, *out;
    static size_t up_cap, out_cap;
    const char *s = a[0].str.ptr;
    size_t len = strlen(s);
    if (!grow(&up, &up_cap, len + 1) || !grow(&out, &out_cap, len + 1))
        return sc_error(3, "malloc failed");
    strcpy(up, s);
    for (size_t i = 0; i < len; i++)
        up[i] = (char)toupper((unsigned char)up[i]);
    size_t w = len;
    for (size_t i = 0; i < len;) {
        size_t k = 1;
        while (i + k < len && ((unsigned char)up[i + k] & 0xC0) == 0x80)
            k++;
        w -= k;
        memcpy(out + w, up + i, k);
        i += k;
    }
    out[len] = '\0';
    return sc_str(out);
}

static const uint32_t odd_sizes[] = {3, 17, 255, 1000, 4097, 65537, 100003, 333333};
#define N_POW2 21 /* 1, 2, 4, ..., 1 MiB */
#define N_SIZES (N_POW2 + (int)(sizeof odd_sizes / sizeof odd_sizes[0]))

static size_t block_size(int32_t i)
{
    int k = i % N_SIZES;
    return k < N_POW2 ? (size_t)1 << k : odd_sizes[k - N_POW2];
}

/* Verify and free blocks [first, end) of the window. */
static sc_value check_and_free(uint8_t **win, int32_t first, int32_t end, sc_value res)
{
    for (int32_t i = first; i < end; i++) {
        uint8_t *p = win[i - first];
        size_t sz = block_size(i);
        uint8_t want = (uint8_t)(i * 31 + 7);
        for (size_t j = 0; j < sz && !res.is_error; j++)
            if (p[j] != want)
                res = sc_error(3, "block %d corrupted at byte %zu", i, j);
        free(p);
    }
    return res;
}

/* Allocates n blocks (sizes cycling through 1, 2, 4, ..., 1 MiB and some odd sizes), filling
 * each; every full cycle of sizes (about 2.6 MB live at most) is verified and freed before the
 * next, so the test fits small heaps. Returns the total bytes allocated. */
static sc_value MallocMany(const sc_value *a)
{
    int32_t n = a[0].i32;
    if (n < 0)
        return sc_error(3, "negative count %d", n);
    uint8_t *win[N_SIZES];
    int64_t total = 0;
    int32_t first = 0;
    sc_value res = sc_void();
    for (int32_t i = 0; i < n; i++) {
        size_t sz = block_size(i);
        uint8_t *p = malloc(sz);
        if (!p) {
            res = sc_error(3, "malloc(%zu) failed at block %d", sz, i);
            return check_and_free(win, first, i, res);
        }
        memset(p, (uint8_t)(i * 31 + 7), sz);
        total += (int64_t)sz;
        win[i - first] = p;
        if (i + 1 - first == N_SIZES || i + 1 == n) {
            res = check_and_free(win, first, i + 1, res);
            if (res.is_error)
                return res;
            first = i + 1;
        }
    }
    return sc_i64(total);
}

static sc_value AllocUntilFail(const sc_value *a)
{
    (void)a;
    const size_t block = 1 << 20;
    void *head = NULL; /* blocks are chained through their first word: no other allocation */
    int64_t count = 0;
    for (;;) {
        uint8_t *p = malloc(block);
        if (!p)
            break;
        for (size_t off = 0; off < block; off += 4096)
            p[off] = 1;
        *(void **)p = head;
        head = p;
        count++;
    }
    while (head) {
        void *next = *(void **)head;
        free(head);
        head = next;
    }
    return sc_i64(count * (int64_t)block);
}

/* ---- registration ------------------------------------------------------------------------- */

void snapcell_main(void)
{
    sc_register("Echo", Echo, SC_STR, 1, SC_STR);
    sc_register("EchoI32", EchoI32, SC_I32, 1, SC_I32);
    sc_register("EchoU32", EchoU32, SC_U32, 1, SC_U32);
    sc_register("EchoI64", EchoI64, SC_I64, 1, SC_I64);
    sc_register("EchoU64", EchoU64, SC_U64, 1, SC_U64);
    sc_register("EchoF32", EchoF32, SC_F32, 1, SC_F32);
    sc_register("EchoF64", EchoF64, SC_F64, 1, SC_F64);
    sc_register("EchoBool", EchoBool, SC_BOOL, 1, SC_BOOL);
    sc_register("EchoBytes", EchoBytes, SC_BYTES, 1, SC_BYTES);
    sc_register("NoOp", NoOp, SC_VOID, 0);
    sc_register("AddToStatic", AddToStatic, SC_I32, 1, SC_I32);
    sc_register("GetStatic", GetStatic, SC_I32, 0);
    sc_register("Compute", Compute, SC_I32, 1, SC_I32);
    sc_register("AddToStaticAndFail", AddToStaticAndFail, SC_I32, 0);
    sc_register("PrintOutput", PrintOutput, SC_I32, 1, SC_STR);
    sc_register("Add", Add, SC_I32, 2, SC_I32, SC_I32);
    sc_register("RoundTripHostStr", RoundTripHostStr, SC_STR, 1, SC_STR);
    sc_register("RoundTripHostI32", RoundTripHostI32, SC_I32, 1, SC_I32);
    sc_register("RoundTripHostU32", RoundTripHostU32, SC_U32, 1, SC_U32);
    sc_register("RoundTripHostI64", RoundTripHostI64, SC_I64, 1, SC_I64);
    sc_register("RoundTripHostU64", RoundTripHostU64, SC_U64, 1, SC_U64);
    sc_register("RoundTripHostF32", RoundTripHostF32, SC_F32, 1, SC_F32);
    sc_register("RoundTripHostF64", RoundTripHostF64, SC_F64, 1, SC_F64);
    sc_register("RoundTripHostBool", RoundTripHostBool, SC_BOOL, 1, SC_BOOL);
    sc_register("RoundTripHostBytes", RoundTripHostBytes, SC_BYTES, 1, SC_BYTES);
    sc_register("CallHostByName", CallHostByName, SC_VOID, 1, SC_STR);
    sc_register("Spin", Spin, SC_VOID, 0);
    sc_register("CallHostSpin", CallHostSpin, SC_VOID, 0);
    sc_register("GuestAbortWithCode", GuestAbortWithCode, SC_VOID, 1, SC_I32);
    sc_register("GuestAbortWithMessage", GuestAbortWithMessage, SC_VOID, 2, SC_I32, SC_STR);
    sc_register("TriggerException", TriggerException, SC_VOID, 0);
    sc_register("DivideByZero", DivideByZero, SC_I32, 0);
    sc_register("ReadAddress", ReadAddress, SC_U64, 1, SC_U64);
    sc_register("WriteAddress", WriteAddress, SC_VOID, 2, SC_U64, SC_U64);
    sc_register("ExecuteOnHeap", ExecuteOnHeap, SC_VOID, 0);
    sc_register("StackOverflow", StackOverflow, SC_I32, 1, SC_I32);
    sc_register("OutbWithPort", OutbWithPort, SC_VOID, 2, SC_U32, SC_U32);
    sc_register("Privileged", Privileged, SC_VOID, 0);
    sc_register("CorruptOutputSize", CorruptOutputSize, SC_VOID, 0);
    sc_register("CorruptOutputMsgpack", CorruptOutputMsgpack, SC_VOID, 0);
    sc_register("AllocAndWritePattern", AllocAndWritePattern, SC_VOID, 1, SC_U64);
    sc_register("ReadPattern", ReadPattern, SC_BYTES, 0);
    sc_register("MallocAndFree", MallocAndFree, SC_I32, 1, SC_I32);
    sc_register("NextRandom", NextRandom, SC_U64, 0);
    sc_register("LargeParameters", LargeParameters, SC_I64, 2, SC_BYTES, SC_STR);
    sc_register("SetStatic", SetStatic, SC_I32, 0);
    sc_register("FormatValues", FormatValues, SC_STR, 3, SC_I32, SC_F64, SC_STR);
    sc_register("StringOps", StringOps, SC_STR, 1, SC_STR);
    sc_register("MallocMany", MallocMany, SC_I64, 1, SC_I32);
    sc_register("AllocUntilFail", AllocUntilFail, SC_I64, 0);
}

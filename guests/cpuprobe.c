/*
 * cpuprobe: what a guest sees of the CPU and what it may execute (docs/security.md, "CPU
 * baselines"). The tests make sandboxes of it under different CPU baselines and check that
 * XGETBV shows the baseline's XSAVE components and that instructions needing a component the
 * baseline leaves out fault with #UD.
 */
#include <stdint.h>
#include <string.h>

#include "snapcell.h"

/* CPUID(leaf, subleaf) as 16 bytes: EAX, EBX, ECX, EDX (little-endian). */
static sc_value Cpuid(const sc_value *a)
{
    static uint32_t r[4];
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
                     : "a"(a[0].u32), "c"(a[1].u32));
    return sc_bytes((const uint8_t *)r, sizeof r);
}

/* XCR0 as the CPU applies it to this guest. */
static sc_value Xgetbv(const sc_value *a)
{
    (void)a;
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return sc_u64(((uint64_t)hi << 32) | lo);
}

/* One instruction of each XSAVE-managed family (encoded by hand: the guest is built for the
 * baseline, so the compiler is not asked to emit them). Each returns 1 when it executed. */
static sc_value TryAvx(const sc_value *a)      /* vxorps %ymm0, %ymm0, %ymm0 (AVX, XCR0 bit 2) */
{
    (void)a;
    __asm__ volatile(".byte 0xc5, 0xfc, 0x57, 0xc0" ::: "xmm0");
    return sc_i32(1);
}

static sc_value TryAvx2(const sc_value *a)     /* vpaddd %ymm0, %ymm0, %ymm0 (AVX2) */
{
    (void)a;
    __asm__ volatile(".byte 0xc5, 0xfd, 0xfe, 0xc0" ::: "xmm0");
    return sc_i32(1);
}

static sc_value TryAvx512(const sc_value *a)   /* vpaddd %zmm0, %zmm0, %zmm0 (AVX-512F, bits 5-7) */
{
    (void)a;
    __asm__ volatile(".byte 0x62, 0xf1, 0x7d, 0x48, 0xfe, 0xc0" ::: "xmm0");
    return sc_i32(1);
}

static sc_value TryPopcnt(const sc_value *a)   /* popcnt %eax, %eax (x86-64-v2, no XSAVE state) */
{
    uint32_t v = a[0].u32;
    __asm__ volatile(".byte 0xf3, 0x0f, 0xb8, 0xc0" : "+a"(v));
    return sc_u32(v);
}

/* Leaves state behind in the YMM upper halves, so that a snapshot's XSAVE image holds AVX state
 * when the baseline allows it. */
static sc_value DirtyYmm(const sc_value *a)    /* vpcmpeqd %ymm1, %ymm1, %ymm1 */
{
    (void)a;
    __asm__ volatile(".byte 0xc5, 0xf5, 0x76, 0xc9" ::: "xmm1");
    return sc_i32(1);
}

void snapcell_main(void)
{
    sc_register("Cpuid", Cpuid, SC_BYTES, 2, SC_U32, SC_U32);
    sc_register("Xgetbv", Xgetbv, SC_U64, 0);
    sc_register("TryAvx", TryAvx, SC_I32, 0);
    sc_register("TryAvx2", TryAvx2, SC_I32, 0);
    sc_register("TryAvx512", TryAvx512, SC_I32, 0);
    sc_register("TryPopcnt", TryPopcnt, SC_U32, 1, SC_U32);
    sc_register("DirtyYmm", DirtyYmm, SC_I32, 0);
}

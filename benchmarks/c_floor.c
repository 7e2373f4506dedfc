/* The C floor for a guest call: the cheapest host -> guest -> `out` -> host round trip this
 * machine's KVM allows, with the same CPL3 set-up snapcell uses (GDT, TSS with an I/O bitmap,
 * 4-level page tables with U pages). The guest is `1: out %al, $0x10; jmp 1b`.
 * Usage: c_floor [iterations]   Prints one JSON object with nanosecond statistics.
 *        c_floor --serve        Reads a count per line on stdin, answers each with one line of
 *                               that many round-trip times (ns, space-separated): the benchmark
 *                               driver interleaves these batches with its Python rows, so the
 *                               floor and the calls are measured in the same moments. */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM (2u << 20)
#define GDT 0x1000
#define TSS 0x3000
#define PML4 0x10000
#define CODE 0x20000
#define STACK_TOP 0x40000
#define PORT 0x10

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static void die(const char *what) { perror(what); exit(1); }

int main(int argc, char **argv) {
    int serve = argc > 1 && strcmp(argv[1], "--serve") == 0;
    int n = argc > 1 && !serve ? atoi(argv[1]) : 20000;
    if (n < 100) n = 100;
    uint8_t *mem = mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) die("mmap");
    uint64_t *q = (uint64_t *)mem;
    /* GDT: null, kernel code64, kernel data, user code32, user data, user code64, TSS64 */
    uint64_t gdt[] = {0, 0x00AF9B000000FFFFull, 0x00CF93000000FFFFull, 0x00CFFB000000FFFFull,
                      0x00CFF3000000FFFFull, 0x00AFFB000000FFFFull,
                      (0x68 + 32) | ((uint64_t)TSS << 16) | (0x89ull << 40), 0};
    memcpy(mem + GDT, gdt, sizeof gdt);
    /* TSS: I/O bitmap at 0x68 granting only PORT; 0xFF terminator */
    *(uint16_t *)(mem + TSS + 0x66) = 0x68;
    memset(mem + TSS + 0x68, 0xFF, 33);
    mem[TSS + 0x68 + PORT / 8] &= (uint8_t)~(1u << (PORT % 8));
    /* page tables: 512 user pages of 4 KiB identity-mapped (P|RW|US) */
    q[PML4 / 8] = (PML4 + 0x1000) | 7;
    q[(PML4 + 0x1000) / 8] = (PML4 + 0x2000) | 7;
    q[(PML4 + 0x2000) / 8] = (PML4 + 0x3000) | 7;
    for (int i = 0; i < 512; i++) q[(PML4 + 0x3000) / 8 + i] = ((uint64_t)i << 12) | 7;
    static const uint8_t code[] = {0xE6, PORT, 0xEB, 0xFC};   /* out %al,$PORT; jmp .-2 */
    memcpy(mem + CODE, code, sizeof code);

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    struct kvm_userspace_memory_region r = {0, 0, 0, MEM, (uint64_t)(uintptr_t)mem};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r)) die("KVM_SET_USER_MEMORY_REGION");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap kvm_run");
    struct kvm_sregs s;
    if (ioctl(vcpu, KVM_GET_SREGS, &s)) die("KVM_GET_SREGS");
    struct kvm_segment cs = {.base = 0, .limit = 0xFFFFFFFF, .selector = 0x2B, .type = 11,
                             .present = 1, .dpl = 3, .db = 0, .s = 1, .l = 1, .g = 1};
    struct kvm_segment ds = {.base = 0, .limit = 0xFFFFFFFF, .selector = 0x23, .type = 3,
                             .present = 1, .dpl = 3, .db = 1, .s = 1, .l = 0, .g = 1};
    s.cs = cs;
    s.ds = s.es = s.fs = s.gs = s.ss = ds;
    s.tr = (struct kvm_segment){.base = TSS, .limit = 0x68 + 32, .selector = 0x30, .type = 11,
                                .present = 1};
    s.gdt.base = GDT;
    s.gdt.limit = sizeof gdt - 1;
    s.cr3 = PML4;
    s.cr4 = (1 << 5) | (1 << 9) | (1 << 10);
    s.cr0 = 0x80050033;
    s.efer = (1 << 8) | (1 << 10) | (1 << 11);
    if (ioctl(vcpu, KVM_SET_SREGS, &s)) die("KVM_SET_SREGS");
    struct kvm_regs g;
    memset(&g, 0, sizeof g);
    g.rip = CODE;
    g.rsp = STACK_TOP;
    g.rflags = 2;
    if (ioctl(vcpu, KVM_SET_REGS, &g)) die("KVM_SET_REGS");

    long long *t = malloc(sizeof *t * (size_t)n);
    if (t == NULL) die("malloc");
    for (int i = 0; i < n / 10 + 100; i++)
        if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
    if (serve) {
        int k;
        while (scanf("%d", &k) == 1 && k > 0 && k <= n) {
            for (int i = 0; i < k; i++) {
                long long a = now_ns();
                if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
                t[i] = now_ns() - a;
            }
            for (int i = 0; i < k; i++) printf(i ? " %lld" : "%lld", t[i]);
            printf("\n");
            fflush(stdout);
        }
        return 0;
    }
    for (int i = 0; i < n; i++) {
        long long a = now_ns();
        if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        t[i] = now_ns() - a;
        if (run->exit_reason != KVM_EXIT_IO || run->io.port != PORT) {
            fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
            return 1;
        }
    }
    qsort(t, (size_t)n, sizeof *t, cmp);
    printf("{\"n\": %d, \"median_ns\": %lld, \"p99_ns\": %lld, \"min_ns\": %lld}\n", n, t[n / 2],
           t[(long)n * 99 / 100], t[0]);
    return 0;
}

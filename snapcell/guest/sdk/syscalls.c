/*
 * snapcell guest SDK runtime: the system call handler (docs/guest-abi.md, "System calls").
 *
 * __sc_syscall is entered from entry.S (__sc_syscall_entry, the target of MSR_LSTAR). Memory
 * management is served in the guest (memory.c); a few process calls are answered here; the
 * in-guest file system (fs.c) takes its calls when the guest mounted one; everything else is
 * forwarded to the host through the ABI page syscall block and `out OUT_SYSCALL`.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>

#include "sc_internal.h"
#ifndef SC_ARENA_NATIVE_TEST
#include "snapcell_fs.h"
#endif

#define SC_KERNEL_SIGSET 8 /* sizeof the kernel's sigset_t on x86-64 (_NSIG / 8) */

static SC_NOSSP long sys_rt_sigprocmask(uint64_t oldset, uint64_t setsize)
{
    if (setsize != SC_KERNEL_SIGSET)
        return -EINVAL;
    if (oldset)
        memset((void *)(uintptr_t)oldset, 0, SC_KERNEL_SIGSET); /* nothing is ever blocked */
    return 0;
}

static SC_NOSSP long sys_rt_sigaction(uint64_t sig, uint64_t act, uint64_t oldact, uint64_t setsize)
{
    if (setsize != SC_KERNEL_SIGSET || sig < 1 || sig > 64)
        return -EINVAL;
    if (act && (sig == 9 || sig == 19)) /* SIGKILL, SIGSTOP */
        return -EINVAL;
    if (oldact) /* struct k_sigaction: handler, flags, restorer, mask = 24 + 8 bytes: SIG_DFL */
        memset((void *)(uintptr_t)oldact, 0, 24 + SC_KERNEL_SIGSET);
    return 0;
}

#ifndef SC_ARENA_NATIVE_TEST
static SC_NOSSP long forward_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5)
{
    volatile struct sc_abi_page *abi = SC_ABI_PAGE;
    abi->syscall_nr = (uint64_t)nr;
    abi->syscall_args[0] = (uint64_t)a0;
    abi->syscall_args[1] = (uint64_t)a1;
    abi->syscall_args[2] = (uint64_t)a2;
    abi->syscall_args[3] = (uint64_t)a3;
    abi->syscall_args[4] = (uint64_t)a4;
    abi->syscall_args[5] = (uint64_t)a5;
    sc_port_out(SC_OUT_SYSCALL);
    return (long)abi->syscall_result;
}
#else
static long forward_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5)
{
    (void)nr; (void)a0; (void)a1; (void)a2; (void)a3; (void)a4; (void)a5;
    return -ENOSYS;
}
#endif

#ifndef SC_ARENA_NATIVE_TEST
/*
 * nanosleep / clock_nanosleep: the guest has no timer to wait on, so a sleep polls the host's
 * clock (one exit per poll) until the deadline. The vCPU stays interruptible throughout (every
 * poll returns to the host), so a run's time limit still cuts a long sleep.
 */
#define SC_NSEC 1000000000LL
static SC_NOSSP long sys_sleep(long clock, long flags, const struct timespec *req,
                               struct timespec *rem)
{
    struct timespec now;
    if (!req || req->tv_nsec < 0 || req->tv_nsec >= SC_NSEC || req->tv_sec < 0)
        return -EINVAL;
    if (clock != CLOCK_REALTIME && clock != CLOCK_MONOTONIC && clock != CLOCK_BOOTTIME)
        return -EINVAL;
    long r = forward_syscall(SYS_clock_gettime, clock, (long)&now, 0, 0, 0, 0);
    if (r)
        return r;
    long long deadline = (long long)req->tv_sec * SC_NSEC + req->tv_nsec;
    if (!(flags & 1)) /* TIMER_ABSTIME */
        deadline += (long long)now.tv_sec * SC_NSEC + now.tv_nsec;
    while ((long long)now.tv_sec * SC_NSEC + now.tv_nsec < deadline) {
        r = forward_syscall(SYS_clock_gettime, clock, (long)&now, 0, 0, 0, 0);
        if (r)
            return r;
    }
    if (rem)
        rem->tv_sec = rem->tv_nsec = 0;
    return 0;
}
#endif

/* sc_set_syscall_hook (snapcell.h): the guest's own system calls, consulted first */
typedef int (*guest_hook_fn)(long, long, long, long, long, long, long, long *);
static guest_hook_fn guest_hook;

void sc_set_syscall_hook(guest_hook_fn hook);
void sc_set_syscall_hook(guest_hook_fn hook) { guest_hook = hook; }

/*
 * The C system call handler, called by __sc_syscall_entry (entry.S) with the Linux syscall
 * number and its six arguments; returns the value for rax (-errno on failure).
 * It may run before musl has set up TLS (fs base = 0): no TLS, no errno, no stack protector,
 * no malloc.
 */
long __sc_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5);
__attribute__((used)) SC_NOSSP long
__sc_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5)
{
    uint64_t u0 = (uint64_t)a0, u1 = (uint64_t)a1, u2 = (uint64_t)a2, u3 = (uint64_t)a3;
    if (guest_hook) {
        long r;
        if (guest_hook(nr, a0, a1, a2, a3, a4, a5, &r))
            return r;
    }
    switch (nr) {
    case SYS_brk:
        return sc__sys_brk();
    case SYS_mmap:
        return sc__sys_mmap(u0, u1, u2, u3, (uint64_t)a4, (uint64_t)a5);
    case SYS_munmap:
        return sc__sys_munmap(u0, u1);
    case SYS_mremap:
        return sc__sys_mremap(u0, u1, u2, u3);
    case SYS_madvise:
        return sc__sys_madvise(u0, u1, u2);
    case SYS_mprotect:
#ifndef SC_ARENA_NATIVE_TEST
        return sc__lib_mprotect(u0, u1, u2);
#else
        return 0;
#endif
    case SYS_set_tid_address:
        return 1;
    case SYS_rt_sigprocmask:
        return sys_rt_sigprocmask(u2, u3);
    case SYS_rt_sigaction:
        return sys_rt_sigaction(u0, u1, u2, u3);
    case SYS_getpid:
    case SYS_gettid:
        return 1;
    case SYS_ioctl:
        return -ENOTTY;
#ifndef SC_ARENA_NATIVE_TEST
    case SYS_nanosleep:
        return sys_sleep(CLOCK_MONOTONIC, 0, (const struct timespec *)a0, (struct timespec *)a1);
    case SYS_clock_nanosleep:
        return sys_sleep(a0, a1, (const struct timespec *)a2, (struct timespec *)a3);
    case SYS_sched_yield:
        return 0;
#endif
    default:
#ifndef SC_ARENA_NATIVE_TEST
        {
            long r; /* the in-guest file system (fs.c), when the guest mounted one */
            if (sc_fs_syscall(nr, a0, a1, a2, a3, a4, a5, &r))
                return r;
        }
#endif
        return forward_syscall(nr, a0, a1, a2, a3, a4, a5);
    }
}

/*
 * sockets: TCP sockets for the Python guest, tunnelled through the host (docs/guest-abi.md,
 * "Sockets"; the host side is snapcell/code/egress/sockets.py). This file holds the system call
 * entry points; sockets_table.c the socket table and the host channel, sockets_ops.c the
 * operations on one socket, sockets_poll.c poll and select.
 *
 * A system call hook (sc_set_syscall_hook) serves socket, connect, send/recv (and read/write,
 * readv/writev, sendmsg/recvmsg on socket descriptors), poll/ppoll/select/pselect6,
 * getsockopt/setsockopt, getsockname/getpeername, shutdown, fcntl, ioctl, fstat and close.
 * Descriptors NS_BASE.. are sockets (the in-guest file system's are below). So CPython's own
 * `_socket`, `select`, `ssl` (its socket BIO reads and writes the descriptor) and asyncio's
 * selector loop work unchanged.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>

#include "snapcell.h"
#include "sockets.h"
#include "sockets_table.h"

static long ms_of(const struct timespec *ts)
{
    if (!ts)
        return -1;
    if (ts->tv_sec < 0 || ts->tv_nsec < 0)
        return -EINVAL;
    return ts->tv_sec > 86400000 ? 86400000000L : ts->tv_sec * 1000 + ts->tv_nsec / 1000000;
}

static int hook(long nr, long a0, long a1, long a2, long a3, long a4, long a5, long *ret)
{
    (void)a5;
    struct ns *s;
    struct iovec one;
    switch (nr) {
    case SYS_socket:
        *ret = ns_socket(a0, a1, a2);
        return 1;
    case SYS_poll:
        if (!ns_any_socket_poll((struct pollfd *)a0, (unsigned long)a1))
            return 0;
        *ret = ns_poll((struct pollfd *)a0, (unsigned long)a1, a2 < 0 ? -1 : a2);
        return 1;
    case SYS_ppoll: {
        if (!ns_any_socket_poll((struct pollfd *)a0, (unsigned long)a1))
            return 0;
        long ms = ms_of((const struct timespec *)a2);
        *ret = ms < -1 ? ms : ns_poll((struct pollfd *)a0, (unsigned long)a1, ms);
        return 1;
    }
    case SYS_select: {
        if (!ns_any_socket_set(a0, (fd_set *)a1, (fd_set *)a2, (fd_set *)a3))
            return 0;
        const struct timeval *tv = (const struct timeval *)a4;
        long ms = !tv ? -1 : (tv->tv_sec < 0 || tv->tv_usec < 0) ? -EINVAL
                  : tv->tv_sec > 86400000 ? 86400000000L : tv->tv_sec * 1000 + tv->tv_usec / 1000;
        *ret = ms < -1 ? ms : ns_select(a0, (fd_set *)a1, (fd_set *)a2, (fd_set *)a3, ms);
        return 1;
    }
    case SYS_pselect6: {
        if (!ns_any_socket_set(a0, (fd_set *)a1, (fd_set *)a2, (fd_set *)a3))
            return 0;
        long ms = ms_of((const struct timespec *)a4);
        *ret = ms < -1 ? ms : ns_select(a0, (fd_set *)a1, (fd_set *)a2, (fd_set *)a3, ms);
        return 1;
    }
    }
    if (!(s = ns_get(a0)))
        return 0;                               /* not a socket: the SDK's */
    switch (nr) {
    case SYS_close:
        *ret = ns_close(a0);
        return 1;
    case SYS_connect:
        *ret = ns_connect(s, (const struct sockaddr *)a1, (socklen_t)a2);
        return 1;
    case SYS_write:
    case SYS_sendto:
        if (!a1 && a2) {
            *ret = -EFAULT;
            return 1;
        }
        one.iov_base = (void *)a1;
        one.iov_len = (size_t)a2;
        *ret = ns_send(s, &one, 1, nr == SYS_sendto ? (int)a3 : 0);
        return 1;
    case SYS_writev:
        *ret = a2 < 0 || a2 > 1024 ? -EINVAL : ns_send(s, (const struct iovec *)a1, (size_t)a2, 0);
        return 1;
    case SYS_sendmsg: {
        const struct msghdr *m = (const struct msghdr *)a1;
        *ret = !m || (m->msg_iovlen && !m->msg_iov) ? -EFAULT : m->msg_iovlen > 1024 ? -EMSGSIZE
               : ns_send(s, m->msg_iov, m->msg_iovlen, (int)a2);
        return 1;
    }
    case SYS_read:
    case SYS_recvfrom:
        if (!a1 && a2) {
            *ret = -EFAULT;
            return 1;
        }
        one.iov_base = (void *)a1;
        one.iov_len = (size_t)a2;
        *ret = ns_recv(s, &one, 1, nr == SYS_recvfrom ? (int)a3 : 0);
        if (nr == SYS_recvfrom && a5 && *ret >= 0)
            *(socklen_t *)a5 = 0;
        return 1;
    case SYS_readv:
        *ret = a2 < 0 || a2 > 1024 ? -EINVAL : ns_recv(s, (const struct iovec *)a1, (size_t)a2, 0);
        return 1;
    case SYS_recvmsg: {
        struct msghdr *m = (struct msghdr *)a1;
        if (!m || (m->msg_iovlen && !m->msg_iov)) {
            *ret = -EFAULT;
            return 1;
        }
        *ret = m->msg_iovlen > 1024 ? -EMSGSIZE : ns_recv(s, m->msg_iov, m->msg_iovlen, (int)a2);
        m->msg_namelen = 0;
        m->msg_controllen = 0;
        m->msg_flags = 0;
        return 1;
    }
    case SYS_shutdown:
        *ret = ns_shutdown(s, a1);
        return 1;
    case SYS_getsockopt:
        *ret = ns_getsockopt(s, a1, a2, (void *)a3, (socklen_t *)a4);
        return 1;
    case SYS_setsockopt:
        *ret = ns_setsockopt(a1, a2);
        return 1;
    case SYS_getsockname:
    case SYS_getpeername:
        *ret = ns_name(s, (struct sockaddr *)a1, (socklen_t *)a2, nr == SYS_getpeername);
        return 1;
    case SYS_bind:
    case SYS_listen:
    case SYS_accept:
    case SYS_accept4:
        *ret = -EOPNOTSUPP;                     /* outgoing connections only */
        return 1;
    case SYS_fcntl:
        switch (a1) {
        case F_GETFL: *ret = O_RDWR | (s->nonblock ? O_NONBLOCK : 0); break;
        case F_SETFL: s->nonblock = (a2 & O_NONBLOCK) != 0; *ret = 0; break;
        case F_GETFD: *ret = s->cloexec ? FD_CLOEXEC : 0; break;
        case F_SETFD: s->cloexec = (a2 & FD_CLOEXEC) != 0; *ret = 0; break;
        default: *ret = -EINVAL;
        }
        return 1;
    case SYS_ioctl:
        if (a1 == FIONBIO && a2) {
            s->nonblock = *(const int *)a2 != 0;
            *ret = 0;
        } else if (a1 == FIONREAD && a2) {
            *(int *)a2 = (int)(s->rlen - s->roff);
            *ret = 0;
        } else {
            *ret = -ENOTTY;
        }
        return 1;
    case SYS_fstat: {
        struct stat *st = (struct stat *)a1;
        if (!st) {
            *ret = -EFAULT;
            return 1;
        }
        memset(st, 0, sizeof *st);
        st->st_mode = S_IFSOCK | 0777;
        st->st_blksize = 4096;
        *ret = 0;
        return 1;
    }
    case SYS_dup:
    case SYS_dup2:
    case SYS_dup3:
    case SYS_lseek:
        *ret = nr == SYS_lseek ? -ESPIPE : -EMFILE;
        return 1;
    }
    return 0;
}

long ns_wait(int fd, int writing, long timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = writing ? POLLOUT : POLLIN};
    return ns_poll(&p, 1, timeout_ms);
}

void ns_install(void) { sc_set_syscall_hook(hook); }

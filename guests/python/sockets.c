/*
 * sockets: TCP sockets for the Python guest, tunnelled through the host (docs/guest-abi.md,
 * "Sockets"; the host side is snapcell/code/egress/sockets.py).
 *
 * A system call hook (sc_set_syscall_hook) serves socket, connect, send/recv (and read/write,
 * readv/writev, sendmsg/recvmsg on socket descriptors), poll/ppoll/select/pselect6,
 * getsockopt/setsockopt, getsockname/getpeername, shutdown, fcntl, ioctl, fstat and close.
 * Descriptors NS_BASE.. are sockets (the in-guest file system's are below). Every operation
 * that touches the network is a `CodeTool` call with a reserved name (net.connect, net.send,
 * net.recv, net.poll, net.shutdown), decided and performed by the host under the sandbox's
 * network policy; a close, and bytes written (up to NS_WPEND), ride on the next host call; the guest never sees a host descriptor, only handle numbers that
 * are valid during one run.
 *
 * So CPython's own `_socket`, `select`, `ssl` (its socket BIO reads and writes the descriptor)
 * and asyncio's selector loop work unchanged. Data the host read ahead (a recv asks for up to
 * NS_CHUNK bytes; a poll that finds a socket readable reads it in the same host call) waits in
 * the socket's receive buffer, so a poll-then-recv costs one host call.
 */
#define _GNU_SOURCE 1
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>

#include "codebox.h"
#include "snapcell.h"
#include "sockets.h"

#define NS_BASE 128             /* after the file system's descriptors (SC_FS_MAX_FDS) */
#define NS_MAX 64               /* sockets open at once in the guest */
#define NS_CHUNK (256u << 10)   /* bytes per send or read-ahead: well inside the 1 MiB buffers */
#define NS_POLL_MAX 1024

enum { NS_FREE, NS_NEW, NS_CONNECTING, NS_CONNECTED, NS_DEAD };

struct ns {
    int state, family, nonblock, cloexec;
    int64_t handle;             /* the host's handle (this run only) */
    int so_error;               /* pending error (SO_ERROR, next recv) */
    int eof, shut_rd, shut_wr, wblocked;
    struct sockaddr_storage peer;
    socklen_t peerlen;
    char *rbuf;                 /* read-ahead: rbuf[roff..rlen) */
    size_t roff, rlen, rcap;
    char *wbuf;                 /* written, not yet handed to the host */
    size_t wlen, wcap;
};

static struct ns socks[NS_MAX];
/* What waits for the next host call (every one carries it, first): closed sockets' handles
 * (a close costs no host call of its own; the host closes whatever is left when the run ends)
 * and bytes written (up to NS_WPEND in all: a request's send and the poll for its answer are
 * one host call). A close with bytes waiting, and the run's end, hand them over at once. */
#define NS_WPEND (128u << 10)
static int64_t closing[NS_MAX];
static int nclosing;
static size_t wpending;
static int net_state;           /* per run: 0 unknown, 1 the sandbox has a network, -errno not */
static cb_buf args;
static int last_errno;
static char last_type[64], last_msg[2048];

/* ---- host calls --------------------------------------------------------------------------- */

static int errno_of(const char *type, const char *msg)
{
    if (strncmp(msg, "[Errno ", 7) == 0) {
        int e = atoi(msg + 7);
        if (e > 0 && e < 4096)
            return e;
    }
    static const struct { const char *type; int e; } map[] = {
        {"PermissionError", EACCES}, {"TimeoutError", ETIMEDOUT},
        {"ConnectionRefusedError", ECONNREFUSED}, {"ConnectionResetError", ECONNRESET},
        {"ConnectionAbortedError", ECONNABORTED}, {"BrokenPipeError", EPIPE},
        {"BlockingIOError", EAGAIN}, {"InterruptedError", EINTR},
    };
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (strcmp(type, map[i].type) == 0)
            return map[i].e;
    return EIO;
}

/* Call net.<op> with the arguments in `args` (an array, encoded by the caller). 0 with the
 * reply's value in [*v, *vend), or -errno with the host's error kept for ns_last_error(). */
static long host(const char *op, const char **v, const char **vend)
{
    const char *et, *em;
    char name[32] = "net.";
    strncat(name, op, sizeof name - 5);
    last_errno = 0;
    uint32_t n = (uint32_t)nclosing;
    for (int i = 0; i < NS_MAX; i++)
        n += socks[i].state != NS_FREE && socks[i].wlen;
    cb_array(&args, n);
    for (int i = 0; i < nclosing; i++) {
        cb_array(&args, 2);
        cb_int(&args, closing[i]);
        cb_nil(&args);
    }
    for (int i = 0; i < NS_MAX; i++) {
        struct ns *s = &socks[i];
        if (s->state != NS_FREE && s->wlen) {
            cb_array(&args, 2);
            cb_int(&args, s->handle);
            cb_bin(&args, s->wbuf, s->wlen);
            s->wlen = 0;
        }
    }
    nclosing = 0;
    wpending = 0;
    if (args.oom)
        return -ENOMEM;
    if (cb_call_tool(name, strlen(name), &args, v, vend, &et, &em) == 0)
        return 0;
    last_errno = errno_of(et, em);
    snprintf(last_type, sizeof last_type, "%s", et);
    snprintf(last_msg, sizeof last_msg, "%s", em);
    return -last_errno;
}

int ns_last_error(const char **type, const char **message)
{
    *type = last_type;
    *message = last_msg;
    return last_errno;
}

/* Start the arguments of an operation taking `n` (host() appends what waits, last). */
static void begin(uint32_t n)
{
    cb_reset(&args);
    cb_array(&args, n + 1);
}

static struct ns *get(long fd)
{
    if (fd < NS_BASE || fd >= NS_BASE + NS_MAX || socks[fd - NS_BASE].state == NS_FREE)
        return NULL;
    return &socks[fd - NS_BASE];
}

/* Whether the sandbox has a network (asked once per run): 0, or -errno (no network). */
static long check_network(void)
{
    if (net_state == 0) {
        const char *v, *vend;
        begin(0);
        long r = host("socket", &v, &vend);
        net_state = r == 0 ? 1 : (int)r;
    }
    return net_state == 1 ? 0 : net_state;
}

void ns_run_begin(void)
{
    net_state = 0;
    nclosing = 0;
    wpending = 0;
    for (int i = 0; i < NS_MAX; i++) {          /* the host closed every handle at the run's end */
        struct ns *s = &socks[i];
        s->wlen = 0;
        if (s->state == NS_CONNECTING || s->state == NS_CONNECTED) {
            s->state = NS_DEAD;
            s->handle = 0;
        }
    }
}

/* Hand over the bytes still waiting (a net.flush), before the run ends. */
static void flush(void)
{
    const char *v, *vend;
    begin(0);
    host("flush", &v, &vend);
}

void ns_run_end(void)
{
    if (wpending)
        flush();
}

/* ---- sockets ------------------------------------------------------------------------------ */

static long ns_socket(long domain, long type, long proto)
{
    long r = check_network();
    if (r)
        return r;
    if (domain != AF_INET && domain != AF_INET6)
        return -EAFNOSUPPORT;
    if ((type & 0xf) != SOCK_STREAM || (proto != 0 && proto != IPPROTO_TCP))
        return -EPROTONOSUPPORT;        /* TCP only: no UDP, no raw sockets */
    for (int i = 0; i < NS_MAX; i++) {
        struct ns *s = &socks[i];
        if (s->state != NS_FREE)
            continue;
        char *keep = s->rbuf, *wkeep = s->wbuf;
        size_t cap = s->rcap, wcap = s->wcap;
        memset(s, 0, sizeof *s);
        s->rbuf = keep;
        s->rcap = cap;
        s->wbuf = wkeep;
        s->wcap = wcap;
        s->state = NS_NEW;
        s->family = (int)domain;
        s->nonblock = (type & SOCK_NONBLOCK) != 0;
        s->cloexec = (type & SOCK_CLOEXEC) != 0;
        return NS_BASE + i;
    }
    return -EMFILE;
}

static long ns_close(long fd)
{
    struct ns *s = get(fd);
    if (s->wlen)
        flush();
    if ((s->state == NS_CONNECTING || s->state == NS_CONNECTED) && s->handle
        && nclosing < NS_MAX)
        closing[nclosing++] = s->handle;
    s->state = NS_FREE;
    s->roff = s->rlen = 0;
    return 0;
}

static long ns_connect(struct ns *s, const struct sockaddr *sa, socklen_t len)
{
    char text[INET6_ADDRSTRLEN];
    int port;
    if (s->state == NS_CONNECTING)
        return -EALREADY;
    if (s->state == NS_CONNECTED)
        return -EISCONN;
    if (s->state == NS_DEAD)
        return -ECONNRESET;
    if (!sa || len < (socklen_t)sizeof(sa_family_t))
        return -EINVAL;
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
        port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
        port = ntohs(in6->sin6_port);
    } else {
        return sa->sa_family == AF_INET || sa->sa_family == AF_INET6 ? -EINVAL : -EAFNOSUPPORT;
    }
    const char *v, *vend;
    begin(3);
    cb_str(&args, text, strlen(text));
    cb_int(&args, port);
    if (s->nonblock)
        cb_double(&args, 0.0);
    else
        cb_nil(&args);
    long r = host("connect", &v, &vend);
    if (r)
        return r;
    if (mp_typeof(*v) != MP_ARRAY || mp_decode_array(&v) != 2 || mp_typeof(*v) != MP_UINT)
        return -EIO;
    s->handle = (int64_t)mp_decode_uint(&v);
    int pending = mp_typeof(*v) == MP_BOOL && mp_decode_bool(&v);
    memcpy(&s->peer, sa, len < sizeof s->peer ? len : sizeof s->peer);
    s->peerlen = len < sizeof s->peer ? len : sizeof s->peer;
    s->state = pending ? NS_CONNECTING : NS_CONNECTED;
    return pending ? -EINPROGRESS : 0;
}

/* Send up to `n` bytes gathered from iov (blocking: all of them, NS_CHUNK per host call). */
static long ns_send(struct ns *s, const struct iovec *iov, size_t niov, int flags)
{
    static char gather[NS_CHUNK];
    if (s->state == NS_DEAD)
        return -EPIPE;
    if (s->state == NS_CONNECTING)
        return -EAGAIN;
    if (s->state != NS_CONNECTED)
        return -ENOTCONN;
    if (s->shut_wr)
        return -EPIPE;
    int nonblock = s->nonblock || (flags & MSG_DONTWAIT);
    size_t total = 0, vi = 0, voff = 0, want = 0;
    for (size_t i = 0; i < niov; i++)
        want += iov[i].iov_len;
    if (want && want <= NS_WPEND - wpending) {      /* kept for the next host call */
        if (s->wcap - s->wlen < want) {
            char *q = realloc(s->wbuf, s->wlen + want);
            if (!q)
                return -ENOMEM;
            s->wbuf = q;
            s->wcap = s->wlen + want;
        }
        for (size_t i = 0; i < niov; i++) {
            memcpy(s->wbuf + s->wlen, iov[i].iov_base, iov[i].iov_len);
            s->wlen += iov[i].iov_len;
        }
        wpending += want;
        return (long)want;
    }
    for (;;) {
        size_t n = 0;
        while (vi < niov && n < NS_CHUNK) {
            size_t take = iov[vi].iov_len - voff;
            if (take > NS_CHUNK - n)
                take = NS_CHUNK - n;
            memcpy(gather + n, (const char *)iov[vi].iov_base + voff, take);
            n += take;
            voff += take;
            if (voff == iov[vi].iov_len) {
                vi++;
                voff = 0;
            }
        }
        if (n == 0)
            return (long)total;
        const char *v, *vend;
        begin(3);
        cb_int(&args, s->handle);
        cb_bin(&args, gather, n);
        if (nonblock)
            cb_double(&args, 0.0);
        else
            cb_nil(&args);
        long r = host("send", &v, &vend);
        if (r == 0 && mp_typeof(*v) != MP_UINT)
            r = -EIO;
        if (r) {
            if (r == -EAGAIN)
                s->wblocked = 1;
            return total ? (long)total : r;
        }
        uint64_t sent = mp_decode_uint(&v);
        total += sent;
        if (sent < n) {
            s->wblocked = 1;
            return (long)total;
        }
        s->wblocked = 0;
        if (nonblock)
            return (long)total;
    }
}

/* Append `n` bytes to the read-ahead buffer. */
static int keep(struct ns *s, const char *p, size_t n)
{
    if (s->roff == s->rlen)
        s->roff = s->rlen = 0;
    if (s->rcap - s->rlen < n) {
        size_t cap = s->rlen + n;
        char *q = realloc(s->rbuf, cap);
        if (!q)
            return -ENOMEM;
        s->rbuf = q;
        s->rcap = cap;
    }
    memcpy(s->rbuf + s->rlen, p, n);
    s->rlen += n;
    return 0;
}

/* Take a net.recv / net.poll read-ahead value: bytes (empty: end of stream) or an errno. */
static void take(struct ns *s, const char **v)
{
    uint32_t n;
    if (mp_typeof(**v) == MP_BIN) {
        const char *p = mp_decode_bin(v, &n);
        if (n == 0)
            s->eof = 1;
        else if (keep(s, p, n))
            s->so_error = ENOMEM;
    } else if (mp_typeof(**v) == MP_UINT) {
        s->so_error = (int)mp_decode_uint(v);
        s->eof = 1;
    } else {
        mp_next(v);
    }
}

static long ns_recv(struct ns *s, const struct iovec *iov, size_t niov, int flags)
{
    if (s->rlen == s->roff && !s->eof && !s->so_error && !s->shut_rd) {
        if (s->state == NS_DEAD)
            return -ECONNRESET;
        if (s->state == NS_CONNECTING)
            return -EAGAIN;
        if (s->state != NS_CONNECTED)
            return -ENOTCONN;
        size_t want = 0;
        for (size_t i = 0; i < niov; i++)
            want += iov[i].iov_len;
        if (want == 0)
            return 0;
        const char *v, *vend;
        begin(3);
        cb_int(&args, s->handle);
        cb_int(&args, NS_CHUNK);
        if (s->nonblock || (flags & MSG_DONTWAIT))
            cb_double(&args, 0.0);
        else
            cb_nil(&args);
        long r = host("recv", &v, &vend);
        if (r)
            return r;
        take(s, &v);
    }
    size_t avail = s->rlen - s->roff, got = 0;
    if (avail == 0) {
        if (s->so_error) {
            int e = s->so_error;
            s->so_error = 0;
            return -e;
        }
        return 0;                               /* end of stream */
    }
    for (size_t i = 0; i < niov && got < avail; i++) {
        size_t n = iov[i].iov_len < avail - got ? iov[i].iov_len : avail - got;
        memcpy(iov[i].iov_base, s->rbuf + s->roff + got, n);
        got += n;
    }
    if (!(flags & MSG_PEEK))
        s->roff += got;
    return (long)got;
}

/* ---- readiness ---------------------------------------------------------------------------- */

static short local_revents(const struct ns *s, short events)
{
    short r = 0;
    switch (s->state) {
    case NS_CONNECTED:
        if (s->rlen > s->roff || s->eof || s->so_error || s->shut_rd)
            r |= POLLIN;
        if (!s->wblocked && !s->shut_wr)
            r |= POLLOUT;
        if (s->so_error)
            r |= POLLERR;
        if (s->eof && s->shut_wr)
            r |= POLLHUP;
        break;
    case NS_DEAD:
        r = POLLIN | POLLERR | POLLHUP;
        break;
    case NS_NEW:
        r = POLLOUT | POLLHUP;
        break;
    default:                                    /* connecting: the host knows */
        return 0;
    }
    return (short)(r & (events | POLLERR | POLLHUP));
}

/* Whether the host must be asked about this socket (nothing is known to be ready here). */
static int needs_host(const struct ns *s, short events)
{
    if (s->state == NS_CONNECTING)
        return 1;
    return s->state == NS_CONNECTED && !local_revents(s, events)
           && (events & (POLLIN | POLLOUT));
}

/* poll() over any descriptors; timeout in ms (-1: none). Files and the standard streams are
 * always ready. */
static long ns_poll(struct pollfd *fds, unsigned long nfds, long timeout_ms)
{
    if (nfds > NS_POLL_MAX)
        return -EINVAL;
    int ready = 0, ask = 0;
    for (unsigned long i = 0; i < nfds; i++) {
        struct ns *s = get(fds[i].fd);
        fds[i].revents = 0;
        if (fds[i].fd < 0)
            continue;
        if (!s)
            fds[i].revents = fds[i].fd < NS_BASE ? (short)(fds[i].events & (POLLIN | POLLOUT))
                                                  : POLLNVAL;
        else if (needs_host(s, fds[i].events))
            ask++;
        else
            fds[i].revents = local_revents(s, fds[i].events);
        ready += fds[i].revents != 0;
    }
    if (ready || !ask)
        return ready;
    const char *v, *vend;
    begin(3);
    cb_array(&args, (uint32_t)ask);
    for (unsigned long i = 0; i < nfds; i++) {
        struct ns *s = get(fds[i].fd);
        if (fds[i].fd >= 0 && s && needs_host(s, fds[i].events)) {
            cb_array(&args, 2);
            cb_int(&args, s->handle);
            cb_int(&args, s->state == NS_CONNECTING ? POLLOUT : fds[i].events & (POLLIN | POLLOUT));
        }
    }
    if (timeout_ms < 0)
        cb_nil(&args);
    else
        cb_double(&args, (double)timeout_ms / 1000.0);
    cb_int(&args, NS_CHUNK);
    long r = host("poll", &v, &vend);
    if (r)
        return r;
    if (mp_typeof(*v) != MP_ARRAY || mp_decode_array(&v) != (uint32_t)ask)
        return -EIO;
    for (unsigned long i = 0; i < nfds; i++) {
        struct ns *s = get(fds[i].fd);
        if (fds[i].fd < 0 || !s || !needs_host(s, fds[i].events))
            continue;
        if (mp_typeof(*v) != MP_ARRAY || mp_decode_array(&v) != 2 || mp_typeof(*v) != MP_UINT)
            return -EIO;
        short rev = (short)mp_decode_uint(&v);
        if (s->state == NS_CONNECTING) {
            if (mp_typeof(*v) == MP_UINT) {         /* the connection's outcome */
                int e = (int)mp_decode_uint(&v);
                s->state = NS_CONNECTED;       /* a failed one reports its error */
                s->so_error = e;
                if (e)
                    s->eof = 1;
            } else {
                mp_next(&v);
            }
            fds[i].revents = s->state == NS_CONNECTED ? local_revents(s, fds[i].events) : 0;
        } else {
            take(s, &v);
            if (rev & POLLOUT)
                s->wblocked = 0;
            fds[i].revents = local_revents(s, fds[i].events);
        }
        ready += fds[i].revents != 0;
    }
    return ready;
}

static struct pollfd pfds[NS_POLL_MAX];

/* select() through ns_poll. */
static long ns_select(long nfds, fd_set *rd, fd_set *wr, fd_set *ex, long timeout_ms)
{
    if (nfds < 0 || nfds > FD_SETSIZE)
        return -EINVAL;
    unsigned long n = 0;
    for (int fd = 0; fd < nfds; fd++) {
        short ev = (short)((rd && FD_ISSET(fd, rd) ? POLLIN : 0) | (wr && FD_ISSET(fd, wr) ? POLLOUT : 0)
                           | (ex && FD_ISSET(fd, ex) ? POLLPRI : 0));
        if (ev && n < NS_POLL_MAX) {
            pfds[n].fd = fd;
            pfds[n].events = ev;
            n++;
        }
    }
    long r = ns_poll(pfds, n, timeout_ms);
    if (r < 0)
        return r;
    if (rd)
        FD_ZERO(rd);
    if (wr)
        FD_ZERO(wr);
    if (ex)
        FD_ZERO(ex);
    long count = 0;
    for (unsigned long i = 0; i < n; i++) {
        short rev = pfds[i].revents;
        if (rev & POLLNVAL)
            return -EBADF;
        if (rd && (rev & (POLLIN | POLLHUP | POLLERR)) && (pfds[i].events & POLLIN)) {
            FD_SET(pfds[i].fd, rd);
            count++;
        }
        if (wr && (rev & (POLLOUT | POLLERR)) && (pfds[i].events & POLLOUT)) {
            FD_SET(pfds[i].fd, wr);
            count++;
        }
    }
    return count;
}

static int any_socket_poll(const struct pollfd *fds, unsigned long n)
{
    if (!fds || n > NS_POLL_MAX)
        return 0;
    for (unsigned long i = 0; i < n; i++)
        if (get(fds[i].fd))
            return 1;
    return 0;
}

static int any_socket_set(long nfds, const fd_set *a, const fd_set *b, const fd_set *c)
{
    for (long fd = NS_BASE; fd < NS_BASE + NS_MAX && fd < nfds && fd < FD_SETSIZE; fd++)
        if (get(fd) && ((a && FD_ISSET(fd, a)) || (b && FD_ISSET(fd, b)) || (c && FD_ISSET(fd, c))))
            return 1;
    return 0;
}

static long ms_of(const struct timespec *ts)
{
    if (!ts)
        return -1;
    if (ts->tv_sec < 0 || ts->tv_nsec < 0)
        return -EINVAL;
    return ts->tv_sec > 86400000 ? 86400000000L : ts->tv_sec * 1000 + ts->tv_nsec / 1000000;
}

/* ---- options ------------------------------------------------------------------------------ */

static long put_int(void *val, socklen_t *len, int x)
{
    if (!val || !len || *len < (socklen_t)sizeof(int))
        return -EINVAL;
    memcpy(val, &x, sizeof x);
    *len = sizeof x;
    return 0;
}

static long ns_getsockopt(struct ns *s, long level, long opt, void *val, socklen_t *len)
{
    if (level == SOL_SOCKET) {
        switch (opt) {
        case SO_ERROR: {
            int e = s->so_error;
            s->so_error = 0;
            return put_int(val, len, e);
        }
        case SO_TYPE: return put_int(val, len, SOCK_STREAM);
        case SO_DOMAIN: return put_int(val, len, s->family);
        case SO_PROTOCOL: return put_int(val, len, IPPROTO_TCP);
        case SO_RCVBUF: case SO_SNDBUF: return put_int(val, len, (int)NS_CHUNK);
        case SO_KEEPALIVE: case SO_REUSEADDR: case SO_BROADCAST: return put_int(val, len, 0);
        case SO_ACCEPTCONN: return put_int(val, len, 0);
        }
    } else if (level == IPPROTO_TCP && opt == TCP_NODELAY) {
        return put_int(val, len, 1);
    }
    return -ENOPROTOOPT;
}

static long ns_setsockopt(long level, long opt)
{
    if (level == IPPROTO_TCP)           /* the host's connection: options are its business */
        return opt == TCP_ULP ? -ENOPROTOOPT : 0;      /* (no kernel TLS) */
    if (level == SOL_SOCKET || level == IPPROTO_IP || level == IPPROTO_IPV6)
        return 0;
    return -ENOPROTOOPT;
}

static long ns_name(struct ns *s, struct sockaddr *sa, socklen_t *len, int peer)
{
    struct sockaddr_storage any;
    const void *src = &s->peer;
    socklen_t n = s->peerlen;
    if (!sa || !len)
        return -EFAULT;
    if (peer && s->state != NS_CONNECTED && s->state != NS_CONNECTING)
        return -ENOTCONN;
    if (!peer) {                                 /* the guest has no address of its own */
        memset(&any, 0, sizeof any);
        any.ss_family = (sa_family_t)s->family;
        src = &any;
        n = s->family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    }
    memcpy(sa, src, *len < n ? *len : n);
    *len = n;
    return 0;
}

/* ---- the hook ----------------------------------------------------------------------------- */

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
        if (!any_socket_poll((struct pollfd *)a0, (unsigned long)a1))
            return 0;
        *ret = ns_poll((struct pollfd *)a0, (unsigned long)a1, a2 < 0 ? -1 : a2);
        return 1;
    case SYS_ppoll: {
        if (!any_socket_poll((struct pollfd *)a0, (unsigned long)a1))
            return 0;
        long ms = ms_of((const struct timespec *)a2);
        *ret = ms < -1 ? ms : ns_poll((struct pollfd *)a0, (unsigned long)a1, ms);
        return 1;
    }
    case SYS_select: {
        if (!any_socket_set(a0, (fd_set *)a1, (fd_set *)a2, (fd_set *)a3))
            return 0;
        const struct timeval *tv = (const struct timeval *)a4;
        long ms = !tv ? -1 : (tv->tv_sec < 0 || tv->tv_usec < 0) ? -EINVAL
                  : tv->tv_sec > 86400000 ? 86400000000L : tv->tv_sec * 1000 + tv->tv_usec / 1000;
        *ret = ms < -1 ? ms : ns_select(a0, (fd_set *)a1, (fd_set *)a2, (fd_set *)a3, ms);
        return 1;
    }
    case SYS_pselect6: {
        if (!any_socket_set(a0, (fd_set *)a1, (fd_set *)a2, (fd_set *)a3))
            return 0;
        long ms = ms_of((const struct timespec *)a4);
        *ret = ms < -1 ? ms : ns_select(a0, (fd_set *)a1, (fd_set *)a2, (fd_set *)a3, ms);
        return 1;
    }
    }
    if (!(s = get(a0)))
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
        if (a1 < SHUT_RD || a1 > SHUT_RDWR) {
            *ret = -EINVAL;
            return 1;
        }
        if (s->state != NS_CONNECTED) {
            *ret = -ENOTCONN;
            return 1;
        }
        if (a1 != SHUT_WR)
            s->shut_rd = 1;
        *ret = 0;
        if (a1 != SHUT_RD && !s->shut_wr) {
            const char *v, *vend;
            s->shut_wr = 1;
            begin(2);
            cb_int(&args, s->handle);
            cb_int(&args, SHUT_WR);
            *ret = host("shutdown", &v, &vend);
        }
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

void ns_install(void) { sc_set_syscall_hook(hook); }

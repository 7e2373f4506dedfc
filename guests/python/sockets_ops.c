/*
 * sockets_ops: the operations on one tunnelled socket of the Python guest — socket, connect,
 * send, recv, shutdown, close, options and names (sockets_table.c explains the host channel).
 *
 * A send keeps its bytes for the next host call (up to NS_WPEND waiting in all); a recv is
 * served from what the host read ahead (a recv asks for up to NS_CHUNK bytes; a poll that finds
 * a socket readable reads it in the same host call), so a poll-then-recv costs one host call.
 * A connect to a destination the host already connected this run is deferred to the next host
 * call (sockets_table.c).
 */
#define _GNU_SOURCE 1
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>

#include "sockets_table.h"

/* ---- sockets ------------------------------------------------------------------------------ */

long ns_socket(long domain, long type, long proto)
{
    long r = ns_check_network();
    if (r)
        return r;
    if (domain != AF_INET && domain != AF_INET6)
        return -EAFNOSUPPORT;
    if ((type & 0xf) != SOCK_STREAM || (proto != 0 && proto != IPPROTO_TCP))
        return -EPROTONOSUPPORT;        /* TCP only: no UDP, no raw sockets */
    for (int i = 0; i < NS_MAX; i++) {
        struct ns *s = &ns_socks[i];
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

long ns_close(long fd)
{
    struct ns *s = ns_get(fd);
    if (s->wlen)
        ns_flush();                             /* its bytes leave before its close */
    if ((s->state == NS_CONNECTING || s->state == NS_CONNECTED) && s->handle) {
        ns_queue_close(s);
        ns_released();
    }
    s->state = NS_FREE;
    s->lazy = NS_HOST;
    s->roff = s->rlen = 0;
    return 0;
}

long ns_connect(struct ns *s, const struct sockaddr *sa, socklen_t len)
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
    socklen_t keep = len < sizeof s->peer ? len : sizeof s->peer;
    if (ns_may_defer(sa, len)) {                /* made by the host with its next call */
        s->handle = ns_deferred();
        s->lazy = NS_LAZY_NEW;
        memcpy(&s->peer, sa, keep);
        s->peerlen = keep;
        s->state = NS_CONNECTED;
        return 0;
    }
    const char *v, *vend;
    ns_begin(3);
    cb_str(&ns_args, text, strlen(text));
    cb_int(&ns_args, port);
    if (s->nonblock)
        cb_double(&ns_args, 0.0);
    else
        cb_nil(&ns_args);
    long r = ns_host("connect", &v, &vend);
    if (r)
        return r;
    uint32_t n = mp_typeof(*v) == MP_ARRAY ? mp_decode_array(&v) : 0;
    if ((n != 2 && n != 4) || mp_typeof(*v) != MP_UINT)
        return -EIO;
    s->handle = (int64_t)mp_decode_uint(&v);
    int pending = mp_typeof(*v) == MP_BOOL ? mp_decode_bool(&v) : (mp_next(&v), 0);
    if (n == 4 && mp_typeof(*v) == MP_UINT) {   /* the run's requests and connections left */
        int64_t requests = (int64_t)mp_decode_uint(&v);
        ns_bounds(requests, mp_typeof(*v) == MP_UINT ? (int64_t)mp_decode_uint(&v) : 0);
    }
    memcpy(&s->peer, sa, keep);
    s->peerlen = keep;
    s->lazy = NS_HOST;
    s->state = pending ? NS_CONNECTING : NS_CONNECTED;
    if (!pending)
        ns_known_add(sa, len);
    return pending ? -EINPROGRESS : 0;
}

/* Send up to `n` bytes gathered from iov (blocking: all of them, NS_CHUNK per host call). */
long ns_send(struct ns *s, const struct iovec *iov, size_t niov, int flags)
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
    if (want && want <= NS_WPEND - ns_wpending) {      /* kept for the next host call */
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
        ns_wpending += want;
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
        ns_begin(3);
        cb_int(&ns_args, s->handle);
        cb_bin(&ns_args, gather, n);
        if (nonblock)
            cb_double(&ns_args, 0.0);
        else
            cb_nil(&ns_args);
        long r = ns_host("send", &v, &vend);
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

long ns_recv(struct ns *s, const struct iovec *iov, size_t niov, int flags)
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
        ns_begin(3);
        cb_int(&ns_args, s->handle);
        cb_int(&ns_args, NS_CHUNK);
        if (s->nonblock || (flags & MSG_DONTWAIT))
            cb_double(&ns_args, 0.0);
        else
            cb_nil(&ns_args);
        long r = ns_host("recv", &v, &vend);
        if (r)
            return r;
        ns_take(s, &v);
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

long ns_shutdown(struct ns *s, long how)
{
    if (how < SHUT_RD || how > SHUT_RDWR)
        return -EINVAL;
    if (s->state != NS_CONNECTED)
        return -ENOTCONN;
    if (how != SHUT_WR)
        s->shut_rd = 1;
    if (how == SHUT_RD || s->shut_wr)
        return 0;
    const char *v, *vend;
    s->shut_wr = 1;
    ns_begin(2);
    cb_int(&ns_args, s->handle);
    cb_int(&ns_args, SHUT_WR);
    return ns_host("shutdown", &v, &vend);
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

long ns_getsockopt(struct ns *s, long level, long opt, void *val, socklen_t *len)
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

long ns_setsockopt(long level, long opt)
{
    if (level == IPPROTO_TCP)           /* the host's connection: options are its business */
        return opt == TCP_ULP ? -ENOPROTOOPT : 0;      /* (no kernel TLS) */
    if (level == SOL_SOCKET || level == IPPROTO_IP || level == IPPROTO_IPV6)
        return 0;
    return -ENOPROTOOPT;
}

long ns_name(struct ns *s, struct sockaddr *sa, socklen_t *len, int peer)
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


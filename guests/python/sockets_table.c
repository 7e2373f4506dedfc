/*
 * sockets_table: the Python guest's socket table and its channel to the host (docs/guest-abi.md,
 * "Sockets"; the host side is snapcell/code/egress/sockets.py).
 *
 * Every operation that touches the network is a `CodeTool` call with a reserved name (net.connect,
 * net.send, net.recv, net.poll, net.shutdown, net.flush), decided and performed by the host under
 * the sandbox's network policy. What costs no host call of its own waits for the next one, which
 * carries it first, in this order: closed sockets' handles (the host closes whatever is left when
 * the run ends), deferred connections, and bytes written (up to NS_WPEND in all). So an HTTP
 * request's connect, its send and the poll for its answer are one host call once the host has
 * connected to that destination in this run: the connection is then made by the host when the
 * next call arrives, under the same policy checks, and a failure is that socket's error. The
 * guest never sees a host descriptor, only handle numbers valid during one run.
 */
#define _GNU_SOURCE 1
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sockets.h"
#include "sockets_table.h"

struct ns ns_socks[NS_MAX];
cb_buf ns_args;
size_t ns_wpending;

/* Closed sockets' handles; a deferred connection closed before any host call is still made
 * (then closed): its destination is kept. */
static struct closing { int64_t handle; int deferred; struct sockaddr_storage peer; } closing[NS_MAX];
static int nclosing;
static int net_state;           /* per run: 0 unknown, 1 the sandbox has a network, -errno not */
static int last_errno;
static char last_type[64], last_msg[2048];

/* Destinations the host connected this run, and its bounds as last reported. */
static struct known { int family, port; unsigned char addr[16]; } known[NS_KNOWN];
static int nknown;
static int64_t requests_left, connections_left;
static int64_t next_lazy;

/* ---- errors -------------------------------------------------------------------------------- */

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

static void keep_error(int e, const char *type, size_t tlen, const char *msg, size_t mlen)
{
    last_errno = e;
    snprintf(last_type, sizeof last_type, "%.*s", (int)tlen, type);
    snprintf(last_msg, sizeof last_msg, "%.*s", (int)mlen, msg);
}

int ns_last_error(const char **type, const char **message)
{
    *type = last_type;
    *message = last_msg;
    return last_errno;
}

/* ---- host calls ---------------------------------------------------------------------------- */

static int lazy_new(const struct ns *s)
{
    return s->state == NS_CONNECTED && s->lazy == NS_LAZY_NEW;
}

/* A deferred connection: [handle, [address text, port]]. */
static void put_connect(int64_t handle, const struct sockaddr_storage *peer)
{
    char text[INET6_ADDRSTRLEN] = "";
    int port = 0;
    if (peer->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)peer;
        inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
        port = ntohs(in->sin_port);
    } else {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)peer;
        inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
        port = ntohs(in6->sin6_port);
    }
    cb_array(&ns_args, 2);
    cb_int(&ns_args, handle);
    cb_array(&ns_args, 2);
    cb_str(&ns_args, text, strlen(text));
    cb_int(&ns_args, port);
}

static void put_close(int64_t handle)
{
    cb_array(&ns_args, 2);
    cb_int(&ns_args, handle);
    cb_nil(&ns_args);
}

long ns_host(const char *op, const char **v, const char **vend)
{
    const char *et, *em;
    char name[32] = "net.";
    strncat(name, op, sizeof name - 5);
    last_errno = 0;
    uint32_t n = (uint32_t)nclosing;
    for (int i = 0; i < nclosing; i++)
        n += closing[i].deferred;
    for (int i = 0; i < NS_MAX; i++)
        n += lazy_new(&ns_socks[i]) + (ns_socks[i].state != NS_FREE && ns_socks[i].wlen != 0);
    cb_array(&ns_args, n);
    /* closes, connections (and closes of those closed already), then bytes */
    for (int i = 0; i < nclosing; i++)
        if (!closing[i].deferred)
            put_close(closing[i].handle);
    for (int i = 0; i < nclosing; i++)
        if (closing[i].deferred)
            put_connect(closing[i].handle, &closing[i].peer);
    for (int i = 0; i < NS_MAX; i++) {
        struct ns *s = &ns_socks[i];
        if (lazy_new(s)) {
            put_connect(s->handle, &s->peer);
            s->lazy = NS_LAZY_SENT;
        }
    }
    for (int i = 0; i < nclosing; i++)
        if (closing[i].deferred)
            put_close(closing[i].handle);
    for (int i = 0; i < NS_MAX; i++) {
        struct ns *s = &ns_socks[i];
        if (s->state != NS_FREE && s->wlen) {
            cb_array(&ns_args, 2);
            cb_int(&ns_args, s->handle);
            cb_bin(&ns_args, s->wbuf, s->wlen);
            s->wlen = 0;
        }
    }
    nclosing = 0;
    ns_wpending = 0;
    if (ns_args.oom)
        return -ENOMEM;
    if (cb_call_tool(name, strlen(name), &ns_args, v, vend, &et, &em) == 0)
        return 0;
    keep_error(errno_of(et, em), et, strlen(et), em, strlen(em));
    return -last_errno;
}

void ns_begin(uint32_t n)
{
    cb_reset(&ns_args);
    cb_array(&ns_args, n + 1);
}

struct ns *ns_get(long fd)
{
    if (fd < NS_BASE || fd >= NS_BASE + NS_MAX || ns_socks[fd - NS_BASE].state == NS_FREE)
        return NULL;
    return &ns_socks[fd - NS_BASE];
}

long ns_check_network(void)
{
    if (net_state == 0) {
        const char *v, *vend;
        ns_begin(0);
        long r = ns_host("socket", &v, &vend);
        net_state = r == 0 ? 1 : (int)r;
    }
    return net_state == 1 ? 0 : net_state;
}

void ns_flush(void)
{
    const char *v, *vend;
    ns_begin(0);
    ns_host("flush", &v, &vend);
}

void ns_queue_close(const struct ns *s)
{
    if (nclosing == NS_MAX)                     /* deferred connections opened and closed */
        ns_flush();
    struct closing *c = &closing[nclosing++];
    c->handle = s->handle;
    c->deferred = s->lazy == NS_LAZY_NEW;
    if (c->deferred)
        c->peer = s->peer;
}

/* Whether a deferred connection waits to be made. */
static int connections_waiting(void)
{
    for (int i = 0; i < nclosing; i++)
        if (closing[i].deferred)
            return 1;
    for (int i = 0; i < NS_MAX; i++)
        if (lazy_new(&ns_socks[i]))
            return 1;
    return 0;
}

void ns_run_begin(void)
{
    net_state = 0;
    nclosing = 0;
    ns_wpending = 0;
    nknown = 0;
    requests_left = connections_left = 0;
    next_lazy = NS_LAZY_BASE;
    for (int i = 0; i < NS_MAX; i++) {          /* the host closed every handle at the run's end */
        struct ns *s = &ns_socks[i];
        s->wlen = 0;
        s->lazy = NS_HOST;
        if (s->state == NS_CONNECTING || s->state == NS_CONNECTED) {
            s->state = NS_DEAD;
            s->handle = 0;
        }
    }
}

void ns_run_end(void)
{
    if (ns_wpending || connections_waiting())
        ns_flush();
}

/* ---- read-ahead ---------------------------------------------------------------------------- */

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

void ns_take(struct ns *s, const char **v)
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
    } else if (mp_typeof(**v) == MP_ARRAY && mp_decode_array(v) == 3 && mp_typeof(**v) == MP_UINT) {
        int e = (int)mp_decode_uint(v);         /* a deferred connection failed: why, in words */
        uint32_t tl = 0, ml = 0;
        const char *t = mp_typeof(**v) == MP_STR ? mp_decode_str(v, &tl) : (mp_next(v), "");
        const char *m = mp_typeof(**v) == MP_STR ? mp_decode_str(v, &ml) : (mp_next(v), "");
        s->so_error = e > 0 && e < 4096 ? e : EIO;
        s->eof = 1;
        keep_error(s->so_error, t, tl, m, ml);
    } else {
        mp_next(v);
    }
}

/* ---- deferred connections ------------------------------------------------------------------ */

static int destination(const struct sockaddr *sa, socklen_t len, struct known *k)
{
    memset(k, 0, sizeof *k);
    k->family = sa->sa_family;
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        memcpy(k->addr, &in->sin_addr, 4);
        k->port = ntohs(in->sin_port);
        return 1;
    }
    if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        memcpy(k->addr, &in6->sin6_addr, 16);
        k->port = ntohs(in6->sin6_port);
        return 1;
    }
    return 0;
}

void ns_known_add(const struct sockaddr *sa, socklen_t len)
{
    struct known k;
    if (!destination(sa, len, &k))
        return;
    for (int i = 0; i < nknown; i++)
        if (memcmp(&known[i], &k, sizeof k) == 0)
            return;
    known[nknown < NS_KNOWN ? nknown++ : NS_KNOWN - 1] = k;
}

int ns_may_defer(const struct sockaddr *sa, socklen_t len)
{
    struct known k;
    if (requests_left <= 0 || connections_left <= 0 || !destination(sa, len, &k))
        return 0;
    for (int i = 0; i < nknown; i++)
        if (memcmp(&known[i], &k, sizeof k) == 0)
            return 1;
    return 0;
}

void ns_bounds(int64_t requests, int64_t connections)
{
    requests_left = requests;
    connections_left = connections;
}

int64_t ns_deferred(void)
{
    requests_left--;
    connections_left--;
    return next_lazy++;
}

void ns_released(void)
{
    connections_left++;
}

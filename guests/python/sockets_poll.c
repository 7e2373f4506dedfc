/*
 * sockets_poll: readiness of the Python guest's tunnelled sockets — poll, ppoll, select and
 * pselect6 over any descriptors. What the guest knows (bytes read ahead, the end of a stream,
 * room to write) answers without a host call; otherwise one net.poll asks the host about the
 * sockets that need it, reads ahead from those it finds readable and carries what waits.
 * Files and the standard streams are always ready.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <poll.h>
#include <sys/select.h>

#include "sockets_table.h"

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
long ns_poll(struct pollfd *fds, unsigned long nfds, long timeout_ms)
{
    if (nfds > NS_POLL_MAX)
        return -EINVAL;
    int ready = 0, ask = 0;
    for (unsigned long i = 0; i < nfds; i++) {
        struct ns *s = ns_get(fds[i].fd);
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
    ns_begin(3);
    cb_array(&ns_args, (uint32_t)ask);
    for (unsigned long i = 0; i < nfds; i++) {
        struct ns *s = ns_get(fds[i].fd);
        if (fds[i].fd >= 0 && s && needs_host(s, fds[i].events)) {
            cb_array(&ns_args, 2);
            cb_int(&ns_args, s->handle);
            cb_int(&ns_args, s->state == NS_CONNECTING ? POLLOUT : fds[i].events & (POLLIN | POLLOUT));
        }
    }
    if (timeout_ms < 0)
        cb_nil(&ns_args);
    else
        cb_double(&ns_args, (double)timeout_ms / 1000.0);
    cb_int(&ns_args, NS_CHUNK);
    long r = ns_host("poll", &v, &vend);
    if (r)
        return r;
    if (mp_typeof(*v) != MP_ARRAY || mp_decode_array(&v) != (uint32_t)ask)
        return -EIO;
    for (unsigned long i = 0; i < nfds; i++) {
        struct ns *s = ns_get(fds[i].fd);
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
                else
                    ns_known_add((const struct sockaddr *)&s->peer, s->peerlen);
            } else {
                mp_next(&v);
            }
            fds[i].revents = s->state == NS_CONNECTED ? local_revents(s, fds[i].events) : 0;
        } else {
            ns_take(s, &v);
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
long ns_select(long nfds, fd_set *rd, fd_set *wr, fd_set *ex, long timeout_ms)
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

int ns_any_socket_poll(const struct pollfd *fds, unsigned long n)
{
    if (!fds || n > NS_POLL_MAX)
        return 0;
    for (unsigned long i = 0; i < n; i++)
        if (ns_get(fds[i].fd))
            return 1;
    return 0;
}

int ns_any_socket_set(long nfds, const fd_set *a, const fd_set *b, const fd_set *c)
{
    for (long fd = NS_BASE; fd < NS_BASE + NS_MAX && fd < nfds && fd < FD_SETSIZE; fd++)
        if (ns_get(fd) && ((a && FD_ISSET(fd, a)) || (b && FD_ISSET(fd, b)) || (c && FD_ISSET(fd, c))))
            return 1;
    return 0;
}

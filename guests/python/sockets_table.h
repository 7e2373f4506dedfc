/*
 * sockets_table: what the parts of the Python guest's tunnelled sockets share (sockets.c, the
 * system call entry points; sockets_table.c, the socket table and the host channel;
 * sockets_ops.c, the operations on one socket; sockets_poll.c, poll and select). Not a public
 * interface: python_guest.c uses sockets.h.
 */
#ifndef SOCKETS_TABLE_H
#define SOCKETS_TABLE_H

#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "codebox.h"

#define NS_BASE 128             /* after the file system's descriptors (SC_FS_MAX_FDS) */
#define NS_MAX 64               /* sockets open at once in the guest */
#define NS_CHUNK (256u << 10)   /* bytes per send or read-ahead: well inside the 1 MiB buffers */
#define NS_WPEND (128u << 10)   /* bytes written that may wait for the next host call */
#define NS_POLL_MAX 1024
#define NS_KNOWN 16             /* destinations the host connected this run, remembered */
/* Handles the guest picks for a deferred connection (the host's own are small numbers). */
#define NS_LAZY_BASE ((int64_t)1 << 40)

enum { NS_FREE, NS_NEW, NS_CONNECTING, NS_CONNECTED, NS_DEAD };
/* A connected socket's connection: made by the host (NS_HOST), or deferred (NS_LAZY_NEW: it
 * rides on the next host call, which connects before anything else; NS_LAZY_SENT: handed). */
enum { NS_HOST, NS_LAZY_NEW, NS_LAZY_SENT };

struct ns {
    int state, family, nonblock, cloexec;
    int lazy;
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

extern struct ns ns_socks[NS_MAX];
extern cb_buf ns_args;          /* the arguments of the host call being built */
extern size_t ns_wpending;      /* bytes written, waiting, over all sockets */

/* The socket behind descriptor `fd`, or NULL. */
struct ns *ns_get(long fd);
/* Start the arguments of a host call taking `n` (ns_host() appends what waits, last). */
void ns_begin(uint32_t n);
/* Call net.<op> with ns_args. 0 with the reply's value in [*v, *vend), or -errno (the host's
 * error kept for ns_last_error()). */
long ns_host(const char *op, const char **v, const char **vend);
/* Hand over what waits now (a net.flush). */
void ns_flush(void);
/* Whether the sandbox has a network (asked once per run): 0, or -errno. */
long ns_check_network(void);
/* Take a net.recv / net.poll read-ahead value into `s`: bytes (empty: end of stream), an errno,
 * or [errno, type, message] (a deferred connection that failed). */
void ns_take(struct ns *s, const char **v);

/* Deferred connections: whether `sa` may be connected without a host call now (the host made
 * a connection there this run, and the run's request and connection bounds, as the host last
 * reported them, leave room), and the bookkeeping around one. */
int ns_may_defer(const struct sockaddr *sa, socklen_t len);
void ns_known_add(const struct sockaddr *sa, socklen_t len);
void ns_bounds(int64_t requests_left, int64_t connections_left);
int64_t ns_deferred(void);              /* a deferred connection: its handle */
void ns_released(void);                 /* a connection closed */
/* Queue the connection of `s` to be closed with the next host call (a deferred one never
 * handed is made first). */
void ns_queue_close(const struct ns *s);

/* sockets_ops.c */
long ns_socket(long domain, long type, long proto);
long ns_close(long fd);
long ns_connect(struct ns *s, const struct sockaddr *sa, socklen_t len);
long ns_send(struct ns *s, const struct iovec *iov, size_t niov, int flags);
long ns_recv(struct ns *s, const struct iovec *iov, size_t niov, int flags);
long ns_shutdown(struct ns *s, long how);
long ns_getsockopt(struct ns *s, long level, long opt, void *val, socklen_t *len);
long ns_setsockopt(long level, long opt);
long ns_name(struct ns *s, struct sockaddr *sa, socklen_t *len, int peer);

/* sockets_poll.c */
long ns_poll(struct pollfd *fds, unsigned long nfds, long timeout_ms);
long ns_select(long nfds, fd_set *rd, fd_set *wr, fd_set *ex, long timeout_ms);
int ns_any_socket_poll(const struct pollfd *fds, unsigned long n);
int ns_any_socket_set(long nfds, const fd_set *a, const fd_set *b, const fd_set *c);

#endif

/* sockets: TCP sockets tunnelled through the host (guests/python/sockets.c). */
#ifndef SOCKETS_H
#define SOCKETS_H

/* Install the system call hook (once, in snapcell_main, after the interpreter started). */
void ns_install(void);
/* A run starts: ask the host again whether there is a network; sockets left from an earlier
 * run are dead (the host closed their connections when it ended). */
void ns_run_begin(void);
/* A run ends: hand the bytes still waiting to the host. */
void ns_run_end(void);
/* Wait until socket `fd` is ready to read (or, `writing`, to write), at most `timeout_ms`
 * (-1: no bound), the host waiting: 1 ready, 0 not, -errno (reads no clock). */
long ns_wait(int fd, int writing, long timeout_ms);
/* The errno of the last host call that failed (0: none), with the host's exception type and
 * message (static storage). */
int ns_last_error(const char **type, const char **message);

#endif

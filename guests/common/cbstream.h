/*
 * cbstream: live output for the JS and Lua guests. When the host lists the `_snapcell_output`
 * tool in a Run request (a run with `on_output`, snapcell/code/streaming.py), output written
 * with cbs_write also goes to the host while the code runs, through that tool:
 *   _snapcell_output([[stream(1 stdout | 2 stderr), bytes], ...])
 * each stream's pending bytes when a newline is written to it (or when the other stream is
 * written to, which keeps the two in order), the rest when the run ends (cbs_end). A run
 * whose request does not list the tool, or that prints nothing, makes no call.
 */
#ifndef CBSTREAM_H
#define CBSTREAM_H

#include <stddef.h>
#include <stdint.h>

#include "codebox.h"

#define CBS_TOOL "_snapcell_output"

/* Whether tool `name` is the stream tool (a guest does not offer it to the code). */
int cbs_is_tool(const char *name, uint32_t len);
/* After cb_output_begin: stream this run's output when `req` lists the tool. */
void cbs_begin(const cb_request *req);
/* cb_output_write, streamed (its result: 0, or -1 at the output cap). */
int cbs_write(int stream, const char *p, size_t n);
/* Send what is pending (a partial last line) and stop streaming: before the response. */
void cbs_end(void);

#endif

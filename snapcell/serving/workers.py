"""`snapcell serve --workers N`: N worker processes on one port (docs/serving.md, "Worker
processes").

The supervisor (the process started by the command) binds N listening sockets to the same
address with SO_REUSEPORT — the kernel spreads new connections over them — and one private
Unix socket per worker in a runtime directory of its own (mode 0700), then forks the workers
before anything else starts (no thread, no VM, no event loop exists yet). Each worker is a
whole service: its own event loop, pools, code sandboxes and sessions, serving its TCP socket
and its Unix socket; its sessions are reached from the other workers through that Unix socket
(forward.py). Metrics are kept in files under the runtime directory (prometheus-client's
multiprocess mode), so a scrape of any worker shows the sum of all. Contexts are kept in the
shared context store, which every worker opens (`ServeOptions.contexts`, the same in all).

The supervisor restarts a worker that exits on its own; a worker that fails to start stops
them all (exit status 1). SIGTERM or SIGINT stops every worker gracefully (SIGKILL after
`STOP_GRACE` seconds), then the runtime directory is removed."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from .forward import worker_socket
from .protocol import ConnectionLimits
from .server import announce, bind, prepare, run
from .service import ServeOptions

log = logging.getLogger("uvicorn.error")

STOP_GRACE = 15.0           # seconds a worker has to stop before it is killed
RESTART_PAUSE = 1.0         # seconds between restarts of a worker that keeps exiting
NOT_STARTED = 3             # a worker's exit status when it never served


class _Stop(Exception):
    """SIGTERM or SIGINT reached the supervisor."""


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def serve_workers(options: ServeOptions, host: str, port: int, log_level: str = "warning",
                  limits: ConnectionLimits | None = None, workers: int = 2) -> None:
    """`server.serve` with `workers` worker processes (see the module): until SIGINT/SIGTERM."""
    limits = prepare(options, host, limits)
    sys.exit(supervise(options, host, port, log_level, limits, workers))


def supervise(options: ServeOptions, host: str, port: int, log_level: str,
              limits: ConnectionLimits, workers: int) -> int:
    """Run `workers` worker processes until SIGTERM/SIGINT; the exit status."""
    logging.basicConfig(format="%(levelname)s:     %(message)s")
    runtime = tempfile.mkdtemp(prefix="snapcell-serve-")
    metrics = os.path.join(runtime, "metrics")
    os.mkdir(metrics, 0o700)
    tcp: list[socket.socket] = []
    unix: list[socket.socket] = []
    children: dict[int, tuple[int, float]] = {}        # pid → (worker, started)
    status = 0
    old = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        tcp.append(bind(host, port, reuse_port=True))
        actual = tcp[0].getsockname()[1]
        tcp += [bind(host, actual, reuse_port=True) for _ in range(workers - 1)]
        for i in range(workers):
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            u.bind(worker_socket(runtime, i))
            u.listen(128)
            unix.append(u)
        announce(host, actual, workers)
        for i in range(workers):
            _spawn_recorded(children, i, partial(_spawn, i, options, tcp, unix, runtime, metrics,
                                                 log_level, limits))
        while children:
            pid, code = os.wait()
            worker, started = children.pop(pid)
            _forget(pid, metrics)
            if os.waitstatus_to_exitcode(code) == NOT_STARTED:
                log.error("worker %d did not start: stopping", worker)
                status = 1
                break
            log.warning("worker %d (pid %d) exited (status %d): starting it again", worker, pid,
                        os.waitstatus_to_exitcode(code))
            if time.monotonic() - started < RESTART_PAUSE:
                time.sleep(RESTART_PAUSE)
            _spawn_recorded(children, worker, partial(_spawn, worker, options, tcp, unix, runtime,
                                                      metrics, log_level, limits))
    except _Stop:
        pass
    finally:
        for s in old:
            signal.signal(s, signal.SIG_IGN)      # stopping: no second interruption
        _stop_all(children, metrics)
        for sock in tcp + unix:
            sock.close()
        shutil.rmtree(runtime, ignore_errors=True)
        for s, h in old.items():
            signal.signal(s, h)
    return status


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _spawn_recorded(children: dict[int, tuple[int, float]], worker: int,
                    spawn: Callable[[], int]) -> None:
    """`spawn()` (a `_spawn`) with the stop signals held until the new worker is in
    `children`: a SIGTERM that came between the fork and the record would leave a worker
    nobody stops."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        children[spawn()] = (worker, time.monotonic())
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _spawn(worker: int, options: ServeOptions, tcp: list[socket.socket],
           unix: list[socket.socket], runtime: str, metrics: str, log_level: str,
           limits: ConnectionLimits) -> int:
    """Fork worker `worker`; its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:                                    # the worker: never returns
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)   # held by _spawn_recorded
        for i, sock in enumerate(tcp + unix):
            if i not in (worker, len(tcp) + worker):
                sock.close()
        from .metrics import use_multiprocess
        use_multiprocess(metrics)
        mine = replace(options, worker=worker, workers=len(tcp), runtime_dir=runtime)
        code = 0 if run(mine, [tcp[worker], unix[worker]], log_level, limits) else NOT_STARTED
    except BaseException:
        traceback.print_exc()
        code = NOT_STARTED
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _forget(pid: int, metrics: str) -> None:
    """Drop a dead worker's live gauges (its counters stay in the sums)."""
    from prometheus_client.multiprocess import mark_process_dead
    mark_process_dead(pid, metrics)  # type: ignore[no-untyped-call]


def _stop_all(children: dict[int, tuple[int, float]], metrics: str) -> None:
    """SIGTERM every worker, wait STOP_GRACE seconds, then SIGKILL what is left."""
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_GRACE
    while children:
        for pid in list(children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                del children[pid]
                _forget(pid, metrics)
        if children and time.monotonic() > deadline:
            for pid in children:
                log.warning("worker pid %d did not stop in %g s: killing it", pid, STOP_GRACE)
                os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.02)

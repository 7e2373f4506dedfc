"""`LoopbackCluster`: a real Dask cluster of separate processes on 127.0.0.1 — `dask scheduler`
and `dask worker --no-nanny` processes, dashboards off and their HTTP servers on loopback — for
tests, benchmarks and trying things out on one machine. Each process is ours: started here,
stopped here by pid."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from ..errors import ConfigurationError

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it dies, so that a
    crashed test run or benchmark leaves no cluster behind."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)   # resolved before the fork


def _dask_cli() -> list[str]:
    exe = shutil.which("dask", path=os.path.dirname(sys.executable)) or shutil.which("dask")
    if exe is None:
        raise ConfigurationError("the `dask` command is missing: pip install 'snapcell[dask]'")
    return [exe]


@dataclass
class LoopbackCluster:
    """A scheduler and `workers` workers of `nthreads` threads each, all listening on
    127.0.0.1 only. ``with LoopbackCluster(2) as cluster: Client(cluster.address)``."""

    workers: int = 2
    nthreads: int = 2
    env: dict[str, str] = field(default_factory=dict)
    directory: str = ""
    address: str = ""
    scheduler: subprocess.Popen[bytes] | None = None
    worker_procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _own_dir: bool = False

    def start(self, timeout: float = 60.0) -> "LoopbackCluster":
        """Start the scheduler and the workers; returns when the scheduler is up (workers
        are waited for with `wait_for_workers` on a client)."""
        if not self.directory:
            self.directory = tempfile.mkdtemp(prefix="snapcell-dask-")
            self._own_dir = True
        sched_file = os.path.join(self.directory, "scheduler.json")
        # --no-dashboard alone still opens the HTTP server (/health, /metrics) on 0.0.0.0
        self.scheduler = self._spawn("scheduler", [
            "scheduler", "--host", HOST, "--port", "0", "--no-dashboard",
            "--dashboard-address", f"{HOST}:0", "--scheduler-file", sched_file])
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(sched_file) as f:
                    self.address = json.load(f)["address"]
                break
            except (OSError, ValueError, KeyError):
                pass
            if self.scheduler.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("dask scheduler did not start: " + self.log("scheduler"))
            time.sleep(0.05)
        for i in range(self.workers):
            self.add_worker(f"w{i}")
        return self

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(self.env)
        env.setdefault("DASK_DISTRIBUTED__WORKER__DAEMON", "False")
        with open(os.path.join(self.directory, f"{name}.log"), "wb") as log:
            return subprocess.Popen(_dask_cli() + args, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, cwd=self.directory, start_new_session=True,
                                    preexec_fn=_die_with_parent)

    def add_worker(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start one more worker process called `name` (its pid: `.pid`)."""
        if name in self.worker_procs:
            raise ConfigurationError(f"a worker called {name!r} exists")
        extra = dict(env or {})
        saved, self.env = self.env, {**self.env, **extra}
        try:
            proc = self._spawn(name, ["worker", self.address, "--host", HOST, "--no-nanny",
                                      "--no-dashboard", "--dashboard-address", f"{HOST}:0",
                                      "--nthreads", str(self.nthreads),
                                      "--name", name, "--local-directory",
                                      os.path.join(self.directory, name)])
        finally:
            self.env = saved
        self.worker_procs[name] = proc
        return proc

    def kill_worker(self, name: str) -> None:
        """SIGKILL worker `name` (a crash: no goodbye to the scheduler)."""
        proc = self.worker_procs[name]
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def pids(self) -> list[int]:
        """The pids of the live processes of this cluster."""
        procs = [self.scheduler, *self.worker_procs.values()]
        return [p.pid for p in procs if p is not None and p.poll() is None]

    def log(self, name: str) -> str:
        """The tail of a process's log."""
        try:
            with open(os.path.join(self.directory, f"{name}.log"), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def stop(self, grace: float = 3.0) -> None:
        """Stop the workers and the scheduler: SIGTERM, SIGKILL after `grace` seconds (a worker
        that lost a peer can hang closing its connection pool)."""
        procs = [*self.worker_procs.values(), self.scheduler]
        for p in procs:
            if p is not None and p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace
        for p in procs:
            if p is None:
                continue
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "LoopbackCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""The seam for code sandboxes (`POST /v1/run`, `CodePool.run`).

A backend's `open(lang, files=..., timeout=...)` returns a box with `run(code)`, `close()` and
optionally `kill()` (cancel a run from another thread). The default backend is
`CodeSandboxBackend`: snapcell's own code sandboxes (`snapcell.code.CodeSandbox`) for every
language whose interpreter guest is built. `register_backend(backend)` replaces it. With no
backend (no interpreter guest built, or `register_backend(None)`) every run raises
`CodeSandboxUnavailable` (HTTP 501): nothing is emulated."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ArgumentError, CodeSandboxUnavailable, PoolFull
from .jsonvalues import nonfinite
from .loops import running_loop


class CodeBox(Protocol):
    """One code sandbox, used for one run."""

    def run(self, code: str) -> Any:
        """Run `code`; the result has value, stdout, stderr and error attributes."""

    def close(self) -> None:
        """Release the sandbox."""


class CodeBackend(Protocol):
    """What the code-sandbox package registers."""

    languages: tuple[str, ...]

    def open(self, lang: str, *, files: Mapping[str, str] | None,
             timeout: float | None) -> CodeBox:
        """A fresh box for `lang` with `files` in its file system."""


@dataclass(frozen=True)
class CodeResult:
    """The JSON-able outcome of a run."""

    value: Any
    stdout: str
    stderr: str
    error: dict[str, Any] | str | None
    files: dict[str, Any] = field(default_factory=dict)
    display: list[dict[str, Any]] = field(default_factory=list)
    duration_ms: float = 0.0

    @classmethod
    def of(cls, result: Any) -> "CodeResult":
        """From a backend's result object (the value made JSON-able: bytes as
        {"base64": ...}, non-finite floats as "NaN", "Infinity", "-Infinity"; a CodeError as its
        dict; files as text, or {"base64": ...} when not UTF-8)."""
        err = getattr(result, "error", None)
        if err is not None and not isinstance(err, dict):
            err = err.to_dict() if hasattr(err, "to_dict") else str(err)
        files = {}
        for name, data in (getattr(result, "files", None) or {}).items():
            try:
                files[str(name)] = bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                files[str(name)] = _jsonable(bytes(data))
        return cls(_jsonable(getattr(result, "value", None)),
                   str(getattr(result, "stdout", "") or ""),
                   str(getattr(result, "stderr", "") or ""), err, files,
                   list(getattr(result, "display", None) or []),
                   round(float(getattr(result, "duration", 0.0) or 0.0) * 1000, 3))

    def to_json(self) -> dict[str, Any]:
        """The response body of a run."""
        return {"value": self.value, "stdout": self.stdout, "stderr": self.stderr,
                "error": self.error, "files": self.files, "display": self.display,
                "duration_ms": self.duration_ms}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        import base64
        return {"base64": base64.b64encode(v).decode("ascii")}
    if isinstance(v, float) and not math.isfinite(v):
        return nonfinite(v)         # "NaN", "Infinity", "-Infinity", as calls render them
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


class _Box:
    """A `CodeSandbox` for one run, with the run's files."""

    streams = True          # run takes on_output

    def __init__(self, box: Any, files: Mapping[str, str] | None) -> None:
        self._box, self._files = box, files

    def run(self, code: str, on_output: Callable[[str, str], None] | None = None) -> Any:
        if self._files:
            return self._box.run(code, files=self._files, on_output=on_output)
        return self._box.run(code, on_output=on_output)

    def kill(self) -> None:
        self._box._sb.interrupt_handle().kill()     # noqa: SLF001 (cancel from another thread)

    def close(self) -> None:
        self._box.close()


@dataclass(frozen=True)
class RunEffects:
    """What a run may do outside its sandbox, through host calls: stream its output to a
    caller (`on_output`), reach the network (`network`, a serving.egress.TenantNetwork), call
    tools (the names of the tools its sandbox offers; the service's runs have none)."""

    on_output: Callable[[str, str], None] | None = None
    network: Any = None
    tools: tuple[str, ...] = ()

    @property
    def blocking_host_calls(self) -> tuple[str, ...]:
        """The kinds of host call of this run whose effect reaches outside the sandbox and may
        block ("output", "network", "tools"). A run with any never runs on the event loop's
        thread (`CodePool`): such a call could hold the loop for as long as the other side
        takes, and an attempt cut at the inline budget would be run again after its effect
        happened. Output a run collects into its result is not among them."""
        return tuple(kind for kind, present in (("output", self.on_output is not None),
                                                ("network", self.network is not None),
                                                ("tools", bool(self.tools))) if present)


class CodeSandboxBackend:
    """snapcell's code sandboxes (`snapcell.code`) as the service's backend: one fresh
    `CodeSandbox` per run (from the language's warm snapshot), for every language whose
    interpreter guest is built on this host."""

    def __init__(self) -> None:
        from ..code import LANGUAGES
        from ..errors import ConfigurationError
        built = []
        for name, spec in LANGUAGES.items():
            try:
                spec.guest_path()
            except ConfigurationError:
                continue
            built.append(name)
        self.languages: tuple[str, ...] = tuple(built)
        self._warm: dict[str, Any] = {}          # language → idle CodeSandbox of run_inline
        self._untidy: set[str] = set()           # languages whose box a _tidy will restore

    def open(self, lang: str, *, files: Mapping[str, str] | None,
             timeout: float | None, network: Any = None) -> CodeBox:
        """A fresh code sandbox for `lang` (`network`: a serving.egress.TenantNetwork)."""
        import inspect

        from ..code import CodeSandbox
        from ..code.streaming import StreamingCodeSandbox
        if files and "files" not in inspect.signature(CodeSandbox.run).parameters:
            raise ArgumentError("files are not supported by this build's code sandboxes")
        net = {} if network is None else {"network": network.policy,
                                          "network_observer": network.observer}
        return _Box(StreamingCodeSandbox(lang, timeout=timeout, **net), files)

    def inline_ready(self, lang: str) -> bool:
        """Whether `run_inline` may run `lang` now: its warm snapshot is already in this
        process (making it may take a second)."""
        from ..code.warm import warm_source
        return warm_source(lang) is not None

    def run_inline(self, lang: str, code: str, files: Mapping[str, str] | None,
                   budget: float) -> CodeResult | None:
        """Run `code` on the calling thread with `budget` seconds as its time limit, on this
        backend's warm sandbox of `lang`, which every run finds restored to the language's warm
        snapshot (on an event loop the restore is done in the loop's next pass, after the
        response left; else by the next run first), so a run sees nothing of the one before.
        None when the run outlived the budget (it was killed and its sandbox restored; the
        caller gives only runs without host calls that reach outside,
        `RunEffects.blocking_host_calls`, so nothing of it remains): run it again with its own
        time limit. Output goes to the result only (no streaming)."""
        box = self._warm.pop(lang, None)        # taken while in use (another thread makes its own)
        if box is None:
            from ..code import CodeSandbox
            box = CodeSandbox(lang, timeout=budget)
        try:
            r = box.run(code, files=files, timeout=budget) if files \
                else box.run(code, timeout=budget)
        except BaseException:
            box.close()
            raise
        self._keep(lang, box)       # the next run restores it first, unless _tidy did
        if lang not in self._untidy:
            try:    # on an event loop: restore it after this pass (the response goes first)
                running_loop().call_soon(self._tidy, lang)
                self._untidy.add(lang)
            except RuntimeError:
                pass
        err = r.error
        if err is not None and getattr(err, "type", None) == "TimeoutError" \
                and r.duration >= budget:
            return None
        return CodeResult.of(r)

    def _keep(self, lang: str, box: Any) -> None:
        if self._warm.setdefault(lang, box) is not box:
            box.close()

    def _tidy(self, lang: str) -> None:
        """Restore the warm box of `lang` to the warm snapshot now, off the next run's path
        (runs that came first restored it themselves)."""
        self._untidy.discard(lang)
        box = self._warm.pop(lang, None)
        if box is None:
            return
        try:
            box.reset()
        except BaseException:
            box.close()
            raise
        self._keep(lang, box)

    def close(self) -> None:
        """Release the warm sandboxes of `run_inline` (the next inline run makes new ones)."""
        while self._warm:
            self._warm.popitem()[1].close()


_UNSET: Any = object()
_backend: CodeBackend | None = _UNSET
_lock = threading.Lock()


def register_backend(backend: CodeBackend | None) -> None:
    """Install the code-sandbox backend of this process (None: no backend, runs get 501)."""
    global _backend
    with _lock:
        _backend = backend


def current_backend() -> CodeBackend | None:
    """The registered backend; by default `CodeSandboxBackend` when at least one interpreter
    guest is built, else None."""
    global _backend
    with _lock:
        if _backend is _UNSET:
            default = CodeSandboxBackend()
            _backend = default if default.languages else None
        return _backend


def unavailable() -> CodeSandboxUnavailable:
    """The error of a run without a backend."""
    return CodeSandboxUnavailable(
        "code sandboxes are not available in this build of snapcell: no code-sandbox backend "
        "is installed (POST /v1/run and pool.run(code) need one)")


INLINE_BUDGET = 0.002       # seconds a run may take on the event loop's thread
INLINE_BACKOFF = 0.1        # seconds without inline runs of a language after one outlived it


class CodePool:
    """Runs code in fresh code sandboxes on worker threads, at most `concurrency` at a time and
    `max_queue` waiting (beyond: `PoolFull`). `backend` defaults to the registered one.

    A run first tries the event loop's own thread, when the backend can (`inline_ready` and
    `run_inline`), a worker is free and the run makes no host call that reaches outside its
    sandbox (`RunEffects.blocking_host_calls`: streamed output, network, tools): handing a short run to a
    worker thread and its result back costs more than the run (two thread wake-ups). Such a run is killed at
    `inline_budget` seconds and run again on a worker with what is left of its time limit; when
    it outlives the budget there too (not a scheduling hiccup), the language stays off the
    loop's thread for `INLINE_BACKOFF` seconds: a run never holds the loop for much longer than
    the budget, and code that always outlives it costs the loop at most one budget per
    back-off. `inline_budget=0` turns this off."""

    def __init__(self, backend: CodeBackend | None = None, *, concurrency: int = 2,
                 max_queue: int = 64, inline_budget: float = INLINE_BUDGET) -> None:
        self._backend = backend
        self.concurrency = concurrency
        self.max_queue = max_queue
        self.inline_budget = inline_budget
        self._inline_off: dict[str, float] = {}     # language → monotonic time inline resumes
        self._sem: asyncio.Semaphore | None = None
        self._waiting = 0

    @property
    def backend(self) -> CodeBackend | None:
        """The backend runs go to (the registered one unless given)."""
        return self._backend if self._backend is not None else current_backend()

    async def run(self, code: str, *, lang: str | None = None,
                  files: Mapping[str, str] | None = None,
                  timeout: float | None = None,
                  on_output: Callable[[str, str], None] | None = None,
                  network: Any = None) -> CodeResult:
        """Run `code` in a fresh `lang` sandbox (default: the backend's first language);
        `CodeSandboxUnavailable` without a backend. `on_output(stream, text)` (called on a
        worker thread) receives stdout and stderr while the code runs, when the backend
        streams (else once, at the end). `network` (serving.egress.TenantNetwork) lets the
        code reach what its policy allows."""
        backend = self.backend
        if backend is None:
            raise unavailable()
        if lang is None and backend.languages:
            lang = backend.languages[0]
        if not isinstance(code, str) or not isinstance(lang, str):
            raise ArgumentError("code and lang must be strings")
        if lang not in backend.languages:
            raise ArgumentError(f"unknown language {lang!r}; this service runs "
                                + ", ".join(backend.languages))
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.concurrency)
        limit = timeout
        inline = getattr(backend, "run_inline", None)
        ready = getattr(backend, "inline_ready", None)
        overran = False
        if inline is not None and ready is not None \
                and not RunEffects(on_output=on_output, network=network).blocking_host_calls \
                and self.inline_budget > 0 and not self._sem.locked() and ready(lang) \
                and self._inline_off.get(lang, 0.0) <= (now := time.monotonic()) \
                and (timeout is None or timeout > self.inline_budget):
            quick: CodeResult | None = inline(lang, code, files, self.inline_budget)
            if quick is not None:
                return quick
            overran = True
            if timeout is not None and limit is not None:
                timeout -= time.monotonic() - now
                if timeout <= 0:
                    return CodeResult(None, "", "", _timed_out(limit), duration_ms=limit * 1000)
        if self._sem.locked() and self._waiting >= self.max_queue:
            raise PoolFull("the code pool is full; retry later")
        self._waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self._waiting -= 1
        box: list[CodeBox] = []

        def work() -> CodeResult:
            net = {} if network is None else {"network": network}
            b = backend.open(lang, files=files, timeout=timeout, **net)
            box.append(b)
            try:
                if on_output is not None and getattr(b, "streams", False):
                    return CodeResult.of(b.run(code, on_output=on_output))  # type: ignore[call-arg]
                r = CodeResult.of(b.run(code))
                if on_output is not None:
                    for stream, text in (("stdout", r.stdout), ("stderr", r.stderr)):
                        if text:
                            on_output(stream, text)
                return r
            finally:
                b.close()
        try:
            done: CodeResult = await asyncio.get_running_loop().run_in_executor(None, work)
            if overran and done.duration_ms >= self.inline_budget * 1000:   # not a hiccup
                self._inline_off[lang] = time.monotonic() + INLINE_BACKOFF
                err = done.error
                if limit is not None and timeout is not None and isinstance(err, dict) \
                        and err.get("type") == "TimeoutError" \
                        and done.duration_ms >= timeout * 1000:     # cut at its limit
                    done = dataclasses.replace(done, error={**err, **_timed_out(limit)})
            return done
        except asyncio.CancelledError:
            kill = getattr(box[0], "kill", None) if box else None
            if kill is not None:
                kill()
            raise
        finally:
            self._sem.release()


def _timed_out(limit: float) -> dict[str, Any]:
    """The error of a run cut at its time limit, as `CodeSandbox` words it."""
    return {"type": "TimeoutError", "message": f"the run exceeded its time limit of {limit} s",
            "stack": "", "line": 0}


_shared: CodePool | None = None


def shared_pool() -> CodePool:
    """The process-wide CodePool behind `SandboxPool.run`."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = CodePool()
        return _shared

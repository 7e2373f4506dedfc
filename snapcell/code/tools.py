"""The tools of a code sandbox: checking the mapping given, and `ToolDispatcher`, the
`CodeTool` host function that calls them — by position or keyword, `async def` tools awaited,
every call bounded by the run's deadline."""

from __future__ import annotations

import inspect
import os
import queue
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgpack

from ..errors import ArgumentError
from .netops import OP_PREFIX, NetworkOperations, RunTimeLimitPassed, builtin_name
from .validate import Invalid, decode_tool_call

if TYPE_CHECKING:                    # asyncio: imported when a worker thread first starts
    import asyncio

TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
MAX_TOOLS = 64
Tool = Callable[..., Any]
_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_forks = [0]      # bumped in a forked child: a worker thread of the parent does not exist there


def _forked() -> None:
    _forks[0] += 1


os.register_at_fork(after_in_child=_forked)


def check_tools(tools: Mapping[str, Tool] | None) -> dict[str, Tool]:
    """Validate a tools mapping (names usable as identifiers, values callable)."""
    if tools is None:
        return {}
    if not isinstance(tools, Mapping):
        raise ArgumentError(f"tools must be a mapping of names to callables, got "
                            f"{type(tools).__name__}")
    if len(tools) > MAX_TOOLS:
        raise ArgumentError(f"at most {MAX_TOOLS} tools, got {len(tools)}")
    out = {}
    for name, fn in tools.items():
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise ArgumentError(f"tool name {name!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*, "
                                "at most 64 characters)")
        if not callable(fn):
            raise ArgumentError(f"tool {name!r} is not callable")
        out[name] = fn
    return out


def object_as_keywords(fn: Tool, args: list[Any]) -> dict[str, Any] | None:
    """For languages without keyword arguments (JS, Lua): a call with one plain object whose
    keys all name parameters of `fn` that take keywords, and that binds that way, is a call by
    keyword (``search({query: 'kvm'})`` → ``search(query='kvm')``); None otherwise."""
    if len(args) != 1 or type(args[0]) is not dict or not args[0]:
        return None
    obj = args[0]
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    names = {p.name for p in sig.parameters.values() if p.kind in _KEYWORD_KINDS}
    if not all(type(k) is str and k in names for k in obj):
        return None
    try:
        sig.bind(**obj)
    except TypeError:
        return None
    return obj


class ToolTimeout(Exception):
    """The run's deadline passed while a tool ran."""


class _Job:
    """One tool call handed to a worker thread."""

    __slots__ = ("fn", "args", "kwargs", "done", "value", "error", "loop", "task")

    def __init__(self, fn: Tool, args: list[Any], kwargs: dict[str, Any]) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.done = threading.Lock()            # held until the call finished (cheaper than an Event)
        self.done.acquire()
        self.value: Any = None
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None


class _Worker:
    """A daemon thread running tool calls one after another, with an event loop for `async`
    tools. Abandoned when a call outlives its deadline: it finishes that call, drops the result
    and exits; the dispatcher starts a new worker for the next call."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        import asyncio
        self.fork = _forks[0]
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self._serve, name="snapcell-tool", daemon=True).start()

    def _serve(self) -> None:
        import asyncio
        asyncio.set_event_loop(self.loop)
        try:
            while (job := self.jobs.get()) is not None:
                try:
                    value = job.fn(*job.args, **job.kwargs)
                    if inspect.isawaitable(value):
                        job.loop = self.loop
                        job.task = self.loop.create_task(_awaited(value))
                        value = self.loop.run_until_complete(job.task)
                    job.value = value
                except BaseException as e:  # noqa: BLE001  (handed to the calling thread)
                    job.error = e
                job.done.release()
        finally:
            self.loop.close()

    def run(self, job: _Job, timeout: float | None) -> bool:
        """Run `job`; False when it did not finish within `timeout` seconds (the worker is then
        abandoned and an `async` tool's task cancelled)."""
        self.jobs.put(job)
        if job.done.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return True
        self.jobs.put(None)                       # exit after the call in progress
        loop, task = job.loop, job.task
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:                  # the loop closed meanwhile
                pass
        return False


async def _awaited(value: Any) -> Any:
    return await value


class ToolDispatcher:
    """The `CodeTool` host function of one code sandbox: decodes and checks the call
    ([name, [args]] or [name, [args], {keywords}]), calls the tool, encodes [0, value] or
    [1, type, message]. Never raises: every failure is a reply the code sees as a language
    exception.

    `begin(deadline, cancel)` before each run bounds the run's tool calls: a call then runs on
    a worker thread and the dispatcher waits at most until the deadline. A tool still running
    then is abandoned (its thread runs on until the tool returns; the result is dropped), an
    `async` tool's task is cancelled, `expired` is set and `cancel()` ends the run."""

    def __init__(self, tools: dict[str, Tool], max_reply: int,
                 object_keywords: bool = False, network: NetworkOperations | None = None) -> None:
        self.tools = tools
        self.network = network
        self.max_reply = max_reply
        self.object_keywords = object_keywords
        self.calls = 0
        self.expired = False
        self._deadline: float | None = None
        self._cancel: Callable[[], object] | None = None
        self._worker: _Worker | None = None

    def begin(self, deadline: float | None, cancel: Callable[[], object] | None = None) -> None:
        """A run starts: its tool calls end by `deadline` (time.monotonic(); None = no bound);
        `cancel` is called when one does not."""
        self._deadline, self._cancel, self.expired = deadline, cancel, False

    def __call__(self, request: bytes) -> bytes:
        """Serve one tool call."""
        self.calls += 1
        try:
            name, args, kwargs = decode_tool_call(request)
        except Invalid as e:
            return _error("ToolError", f"malformed tool call: {e}")
        if name.startswith(OP_PREFIX):       # reserved: never an identifier, so never a tool
            return self._network(name, args)
        fn = self.tools.get(name)
        if fn is None:
            return _error("ToolError", f"no tool named {name!r}")
        if not kwargs and self.object_keywords:
            kwargs = object_as_keywords(fn, args) or {}
            if kwargs:
                args = []
        try:
            value = self._invoke(fn, args, kwargs)
        except ToolTimeout:
            return self._expire(f"the run's time limit passed while tool {name!r} ran")
        except Exception as e:   # the code sees the tool's failure as an exception
            return _error(type(e).__name__, str(e))
        try:
            reply: bytes = msgpack.packb([0, value], use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as e:
            return _error("ToolError", f"the tool returned a value that cannot be passed to "
                                       f"the code: {e}")
        if len(reply) > self.max_reply:
            return _error("ToolError", f"the tool's result takes {len(reply)} bytes; at most "
                                       f"{self.max_reply} fit")
        return reply

    def _network(self, name: str, args: list[Any]) -> bytes:
        """A ``net.*`` operation of the egress session (egress/), on the calling thread: each
        operation bounds its own waits by the run's deadline."""
        if self.network is None:
            return _error("PermissionError", "this sandbox has no network: its network policy "
                                             "allows no destination")
        try:
            value = self.network.handle(name, args)
        except RunTimeLimitPassed as e:
            return self._expire(str(e))
        except Exception as e:       # the code sees it as the builtin error it derives from
            return _error(builtin_name(e), str(e))
        reply: bytes = msgpack.packb([0, value], use_bin_type=True)
        return reply

    def _expire(self, message: str) -> bytes:
        """The run's deadline passed during a host call: end the run (its TimeoutError)."""
        self.expired = True
        if self._cancel is not None:
            self._cancel()
        return _error("TimeoutError", message)

    def _invoke(self, fn: Tool, args: list[Any], kwargs: dict[str, Any]) -> Any:
        deadline = self._deadline
        if deadline is None and not inspect.iscoroutinefunction(fn):
            value = fn(*args, **kwargs)
            if not inspect.isawaitable(value):
                return value
            fn, args, kwargs = _awaited, [value], {}
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise ToolTimeout
        worker = self._worker
        if worker is None or worker.fork != _forks[0]:
            worker = self._worker = _Worker()
            weakref.finalize(self, worker.jobs.put, None)     # no thread outlives its sandbox
        job = _Job(fn, args, kwargs)
        if not worker.run(job, remaining):
            self._worker = None
            raise ToolTimeout
        if job.error is not None:
            if isinstance(job.error, Exception):
                raise job.error
            raise RuntimeError(f"the tool raised {type(job.error).__name__}")
        return job.value

    def close(self) -> None:
        """Stop the worker thread (it exits once idle)."""
        if self._worker is not None:
            self._worker.jobs.put(None)
            self._worker = None


def _error(type_: str, message: str) -> bytes:
    out: bytes = msgpack.packb([1, type_, message[:4000]], use_bin_type=True)
    return out

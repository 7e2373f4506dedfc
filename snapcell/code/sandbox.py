"""`CodeSandbox`: run code in a micro-VM, each run from a snapshot of the warm interpreter."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import (
    ArgumentError,
    ConfigurationError,
    ExecutionCancelled,
    ExecutionTimeout,
    GuestError,
    GuestOutputError,
    PoisoningError,
    SandboxClosedError,
)
from ..guest.abi import FRAME_HEADER
from ..sandbox import MultiUseSandbox, SandboxStatus, Snapshot
from .languages import Language, language
from .protocol import ToolDispatcher, check_files, check_tools, decode_response, encode_request
from .result import CodeError, RunResult
from .warm import (
    LAYOUT,
    MAX_FILES_OUT,
    MAX_MEMORY_LIMIT,
    MAX_OUTPUT,
    MIB,
    tool_host_functions,
    warm_snapshot,
)

if TYPE_CHECKING:                      # egress: imported by a sandbox given a network policy
    from .egress import EgressObserver, EgressSession, NetworkPolicy, Resolver

_NO_TIMEOUT: Any = object()


def _positive(name: str, v: Any, maximum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigurationError(f"{name} must be a positive int, got {v!r}")
    if maximum is not None and v > maximum:
        raise ConfigurationError(f"{name} must be at most {maximum}, got {v}")
    return v


def _timeout(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds or None, got {v!r}")
    return float(v)


class CodeSandbox:
    """A JavaScript (``"js"``, QuickJS-ng), Lua (``"lua"``, 5.4) or Python (``"python"``,
    CPython 3.11 with its standard library) sandbox::

        with CodeSandbox("js", tools={"search": search}, timeout=1.0) as box:
            r = box.run("const hits = search('kvm'); console.log(hits.length); hits[0]")
            r.value, r.stdout, r.stderr, r.error

    Every `run` starts from the base snapshot — the warm interpreter of the language, or the
    `snapshot` given — so nothing one run does is seen by the next. With ``keep_state=True``
    runs continue in the same interpreter (a REPL session); a run cut by its time limit or a
    crash then resets the session to the base snapshot. `snapshot()` captures the session for
    forking: ``CodeSandbox("js", snapshot=s, keep_state=True)``.

    Limits per run: `timeout` seconds (None = none), `memory_limit` bytes of interpreter heap
    (exhaustion is the language's out-of-memory error), `max_output` bytes of stdout+stderr
    (writing more raises an output-limit error in the code). Tools are Python callables taking
    and returning JSON-like values (None, bool, int, float, str, bytes, list, dict), visible in
    the code as global functions; a tool that raises is an exception in the code.

    Python sandboxes have a file system: the standard library read-only and a scratch /tmp (the
    working directory). ``run(code, files={"data.csv": b"..."})`` puts files there first and
    ``r.files`` holds the files the run wrote, up to `max_files_out` bytes in all.
    ``image="LAYOUT:TAG"`` (or ``"host/repo@sha256:..."``, pulled once) runs Python on a
    package image (`snapcell image build`): PyPI's musllinux wheels, preloaded and sealed W^X.

    No network unless ``network=NetworkPolicy(allow=[...])`` allows destinations (see
    docs/code-sandboxes.md); the host decides every connection, resolving names with `resolver`
    (the host's resolver by default), and closes what a run opened when it ends;
    `network_observer(event, destination, nbytes)` sees every egress event (for metrics)."""

    def __init__(self, lang: str, tools: Mapping[str, Any] | None = None, *,
                 timeout: float | None = 5.0, memory_limit: int = 64 * MIB,
                 max_output: int = 1 * MIB, keep_state: bool = False,
                 snapshot: Snapshot | None = None, filename: str | None = None,
                 max_files_out: int = 1 * MIB, image: str | None = None,
                 network: NetworkPolicy | None = None, resolver: Resolver | None = None,
                 network_observer: EgressObserver | None = None) -> None:
        self.language: Language = language(lang)
        self.max_files_out = _positive("max_files_out", max_files_out, MAX_FILES_OUT)
        self.timeout = _timeout(timeout)
        self.memory_limit = _positive("memory_limit", memory_limit, MAX_MEMORY_LIMIT)
        self.max_output = _positive("max_output", max_output, MAX_OUTPUT)
        self.keep_state = bool(keep_state)
        self.filename = filename or self.language.filename
        if not isinstance(self.filename, str) or not 0 < len(self.filename.encode()) < 100:
            raise ConfigurationError("filename must be a non-empty string of under 100 bytes")
        self._tools = check_tools(tools)
        self._tool_names = sorted(self._tools)
        self._network: EgressSession | None = None
        if network is not None:
            from .egress import EgressSession, NetworkPolicy
            if not isinstance(network, NetworkPolicy):
                raise ConfigurationError(f"network must be a NetworkPolicy, got "
                                         f"{type(network).__name__}")
            if network.enabled:
                self._network = EgressSession(network, resolver, network_observer,
                                              label=self.language.name)
        self._dispatch = ToolDispatcher(self._tools, LAYOUT.input_size - 64,
                                        object_keywords=not self.language.keywords,
                                        network=self._network)
        if snapshot is not None and not isinstance(snapshot, Snapshot):
            raise TypeError(f"snapshot must be a Snapshot, got {type(snapshot).__name__}")
        if image is not None:              # a package image (docs/code-sandboxes.md)
            if self.language.name != "python" or snapshot is not None:
                raise ConfigurationError("image= is for Python sandboxes, without snapshot=")
            from .image_store import image_snapshot
            snapshot = image_snapshot(image)
        self._base = snapshot if snapshot is not None else warm_snapshot(self.language)
        self._sb = MultiUseSandbox.from_snapshot(self._base,
                                                 host_functions=tool_host_functions(self._dispatch))
        self._dirty = False

    # ---------------------------------------------------------------- running code
    @property
    def tools(self) -> dict[str, Any]:
        """The tools (name → callable) the code can call."""
        return dict(self._tools)

    @property
    def network(self) -> NetworkPolicy | None:
        """The network policy (None: no network)."""
        return None if self._network is None else self._network.policy

    @property
    def tool_calls(self) -> int:
        """How many tool calls the code made in this sandbox so far."""
        return self._dispatch.calls

    def run(self, code: str | bytes, *, timeout: Any = _NO_TIMEOUT,
            files: Mapping[str, bytes | str] | None = None) -> RunResult:
        """Run `code`; returns a RunResult whose `error` is set when the code failed (a
        language exception, the time or memory limit, a crash of the interpreter). The sandbox
        is usable afterwards in every case. `timeout` overrides the sandbox's for this run;
        `files` (Python) are written under /tmp before the code runs."""
        if not isinstance(code, (str, bytes)):
            raise ArgumentError(f"code must be str or bytes, got {type(code).__name__}")
        if files is not None and not self.language.has_files:
            raise ArgumentError(f"{self.language.display} sandboxes have no file system; "
                                "files= is for Python")
        in_files = check_files(files) if self.language.has_files else None
        limit = self.timeout if timeout is _NO_TIMEOUT else _timeout(timeout)
        sb = self._sb
        if sb.status is SandboxStatus.CLOSED:
            raise SandboxClosedError("the code sandbox is closed")
        request = encode_request(code, self._tool_names, self.max_output, self.memory_limit,
                                 self.filename, in_files, self.max_files_out)
        if len(request) + FRAME_HEADER + 64 > LAYOUT.input_size:
            raise ArgumentError(f"code and files of {len(request)} bytes do not fit the "
                                f"{LAYOUT.input_size}-byte input buffer")
        if self._dirty and not self.keep_state:
            sb.restore(self._base)
        self._dirty = True
        start = time.perf_counter()
        dispatch = self._dispatch
        deadline = None if limit is None else time.monotonic() + limit
        if self._tools or self._network is not None:
            dispatch.begin(deadline, sb.interrupt_handle().kill)
        if self._network is not None:
            self._network.begin(deadline)
        try:
            raw = sb.call("Run", request, timeout=limit)
        except ExecutionCancelled as e:
            if isinstance(e, ExecutionTimeout) or dispatch.expired:
                return self._failed("TimeoutError",
                                    f"the run exceeded its time limit of {limit} s", start)
            return self._failed("InternalError", f"the run was cancelled: {e}", start)
        except PoisoningError as e:
            return self._failed("InternalError", f"the interpreter crashed: {e}", start)
        except GuestError as e:
            return RunResult(error=CodeError("InternalError", e.message, "", 0,
                                             self.language.name),
                             duration=time.perf_counter() - start)
        finally:
            if self._network is not None:
                self._network.end()       # nothing a run opened outlives it
        try:
            result = decode_response(raw, self.language.name, self.max_output,
                                     None if in_files is None else self.max_files_out)
        except GuestOutputError as e:
            return self._failed("InternalError",
                                f"the interpreter guest returned an invalid result: {e}", start)
        result.duration = time.perf_counter() - start
        return result

    def _failed(self, type_: str, message: str, start: float) -> RunResult:
        """The run was cancelled or crashed: the state is gone; back to the base snapshot."""
        duration = time.perf_counter() - start
        self._sb.restore(self._base)
        self._dirty = False
        return RunResult(error=CodeError(type_, message, "", 0, self.language.name),
                         duration=duration)

    # ---------------------------------------------------------------- state
    def snapshot(self) -> Snapshot:
        """The interpreter's current state (after the last run) as a Snapshot, to start other
        code sandboxes from (``CodeSandbox(lang, snapshot=s)``) or to `restore` later."""
        if not self._dirty:
            return self._base
        return self._sb.snapshot()

    def restore(self, snapshot: Snapshot) -> None:
        """Make `snapshot` (from `snapshot()` of a sandbox of this language) the current state."""
        self._sb.restore(snapshot)
        self._dirty = True if self.keep_state else snapshot is not self._base
        if not self.keep_state:
            self._base = snapshot
            self._dirty = False

    def reset(self) -> None:
        """Back to the base snapshot (the warm interpreter unless another was given)."""
        self._sb.restore(self._base)
        self._dirty = False

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Release the micro-VM (and the tools' worker thread). Idempotent."""
        if self._network is not None:
            self._network.end()
        self._dispatch.close()
        self._sb.close()

    def __enter__(self) -> "CodeSandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "keep-state" if self.keep_state else "fresh"
        return (f"<CodeSandbox {self.language.name} {mode} tools={self._tool_names} "
                f"{self._sb.status.value}>")

"""Streamed output: stdout and stderr reach the host while the code runs.

The Python runner sends its output line by line to the `_snapcell_output` tool when a run
lists that tool (guests/python/_snapcell_runner.py); a run that does not list it — every run
without `on_output` — costs exactly what it did before. JavaScript and Lua deliver their
output to `on_output` when the run ends."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..sandbox import Snapshot
from .result import RunResult
from .sandbox import CodeSandbox

STREAM_TOOL = "_snapcell_output"
STREAMS = {1: "stdout", 2: "stderr"}
OnOutput = Callable[[str, str], None]
_LIVE = frozenset({"python"})          # languages whose runner streams while running


class _Relay:
    """The host end of the stream tool: hands each chunk to the current callback."""

    def __init__(self) -> None:
        self.callback: OnOutput | None = None
        self.sent = 0

    def __call__(self, chunks: Any) -> None:
        """[[stream, text], ...] from the runner (untrusted: anything else is ignored)."""
        cb = self.callback
        if cb is None or not isinstance(chunks, list):
            return
        for item in chunks:
            if isinstance(item, list) and len(item) == 2 and item[0] in STREAMS \
                    and isinstance(item[1], str) and item[1]:
                self.sent += len(item[1])
                cb(STREAMS[item[0]], item[1])


class StreamingCodeSandbox(CodeSandbox):
    """A `CodeSandbox` whose `run` takes `on_output(stream, text)`: called with chunks of
    stdout ("stdout") and stderr ("stderr") while the code runs (Python: line by line; JS and
    Lua: once, when the run ends). The chunks add up to the result's stdout and stderr."""

    def __init__(self, lang: str, tools: Mapping[str, Any] | None = None,
                 **options: Any) -> None:
        self._relay = _Relay()
        super().__init__(lang, {**(tools or {}), STREAM_TOOL: self._relay}, **options)
        self._quiet_names = [n for n in self._tool_names if n != STREAM_TOOL]
        self._tool_names = self._quiet_names

    def run(self, code: str | bytes, *, on_output: OnOutput | None = None,
            **options: Any) -> RunResult:
        """`CodeSandbox.run`, streaming output to `on_output` when given."""
        if on_output is None:
            return super().run(code, **options)
        live = self.language.name in _LIVE
        if live:
            self._relay.callback, self._relay.sent = on_output, 0
            self._tool_names = [*self._quiet_names, STREAM_TOOL]
        try:
            r = super().run(code, **options)
        finally:
            self._relay.callback = None
            self._tool_names = self._quiet_names
        if not live or (self._relay.sent == 0 and r.error is not None):
            # (a run cut by its time limit or a crash has no streamed output to repeat)
            for stream, text in (("stdout", r.stdout), ("stderr", r.stderr)):
                if text:
                    on_output(stream, text)
        return r

    def load_pages(self, fd: int, extents: Sequence[tuple[int, int]], base: Snapshot) -> None:
        """Make the state the one this sandbox was started from (a checkpoint's CPU state on
        the interpreter image `base`) with the `extents` of a diff layer's data in file `fd`
        read over it (`MultiUseSandbox.load_pages`); `base` becomes the snapshot a failed run
        goes back to, and `snapshot()` holds the pages read."""
        self._sb.load_pages(fd, extents)
        self._base, self._dirty = base, True

    def diff_snapshot(self) -> Snapshot:
        """`snapshot()` for saving as a diff: its image stays layered on the image this
        sandbox maps however scattered the changed pages (never a copy of that image); start
        sandboxes from `snapshot()`'s instead."""
        if not self._dirty:
            return self._base
        return self._sb.snapshot(max_pieces=1 << 30)

    def __enter__(self) -> "StreamingCodeSandbox":
        return self

    @property
    def tools(self) -> dict[str, Any]:
        """The tools the code can call."""
        return {k: v for k, v in super().tools.items() if k != STREAM_TOOL}

"""Streamed output: stdout and stderr reach the host while the code runs.

Every interpreter guest sends its output to the `_snapcell_output` tool when a run lists that
tool: the Python runner line by line as text (guests/python/_snapcell_runner.py), JavaScript
and Lua line by line as bytes (guests/common/cbstream.c), decoded here as the result's output
is (UTF-8, invalid bytes replaced, a character split between chunks kept whole). A run that
does not list the tool — every run without `on_output` — costs exactly what it did before,
and so does a run that prints nothing."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..sandbox import Snapshot
from .result import RunResult
from .sandbox import CodeSandbox

STREAM_TOOL = "_snapcell_output"
STREAMS = {1: "stdout", 2: "stderr"}
OnOutput = Callable[[str, str], None]


class _Relay:
    """The host end of the stream tool: hands each chunk to the current callback."""

    def __init__(self) -> None:
        self.callback: OnOutput | None = None
        self.sent = 0
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}

    def start(self, callback: OnOutput) -> None:
        """A run begins: chunks go to `callback`."""
        self.callback, self.sent = callback, 0
        self._decoders = {}            # (made for the first bytes of a stream)

    def end(self) -> None:
        """The run ended: the rest of a character split at its end, then no callback."""
        cb, self.callback = self.callback, None
        for name, dec in self._decoders.items():
            tail = dec.decode(b"", final=True)
            if tail and cb is not None:
                self.sent += len(tail)
                cb(name, tail)

    def __call__(self, chunks: Any) -> None:
        """[[stream, text or bytes], ...] from the guest (untrusted: anything else is
        ignored)."""
        cb = self.callback
        if cb is None or not isinstance(chunks, list):
            return
        for item in chunks:
            if not (isinstance(item, list) and len(item) == 2 and item[0] in STREAMS):
                continue
            name, data = STREAMS[item[0]], item[1]
            if isinstance(data, bytes):
                dec = self._decoders.get(name)
                if dec is None:
                    dec = self._decoders[name] = codecs.getincrementaldecoder("utf-8")("replace")
                data = dec.decode(data)
            if isinstance(data, str) and data:
                self.sent += len(data)
                cb(name, data)


class StreamingCodeSandbox(CodeSandbox):
    """A `CodeSandbox` whose `run` takes `on_output(stream, text)`: called with chunks of
    stdout ("stdout") and stderr ("stderr") while the code runs (line by line, and what
    follows the last newline when the run ends). The chunks add up to the result's stdout and
    stderr."""

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
        self._relay.start(on_output)
        self._tool_names = [*self._quiet_names, STREAM_TOOL]
        try:
            r = super().run(code, **options)
        finally:
            self._relay.end()
            self._tool_names = self._quiet_names
        if self._relay.sent == 0 and r.error is not None:
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

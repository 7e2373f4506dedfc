"""The Python side of a snapcell code-sandbox run (guests/python/python_guest.c calls `run`).

Imported once while the guest initialises, so it and the warm modules below are in the warm
snapshot. A run executes the code in __main__'s namespace (fresh in every sandbox: the host
restores the snapshot between runs unless the session keeps its state); the value of a final
expression statement is the result, as in the interactive interpreter.
"""

import ast
import base64
import builtins
import collections  # noqa: F401  (the warm set)
import dataclasses  # noqa: F401
import datetime  # noqa: F401
import decimal  # noqa: F401
import functools  # noqa: F401
import heapq  # noqa: F401  (Counter.most_common(n) imports it on first use)
import io
import itertools  # noqa: F401
import json
import linecache
import math  # noqa: F401
import os
import random
import re
import statistics  # noqa: F401
import string  # noqa: F401
import sys
import textwrap  # noqa: F401
import traceback

import _snapcell
import _snapcell_sandbox as _sandbox

_sandbox.install()
_main = sys.modules["__main__"].__dict__
_HERE = __file__


class OutputLimitError(Exception):
    """stdout + stderr went past the run's output limit."""


class ToolError(Exception):
    """A tool call that could not be made (unknown tool, bad reply)."""


builtins.OutputLimitError = OutputLimitError
builtins.ToolError = ToolError

# Rich output (IPython's display protocol): `display(obj)` and a last value with `_repr_*_`
# methods become MIME bundles, handed to the host as this file among the run's files
# (snapcell/code/result.py takes it out of them).
_DISPLAY_FILE = "/tmp/.snapcell/display.json"
_REPRS = (("text/html", "_repr_html_"), ("text/markdown", "_repr_markdown_"),
          ("image/svg+xml", "_repr_svg_"), ("image/png", "_repr_png_"),
          ("image/jpeg", "_repr_jpeg_"), ("application/json", "_repr_json_"))
_displays = []


def _bundle(obj):
    """The MIME bundle of `obj`: its `_repr_*_` outputs plus text/plain; None without any."""
    bundle = {}
    for mime, name in _REPRS:
        method = getattr(type(obj), name, None)
        if method is None:
            continue
        try:
            data = method(obj)
        except Exception:
            continue
        if isinstance(data, tuple) and len(data) == 2:
            data = data[0]                     # (data, metadata)
        if data is None:
            continue
        if mime in ("image/png", "image/jpeg"):
            if isinstance(data, str):
                data = data.encode("ascii", "replace")
                try:
                    base64.b64decode(data, validate=True)
                except ValueError:
                    continue
                bundle[mime] = data.decode("ascii")
            elif isinstance(data, (bytes, bytearray)):
                bundle[mime] = base64.b64encode(bytes(data)).decode("ascii")
        elif mime == "application/json":
            try:
                json.dumps(data)
            except (TypeError, ValueError):
                continue
            bundle[mime] = data
        elif isinstance(data, str):
            bundle[mime] = data
    if not bundle:
        return None
    try:
        bundle["text/plain"] = repr(obj)
    except Exception:
        pass
    return bundle


def display(*objs):
    """Show `objs` as rich output of this run (their `_repr_*_` MIME bundles)."""
    for obj in objs:
        bundle = _bundle(obj) or {"text/plain": obj if isinstance(obj, str) else repr(obj)}
        _displays.append(bundle)


builtins.display = display


def _flush_display(value):
    """Write this run's bundles (the `display()` calls, then the last value's) for the host;
    True when the value had a bundle of its own."""
    bundle = _bundle(value) if value is not None else None
    if bundle is not None:
        _displays.append(bundle)
    if not _displays:
        return False
    try:
        os.makedirs("/tmp/.snapcell", exist_ok=True)
        with open(_DISPLAY_FILE, "w") as f:
            json.dump(_displays, f)
    except (OSError, TypeError, ValueError):
        pass
    _displays.clear()
    return bundle is not None


def _open_figures(show):
    """Figures the run left open in matplotlib.pyplot become PNG bundles when `show` (as a
    notebook shows them at the end of a cell), and are closed either way. Nothing happens unless
    the code imported pyplot."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    try:
        numbers = plt.get_fignums()
    except Exception:
        return
    for n in numbers:
        try:
            if show:
                fig = plt.figure(n)
                buf = io.BytesIO()
                fig.savefig(buf, format="png")
                _displays.append({"image/png": base64.b64encode(buf.getvalue()).decode("ascii"),
                                  "text/plain": repr(fig)})
        except Exception:
            pass
        finally:
            try:
                plt.close(n)
            except Exception:
                pass


def _clear_display():
    _displays.clear()
    try:
        os.remove(_DISPLAY_FILE)
    except OSError:
        pass


class _Stream(io.TextIOBase):
    """sys.stdout / sys.stderr: text goes to the run's captured output."""

    def __init__(self, stream, name):
        self._stream = stream
        self._name = name

    @property
    def name(self):
        return self._name

    @property
    def encoding(self):
        return "utf-8"

    @property
    def errors(self):
        return "strict"

    def writable(self):
        return True

    def isatty(self):
        return False

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if not _snapcell.write(self._stream, s):
            raise OutputLimitError("output limit exceeded")
        if _streaming[0] is not None:
            _pending.append((self._stream, s))
            if "\n" in s:
                _flush_output()
        return len(s)

    def flush(self):
        pass


# Streaming: when the host lists the `_snapcell_output` tool in a run, output also goes to
# the host line by line (one tool call per flush) while the code runs; otherwise it costs
# nothing more than the captured buffer.
STREAM_TOOL = "_snapcell_output"
_streaming = [None]
_pending = []


def _flush_output():
    """Send the pending output chunks to the host ([[stream, text], ...])."""
    send = _streaming[0]
    if send is None or not _pending:
        return
    chunks = []
    for stream, text in _pending:
        if chunks and chunks[-1][0] == stream:
            chunks[-1][1] += text
        else:
            chunks.append([stream, text])
    _pending.clear()
    try:
        send(chunks)
    except Exception:  # the host stopped listening: the output stays in the result
        _streaming[0] = None


sys.stdout = sys.__stdout__ = _Stream(1, "<stdout>")
sys.stderr = sys.__stderr__ = _Stream(2, "<stderr>")

_exception_types = {}
_set_recursion_limit = sys.setrecursionlimit
TRACEBACK_FRAMES = 100    # a stack trace shows the innermost frames, at most this many


def _recursion_cap():
    """The deepest recursion limit the guest honours: Python frames of that depth fit the heap
    limit (CPython 3.11 reports a frame it could not allocate as a bare SystemError) and fail
    fast with RecursionError; C-level recursion that deep ends on the guest's stack guard."""
    limit = _snapcell.memory()[1]
    return 20000 if limit < 0 else max(1000, min(20000, limit // 4096))


def setrecursionlimit(limit):
    """sys.setrecursionlimit, clamped to _recursion_cap() (sys.getrecursionlimit tells)."""
    _set_recursion_limit(limit)
    cap = _recursion_cap()
    if limit > cap:
        _set_recursion_limit(cap)


sys.setrecursionlimit = setrecursionlimit


def _exception_type(name):
    """The exception class a tool's failure is raised as: the built-in of that name, or an
    Exception subclass of that name (cached)."""
    t = getattr(builtins, name, None)
    if isinstance(t, type) and issubclass(t, Exception):
        return t
    if name not in _exception_types:
        ident = name if name.isidentifier() else "ToolError"
        _exception_types[name] = type(ident, (Exception,), {"__module__": "tools"})
    return _exception_types[name]


def _make_tool(name):
    call = _snapcell.call_tool

    def tool(*args, **kwargs):
        reply = call(name, args, kwargs) if kwargs else call(name, args)
        if reply[0]:
            return reply[1]
        raise _exception_type(reply[1])(reply[2])

    tool.__name__ = tool.__qualname__ = name
    return tool


def reseed(seed):
    """A new sandbox (from_snapshot / restore): fresh state for `random`."""
    random.seed(int.from_bytes(seed, "little"))


def _describe(e, filename):
    """(type, message, stack, line) of an exception raised by the code."""
    tb = _code_frames(e.__traceback__, filename)
    line = 0
    if isinstance(e, SyntaxError) and e.filename == filename and e.lineno:
        line = e.lineno
    t = tb
    while t is not None:
        if t.tb_frame.f_code.co_filename == filename:
            line = t.tb_lineno
        t = t.tb_next
    depth, t = 0, tb
    while t is not None and depth <= TRACEBACK_FRAMES:
        depth, t = depth + 1, t.tb_next
    limit = -TRACEBACK_FRAMES if depth > TRACEBACK_FRAMES else None
    try:
        stack = "".join(traceback.format_exception(type(e), e, tb, limit=limit))
    except Exception:  # formatting can fail on hostile exceptions; the type still counts
        stack = ""
    try:
        message = str(e)
    except Exception:
        message = "(unprintable exception)"
    message, stack = _teaching(e, message, stack)
    return (type(e).__qualname__, message, stack, line)


def run(code, filename, tools):
    """Run `code`; (True, value) or (False, (type, message, stack, line))."""
    ns = _main
    for name in tools:
        if name == STREAM_TOOL:
            _streaming[0] = _make_tool(name)
        else:
            ns[name] = _make_tool(name)
    try:
        return _run(code, filename, ns)
    finally:
        _flush_output()
        _streaming[0] = None


def _run(code, filename, ns):
    """`run` without the streaming bookkeeping."""
    if _displays or _shown[0]:
        _clear_display()
        _shown[0] = False
    try:
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:                                              # a lone expression: the quick path
            expr = compile(code, filename, "eval", _TOP_AWAIT)
        except SyntaxError:
            expr = None
        if expr is not None:
            if expr.co_flags & _CO_COROUTINE:
                value = _sandbox.run_coroutine(_run_async(None, expr, ns))
            else:
                value = eval(expr, ns)
        else:
            tree = ast.parse(code, filename, "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            body = compile(tree, filename, "exec", _TOP_AWAIT) if tree.body else None
            tail = compile(last, filename, "eval", _TOP_AWAIT) if last is not None else None
            if any(c is not None and c.co_flags & _CO_COROUTINE for c in (body, tail)):
                value = _sandbox.run_coroutine(_run_async(body, tail, ns))
            else:
                if body is not None:
                    exec(body, ns)
                value = eval(tail, ns) if tail is not None else None
    except SystemExit as e:
        ok, message = _sandbox.exit_outcome(e)
        if not ok:
            _displays.clear()
            kind, _, stack, line = _describe(e, filename)
            return (False, (kind, message, stack, line))
        value = None                                      # sys.exit() / sys.exit(0)
    except BaseException as e:  # noqa: B036  (KeyboardInterrupt and all: the code's failure)
        _displays.clear()
        _open_figures(False)
        return (False, _describe(e, filename))
    _open_figures(True)
    if _displays or (value is not None and not isinstance(value, _PLAIN)):
        if _flush_display(value):
            value = None            # a rich value is returned as its display bundle
        _shown[0] = True
    return (True, value)


_PLAIN = (int, float, str, bytes, bool, list, dict, tuple)
_shown = [False]        # a display file was written by an earlier run (remove it first)


# ---- top-level await, frames and errors that teach (the sandbox's part of a run) ----------------

_TOP_AWAIT = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
_CO_COROUTINE = 0x80                                      # inspect.CO_COROUTINE


async def _run_async(body, tail, ns):
    """A run with top-level `await`: the body, then the last expression's value, in one loop."""
    if body is not None:
        r = eval(body, ns)
        if body.co_flags & _CO_COROUTINE:
            await r
    if tail is None:
        return None
    r = eval(tail, ns)
    return (await r) if tail.co_flags & _CO_COROUTINE else r


def _code_frames(tb, filename):
    """The traceback from the code's first frame on (the runner's and asyncio's frames that
    lead there dropped); without one, from the first frame outside the runner."""
    t = tb
    while t is not None and t.tb_frame.f_code.co_filename != filename:
        t = t.tb_next
    if t is not None:
        return t
    while tb is not None and tb.tb_frame.f_code.co_filename == _HERE:
        tb = tb.tb_next
    return tb


def _teaching(e, message, stack):
    """(message, stack) with the sandbox's hint added when `e` comes from something it leaves
    out (a module not in the image, a host path)."""
    try:
        hint = _sandbox.teach(e)
    except Exception:
        hint = None
    if not hint:
        return message, stack
    return f"{message}. {hint}", f"{stack}hint: {hint}\n"


def warm_up():
    """Exercise the warm modules once so their lazy state (regex caches, decimal context, json
    scanner) is in the snapshot, then freeze the GC generations: every object made so far is
    left out of collections, so a run's collections stay small and touch few pages."""
    json.loads(json.dumps({"a": [1, 2.5, "x", None, True]}))
    re.compile(r"(\w+)@(\w+)\.com").findall("a@b.com c@d.com")
    decimal.Decimal("1.10") + decimal.Decimal("2.20")
    datetime.datetime(2024, 1, 2, 3, 4, 5).isoformat()
    statistics.mean([1, 2, 3])
    textwrap.dedent("  x\n  y\n")
    run("x = [i * i for i in range(10)]\nsum(x)", "<warm-up>", ())
    _main.pop("x", None)
    import gc
    gc.collect()
    gc.freeze()

"""What runs on the workers: one Dask task serves one chunk of items from one leased sandbox,
resetting it to the snapshot after every item. Every failure is an item's value."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..code import CodeError, RunResult
from ..errors import ArgumentError
from ..sandbox import HostFunctions
from .items import ItemError, as_args
from .plugin import current_state

# A RunResult on the wire: (value, stdout, stderr, error, output_truncated, duration) with the
# error as (type, message, stack, line, language) or None. CodeError does not pickle.
PackedRun = tuple[Any, str, str, tuple[str, str, str, int, str] | None, bool, float]


def pack_run(r: RunResult) -> PackedRun:
    """A RunResult as plain data."""
    e = r.error
    err = None if e is None else (e.type, e.message, e.stack, e.line, e.language)
    return (r.value, r.stdout, r.stderr, err, r.output_truncated, r.duration)


def unpack_run(p: PackedRun) -> RunResult:
    """The RunResult `pack_run` packed."""
    value, out, err_text, err, truncated, duration = p
    error = None if err is None else CodeError(*err)
    return RunResult(value=value, stdout=out, stderr=err_text, error=error,
                     output_truncated=truncated, duration=duration)


def call_chunk(items: Sequence[Any], *, ref: str, function: str,
               host_functions: HostFunctions | None, token: str,
               timeout: float | None) -> list[Any]:
    """Call `function` once per item (each a tuple of arguments or a single argument) in a
    sandbox of snapshot `ref` leased from this worker's pool; one result or ItemError per item."""
    out: list[Any] = []
    try:
        state = current_state()
        pool = state.call_pool(ref, host_functions, token)
        with pool.lease() as lease:
            for item in items:
                try:
                    out.append(lease.sandbox.call(function, *as_args(item), timeout=timeout))
                except Exception as e:     # every failure of an item is that item's result
                    out.append(ItemError.of(e))
                lease.reset()
    except Exception as e:                 # no snapshot, no sandbox: the rest of the chunk fails
        err = ItemError.of(e)
        out.extend([err] * (len(items) - len(out)))
    else:
        state.served(len(items))
    return out


def run_chunk(snippets: Sequence[Any], *, lang: str, tools: Mapping[str, Any] | None,
              token: str, snapshot: str | None,
              limits: dict[str, Any]) -> list[PackedRun | ItemError]:
    """Run each snippet in a code sandbox of `lang` leased from this worker's pool; a packed
    RunResult per snippet (its `error` set when the code failed), or an ItemError when the
    snippet could not run at all."""
    out: list[PackedRun | ItemError] = []
    try:
        state = current_state()
        pool = state.code_pool(lang, tools, token, snapshot, **limits)
        with pool.lease() as lease:
            for code in snippets:
                try:
                    if not isinstance(code, (str, bytes)):
                        raise ArgumentError(f"code must be str or bytes, got "
                                            f"{type(code).__name__}")
                    out.append(pack_run(lease.sandbox.run(code)))
                except Exception as e:
                    out.append(ItemError.of(e))
                lease.reset()
    except Exception as e:
        err = ItemError.of(e)
        out.extend([err] * (len(snippets) - len(out)))
    else:
        state.served(len(snippets))
    return out

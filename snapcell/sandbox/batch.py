"""Batched calls: many calls of one guest function in one VM entry (docs/guest-abi.md,
"Batched calls"). `MultiUseSandbox.call_many` is the public face; this module encodes the batch
messages, splits a batch to fit the input buffer, and decodes (untrusted) batch results."""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from typing import Any

import msgpack

from ..errors import ArgumentError, GuestError, GuestOutputError
from ..guest.abi import FRAME_HEADER
from ..guest.codec import CallCodec, _double, pack_list
from ..guest.values import check_value
from .core import MAX_ABORT_MESSAGE, Core, SandboxStatus

BATCH_CALL = 1          # [1, name, [[args], ...]]
BATCH_DONE = 2          # [2, [item, ...]]: the batch is complete
BATCH_MORE = 3          # [3, [item, ...]]: the output buffer filled; resume for more
ERROR_EXT = 1           # an item that failed: ext 1 holding [code, message]


def encode_items(name: str, codec_: CallCodec, items: Sequence[Sequence[Any]],
                 describe: str) -> list[bytes]:
    """Each item's argument array in its wire form; ArgumentError (naming the item) for a
    wrong arity or a value that does not fit its type. Nothing has run."""
    params = codec_.params
    n = len(params)
    unchanged = codec_.unchanged
    out = []
    pack = _double.pack
    for i, args in enumerate(items):
        if not isinstance(args, (list, tuple)):
            raise ArgumentError(f"{describe}: item {i} must be a list of arguments, "
                                f"got {type(args).__name__}")
        if len(args) != n:
            raise ArgumentError(f"{describe}: item {i} has {len(args)} argument(s), "
                                f"the function takes {n}")
        if unchanged(args):
            out.append(pack(list(args)))
            continue
        try:
            checked = [check_value(t, v) for t, v in zip(params, args)]
        except (TypeError, ValueError) as e:
            raise ArgumentError(f"{describe}: item {i}: {e}") from None
        out.append(pack_list(params, checked))
    return out


def frames(name: str, packed: list[bytes], capacity: int, describe: str) -> list[tuple[bytes, int]]:
    """Framed batch messages `[1, name, [items]]`, each fitting `capacity` bytes, with the
    number of items in each."""
    head = _double.pack_array_header(3) + _double.pack(BATCH_CALL) + _double.pack(name)
    room = capacity - FRAME_HEADER - len(head) - 5        # 5: the largest array header
    out: list[tuple[bytes, int]] = []
    start, size = 0, 0
    for i, p in enumerate(packed):
        if len(p) > room:
            raise ArgumentError(f"{describe}: the arguments of item {i} take {len(p)} bytes; "
                                f"a batch holds at most {room} per message")
        if size + len(p) > room:
            out.append(_frame(head, packed[start:i]))
            start, size = i, 0
        size += len(p)
    if start < len(packed) or not out:
        out.append(_frame(head, packed[start:]))
    return out


def _frame(head: bytes, chunk: list[bytes]) -> tuple[bytes, int]:
    payload = head + _double.pack_array_header(len(chunk)) + b"".join(chunk)
    return len(payload).to_bytes(4, "little") + payload, len(chunk)


def _item_error(core: Core, name: str, ext: msgpack.ExtType) -> GuestError:
    if ext.code == ERROR_EXT:
        try:
            obj = msgpack.unpackb(ext.data, raw=False)
        except Exception:
            obj = None
        if isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], int) \
                and not isinstance(obj[0], bool) and -(1 << 31) <= obj[0] < (1 << 31) \
                and isinstance(obj[1], str):
            return GuestError(obj[0], obj[1][:MAX_ABORT_MESSAGE])
    core._poison(GuestOutputError(f"{name}: malformed item error in a batch result"))


def _decode(core: Core, name: str, codec_: CallCodec, values: list[Any], out: list[Any]) -> None:
    """Append the decoded items of one batch result message to `out`."""
    if codec_.void and values.count(None) == len(values):
        out.extend(values)
        return
    decode = codec_.decode
    ext = msgpack.ExtType
    try:
        for v in values:
            if type(v) is ext:
                out.append(_item_error(core, name, v))
            elif v is None and codec_.void:
                out.append(None)
            else:
                out.append(decode(v))
    except ValueError as e:           # CodecError
        core._poison(GuestOutputError(f"{name} returned a bad value in a batch: {e}"))


def run(core: Core, name: str, codec_: CallCodec, messages: list[tuple[bytes, int]],
        timeout: float | None) -> list[Any]:
    """Send each framed batch, collecting the items of every (partial) result."""
    layout = core.layout
    view, addr = core.memory.view, layout.input_addr
    deadline = None if timeout is None else time.monotonic() + timeout
    results: list[Any] = []
    for framed, count in messages:
        view[addr:addr + len(framed)] = framed
        got = 0
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 1e-6)
            obj = core._run_to_return(remaining)
            if isinstance(obj, list) and len(obj) == 2 and obj[0] in (BATCH_DONE, BATCH_MORE) \
                    and isinstance(obj[1], list):
                items = obj[1]
                got += len(items)
                if got > count:
                    core._poison(GuestOutputError(f"{name}: batch result has more items than "
                                                  f"the batch"))
                _decode(core, name, codec_, items, results)
                if obj[0] == BATCH_DONE:
                    break
                continue
            if isinstance(obj, list) and len(obj) == 3 and obj[0] == 1 \
                    and isinstance(obj[1], int) and isinstance(obj[2], str) \
                    and -(1 << 31) <= obj[1] < (1 << 31):
                raise GuestError(obj[1], obj[2][:MAX_ABORT_MESSAGE])
            core._poison(GuestOutputError(f"{name}: malformed batch result message"))
        if got != count:
            core._poison(GuestOutputError(f"{name}: batch of {count} call(s) returned "
                                          f"{got} result(s)"))
    return results


OLD_SDK_REPLY = "malformed call: expected [name, [args]]"    # guests whose SDK predates batches


def call_many(sb: Any, core: Core, name: str, items: Sequence[Sequence[Any]],
              timeout: float | None) -> list[Any]:
    """`MultiUseSandbox.call_many` (see there)."""
    from ..errors import UnknownFunctionError
    if core.status is not SandboxStatus.READY:
        core.check_ready()
    codec_ = core.call_codec(name) if isinstance(name, str) else None
    if codec_ is None:
        raise UnknownFunctionError(f"the guest exports no function {name!r}")
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ArgumentError(f"items must be a sequence of argument lists, got {type(items).__name__}")
    if timeout is None:
        timeout = sb.config.max_execution_time
    elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not items:
        return []
    describe = core.functions[name].describe(name)
    packed = encode_items(name, codec_, items, describe)
    messages = frames(name, packed, core.layout.input_size, describe)
    sb._version += 1                      # the state changes: cached snapshots are stale
    if _unsupported.get(id(core)) is not core.functions:
        try:
            return run(core, name, codec_, messages, timeout)
        except GuestError as e:
            if e.code != -1 or e.message != OLD_SDK_REPLY:
                raise
            _unsupported[id(core)] = core.functions     # until the function table changes
            weakref.finalize(core, _unsupported.pop, id(core), None)
    return [_one(sb, name, args, timeout) for args in items]


# id(core) → the function table of a guest whose SDK answered a batch as an old one does
_unsupported: dict[int, Any] = {}


def _one(sb: Any, name: str, args: Sequence[Any], timeout: float | None) -> Any:
    try:
        return sb.call(name, *args, timeout=timeout)
    except GuestError as e:
        return e

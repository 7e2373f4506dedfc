"""A mutation fuzzer for what a compromised interpreter guest hands a code sandbox: Run
responses and CodeTool requests.

The adversary guest's `Run` (guests/adversary.c) answers a `CodeSandbox` run with whatever bytes
the "code" holds, after sending the CodeTool requests it lists; so a mutated response goes the
real way: a KVM exit, the call's framing, `snapcell.code.validate`, the RunResult. Invariant:
`CodeSandbox.run` never raises; a result it returns holds only what the host promises (output
within max_output, file names relative and normalised, files within max_files_out, values
JSON-like and at most 65 levels deep, an error of the right shape); a tool only ever sees
JSON-like arguments; after any response the sandbox runs a valid response correctly.

    python -m tests.adversarial.fuzz --target responses --seconds 60
"""

from __future__ import annotations

import json
import random
import struct
import time
from typing import Any

import msgpack

from snapcell import CodeSandbox, Snapshot, UninitializedSandbox
from snapcell.code.result import RunResult, _jsonable
from snapcell.code.validate import MAX_DEPTH, Invalid, check_file_name_out, check_value
from snapcell.code.warm import LAYOUT, tool_host_functions

from .fuzz import Stats, _random_obj, mutate_bytes

MAX_OUTPUT = 4096
MAX_FILES_OUT = 4096


def hostile_snapshot(adversary: str) -> Snapshot:
    """The adversary evolved with the code sandboxes' layout and CodeTool host function, to
    stand in for an interpreter guest (`CodeSandbox(lang, snapshot=...)`)."""
    with UninitializedSandbox(adversary, config=LAYOUT,
                              host_functions=tool_host_functions()).evolve() as sb:
        return sb.snapshot()


def scripted(head: bytes, fill: int = 0, count: int = 0, tail: bytes = b"",
             tool_requests: tuple[bytes, ...] = ()) -> bytes:
    """The "code" that makes the adversary answer head + `count` bytes of `fill` + tail after
    sending `tool_requests` to CodeTool."""
    return msgpack.packb([head, fill, count, tail, list(tool_requests)], use_bin_type=True)


def response(status: int = 0, value: Any = None, out: bytes = b"", err: bytes = b"",
             truncated: bool = False, error: Any = None, files: Any = None) -> bytes:
    """A Run response as the interpreter guests encode it (files: the 7th field)."""
    fields: list[Any] = [status, value, out, err, truncated, error]
    if files is not None:
        fields.append(files)
    return msgpack.packb(fields, use_bin_type=True)


def response_seeds() -> list[bytes]:
    """Valid and near-valid Run responses (without and with the files field)."""
    seeds = [response(value=1), response(value={"a": [1, 2.5, None, b"x"]}, out=b"hi\n"),
             response(1, None, b"", b"e", True, ["TypeError", b"msg", b"stack", 3]),
             response(value=[[[[1]]]], files=[{"a.txt": b"x", "d/b": b""}, False]),
             response(1, None, b"", b"", False, ["E", "m", "s", 0], files=[{}, True]),
             response(value="x" * 100, out=b"\xff\xfe", err=b"o" * 50)]
    return seeds


def mutate_response(rng: random.Random, pool: list[bytes]) -> bytes:
    """A mutated response: byte edits of a seed, or a seed's structure with a hostile part."""
    if rng.random() < 0.5:
        return mutate_bytes(rng, rng.choice(pool), pool)
    fields = msgpack.unpackb(rng.choice(pool), raw=False)
    i = rng.randrange(len(fields) + 1)
    hostile = rng.choice([
        _random_obj(rng), msgpack.Timestamp(rng.randrange(2 ** 32)), msgpack.ExtType(5, b"x"),
        float("inf"), float("nan"), -1, 2 ** 64 - 1, True, "x" * rng.randrange(300),
        ["E", b"m", b"s", rng.choice([float("inf"), -5, 2 ** 40, True, "3"])],
        [{rng.choice(["../x", "/etc/passwd", "a//b", "a/./b", "x\0y", ".", "a" * 251,
                      "ok.txt"]): b"d"}, False],
        [{f"f{k}": b"" for k in range(rng.choice([1, 513]))}, False],
        [{"big": b"x" * (MAX_FILES_OUT + 1)}, False], b"o" * (MAX_OUTPUT + 1)])
    if i < len(fields):
        fields[i] = hostile
    else:
        fields.append(hostile)
    try:
        return msgpack.packb(fields, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return msgpack.packb(fields[:6], use_bin_type=True, default=repr)


def deep(n: int) -> bytes:
    """A value nested `n` arrays deep."""
    return b"\x91" * n + b"\xc0"


def tool_request_seeds() -> list[bytes]:
    """CodeTool requests, well-formed and hostile."""
    pack = msgpack.packb
    return [pack(["echo", [1, "a"]]), pack(["echo", [], {"k": 1}]),
            pack(["echo", [msgpack.Timestamp(5)]]), pack(["echo", [msgpack.ExtType(1, b"")]]),
            b"\x92\xa4echo\x91" + deep(900), pack(["echo", [], {"not ok": 1}]),
            pack(["echo", [], {1: 1}]), pack(["echo", [], []]), pack([1, []]), b"\xc1"]


def check_result(r: RunResult, box: CodeSandbox) -> str | None:
    """What `r` breaks of the host's promises, or None."""
    if r.error is not None:
        e = r.error
        if not (type(e.type) is str and type(e.message) is str and type(e.stack) is str
                and type(e.line) is int and 0 <= e.line < 2 ** 31):
            return f"an error of bad shape {e.to_dict()!r}"
    if len(r.stdout) + len(r.stderr) > box.max_output:
        return f"{len(r.stdout) + len(r.stderr)} characters of output past max_output"
    if sum(len(v) for v in r.files.values()) > box.max_files_out:
        return "files past max_files_out"
    try:
        for name in r.files:
            check_file_name_out(name)
        check_value(r.value)
        json.dumps(_jsonable(r.value))
    except (Invalid, TypeError, ValueError) as e:
        return f"an unchecked result: {e}"
    return None


def fuzz_responses(snapshot: Snapshot, seconds: float, seed: int,
                   max_mutations: int | None = None) -> Stats:
    """Run mutated Run responses (and CodeTool requests) through a real CodeSandbox for
    `seconds`; every 100 mutations, and at the end, a valid response must come back right."""
    rng = random.Random(seed)
    stats = Stats("responses")
    seen: list[str] = []

    def echo(*args: Any, **kwargs: Any) -> list[Any]:
        try:
            check_value([list(args), kwargs])
        except Invalid as e:
            seen.append(f"a tool got unchecked arguments: {e}")
        return [list(args), kwargs]

    pool, tools_pool = response_seeds(), tool_request_seeds()
    boxes = [CodeSandbox(lang, tools={"echo": echo}, snapshot=snapshot, max_output=MAX_OUTPUT,
                         max_files_out=MAX_FILES_OUT, timeout=5.0) for lang in ("js", "python")]
    good = response(value={"ok": [1, 2]}, out=b"fine\n")
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds and (max_mutations is None
                                                     or stats.mutations < max_mutations):
            box = rng.choice(boxes)
            data = mutate_response(rng, pool)
            calls = tuple(mutate_bytes(rng, rng.choice(tools_pool), tools_pool)
                          for _ in range(rng.choice((0, 0, 0, 1, 2))))
            code = scripted(data, tool_requests=calls) if calls or rng.random() < 0.5 else data
            stats.mutations += 1
            try:
                r = box.run(code)
            except Exception as e:              # run() must never raise on guest output
                stats.crashes.append(f"{box.language.name} {data[:200].hex()}: "
                                     f"{type(e).__name__}: {e}")
                continue
            stats.count("InternalError" if r.error is not None and r.error.type == "InternalError"
                        else "accepted")
            bad = check_result(r, box)
            if bad:
                stats.crashes.append(f"{box.language.name} {data[:200].hex()}: {bad}")
            if stats.mutations % 100 == 0 and not _healthy(box, good):
                stats.crashes.append(f"after {stats.mutations} mutations a valid response "
                                     "came back wrong")
        for box in boxes:
            if not _healthy(box, good):
                stats.crashes.append("a valid response came back wrong at the end")
    finally:
        for box in boxes:
            box.close()
        stats.seconds = time.monotonic() - start
    stats.crashes += seen
    return stats


def _healthy(box: CodeSandbox, good: bytes) -> bool:
    files = [{}, False] if box.language.has_files else None
    if files is not None:
        good = response(value={"ok": [1, 2]}, out=b"fine\n", files=files)
    r = box.run(good)
    return r.ok and r.value == {"ok": [1, 2]} and r.stdout == "fine\n"


def bin32_output(n: int, files: bool) -> bytes:
    """`scripted` code for a response with `n` bytes of stdout (a bin 32 of `fill`)."""
    head = b"\x97" if files else b"\x96"
    head += b"\x00\xc0\xc6" + struct.pack(">I", n)
    tail = msgpack.packb(b"") + b"\xc2\xc0" + (msgpack.packb([{}, False]) if files else b"")
    return scripted(head, ord("A"), n, tail)


__all__ = ["MAX_DEPTH", "bin32_output", "deep", "fuzz_responses", "hostile_snapshot", "response",
           "scripted"]

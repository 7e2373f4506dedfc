"""A compromised interpreter guest (issue 28, item 4): the adversary's `Run` answers a real
CodeSandbox with crafted responses and tool requests. Each bad one is an InternalError result
("the interpreter guest returned an invalid result"), never an exception or an unchecked value,
and the sandbox runs the next response correctly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from snapcell import CodeSandbox, Snapshot

from .fuzz_code import (
    bin32_output,
    deep,
    fuzz_responses,
    hostile_snapshot,
    response,
    scripted,
)
from .test_fuzz import SECONDS, SEED

MIB = 1 << 20
FILES_OUT = 256 << 10
GOOD_ERROR = ["TypeError", b"m", b"s", 3]


@pytest.fixture(scope="module")
def hostile(adversary: str) -> Snapshot:
    return hostile_snapshot(adversary)


@pytest.fixture
def calls() -> list[tuple[Any, ...]]:
    return []


@pytest.fixture
def boxes(hostile: Snapshot, calls: list[tuple[Any, ...]]) -> Iterator[dict[str, CodeSandbox]]:
    def echo(*args: Any, **kwargs: Any) -> int:
        calls.append((args, kwargs))
        return 1

    out = {lang: CodeSandbox(lang, tools={"echo": echo}, snapshot=hostile, max_output=1 * MIB,
                             max_files_out=FILES_OUT, keep_state=True) for lang in ("js", "python")}
    yield out
    for box in out.values():
        box.close()


def _invalid(box: CodeSandbox, code: bytes, why: str) -> None:
    r = box.run(code)
    assert r.error is not None and r.error.type == "InternalError", r
    assert r.error.message.startswith("the interpreter guest returned an invalid result"), r
    assert why in r.error.message, r.error.message
    assert r.value is None and r.stdout == "" and r.files == {}
    assert not box._dirty                     # back to the base snapshot, as after a crash
    ok = box.run(response(value=7, files=[{}, False]) if box.language.has_files
                 else response(value=7))
    assert ok.ok and ok.value == 7


BAD_JS = {
    "inf line": (response(1, None, b"", b"", False, ["E", b"m", b"s", float("inf")]), "line"),
    "negative line": (response(1, None, b"", b"", False, ["E", b"m", b"s", -1]), "line"),
    "bool line": (response(1, None, b"", b"", False, ["E", b"m", b"s", True]), "line"),
    "huge line": (response(1, None, b"", b"", False, ["E", b"m", b"s", 2 ** 63]), "line"),
    "empty type": (response(1, None, b"", b"", False, ["", b"m", b"s", 1]), "type"),
    "long type": (response(1, None, b"", b"", False, ["E" * 300, b"m", b"s", 1]), "type"),
    "control type": (response(1, None, b"", b"", False, ["E\n", b"m", b"s", 1]), "type"),
    "short error": (response(1, None, b"", b"", False, ["E", b"m", 1]), "error"),
    "message type": (response(1, None, b"", b"", False, ["E", 5, b"s", 1]), "message"),
    "timestamp": (response(value=msgpack.Timestamp(1, 2)), "Timestamp"),
    "ext": (response(value=msgpack.ExtType(7, b"x")), "extension"),
    "900 deep": (b"\x96\x00" + deep(900) + b"\xc4\x00\xc4\x00\xc2\xc0", "nested"),
    "66 deep": (b"\x96\x00" + deep(66) + b"\xc4\x00\xc4\x00\xc2\xc0", "nested"),
    "5000 deep": (b"\x96\x00" + deep(5000) + b"\xc4\x00\xc4\x00\xc2\xc0", "malformed"),
    "stdout past max_output": (bin32_output(3_900_000, files=False), "max_output"),
    "stdout + stderr past": (scripted(b"\x96\x00\xc0\xc6" + MIB.to_bytes(4, "big"), ord("o"), MIB,
                                      b"\xc4\x01e\xc2\xc0"), "max_output"),
    "status 2": (response(2), "status"),
    "status true": (msgpack.packb([True, None, b"", b"", False, None]), "status"),
    "truncated int": (msgpack.packb([0, None, b"", b"", 1, None]), "truncated"),
    "text stdout": (msgpack.packb([0, None, "out", b"", False, None]), "stdout"),
    "ok with error": (response(0, 1, error=GOOD_ERROR), "error"),
    "error with value": (response(1, 5, error=GOOD_ERROR), "value"),
    "files not asked": (response(value=1, files=[{"a": b""}, False]), "6 fields"),
    "five fields": (msgpack.packb([0, None, b"", b"", False]), "fields"),
    "not an array": (msgpack.packb({"status": 0}), "fields"),
    "trailing bytes": (response(value=1) + b"\x00", "malformed"),
    "cut short": (response(value="abc")[:-2], "malformed"),
    "list key": (b"\x96\x00\x81\x91\x01\x01\xc4\x00\xc4\x00\xc2\xc0", "malformed"),
    "empty": (b"", "malformed"),
}


@pytest.mark.parametrize("case", sorted(BAD_JS))
def test_bad_responses(boxes: dict[str, CodeSandbox], case: str) -> None:
    code, why = BAD_JS[case]
    _invalid(boxes["js"], code, why)


def _files(files: Any, truncated: Any = False) -> bytes:
    return response(value=1, files=[files, truncated])


BAD_FILES = {
    "parent": ({"../../etc/x1": b"x"}, "file name"), "absolute": ({"/etc/passwd": b"x"}, "file name"),
    "inner ..": ({"a/../../b": b"x"}, "file name"), "empty part": ({"a//b": b"x"}, "file name"),
    "dot": ({"./a": b"x"}, "file name"), "trailing slash": ({"a/": b"x"}, "file name"),
    "nul": ({"a\0b": b"x"}, "file name"), "empty": ({"": b"x"}, "file name"),
    "too long": ({"a" * 251: b"x"}, "file name"), "replaced utf-8": ({"a\ufffd": b"x"}, "file name"),
    "int name": ({5: b"x"}, "file name"), "str contents": ({"a": "x"}, "contents"),
    "too big": ({"a": b"x" * FILES_OUT, "b": b"y"}, "bytes of files"),
    "too many": ({f"f{i}": b"" for i in range(513)}, "513 files"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files(boxes: dict[str, CodeSandbox], case: str) -> None:
    files, why = BAD_FILES[case]
    _invalid(boxes["python"], _files(files), why)


def test_bad_files_field(boxes: dict[str, CodeSandbox]) -> None:
    box = boxes["python"]
    _invalid(box, _files({}, 1), "files field")
    _invalid(box, response(value=1, files=[{}]), "files field")
    _invalid(box, response(value=1), "7 fields")


def test_what_the_limits_allow_comes_through(boxes: dict[str, CodeSandbox]) -> None:
    js, py = boxes["js"], boxes["python"]
    r = js.run(bin32_output(MIB, files=False))           # exactly max_output
    assert r.ok and r.stdout == "A" * MIB
    r = js.run(b"\x96\x00" + deep(64) + b"\xc4\x00\xc4\x00\xc2\xc0")
    assert r.ok
    r = js.run(response(value={1: [2.5, float("inf"), None, True, b"\x00"], "k": {"x": "y"}},
                        out=b"\xff", err=b"e"))
    assert r.ok and r.value == {1: [2.5, float("inf"), None, True, b"\x00"], "k": {"x": "y"}}
    assert r.stdout == "\ufffd" and r.stderr == "e"
    r = js.run(response(1, None, b"", b"", True, ["Weird.<locals>.E", "m", b"s", 2 ** 31 - 1]))
    assert r.error is not None and (r.error.type, r.error.line) == ("Weird.<locals>.E", 2 ** 31 - 1)
    names = {"a" * 250: b"1", "d/e/f.txt": b"2", "caf\u00e9": b"3", "x": b"y" * (FILES_OUT - 3)}
    r = py.run(_files(names, True))
    assert r.ok and r.files == names and r.files_truncated


def test_hostile_tool_requests_never_reach_the_tool(boxes: dict[str, CodeSandbox],
                                                    calls: list[tuple[Any, ...]]) -> None:
    pack = msgpack.packb
    hostile = [pack(["echo", [msgpack.Timestamp(5)]]), pack(["echo", [msgpack.ExtType(1, b"")]]),
               b"\x92\xa4echo\x91" + deep(900), pack(["echo", [], {"not ok": 1}]),
               pack(["echo", [], {1: 1}]), pack(["echo", [], []]), pack(["echo", [], {}, 4]),
               pack([1, []]), b"\xc1", pack(["echo", [1]]) + b"\x00"]
    r = boxes["js"].run(scripted(response(value=1), tool_requests=tuple(hostile)))
    assert r.ok and r.value == 1
    assert calls == [] and boxes["js"].tool_calls == len(hostile)
    good = (pack(["echo", [1, "a"]]), pack(["echo", [2], {"k": [3]}]))
    assert boxes["js"].run(scripted(response(value=1), tool_requests=good)).ok
    assert calls == [((1, "a"), {}), ((2,), {"k": [3]})]


def test_fuzz_code_guest_responses(hostile: Snapshot) -> None:
    stats = fuzz_responses(hostile, SECONDS, SEED)
    assert stats.mutations > 100
    assert not stats.crashes, "\n".join(stats.crashes[:10])
    assert stats.outcomes.get("accepted") and stats.outcomes.get("InternalError")


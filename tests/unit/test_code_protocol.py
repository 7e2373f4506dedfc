"""Pure logic of code sandboxes: tool dispatch and the Run response decoder (hypothesis)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapcell import ArgumentError, GuestOutputError
from snapcell.code.protocol import ToolDispatcher, check_tools, decode_response, unpack

json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1)
    | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20)


@given(json_like)
def test_tool_values_round_trip(value: Any) -> None:
    d = ToolDispatcher({"echo": lambda v: v}, 1 << 20)
    status, got = unpack(d(msgpack.packb(["echo", [value]])))
    assert status == 0 and got == value


def test_tool_failures_are_replies() -> None:
    def boom() -> None:
        raise LookupError("gone")
    d = ToolDispatcher({"boom": boom, "bad": lambda: object(), "big": lambda: "x" * 100}, 50)
    assert unpack(d(msgpack.packb(["boom", []]))) == [1, "LookupError", "gone"]
    assert unpack(d(msgpack.packb(["nope", []])))[:2] == [1, "ToolError"]
    assert unpack(d(msgpack.packb(["bad", []])))[:2] == [1, "ToolError"]
    assert "bytes" in unpack(d(msgpack.packb(["big", []])))[2]
    assert unpack(d(b"\xc1"))[:2] == [1, "ToolError"]
    assert unpack(d(msgpack.packb({"not": "a list"})))[:2] == [1, "ToolError"]
    assert d.calls == 6


@given(st.binary(max_size=64))
def test_decode_response_never_crashes_on_garbage(data: bytes) -> None:
    try:
        decode_response(data, "js")
    except GuestOutputError:
        pass


def test_decode_response() -> None:
    ok = msgpack.packb([0, {"a": 1}, b"out", b"err", False, None])
    r = decode_response(ok, "js")
    assert (r.value, r.stdout, r.stderr, r.ok) == ({"a": 1}, "out", "err", True)
    bad = msgpack.packb([1, None, b"", b"", True, ["TypeError", b"m", b"at x", 3]])
    r = decode_response(bad, "lua")
    assert r.error is not None and (r.error.type, r.error.line, r.output_truncated) == ("TypeError", 3, True)


@pytest.mark.parametrize("tools", [{"1x": len}, {"a b": len}, {"ok": "not callable"}, [("x", len)],
                                   {f"t{i}": len for i in range(65)}])
def test_check_tools_refuses(tools: Any) -> None:
    with pytest.raises(ArgumentError):
        check_tools(tools)


file_names = st.lists(st.text(alphabet="abc._-", min_size=1, max_size=8)
                      .filter(lambda s: s not in (".", "..")), min_size=1, max_size=3).map("/".join)


@given(st.dictionaries(file_names, st.binary(max_size=50), max_size=5), st.booleans())
def test_files_in_the_request_and_the_response(files: dict[str, bytes], truncated: bool) -> None:
    from snapcell.code.protocol import check_files, encode_request
    checked = check_files(files)
    req = unpack(encode_request("1", [], 10, 20, "main.py", checked, 99))
    assert req == ["1", [], 10, 20, "main.py", [checked, 99]]
    assert len(unpack(encode_request("1", [], 10, 20, "main.py"))) == 5
    resp = msgpack.packb([0, 1, b"", b"", False, None, [files, truncated]], use_bin_type=True)
    r = decode_response(resp, "python", max_files_out=1 << 20)
    assert r.files == files and r.files_truncated == truncated and r.value == 1


@pytest.mark.parametrize("bad", [{"../x": b""}, {"/abs": b""}, {"a//b": b""}, {"": b""},
                                 {"a/./b": b""}, {"x" * 201: b""}, {"ok": 3}, {"a\0b": b""}])
def test_bad_file_names_and_contents(bad: dict[str, Any]) -> None:
    from snapcell.code.protocol import check_files
    with pytest.raises(ArgumentError):
        check_files(bad)


def test_malformed_files_in_a_response() -> None:
    for files in ([{"a": "not bytes"}, False], [{1: b""}, False], ["x", False]):
        with pytest.raises(GuestOutputError):
            decode_response(msgpack.packb([0, 1, b"", b"", False, None, files],
                                          use_bin_type=True), "python", max_files_out=99)

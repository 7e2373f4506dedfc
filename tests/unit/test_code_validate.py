"""Pure logic of the checks on an interpreter guest's answers (snapcell.code.validate) and of
tool calls by keyword (snapcell.code.tools), with hypothesis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapcell import GuestOutputError
from snapcell.code.tools import ToolDispatcher, object_as_keywords
from snapcell.code.validate import (
    MAX_DEPTH,
    Invalid,
    check_file_name_out,
    check_value,
    decode,
    decode_tool_call,
    unpack,
)

scalars = (st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.floats()
           | st.text() | st.binary())
json_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text() | st.integers(), inner, max_size=4),
                         max_leaves=20)


def nest(n: int) -> Any:
    v: Any = 1
    for _ in range(n):
        v = [v]
    return v


@given(json_like)
def test_json_like_values_pass(value: Any) -> None:
    assert check_value(value) is value


@given(st.integers(0, 200))
def test_depth(n: int) -> None:
    if n <= MAX_DEPTH:
        check_value(nest(n))
    else:
        with pytest.raises(Invalid, match="nested"):
            check_value(nest(n))


@pytest.mark.parametrize("bad", [msgpack.Timestamp(1), msgpack.ExtType(1, b""), (1,), {1, 2},
                                 object(), {(1,): 2}, [[{"a": bytearray()}]]])
def test_other_types_fail(bad: Any) -> None:
    with pytest.raises(Invalid):
        check_value(bad)


@given(st.binary(max_size=200))
def test_decode_only_raises_guest_output_error(data: bytes) -> None:
    try:
        decode(data, "js", 100, None)
    except GuestOutputError:
        pass


@given(st.text(max_size=300))
def test_file_names_out(name: str) -> None:
    parts = name.split("/")
    ok = (bool(name) and not name.startswith("/") and "\0" not in name and "\ufffd" not in name
          and len(name.encode("utf-8", "surrogatepass")) <= 250
          and not any(p in ("", ".", "..") for p in parts))
    if ok:
        assert check_file_name_out(name) == name
    else:
        with pytest.raises(Invalid):
            check_file_name_out(name)


def test_tool_calls_decode() -> None:
    assert decode_tool_call(msgpack.packb(["f", [1], {"k": 2}])) == ("f", [1], {"k": 2})
    assert decode_tool_call(msgpack.packb(["f", []])) == ("f", [], {})
    for bad in (["f", [], {"a b": 1}], ["f", [], {1: 1}], ["f", {}], [1, []], ["f", [], {}, 1],
                ["f", [msgpack.Timestamp(1)]], ["f", [nest(70)]]):
        with pytest.raises(Invalid):
            decode_tool_call(msgpack.packb(bad))


def search(query: str, limit: int = 3, *, deep: bool = False) -> list[Any]:
    return [query, limit, deep]


def test_one_object_as_keywords() -> None:
    assert object_as_keywords(search, [{"query": "q"}]) == {"query": "q"}
    assert object_as_keywords(search, [{"query": "q", "deep": True}]) == {"query": "q", "deep": True}
    assert object_as_keywords(search, [{"limit": 1}]) is None        # query missing: no binding
    assert object_as_keywords(search, [{"query": "q", "x": 1}]) is None
    assert object_as_keywords(search, [{}]) is None
    assert object_as_keywords(search, [{"query": "q"}, 2]) is None
    assert object_as_keywords(lambda *a, **k: a, [{"query": "q"}]) is None
    assert object_as_keywords(len, [{"obj": 1}]) is None


def test_dispatcher_keywords_async_and_deadline() -> None:
    async def aecho(x: Any) -> Any:
        await asyncio.sleep(0)
        return x

    def nap() -> str:
        time.sleep(0.5)
        return "late"

    cancelled: list[bool] = []
    d = ToolDispatcher({"search": search, "aecho": aecho, "nap": nap}, 1 << 20,
                       object_keywords=True)
    assert unpack(d(msgpack.packb(["search", [], {"query": "a", "limit": 1}]))) == [0, ["a", 1, False]]
    assert unpack(d(msgpack.packb(["search", [{"query": "b"}]]))) == [0, ["b", 3, False]]
    assert unpack(d(msgpack.packb(["aecho", [5]]))) == [0, 5]
    d.begin(time.monotonic() + 0.05, lambda: cancelled.append(True))
    assert unpack(d(msgpack.packb(["nap", []])))[:2] == [1, "TimeoutError"]
    assert d.expired and cancelled == [True]
    d.begin(time.monotonic() + 5, None)
    assert unpack(d(msgpack.packb(["aecho", ["x"]]))) == [0, "x"] and not d.expired
    assert unpack(d(msgpack.packb(["search", [], {"nope": 1}])))[:2] == [1, "TypeError"]
    d.close()


def test_dispatcher_in_a_forked_child() -> None:
    import os
    d = ToolDispatcher({"search": search}, 1 << 20)
    d.begin(time.monotonic() + 5, None)
    assert unpack(d(msgpack.packb(["search", ["a"]]))) == [0, ["a", 3, False]]
    pid = os.fork()
    if pid == 0:                        # the child: the parent's worker thread is not here
        ok = unpack(d(msgpack.packb(["search", ["b"]]))) == [0, ["b", 3, False]]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    d.close()

"""The service's JSON layer and descriptor plan as pure logic (hypothesis): request bodies
parse to a value or a 400 ApiError, never another exception; responses always render, with
non-finite floats one way."""

from __future__ import annotations

import json
import math
import resource
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapcell.serving.errors import ApiError
from snapcell.serving.jsonvalues import (
    MAX_DEPTH,
    check_value,
    dumps_safe,
    json_safe,
    nonfinite,
    parse_body,
)
from snapcell.serving.protocol import (
    ACCEPT_BATCH,
    ACCEPT_PASSES,
    FD_RESERVE,
    REFUSING_SLOTS,
    ConnectionLimits,
    fd_plan,
)

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


def _strict(raw: bytes) -> Any:
    def refuse(c: str) -> Any:
        raise AssertionError(f"non-standard JSON constant {c}")
    return json.loads(raw, parse_constant=refuse)


@settings(max_examples=600)
@given(st.binary(max_size=200) | values.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")))
def test_parse_body_gives_a_value_or_a_400(raw: bytes) -> None:
    try:
        v = parse_body(raw)
    except ApiError as e:
        assert e.status == 400 and e.kind == "malformed_json"
        return
    check_value(v)
    _strict(dumps_safe(v))       # what parsed renders back as strict JSON


@given(st.integers(1, 3000), st.sampled_from(["[", '{"a":']))
def test_nesting(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    raw = (opener * depth + "1" + closer * depth).encode()
    if depth <= MAX_DEPTH:
        assert parse_body(raw) is not None
    else:
        with pytest.raises(ApiError, match="nests deeper"):
            parse_body(raw)


@pytest.mark.parametrize("raw", [b"1" + b"0" * 400, b'{"a": NaN}', b"-Infinity", b"1e400",
                                 b'"\\ud800"', b'{"\\udc00": 1}', b"\xff", b"[" * 100_000])
def test_refused_bodies(raw: bytes) -> None:
    with pytest.raises(ApiError) as e:
        parse_body(raw)
    assert e.value.status == 400


def test_accepted_edge_values() -> None:
    assert parse_body(b"[18446744073709551615, -9223372036854775808]") == [2**64 - 1, -2**63]
    assert parse_body(b'"\\ud83d\\ude00"') == "\U0001F600"          # a surrogate pair is fine
    assert parse_body(b"1.7976931348623157e308") == 1.7976931348623157e308


@given(values)
def test_json_safe_renders_every_value(v: Any) -> None:
    out = _strict(dumps_safe(v))
    if isinstance(v, float) and not math.isfinite(v):
        assert out == nonfinite(v)
    assert _strict(dumps_safe(json_safe(v))) == out


def test_nonfinite_spelling() -> None:
    assert [nonfinite(x) for x in (math.nan, math.inf, -math.inf)] == ["NaN", "Infinity", "-Infinity"]
    assert json_safe({"a": [math.nan, (1.5, -math.inf)]}) == {"a": ["NaN", [1.5, "-Infinity"]]}


@given(st.integers(1, 1 << 20), st.integers(16, 1 << 21), st.integers(16, 1 << 21))
def test_fd_plan(cap: int, soft: int, hard: int) -> None:
    soft = min(soft, hard)
    plan = fd_plan(cap, soft, hard)
    assert soft <= plan.soft <= max(soft, hard)                 # never beyond the hard limit
    assert min(cap, 16) <= plan.max_connections <= cap          # never raised, never below 16
    assert 8 <= plan.accept_batch <= ACCEPT_BATCH
    need = cap + REFUSING_SLOTS + ACCEPT_PASSES * ACCEPT_BATCH + FD_RESERVE
    if soft < need:
        assert plan.soft == min(hard, need)
    if plan.soft >= need:
        assert (plan.max_connections, plan.accept_batch) == (cap, ACCEPT_BATCH)
    elif plan.max_connections > 16:            # what is left fits the descriptors, with reserve
        used = plan.max_connections + REFUSING_SLOTS + ACCEPT_PASSES * plan.accept_batch
        assert used + min(FD_RESERVE, plan.soft // 2) <= plan.soft
    assert fd_plan(cap, soft, resource.RLIM_INFINITY).max_connections == cap


def test_connection_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        ConnectionLimits(header_timeout=0)
    with pytest.raises(ValueError):
        ConnectionLimits(max_connections=0)


def test_responses_always_render() -> None:
    from snapcell.serving.app import SafeJSONResponse
    assert SafeJSONResponse({"a": [1.5, "é"]}).body == '{"a":[1.5,"é"]}'.encode()
    r = SafeJSONResponse({"a": [math.nan, -math.inf], "\ud800": "x\udfff"})
    assert _strict(r.body) == {"a": ["NaN", "-Infinity"], "\ud800": "x\udfff"}


def _outcome(parse: Any, raw: bytes) -> Any:
    try:
        return ("value", parse(raw))
    except ApiError as e:
        return ("error", e.status, e.kind, str(e))


@settings(max_examples=300)
@given(st.binary(max_size=120)
       | values.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass"))
       | st.lists(st.integers(-(10**22), 10**22) | st.floats(), max_size=4).map(
           lambda v: json.dumps(v).encode()))
def test_orjson_reads_bodies_as_the_json_module_does(raw: bytes) -> None:
    from snapcell.serving import jsonvalues
    assert jsonvalues.orjson is not None            # the serve extra's
    fast = _outcome(parse_body, raw)
    saved, jsonvalues.orjson = jsonvalues.orjson, None
    try:
        slow = _outcome(parse_body, raw)
    finally:
        jsonvalues.orjson = saved
    if fast[0] == "value" and slow[0] == "value":   # (NaN != NaN: compare the renderings)
        assert dumps_safe(fast[1]) == dumps_safe(slow[1]) and \
            [type(x) for x in _leaves(fast[1])] == [type(x) for x in _leaves(slow[1])]
    else:
        assert fast == slow


def _leaves(v: Any) -> list[Any]:
    if isinstance(v, list):
        return [x for item in v for x in _leaves(item)]
    if isinstance(v, dict):
        return [x for item in v.values() for x in _leaves(item)]
    return [v]


@given(values | st.lists(st.integers(-(2**70), 2**70), max_size=3))
def test_orjson_renders_as_the_json_module_does(v: Any) -> None:
    from snapcell.serving.app import SafeJSONResponse
    from snapcell.serving.jsonvalues import render
    fast = render(v)
    body = SafeJSONResponse(v).body
    if fast is not None:
        assert body == fast
    assert _strict(body) == _strict(dumps_safe(v))

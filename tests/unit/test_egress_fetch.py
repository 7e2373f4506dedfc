"""net.fetch's checks of what the guest sends (pure logic: no socket is opened): headers per
RFC 9110 and WHATWG, URLs, the request's shape. Every bad input is a TypeError naming it."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapcell.code.egress import EgressSession, NetworkPolicy
from snapcell.code.egress.fetch import FORBIDDEN, fetch, header_pairs, parse_target

TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


@given(st.text(max_size=20), st.text(max_size=40))
def test_header_names_are_tokens_and_values_clean(name: str, value: str) -> None:
    try:
        out = header_pairs([[name, value]])
    except TypeError as e:
        assert "fetch:" in str(e)
        assert (not TOKEN.match(name) or any(c in value for c in "\0\r\n")
                or any(ord(c) > 255 for c in value) or name.lower() in FORBIDDEN
                or name.lower().startswith(("proxy-", "sec-")))
        return
    assert TOKEN.match(name) and out == [(name, value.strip(" \t"))]
    assert not any(c in out[0][1] for c in "\0\r\n")


@pytest.mark.parametrize("bad", ["x", [["a"]], [["a", 1]], [[b"a", "b"]], [["a", "b"]] * 101,
                                 [["Host", "x"]], [["content-length", "1"]], [["Sec-X", "1"]],
                                 [["a", "b\r\nX: y"]], [["x", "y" * 70000]]])
def test_bad_headers(bad: object) -> None:
    with pytest.raises(TypeError, match="fetch: "):
        header_pairs(bad)


@given(st.text(max_size=60))
def test_urls_are_http_with_ascii_targets(text: str) -> None:
    for url in (text, "http://a.example/" + text, "https://" + text):
        try:
            t = parse_target(url)
        except TypeError as e:
            assert str(e).startswith("fetch: ")
            continue
        assert t.scheme in ("http", "https") and t.host and 0 < t.port < 65536
        assert t.path.startswith("/") and all(0x20 < ord(c) < 0x7f for c in t.path)
        assert "#" not in t.path and t.url.startswith(t.scheme + "://")


def test_targets() -> None:
    t = parse_target("HTTP://Example.COM:8080/a b/ü?q=1#frag")
    assert (t.scheme, t.host, t.port, t.path) == ("http", "example.com", 8080, "/a%20b/%C3%BC?q=1")
    assert t.authority == "example.com:8080"
    assert parse_target("https://[::1]/").authority == "[::1]"
    assert parse_target("http://Bücher.example./").host == "xn--bcher-kva.example"
    for bad in ["ftp://x/", "http:///x", "http://u:p@x/", "http://x:99999/", "http://x:0/",
                "http://a..b/", "http://-x-/"]:
        with pytest.raises(TypeError):
            parse_target(bad)


@pytest.mark.parametrize("args", [None, [], ["GET"], [1, "http://a.example/"],
                                  ["GE T", "http://a.example/"], ["CONNECT", "http://a.example/"],
                                  ["GET", "http://a.example/", [], b"body"],
                                  ["POST", "http://a.example/", [], 5],
                                  ["GET", "http://a.example/", [], None, {"redirect": "x"}],
                                  ["GET", "http://a.example/", [], None, {"timeout": -1}],
                                  ["GET", "http://a.example/", [], None, {"other": 1}],
                                  ["GET", "http://a.example/\n"], ["GET", "x" * 9000]])
def test_bad_requests_are_type_errors_before_any_decision(args: object) -> None:
    s = EgressSession(NetworkPolicy(allow=["*"]))
    s.begin(None)
    with pytest.raises(TypeError, match="fetch: "):
        fetch(s, args)                      # type: ignore[arg-type]
    assert s.requests == 0 and s.refusals == 0

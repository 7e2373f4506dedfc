"""NetworkPolicy: rule parsing, decisions (names, addresses, DNS answers), operator caps, the wire
form; and the dispatcher's reserved ``net.*`` channel. Pure logic: no socket is opened."""

from __future__ import annotations

import ipaddress

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapcell.code.egress import (
    OPS,
    EgressLimitExceeded,
    EgressRefused,
    EgressSession,
    NetworkPolicy,
    op,
    parse_rule,
    static_resolver,
)
from snapcell.code.tools import ToolDispatcher
from snapcell.errors import ConfigurationError

RESOLVE = static_resolver({"api.example.com": ["93.184.216.34"],
                           "sub.example.org": ["93.184.216.35"],
                           "rebind.example.com": ["127.0.0.2"],
                           "metadata.example.com": ["169.254.169.254"],
                           "mixed.example.com": ["10.0.0.5", "93.184.216.36"],
                           "local.test": ["127.0.0.1"]})


def test_no_policy_allows_nothing() -> None:
    p = NetworkPolicy()
    assert not p.enabled
    with pytest.raises(EgressRefused, match=r"connection to api.example.com:443 refused by the "
                                            r"sandbox's network policy \(allowed: no network\)"):
        p.resolve("api.example.com", 443, RESOLVE)


def test_name_rule_default_ports_and_resolution() -> None:
    p = NetworkPolicy(allow=["api.example.com"])
    d = p.resolve("API.Example.com.", 443, RESOLVE)
    assert (d.host, d.port, d.address) == ("api.example.com", 443, "93.184.216.34")
    assert p.resolve("api.example.com", 80, RESOLVE).address == "93.184.216.34"
    with pytest.raises(EgressRefused, match=r"api.example.com:8080 refused .*allowed: "
                                            r"api.example.com\)"):
        p.resolve("api.example.com", 8080, RESOLVE)


def test_wildcard_matches_below_not_itself() -> None:
    p = NetworkPolicy(allow=["*.example.org:443"])
    assert p.resolve("sub.example.org", 443, RESOLVE).address == "93.184.216.35"
    with pytest.raises(EgressRefused):
        p.resolve("example.org", 443, RESOLVE)
    with pytest.raises(EgressRefused):
        p.resolve("sub.example.org", 80, RESOLVE)


def test_dns_to_a_special_address_is_refused_unless_named() -> None:
    p = NetworkPolicy(allow=["rebind.example.com:80", "metadata.example.com:80"])
    with pytest.raises(EgressRefused, match=r"rebind.example.com resolves to 127.0.0.2, which the "
                                            r"policy does not name"):
        p.resolve("rebind.example.com", 80, RESOLVE)
    with pytest.raises(EgressRefused, match="169.254.169.254"):
        p.resolve("metadata.example.com", 80, RESOLVE)
    named = NetworkPolicy(allow=["local.test:8080", "127.0.0.1:8080"])
    assert named.resolve("local.test", 8080, RESOLVE).address == "127.0.0.1"


def test_a_mixed_answer_uses_only_the_allowed_address() -> None:
    p = NetworkPolicy(allow=["mixed.example.com:443"])
    assert p.resolve("mixed.example.com", 443, RESOLVE).address == "93.184.216.36"


def test_addresses_need_address_rules() -> None:
    p = NetworkPolicy(allow=["127.0.0.1:8080", "10.0.0.0/8:*", "[::1]:9000"])
    assert p.resolve("127.0.0.1", 8080).address == "127.0.0.1"
    assert p.resolve("10.1.2.3", 22).address == "10.1.2.3"
    assert p.resolve("::1", 9000).address == "::1"
    assert p.resolve("::ffff:127.0.0.1", 8080).address == "127.0.0.1"
    for host, port in [("127.0.0.2", 80), ("127.0.0.1", 8081), ("169.254.169.254", 80),
                       ("0.0.0.0", 8080), ("::1", 9001)]:
        with pytest.raises(EgressRefused, match="refused by the sandbox's network policy"):
            p.resolve(host, port)


def test_any_rule_is_public_only() -> None:
    p = NetworkPolicy(allow=["*"])
    assert p.resolve("api.example.com", 443, RESOLVE).address == "93.184.216.34"
    assert p.resolve("93.184.216.34", 80).address == "93.184.216.34"
    for host in ("rebind.example.com", "127.0.0.1", "192.168.1.1", "100.64.0.1", "224.0.0.1"):
        with pytest.raises(EgressRefused):
            p.resolve(host, 80, RESOLVE)


@pytest.mark.parametrize("rule", ["", "   ", "a:0", "a:65536", "a:x", "fe80::1", "[::1",
                                  "[1.2.3.4]", "a*.b", "10.0.0.1/8", "-bad.example",
                                  "x" * 300, "[::1]x"])
def test_bad_rules_are_refused_in_words(rule: str) -> None:
    with pytest.raises(ConfigurationError, match="rule|host|port"):
        NetworkPolicy(allow=[rule])


@pytest.mark.parametrize("kwargs", [{"allow": "api.example.com"}, {"methods": ["FETCH"]},
                                    {"max_requests": 0}, {"max_bytes_in": 1.5},
                                    {"max_connections": True}, {"connection_seconds": -1},
                                    {"ca_bundle": "not pem"}, {"allow": ["a"] * 65}])
def test_bad_fields_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigurationError):
        NetworkPolicy(**kwargs)


def test_bad_requests_are_refused_not_raised_raw() -> None:
    p = NetworkPolicy(allow=["*"])
    for host, port in [("", 80), ("api.example.com", 0), ("api.example.com", True),
                       ("a..b", 80), (None, 80)]:
        with pytest.raises(EgressRefused):
            p.resolve(host, port, RESOLVE)   # type: ignore[arg-type]
    with pytest.raises(EgressRefused, match="does not resolve"):
        p.resolve("nowhere.example.com", 80, RESOLVE)


def test_methods() -> None:
    p = NetworkPolicy(allow=["*"], methods=["get", "HEAD"])
    p.check_method("GET")
    with pytest.raises(EgressRefused, match="HTTP method POST refused .*allowed: GET, HEAD"):
        p.check_method("post")


def test_operator_cap() -> None:
    cap = NetworkPolicy(allow=["*.example.org:443", "127.0.0.0/8:*", "api.example.com"],
                        max_requests=10, methods=["GET", "POST"])
    ok = NetworkPolicy(allow=["sub.example.org:443", "127.0.0.1:8080", "api.example.com:80"],
                       max_requests=50, methods=["GET", "PUT"]).within(cap)
    assert ok.max_requests == 10 and ok.methods == frozenset({"GET"})
    for rule in ["sub.example.org:80", "example.org:443", "10.0.0.1:80", "*", "api.example.com:*"]:
        with pytest.raises(ConfigurationError, match="outside what this service allows"):
            NetworkPolicy(allow=[rule]).within(cap)


def test_json_round_trip_and_strictness() -> None:
    p = NetworkPolicy(allow=["api.example.com:443", "[::1]:80"], methods=["GET"],
                      max_bytes_in=1000)
    assert NetworkPolicy.from_json(p.to_json()) == p
    assert NetworkPolicy.from_json(["a.example.com"]).allow == ("a.example.com",)
    for bad in [{"allow": "x"}, {"allow": [1]}, {"bogus": 1}, 3, {"methods": "GET"},
                {"max_requests": "9"}]:
        with pytest.raises(ConfigurationError):
            NetworkPolicy.from_json(bad)


octet = st.integers(0, 255)


@given(st.tuples(octet, octet, octet, octet), st.integers(1, 65535))
def test_addresses_outside_the_public_internet_never_pass_a_name_rule(q: tuple, port: int) -> None:
    addr = ".".join(map(str, q))
    p = NetworkPolicy(allow=["*:*", "name.example.com:*"])
    resolver = static_resolver({"name.example.com": [addr]})
    ip = ipaddress.ip_address(addr)
    if ip.is_global and not ip.is_multicast:
        assert p.resolve("name.example.com", port, resolver).address == addr
        assert p.resolve(addr, port).address == addr
    else:
        with pytest.raises(EgressRefused):
            p.resolve("name.example.com", port, resolver)
        with pytest.raises(EgressRefused):
            p.resolve(addr, port)


@given(st.lists(st.sampled_from(["a.example.com", "*.example.org:443", "127.0.0.1:8080",
                                 "10.0.0.0/8", "[::1]:*", "*:443", ":80"]), max_size=5))
def test_a_policy_is_within_itself(rules: list[str]) -> None:
    p = NetworkPolicy(allow=rules)
    assert p.within(p).allow == p.allow
    assert all(parse_rule(r).within(parse_rule(r)) for r in rules)


# ---------------------------------------------------------------- the session and the channel
class _Handle:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_session_budget_and_handles_close_at_the_end_of_a_run() -> None:
    s = EgressSession(NetworkPolicy(allow=["api.example.com"], max_requests=2, max_bytes_out=10,
                                    max_bytes_in=10, max_connections=1), RESOLVE)
    s.begin(None)
    s.destination("api.example.com", 443)
    s.destination("api.example.com", 443)
    with pytest.raises(EgressLimitExceeded, match="at most 2 connections or requests per run"):
        s.destination("api.example.com", 443)
    s.sent("d", 10)
    with pytest.raises(EgressLimitExceeded, match="10 bytes out"):
        s.sent("d", 1)
    with pytest.raises(EgressLimitExceeded, match="10 bytes in"):
        s.received("d", 11)
    h, h2 = _Handle(), _Handle()
    n = s.add(h)
    assert s.get(n) is h
    with pytest.raises(EgressLimitExceeded, match="1 open connections"):
        s.add(h2)
    assert h2.closed
    with pytest.raises(OSError, match="bad connection handle"):
        s.get(n + 1)
    s.begin(None)                     # a new run: fresh budget, the old run's handles closed
    assert h.closed and s.requests == 0
    s.destination("api.example.com", 443)


def test_reserved_channel() -> None:
    calls: list = []

    @op("test_echo")
    def echo(session: EgressSession, args: list) -> object:
        calls.append(args)
        if args == ["refuse"]:
            session.destination("127.0.0.9", 1)
        return args

    try:
        def request(name: str, args: list) -> list:
            return msgpack.unpackb(d(msgpack.packb([name, args])))

        d = ToolDispatcher({}, 1 << 20)
        assert request("net.test_echo", [1]) == [1, "PermissionError",
                                                 "this sandbox has no network: its network "
                                                 "policy allows no destination"]
        session = EgressSession(NetworkPolicy(allow=["api.example.com"]), RESOLVE)
        d = ToolDispatcher({"net": lambda: 1}, 1 << 20, network=session)
        assert request("net.test_echo", [1, b"x"]) == [0, [1, b"x"]]
        err = request("net.test_echo", ["refuse"])
        assert err[:2] == [1, "PermissionError"] and "127.0.0.9:1 refused" in err[2]
        assert request("net.nosuch", [])[:2] == [1, "OSError"]
        assert session.refusals == 1 and calls == [[1, b"x"], ["refuse"]]
    finally:
        OPS.pop("net.test_echo")

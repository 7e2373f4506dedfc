"""`NetworkPolicy`: which destinations a code sandbox may reach through the host, and how much.

A policy is a list of allow rules plus per-run bounds. Rules are written ``HOST[:PORT]``:

- ``api.example.com`` — that DNS name; ``*.example.org`` — any name below example.org (not
  example.org itself); ``*`` — any name and any public address;
- ``203.0.113.7``, ``[2001:db8::1]`` — that address; ``10.0.0.0/8``, ``[fd00::/8]`` — a network;
- ``:443`` — that port; ``:*`` — any port; no port — ports 80 and 443.

Every decision is made by the host, before any packet leaves: a name is checked against the rules,
resolved by the host (`Resolver`), and each address it resolves to is checked again. An address
that is not globally routable (loopback, private, link-local — cloud metadata included —, shared,
multicast, reserved) is refused unless an address or network rule names it: a name rule alone
never admits one, so DNS cannot smuggle the host's own network in (SSRF by DNS or rebinding). The
connection is then made to the address checked (`Destination.address`), never re-resolved.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ...errors import ConfigurationError, SnapcellError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]
"""A host-side resolver: (name, port) → the addresses (text) the name resolves to."""

DEFAULT_PORTS = frozenset({80, 443})
MAX_RULES = 64
MAX_RULE_LENGTH = 260
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LIMITS = {              # field → (default, maximum)
    "max_requests": (64, 10_000),
    "max_bytes_out": (10 << 20, 1 << 30),
    "max_bytes_in": (50 << 20, 1 << 30),
    "max_connections": (16, 256),
    "connection_seconds": (30.0, 3600.0),
}


class EgressRefused(SnapcellError, PermissionError):
    """A destination the sandbox's network policy does not allow; raised before any connection."""


class EgressLimitExceeded(SnapcellError, PermissionError):
    """A run went past a bound of its network policy (requests, bytes, open connections)."""


@dataclass(frozen=True)
class Rule:
    """One allow rule, parsed (see the module's docstring for the syntax)."""

    text: str
    kind: str                          # 'any', 'name', 'suffix', 'address' or 'network'
    host: str = ""                     # the name, or the suffix without '*.'
    network: IPNetwork | None = None   # for 'address' (a /32 or /128) and 'network'
    ports: frozenset[int] | None = DEFAULT_PORTS    # None: any port

    def allows_port(self, port: int) -> bool:
        """Whether the rule admits `port`."""
        return self.ports is None or port in self.ports

    def names(self, host: str) -> bool:
        """Whether the rule admits the DNS name `host` (normalised)."""
        if self.kind == "any":
            return True
        if self.kind == "name":
            return host == self.host
        if self.kind == "suffix":
            return host.endswith("." + self.host)
        return False

    def covers_address(self, ip: IPAddress) -> bool:
        """Whether an address or network rule names `ip` explicitly."""
        return self.network is not None and ip.version == self.network.version \
            and ip in self.network

    def within(self, other: Rule) -> bool:
        """Whether everything this rule admits, `other` admits too (for operator caps)."""
        if other.ports is not None and (self.ports is None or not self.ports <= other.ports):
            return False
        if self.network is not None:
            return other.network is not None and self.network.version == other.network.version \
                and self.network.subnet_of(other.network)      # type: ignore[arg-type]
        if self.kind == "any":
            return other.kind == "any"
        if other.kind == "any":
            return True
        if other.kind == "name":
            return self.kind == "name" and self.host == other.host
        if other.kind == "suffix":
            return self.host.endswith("." + other.host) or \
                (self.kind == "suffix" and self.host == other.host)
        return False


@dataclass(frozen=True)
class Destination:
    """Where a connection may go: the name asked for (or the address, as text), the port, the
    one address to connect to, and the rule that admitted it."""

    host: str
    port: int
    address: str
    rule: Rule

    @property
    def label(self) -> str:
        """``host:port`` as a person reads it (brackets around IPv6 addresses)."""
        return _label(self.host, self.port)


def _label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normalise_host(host: str) -> str:
    """A host name lower-cased, IDNA-encoded and without a trailing dot; ConfigurationError for a
    name that is not one."""
    if not isinstance(host, str) or not host or len(host) > 253 + 1:
        raise ConfigurationError(f"not a host name: {host!r}")
    h = host.rstrip(".").lower() if host != "." else ""
    try:
        h = h.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigurationError(f"not a host name: {host!r}") from None
    labels = h.split(".")
    if not h or any(not lab or len(lab) > 63 or lab.startswith("-") or lab.endswith("-")
                    or not all(c.isalnum() or c in "-_" for c in lab) for lab in labels):
        raise ConfigurationError(f"not a host name: {host!r}")
    return h


def parse_address(text: str) -> IPAddress | None:
    """`text` as an IP address (IPv4-mapped IPv6 addresses become IPv4), or None."""
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_special(ip: IPAddress) -> bool:
    """Whether `ip` must be named explicitly: anything not globally routable (loopback,
    private, link-local and cloud metadata, shared address space, multicast, reserved)."""
    return not ip.is_global or ip.is_multicast


def _ports(text: str, rule: str) -> frozenset[int] | None:
    if text == "*":
        return None
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigurationError(f"network rule {rule!r}: the port must be 1-65535 or '*'")
    return frozenset({int(text)})


def parse_rule(text: str) -> Rule:
    """One rule from its text; ConfigurationError naming what is wrong."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_RULE_LENGTH:
        raise ConfigurationError(f"a network rule must be a non-empty string of at most "
                                 f"{MAX_RULE_LENGTH} characters, got {text!r}")
    t = text.strip()
    ports: frozenset[int] | None = DEFAULT_PORTS
    if t.startswith("["):                              # [IPv6] or [IPv6/len], maybe :port
        end = t.find("]")
        if end < 0:
            raise ConfigurationError(f"network rule {text!r}: unclosed '['")
        host, rest = t[1:end], t[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ConfigurationError(f"network rule {text!r}: expected ':PORT' after ']'")
            ports = _ports(rest[1:], text)
        if ":" not in host:
            raise ConfigurationError(f"network rule {text!r}: brackets are for IPv6 addresses")
    elif t.count(":") > 1:
        raise ConfigurationError(f"network rule {text!r}: write IPv6 addresses in brackets, "
                                 "e.g. [2001:db8::1]:443")
    else:
        host, _, port = t.partition(":")
        if _:
            ports = _ports(port, text)
    if host in ("", "*"):
        if host == "" and ports is DEFAULT_PORTS:
            raise ConfigurationError(f"network rule {text!r}: no host")
        return Rule(text, "any", ports=ports)
    if "/" in host:
        try:
            net = ipaddress.ip_network(host, strict=True)
        except ValueError as e:
            raise ConfigurationError(f"network rule {text!r}: {e}") from None
        return Rule(text, "network", network=net, ports=ports)
    ip = parse_address(host)
    if ip is not None:
        return Rule(text, "address", network=ipaddress.ip_network(ip), ports=ports)
    if host.startswith("*."):
        return Rule(text, "suffix", host=normalise_host(host[2:]), ports=ports)
    if "*" in host:
        raise ConfigurationError(f"network rule {text!r}: '*' may only start a name ('*.example.org')")
    return Rule(text, "name", host=normalise_host(host), ports=ports)


def system_resolver(host: str, port: int) -> list[str]:
    """The host's resolver (getaddrinfo), TCP addresses in its order, without duplicates."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(str(i[4][0]) for i in infos))


def static_resolver(table: Mapping[str, Iterable[str]]) -> Resolver:
    """A resolver answering only from `table` (name → addresses); for tests and fixed setups."""
    fixed = {normalise_host(k): [str(parse_address(a) or a) for a in v] for k, v in table.items()}
    return lambda host, port: fixed.get(host, [])


@dataclass(frozen=True)
class NetworkPolicy:
    """What a code sandbox may reach. ``NetworkPolicy()`` allows nothing (the default of every
    sandbox); ``NetworkPolicy(allow=["api.example.com", "127.0.0.1:8080"])`` allows those.

    Bounds per run: `max_requests` (connections opened, and requests the host makes for JS
    ``fetch``), `max_bytes_out` / `max_bytes_in` (payload bytes over all of them),
    `max_connections` open at once, `connection_seconds` a connection may live. `methods`
    restricts the HTTP methods of requests the host makes (None: any); connections Python opens
    itself carry TLS the host cannot read, so a policy with `methods` refuses them.
    `ca_bundle` (PEM text) is trusted, beside the system's CAs, by requests the host makes."""

    allow: Sequence[str] = ()
    methods: frozenset[str] | None = None
    max_requests: int = _LIMITS["max_requests"][0]                # type: ignore[assignment]
    max_bytes_out: int = _LIMITS["max_bytes_out"][0]              # type: ignore[assignment]
    max_bytes_in: int = _LIMITS["max_bytes_in"][0]                # type: ignore[assignment]
    max_connections: int = _LIMITS["max_connections"][0]          # type: ignore[assignment]
    connection_seconds: float = _LIMITS["connection_seconds"][0]
    ca_bundle: str | None = None
    rules: tuple[Rule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        allow = self.allow
        if isinstance(allow, str) or not isinstance(allow, Iterable):
            raise ConfigurationError("allow must be a list of rules such as 'api.example.com:443'")
        allow = tuple(allow)
        if len(allow) > MAX_RULES:
            raise ConfigurationError(f"at most {MAX_RULES} network rules, got {len(allow)}")
        rules = tuple(parse_rule(r) for r in allow)
        object.__setattr__(self, "allow", tuple(r.text.strip() for r in rules))
        object.__setattr__(self, "rules", rules)
        if self.methods is not None:
            if isinstance(self.methods, str) or not isinstance(self.methods, Iterable):
                raise ConfigurationError("methods must be a list of HTTP methods or None")
            methods = frozenset(m.upper() if isinstance(m, str) else m for m in self.methods)
            bad = sorted(str(m) for m in methods if m not in HTTP_METHODS)
            if bad:
                raise ConfigurationError(f"unknown HTTP method(s) {', '.join(bad)}; known: "
                                         f"{', '.join(sorted(HTTP_METHODS))}")
            object.__setattr__(self, "methods", methods)
        for name, (_, maximum) in _LIMITS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= maximum \
                    or (name != "connection_seconds" and not isinstance(v, int)):
                raise ConfigurationError(f"{name} must be a positive number at most {maximum}, "
                                         f"got {v!r}")
        if self.ca_bundle is not None and (not isinstance(self.ca_bundle, str)
                                           or "-----BEGIN CERTIFICATE-----" not in self.ca_bundle
                                           or len(self.ca_bundle) > 1 << 20):
            raise ConfigurationError("ca_bundle must be PEM text with at least one certificate "
                                     "(at most 1 MiB)")

    # ------------------------------------------------------------------ decisions
    @property
    def enabled(self) -> bool:
        """Whether the policy allows anything at all."""
        return bool(self.rules)

    def describe(self) -> str:
        """The allow list as the refusals quote it."""
        if not self.rules:
            return "no network"
        text = ", ".join(self.allow)
        return text if len(text) <= 300 else text[:297] + "..."

    def _refuse(self, host: str, port: int, why: str = "") -> EgressRefused:
        reason = f": {why}" if why else ""
        return EgressRefused(f"connection to {_label(host, port)} refused by the sandbox's "
                             f"network policy{reason} (allowed: {self.describe()})")

    def check_method(self, method: str) -> None:
        """Refuse an HTTP method the policy does not allow."""
        if self.methods is not None and method.upper() not in self.methods:
            raise EgressRefused(f"HTTP method {method.upper()} refused by the sandbox's network "
                                f"policy (allowed: {', '.join(sorted(self.methods))})")

    def resolve(self, host: str, port: int, resolver: Resolver | None = None) -> Destination:
        """Decide a connection to `host`:`port` (a name or an address), resolving names with
        `resolver` (the host's by default). Returns the Destination to connect to; raises
        EgressRefused, naming the reason, when no address may be used."""
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise EgressRefused(f"port {port!r} is not a TCP port (1-65535)")
        if not isinstance(host, str) or not host:
            raise EgressRefused(f"host {host!r} is not a host name or address")
        ip = parse_address(host)
        if ip is not None:
            rule = self._address_rule(ip, port, name_rule=None)
            if rule is None:
                raise self._refuse(str(ip), port, "that address is not named by a rule"
                                   if is_special(ip) else "")
            return Destination(str(ip), port, str(ip), rule)
        try:
            name = normalise_host(host)
        except ConfigurationError:
            raise EgressRefused(f"host {host[:100]!r} is not a valid host name") from None
        name_rule = next((r for r in self.rules if r.names(name) and r.allows_port(port)), None)
        if name_rule is None:
            raise self._refuse(name, port)
        addresses = (resolver or system_resolver)(name, port)
        if not addresses:
            raise EgressRefused(f"{name} does not resolve (the host's resolver found no address)")
        refused = []
        for text in list(addresses)[:32]:
            a = parse_address(str(text))
            if a is None:
                continue
            rule = self._address_rule(a, port, name_rule)
            if rule is not None:
                return Destination(name, port, str(a), rule)
            refused.append(str(a))
        shown = ", ".join(refused[:4]) or "no usable address"
        raise self._refuse(name, port, f"{name} resolves to {shown}, which the policy does not "
                                       "name (addresses outside the public internet must be named "
                                       "by an address rule)")

    def _address_rule(self, ip: IPAddress, port: int, name_rule: Rule | None) -> Rule | None:
        explicit = next((r for r in self.rules if r.covers_address(ip) and r.allows_port(port)),
                        None)
        if explicit is not None or is_special(ip):
            return explicit
        if name_rule is not None:
            return name_rule
        return next((r for r in self.rules if r.kind == "any" and r.allows_port(port)), None)

    # ------------------------------------------------------------------ caps and the wire
    def within(self, cap: NetworkPolicy) -> NetworkPolicy:
        """This policy limited by an operator's `cap`: every rule must fall within one of the
        cap's (ConfigurationError naming the first that does not); bounds take the smaller value
        and methods the intersection."""
        for r in self.rules:
            if not any(r.within(c) for c in cap.rules):
                raise ConfigurationError(f"network rule {r.text!r} is outside what this service "
                                         f"allows ({cap.describe()})")
        methods = cap.methods if self.methods is None else (
            self.methods if cap.methods is None else self.methods & cap.methods)
        bounds = {k: min(getattr(self, k), getattr(cap, k)) for k in _LIMITS}
        return replace(self, methods=methods, ca_bundle=self.ca_bundle or cap.ca_bundle,
                       **bounds)

    def to_json(self) -> dict[str, Any]:
        """The policy as JSON-ready data (`from_json` reads it back)."""
        out: dict[str, Any] = {"allow": list(self.allow)}
        if self.methods is not None:
            out["methods"] = sorted(self.methods)
        out.update({k: getattr(self, k) for k in _LIMITS})
        if self.ca_bundle is not None:
            out["ca_bundle"] = self.ca_bundle
        return out

    @classmethod
    def from_json(cls, data: Any) -> NetworkPolicy:
        """A policy from JSON data ({"allow": [...], ...}) or a bare list of rules; every field
        checked, unknown fields refused."""
        if isinstance(data, list):
            data = {"allow": data}
        if not isinstance(data, dict):
            raise ConfigurationError("a network policy is an object {\"allow\": [rules...], ...} "
                                     "or a list of rules")
        known = {"allow", "methods", "ca_bundle", *_LIMITS}
        extra = sorted(str(k) for k in data if k not in known)
        if extra:
            raise ConfigurationError(f"unknown network policy field(s): {', '.join(extra)}; "
                                     f"known: {', '.join(sorted(known))}")
        allow = data.get("allow", [])
        if not isinstance(allow, list) or not all(isinstance(r, str) for r in allow):
            raise ConfigurationError("allow must be a list of strings")
        methods = data.get("methods")
        if methods is not None and (not isinstance(methods, list)
                                    or not all(isinstance(m, str) for m in methods)):
            raise ConfigurationError("methods must be a list of strings")
        kwargs = {k: data[k] for k in _LIMITS if k in data}
        return cls(allow=tuple(allow), methods=None if methods is None else frozenset(methods),
                   ca_bundle=data.get("ca_bundle"), **kwargs)


NO_NETWORK = NetworkPolicy()

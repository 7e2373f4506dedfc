"""Network egress for code sandboxes: an allow-list `NetworkPolicy` decided on the host, and the
`EgressSession` that serves a sandbox's reserved ``net.*`` operations under it. No policy, no
network (the default)."""

from ..netops import OP_PREFIX
from . import fetch as _fetch  # noqa: F401  (registers net.fetch)
from . import sockets  # noqa: F401  (registers the net.* socket operations)
from .policy import (
    NO_NETWORK,
    Destination,
    EgressLimitExceeded,
    EgressRefused,
    NetworkPolicy,
    Resolver,
    Rule,
    parse_rule,
    static_resolver,
    system_resolver,
)
from .session import OPS, EgressObserver, EgressSession, op

__all__ = ["NO_NETWORK", "OPS", "OP_PREFIX", "Destination", "EgressLimitExceeded", "EgressObserver",
           "EgressRefused", "EgressSession", "NetworkPolicy", "Resolver", "Rule", "op",
           "parse_rule", "static_resolver", "system_resolver"]

"""Network egress in the service: the operator's cap on what tenants' code sandboxes may reach,
and Prometheus metrics of egress per tenant.

The operator gives a cap (`snapcell serve --egress-cap POLICY.json`, a `NetworkPolicy` in its
JSON form); without one the service allows no network at all. A tenant asks for a policy per
run (``"network": {"allow": [...]}`` or a bare list of rules in ``POST /v1/run``); it must fall
within the cap (`NetworkPolicy.within`): a rule beyond it is a 403 naming the rule, a malformed
policy a 400. Bounds take the smaller of the tenant's and the cap's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from ..code.egress import EgressObserver, NetworkPolicy
from ..errors import ConfigurationError
from .errors import ApiError


def load_cap(path: str) -> NetworkPolicy:
    """The operator's cap from a JSON file; ConfigurationError naming what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigurationError(f"egress cap {path}: {e}") from None
    return NetworkPolicy.from_json(data)


class EgressMetrics:
    """Requests, bytes (by direction) and refusals of code sandboxes' egress, per tenant."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("snapcell_egress_requests", "Connections and requests made by "
                                "code sandboxes under their network policy", ["tenant"],
                                registry=registry)
        self.bytes = Counter("snapcell_egress_bytes", "Payload bytes of code sandboxes' egress",
                             ["tenant", "direction"], registry=registry)
        self.refusals = Counter("snapcell_egress_refusals", "Connections and requests refused by "
                                "a network policy (destination or bound)", ["tenant"],
                                registry=registry)

    def observer(self, tenant: str) -> EgressObserver:
        """The `EgressSession` observer counting `tenant`'s egress."""
        requests, refusals = self.requests.labels(tenant), self.refusals.labels(tenant)
        out, inn = self.bytes.labels(tenant, "out"), self.bytes.labels(tenant, "in")

        def observe(event: str, destination: str, nbytes: int) -> None:
            if event == "request":
                requests.inc()
            elif event == "refused":
                refusals.inc()
            elif event == "bytes_out":
                out.inc(nbytes)
            elif event == "bytes_in":
                inn.inc(nbytes)
        return observe


@dataclass(frozen=True)
class TenantNetwork:
    """A run's network: the tenant's policy within the cap, and the observer counting it."""

    policy: NetworkPolicy
    observer: EgressObserver


class Egress:
    """The service's egress settings: the operator's cap and the metrics."""

    def __init__(self, cap: NetworkPolicy | None, registry: CollectorRegistry) -> None:
        self.cap = cap if cap is not None and cap.enabled else None
        self.metrics = EgressMetrics(registry)

    def for_run(self, tenant: str, requested: Any) -> TenantNetwork | None:
        """The network of a run `tenant` asked for (None: no network). ApiError 400 for a
        malformed policy, 403 for one beyond the operator's cap (or any with no cap)."""
        if requested is None:
            return None
        try:
            policy = NetworkPolicy.from_json(requested)
        except ConfigurationError as e:
            raise ApiError(400, "invalid_arguments", f"network: {e}") from None
        if not policy.enabled:
            return None
        if self.cap is None:
            raise ApiError(403, "forbidden", "this service allows no network egress (the "
                           "operator set no cap: snapcell serve --egress-cap)")
        try:
            policy = policy.within(self.cap)
        except ConfigurationError as e:
            raise ApiError(403, "forbidden", f"network: {e}") from None
        return TenantNetwork(policy, self.metrics.observer(tenant))

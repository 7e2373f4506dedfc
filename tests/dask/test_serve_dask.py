"""`snapcell serve --dask`: the HTTP service hands calls, batches and code runs to a real
cluster (scheduler + two workers on 127.0.0.1) instead of its local pools."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from distributed import Client

from snapcell.dask.cluster import LoopbackCluster

from ..conftest import ROOT
from ..test_serve import _start_server, stop_server
from .conftest import STATIC, Snaps


@pytest.fixture(scope="module")
def served(cluster: LoopbackCluster, client: Client, snaps: Snaps) -> Iterator[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc, url = _start_server(["--snapshot", f"static={snaps.layout}#static", "--dask",
                               cluster.address, "--insecure-registry"], env)
    yield url
    stop_server(proc)


def test_calls_batches_and_runs_go_to_the_cluster(served: str, client: Client) -> None:
    with httpx.Client(base_url=served, timeout=60) as c:
        r = c.post("/v1/snapshots/static/call/AddToStatic", json={"args": [5]})
        assert r.status_code == 200, r.text
        assert r.json()["result"] == STATIC + 5            # fresh snapshot state on a worker
        r = c.post("/v1/snapshots/static/map/AddToStatic", json={"items": [[1], [2], [3]]})
        assert [x["result"] for x in r.json()["results"]] == [STATIC + 1, STATIC + 2, STATIC + 3]
        r = c.post("/v1/snapshots/static/call/TriggerException", json={"args": []})
        assert r.status_code >= 400 and "InvalidOpcode" in r.text
        r = c.post("/v1/run", json={"lang": "js", "code": "[1, 2].map(x => x * 2)"})
        assert r.status_code == 200 and r.json()["value"] == [2, 4], r.text
    # the calls ran on the cluster's workers: a pool of the served snapshot exists there
    assert served_digest(client)


def served_digest(client: Client) -> list[str]:
    """The snapshot keys of the sandbox pools on every worker."""
    def keys(dask_worker: Any) -> list[str]:
        from snapcell.dask.plugin import PLUGIN_NAME
        state = dask_worker.plugins[PLUGIN_NAME].state
        return [repr(k) for k in state._pools]                # noqa: SLF001
    found = [k for ks in client.run(keys).values() for k in ks]
    return [k for k in found if "static" in k or "sha256" in k]

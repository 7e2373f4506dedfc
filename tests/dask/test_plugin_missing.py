"""`map_calls` / `map_runs` on a cluster without the snapcell plugin raise PluginMissing once,
before anything is submitted (issue 28 item 6), and work once the plugin is installed."""

from __future__ import annotations

import pytest
from distributed import Client

import snapcell.dask as sd
from snapcell.dask.cluster import LoopbackCluster
from snapcell.dask.plugin import PluginMissing

from .conftest import Snaps


def test_a_cluster_without_the_plugin_is_refused_up_front(snaps: Snaps, kvm_ok: None,
                                                          tmp_path: object) -> None:
    with LoopbackCluster(1, 1, directory=str(tmp_path)) as cluster, \
            Client(cluster.address, timeout=30) as c:
        c.wait_for_workers(1, timeout=60)
        with pytest.raises(PluginMissing, match="install"):
            sd.map_calls(c, snaps.fresh, "Add", [(i, 1) for i in range(2000)])
        with pytest.raises(PluginMissing):
            sd.map_runs(c, "js", ["1 + 1"] * 10)
        assert sd.map_calls(c, snaps.fresh, "Add", []) == []
        assert not c.who_has()                   # nothing was submitted
        sd.install(c, insecure=True)
        assert sd.map_calls(c, snaps.fresh, "AddToStatic", [5] * 4) == [5] * 4
        assert sd.map_runs(c, "js", ["1 + 1"])[0].value == 2

"""Scale-out on Dask distributed (``pip install 'snapcell[dask]'``, docs/scale-out.md).

`SnapcellPlugin` keeps, on every worker, a cache of snapshots pulled from an OCI registry by
digest (verified once) and warm pools of sandboxes per snapshot; `map_calls` and `map_runs`
spread batches over the cluster and return results in order with per-item errors as values;
`DaskBackend` is the asynchronous front the HTTP service uses."""

from .backend import DaskBackend
from .cache import SnapshotCache
from .items import ItemError, is_error
from .maps import Batch, install, map_calls, map_runs, submit_calls, submit_runs
from .plugin import SnapcellPlugin, WorkerState, worker_stats
from .pool import SandboxPool
from .refs import SnapshotRef, parse_snapshot_ref

__all__ = ["Batch", "DaskBackend", "ItemError", "SandboxPool", "SnapcellPlugin", "SnapshotCache",
           "SnapshotRef", "WorkerState", "install", "is_error", "map_calls", "map_runs",
           "parse_snapshot_ref", "submit_calls", "submit_runs", "worker_stats"]

"""`snapcell bench`: every benchmark in one place — the driver (driver.py: the steps, the table,
JSON and plot), how rows are timed (timing.py: stats, interleaved blocks, the fastest period) and
the measurements that need a layer's internals (snapshots.py: persistence and diff snapshots;
serving.py: the pool, call_many and the HTTP service; scaleout.py: Dask). A top layer, beside
the CLI: it may import every other layer and none imports it (docs/benchmarks.md)."""

from .driver import run_benchmarks

__all__ = ["run_benchmarks"]

"""Batch maps over a Dask cluster: `map_calls` (a guest function over inputs, in sandboxes of
one snapshot) and `map_runs` (code snippets in code sandboxes). Items are cut into chunks, one
Dask task per chunk; results come back in input order, each item's failure as its value."""

from __future__ import annotations

from asyncio import CancelledError
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, Future

from ..code import RunResult, language
from ..errors import ArgumentError, ConfigurationError
from ..sandbox import HostFunctions
from .items import ItemError, auto_chunk_size, check_chunk_size, chunks
from .plugin import (
    PLUGIN_NAME,
    PluginMissing,
    SnapcellPlugin,
    WorkerState,
    host_functions_token,
    tools_token,
)
from .refs import parse_snapshot_ref
from .tasks import PackedRun, call_chunk, run_chunk, unpack_run

Workers = str | Sequence[str] | None
_LIMITS = ("memory_limit", "max_output")


def install(client: Client, **options: Any) -> SnapcellPlugin:
    """Register a `SnapcellPlugin(**options)` on the cluster (replacing an earlier one) and
    return it. Every worker, also those that join later, gets a cache and pools."""
    plugin = SnapcellPlugin(**options)
    client.register_plugin(plugin)
    return plugin


@dataclass
class Batch:
    """A submitted batch: one future per chunk and each chunk's size. `result()` waits and
    returns the items' results in input order."""

    client: Client
    futures: list[Future[Any]]
    sizes: list[int]
    decode: str = "call"
    _done: list[Any] | None = field(default=None, repr=False)

    def result(self) -> list[Any]:
        """Every item's result in order; a chunk whose task itself failed (for example its
        workers kept dying) gives an ItemError for each of its items."""
        if self._done is None:
            try:        # skip: failed chunks are looked at below, one by one
                data = self.client.gather(self.futures, errors="skip")
            except CancelledError:
                data = [self.client.gather(f) for f in self.futures if f.status == "finished"]
            failed = {f.key: _exception(f) for f in self.futures if f.status != "finished"}
            self._done = _assemble(self.futures, self.sizes, data, failed, self.decode)
        return self._done

    async def aresult(self) -> list[Any]:
        """`result()` for an asynchronous client (``Client(..., asynchronous=True)``)."""
        if self._done is None:
            try:
                data = await self.client.gather(self.futures, errors="skip")
            except CancelledError:
                data = [await self.client.gather(f) for f in self.futures
                        if f.status == "finished"]
            failed: dict[Any, ItemError] = {}
            for f in self.futures:
                if f.status == "error":
                    failed[f.key] = ItemError.of(await f.exception())
                elif f.status != "finished":
                    failed[f.key] = ItemError("SnapcellError", f"the chunk's task ended as "
                                                               f"{f.status}")
            self._done = _assemble(self.futures, self.sizes, data, failed, self.decode)
        return self._done

    def cancel(self) -> None:
        """Cancel the chunks that have not run."""
        self.client.cancel(self.futures)


def _exception(f: Future[Any]) -> ItemError:
    """The ItemError for a chunk whose task did not finish."""
    try:
        exc = f.exception(timeout=0) if f.status == "error" else None
    except Exception as e:      # a cancelled future raises here
        return ItemError.of(e)
    if exc is None:
        return ItemError("SnapcellError", f"the chunk's task ended as {f.status}")
    return ItemError.of(exc)


def _assemble(futures: list[Future[Any]], sizes: list[int], data: list[Any],
              failed: dict[Any, ItemError], decode: str) -> list[Any]:
    out: list[Any] = []
    it = iter(data)
    for f, n in zip(futures, sizes):
        if f.key in failed:
            part = [failed[f.key]] * n
        else:
            part = next(it)
            if len(part) != n:
                part = [ItemError("SnapcellError", f"a chunk of {n} items returned {len(part)} "
                                  "results")] * n
        if decode == "run":
            out.extend(_packed(x) for x in part)
        else:
            out.extend(part)
    return out


def _chunking(client: Client, n: int, chunk_size: int | None) -> int:
    size = check_chunk_size(chunk_size)
    if size is not None:
        return size
    if client.asynchronous:
        raise ConfigurationError("with an asynchronous client pass chunk_size explicitly")
    return auto_chunk_size(n, sum(client.nthreads().values()))


def _worker_list(workers: Workers) -> list[str] | None:
    if workers is None:
        return None
    return [workers] if isinstance(workers, str) else list(workers)


def _has_plugin(dask_worker: Any) -> bool:
    return isinstance(getattr(dask_worker.plugins.get(PLUGIN_NAME), "state", None), WorkerState)


def check_plugin(client: Client, workers: Workers = None) -> None:
    """Raise PluginMissing, once and before anything is submitted, when a worker the batch may
    run on (all of them, or `workers`) has no snapcell plugin. A synchronous client only (an
    asynchronous one's tasks report PluginMissing per item)."""
    if client.asynchronous:
        return
    have = client.run(_has_plugin, workers=_worker_list(workers))
    missing = sorted(w for w, ok in have.items() if not ok)
    if missing:
        raise PluginMissing(f"{len(missing)} of {len(have)} workers have no snapcell plugin "
                            f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}): "
                            "call snapcell.dask.install(client) first")


def submit_calls(client: Client, ref: str, function: str, inputs: Iterable[Any], *,
                 host_functions: HostFunctions | None = None, timeout: float | None = None,
                 chunk_size: int | None = None, workers: Workers = None) -> Batch:
    """Submit `map_calls`'s tasks without waiting; see `map_calls`."""
    sref = parse_snapshot_ref(ref)          # a bad reference fails here, before anything runs
    if not isinstance(function, str) or not function:
        raise ArgumentError(f"function must be a guest function name, got {function!r}")
    if host_functions is not None and not isinstance(host_functions, HostFunctions):
        raise ArgumentError("host_functions must be a HostFunctions")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise ArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
    items = list(inputs)
    size = _chunking(client, len(items), chunk_size)
    if items:
        check_plugin(client, workers)
    token = host_functions_token(host_functions)
    parts = chunks(items, size)
    futures = client.map(call_chunk, parts, ref=str(sref), function=function,
                         host_functions=host_functions, token=token, timeout=timeout,
                         pure=False, workers=_worker_list(workers)) if parts else []
    return Batch(client, futures, [len(p) for p in parts], "call")


def map_calls(client: Client, ref: str, function: str, inputs: Iterable[Any], *,
              host_functions: HostFunctions | None = None, timeout: float | None = None,
              chunk_size: int | None = None, workers: Workers = None) -> list[Any]:
    """Call guest `function` once per input, in sandboxes of snapshot `ref` on the cluster's
    workers, and return the results in input order.

    `ref` is a registry reference pinned by digest (``host/repo@sha256:...``) or a layout
    (``oci:<dir>[:tag]``); each worker pulls and verifies it once. Each input is a tuple of
    arguments, or a single argument. Every item runs on fresh snapshot state. A failed item
    (bad arguments, a guest fault, its `timeout`, a snapshot that fails verification) is an
    `ItemError` in its place; no item's failure fails the batch. Items go `chunk_size` to a
    Dask task (default: about 4 tasks per worker thread); `workers` restricts where. A cluster
    without the snapcell plugin (`install`) raises PluginMissing before anything runs."""
    return submit_calls(client, ref, function, inputs, host_functions=host_functions,
                        timeout=timeout, chunk_size=chunk_size, workers=workers).result()


def submit_runs(client: Client, lang: str, snippets: Iterable[Any], *,
                tools: Mapping[str, Any] | None = None, timeout: float | None = 5.0,
                snapshot: str | None = None, chunk_size: int | None = None,
                workers: Workers = None, **limits: Any) -> Batch:
    """Submit `map_runs`'s tasks without waiting; see `map_runs`."""
    spec = language(lang)                   # an unknown language fails here
    unknown = set(limits) - set(_LIMITS)
    if unknown:
        raise ConfigurationError(f"unknown code sandbox option(s): {sorted(unknown)}")
    if tools is not None and not isinstance(tools, Mapping):
        raise ArgumentError("tools must be a mapping of names to callables")
    if snapshot is not None:
        snapshot = str(parse_snapshot_ref(snapshot))
    items = list(snippets)
    size = _chunking(client, len(items), chunk_size)
    if items:
        check_plugin(client, workers)
    opts = {"timeout": timeout, **limits}
    token = tools_token(tools)
    parts = chunks(items, size)
    futures = client.map(run_chunk, parts, lang=spec.name, tools=tools, token=token,
                         snapshot=snapshot, limits=opts, pure=False,
                         workers=_worker_list(workers)) if parts else []
    return Batch(client, futures, [len(p) for p in parts], "run")


def map_runs(client: Client, lang: str, snippets: Iterable[Any], *,
             tools: Mapping[str, Any] | None = None, timeout: float | None = 5.0,
             snapshot: str | None = None, chunk_size: int | None = None,
             workers: Workers = None, **limits: Any) -> list[RunResult | ItemError]:
    """Run each snippet in a fresh code sandbox of `lang` (``"js"``, ``"lua"``) on the
    cluster and return a `RunResult` per snippet in order: the code's own failures (an
    exception, its `timeout`, the memory limit) are in `RunResult.error`; an `ItemError` stands
    for a snippet that could not run (not a string, a worker without the interpreter guest).
    `tools` are callables the code can call (they travel to the workers, so they must pickle);
    `memory_limit` and `max_output` are passed to `CodeSandbox`; `snapshot` starts the
    sandboxes from a snapshot of the interpreter instead of the warm one."""
    return submit_runs(client, lang, snippets, tools=tools, timeout=timeout, snapshot=snapshot,
                       chunk_size=chunk_size, workers=workers, **limits).result()


def _packed(x: PackedRun | ItemError) -> RunResult | ItemError:
    return x if isinstance(x, ItemError) else unpack_run(x)

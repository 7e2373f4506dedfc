"""`DaskBackend`: what `snapcell serve --dask tcp://SCHEDULER` hands calls and runs to. An
asynchronous Dask client on the service's event loop; every method is a coroutine, so a request
handler awaits the cluster without blocking the loop."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from distributed import Client

from ..code import RunResult
from .items import ItemError
from .maps import submit_calls, submit_runs
from .plugin import SnapcellPlugin


class DaskBackend:
    """Calls and code runs on a Dask cluster::

        backend = DaskBackend("tcp://127.0.0.1:8786")
        await backend.start()                       # or: async with DaskBackend(...) as backend
        await backend.call("host/fn@sha256:...", "Add", [1, 2])     # 3, or raises the error
        r = await backend.run("js", "1 + 1", timeout=1.0)           # a RunResult
        await backend.close()

    `plugin` (a `SnapcellPlugin`, or options for one, e.g. ``{"insecure": True}``) is
    registered on the cluster at start unless None; by default an idempotent plugin is
    registered only when the cluster has none yet. `call` raises the item's snapcell error
    (ArgumentError, ExecutionTimeout, SnapshotDigestMismatch ...); `map_calls` and
    `map_runs` return errors as values like their synchronous namesakes."""

    def __init__(self, address: str, *, plugin: SnapcellPlugin | Mapping[str, Any] | None = None,
                 connect_timeout: float = 10.0) -> None:
        self.address = address
        if plugin is None:
            plugin = SnapcellPlugin(idempotent=True)
        elif not isinstance(plugin, SnapcellPlugin):
            plugin = SnapcellPlugin(**dict(plugin))
        self.plugin = plugin
        self.connect_timeout = connect_timeout
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        """The asynchronous client (after `start`)."""
        if self._client is None:
            raise RuntimeError("DaskBackend.start() has not been awaited")
        return self._client

    async def start(self) -> "DaskBackend":
        """Connect to the scheduler and register the plugin."""
        if self._client is None:
            client = await Client(self.address, asynchronous=True,
                                  timeout=self.connect_timeout)
            try:
                await client.register_plugin(self.plugin)
            except BaseException:
                await client.close()
                raise
            self._client = client
        return self

    async def close(self) -> None:
        """Disconnect (the cluster keeps running). Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def __aenter__(self) -> "DaskBackend":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, ref: str, function: str, args: Iterable[Any] = (), *,
                   timeout: float | None = None) -> Any:
        """Call `function(*args)` in a sandbox of snapshot `ref` on the cluster: its result, or
        its error raised as the snapcell exception."""
        batch = submit_calls(self.client, ref, function, [tuple(args)], timeout=timeout,
                             chunk_size=1)
        (value,) = await batch.aresult()
        if isinstance(value, ItemError):
            raise value.exception()
        return value

    async def run(self, lang: str, code: str | bytes, *, tools: Mapping[str, Any] | None = None,
                  timeout: float | None = 5.0, **limits: Any) -> RunResult:
        """Run `code` in a code sandbox on the cluster; a snippet that cannot run at all
        raises its error."""
        batch = submit_runs(self.client, lang, [code], tools=tools, timeout=timeout,
                            chunk_size=1, **limits)
        (result,) = await batch.aresult()
        if isinstance(result, ItemError):
            raise result.exception()
        assert isinstance(result, RunResult)
        return result

    async def map_calls(self, ref: str, function: str, inputs: Iterable[Any], *,
                        chunk_size: int = 64, timeout: float | None = None) -> list[Any]:
        """`snapcell.dask.map_calls` on this backend's cluster."""
        return await submit_calls(self.client, ref, function, inputs, timeout=timeout,
                                  chunk_size=chunk_size).aresult()

    async def map_runs(self, lang: str, snippets: Iterable[Any], *, chunk_size: int = 16,
                       tools: Mapping[str, Any] | None = None, timeout: float | None = 5.0,
                       **limits: Any) -> list[RunResult | ItemError]:
        """`snapcell.dask.map_runs` on this backend's cluster."""
        return await submit_runs(self.client, lang, snippets, tools=tools, timeout=timeout,
                                 chunk_size=chunk_size, **limits).aresult()

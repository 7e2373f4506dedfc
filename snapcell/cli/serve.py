"""`snapcell serve`: the HTTP sandbox service (docs/serving.md)."""

from __future__ import annotations

from typing import Any

import click

from ..errors import SnapcellError
from ..sandbox import HostFunctions
from . import options as cli_options


def load_host_functions(spec: str) -> HostFunctions:
    """`module:attribute` (the module importable from the current directory, or a path to a
    .py file): a HostFunctions or a callable returning one; BadParameter otherwise."""
    try:
        return cli_options.load_host_functions(spec, "--host-functions")
    except click.BadParameter:
        raise
    except click.UsageError as e:
        raise click.BadParameter(e.message, param_hint="--host-functions") from None


def _snapshot_specs(specs: tuple[str, ...]) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    layouts, registry = [], []
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep or not name or not source:
            raise click.BadParameter(f"{spec!r}: expected NAME=LAYOUT_DIR[#TAG] or NAME=oci://REF",
                                     param_hint="--snapshot")
        if source.startswith("oci://"):
            registry.append((name, source[len("oci://"):]))
        else:
            path, _, tag = source.partition("#")
            layouts.append((name, path, tag or "latest"))
    return layouts, registry


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8477, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: any free port; the address is printed).")
@click.option("--snapshot", "snapshots", multiple=True, metavar="NAME=LAYOUT_DIR[#TAG]|NAME=oci://REF",
              help="Serve a snapshot under NAME (repeatable).")
@click.option("--allow-registry", multiple=True, metavar="PREFIX",
              help="Let requests name registry references starting with PREFIX (repeatable).")
@click.option("--insecure-registry", is_flag=True, help="Talk plain HTTP to registries.")
@click.option("--registry-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds before a registry request fails.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where pulled snapshots are kept (default ~/.cache/snapcell/serve).")
@click.option("--api-key-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Tenants and their API keys ('tenant key' lines).")
@click.option("--host-functions", default=None, metavar="MODULE:ATTR",
              help="HostFunctions offered to served snapshots.")
@click.option("--pool-size", default=2, show_default=True, type=click.IntRange(1, 1024),
              help="Ready sandboxes per snapshot.")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(0, 1 << 20),
              help="Calls that may wait per snapshot (beyond: 429).")
@click.option("--call-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Default per-call time limit, seconds.")
@click.option("--max-timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Largest time limit a request may ask for.")
@click.option("--max-body", default=1 << 20, show_default=True, type=click.IntRange(64, 1 << 30),
              help="Largest request body, bytes (beyond: 413).")
@click.option("--max-batch", default=10_000, show_default=True, type=click.IntRange(1, 1 << 24),
              help="Most items in one map request.")
@click.option("--idle-seconds", default=60.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Idle time after which a session is paused to a snapshot.")
@click.option("--max-sessions", default=256, show_default=True, type=click.IntRange(0, 1 << 20))
@click.option("--dask", "dask_address", default=None, metavar="tcp://SCHEDULER:PORT",
              help="Hand calls, batches and code runs to this Dask cluster (docs/scale-out.md) "
                   "instead of local pools; sessions stay local.")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds a request head may take to arrive (beyond: 408 and close).")
@click.option("--body-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds a request body may take to arrive after its head (beyond: 408).")
@click.option("--keep-alive-timeout", default=5.0, show_default=True,
              type=click.FloatRange(min=0.01),
              help="Seconds an idle kept-alive connection stays open after its last response.")
@click.option("--max-connections", default=2048, show_default=True,
              type=click.IntRange(1, 1 << 20),
              help="Open connections; beyond, new ones get 503 (the open-file limit is raised "
                   "to fit).")
@click.option("--context-store", type=click.Path(file_okay=False), default=None,
              help="Directory of code contexts, shared by replicas (default <cache dir>/contexts).")
@click.option("--max-contexts", default=32, show_default=True, type=click.IntRange(0, 1 << 20),
              help="Code contexts per tenant.")
@click.option("--context-max-bytes", default=256 << 20, show_default=True,
              type=click.IntRange(0), help="Bytes of paused code contexts per tenant on disk.")
@click.option("--context-expiry", default=7 * 24 * 3600.0, show_default=True,
              type=click.FloatRange(min=1), help="Seconds unused after which a context is deleted.")
@click.option("--context-idle-seconds", default=60.0, show_default=True,
              type=click.FloatRange(min=0.01),
              help="Idle time after which a context's micro-VM is released (it stays in the store).")
@click.option("--egress-cap", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="POLICY.json", help="The most code sandboxes' network policies may allow "
              "(a NetworkPolicy as JSON: {\"allow\": [rules], ...}); default: no network.")
@click.option("--context-image", "context_images", multiple=True, metavar="NAME=LAYOUT:TAG",
              help="A package image Python contexts may run on, offered as NAME (repeatable).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Worker processes serving the port (SO_REUSEPORT); any worker serves any "
                   "session or context.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve_command(host: str, port: int, snapshots: tuple[str, ...], allow_registry: tuple[str, ...],
                  insecure_registry: bool, registry_timeout: float, cache_dir: str | None,
                  api_key_file: str | None, host_functions: str | None, pool_size: int,
                  max_queue: int, call_timeout: float, max_timeout: float, max_body: int,
                  max_batch: int, idle_seconds: float, max_sessions: int, dask_address: str | None,
                  header_timeout: float, body_timeout: float, keep_alive_timeout: float,
                  max_connections: int, context_store: str | None, max_contexts: int,
                  context_max_bytes: int, context_expiry: float, context_idle_seconds: float,
                  egress_cap: str | None, context_images: tuple[str, ...], workers: int,
                  log_level: str) -> None:
    """Serve snapshots over HTTP (127.0.0.1 by default): calls, batches, sessions, code contexts,
    MCP, metrics."""
    try:
        from ..serving.contexts import ContextOptions, parse_images
        from ..serving.egress import load_cap
        from ..serving.protocol import ConnectionLimits
        from ..serving.server import serve
        from ..serving.service import ServeOptions
        from ..serving.workers import serve_workers
    except ImportError as e:
        raise click.ClickException(f"snapcell serve needs the 'serve' extra "
                                   f"(pip install 'snapcell[serve]'): {e}") from None
    layouts, registry = _snapshot_specs(snapshots)
    try:
        images = parse_images(context_images)
    except SnapcellError as e:
        raise click.BadParameter(str(e), param_hint="--context-image") from None
    extra: dict[str, Any] = {"cache_dir": cache_dir} if cache_dir else {}
    if egress_cap is not None:
        try:
            extra["egress_cap"] = load_cap(egress_cap)
        except SnapcellError as e:
            raise click.UsageError(str(e)) from None
    options = ServeOptions(
        layouts=tuple(layouts), registry_names=tuple(registry), allow_registries=allow_registry,
        insecure_registries=insecure_registry, registry_timeout=registry_timeout,
        api_key_file=api_key_file,
        host_functions=load_host_functions(host_functions) if host_functions else None,
        pool_size=pool_size, max_queue=max_queue, call_timeout=call_timeout,
        max_timeout=max_timeout, max_body=max_body, max_batch=max_batch,
        idle_seconds=idle_seconds, max_sessions=max_sessions, dask=dask_address,
        contexts=ContextOptions(store=context_store, max_contexts=max_contexts,
                                max_bytes=context_max_bytes, idle_expiry=context_expiry,
                                idle_seconds=context_idle_seconds,
                                images=images),
        **extra)
    limits = ConnectionLimits(header_timeout=header_timeout, body_timeout=body_timeout,
                              keep_alive_timeout=keep_alive_timeout,
                              max_connections=max_connections)
    try:
        if workers > 1:
            serve_workers(options, host, port, log_level, limits, workers)
        else:
            serve(options, host, port, log_level, limits)
    except SnapcellError as e:
        raise click.ClickException(str(e)) from None

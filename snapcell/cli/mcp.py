"""`snapcell mcp`: snapcell's code tools as an MCP server over stdio (docs/serving.md, "MCP")."""

from __future__ import annotations

import os

import click


@click.command("mcp")
@click.option("--context-store", type=click.Path(file_okay=False), default=None,
              help="Directory of code contexts (default ~/.cache/snapcell/mcp/contexts).")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Default time limit of a run, seconds.")
@click.option("--max-timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Largest time limit a tool call may ask for.")
@click.option("--max-contexts", default=32, show_default=True, type=click.IntRange(0, 1 << 20),
              help="Code contexts kept at most.")
def mcp_command(context_store: str | None, timeout: float, max_timeout: float,
                max_contexts: int) -> None:
    """Serve the code tools (run_code, create_context, ...) to an MCP client over
    stdin/stdout, e.g. from an agent's MCP configuration: {"command": "snapcell", "args":
    ["mcp"]}."""
    try:
        import anyio

        from ..serving.contexts import ContextOptions
        from ..serving.mcp import serve_stdio
    except ImportError as e:
        raise click.ClickException(f"snapcell mcp needs the 'mcp' extra "
                                   f"(pip install 'snapcell[mcp]'): {e}") from None
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                         "snapcell", "mcp")
    options = ContextOptions(store=context_store, max_contexts=max_contexts)
    anyio.run(serve_stdio, options, cache, timeout, max_timeout)

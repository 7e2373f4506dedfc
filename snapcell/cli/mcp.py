"""`snapcell mcp`: snapcell's code tools as an MCP server over stdio (docs/serving.md, "MCP")."""

from __future__ import annotations

import os

import click

from ..errors import SnapcellError


@click.command("mcp")
@click.option("--context-store", type=click.Path(file_okay=False), default=None,
              help="Directory of code contexts (default ~/.cache/snapcell/mcp/contexts).")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Default time limit of a run, seconds.")
@click.option("--max-timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Largest time limit a tool call may ask for.")
@click.option("--max-contexts", default=32, show_default=True, type=click.IntRange(0, 1 << 20),
              help="Code contexts kept at most.")
@click.option("--context-image", "context_images", multiple=True, metavar="NAME=LAYOUT:TAG",
              help="A package image Python contexts may run on, offered as NAME (repeatable).")
def mcp_command(context_store: str | None, timeout: float, max_timeout: float,
                max_contexts: int, context_images: tuple[str, ...]) -> None:
    """Serve the code tools (run_code, create_context, ...) to an MCP client over
    stdin/stdout, e.g. from an agent's MCP configuration: {"command": "snapcell", "args":
    ["mcp"]}."""
    try:
        import anyio

        from ..serving.contexts import ContextOptions, parse_images
        from ..serving.mcp import serve_stdio
    except ImportError as e:
        raise click.ClickException(f"snapcell mcp needs the 'mcp' extra "
                                   f"(pip install 'snapcell[mcp]'): {e}") from None
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                         "snapcell", "mcp")
    try:
        images = parse_images(context_images)
    except SnapcellError as e:
        raise click.BadParameter(str(e), param_hint="--context-image") from None
    options = ContextOptions(store=context_store, max_contexts=max_contexts, images=images)
    anyio.run(serve_stdio, options, cache, timeout, max_timeout)

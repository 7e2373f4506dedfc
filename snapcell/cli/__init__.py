"""`snapcell` command line: build guests, call them, run code, snapshots and images, the service,
the demo and the benchmarks. One module per verb; each is imported when its verb runs (or when
``--help`` lists them), so `snapcell run` does not pay for the service or the registry client."""

from __future__ import annotations

import functools
import gc
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from ..errors import ArgumentError, ConfigurationError, DebugPortInUse, SnapcellError

if TYPE_CHECKING:
    from rich.console import Console

DEBUG_ENV = "SNAPCELL_TRACEBACK"       # set to 1 to see the traceback of an unexpected error
COMMANDS = {                           # verb → (module of this package, attribute)
    "bench": ("benchmark", "bench"),
    "call": ("calls", "call"),
    "debug": ("calls", "debug"),
    "demo": ("demo", "demo"),
    "guest": ("guest", "guest"),
    "image": ("image", "image_group"),
    "mcp": ("mcp", "mcp_command"),
    "run": ("run", "run_command"),
    "serve": ("serve", "serve_command"),
    "snapshot": ("snapshot", "snapshot_group"),
}


@functools.cache
def console() -> Console:
    """The rich console the verbs print to (created on first use)."""
    from rich.console import Console
    return Console()


class SnapcellGroup(click.Group):
    """The `snapcell` group: a snapcell error anywhere below becomes a one-line message and exit
    status 1 (usage errors stay exit status 2); an unexpected exception too, never a traceback
    unless SNAPCELL_TRACEBACK=1."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the sub-command, turning errors into messages."""
        try:
            return self._invoke(ctx)
        finally:
            if _is_the_process():
                # the process ends with this verb: what is alive now lives until the exit, so
                # the teardown's garbage collections need not traverse it (gc.freeze; ~10 ms
                # of a ~150 ms `snapcell run`). Objects are still freed, files closed, by
                # reference counting.
                gc.freeze()

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except DebugPortInUse as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from None
        except (ArgumentError, ConfigurationError) as e:
            raise click.UsageError(str(e)) from None
        except SnapcellError as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from None
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as e:
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            raise click.ClickException(f"unexpected {type(e).__name__}: {e} (set {DEBUG_ENV}=1 "
                                       "for the traceback, and please report it)") from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every verb, sorted."""
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """The verb `name`, its module imported now."""
        where = COMMANDS.get(name)
        if where is None:
            return None
        cmd = getattr(importlib.import_module(f"{__name__}.{where[0]}"), where[1])
        assert isinstance(cmd, click.Command)
        return cmd


def _is_the_process() -> bool:
    """Whether the `snapcell` command is this process (the console script or `python -m
    snapcell`), not a caller of `main` such as a test's CliRunner."""
    entry = sys.modules.get("__main__")
    spec = getattr(entry, "__spec__", None)
    return getattr(spec, "name", None) == "snapcell.__main__" or getattr(entry, "main", None) is main


@click.group(cls=SnapcellGroup)
@click.version_option(package_name="snapcell")
def main() -> None:
    """snapcell: hypervisor-isolated micro-VM sandboxes on KVM."""


if __name__ == "__main__":  # pragma: no cover
    main()

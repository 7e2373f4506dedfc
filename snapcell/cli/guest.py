"""`snapcell guest`: build guest binaries with the guest SDK, and list what a guest exports."""

from __future__ import annotations

from typing import Any

import click

from ..guest.build import BuildOptions, build_guest, build_static_lib
from ..sandbox import UninitializedSandbox
from . import console
from .options import HOST_FUNCTIONS_HELP, build_config, config_options, load_host_functions


@click.group()
def guest() -> None:
    """Guest binaries."""


@guest.command("build")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output ELF (or static library with --static-lib).")
@click.option("--debug", is_flag=True, help="Build with full debug info and no optimisation (for gdb).")
@click.option("-I", "--include", "includes", multiple=True, type=click.Path(file_okay=False),
              help="Add an include directory (repeatable).")
@click.option("-D", "--define", "defines", multiple=True, help="Define NAME or NAME=VALUE (repeatable).")
@click.option("--third-party", "third_party", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="A third-party source compiled with its warnings silenced (repeatable).")
@click.option("--lib", "libraries", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Link a static library (.a) into the guest (repeatable).")
@click.option("--whole-lib", "whole_libraries", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="With --dynamic: link a static library whole, every symbol exported (repeatable).")
@click.option("--dynamic", "dynamic", default="", type=click.Path(file_okay=False),
              help="Link a dynamic guest against the musl build at this prefix (its dynamic "
                   "linker is the guest's interpreter).")
@click.option("--static-lib", is_flag=True,
              help="Compile SOURCES (as third-party code) into a static library instead of a guest.")
@click.option("-j", "--jobs", default=0, show_default=True, help="Parallel compile jobs (0 = CPUs).")
def guest_build(sources: tuple[str, ...], output: str, debug: bool, includes: tuple[str, ...],
                defines: tuple[str, ...], third_party: tuple[str, ...], libraries: tuple[str, ...],
                whole_libraries: tuple[str, ...], dynamic: str, static_lib: bool,
                jobs: int) -> None:
    """Compile C SOURCES with the guest SDK and musl into a guest ELF (static, or dynamic with
    --dynamic)."""
    if whole_libraries and not dynamic:
        raise click.UsageError("--whole-lib needs --dynamic")
    options = BuildOptions(include_dirs=includes, defines=defines, third_party=third_party,
                           libraries=libraries, jobs=jobs, dynamic=dynamic,
                           whole_libraries=whole_libraries)
    if static_lib:
        if third_party or libraries:
            raise click.UsageError("--static-lib takes SOURCES only (no --third-party/--lib)")
        build_static_lib(list(sources), output, debug=debug, options=options)
    else:
        build_guest(list(sources), output, debug=debug, options=options)
    console().print(f"built [bold]{output}[/bold]")


@guest.command("functions")
@click.argument("elf", type=click.Path(exists=True, dir_okay=False))
@click.option("--host-functions", "host_functions", metavar="MODULE:ATTR", help=HOST_FUNCTIONS_HELP)
@config_options
def guest_functions(elf: str, host_functions: str | None, **options: Any) -> None:
    """Initialise ELF and list the functions it exports."""
    funcs = load_host_functions(host_functions)
    config = build_config(options)
    with UninitializedSandbox(elf, config=config, host_functions=funcs).evolve() as sb:
        for name, sig in sorted(sb.functions.items()):
            click.echo(sig.describe(name))

"""`snapcell` command line: build guests, call them, run the demo and the benchmarks."""

from __future__ import annotations

import json
import os
import shlex
import statistics
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .cli_image import data_demo, image_group
from .cli_mcp import mcp_command
from .cli_options import (
    build_config,
    config_options,
    load_host_functions,
    output_options,
    parse_call_args,
    write_result,
)
from .cli_run import run_command
from .cli_serve import serve_command
from .cli_snapshot import snapshot_group
from .errors import ArgumentError, ConfigurationError, DebugPortInUse, GuestError, SnapcellError
from .guest.build import BuildOptions, build_guest, build_static_lib
from .guest.functions import unknown_function_message
from .sandbox import HostFunctions, MultiUseSandbox, SandboxConfiguration, UninitializedSandbox
from .types import I32

console = Console()
DEBUG_ENV = "SNAPCELL_TRACEBACK"       # set to 1 to see the traceback of an unexpected error


class SnapcellGroup(click.Group):
    """The `snapcell` group: a snapcell error anywhere below becomes a one-line message and exit
    status 1 (usage errors stay exit status 2); an unexpected exception too, never a traceback
    unless SNAPCELL_TRACEBACK=1."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the sub-command, turning errors into messages."""
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


@click.group(cls=SnapcellGroup)
@click.version_option(package_name="snapcell")
def main() -> None:
    """snapcell: hypervisor-isolated micro-VM sandboxes on KVM."""


@main.group()
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
    console.print(f"built [bold]{output}[/bold]")


HOST_FUNCTIONS_HELP = ("Host functions for the guest: MODULE:ATTR naming a HostFunctions object or "
                       "a factory returning one (MODULE importable from the current directory, "
                       "or a path to a .py file). Default: HostFunctions() (HostPrint only).")


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


def _evolve_checked(elf: str, function: str, args: tuple[str, ...], funcs: HostFunctions,
                    config: SandboxConfiguration) -> tuple[MultiUseSandbox, list[object]]:
    """Evolve ELF and parse ARGS for FUNCTION; UsageError (the sandbox closed) when they do not
    fit."""
    sb = UninitializedSandbox(elf, config=config, host_functions=funcs).evolve()
    try:
        sig = sb.functions.get(function)
        if sig is None:
            raise click.UsageError(unknown_function_message(function, sb.functions))
        return sb, parse_call_args(function, sig, args)
    except BaseException:
        sb.close()
        raise


def _call(sb: MultiUseSandbox, function: str, values: list[object]) -> object:
    """sb.call, with a hint when the guest called a host function nobody offered."""
    try:
        return sb.call(function, *values)
    except GuestError as e:
        if "is not registered" in e.message:
            raise click.ClickException(
                f"GuestError: {e.message}: the guest calls a host function this sandbox does not "
                "offer; pass --host-functions MODULE:ATTR (a HostFunctions object or a factory)"
            ) from None
        raise


@main.command("call", context_settings={"ignore_unknown_options": True})
@click.argument("elf", type=click.Path(exists=True, dir_okay=False))
@click.argument("function")
@click.argument("args", nargs=-1)
@click.option("--host-functions", "host_functions", metavar="MODULE:ATTR", help=HOST_FUNCTIONS_HELP)
@config_options
@output_options
def call(elf: str, function: str, args: tuple[str, ...], host_functions: str | None,
         as_json: bool, raw: bool, **options: Any) -> None:
    """Initialise ELF and call FUNCTION with ARGS (parsed by the function's signature: integers
    in decimal or 0x/0o/0b, bools true/false, bytes as hex). Exit status 0 on success, 1 when the
    call failed, 2 on a usage error."""
    sb, values, config = _prepare(elf, function, args, host_functions, as_json, raw, options)
    with sb:
        result = _call(sb, function, values)
        write_result(function, sb.functions[function].ret, result, as_json=as_json, raw=raw)


def _prepare(elf: str, function: str, args: tuple[str, ...], host_functions: str | None,
             as_json: bool, raw: bool, options: dict[str, Any]) -> tuple[Any, Any, Any]:
    """What `call` and `debug` share: check the output flags, load the host functions, build the
    configuration, initialise ELF and parse ARGS by FUNCTION's signature."""
    if as_json and raw:
        raise click.UsageError("--json and --raw exclude each other; give one")
    funcs = load_host_functions(host_functions)
    config = build_config(options)
    sb, values = _evolve_checked(elf, function, args, funcs, config)
    return sb, values, config


@main.command("debug", context_settings={"ignore_unknown_options": True})
@click.argument("elf", type=click.Path(exists=True, dir_okay=False))
@click.argument("function")
@click.argument("args", nargs=-1)
@click.option("--port", default=1234, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port on 127.0.0.1 for gdb (0: any free port).")
@click.option("--host-functions", "host_functions", metavar="MODULE:ATTR", help=HOST_FUNCTIONS_HELP)
@config_options
@output_options
def debug(elf: str, function: str, args: tuple[str, ...], port: int, host_functions: str | None,
          as_json: bool, raw: bool, **options: Any) -> None:
    """Call FUNCTION with ARGS in a sandbox that waits for gdb: prints the gdb command line to
    run in another terminal; the call stops at FUNCTION's entry (see docs/debugging.md), and
    its result is printed when gdb continues or detaches."""
    sb, values, config = _prepare(elf, function, args, host_functions, as_json, raw, options)
    with sb:
        snap = sb.snapshot()
    debug_config = config.replace(debug_port=port)
    with MultiUseSandbox.from_snapshot(snap, host_functions=sb.host_functions,
                                       config=debug_config) as dbg:
        gdb = f"gdb -q -ex {shlex.quote(f'target remote 127.0.0.1:{dbg.debug_port}')} {shlex.quote(elf)}"
        click.echo(f"waiting for gdb on 127.0.0.1:{dbg.debug_port}; in another terminal run:", err=True)
        click.echo(gdb)
        click.echo(f"the call stops at the entry of {function}; 'continue' runs it, 'detach' "
                   "lets it finish without the debugger", err=True)
        sys.stdout.flush()
        result = _call(dbg, function, values)
        write_result(function, dbg.functions[function].ret, result, as_json=as_json, raw=raw)


def _median_us(fn: Any, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1000


@main.command("demo")
@click.argument("elf", type=click.Path(exists=True, dir_okay=False),
                default="build/guests/simpleguest.elf")
@click.option("--sandboxes", default=200, show_default=True,
              help="How many sandboxes to create from the snapshot.")
@click.option("--image", "image", default=None, metavar="LAYOUT:TAG",
              help="Also run Python on this package image (a pandas summary and a chart PNG "
                   "written to --out) and a JS snippet.")
@click.option("--out", "out_dir", default="build/demo", show_default=True,
              help="Where the data demo writes its chart.")
def demo(elf: str, sandboxes: int, image: str | None, out_dir: str) -> None:
    """The main job: evolve a guest once, make typed calls and host round trips, snapshot it,
    create many ready sandboxes straight from the snapshot, restore, and print timings."""
    printed: list[str] = []

    def host_add(a: I32, b: I32) -> I32:
        return a + b

    def capture(msg: str) -> I32:
        printed.append(msg)
        return len(msg)

    funcs = HostFunctions().register("HostAdd", host_add).register("HostPrint", capture)
    timings = Table(title="timings (this machine)")
    timings.add_column("step")
    timings.add_column("median", justify="right")
    t0 = time.perf_counter()
    with UninitializedSandbox(elf, config=SandboxConfiguration(), host_functions=funcs).evolve() as sb:
        evolve_ms = (time.perf_counter() - t0) * 1000
        timings.add_row("evolve from the ELF (load + guest init)", f"{evolve_ms:.2f} ms")
        console.print(f"[bold]evolved[/bold] {elf}: {len(sb.functions)} guest functions")
        results = Table(title="typed calls")
        results.add_column("call")
        results.add_column("result")
        for name, args in (("Echo", ("hello, world",)), ("EchoI32", (-(2**31),)),
                           ("EchoF64", (3.25,)), ("EchoBytes", (b"\x00\x01\xff",)),
                           ("AddToStatic", (5,)), ("AddToStatic", (6,)), ("Add", (40, 2)),
                           ("PrintOutput", ("printed by the guest through HostPrint\n",)),
                           ("NextRandom", ())):
            results.add_row(f"{name}{args!r}", repr(sb.call(name, *args)))
        console.print(results)
        console.print(f"captured guest output: {printed!r}")
        timings.add_row("call NoOp()", f"{_median_us(lambda: sb.call('NoOp'), 2000):.1f} µs")
        timings.add_row("call EchoI32(7)", f"{_median_us(lambda: sb.call('EchoI32', 7), 2000):.1f} µs")
        timings.add_row("call Add(1, 2) with a host round trip",
                        f"{_median_us(lambda: sb.call('Add', 1, 2), 2000):.1f} µs")
        snap = sb.snapshot()
        console.print(f"[bold]snapshot[/bold]: generation {snap.generation}, "
                      f"{snap.memory_size >> 20} MiB guest memory, GetStatic() = 11 inside")

    created: list[Any] = []
    times = []
    for _ in range(sandboxes):
        t = time.perf_counter_ns()
        box = MultiUseSandbox.from_snapshot(snap, host_functions=funcs)
        assert box.call("GetStatic") == 11
        times.append(time.perf_counter_ns() - t)
        created.append(box)
    timings.add_row(f"from_snapshot → first result, new VMs ({sandboxes} kept alive)",
                    f"{statistics.median(times) / 1000:.1f} µs")
    for i, box in enumerate(created):
        box.call("AddToStatic", i)
    assert all(box.call("GetStatic") == 11 + i for i, box in enumerate(created))
    console.print(f"{sandboxes} sandboxes from one snapshot, each with its own state "
                  f"(copy-on-write): GetStatic() = 11 + i")
    first = created[0]
    restore_us = _median_us_before(lambda: first.restore(snap),
                                   lambda: first.call("AddToStatic", 1), 500)
    timings.add_row("restore() (after a call)", f"{restore_us:.1f} µs")
    first.call("AddToStatic", 100)
    first.restore(snap)
    console.print(f"restore → GetStatic() = {first.call('GetStatic')}")
    for box in created:
        box.close()
    def pooled_round() -> None:
        with MultiUseSandbox.from_snapshot(snap, host_functions=funcs) as box:
            box.call("NoOp")
    timings.add_row("from_snapshot → call → close, pooled",
                    f"{_median_us(pooled_round, sandboxes):.1f} µs")
    console.print(timings)
    if image is not None:
        data_demo(console, image, out_dir)


def _median_us_before(fn: Any, before: Any, n: int) -> float:
    times = []
    for _ in range(n):
        before()
        t = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1000


@main.command("bench")
@click.option("--quick", is_flag=True, help="Fewer iterations (about a minute).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--out", default="benchmarks/results", show_default=True,
              help="Directory for the table, JSON and PNG figures.")
@click.option("--no-peers", is_flag=True,
              help="Skip the real peers (isolated-vm, workerd, Pyodide, bubblewrap, ...), which "
                   "are otherwise installed on demand under build/peers and measured.")
def bench(quick: bool, as_json: bool, out: str, no_peers: bool) -> None:
    """Measure snapcell on this machine against the C KVM_RUN floor and real peers (see
    docs/benchmarks.md)."""
    from .bench import run_benchmarks
    try:
        report = run_benchmarks(quick=quick, out_dir=out, console=None if as_json else console,
                                peers=not no_peers)
    except SnapcellError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")


main.add_command(snapshot_group)
main.add_command(image_group)
main.add_command(run_command)
main.add_command(serve_command)
main.add_command(mcp_command)

if __name__ == "__main__":  # pragma: no cover
    main()

"""`snapcell` command line: build guests, call them, run the demo and the benchmarks."""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .cli_run import run_command
from .cli_snapshot import snapshot_group
from .errors import SnapcellError
from .guest.build import BuildOptions, build_guest, build_static_lib
from .guest.values import ValueType, parse_text
from .sandbox import HostFunctions, MultiUseSandbox, SandboxConfiguration, UninitializedSandbox
from .types import I32

console = Console()


@click.group()
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
@click.option("--static-lib", is_flag=True,
              help="Compile SOURCES (as third-party code) into a static library instead of a guest.")
@click.option("-j", "--jobs", default=0, show_default=True, help="Parallel compile jobs (0 = CPUs).")
def guest_build(sources: tuple[str, ...], output: str, debug: bool, includes: tuple[str, ...],
                defines: tuple[str, ...], third_party: tuple[str, ...], libraries: tuple[str, ...],
                static_lib: bool, jobs: int) -> None:
    """Compile C SOURCES with the guest SDK and musl into a static guest ELF."""
    options = BuildOptions(include_dirs=includes, defines=defines, third_party=third_party,
                           libraries=libraries, jobs=jobs)
    try:
        if static_lib:
            if third_party or libraries:
                raise click.UsageError("--static-lib takes SOURCES only (no --third-party/--lib)")
            build_static_lib(list(sources), output, debug=debug, options=options)
        else:
            build_guest(list(sources), output, debug=debug, options=options)
    except SnapcellError as e:
        raise click.ClickException(str(e)) from None
    console.print(f"built [bold]{output}[/bold]")


@guest.command("functions")
@click.argument("elf", type=click.Path(exists=True, dir_okay=False))
def guest_functions(elf: str) -> None:
    """Initialise ELF and list the functions it exports."""
    try:
        with UninitializedSandbox(elf).evolve() as sb:
            for name, sig in sorted(sb.functions.items()):
                console.print(sig.describe(name))
    except SnapcellError as e:
        raise click.ClickException(str(e)) from None


def _parse_arg(t: ValueType, text: str) -> Any:
    try:
        return parse_text(t, text)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@main.command("call")
@click.argument("elf", type=click.Path(exists=True, dir_okay=False))
@click.argument("function")
@click.argument("args", nargs=-1)
def call(elf: str, function: str, args: tuple[str, ...]) -> None:
    """Initialise ELF and call FUNCTION with ARGS (parsed by the function's signature)."""
    try:
        with UninitializedSandbox(elf).evolve() as sb:
            sig = sb.functions.get(function)
            if sig is None:
                raise click.ClickException(f"the guest exports no function {function!r}")
            if len(args) != len(sig.params):
                raise click.ClickException(f"{sig.describe(function)} takes {len(sig.params)} "
                                           f"argument(s)")
            values = [_parse_arg(t, a) for t, a in zip(sig.params, args)]
            result = sb.call(function, *values)
    except SnapcellError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from None
    console.print(repr(result))


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
def demo(elf: str, sandboxes: int) -> None:
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
    with UninitializedSandbox(elf, SandboxConfiguration(), funcs).evolve() as sb:
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
        box = MultiUseSandbox.from_snapshot(snap, funcs)
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
        with MultiUseSandbox.from_snapshot(snap, funcs) as box:
            box.call("NoOp")
    timings.add_row("from_snapshot → call → close, pooled",
                    f"{_median_us(pooled_round, sandboxes):.1f} µs")
    console.print(timings)


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
              help="Directory for the table, JSON and PNG plot.")
def bench(quick: bool, as_json: bool, out: str) -> None:
    """Measure snapcell on this machine against the C KVM_RUN floor (see docs/benchmarks.md)."""
    from .benchmark import run_benchmarks
    try:
        report = run_benchmarks(quick=quick, out_dir=out, console=None if as_json else console)
    except SnapcellError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")


main.add_command(snapshot_group)
main.add_command(run_command)

if __name__ == "__main__":  # pragma: no cover
    main()

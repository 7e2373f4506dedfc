"""`snapcell demo`: the main job — evolve a guest once, call it, snapshot it, create many
sandboxes from the snapshot, restore, and print timings; optionally Python on a package image."""

from __future__ import annotations

import statistics
import time
from typing import Any

import click
from rich.table import Table

from ..sandbox import HostFunctions, MultiUseSandbox, SandboxConfiguration, UninitializedSandbox
from ..types import I32
from . import console
from .image import data_demo


def _median_us(fn: Any, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1000


@click.command("demo")
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
        console().print(f"[bold]evolved[/bold] {elf}: {len(sb.functions)} guest functions")
        results = Table(title="typed calls")
        results.add_column("call")
        results.add_column("result")
        for name, args in (("Echo", ("hello, world",)), ("EchoI32", (-(2**31),)),
                           ("EchoF64", (3.25,)), ("EchoBytes", (b"\x00\x01\xff",)),
                           ("AddToStatic", (5,)), ("AddToStatic", (6,)), ("Add", (40, 2)),
                           ("PrintOutput", ("printed by the guest through HostPrint\n",)),
                           ("NextRandom", ())):
            results.add_row(f"{name}{args!r}", repr(sb.call(name, *args)))
        console().print(results)
        console().print(f"captured guest output: {printed!r}")
        timings.add_row("call NoOp()", f"{_median_us(lambda: sb.call('NoOp'), 2000):.1f} µs")
        timings.add_row("call EchoI32(7)", f"{_median_us(lambda: sb.call('EchoI32', 7), 2000):.1f} µs")
        timings.add_row("call Add(1, 2) with a host round trip",
                        f"{_median_us(lambda: sb.call('Add', 1, 2), 2000):.1f} µs")
        snap = sb.snapshot()
        console().print(f"[bold]snapshot[/bold]: generation {snap.generation}, "
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
    console().print(f"{sandboxes} sandboxes from one snapshot, each with its own state "
                  f"(copy-on-write): GetStatic() = 11 + i")
    first = created[0]
    restore_us = _median_us_before(lambda: first.restore(snap),
                                   lambda: first.call("AddToStatic", 1), 500)
    timings.add_row("restore() (after a call)", f"{restore_us:.1f} µs")
    first.call("AddToStatic", 100)
    first.restore(snap)
    console().print(f"restore → GetStatic() = {first.call('GetStatic')}")
    for box in created:
        box.close()
    def pooled_round() -> None:
        with MultiUseSandbox.from_snapshot(snap, host_functions=funcs) as box:
            box.call("NoOp")
    timings.add_row("from_snapshot → call → close, pooled",
                    f"{_median_us(pooled_round, sandboxes):.1f} µs")
    console().print(timings)
    if image is not None:
        data_demo(console(), image, out_dir)


def _median_us_before(fn: Any, before: Any, n: int) -> float:
    times = []
    for _ in range(n):
        before()
        t = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1000

"""The cost of a CPU baseline against "host" (issue 22): from_snapshot (pooled) + first call,
restore + call, and a call, for a snapshot under the portable baseline and one under "host",
interleaved block by block with the C KVM_RUN floor so that their ratio is taken in one period."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..guest.elf import GuestBinary
from ..sandbox import HostFunctions, MultiUseSandbox, SandboxConfiguration, UninitializedSandbox


def bench_baselines(binary: GuestBinary, hf: HostFunctions, n: int,
                    interleave: Callable[..., dict[str, Any]], floor: Any) -> dict[str, Any]:
    """Rows `baseline_{portable,host}_{from_snapshot,restore_call,call}`; `interleave` is the
    timing.interleaved and `floor` its pinned C floor."""
    boxes: list[MultiUseSandbox] = []
    fns: dict[str, Callable[[], Any]] = {}
    dirty: dict[str, Callable[[], Any]] = {}
    try:
        for level in ("host", "portable"):
            sb = UninitializedSandbox(binary, config=SandboxConfiguration(cpu_baseline=level),
                                      host_functions=hf).evolve()
            boxes.append(sb)
            snap = sb.snapshot()

            def first(snap: Any = snap) -> None:
                with MultiUseSandbox.from_snapshot(snap, host_functions=hf) as s:
                    s.call("NoOp")

            def restore_call(sb: MultiUseSandbox = sb, snap: Any = snap) -> None:
                sb.restore(snap)
                sb.call("NoOp")

            fns[f"baseline_{level}_from_snapshot"] = first
            fns[f"baseline_{level}_restore_call"] = restore_call
            dirty[f"baseline_{level}_restore_call"] = functools.partial(sb.call, "AddToStatic", 1)
            fns[f"baseline_{level}_call"] = functools.partial(sb.call, "NoOp")
        rows = interleave(fns, n, block=20, warmup=50, before=dirty,
                          batches={"c_floor_during_baselines": floor.batch})
        out: dict[str, Any] = {}
        out["c_floor_during_baselines"] = rows["c_floor_during_baselines"]
        for level in ("host", "portable"):
            for what in ("from_snapshot", "restore_call", "call"):
                out[f"baseline_{level}_{what}"] = rows[f"baseline_{level}_{what}"]
        return out
    finally:
        for sb in boxes:
            sb.close()


def baseline_ratios(r: dict[str, Any]) -> dict[str, float]:
    """portable / host for each measured path."""
    out = {}
    for what in ("from_snapshot", "restore_call", "call"):
        a, b = r.get(f"baseline_portable_{what}"), r.get(f"baseline_host_{what}")
        if a and b:
            label = {"from_snapshot": "from_snapshot + call",
                     "restore_call": "restore + call"}.get(what, what)
            out[f"baseline portable / host: {label}"] = (
                a["median_us"] / b["median_us"])
    return out

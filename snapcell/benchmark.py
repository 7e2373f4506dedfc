"""`snapcell bench`: measurements on this machine, reported as medians, p99s and ratios taken in
one run (docs/benchmarks.md). Never used by tests to assert timings."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .errors import SnapcellError
from .sandbox import HostFunctions, SandboxConfiguration, UninitializedSandbox
from .types import I32

ROOT = Path(__file__).resolve().parent.parent
C_FLOOR_SRC = ROOT / "benchmarks" / "c_floor.c"
C_FLOOR_BIN = ROOT / "benchmarks" / "c_floor"
GUEST = ROOT / "build" / "guests" / "simpleguest.elf"


def _stats(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    return {"n": len(s), "median_us": statistics.median(s) / 1000,
            "p99_us": s[min(len(s) - 1, int(len(s) * 0.99))] / 1000, "min_us": s[0] / 1000}


def _time(fn: Callable[[], Any], n: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - t)
    return _stats(out)


def c_floor(n: int) -> dict[str, float]:
    """Run the C KVM_RUN round-trip floor (built from benchmarks/c_floor.c if needed)."""
    if not C_FLOOR_BIN.exists() or C_FLOOR_BIN.stat().st_mtime < C_FLOOR_SRC.stat().st_mtime:
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise SnapcellError("no C compiler to build benchmarks/c_floor.c")
        subprocess.run([cc, "-O2", "-o", str(C_FLOOR_BIN), str(C_FLOOR_SRC)], check=True)
    out = subprocess.run([str(C_FLOOR_BIN), str(n)], check=True, capture_output=True, text=True)
    d = json.loads(out.stdout)
    return {"n": d["n"], "median_us": d["median_ns"] / 1000, "p99_us": d["p99_ns"] / 1000,
            "min_us": d["min_ns"] / 1000}


def run_benchmarks(quick: bool = False, out_dir: str = "benchmarks/results",
                   console: Console | None = None, guest: str | None = None) -> dict[str, Any]:
    """Measure and write `results.json`, `results.md` and `results.png` into `out_dir`."""
    guest_path = guest or str(GUEST)
    if not os.path.exists(guest_path):
        raise SnapcellError(f"{guest_path} not found; run `make guests` first")
    n = 2000 if quick else 10000
    results: dict[str, dict[str, float]] = {}

    def host_add(a: I32, b: I32) -> I32:
        return a + b

    hf = HostFunctions().register("HostAdd", host_add)
    results["c_floor_kvm_run"] = c_floor(n * 2)
    results["evolve"] = _time(lambda: UninitializedSandbox(guest_path, SandboxConfiguration(), hf)
                              .evolve().close(), 20 if quick else 50, 3)
    with UninitializedSandbox(guest_path, SandboxConfiguration(), hf).evolve() as sb:
        results["call_noop"] = _time(lambda: sb.call("NoOp"), n, 500)
        results["call_echo_i32"] = _time(lambda: sb.call("EchoI32", 7), n, 500)
        results["call_host_roundtrip"] = _time(lambda: sb.call("Add", 1, 2), n, 500)
    floor = results["c_floor_kvm_run"]["median_us"]
    ratios = {
        "call_noop_vs_c_floor": results["call_noop"]["median_us"] / floor,
        "call_echo_i32_vs_c_floor": results["call_echo_i32"]["median_us"] / floor,
        "host_roundtrip_vs_c_floor": results["call_host_roundtrip"]["median_us"] / floor,
    }
    report = {"machine": os.uname().release, "quick": quick, "results": results, "ratios": ratios}
    _write(report, Path(out_dir))
    if console is not None:
        console.print(_table(report))
        console.print(f"written to {out_dir}/results.{{json,md,png}}")
    return report


def _table(report: dict[str, Any]) -> Table:
    t = Table(title="snapcell benchmarks (this machine, one run)")
    for col in ("metric", "median µs", "p99 µs", "n"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for name, r in report["results"].items():
        t.add_row(name, f"{r['median_us']:.1f}", f"{r['p99_us']:.1f}", str(r["n"]))
    for name, v in report["ratios"].items():
        t.add_row(f"ratio {name}", f"{v:.2f}×", "", "")
    return t


def _markdown(report: dict[str, Any]) -> str:
    lines = ["| metric | median µs | p99 µs | n |", "|---|---:|---:|---:|"]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['median_us']:.1f} | {r['p99_us']:.1f} | {r['n']} |")
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f}× |" for k, v in report["ratios"].items()]
    return "\n".join(lines) + "\n"


def _write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(_markdown(report))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the dev/bench extras
        return
    names = [k for k in report["results"] if k != "evolve"]
    med = [report["results"][k]["median_us"] for k in names]
    p99 = [report["results"][k]["p99_us"] for k in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(names, p99, color="#c8d6e5", label="p99")
    ax.barh(names, med, color="#2e86de", label="median")
    ax.set_xlabel("µs")
    ax.set_title("snapcell call latency vs the C KVM_RUN floor")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=100)
    plt.close(fig)

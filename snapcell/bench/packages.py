"""Benchmarks of Python package images (docs/code-sandboxes.md, "Packages and images"): restore +
run on the default data image against the stdlib guest and a fresh `python3 -c` with the same
packages where the host has them (docs/benchmarks.md)."""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..code import CodeSandbox

ROOT = Path(__file__).resolve().parents[2]
DATA_IMAGE = str(ROOT / "build" / "images" / "data") + ":latest"
NUMPY_SUM = "import numpy as np; int(np.arange(1000).sum())"
GROUPBY = ("import numpy as np, pandas as pd\n"
           "df = pd.DataFrame({'k': np.arange(1000) % 7, 'v': np.arange(1000.0)})\n"
           "len(df.groupby('k').v.sum())")
PLOT_PNG = ("import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(4, 3))\n"
            "ax.plot(range(100), [i * i for i in range(100)])\nfig.savefig('plot.png', dpi=72)\n"
            "plt.close(fig)")
_PEER_PLOT = "import matplotlib; matplotlib.use('Agg'); " + PLOT_PNG.replace(
    "'plot.png'", "'/dev/null', format='png'").replace("\n", "; ")


def package_benchmarks(r: dict[str, Any], quick: bool,
                       time_fn: Callable[..., Any], memory_fn: Callable[..., Any]) -> None:
    """Rows: restore + run `int(np.arange(1000).sum())`, a 1,000-row groupby, a matplotlib PNG
    and `1 + 1` on the data image, and `1 + 1` on the stdlib guest (the same-run baseline);
    memory per idle data-image sandbox; the same snippets in a fresh `python3 -c` of this host
    (when it has the packages)."""
    if not Path(DATA_IMAGE.rpartition(":")[0]).is_dir():
        return                                        # `make data-image` not run
    n = 100 if quick else 500
    with CodeSandbox("python", timeout=30.0) as box:  # the same-run baseline
        r["code_run_python_image_baseline_stdlib_trivial"] = _timed_run(box, "1 + 1", n, time_fn)
    with CodeSandbox("python", image=DATA_IMAGE, timeout=30.0) as box:
        for name, code, count in (("code_run_python_image_trivial", "1 + 1", n),
                                  ("code_run_python_image_numpy_sum", NUMPY_SUM, n),
                                  ("code_run_python_image_groupby_1000", GROUPBY, n // 5),
                                  ("code_run_python_image_matplotlib_png", PLOT_PNG, n // 20)):
            r[name] = _timed_run(box, code, count, time_fn)
        # the same numpy run on the machine that has now also run the groupby and the plot:
        # a restore scans every guest page the host has mapped, and those runs mapped more
        r["code_run_python_image_numpy_sum_after_plot"] = _timed_run(box, NUMPY_SUM, n, time_fn)
    r["code_memory_python_image"] = memory_fn((1, 50), "python", DATA_IMAGE)
    m = 5 if quick else 20
    for name, code in (("peer_python3_c_numpy_sum", NUMPY_SUM),
                       ("peer_python3_c_groupby_1000", GROUPBY.replace("\n", "; ")),
                       ("peer_python3_c_matplotlib_png", _PEER_PLOT)):
        cmd = [sys.executable, "-c", code]
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            r[name] = time_fn(functools.partial(subprocess.run, cmd, check=True,
                                                capture_output=True), m, 1)


def _timed_run(box: CodeSandbox, code: str, count: int, time_fn: Callable[..., Any]) -> Any:
    """Restore + run `code` timed `count` times; the row also notes the restore's own median,
    the guest pages each restore copies back (what the run dirtied: with the scan, the cost of
    a restore, docs/benchmarks.md) and the KVM memory slots the machine holds
    (machine/slots.py)."""
    if box.run(code).error is not None:
        raise RuntimeError(f"{code!r} failed on {box!r}")
    run = functools.partial(box.run, code)
    row = time_fn(run, count, 5)
    # the restore alone (after a run: what each restore + run above starts with)
    row["restore_median_us"] = time_fn(box.reset, count, 2, before=run)["median_us"]
    core = box._sb._core                                   # noqa: SLF001
    row["pages_per_restore"] = core.memory.last_reset.private
    row["kvm_slots"] = 0 if core.machine.slots.whole else core.machine.slots.count
    return row

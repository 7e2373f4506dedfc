"""The bench's figures, one per question (docs/benchmarks.md): calls against the C floor,
fresh runs against the peers (isolation kinds marked), HTTP latency against clients, memory
per idle sandbox and snapshot I/O. Each is drawn from a report's rows when they are there."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

KIND_COLORS = {"hardware VM": "#2e86de", "V8 isolate": "#f39c12", "WebAssembly": "#8e44ad",
               "process+namespaces": "#27ae60", "process": "#7f8c8d", "none": "#c0392b"}
FLOOR_COLOR, ROW_COLOR = "#ee5253", "#2e86de"
Rows = dict[str, Any]


def _measured(r: Rows, name: str) -> bool:
    v = r.get(name)
    return isinstance(v, dict) and bool(v.get("n")) and not math.isnan(v.get("median_us", math.nan))


def _duration(v: float, unit: str) -> str:
    """`v` (in `unit`, µs or ms) written in the unit a reader expects for it."""
    us = v * 1000 if unit == "ms" else v
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e4:
        return f"{us / 1000:.1f} ms"
    return f"{us:.1f} µs"


def _hbars(ax: Any, labels: list[str], values: list[float], colors: list[str],
           notes: list[str], unit: str, log: bool = False) -> None:
    """Horizontal bars, top to bottom, each with its value (and note) written beside it."""
    y = list(range(len(labels)))
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    top = max(values, default=1.0)
    for i, (v, note) in enumerate(zip(values, notes, strict=True)):
        text = _duration(v, unit) if unit in ("µs", "ms") else f"{v:,.2f} {unit}"
        ax.text(v if v > 0 else (1 if log else 0), i, f" {text}{note}", va="center", fontsize=7)
    ax.set_xlim(right=top * (25 if log else 1.45))
    ax.set_xlabel(unit + (" (log scale)" if log else ""))


def calls_figure(r: Rows, plt: Any) -> Any:
    """Calls, restores and the pool's hand-off against the C KVM_RUN floor of the same run."""
    names = ["c_floor_kvm_run", "python_floor_kvm_run", "call_noop", "call_noop_timeout",
             "call_echo_i32", "call_host_roundtrip", "restore_16MiB_beside_calls",
             "restore_256MiB_beside_calls", "from_snapshot_first_result_pooled",
             "direct_call_noop_same_run", "pool_call_noop"]
    names = [n for n in names if _measured(r, n)]
    if "c_floor_kvm_run" not in names:
        return None
    floor = r["c_floor_kvm_run"]["median_us"]
    values = [r[n]["median_us"] for n in names]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(names) + 1.6))
    _hbars(ax, names, values, [FLOOR_COLOR if "floor" in n else ROW_COLOR for n in names],
           [f"  ({v / floor:.2f}× floor)" for v in values], "µs")
    ax.set_title("Calls against the C KVM_RUN floor (medians, same run)")
    return fig


def _question_rows(r: Rows, question: str, lang: str) -> list[str]:
    rows = [k for k, v in r.items() if isinstance(v, dict) and v.get("question") == question
            and v.get("lang") == lang]
    return sorted(rows, key=lambda k: (not k.startswith("snapcell"),
                                       r[k]["median_us"] if _measured(r, k) else math.inf))


def _peer_panel(ax: Any, r: Rows, rows: list[str], title: str) -> None:
    measured = [k for k in rows if _measured(r, k)]
    values = [r[k]["median_us"] for k in measured]
    _hbars(ax, [k.removeprefix("peer_") for k in measured], values,
           [KIND_COLORS.get(r[k].get("isolation", ""), ROW_COLOR) for k in measured],
           [f"  [{r[k].get('isolation')}]" for k in measured], "µs", log=True)
    missing = [k for k in rows if not _measured(r, k)]
    if missing:
        ax.text(0.99, 0.01, "\n".join(f"{k.removeprefix('peer_')}: unavailable"
                                      for k in missing),
                transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="#555")
    ax.set_title(title, fontsize=10)


def fresh_runs_figure(r: Rows, plt: Any) -> Any:
    """New box + `1+1` and a warm realistic snippet, snapcell against the peers (bar colour =
    isolation kind), and the fresh-run split of snapcell's restore + run."""
    panels = [(q, lang) for q in ("new box", "warm snippet") for lang in ("js", "python", "lua")
              if _question_rows(r, q, lang)]
    split = [lang for lang in ("js", "python", "lua") if _measured(r, f"fresh_run_{lang}_total")]
    if not panels and not split:
        return None
    heights = [0.38 * len(_question_rows(r, q, lang)) + 1.0 for q, lang in panels]
    if split:
        heights.append(2.2)
    fig, axes = plt.subplots(len(heights), 1, figsize=(11, sum(heights) + 1.2),
                             gridspec_kw={"height_ratios": heights}, squeeze=False,
                             layout="constrained")
    for ax, (q, lang) in zip(axes[:, 0], panels, strict=False):
        title = {"new box": "new box + run `1+1`", "warm snippet": "warm call, realistic snippet"}
        _peer_panel(ax, r, _question_rows(r, q, lang), f"{lang}: {title[q]}")
    if split:
        ax = axes[-1, 0]
        colors = {"restore": "#2e86de", "marshalling (host)": "#f39c12",
                  "KVM_RUN entry + exit": "#95a5a6", "guest work": "#8e44ad"}
        for i, lang in enumerate(split):
            med = {p: r[f"fresh_run_{lang}_{p}"]["median_us"]
                   for p in ("restore", "marshalling", "kvm_run", "guest_work", "total")}
            parts = {"restore": med["restore"], "marshalling (host)": med["marshalling"],
                     "KVM_RUN entry + exit": max(0.0, med["kvm_run"] - med["guest_work"]),
                     "guest work": med["guest_work"]}
            left = 0.0
            for part, v in parts.items():
                ax.barh(i, v, left=left, color=colors[part], label=part if i == 0 else None)
                left += v
            ax.text(left, i, f" total {med['total']:.0f} µs (medians of the parts)",
                    va="center", fontsize=7)
        ax.set_xlim(right=ax.get_xlim()[1] * 1.4)
        ax.set_yticks(range(len(split)), [f"{lang} restore + run" for lang in split], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("µs")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title("snapcell: restore + run `1+1`, split", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in KIND_COLORS.values()]
    fig.legend(handles, list(KIND_COLORS), title="isolation", fontsize=8,
               loc="outside right upper")
    fig.suptitle("Fresh runs against the peers (medians, same run)")
    return fig


def http_figure(r: Rows, plt: Any) -> Any:
    """Latency and requests/s against concurrent keep-alive clients, and the single-client
    HTTP rows beside workerd."""
    clients = sorted((int(k.split("_")[3]), k) for k in r
                     if k.startswith("http_call_add_") and k.endswith("_clients")
                     and _measured(r, k))
    single = _question_rows(r, "http", "js")
    if not clients and not single:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), squeeze=False)
    ax = axes[0, 0]
    if clients:
        xs = [c for c, _ in clients]
        ax.plot(xs, [r[k]["median_us"] / 1000 for _, k in clients], "o-", label="median")
        ax.plot(xs, [r[k]["p99_us"] / 1000 for _, k in clients], "s--", label="p99")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(c) for c in xs])
        ax.set_xlabel("concurrent keep-alive clients")
        ax.set_ylabel("ms per request")
        for c, k in clients:
            if "per_s" in r[k]:
                ax.annotate(f"{r[k]['per_s']:.0f}/s", (c, r[k]["median_us"] / 1000),
                            textcoords="offset points", xytext=(4, 6), fontsize=7)
        ax.legend(fontsize=7)
    ax.set_title("POST /v1/snapshots/bench/call/Add", fontsize=10)
    if single:
        _peer_panel(axes[0, 1], r, single, "one client: snapcell serve against workerd")
    else:
        axes[0, 1].axis("off")
    fig.suptitle("HTTP latency against clients")
    fig.tight_layout()
    return fig


def memory_figure(r: Rows, plt: Any) -> Any:
    """Host memory per idle sandbox: its private (dirty) pages and the rest."""
    bars: list[tuple[str, float, float]] = []
    names = {"memory": "simpleguest", "code_memory_js": "JS code sandbox",
             "code_memory_python": "Python code sandbox",
             "code_memory_python_image": "Python on a package image"}
    for key in [k for k in r if k == "memory" or k.startswith("code_memory_")]:
        what = names.get(key, key)
        for count, m in r[key].items():
            bars.append((f"{what}, {count} alive", m["dirty_mib_per_sandbox"],
                         m["overhead_mib_per_sandbox"]))
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(bars) + 1.6))
    y = list(range(len(bars)))
    ax.barh(y, [b[1] for b in bars], color="#2e86de", label="dirty guest pages")
    ax.barh(y, [b[2] for b in bars], left=[b[1] for b in bars], color="#bdc3c7",
            label="everything else (host)")
    for i, (_, dirty, rest) in enumerate(bars):
        ax.text(dirty + rest, i, f" {dirty + rest:.2f} MiB", va="center", fontsize=7)
    ax.set_yticks(y, [b[0] for b in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("MiB per sandbox")
    ax.legend(fontsize=7)
    ax.set_title("Memory per idle sandbox (after one call or run)")
    return fig


def snapshot_io_figure(r: Rows, plt: Any) -> Any:
    """Saving and loading snapshots: OCI layouts at 16 and 256 MiB, diff snapshots, pushes."""
    names = [k for k in r if k.startswith(("save_", "load_", "checked_load_", "diff_",
                                           "session_pause_resume", "cold_start_"))
             and _measured(r, k)]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(names) + 1.6))
    _hbars(ax, names, [r[k]["median_us"] / 1000 for k in names], [ROW_COLOR] * len(names),
           [f"  ({r[k]['note']})" if "note" in r[k] else "" for k in names], "ms", log=True)
    ax.set_title("Snapshot I/O")
    return fig


FIGURES: dict[str, Callable[[Rows, Any], Any]] = {
    "calls": calls_figure, "fresh_runs": fresh_runs_figure, "http": http_figure,
    "memory": memory_figure, "snapshot_io": snapshot_io_figure}


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    """`results_<question>.png` in `out` for each figure the report has rows for; returns the
    files written (none without matplotlib, the bench extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the dev/bench extras
        return []
    written = []
    for name, draw in FIGURES.items():
        fig = draw(report["results"], plt)
        if fig is None:
            continue
        try:
            if not fig.get_constrained_layout():
                fig.tight_layout()
            path = out / f"results_{name}.png"
            fig.savefig(path, dpi=100)
            written.append(path)
        finally:
            plt.close(fig)
    return written

"""Runs after a heavy run (issue 28, item 1): the run rate of a code sandbox after one run that
dirtied 64 MiB, against the rate of a sandbox that never ran one, and the same for the next
sandbox handed the pooled VM that run bloated (docs/benchmarks.md)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from ..code import CodeSandbox

MIB = 1 << 20
TRIVIAL = {"js": "1 + 1", "lua": "1 + 1", "python": "1 + 1"}
# each allocates and touches 64 MiB (Lua: a 4-million-entry table, ~64 MiB of slots)
HEAVY = {
    "js": "const big = new Uint8Array(64 * 1024 * 1024);"
          " for (let i = 0; i < big.length; i += 4096) big[i] = 1; big.length",
    "lua": "local t = {} for i = 1, 4000000 do t[i] = i end return #t",
    "python": "big = bytearray(64 * 1024 * 1024)\n"
              "for i in range(0, len(big), 4096): big[i] = 1\nlen(big)",
}
LIMITS: dict[str, Any] = {"memory_limit": 128 * MIB, "timeout": 60}


def _row(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    med = statistics.median(s) / 1000
    return {"n": len(s), "median_us": med, "p99_us": s[min(len(s) - 1, int(len(s) * 0.99))] / 1000,
            "min_us": s[0] / 1000, "per_s": 1e6 / med}


def _runs(box: CodeSandbox, code: str, k: int) -> list[int]:
    out = []
    for _ in range(k):
        t = time.perf_counter_ns()
        box.run(code)
        out.append(time.perf_counter_ns() - t)
    return out


def bench_after_heavy_run(quick: bool = False) -> dict[str, dict[str, float]]:
    """Per language: `code_run_{lang}_trivial_beside_heavy` (a sandbox that never ran a heavy
    run) and `code_run_after_heavy_run_{lang}` (a sandbox after one heavy run), timed in
    alternating blocks; `code_run_after_heavy_run_pooled_vm_{lang}` and its reference
    `code_run_next_sandbox_pooled_vm_{lang}`: the runs of the next code sandbox on a pooled VM
    that the previous sandbox's heavy run bloated (or did not), after its first run, with
    `code_first_run_after_heavy_run_pooled_vm_{lang}`: from_snapshot + its first run, which
    pays for dropping the heavy run's pages."""
    n, block = (200, 50) if quick else (1000, 100)
    rounds, per = (2, 30) if quick else (8, 50)
    r: dict[str, dict[str, float]] = {}
    for lang, trivial in TRIVIAL.items():
        with CodeSandbox(lang, **LIMITS) as ref, CodeSandbox(lang, **LIMITS) as heavy:
            _runs(ref, trivial, 100)
            _runs(heavy, trivial, 100)
            heavy.run(HEAVY[lang])
            a: list[int] = []
            b: list[int] = []
            while len(a) < n:
                a += _runs(ref, trivial, block)
                b += _runs(heavy, trivial, block)
        r[f"code_run_{lang}_trivial_beside_heavy"] = _row(a)
        r[f"code_run_after_heavy_run_{lang}"] = _row(b)
        # the next sandbox on the pooled VM: the previous one ran the heavy code (or 1 + 1)
        first: list[int] = []
        nxt: dict[bool, list[int]] = {False: [], True: []}
        for _ in range(rounds):
            for bloat in (False, True):
                with CodeSandbox(lang, **LIMITS) as prev:
                    prev.run(HEAVY[lang] if bloat else trivial)
                t = time.perf_counter_ns()
                with CodeSandbox(lang) as box:
                    box.run(trivial)
                    if bloat:
                        first.append(time.perf_counter_ns() - t)
                    nxt[bloat] += _runs(box, trivial, per)
        r[f"code_run_next_sandbox_pooled_vm_{lang}"] = _row(nxt[False])
        r[f"code_run_after_heavy_run_pooled_vm_{lang}"] = _row(nxt[True])
        r[f"code_first_run_after_heavy_run_pooled_vm_{lang}"] = _row(first)
    return r


def ratios(r: dict[str, Any]) -> dict[str, float]:
    """Run rate after a heavy run / before (target ≥ 0.8), for the same sandbox and for the
    next sandbox on the pooled VM."""
    out = {}
    for lang in TRIVIAL:
        pairs = ((f"code_run_after_heavy_run_{lang}", f"code_run_{lang}_trivial_beside_heavy",
                  f"code_run_after_heavy_run_{lang}: run rate after / before"),
                 (f"code_run_after_heavy_run_pooled_vm_{lang}",
                  f"code_run_next_sandbox_pooled_vm_{lang}",
                  f"code_run_after_heavy_run_pooled_vm_{lang}: next sandbox's run rate, "
                  "bloated VM / not"))
        for after, before, name in pairs:
            if after in r and before in r:
                out[name] = r[before]["median_us"] / r[after]["median_us"]
    return out

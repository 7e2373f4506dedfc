"""What the two referees share (scripts/cpython_referee.py: CPython's Lib/test; scripts/
package_referee.py: numpy's and pandas' tests): each runs a test module inside a sandbox and
natively, then compares the outcomes test by test. An outcome map is
``{test id: [pass|fail|error|skip, detail]}``; a difference is expected only when the referee's
`explain` names what the sandbox leaves out by design."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run as a script: snapcell from the checkout
    sys.path.insert(0, str(ROOT))

Outcomes = dict[str, list[str]]
Explain = Callable[[str, str], "str | None"]


def explainer(known: Mapping[str, str], rules: Iterable[tuple[str, str]]) -> Explain:
    """An `explain(test_id, detail)`: the reason of the first test-id prefix in `known`, else of
    the first rule whose needle is in the sandbox's detail, else None (not explained)."""
    rules = tuple(rules)

    def explain(test_id: str, detail: str) -> str | None:
        for prefix, why in known.items():
            if test_id.startswith(prefix):
                return why
        for needle, why in rules:
            if needle in detail:
                return why
        return None
    return explain


def counts(outcomes: Outcomes) -> dict[str, int]:
    """run / pass / fail / error / skip totals."""
    c = {"run": len(outcomes), "pass": 0, "fail": 0, "error": 0, "skip": 0}
    for kind, _ in outcomes.values():
        c[kind] += 1
    return c


def compare(module: str, native: Callable[[str], Outcomes], sandbox: Callable[[str], Outcomes],
            unloaded_id: str) -> dict[str, Any]:
    """Both runs of one module and the tests whose outcome differs. A sandbox run that fails as a
    whole (the module did not load) counts as one error under `unloaded_id`."""
    t0 = time.perf_counter()
    ours = native(module)
    t1 = time.perf_counter()
    try:
        theirs = sandbox(module)
    except RuntimeError as e:
        theirs = {unloaded_id: ["error", str(e)[-600:]]}
    t2 = time.perf_counter()
    diff = {tid: {"native": ours.get(tid, ["absent", ""]), "sandbox": theirs.get(tid, ["absent", ""])}
            for tid in sorted(set(ours) | set(theirs))
            if ours.get(tid, ["absent"])[0] != theirs.get(tid, ["absent"])[0]}
    return {"module": module, "native": counts(ours), "sandbox": counts(theirs),
            "native_s": round(t1 - t0, 2), "sandbox_s": round(t2 - t1, 2), "differences": diff}


def sandbox_outcomes(what: str, code: str, **box: Any) -> Outcomes:
    """Run `code` (a driver whose last expression is the outcomes as JSON) in one Python code
    sandbox with the referees' limits, plus `box` (an image, tools, a timeout)."""
    from snapcell import CodeSandbox

    with CodeSandbox("python", memory_limit=128 << 20, max_output=2 << 20, **box) as sandbox:
        r = sandbox.run(code)
    if r.error is not None:
        raise RuntimeError(f"sandbox {what} failed: {r.error.type}: {r.error.message}\n"
                           f"{r.error.stack[-3000:]}")
    out: Outcomes = json.loads(r.value)
    return out


def unexplained(result: Mapping[str, Any], explain: Explain) -> dict[str, Any]:
    """The differences of one `compare` result that are not an explained sandbox-only failure
    (a test that fails natively, passes only in the sandbox, or is absent there is never one)."""
    return {tid: d for tid, d in result["differences"].items()
            if d["native"][0] != "pass" or d["sandbox"][0] in ("pass", "absent")
            or explain(tid, d["sandbox"][1]) is None}


def _totals(c: Mapping[str, int]) -> str:
    return f"{c['run']} / {c['pass']} / {c['fail']} / {c['error']} / {c['skip']}"


def report(results: list[dict[str, Any]], explain: Explain, qualify: bool = False) -> str:
    """A Markdown table (run / pass / fail / error / skip, sandbox and native, seconds) and every
    difference with its reason; `qualify` prefixes test ids with their module."""
    lines = ["| module | sandbox run / pass / fail / error / skip "
             "| native run / pass / fail / error / skip | s (sandbox / native) |",
             "|---|---|---|---|"]
    lines += [f"| {r['module']} | {_totals(r['sandbox'])} | {_totals(r['native'])} "
              f"| {r['sandbox_s']} / {r['native_s']} |" for r in results]
    for r in results:
        for tid, d in r["differences"].items():
            text = d["sandbox"][1].strip() or d["native"][1].strip()
            last = text.splitlines()[-1] if text else ""
            why = explain(tid, d["sandbox"][1]) or "NOT EXPLAINED"
            name = f"{r['module']}::{tid}" if qualify else tid
            lines.append(f"- {name}: native {d['native'][0]}, sandbox {d['sandbox'][0]} "
                         f"({why}): {last}")
    return "\n".join(lines)


def main(argv: list[str], modules: Iterable[str], compare_one: Callable[[str], dict[str, Any]],
         explain: Explain, qualify: bool = False) -> None:
    """`[--json OUT] [MODULE ...]`: compare the modules (default: the referee's selection), print
    the report, and write the results as JSON when asked."""
    out_json = None
    if argv[:1] == ["--json"]:
        out_json, argv = argv[1], argv[2:]
    results = [compare_one(m) for m in (argv or list(modules))]
    print(report(results, explain, qualify))
    if out_json:
        Path(out_json).write_text(json.dumps(results, indent=1))

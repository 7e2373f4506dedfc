"""The bench's real peers, fresh-run split and figures (issue 27): bubblewrap (Debian's, fetched
by the bench and checked against its pinned sha256) and Debian's python3 measured by the same
code `snapcell bench` runs, every row with its isolation kind in the JSON; an unusable peer is
a row with its reason; the figures are written. No timing is asserted."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from snapcell import UninitializedSandbox
from snapcell.bench import driver, peers, timing
from snapcell.bench.fresh_runs import PARTS, bench_fresh_runs
from snapcell.bench.peers import ServedPeer, bench_real_peers, peer_ratios, process_batch
from snapcell.bench.peers_install import PeerUnavailable, config
from snapcell.bench.plots import write_plots

PEER_ROWS = ("peer_bubblewrap_python3_process", "peer_python3_worker_same_interpreter_run",
             "peer_python3_worker_warm_snippet")


@pytest.fixture(scope="module")
def peer_rows() -> dict[str, dict]:
    return bench_real_peers(True, timing.interleaved, timing.stats, rows=PEER_ROWS,
                            snapcell=False, samples=10)


def test_real_peers_are_installed_measured_and_labelled(peer_rows: dict[str, dict]) -> None:
    assert set(peer_rows) == set(PEER_ROWS)
    for name, row in peer_rows.items():
        assert "unavailable" not in row, row
        assert row["n"] == 10 and 0 < row["min_us"] <= row["median_us"] <= row["p99_us"]
        assert row["isolation"] == config()["row"][name]["isolation"]
    assert peer_rows["peer_bubblewrap_python3_process"]["isolation"] == "process+namespaces"
    assert peer_rows["peer_python3_worker_warm_snippet"]["version"].startswith("3.")


def test_report_json_table_and_figures(peer_rows: dict[str, dict], kvm_ok: None,
                                       simpleguest: str, tmp_path: Path) -> None:
    hf = driver._host_functions()
    with UninitializedSandbox(simpleguest, host_functions=hf).evolve() as sb:
        snap = sb.snapshot()
    split = bench_fresh_runs(5, driver._python_floor(snap, hf), warmup=1, langs=("js",))
    assert {f"fresh_run_js_{p}" for p in PARTS} <= set(split)
    assert split["fresh_run_js_total"]["exits"] >= 1 and split["fresh_run_js_total"]["dirty_pages"] >= 1
    assert split["fresh_run_js_kvm_run"]["median_us"] <= split["fresh_run_js_run"]["median_us"]
    rows = {**peer_rows, **split,
            "snapcell_new_box_python_run": {**split["fresh_run_js_total"], "lang": "python",
                                            "question": "new box", "isolation": "hardware VM"}}
    report = {"kernel": "test", "quick": True, "results": rows, "ratios": peer_ratios(rows)}
    assert any("[process+namespaces]" in k for k in report["ratios"])
    driver._write(report, tmp_path)
    written = json.loads((tmp_path / "results.json").read_text())["results"]
    assert written["peer_bubblewrap_python3_process"]["isolation"] == "process+namespaces"
    table = (tmp_path / "results.md").read_text()
    assert "[process+namespaces]" in table and "[none]" in table
    png = tmp_path / "results_fresh_runs.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unusable_peer_is_a_reason_not_a_row_dropped(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    with pytest.raises(PeerUnavailable, match="driver failed to start: not json"):
        ServedPeer([sys.executable, "-c", "print('not json')"])
    with pytest.raises(PeerUnavailable, match="exited 3"):
        process_batch([sys.executable, "-c", "import sys; sys.exit(3)"])
    monkeypatch.setattr(peers, "NATIVE", tmp_path)                  # no native lua here
    got = bench_real_peers(True, timing.interleaved, timing.stats, snapcell=False,
                           rows=("peer_lua_native_process", "peer_python3_c_process"),
                           samples=1)
    assert got["peer_lua_native_process"]["unavailable"] == (
        "build/native/lua is not built (make build/native/lua)")
    assert got["peer_lua_native_process"]["isolation"] == "process"
    assert got["peer_python3_c_process"]["n"] == 1              # the others still measured
    for name, spec in config()["row"].items():        # every row names a known kind
        assert spec["isolation"] in ("V8 isolate", "WebAssembly", "process+namespaces",
                                     "process", "none"), name
    gone = driver._rows({"results": {"x": {"n": 0, "median_us": math.nan, "p99_us": math.nan,
                                           "unavailable": "no npm", "isolation": "V8 isolate"}}})
    assert gone == [("x", "unavailable: no npm [V8 isolate]", "", "0")]
    assert write_plots({"results": {}}, Path("/nonexistent")) == []    # nothing to draw

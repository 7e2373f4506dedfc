"""`snapcell bench`: the benchmarks (snapcell/bench), as a table, JSON and plots."""

from __future__ import annotations

import json
import sys

import click

from ..errors import SnapcellError
from . import console


@click.command("bench")
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
    from ..bench import run_benchmarks
    try:
        report = run_benchmarks(quick=quick, out_dir=out, console=None if as_json else console(),
                                peers=not no_peers)
    except SnapcellError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")

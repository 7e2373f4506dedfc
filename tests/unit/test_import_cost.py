"""What `import snapcell` and the `snapcell run` verb import: nothing a plain sandbox run does
not use (the egress stack, registry client, service, rich...), so a cold `snapcell run` does not
pay for them (issue 27; the times are in `snapcell bench`, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# imported on first use by the features that need them
NOT_ON_THE_RUN_PATH = {
    "snapcell.code.egress", "snapcell.snapshot.registry", "snapcell.snapshot.sessions",
    "snapcell.serving", "snapcell.debug", "snapcell.dask", "snapcell.cli.options",
    "asyncio", "ssl", "urllib3", "socket", "logging", "importlib.resources", "tempfile",
    "difflib", "rich", "prometheus_client",
}


def _modules(statement: str) -> set[str]:
    # run outside the checkout, as an installed snapcell is (from the checkout's root the
    # shadowing check reads the installed distribution's metadata first)
    out = subprocess.run([sys.executable, "-c", f"{statement}\nimport json, sys\n"
                          "print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, timeout=120, cwd="/")
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize("statement", ["import snapcell", "import snapcell.cli.run",
                                       "from snapcell.code import CodeSandbox"])
def test_run_path_imports_only_what_it_uses(statement: str) -> None:
    loaded = _modules(statement)
    assert "snapcell.code.sandbox" in loaded          # (the statement did import snapcell)
    assert not loaded & NOT_ON_THE_RUN_PATH, sorted(loaded & NOT_ON_THE_RUN_PATH)


def test_egress_still_loads_its_operations() -> None:
    """Importing the egress package (as a sandbox with a network policy does) registers every
    reserved net.* operation under the tool channel's prefix."""
    loaded = _modules("from snapcell.code.egress import OPS, OP_PREFIX\n"
                      "from snapcell.code.tools import OP_PREFIX as P\n"
                      "assert OP_PREFIX == P and OPS and all(k.startswith(P) for k in OPS)\n"
                      "assert {'net.fetch', 'net.connect'} <= set(OPS), sorted(OPS)")
    assert "snapcell.code.egress.fetch" in loaded

"""What `import snapcell` and the `snapcell run` verb import: nothing a plain sandbox run does
not use (registry client, service, rich...), so a cold `snapcell run` does not pay for them
(issue 27; the times are in `snapcell bench`, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# imported on first use by the features that need them
NOT_ON_THE_RUN_PATH = {
    "snapcell.snapshot.registry", "snapcell.snapshot.sessions", "snapcell.serving",
    "snapcell.debug", "snapcell.dask", "snapcell.cli.options", "asyncio", "ssl", "urllib3",
    "importlib.resources", "tempfile", "difflib", "rich", "prometheus_client",
}


def _modules(statement: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{statement}\nimport json, sys\n"
                          "print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize("statement", ["import snapcell", "import snapcell.cli.run",
                                       "from snapcell.code import CodeSandbox"])
def test_run_path_imports_only_what_it_uses(statement: str) -> None:
    loaded = _modules(statement)
    assert "snapcell.code.sandbox" in loaded          # (the statement did import snapcell)
    assert not loaded & NOT_ON_THE_RUN_PATH, sorted(loaded & NOT_ON_THE_RUN_PATH)

"""numpy's and pandas' own test suites as the referee of the data image: each test module runs
with pytest inside one code sandbox on the data image, and natively in a process of the same
CPython build linked dynamically against the same musl (build/cpython/obj/python-musl-dyn) with
the same wheels unpacked; the outcomes are compared test by test, like cpython_referee.py.

    .venv/bin/python scripts/package_referee.py [--json OUT] [MODULE ...]

MODULE is a path inside site-packages (``numpy/_core/tests/test_numeric.py``). The wheels are
the data image's lock (images/data/requirements.lock) plus the test tools' lock
(images/referee/requirements.lock: pytest and hypothesis), both pinned by sha256 and unpacked
under build/referee by `package_referee.py --prepare` (make does it). The test tools are not in
the image: the sandbox fetches them, and each test module, through a tool and imports them from
zip files in /tmp, and the native run does the same from disk — one driver text for both. A test
module runs as a copy outside its package in both places (the image leaves test suites out).

tests/code/test_package_referee.py runs a slice in `make test`; `make package-referee` runs
the full selection. Every difference must be explained (`explain`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import referee_common as common  # noqa: E402
from referee_common import explainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "build" / "cpython" / "obj" / "python-musl-dyn"
REFEREE = ROOT / "build" / "referee"
SITE, TOOLS = REFEREE / "site", REFEREE / "tools"
IMAGE = str(ROOT / "build" / "images" / "data") + ":latest"
MODULES = (
    "numpy/_core/tests/test_numeric.py", "numpy/_core/tests/test_shape_base.py",
    "numpy/_core/tests/test_item_selection.py", "numpy/_core/tests/test_getlimits.py",
    "numpy/lib/tests/test_arraysetops.py", "numpy/lib/tests/test_function_base.py",
    "numpy/linalg/tests/test_linalg.py", "numpy/random/tests/test_generator_mt19937.py",
    "pandas/tests/frame/methods/test_sort_values.py", "pandas/tests/groupby/test_counting.py",
    "pandas/tests/reshape/test_pivot.py", "pandas/tests/io/formats/test_format.py",
    "pandas/tests/series/test_arithmetic.py", "pandas/tests/tools/test_to_datetime.py",
)

# Runs one test module with pytest and returns {nodeid: [outcome, detail]}; the same text runs
# in the sandbox and natively. `fetch(name)` gives the bytes of a tool wheel or a site file.
DRIVER = r'''
import os, sys
# numpy's requires_memory asks this first (else /proc/meminfo, which the sandbox lacks): both
# runs then skip the tests that need more than a sandbox's heap, the same way
os.environ["NPY_AVAILABLE_MEM"] = "128 MB"
def _referee(module, wheels, conftest):
    for n in wheels:
        p = "/tmp/" + n
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(fetch("tools/" + n))
        if p not in sys.path:
            sys.path.insert(0, p)
    os.makedirs("/tmp/referee", exist_ok=True)
    name = "/tmp/referee/" + module.replace("/", "__")
    with open(name, "wb") as f:
        f.write(fetch("site/" + module))
    if conftest:
        with open("/tmp/referee/conftest.py", "wb") as f:
            f.write(fetch("site/" + conftest))
    import pytest
    out = {}
    class Collect:
        def pytest_runtest_logreport(self, report):
            if report.when == "call" or report.outcome != "passed":
                kind = {"passed": "pass", "failed": "fail" if report.when == "call" else "error",
                        "skipped": "skip"}[report.outcome]
                if hasattr(report, "wasxfail"):
                    kind = "pass" if report.outcome == "skipped" else "fail"
                out.setdefault(report.nodeid.split("::", 1)[-1], [kind, str(report.longrepr or "")[-600:]])
        def pytest_collectreport(self, report):
            if report.outcome == "failed":
                out["(collection)"] = ["error", str(report.longrepr)[-600:]]
    rc = pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:faulthandler", "-p", "no:logging",
                 "--capture=sys", "-W", "ignore::pytest.PytestUnknownMarkWarning",
                 "-o", "xfail_strict=false", "--rootdir=" + os.path.dirname(name), name], plugins=[Collect()])
    if not out:
        out["(session)"] = ["error", "pytest ended with status %d and no test" % rc]
    return out
'''

_HELPERS = "imports pandas' own test helpers (pandas.tests), which the image leaves out"
KNOWN: dict[str, str] = {"TestToDatetime::test_to_datetime_fixed_offset": _HELPERS}
RULES = (
    ("No module named 'pandas.tests'", _HELPERS),
    ("W^X seal", "imports a compiled module that was not preloaded: the image is sealed after "
                 "warm-up (no new code is mapped), docs/security.md"),
    ("[Errno 38] Function not implemented", "a system call the sandbox leaves out"),
    ("the sandbox has no processes", "starts a process (the sandbox has none)"),
    ("the sandbox has no pipes", "makes a pipe"),
    ("can't start new thread", "threads (there is one vCPU and no clone)"),
    ("MemoryError", "needs more than the sandbox's heap limit (128 MiB at most)"),
)


explain = explainer(KNOWN, RULES)


def _wheels() -> list[str]:
    return sorted(p.name for p in TOOLS.glob("*.whl"))


def _conftest(module: str) -> str | None:
    """pandas' fixtures live in pandas/conftest.py (shipped in the wheel and the image)."""
    return "pandas/conftest.py" if module.startswith("pandas/") else None


def _fetch(name: str) -> bytes:
    """A tool wheel (tools/...) or a site-packages file (site/...) by its relative name."""
    base, _, rel = name.partition("/")
    root = {"tools": TOOLS, "site": SITE}.get(base)
    path = (root / rel).resolve() if root is not None else None
    if path is None or root is None or root.resolve() not in path.parents or not path.is_file():
        raise FileNotFoundError(name)
    return path.read_bytes()


def _call(module: str) -> str:
    return f"_referee({module!r}, {_wheels()!r}, {_conftest(module)!r})"


def run_native(module: str, timeout: float = 900) -> dict[str, list[str]]:
    """The module's outcomes in a native process of the same build, on the same wheels."""
    with tempfile.TemporaryDirectory(prefix="snapcell-referee-") as tmp:
        code = (f"import json, pathlib, sys\nROOT = {str(REFEREE)!r}\n"
                "def fetch(name):\n    return pathlib.Path(ROOT, name).read_bytes()\n"
                + DRIVER.replace('"/tmp/', 'TMP + "/') + f"\nTMP = {tmp!r}\n"
                f"sys.stdout.write('\\n' + json.dumps({_call(module)}))\n"
                # after some modules the process hangs in its exit handlers (seen with
                # test_numeric: the results were written, the process never ended)
                "sys.stdout.flush()\nimport os\nos._exit(0)\n")
        env = {"PATH": os.environ.get("PATH", ""), "HOME": tmp, "TZ": "UTC",
               "PYTHONPATH": f"{SITE}:{NATIVE.parent}",        # the build's _ctypes is there
               "LD_LIBRARY_PATH": str(ROOT / "build" / "musl" / "lib"),    # libz.so.1 (Pillow)
               "OPENBLAS_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
        p = subprocess.run([str(NATIVE), "-c", code], capture_output=True, text=True,
                           timeout=timeout, cwd=tmp, env=env)
    if p.returncode != 0 or not p.stdout.strip():
        raise RuntimeError(f"native {module} failed: {p.stderr[-2000:]}")
    out: dict[str, list[str]] = json.loads(p.stdout.splitlines()[-1])
    return out


def run_sandbox(module: str, timeout: float = 900) -> dict[str, list[str]]:
    """The module's outcomes inside one Python code sandbox on the data image."""
    return common.sandbox_outcomes(module, DRIVER + f"\nimport json\njson.dumps({_call(module)})",
                                   image=IMAGE, tools={"fetch": _fetch}, timeout=timeout)


def compare(module: str) -> dict[str, Any]:
    """Both runs of one module and the tests whose outcome differs."""
    return common.compare(module, run_native, run_sandbox, "(module)")


def prepare() -> None:
    """Download both locks' wheels (pinned by sha256) and unpack the data image's under SITE."""
    import shutil
    import zipfile
    sys.path.insert(0, str(ROOT))
    from snapcell.code.images import download_wheels
    shutil.rmtree(REFEREE, ignore_errors=True)
    wheels = download_wheels(ROOT / "images" / "data" / "requirements.lock", REFEREE / "wheels")
    download_wheels(ROOT / "images" / "referee" / "requirements.lock", TOOLS)
    for w in wheels:
        with zipfile.ZipFile(w.path) as z:
            z.extractall(SITE)
    print(f"{len(wheels)} wheels unpacked under {SITE}, {len(_wheels())} test tools")


if __name__ == "__main__":
    if sys.argv[1:] == ["--prepare"]:
        prepare()
    else:
        common.main(sys.argv[1:], MODULES, compare, explain, qualify=True)

"""The default data image (`make data-image`, docs/code-sandboxes.md "Packages and images"):
what model-written data code imports first, loaded from PyPI's musllinux wheels in a real KVM
guest. The image must have been built (the test fails, naming the make target, otherwise)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from snapcell import CodeSandbox

LAYOUT = Path(__file__).resolve().parents[2] / "build" / "images" / "data"
IMAGE = f"{LAYOUT}:latest"


@pytest.fixture(scope="module")
def box() -> Iterator[CodeSandbox]:
    assert (LAYOUT / "index.json").is_file(), "the data image is not built: run `make data-image`"
    with CodeSandbox("python", image=IMAGE, timeout=60.0, memory_limit=128 << 20) as b:
        yield b


def test_every_package_imports(box: CodeSandbox) -> None:
    r = box.run("import numpy, pandas, matplotlib, scipy, dateutil, pytz, yaml, tabulate, bs4, "
                "pydantic, requests\nsorted(m.__name__ for m in (numpy, pandas, matplotlib, "
                "scipy, yaml, bs4, pydantic, requests))")
    assert r.error is None, r.error
    assert r.value == sorted(["numpy", "pandas", "matplotlib", "scipy", "yaml", "bs4",
                              "pydantic", "requests"])


def test_pandas_groupby(box: CodeSandbox) -> None:
    r = box.run("import numpy as np, pandas as pd\n"
                "df = pd.DataFrame({'k': np.arange(1000) % 4, 'v': np.arange(1000.0)})\n"
                "df.groupby('k').v.sum().to_dict()")
    assert r.error is None, r.error
    assert r.value == {i: float(sum(range(i, 1000, 4))) for i in range(4)}


def test_matplotlib_png(box: CodeSandbox) -> None:
    r = box.run("import matplotlib, matplotlib.pyplot as plt\n"
                "fig, ax = plt.subplots(figsize=(3, 2))\nax.plot([1, 3, 2])\n"
                "fig.savefig('chart.png', dpi=50)\nplt.close(fig)\nmatplotlib.get_backend()")
    assert r.error is None, r.error
    assert r.value.lower() == "agg"
    assert r.files["chart.png"][:8] == b"\x89PNG\r\n\x1a\n"


def test_scipy_linear_algebra_and_optimisation(box: CodeSandbox) -> None:
    r = box.run("import numpy as np, scipy.linalg as la, scipy.optimize as o\n"
                "w = la.eigh(np.diag([3.0, 1.0, 2.0]), eigvals_only=True)\n"
                "[w.round(6).tolist(), round(float(o.minimize(lambda x: (x[0] - 3) ** 2, [0.0]).x[0]), 4)]")
    assert r.error is None, r.error
    assert r.value == [[1.0, 2.0, 3.0], 3.0]


def test_pure_python_packages(box: CodeSandbox) -> None:
    r = box.run("import yaml, tabulate, bs4, pydantic, dateutil.parser, pytz\n"
                "class P(pydantic.BaseModel):\n    x: int\n"
                "[yaml.safe_load('a: [1, 2]'), tabulate.tabulate([[1, 2]]).count('-') > 0,\n"
                " bs4.BeautifulSoup('<p>hi</p>', 'html.parser').p.text, P(x='3').x,\n"
                " dateutil.parser.parse('2026-12-07T10:00').day, str(pytz.timezone('UTC'))]")
    assert r.error is None, r.error
    assert r.value == [{"a": [1, 2]}, True, "hi", 3, 7, "UTC"]


def test_cpu_dispatch_stays_within_the_baseline(box: CodeSandbox) -> None:
    """The image is built under the portable baseline (x86-64-v3): numpy and OpenBLAS were told
    so before they chose their kernels at warm-up, so the warm snapshot holds no AVX-512 path
    whatever host built it (docs/security.md, "CPU baselines")."""
    r = box.run("import os, numpy\nfrom numpy._core._multiarray_umath import __cpu_features__ as f\n"
                "[os.environ.get('OPENBLAS_CORETYPE'), 'X86_V4' in "
                "os.environ.get('NPY_DISABLE_CPU_FEATURES', ''), f.get('AVX512F', False), "
                "f.get('AVX2', False)]")
    assert r.error is None, r.error
    assert r.value == ["Haswell", True, False, True]


def test_open_figures_come_back_as_png_bundles(box: CodeSandbox) -> None:
    """A figure left open at the end of a run is shown as a notebook shows it: a PNG bundle in
    r.display; then it is closed (the next run shows nothing), and a failed run shows none."""
    import base64
    r = box.run("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\n'drawn'")
    assert r.error is None, r.error
    assert r.value == "drawn" and len(r.display) == 1
    png = base64.b64decode(r.display[0]["image/png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert "Figure" in r.display[0]["text/plain"]
    r = box.run("import matplotlib.pyplot as plt\nplt.get_fignums()")
    assert r.error is None and r.value == [] and r.display == []
    r = box.run("import matplotlib.pyplot as plt\nplt.figure()\nraise ValueError('no')")
    assert r.error is not None and r.error.type == "ValueError" and r.display == []

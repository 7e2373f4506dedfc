"""The dynamic Python guest and package images (docs/code-sandboxes.md, "Packages and images"):
PyPI's musllinux wheels loaded unchanged by musl's dynamic linker inside a real KVM guest, the
W^X seal after warm-up (docs/security.md), images built with pip and saved as OCI layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapcell import CodeSandbox
from snapcell.code import image_store, images
from snapcell.errors import ConfigurationError
from snapcell.machine.layout import Perm
from snapcell.sandbox import Snapshot, wx_seal

NUMPY_SUM = "import numpy as np; int(np.arange(1000).sum())"


@pytest.fixture(scope="session")
def base_snapshot() -> Snapshot:
    """The dynamic guest on its standard-library image (no packages), warmed and sealed."""
    guests = images.dynamic_guest_dir()
    return images.evolve_image(guests / images.DYNAMIC_GUEST,
                               (guests / images.DYNAMIC_GUEST).with_suffix(".img"))


@pytest.fixture(scope="session")
def numpy_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image with numpy (downloaded from PyPI by pip), numpy preloaded, and docopt (PyPI has
    only its sdist: built into a pure-Python wheel)."""
    d = tmp_path_factory.mktemp("img")
    req = d / "requirements.txt"
    req.write_text("numpy==2.4.6\ndocopt==0.6.2\n")
    built = images.build_image(req, f"{d / 'layout'}:np", preload=("numpy",))
    lock = built.lock.read_text()
    assert lock.count("--hash=sha256:") == 2 and "docopt==0.6.2 --hash=sha256:" in lock
    return built.ref


def test_numpy_wheel_imports_and_computes(numpy_image: str) -> None:
    with CodeSandbox("python", snapshot=images.image_snapshot(numpy_image)) as box:
        r = box.run(NUMPY_SUM)
        assert r.error is None and r.value == 499500
        r = box.run("import numpy as np\nrng = np.random.default_rng(1)\n"
                    "a = rng.random((60, 60)) + 60 * np.eye(60)\n"
                    "float(np.abs(np.linalg.inv(a) @ a - np.eye(60)).max())")
        assert r.error is None and r.value < 1e-9
        r = box.run("import sys; sorted(m for m in sys.modules if m.startswith('numpy'))[:1]")
        assert r.value == ["numpy"]          # preloaded: the run did not import it


def test_a_pure_python_sdist_is_built_into_the_image(numpy_image: str) -> None:
    with CodeSandbox("python", image=numpy_image) as box:
        r = box.run("from docopt import docopt\n"
                    "docopt('Usage: prog [--n=<k>]', argv=['--n=3'])['--n']")
    assert r.value == "3", r


def test_ctypes_in_the_dynamic_guest(base_snapshot: Snapshot) -> None:
    with CodeSandbox("python", snapshot=base_snapshot) as box:
        r = box.run("import ctypes\nctypes.sizeof(ctypes.c_long), "
                    "ctypes.CDLL(None).sc_lib_is_sealed()")
        assert r.error is None and r.value == [8, 1]


def test_missing_package_names_the_image(numpy_image: str) -> None:
    with CodeSandbox("python", snapshot=images.image_snapshot(numpy_image)) as box:
        r = box.run("import pandas")
        assert r.error is not None and r.error.type == "ModuleNotFoundError"
        assert numpy_image in r.error.message and "snapcell image build" in r.error.message
        r = box.run("import numpy.nonexistent_submodule")
        assert r.error is not None and r.error.type == "ModuleNotFoundError"


def test_sealed_snapshot_has_no_writable_executable_page(numpy_image: str) -> None:
    snap = images.image_snapshot(numpy_image)
    assert wx_seal.is_sealed(snap)
    rwx = Perm.W | Perm.X
    assert not [s for s in snap.segments if s.perm & rwx == rwx]
    code = [s for s in snap.segments if s.perm & Perm.X]
    assert len(code) > 10                     # the libraries' code, read + execute


def test_seal_executing_data_faults(base_snapshot: Snapshot) -> None:
    with CodeSandbox("python", snapshot=base_snapshot) as box:
        r = box.run("import ctypes\nb = ctypes.create_string_buffer(b'\\xc3' * 16)\n"
                    "ctypes.CFUNCTYPE(None)(ctypes.addressof(b))()\n'executed'")
        assert r.error is not None and "on execute" in r.error.message, r
        assert box.run("1 + 1").value == 2    # the next run starts from the warm snapshot


def test_seal_writing_library_code_faults(numpy_image: str) -> None:
    with CodeSandbox("python", snapshot=images.image_snapshot(numpy_image)) as box:
        r = box.run("import ctypes, glob\n"
                    "p = glob.glob('/usr/lib/python3.11/site-packages/numpy/_core/"
                    "_multiarray_umath*.so')[0]\n"
                    "f = ctypes.CDLL(p).PyInit__multiarray_umath\n"
                    "ctypes.memmove(ctypes.cast(f, ctypes.c_void_p).value, b'\\xcc', 1)\n"
                    "'wrote'")
        assert r.error is not None and "on write" in r.error.message, r
        assert box.run(NUMPY_SUM).value == 499500


def test_no_new_code_after_the_seal(base_snapshot: Snapshot) -> None:
    with CodeSandbox("python", snapshot=base_snapshot) as box:
        r = box.run("import shutil, sys, glob, importlib\n"
                    "so = glob.glob('/usr/lib/python3.11/lib-dynload/_ctypes*.so')[0]\n"
                    "shutil.copy(so, '/tmp/_ctypes.cpython-311-x86_64-linux-musl.so')\n"
                    "sys.path.insert(0, '/tmp'); sys.modules.pop('_ctypes', None)\n"
                    "importlib.import_module('_ctypes')")
        assert r.error is not None and r.error.type == "ImportError"
        assert "sealed W^X" in r.error.message
        r = box.run("import ctypes\nctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)()")
        assert r.error is not None and r.error.type in ("MemoryError", "InternalError"), r


def test_package_without_musllinux_wheel_is_refused(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("scikit-learn\n")
    with pytest.raises(images.ImageBuildError, match="scikit-learn.*musllinux_1_2_x86_64"):
        images.build_image(req, f"{tmp_path / 'layout'}:x")
    assert not (tmp_path / "layout").exists()


def test_bad_image_reference() -> None:
    with pytest.raises(ConfigurationError, match="snapcell image build"):
        images.image_snapshot("/nonexistent/layout:tag")
    with pytest.raises(images.ImageBuildError, match="module name"):
        images.build_image("requirements.txt", "x:y", preload=("os; import x",))


def test_image_from_a_registry_by_digest(numpy_image: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from snapcell.snapshot import registry

    from ..test_registry import _start, _stop
    (tmp_path / "reg").mkdir()
    reg = _start(tmp_path / "reg")
    try:
        layout, tag = images.parse_image_ref(numpy_image)
        digest = registry.push(str(layout), f"{reg.host}/images/np:{tag}", ref=tag, insecure=True)
        monkeypatch.setenv(image_store.CACHE_ENV, str(tmp_path / "cache"))
        ref = f"{reg.host}/images/np@{digest}"
        snap = image_store.image_snapshot(ref, insecure=True)
        assert snap.digest == digest and wx_seal.is_sealed(snap)
        with CodeSandbox("python", image=ref) as box:       # the process's copy of the pull
            assert box.run(NUMPY_SUM).value == 499500
    finally:
        _stop(reg)

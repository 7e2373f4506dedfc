"""Warm-up of the dynamic Python guest (docs/code-sandboxes.md, "Packages and images").

Installed in the guest's image as sitecustomize, so `site` runs it while the interpreter
initialises, before the warm snapshot is taken:

1. imports the image's preload list (_snapcell_image.json: the packages runs import at no cost);
2. loads every other extension module of site-packages and lib-dynload into memory, without
   importing it: after the seal no code can be mapped, so a later `import` finds it loaded;
3. seals: from now on the guest refuses every executable mapping (sc_lib_seal), and the host
   seals the snapshot's page tables (snapcell/sandbox/wx_seal.py), so no page is writable and
   executable;
4. makes import errors say what happened: a module missing from the image names the image and
   how to add the package; native code refused by the seal says so.

It seals even when the warm-up fails; the failure is kept in WARM_ERROR, which the image build
checks (snapcell/code/images.py), so a broken preload fails the build instead of being lost in
the guest's stderr. matplotlib gets the Agg backend and a config directory under /tmp; when
pyplot is preloaded, one figure is drawn so runs find fonts and caches warm.
"""

import importlib
import importlib.machinery
import json
import os
import sys
import traceback

_LIB = "/usr/lib/python3.11"
_DYNLOAD = _LIB + "/lib-dynload"
_SITE = _LIB + "/site-packages"
_CONFIG = _LIB + "/_snapcell_image.json"


def _config() -> dict:
    try:
        with open(_CONFIG, encoding="utf-8") as f:
            return json.load(f)
    except OSError:
        return {"name": "python (no packages)", "preload": [], "packages": []}


def _extension_files() -> list:
    out = []
    for top in (_DYNLOAD, _SITE):
        for d, _dirs, names in os.walk(top):
            out += [os.path.join(d, n) for n in sorted(names) if n.endswith(".so")]
    return out


class _NotInImage:
    """Last on sys.meta_path: a top-level module nobody found is not in the image."""

    image = ""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if path is not None:
            return None
        raise ModuleNotFoundError(
            f"No module named {name!r}: it is not in this sandbox's image ({cls.image}). Add "
            f"its package to the image's requirements and rebuild it: `snapcell image build "
            f"python -r requirements.txt -o LAYOUT:TAG`, then run with image=LAYOUT:TAG",
            name=name)


_create_module = importlib.machinery.ExtensionFileLoader.create_module


def _sealed_create_module(self, spec):
    try:
        return _create_module(self, spec)
    except ImportError as e:
        raise ImportError(
            f"cannot load native code for {spec.name!r} after warm-up: the sandbox is sealed "
            f"W^X (no new executable code once initialised). Preload it when building the image "
            f"(--preload {spec.name.split('.')[0]}). ({e})", name=spec.name) from None


WARM_ERROR = None        # the warm-up's failure (a traceback), checked by the image build
LOAD_ERRORS = {}         # extension modules that could not be loaded: path -> why


# numpy's names for its AVX-512 dispatch targets (2.x levels, and 1.x names: a name this numpy
# does not dispatch only gives an ImportWarning)
_NUMPY_AVX512 = ("X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX "
                 "AVX512_CLX AVX512_CNL")


def _pin_dispatch(features) -> None:
    """Keep the libraries that pick a code path from CPUID when they load (numpy, OpenBLAS)
    within the image's CPU baseline, so the warm snapshot holds no path a baseline host lacks
    (docs/security.md, "CPU baselines"): under PVM the guest sees the host's CPUID, and a
    snapshot built on an AVX-512 host would otherwise keep AVX-512 kernels. A baseline without
    AVX state needs nothing from numpy: the guest's CPUID then says the OS has no XSAVE."""
    if features is None:
        return
    have = set(features)
    if "avx512f" not in have:
        os.environ.setdefault("NPY_DISABLE_CPU_FEATURES", _NUMPY_AVX512)
    os.environ.setdefault("OPENBLAS_CORETYPE", "SkylakeX" if "avx512f" in have else
                          "Haswell" if "avx2" in have else
                          "Nehalem" if "sse4_2" in have else "Prescott")


def _warm_up(cfg: dict) -> None:
    _pin_dispatch(cfg.get("cpu_features"))
    if _DYNLOAD not in sys.path:
        sys.path.append(_DYNLOAD)
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("MPLCONFIGDIR", "/tmp/.matplotlib")
    for name in cfg.get("preload", []):
        importlib.import_module(name)
    if "matplotlib.pyplot" in sys.modules:
        _warm_matplotlib()
    import ctypes
    for path in _extension_files():
        try:
            ctypes.CDLL(path)
        except OSError as e:
            LOAD_ERRORS[path] = str(e)     # importing it will say why, too


def _warm_matplotlib() -> None:
    """Draw one figure, so runs find the fonts loaded and the renderer's caches filled."""
    import io

    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [1, 0], label="warm-up")
    ax.set_title("warm-up")
    ax.legend()
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)


def _seal(cfg: dict) -> None:
    _NotInImage.image = cfg.get("name", "?")
    sys.meta_path.append(_NotInImage)
    importlib.machinery.ExtensionFileLoader.create_module = _sealed_create_module
    import ctypes
    ctypes.CDLL(None).sc_lib_seal()


_cfg = _config()
try:
    _warm_up(_cfg)
except BaseException:
    WARM_ERROR = traceback.format_exc(limit=8)
finally:
    _seal(_cfg)

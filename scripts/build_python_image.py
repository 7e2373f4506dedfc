"""Build the Python guest's read-only file system image and the assembly file linking it in.

    build/cpython/obj/python scripts/build_python_image.py OUT_DIR

Run with the static CPython just built (so the byte code matches the guest's interpreter).
The image (snapcell/guest/fsimage.py) holds the standard library under /usr/lib/python3.11:
every module's source and its byte code in __pycache__ (unchecked-hash .pyc, so imports read the
byte code without comparing source timestamps), less the parts a sandbox cannot use (GUI, IDLE,
ensurepip, the packages' own test suites), plus the few Lib/test modules the CPython referee
runs (REFEREE_TESTS) with test.support, sysconfig's generated data module, the runner
guests/python/_snapcell_runner.py, the time zone database under /usr/share/zoneinfo, the CA
bundle as /usr/lib/ssl/cert.pem and an empty /tmp. Writes OUT_DIR/stdlib.img and OUT_DIR/stdlib_image.S.

    ... build_python_image.py OUT_DIR --name NAME --site-packages DIR --lib-dynload SO ...

builds the image of the dynamic guest (docs/code-sandboxes.md, "Packages and images") instead:
the same tree plus DIR (unpacked wheels) as site-packages, with byte code, less the packages'
test suites, the extension modules SO (e.g. _ctypes) in lib-dynload, the shared libraries of
--usr-lib (libz.so.1, which musllinux wheels may need) in /usr/lib, the warm-up
guests/python/_snapcell_dynamic.py as sitecustomize and, with --image-config FILE, FILE as
_snapcell_image.json (the image's name, packages and preload list); written as OUT_DIR/NAME.img
and OUT_DIR/NAME_image.S."""

from __future__ import annotations

import argparse
import importlib.util
import py_compile
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "build" / "third_party" / "cpython" / "Lib"
RUNNER = ROOT / "guests" / "python" / "_snapcell_runner.py"
SANDBOX = ROOT / "guests" / "python" / "_snapcell_sandbox.py"  # imported by the runner
DYNAMIC = ROOT / "guests" / "python" / "_snapcell_dynamic.py"    # the dynamic guest's warm-up
PREFIX = "/usr/lib/python3.11"
EXCLUDE_DIRS = {"idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages", "venv",
                "lib2to3/tests", "distutils/tests", "unittest/test", "ctypes/test",
                "sqlite3/test", "__pycache__", "test"}
# Lib/test pieces in the image: test.support and the modules the referee runs (tests/code/
# test_python_suite.py, scripts/cpython_referee.py) with the data files they read.
REFEREE_TESTS = ("test_json", "test_re", "test_math", "test_datetime", "datetimetester",
                 "test_collections", "test_statistics", "test_heapq", "test_bisect",
                 "test_textwrap", "test_string", "test_fractions", "test_csv", "re_tests",
                 "test_itertools", "test_functools", "test_dataclasses", "test_random",
                 "test_struct", "test_base64", "test_zlib", "test_enum", "test_operator",
                 "test_fstring", "test_string_literals", "dataclass_module_1",
                 "dataclass_module_1_str", "dataclass_module_2", "dataclass_module_2_str",
                 "dataclass_textanno",
                 "test_asyncio", "test_sqlite3", "test_lzma", "test_bz2")  # issue 26's modules
# The time zone database (Debian's tzdata, installed by the set-up) for zoneinfo, less its
# duplicate right/ and posix/ trees.
ZONEINFO = Path("/usr/share/zoneinfo")
# The CA bundle (Debian's ca-certificates, made by scripts/build_openssl.sh) where the guest's
# OpenSSL looks by default (OPENSSLDIR/cert.pem): ssl.create_default_context() loads it.
CA_BUNDLE = ROOT / "build" / "openssl" / "ca-certificates.crt"
CA_PATH = "/usr/lib/ssl/cert.pem"
TEST_FILES = ("__init__.py", "math_testcases.txt", "ieee754.txt", "cmath_testcases.txt",
              "mathdata", "randv2_32.pck", "randv2_64.pck", "randv3.pck",
              "ssl_cert.pem", "ssl_key.pem", "pycacert.pem", "keycert3.pem")  # test_asyncio.utils


def _load_fsimage():  # the module alone: the snapcell package needs third-party libraries
    spec = importlib.util.spec_from_file_location("fsimage", ROOT / "snapcell/guest/fsimage.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fsimage"] = mod
    spec.loader.exec_module(mod)
    return mod


def _wanted(rel: Path) -> bool:
    parts = rel.parts
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in EXCLUDE_DIRS or parts[i - 1] in ("__pycache__",):
            return False
    return True


def _test_files() -> list[Path]:
    test = LIB / "test"
    out = [p for p in (test / "support").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    for name in TEST_FILES:
        p = test / name
        if p.is_dir():
            out += [q for q in p.rglob("*") if q.is_file()]
        elif p.exists():
            out.append(p)
    for name in REFEREE_TESTS:
        p = test / name
        if p.is_dir():
            out += [q for q in p.rglob("*") if q.is_file() and "__pycache__" not in q.parts]
        elif (test / f"{name}.py").exists():
            out.append(test / f"{name}.py")
    return out


def _site_files(site: Path) -> list[tuple[Path, str]]:
    """(file, path under site-packages) of an unpacked set of wheels, less test suites and
    files a sandbox never reads (byte code of another build, RECORD signatures)."""
    out = []
    for p in sorted(site.rglob("*")):
        rel = p.relative_to(site)
        if not p.is_file() or p.is_symlink() or "__pycache__" in rel.parts:
            continue
        if any(part in ("tests", "testing") for part in rel.parts[1:-1]) and p.suffix == ".py":
            continue
        out.append((p, "site-packages/" + rel.as_posix()))
    return out


def main(out_dir: str, name: str = "stdlib", site: str | None = None,
         dynload: tuple[str, ...] = (), config: str | None = None,
         usr_lib: tuple[str, ...] = ()) -> None:
    fsimage = _load_fsimage()
    if sys.implementation.cache_tag != "cpython-311":
        raise SystemExit(f"build_python_image: run with CPython 3.11, not {sys.version}")
    sources = [p for p in LIB.rglob("*") if p.is_file() and _wanted(p.relative_to(LIB))]
    sources += _test_files()
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        def add(src: Path, rel: str) -> None:
            files[f"{PREFIX}/{rel}"] = src.read_bytes()
            if src.suffix == ".py":
                pyc = Path(tmp, "x.pyc")
                try:
                    py_compile.compile(str(src), cfile=str(pyc), dfile=f"{PREFIX}/{rel}",
                                       doraise=True,
                                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
                except py_compile.PyCompileError:
                    return           # e.g. lib2to3 test data with Python 2 syntax: source only
                d, _, name = rel.rpartition("/")
                cached = f"{d + '/' if d else ''}__pycache__/{name[:-3]}.cpython-311.pyc"
                files[f"{PREFIX}/{cached}"] = pyc.read_bytes()
        for src in sources:
            add(src, src.relative_to(LIB).as_posix())
        add(RUNNER, RUNNER.name)
        add(SANDBOX, SANDBOX.name)
        if site is not None:
            for src, rel in _site_files(Path(site)):
                add(src, rel)
        for so in dynload:
            files[f"{PREFIX}/lib-dynload/{Path(so).name}"] = Path(so).read_bytes()
        for so in usr_lib:
            files[f"/usr/lib/{Path(so).name}"] = Path(so).read_bytes()
        if site is not None or dynload:
            add(DYNAMIC, "sitecustomize.py")
        if config is not None:
            files[f"{PREFIX}/_snapcell_image.json"] = Path(config).read_bytes()
        obj = ROOT / "build" / "cpython" / "obj"      # sysconfig's data of this build
        for gen in (obj / (obj / "pybuilddir.txt").read_text().strip()).glob("_sysconfigdata_*.py"):
            add(gen, gen.name)
    if not (ZONEINFO / "UTC").exists():
        raise SystemExit("build_python_image: no /usr/share/zoneinfo (apt-get install tzdata)")
    for z in sorted(ZONEINFO.rglob("*")):
        rel = z.relative_to(ZONEINFO)
        if z.is_file() and rel.parts[0] not in ("right", "posix") and not z.is_symlink():
            files[f"/usr/share/zoneinfo/{rel.as_posix()}"] = z.read_bytes()
        elif z.is_symlink() and z.resolve().is_file() and rel.parts[0] not in ("right", "posix"):
            files[f"/usr/share/zoneinfo/{rel.as_posix()}"] = z.resolve().read_bytes()
    if not CA_BUNDLE.exists():
        raise SystemExit("build_python_image: no CA bundle (run scripts/build_openssl.sh)")
    files[CA_PATH] = CA_BUNDLE.read_bytes()
    image = fsimage.build_image(files, dirs=("/tmp", f"{PREFIX}/site-packages"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.img.part").write_bytes(image)
    (out / f"{name}.img.part").replace(out / f"{name}.img")
    (out / f"{name}_image.S").write_text(
        "/* generated by scripts/build_python_image.py: the standard library image */\n"
        '    .section .rodata.sc_python_image, "a"\n'
        "    .balign 4096\n"
        "    .globl sc_python_image, sc_python_image_end\n"
        "sc_python_image:\n"
        f'    .incbin "{(out / f"{name}.img").resolve()}"\n'
        "sc_python_image_end:\n"
        '    .section .note.GNU-stack, "", @progbits\n')
    print(f"build_python_image: {len(files)} files, {len(image) / 2**20:.1f} MiB")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--name", default="stdlib")
    ap.add_argument("--site-packages", dest="site")
    ap.add_argument("--lib-dynload", dest="dynload", nargs="*", default=[])
    ap.add_argument("--image-config", dest="config")
    ap.add_argument("--usr-lib", dest="usr_lib", nargs="*", default=[])
    a = ap.parse_args()
    main(a.out_dir, a.name, a.site, tuple(a.dynload), a.config, tuple(a.usr_lib))

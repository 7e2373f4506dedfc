"""`snapcell guest build` multi-source builds: a static library of "third-party" code with a
define, linked into a guest that uses it, plus the CPU-time clocks the interpreters read."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapcell import CodeSandbox, GuestBuildError, UninitializedSandbox
from snapcell.guest.build import BuildOptions, build_guest, build_static_lib


def test_static_lib_include_and_define(tmp_path: Path) -> None:
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "lib3p.h").write_text("int lib3p_value(void);\n")
    (tmp_path / "lib3p.c").write_text("int unused_var_warning(void) { int x; return 0; }\n"
                                      "int lib3p_value(void) { return FACTOR * 2; }\n")
    (tmp_path / "glue.c").write_text(
        '#include "snapcell.h"\n#include "lib3p.h"\n'
        "static sc_value Get(const sc_value *a) { (void)a; return sc_i32(lib3p_value()); }\n"
        'void snapcell_main(void) { sc_register("Get", Get, SC_I32, 0); }\n')
    lib = build_static_lib([str(tmp_path / "lib3p.c")], str(tmp_path / "lib3p.a"),
                           options=BuildOptions(defines=("FACTOR=21",)))
    elf = build_guest([str(tmp_path / "glue.c")], str(tmp_path / "g.elf"),
                      options=BuildOptions(include_dirs=(str(tmp_path / "inc"),), libraries=(lib,)))
    with UninitializedSandbox(elf).evolve() as sb:
        assert sb.call("Get") == 42
    with pytest.raises(GuestBuildError):
        build_guest([str(tmp_path / "glue.c")], str(tmp_path / "h.elf"),
                    options=BuildOptions(libraries=(str(tmp_path / "missing.a"),)))
    with pytest.raises(GuestBuildError):
        BuildOptions(defines=("-Dbad",)).flags()


def test_cpu_time_clocks() -> None:
    with CodeSandbox("lua") as box:
        r = box.run("local a = os.clock() local x = 0 for i = 1, 3e6 do x = x + i end "
                    "return {a, os.clock()}")
        a, b = r.value
        assert 0 <= a < b

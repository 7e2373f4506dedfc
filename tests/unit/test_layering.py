"""The architecture as a test: each layer imports only from layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "snapcell"
ORDER = ["kvm", "machine", "guest", "sandbox", "snapshot", "debug", "code", "dask", "cli"]
LEAVES = {"errors", "types"}     # shared by every layer; `types` only re-exports guest.values


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "snapcell" or len(parts) == 1 or parts[1] == "__init__":
        return "root"
    head = parts[1]
    if head in ("cli", "cli_snapshot", "cli_run", "benchmark", "__main__"):
        return "cli"
    return head


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PKG.parent).with_suffix("")
    pkg = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("snapcell")}


def test_imports_only_go_down() -> None:
    bad = []
    for path in PKG.rglob("*.py"):
        mod = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
        src = layer_of(mod)
        if src in ("root",) or src in LEAVES:
            continue
        for target in imports(path):
            dst = layer_of(target)
            if dst in LEAVES or dst == src or dst == "root":
                continue
            if ORDER.index(dst) > ORDER.index(src):
                bad.append(f"{mod} imports {target}")
    assert bad == []


def test_every_public_name_has_a_docstring() -> None:
    missing = []
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        if not ast.get_docstring(tree):
            missing.append(f"{path.name}: module")
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if not ast.get_docstring(node):
                    missing.append(f"{path.name}: {node.name}")
    assert missing == []

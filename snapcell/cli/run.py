"""`snapcell run`: run a JavaScript, Lua or Python snippet in a code sandbox from the command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..code import CodeSandbox
from ..errors import SnapcellError

EXTENSIONS = {".js": "js", ".mjs": "js", ".lua": "lua", ".py": "python"}


def load_tool(spec: str) -> tuple[str, Callable[..., Any]]:
    """`module:function` or `name=module:function` → (name, callable); the module is importable
    from the current directory or is a path to a .py file (`./tools.py:lookup`); UsageError
    otherwise."""
    name, _, target = spec.partition("=") if "=" in spec.partition(":")[0] else ("", "", spec)
    module, _, attr = target.rpartition(":")
    if not module or not attr:
        raise click.UsageError(f"--tool {spec!r}: expected module:function or name=module:function "
                               "(the module importable from the current directory, or a path to "
                               "a .py file: ./tools.py:lookup)")
    from .options import _import_target
    mod = _import_target(module, "--tool", spec)
    fn = getattr(mod, attr, None)
    if fn is None:
        raise click.UsageError(f"--tool {spec!r}: {module} has no attribute {attr!r}")
    if not callable(fn):
        raise click.UsageError(f"--tool {spec!r}: {module}:{attr} is not callable")
    return (name or attr), fn


def _put(spec: str) -> tuple[str, bytes]:
    """NAME=PATH → (NAME, the file's bytes); UsageError otherwise."""
    name, sep, local = spec.partition("=")
    if not sep or not name or not local:
        raise click.UsageError(f"--put {spec!r}: expected NAME=PATH")
    try:
        return name, Path(local).read_bytes()
    except OSError as e:
        raise click.UsageError(f"--put {spec!r}: {e}") from None


def _save_files(out: Path, files: dict[str, bytes]) -> None:
    """Write a run's files under `out` (names were checked relative in the guest; checked again
    here so nothing lands outside `out`)."""
    root = out.resolve()
    for name, data in files.items():
        target = (root / name).resolve()
        if root not in target.parents:
            raise click.UsageError(f"refusing to write {name!r} outside {out}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


@click.command("run")
@click.argument("code", required=False)
@click.option("--lang", "lang", type=click.Choice(["js", "lua", "python"]),
              help="Language (default: from the -f file's extension).")
@click.option("-f", "--file", "path", type=click.Path(exists=True, dir_okay=False),
              help="Read the code from a file.")
@click.option("--tool", "tools", multiple=True, metavar="[NAME=]MODULE:FUNCTION",
              help="Expose a Python function to the code as a tool (repeatable).")
@click.option("--json", "as_json", is_flag=True,
              help="Print value, stdout, stderr and error as one JSON object.")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Time limit in seconds.")
@click.option("--memory-limit", type=int, default=64, show_default=True,
              help="Interpreter heap limit in MiB.")
@click.option("--put", "puts", multiple=True, metavar="NAME=PATH",
              help="Python: copy the local file PATH to /tmp/NAME in the sandbox (repeatable).")
@click.option("--save-files", "save_dir", type=click.Path(file_okay=False),
              help="Python: write the files the code wrote under /tmp into this directory.")
@click.option("--image", "image", metavar="LAYOUT:TAG",
              help="Python: run on this package image (`snapcell image build`).")
@click.option("--allow-net", "allow_net", multiple=True, metavar="RULE",
              help="Allow network destinations: api.example.com, *.example.org:443, "
                   "127.0.0.1:8080 (repeatable; default: no network).")
def run_command(code: str | None, lang: str | None, path: str | None, tools: tuple[str, ...],
                as_json: bool, timeout: float, memory_limit: int, puts: tuple[str, ...],
                save_dir: str | None, image: str | None, allow_net: tuple[str, ...]) -> None:
    """Run CODE (or -f FILE) in a fresh code sandbox. Exit status 0 on success, 1 when the code
    failed, 2 on a usage error."""
    if (code is None) == (path is None):
        raise click.UsageError("give the code as an argument or with -f FILE (not both)")
    source: str | bytes
    if path is not None:
        source = Path(path).read_bytes()
        lang = lang or EXTENSIONS.get(Path(path).suffix.lower())
        filename = Path(path).name
    else:
        assert code is not None
        source, filename = code, ""
    if lang is None and image is not None:
        lang = "python"
    if lang is None:
        raise click.UsageError("--lang js|lua|python is required (no known file extension)")
    if timeout <= 0:
        raise click.UsageError("--timeout must be positive")
    funcs = dict(load_tool(t) for t in tools)
    files = dict(_put(p) for p in puts) if puts else None
    try:
        network = None
        if allow_net:
            from ..code.egress import NetworkPolicy
            network = NetworkPolicy(allow=allow_net)
        with CodeSandbox(lang, tools=funcs, timeout=timeout, memory_limit=memory_limit << 20,
                         filename=filename or None, image=image, network=network) as box:
            result = box.run(source, files=files)
    except SnapcellError as e:
        raise click.UsageError(str(e)) from None
    if save_dir is not None:
        _save_files(Path(save_dir), result.files)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        if result.ok and result.value is not None:
            click.echo(json.dumps(result.to_dict()["value"]))
        if result.error is not None:
            err = result.error
            click.echo(f"{err.type}: {err.message}", err=True)
            if err.stack:
                click.echo(err.stack.rstrip("\n"), err=True)
    sys.exit(0 if result.ok else 1)

"""Options shared by the sandbox verbs of the CLI (`call`, `debug`): host functions from a
`module:attr`, sandbox configuration (layout sizes, time limit), argument parsing against a
guest function's signature, and result output (text, `--raw`, `--json`).

Every problem with what the user typed is a `click.UsageError` (exit status 2) whose message
names the option or argument and says what to write instead."""

from __future__ import annotations

import base64
import importlib
import importlib.util
import inspect
import json
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import ConfigurationError, HostFunctionError
from ..guest.functions import Signature
from ..guest.values import ValueType, check_value, parse_text
from ..sandbox import HostFunctions, SandboxConfiguration
from ..sandbox.config import LAYOUT_FIELDS

F = TypeVar("F", bound=Callable[..., Any])
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(?:i?b)?\s*$", re.I)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


# ----------------------------------------------------------------------------- host functions
def _import_target(module: str, option: str, spec: str) -> object:
    if module.endswith(".py") or "/" in module:
        path = Path(module)
        if not path.is_file():
            raise click.UsageError(f"{option} {spec!r}: no file {module!r}; give MODULE:ATTR with "
                                   "MODULE importable from the current directory or a .py file path")
        name = f"_snapcell_host_functions_{abs(hash(path.resolve()))}"
        spec_obj = importlib.util.spec_from_file_location(name, path)
        assert spec_obj is not None and spec_obj.loader is not None
        mod = importlib.util.module_from_spec(spec_obj)
        try:
            spec_obj.loader.exec_module(mod)
        except Exception as e:
            raise click.UsageError(f"{option} {spec!r}: importing {module} failed: "
                                   f"{type(e).__name__}: {e}") from None
        return mod
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")          # like `python -m`: modules next to the user resolve
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise click.UsageError(f"{option} {spec!r}: no module named {e.name!r}; give MODULE:ATTR "
                               "with MODULE importable from the current directory (or a path to "
                               "a .py file)") from None
    except Exception as e:
        raise click.UsageError(f"{option} {spec!r}: importing {module} failed: "
                               f"{type(e).__name__}: {e}") from None


def load_host_functions(spec: str | None, option: str = "--host-functions") -> HostFunctions:
    """`HostFunctions()` for None; else the `HostFunctions` object, or the result of calling the
    factory, named by `module:attr` (`path/to/file.py:attr` also works)."""
    if spec is None:
        return HostFunctions()
    module, sep, attr = spec.rpartition(":")
    if not sep or not module or not attr:
        raise click.UsageError(f"{option} {spec!r}: expected MODULE:ATTR, e.g. "
                               f"{option} myfuncs:host_functions")
    mod = _import_target(module, option, spec)
    if not hasattr(mod, attr):
        candidates = sorted(n for n, v in vars(mod).items() if not n.startswith("_") and
                            (isinstance(v, HostFunctions) or inspect.isfunction(v)))
        hint = f"; it has {', '.join(candidates)}" if candidates else ""
        raise click.UsageError(f"{option} {spec!r}: {module} has no attribute {attr!r}{hint}")
    value = getattr(mod, attr)
    if not isinstance(value, HostFunctions):
        if not callable(value):
            raise click.UsageError(f"{option} {spec!r}: {module}.{attr} is a "
                                   f"{type(value).__name__}, not a HostFunctions or a factory "
                                   "returning one")
        try:
            value = value()
        except HostFunctionError as e:
            raise click.UsageError(f"{option} {spec!r}: {e}") from None
        except Exception as e:
            raise click.UsageError(f"{option} {spec!r}: calling {module}.{attr}() failed: "
                                   f"{type(e).__name__}: {e}") from None
        if not isinstance(value, HostFunctions):
            raise click.UsageError(f"{option} {spec!r}: {module}.{attr}() returned a "
                                   f"{type(value).__name__}, not a HostFunctions")
    return value


# ----------------------------------------------------------------------------- configuration
def parse_size(text: str, option: str) -> int:
    """Bytes from `4096`, `512K`, `16M`, `1G` (also `16MiB`); UsageError naming `option`."""
    m = _SIZE.match(text)
    if m is None:
        raise click.UsageError(f"{option}: {text!r} is not a size; give bytes or a K/M/G suffix, "
                               f"e.g. {option} 16M")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def config_options(fn: F) -> F:
    """The layout and runtime options of a sandbox (`--heap-size` ... `--timeout`)."""
    for name in reversed(LAYOUT_FIELDS):
        flag = "--" + name.replace("_", "-")
        fn = click.option(flag, name, metavar="SIZE",
                          help=f"Guest {name.replace('_size', '').replace('_', ' ')} size "
                               "(bytes, or K/M/G; a multiple of 4K).")(fn)
    fn = click.option("--timeout", "timeout", type=float, metavar="SECONDS",
                      help="Time limit of the call; on expiry it is cancelled (exit status 1).")(fn)
    return fn


def build_config(options: Mapping[str, Any], debug_port: int | None = None) -> SandboxConfiguration:
    """A SandboxConfiguration from `config_options` values; UsageError naming the option."""
    values: dict[str, Any] = {}
    for name in LAYOUT_FIELDS:
        text = options.get(name)
        if text is not None:
            values[name] = parse_size(text, "--" + name.replace("_", "-"))
    timeout = options.get("timeout")
    if timeout is not None:
        if not timeout > 0:
            raise click.UsageError(f"--timeout: {timeout} is not a positive number of seconds, "
                                   "e.g. --timeout 2.5")
        values["max_execution_time"] = timeout
    if debug_port is not None:
        values["debug_port"] = debug_port
    try:
        return SandboxConfiguration(**values)
    except ConfigurationError as e:
        msg = str(e)
        field = next((f for f in (*LAYOUT_FIELDS, "debug_port") if msg.startswith(f)), None)
        flag = {"debug_port": "--port"}.get(field or "", "--" + (field or "").replace("_", "-"))
        raise click.UsageError(f"{flag}: {msg}" if field else msg) from None


# ----------------------------------------------------------------------------- arguments
def parse_call_args(name: str, sig: Signature, args: Sequence[str]) -> list[object]:
    """The values of `args` (command-line text) for `sig`; UsageError naming the argument."""
    if len(args) != len(sig.params):
        n = len(sig.params)
        msg = (f"{sig.describe(name)} takes {n} argument{'s' if n != 1 else ''}, got {len(args)}")
        dashed = [a for a in args if a.startswith("--")]
        if dashed:
            msg += f"; {dashed[0]!r} is not an option of this command (see --help)"
        elif len(args) > n and ValueType.STR in sig.params:
            msg += (f"; quote an argument that contains spaces, e.g. "
                    f"{shlex.quote(' '.join(args))}")
        elif len(args) > n:
            msg += f": {' '.join(shlex.quote(a) for a in args)}"
        raise click.UsageError(msg)
    values = []
    for i, (t, text) in enumerate(zip(sig.params, args)):
        try:
            values.append(check_value(t, parse_text(t, text)))
        except (TypeError, ValueError) as e:
            raise click.UsageError(f"{sig.describe(name)}: argument {i} ({t.value}): {e}") from None
    return values


# ----------------------------------------------------------------------------- output
def output_options(fn: F) -> F:
    """`--json` / `--raw`."""
    fn = click.option("--raw", "raw", is_flag=True,
                      help="Write the result as is: text without a newline, bytes unencoded.")(fn)
    fn = click.option("--json", "as_json", is_flag=True,
                      help='Print {"function", "type", "result"} as JSON (bytes in base64).')(fn)
    return fn


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def write_result(name: str, ret: ValueType, value: object, *, as_json: bool, raw: bool) -> None:
    """Print a call's result: JSON, raw, or as text (str as is, bytes as hex, bools as
    true/false, void as nothing) — never a Python repr."""
    if as_json and raw:
        raise click.UsageError("--json and --raw exclude each other; give one")
    if as_json:
        out: object = base64.b64encode(value).decode() if isinstance(value, bytes) else value
        click.echo(json.dumps({"function": name, "type": ret.value, "result": out}))
    elif raw:
        if isinstance(value, bytes):
            sys.stdout.flush()
            sys.stdout.buffer.write(value)
            sys.stdout.buffer.flush()
        elif value is not None:
            sys.stdout.write(_text(value))
            sys.stdout.flush()
    elif value is not None:
        click.echo(_text(value))


HOST_FUNCTIONS_HELP = ("Host functions for the guest: MODULE:ATTR naming a HostFunctions object or "
                       "a factory returning one (MODULE importable from the current directory, "
                       "or a path to a .py file). Default: HostFunctions() (HostPrint only).")

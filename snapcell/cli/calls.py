"""`snapcell call` and `snapcell debug`: initialise a guest and call one of its functions (under
gdb for `debug`)."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import click

from ..errors import GuestError
from ..guest.functions import unknown_function_message
from ..sandbox import HostFunctions, MultiUseSandbox, SandboxConfiguration, UninitializedSandbox
from .options import (
    HOST_FUNCTIONS_HELP,
    build_config,
    config_options,
    load_host_functions,
    output_options,
    parse_call_args,
    write_result,
)


def _evolve_checked(elf: str, function: str, args: tuple[str, ...], funcs: HostFunctions,
                    config: SandboxConfiguration) -> tuple[MultiUseSandbox, list[object]]:
    """Evolve ELF and parse ARGS for FUNCTION; UsageError (the sandbox closed) when they do not
    fit."""
    sb = UninitializedSandbox(elf, config=config, host_functions=funcs).evolve()
    try:
        sig = sb.functions.get(function)
        if sig is None:
            raise click.UsageError(unknown_function_message(function, sb.functions))
        return sb, parse_call_args(function, sig, args)
    except BaseException:
        sb.close()
        raise


def _call(sb: MultiUseSandbox, function: str, values: list[object]) -> object:
    """sb.call, with a hint when the guest called a host function nobody offered."""
    try:
        return sb.call(function, *values)
    except GuestError as e:
        if "is not registered" in e.message:
            raise click.ClickException(
                f"GuestError: {e.message}: the guest calls a host function this sandbox does not "
                "offer; pass --host-functions MODULE:ATTR (a HostFunctions object or a factory)"
            ) from None
        raise


@click.command("call", context_settings={"ignore_unknown_options": True})
@click.argument("elf", type=click.Path(exists=True, dir_okay=False))
@click.argument("function")
@click.argument("args", nargs=-1)
@click.option("--host-functions", "host_functions", metavar="MODULE:ATTR", help=HOST_FUNCTIONS_HELP)
@config_options
@output_options
def call(elf: str, function: str, args: tuple[str, ...], host_functions: str | None,
         as_json: bool, raw: bool, **options: Any) -> None:
    """Initialise ELF and call FUNCTION with ARGS (parsed by the function's signature: integers
    in decimal or 0x/0o/0b, bools true/false, bytes as hex). Exit status 0 on success, 1 when the
    call failed, 2 on a usage error."""
    sb, values, config = _prepare(elf, function, args, host_functions, as_json, raw, options)
    with sb:
        result = _call(sb, function, values)
        write_result(function, sb.functions[function].ret, result, as_json=as_json, raw=raw)


def _prepare(elf: str, function: str, args: tuple[str, ...], host_functions: str | None,
             as_json: bool, raw: bool, options: dict[str, Any]) -> tuple[Any, Any, Any]:
    """What `call` and `debug` share: check the output flags, load the host functions, build the
    configuration, initialise ELF and parse ARGS by FUNCTION's signature."""
    if as_json and raw:
        raise click.UsageError("--json and --raw exclude each other; give one")
    funcs = load_host_functions(host_functions)
    config = build_config(options)
    sb, values = _evolve_checked(elf, function, args, funcs, config)
    return sb, values, config


@click.command("debug", context_settings={"ignore_unknown_options": True})
@click.argument("elf", type=click.Path(exists=True, dir_okay=False))
@click.argument("function")
@click.argument("args", nargs=-1)
@click.option("--port", default=1234, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port on 127.0.0.1 for gdb (0: any free port).")
@click.option("--host-functions", "host_functions", metavar="MODULE:ATTR", help=HOST_FUNCTIONS_HELP)
@config_options
@output_options
def debug(elf: str, function: str, args: tuple[str, ...], port: int, host_functions: str | None,
          as_json: bool, raw: bool, **options: Any) -> None:
    """Call FUNCTION with ARGS in a sandbox that waits for gdb: prints the gdb command line to
    run in another terminal; the call stops at FUNCTION's entry (see docs/debugging.md), and
    its result is printed when gdb continues or detaches."""
    sb, values, config = _prepare(elf, function, args, host_functions, as_json, raw, options)
    with sb:
        snap = sb.snapshot()
    debug_config = config.replace(debug_port=port)
    with MultiUseSandbox.from_snapshot(snap, host_functions=sb.host_functions,
                                       config=debug_config) as dbg:
        gdb = f"gdb -q -ex {shlex.quote(f'target remote 127.0.0.1:{dbg.debug_port}')} {shlex.quote(elf)}"
        click.echo(f"waiting for gdb on 127.0.0.1:{dbg.debug_port}; in another terminal run:", err=True)
        click.echo(gdb)
        click.echo(f"the call stops at the entry of {function}; 'continue' runs it, 'detach' "
                   "lets it finish without the debugger", err=True)
        sys.stdout.flush()
        result = _call(dbg, function, values)
        write_result(function, dbg.functions[function].ret, result, as_json=as_json, raw=raw)

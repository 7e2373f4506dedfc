"""The argument checks of `MultiUseSandbox.from_snapshot` (kept out of multi_use.py)."""

from __future__ import annotations

from .config import SandboxConfiguration
from .deprecation import expect
from .host_functions import HostFunctions
from .snapshot import Snapshot


def check_from_snapshot_arguments(snapshot: object, host_functions: object, config: object) -> None:
    """The argument checks of `MultiUseSandbox.from_snapshot` (the usual case first: it runs on
    every sandbox creation)."""
    if isinstance(snapshot, Snapshot) and (host_functions is None or isinstance(
            host_functions, HostFunctions)) and (config is None or isinstance(
            config, SandboxConfiguration)):
        return
    expect("snapshot", snapshot, Snapshot, "take one with sb.snapshot() or load one with "
           "Snapshot.load(directory, tag)")
    if host_functions is not None:
        expect("host_functions", host_functions, HostFunctions,
               'e.g. host_functions=HostFunctions().register("Name", fn)',
               {SandboxConfiguration: "config"})
    if config is not None:
        expect("config", config, SandboxConfiguration,
               "e.g. config=SandboxConfiguration(max_execution_time=1.0)",
               {HostFunctions: "host_functions"})

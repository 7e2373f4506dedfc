"""`snapcell snapshot ...`: save, load, inspect, verify, list (with the lineage tree), flatten,
remove, garbage-collect, push and pull snapshots stored as OCI image layouts
(docs/snapshot-format.md)."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.tree import Tree

from ..errors import SnapcellError, SnapshotError
from ..guest.functions import Signature
from ..guest.values import ValueType, parse_text
from ..sandbox import HostFunctions, MultiUseSandbox, SandboxConfiguration, UninitializedSandbox
from ..snapshot import collect, oci, registry
from .options import load_host_functions

console = Console(stderr=True)
out = Console(soft_wrap=True)


@contextmanager
def _progress(label: str, total: int | None, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (on stderr) and the callback that advances it by a byte count."""
    if not enabled or not console.is_terminal:
        yield lambda n: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _fail(e: Exception) -> click.ClickException:
    return click.ClickException(f"{type(e).__name__}: {e}")


def _value(t: ValueType, text: str) -> Any:
    try:
        return parse_text(t, text)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _run_calls(sb: MultiUseSandbox, calls: tuple[str, ...]) -> None:
    for spec in calls:
        words = shlex.split(spec)
        if not words:
            raise click.BadParameter("empty --call")
        name, args = words[0], words[1:]
        sig: Signature | None = sb.functions.get(name)
        if sig is None:
            raise click.ClickException(f"the guest exports no function {name!r}")
        if len(args) != len(sig.params):
            raise click.ClickException(f"{sig.describe(name)} takes {len(sig.params)} argument(s)")
        try:
            values = [_value(t, a) for t, a in zip(sig.params, args)]
        except ValueError as e:
            raise click.BadParameter(f"{spec}: {e}") from None
        out.print(f"{name}({', '.join(args)}) = {sb.call(name, *values)!r}")


def _registry_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--insecure", is_flag=True, help="Plain HTTP (e.g. a local test registry).")(fn)
    fn = click.option("--ca-file", type=click.Path(exists=True, dir_okay=False),
                      help="PEM bundle of CAs to trust for HTTPS.")(fn)
    fn = click.option("--username", envvar="SNAPCELL_REGISTRY_USERNAME",
                      help="Registry user (env SNAPCELL_REGISTRY_USERNAME).")(fn)
    fn = click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")(fn)
    return fn


def _credentials(username: str | None, password_stdin: bool) -> dict[str, Any]:
    import os
    password = os.environ.get("SNAPCELL_REGISTRY_PASSWORD")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    if password is not None and username is None:
        raise click.ClickException("a password needs --username")
    return {"username": username, "password": password}


@click.group("snapshot")
def snapshot_group() -> None:
    """Snapshots on disk (OCI image layouts) and in OCI registries."""


@snapshot_group.command("save")
@click.argument("elf", type=click.Path(exists=True, dir_okay=False))
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--tag", default="latest", show_default=True, help="Tag to save under.")
@click.option("--call", "calls", multiple=True, metavar="'NAME ARG...'",
              help="Call a guest function before the snapshot (repeatable).")
@click.option("--input-size", type=int, help="Input buffer bytes.")
@click.option("--output-size", type=int, help="Output buffer bytes.")
@click.option("--heap-size", type=int, help="Heap arena bytes.")
@click.option("--stack-size", type=int, help="Stack bytes.")
@click.option("--cpu-baseline", default="portable", show_default=True, metavar="LEVEL|host|FILE",
              help="The CPU the guest may rely on: x86-64-v2, x86-64-v3, x86-64-v4, portable "
                   "(x86-64-v3), host, or a JSON file (docs/snapshot-format.md).")
def save_cmd(elf: str, directory: str, tag: str, calls: tuple[str, ...], input_size: int | None,
             output_size: int | None, heap_size: int | None, stack_size: int | None,
             cpu_baseline: str) -> None:
    """Initialise ELF, make CALLS, and save a snapshot into DIRECTORY under TAG."""
    options: dict[str, Any] = {
        k: v for k, v in (("input_size", input_size), ("output_size", output_size),
                          ("heap_size", heap_size), ("stack_size", stack_size)) if v is not None}
    try:
        config = SandboxConfiguration(**options, cpu_baseline=cpu_baseline)
        with UninitializedSandbox(elf, config=config, host_functions=HostFunctions()).evolve() as sb:
            _run_calls(sb, calls)
            snap = sb.snapshot()
            with _progress("save", snap.image.size) as advance:
                digest = oci.save(snap, directory, tag, progress=advance)
    except SnapcellError as e:
        raise _fail(e) from None
    out.print(f"{directory}:{tag} {digest}")


@snapshot_group.command("load")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("ref", default="latest")
@click.option("--checked", is_flag=True, help="Also verify the memory layers' sha256.")
@click.option("--map", "map_mode", is_flag=True,
              help="Zero-copy map mode: the layer files are mapped copy-on-write (they must stay "
                   "unchanged while in use).")
@click.option("--call", "calls", multiple=True, metavar="'NAME ARG...'",
              help="Call a guest function in a sandbox made from the snapshot (repeatable).")
@click.option("--save", "save_tag", metavar="TAG",
              help="After the calls, save the sandbox into DIRECTORY under TAG (a diff on REF).")
@click.option("--host-functions", "host_functions", default=None, metavar="MODULE:ATTR",
              help="The host functions the snapshot needs: a HostFunctions object or a factory "
                   "(module or path/to/file.py, then :attr). Default: HostPrint only.")
def load_cmd(directory: str, ref: str, checked: bool, map_mode: bool,
             calls: tuple[str, ...], save_tag: str | None, host_functions: str | None) -> None:
    """Load REF (tag or sha256: digest), create a sandbox from it and make CALLS. The snapshot's
    host functions must be given with --host-functions (HostPrint is always there)."""
    try:
        funcs = load_host_functions(host_functions)
        snap = oci.load(directory, ref, checked, mode="map" if map_mode else "copy")
        with MultiUseSandbox.from_snapshot(snap, host_functions=funcs) as sb:
            out.print(f"loaded {snap.digest}: {len(sb.functions)} guest functions, "
                      f"generation {snap.generation}")
            _run_calls(sb, calls)
            if save_tag is not None:
                digest = oci.save(sb.snapshot(), directory, save_tag)
                depth = oci.inspect(directory, save_tag)["depth"]
                out.print(f"{directory}:{save_tag} {digest} ({depth} layer(s))")
    except SnapcellError as e:
        raise _fail(e) from None


@snapshot_group.command("inspect")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("ref", default="latest")
def inspect_cmd(directory: str, ref: str) -> None:
    """Print REF's validated config summary as JSON (works without KVM)."""
    try:
        d = oci.inspect(directory, ref)
    except SnapshotError as e:
        raise _fail(e) from None
    sys.stdout.write(json.dumps(d, indent=2) + "\n")


@snapshot_group.command("verify")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("refs", nargs=-1)
@click.option("--full", is_flag=True,
              help="Re-hash every layer, even those the verified-content record vouches for.")
def verify_cmd(directory: str, refs: tuple[str, ...], full: bool) -> None:
    """Verify REFS (default: every snapshot in DIRECTORY) completely, blob digests included
    (layers verified before and unchanged since are trusted unless --full). Exits with status 1
    if any fails."""
    try:
        targets = list(refs) or [t or d for t, d in oci.entries(directory)]
    except SnapshotError as e:
        raise _fail(e) from None
    bad = 0
    for ref in targets:
        try:
            with _progress(f"verify {ref}", None) as advance:
                entry = oci.verify(directory, ref, advance, full=full)
            out.print(f"[green]ok[/green]   {ref} {entry.digest}")
        except SnapshotError as err:
            bad += 1
            out.print(f"[red]FAIL[/red] {ref}: {type(err).__name__}: {err}")
    if bad:
        sys.exit(1)


@snapshot_group.command("ls")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.option("--tree", is_flag=True, help="Show the lineage: each snapshot under its parent.")
def ls_cmd(directory: str, as_json: bool, tree: bool) -> None:
    """List the snapshots in DIRECTORY."""
    try:
        rows = []
        for tag, digest in oci.entries(directory):
            try:
                d = oci.inspect(directory, digest)
                rows.append({"tag": tag, "digest": digest, "generation": d["generation"],
                             "memory_size": d["memory_size"], "disk_bytes": d["memory_disk_bytes"],
                             "functions": len(d["functions"]), "parent": d.get("parent"),
                             "depth": d["depth"], "new_layer_bytes": d["layers"][-1]["size"],
                             "error": None})
            except SnapshotError as e:
                rows.append({"tag": tag, "digest": digest, "error": f"{type(e).__name__}: {e}"})
    except SnapshotError as e:
        raise _fail(e) from None
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if tree:
        out.print(lineage_tree(directory, rows))
        return
    table = Table()
    for col in ("tag", "digest", "generation", "layers", "memory", "on disk", "functions"):
        table.add_column(col)
    for r in rows:
        if r["error"]:
            table.add_row(str(r["tag"]), r["digest"][:19], "[red]" + r["error"] + "[/red]", "", "",
                          "", "")
        else:
            table.add_row(str(r["tag"]), r["digest"][:19], str(r["generation"]), str(r["depth"]),
                          f"{r['memory_size'] / 2**20:.1f} MiB", f"{r['disk_bytes'] / 2**20:.1f} MiB",
                          str(r["functions"]))
    out.print(table)


def lineage_tree(directory: str, rows: list[dict[str, Any]]) -> Tree:
    """The snapshots of a layout as a tree: each under its parent (roots: no parent, or a
    parent not in the layout). Parent links are followed among distinct manifests only, so a
    crafted layout cannot make this loop."""
    by_digest: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_digest.setdefault(r["digest"], []).append(r)
    children: dict[str | None, list[str]] = {}
    for digest, rs in by_digest.items():
        parent = rs[0].get("parent")
        children.setdefault(parent if parent in by_digest and parent != digest else None,
                            []).append(digest)
    root = Tree(f"[bold]{directory}[/bold]")
    seen: set[str] = set()

    def label(digest: str) -> str:
        rs = by_digest[digest]
        tags = ", ".join(str(r["tag"]) for r in rs if r["tag"] is not None) or "(untagged)"
        r = rs[0]
        if r["error"]:
            return f"{tags} {digest[:19]} [red]{r['error']}[/red]"
        return (f"{tags} {digest[:19]} gen {r['generation']}, {r['depth']} layer(s), "
                f"new layer {r['new_layer_bytes'] / 2**20:.2f} MiB")

    def add(node: Tree, digest: str) -> None:
        if digest in seen:
            return
        seen.add(digest)
        branch = node.add(label(digest))
        for child in children.get(digest, []):
            add(branch, child)

    for digest in children.get(None, []):
        add(root, digest)
    for digest in by_digest:                  # anything left is on a parent cycle
        if digest not in seen:
            add(root, digest)
    return root


@snapshot_group.command("flatten")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("ref")
@click.option("--tag", help="Tag for the flattened snapshot (default: REF's tag).")
def flatten_cmd(directory: str, ref: str, tag: str | None) -> None:
    """Rewrite REF as a single base layer (verified); old layers stay until `gc`."""
    try:
        digest = oci.flatten(directory, ref, tag)
    except SnapshotError as e:
        raise _fail(e) from None
    out.print(f"{directory}:{tag or ref} {digest}")


@snapshot_group.command("rm")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("refs", nargs=-1, required=True)
@click.option("--gc", "run_gc", is_flag=True, help="Collect unreferenced blobs afterwards.")
def rm_cmd(directory: str, refs: tuple[str, ...], run_gc: bool) -> None:
    """Remove the tags (or digests) REFS from DIRECTORY's index."""
    try:
        done = collect.rm(directory, list(refs), collect=run_gc)
    except SnapshotError as e:
        raise _fail(e) from None
    out.print(f"removed {len(refs)} reference(s)" + (
        f"; {done.removed} blob(s), {done.freed_bytes / 2**20:.1f} MiB freed" if done else ""))


@snapshot_group.command("gc")
@click.argument("directory", type=click.Path(file_okay=False))
def gc_cmd(directory: str) -> None:
    """Delete the blobs of DIRECTORY that no listed manifest references."""
    try:
        done = collect.gc(directory)
    except SnapshotError as e:
        raise _fail(e) from None
    out.print(f"kept {done.kept} blob(s); removed {done.removed}, "
              f"{done.freed_bytes / 2**20:.1f} MiB freed")


@snapshot_group.command("push")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("target")
@click.option("--ref", help="Local tag or digest to push (default: TARGET's tag).")
@click.option("--mount-from", help="Repository of the same registry to mount shared blobs from.")
@_registry_options
def push_cmd(directory: str, target: str, ref: str | None, mount_from: str | None, insecure: bool,
             ca_file: str | None, username: str | None, password_stdin: bool) -> None:
    """Push a snapshot from DIRECTORY to TARGET (host[:port]/repository:tag)."""
    creds = _credentials(username, password_stdin)
    try:
        info = oci.inspect(directory, ref or registry.parse_reference(target).tag or "latest")
        total = sum(x["size"] for x in info["layers"])
        with _progress("push", total) as advance:
            digest = registry.push(directory, target, ref=ref, insecure=insecure,
                                   ca_file=ca_file, mount_from=mount_from, progress=advance,
                                   **creds)
    except SnapshotError as e:
        raise _fail(e) from None
    out.print(f"{target} {digest}")


@snapshot_group.command("pull")
@click.argument("source")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--tag", help="Local tag (default: SOURCE's tag).")
@_registry_options
def pull_cmd(source: str, directory: str, tag: str | None, insecure: bool, ca_file: str | None,
             username: str | None, password_stdin: bool) -> None:
    """Pull SOURCE (host[:port]/repository[:tag][@sha256:...]) into DIRECTORY, verified."""
    creds = _credentials(username, password_stdin)
    try:
        with _progress("pull", None) as advance:
            digest = registry.pull(source, directory, tag=tag, insecure=insecure,
                                        ca_file=ca_file, progress=advance, **creds)
    except SnapshotError as e:
        raise _fail(e) from None
    out.print(f"{source} {digest}")

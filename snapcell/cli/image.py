"""`snapcell image`: package images for Python code sandboxes (docs/cli.md, docs/code-sandboxes.md
"Packages and images")."""

from __future__ import annotations

import time

import click
from rich.console import Console

from ..errors import SnapcellError


@click.group("image")
def image_group() -> None:
    """Package images: PyPI's musllinux wheels in a warm, sealed Python snapshot."""


@image_group.command("build")
@click.argument("language", type=click.Choice(["python"]))
@click.option("-r", "--requirements", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A pip requirements file (versions or a lock file with --hash pins).")
@click.option("--preload", default="", metavar="MOD[,MOD...]",
              help="Modules imported during warm-up (runs then import them at no cost).")
@click.option("-o", "--output", "ref", required=True, metavar="LAYOUT:TAG",
              help="The OCI layout directory and tag to save the image under.")
def build_cmd(language: str, requirements: str, preload: str, ref: str) -> None:
    """Build a package image: resolve and download the requirements' musllinux_1_2_x86_64
    wheels with pip, pin them in LAYOUT/TAG.lock, warm the dynamic Python guest on them with
    the --preload modules imported, seal it W^X and save it as LAYOUT:TAG."""
    from ..code.images import build_image
    mods = tuple(m.strip() for m in preload.split(",") if m.strip())
    start = time.perf_counter()
    try:
        built = build_image(requirements, ref, preload=mods)
    except SnapcellError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"built {built.ref} {built.digest}: {len(built.wheels)} wheel(s), "
               f"{built.image_bytes / 2**20:.0f} MiB of files, lock {built.lock}, "
               f"{time.perf_counter() - start:.0f} s")


DEMO_CODE = """\
import numpy as np, pandas as pd, matplotlib.pyplot as plt
rng = np.random.default_rng(7)
df = pd.DataFrame({"region": rng.choice(["north", "south", "east", "west"], 1000),
                   "sales": rng.gamma(2.0, 50.0, 1000).round(2)})
summary = df.groupby("region").sales.agg(["count", "mean", "sum"]).round(1)
print(summary.to_string())
fig, ax = plt.subplots(figsize=(5, 3))
summary["sum"].plot.bar(ax=ax, title="sales by region")
fig.tight_layout()
fig.savefig("sales.png", dpi=80)
plt.close(fig)
int(summary["count"].sum())
"""


def data_demo(console: Console, ref: str, out_dir: str) -> None:
    """`make demo`'s data part: a pandas summary and a matplotlib chart (written to
    OUT_DIR/sales.png) from a Python sandbox on the package image `ref`, and a JS run."""
    from pathlib import Path

    from ..code import CodeSandbox
    with CodeSandbox("python", image=ref, timeout=30.0) as box:
        first = time.perf_counter()
        box.run(DEMO_CODE)                    # the first run also faults the image's pages in
        start = time.perf_counter()
        r = box.run(DEMO_CODE)
        ms, first_ms = ((time.perf_counter() - t) * 1000 for t in (start, first))
    if r.error is not None:
        raise click.ClickException(f"the data demo failed: {r.error}")
    console.print(f"[bold]python on {ref}[/bold]: a pandas summary of {r.value} rows and a chart "
                  f"(restore + run {ms:.1f} ms; the first run {first_ms - ms:.0f} ms)")
    console.print(r.stdout.rstrip("\n"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sales.png").write_bytes(r.files["sales.png"])
    console.print(f"chart written to {out / 'sales.png'} ({len(r.files['sales.png'])} bytes PNG)")
    with CodeSandbox("js") as box:
        r = box.run("[1, 2, 3].map(x => x * x).reduce((a, b) => a + b)")
    console.print(f"[bold]js[/bold]: [1, 2, 3] squared and summed = {r.value}")

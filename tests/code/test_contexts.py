"""Code contexts in the library (`snapcell.code.contexts`): state across runs, checkpoints in a
store that other `ContextStore`s (other processes) resume, one diff layer per context."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapcell.code.contexts import ContextLimitExceeded, ContextLimits, ContextNotFound, ContextStore
from snapcell.snapshot import inspect


def test_state_survives_pause_and_other_stores(tmp_path: Path) -> None:
    store = ContextStore(tmp_path)
    ctx = store.create("python", "alice")
    assert ctx.run("x = 41").ok and ctx.run("x + 1").value == 42
    for i in range(12):          # many checkpoints and resumes: still one layer on the base
        ctx.run(f"x += 1\nl{i} = list(range(100))")
        ctx.pause()
        ctx = ContextStore(tmp_path).open(ctx.id, "alice")
    assert ctx.run("x").value == 53 and ctx.run("len(l11)").value == 100
    ctx.pause()
    info = inspect(str(store.root / ctx.rec.layout), f"{ctx.id}.v{ctx.rec.version}")
    assert info["depth"] == 2
    assert 0 < ctx.rec.bytes == info["layers"][-1]["size"] < 8 << 20
    with pytest.raises(ContextNotFound):
        store.open(ctx.id, "bob")


def test_a_live_context_picks_up_a_newer_checkpoint(tmp_path: Path) -> None:
    a = ContextStore(tmp_path).create("python", "t")
    a.run("v = 1")
    a.checkpoint()
    b = ContextStore(tmp_path).open(a.id, "t")
    b.run("v = 2")
    b.checkpoint()
    assert a.run("v").value == 2          # a's VM is replaced by b's checkpoint
    a.close()
    b.close()


def test_fork_reset_timeout_and_files(tmp_path: Path) -> None:
    store = ContextStore(tmp_path)
    ctx = store.create("python", "t", timeout=1.0)
    ctx.run("import math\nk = 3")
    ctx.checkpoint()
    ctx.run("k = 4")
    r = ctx.run("while True: pass", timeout=0.2)
    assert r.error is not None and r.error.type == "TimeoutError"
    assert ctx.run("k").value == 3                    # back to the last checkpoint
    child = ctx.fork()
    child.run("k = 9")
    assert ctx.run("k").value == 3 and child.run("k").value == 9
    ctx.write_file("d/f.bin", b"\0\1")
    assert ctx.read_file("d/f.bin") == b"\0\1"
    with pytest.raises(FileNotFoundError):
        ctx.read_file("missing")
    ctx.reset()
    assert ctx.run("k").error is not None
    js = store.create("js", "t")
    js.run("globalThis.a = 1")
    assert js.run("a + 1").value == 2
    with pytest.raises(Exception, match="no file system"):
        js.write_file("x", b"")
    for c in (ctx, child, js):
        c.close()


def test_limits_per_tenant(tmp_path: Path) -> None:
    store = ContextStore(tmp_path, ContextLimits(max_contexts=2, max_bytes=1))
    a = store.create("lua", "t")
    store.create("lua", "t")
    with pytest.raises(ContextLimitExceeded):
        store.create("lua", "t")
    store.create("lua", "other")
    a.run("x = {} for i = 1, 1000 do x[i] = i end")
    with pytest.raises(ContextLimitExceeded):
        a.checkpoint()                     # over the bytes budget: refused, state kept live
    assert a.run("return #x").value == 1000
    store.delete(a.id, "t")
    with pytest.raises(ContextNotFound):
        store.open(a.id, "t")
    a.close()


def test_rich_output(tmp_path: Path) -> None:
    ctx = ContextStore(tmp_path).create("python", "t")
    r = ctx.run("class T:\n  def _repr_json_(self): return {'n': 1}\n"
                "  def _repr_markdown_(self): return '# t'\ndisplay(1, 'a')\nT()")
    assert r.value is None and r.files == {}
    assert r.display == [{"text/plain": "1"}, {"text/plain": "a"},
                         {"text/markdown": "# t", "application/json": {"n": 1},
                          "text/plain": r.display[2]["text/plain"]}]
    assert ctx.run("2").display == []
    r = ctx.run("display(T())\nraise ValueError('x')")
    assert r.error is not None and r.display == []
    ctx.close()


def test_store_keeps_one_checkpoint_per_context(tmp_path: Path) -> None:
    from snapcell.snapshot.oci import entries
    store = ContextStore(tmp_path)
    ctx = store.create("lua", "t")
    for i in range(3):
        ctx.run(f"v = {i}")
        ctx.checkpoint()
    store.collect()
    shard = str(store.root / ctx.rec.layout)
    tags = sorted(t for t, _ in entries(shard) if t and t.startswith("ctx_"))
    assert tags == [f"{ctx.id}.v3"]
    assert ContextStore(tmp_path).open(ctx.id, "t").run("return v").value == 2
    store.delete(ctx.id, "t")
    store.collect()
    assert not [t for t, _ in entries(shard) if t and t.startswith("ctx_")]
    ctx.close()


def test_a_context_deleted_elsewhere_is_not_brought_back(tmp_path: Path) -> None:
    ctx = ContextStore(tmp_path).create("lua", "t")
    ctx.run("v = 1")
    ContextStore(tmp_path).delete(ctx.id, "t")
    with pytest.raises(ContextNotFound):
        ctx.checkpoint()
    with pytest.raises(ContextNotFound):
        ContextStore(tmp_path).open(ctx.id, "t")
    ctx.close()
    assert list((tmp_path / "locks").iterdir()) == []      # its lock file went with it


def test_a_resumed_context_forks_times_out_and_checkpoints(tmp_path: Path) -> None:
    ctx = ContextStore(tmp_path).create("python", "t")
    ctx.run("k = [1, 2, 3]\nbig = bytes(300_000)")
    ctx.pause()
    other = ContextStore(tmp_path)        # another process: resumes by reading the pages
    child = other.open(ctx.id, "t").fork()        # (no run since the resume)
    assert child.run("k + [len(big)]").value == [1, 2, 3, 300_000]
    again = other.open(ctx.id, "t")
    again.run("k.append(4)")
    r = again.run("while True: pass", timeout=0.2)
    assert r.error is not None and r.error.type == "TimeoutError"
    assert again.run("k").value == [1, 2, 3]      # the checkpoint, not a fresh interpreter
    again.run("k.append(5)")
    again.pause()
    assert ContextStore(tmp_path).open(ctx.id, "t").run("k").value == [1, 2, 3, 5]
    child.close()


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    from snapcell.errors import SnapcellError
    from snapcell.snapshot.files import Reader
    from snapcell.snapshot.validate import resolve
    store = ContextStore(tmp_path)
    ctx = store.create("lua", "t")
    ctx.run("v = 7")
    ctx.pause()
    with Reader(str(store.root / ctx.rec.layout)) as r:
        layer = r.entry(resolve(r.entries, str(ctx.rec.digest))).manifest.layers[-1]
    blob = store.root / ctx.rec.layout / "blobs" / "sha256" / layer.digest.split(":")[1]
    blob.chmod(0o600)
    blob.write_bytes(blob.read_bytes()[: layer.size // 2])
    with pytest.raises(SnapcellError):
        ContextStore(tmp_path).open(ctx.id, "t").run("return v")


def test_load_pages_refuses_extents_outside_the_guest(tmp_path: Path) -> None:
    from snapcell.code.streaming import StreamingCodeSandbox
    f = tmp_path / "pages"
    f.write_bytes(bytes(8192))
    with StreamingCodeSandbox("lua") as box, open(f, "rb") as fh:
        for bad in [(1, 4096), (0, 100), (1 << 40, 4096), (-4096, 4096)]:
            with pytest.raises(ValueError):
                box._sb.load_pages(fh.fileno(), [bad])
        with pytest.raises(OSError):          # the file ends before the extents do
            box._sb.load_pages(fh.fileno(), [(0, 4096 * 3)])
        assert box.run("return 1 + 1").value == 2     # refused: nothing was written


def test_one_holder_at_a_time_and_the_checkpoint_hands_over(tmp_path: Path) -> None:
    from snapcell.code.contexts import ContextBusy
    a = ContextStore(tmp_path).create("lua", "t")
    a.run("v = 1")                         # runs not checkpointed: a holds the context
    b = ContextStore(tmp_path).open(a.id, "t")
    b.lock_wait = 0.05
    with pytest.raises(ContextBusy):
        b.run("return v")
    assert not b.held and a.held
    a.checkpoint()                         # hands over
    assert not a.held
    assert b.run("v = v + 1; return v").value == 2 and b.held
    with pytest.raises(ContextBusy):
        a.hold(wait=0.05)
    b.close()                              # lets go (its run since the checkpoint is lost)
    assert a.run("return v").value == 1
    a.close()


def test_a_context_on_a_package_image(tmp_path: Path) -> None:
    """A Python context on the data image (`make data-image`): its state (numpy arrays) is
    checkpointed as one layer on the image, saved once into the store, and resumed by
    another store; forks stay on the image; bad requests change nothing."""
    from snapcell.errors import ArgumentError, ConfigurationError
    layout = Path(__file__).resolve().parents[2] / "build" / "images" / "data"
    assert (layout / "index.json").is_file(), "the data image is not built: run `make data-image`"
    store = ContextStore(tmp_path)
    ctx = store.create("python", "t", image=f"{layout}:latest", image_name="data", timeout=60)
    assert ctx.describe()["image"] == "data"
    assert ctx.run("import numpy as np\na = np.arange(10) * 3\nint(a.sum())").value == 135
    ctx.pause()
    assert ctx.rec.layout.startswith("images/") and 0 < ctx.rec.bytes < 64 << 20
    other = ContextStore(tmp_path).open(ctx.id, "t", timeout=60)
    assert other.run("int(a[-1])").value == 27
    child = other.fork()
    assert child.rec.image == ctx.rec.image and child.run("a.tolist()[:2]").value == [0, 3]
    for c in (other, child):
        c.close()
    with pytest.raises(ArgumentError, match="Python"):
        store.create("lua", "t", image=f"{layout}:latest")
    with pytest.raises(ConfigurationError, match="snapcell image build"):
        store.create("python", "t", image=str(tmp_path / "none:latest"))
    assert [r.id for r in store.of_tenant("t")] == [ctx.id, child.id]

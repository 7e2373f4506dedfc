"""Pure logic of rich output and contexts: display bundles from untrusted runner files, result
JSON on the wire, context ids and records (hypothesis)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapcell.code.contexts import ContextLimitExceeded, ContextLimits, ContextNotFound, ContextStore
from snapcell.code.result import DISPLAY_FILE, MIME_TYPES, RunResult, parse_display
from snapcell.serving.code import CodeResult

anything = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                        lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12)


@given(st.binary())
def test_any_bytes_give_valid_bundles(raw: bytes) -> None:
    for bundle in parse_display(raw):
        assert bundle and set(bundle) <= MIME_TYPES


@given(anything)
def test_any_json_gives_valid_bundles(doc: Any) -> None:
    for bundle in parse_display(json.dumps(doc).encode()):
        assert bundle and set(bundle) <= MIME_TYPES
        for mime, data in bundle.items():
            if mime in ("image/png", "image/jpeg"):
                base64.b64decode(data, validate=True)
            elif mime != "application/json":
                assert isinstance(data, str)


def test_bundles_keep_good_entries_and_drop_bad_ones() -> None:
    raw = json.dumps([{"text/plain": "x", "image/png": "not base64!", "application/x": "y",
                       "application/json": {"a": [1]}}, "junk", {"text/html": 5}] * 20).encode()
    got = parse_display(raw)
    assert got[0] == {"text/plain": "x", "application/json": {"a": [1]}}
    assert len(got) == 16


def test_display_file_leaves_the_files() -> None:
    r = RunResult(files={DISPLAY_FILE: json.dumps([{"text/plain": "p"}]).encode(), "a": b"1"})
    assert r.files == {"a": b"1"} and r.display == [{"text/plain": "p"}]
    wire = CodeResult.of(RunResult(value=b"\0", files={"t": b"ok", "b": b"\xff"},
                                   duration=0.0015)).to_json()
    assert wire["value"] == {"base64": "AA=="} and wire["duration_ms"] == 1.5
    assert wire["files"] == {"t": "ok", "b": {"base64": "/w=="}}


@given(st.text(max_size=80))
def test_context_ids_never_escape_the_store(cid: str) -> None:
    store = ContextStore.__new__(ContextStore)
    store.records = Path("/nonexistent-snapcell-store/contexts")
    with pytest.raises(ContextNotFound):
        store.record(cid, "t")


def test_records_belong_to_their_tenant_and_limits_hold(tmp_path: Path) -> None:
    store = ContextStore(tmp_path, ContextLimits(max_contexts=1, max_bytes=10))
    from snapcell.code.contexts import ContextRecord
    rec = ContextRecord(id="ctx_" + "0" * 24, tenant="alice", lang="python", created=1.0,
                        used=1.0, bytes=4)
    store._write(rec)
    assert store.record(rec.id, "alice") == rec
    with pytest.raises(ContextNotFound):
        store.record(rec.id, "bob")
    assert store.usage("alice") == (1, 4) and store.usage("bob") == (0, 0)
    with pytest.raises(ContextLimitExceeded):
        store._check_room("alice")
    store._check_room("bob")
    (store._dir("alice") / f"{'ctx_' + '1' * 24}.json").write_text("{not json")
    assert [r.id for r in store.of_tenant("alice")] == [rec.id]
    assert store.expire(now=2.0) == []
    assert store.expire(now=1.0 + 8 * 24 * 3600) == [rec.id]     # (no layout yet: record only)
    assert store.of_tenant("alice") == []

"""A compromised interpreter guest behind a real `snapcell serve` (issue 28 item 4): the
service's JavaScript guest is the adversary (SNAPCELL_CODE_GUESTS), and `/v1/run` answers every
crafted response — a MessagePack Timestamp, a 900-deep value, an error line of +inf, 3.9 MB of
output — with the run's InternalError, never a 500."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgpack
import pytest

from tests.conftest import ROOT
from tests.test_serve import _start_server, stop_server

from .fuzz_code import bin32_output, deep, response

KEY = "carol-key-0123456789abcdef"


@pytest.fixture(scope="module")
def url(adversary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("hostile-serve")
    guests = tmp / "guests"
    guests.mkdir()
    (guests / "js.elf").symlink_to(Path(adversary).resolve())
    (tmp / "keys").write_text(f"carol {KEY}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), SNAPCELL_CODE_GUESTS=str(guests))
    proc, base = _start_server(["--api-key-file", str(tmp / "keys"),
                                "--cache-dir", str(tmp / "cache")], env)
    yield base
    stop_server(proc)


CASES = {
    "timestamp": response(value=msgpack.Timestamp(1, 2)),
    "900 deep": b"\x96\x00" + deep(900) + b"\xc4\x00\xc4\x00\xc2\xc0",
    "inf line": response(1, None, b"", b"", False, ["E", b"m", b"s", float("inf")]),
    "3.9 MB of stdout": bin32_output(3_900_000, files=False),
    "ext": response(value=msgpack.ExtType(3, b"abc")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_v1_run_answers_a_compromised_guest_with_its_error(url: str, case: str) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=30) as c:
        r = c.post("/v1/run", json={"lang": "js", "code": "hex:" + CASES[case].hex()})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["error"]["type"] == "InternalError" and body["value"] is None, body
        assert "invalid result" in body["error"]["message"]
        r = c.post("/v1/run", json={"lang": "js", "code": "hex:" + response(value=[1, "a"]).hex()})
        assert r.status_code == 200 and r.json()["value"] == [1, "a"], r.text

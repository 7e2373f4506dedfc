"""snapcell's MCP server driven by the official SDK's own client: `snapcell mcp` over stdio (a
real subprocess) and `/mcp` of a real `snapcell serve` over streamable HTTP, behind its keys."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from .conftest import ROOT
from .test_contexts_serve import ALICE, BOB, Replica

TOOLS = {"run_code", "create_context", "reset_context", "upload_file", "download_file",
         "list_languages"}


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    r = await client.call_tool(tool, args)
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return dict(r.structured_content)


async def failure(client: Client, tool: str, **args: Any) -> str:
    r = await client.call_tool(tool, args)
    assert r.is_error, r
    return str(r.content[0].text)  # type: ignore[union-attr]


async def conversation(client: Client) -> None:
    """What an agent does: discover the tools, run code, keep state in a context, move files."""
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert TOOLS <= set(tools)
    for t in tools.values():
        assert t.description and len(t.description) > 60, t.name
    assert "context_id" in tools["run_code"].input_schema["properties"]
    langs = {x["name"] for x in (await call(client, "list_languages"))["languages"]}
    assert {"python", "js", "lua"} <= langs
    r = await call(client, "run_code", language="python", code="print('hi')\n6 * 7")
    assert r["value"] == 42 and r["stdout"] == "hi\n" and r["error"] is None
    r = await call(client, "run_code", language="js", code="[1, 2].map(x => x * 2)")
    assert r["value"] == [2, 4]
    ctx = await call(client, "create_context", language="python")
    cid = ctx["id"]
    await call(client, "run_code", language="python", code="import math\nr = 2", context_id=cid)
    r = await call(client, "run_code", language="python", code="round(math.pi * r ** 2, 2)",
                   context_id=cid)
    assert r["value"] == 12.57
    await call(client, "upload_file", context_id=cid, path="in/data.csv", content="a,b\n1,2\n")
    await call(client, "upload_file", context_id=cid, path="blob.bin",
               content=base64.b64encode(b"\xff\x00").decode(), encoding="base64")
    r = await call(client, "run_code", language="python", context_id=cid, code=(
        "import csv\nrows = list(csv.DictReader(open('in/data.csv')))\n"
        "open('out.txt', 'w').write(str(len(rows)))\nrows[0]['b']"))
    assert r["value"] == "2" and r["files"] == {"out.txt": "1"}
    got = await call(client, "download_file", context_id=cid, path="out.txt")
    assert got == {"path": "out.txt", "encoding": "text", "content": "1"}
    got = await call(client, "download_file", context_id=cid, path="blob.bin")
    assert got["encoding"] == "base64" and base64.b64decode(got["content"]) == b"\xff\x00"
    r = await call(client, "run_code", language="python", context_id=cid,
                   code="class P:\n  def _repr_html_(self): return '<i>p</i>'\nP()")
    assert r["display"][0]["text/html"] == "<i>p</i>"
    await call(client, "reset_context", context_id=cid)
    r = await call(client, "run_code", language="python", code="r", context_id=cid)
    assert r["error"]["type"] == "NameError"
    # failures the model can act on
    assert "create_context" in await failure(client, "run_code", language="python", code="1",
                                             context_id="ctx_" + "0" * 24)
    assert "unknown language" in await failure(client, "run_code", language="cobol", code="1")
    assert "not js" in await failure(client, "run_code", language="js", code="1", context_id=cid)
    assert "no file" in await failure(client, "download_file", context_id=cid, path="none")
    assert "file name" in await failure(client, "upload_file", context_id=cid, path="../x",
                                        content="")
    assert "unknown image" in await failure(client, "create_context", language="python",
                                            image="/etc")
    r = await call(client, "run_code", language="python", code="while True: pass", timeout=0.3)
    assert isinstance(r["error"], dict) and r["error"]["type"] == "TimeoutError", r


def test_stdio(kvm_ok: None, tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "snapcell", "mcp", "--context-store",
                                      str(tmp_path / "store")],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT))

    async def main() -> None:
        async with Client(params, read_timeout_seconds=120) as client:
            await conversation(client)
    asyncio.run(main())


@pytest.fixture
def replica(kvm_ok: None, tmp_path: Path) -> Iterator[Replica]:
    keys = tmp_path / "keys"
    keys.write_text(f"alice {ALICE}\nbob {BOB}\n")
    rep = Replica(tmp_path / "store", keys)
    yield rep
    rep.stop()


def _http(rep: Replica, key: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=120)
    return Client(streamable_http_client(rep.url + "/mcp", http_client=http))


def test_streamable_http_behind_api_keys(replica: Replica) -> None:
    async def main() -> None:
        async with _http(replica, ALICE) as alice:
            await conversation(alice)
            cid = (await call(alice, "create_context", language="python"))["id"]
            await call(alice, "run_code", language="python", code="s = 1", context_id=cid)
        async with _http(replica, BOB) as bob:           # another tenant: not found
            assert "no context" in await failure(bob, "run_code", language="python", code="s",
                                                 context_id=cid)
        with replica.client(ALICE) as c:                 # the same context over plain HTTP
            assert c.post(f"/v1/contexts/{cid}/run", json={"code": "s"}).json()["value"] == 1
    asyncio.run(main())
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789abcdef"}):
        r = httpx.post(replica.url + "/mcp", headers={**headers, "Accept": "application/json"},
                       json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"

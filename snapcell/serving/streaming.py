"""Server-sent events for runs (`Accept: text/event-stream` on `/v1/run` and
`/v1/contexts/{id}/run`): `stdout` and `stderr` events with `{"text": ...}` while the code
runs, then one `result` event (the JSON body a plain request gets) or one `error` event
(`{"error": {...}}`, as an error response's body)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from .errors import error_body

OnOutput = Callable[[str, str], None]


def wants_stream(request: Request) -> bool:
    """Whether the client asked for server-sent events."""
    return "text/event-stream" in request.headers.get("accept", "")


def _event(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def event_stream(start: Callable[[OnOutput], Awaitable[Any]],
                 to_json: Callable[[Any], dict[str, Any]]) -> StreamingResponse:
    """A response streaming the output of `start(on_output)` (a run; `on_output` may be
    called from any thread) and then `to_json(its result)`. A client that goes away cancels
    the run."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def on_output(stream: str, text: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (stream, text))

    async def events() -> AsyncIterator[bytes]:
        task = asyncio.ensure_future(start(on_output))
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task},
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    stream, text = getter.result()
                    yield _event(stream, {"text": text})
                    continue
                getter.cancel()
                break
            while not queue.empty():            # (put before the run's result: FIFO)
                stream, text = queue.get_nowait()
                yield _event(stream, {"text": text})
            try:
                result = task.result()
            except Exception as e:              # noqa: BLE001 (every failure is an event)
                yield _event("error", error_body(e)[1])
            else:
                yield _event("result", to_json(result))
        finally:
            if not task.done():
                task.cancel()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

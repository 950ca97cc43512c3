"""The anchor of ``bench_feeds.py``: a bare FastAPI app on uvicorn doing a feed's jobs in memory.

No database, signatures, projects or numbering rules; one process, one feed.
Started by ``bench_feeds.py`` (:class:`bench_hub_common.BareApp`) as ``python -m uvicorn --factory
bench_feeds_anchor:feed_anchor_app`` with uvicorn's defaults, as ``kachery-hub
serve`` runs.

- ``POST /push``: the body (one message, JSON bytes) is put on an asyncio queue;
- ``GET /events``: Server-Sent Events, one ``messages`` event per queued body, as
  soon as it is queued (one subscriber: what it has not read stays queued);
- ``POST /batch`` ``{"messages": [...]}``: the body parsed, the messages kept in a
  list (the bare floor of a batched append: HTTP and JSON, nothing stored durably);
- ``GET /messages?start=&limit=``: a page of them as ``{"messages": [{number, time,
  user, message}], "message_count"}``, the hub's page shape.

Module-level imports on purpose: FastAPI reads the handlers' annotations from
this module's globals.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse


def feed_anchor_app() -> Any:
    """The anchor's FastAPI app (built by uvicorn ``--factory`` in the anchor process)."""
    app = FastAPI()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    stored: list[tuple[float, Any]] = []

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/push")
    async def push(request: Request) -> Response:
        queue.put_nowait(await request.body())
        return Response(status_code=204)

    @app.get("/events")
    async def events() -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            number = 0
            while True:
                body = await queue.get()
                yield b"id: %d\nevent: messages\ndata: %s\n\n" % (number, body)
                number += 1

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/batch")
    async def batch(request: Request) -> dict[str, int]:
        messages = json.loads(await request.body())["messages"]
        first = len(stored)
        now = time.time()
        stored.extend((now, m) for m in messages)
        return {"first_number": first, "count": len(messages), "message_count": len(stored)}

    @app.get("/messages")
    async def messages(start: int = 0, limit: int = 1000) -> Response:
        page = [{"number": n, "time": t, "user": None, "message": m}
                for n, (t, m) in enumerate(stored[start:start + limit], start)]
        body = json.dumps({"messages": page, "message_count": len(stored)})
        return Response(body, media_type="application/json")

    return app

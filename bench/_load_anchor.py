"""The anchors of the load benchmarks: bare FastAPI apps on uvicorn doing the minimal work.

Started as ``python -m uvicorn --factory _load_anchor:<factory>`` with uvicorn's
defaults, as ``kachery-hub serve`` runs.

``broadcast_app`` (``bench_load_followers.py``): one feed in memory, no database,
signatures or numbering rules.

- ``GET /events``: Server-Sent Events; each subscriber has an asyncio queue of its own;
- ``POST /push``: the body (one message, JSON) goes to every subscriber's queue as one
  ``event: messages`` whose data is ``{"messages": [body]}`` (the hub's page shape, minus
  numbering and authors).

``store_app`` (``bench_load_store.py``): ``PUT /files/{sha1}`` takes a small body, checks
its sha1, writes it to S3 (boto3, as the hub uses; ``BENCH_S3_ENDPOINT``, ``BENCH_S3_BUCKET``)
and a row into PostgreSQL (SQLAlchemy on psycopg, as the hub uses; ``BENCH_DATABASE_URL``),
both in a worker thread; answers the row as JSON. No signatures, projects or upload protocol.

Module-level imports on purpose: FastAPI reads the handlers' annotations from this module's globals.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool


def broadcast_app() -> Any:
    app = FastAPI()
    subscribers: set[asyncio.Queue[bytes]] = set()

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/push")
    async def push(request: Request) -> Response:
        event = b'event: messages\ndata: {"messages":[%s]}\n\n' % await request.body()
        for queue in subscribers:
            queue.put_nowait(event)
        return Response(status_code=204)

    @app.get("/events")
    async def events() -> StreamingResponse:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        subscribers.add(queue)

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 1000\n\n"
                while True:
                    yield await queue.get()
            finally:
                subscribers.discard(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    return app


def store_app() -> Any:
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]
    from sqlalchemy import create_engine, text

    s3 = boto3.client("s3", endpoint_url=os.environ["BENCH_S3_ENDPOINT"], region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                                    max_pool_connections=50))
    bucket = os.environ["BENCH_S3_BUCKET"]
    # As many connections as the thread pool has threads (anyio's default: 40).
    engine = create_engine(os.environ["BENCH_DATABASE_URL"], pool_size=40, max_overflow=0)
    insert = text("INSERT INTO files (sha1, size, created_at) VALUES (:sha1, :size, :now) "
                  "ON CONFLICT (sha1) DO NOTHING")
    app = FastAPI()

    def store(sha1: str, body: bytes) -> dict[str, Any]:
        s3.put_object(Bucket=bucket, Key=f"files/{sha1}", Body=body)
        row = {"sha1": sha1, "size": len(body), "now": time.time()}
        with engine.begin() as conn:
            conn.execute(insert, row)
        return row

    @app.get("/health")
    @app.get("/api/health")  # what the balancer checks
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.put("/files/{sha1}")
    async def put_file(sha1: str, request: Request) -> Response:
        body = await request.body()
        if hashlib.sha1(body).hexdigest() != sha1:
            return JSONResponse({"error": {"code": "hash_mismatch", "message": "sha1"}}, status_code=400)
        return JSONResponse(await run_in_threadpool(store, sha1, body))

    return app

"""The anchor of the ``bench_hub_*`` benchmarks: a bare FastAPI app on uvicorn.

The simplest server doing the hub's jobs over the same stack, with no database,
signatures or projects. Started by :class:`bench_hub_common.Anchor` as
``python -m uvicorn --factory bench_hub_anchor:anchor_app`` with its folder in
``BENCH_ANCHOR_ROOT``:

- ``GET /files/{name}``: FileResponse in 1 MiB chunks (the hub's chunk size; the
  64 KiB default would make the anchor slower, see /work/shared/REAL-PARTS.md);
- ``PUT /files/{name}``: the body streamed to disk; with an ``X-Sha1`` header it
  is also hashed while written, compared, fsynced and renamed into place, which is
  what the hub does to an upload (the "verified" anchor);
- ``GET /json/{key}``, ``PUT /json/{key}``: a JSON value kept in a dict.

Module-level imports on purpose: FastAPI reads the handlers' annotations from
this module's globals.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

MIB = 2**20


class BigChunks(FileResponse):
    chunk_size = MIB


def _write_upload(target: Path, chunks: list[bytes], expected_sha1: str | None, h: Any) -> None:
    """Append ``chunks`` to ``target`` (hashing them when a sha1 is expected)."""
    with open(target, "ab") as f:
        for chunk in chunks:
            if expected_sha1 is not None:
                h.update(chunk)
            f.write(chunk)


def anchor_app() -> Any:
    """The anchor's FastAPI app (built by uvicorn ``--factory`` in the anchor process)."""
    root = Path(os.environ["BENCH_ANCHOR_ROOT"])
    values: dict[str, Any] = {}
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/files/{name}")
    async def get_file(name: str) -> FileResponse:
        return BigChunks(root / name, media_type="application/octet-stream")

    @app.put("/files/{name}")
    async def put_file(name: str, request: Request) -> JSONResponse:
        expected = request.headers.get("x-sha1")
        tmp, h = root / f".{name}.{os.urandom(4).hex()}.tmp", hashlib.sha1()
        tmp.touch()
        batch: list[bytes] = []
        size = pending = 0
        writing: asyncio.Future[None] | None = None
        async for chunk in request.stream():
            batch.append(chunk)
            size += len(chunk)
            pending += len(chunk)
            if pending >= 4 * MIB:
                # Disk and hash work in a thread while the next batch arrives, as the hub does.
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(run_in_threadpool(_write_upload, tmp, batch, expected, h))
                batch, pending = [], 0
        if writing is not None:
            await writing
        await run_in_threadpool(_write_upload, tmp, batch, expected, h)
        if expected is not None:
            if h.hexdigest() != expected:
                tmp.unlink()
                return JSONResponse({"error": "hash_mismatch"}, status_code=400)
            await run_in_threadpool(_fsync, tmp)
        os.replace(tmp, root / name)
        return JSONResponse({"size": size})

    @app.get("/json/{key:path}")
    async def get_json(key: str) -> Any:
        return {"value": values.get(key)}

    @app.put("/json/{key:path}")
    async def put_json(key: str, body: dict[str, Any]) -> Any:
        values[key] = body.get("value")
        return {"ok": True}

    return app


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


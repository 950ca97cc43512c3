"""Files: content-addressed bytes recorded in projects.

Bytes live once in the byte store (by sha1); a ``files`` row makes them visible
in one project. An upload is written to a temp blob while its sha1 is
computed and becomes visible only when the hash matches. Uploading into a
project never reveals whether the bytes already exist in another project:
the bytes are always streamed and verified, and only a project the caller can
read answers "already here".
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable as _Unsatisfiable
from sqlalchemy import Connection, delete, select, text
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from kachery_core import _signing

from . import _database as tables
from ._auth import Caller, caller, streaming_caller
from ._database import Database
from ._projects import readable_by, require_role
from ._state import HubState, hub_state
from .errors import BadSignature, FileNotFound, InvalidInput, RangeNotSatisfiable

router = APIRouter(tags=["files"])

_WRITE_BATCH = 4 * 1024 * 1024  # hand chunks to the writer thread in batches this big


class _BigChunkFileResponse(FileResponse):
    chunk_size = 1024 * 1024


def _check_range(request: Request, size: int) -> None:
    """Refuse a bad Range header as a JSON error before streaming starts."""
    value = request.headers.get("range")
    if value is None:
        return
    try:
        FileResponse._parse_range_header(value, size)
    except MalformedRangeHeader:
        raise InvalidInput(f"malformed Range header {value[:100]!r} (expected bytes=START-END)") from None
    except _Unsatisfiable:
        raise RangeNotSatisfiable(f"range {value[:100]!r} is outside the {size} bytes of the file", size=size) from None


def _check_sha1(sha1: str) -> str:
    if not _signing.SHA1_RE.fullmatch(sha1):
        raise InvalidInput(f"{sha1!r} is not a sha1 (40 lowercase hex digits)")
    return sha1


def _file_json(row: Any) -> dict[str, Any]:
    return {"sha1": row.sha1, "size": row.size, "label": row.label, "project_id": row.project_id,
            "created_at": row.created_at}


def _project_file(db: Database, who: Caller, project_id: str, sha1: str) -> dict[str, Any]:
    with db.begin() as conn:
        require_role(conn, who, project_id, "read")
        row = conn.execute(select(tables.files).where(
            tables.files.c.project_id == project_id, tables.files.c.sha1 == sha1)).first()
    if row is None:
        raise FileNotFound(f"sha1://{sha1} is not in project {project_id!r}", sha1=sha1)
    return _file_json(row)


def _list_files(db: Database, who: Caller, project_id: str, limit: int, after: str | None) -> list[dict[str, Any]]:
    with db.begin() as conn:
        require_role(conn, who, project_id, "read")
        q = select(tables.files).where(tables.files.c.project_id == project_id)
        if after:
            q = q.where(tables.files.c.sha1 > after)
        rows = conn.execute(q.order_by(tables.files.c.sha1).limit(limit)).all()
    return [_file_json(r) for r in rows]


def _record(db: Database, who: Caller, project_id: str, sha1: str, size: int, label: str | None) -> dict[str, Any]:
    user_id = who.require_user()
    now = time.time()
    # ON CONFLICT (SQLite and PostgreSQL alike): concurrent uploads of the same bytes both succeed.
    with db.begin() as conn:
        require_role(conn, who, project_id, "write")
        conn.execute(text("INSERT INTO blobs (sha1, size, created_at) VALUES (:sha1, :size, :now) "
                          "ON CONFLICT (sha1) DO NOTHING"), {"sha1": sha1, "size": size, "now": now})
        conn.execute(
            text("INSERT INTO files (project_id, sha1, size, label, created_by, created_at) "
                 "VALUES (:pid, :sha1, :size, :label, :user, :now) ON CONFLICT (project_id, sha1) DO UPDATE "
                 "SET label = COALESCE(excluded.label, files.label)"),
            {"pid": project_id, "sha1": sha1, "size": size, "label": label, "user": user_id, "now": now},
        )
    return _project_file(db, who, project_id, sha1)


def find_readable(conn: Connection, who: Caller, sha1: str) -> Any:
    """A files row for ``sha1`` in a project ``who`` may read, or None."""
    return conn.execute(
        select(tables.files).join(tables.projects, tables.projects.c.id == tables.files.c.project_id)
        .where(tables.files.c.sha1 == sha1, readable_by(who.user_id)).limit(1)
    ).first()


def _readable(db: Database, who: Caller, sha1: str) -> dict[str, Any]:
    with db.begin() as conn:
        row = find_readable(conn, who, sha1)
    if row is None:
        whom = "you" if who.user_id else "anonymous clients"
        raise FileNotFound(f"sha1://{sha1} is not in any project {whom} can read", sha1=sha1)
    return _file_json(row)


def _unrecord(db: Database, who: Caller, project_id: str, sha1: str) -> bool:
    with db.begin() as conn:
        require_role(conn, who, project_id, "write")
        result = conn.execute(delete(tables.files).where(
            tables.files.c.project_id == project_id, tables.files.c.sha1 == sha1))
    return bool(result.rowcount)


@router.get("/api/projects/{project_id}/files", summary="Files of a project, by sha1 (paged with `after`)")
async def get_files(project_id: str, limit: int = Query(default=1000, ge=1, le=10000),
                    after: str | None = Query(default=None, max_length=40), who: Caller = Depends(caller),
                    hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    return {"files": await run_in_threadpool(_list_files, hub.db, who, project_id, limit, after)}


@router.get("/api/projects/{project_id}/files/{sha1}", summary="A file's record in one project")
async def get_project_file(project_id: str, sha1: str, who: Caller = Depends(caller),
                           hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    return await run_in_threadpool(_project_file, hub.db, who, project_id, _check_sha1(sha1))


@router.delete("/api/projects/{project_id}/files/{sha1}", summary="Remove a file from a project")
async def delete_project_file(project_id: str, sha1: str, who: Caller = Depends(caller),
                              hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    return {"deleted": await run_in_threadpool(_unrecord, hub.db, who, project_id, _check_sha1(sha1))}


@router.put(
    "/api/projects/{project_id}/files/{sha1}",
    summary="Upload a file's bytes into a project (streamed; verified against the sha1 before it is visible)",
    openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {}}}},
)
async def put_project_file(project_id: str, sha1: str, request: Request,
                           label: str | None = Query(default=None, max_length=1000),
                           who: Caller = Depends(streaming_caller), hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    _check_sha1(sha1)
    who.require_user()
    if who.body_sha1 != sha1:
        raise BadSignature(f"the {_signing.HEADER_BODY_SHA1} header of an upload must be the file's sha1 {sha1}")

    def _check() -> None:
        with hub.db.begin() as conn:
            require_role(conn, who, project_id, "write")

    await run_in_threadpool(_check)
    length = request.headers.get("content-length")
    max_size = int(length) if length is not None and length.isdigit() else None
    incoming = await run_in_threadpool(hub.store.begin_upload, max_size)
    writing: asyncio.Task[None] | None = None
    try:
        batch: list[bytes] = []
        pending = 0
        async for chunk in request.stream():
            batch.append(chunk)
            pending += len(chunk)
            if pending >= _WRITE_BATCH:
                # Hash and write this batch in a thread while the next one arrives.
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(run_in_threadpool(incoming.write, b"".join(batch)))
                batch, pending = [], 0
        if writing is not None:
            await writing
        if batch:
            await run_in_threadpool(incoming.write, b"".join(batch))
        size = await run_in_threadpool(incoming.finish, sha1)
    except BaseException as e:
        if writing is not None and not writing.done():
            await asyncio.wait([writing])
        await run_in_threadpool(incoming.abort)
        if isinstance(e, ClientDisconnect):
            raise InvalidInput("the client disconnected before the upload finished; nothing was stored") from None
        raise
    return await run_in_threadpool(_record, hub.db, who, project_id, sha1, size, label)


class UploadRequest(BaseModel):
    size: int = Field(ge=0)


class CompleteRequest(BaseModel):
    label: str | None = Field(default=None, max_length=1000)


def _upload_target(hub: HubState, who: Caller, project_id: str, sha1: str) -> dict[str, Any]:
    with hub.db.begin() as conn:
        require_role(conn, who, project_id, "write")
        present = conn.execute(select(tables.files.c.sha1).where(
            tables.files.c.project_id == project_id, tables.files.c.sha1 == sha1)).first() is not None
    if present:
        return {"present": True, "upload": None}
    target = hub.store.upload_target(sha1)
    if target is None:
        return {"present": False, "upload": {"url": f"/api/projects/{project_id}/files/{sha1}", "method": "PUT",
                                             "headers": {}, "via_hub": True}}
    return {"present": False, "upload": {"url": target.url, "method": target.method, "headers": target.headers,
                                         "via_hub": False}}


def _complete(hub: HubState, who: Caller, project_id: str, sha1: str, label: str | None) -> dict[str, Any]:
    size = hub.store.verified_size(sha1)
    if size is None:
        raise FileNotFound(f"the object store holds no verified upload of sha1://{sha1}; upload it first", sha1=sha1)
    return _record(hub.db, who, project_id, sha1, size, label)


@router.post("/api/projects/{project_id}/files/{sha1}/upload",
             summary="Where to send a file's bytes (a presigned URL when the hub uses an object store)")
async def post_upload(project_id: str, sha1: str, body: UploadRequest, who: Caller = Depends(caller),
                      hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    who.require_user()
    return await run_in_threadpool(_upload_target, hub, who, project_id, _check_sha1(sha1))


@router.post("/api/projects/{project_id}/files/{sha1}/complete",
             summary="Record a directly uploaded file in the project once the store has verified its sha1")
async def post_complete(project_id: str, sha1: str, body: CompleteRequest, who: Caller = Depends(caller),
                        hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    who.require_user()
    return await run_in_threadpool(_complete, hub, who, project_id, _check_sha1(sha1), body.label)


@router.get("/api/files/{sha1}/info", summary="Size and label of a file in a project the caller can read")
async def get_file_info(sha1: str, who: Caller = Depends(caller), hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    return await run_in_threadpool(_readable, hub.db, who, _check_sha1(sha1))


@router.get(
    "/api/files/{sha1}",
    summary="Download a file found in any project the caller can read (HTTP Range supported)",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, 206: {"description": "Partial content"}},
)
async def get_file(sha1: str, request: Request, who: Caller = Depends(caller),
                   hub: HubState = Depends(hub_state)) -> Response:
    info = await run_in_threadpool(_readable, hub.db, who, _check_sha1(sha1))
    _check_range(request, int(info["size"]))
    url = hub.store.download_url(sha1)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    path = hub.store.local_path(sha1)
    if path is None or not path.is_file():
        raise FileNotFound(f"the bytes of sha1://{sha1} are missing from the hub's store", sha1=sha1)
    return _BigChunkFileResponse(path, media_type="application/octet-stream",
                                 headers={"X-Kachery-Size": str(info["size"])})

"""Files: content-addressed bytes recorded in projects.

In a folder store bytes live once (by sha1); a ``files`` row makes them visible
in one project. An upload is written to a temp blob while its sha1 is
computed and becomes visible only when the hash matches. Uploading into a
project never reveals whether the bytes already exist in another project:
the bytes are always streamed and verified, and only a project the caller can
read answers "already here".

A client adds a file to a project only by proving it holds the whole content:
through the hub, by sending the bytes (hashed as they stream); with an object
store, by sending them to a key of its own (an upload id handed to it alone)
whose sha1 the store checks. That the hub already holds the bytes for another
project is never a shortcut, and no answer differs by it. In a folder store a
verified upload of bytes already there is dropped after the answer has gone; in an object store each
project keeps the copy it uploaded (``files.storage_key``), since a download's
presigned URL names its object and would tell whose upload it was.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request
from pydantic import BaseModel, Field
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable as _Unsatisfiable
from sqlalchemy import Connection, bindparam, delete, func, or_, select, text
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from kachery_core import _signing

from . import _database as tables, _metrics
from ._auth import Caller, SignedRequest, content_length, in_thread, signed_request, signed_upload
from ._bytestore import ByteStore, IncomingBlob
from ._database import Database
from ._projects import require_role
from ._s3store import MAX_OBJECT_SIZE, S3ByteStore
from ._text import Line
from .errors import (BadSignature, FileNotFound, HashMismatch, InvalidInput, PayloadTooLarge, RangeNotSatisfiable,
                     UploadNotFound)

router = APIRouter(tags=["files"])

_WRITE_BATCH = 4 * 1024 * 1024  # hand chunks to the writer thread in batches this big
#: A direct upload not completed this long after its URL was handed out is removed (URLs last an hour).
ABANDONED_UPLOAD_SECONDS = 2 * 3600.0
#: The newest pending uploads of a file that asking for its upload again may resume.
_RESUMABLE = 8


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


def _write_all(incoming: IncomingBlob, chunks: list[bytes]) -> None:
    # Chunk by chunk: joining them first would copy every byte once more on the event loop.
    for chunk in chunks:
        incoming.write(chunk)


def _check_sha1(sha1: str) -> str:
    if not _signing.SHA1_RE.fullmatch(sha1):
        raise InvalidInput(f"{sha1!r} is not a sha1 (40 lowercase hex digits)")
    return sha1


def _file_json(row: Any) -> dict[str, Any]:
    return {"sha1": row.sha1, "size": row.size, "label": row.label, "project_id": row.project_id,
            "created_at": row.created_at}


# Built once (see _projects.require_role): these run on every file request.
_PROJECT_FILE = select(tables.files).where(
    tables.files.c.project_id == bindparam("pid"), tables.files.c.sha1 == bindparam("sha1"))
# ON CONFLICT (SQLite and PostgreSQL alike): concurrent uploads of the same bytes both succeed.
# A row is written whether or not the blob is known (DO UPDATE, not DO NOTHING): the same work, and so the
# same time, whether or not another project holds the bytes.
_INSERT_BLOB = text("INSERT INTO blobs (sha1, size, created_at) VALUES (:sha1, :size, :now) "
                    "ON CONFLICT (sha1) DO UPDATE SET size = excluded.size")
_FILE_KEY = text("SELECT storage_key FROM files WHERE project_id = :pid AND sha1 = :sha1")
_PENDING = text("INSERT INTO pending_uploads (upload_id, project_id, sha1, created_at) VALUES (:id, :pid, :sha1, :now)")
_PENDING_AGAIN = text(_PENDING.text + " ON CONFLICT (upload_id) DO NOTHING")
_COMPLETED = text("DELETE FROM pending_uploads WHERE upload_id = :id AND project_id = :pid AND sha1 = :sha1")
_IS_PENDING = text("SELECT 1 FROM pending_uploads WHERE upload_id = :id AND project_id = :pid AND sha1 = :sha1")
_PENDING_OF = text("SELECT upload_id FROM pending_uploads WHERE project_id = :pid AND sha1 = :sha1 "
                   "ORDER BY created_at DESC")
_RESUMED = text("UPDATE pending_uploads SET created_at = :now WHERE upload_id = :id")
_INSERT_FILE = text(
    "INSERT INTO files (project_id, sha1, size, label, created_by, created_at, storage_key) "
    "VALUES (:pid, :sha1, :size, :label, :user, :now, :key) ON CONFLICT (project_id, sha1) DO UPDATE "
    "SET label = COALESCE(excluded.label, files.label), storage_key = COALESCE(files.storage_key, excluded.storage_key) "
    # The project's row as it now is (inserted, or the one it had): no second query for the answer.
    "RETURNING project_id, sha1, size, label, created_at, storage_key"
)
_IN_A_PROJECT = (
    select(tables.files).join(tables.projects, tables.projects.c.id == tables.files.c.project_id)
    .where(tables.files.c.sha1 == bindparam("sha1"))
)
_READABLE_BY_ANYONE = _IN_A_PROJECT.where(tables.projects.c.public_read.is_(True)).limit(1)
_READABLE_BY_USER = _IN_A_PROJECT.where(or_(
    tables.projects.c.public_read.is_(True),
    tables.projects.c.id.in_(
        select(tables.members.c.project_id).where(tables.members.c.user_id == bindparam("user_id"))),
)).limit(1)


def _project_file(conn: Connection, who: Caller, project_id: str, sha1: str) -> dict[str, Any]:
    require_role(conn, who, project_id, "read")
    row = conn.execute(_PROJECT_FILE, {"pid": project_id, "sha1": sha1}).first()
    if row is None:
        raise FileNotFound(f"sha1://{sha1} is not in project {project_id!r}", sha1=sha1)
    return _file_json(row)


def _list_files(conn: Connection, who: Caller, project_id: str, limit: int, after: str | None,
                search: str | None = None) -> list[dict[str, Any]]:
    project = require_role(conn, who, project_id, "read")
    files, users = tables.files, tables.users
    q = (select(files, users.c.email.label("created_by_email"))
         .outerjoin(users, users.c.id == files.c.created_by).where(files.c.project_id == project_id))
    if after:
        q = q.where(files.c.sha1 > after)
    if search:
        # Any case on both engines (PostgreSQL's LIKE minds case, SQLite's does not); % and _ taken literally.
        q = q.where(func.lower(files.c.label).contains(search.lower(), autoescape=True))
    rows = conn.execute(q.order_by(files.c.sha1).limit(limit)).all()
    if project.caller_role is None:  # public-read shares the data, not who stored it
        return [_file_json(r) for r in rows]
    return [{**_file_json(r), "created_by": r.created_by_email or ""} for r in rows]


def _record(conn: Connection, who: Caller, project_id: str, sha1: str, size: int, label: str | None,
            storage_key: str | None = None) -> dict[str, Any]:
    """Record bytes the caller proved it holds; ``storage_key`` names where a direct upload put them."""
    return _file_json(_record_row(conn, who, project_id, sha1, size, label, storage_key))


def _record_row(conn: Connection, who: Caller, project_id: str, sha1: str, size: int, label: str | None,
                storage_key: str | None) -> Any:
    """:func:`_record`'s work: the project's row of the file (its storage key too)."""
    user_id = who.require_user()
    now = time.time()
    require_role(conn, who, project_id, "write")
    conn.execute(_INSERT_BLOB, {"sha1": sha1, "size": size, "now": now})
    return conn.execute(_INSERT_FILE, {"pid": project_id, "sha1": sha1, "size": size, "label": label,
                                       "user": user_id, "now": now, "key": storage_key}).one()


def find_readable(conn: Connection, who: Caller, sha1: str) -> Any:
    """A files row for ``sha1`` in a project ``who`` may read, or None."""
    if who.user_id is None:
        return conn.execute(_READABLE_BY_ANYONE, {"sha1": sha1}).first()
    return conn.execute(_READABLE_BY_USER, {"sha1": sha1, "user_id": who.user_id}).first()


def _readable_row(conn: Connection, who: Caller, sha1: str) -> Any:
    row = find_readable(conn, who, sha1)
    if row is None:
        whom = "you" if who.user_id else "anonymous clients"
        raise FileNotFound(f"sha1://{sha1} is not in any project {whom} can read", sha1=sha1)
    return row


def _readable(conn: Connection, who: Caller, sha1: str) -> dict[str, Any]:
    return _file_json(_readable_row(conn, who, sha1))


def _download(conn: Connection, who: Caller, sha1: str) -> tuple[int, str | None]:
    row = _readable_row(conn, who, sha1)
    return int(row.size), row.storage_key


def _unrecord(conn: Connection, who: Caller, project_id: str, sha1: str) -> tuple[bool, str | None]:
    """Remove a file from a project; also gives the key of the project's own copy in an object store."""
    require_role(conn, who, project_id, "write")
    key = conn.execute(_FILE_KEY, {"pid": project_id, "sha1": sha1}).scalar()
    deleted = conn.execute(delete(tables.files).where(
        tables.files.c.project_id == project_id, tables.files.c.sha1 == sha1)).rowcount
    if key is not None:
        # Its presigned upload URL may still be valid (an hour): bytes sent to it again would make an
        # object nothing records. Pending once more, the sweep of abandoned uploads removes it later.
        conn.execute(_PENDING_AGAIN, {"id": key.rsplit("/", 1)[-1], "pid": project_id, "sha1": sha1, "now": time.time()})
    return bool(deleted), key


@router.get("/api/projects/{project_id}/files",
            summary="Files of a project, by sha1 (paged with `after`; `q`: those whose label holds it, any case)")
async def get_files(project_id: str, limit: int = Query(default=1000, ge=1, le=10000),
                    after: Line | None = Query(default=None, max_length=40),
                    q: Line | None = Query(default=None, max_length=1000),
                    req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    return {"files": await req.run(_list_files, project_id, limit, after, q)}


@router.get("/api/projects/{project_id}/files/{sha1}", summary="A file's record in one project")
async def get_project_file(project_id: str, sha1: str, req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    return await req.run(_project_file, project_id, _check_sha1(sha1))


@router.delete("/api/projects/{project_id}/files/{sha1}", summary="Remove a file from a project")
async def delete_project_file(project_id: str, sha1: str, background: BackgroundTasks,
                              req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    deleted, key = await req.run(_unrecord, project_id, _check_sha1(sha1))
    if key is not None:  # the project's own copy in an object store: no other project reads it
        background.add_task(run_in_threadpool, req.hub.store.remove, key)
    return {"deleted": deleted}


@router.put(
    "/api/projects/{project_id}/files/{sha1}",
    summary="Upload a file's bytes into a project (streamed; verified against the sha1 before it is visible)",
    openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {}}}},
)
async def put_project_file(project_id: str, sha1: str, request: Request, background: BackgroundTasks,
                           label: Line | None = Query(default=None, max_length=1000),
                           req: SignedRequest = Depends(signed_upload)) -> dict[str, Any]:
    _check_sha1(sha1)
    if req.body_sha1 != sha1:
        raise BadSignature(f"the {_signing.HEADER_BODY_SHA1} header of an upload must be the file's sha1 {sha1}")
    hub = req.hub
    who = await req.run(_may_write, project_id)  # refused before any byte is read
    max_size = content_length(request)
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
                writing = asyncio.ensure_future(run_in_threadpool(_write_all, incoming, batch))
                batch, pending = [], 0
        if writing is not None:
            await writing
        if batch:
            await run_in_threadpool(_write_all, incoming, batch)
        size = await run_in_threadpool(incoming.finish, sha1)
        _metrics.count_upload(hub, size, direct=False)
    except BaseException as e:
        if writing is not None and not writing.done():
            await asyncio.wait([writing])
        await run_in_threadpool(incoming.abort)
        if isinstance(e, ClientDisconnect):
            raise InvalidInput("the client disconnected before the upload finished; nothing was stored") from None
        raise
    try:
        record = await run_in_threadpool(hub.db.run, _record, who, project_id, sha1, size, label)
    except BaseException:
        await run_in_threadpool(incoming.release)
        raise
    background.add_task(run_in_threadpool, incoming.release)  # after the answer: see _LocalIncoming.finish
    return record


class UploadRequest(BaseModel):
    size: int = Field(ge=0)


class CompleteRequest(BaseModel):
    label: Line | None = Field(default=None, max_length=1000)
    upload_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="as handed out by .../upload")
    size: int | None = Field(default=None, ge=0, description="the file's size: a multipart upload that lacks "
                             "parts of it is refused and goes on, instead of failing its check and being removed")


def _may_write(conn: Connection, who: Caller, project_id: str) -> Caller:
    who.require_user()
    require_role(conn, who, project_id, "write")
    return who


def _may_complete(conn: Connection, who: Caller, project_id: str, sha1: str,
                  upload_id: str) -> tuple[Caller, dict[str, Any] | None]:
    """The caller, and None when ``upload_id`` waits to be completed, else the project's record of the
    file if the project holds it (a completion sent again after its answer was lost: that answer again)."""
    # Before the store is asked anything: completing a multipart upload changes it.
    _may_write(conn, who, project_id)
    if conn.execute(_IS_PENDING, {"id": upload_id, "pid": project_id, "sha1": sha1}).first() is not None:
        return who, None
    row = conn.execute(_PROJECT_FILE, {"pid": project_id, "sha1": sha1}).first()
    if row is not None:
        return who, _file_json(row)
    raise UploadNotFound(f"upload {upload_id} of sha1://{sha1} was not handed out for project {project_id!r}, "
                         "or is complete already", sha1=sha1)


def _pending_of(conn: Connection, who: Caller, project_id: str, sha1: str) -> list[str] | None:
    """The project's pending uploads of ``sha1``, newest first; None when the project holds the file."""
    _may_write(conn, who, project_id)
    if conn.execute(_PROJECT_FILE, {"pid": project_id, "sha1": sha1}).first() is not None:
        return None
    return [str(r.upload_id) for r in conn.execute(_PENDING_OF, {"pid": project_id, "sha1": sha1})]


def _multipart_answer(state: dict[str, Any]) -> dict[str, Any]:
    return {"present": False, "upload": {"url": None, "method": "PUT", "headers": {}, "via_hub": False,
                                         "upload_id": state["upload_id"], "multipart": state}}


async def _multipart_target(req: SignedRequest, store: S3ByteStore, project_id: str, sha1: str,
                            size: int) -> dict[str, Any]:
    """A multipart upload of ``sha1`` into the project: the one in progress (resumed) or a new one.

    Any writer of the project resumes its upload of these bytes: the parts are the same bytes
    (the whole is checked against the sha1 on completion), and a client needs keep no state.
    """
    hub = req.hub
    pending = await req.run(_pending_of, project_id, sha1)
    if pending is None:
        return {"present": True, "upload": None}
    if size > MAX_OBJECT_SIZE:
        raise PayloadTooLarge(f"{size} bytes is more than an object store holds in one object ({MAX_OBJECT_SIZE})")
    part_size = hub.settings.s3_part_size
    # Each looked up by its own key: nothing here depends on other projects' uploads of the same bytes.
    for upload_id in pending[:_RESUMABLE]:
        state = await in_thread(store.multipart_state, sha1, upload_id, size, part_size)
        if state is not None:
            # Still wanted: a sweep of abandoned uploads counts from the last time it was asked for.
            await in_thread(hub.db.run, lambda c: c.execute(_RESUMED, {"id": upload_id, "now": time.time()}))
            return _multipart_answer(state)
    upload_id = secrets.token_hex(16)
    # Recorded before it exists in the store, so that a sweep of abandoned uploads always finds it.
    await in_thread(hub.db.run, lambda c: c.execute(
        _PENDING, {"id": upload_id, "pid": project_id, "sha1": sha1, "now": time.time()}))
    await in_thread(store.begin_multipart, sha1, upload_id)
    state = await in_thread(store.multipart_state, sha1, upload_id, size, part_size)
    if state is None:
        raise UploadNotFound(f"the object store lost multipart upload {upload_id} as it began", sha1=sha1)
    return _multipart_answer(state)


def _upload_target(conn: Connection, who: Caller, store: ByteStore, project_id: str, sha1: str) -> dict[str, Any]:
    _may_write(conn, who, project_id)
    if conn.execute(_PROJECT_FILE, {"pid": project_id, "sha1": sha1}).first() is not None:
        return {"present": True, "upload": None}
    target = store.upload_target(sha1)  # presigning is computed here, no request to the store
    if target is not None and target.upload_id is not None:
        conn.execute(_PENDING, {"id": target.upload_id, "pid": project_id, "sha1": sha1, "now": time.time()})
    if target is None:
        return {"present": False, "upload": {"url": f"/api/projects/{project_id}/files/{sha1}", "method": "PUT",
                                             "headers": {}, "via_hub": True}}
    return {"present": False, "upload": {"url": target.url, "method": target.method, "headers": target.headers,
                                         "via_hub": False, "upload_id": target.upload_id}}


def _record_upload(conn: Connection, who: Caller, store: ByteStore, project_id: str, sha1: str, size: int,
                   label: str | None, upload_id: str) -> tuple[dict[str, Any], bool]:
    """Record a proved direct upload; also says whether its object is the project's copy (else it is redundant)."""
    if not conn.execute(_COMPLETED, {"id": upload_id, "pid": project_id, "sha1": sha1}).rowcount:
        row = conn.execute(_PROJECT_FILE, {"pid": project_id, "sha1": sha1}).first()
        if row is not None:
            # Completed meanwhile by another completion of it (sent again while a long check ran): that one's
            # answer, and its object left alone.
            return _file_json(row), True
        raise UploadNotFound(f"upload {upload_id} of sha1://{sha1} was not handed out for project {project_id!r}, "
                             "or is complete already", sha1=sha1)
    key = store.adopt(sha1, upload_id)
    row = _record_row(conn, who, project_id, sha1, size, label, key)
    return _file_json(row), row.storage_key == key


@router.post("/api/projects/{project_id}/files/{sha1}/upload",
             summary="Where to send a file's bytes (a presigned URL when the hub uses an object store; for a "
                     "big file a multipart upload: part size, parts stored, URLs of the next missing parts; "
                     "asked again, the same upload)")
async def post_upload(project_id: str, sha1: str, body: UploadRequest,
                      req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    _check_sha1(sha1)
    store = req.hub.store
    if isinstance(store, S3ByteStore) and body.size > req.hub.settings.s3_multipart_threshold:
        return await _multipart_target(req, store, project_id, sha1, body.size)
    return await req.run(_upload_target, store, project_id, sha1)


@router.post("/api/projects/{project_id}/files/{sha1}/complete",
             summary="Record a directly uploaded file in the project once the store has verified its sha1")
async def post_complete(project_id: str, sha1: str, body: CompleteRequest, background: BackgroundTasks,
                        req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    _check_sha1(sha1)
    who, done = await req.run(_may_complete, project_id, sha1, body.upload_id)
    if done is not None:
        return done
    store = req.hub.store
    if isinstance(store, S3ByteStore) and body.size is not None and body.size > req.hub.settings.s3_multipart_threshold:
        state = await in_thread(store.multipart_state, sha1, body.upload_id, body.size, req.hub.settings.s3_part_size)
        if state is not None and state["urls"]:
            raise InvalidInput(f"multipart upload {body.upload_id} of sha1://{sha1} is incomplete (parts missing: "
                               f"{sorted(map(int, state['urls']))[:20]}); send them, then complete")
    try:
        size = await run_in_threadpool(store.staged_size, sha1, body.upload_id)  # outside any transaction
    except HashMismatch:
        await in_thread(req.hub.db.run, lambda c: c.execute(
            _COMPLETED, {"id": body.upload_id, "pid": project_id, "sha1": sha1}))  # its object is gone
        raise
    if size is None:
        raise UploadNotFound(f"no upload {body.upload_id} of sha1://{sha1} has arrived in the object store; "
                             "send the bytes to the URL that .../upload gave, then complete", sha1=sha1)
    record, kept = await run_in_threadpool(req.hub.db.run, _record_upload, who, store, project_id, sha1, size,
                                           body.label, body.upload_id)
    _metrics.count_upload(req.hub, size, direct=True)
    if not kept:  # this project held these bytes already (a concurrent upload of its own)
        background.add_task(run_in_threadpool, store.discard, sha1, body.upload_id)
    return record


def remove_abandoned_uploads(db: Database, store: ByteStore, older_than: float) -> int:
    """Remove the direct uploads handed out before ``older_than`` and never completed; returns how many."""
    table = tables.pending_uploads
    with db.begin() as conn:
        rows = conn.execute(select(table).where(table.c.created_at < older_than)).all()
    for row in rows:
        store.discard(row.sha1, row.upload_id)
        with db.begin() as conn:
            conn.execute(delete(table).where(table.c.upload_id == row.upload_id))
    return len(rows)


@router.get("/api/files/{sha1}/info", summary="Size and label of a file in a project the caller can read")
async def get_file_info(sha1: str, req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    return await req.run(_readable, _check_sha1(sha1))


@router.get(
    "/api/files/{sha1}",
    summary="Download a file found in any project the caller can read (HTTP Range supported)",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, 206: {"description": "Partial content"}},
)
async def get_file(sha1: str, request: Request, req: SignedRequest = Depends(signed_request)) -> Response:
    size, storage_key = await req.run(_download, _check_sha1(sha1))
    hub = req.hub
    _check_range(request, size)
    url = hub.store.download_url(sha1, storage_key)
    _metrics.count_download(hub, request.headers.get("range"), size, direct=url is not None)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    path = hub.store.local_path(sha1)
    if path is None or not path.is_file():
        raise FileNotFound(f"the bytes of sha1://{sha1} are missing from the hub's store", sha1=sha1)
    return _BigChunkFileResponse(path, media_type="application/octet-stream",
                                 headers={"X-Kachery-Size": str(size)})

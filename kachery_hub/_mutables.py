"""Mutables in a project: a key → text store shared by the project's members.

Keys follow the rules of local mutables (``kachery_core._mutables``); values
are text of at most ``kachery_core._constants.MAX_MUTABLE_VALUE_BYTES`` UTF-8
bytes (1 MiB). Reading takes the ``read`` role (or a public project), writing
takes ``write``.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from sqlalchemy import Connection, bindparam, delete, func, select, text

from kachery_core import _constants
from kachery_core._mutables import validate_key
from kachery_core.errors import InvalidMutableKeyError

from . import _database as tables
from ._auth import Caller, SignedRequest, signed_request
from ._projects import require_role
from ._text import Line, Value
from .errors import InvalidInput, MutableNotFound, PayloadTooLarge

router = APIRouter(tags=["mutables"])


def _key(key: str) -> str:
    try:
        return validate_key(key)
    except InvalidMutableKeyError as e:
        raise InvalidInput(str(e), key=key[:200]) from None


# Built once (see _projects.require_role): these run on every mutable request.
_SELECT = select(tables.mutables.c.value, tables.mutables.c.updated_at).where(
    tables.mutables.c.project_id == bindparam("pid"), tables.mutables.c.key == bindparam("key"))
# ON CONFLICT ... DO UPDATE is understood by SQLite and PostgreSQL alike.
_UPSERT = text(
    "INSERT INTO mutables (project_id, key, value, updated_by, updated_at) "
    "VALUES (:pid, :key, :value, :user, :now) ON CONFLICT (project_id, key) DO UPDATE "
    "SET value = excluded.value, updated_by = excluded.updated_by, updated_at = excluded.updated_at"
)
_DELETE = delete(tables.mutables).where(
    tables.mutables.c.project_id == bindparam("pid"), tables.mutables.c.key == bindparam("key"))


def _get(conn: Connection, who: Caller, project_id: str, key: str) -> dict[str, Any]:
    require_role(conn, who, project_id, "read")
    row = conn.execute(_SELECT, {"pid": project_id, "key": key}).first()
    if row is None:
        raise MutableNotFound(f"mutable {key!r} is not set in project {project_id!r}", key=key)
    return {"key": key, "value": row.value, "updated_at": row.updated_at}


def _set(conn: Connection, who: Caller, project_id: str, key: str, value: str) -> dict[str, Any]:
    size = len(value.encode("utf-8"))
    if size > _constants.MAX_MUTABLE_VALUE_BYTES:
        raise PayloadTooLarge(
            f"value of mutable {key!r} is {size} bytes, over the limit of {_constants.MAX_MUTABLE_VALUE_BYTES} bytes",
            key=key,
        )
    user_id = who.require_user()
    now = time.time()
    require_role(conn, who, project_id, "write")
    conn.execute(_UPSERT, {"pid": project_id, "key": key, "value": value, "user": user_id, "now": now})
    return {"key": key, "updated_at": now}


def _delete(conn: Connection, who: Caller, project_id: str, key: str) -> bool:
    require_role(conn, who, project_id, "write")
    return bool(conn.execute(_DELETE, {"pid": project_id, "key": key}).rowcount)


def _list(conn: Connection, who: Caller, project_id: str, prefix: str, limit: int, after: str | None) -> list[dict[str, Any]]:
    require_role(conn, who, project_id, "read")
    q = select(tables.mutables.c.key, tables.mutables.c.value, tables.mutables.c.updated_at).where(
        tables.mutables.c.project_id == project_id)
    if prefix:
        # Not LIKE: prefixes may hold % and _, and SQLite's LIKE ignores case.
        q = q.where(func.substr(tables.mutables.c.key, 1, len(prefix)) == prefix)
    if after is not None:
        q = q.where(tables.mutables.c.key > after)
    rows = conn.execute(q.order_by(tables.mutables.c.key).limit(limit)).all()
    return [{"key": r.key, "size": len(r.value.encode("utf-8")), "updated_at": r.updated_at} for r in rows]


class SetMutable(BaseModel):
    value: Value


@router.get("/api/projects/{project_id}/mutables", summary="Mutables of a project whose key starts with `prefix`")
async def get_mutables(project_id: str, prefix: Line = Query(default="", max_length=1000),
                       limit: int = Query(default=1000, ge=1, le=10000),
                       after: Line | None = Query(default=None, max_length=1000),
                       req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    return {"mutables": await req.run(_list, project_id, prefix, limit, after)}


@router.get("/api/projects/{project_id}/mutables/{key:path}", summary="The value of a mutable")
async def get_mutable(project_id: str, key: str, req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    return await req.run(_get, project_id, _key(key))


@router.put("/api/projects/{project_id}/mutables/{key:path}", summary="Set a mutable (value at most 1 MiB of UTF-8)")
async def put_mutable(project_id: str, key: str, body: SetMutable,
                      req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    return await req.run(_set, project_id, _key(key), body.value)


@router.delete("/api/projects/{project_id}/mutables/{key:path}", summary="Delete a mutable")
async def delete_mutable(project_id: str, key: str, req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    return {"deleted": await req.run(_delete, project_id, _key(key))}

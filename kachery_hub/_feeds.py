"""Feeds: append-only logs of JSON messages in a project, followed live.

A feed belongs to a project. Reading (and following) takes the ``read`` role,
or a public-read project; appending takes ``write``. A feed nobody may read is
answered exactly like a feed that does not exist (404 ``feed_not_found``).

Messages are numbered from 0 without gaps. An append takes its numbers from
the feed's row (``message_count``) in the transaction that stores the
messages, under that row's lock, so a batch gets consecutive numbers, commits
whole or not at all, and numbers become visible in order: a reader by number
never sees a gap. Each message is stored as its canonical JSON (sorted keys,
compact separators, ASCII), as ``kachery_core.store_json`` writes it.

Followers use the event stream (Server-Sent Events): it sends what is there
from a number on, in batches, then waits for a wake-up (:mod:`._wakeup`) and
reads again by number. A lost wake-up costs at most one keep-alive period.

An append may carry an *append ID* (``"append_id"`` in its body, 16 to 64 letters, digits,
``_`` or ``-``; clients send 32 random hex digits, new for each append and the same on each try
of it), which makes it safe to send again after its answer was lost. The hub records
(feed, signing client, append ID) -> (first number, count, digest of the messages, time) in the
transaction that stores the messages, under that key's uniqueness: of two sends of one ID (a retry
landing on one replica while the original still runs on another) one commits, the other's
transaction rolls back on the key and it answers what the first got. An ID already recorded
answers its recorded result and stores nothing; with other messages it is refused (409
``append_id_reused``). Keyed by client, an ID another client sends is simply another append and
its answer says nothing of anyone else's. Records are kept :data:`APPEND_ID_SECONDS` (a day,
far beyond a client's few seconds of retries) and removed by ``kachery-hub gc``
(:mod:`._gc`, also its periodic run), so an append stays one statement; a hub never collected keeps
about 150 bytes per identified append. An append without an ID is stored each time it is sent.

Limits: ``MAX_FEED_BATCH_MESSAGES`` (10,000) messages per append, each at most
``MAX_FEED_MESSAGE_BYTES`` (1 MiB of canonical JSON), in a body of at most the
hub's JSON body limit (4 MiB); a page of messages holds at most 10,000.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import Connection, bindparam, select

from kachery_core import _constants
from kachery_core._serializers import canonical_json

from . import _database as tables
from ._auth import Caller, SignedRequest, in_thread, json_object_body, parse_decimal, signed_request
from ._database import Database
from ._projects import _RANK, require_role
from ._state import HubState
from ._streams import StreamSlot, event, event_stream
from ._text import Line
from ._wakeup import PG_CHANNEL
from .errors import (
    Conflict,
    FeedNotFound,
    Forbidden,
    HubError,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
)

router = APIRouter(tags=["feeds"])

FEED_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")  # as kachery_core._uris.parse_feed_uri
#: Messages in one page of ``GET .../messages`` and in one event of the stream.
MAX_PAGE = 10_000
EVENT_BATCH = 1_000
#: Numbers beyond this are refused (and cannot be reached: BIGINT).
MAX_NUMBER = 2**62
APPEND_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
#: How long an append ID is remembered (``kachery-hub gc`` removes older ones).
APPEND_ID_SECONDS = 86400.0


class InvalidAppendId(InvalidInput):
    status = 422  # as the hub answers a malformed field of other JSON bodies


class AppendIdReused(Conflict):
    code = "append_id_reused"


def _check_id(feed_id: str) -> str:
    if not FEED_ID_RE.fullmatch(feed_id):
        raise InvalidInput(f"{feed_id[:140]!r} is not a feed id (1 to 128 letters, digits, '_' or '-')")
    return feed_id


def channel(feed_id: str) -> str:
    """The wake-up channel of a feed."""
    return f"feed:{feed_id}"


# They run on every feed request: below SQLAlchemy (see _database.fetch_one).
_FEED_AND_ROLE = ("SELECT f.*, p.public_read, m.role AS caller_role FROM feeds f JOIN projects p ON p.id = f.project_id "
                  "LEFT OUTER JOIN members m ON m.project_id = f.project_id AND m.user_id = :user_id "
                  "WHERE f.feed_id = :feed_id")
# The feed's row lock (PostgreSQL) or the writer lock (SQLite) orders appenders.
_TAKE_NUMBERS = ("UPDATE feeds SET message_count = message_count + :n, last_append_at = :now "
                 "WHERE feed_id = :feed_id RETURNING message_count")
_COUNT = select(tables.feeds.c.message_count).where(tables.feeds.c.feed_id == bindparam("feed_id"))


@dataclass(frozen=True)
class Access:
    """What a reader of a feed may see: its project, whether it may append, and authors' emails."""

    feed_id: str
    project_id: str
    may_append: bool
    sees_authors: bool  # members see who appended; public readers do not
    row: Any


def require_feed(conn: Connection, who: Caller, feed_id: str, needed: str = "read") -> Access:
    """The feed if ``who`` may act on it with role ``needed``; 404 alike for absent and unreadable ones."""
    row = tables.fetch_one(conn, _FEED_AND_ROLE, {"feed_id": feed_id, "user_id": who.user_id})
    role = row.caller_role if row is not None and who.user_id is not None else None
    if row is None or not (row.public_read or role is not None):
        raise FeedNotFound(f"feed {feed_id!r} does not exist, or this client may not read it", feed_id=feed_id)
    may_append = role is not None and _RANK[role] >= _RANK["write"]
    if needed == "write" and not may_append:
        who.require_user()
        raise Forbidden(f"{who.email} has {role or 'public read'} access to the project of feed {feed_id!r}; "
                        "appending needs write", feed_id=feed_id, project_id=row.project_id)
    return Access(feed_id, row.project_id, may_append, role is not None, row)


def _info(access: Access) -> dict[str, Any]:
    row = access.row
    return {"feed_id": row.feed_id, "uri": f"kachery-feed://{row.feed_id}", "project_id": row.project_id,
            "label": row.label, "message_count": row.message_count, "last_append_at": row.last_append_at,
            "created_at": row.created_at, "can_append": access.may_append}


# ---------------------------------------------------------------- messages in, messages out


def require_json(request: Request) -> None:
    """Refuse a body not declared ``application/json`` (as the hub's other JSON endpoints do)."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json":
        raise UnsupportedMediaType(f"the body must be sent as application/json, not {kind[:80] or 'without a type'!r}")


def parse_messages(raw: bytes) -> list[str]:
    """The canonical JSON text of each message of an append body ``{"messages": [...]}``."""
    return parse_append(raw)[0]


def parse_append(raw: bytes) -> tuple[list[str], str | None]:
    """The messages' canonical JSON texts, and the append ID (None: none sent), of an append body."""
    shape = 'a JSON object {"messages": [...], "append_id": "..."} holding a list of messages'
    body = json_object_body(raw, shape)
    append_id = body.get("append_id")
    if append_id is not None and not (isinstance(append_id, str) and APPEND_ID_RE.fullmatch(append_id)):
        shown = repr(append_id)[:80] if isinstance(append_id, str) else f"a JSON {_json_kind(append_id)}"
        raise InvalidAppendId(f"append_id must be 16 to 64 letters, digits, '_' or '-' (e.g. 32 random hex digits), "
                              f"not {shown}")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidInput(f"the body must be {shape}")
    if not messages:
        raise InvalidInput("an append needs at least one message")
    if len(messages) > _constants.MAX_FEED_BATCH_MESSAGES:
        raise PayloadTooLarge(f"an append of {len(messages)} messages is over the limit of "
                              f"{_constants.MAX_FEED_BATCH_MESSAGES} messages per append")
    texts = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidInput(f"messages[{i}] is a JSON {_json_kind(message)}; a feed message must be a JSON object",
                               index=i)
        try:
            encoded = canonical_json(message)
        except (ValueError, RecursionError):  # numbers too large for a float parse as inf
            raise InvalidInput(f"messages[{i}] holds a number JSON cannot represent", index=i) from None
        if len(encoded) > _constants.MAX_FEED_MESSAGE_BYTES:
            raise PayloadTooLarge(f"messages[{i}] is {len(encoded)} bytes of JSON, over the limit of "
                                  f"{_constants.MAX_FEED_MESSAGE_BYTES} bytes per message", index=i)
        texts.append(encoded)
    return texts, append_id


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _number_text(value: float) -> str:
    return repr(value) if math.isfinite(value) else "null"


class _Authors:
    """Emails of who appended, as JSON text, looked up once per user (members only see them)."""

    def __init__(self, sees: bool) -> None:
        self.sees = sees
        self.known: dict[str, str] = {}

    def of(self, conn: Connection, user_id: str) -> str:
        if not self.sees:
            return "null"
        email = self.known.get(user_id)
        if email is None:
            row = conn.execute(_EMAIL, {"user_id": user_id}).first()
            email = self.known[user_id] = json.dumps(row.email if row is not None else None)
        return email


_EMAIL = select(tables.users.c.email).where(tables.users.c.id == bindparam("user_id"))
# The batches holding messages from `start` on: those that begin after the start of the largest batch
# that could hold it (an index range) and end after it.
_BATCHES_SQL = {
    "qmark": "SELECT first_number, count, bodies, lengths, appended_at, appended_by FROM feed_batches "
             "WHERE feed_id = ? AND first_number > ? AND first_number + count > ? ORDER BY first_number LIMIT ?",
    "format": "SELECT first_number, count, bodies, lengths, appended_at, appended_by FROM feed_batches "
              "WHERE feed_id = %s AND first_number > %s AND first_number + count > %s ORDER BY first_number LIMIT %s",
}
_INSERT_BATCH = ("INSERT INTO feed_batches (feed_id, first_number, count, bodies, lengths, appended_at, appended_by) "
                 "VALUES (:feed_id, :first, :n, :bodies, :lengths, :now, :by)")
_APPEND_PG = (
    "WITH numbers AS (UPDATE feeds SET message_count = message_count + :n, last_append_at = :now "
    "WHERE feed_id = :feed_id RETURNING message_count), "
    "batch AS (INSERT INTO feed_batches (feed_id, first_number, count, bodies, lengths, appended_at, appended_by) "
    "SELECT :feed_id, message_count - :n, :n, :bodies, :lengths, :now, :by FROM numbers) "
    f"SELECT message_count, pg_notify('{PG_CHANNEL}', CAST(:wake AS text) || CAST(message_count - 1 AS text)) "
    "FROM numbers"
)
# With an append ID: its record too. A second record of one key fails on the key (IntegrityError), which
# rolls the whole append back; the caller then answers the recorded one (see append_messages).
_RECORD = ("INSERT INTO feed_appends (feed_id, client_id, append_id, first_number, count, digest, appended_at) "
           "VALUES (:feed_id, :client, :append_id, :first, :n, :digest, :now)")
_APPEND_ID_PG = (
    "WITH numbers AS (UPDATE feeds SET message_count = message_count + :n, last_append_at = :now "
    "WHERE feed_id = :feed_id RETURNING message_count), "
    "batch AS (INSERT INTO feed_batches (feed_id, first_number, count, bodies, lengths, appended_at, appended_by) "
    "SELECT :feed_id, message_count - :n, :n, :bodies, :lengths, :now, :by FROM numbers), "
    "record AS (INSERT INTO feed_appends (feed_id, client_id, append_id, first_number, count, digest, appended_at) "
    "SELECT :feed_id, :client, :append_id, message_count - :n, :n, :digest, :now FROM numbers) "
    f"SELECT message_count, pg_notify('{PG_CHANNEL}', CAST(:wake AS text) || CAST(message_count - 1 AS text)) "
    "FROM numbers"
)
_RECORDED = ("SELECT first_number, count, digest, appended_at FROM feed_appends "
             "WHERE feed_id = :feed_id AND client_id = :client AND append_id = :append_id")
_BATCHES_PER_QUERY = 32


def _style(conn: Connection) -> str:
    return "qmark" if conn.dialect.paramstyle == "qmark" else "format"


def _slice(bodies: str, lengths: str, skip: int, take: int) -> str:
    """Messages ``skip`` to ``skip + take - 1`` of a batch, still joined by ','."""
    sizes = [int(x) for x in lengths.split(",")]
    if skip == 0 and take >= len(sizes):
        return bodies
    begin = sum(sizes[:skip]) + skip  # each message is followed by one ','
    end = begin + sum(sizes[skip:skip + take]) + take - 1
    return bodies[begin:end]


def read_page(conn: Connection, feed_id: str, start: int, limit: int, authors: _Authors) -> tuple[str, int, int]:
    """Messages ``start..`` (at most ``limit``) as the JSON of a page, their count, and the next number.

    A page is ``{"first": n, "runs": [[count, time, user], ...], "messages": [...]}``: the messages
    of one append share their time and author, so each run says them once (readers parse a
    number and an email per append, not per message).
    """
    # The driver's own cursor: this runs for every follower after every append, and for every page
    # of a catch-up read; SQLAlchemy's rows cost more than the query.
    sql = _BATCHES_SQL[_style(conn)]
    runs: list[str] = []
    parts: list[str] = []
    position = start
    while position - start < limit:
        rows = conn.exec_driver_sql(
            sql, (feed_id, position - _constants.MAX_FEED_BATCH_MESSAGES, position, _BATCHES_PER_QUERY)).fetchall()
        for first, count, bodies, lengths, appended_at, appended_by in rows:
            skip = position - first
            take = min(count - skip, limit - (position - start))
            parts.append(_slice(bodies, lengths, skip, take))
            runs.append(f"[{take},{_number_text(appended_at)},{authors.of(conn, appended_by)}]")
            position += take
            if position - start >= limit:
                break
        if len(rows) < _BATCHES_PER_QUERY:
            break
    page = f'{{"first":{start},"runs":[{",".join(runs)}],"messages":[{",".join(parts)}]}}'
    return page, position - start, position


# ---------------------------------------------------------------- work in a transaction


def _create(conn: Connection, who: Caller, project_id: str, label: str | None) -> dict[str, Any]:
    user_id = who.require_user()
    require_role(conn, who, project_id, "write")
    feed_id = tables.new_id("f") + tables.new_id()  # 33 characters, 128 random bits
    now = time.time()
    conn.execute(tables.feeds.insert().values(
        feed_id=feed_id, project_id=project_id, label=label, created_by=user_id, created_at=now, message_count=0))
    return {"feed_id": feed_id, "uri": f"kachery-feed://{feed_id}", "project_id": project_id, "label": label,
            "created_at": now, "message_count": 0}


def _list(conn: Connection, who: Caller, project_id: str, limit: int, after: str | None) -> list[dict[str, Any]]:
    require_role(conn, who, project_id, "read")
    f = tables.feeds
    q = select(f.c.feed_id, f.c.label, f.c.message_count, f.c.last_append_at, f.c.created_at).where(
        f.c.project_id == project_id)
    if after is not None:  # newest first; the page after feed `after`
        mark = conn.execute(select(f.c.created_at).where(f.c.feed_id == after, f.c.project_id == project_id)).first()
        if mark is None:
            raise InvalidInput(f"after={after!r} is not a feed of project {project_id!r}")
        q = q.where((f.c.created_at < mark.created_at) | ((f.c.created_at == mark.created_at) & (f.c.feed_id < after)))
    rows = conn.execute(q.order_by(f.c.created_at.desc(), f.c.feed_id.desc()).limit(limit)).all()
    return [{"feed_id": r.feed_id, "uri": f"kachery-feed://{r.feed_id}", "label": r.label,
             "message_count": r.message_count, "last_append_at": r.last_append_at, "created_at": r.created_at}
            for r in rows]


def _get(conn: Connection, who: Caller, feed_id: str) -> dict[str, Any]:
    return _info(require_feed(conn, who, feed_id))


@dataclass(frozen=True)
class LivePage:
    """An append as its followers in this process get it, without reading it back."""

    first: int
    count: int
    appended_at: float
    email: str | None
    messages: str  # the messages' JSON texts joined by ","

    def event(self, sees_authors: bool) -> bytes:
        user = json.dumps(self.email) if sees_authors else "null"
        page = (f'{{"first":{self.first},"runs":[[{self.count},{_number_text(self.appended_at)},{user}]],'
                f'"messages":[{self.messages}]}}')
        return event("messages", page, self.first + self.count - 1)


def _digest(joined: str) -> str:
    return hashlib.sha1(joined.encode("ascii")).hexdigest()


def _append(conn: Connection, who: Caller, hub: HubState, feed_id: str, raw: bytes) -> dict[str, Any]:
    require_feed(conn, who, feed_id, "write")
    user_id = who.require_user()
    texts, append_id = parse_append(raw)
    now = time.time()
    joined = ",".join(texts)
    batch = {"feed_id": feed_id, "n": len(texts), "bodies": joined, "lengths": ",".join([str(len(t)) for t in texts]),
             "now": now, "by": user_id}
    if append_id is not None:
        batch.update(client=who.client_id, append_id=append_id, digest=_digest(joined))
    if conn.dialect.name == "postgresql":
        # One statement, one round trip: the numbers, the batch (and its append ID), and the other hub
        # processes' wake-up (sent when the transaction commits) with the feed's new last number.
        sql = _APPEND_PG if append_id is None else _APPEND_ID_PG
        count = int(tables.fetch_one(conn, sql, {**batch, "wake": hub.wakeups.prefix(channel(feed_id))})[0])
    else:
        count = int(tables.fetch_one(conn, _TAKE_NUMBERS, batch)[0])
        tables.run_sql(conn, _INSERT_BATCH, {**batch, "first": count - len(texts)})
        if append_id is not None:
            tables.run_sql(conn, _RECORD, {**batch, "first": count - len(texts)})
    first = count - len(texts)
    live = LivePage(first, len(texts), now, who.email, joined) if len(texts) <= EVENT_BATCH else None
    return {"first_number": first, "count": len(texts), "message_count": count, "time": now, "live": live}


def _page(conn: Connection, who: Caller, feed_id: str, start: int, limit: int) -> str:
    access = require_feed(conn, who, feed_id)
    page, _, _ = read_page(conn, feed_id, start, limit, _Authors(access.sees_authors))
    count = conn.execute(_COUNT, {"feed_id": feed_id}).scalar_one()
    return f'{{"message_count":{count},{page[1:]}'



def _open(conn: Connection, who: Caller, feed_id: str) -> tuple[Caller, Access]:
    return who, require_feed(conn, who, feed_id)


# ---------------------------------------------------------------- endpoints


class CreateFeed(BaseModel):
    label: Line | None = Field(default=None, max_length=1000)


@router.post("/api/projects/{project_id}/feeds", summary="Create a feed in a project (needs write)")
async def post_feed(project_id: str, body: CreateFeed, req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    return await req.run(_create, project_id, body.label)


@router.get("/api/projects/{project_id}/feeds", summary="Feeds of a project, newest first")
async def get_feeds(project_id: str, limit: int = Query(default=1000, ge=1, le=10000),
                    after: str | None = Query(default=None, max_length=128),
                    req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    if after is not None:
        _check_id(after)
    return {"feeds": await req.run(_list, project_id, limit, after)}


@router.get("/api/feeds/{feed_id}", summary="A feed: its project, label, message count, whether the caller may append")
async def get_feed(feed_id: str, req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    return await req.run(_get, _check_id(feed_id))


@router.post("/api/feeds/{feed_id}/messages",
             summary="Append messages (JSON objects) to a feed, atomically with consecutive numbers (needs write)")
async def post_messages(feed_id: str, request: Request, req: SignedRequest = Depends(signed_request)) -> dict[str, Any]:
    require_json(request)
    return await append_messages(req, feed_id, request._body)


async def append_messages(req: SignedRequest, feed_id: str, raw: bytes) -> dict[str, Any]:
    """``POST /api/feeds/{feed_id}/messages``, over HTTP or a session."""
    feed_id = _check_id(feed_id)
    try:
        result: dict[str, Any] = await req.run(_append, req.hub, feed_id, raw)
    except Exception as e:
        if not _duplicate(e):
            raise
        # Its append ID was recorded first (an earlier try, or one still in flight that committed
        # while this one waited for the feed's lock): rolled back, this try answers that one's result.
        # The caller's write access was checked in the transaction just rolled back.
        recorded = await in_thread(_recorded, req, feed_id, raw)
        if recorded is None:
            raise
        return recorded
    # After the commit: followers here get the page itself (a large one they read back).
    req.hub.wakeups.notify(channel(feed_id), result["message_count"] - 1, result.pop("live"))
    return result


def _duplicate(e: Exception) -> bool:
    """A unique key violated: the driver's own IntegrityError (appends run below SQLAlchemy) or SQLAlchemy's."""
    return any(c.__name__ == "IntegrityError" for c in type(e).__mro__)


def _recorded(req: SignedRequest, feed_id: str, raw: bytes) -> dict[str, Any] | None:
    """What the append of ``raw``'s append ID got when it was stored, or None if it has no record."""
    texts, append_id = parse_append(raw)
    if append_id is None or req.signature is None:
        return None
    with req.hub.db.read() as conn:
        row = tables.fetch_one(conn, _RECORDED, {"feed_id": feed_id, "client": req.signature.client_id,
                                                 "append_id": append_id})
    if row is None:
        return None
    if row.digest != _digest(",".join(texts)):
        raise AppendIdReused(f"append_id {append_id!r} was already used on feed {feed_id!r} for other messages; "
                             "each append needs an ID of its own", feed_id=feed_id)
    return {"first_number": int(row.first_number), "count": int(row.count),
            "message_count": int(row.first_number) + int(row.count), "time": float(row.appended_at)}


@router.get("/api/feeds/{feed_id}/messages", summary="A page of a feed's messages from number `start`")
async def get_messages(feed_id: str, start: int = Query(default=0, ge=0, le=MAX_NUMBER),
                       limit: int = Query(default=1000, ge=1, le=MAX_PAGE),
                       req: SignedRequest = Depends(signed_request)) -> Response:
    body = await req.run(_page, _check_id(feed_id), start, limit)
    return Response(body, media_type="application/json")


@router.get(
    "/api/feeds/{feed_id}/events",
    summary="Follow a feed live (Server-Sent Events) from `start` or after the `Last-Event-ID` header",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}},
                     "description": "`id:` the number of the batch's last message; `event: messages`, "
                                    "`data:` a page {first, runs: [[count, time, user]], messages}; `: keep-alive` "
                                    "comments; `event: end` when `wait` seconds passed or access was lost"}},
)
async def get_events(feed_id: str, request: Request, start: int | None = Query(default=None, ge=0, le=MAX_NUMBER),
                     wait: float | None = Query(default=None, gt=0, le=86400),
                     keepalive: float | None = Query(default=None, ge=0.5, le=3600),
                     last_event_id: str | None = Header(default=None, max_length=32),
                     req: SignedRequest = Depends(signed_request)) -> StreamingResponse:
    feed_id = _check_id(feed_id)
    if start is None and last_event_id is not None:
        last = parse_decimal(last_event_id.strip())
        if last is None or last >= MAX_NUMBER:
            raise InvalidInput(f"Last-Event-ID must be a message number, not {last_event_id[:32]!r}")
        start = last + 1
    who, access = await req.run(_open, feed_id)
    return event_stream(req.hub, request, lambda slot: _events(req.hub, who, access, start or 0, wait, keepalive, slot))


async def _events(hub: HubState, who: Caller, access: Access, position: int, wait: float | None,
                  keepalive: float | None, slot: StreamSlot) -> AsyncIterator[bytes]:
    try:
        async for chunk in _stream(hub, who, access, position, wait, keepalive):
            yield chunk
    finally:
        slot.release()


async def _stream(hub: HubState, who: Caller, access: Access, position: int, wait: float | None,
                  keepalive: float | None) -> AsyncIterator[bytes]:
    db: Database = hub.db
    feed_id = access.feed_id
    authors = _Authors(access.sees_authors)
    recheck = hub.settings.feed_keepalive_seconds  # how often an idle stream re-checks the reader's access
    keepalive = keepalive or recheck
    checked = time.monotonic()
    deadline = None if wait is None else time.monotonic() + wait

    def read(start: int) -> tuple[str, int, int]:
        with db.read() as conn:
            return read_page(conn, feed_id, start, EVENT_BATCH, authors)

    def still_readable() -> HubError | None:
        try:
            with db.read() as conn:
                require_feed(conn, who, feed_id)
        except HubError as e:
            return e
        return None

    # Subscribed before the first read: a wake-up between a read and the wait is not lost.
    with hub.wakeups.subscribe(channel(feed_id)) as sub:
        yield b"retry: 1000\n\n"
        must_read = True
        while True:
            # Access is re-checked once a period, busy or idle: a member removed while the feed
            # keeps growing is cut off as surely as one whose feed went quiet.
            if time.monotonic() - checked >= recheck:
                checked = time.monotonic()
                refused = await in_thread(still_readable)
                if refused is not None:
                    yield event("end", json.dumps({"reason": "refused", **refused.payload()["error"]}))
                    return
            if must_read:
                page, count, position = await in_thread(read, position)
                if count:
                    yield event("messages", page, position - 1)
                    if count == EVENT_BATCH:
                        await asyncio.sleep(0)  # let other streams have the loop between batches
                        continue
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                yield event("end", '{"reason":"wait"}')
                return
            if await sub.wait(keepalive if left is None else min(keepalive, left)):
                # Appends made through this process come with their page: sent as they are when they
                # follow on from the position; anything else (a gap, another hub's append) is read.
                pages, bare = sub.take()
                if pages and time.monotonic() - checked >= recheck:
                    must_read = True  # the check first (next turn), then these from the database
                    continue
                for live in sorted(pages, key=lambda p: p.first):
                    if live.first == position:
                        yield live.event(access.sees_authors)
                        position += live.count
                must_read = bare >= position or any(live.first > position for live in pages)
                continue
            must_read = True
            yield b": keep-alive\n\n"

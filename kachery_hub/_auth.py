"""Who is calling: verification of signed requests (see ``kachery_core._signing``).

A request without signature headers is anonymous: it may read public
projects and nothing else. A signed request names a client; the client is
bound to a user once, by presenting a sign-in token (``_accounts``).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from kachery_core import _signing
from kachery_core._identity import verify_signature

from . import _database as tables
from ._state import HubState, state_of
from .errors import (
    BadSignature,
    ClientNotRegistered,
    ClockSkew,
    PayloadTooLarge,
    ReplayedRequest,
    Unauthenticated,
)


@dataclass(frozen=True)
class Caller:
    client_id: str | None = None
    user_id: str | None = None
    email: str | None = None
    is_admin: bool = False
    default_project_id: str | None = None
    body_sha1: str | None = None

    def require_client(self) -> str:
        if self.client_id is None:
            raise Unauthenticated(
                "this request must be signed by a client key; anonymous (ephemeral) access is read-only"
            )
        return self.client_id

    def require_user(self) -> str:
        client_id = self.require_client()
        if self.user_id is None:
            raise ClientNotRegistered(
                f"client {client_id} is not registered with this hub; sign in with a token first "
                "(kachery_core.init(hub_url=..., token=...) or KACHERY_HUB_TOKEN)"
            )
        return self.user_id


ANONYMOUS = Caller()


def _header(request: Request, name: str, pattern: re.Pattern[str]) -> str:
    value = request.headers.get(name)
    if value is None:
        raise BadSignature(f"signed request is missing the {name} header")
    if not pattern.fullmatch(value):
        raise BadSignature(f"header {name} is malformed: {value[:80]!r}")
    return value


def _path_and_query(request: Request) -> str:
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    path = raw.decode("latin-1")
    query = request.scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


def authenticate(hub: HubState, request: Request, body_sha1: str | None) -> Caller:
    """Verify a request's signature; ``body_sha1`` is the hash of the body when already read."""
    if _signing.HEADER_CLIENT not in request.headers and _signing.HEADER_SIGNATURE not in request.headers:
        return ANONYMOUS
    client_id = _header(request, _signing.HEADER_CLIENT, _signing.CLIENT_ID_RE)
    time_text = request.headers.get(_signing.HEADER_TIME, "")
    if not time_text.isdigit() or len(time_text) > 16:
        raise BadSignature(f"header {_signing.HEADER_TIME} must be milliseconds since the epoch, not {time_text[:40]!r}")
    nonce = _header(request, _signing.HEADER_NONCE, _signing.NONCE_RE)
    declared_sha1 = _header(request, _signing.HEADER_BODY_SHA1, _signing.SHA1_RE)
    signature = _header(request, _signing.HEADER_SIGNATURE, _signing.SIGNATURE_RE)

    request_time = int(time_text) / 1000.0
    now = time.time()
    skew = request_time - now
    limit = hub.settings.max_clock_skew_seconds
    if abs(skew) > limit:
        direction = "ahead of" if skew > 0 else "behind"
        raise ClockSkew(
            f"this computer's clock is {abs(skew):.1f} s {direction} the hub's clock "
            f"(at most {limit:.0f} s is accepted); set the clock right (e.g. enable NTP) and retry",
            skew_seconds=round(skew, 3),
        )
    if body_sha1 is not None and body_sha1 != declared_sha1:
        raise BadSignature(f"the request body does not match its {_signing.HEADER_BODY_SHA1} header")
    message = _signing.signing_message(
        method=request.method, host=request.headers.get("host", ""), path_and_query=_path_and_query(request),
        time_ms=int(time_text),
        nonce=nonce, body_sha1=declared_sha1, client_id=client_id,
    )
    if not verify_signature(client_id, message, signature):
        raise BadSignature("the request signature does not verify for this client key, method, host, path and body")
    with hub.db.begin() as conn:
        if not hub.db.remember_nonce(conn, f"{client_id}:{nonce}", request_time + limit + 1):
            raise ReplayedRequest("this signed request was already received once; a request cannot be replayed")
        row = conn.execute(
            select(tables.clients.c.user_id, tables.clients.c.default_project_id, tables.users.c.email,
                   tables.users.c.is_admin)
            .join(tables.users, tables.users.c.id == tables.clients.c.user_id)
            .where(tables.clients.c.client_id == client_id)
        ).first()
    if row is None:
        return Caller(client_id=client_id, body_sha1=declared_sha1)
    return Caller(
        client_id=client_id, user_id=row.user_id, email=row.email, is_admin=bool(row.is_admin),
        default_project_id=row.default_project_id, body_sha1=declared_sha1,
    )


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"request body of {length} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # lets FastAPI parse the JSON body we already consumed
    return body


async def caller(request: Request) -> Caller:
    """Dependency: the verified caller of a request with a (small) body."""
    hub = state_of(request)
    body = await _read_body(request, hub.settings.max_json_body_bytes)
    return await run_in_threadpool(authenticate, hub, request, hashlib.sha1(body).hexdigest())


async def streaming_caller(request: Request) -> Caller:
    """Dependency: the verified caller of an upload; the body is checked while it streams."""
    return await run_in_threadpool(authenticate, state_of(request), request, None)

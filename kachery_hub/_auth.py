"""Who is calling: verification of signed requests (see ``kachery_core._signing``).

A request without signature headers is anonymous: it may read public
projects and nothing else. A signed request names a client; the client is
bound to a user once, by presenting a sign-in token (``_accounts``).

Endpoints take one of three dependencies. ``signed_request`` (a small body)
and ``signed_upload`` (a streamed body) verify the signature and give a
:class:`SignedRequest`, whose ``run(work, ...)`` records the nonce, finds the
caller and does the work in one transaction, in one worker-thread hop: the
files and mutables endpoints, which clients call most, use these. ``caller``
gives the verified :class:`Caller` alone, for endpoints whose work opens its
own transactions.

Host binding: a signature covers the host of the hub URL the client was
given. The hub checks it against the hosts of its public URLs
(``Settings.public_urls``), not against whatever Host header arrived, so a
reverse proxy may rewrite Host, and a request signed for another hub (which
that hub's operator could replay here within the clock-skew window) is
refused with ``wrong_hub``. Nonces: a request whose signature verified
uses up its nonce whatever becomes of it (done, refused, or failed with a
500); only the replay itself records nothing new.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from sqlalchemy import Connection

from kachery_core import _signing
from kachery_core._identity import verify_signature

from . import _database as tables
from ._state import HubState, state_of
from .errors import (
    BadSignature,
    ClientNotRegistered,
    ClockSkew,
    InvalidInput,
    PayloadTooLarge,
    ReplayedRequest,
    Unauthenticated,
    WrongHub,
)

log = logging.getLogger("kachery_hub")


_DECIMAL = re.compile(r"[0-9]{1,18}")


def parse_decimal(value: str | bytes) -> int | None:
    """A number in a header, if it is 1 to 18 ASCII digits; else None.

    ``str.isdigit`` and ``int`` accept much more: "²" (isdigit, then int fails),
    "١٢", " 1", "+1", "1_0", and thousands of digits that ``int`` refuses.
    """
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return int(text) if _DECIMAL.fullmatch(text) else None


def content_length(request: Request) -> int | None:
    """The announced body size; None when not announced; a 400 when it is not a plain number."""
    text = request.headers.get("content-length")
    if text is None:
        return None
    length = parse_decimal(text)
    if length is None:
        raise InvalidInput(f"malformed Content-Length header {text[:40]!r} (expected a number of bytes)")
    return length


@dataclass(frozen=True)
class Caller:
    client_id: str | None = None
    user_id: str | None = None
    email: str | None = None
    is_admin: bool = False
    default_project_id: str | None = None

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
T = TypeVar("T")

# It runs on every signed request: below SQLAlchemy (see _database.fetch_one).
_CLIENT = ("SELECT c.user_id, c.default_project_id, u.email, u.is_admin FROM clients c "
           "JOIN users u ON u.id = c.user_id WHERE c.client_id = :client_id")


def _header(headers: Mapping[str, str], name: str, pattern: re.Pattern[str]) -> str:
    value = headers.get(name)
    if value is None:
        raise BadSignature(f"signed request is missing the {name} header")
    if not pattern.fullmatch(value):
        raise BadSignature(f"header {name} is malformed: {value[:80]!r}")
    return value


def path_and_query(scope: Mapping[str, Any]) -> str:
    """The raw path and query a request (HTTP or WebSocket) arrived with, as its client signed them."""
    path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


@dataclass(frozen=True)
class _Signature:
    """What a verified signature tells: who signed, and the nonce to remember until when."""

    client_id: str
    nonce: str
    remember_until: float
    body_sha1: str


def _verify_headers(hub: HubState, request: Request, body_sha1: str | None) -> _Signature | None:
    """Check a request's signature headers and signature (no database); None for an anonymous request.

    ``body_sha1`` is the hash of the body when it was read, None for an upload (checked as it streams).
    """
    return verify_signed(hub, request.method, request.headers, path_and_query(request.scope), body_sha1)


def verify_signed(hub: HubState, method: str, headers: Mapping[str, str], path_and_query: str,
                  body_sha1: str | None) -> _Signature | None:
    """The signature check of one request, however it came: an HTTP request, or a request sent
    on a session (:mod:`._sessions`), which carries the same headers and is verified the same way.
    ``headers`` is case-insensitive (header names as in :mod:`kachery_core._signing`, any case)."""
    if _signing.HEADER_CLIENT not in headers and _signing.HEADER_SIGNATURE not in headers:
        return None
    client_id = _header(headers, _signing.HEADER_CLIENT, _signing.CLIENT_ID_RE)
    time_text = headers.get(_signing.HEADER_TIME, "")
    time_ms = parse_decimal(time_text) if len(time_text) <= 16 else None
    if time_ms is None:
        raise BadSignature(f"header {_signing.HEADER_TIME} must be milliseconds since the epoch, not {time_text[:40]!r}")
    nonce = _header(headers, _signing.HEADER_NONCE, _signing.NONCE_RE)
    declared_sha1 = _header(headers, _signing.HEADER_BODY_SHA1, _signing.SHA1_RE)
    signature = _header(headers, _signing.HEADER_SIGNATURE, _signing.SIGNATURE_RE)

    request_time = time_ms / 1000.0
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

    def verifies(host: str, path_and_query: str) -> bool:
        message = _signing.signing_message(
            method=method, host=host, path_and_query=path_and_query, time_ms=time_ms,
            nonce=nonce, body_sha1=declared_sha1, client_id=client_id,
        )
        return verify_signature(client_id, message, signature)

    path = path_and_query
    host_header = headers.get("host", "").lower()
    # The Host header's own base first (one check in the usual case), then the others: a proxy may rewrite Host.
    bases = sorted(hub.settings.signing_bases, key=lambda base: base[0] != host_header)
    if not any(verifies(host, _with_prefix(prefix, path)) for host, prefix in bases):
        if host_header not in hub.settings.signed_hosts and verifies(host_header, path):
            raise _wrong_hub(hub, host_header)
        raise BadSignature("the request signature does not verify for this client key, method, host, path and body")
    # A nonce is remembered until its request's time can no longer be accepted.
    return _Signature(client_id, f"{client_id}:{nonce}", request_time + limit + 1, declared_sha1)


def _with_prefix(prefix: str, path: str) -> str:
    """The path a client signed, when a proxy stripped the public URL's path prefix before the hub."""
    if not prefix or path == prefix or path.startswith((prefix + "/", prefix + "?")):
        return path
    return prefix + path


def _wrong_hub(hub: HubState, signed_host: str) -> WrongHub:
    urls = hub.settings.public_urls
    if not urls:
        return WrongHub(
            f"this request was signed for {signed_host!r}, but this hub has no public URL configured, so it accepts "
            "no signed request (set Settings.public_urls, KACHERY_HUB_PUBLIC_URL or kachery-hub serve --public-url)",
            signed_host=signed_host, hub_urls=[],
        )
    return WrongHub(
        f"this request was signed for the hub at {signed_host!r}, but this hub is {', '.join(urls)}; a request "
        "meant for another hub is refused. If this hub is reached at that address, add it to the hub's public "
        "URLs (kachery-hub serve --public-url, or KACHERY_HUB_PUBLIC_URL)",
        signed_host=signed_host, hub_urls=list(urls),
    )


def _caller(hub: HubState, conn: Connection, signature: _Signature) -> Caller:
    """Record the nonce (refusing a replay) and look the client up, in ``conn``'s transaction."""
    if not hub.db.remember_nonce(conn, signature.nonce, signature.remember_until):
        raise ReplayedRequest("this signed request was already received once; a request cannot be replayed")
    row = tables.fetch_one(conn, _CLIENT, {"client_id": signature.client_id})
    if row is None:
        return Caller(client_id=signature.client_id)
    return Caller(
        client_id=signature.client_id, user_id=row.user_id, email=row.email, is_admin=bool(row.is_admin),
        default_project_id=row.default_project_id,
    )


@dataclass(frozen=True)
class SignedRequest:
    """A request whose signature verified, and whose caller is known in the transaction of its work.

    The signature is checked first, by the dependency, before FastAPI reads
    the body's fields (an Ed25519 check is ~0.1 ms of CPU, done on the event
    loop). Then one thread hop and one transaction: the nonce is recorded,
    the client looked up, and ``work(conn, caller, *args)`` runs and commits
    with them. If the work is refused or fails (a 500 rolls its transaction
    back), the nonce is recorded on its own afterwards, so such a request
    cannot be replayed later either.
    """

    hub: HubState
    signature: _Signature | None

    @property
    def body_sha1(self) -> str | None:
        """The body hash the client signed (for an upload: the sha1 of the file)."""
        return None if self.signature is None else self.signature.body_sha1

    def _run(self, work: Callable[..., T], args: tuple[Any, ...]) -> T:
        signature = self.signature
        try:
            with self.hub.db.begin() as conn:
                who = ANONYMOUS if signature is None else _caller(self.hub, conn, signature)
                return work(conn, who, *args)
        except ReplayedRequest:
            raise
        except Exception:
            if signature is not None:
                self._burn_nonce(signature)
            raise

    def _burn_nonce(self, signature: _Signature) -> None:
        try:
            with self.hub.db.begin() as conn:
                self.hub.db.remember_nonce(conn, signature.nonce, signature.remember_until)
        except Exception:
            # The request's own error is the one to report; this one goes to the log.
            log.exception("could not record the nonce of a failed request from client %s", signature.client_id)

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """``work(conn, caller, *args)`` in a worker thread, in the caller's transaction."""
        return await in_thread(self._run, work, args)


#: The threads database work runs in (as many as Starlette's default thread pool takes at once).
_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=40, thread_name_prefix="kachery-hub")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread, with this task's context variables (request IDs in logs).

    A plain executor hop: Starlette's ``run_in_threadpool`` (anyio) costs several times more per
    call, most of a small request's time on a session.
    """
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await asyncio.get_running_loop().run_in_executor(_THREADS, call)


def _only_caller(conn: Connection, who: Caller) -> Caller:
    return who


async def read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    """The whole body, refused (413) as soon as it is announced or counted over ``limit`` bytes."""
    length = content_length(request)
    if length is not None and length > limit:
        raise PayloadTooLarge(f"{what} of {length} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"{what} is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # lets FastAPI parse the body we already consumed
    return body


def _refuse_constant(name: str) -> Any:
    raise InvalidInput(f"the body cannot hold {name}: JSON has no such number")


def json_object_body(raw: bytes, expected: str = "a JSON object") -> dict[str, Any]:
    """A body parsed as strict JSON (no NaN or Infinity) that must be an object (``expected`` says
    which, for the error); 400 ``invalid_input`` otherwise."""
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, too deep
        if isinstance(e, InvalidInput):
            raise
        raise InvalidInput(f"the body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise InvalidInput(f"the body must be {expected}")
    return body


async def signed_request(request: Request) -> SignedRequest:
    """Dependency: a request with a (small) body, read, hashed and its signature verified.

    The endpoint then does its work with :meth:`SignedRequest.run`, which finds the caller.
    """
    hub = state_of(request)
    body = await read_body(request, hub.settings.max_json_body_bytes)
    return SignedRequest(hub, _verify_headers(hub, request, hashlib.sha1(body).hexdigest()))


async def caller(request: Request) -> Caller:
    """Dependency: the verified caller of a request with a (small) body, in a transaction of its own."""
    return await (await signed_request(request)).run(_only_caller)


async def signed_upload(request: Request) -> SignedRequest:
    """Dependency: an upload whose signature verified; its body is checked against the hash as it streams."""
    hub = state_of(request)
    return SignedRequest(hub, _verify_headers(hub, request, None))

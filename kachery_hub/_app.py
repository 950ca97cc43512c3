"""The hub's ASGI application: ``create_app(settings)``.

Every error leaves as JSON ``{"error": {"code": ..., "message": ...}}`` with a
4xx status when the request was at fault; validation errors, unknown routes
and wrong methods included. An unexpected failure is a 500 with code
``internal_error`` and no internals in the message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp

from kachery_core import _signing

from . import _accounts, _feeds, _files, _metrics, _mutables, _pages, _projects, _sessions, _signin, _tasks, _text
from ._auth import parse_decimal
from ._ratelimit import RateLimiter, RateLimitSignIns, client_key
from ._settings import Settings
from ._state import HubState
from .errors import HubError, error_body, send_error

log = logging.getLogger("kachery_hub")

_HTTP_CODES = {
    400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 413: "payload_too_large", 416: "range_not_satisfiable", 429: "rate_limited",
}


def _error(status: int, code: str, message: str, **extra: Any) -> Response:
    return Response(error_body(code, message, **extra), status_code=status, media_type="application/json")


async def _on_hub_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HubError)
    return _error(exc.status, exc.code, exc.message, **exc.extra)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    return _error(422, "invalid_request", "; ".join(problems) or "the request is not valid")


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such endpoint: {request.method} {request.url.path}"
    return _error(exc.status_code, code, detail)


async def _on_bad_text(request: Request, exc: Exception) -> Response:
    # JSON may carry lone surrogates ("\ud800"), which no database or UTF-8 encoder accepts.
    return _error(400, "invalid_input", "text in the request is not valid Unicode (lone surrogate characters)")


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _error(500, "internal_error", "the hub failed to handle this request; see its log")


class _LimitBodies:
    """Count request bytes as they arrive: size limits, a memory budget, a read timeout.

    A body announced over the limit is refused (413) before anything reads
    it; any other (chunked) as soon as the count passes the limit, whoever is
    reading it. API paths take ``api_limit``; browser pages, which post small
    forms, ``page_limit``; file uploads none (they stream to the byte store).

    The bytes that requests being read have received are held in memory until
    the request ends (a body is parsed whole), so they are budgeted: at most
    ``inflight_limit`` in all and ``address_limit`` for one client address. A
    request whose next bytes do not fit is answered 503 ``busy``; uploads,
    which hold one batch at a time, are not counted. A body that makes no
    progress for ``read_timeout`` seconds is answered 408 (uploads excepted:
    their writer's signature and role are checked before their first byte).

    An API request with no signature headers is anonymous, and anonymous
    access only reads: one carrying a body is answered 401 before any of it
    is read (no endpoint takes an unsigned body; this spares parsing one).

    Every answer given before its request's body was read carries ``Connection:
    close``, uploads included, so the server does not go on reading (and
    dropping) a body the hub did not want: these refusals, any 401, 404... the
    app sends without reading, the 400 of :class:`~kachery_hub._text.CheckUrlText`,
    the 429 of the sign-in rate limit and the 500 of an unexpected error. For
    that it is the outermost layer of the app, around Starlette's error
    middleware too (see :class:`_HubApp`), so every answer passes through it.
    """

    def __init__(self, app: Any, api_limit: int, page_limit: int, budget: BodyBudget, read_timeout: float) -> None:
        self.app = app
        self.api_limit = api_limit
        self.page_limit = page_limit
        self.budget = budget
        self.read_timeout = read_timeout

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        upload = _is_upload(scope["method"], path)
        limit = None if upload else self.api_limit if path.startswith("/api/") else self.page_limit
        length, chunked, signed = None, False, False
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                length = parse_decimal(value)
            elif name == b"transfer-encoding":
                chunked = True
            elif name in _SIGNATURE_HEADERS:
                signed = True
        if path.startswith("/api/") and not signed and (chunked or length):
            await _refuse_early(send, 401, "unauthenticated", "an unsigned (anonymous) request may not carry a body: "
                                "anonymous access is read-only; sign the request with a client key")
            return
        if limit is not None and length is not None and length > limit:
            message = f"request body of {length} bytes is over the limit of {limit} bytes"
            await _refuse_early(send, 413, "payload_too_large", message)
            return
        client = scope.get("client")
        address = client_key(str(client[0])) if client else ""
        received = held = 0
        body_read = not (chunked or length)
        refused = started = False

        async def refuse(status: int, code: str, message: str, **headers: str) -> Any:
            nonlocal refused
            refused = True
            if not started:
                await _refuse_early(send, status, code, message, **headers)
            # else the answer is under way and cannot change: the app's further messages are dropped, so the
            # answer stays incomplete, and the server closes the connection of an incomplete answer (uvicorn
            # logs "ASGI callable returned without completing response"); the client sees it cut short.
            return {"type": "http.disconnect"}

        async def counting_receive() -> Any:
            nonlocal received, held, body_read
            if refused:
                return {"type": "http.disconnect"}
            if body_read:
                return await receive()  # past the body: waiting for a disconnect, as long as it takes
            if upload:
                # Streamed to the byte store by a signed writer (checked before its first byte is read):
                # no budget, no limit, no timer per chunk on the path of every GiB uploaded.
                message = await receive()
                body_read = message["type"] != "http.request" or not message.get("more_body", False)
                return message
            try:
                async with asyncio.timeout(self.read_timeout):
                    message = await receive()
            except TimeoutError:
                return await refuse(408, "body_timeout", f"no byte of the request body arrived for "
                                    f"{self.read_timeout:g} s; send the body promptly")
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                received += size
                body_read = not message.get("more_body", False)
                if limit is not None and received > limit:
                    return await refuse(413, "payload_too_large", f"request body is over the limit of {limit} bytes")
                if size and not upload:
                    busy = self.budget.take(address, size)
                    if busy is not None:
                        return await refuse(503, "busy", busy, **{"Retry-After": "1"})
                    held += size
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal started
            if refused:
                return  # the refusal is the answer
            if message["type"] == "http.response.start":
                started = True
                if not body_read:
                    message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except ClientDisconnect:
            if started and not refused:
                raise
            # refused, or the client left before any answer: there is no one to tell
        except Exception:
            if not refused:
                raise  # after a refusal, the reader's complaint about the missing body is no news
        finally:
            if held:
                self.budget.give(address, held)


class BodyBudget:
    """The request bytes the hub holds at once: at most ``limit`` in all, and ``limit / ADDRESS_SHARE``
    (at least one largest body) for one client address. Shared by HTTP bodies and session frames;
    used on the event loop only."""

    def __init__(self, limit: int, largest_body: int) -> None:
        self.limit = limit
        self.address_limit = max(limit // ADDRESS_SHARE, largest_body)
        self.inflight = 0
        self.by_address: dict[str, int] = {}

    def take(self, address: str, size: int) -> str | None:
        """Hold ``size`` more bytes for ``address``; or, when they do not fit, why (nothing is held)."""
        mine = self.by_address.get(address, 0)
        if self.inflight + size > self.limit or mine + size > self.address_limit:
            whose = "from this address" if mine + size > self.address_limit else "in all"
            return f"the hub holds as many request bodies as it takes at once ({whose}); retry in a moment"
        self.inflight += size
        self.by_address[address] = mine + size
        return None

    def give(self, address: str, size: int) -> None:
        self.inflight -= size
        left = self.by_address.pop(address) - size
        if left:
            self.by_address[address] = left


#: One client address may hold at most 1/ADDRESS_SHARE of the in-flight body budget.
ADDRESS_SHARE = 4
_SIGNATURE_HEADERS = {_signing.HEADER_CLIENT.lower().encode(), _signing.HEADER_SIGNATURE.lower().encode()}


async def _refuse_early(send: Any, status: int, code: str, message: str, **headers: str) -> None:
    await send_error(send, status, code, message, {**headers, "Connection": "close"})  # do not read on


class _HubApp(FastAPI):
    """FastAPI with :class:`_LimitBodies` outside its whole middleware stack.

    ``add_middleware`` places middleware inside Starlette's ``ServerErrorMiddleware``,
    which answers 500s; the body limits must see that answer too.
    """

    body_limits: dict[str, Any]  # _LimitBodies' arguments, set by create_app

    def build_middleware_stack(self) -> ASGIApp:
        return _LimitBodies(super().build_middleware_stack(), **self.body_limits)


def _is_upload(method: str, path: str) -> bool:
    parts = path.split("/")  # /api/projects/<id>/files/<sha1>
    return method == "PUT" and len(parts) == 6 and parts[1:3] == ["api", "projects"] and parts[4] == "files"


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable, e.g. project_not_found, clock_skew")
    message: str = Field(description="for humans")


class ErrorBody(BaseModel):
    """Every error answer; some codes add fields (``skew_seconds`` for ``clock_skew``)."""

    error: ErrorDetail


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in ((400, "Bad input (invalid_input, hash_mismatch...)"), (401, "Unsigned, badly signed, replayed, skewed or unregistered"),
                         (403, "Not a member with the needed role"), (404, "No such thing, or not readable"),
                         (409, "Conflicts with the current state"), (413, "Body too large"),
                         (422, "Invalid request (wrong types, missing fields)"))
}


def create_app(settings: Settings, *, state: HubState | None = None) -> FastAPI:
    """The hub application for ``settings``; the database is migrated on creation."""
    hub = state if state is not None else HubState.open(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await hub.wakeups.aclose()
        if state is None:
            hub.close()

    app = _HubApp(
        title="kachery hub",
        version="1",
        description="Share content-addressed files and mutables between computers, by project.",
        lifespan=lifespan,
        docs_url=None,  # served by _pages from a package's files: no CDN
        redoc_url=None,
    )
    app.state.hub = hub
    app.add_exception_handler(HubError, _on_hub_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(UnicodeError, _on_bad_text)
    app.add_exception_handler(Exception, _on_unexpected)
    # Outermost (built around the rest): every answer, early ones and 500s included, passes its send.
    budget = BodyBudget(settings.max_inflight_body_bytes, max(settings.max_json_body_bytes, settings.max_form_body_bytes))
    app.state.body_budget = budget  # session frames count against it too (_sessions)
    app.body_limits = dict(api_limit=settings.max_json_body_bytes, page_limit=settings.max_form_body_bytes,
                           budget=budget, read_timeout=settings.body_read_timeout_seconds)
    app.add_middleware(_text.CheckUrlText)  # strict UTF-8, no control characters in path and query
    for module in (_mutables, _files, _feeds, _tasks, _sessions, _projects, _accounts, _signin, _pages):
        app.include_router(module.router, responses=_ERROR_RESPONSES)
    if settings.rate_limit_per_minute > 0:  # next: a refused sign-in costs nothing else
        app.add_middleware(RateLimitSignIns, limiter=RateLimiter(settings.rate_limit_per_minute,
                                                                 settings.resolved_rate_limit_burst))
    _metrics.install(app, hub)  # outermost added: request IDs and metrics for every answer; /metrics, /api/ready

    @app.get("/api/health", tags=["hub"], summary="Whether the hub is up")
    async def health() -> dict[str, Any]:
        # direct_transfers: file bytes go to presigned object-store URLs, not through the hub.
        return {"status": "ok", "api_version": 1, "direct_transfers": hub.store.direct}

    return app

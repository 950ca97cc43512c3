"""The hub's ASGI application: ``create_app(settings)``.

Every error leaves as JSON ``{"error": {"code": ..., "message": ...}}`` with a
4xx status when the request was at fault; validation errors, unknown routes
and wrong methods included. An unexpected failure is a 500 with code
``internal_error`` and no internals in the message.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import _accounts, _files, _mutables, _projects, _signin
from ._settings import Settings
from ._state import HubState
from .errors import HubError

log = logging.getLogger("kachery_hub")

_HTTP_CODES = {
    400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 413: "payload_too_large", 416: "range_not_satisfiable",
}


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


async def _on_hub_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HubError)
    return JSONResponse(exc.payload(), status_code=exc.status)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    return _error(422, "invalid_request", "; ".join(problems) or "the request is not valid")


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such endpoint: {request.method} {request.url.path}"
    return _error(exc.status_code, code, detail)


async def _on_bad_text(request: Request, exc: Exception) -> JSONResponse:
    # JSON may carry lone surrogates ("\ud800"), which no database or UTF-8 encoder accepts.
    return _error(400, "invalid_input", "text in the request is not valid Unicode (lone surrogate characters)")


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _error(500, "internal_error", "the hub failed to handle this request; see its log")


class _LimitJsonBodies:
    """Refuse an announced body over the limit before anything reads it (uploads excepted)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not _is_upload(scope["method"], scope["path"]):
            for name, value in scope.get("headers", ()):
                if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                    response = _error(413, "payload_too_large",
                                      f"request body of {int(value)} bytes is over the limit of {self.limit} bytes")
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


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
        if state is None:
            hub.close()

    app = FastAPI(
        title="kachery hub",
        version="1",
        description="Share content-addressed files and mutables between computers, by project.",
        lifespan=lifespan,
    )
    app.state.hub = hub
    app.add_exception_handler(HubError, _on_hub_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(UnicodeError, _on_bad_text)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_middleware(_LimitJsonBodies, limit=settings.max_json_body_bytes)
    for module in (_mutables, _files, _projects, _accounts, _signin):
        app.include_router(module.router, responses=_ERROR_RESPONSES)

    @app.get("/api/health", tags=["hub"], summary="Whether the hub is up")
    async def health() -> dict[str, Any]:
        # direct_transfers: file bytes go to presigned object-store URLs, not through the hub.
        return {"status": "ok", "api_version": 1, "direct_transfers": hub.store.direct}

    return app

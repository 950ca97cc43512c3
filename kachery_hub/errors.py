"""Every error the hub answers with.

Each class carries the HTTP status and a stable machine-readable ``code``; the
app turns any of them into ``{"error": {"code": ..., "message": ...}}``. Each
also inherits the built-in a Python caller would expect, as in kachery_core.
That body is built by :func:`error_body` only, wherever the answer comes from
(the app's handlers, the ASGI middlewares through :func:`send_error`, the
protocol's own 431/414).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any


def error_body(code: str, message: str, **extra: Any) -> bytes:
    """The JSON body of every error answer: ``{"error": {"code", "message", ...extra}}``."""
    content = {"error": {"code": code, "message": message, **extra}}
    return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


async def send_error(send: Callable[[dict[str, Any]], Awaitable[None]], status: int, code: str, message: str,
                     headers: Mapping[str, str] | None = None) -> None:
    """Answer an ASGI request with the hub's JSON error body (for middleware, which has no exception handlers)."""
    body = error_body(code, message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class HubError(Exception):
    """Base class: an answer the client caused (4xx) or a refusal."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, **extra: Any) -> None:
        self.message = message
        self.extra = extra
        super().__init__(message)

    def payload(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class InvalidInput(HubError, ValueError):
    code = "invalid_input"


class PayloadTooLarge(HubError, ValueError):
    status = 413
    code = "payload_too_large"


class HashMismatch(HubError, ValueError):
    status = 400
    code = "hash_mismatch"


class RangeNotSatisfiable(HubError, ValueError):
    status = 416
    code = "range_not_satisfiable"


class Unauthenticated(HubError, PermissionError):
    status = 401
    code = "unauthenticated"


class BadSignature(Unauthenticated):
    code = "bad_signature"


class WrongHub(Unauthenticated):
    """A request signed for another hub (or for an address this hub was not told it has)."""

    code = "wrong_hub"


class ClockSkew(Unauthenticated):
    code = "clock_skew"


class ReplayedRequest(Unauthenticated):
    code = "replayed_request"


class ClientNotRegistered(Unauthenticated):
    code = "client_not_registered"


class InvalidToken(Unauthenticated):
    code = "invalid_token"


class Forbidden(HubError, PermissionError):
    status = 403
    code = "forbidden"


class NotFound(HubError, LookupError):
    status = 404
    code = "not_found"


class ProjectNotFound(NotFound):
    code = "project_not_found"


class FileNotFound(NotFound):
    code = "file_not_found"


class UploadNotFound(NotFound):
    """A direct upload to complete is not in the object store (never sent, or not with that sha1)."""

    code = "upload_not_found"


class MutableNotFound(NotFound):
    code = "mutable_not_found"


class UnsupportedMediaType(HubError, ValueError):
    status = 415
    code = "unsupported_media_type"


class TooManyStreams(HubError):
    status = 429
    code = "too_many_streams"


class FeedNotFound(NotFound):
    code = "feed_not_found"


class UserNotFound(NotFound):
    code = "user_not_found"


class Conflict(HubError):
    status = 409
    code = "conflict"


class ConfigurationError(HubError, ValueError):
    """Bad settings given to the hub itself (raised at start, never over HTTP)."""

    status = 500
    code = "configuration_error"


class DirectUploadRequired(Conflict):
    """The hub keeps bytes in an object store; clients upload there with a presigned URL."""

    code = "direct_upload_required"

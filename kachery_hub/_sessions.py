"""Sessions: many signed requests on one WebSocket (``GET /api/session``).

A client that sends many small requests (a task backend, a notebook requesting tasks, a program
appending to a feed) opens one session and sends its requests on it as frames. Each frame is a
request as over HTTP: method, path and query, the same signature headers and a body; it is
verified the same way (signature, host, clock, and its nonce recorded, so no frame can be
replayed, on this session or any other) and answered by the same code as the HTTP endpoint.
Answers carry the frame's id and leave as they end: a long-poll does not hold up the frames
after it. What a session saves is the HTTP exchange around each request (parsing, routing,
dependencies, middleware), most of the hub's time for a small one.

Only the endpoints in :data:`ROUTES` are served on a session; another path is answered 404 (on
the session). Frames, both ways binary: one line of JSON, a newline, then the body bytes.

- request: ``{"id": 7, "method": "POST", "path": "/api/feeds/F/messages", "headers": {...}}``
  and the body. ``path`` is relative to the hub's public URL (as the client signed it, with
  the URL's path prefix before it); ``headers`` are the signature headers and ``host``.
- answer: ``{"id": 7, "status": 200}`` and the JSON body, an error's as over HTTP
  (``{"error": {"code", "message"}}``). A claim that asks for it (``"stream": true``) gets the jobs
  handed to it as they come, each as a part ``{"id": 7, "status": 200, "more": true}`` before the
  last answer, instead of one job per claim.

Who may: the upgrade request is signed too (``GET /api/session``, empty body) and must come
from a client registered to a user; an unsigned, badly signed, replayed or unregistered one is
refused with its HTTP error before the socket opens. Every frame must be signed by the
session's own client. Limits: a session is one of its address's streams
(``max_streams_per_address``); a frame holds at most ``max_json_body_bytes`` of body; a session
has at most :data:`MAX_INFLIGHT` frames in work (it reads no further until one ends), whose
bytes count against the hub's in-flight body budget as HTTP bodies do (503 ``busy`` past it).
A malformed frame (no head line, a head that is not the JSON above) closes the session (1003).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, WebSocket
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy import Connection
from starlette.datastructures import Headers
from starlette.websockets import WebSocketDisconnect

from . import _feeds, _metrics, _tasks
from ._auth import Caller, SignedRequest, json_object_body, path_and_query, verify_signed
from ._ratelimit import client_key
from ._state import HubState
from ._streams import PARTIAL, StreamSlot
from .errors import HubError, InvalidInput, NotFound, PayloadTooLarge, Unauthenticated, error_body

if TYPE_CHECKING:
    from ._app import BodyBudget

log = logging.getLogger("kachery_hub")
router = APIRouter(tags=["sessions"])

#: Frames of one session in work at once; the session reads the next one when one ends.
MAX_INFLIGHT = 64
#: Longest head line of a frame (its JSON: id, method, path, signature headers).
MAX_HEAD_BYTES = 8192
_EMPTY_SHA1 = hashlib.sha1(b"").hexdigest()
# What a signed path may hold: printable ASCII (anything else is percent-encoded by clients).
_PATH_TEXT = re.compile(r"/[\x21-\x7e]{0,2047}")


class InvalidRequest(HubError):
    status = 422
    code = "invalid_request"


def _number(query: dict[str, str], name: str, high: float) -> float:
    """A query number as the HTTP endpoints take it (0 <= value <= high, default 0)."""
    text = query.get(name)
    if text is None:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequest(f"query.{name}: Input should be a valid number") from None
    if not 0 <= value <= high:
        raise InvalidRequest(f"query.{name}: Input should be between 0 and {high:g}")
    return value


def _claim_body(raw: bytes) -> _tasks.Claim:
    try:
        return _tasks.Claim.model_validate(json_object_body(raw))
    except ValidationError as e:
        problems = [f"body.{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
                    for err in e.errors()[:5]]
        raise InvalidRequest("; ".join(problems) or "the request is not valid") from None


Handler = Callable[[SignedRequest, dict[str, str], dict[str, str], bytes], Awaitable[Any]]
_TASKS = "/api/projects/{project_id}/tasks"


def _served(method: str, template: str, handler: Handler) -> tuple[str, str, re.Pattern[str], Handler]:
    """A route: ``template`` as HTTP routes spell it (the metrics' label), matched by a pattern made from it."""
    return method, template, re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)), handler


#: (method, template, path pattern, handler): the endpoints a session serves, each by its HTTP endpoint's code.
ROUTES: tuple[tuple[str, str, re.Pattern[str], Handler], ...] = (
    _served("POST", _TASKS + "/requests",
            lambda req, p, q, body: _tasks.request_job(req, p["project_id"], body,
                                                       _number(q, "wait", _tasks.MAX_CLAIM_WAIT))),
    _served("POST", _TASKS + "/requests/batch",
            lambda req, p, q, body: _tasks.request_jobs(req, p["project_id"], body)),
    _served("POST", _TASKS + "/jobs/wait",
            lambda req, p, q, body: _tasks.wait_jobs(req, p["project_id"], body)),
    _served("GET", _TASKS + "/jobs/{job_id}",
            lambda req, p, q, body: _tasks.read_job(req, p["project_id"], p["job_id"],
                                                    _number(q, "wait", _tasks.MAX_CLAIM_WAIT))),
    _served("POST", _TASKS + "/backends/{backend_id}/claim",
            lambda req, p, q, body: _tasks.claim_jobs(req, p["project_id"], p["backend_id"], _claim_body(body))),
    _served("POST", _TASKS + "/jobs/{job_id}/complete",
            lambda req, p, q, body: _tasks.complete_job(req, p["project_id"], p["job_id"], body)),
    _served("POST", "/api/feeds/{feed_id}/messages",
            lambda req, p, q, body: _feeds.append_messages(req, p["feed_id"], body)),
)
#: The metrics' route label of a frame no route matched.
UNMATCHED = "unmatched"


def _route(method: str, path: str) -> tuple[Handler, dict[str, str], str]:
    """The handler, path parameters and route template of a frame's ``method path``."""
    allowed = False
    for m, template, pattern, handler in ROUTES:
        match = pattern.fullmatch(path)
        if match is not None:
            if m == method:
                # Percent-decoded as Starlette decodes HTTP path parameters; strict UTF-8 (see _text).
                return handler, {k: unquote(v, errors="strict") for k, v in match.groupdict().items()}, template
            allowed = True
    if allowed:
        raise _MethodNotAllowed(f"{method} is not served on {path} on a session")
    raise NotFound(f"no such endpoint on a session: {method} {path[:200]} (a session serves task requests, "
                   "jobs, claims, completions and feed appends; send others over HTTP)")


class _MethodNotAllowed(HubError):
    status = 405
    code = "method_not_allowed"


class _BadFrame(Exception):
    """A frame that is not a request at all: the session ends."""


def _parse(frame: bytes) -> tuple[int, str, str, dict[str, str], bytes]:
    end = frame.find(b"\n", 0, MAX_HEAD_BYTES + 1)
    if end < 0:
        raise _BadFrame(f"a frame must start with a JSON head line of at most {MAX_HEAD_BYTES} bytes")
    try:
        head = json.loads(frame[:end])
    except (ValueError, RecursionError):
        raise _BadFrame("a frame's head line is not JSON") from None
    if not isinstance(head, dict):
        raise _BadFrame("a frame's head must be a JSON object")
    ident, method, path, headers = head.get("id"), head.get("method"), head.get("path"), head.get("headers")
    if (not isinstance(ident, int) or isinstance(ident, bool) or not 0 <= ident < 2**53
            or not isinstance(method, str) or not isinstance(path, str) or not isinstance(headers, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())):
        raise _BadFrame('a frame\'s head must be {"id": <int>, "method": <str>, "path": <str>, "headers": {<str>: <str>}}')
    return ident, method, path, headers, frame[end + 1:]


def _open(conn: Connection, who: Caller) -> Caller:
    who.require_user()
    return who


async def _deny(ws: WebSocket, e: HubError) -> None:
    """Refuse the upgrade with the HTTP error (when the server can send one), else close at once."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(Response(error_body(e.code, e.message, **e.extra), status_code=e.status,
                                               media_type="application/json"))
    else:
        await ws.close(code=1008, reason=e.message[:120])


@router.websocket("/api/session")
async def session(ws: WebSocket) -> None:
    """One client's session: signed requests as frames, answered by id (see the module's docstring)."""
    hub: HubState = ws.app.state.hub
    address = client_key(ws.client.host) if ws.client else ""
    try:
        slot = StreamSlot(hub, address)
    except HubError as e:
        await _deny(ws, e)
        return
    try:
        try:
            signature = verify_signed(hub, "GET", ws.headers, path_and_query(ws.scope), _EMPTY_SHA1)
            if signature is None:
                raise Unauthenticated("a session is opened by a signed request (GET /api/session signed by a "
                                      "registered client); anonymous clients use HTTP")
            who: Caller = await SignedRequest(hub, signature).run(_open)
        except HubError as e:
            await _deny(ws, e)
            return
        await ws.accept()
        _metrics.count_session(hub, 1)
        try:
            await _serve(ws, hub, address, str(who.client_id))
        finally:
            _metrics.count_session(hub, -1)
    finally:
        slot.release()


async def _serve(ws: WebSocket, hub: HubState, address: str, client_id: str) -> None:
    budget: BodyBudget = ws.app.state.body_budget  # shared with HTTP bodies (_app)
    room = asyncio.Semaphore(MAX_INFLIGHT)
    sending = asyncio.Lock()
    working: set[asyncio.Task[None]] = set()

    async def answer(ident: int, status: int, body: bytes, more: bool = False) -> None:
        head = b'{"id":%d,"status":%d,"more":true}\n' if more else b'{"id":%d,"status":%d}\n'
        async with sending:
            await ws.send_bytes(head % (ident, status) + body)

    async def part(ident: int, payload: Any) -> None:
        await answer(ident, 200, json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode(), more=True)

    async def work(ident: int, method: str, path: str, headers: dict[str, str], body: bytes, size: int) -> None:
        PARTIAL.set(functools.partial(part, ident))  # (this task's own context)
        start = time.perf_counter()
        route = [UNMATCHED]
        status = 499  # what it stays if the work is cancelled: the client went away (as nginx logs it)
        try:
            status, payload = 200, await _handle(hub, client_id, method, path, headers, body, route)
        except HubError as e:
            status, payload = e.status, error_body(e.code, e.message, **e.extra)
        except UnicodeError:
            status, payload = 400, error_body("invalid_input", "text in the request is not valid Unicode")
        except Exception:
            log.exception("unexpected error on a session request %s %s", method, path[:200])
            status, payload = 500, error_body("internal_error", "the hub failed to handle this request; see its log")
        finally:
            budget.give(address, size)
            room.release()
            _metrics.count_session_request(hub, method, route[0], status, time.perf_counter() - start)
        try:
            await answer(ident, status, payload)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client left: no one to tell

    try:
        while True:
            await room.acquire()
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            frame = message.get("bytes")
            if frame is None:
                text = message.get("text")
                frame = text.encode() if isinstance(text, str) else b""
            try:
                ident, method, path, headers, body = _parse(frame)
            except _BadFrame as e:
                await ws.close(code=1003, reason=str(e)[:120])
                return
            if len(body) > hub.settings.max_json_body_bytes:
                room.release()
                error = PayloadTooLarge(f"request body of {len(body)} bytes is over the limit of "
                                        f"{hub.settings.max_json_body_bytes} bytes")
                await answer(ident, error.status, error_body(error.code, error.message))
                continue
            busy = budget.take(address, len(frame))
            if busy is not None:
                room.release()
                await answer(ident, 503, error_body("busy", busy))
                continue
            task = asyncio.create_task(work(ident, method, path, headers, body, len(frame)))
            working.add(task)
            task.add_done_callback(working.discard)
    except WebSocketDisconnect:
        return
    finally:
        for task in list(working):
            task.cancel()


async def _handle(hub: HubState, client_id: str, method: str, path: str, headers: dict[str, str],
                  body: bytes, route: list[str]) -> bytes:
    """The answer's body; ``route[0]`` is set to the route template once the path matched one (metrics)."""
    if not _PATH_TEXT.fullmatch(path):
        raise InvalidInput("a request path on a session must be printable ASCII starting with '/' "
                           "(percent-encode the rest), at most 2048 characters")
    bare, _, query_text = path.partition("?")
    handler, params, route[0] = _route(method, bare)
    signature = verify_signed(hub, method, Headers(headers), path, hashlib.sha1(body).hexdigest())
    if signature is None:
        raise Unauthenticated("every request on a session must be signed")
    if signature.client_id != client_id:
        raise Unauthenticated("a request on a session must be signed by the client that opened it")
    query = dict(parse_qsl(query_text, keep_blank_values=True, errors="strict"))
    result = await handler(SignedRequest(hub, signature), params, query, body)
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()

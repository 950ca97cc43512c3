"""A session with a hub: many signed requests on one WebSocket (the hub side is ``kachery_hub._sessions``).

The requests a program sends most (task requests and job waits, a backend's claims and
completions, feed appends) go on one session per hub and client when the hub offers one: each
is signed exactly as over HTTP and answered by the same code on the hub, without an HTTP
exchange around it. Answers come back by request id, so a long-poll (a claim, a wait) does not
hold up the requests sent after it from other threads.

One socket and one reader thread per session; a request waits on a future that the reader
resolves. When the socket breaks, every request waiting on it fails with
:class:`~kachery_core.errors.HubUnavailableError` (the callers' retries apply, as over HTTP) and
the next request opens a new session. A hub without sessions (404), or one that cannot be
reached for one, is asked over HTTP instead. ``KACHERY_HUB_SESSIONS=0`` sends everything over
HTTP.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from . import _signing
from ._identity import ClientKeys
from .errors import HubUnavailableError

log = logging.getLogger("kachery_core")

#: Requests of one session in flight at once (below the hub's own bound, so it always reads on).
MAX_INFLIGHT = 32
#: Seconds to open a session (connect and upgrade) before HTTP is used instead.
OPEN_TIMEOUT = 10.0


class SessionRefused(Exception):
    """The hub answered the upgrade with an HTTP error: ``status`` and the body it sent."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"the hub refused a session: HTTP {status}")
        self.status = status
        self.body = body


class HubSession:
    """One open session: :meth:`request` sends a signed request and waits for its answer."""

    def __init__(self, url: str, host: str, keys: ClientKeys, client_id: str) -> None:
        self.url = url
        self._host = host  # as HTTP requests to the hub sign it (their Host header)
        self._prefix = urlsplit(url).path.rstrip("/")
        self._keys = keys
        self._client_id = client_id
        self._proto: Any = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # the protocol state and the pending table
        self._send_lock = threading.Lock()  # whole frames onto the socket, one at a time
        self._room = threading.BoundedSemaphore(MAX_INFLIGHT)
        self._pending: dict[int, concurrent.futures.Future[tuple[int, bytes]]] = {}
        self._parts: dict[int, Callable[[bytes], None]] = {}
        self._next_id = 0
        self._broken: str | None = None

    # opening
    @classmethod
    def open(cls, url: str, host: str, keys: ClientKeys, client_id: str) -> HubSession:
        """Connect and upgrade; raises :class:`SessionRefused` for an HTTP answer, OSError when unreachable."""
        session = cls(url, host, keys, client_id)
        session._connect()
        threading.Thread(target=session._read, name="kachery-hub-session", daemon=True).start()
        return session

    def _connect(self) -> None:
        from websockets.client import ClientProtocol
        from websockets.http11 import Response
        from websockets.uri import parse_uri

        parts = urlsplit(self.url)
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        sock = socket.create_connection((parts.hostname or "", port), timeout=OPEN_TIMEOUT)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if secure:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
            ws_url = ("wss://" if secure else "ws://") + parts.netloc + self._prefix + "/api/session"
            proto = ClientProtocol(parse_uri(ws_url), max_size=None)
            request = proto.connect()
            for name, value in self._signature("GET", "/api/session", _signing.EMPTY_SHA1).items():
                if name != "host":
                    request.headers[name] = value
            proto.send_request(request)
            sock.sendall(b"".join(proto.data_to_send()))
            while True:
                data = sock.recv(65536)
                if data:
                    proto.receive_data(data)
                else:
                    proto.receive_eof()
                for event in proto.events_received():
                    if isinstance(event, Response):
                        if event.status_code != 101:
                            raise SessionRefused(event.status_code, bytes(event.body or b""))
                        sock.settimeout(None)
                        self._proto, self._sock = proto, sock
                        return
                if proto.handshake_exc is not None:
                    response = getattr(proto.handshake_exc, "response", None)
                    if response is not None:
                        raise SessionRefused(response.status_code, bytes(response.body or b""))
                    raise OSError(f"the session upgrade failed: {proto.handshake_exc}")
                if not data:
                    raise OSError("the hub closed the connection during the session upgrade")
        except BaseException:
            sock.close()
            raise

    # requests
    def _signature(self, method: str, path: str, body_sha1: str) -> dict[str, str]:
        time_ms, nonce = _signing.now_ms(), _signing.new_nonce()
        message = _signing.signing_message(method=method, host=self._host, path_and_query=self._prefix + path,
                                           time_ms=time_ms, nonce=nonce, body_sha1=body_sha1, client_id=self._client_id)
        return {"host": self._host, _signing.HEADER_CLIENT: self._client_id, _signing.HEADER_TIME: str(time_ms),
                _signing.HEADER_NONCE: nonce, _signing.HEADER_BODY_SHA1: body_sha1,
                _signing.HEADER_SIGNATURE: self._keys.sign(message)}

    @property
    def alive(self) -> bool:
        return self._broken is None

    def request(self, method: str, path: str, body: bytes, timeout: float,
                on_part: Callable[[bytes], None] | None = None) -> tuple[int, bytes]:
        """Send ``method path`` (relative to the hub URL, query included) with ``body``; (status, answer body).

        ``on_part``: called with each part the hub sends ahead of its last answer (a claim's jobs as
        they come), on the session's reader thread: it must not block.
        """
        if not self._room.acquire(timeout=timeout):
            raise HubUnavailableError(self.url, f"no room on the session with the hub within {timeout:g} s")
        try:
            future: concurrent.futures.Future[tuple[int, bytes]] = concurrent.futures.Future()
            headers = self._signature(method, path, hashlib.sha1(body).hexdigest())
            with self._lock:
                if self._broken is not None:
                    raise HubUnavailableError(self.url, self._broken)
                self._next_id += 1
                ident = self._next_id
                self._pending[ident] = future
                if on_part is not None:
                    self._parts[ident] = on_part
                head = json.dumps({"id": ident, "method": method, "path": path, "headers": headers},
                                  separators=(",", ":")).encode()
                self._proto.send_binary(head + b"\n" + body)
                out = self._proto.data_to_send()
            self._send(out)
            try:
                return future.result(timeout)
            except concurrent.futures.TimeoutError:
                raise HubUnavailableError(self.url, f"the hub did not answer within {timeout:g} s") from None
            finally:
                with self._lock:
                    self._pending.pop(ident, None)
                    self._parts.pop(ident, None)
        finally:
            self._room.release()

    def _send(self, chunks: list[bytes]) -> None:
        if not chunks:
            return
        try:
            with self._send_lock:
                assert self._sock is not None
                self._sock.sendall(b"".join(chunks))
        except OSError as e:
            self._break(f"the session with the hub broke: {e}")

    # answers
    def _read(self) -> None:
        from websockets.frames import Opcode

        assert self._sock is not None
        partial: list[bytes] = []
        try:
            while True:
                data = self._sock.recv(262144)
                with self._lock:
                    if data:
                        self._proto.receive_data(data)
                    else:
                        self._proto.receive_eof()
                    events = self._proto.events_received()
                    out = self._proto.data_to_send()  # pongs, the closing handshake
                self._send(out)
                for frame in events:
                    if frame.opcode in (Opcode.BINARY, Opcode.TEXT, Opcode.CONT):
                        partial.append(bytes(frame.data))
                        if frame.fin:
                            self._answer(b"".join(partial))
                            partial = []
                    elif frame.opcode == Opcode.CLOSE:
                        self._break("the hub closed the session")
                        return
                if not data:
                    self._break("the hub closed the session")
                    return
        except Exception as e:  # noqa: BLE001 - a reset socket, a protocol error: the session is over
            self._break(f"the session with the hub broke: {e}")

    def _answer(self, message: bytes) -> None:
        head, _, body = message.partition(b"\n")
        try:
            meta = json.loads(head)
            ident, status, more = int(meta["id"]), int(meta["status"]), bool(meta.get("more"))
        except (ValueError, KeyError, TypeError):
            self._break("the hub sent a malformed answer on the session")
            return
        if more:
            with self._lock:
                on_part = self._parts.get(ident)
            if on_part is not None:
                try:
                    on_part(body)
                except Exception:  # noqa: BLE001 - the caller's; the session goes on
                    log.exception("a part of an answer on the session was not taken")
            return
        with self._lock:
            future = self._pending.get(ident)
        if future is not None and not future.done():
            future.set_result((status, body))

    def _break(self, why: str) -> None:
        with self._lock:
            if self._broken is None:
                self._broken = why
            waiting = list(self._pending.values())
            self._pending.clear()
        for future in waiting:
            if not future.done():
                future.set_exception(HubUnavailableError(self.url, why))
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._break("the session was closed")


#: Open sessions by (hub URL, client ID); hubs not to ask again before a time (time.monotonic()).
_sessions: dict[tuple[str, str], HubSession] = {}
_not_before: dict[str, float] = {}
_open_lock = threading.Lock()
#: How long HTTP is used alone after a hub could not open a session (seconds); a hub without
#: sessions (404) is not asked again by this process.
RETRY_AFTER = 5.0


def session_for(url: str, host: str, keys: ClientKeys, client_id: str) -> HubSession | SessionRefused | None:
    """The open session with ``url`` for this client: opened on first use; None to use HTTP now.

    The hub's HTTP refusal of the upgrade itself (a 401 for a client it does not know yet, ...)
    is returned for the caller to handle as it handles HTTP errors.
    """
    key = (url, client_id)
    session = _sessions.get(key)
    if session is not None and session.alive:
        return session
    if time.monotonic() < _not_before.get(url, 0.0):
        return None
    with _open_lock:
        session = _sessions.get(key)
        if session is not None and session.alive:
            return session
        try:
            session = HubSession.open(url, host, keys, client_id)
        except ImportError:  # no websockets package: HTTP does everything
            _not_before[url] = float("inf")
            return None
        except SessionRefused as e:
            if e.status == 401 and _hub_error(e.body):
                return e  # the hub does not take this client (yet): the caller signs in, or reports it
            # A hub without sessions (an older one answers 403 or 404), a proxy that does not pass them:
            # not asked again. A full hub (429, 503): HTTP now, a session again later.
            _not_before[url] = time.monotonic() + RETRY_AFTER if e.status in (429, 503) else float("inf")
            return None
        except (OSError, ValueError):
            _not_before[url] = time.monotonic() + RETRY_AFTER
            return None
        _sessions[key] = session
        return session


def _hub_error(body: bytes) -> bool:
    """Whether ``body`` is the hub's JSON error (``{"error": {"code": ...}}``), not some server's page."""
    try:
        return isinstance(json.loads(body)["error"]["code"], str)
    except (ValueError, KeyError, TypeError):
        return False


def close_sessions() -> None:
    """Close every session of this process."""
    with _open_lock:
        for session in _sessions.values():
            session.close()
        _sessions.clear()
        _not_before.clear()

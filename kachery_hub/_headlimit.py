"""A limit on the size of a request's head (request line and headers) for ``kachery-hub serve``.

uvicorn's httptools protocol keeps no such limit, and the parser grows a
header by concatenation as its bytes arrive: one endless header costs time
quadratic in its size on the event loop, and every other request waits. Here
the bytes of a head are counted as they arrive; past the limit the hub answers
431 with its JSON error body and closes the connection, after reading and
dropping for a moment what is still on its way, so that the client sees the
answer rather than a reset. Only bytes that arrive while a head is incomplete
count, so bodies and keep-alive connections are unaffected; a head may exceed
the limit by at most one read before it is refused.

Without httptools, uvicorn's h11 protocol is used with the same limit as its
``h11_max_incomplete_event_size`` (h11 answers 400 there).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

#: How long a refused connection is read (and dropped) before it is closed.
LINGER_SECONDS = 1.0


def _refusal(limit: int) -> bytes:
    body = json.dumps({"error": {"code": "headers_too_large",
                                 "message": f"the request line and headers are over the limit of {limit} bytes"}}).encode()
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)) + body


def http_options(max_head_bytes: int) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``: an HTTP protocol that refuses a head over ``max_head_bytes``."""
    try:
        import httptools  # noqa: F401
    except ImportError:  # uvicorn[standard] brings httptools; without it, h11 keeps the limit
        return {"http": "h11", "h11_max_incomplete_event_size": max_head_bytes}
    return {"http": head_limited_protocol(max_head_bytes)}


def head_limited_protocol(max_head_bytes: int) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, refusing a head over ``max_head_bytes`` with 431."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    refusal = _refusal(max_head_bytes)

    class HeadLimitedProtocol(HttpToolsProtocol):
        _in_head = True  # between requests, or within a request line and headers
        _head_bytes = 0
        _refused = False

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # answered already: drop what is still coming
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > max_head_bytes and not self.transport.is_closing():
                self._refuse()

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_head, self._head_bytes = True, 0
            super().on_message_complete()

        def _refuse(self) -> None:
            self._refused = True
            if self.cycle is not None and not self.cycle.response_complete:
                self.transport.close()  # an earlier request's answer is still being sent on this connection
                return
            self.transport.write(refusal)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

    return HeadLimitedProtocol

"""A limit on the size of a request's head (request line and headers) for ``kachery-hub serve``.

uvicorn's httptools protocol keeps no such limit, and the parser grows a
header by concatenation as its bytes arrive: one endless header costs time
quadratic in its size on the event loop, and every other request waits. Here
the bytes of a head are counted as they arrive; past the limit the hub answers
431 with its JSON error body and closes the connection, after reading and
dropping for a moment what is still on its way, so that the client sees the
answer rather than a reset. A head that arrived whole in one read is measured
when it is complete (request line plus header fields), so an over-long
request line gets the same 431; a request target over 65,535 bytes, which
httptools' URL parser cannot take, is answered 414 ``uri_too_long``.

What counts: every read that arrives while no body byte has since been seen:
a head, and the framing of a chunked body (chunk-size lines and, after the last
chunk, trailer fields, which uvicorn would otherwise add to the request's
headers and which httptools also grows by concatenation). A body byte resets
the count, so bodies of any size and keep-alive connections are unaffected; a
head may exceed the limit by at most one read before it is refused. Trailer
fields are dropped (the hub never reads them).

The subclass relies on parts of uvicorn's ``HttpToolsProtocol`` that are not
public (its parser callbacks, ``send_400_response``, ``url``, ``headers``,
``pipeline``, and the running cycle's ``disconnected`` and ``message_event``).
Before ``serve`` uses it, :func:`http_options` runs it on two refused heads
in memory; if that fails (a uvicorn that changed them), or without httptools,
uvicorn's h11 protocol is used with the same limit as its
``h11_max_incomplete_event_size`` (h11 answers 400), and a warning says so.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .errors import error_body

log = logging.getLogger("kachery_hub")

#: How long a refused connection is read (and dropped) before it is closed.
LINGER_SECONDS = 1.0
#: The longest request target httptools' URL parser takes (its offsets are 16-bit).
MAX_TARGET_BYTES = 65535


def _answer(status: bytes, code: str, message: str) -> bytes:
    body = error_body(code, message)
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)) + body


def http_options(max_head_bytes: int) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``: an HTTP protocol that refuses a head over ``max_head_bytes``."""
    h11 = {"http": "h11", "h11_max_incomplete_event_size": max_head_bytes}
    try:
        import httptools  # noqa: F401
    except ImportError:  # uvicorn[standard] brings httptools; without it, h11 keeps the limit
        return h11
    try:
        problem = _self_test()
    except Exception as e:  # noqa: BLE001 (whatever a changed uvicorn raises)
        problem = f"{type(e).__name__}: {e}"
    if problem is not None:
        log.warning("the request head limit does not work with this uvicorn (%s); using its h11 protocol, "
                    "with the same limit, instead of httptools", problem)
        return h11
    return {"http": head_limited_protocol(max_head_bytes)}


class _ProbeTransport(asyncio.Transport):
    """A transport that keeps what is written to it, for :func:`_self_test`."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8555)}.get(name, default)

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _self_test() -> str | None:
    """Run the head-limited protocol on refused heads in memory: ``None`` if it answers as it should, else what failed.

    One head arrives whole (refused in a parser callback: ``url``, ``headers``,
    ``send_400_response``); one request's trailers pass the limit while its app
    waits for the body (``pipeline``, the cycle's ``disconnected`` and
    ``message_event``: the app must see a disconnect).
    """
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    limit = 1024
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (message := await receive())["type"] == "http.request":
            pass
        seen.append(message["type"])

    async def run() -> str | None:
        protocol_class = head_limited_protocol(limit)
        config = Config(app, lifespan="off", log_config=None)
        for reads, what in (([b"GET /?pad=" + b"a" * 2 * limit + b" HTTP/1.1\r\nHost: x\r\n\r\n"], "a head in one read"),
                            ([b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n",
                              b"X-T: " + b"a" * 2 * limit], "trailers")):
            protocol = protocol_class(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
            transport = _ProbeTransport()
            protocol.connection_made(transport)
            for data in reads:
                protocol.data_received(data)
            for _ in range(10):  # let the app (if one started) run to its end
                await asyncio.sleep(0)
            protocol.connection_lost(None)
            if not transport.written.startswith(b"HTTP/1.1 431"):
                return f"{what}: answered {transport.written[:40]!r}, not 431"
        if seen != ["http.disconnect"]:
            return f"trailers: the app saw {seen}, not a disconnect"
        return None

    quiet = logging.getLogger("uvicorn.error")  # which warns of the refused head ("Invalid HTTP request received")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    loop = asyncio.new_event_loop()
    test = run()
    try:
        return loop.run_until_complete(test)
    finally:
        test.close()  # never started if the loop could not run
        left = asyncio.all_tasks(loop)  # a probe's app still waiting: ended here, not when collected
        for task in left:
            task.cancel()
        if left and not loop.is_running():
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.close()
        quiet.setLevel(level)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a head that is refused."""


def head_limited_protocol(max_head_bytes: int) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, refusing a head over ``max_head_bytes`` with 431."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    too_large = _answer(b"431 Request Header Fields Too Large", "headers_too_large",
                        f"the request line and headers are over the limit of {max_head_bytes} bytes")
    target_too_long = _answer(b"414 URI Too Long", "uri_too_long",
                              f"the request target (path and query) is over the limit of {MAX_TARGET_BYTES} bytes")

    class HeadLimitedProtocol(HttpToolsProtocol):
        _counting = True  # no body byte since the last head, chunk-size line or trailer began
        _head_bytes = 0
        _headers_done = False  # this request's headers are complete: header fields now are trailers
        _refused = False
        _answer_due: bytes | None = None  # set by a parser callback that refused the head

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # answered already: drop what is still coming
            if self._counting:
                self._head_bytes += len(data)
            super().data_received(data)
            if (self._counting and self._head_bytes > max_head_bytes and not self._refused
                    and not self.transport.is_closing()):
                self._refuse(too_large)

        def send_400_response(self, msg: str) -> None:
            if self._answer_due is not None:  # the parser stopped because a callback refused the head
                self._refuse(self._answer_due)
            else:
                super().send_400_response(msg)

        def on_message_begin(self) -> None:
            self._headers_done = False
            super().on_message_begin()

        def on_header(self, name: bytes, value: bytes) -> None:
            if not self._headers_done:  # else a trailer field: dropped, not added to the running request's headers
                super().on_header(name, value)

        def on_headers_complete(self) -> None:
            # A head that came in one read was not refused by the count: measure it now.
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > max_head_bytes or len(self.url) > MAX_TARGET_BYTES:
                self._answer_due = too_large if size > max_head_bytes else target_too_long
                raise _Refused
            self._headers_done = True
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            self._counting, self._head_bytes = False, 0
            super().on_body(body)

        def on_chunk_header(self) -> None:
            self._counting = True  # chunk data follows, or after the last chunk, trailers

        def on_chunk_complete(self) -> None:
            self._counting = True  # the next chunk-size line follows

        def on_message_complete(self) -> None:
            self._counting, self._head_bytes = True, 0
            super().on_message_complete()

        def _refuse(self, answer: bytes) -> None:
            self._refused = True
            cycle = self.cycle
            own = self._headers_done  # refused in this request's chunk framing or trailers, not in a new head
            if cycle is not None and (cycle.response_started if own else not cycle.response_complete) or (
                    own and self.pipeline):
                self.transport.close()  # an answer is being sent on this connection: no other can follow it
                return
            if own and cycle is not None:
                # The request's app has not answered: it now sees a disconnected client and this is the answer.
                cycle.disconnected = True
                cycle.message_event.set()
            self.transport.write(answer)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

    return HeadLimitedProtocol

"""Server-Sent Events streams: their framing and how many one client address may hold.

Feeds and task jobs are followed with streams that last; each holds a coroutine, a
socket and a wake-up subscription, so a client address holds at most
``Settings.max_streams_per_address`` of them (429 ``too_many_streams``).
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from ._ratelimit import client_key
from ._state import HubState
from .errors import TooManyStreams


#: Set while a session (_sessions) handles a request: sends one part of its answer ahead of the last
#: (a claim hands its jobs over as they come). None over HTTP, where an answer is one body.
PARTIAL: contextvars.ContextVar[Callable[[Any], Awaitable[None]] | None] = contextvars.ContextVar(
    "kachery_hub_partial", default=None)


def event(name: str, data: str, event_id: int | None = None) -> bytes:
    """One event: ``id:`` (when given), ``event:`` and one ``data:`` line (``data`` holds no newline)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {data}\n\n".encode()


class StreamSlot:
    """One of the event streams a client address may hold (``max_streams_per_address``)."""

    def __init__(self, hub: HubState, address: str) -> None:
        limit = hub.settings.max_streams_per_address
        held = hub.open_streams.get(address, 0)
        if held >= limit:
            raise TooManyStreams(f"this address holds {held} feed event streams, the most the hub allows "
                                 f"({limit}); close some (one follower can follow one feed)")
        hub.open_streams[address] = held + 1  # on the event loop: no lock needed
        self._hub, self._address, self._held = hub, address, True

    def release(self) -> None:
        if self._held:
            self._held = False
            left = self._hub.open_streams.get(self._address, 1) - 1
            if left > 0:
                self._hub.open_streams[self._address] = left
            else:
                self._hub.open_streams.pop(self._address, None)




def event_stream(hub: HubState, request: Request,
                 make: Callable[[StreamSlot], AsyncIterator[bytes]]) -> StreamingResponse:
    """A ``text/event-stream`` answer of ``make(slot)``, which must release its slot when it ends."""
    slot = StreamSlot(hub, client_key(request.client.host) if request.client else "")
    stream = make(slot)
    # A stream the server never starts (the client left first) never runs its `finally`.
    weakref.finalize(stream, slot.release)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

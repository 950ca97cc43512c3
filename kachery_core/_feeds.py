"""Feeds: append-only logs of JSON messages on the hub, followed live from other computers.

kachery-cloud's API (``create_feed``, ``load_feed``, ``Feed.append_message(s)``,
``get_next_messages``, ``set_position``, ``current_message_number``, ``uri``,
``feed_id``), plus what it lacked: messages carry their number, time and
author (:class:`FeedMessage`), reads are paged (:meth:`Feed.iter_messages`)
and :meth:`Feed.follow` streams new messages as they are appended, resuming
after a dropped connection or a hub restart from the last number it saw.

Messages are numbered from 0 without gaps; a batch is atomic and gets
consecutive numbers. Each append carries a random append ID, so one whose answer was lost (a
hub replica died under it) is sent again and still stored once. A feed's *position* is the number of the next message
:meth:`Feed.get_next_messages` returns. Waiting is pushed by the hub (a
Server-Sent Events stream), never a sleep loop.
"""

from __future__ import annotations

import importlib
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

from . import _constants, _hub
from ._projects import get_project_id
from ._serializers import canonical_json, find_json_problem
from ._uris import parse_feed_uri
from .errors import (
    FeedLimitError,
    FeedMessageError,
    FeedNotFoundError,
    HubError,
    HubNotFoundError,
    HubPermissionError,
    HubServerError,
    HubUnavailableError,
    InvalidArgumentError,
    InvalidURIError,
)

if TYPE_CHECKING:
    import httpx2

_FEED_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_PAGE = 10_000


class FeedMessage(NamedTuple):
    """A message with what the hub recorded: its number, when (hub clock, epoch seconds) and by whom.

    ``user`` is the email of who appended it, or None when the reader is not a
    member of the feed's project (a public feed does not tell who its authors are).
    """

    number: int
    time: float
    user: str | None
    message: dict[str, Any]


def _not_found(client: _hub.HubClient, feed_id: str, e: HubNotFoundError) -> HubError:
    if e.code == "feed_not_found":
        return FeedNotFoundError(client.url, feed_id, e.message, status=e.status, code=e.code)
    return e


def _feed_id_of(uri_or_feed_id: str) -> str:
    if not isinstance(uri_or_feed_id, str):
        raise InvalidArgumentError("uri_or_feed_id", uri_or_feed_id, "expected kachery-feed://<feed id> or a feed id")
    if "://" in uri_or_feed_id:
        return parse_feed_uri(uri_or_feed_id)
    if not _FEED_ID_RE.fullmatch(uri_or_feed_id):
        raise InvalidURIError(uri_or_feed_id, "not a feed id (1 to 128 letters, digits, '_' or '-') "
                                              "nor a kachery-feed:// URI")
    return uri_or_feed_id


# ---------------------------------------------------------------- message checks


def encode_message(message: Any, path: str = "message") -> str:
    """The canonical JSON of one message (as store_json writes it), or a typed error naming what is wrong."""
    if not isinstance(message, dict):
        raise FeedMessageError(path, f"a feed message must be a dict (a JSON object), not {type(message).__name__}")
    try:
        encoded = canonical_json(message)
    except (TypeError, ValueError, RecursionError) as e:
        found = find_json_problem(message, path)
        if found is None:  # e.g. keys of mixed types that cannot be sorted
            raise FeedMessageError(path, str(e)) from None
        raise FeedMessageError(*found) from None
    if len(encoded) > _constants.MAX_FEED_MESSAGE_BYTES:
        raise FeedLimitError(f"{path} is {len(encoded)} bytes of JSON, over the limit of "
                             f"{_constants.MAX_FEED_MESSAGE_BYTES} bytes per feed message")
    return encoded


def _append_body(messages: Any, one: bool = False) -> tuple[bytes, int]:
    if isinstance(messages, dict) or not isinstance(messages, (list, tuple)):
        raise InvalidArgumentError("messages", type(messages).__name__, "expected a list of dicts")
    if len(messages) > _constants.MAX_FEED_BATCH_MESSAGES:
        raise FeedLimitError(f"an append of {len(messages)} messages is over the limit of "
                             f"{_constants.MAX_FEED_BATCH_MESSAGES} messages per append; split it")
    texts = [encode_message(m, "message" if one else f"messages[{i}]") for i, m in enumerate(messages)]
    # A new append ID per call, the same on each try of it: the hub stores the messages once
    # however often they are sent, so a lost answer is sent again (see _hub.idempotent).
    append_id = secrets.token_hex(16)
    body = ('{"append_id":"' + append_id + '","messages":[' + ",".join(texts) + "]}").encode("ascii")
    if len(body) > _constants.MAX_FEED_BATCH_BYTES:
        raise FeedLimitError(f"an append of {len(body)} bytes is over the limit of "
                             f"{_constants.MAX_FEED_BATCH_BYTES} bytes per append; split it")
    return body, len(texts)


# ---------------------------------------------------------------- Server-Sent Events


def _sse(response: httpx2.Response) -> Iterator[tuple[str, str, str | None]]:
    """(event, data, id) of each event of a stream; comments (keep-alives) are skipped."""
    buf = bytearray()
    for chunk in response.iter_raw():
        buf += chunk
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            event, data, event_id = "message", [], None
            for line in bytes(buf[start:end]).decode("utf-8").split("\n"):
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    event_id = value
            start = end + 2
            if data:
                yield event, "\n".join(data), event_id
        del buf[:start]


def require_event_stream(hub_url: str, response: httpx2.Response) -> None:
    """Refuse an answer that is not an event stream (a proxy's page in the hub's place), closing it.

    Read as a stream, such an answer ends at once with no event: a follower would ask again at once,
    without end. As a :class:`HubServerError`, it is retried with backoff like any failure of the hub.
    """
    kind = response.headers.get("content-type", "")
    if not kind.startswith("text/event-stream"):
        response.close()
        raise HubServerError(hub_url, f"the hub answered HTTP {response.status_code} with "
                                      f"{kind or 'no content type'} where an event stream was expected "
                                      "(a proxy in between that does not pass the hub's answers on?)",
                             status=response.status_code)


def _messages(page: dict[str, Any]) -> list[FeedMessage]:
    """The messages of a page ``{"first": n, "runs": [[count, time, user], ...], "messages": [...]}``."""
    number, messages, out = page["first"], page["messages"], []
    i = 0
    for count, t, user in page["runs"]:
        out += [FeedMessage(number + k, t, user, m) for k, m in enumerate(messages[i:i + count])]
        number, i = number + count, i + count
    return out


class FeedFollower:
    """The iterator :meth:`Feed.follow` returns; :meth:`close` ends it from any thread."""

    def __init__(self, feed: Feed, start: int, stop: threading.Event | None, reconnect_seconds: float | None,
                 keepalive: float | None) -> None:
        self.feed = feed
        self.position = start  # the number of the next message
        self._stop = stop or threading.Event()
        self._reconnect_seconds = reconnect_seconds
        self._keepalive = keepalive
        self._response: httpx2.Response | None = None
        self._lock = threading.Lock()
        self.reconnects = 0
        self._iter = self._run()

    def __iter__(self) -> FeedFollower:
        return self

    def __next__(self) -> FeedMessage:
        return next(self._iter)

    def close(self) -> None:
        """Stop following: the iterator ends, even while it waits for a message in another thread."""
        self._stop.set()
        with self._lock:
            response = self._response
        if response is not None:
            _interrupt(response)

    def _run(self) -> Iterator[FeedMessage]:
        import httpx2

        path = f"/api/feeds/{quote(self.feed.feed_id, safe='')}/events"
        delay, failing_since = 0.05, None
        while not self._stop.is_set():
            params: dict[str, Any] = {"start": self.position}
            if self._keepalive is not None:
                params["keepalive"] = self._keepalive
            # A stream says something at least every keep-alive period; silence for longer is a dead connection.
            read = 3 * (self._keepalive or 15.0) + 10
            try:
                client = _hub.connect_for("following a feed")
                response = client.send("GET", path, params=params, stream=True,
                                       timeout=httpx2.Timeout(connect=10.0, read=read, write=30.0, pool=30.0))
                require_event_stream(client.url, response)
            except HubNotFoundError as e:
                raise _not_found(_hub.connect("following a feed"), self.feed.feed_id, e) from None
            except (HubUnavailableError, HubServerError) as e:
                failing_since = failing_since or time.monotonic()
                self._give_up_after(failing_since, e)
                self._stop.wait(delay)
                delay = min(delay * 2, 2.0)
                self.reconnects += 1
                continue
            with self._lock:
                self._response = response
            if self._stop.is_set():  # closed while connecting: nothing was there to interrupt
                response.close()
                return
            try:
                for event, data, _ in _sse(response):
                    if event == "messages":
                        delay, failing_since = 0.05, None
                        for m in _messages(json.loads(data)):
                            if m.number < self.position:  # already seen (cannot happen from a stream by number)
                                continue
                            self.position = m.number + 1
                            yield m
                            if self._stop.is_set():
                                return
                    elif event == "end":
                        reason = json.loads(data)
                        if reason.get("reason") == "refused":
                            code, message = reason.get("code"), reason.get("message", "access refused")
                            if code == "feed_not_found":
                                raise FeedNotFoundError(client.url, self.feed.feed_id, message)
                            raise HubPermissionError(client.url, message, status=None, code=code)
                        break
                    if self._stop.is_set():
                        return
            except (httpx2.TransportError, httpx2.StreamError) as e:
                if self._stop.is_set():
                    return
                failing_since = failing_since or time.monotonic()
                self._give_up_after(failing_since, HubUnavailableError(client.url, f"the feed's stream broke: {e}"))
                self._stop.wait(delay)
                delay = min(delay * 2, 2.0)
                self.reconnects += 1
            finally:
                with self._lock:
                    self._response = None
                response.close()

    def _give_up_after(self, since: float, error: HubError) -> None:
        if self._reconnect_seconds is not None and time.monotonic() - since > self._reconnect_seconds:
            raise error


def _interrupt(response: httpx2.Response) -> None:
    """Wake a thread blocked reading ``response``: shut its socket down (closing alone may not wake it)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# ---------------------------------------------------------------- feeds


class Feed:
    """A feed on the hub; made by :func:`create_feed` or :func:`load_feed`."""

    def __init__(self, feed_id: str, info: dict[str, Any] | None = None) -> None:
        self.feed_id = feed_id
        self._info = info
        self._position = 0

    def __repr__(self) -> str:
        label = f" {self.label!r}" if self._info and self._info.get("label") else ""
        return f"<Feed {self.uri}{label}>"

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None
    ) -> dict[str, Any] | tuple[dict[str, Any], dict[str, Any]] | None:
        # The live viewer where kachery_jupyter is installed; kachery_core itself never imports Jupyter.
        try:
            viewer = importlib.import_module("kachery_jupyter._feedviewer")
        except ImportError:
            return None
        bundle: tuple[dict[str, Any], dict[str, Any]] = viewer.feed_mimebundle(self)  # (data, metadata)
        return bundle

    @property
    def uri(self) -> str:
        return f"kachery-feed://{self.feed_id}"

    @property
    def _path(self) -> str:
        return f"/api/feeds/{quote(self.feed_id, safe='')}"

    def info(self, refresh: bool = True) -> dict[str, Any]:
        """The hub's record: project_id, label, message_count, last_append_at, created_at, can_append."""
        if refresh or self._info is None or "can_append" not in self._info:
            client = _hub.connect_for("reading a feed")
            try:
                self._info = client.json("GET", self._path)
            except HubNotFoundError as e:
                raise _not_found(client, self.feed_id, e) from None
        assert self._info is not None
        return self._info

    @property
    def project_id(self) -> str:
        return str(self.info(refresh=False)["project_id"])

    @property
    def label(self) -> str | None:
        label = self.info(refresh=False).get("label")
        return None if label is None else str(label)

    def can_append(self) -> bool:
        """Whether this client may append (write access to the feed's project)."""
        return bool(self.info()["can_append"])

    def get_num_messages(self) -> int:
        return int(self.info()["message_count"])

    # kachery-cloud's position
    @property
    def current_message_number(self) -> int:
        """The number of the next message :meth:`get_next_messages` returns."""
        return self._position

    def set_position(self, position: int) -> None:
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise InvalidArgumentError("position", position, "expected a message number (an int >= 0)")
        self._position = position

    # writing
    def append_message(self, message: dict[str, Any]) -> int:
        """Append one message (a dict of JSON values); returns its number."""
        return self._append(_append_body([message], one=True))[0]

    def append_messages(self, messages: list[dict[str, Any]]) -> list[int]:
        """Append messages atomically: they get consecutive numbers (returned), or none is stored."""
        return self._append(_append_body(messages))

    def _append(self, encoded: tuple[bytes, int]) -> list[int]:
        body, count = encoded
        if count == 0:
            return []
        client = _hub.connect_for("appending to a feed", write=True)
        try:
            result = client.json("POST", self._path + "/messages", content=body,
                                 headers={"content-type": "application/json"}, session=True)
        except HubNotFoundError as e:
            raise _not_found(client, self.feed_id, e) from None
        first = int(result["first_number"])
        return list(range(first, first + int(result["count"])))

    # reading
    def _page(self, client: _hub.HubClient, start: int, limit: int) -> list[FeedMessage]:
        try:
            page = client.json("GET", self._path + "/messages", params={"start": start, "limit": limit})
        except HubNotFoundError as e:
            raise _not_found(client, self.feed_id, e) from None
        return _messages(page)

    def iter_messages(self, start: int = 0, end: int | None = None) -> Iterator[FeedMessage]:
        """Messages ``start`` to ``end - 1`` (or the last one now), fetched in pages: constant memory."""
        _check_range(start, end)
        client = _hub.connect_for("reading a feed")
        position = start
        while end is None or position < end:
            limit = _PAGE if end is None else min(_PAGE, end - position)
            page = self._page(client, position, limit)
            yield from page
            if len(page) < limit:
                return
            position = page[-1].number + 1

    def get_messages(self, start: int = 0, end: int | None = None) -> list[dict[str, Any]]:
        """The bodies of messages ``start`` to ``end - 1`` (or the last one now)."""
        return [m.message for m in self.iter_messages(start, end)]

    def get_next_messages(self, *, timeout_sec: float = 0, max_num_messages: int | None = None) -> list[dict[str, Any]]:
        """The messages after the position (advancing it); with none, waits up to ``timeout_sec`` for one.

        Returns as soon as a message is appended anywhere (the hub pushes it), or
        ``[]`` when ``timeout_sec`` passes first.
        """
        if not isinstance(timeout_sec, (int, float)) or isinstance(timeout_sec, bool) or not timeout_sec >= 0:
            raise InvalidArgumentError("timeout_sec", timeout_sec, "expected seconds >= 0")
        if max_num_messages is not None and (not isinstance(max_num_messages, int) or max_num_messages < 1):
            raise InvalidArgumentError("max_num_messages", max_num_messages, "expected an int >= 1 or None")
        end = None if max_num_messages is None else self._position + max_num_messages
        found = [m.message for m in self.iter_messages(self._position, end)]
        if not found and timeout_sec > 0:
            found = self._wait_for_next(float(timeout_sec), max_num_messages)
        self._position += len(found)
        return found

    def _wait_for_next(self, timeout: float, most: int | None) -> list[dict[str, Any]]:
        import httpx2

        client = _hub.connect_for("waiting for feed messages")
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            wait = min(left, 3600.0)
            try:
                response = client.send(
                    "GET", self._path + "/events", params={"start": self._position, "wait": round(wait, 3)},
                    stream=True, timeout=httpx2.Timeout(connect=10.0, read=wait + 30.0, write=30.0, pool=30.0))
            except HubNotFoundError as e:
                raise _not_found(client, self.feed_id, e) from None
            require_event_stream(client.url, response)
            try:
                for event, data, _ in _sse(response):
                    if event == "messages":
                        got: list[dict[str, Any]] = json.loads(data)["messages"]
                        return got if most is None else got[:most]
                    if event == "end":
                        reason = json.loads(data)
                        if reason.get("reason") == "refused":
                            raise HubPermissionError(client.url, reason.get("message", "access refused"),
                                                     code=reason.get("code"))
                        break  # waited long enough on the hub's side: the loop checks the deadline
            except (httpx2.TransportError, httpx2.StreamError) as e:
                raise HubUnavailableError(client.url, f"the feed's stream broke while waiting: {e}") from None
            finally:
                response.close()

    def follow(self, start: int = 0, *, stop: threading.Event | None = None, reconnect_seconds: float | None = None,
               keepalive: float | None = None) -> FeedFollower:
        """Every message from number ``start`` on, live, until ``stop`` is set or the iterator is closed.

        Reconnects by itself after a dropped connection or a hub restart and goes on
        after the last number it yielded: no gap, no duplicate. ``reconnect_seconds``
        bounds how long it keeps trying (default: forever); ``keepalive`` asks the hub
        for a keep-alive that often (seconds) when no message comes.
        """
        _check_range(start, None)
        if keepalive is not None and not 0.5 <= keepalive <= 3600:
            raise InvalidArgumentError("keepalive", keepalive, "expected seconds from 0.5 to 3600")
        return FeedFollower(self, start, stop, reconnect_seconds, keepalive)


def _check_range(start: object, end: object) -> None:
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise InvalidArgumentError("start", start, "expected a message number (an int >= 0)")
    if end is not None and (isinstance(end, bool) or not isinstance(end, int) or end < start):
        raise InvalidArgumentError("end", end, f"expected None or an int >= start ({start})")


def create_feed(*, project_id: str | None = None, label: str | None = None) -> Feed:
    """A new, empty feed in the project (needs write access)."""
    if label is not None and not isinstance(label, str):
        raise InvalidArgumentError("label", label, "expected a str or None")
    client = _hub.connect_for("creating a feed", write=True)
    pid = get_project_id(project_id)
    info = client.json("POST", f"/api/projects/{quote(pid, safe='')}/feeds", json={"label": label})
    return Feed(str(info["feed_id"]), info)


def load_feed(uri_or_feed_id: str) -> Feed:
    """The feed named by ``kachery-feed://<id>`` or its bare id; :class:`FeedNotFoundError` if the hub has none."""
    feed = Feed(_feed_id_of(uri_or_feed_id))
    feed.info()
    return feed


def list_feeds(*, project_id: str | None = None) -> list[dict[str, Any]]:
    """The project's feeds, newest first: feed_id, uri, label, message_count, last_append_at, created_at."""
    client = _hub.connect_for("listing feeds")
    pid = get_project_id(project_id)
    feeds: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"after": after} if after else {})}
        page = client.json("GET", f"/api/projects/{quote(pid, safe='')}/feeds", params=params)["feeds"]
        feeds += page
        if len(page) < 1000:
            return feeds
        after = page[-1]["feed_id"]

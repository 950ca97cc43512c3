"""The live feed viewer: a feed's messages as they are appended anywhere.

The kernel follows the feed (:meth:`kachery_core.Feed.follow`) in a background
thread once a front end asks for the messages, and hands them to the front end
in batches of custom messages, never as a trait that grows with the feed:

    kernel → front end  {"type": "messages", "rows": [[number, time, user, json_text], ...], "total": n}
                        {"type": "append_result", "ok": true, "number": n} or {"ok": false, "error": "..."}
    front end → kernel  {"type": "ready", "from": n}     send every message from number n on
                        {"type": "append", "text": "{...}"}

A batch goes out as soon as the first message of a quiet spell arrives; while
messages keep coming they are coalesced (``batch_interval`` seconds apart, at
most ``batch_size`` rows each). The front end (``js/feedviewer.js``) keeps the
rows and draws only those in view. Closing the widget (or its comm) stops the
follower.
"""

from __future__ import annotations

import html
import json
import threading
from typing import Any

import anywidget
import traitlets

import kachery_core as kc

from ._assets import module, stylesheet

Row = list[Any]  # [number, time, user, json_text]


def _row(m: kc.FeedMessage) -> Row:
    # The JSON as text: the front end filters on it and parses it only to show one message expanded.
    return [m.number, m.time, m.user, json.dumps(m.message, sort_keys=True, separators=(",", ":"), ensure_ascii=False)]


def _error_text(e: BaseException) -> str:
    """An error in one line, typed: ``FeedMessageError: Invalid feed message at ...``."""
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _Following:
    """One run of the follower: a reader thread (blocked in the feed's stream) and a sender thread."""

    def __init__(self, viewer: FeedViewer, start: int, total: int) -> None:
        self.viewer = viewer
        self.stop = threading.Event()
        self.follower = viewer.feed.follow(start, stop=self.stop)
        self.total = max(total, start)
        self.pending: list[Row] = []
        self.done = False  # the reader ended (an error): the sender hands over what it read, then ends
        self.ready = threading.Condition()
        self.reader = threading.Thread(target=self._read, name="kachery-feed-viewer-reader", daemon=True)
        self.sender = threading.Thread(target=self._send, name="kachery-feed-viewer-sender", daemon=True)

    def begin(self) -> None:
        self.reader.start()
        self.sender.start()

    def end(self) -> None:
        """Stop both threads: the reader's blocking read is interrupted, the sender woken."""
        self.stop.set()
        self.follower.close()
        with self.ready:
            self.ready.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        for thread in (self.reader, self.sender):
            thread.join(timeout)
        return not (self.reader.is_alive() or self.sender.is_alive())

    def _read(self) -> None:
        try:
            for message in self.follower:
                with self.ready:
                    self.pending.append(_row(message))
                    self.ready.notify()
        except Exception as e:  # a refusal or a hub that stays away: shown, never raised in a thread
            if not self.stop.is_set():
                self.viewer._show("error", _error_text(e))
        finally:
            with self.ready:
                self.done = True
                self.ready.notify_all()

    def _send(self) -> None:
        viewer = self.viewer
        while True:
            with self.ready:
                while not self.pending and not self.done and not self.stop.is_set():
                    self.ready.wait()
                if self.stop.is_set() or not self.pending:  # closed, or superseded by a run that sends them again
                    return
                rows = self.pending[: viewer.batch_size]
                del self.pending[: len(rows)]
            self.total = max(self.total, rows[-1][0] + 1)
            viewer.send({"type": "messages", "rows": rows, "total": self.total})
            # Coalesce: what arrives meanwhile goes out in the next batch, not one message at a time.
            self.stop.wait(viewer.batch_interval)


class FeedViewer(anywidget.AnyWidget):
    """A live view of a feed: ``FeedViewer(feed)`` or ``FeedViewer("kachery-feed://…")``."""

    _esm = module("feedviewer.js")
    _css = stylesheet("feedviewer.css")

    feed_uri = traitlets.Unicode("").tag(sync=True)
    label = traitlets.Unicode("").tag(sync=True)
    #: the number of the first message shown
    start = traitlets.Int(0).tag(sync=True)
    #: whether this kernel may append (the append box shows only then)
    can_append = traitlets.Bool(False).tag(sync=True)
    #: ``waiting`` (for a front end), ``live``, ``error`` (with ``status_message``), ``closed``
    status = traitlets.Unicode("waiting").tag(sync=True)
    status_message = traitlets.Unicode("").tag(sync=True)

    #: seconds between two batches while messages keep coming
    batch_interval = traitlets.Float(0.05)
    #: most rows in one batch
    batch_size = traitlets.Int(2000)

    def __repr__(self) -> str:
        # What a display shows as text where the widget cannot render (a saved notebook, VS Code, a terminal).
        feed = getattr(self, "feed", None)
        if feed is None:
            return "kachery feed viewer (no feed)"
        info = feed._info if isinstance(getattr(feed, "_info", None), dict) else {"message_count": 0}
        return describe(feed, info) + " (live viewer)"

    def __init__(self, feed: kc.Feed | str, start: int = 0, **kwargs: Any) -> None:
        self._lock = threading.Lock()
        self._following: _Following | None = None
        self._last: _Following | None = None
        self._closed = False
        super().__init__(**kwargs)  # before anything can fail: a half-made widget fails again when collected
        try:
            if isinstance(start, bool) or not isinstance(start, int) or start < 0:
                raise kc.InvalidArgumentError("start", start, "expected a message number (an int >= 0)")
            self.feed = kc.load_feed(feed) if isinstance(feed, str) else feed
            info = self.feed.info()  # one request: the label, the count and whether we may append
        except BaseException:
            self.close()
            raise
        self.message_count = int(info.get("message_count") or 0)
        with self.hold_sync():
            self.feed_uri = self.feed.uri
            self.label = str(info.get("label") or "")
            self.start = start
            self.can_append = bool(info.get("can_append"))
        self.on_msg(self._on_msg)
        if self.comm is not None:
            # The front end closing the comm (the output cleared, the page gone for good) stops the follower.
            self.comm.on_close(lambda _msg: self._stop_following(closed=True))

    # -- following -----------------------------------------------------------

    def follow_from(self, start: int) -> None:
        """(Re)start following at message ``start``: every message from there on is sent again."""
        start = max(int(start), self.start)
        with self._lock:
            if self._closed:
                return
            self._end_run()
            run = _Following(self, start, self.message_count)
            self._following = self._last = run
        self._show("live")
        run.begin()

    def _end_run(self) -> None:
        run, self._following = self._following, None
        if run is not None:
            run.end()

    def _stop_following(self, *, closed: bool = False) -> None:
        with self._lock:
            self._closed = self._closed or closed
            self._end_run()

    @property
    def following(self) -> bool:
        """Whether a follower thread runs for this widget."""
        run = self._following
        return run is not None and run.reader.is_alive()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Block until the last run's threads ended (after :meth:`close`); returns whether they did."""
        run = self._last
        return True if run is None else run.join(timeout)

    def close(self) -> None:
        """Stop following and close the widget (its views disappear)."""
        with self._lock:
            self._closed = True
            self._end_run()
        self._show("closed")
        super().close()

    def _show(self, status: str, message: str = "") -> None:
        with self.hold_sync():
            self.status_message = message
            self.status = status

    # -- messages from the front end -------------------------------------------

    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        if kind == "ready":
            start = content.get("from")
            self.follow_from(start if isinstance(start, int) and not isinstance(start, bool) else self.start)
        elif kind == "append":
            self.send({"type": "append_result", **self.append(content.get("text"))})

    def append(self, text: Any) -> dict[str, Any]:
        """Append ``text`` (a JSON object) to the feed; the answer the front end shows."""
        if not isinstance(text, str) or not text.strip():
            return {"ok": False, "error": "FeedMessageError: the message is empty; write a JSON object"}
        try:
            message = json.loads(text)
        except json.JSONDecodeError as e:
            return {"ok": False, "error": f"JSONDecodeError: not JSON: {e}"}
        if not isinstance(message, dict):
            return {"ok": False, "error": f"FeedMessageError: a message is a JSON object {{...}}, "
                                          f"not {type(message).__name__}"}
        try:
            number = self.feed.append_message(message)
        except (kc.KacheryError, ValueError) as e:
            return {"ok": False, "error": _error_text(e)}
        return {"ok": True, "number": number}


# ---------------------------------------------------------------- rich display of a Feed


def describe(feed: kc.Feed, info: dict[str, Any] | None = None) -> str:
    """One line naming the feed: its URI, label and message count."""
    info = info if info is not None else feed.info()
    count = int(info.get("message_count") or 0)
    label = f" {info['label']!r}," if info.get("label") else ""
    return f"kachery feed {feed.uri}{label} {count:,} message{'' if count == 1 else 's'}"


def feed_mimebundle(feed: kc.Feed, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(data, metadata)`` for ``Feed._repr_mimebundle_``: the live viewer, with text/plain and
    text/html descriptions of the feed for where widgets do not render (a saved notebook, a terminal).

    ``kwargs`` go to :class:`FeedViewer` (e.g. ``start=``). The metadata is anywidget's (in Colab
    it names the custom widget manager). Where the hub cannot be asked, only the text saying why,
    instead of an error from the display machinery.
    """
    try:
        viewer = FeedViewer(feed, **kwargs)
        text = describe(feed, feed.info(refresh=False))
    except kc.KacheryError as e:
        return {"text/plain": f"kachery feed {feed.uri} ({_error_text(e)})"}, {}
    widget = viewer._repr_mimebundle_()
    data, metadata = widget if widget is not None else ({}, {})
    bundle: dict[str, Any] = dict(data)
    bundle["text/plain"] = text
    bundle["text/html"] = f"<p><code>{html.escape(text)}</code></p>"
    return bundle, dict(metadata)

"""A proxy that answers a feed's or a job's event stream with a page of its own (HTTP 200, not
``text/event-stream``): clients say so with a typed error instead of asking again without end.

Read as a stream, such an answer ends at once with no event; a follower used to reconnect at once,
every time (found in the full suite: a follower left running sent hundreds of requests a second
to a port another server had taken over).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import kachery_core as kc
from hub_process import forget_hubs
from kachery_core.errors import HubServerError


class _Portal(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a 200 HTML page (a captive portal, a proxy's login page)."""

    protocol_version = "HTTP/1.1"
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).requests.append(self.path)
        body = b"<html><body>Please sign in to the network</body></html>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def portal(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    _Portal.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Portal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "kc"))
    monkeypatch.setenv("KACHERY_CLOUD_EPHEMERAL", "1")  # reads only: nothing to sign in with
    kc.use_hub(url)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        forget_hubs()


def _events(requests: list[str]) -> int:
    return sum("/events" in path for path in requests)


def test_a_follower_backs_off_and_gives_up_with_a_typed_error(portal: str) -> None:
    feed = kc.Feed("f" + "0" * 32)
    caught: list[BaseException] = []

    def follow() -> None:
        try:
            for _ in feed.follow(reconnect_seconds=1.0):
                pass
        except BaseException as e:  # noqa: BLE001 (the test looks at it)
            caught.append(e)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), f"the follower is still asking ({_events(_Portal.requests)} requests so far)"
    [error] = caught
    assert isinstance(error, HubServerError) and "text/html" in str(error) and "event stream" in str(error)
    assert _events(_Portal.requests) >= 2  # it did ask again, with backoff, before giving up


def test_waiting_for_messages_says_what_came_instead(portal: str) -> None:
    feed = kc.Feed("f" + "0" * 32)
    with pytest.raises(HubServerError, match="event stream was expected"):
        feed._wait_for_next(30.0, None)
    assert _events(_Portal.requests) == 1

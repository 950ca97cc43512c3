"""The feed event stream (Server-Sent Events) of a real ``kachery-hub serve``: its protocol and its limit.

What a browser's EventSource or any SSE client relies on: ``id:`` is the number of
the last message of each event, ``Last-Event-ID`` resumes after it, keep-alive
comments come while nothing happens, ``wait`` ends a stream with ``event: end``;
and a client address holds a bounded number of streams.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

pytest.importorskip("fastapi")

import kachery_core as kc  # noqa: E402
from hub_process import HubProcess, free_port, running  # noqa: E402
from kachery_core import _session  # noqa: E402
from kachery_core._feeds import _sse  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def public_feed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[HubProcess, kc.Feed]]:
    """A hub that lets an address hold 3 streams, with keep-alives every second, and a public feed of 5 messages."""
    hub = HubProcess(tmp_path / "hub", free_port())
    env = {"KACHERY_HUB_MAX_STREAMS_PER_ADDRESS": "3", "KACHERY_HUB_FEED_KEEPALIVE": "1"}
    with running(hub, env):
        monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "alice"))
        project = kc.init(hub_url=hub.url, token=hub.token("alice@example.org"))["default_project_id"]
        kc.set_project_public(project, True)
        feed = kc.create_feed()
        feed.append_messages([{"i": i} for i in range(5)])
        yield hub, feed


def _events(response: httpx2.Response, n: int) -> list[tuple[str, str, str | None]]:
    out = []
    for event in _sse(response):
        out.append(event)
        if len(out) == n:
            break
    return out


def test_ids_resume_keepalive_and_end(public_feed: tuple[HubProcess, kc.Feed]) -> None:
    hub, feed = public_feed
    url = f"{hub.url}/api/feeds/{feed.feed_id}/events"
    with httpx2.Client(timeout=30) as http:  # unsigned: a public feed is readable by anyone
        with http.stream("GET", url, params={"start": 2}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            (event, data, event_id), = _events(r, 1)
            page = json.loads(data)
            assert event == "messages" and event_id == "4" and page["first"] == 2
            assert page["messages"] == [{"i": 2}, {"i": 3}, {"i": 4}] and page["runs"][0][0] == 3
            assert page["runs"][0][2] is None  # an anonymous reader is not told who appended
        with http.stream("GET", url, headers={"Last-Event-ID": "3"}) as r:
            (_, data, event_id), = _events(r, 1)
            assert json.loads(data)["messages"] == [{"i": 4}] and event_id == "4"
        # Nothing new: keep-alive comments (the hub was told 1 s), then the end `wait` asked for.
        with http.stream("GET", url, params={"start": 5, "wait": 2.5}) as r:
            raw = r.read().decode()
        assert raw.count(": keep-alive\n\n") >= 1 and raw.endswith('event: end\ndata: {"reason":"wait"}\n\n'), raw
        assert "event: messages" not in raw
        for bad in ({"Last-Event-ID": "x"}, {"Last-Event-ID": "-1"}, {"Last-Event-ID": "1" * 40}):
            r2 = http.get(url, headers=bad)
            assert r2.status_code in (400, 422) and r2.json()["error"]["code"] in ("invalid_input", "invalid_request"), r2.text
        for params in ({"start": -1}, {"wait": 0}, {"wait": "soon"}, {"keepalive": 0.1}, {"start": 2**63}):
            r3 = http.get(url, params=params)
            assert r3.status_code in (400, 422), (params, r3.text)


def test_an_address_holds_a_bounded_number_of_streams(public_feed: tuple[HubProcess, kc.Feed]) -> None:
    hub, feed = public_feed
    url = f"{hub.url}/api/feeds/{feed.feed_id}/events"
    # This process's session with the hub (its appends went on one) is a stream of this address too.
    _session.close_sessions()
    time.sleep(0.5)  # (the hub frees its slot when it sees the socket close)
    with httpx2.Client(timeout=30, limits=httpx2.Limits(max_connections=20)) as http:
        streams = [http.stream("GET", url, params={"start": 5}) for _ in range(3)]
        responses = [s.__enter__() for s in streams]
        assert [r.status_code for r in responses] == [200, 200, 200]
        refused = http.get(url, params={"start": 5})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_streams", refused.text
        assert "3" in refused.json()["error"]["message"]
        streams[0].__exit__(None, None, None)  # one closed: its slot is free again once the hub notices
        deadline = time.monotonic() + 20
        while True:
            again = http.stream("GET", url, params={"start": 5})
            r = again.__enter__()
            if r.status_code == 200:
                break
            again.__exit__(None, None, None)
            assert time.monotonic() < deadline, "a closed stream never gave its slot back"
            time.sleep(0.2)
        for s in [*streams[1:], again]:
            s.__exit__(None, None, None)
    # All closed: three fresh streams fit again (nothing leaked), and the hub still answers.
    with httpx2.Client(timeout=30) as http:
        deadline = time.monotonic() + 20
        while True:
            rs = [http.stream("GET", url, params={"start": 5, "wait": 1}) for _ in range(3)]
            codes = [s.__enter__().status_code for s in rs]
            for s in rs:
                s.__exit__(None, None, None)
            if codes == [200, 200, 200]:
                break
            assert time.monotonic() < deadline, codes
            time.sleep(0.2)
        assert http.get(f"{hub.url}/api/health").status_code == 200

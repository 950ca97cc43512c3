"""Hostile requests to a real hub's feed endpoints: each is refused with its typed error and stores nothing.

Requests are built by hand (``http.client``, raw sockets) and signed with keys
registered through the API, so anything a client could send is tried, as uvicorn
parses it. The database matters (numbers past BIGINT, what an append stores), so
the hub runs on SQLite and on PostgreSQL, one per module and database.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

import kachery_core as kc  # noqa: E402
from hub_fixtures import new_keys, postgres_server, signed_headers  # noqa: E402,F401
from kachery_core._constants import MAX_FEED_BATCH_MESSAGES, MAX_FEED_MESSAGE_BYTES  # noqa: E402
from raw_http import Answer, RawHub, running_hub  # noqa: E402

pytestmark = pytest.mark.slow

MiB = 2**20
KEEPALIVE = 2.0  # the hub's feed keep-alive (and access re-check) period here


@dataclass
class FeedHub(RawHub):
    projects: dict[str, str]  # each user's default project

    def create_feed(self, who: str = "alice", project: str | None = None) -> str:
        project = project or self.projects[who]
        a = self.call("POST", f"/api/projects/{project}/feeds", json.dumps({"label": "hostile"}).encode(), who=who)
        assert a.status == 200, (a.status, a.body)
        return str(a.json()["feed_id"])

    def append(self, feed_id: str, messages: list[dict[str, Any]], who: str = "alice") -> Answer:
        return self.call("POST", f"/api/feeds/{feed_id}/messages", json.dumps({"messages": messages}).encode(), who=who)

    def stored(self, feed_id: str) -> tuple[int, list[dict[str, Any]]]:
        """The feed's message count and every message body, as its owner reads them."""
        info = self.call("GET", f"/api/feeds/{feed_id}")
        assert info.status == 200, info.body
        bodies: list[dict[str, Any]] = []
        while True:
            page = self.call("GET", f"/api/feeds/{feed_id}/messages?start={len(bodies)}&limit=10000")
            assert page.status == 200, page.body
            numbered = _numbered(page.json())
            assert [n for n, _ in numbered] == list(range(len(bodies), len(bodies) + len(numbered)))
            bodies += [body for _, body in numbered]
            if not numbered:
                break
        assert info.json()["message_count"] == page.json()["message_count"] == len(bodies)
        return len(bodies), bodies


def _numbered(page: dict[str, Any]) -> list[tuple[int, Any]]:
    """(number, body) of each message of a page or an event: ``{"first", "runs", "messages": [bodies]}``,
    or a list of ``{number, time, user, message}``."""
    if isinstance(page, dict) and "runs" in page:
        return [(page["first"] + i, m) for i, m in enumerate(page["messages"])]
    items = page["messages"] if isinstance(page, dict) else page
    return [(m["number"], m["message"]) for m in items]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def feed_hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeedHub]:
    with running_hub(request, tmp_path_factory, "feeds-hostile", {"KACHERY_HUB_FEED_KEEPALIVE": str(KEEPALIVE)},
                     ("alice", "carol")) as (proc, keys, projects):
        yield FeedHub(proc, keys, projects)


@pytest.fixture
def feed(feed_hub: FeedHub) -> str:
    """A fresh feed of alice's holding one message."""
    feed_id = feed_hub.create_feed()
    assert feed_hub.append(feed_id, [{"first": True}]).status == 200
    return feed_id


def _unchanged(feed_hub: FeedHub, feed_id: str) -> None:
    assert feed_hub.stored(feed_id) == (1, [{"first": True}]), "a refused request stored something"


def _missing_id() -> str:
    return "f" + secrets.token_hex(16)  # the shape of a real feed id, of no feed


# ---------------------------------------------------------------- append bodies


@pytest.mark.parametrize("body", [
    b'{"messages": [1]}', b'{"messages": ["text"]}', b'{"messages": [null]}', b'{"messages": [[{"a": 1}]]}',
    b'{"messages": [true]}', b'{"messages": [{"a": 1}, 2]}', b'{"messages": {"a": 1}}', b'{"messages": "x"}',
    b'[{"a": 1}]', b'{"message": [{"a": 1}]}', b'{"messages": []}', b'null', b'"messages"',
])
def test_an_append_of_anything_but_a_list_of_objects_is_refused_whole(feed_hub: FeedHub, feed: str,
                                                                        body: bytes) -> None:
    a = feed_hub.call("POST", f"/api/feeds/{feed}/messages", body)
    assert a.status == 400 and a.code == "invalid_input", (a.status, a.body)
    _unchanged(feed_hub, feed)


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"])
def test_nan_and_infinity_are_refused(feed_hub: FeedHub, feed: str, number: bytes) -> None:
    body = b'{"messages": [{"ok": 1}, {"a": {"b": [0, ' + number + b']}}]}'
    a = feed_hub.call("POST", f"/api/feeds/{feed}/messages", body)
    assert a.status == 400 and a.code == "invalid_input", (a.status, a.body)
    _unchanged(feed_hub, feed)


@pytest.mark.parametrize("body", [
    b'{"messages": [', b'{"messages": [{"a": 1}]', b"\xff\xfe{}", b'{"messages": [{"a": 1,}]}',
    b"{'messages': []}", b"[" * 100_000 + b"]" * 100_000,
])
def test_malformed_json_is_refused(feed_hub: FeedHub, feed: str, body: bytes) -> None:
    a = feed_hub.call("POST", f"/api/feeds/{feed}/messages", body)
    assert a.status == 400 and a.code == "invalid_input", (a.status, a.body[:300])
    _unchanged(feed_hub, feed)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_an_append_that_is_not_declared_json_is_refused(feed_hub: FeedHub, feed: str,
                                                        content_type: str | None) -> None:
    body = json.dumps({"messages": [{"a": 1}]}).encode()  # valid JSON, under another name (or none)
    a = feed_hub.call("POST", f"/api/feeds/{feed}/messages", body, content_type=content_type)
    # As the hub's other JSON endpoints answer (422 invalid_request), or 400/415.
    assert a.status in (400, 415, 422) and a.code in ("invalid_input", "unsupported_media_type", "invalid_request"), \
        (a.status, a.body)
    _unchanged(feed_hub, feed)


def test_a_batch_over_the_message_count_limit_is_refused(feed_hub: FeedHub, feed: str) -> None:
    a = feed_hub.append(feed, [{}] * (MAX_FEED_BATCH_MESSAGES + 1))
    assert a.status == 413 and a.code == "payload_too_large", (a.status, a.body)
    assert str(MAX_FEED_BATCH_MESSAGES) in a.json()["error"]["message"]
    _unchanged(feed_hub, feed)
    # The limit itself is allowed.
    assert feed_hub.append(feed, [{"k": i} for i in range(MAX_FEED_BATCH_MESSAGES)]).status == 200
    assert feed_hub.stored(feed)[0] == 1 + MAX_FEED_BATCH_MESSAGES


def test_a_message_over_one_mib_is_refused_and_one_of_exactly_one_mib_is_not(feed_hub: FeedHub, feed: str) -> None:
    fill = MAX_FEED_MESSAGE_BYTES - len('{"s":""}')  # canonical JSON of {"s": "x" * fill} is exactly the limit
    a = feed_hub.append(feed, [{"ok": 1}, {"s": "x" * (fill + 1)}])
    assert a.status == 413 and a.code == "payload_too_large", (a.status, a.body[:300])
    assert "messages[1]" in a.json()["error"]["message"]
    _unchanged(feed_hub, feed)
    # Escapes count as canonical JSON writes them: 1 character, 6 bytes.
    a = feed_hub.append(feed, [{"s": "\u00e9" * (fill // 6 + 1)}])
    assert a.status == 413, (a.status, a.body[:300])
    _unchanged(feed_hub, feed)
    a = feed_hub.append(feed, [{"s": "x" * fill}])
    assert a.status == 200, a.body[:300]
    assert feed_hub.stored(feed)[1][1] == {"s": "x" * fill}


def test_a_body_over_the_json_body_limit_is_refused(feed_hub: FeedHub, feed: str) -> None:
    pieces = [{"s": "y" * (MiB - 100)} for _ in range(4)] + [{"s": "z" * 1000}]  # each message under 1 MiB
    body = json.dumps({"messages": pieces}).encode()
    assert len(body) > 4 * MiB
    a = feed_hub.call("POST", f"/api/feeds/{feed}/messages", body)
    assert a.status == 413 and a.code == "payload_too_large", (a.status, a.body[:300])
    _unchanged(feed_hub, feed)


# ---------------------------------------------------------------- feed ids and query values


ENDPOINTS = [("GET", "/api/feeds/{}"), ("GET", "/api/feeds/{}/messages"), ("POST", "/api/feeds/{}/messages"),
             ("GET", "/api/feeds/{}/events?wait=1")]


@pytest.mark.parametrize(("method", "template"), ENDPOINTS)
def test_an_unknown_feed_is_feed_not_found_on_every_endpoint(feed_hub: FeedHub, method: str, template: str) -> None:
    body = b'{"messages": [{"a": 1}]}' if method == "POST" else b""
    missing = _missing_id()
    a = feed_hub.call(method, template.format(missing), body)
    assert a.status == 404 and a.code == "feed_not_found", (a.status, a.body)
    assert feed_hub.call("GET", f"/api/feeds/{missing}").status == 404  # and the append made none


@pytest.mark.parametrize("bad_id", [
    "..%2F..%2Fetc%2Fpasswd", "%2E%2E", "..", "a%00b", "%00", "a" * 129, "x" * 5000, "f%20x", "%C3%A9t%C3%A9",
    "f;drop", "f'--", "%2Fapi%2Fhealth",
])
@pytest.mark.parametrize(("method", "template"), ENDPOINTS)
def test_a_malformed_feed_id_is_refused(feed_hub: FeedHub, feed: str, bad_id: str, method: str,
                                        template: str) -> None:
    body = b'{"messages": [{"a": 1}]}' if method == "POST" else b""
    a = feed_hub.call(method, template.format(bad_id), body)
    # A bad id is invalid input; ".." may be resolved by the router to another path that does not exist.
    assert (a.status, a.code) in ((400, "invalid_input"), (404, "feed_not_found"), (404, "not_found")), \
        (a.status, a.body[:300])
    _unchanged(feed_hub, feed)


@pytest.mark.parametrize("query", [
    "start=-1", "start=abc", "start=1.5", "start=", "start=99999999999999999999999999999", f"start={2**63}",
    "limit=-1", "limit=abc", f"limit={10**30}", "limit=10001", "limit=1e3", "start=0x10",
])
def test_bad_start_and_limit_values_are_refused(feed_hub: FeedHub, feed: str, query: str) -> None:
    a = feed_hub.call("GET", f"/api/feeds/{feed}/messages?{query}")
    assert a.status in (400, 422) and a.code in ("invalid_input", "invalid_request"), (a.status, a.body[:300])
    assert query.split("=")[0] in a.json()["error"]["message"]


@pytest.mark.parametrize("query", [
    "wait=-1", "wait=abc", "wait=nan", "wait=inf", "wait=-inf", f"wait={10**30}", "wait=1e999",
    "start=-5", f"start={2**63}", "start=x",
])
def test_bad_event_stream_values_are_refused_before_any_stream(feed_hub: FeedHub, feed: str, query: str) -> None:
    a = feed_hub.call("GET", f"/api/feeds/{feed}/events?{query}", timeout=30)
    assert a.status in (400, 422) and a.code in ("invalid_input", "invalid_request"), (a.status, a.body[:300])
    assert not a.headers["content-type"].startswith("text/event-stream")


@pytest.mark.parametrize("last_event_id", ["abc", "-5", "1e3", "1.0", "+1", "0x10", "99999999999999999999999999",
                                           " ", "1 2", "\u0661"])
def test_a_garbage_last_event_id_is_refused(feed_hub: FeedHub, feed: str, last_event_id: str) -> None:
    a = feed_hub.call("GET", f"/api/feeds/{feed}/events?wait=1", headers={"Last-Event-ID": last_event_id},
                      timeout=30)
    assert a.status in (400, 422) and a.code in ("invalid_input", "invalid_request"), (a.status, a.body[:300])


def test_start_and_last_event_id_resume_where_they_say(feed_hub: FeedHub, feed: str) -> None:
    """The valid forms, so that the refusals above are not all there is."""
    assert feed_hub.append(feed, [{"n": 1}, {"n": 2}]).status == 200
    for headers, query, first in (({}, "start=2&", 2), ({"Last-Event-ID": "0"}, "", 1), ({}, "", 0)):
        a = feed_hub.call("GET", f"/api/feeds/{feed}/events?{query}wait=0.5", headers=headers, timeout=30)
        assert a.status == 200 and a.headers["content-type"].startswith("text/event-stream"), a.body[:300]
        events = [e for e in a.body.decode().split("\n\n") if "event: messages" in e]
        numbers = [n for e in events for n, _ in _numbered(json.loads(e.split("data: ", 1)[1]))]
        assert numbers == list(range(first, 3)), a.body
        assert 'event: end\ndata: {"reason":"wait"}' in a.body.decode()


# ---------------------------------------------------------------- who is asking


def test_an_outsider_learns_nothing_of_a_private_feed(feed_hub: FeedHub, feed: str) -> None:
    missing = _missing_id()
    for method, template in ENDPOINTS:
        body = b'{"messages": [{"a": 1}]}' if method == "POST" else b""
        for who in ("carol", None):
            if who is None and method == "POST":
                continue  # unsigned bodies are refused before anything else (see below)
            private = feed_hub.call(method, template.format(feed), body, who=who)
            absent = feed_hub.call(method, template.format(missing), body, who=who)
            assert private.status == absent.status == 404, (method, template, who, private.body)
            assert private.body.replace(feed.encode(), b"ID") == absent.body.replace(missing.encode(), b"ID")
            assert not private.headers["content-type"].startswith("text/event-stream")
            assert {k: v for k, v in private.headers.items() if k not in ("date", "content-length", "x-request-id")} == \
                   {k: v for k, v in absent.headers.items() if k not in ("date", "content-length", "x-request-id")}
    _unchanged(feed_hub, feed)
    # Nor can an outsider create a feed in, or list the feeds of, alice's project.
    a = feed_hub.call("POST", f"/api/projects/{feed_hub.projects['alice']}/feeds", b'{"label": null}', who="carol")
    assert a.status in (403, 404), a.body
    a = feed_hub.call("GET", f"/api/projects/{feed_hub.projects['alice']}/feeds", who="carol")
    assert a.status in (403, 404) and feed.encode() not in a.body, a.body


def test_an_unsigned_append_is_refused_before_its_body_is_read(feed_hub: FeedHub, feed: str) -> None:
    sock = socket.create_connection(("127.0.0.1", feed_hub.proc.port), timeout=30)
    with sock:
        sock.sendall(f"POST /api/feeds/{feed}/messages HTTP/1.1\r\nHost: {feed_hub.host}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {50 * MiB}\r\n\r\n".encode()
                     + b'{"messages": [{"a": 1}')
        response = http.client.HTTPResponse(sock)
        response.begin()  # a hub waiting for the 50 MiB would time this out
        body = response.read()
    assert response.status == 401 and json.loads(body)["error"]["code"] == "unauthenticated", body
    _unchanged(feed_hub, feed)


def test_a_replayed_signed_append_is_refused_and_stored_once(feed_hub: FeedHub, feed: str) -> None:
    path = f"/api/feeds/{feed}/messages"
    body = b'{"messages": [{"once": true}]}'
    headers = {"Content-Type": "application/json",
               **signed_headers(feed_hub.keys["alice"], "POST", path, body, host=feed_hub.host)}
    first = feed_hub.call("POST", path, body, who=None, headers=headers)
    assert first.status == 200, first.body
    again = feed_hub.call("POST", path, body, who=None, headers=headers)
    assert again.status == 401 and again.code == "replayed_request", again.body
    # The same signature on another feed's path, or with another body, verifies for nothing.
    other = feed_hub.create_feed()
    moved = feed_hub.call("POST", f"/api/feeds/{other}/messages", body, who=None, headers=headers)
    assert moved.status == 401, moved.body
    swapped = feed_hub.call("POST", path, b'{"messages": [{"once": false}]}', who=None, headers=headers)
    assert swapped.status in (400, 401), swapped.body
    assert feed_hub.stored(feed) == (2, [{"first": True}, {"once": True}])
    assert feed_hub.stored(other) == (0, [])


def test_an_append_by_a_client_the_hub_does_not_know_is_refused(feed_hub: FeedHub, feed: str) -> None:
    stranger = new_keys()
    feed_hub.keys["stranger"] = stranger
    try:
        a = feed_hub.append(feed, [{"a": 1}], who="stranger")
        assert a.status in (401, 404) and a.code in ("client_not_registered", "feed_not_found"), a.body
    finally:
        del feed_hub.keys["stranger"]
    _unchanged(feed_hub, feed)


# ---------------------------------------------------------------- streams


def _open_stream(feed_hub: FeedHub, feed: str, who: str = "alice", query: str = "") -> socket.socket:
    """An event stream of ``feed``, its response head read; the socket is left open."""
    path = f"/api/feeds/{feed}/events{query}"
    headers = {"Host": feed_hub.host, **signed_headers(feed_hub.keys[who], "GET", path, b"", host=feed_hub.host)}
    sock = socket.create_connection(("127.0.0.1", feed_hub.proc.port), timeout=30)
    sock.sendall((f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                  + "\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head[:300]
    assert b"text/event-stream" in head.lower(), head[:300]
    return sock


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts file descriptors in /proc")
def test_many_event_streams_dropped_at_once_leave_nothing_behind(feed_hub: FeedHub, feed: str) -> None:
    assert feed_hub.proc.proc is not None
    pid = feed_hub.proc.proc.pid
    assert feed_hub.call("GET", "/api/health", who=None).status == 200
    before = _fds(pid)
    streams = [_open_stream(feed_hub, feed) for _ in range(100)]
    try:
        # Each stream holds a descriptor in the hub; a few of earlier tests' keep-alive connections
        # may close meanwhile, so the count is checked with that much room.
        assert _fds(pid) >= before + 90
        assert feed_hub.append(feed, [{"while": "streaming"}]).status == 200
    finally:
        for s in streams:
            s.close()
    deadline = time.monotonic() + 5 * KEEPALIVE + 30
    while _fds(pid) > before + 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _fds(pid) <= before + 5, f"{_fds(pid) - before} descriptors still held after the streams were dropped"
    # The hub still answers, and streams still work.
    assert feed_hub.append(feed, [{"after": "drop"}]).status == 200
    a = feed_hub.call("GET", f"/api/feeds/{feed}/events?start=1&wait=0.5", timeout=30)
    assert a.status == 200 and b'"after":"drop"' in a.body, a.body


def _read_until(sock: socket.socket, marker: bytes, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def test_a_member_removed_while_streaming_is_cut_off_while_messages_go_on(feed_hub: FeedHub) -> None:
    feed = feed_hub.create_feed()
    project = feed_hub.projects["alice"]
    r = feed_hub.call("PUT", f"/api/projects/{project}/members/carol@example.org", b'{"role": "read"}')
    assert r.status == 200, r.body
    try:
        stream = _open_stream(feed_hub, feed, who="carol")
        with stream:
            assert feed_hub.append(feed, [{"seen": 1}]).status == 200
            assert b'"seen":1' in _read_until(stream, b'"seen":1', 30)
            r = feed_hub.call("DELETE", f"/api/projects/{project}/members/carol@example.org")
            assert r.status == 200, r.body
            # Appended after the removal for several keep-alive periods, the stream never idle.
            appended = int(3 * KEEPALIVE / 0.25)
            for i in range(appended):
                assert feed_hub.append(feed, [{"secret": i}]).status == 200
                time.sleep(0.25)
            rest = _read_until(stream, b"event: end", 2 * KEEPALIVE + 10)
            assert b"event: end" in rest and b"refused" in rest, rest[-500:]
            # The stream ended while the appends went on (within a keep-alive period or so).
            last = f'"secret":{appended - 1}'.encode()
            assert last not in rest, f"a removed member was sent every message appended after the removal: {rest[-800:]!r}"
    finally:
        feed_hub.call("DELETE", f"/api/projects/{project}/members/carol@example.org")


# ---------------------------------------------------------------- the client's own checks


def test_the_client_refuses_bad_messages_with_typed_errors_and_sends_nothing(
    feed_hub: FeedHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "alice-client"))
    kc.init(hub_url=feed_hub.proc.url, token=feed_hub.proc.token("alice@example.org"))
    f = kc.create_feed(label="client checks")
    f.append_message({"first": True})
    cases: list[tuple[Any, type[Exception], str]] = [
        ([{"a": 1}, 5], kc.FeedMessageError, "messages[1]"),
        ([{"a": [0, 1, {"b": float("nan")}]}], kc.FeedMessageError, "messages[0]['a'][2]['b']"),
        ([{"a": float("inf")}], kc.FeedMessageError, "messages[0]['a']"),
        ([{"a": {1, 2}}], kc.FeedMessageError, "messages[0]['a']"),
        ([{"a": object()}], kc.FeedMessageError, "messages[0]['a']"),
        ([{"a": b"bytes"}], kc.FeedMessageError, "messages[0]['a']"),
        ([{}] * (MAX_FEED_BATCH_MESSAGES + 1), kc.FeedLimitError, str(MAX_FEED_BATCH_MESSAGES)),
        ([{"s": "x" * MAX_FEED_MESSAGE_BYTES}], kc.FeedLimitError, "messages[0]"),
        ([{"s": "x" * (MAX_FEED_MESSAGE_BYTES - 100)}] * 5, kc.FeedLimitError, "append"),
    ]
    for messages, error, names in cases:
        with pytest.raises(error) as info:
            f.append_messages(messages)
        assert names in str(info.value), (names, str(info.value))
        assert isinstance(info.value, ValueError)
    with pytest.raises(kc.FeedMessageError):
        f.append_message([1, 2])  # type: ignore[arg-type]
    with pytest.raises(kc.FeedMessageError):
        f.append_message({"a": float("nan")})
    assert f.get_num_messages() == 1 and f.get_messages() == [{"first": True}]
    with pytest.raises(kc.InvalidURIError):
        kc.load_feed("kachery-feed://../../etc")
    with pytest.raises(kc.FeedNotFoundError):
        kc.load_feed(_missing_id())

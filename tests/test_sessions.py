"""Sessions (``GET /api/session``): signed requests as frames on one WebSocket, through a real hub.

Who may open one, what a frame may do, what an outsider learns, what malformed and oversized
frames do; and the client: requests go on a session when the hub offers one, with the same
answers and errors as over HTTP, and HTTP is used when sessions are off or the hub has none.
The raw tests speak the protocol with the ``websockets`` client and sign like any client.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
websockets_sync = pytest.importorskip("websockets.sync.client")

import kachery_core as kc  # noqa: E402
from hub_fixtures import new_keys, signed_headers  # noqa: E402
from hub_process import HUB_CMD, HubProcess, free_port, running  # noqa: E402
from kachery_core import _hub, _session  # noqa: E402
from kachery_core._identity import ClientKeys, load_client_keys  # noqa: E402
from kachery_core.errors import HubAuthError, HubNotFoundError  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

pytestmark = pytest.mark.slow

ALICE, BOB = "alice@example.org", "bob@example.org"
LIMIT = 4 * 1024 * 1024  # the hub's JSON body limit, and its in-flight body budget in these tests


class Client:
    """A signed-in kachery directory: its keys, its default project."""

    def __init__(self, hub: HubProcess, root: Path, name: str, email: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dir = root / name
        monkeypatch.setenv("KACHERY_CLOUD_DIR", str(self.dir))
        self.project = str(kc.init(hub_url=hub.url, token=hub.token(email))["default_project_id"])
        keys = load_client_keys()
        assert keys is not None
        self.keys: ClientKeys = keys

    def use(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KACHERY_CLOUD_DIR", str(self.dir))


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    env = {"KACHERY_HUB_MAX_INFLIGHT_BODY_BYTES": str(LIMIT)}
    with running(HubProcess(tmp_path_factory.mktemp("session-hub"), free_port()), env=env) as h:
        yield h


@pytest.fixture
def people(hub: HubProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Client, Client]]:
    bob = Client(hub, tmp_path, "bob", BOB, monkeypatch)
    alice = Client(hub, tmp_path, "alice", ALICE, monkeypatch)  # the one in use
    yield alice, bob
    _session.close_sessions()


def _host(hub: HubProcess) -> str:
    return hub.url.removeprefix("http://")


class Raw:
    """A session spoken by hand: frames signed by ``keys`` (or forged)."""

    def __init__(self, hub: HubProcess, keys: ClientKeys, headers: dict[str, str] | None = None) -> None:
        self.hub = hub
        self.keys = keys
        h = signed_headers(keys, "GET", "/api/session", host=_host(hub)) if headers is None else headers
        self._opened = websockets_sync.connect(f"ws://{_host(hub)}/api/session", additional_headers=h,
                                               open_timeout=10, max_size=None)
        self.ws = self._opened.__enter__()
        self.next_id = 0

    def send(self, method: str, path: str, body: Any = b"", *, keys: ClientKeys | None = None,
             headers: dict[str, str] | None = None, raw_head: bytes | None = None) -> int:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.next_id += 1
        h = signed_headers(keys or self.keys, method, path, data, host=_host(self.hub)) if headers is None else headers
        head = raw_head if raw_head is not None else json.dumps(
            {"id": self.next_id, "method": method, "path": path, "headers": {"host": _host(self.hub), **h}}).encode()
        self.ws.send(head + b"\n" + data)
        return self.next_id

    def answer(self, timeout: float = 30) -> tuple[int, int, Any]:
        message = self.ws.recv(timeout=timeout)
        assert isinstance(message, bytes)
        head, _, body = message.partition(b"\n")
        meta = json.loads(head)
        return meta["id"], meta["status"], json.loads(body)

    def call(self, method: str, path: str, body: Any = b"", **kw: Any) -> tuple[int, Any]:
        ident = self.send(method, path, body, **kw)
        got, status, answer = self.answer()
        assert got == ident
        return status, answer

    def close(self) -> None:
        self._opened.__exit__(None, None, None)


def _refused(hub: HubProcess, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """The HTTP answer to a session upgrade the hub refuses."""
    with pytest.raises(InvalidStatus) as e:
        Raw(hub, new_keys(), headers=headers)
    response = e.value.response
    return response.status_code, json.loads(bytes(response.body or b""))["error"]


def _feed(client: Client) -> Any:
    return kc.create_feed(project_id=client.project)


# ---------------------------------------------------------------- opening


def test_an_unsigned_upgrade_is_refused_with_its_http_error(hub: HubProcess) -> None:
    status, error = _refused(hub, {})
    assert status == 401 and error["code"] == "unauthenticated" and "signed" in error["message"]


def test_a_badly_signed_upgrade_is_refused(hub: HubProcess, people: tuple[Client, Client]) -> None:
    alice, _ = people
    headers = signed_headers(alice.keys, "GET", "/api/session", host=_host(hub))
    headers["X-Kachery-Signature"] = "0" * 128
    status, error = _refused(hub, headers)
    assert (status, error["code"]) == (401, "bad_signature")


def test_a_replayed_upgrade_is_refused(hub: HubProcess, people: tuple[Client, Client]) -> None:
    alice, _ = people
    headers = signed_headers(alice.keys, "GET", "/api/session", host=_host(hub))
    Raw(hub, alice.keys, headers=headers).close()
    status, error = _refused(hub, headers)
    assert (status, error["code"]) == (401, "replayed_request")


def test_an_unregistered_client_cannot_open_one(hub: HubProcess) -> None:
    stranger = new_keys()
    status, error = _refused(hub, signed_headers(stranger, "GET", "/api/session", host=_host(hub)))
    assert (status, error["code"]) == (401, "client_not_registered")


def test_sessions_count_against_the_address_stream_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running(HubProcess(tmp_path / "hub", free_port()), env={"KACHERY_HUB_MAX_STREAMS_PER_ADDRESS": "6"}) as hub:
        alice = Client(hub, tmp_path, "alice", ALICE, monkeypatch)
        _limited(hub, alice)
        # The client itself then uses HTTP, and says nothing of it.
        opened = [Raw(hub, alice.keys) for _ in range(6)]
        try:
            assert kc.create_feed(project_id=alice.project).append_message({"a": 1}) == 0
        finally:
            for r in opened:
                r.close()


def _limited(hub: HubProcess, alice: Client) -> None:
    opened = []
    try:
        with pytest.raises(InvalidStatus) as e:
            for _ in range(7):  # KACHERY_HUB_MAX_STREAMS_PER_ADDRESS=6
                opened.append(Raw(hub, alice.keys))
        assert e.value.response.status_code == 429
        assert json.loads(bytes(e.value.response.body or b""))["error"]["code"] == "too_many_streams"
        assert len(opened) == 6
    finally:
        for r in opened:
            r.close()
    time.sleep(0.3)  # the hub releases their slots as the sockets close
    Raw(hub, alice.keys).close()  # freed


# ---------------------------------------------------------------- frames


def test_a_frame_appends_and_a_replayed_frame_is_refused(hub: HubProcess, people: tuple[Client, Client]) -> None:
    alice, _ = people
    feed = _feed(alice)
    raw = Raw(hub, alice.keys)
    try:
        path = f"/api/feeds/{feed.feed_id}/messages"
        body = json.dumps({"messages": [{"a": 1}]}).encode()
        headers = signed_headers(alice.keys, "POST", path, body, host=_host(hub))
        assert raw.call("POST", path, body, headers=headers) == (200, pytest.approx({
            "first_number": 0, "count": 1, "message_count": 1, "time": pytest.approx(time.time(), abs=60)}))
        status, answer = raw.call("POST", path, body, headers=headers)  # the same frame again
        assert (status, answer["error"]["code"]) == (401, "replayed_request")
    finally:
        raw.close()
    assert feed.get_num_messages() == 1


def test_every_frame_must_be_signed_by_the_session_client(hub: HubProcess, people: tuple[Client, Client]) -> None:
    alice, bob = people
    feed = _feed(alice)
    path = f"/api/feeds/{feed.feed_id}/messages"
    raw = Raw(hub, alice.keys)
    try:
        status, answer = raw.call("POST", path, {"messages": [{"a": 1}]}, keys=bob.keys)
        assert status == 401 and "client that opened it" in answer["error"]["message"]
        status, answer = raw.call("POST", path, {"messages": [{"a": 1}]}, headers={})
        assert status == 401 and "signed" in answer["error"]["message"]
        body = json.dumps({"messages": [{"a": 1}]}).encode()
        forged = signed_headers(alice.keys, "POST", path, b'{"messages":[{"a":2}]}', host=_host(hub))
        status, answer = raw.call("POST", path, body, headers=forged)
        assert (status, answer["error"]["code"]) == (401, "bad_signature")
        stale = signed_headers(alice.keys, "POST", path, body, host=_host(hub), time_ms=int((time.time() - 3600) * 1000))
        status, answer = raw.call("POST", path, body, headers=stale)
        assert (status, answer["error"]["code"]) == (401, "clock_skew") and "behind" in answer["error"]["message"]
    finally:
        raw.close()
    assert feed.get_num_messages() == 0


def test_an_outsider_learns_on_a_session_what_http_tells(hub: HubProcess, people: tuple[Client, Client],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = people
    feed = _feed(alice)
    job_path = f"/api/projects/{alice.project}/tasks/jobs/{'0' * 40}"
    append_path = f"/api/feeds/{feed.feed_id}/messages"
    request_path = f"/api/projects/{alice.project}/tasks/requests"
    request = {"task_type": "calculation", "task_name": "sq", "task_input": {"x": 1}}
    batch = {"task_type": "calculation", "task_name": "sq", "task_inputs": [{"x": 1}]}
    wait = {"job_ids": ["0" * 40], "wait": 0}
    raw = Raw(hub, bob.keys)
    try:
        on_session = [raw.call("GET", job_path), raw.call("POST", append_path, {"messages": [{"a": 1}]}),
                      raw.call("POST", request_path, request), raw.call("POST", request_path + "/batch", batch),
                      raw.call("POST", f"/api/projects/{alice.project}/tasks/jobs/wait", wait)]
    finally:
        raw.close()
    import httpx2

    over_http = []
    for method, path, body in (("GET", job_path, b""), ("POST", append_path, b'{"messages":[{"a":1}]}'),
                               ("POST", request_path, json.dumps(request).encode()),
                               ("POST", request_path + "/batch", json.dumps(batch).encode()),
                               ("POST", f"/api/projects/{alice.project}/tasks/jobs/wait", json.dumps(wait).encode())):
        r = httpx2.request(method, hub.url + path, content=body, headers={
            **signed_headers(bob.keys, method, path, body, host=_host(hub)), "content-type": "application/json"})
        over_http.append((r.status_code, r.json()))
    assert on_session == over_http
    # Not a member: the job and the request are forbidden, the private feed is not even there.
    assert [s for s, _ in on_session] == [403, 404, 403, 403, 403]
    assert feed.get_num_messages() == 0
    assert kc.list_task_jobs(project_id=alice.project) == []


def test_paths_methods_and_queries_a_session_does_not_serve(hub: HubProcess, people: tuple[Client, Client]) -> None:
    alice, _ = people
    raw = Raw(hub, alice.keys)
    try:
        status, answer = raw.call("GET", "/api/projects")
        assert status == 404 and "send others over HTTP" in answer["error"]["message"]
        status, answer = raw.call("GET", f"/api/feeds/{'f' * 20}/messages")
        assert (status, answer["error"]["code"]) == (405, "method_not_allowed")
        status, answer = raw.call("GET", "/api/projects/p\u00e9/tasks/jobs/x")
        assert (status, answer["error"]["code"]) == (400, "invalid_input")
        status, answer = raw.call("GET", f"/api/projects/{alice.project}/tasks/jobs/{'0' * 40}?wait=999")
        assert (status, answer["error"]["code"]) == (422, "invalid_request") and "wait" in answer["error"]["message"]
        status, answer = raw.call("GET", f"/api/projects/{alice.project}/tasks/jobs/{'0' * 40}?wait=soon")
        assert status == 422
        status, answer = raw.call("GET", f"/api/projects/{alice.project}/tasks/jobs/%ff")
        assert (status, answer["error"]["code"]) == (400, "invalid_input")
        status, answer = raw.call("POST", f"/api/projects/{alice.project}/tasks/backends/b1/claim", {"max_jobs": -1})
        assert status == 422 and "max_jobs" in answer["error"]["message"]
        status, answer = raw.call("POST", f"/api/projects/{alice.project}/tasks/requests", b"[1, 2]")
        assert (status, answer["error"]["code"]) == (400, "invalid_input")
        # The session goes on after all of these.
        status, answer = raw.call("GET", f"/api/projects/{alice.project}/tasks/jobs/{'0' * 40}")
        assert (status, answer["error"]["code"]) == (404, "job_not_found")
    finally:
        raw.close()


@pytest.mark.parametrize("head", [b"no head line at all", b"[1, 2, 3]", b'{"id": "seven", "method": "GET"}',
                                  b'{"id": 1, "method": "GET", "path": "/x", "headers": {"a": 1}}'])
def test_a_malformed_frame_ends_the_session(hub: HubProcess, people: tuple[Client, Client], head: bytes) -> None:
    alice, _ = people
    raw = Raw(hub, alice.keys)
    try:
        raw.ws.send(head if b"no head" in head else head + b"\n{}")
        with pytest.raises(ConnectionClosed) as e:
            raw.ws.recv(timeout=10)
        assert e.value.rcvd is not None and e.value.rcvd.code == 1003
    finally:
        raw.close()


def test_an_oversized_frame_is_refused_and_stores_nothing(hub: HubProcess, people: tuple[Client, Client]) -> None:
    alice, _ = people
    feed = _feed(alice)
    raw = Raw(hub, alice.keys)
    path = f"/api/feeds/{feed.feed_id}/messages"
    try:
        body = json.dumps({"messages": [{"pad": "x" * (LIMIT - 10)}]}).encode()  # a little over the limit
        raw.send("POST", path, body)
        try:
            _, status, answer = raw.answer()
            assert (status, answer["error"]["code"]) == (413, "payload_too_large")
        except ConnectionClosed as e:  # the server's own frame limit may close first (1009: message too big)
            assert e.rcvd is not None and e.rcvd.code == 1009
    finally:
        raw.close()
    assert feed.get_num_messages() == 0


def test_frames_in_work_count_against_the_body_budget(hub: HubProcess, people: tuple[Client, Client]) -> None:
    alice, _ = people
    raw = Raw(hub, alice.keys)
    path = f"/api/projects/{alice.project}/tasks/requests?wait=3"
    try:
        # A request nobody serves waits 3 s, holding its ~2.5 MiB (a field the hub ignores); the next one
        # does not fit the 4 MiB budget.
        big = {"task_type": "calculation", "task_name": "nobody", "task_input": {"x": 1}, "pad": "x" * 2_500_000}
        first = raw.send("POST", path, big)
        time.sleep(0.5)
        second = raw.send("POST", path, {**big, "task_input": {"x": 2}})
        answers = {ident: (status, body) for ident, status, body in (raw.answer(), raw.answer())}
    finally:
        raw.close()
    assert answers[second][0] == 503 and answers[second][1]["error"]["code"] == "busy"
    assert answers[first][0] == 200 and answers[first][1]["status"] == "pending"


def test_a_long_poll_does_not_hold_up_the_frames_after_it(hub: HubProcess, people: tuple[Client, Client]) -> None:
    alice, _ = people
    feed = _feed(alice)
    raw = Raw(hub, alice.keys)
    try:
        waiting = raw.send("POST", f"/api/projects/{alice.project}/tasks/requests?wait=5",
                           {"task_type": "calculation", "task_name": "nobody", "task_input": {"x": 2}})
        appended = raw.send("POST", f"/api/feeds/{feed.feed_id}/messages", {"messages": [{"a": 1}]})
        order = [raw.answer()[0], raw.answer()[0]]
    finally:
        raw.close()
    assert order == [appended, waiting]


def test_a_revoked_client_is_refused_on_its_open_session(hub: HubProcess, people: tuple[Client, Client]) -> None:
    alice, _ = people
    feed = _feed(alice)
    raw = Raw(hub, alice.keys)
    path = f"/api/feeds/{feed.feed_id}/messages"
    try:
        assert raw.call("POST", path, {"messages": [{"a": 1}]})[0] == 200
        subprocess.run([*HUB_CMD, "client", "revoke", "--data", str(hub.data), alice.keys.client_id],
                       check=True, capture_output=True, timeout=60)
        status, answer = raw.call("POST", path, {"messages": [{"a": 2}]})
    finally:
        raw.close()
    import httpx2

    body = b'{"messages":[{"a":3}]}'
    r = httpx2.post(hub.url + path, content=body, headers={
        **signed_headers(alice.keys, "POST", path, body, host=_host(hub)), "content-type": "application/json"})
    assert (status, answer) == (r.status_code, r.json())  # as an unknown client: the private feed is not there
    assert status == 404 and answer["error"]["code"] == "feed_not_found"


# ---------------------------------------------------------------- the client


def test_the_client_sends_tasks_and_appends_on_a_session(hub: HubProcess, people: tuple[Client, Client]) -> None:
    alice, _ = people
    feed = _feed(alice)
    before = dict(_session._sessions)
    assert feed.append_messages([{"i": i} for i in range(3)]) == [0, 1, 2]
    opened = [s for k, s in _session._sessions.items() if k[0] == hub.url and k not in before]
    assert len(opened) == 1 and opened[0].alive
    with kc.TaskBackend(project_id=alice.project, num_workers=2) as backend:
        backend.register_task_handler(task_type="calculation", task_name="sq", task_function=lambda x: x * x)
        assert kc.request_task(task_type="calculation", task_name="sq", task_input={"x": 7},
                               project_id=alice.project) == 49
        handle = kc.submit_task(task_type="calculation", task_name="sq", task_input={"x": 8}, project_id=alice.project)
        assert handle.result(timeout=30) == 64
        handles = kc.submit_tasks(task_type="calculation", task_name="sq", task_inputs=[{"x": i} for i in range(20)],
                                  project_id=alice.project)
        assert kc.gather_tasks(handles, timeout=30) == [i * i for i in range(20)]
    # Errors on a session are the typed errors HTTP gives.
    with pytest.raises(HubNotFoundError) as e:
        kc.request_task(task_type="action", task_name="sq", task_input={}, project_id="nope-project", timeout_sec=5)
    assert e.value.code == "project_not_found"


def test_sessions_off_sends_everything_over_http(hub: HubProcess, people: tuple[Client, Client],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    alice, _ = people
    _session.close_sessions()
    monkeypatch.setenv("KACHERY_HUB_SESSIONS", "0")
    feed = _feed(alice)
    assert feed.append_message({"a": 1}) == 0
    assert not _session._sessions


def test_a_broken_session_fails_its_requests_and_the_next_one_reopens(hub: HubProcess,
                                                                       people: tuple[Client, Client]) -> None:
    alice, _ = people
    feed = _feed(alice)
    feed.append_message({"a": 1})
    (first,) = [s for k, s in _session._sessions.items() if k[0] == hub.url]
    assert first._sock is not None
    first._sock.shutdown(2)  # the connection drops (a proxy restarts, the network goes away)
    time.sleep(0.2)
    assert not first.alive
    assert feed.append_message({"a": 2}) == 1  # a new session
    (second,) = [s for k, s in _session._sessions.items() if k[0] == hub.url]
    assert second is not first and second.alive


def test_a_hub_without_sessions_is_asked_over_http(tmp_path: Path) -> None:
    """An older hub (or a proxy that does not pass WebSockets) answers the upgrade 404: HTTP is used."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(404)
            self.send_header("content-type", "application/json")
            body = b'{"error":{"code":"not_found","message":"no such endpoint"}}'
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        keys = new_keys()
        assert _session.session_for(url, url.removeprefix("http://"), keys, keys.client_id) is None
        assert _session._not_before[url] == float("inf")  # not asked again by this process
    finally:
        server.shutdown()
        server.server_close()
        _session.close_sessions()


def test_a_refused_session_raises_the_typed_error_http_would(hub: HubProcess, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A client the hub does not know (no token to sign in with) gets the HTTP path's error."""
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "stranger"))
    monkeypatch.setenv("KACHERY_HUB_URL", hub.url)
    monkeypatch.delenv("KACHERY_HUB_TOKEN", raising=False)
    _hub._chosen_url.clear()
    with pytest.raises(HubAuthError) as e:
        _hub.connect_signed("appending").json("POST", "/api/feeds/" + "0" * 20 + "/messages",
                                              content=b'{"messages":[{"a":1}]}', session=True)
    assert e.value.code == "client_not_registered"


def test_body_hash_of_frames_is_checked(hub: HubProcess, people: tuple[Client, Client]) -> None:
    alice, _ = people
    feed = _feed(alice)
    raw = Raw(hub, alice.keys)
    path = f"/api/feeds/{feed.feed_id}/messages"
    try:
        body = b'{"messages":[{"a":1}]}'
        headers = signed_headers(alice.keys, "POST", path, body, host=_host(hub),
                                 body_sha1=hashlib.sha1(b"other").hexdigest())
        status, answer = raw.call("POST", path, body, headers=headers)
        assert (status, answer["error"]["code"]) == (401, "bad_signature") and "body" in answer["error"]["message"]
    finally:
        raw.close()
    assert feed.get_num_messages() == 0


def _metric(hub: HubProcess, name: str) -> dict[str, float]:
    """``{labels: value}`` of metric ``name`` at the hub's /metrics (labels as written, '' for none)."""
    import re

    import httpx2

    text = httpx2.get(f"{hub.url}/metrics", timeout=30).text
    found = {}
    for line in text.splitlines():
        m = re.fullmatch(re.escape(name) + r"(\{.*\})? (\S+)", line)
        if m:
            found[m.group(1) or ""] = float(m.group(2))
    return found


def test_sessions_and_their_requests_are_in_the_metrics(hub: HubProcess, people: tuple[Client, Client]) -> None:
    alice, _ = people
    feed = _feed(alice)
    append = '{method="POST",route="/api/feeds/{feed_id}/messages",status="200"}'
    refused = '{method="GET",route="unmatched",status="404"}'
    before = _metric(hub, "kachery_hub_session_requests_total")
    open_before = _metric(hub, "kachery_hub_sessions")[""]
    raw = Raw(hub, alice.keys)
    try:
        assert _metric(hub, "kachery_hub_sessions")[""] == open_before + 1
        for i in range(3):
            assert raw.call("POST", f"/api/feeds/{feed.feed_id}/messages", {"messages": [{"i": i}]})[0] == 200
        assert raw.call("GET", f"/api/{alice.project}/nothing-here")[0] == 404
    finally:
        raw.close()
    after = _metric(hub, "kachery_hub_session_requests_total")
    assert after[append] - before.get(append, 0) == 3
    assert after[refused] - before.get(refused, 0) == 1
    durations = _metric(hub, "kachery_hub_session_request_duration_seconds_count")
    assert durations['{method="POST",route="/api/feeds/{feed_id}/messages"}'] >= 3
    # Route templates only: no feed, project or path of a request appears.
    import httpx2

    text = httpx2.get(f"{hub.url}/metrics", timeout=30).text
    assert feed.feed_id not in text and alice.project not in text and "nothing-here" not in text
    deadline = time.monotonic() + 10
    while _metric(hub, "kachery_hub_sessions")[""] != open_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _metric(hub, "kachery_hub_sessions")[""] == open_before

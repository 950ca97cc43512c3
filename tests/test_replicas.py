"""Two hub replicas on one PostgreSQL and one S3 store behind HAProxy (:mod:`lb_fixtures`), used by
two people's clients whichever replica their requests land on; then one replica SIGKILLed mid-run.

Clients talk to the balancer's URL, or to one replica directly (each replica also has its own
address as a public URL), so a test can put the two ends of a feed or a task on different
replicas for certain. alice owns a project; bob is a member of it.
"""

from __future__ import annotations

import hashlib
import html
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("fastapi")

import httpx2  # noqa: E402

import kachery_core as kc  # noqa: E402
from feed_worker import Worker as FeedWorker  # noqa: E402
from hub_fixtures import postgres_server, s3_server, signed_headers  # noqa: E402,F401
from hub_process import forget_hubs  # noqa: E402
from kachery_core import _hub  # noqa: E402
from lb_fixtures import Cluster, cluster  # noqa: E402,F401
from task_worker import Worker as TaskWorker  # noqa: E402

pytestmark = pytest.mark.slow

ALICE, BOB = "alice@example.org", "bob@example.org"


@dataclass
class People:
    """alice and bob, each with a kachery directory of their own, signed in through the balancer."""

    cluster: Cluster
    root: Path
    monkeypatch: pytest.MonkeyPatch
    tokens: dict[str, str]
    project: str = ""

    def be(self, email: str, url: str | None = None) -> None:
        """Act as ``email``'s computer from now on, talking to ``url`` (default: the balancer)."""
        self.monkeypatch.setenv("KACHERY_CLOUD_DIR", str(self.root / email.split("@")[0]))
        kc.init(hub_url=url or self.cluster.url)  # signed in once, through the balancer: every replica knows the key

    def token(self, email: str) -> str:
        if email not in self.tokens:
            self.tokens[email] = self.cluster.token(email)
        return self.tokens[email]


@pytest.fixture
def people(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[People]:
    p = People(cluster, tmp_path, monkeypatch, {})
    for email in (BOB, ALICE):
        monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / email.split("@")[0]))
        info = kc.init(hub_url=cluster.url, token=p.token(email))
    p.project = str(info["default_project_id"])  # alice's
    kc.set_project_member(p.project, BOB, "write")
    yield p
    forget_hubs()


def _replica_url(cluster: Cluster, index: int) -> str:
    return cluster.replicas[index].url


# ---------------------------------------------------------------- sharing


def test_a_file_and_a_mutable_stored_through_one_replica_are_read_through_the_other(people: People) -> None:
    c = people.cluster
    data = hashlib.sha256(b"replicas").digest() * 5000
    people.be(ALICE, _replica_url(c, 0))
    src = people.root / "data.bin"
    src.write_bytes(data)
    uri = kc.store_file(str(src), label="data.bin")
    kc.set_mutable("shared/result", uri, project_id=people.project)
    people.be(BOB, _replica_url(c, 1))
    assert kc.get_mutable("shared/result", project_id=people.project) == uri
    assert Path(kc.load_file(uri)).read_bytes() == data
    people.be(BOB)  # and through the balancer, several times: both replicas answer
    for _ in range(4):
        assert kc.load_bytes(uri, 0, 32) == data[:32]
        assert kc.get_mutable("shared/result", project_id=people.project) == uri
    kc.set_mutable("shared/result", "changed by bob", project_id=people.project)
    people.be(ALICE, _replica_url(c, 1))
    assert kc.get_mutable("shared/result", project_id=people.project) == "changed by bob"


def test_a_signed_request_replayed_at_the_other_replica_is_refused(people: People) -> None:
    c = people.cluster
    people.be(ALICE)
    keys = _hub._client_keys()[0]
    headers = signed_headers(keys, "GET", "/api/me", host=urlsplit(c.url).netloc)  # made for the balancer
    first = httpx2.get(_replica_url(c, 0) + "/api/me", headers=headers)
    assert first.status_code == 200 and first.json()["user"]["email"] == ALICE, first.text
    for again in (_replica_url(c, 1), c.url, _replica_url(c, 0)):
        r = httpx2.get(again + "/api/me", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "replayed_request", (again, r.text)


# ---------------------------------------------------------------- sign-in in a browser


def _next_lands_elsewhere(c: Cluster, http: httpx2.Client, than: str) -> None:
    """Round robin: once a request landed on ``than``, the next one lands on the other replica."""
    for _ in range(20):
        if c.replica_of(http.get(c.url + "/api/health")) == than:
            return
    raise AssertionError(f"no request landed on {than}")


def _csrf(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, page[:2000]
    return html.unescape(m.group(1))


def test_a_browser_signs_in_with_a_link_and_its_session_holds_on_the_other_replica(people: People) -> None:
    c = people.cluster
    token = c.token("carol@example.org")
    with httpx2.Client(base_url=c.url, headers={"Origin": c.url}) as browser:
        page = browser.get("/", params={"token": token})
        assert page.status_code == 200 and "carol@example.org" in page.text
        first = c.replica_of(page)
        _next_lands_elsewhere(c, browser, first)
        confirmed = browser.post("/", data={"csrf": _csrf(page.text), "token": token, "action": "confirm"})
        assert confirmed.status_code == 303, confirmed.text
        second = c.replica_of(confirmed)
        assert {first, second} == {"r1", "r2"}
        _next_lands_elsewhere(c, browser, second)
        home = browser.get("/")
        assert c.replica_of(home) == first
        assert "signed in as <b>carol@example.org</b>" in home.text


def test_a_notebook_signs_in_through_a_browser_whose_steps_land_on_both_replicas(people: People) -> None:
    c = people.cluster
    people.monkeypatch.setenv("KACHERY_CLOUD_DIR", str(people.root / "dave-notebook"))
    notebook = _hub.connect("signing in", url=c.url)
    asked = notebook.send("POST", "/api/sign-in-requests", json={"label": "dave's notebook"}).json()
    assert asked["url"].startswith(c.url + "/sign-in/")
    token = c.token("dave@example.org")
    with httpx2.Client(headers={"Origin": c.url}) as browser:
        page = browser.get(asked["url"])
        assert page.status_code == 200, page.text
        first = c.replica_of(page)
        _next_lands_elsewhere(c, browser, first)  # the decision lands on the other replica
        decided = browser.post(asked["url"], data={"csrf": _csrf(page.text), "token": token, "action": "confirm"})
        assert decided.status_code == 200 and c.replica_of(decided) != first, decided.text
    status = notebook.send("GET", f"/api/sign-in-requests/{asked['id']}").json()["status"]
    assert status == "confirmed"
    for url in (_replica_url(c, 0), _replica_url(c, 1)):
        assert _hub.connect(url=url).me(refresh=True)["user"]["email"] == "dave@example.org"


# ---------------------------------------------------------------- feeds and tasks across replicas


def test_a_feed_followed_through_one_replica_gets_appends_made_through_the_other_live(people: People) -> None:
    c = people.cluster
    people.be(ALICE, _replica_url(c, 1))
    feed = kc.create_feed(label="across replicas")
    follower = FeedWorker(people.root, "bob-follows", "follow", "--hub", _replica_url(c, 0), "--token",
                          people.token(BOB), "--feed", feed.uri, "--total", "20")
    try:
        follower.wait_event("ready")
        for i in range(20):
            feed.append_message({"i": i})
            # live: each message reaches the follower before the next is appended
            follower.wait_for(lambda events, i=i: any(e["event"] == "msg" and e["n"] == i for e in events),
                              60, f"message {i}")
        follower.wait_event("done")
        assert [(e["n"], e["m"]) for e in follower.of("msg")] == [(i, {"i": i}) for i in range(20)]
    finally:
        follower.kill()


def test_a_task_requested_through_one_replica_is_served_by_a_backend_on_the_other(people: People) -> None:
    c = people.cluster
    runs = people.root / "runs.jsonl"
    backend = TaskWorker(people.root, "backend-2", "backend", "--hub", _replica_url(c, 1), "--token",
                         people.token(ALICE), "--project", people.project, "--runs", str(runs), "--name", "backend-2")
    try:
        backend.wait_event("ready")
        people.be(BOB, _replica_url(c, 0))
        result = kc.request_task(task_type="calculation", task_name="t.count", task_input={"x": 1}, timeout_sec=120,
                                 project_id=people.project)
        assert result["x"] == 1 and result["worker"] == "backend-2"
    finally:
        backend.interrupt()


# ---------------------------------------------------------------- a replica dies


def _live_followers(url: str) -> float:
    """Event streams the replica at ``url`` holds open now (its Prometheus gauge)."""
    text = httpx2.get(url + "/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("kachery_hub_live_followers"))


def test_a_replica_sigkilled_mid_run_loses_no_message_job_or_file(people: People) -> None:
    c = people.cluster
    root, project = people.root, people.project
    people.be(ALICE)
    texts = [f"file {i} stored before the kill\n" * 50 for i in range(8)]
    uris = [kc.store_text(t) for t in texts]
    kc.set_mutable("kill/uris", ",".join(uris), project_id=project)
    feed = kc.create_feed(label="through the kill")
    total, gate, runs = 150, root / "gate", root / "runs.jsonl"
    follower = FeedWorker(root, "bob-follows", "follow", "--hub", c.url, "--token", people.token(BOB), "--feed",
                          feed.uri, "--total", str(total))
    backend = TaskWorker(root, "backend", "backend", "--hub", c.url, "--token", people.token(ALICE), "--project",
                         project, "--runs", str(runs), "--name", "backend")
    workers: list[FeedWorker | TaskWorker] = [follower, backend]
    try:
        follower.wait_event("ready")
        backend.wait_event("ready")
        requesters = [TaskWorker(root, f"requester-{i}", "request", "--hub", c.url, "--token", people.token(BOB),
                                 "--project", project, "--type", "calculation", "--name", "t.count",
                                 "--input", f'{{"x": {100 + i}, "gate": "{gate}"}}', "--timeout", "300")
                      for i in range(6)]
        workers += requesters
        for r in requesters:
            r.wait_event("requesting")
        deadline = time.monotonic() + 120
        while not runs.exists() or not runs.read_text().strip():  # jobs are running, held at the gate
            assert time.monotonic() < deadline, "no job started"
            time.sleep(0.05)
        # The replica that holds the follower's stream dies; the writer appends through the balancer, so
        # an append in flight at the kill is sent again (its append ID keeps it from being stored twice).
        while not (holding := [i for i in (0, 1) if _live_followers(_replica_url(c, i)) >= 1]):
            assert time.monotonic() < deadline, "no replica holds the follower's stream"
            time.sleep(0.05)
        victim = holding[0]
        writer = FeedWorker(root, "alice-writes", "append", "--hub", c.url, "--token",
                            people.token(ALICE), "--feed", feed.uri, "--count", str(total), "--pattern", "single",
                            "--pause", "0.01")
        workers.append(writer)
        follower.wait_for(lambda events: sum(e["event"] == "msg" for e in events) >= 20, 120, "20 messages")
        c.kill(victim)
        # Reads through the balancer while it notices: no error reaches the user.
        people.be(BOB)
        until = time.monotonic() + 3
        reads = 0
        while time.monotonic() < until:
            for uri, text in zip(uris, texts):
                assert kc.load_text(uri) == text
            assert kc.get_mutable("kill/uris", project_id=project) == ",".join(uris)
            reads += 1
        assert reads >= 1
        gate.touch()
        for i, r in enumerate(requesters):
            assert r.result(timeout=180)["x"] == 100 + i
        writer.wait_event("done", timeout=180)
        follower.wait_event("done", timeout=180)
        numbers = [e["n"] for e in follower.of("msg")]
        assert numbers == list(range(total)), numbers
        assert [e["m"]["i"] for e in follower.of("msg")] == list(range(total))
        # No error reached the writer (its own loop retried nothing: the client did, inside the call),
        # and the numbers it was answered are each message's own, once.
        assert all(not e["retried"] for e in writer.of("appended"))
        assert [n for e in writer.of("appended") for n in e["numbers"]] == list(range(total))
        people.be(BOB)
        later = kc.store_text("stored through the balancer after the kill")
        for url in (c.url, _replica_url(c, 1 - victim)):
            people.be(BOB, url)
            for uri, text in zip(uris, texts):
                assert kc.load_text(uri) == text
            assert kc.load_text(later) == "stored through the balancer after the kill"
    finally:
        for w in workers:
            w.kill()
        if c.replicas[0].proc is None or c.replicas[1].proc is None:
            c.restart(0 if c.replicas[0].proc is None else 1)


# ---------------------------------------------------------------- which requests a client sends again


class _Flaky:
    """A tiny HTTP server on loopback that fails the first ``fail`` requests, then answers ``{"ok": true}``.

    ``how``: ``drop`` closes the connection without an answer (a replica SIGKILLed mid-request);
    a number answers that status with a balancer's HTML page. Records each request's head.
    """

    def __init__(self, fail: int, how: str) -> None:

        self.fail, self.how = fail, how
        self.heads: list[str] = []
        #: Only requests signed by this client count (a client another test left running may find this
        #: port, once its hub's, and send requests of its own).
        self.only: str | None = None
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                if self.only is not None and self.only.encode() not in head:
                    continue
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                while m and len(body) < int(m.group(1)):
                    body += conn.recv(65536)
                self.heads.append(head.decode("latin-1"))
                if len(self.heads) <= self.fail:
                    if self.how == "drop":
                        continue
                    page = b"<html><body><h1>503 Service Unavailable</h1></body></html>"
                    conn.sendall(b"HTTP/1.1 %s Oops\r\ncontent-type: text/html\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%s" % (self.how.encode(), len(page), page))
                    continue
                answer = b'{"ok":true}'
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (len(answer), answer))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def flaky_client() -> Iterator[tuple[type[_Flaky], list[_hub.HubClient]]]:
    from hub_fixtures import new_keys

    made: list[_hub.HubClient] = []
    servers: list[_Flaky] = []

    class Server(_Flaky):
        def __init__(self, fail: int, how: str) -> None:
            super().__init__(fail, how)
            servers.append(self)
            made.append(_hub.HubClient(self.url, new_keys(), httpx2.Client(timeout=10)))
            self.only = str(made[-1].client_id)

    yield Server, made
    for s in servers:
        s.close()
    for client in made:
        client.http.close()


CALCULATION = b'{"task_input":{"x":1},"task_name":"t.count","task_type":"calculation"}'
ACTION = b'{"task_input":{"x":1},"task_name":"t.act","task_type":"action"}'
SENT_AGAIN = [
    ("GET", "/api/files/" + "a" * 40, None),
    ("GET", "/api/projects/p1/mutables/k", None),
    ("PUT", "/api/projects/p1/mutables/k", b'{"value":"v"}'),
    ("POST", "/api/projects/p1/tasks/requests", CALCULATION),
    ("POST", "/api/projects/p1/tasks/requests/batch",
     b'{"task_name":"t.count","task_type":"calculation","task_inputs":[{"x":1},{"x":2}]}'),
    ("POST", "/api/projects/p1/tasks/jobs/wait", b'{"job_ids":["j"],"wait":1}'),
    ("POST", "/api/projects/p1/files/" + "a" * 40 + "/upload", b'{"size":3}'),
    ("POST", "/api/projects/p1/files/" + "a" * 40 + "/complete", b'{"label":null,"upload_id":"' + b"0" * 32 + b'"}'),
    ("POST", "/api/feeds/f1/messages", b'{"append_id":"' + b"0" * 32 + b'","messages":[{"i":1}]}'),
]
SENT_ONCE = [
    ("POST", "/api/feeds/f1/messages", b'{"messages":[{"i":1}]}'),  # no append ID: it might be stored twice
    ("POST", "/api/projects/p1/tasks/requests", ACTION),
    ("POST", "/api/projects/p1/tasks/requests/batch", b'{"task_name":"t.act","task_type":"action","task_inputs":[{}]}'),
    ("POST", "/api/projects/p1/tasks/backends/b1/claim", b'{"wait":1}'),
    ("POST", "/api/projects/p1/tasks/jobs/j/complete", b'{"status":"finished"}'),
    ("DELETE", "/api/projects/p1/mutables/k", None),
]


@pytest.mark.parametrize("how", ["drop", "502", "503", "504"])
@pytest.mark.parametrize(("method", "path", "body"), SENT_AGAIN)
def test_an_idempotent_request_is_sent_again_after_a_transient_failure(
        flaky_client: tuple[type[_Flaky], list[_hub.HubClient]], how: str, method: str, path: str,
        body: bytes | None) -> None:
    server_class, clients = flaky_client
    server = server_class(2, how)
    assert clients[-1].send(method, path, content=body).json() == {"ok": True}
    assert len(server.heads) == 3
    nonces = {re.search(r"(?im)^x-kachery-nonce: *(\S+)", h).group(1) for h in server.heads}  # type: ignore[union-attr]
    assert len(nonces) == 3  # each try signed anew: a replica that saw the first refuses no later one


@pytest.mark.parametrize("how", ["drop", "502"])
@pytest.mark.parametrize(("method", "path", "body"), SENT_ONCE)
def test_a_request_that_may_not_be_repeated_is_sent_once(
        flaky_client: tuple[type[_Flaky], list[_hub.HubClient]], how: str, method: str, path: str,
        body: bytes | None) -> None:
    server_class, clients = flaky_client
    server = server_class(1, how)
    error = kc.HubUnavailableError if how == "drop" else kc.HubServerError
    with pytest.raises(error):
        clients[-1].send(method, path, content=body)
    assert len(server.heads) == 1


def test_a_streamed_body_is_not_sent_again(flaky_client: tuple[type[_Flaky], list[_hub.HubClient]]) -> None:
    server_class, clients = flaky_client
    server = server_class(1, "drop")
    with pytest.raises(kc.HubUnavailableError):
        clients[-1].send("PUT", "/api/projects/p1/files/" + "a" * 40, content=iter([b"abc"]), body_sha1="a" * 40)
    assert len(server.heads) == 1


def test_retries_are_bounded(flaky_client: tuple[type[_Flaky], list[_hub.HubClient]]) -> None:
    server_class, clients = flaky_client
    server = server_class(100, "drop")
    with pytest.raises(kc.HubUnavailableError, match="cannot reach the hub"):
        clients[-1].send("GET", "/api/health")
    assert len(server.heads) == len(_hub.RETRY_DELAYS) + 1


class _Forwarder:
    """A TCP forwarder to ``port`` on loopback whose :meth:`cut` drops every connection it carries
    (a replica dying under its balancer, which then connects the next request to a live one)."""

    def __init__(self, port: int) -> None:

        self.port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open: list[socket.socket] = []
        self.accepted = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            with self._lock:
                self.open += [client, upstream]
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(2)
            except OSError:
                pass

    def cut(self) -> None:
        with self._lock:
            cut, self.open = self.open, []
        for s in cut:
            try:
                s.shutdown(2)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def test_a_broken_session_sends_a_calculation_request_again_and_an_action_request_not(tmp_path: Path) -> None:
    from hub_process import HubProcess, free_port, running

    port = free_port()
    forwarder = _Forwarder(port)
    hub = HubProcess(tmp_path / "hub-data", port, public_url=forwarder.url)
    runs = tmp_path / "runs.jsonl"
    try:
        with running(hub):
            token = hub.token(ALICE)
            project = str(kc.init(hub_url=forwarder.url, token=token)["default_project_id"])
            outcomes: dict[str, object] = {}

            def request(task_type: str, name: str) -> None:
                try:
                    outcomes[task_type] = kc.request_task(task_type=task_type, task_name=name, task_input={"x": 7},
                                                          timeout_sec=120, project_id=project)
                except Exception as e:  # noqa: BLE001 - what the user would see
                    outcomes[task_type] = e

            threads = [threading.Thread(target=request, args=a) for a in (("calculation", "t.count"),
                                                                          ("action", "t.action"))]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            while len(_hub.connect().json("GET", f"/api/projects/{project}/tasks/jobs")["jobs"]) < 2:
                assert time.monotonic() < deadline, "the two jobs were not queued"
                time.sleep(0.05)
            forwarder.cut()  # both requests are waiting on the session: it breaks under them
            threads[1].join(60)
            assert isinstance(outcomes["action"], kc.HubUnavailableError), outcomes
            backend = TaskWorker(tmp_path, "backend", "backend", "--hub", forwarder.url, "--token", token,
                                 "--project", project, "--runs", str(runs), "--name", "backend")
            try:
                threads[0].join(120)
                assert outcomes["calculation"] == {"x": 7, "worker": "backend", "pid": backend.proc.pid}, outcomes
                deadline = time.monotonic() + 60
                while "t.action" not in (runs.read_text() if runs.exists() else ""):
                    assert time.monotonic() < deadline, "the action did not run"
                    time.sleep(0.05)
                backend.interrupt()
                ran = [line for line in runs.read_text().splitlines() if '"t.action"' in line]
                assert len(ran) == 1, ran  # queued once, run once
            finally:
                backend.kill()
    finally:
        forwarder.close()

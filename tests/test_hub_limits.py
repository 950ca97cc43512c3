"""The hub's limits against anonymous abuse: body and header sizes, sign-in rates, private data files.

Sizes, budgets, timeouts and permissions are checked through real ``kachery-hub
serve`` processes (uvicorn's parser, sockets, the process's memory and umask are
what matter), most of them sharing one hub; client addresses other than
127.0.0.1 are other loopback addresses (127.0.0.0/8 all reach the hub). Rate
limits are also checked in process, where the client address can be chosen.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import in_own_thread, run_async

pytest.importorskip("fastapi")

from fastapi import FastAPI  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

import kachery_core as kc  # noqa: E402
from hub_fixtures import new_keys, signed_headers  # noqa: E402
from hub_process import HubProcess, forget_hubs, free_port, real_hub, running  # noqa: E402,F401
from kachery_hub import Settings, create_app  # noqa: E402
from kachery_hub._headlimit import _ProbeTransport, head_limited_protocol  # noqa: E402
from kachery_hub._ratelimit import RateLimiter  # noqa: E402
from kachery_hub._settings import (  # noqa: E402
    ENV_BODY_TIMEOUT,
    ENV_MAX_INFLIGHT_BODY_BYTES,
    ENV_RATE_LIMIT,
    ENV_TRUSTED_PROXIES,
)
from kachery_hub.errors import ConfigurationError  # noqa: E402

MiB = 2**20
#: Signature headers that are present but verify for nobody: the hub reads such a request's body
#: (the signature covers it) before it can tell; an unsigned one is refused before that.
FAKE_SIGNATURE = {"X-Kachery-Client": "ab" * 32, "X-Kachery-Signature": "cd" * 64}


@pytest.fixture(scope="module")
def shared_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """One real hub with the default settings for the tests that need no other."""
    with running(HubProcess(tmp_path_factory.mktemp("shared") / "hub-data", free_port())) as hub:
        yield hub


def _memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def _send_chunked(port: int, method: str, path: str, total: int) -> tuple[int, dict[str, str], bytes, int]:
    """Send a chunked body of ``total`` bytes, stopping once the hub answers or closes; (status, headers, body, sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    with sock:
        extra = "".join(f"{k}: {v}\r\n" for k, v in FAKE_SIGNATURE.items()) if path.startswith("/api/") else ""
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                     f"{extra}Transfer-Encoding: chunked\r\n\r\n".encode())
        piece = MiB
        chunk = b"%x\r\n" % piece + b"7" * piece + b"\r\n"
        sent = 0
        try:
            while sent < total:
                sock.sendall(chunk)
                sent += piece
                if select.select([sock], [], [], 0)[0]:
                    break  # the hub answered before the body ended
            else:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered and closed; the answer is still to be read
        status, headers, body = _read_response(sock)
        return status, headers, body, sent


@pytest.mark.slow
def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(real_hub: HubProcess) -> None:
    assert real_hub.proc is not None
    pid = real_hub.proc.pid
    before = _memory_kib(pid)
    total = 50 * MiB
    for path in ("/api/projects/someone/mutables/key", "/sign-in/anything"):
        method = "PUT" if path.startswith("/api/") else "POST"
        status, headers, body, sent = _send_chunked(real_hub.port, method, path, total)
        assert status == 413, (path, status, body[:300])
        if path.startswith("/api/") or headers["content-type"].startswith("application/json"):
            assert json.loads(body)["error"]["code"] == "payload_too_large"
            assert "over the limit" in json.loads(body)["error"]["message"]
        assert headers.get("connection") == "close"
        assert sent < total, f"the hub read the whole {total >> 20} MiB of {path} before refusing"
    after = _memory_kib(pid)
    grew = after["VmHWM"] - before["VmHWM"]
    assert grew < 20 * 1024, f"hub peak memory grew by {grew} KiB for {total >> 20} MiB bodies ({before} -> {after})"
    # The hub is still healthy and the refused requests left nothing behind.
    assert real_hub.proc.poll() is None
    sock = socket.create_connection(("127.0.0.1", real_hub.port), timeout=30)
    with sock:
        sock.sendall(f"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:{real_hub.port}\r\n\r\n".encode())
        assert _read_response(sock)[0] == 200


def test_pages_take_a_much_smaller_body_than_the_api(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "hub"))
    http = _client(app)
    try:
        over = b"x" * (64 * 1024 + 1)
        for announced in (True, False):  # Content-Length, or chunked (counted as it arrives)
            content = over if announced else iter([over[:10000], over[10000:]])
            r = http.post("/sign-in/some-request", content=content)
            assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", r.text
            assert "65536 bytes" in r.json()["error"]["message"]
            r = http.post("/api/projects", content=over if announced else iter([over]))
            assert r.status_code != 413, "the API takes up to 4 MiB"
        # A page that reads no body answers, and closes the connection rather than read on.
        r = http.request("GET", "/docs", content=iter([b"x" * 1000]))
        assert r.status_code == 200 and r.headers["connection"] == "close"
        assert http.get("/docs").headers.get("connection") != "close"
    finally:
        app.state.hub.close()


@pytest.mark.parametrize("where", ["header", "request line"])
def test_an_oversized_head_is_refused_without_stalling_other_requests(shared_hub: HubProcess, where: str) -> None:
    port = shared_hub.port
    total = 64 * MiB
    half_sent = threading.Event()
    normal_done = threading.Event()
    outcome: dict[str, object] = {}
    responses: list[tuple[int, dict[str, str], bytes]] = []

    def attack() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        with sock:
            if where == "header":
                sock.sendall(f"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Padding: ".encode())
            else:
                sock.sendall(b"GET /api/health?pad=")
            piece = b"a" * 16384
            sent = 0
            try:
                while sent < total:
                    sock.sendall(piece)
                    sent += len(piece)
                    if sent == 2 * len(piece):
                        # A partial head is pending on this connection: another client must be served now.
                        half_sent.set()
                        outcome["normal_done_first"] = normal_done.wait(60)
                    if select.select([sock], [], [], 0)[0]:
                        break
            except (BrokenPipeError, ConnectionResetError) as e:
                outcome["send_error"] = repr(e)
            outcome["sent"] = sent
            try:
                responses.append(_read_response(sock))
            except (OSError, http.client.HTTPException) as e:
                outcome["read_error"] = repr(e)

    attacker = threading.Thread(target=attack)
    attacker.start()
    try:
        assert half_sent.wait(60)
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        with sock:
            sock.sendall(f"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            status, _, body = _read_response(sock)
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert attacker.is_alive(), "the attacker's head must still be in flight"
    finally:
        normal_done.set()
        attacker.join(120)
    assert outcome.get("normal_done_first") is True
    assert responses, outcome
    status, headers, body = responses[0]
    assert status == 431, (status, body[:300])
    error = json.loads(body)["error"]
    assert error["code"] == "headers_too_large" and "65536 bytes" in error["message"]
    assert headers.get("connection") == "close"
    sent = outcome["sent"]
    assert isinstance(sent, int) and sent < 4 * MiB, f"the hub read {sent} bytes of a head before refusing"


def _group_or_other_bits(root: Path) -> list[str]:
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {stat.filemode(mode)}")
    return found


@pytest.fixture
def hub_on_old_data(tmp_path: Path) -> Iterator[HubProcess]:
    """A real hub started on a data folder an older version left readable by all."""
    data = tmp_path / "hub-data"
    hub = HubProcess(data, free_port())
    old = os.umask(0o022)  # a permissive umask, inherited by the hub process too
    try:
        (data / "blobs" / "sha1" / "ab").mkdir(parents=True)
        (data / "blobs" / "sha1" / "ab" / "old-blob").write_bytes(b"an old private blob")
        (data / "notes.txt").write_text("old")
        assert _group_or_other_bits(data)
        hub.start()
    finally:
        os.umask(old)
    try:
        yield hub
    finally:
        hub.stop()
        forget_hubs()


@pytest.mark.slow
def test_the_hub_data_folder_is_owner_only(hub_on_old_data: HubProcess, tmp_path: Path) -> None:
    hub, data = hub_on_old_data, hub_on_old_data.data
    kc.init(hub_url=hub.url, token=hub.token("alice@example.org"))
    uri = kc.store_text("private " * 1000)
    kc.set_mutable("secret", uri)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * MiB))
    kc.store_file(str(src))
    names = {p.name for p in data.rglob("*")}
    assert {"hub.sqlite", "hub.sqlite-wal", "hub.sqlite-shm", "serve-token", ".tmp", "old-blob"} <= names, names
    assert _group_or_other_bits(data) == []
    hub.stop()
    assert _group_or_other_bits(data) == []


def _client(app: FastAPI, address: str = "203.0.113.7") -> TestClient:
    return TestClient(app, raise_server_exceptions=False, client=(address, 40000))


_LIMITED = [("POST", "/api/sign-in-requests"), ("GET", "/auth/login"), ("POST", "/sign-in/some-request"),
            ("POST", "/api/clients"), ("GET", "/?token=not-a-token"), ("POST", "/"),
            ("GET", "/?x=1&%74oken=not-a-token")]  # the query name decoded, as the page reads it


@pytest.mark.parametrize(("method", "path"), _LIMITED)
def test_sign_in_endpoints_are_rate_limited_per_client_address(tmp_path: Path, method: str, path: str) -> None:
    app = create_app(Settings(data_dir=tmp_path / "hub", rate_limit_per_minute=6, rate_limit_burst=3))
    http_a, http_b = _client(app), _client(app, "198.51.100.9")
    try:
        for _ in range(3):
            assert http_a.request(method, path, follow_redirects=False).status_code != 429
        refused = http_a.request(method, path, follow_redirects=False)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert "sign-in" in refused.json()["error"]["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 10  # one token comes back every 10 s
        # Another address has its own allowance; the limited one still reaches everything else.
        assert http_b.request(method, path, follow_redirects=False).status_code != 429
        assert http_a.get("/api/health").status_code == 200
        assert http_a.get("/").status_code != 429
        assert http_a.get("/sign-in/some-request").status_code != 429
        # The sign-in endpoints share one allowance per address: a flood cannot move to the next one.
        other_method, other_path = _LIMITED[(_LIMITED.index((method, path)) + 1) % len(_LIMITED)]
        assert http_a.request(other_method, other_path, follow_redirects=False).status_code == 429
    finally:
        app.state.hub.close()


def test_the_default_rate_limit_lets_a_burst_of_sixty_through(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).rate_limit_per_minute == 30
    app = create_app(Settings(data_dir=tmp_path / "hub"))
    try:
        codes = [_client(app).post("/api/sign-in-requests").status_code for _ in range(61)]
        assert 429 not in codes[:60] and codes[60] == 429
    finally:
        app.state.hub.close()


def test_a_rate_limit_of_zero_turns_it_off(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "hub", rate_limit_per_minute=0))
    try:
        assert 429 not in {_client(app).post("/api/sign-in-requests").status_code for _ in range(100)}
    finally:
        app.state.hub.close()


def test_the_rate_limit_is_read_from_the_environment(tmp_path: Path) -> None:
    env = {"KACHERY_HUB_DATA": str(tmp_path)}
    assert Settings.from_environ(env).rate_limit_per_minute == 30
    assert Settings.from_environ({**env, ENV_RATE_LIMIT: "120"}).rate_limit_per_minute == 120
    assert Settings.from_environ({**env, ENV_RATE_LIMIT: "0"}).rate_limit_per_minute == 0
    with pytest.raises(ConfigurationError, match=ENV_RATE_LIMIT):
        Settings.from_environ({**env, ENV_RATE_LIMIT: "fast"})
    with pytest.raises(ConfigurationError, match="rate_limit"):
        Settings(data_dir=tmp_path, rate_limit_per_minute=-1)


def test_the_rate_limiter_tracks_a_bounded_number_of_addresses() -> None:
    clock = [1000.0]
    limiter = RateLimiter(per_minute=60, burst=2, max_clients=100, clock=lambda: clock[0])
    for i in range(10_000):
        assert limiter.take(f"10.0.{i // 256}.{i % 256}") == 0
    assert len(limiter) == 100
    assert limiter.take("10.0.39.15") == 0  # recently seen: still tracked, second token
    assert limiter.take("10.0.39.15") > 0
    clock[0] += 1.0
    assert limiter.take("10.0.39.15") == 0  # one token a second comes back
    # IPv6 clients are counted by /64: one host has a whole network of addresses.
    assert limiter.take("2001:db8:1:2::1") == 0
    assert limiter.take("2001:db8:1:2:ffff::9") == 0
    assert limiter.take("2001:db8:1:2:aaaa::3") > 0
    assert limiter.take("2001:db8:1:3::1") == 0


# --- Through one shared hub: trailers, in-flight bodies, unsigned bodies, early answers, long request lines ---


def _connect(port: int, source: str = "127.0.0.1", timeout: float = 30.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def _head(method: str, path: str, port: int, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answered(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def _closed_by_hub(sock: socket.socket) -> bool:
    """Whether the hub closes the connection after its answer (rather than waiting for more).

    Asked within 2 s, well within uvicorn's 5 s keep-alive timeout, which would close it anyway.
    """
    sock.settimeout(2.0)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def _settled_rss_kib(pid: int) -> int:
    """The hub's VmRSS once it stops changing (it has taken in what was sent to it)."""
    last, steady = _memory_kib(pid)["VmRSS"], 0
    for _ in range(100):
        time.sleep(0.1)
        now = _memory_kib(pid)["VmRSS"]
        steady = steady + 1 if abs(now - last) < 512 else 0
        last = now
        if steady >= 5:
            break
    return last


class _Signer:
    """A client key registered with a real hub, signing raw requests for it."""

    def __init__(self, hub: HubProcess, email: str) -> None:
        self.keys = new_keys()
        self.host = f"127.0.0.1:{hub.port}"
        body = json.dumps({"token": hub.token(email), "label": "limits"}).encode()
        headers = {**self.headers("POST", "/api/clients", body), "Content-Type": "application/json",
                   "Content-Length": str(len(body))}
        with _connect(hub.port, "127.0.0.30") as sock:  # not 127.0.0.1, whose sign-in allowance a test spends
            sock.sendall(_head("POST", "/api/clients", hub.port, headers) + body)
            status, _, answer = _read_response(sock)
        assert status == 200, answer[:300]
        self.project = str(json.loads(answer)["default_project_id"])

    def headers(self, method: str, path: str, body: bytes = b"", body_sha1: str | None = None) -> dict[str, str]:
        return signed_headers(self.keys, method, path, body, body_sha1=body_sha1, host=self.host)


@pytest.mark.parametrize("shape", ["many fields", "one long field"])
@pytest.mark.parametrize("path", ["/api/projects/someone/mutables/key", "/sign-in/anything"])
def test_chunked_trailers_count_against_the_head_limit(shared_hub: HubProcess, shape: str, path: str) -> None:
    assert shared_hub.proc is not None
    pid, port = shared_hub.proc.pid, shared_hub.port
    before = _settled_rss_kib(pid)
    headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked",
               **(FAKE_SIGNATURE if path.startswith("/api/") else {})}
    total = 48 * MiB
    with _connect(port, "127.0.0.21") as sock:  # POST /sign-in/... counts against the sign-in allowance
        sock.sendall(_head("PUT" if path.startswith("/api/") else "POST", path, port, headers) + b"2\r\n{}\r\n0\r\n")
        if shape == "many fields":
            piece = b"".join(b"X-T%d: " % i + b"a" * 1000 + b"\r\n" for i in range(64))
        else:
            sock.sendall(b"X-T: ")
            piece = b"a" * 65536
        sent = 0
        try:
            while sent < total and not _answered(sock):
                sock.sendall(piece)
                sent += len(piece)
            else:
                if sent >= total:
                    sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        grew = _memory_kib(pid)["VmRSS"] - before
        status, answer_headers, body = _read_response(sock)
    assert status == 431, (status, body[:300])
    error = json.loads(body)["error"]
    assert error["code"] == "headers_too_large" and "65536 bytes" in error["message"]
    assert answer_headers.get("connection") == "close"
    assert sent < total, f"the hub took {total >> 20} MiB of trailer fields"
    assert grew < 16 * 1024, f"hub memory grew by {grew} KiB"
    with _connect(port) as sock:  # the hub is well
        sock.sendall(_head("GET", "/api/health", port, {}))
        assert _read_response(sock)[0] == 200


def _chunked(pieces: list[bytes], trailer: bytes = b"") -> bytes:
    framed = [b"%x%s\r\n%s\r\n" % (len(p), b";ext=1" if i % 97 == 0 else b"", p) for i, p in enumerate(pieces)]
    return b"".join(framed) + b"0\r\n" + trailer + b"\r\n"


def test_chunked_bodies_in_small_and_large_chunks_still_pass(shared_hub: HubProcess) -> None:
    signer = _Signer(shared_hub, "chunks@example.org")
    port = shared_hub.port
    sizes = [7] * 20000 + [MiB] * 5 + [1] * 20000 + [65536] * 8 + [3] * 5000
    data = os.urandom(sum(sizes))
    pieces, at = [], 0
    for size in sizes:
        pieces.append(data[at:at + size])
        at += size
    sha1 = hashlib.sha1(data).hexdigest()
    path = f"/api/projects/{signer.project}/files/{sha1}"
    with _connect(port) as sock:
        headers = {**signer.headers("PUT", path, body_sha1=sha1), "Transfer-Encoding": "chunked"}
        sock.sendall(_head("PUT", path, port, headers))
        body = _chunked(pieces, trailer=b"X-Checksum: whatever\r\n")
        for i in range(0, len(body), 65536):
            sock.sendall(body[i:i + 65536])
        status, _, answer = _read_response(sock)
        assert status == 200, answer[:300]
        assert json.loads(answer)["size"] == len(data)
        download = f"/api/files/{sha1}"
        sock.sendall(_head("GET", download, port, signer.headers("GET", download)))
        status, _, answer = _read_response(sock)
        assert status == 200 and answer == data
        # A JSON body (a mutable of almost 1 MiB) in 100-byte chunks.
        value = json.dumps({"value": "v" * 1_000_000}).encode()
        path = f"/api/projects/{signer.project}/mutables/chunked"
        headers = {**signer.headers("PUT", path, value), "Transfer-Encoding": "chunked",
                   "Content-Type": "application/json"}
        sock.sendall(_head("PUT", path, port, headers) + _chunked([value[i:i + 100] for i in range(0, len(value), 100)]))
        status, _, answer = _read_response(sock)
        assert status == 200, answer[:300]


def _hold_bodies(pid: int, port: int, sources: list[str], per_source: int) -> tuple[list[socket.socket], list[bytes]]:
    """Connections that each send all but the last byte of a 4 MiB JSON body: (those held, the answers of the others)."""
    path = "/api/projects/someone/mutables/key"
    length = 4 * MiB
    body = b"[" + b"{}," * ((length - 2) // 3)
    body += b" " * (length - 1 - len(body))
    socks = []
    for source in sources:
        for _ in range(per_source):
            sock = _connect(port, source)
            sock.sendall(_head("PUT", path, port, {"Content-Type": "application/json", "Content-Length": str(length),
                                                   **FAKE_SIGNATURE}))
            try:
                sock.sendall(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused and closed; the answer is waiting
            socks.append(sock)
    _settled_rss_kib(pid)  # the hub has taken in what it will
    held, answers = socks, []
    while ready := select.select(held, [], [], 1.0)[0]:  # until a second passes with no new answer
        for sock in ready:
            answers.append(sock.recv(65536))
            sock.close()
        held = [sock for sock in held if sock not in ready]
    return held, answers


def test_request_bodies_held_in_flight_are_budgeted(shared_hub: HubProcess) -> None:
    assert shared_hub.proc is not None
    pid, port = shared_hub.proc.pid, shared_hub.port
    signer = _Signer(shared_hub, "budget@example.org")
    before = _settled_rss_kib(pid)
    held: list[socket.socket] = []
    try:
        # One address holds at most a quarter of the 64 MiB budget: four 4 MiB bodies; the others are refused.
        mine, answers = _hold_bodies(pid, port, ["127.0.0.2"], 8)
        held += mine
        assert len(mine) <= 4 and len(answers) >= 4, (len(mine), [a[:12] for a in answers])
        for answer in answers:
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503"), answer[:300]
            assert b"retry-after: 1" in head.lower() and b"connection: close" in head.lower()
            error = json.loads(body)["error"]
            assert error["code"] == "busy" and "from this address" in error["message"]
        # Another address is served meanwhile.
        path = f"/api/projects/{signer.project}/mutables/big"
        value = json.dumps({"value": "v" * 1_000_000}).encode()
        with _connect(port) as sock:
            sock.sendall(_head("PUT", path, port, {**signer.headers("PUT", path, value), "Content-Length": str(len(value)),
                                                   "Content-Type": "application/json"}) + value)
            assert _read_response(sock)[0] == 200
        # Many addresses together hold at most the whole budget, and so does the hub's memory.
        theirs, answers = _hold_bodies(pid, port, [f"127.0.0.{i}" for i in range(3, 13)], 4)
        held += theirs
        grew = _settled_rss_kib(pid) - before
        assert len(held) <= 16 and answers, (len(held), len(answers))
        assert all(a.startswith(b"HTTP/1.1 503") and b'"busy"' in a for a in answers), answers[0][:300]
        assert grew < 96 * 1024, f"hub memory grew by {grew >> 10} MiB holding {len(held)} bodies"
    finally:
        for sock in held:
            sock.close()
    # Bodies that ended gave their bytes back: the budget is whole again.
    _settled_rss_kib(pid)
    mine, answers = _hold_bodies(pid, port, ["127.0.0.2"], 4)
    for sock in mine:
        sock.close()
    assert len(mine) == 4 and not answers, [a[:300] for a in answers]


@pytest.mark.parametrize("where", ["mutable", "upload"])
@pytest.mark.parametrize("framing", ["Content-Length", "chunked"])
def test_an_unsigned_api_body_is_refused_before_it_is_read(shared_hub: HubProcess, where: str, framing: str) -> None:
    port = shared_hub.port
    path = "/api/projects/someone/mutables/key" if where == "mutable" else f"/api/projects/someone/files/{'a' * 40}"
    length = 4 * MiB if where == "mutable" else 4 << 30
    framing_header = {"Content-Length": str(length)} if framing == "Content-Length" else {"Transfer-Encoding": "chunked"}
    with _connect(port, timeout=20) as sock:
        sock.sendall(_head("PUT", path, port, {"Content-Type": "application/json", **framing_header}))
        status, headers, body = _read_response(sock)  # answered with no body byte sent
        assert status == 401, body[:300]
        error = json.loads(body)["error"]
        assert error["code"] == "unauthenticated" and "anonymous" in error["message"]
        assert headers.get("connection") == "close"
        assert _closed_by_hub(sock)


def test_an_upload_answered_before_its_body_is_not_drained(shared_hub: HubProcess) -> None:
    """A refused upload (here a signature that verifies for no one) leaves the hub reading nothing more."""
    port = shared_hub.port
    path = f"/api/projects/someone/files/{'a' * 40}"
    headers = {**signed_headers(new_keys(), "PUT", path, host="elsewhere.example.org"), "Content-Length": str(4 << 30)}
    with _connect(port, timeout=20) as sock:
        sock.sendall(_head("PUT", path, port, headers))
        sent = 0
        try:
            while not _answered(sock) and sent < 256 * MiB:
                sock.sendall(b"x" * MiB)
                sent += MiB
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, answer_headers, body = _read_response(sock)
        assert status == 401 and json.loads(body)["error"]["code"] in ("bad_signature", "wrong_hub"), body[:300]
        assert answer_headers.get("connection") == "close"
        assert _closed_by_hub(sock), "the hub kept the connection open to drain a 4 GiB body it refused"


@pytest.mark.parametrize("where", ["request line", "header"])
def test_a_head_over_the_limit_in_one_read_gets_the_json_431(shared_hub: HubProcess, where: str) -> None:
    port = shared_hub.port
    pad = "a" * 68000
    request = (f"GET /api/health?pad={pad} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n" if where == "request line"
               else f"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Pad: {pad}\r\n\r\n")
    with _connect(port) as sock:
        sock.sendall(request.encode())
        status, headers, body = _read_response(sock)
    assert status == 431, (status, body[:300])
    assert headers["content-type"] == "application/json" and headers.get("connection") == "close"
    error = json.loads(body)["error"]
    assert error["code"] == "headers_too_large" and "65536 bytes" in error["message"]


def test_the_hub_trusts_no_forwarded_for_by_default(shared_hub: HubProcess) -> None:
    """Any local user reaches the hub from 127.0.0.1: X-Forwarded-For from there must not pick the address."""
    port = shared_hub.port
    codes = []
    with _connect(port, "127.0.0.1") as sock:  # (the only test here spending 127.0.0.1's sign-in allowance)
        for i in range(61):
            sock.sendall(_head("GET", f"/?token=guess{i}", port, {"X-Forwarded-For": f"10.1.{i // 250}.{i % 250}"}))
            codes.append(_read_response(sock)[0])
    assert 429 in codes, "every forwarded address had an allowance of its own"
    assert set(codes) <= {401, 429}, codes


# --- A second hub: trusted proxies, a short body timeout, a small sign-in allowance ---


@pytest.fixture(scope="module")
def proxied_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """A real hub behind a (pretended) reverse proxy at 127.0.0.50, with a 1 s body timeout."""
    hub = HubProcess(tmp_path_factory.mktemp("proxied") / "hub-data", free_port(), "--trusted-proxies", "127.0.0.50")
    with running(hub, {ENV_BODY_TIMEOUT: "1", ENV_RATE_LIMIT: "3"}) as started:  # rate 3: bursts of 6
        yield started


def _sign_in_codes(port: int, source: str, n: int) -> list[int]:
    codes = []
    with _connect(port, source) as sock:
        for i in range(n):
            sock.sendall(_head("POST", "/api/sign-in-requests", port,
                               {"X-Forwarded-For": f"10.2.0.{i}", "Content-Length": "0"}))
            codes.append(_read_response(sock)[0])
    return codes


def test_forwarded_for_is_believed_from_trusted_proxies_only(proxied_hub: HubProcess) -> None:
    port = proxied_hub.port
    untrusted = _sign_in_codes(port, "127.0.0.1", 7)  # the peer's own address counts, whatever it forwards
    assert 429 not in untrusted[:6] and untrusted[6] == 429, untrusted
    trusted = _sign_in_codes(port, "127.0.0.50", 12)  # each forwarded address has its own allowance
    assert 429 not in trusted, trusted


def test_a_body_that_stops_arriving_is_answered_408(proxied_hub: HubProcess) -> None:
    port = proxied_hub.port
    for framing in ({"Content-Length": "1000"}, {"Transfer-Encoding": "chunked"}):
        with _connect(port, timeout=20) as sock:
            sock.sendall(_head("PUT", "/api/projects/someone/mutables/key", port,
                               {"Content-Type": "application/json", **framing, **FAKE_SIGNATURE}))
            sock.sendall(b'{"value": "' if "Content-Length" in framing else b'b\r\n{"value": "\r\n')
            status, headers, body = _read_response(sock)  # no more is sent
            assert status == 408, body[:300]
            error = json.loads(body)["error"]
            assert error["code"] == "body_timeout" and "1 s" in error["message"]
            assert headers.get("connection") == "close"


# --- Settings and the protocol, in process ---


def test_the_new_limits_are_read_from_the_environment(tmp_path: Path) -> None:
    env = {"KACHERY_HUB_DATA": str(tmp_path)}
    base = Settings.from_environ(env)
    assert base.max_inflight_body_bytes == 64 * MiB and base.body_read_timeout_seconds == 30
    assert base.trusted_proxies == ()
    s = Settings.from_environ({**env, ENV_MAX_INFLIGHT_BODY_BYTES: "134217728", ENV_BODY_TIMEOUT: "5",
                               ENV_TRUSTED_PROXIES: "10.0.0.1, 192.168.0.0/16,::1"})
    assert s.max_inflight_body_bytes == 128 * MiB and s.body_read_timeout_seconds == 5
    assert s.trusted_proxies == ("10.0.0.1", "192.168.0.0/16", "::1")
    for name, bad in ((ENV_MAX_INFLIGHT_BODY_BYTES, "lots"), (ENV_BODY_TIMEOUT, "soon"), (ENV_TRUSTED_PROXIES, "proxy.lan")):
        with pytest.raises(ConfigurationError, match=name):
            Settings.from_environ({**env, name: bad})
    with pytest.raises(ConfigurationError, match="max_inflight_body_bytes"):
        Settings(data_dir=tmp_path, max_inflight_body_bytes=MiB)
    with pytest.raises(ConfigurationError, match="body_read_timeout_seconds"):
        Settings(data_dir=tmp_path, body_read_timeout_seconds=0)


def test_a_request_target_longer_than_the_url_parser_takes_is_answered_414() -> None:
    """With a head limit above 64 KiB, a target httptools cannot parse gets JSON, not a plain-text 400."""
    pytest.importorskip("httptools")
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not reached")

    async def run() -> bytes:
        protocol_class = head_limited_protocol(MiB)
        protocol = protocol_class(config=Config(app), server_state=ServerState(), app_state={})  # type: ignore[call-arg]
        transport = _ProbeTransport()
        protocol.connection_made(transport)
        protocol.data_received(b"GET /?pad=" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        return transport.written

    written = run_async(run())
    head, _, body = written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414"), written[:300]
    error = json.loads(body)["error"]
    assert error["code"] == "uri_too_long" and "65535 bytes" in error["message"]


# --- Every answer given before the body was read closes the connection ---


def _answered_early(port: int, source: str, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes, bool]:
    """Send a head announcing a long chunked body, then a few chunks: (status, headers, body, closed by the hub)."""
    with _connect(port, source, timeout=5) as sock:
        sock.sendall(_head(method, path, port, {"Content-Type": "application/json", "Transfer-Encoding": "chunked",
                                                **headers}))
        try:
            for _ in range(4):
                sock.sendall(b"%x\r\n%s\r\n" % (1000, b"x" * 1000))
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, answer_headers, body = _read_response(sock)
        return status, answer_headers, body, _closed_by_hub(sock)


def test_a_refusal_of_the_url_text_closes_the_connection(shared_hub: HubProcess) -> None:
    """400 for a query that is not UTF-8, on an upload (no body limit): the hub does not read on."""
    status, headers, body, closed = _answered_early(shared_hub.port, "127.0.0.1", "PUT",
                                                    f"/api/projects/someone/files/{'a' * 40}?label=%ff", FAKE_SIGNATURE)
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_input", body[:300]
    assert closed, "the hub kept the connection open to read a body it refused"
    assert headers.get("connection") == "close"


def test_a_rate_limited_sign_in_closes_the_connection(proxied_hub: HubProcess) -> None:
    port = proxied_hub.port
    with _connect(port, "127.0.0.40") as sock:  # spend this address's burst of 6
        for _ in range(6):
            sock.sendall(_head("POST", "/api/sign-in-requests", port, {"Content-Length": "0"}))
            assert _read_response(sock)[0] != 429
    status, headers, body, closed = _answered_early(port, "127.0.0.40", "POST", "/sign-in/some-request", {})
    assert status == 429 and json.loads(body)["error"]["code"] == "rate_limited", body[:300]
    assert closed, "the hub kept the connection open to read a body it refused"
    assert headers.get("connection") == "close" and headers.get("retry-after")


def test_an_unexpected_error_before_the_body_is_read_closes_the_connection(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "hub"))

    @app.post("/api/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    http = _client(app)
    try:
        r = http.post("/api/boom", content=iter([b"x" * 1000]), headers=FAKE_SIGNATURE)
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error", r.text
        assert r.headers.get("connection") == "close"
    finally:
        app.state.hub.close()


def test_every_error_body_is_built_by_one_helper() -> None:
    from kachery_hub.errors import error_body

    assert json.loads(error_body("busy", "retry", extra=1)) == {"error": {"code": "busy", "message": "retry", "extra": 1}}


# --- serve without the uvicorn internals the head limit uses ---


def test_serve_falls_back_to_h11_when_uvicorn_lacks_what_the_head_limit_uses(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("httptools")
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from kachery_hub._headlimit import http_options

    options = in_own_thread(http_options, 65536)  # as serve: before any event loop runs
    assert isinstance(options["http"], type) and issubclass(options["http"], HttpToolsProtocol)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    # A uvicorn whose protocol no longer has a part the subclass relies on (here: ``pipeline`` renamed): h11,
    # with the same limit.
    init = HttpToolsProtocol.__init__

    def renamed(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.requests_waiting = self.__dict__.pop("pipeline")

    monkeypatch.setattr(HttpToolsProtocol, "__init__", renamed)
    with caplog.at_level("WARNING", logger="kachery_hub"):
        options = in_own_thread(http_options, 65536)  # as serve: before any event loop runs
    assert options == {"http": "h11", "h11_max_incomplete_event_size": 65536}
    assert any("h11" in r.getMessage() for r in caplog.records if r.levelname == "WARNING"), caplog.records


# --- An embedded hub (no CLI umask) ---


def test_an_embedded_hub_makes_a_new_store_and_database_outside_its_folder_owner_only(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir(mode=0o755)
    store, database = tmp_path / "store", tmp_path / "db" / "hub.sqlite"
    old = os.umask(0o022)
    try:
        app = create_app(Settings(data_dir=tmp_path / "hub", storage_url=f"file://{store}",
                                  database_url=f"sqlite:///{database}"))
    finally:
        os.umask(old)
    try:
        assert store.is_dir() and database.is_file()
        # (what the store holds is out of others' reach once its folder is 0700, whatever its own mode)
        files = [store, *database.parent.glob("hub.sqlite*")]
        assert {p.name for p in files} >= {"store", "hub.sqlite", "hub.sqlite-wal", "hub.sqlite-shm"}
        loose = [f"{p.name} {stat.filemode(p.lstat().st_mode)}" for p in files if p.lstat().st_mode & 0o077]
        assert loose == [], loose
    finally:
        app.state.hub.close()

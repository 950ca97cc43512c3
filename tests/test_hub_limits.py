"""The hub's limits against anonymous abuse: body and header sizes, sign-in rates, private data files.

Sizes and permissions are checked through a real ``kachery-hub serve`` process
(uvicorn's parser, sockets, the process's memory and umask are what matter);
rate limits in process, where the client address can be chosen.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from fastapi import FastAPI  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

import kachery_core as kc  # noqa: E402
from hub_process import HubProcess, forget_hubs, free_port, real_hub  # noqa: E402,F401
from kachery_hub import Settings, create_app  # noqa: E402
from kachery_hub._ratelimit import RateLimiter  # noqa: E402
from kachery_hub._settings import ENV_RATE_LIMIT  # noqa: E402
from kachery_hub.errors import ConfigurationError  # noqa: E402

MiB = 2**20


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
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
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
def test_an_oversized_head_is_refused_without_stalling_other_requests(real_hub: HubProcess, where: str) -> None:
    port = real_hub.port
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
            ("POST", "/api/clients"), ("GET", "/?token=not-a-token"), ("POST", "/")]


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

"""End to end: a real ``kachery-hub serve`` process and clients with their own kachery directories.

The hub listens on a free 127.0.0.1 port and is stopped by its PID. Clients talk
to it over real HTTP; each "computer" is a separate KACHERY_CLOUD_DIR.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

import httpx2  # noqa: E402

import kachery_core as kc  # noqa: E402
from hub_fixtures import postgres_server, s3_server  # noqa: E402,F401
from hub_process import HUB_CMD, HubProcess, free_port, real_hub  # noqa: E402,F401
from kachery_core import _hub  # noqa: E402
from kachery_core._identity import load_client_keys  # noqa: E402

pytestmark = pytest.mark.slow


def _computer(monkeypatch: pytest.MonkeyPatch, root: Path, name: str) -> None:
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(root / name))


def test_two_users_share_through_a_real_hub_that_survives_restarts(
    real_hub: HubProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "recording.bin"
    src.write_bytes(os.urandom(5 * 2**20))

    _computer(monkeypatch, tmp_path, "alice-laptop")
    pa = kc.init(hub_url=real_hub.url, token=real_hub.token("alice@example.org"))["default_project_id"]
    file_uri = kc.store_file(str(src), label="recording.bin")
    kc.set_mutable("latest", file_uri)

    _computer(monkeypatch, tmp_path, "bob-desktop")
    kc.init(hub_url=real_hub.url, token=real_hub.token("bob@example.org"))
    with pytest.raises(kc.KacheryFileNotFoundError):
        kc.load_file(file_uri)
    with pytest.raises(kc.HubPermissionError):
        kc.get_mutable("latest", project_id=pa)

    _computer(monkeypatch, tmp_path, "alice-laptop")
    kc.set_project_member(pa, "bob@example.org", "read")

    _computer(monkeypatch, tmp_path, "bob-desktop")
    assert kc.get_mutable("latest", project_id=pa) == file_uri
    assert Path(kc.load_file(file_uri)).read_bytes() == src.read_bytes()
    # Reading is not writing: refused with a clear error before a large body is sent.
    other = tmp_path / "bobs.bin"
    other.write_bytes(os.urandom(20 * 2**20))
    with pytest.raises(kc.HubPermissionError, match="needs write"):
        kc.store_file(str(other), project_id=pa)
    with pytest.raises(kc.HubPermissionError, match="needs write"):
        kc.store_text("small", project_id=pa)

    # A public project is readable without any sign-in.
    _computer(monkeypatch, tmp_path, "alice-laptop")
    public_uri = kc.store_text("for everyone", project_id=(pub := kc.create_project("open data")))
    kc.set_project_public(pub, True)
    _computer(monkeypatch, tmp_path, "a-stranger")
    monkeypatch.setenv("KACHERY_CLOUD_EPHEMERAL", "1")
    monkeypatch.setenv("KACHERY_HUB_URL", real_hub.url)
    assert kc.load_text(public_uri) == "for everyone"
    with pytest.raises(kc.KacheryFileNotFoundError):
        kc.load_file(file_uri)
    monkeypatch.delenv("KACHERY_CLOUD_EPHEMERAL")
    monkeypatch.delenv("KACHERY_HUB_URL")

    # Stop and start the hub: everything is still there, for a computer that never saw it.
    admin_token = real_hub.admin_token
    real_hub.stop()
    real_hub.start()
    assert real_hub.admin_token == admin_token  # the printed sign-in URL stays valid, as Jupyter's does
    _computer(monkeypatch, tmp_path, "bob-tablet")
    kc.init(hub_url=real_hub.url, token=real_hub.token("bob@example.org"))
    assert kc.get_mutable("latest", project_id=pa) == file_uri
    assert Path(kc.load_file(file_uri)).read_bytes() == src.read_bytes()
    _computer(monkeypatch, tmp_path, "alice-laptop")
    assert kc.get_client_info()["user"]["email"] == "alice@example.org"  # the sign-in survived too


def _signed(method: str, url: str, body_sha1: str | None = None) -> dict[str, str]:
    """The headers kachery_core would send, captured from a built request."""
    client = _hub.connect(url=url.split("/api/")[0])
    captured: dict[str, str] = {}

    class Capture(httpx2.BaseTransport):
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            captured.update({k: v for k, v in request.headers.items() if k.lower().startswith("x-kachery")})
            return httpx2.Response(200, json={})

    client.http = httpx2.Client(transport=Capture())
    client.send(method, "/api/" + url.split("/api/", 1)[1], body_sha1=body_sha1)
    return captured


def test_replayed_and_tampered_requests_are_refused_over_the_network(
    real_hub: HubProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _computer(monkeypatch, tmp_path, "alice")
    pid = kc.init(hub_url=real_hub.url, token=real_hub.token("alice@example.org"))["default_project_id"]

    headers = _signed("GET", real_hub.url + "/api/me")
    assert httpx2.get(real_hub.url + "/api/me", headers=headers).status_code == 200
    again = httpx2.get(real_hub.url + "/api/me", headers=headers)
    assert again.status_code == 401 and again.json()["error"]["code"] == "replayed_request"
    real_hub.stop()
    real_hub.start()
    again = httpx2.get(real_hub.url + "/api/me", headers=headers)
    assert again.status_code == 401 and again.json()["error"]["code"] == "replayed_request"

    claimed = hashlib.sha1(b"the real bytes").hexdigest()
    url = f"{real_hub.url}/api/projects/{pid}/files/{claimed}"
    r = httpx2.put(url, content=b"forged content", headers=_signed("PUT", url, body_sha1=claimed))
    assert r.status_code == 400 and r.json()["error"]["code"] == "hash_mismatch"
    r = httpx2.get(f"{real_hub.url}/api/files/{claimed}/info", headers=_signed("GET", f"{real_hub.url}/api/files/{claimed}/info"))
    assert r.status_code == 404


def test_killing_the_hub_during_an_upload_leaves_no_visible_file_and_the_retry_succeeds(
    real_hub: HubProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kachery_core import _remote

    _computer(monkeypatch, tmp_path, "alice")
    kc.init(hub_url=real_hub.url, token=real_hub.token("alice@example.org"))
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(64 * 2**20))
    sha1 = hashlib.sha1(src.read_bytes()).hexdigest()
    real_chunks = _remote._read_chunks

    def killed_midway(path: Path, size: int, label: str) -> Iterator[bytes]:
        for i, chunk in enumerate(real_chunks(path, size, label)):
            if i == 8:
                real_hub.stop(signal.SIGKILL)
            yield chunk

    monkeypatch.setattr(_remote, "_read_chunks", killed_midway)
    with pytest.raises(kc.HubUnavailableError):
        kc.store_file(str(src))
    monkeypatch.setattr(_remote, "_read_chunks", real_chunks)

    real_hub.start()
    blobs = real_hub.data / "blobs"
    assert not (blobs / "sha1" / sha1[:2] / sha1[2:4] / sha1[4:6] / sha1).exists()
    with pytest.raises(kc.KacheryFileNotFoundError):
        kc.load_file_info(f"sha1://{sha1}")
    uri = kc.store_file(str(src))
    assert kc.load_file_info(uri)["size"] == src.stat().st_size


def test_kachery_hub_token_create_refuses_a_bad_email(tmp_path: Path) -> None:
    out = subprocess.run([*HUB_CMD, "token", "create", "--data", str(tmp_path), "--user", "not-an-email"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip() == "error: 'not-an-email' is not an email address"
    assert load_client_keys(create=False) is None  # the hub command never touches the client's key


def _peak_rss_reset(pid: int | str) -> int:
    """Current RSS in bytes, after resetting the peak (VmHWM) to it."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kib(pid, "VmRSS") * 1024


def _status_kib(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_a_large_file_goes_up_and_down_in_constant_memory(
    real_hub: HubProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 256 * 2**20
    src = tmp_path / "large.bin"
    with open(src, "wb") as f:
        block = os.urandom(2**20)
        for i in range(size // 2**20):
            f.write(block[:-8] + i.to_bytes(8, "big"))
    _computer(monkeypatch, tmp_path, "alice")
    kc.init(hub_url=real_hub.url, token=real_hub.token("alice@example.org"))
    kc.store_text("warm up")  # imports and connections are not what is measured
    assert real_hub.proc is not None
    hub_before, me_before = _peak_rss_reset(real_hub.proc.pid), _peak_rss_reset("self")

    uri = kc.store_file(str(src))
    _computer(monkeypatch, tmp_path, "alice-2")
    kc.init(hub_url=real_hub.url, token=real_hub.token("alice@example.org"))
    assert Path(kc.load_file(uri)).stat().st_size == size

    budget = 64 * 2**20  # a quarter of the file; the transfers hold a few MiB at a time
    assert _status_kib(real_hub.proc.pid, "VmHWM") * 1024 - hub_before < budget
    assert _status_kib("self", "VmHWM") * 1024 - me_before < budget


def test_fifty_concurrent_clients_store_small_files(
    real_hub: HubProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    _computer(monkeypatch, tmp_path, "lab")
    pid = kc.init(hub_url=real_hub.url, token=real_hub.token("lab@example.org"))["default_project_id"]

    def work(i: int) -> list[str]:
        uris = [kc.store_text(f"shared result {j}") for j in range(3)]  # every thread stores these
        uris += [kc.store_json({"thread": i, "n": j}) for j in range(3)]
        kc.set_mutable(f"threads/{i}", uris[-1])
        return uris

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(work, range(50)))
    stored = {u for r in results for u in r}
    assert len(stored) == 3 + 50 * 3
    assert len(kc.list_mutables("threads/")) == 50
    files = _hub.connect().json("GET", f"/api/projects/{pid}/files", params={"limit": 10000})["files"]
    assert len(files) == len(stored)
    _computer(monkeypatch, tmp_path, "reader")
    kc.init(hub_url=real_hub.url, token=real_hub.token("lab@example.org"))
    assert all(kc.load_json(u)["thread"] == i for i, r in enumerate(results) for u in r[3:])


def test_a_hub_process_on_postgresql_and_s3_shares_files_directly_and_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    from hub_fixtures import S3_KEYS, _fresh_postgres_database, _s3_client

    endpoint = request.getfixturevalue("s3_server")
    database = _fresh_postgres_database(request.getfixturevalue("postgres_server"))
    for name, value in S3_KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    _s3_client(endpoint).create_bucket(Bucket="e2e")
    hub = HubProcess(tmp_path / "hub-data", free_port(), "--database", database,
                     "--storage", f"s3://e2e/kachery?endpoint_url={endpoint}")
    hub.start()
    try:
        src = tmp_path / "data.bin"
        src.write_bytes(os.urandom(3 * 2**20))
        _computer(monkeypatch, tmp_path, "alice")
        pid = kc.init(hub_url=hub.url, token=hub.token("alice@example.org"))["default_project_id"]
        uri = kc.store_file(str(src), label="data.bin")
        kc.set_mutable("latest", uri)
        kc.set_project_member(pid, "bob@example.org", "read")
        assert not (tmp_path / "hub-data" / "hub.sqlite").exists()  # metadata went to PostgreSQL
        hub.stop()
        hub.start()
        _computer(monkeypatch, tmp_path, "bob")
        kc.init(hub_url=hub.url, token=hub.token("bob@example.org"))
        assert kc.get_mutable("latest", project_id=pid) == uri
        assert kc.load_bytes(uri, 100, 200) == src.read_bytes()[100:200]
        assert Path(kc.load_file(uri)).read_bytes() == src.read_bytes()
    finally:
        hub.stop()
        _hub.close_connections()
        _hub._direct.clear()
        _hub._chosen_url.clear()
        _hub._me_cache.clear()

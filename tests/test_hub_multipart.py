"""Big files on an S3 store (a real SeaweedFS server): multipart uploads with presigned part URLs.

The hub runs with the multipart threshold lowered to 16 MiB and parts of 5 MiB (AWS's
smallest), so tens of MiB stand in for files over 5 GiB. Faults are injected in the client:
a part sender that stops after some parts (an interrupted upload), a part whose bytes are
changed, a transport whose first answers fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from hub_fixtures import *  # noqa: F403
from hub_fixtures import HUB_URL, S3_KEYS, Hub, _fresh_postgres_database, _s3_client, signed_headers

import kachery_core as kc
from kachery_core import _hub, _remote
from kachery_hub import Settings, create_app
from kachery_hub._s3store import MAX_OBJECT_SIZE, MAX_PARTS, S3ByteStore

MiB = 1024 * 1024
THRESHOLD = 16 * MiB
PART = 5 * MiB


def _make(kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    from starlette.testclient import TestClient

    endpoint = request.getfixturevalue("s3_server")
    for name, value in S3_KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("KACHERY_PROGRESS", "0")
    bucket = "big-" + secrets.token_hex(6)
    _s3_client(endpoint).create_bucket(Bucket=bucket)
    database_url = None
    if kind == "postgresql":
        database_url = _fresh_postgres_database(request.getfixturevalue("postgres_server"))
    app = create_app(Settings(data_dir=tmp_path / "hub", database_url=database_url,
                              storage_url=f"s3://{bucket}/blobs?endpoint_url={endpoint}", public_urls=(HUB_URL,),
                              s3_multipart_threshold=THRESHOLD, s3_part_size=PART))
    with TestClient(app, raise_server_exceptions=False) as http:
        yield Hub(http=http, state=app.state.hub, root=tmp_path, monkeypatch=monkeypatch, kind=kind)
    _hub._injected.pop(HUB_URL, None)
    _hub._direct.pop(HUB_URL, None)
    _hub._chosen_url.clear()
    _hub._chosen_token.clear()
    _hub._env_token_hub.clear()
    _hub._me_cache.clear()
    _hub.close_connections()


@pytest.fixture(params=["sqlite", "postgresql"])
def big_hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    yield from _make(request.param, request, tmp_path, monkeypatch)


@pytest.fixture
def pg_hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    yield from _make("postgresql", request, tmp_path, monkeypatch)


def _signed(hub: Hub, method: str, path: str, payload: object | None = None) -> Any:
    keys = _hub._client_keys()[0]
    body = json.dumps(payload).encode() if payload is not None else b""
    headers = {**signed_headers(keys, method, path, body), "Content-Type": "application/json"}
    return hub.http.request(method, path, content=body, headers=headers, follow_redirects=False)


def _store(hub: Hub) -> S3ByteStore:
    store = hub.state.store
    assert isinstance(store, S3ByteStore)
    return store


def _objects(hub: Hub, sha1: str) -> list[str]:
    store = _store(hub)
    listed = store._s3.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)
    return [o["Key"] for o in listed.get("Contents", []) if sha1 in o["Key"]]


def _in_progress(hub: Hub, sha1: str) -> list[dict[str, Any]]:
    store = _store(hub)
    uploads = store._s3.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix).get("Uploads", [])
    return [u for u in uploads if sha1 in u["Key"]]


def _big_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha1(data).hexdigest()


class _PartLog:
    """Wraps the client's part sender: records part numbers, and can stop after ``fail_after`` parts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_after: int | None = None) -> None:
        self.sent: list[int] = []
        self.urls: list[str] = []
        self.fail_after = fail_after
        real = _remote._send_part

        def send(client: Any, url: str, content: Any, offset: int, length: int) -> bool:
            if self.fail_after is not None and len(self.sent) >= self.fail_after:
                raise ConnectionResetError("the network went away")
            ok = real(client, url, content, offset, length)
            self.sent.append(int(parse_qs(urlparse(url).query)["partNumber"][0]))
            self.urls.append(url)
            return ok

        monkeypatch.setattr(_remote, "_send_part", send)


@pytest.mark.slow
def test_an_interrupted_big_upload_resumes_with_the_missing_parts_and_another_user_loads_it(
        big_hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = big_hub
    hub.sign_in("B", "b@example.org")
    pid = hub.sign_in("A", "a@example.org")
    kc.set_project_member(pid, "b@example.org", "read")
    size = 100 * MiB + 12345
    src = tmp_path / "big.bin"
    sha1 = _big_file(src, size)
    parts = -(-size // PART)

    log = _PartLog(monkeypatch, fail_after=7)
    with pytest.raises(ConnectionResetError):
        kc.store_file(str(src), label="big.bin")
    assert log.sent == list(range(1, 8))
    assert _signed(hub, "GET", f"/api/projects/{pid}/files/{sha1}").status_code == 404
    assert len(_in_progress(hub, sha1)) == 1 and _objects(hub, sha1) == []

    log.sent.clear()
    log.fail_after = None
    uri = kc.store_file(str(src), label="big.bin")
    assert kc.parse_sha1_uri(uri).sha1 == sha1
    assert log.sent == list(range(8, parts + 1)), "only the parts the store lacked are sent again"
    assert _in_progress(hub, sha1) == [] and len(_objects(hub, sha1)) == 1
    record = _signed(hub, "GET", f"/api/projects/{pid}/files/{sha1}").json()
    assert record["size"] == size and record["label"] == "big.bin"

    # A verified object cannot be overwritten through the part URLs handed out for it.
    import httpx2

    for url in log.urls[:1] + log.urls[-1:]:
        assert httpx2.put(url, content=b"overwritten").status_code >= 400
    assert _in_progress(hub, sha1) == [] and len(_objects(hub, sha1)) == 1

    hub.use("B")
    loaded = Path(kc.load_file(uri))
    assert loaded.stat().st_size == size
    with open(loaded, "rb") as got, open(src, "rb") as want:
        while chunk := want.read(4 * MiB):
            assert got.read(4 * MiB) == chunk


@pytest.mark.slow
def test_a_part_changed_on_the_way_fails_completion_and_the_upload_is_removed(
        big_hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = big_hub
    pid = hub.sign_in("A", "a@example.org")
    data = os.urandom(4 * PART + 1000)
    sha1 = hashlib.sha1(data).hexdigest()
    real = _remote._part_chunks

    def corrupted(content: Any, offset: int, length: int) -> Iterator[bytes]:
        for i, chunk in enumerate(real(content, offset, length)):
            yield bytes([chunk[0] ^ 1]) + chunk[1:] if offset == PART and i == 0 else chunk

    monkeypatch.setattr(_remote, "_part_chunks", corrupted)
    with pytest.raises(kc.HubRequestError) as caught:
        _remote._upload(sha1, len(data), data, "bad", None)
    assert caught.value.code == "hash_mismatch"
    assert _signed(hub, "GET", f"/api/projects/{pid}/files/{sha1}").status_code == 404
    assert _objects(hub, sha1) == [] and _in_progress(hub, sha1) == []
    with hub.state.db.begin() as conn:
        from sqlalchemy import text

        assert conn.execute(text("SELECT count(*) FROM pending_uploads WHERE sha1 = :s"), {"s": sha1}).scalar() == 0

    monkeypatch.setattr(_remote, "_part_chunks", real)
    _remote._upload(sha1, len(data), data, "good", None)  # sent again whole, it is taken
    assert _signed(hub, "GET", f"/api/projects/{pid}/files/{sha1}").json()["size"] == len(data)


class _Flaky:
    """A transport whose PUTs answer, in turn, the statuses or errors in ``faults`` before passing through."""

    def __init__(self, faults: list[Any]) -> None:
        import httpx2

        self.inner = httpx2.HTTPTransport()
        self.faults = faults
        self.puts = 0

    def handle_request(self, request: Any) -> Any:
        import httpx2

        if request.method == "PUT":
            self.puts += 1
            if self.faults:
                fault = self.faults.pop(0)
                request.read()
                if isinstance(fault, int):
                    return httpx2.Response(fault, content=b"<Error>injected</Error>")
                raise fault("injected", request=request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.slow
def test_parts_that_fail_on_the_way_or_whose_urls_expired_are_sent_again(
        pg_hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    import httpx2

    hub = pg_hub
    pid = hub.sign_in("A", "a@example.org")
    src = tmp_path / "f.bin"
    size = 4 * PART + 7
    sha1 = _big_file(src, size)
    flaky = _Flaky([503, httpx2.ConnectError, 403, 500])
    plain = httpx2.Client(transport=flaky)  # type: ignore[arg-type]
    request.addfinalizer(plain.close)
    monkeypatch.setattr(_hub, "plain_client", lambda: plain)
    monkeypatch.setattr(_remote, "_PART_BACKOFF", 0.01)
    log = _PartLog(monkeypatch)
    kc.store_file(str(src))
    # part 1: 503, connect error, then 403 (URLs expired: asked for again), then 500, then sent
    assert flaky.faults == [] and flaky.puts == 3 + 2 + 4
    assert sorted(set(log.sent)) == [1, 2, 3, 4, 5]
    assert _signed(hub, "GET", f"/api/projects/{pid}/files/{sha1}").json()["size"] == size

    # A store that keeps failing is reported, not waited on for ever.
    other = tmp_path / "g.bin"
    _big_file(other, THRESHOLD + 1)
    flaky.faults = [503] * 10
    with pytest.raises(kc.HubUnavailableError, match="5 attempts"):
        kc.store_file(str(other))


@pytest.mark.slow
def test_only_the_projects_writers_start_resume_or_complete_its_multipart_uploads(pg_hub: Hub) -> None:
    import httpx2

    hub = pg_hub
    hub.sign_in("C", "c@example.org")
    c_project = kc.get_project_id()
    hub.sign_in("B", "b@example.org")
    pid = hub.sign_in("A", "a@example.org")
    kc.set_project_member(pid, "b@example.org", "read")
    data = os.urandom(THRESHOLD + 1)
    sha1 = hashlib.sha1(data).hexdigest()
    base = f"/api/projects/{pid}/files/{sha1}"
    small = _signed(hub, "POST", base + "/upload", {"size": THRESHOLD}).json()["upload"]
    assert "multipart" not in small and small["headers"]  # at the threshold: one PUT, checked by the store
    upload = _signed(hub, "POST", base + "/upload", {"size": len(data)}).json()["upload"]
    state = upload["multipart"]
    assert state["parts"] == 4 and state["part_size"] == PART and state["done"] == [] and len(state["urls"]) == 4
    assert httpx2.put(state["urls"]["1"], content=data[:PART]).status_code == 200
    again = _signed(hub, "POST", base + "/upload", {"size": len(data)}).json()["upload"]["multipart"]
    assert again["upload_id"] == state["upload_id"] and again["done"] == [1] and set(again["urls"]) == {"2", "3", "4"}

    complete = {"label": None, "upload_id": state["upload_id"], "size": len(data)}
    for who, status in (("C", 403), ("B", 403)):  # an outsider: not a member; a reader: may not write
        hub.use(who)
        for path, body in ((base + "/upload", {"size": len(data)}), (base + "/complete", complete)):
            r = _signed(hub, "POST", path, body)
            assert r.status_code == status, (who, path, r.text)
            assert state["upload_id"] not in r.text and r.json()["error"]["code"] != "upload_not_found"
    # A writer of another project cannot complete it (nor make the store complete it early) with its id.
    hub.use("C")
    r = _signed(hub, "POST", f"/api/projects/{c_project}/files/{sha1}/complete", complete)
    assert r.status_code == 404 and r.json()["error"]["code"] == "upload_not_found"
    assert len(_in_progress(hub, sha1)) == 1
    mine = _signed(hub, "POST", f"/api/projects/{c_project}/files/{sha1}/upload", {"size": len(data)}).json()
    assert mine["upload"]["multipart"]["upload_id"] != state["upload_id"], "C's project gets an upload of its own"

    hub.use("A")
    early = _signed(hub, "POST", base + "/complete", complete)  # parts missing: refused, the upload goes on
    assert early.status_code == 400 and "incomplete" in early.json()["error"]["message"]
    assert len([u for u in _in_progress(hub, sha1) if state["upload_id"] in u["Key"]]) == 1
    # A part URL whose part number is changed is refused by the store (the number is signed).
    forged = state["urls"]["2"].replace("partNumber=2", "partNumber=9999")
    assert httpx2.put(forged, content=data[PART:2 * PART]).status_code == 403
    for n in (2, 3, 4):
        assert httpx2.put(again["urls"][str(n)], content=data[(n - 1) * PART:n * PART]).status_code == 200
    done = _signed(hub, "POST", base + "/complete", complete)
    assert done.status_code == 200 and done.json()["size"] == len(data)


def test_a_completion_whose_check_was_interrupted_is_checked_when_asked_again(pg_hub: Hub) -> None:
    import httpx2

    hub = pg_hub
    pid = hub.sign_in("A", "a@example.org")
    data = os.urandom(THRESHOLD + 1)
    sha1 = hashlib.sha1(data).hexdigest()
    base = f"/api/projects/{pid}/files/{sha1}"
    state = _signed(hub, "POST", base + "/upload", {"size": len(data)}).json()["upload"]["multipart"]
    for n in range(1, state["parts"] + 1):
        assert httpx2.put(state["urls"][str(n)], content=data[(n - 1) * PART:n * PART]).status_code == 200
    # A hub that stopped between CompleteMultipartUpload and the end of its check leaves the object unrecorded.
    store = _store(hub)
    key = store.prefix + f"uploads/{sha1}/{state['upload_id']}"
    s3_id = store._multipart_id(key)
    assert s3_id is not None
    store._s3.complete_multipart_upload(Bucket=store.bucket, Key=key, UploadId=s3_id, MultipartUpload={"Parts": [
        {"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in store._parts(key, s3_id)]})
    assert _signed(hub, "GET", base).status_code == 404
    done = _signed(hub, "POST", base + "/complete", {"label": None, "upload_id": state["upload_id"]})
    assert done.status_code == 200 and done.json()["size"] == len(data)


def test_malformed_multipart_requests_are_refused(pg_hub: Hub) -> None:
    hub = pg_hub
    pid = hub.sign_in("A", "a@example.org")
    sha1 = hashlib.sha1(b"x").hexdigest()
    base = f"/api/projects/{pid}/files/{sha1}"
    for body in ({"size": -1}, {"size": "big"}, {}):
        r = _signed(hub, "POST", base + "/upload", body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = _signed(hub, "POST", base + "/upload", {"size": MAX_OBJECT_SIZE + 1})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    for upload_id in ("zz", "0" * 31, "A" * 32, "../" + "0" * 29):
        r = _signed(hub, "POST", base + "/complete", {"label": None, "upload_id": upload_id})
        assert r.status_code == 422, upload_id
    r = _signed(hub, "POST", base + "/complete", {"label": None, "upload_id": "0" * 32})
    assert r.status_code == 404 and r.json()["error"]["code"] == "upload_not_found"


def test_abandoned_and_stale_multipart_uploads_are_aborted(pg_hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx2

    from kachery_hub import _s3store
    from kachery_hub._files import remove_abandoned_uploads

    hub = pg_hub
    pid = hub.sign_in("A", "a@example.org")
    data = os.urandom(THRESHOLD + 1)
    sha1 = hashlib.sha1(data).hexdigest()
    state = _signed(hub, "POST", f"/api/projects/{pid}/files/{sha1}/upload", {"size": len(data)}).json()["upload"][
        "multipart"]
    assert httpx2.put(state["urls"]["1"], content=data[:PART]).status_code == 200
    store = _store(hub)
    assert remove_abandoned_uploads(hub.state.db, store, time.time() - 3600) == 0
    assert len(_in_progress(hub, sha1)) == 1
    assert remove_abandoned_uploads(hub.state.db, store, time.time() + 60) == 1
    assert _in_progress(hub, sha1) == [] and _objects(hub, sha1) == []
    assert httpx2.put(state["urls"]["2"], content=data[PART:2 * PART]).status_code >= 400  # its URLs are void

    # One the database does not know of (its row went without it) is aborted once it is stale.
    key = store.prefix + f"uploads/{sha1}/{'0' * 32}"
    store._s3.create_multipart_upload(Bucket=store.bucket, Key=key)
    assert store.cleanup() == 0
    monkeypatch.setattr(_s3store, "STALE_MULTIPART_SECONDS", -60.0)
    assert store.cleanup() == 1 and _in_progress(hub, sha1) == []


def test_part_sizes_and_multipart_settings() -> None:
    assert S3ByteStore.part_size_for(100 * MiB, 64 * MiB) == 64 * MiB
    five_tib = MAX_OBJECT_SIZE
    part = S3ByteStore.part_size_for(five_tib, 64 * MiB)
    assert -(-five_tib // part) <= MAX_PARTS and part <= 525 * MiB + 1
    from kachery_hub.errors import ConfigurationError

    s = Settings.from_environ({"KACHERY_HUB_S3_MULTIPART_THRESHOLD": "1048576", "KACHERY_HUB_S3_PART_SIZE": "6291456"})
    assert (s.s3_multipart_threshold, s.s3_part_size) == (MiB, 6 * MiB)
    assert Settings.from_environ({}).s3_multipart_threshold == 100 * MiB
    for env in ({"KACHERY_HUB_S3_PART_SIZE": str(MiB)}, {"KACHERY_HUB_S3_PART_SIZE": str(6 * 1024 * MiB)},
                {"KACHERY_HUB_S3_MULTIPART_THRESHOLD": str(6 * 1024 * MiB)},
                {"KACHERY_HUB_S3_MULTIPART_THRESHOLD": "-1"}):
        with pytest.raises(ConfigurationError, match="KACHERY_HUB_S3"):
            Settings.from_environ(env)


_UPLOADER = """
import sys, time
import kachery_core as kc
from kachery_core import _remote
kc.init(hub_url=sys.argv[1], token=sys.argv[2])
real = _remote._send_part
sent = []
def send(client, url, content, offset, length):
    if len(sent) == int(sys.argv[4]):
        time.sleep(3600)  # stopped here: the test kills this process
    ok = real(client, url, content, offset, length)
    sent.append(offset)
    print("part", len(sent), flush=True)
    return ok
_remote._send_part = send
kc.store_file(sys.argv[3])
"""


@pytest.mark.slow
def test_a_real_hub_configured_by_environment_resumes_an_upload_whose_process_was_killed(
        request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal
    import subprocess
    import sys

    from hub_process import HubProcess, forget_hubs, free_port, running

    endpoint = request.getfixturevalue("s3_server")
    bucket = "real-" + secrets.token_hex(6)
    _s3_client(endpoint).create_bucket(Bucket=bucket)
    database = _fresh_postgres_database(request.getfixturevalue("postgres_server"))
    env = {**S3_KEYS, "AWS_EC2_METADATA_DISABLED": "true",
           "KACHERY_HUB_STORAGE_URL": f"s3://{bucket}/blobs?endpoint_url={endpoint}",
           "KACHERY_HUB_S3_MULTIPART_THRESHOLD": str(THRESHOLD), "KACHERY_HUB_S3_PART_SIZE": str(PART)}
    monkeypatch.setenv("KACHERY_PROGRESS", "0")
    src = tmp_path / "big.bin"
    size = 12 * PART + 999
    sha1 = _big_file(src, size)
    with running(HubProcess(tmp_path / "hub-data", free_port(), "--database", database), env=env) as hub:
        a_token, b_token = hub.token("a@example.org"), hub.token("b@example.org")
        monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "a"))
        child = subprocess.Popen([sys.executable, "-c", _UPLOADER, hub.url, a_token, str(src), "5"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            for n in range(1, 6):
                assert child.stdout.readline().split() == ["part", str(n)], child.stderr
        finally:
            child.send_signal(signal.SIGKILL)
            child.communicate(timeout=30)

        info = kc.init(hub_url=hub.url, token=a_token)
        pid = str(info["default_project_id"])
        kc.set_project_member(pid, "b@example.org", "read")
        log = _PartLog(monkeypatch)
        uri = kc.store_file(str(src), label="big.bin")
        assert log.sent == list(range(6, 14)), "the killed process's 5 parts are not sent again"

        forget_hubs()
        monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "b"))
        kc.init(hub_url=hub.url, token=b_token)
        assert kc.load_file_info(uri)["size"] == size
        loaded = Path(kc.load_file(uri))
        assert hashlib.sha1(loaded.read_bytes()).hexdigest() == sha1 and loaded.read_bytes() == src.read_bytes()

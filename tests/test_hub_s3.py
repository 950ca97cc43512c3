"""File bytes in an S3-compatible store (a real SeaweedFS server): clients transfer directly,
the store refuses bytes that do not match their sha1, and the hub records only verified objects."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_fixtures import *  # noqa: F403
from hub_fixtures import Hub, _s3_client, make_hub, signed_headers

import kachery_core as kc
from kachery_core import _hub


@pytest.fixture
def hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    yield from make_hub("s3", request, tmp_path, monkeypatch)


def _signed(hub: Hub, method: str, path: str, payload: object | None = None):  # type: ignore[no-untyped-def]
    keys = _hub._client_keys()[0]
    body = json.dumps(payload).encode() if payload is not None else b""
    headers = {**signed_headers(keys, method, path, body), "Content-Type": "application/json"}
    return hub.http.request(method, path, content=body, headers=headers, follow_redirects=False)


def test_the_hub_hands_out_presigned_urls_and_never_takes_the_bytes(hub: Hub) -> None:
    pid = hub.sign_in("A", "a@example.org")
    assert hub.http.get("/api/health").json()["direct_transfers"] is True
    data = b"direct to the store"
    sha1 = hashlib.sha1(data).hexdigest()
    path = f"/api/projects/{pid}/files/{sha1}"
    r = hub.http.put(path, content=data, headers=signed_headers(_hub._client_keys()[0], "PUT", path, body_sha1=sha1))
    assert r.status_code == 409 and r.json()["error"]["code"] == "direct_upload_required"
    target = _signed(hub, "POST", path + "/upload", {"size": len(data)}).json()
    assert target["present"] is False and target["upload"]["via_hub"] is False
    assert target["upload"]["url"].startswith(hub.state.store._s3.meta.endpoint_url)
    uri = kc.store_text("direct to the store")
    assert kc.parse_sha1_uri(uri).sha1 == sha1
    assert _signed(hub, "POST", path + "/upload", {"size": len(data)}).json() == {"present": True, "upload": None}
    r = _signed(hub, "GET", f"/api/files/{sha1}")
    assert r.status_code == 307 and r.headers["location"].startswith(hub.state.store._s3.meta.endpoint_url)


def test_the_store_refuses_bytes_that_do_not_match_and_nothing_becomes_visible(hub: Hub) -> None:
    import httpx2

    pid = hub.sign_in("A", "a@example.org")
    claimed = hashlib.sha1(b"the real bytes").hexdigest()
    path = f"/api/projects/{pid}/files/{claimed}"
    upload = _signed(hub, "POST", path + "/upload", {"size": 14}).json()["upload"]
    forged = httpx2.put(upload["url"], content=b"forged bytes!!", headers=upload["headers"])
    assert forged.status_code == 400 and "BadDigest" in forged.text
    dropped = httpx2.put(upload["url"], content=b"forged bytes!!")  # the checksum header is part of the signature
    assert dropped.status_code == 403
    r = _signed(hub, "POST", path + "/complete", {"label": None, "upload_id": upload["upload_id"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "upload_not_found"
    assert _signed(hub, "GET", f"/api/files/{claimed}/info").status_code == 404


def test_an_object_written_without_the_checksum_never_counts(hub: Hub) -> None:
    pid = hub.sign_in("A", "a@example.org")
    data = b"written around the hub"
    sha1 = hashlib.sha1(data).hexdigest()
    path = f"/api/projects/{pid}/files/{sha1}"
    upload_id = _signed(hub, "POST", path + "/upload", {"size": len(data)}).json()["upload"]["upload_id"]
    store = hub.state.store
    for key in (store.key(sha1), store.prefix + f"uploads/{sha1}/{upload_id}"):  # type: ignore[attr-defined]
        store._s3.put_object(Bucket=store.bucket, Key=key, Body=data)  # type: ignore[attr-defined]
    assert store.staged_size(sha1, upload_id) is None
    r = _signed(hub, "POST", path + "/complete", {"label": None, "upload_id": upload_id})
    assert r.status_code == 404 and r.json()["error"]["code"] == "upload_not_found"


def _objects(hub: Hub, sha1: str) -> list[str]:
    store = hub.state.store
    listed = store._s3.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)  # type: ignore[attr-defined]
    return [o["Key"] for o in listed.get("Contents", []) if sha1 in o["Key"]]


def test_uploads_never_completed_are_removed_and_a_removed_file_takes_its_copy_along(hub: Hub) -> None:
    import httpx2

    from kachery_hub._files import remove_abandoned_uploads

    hub.sign_in("A", "a@example.org")
    pid = kc.get_project_id()
    uri = kc.store_text("completed")
    kept = kc.parse_sha1_uri(uri).sha1
    left = hashlib.sha1(b"left behind").hexdigest()
    upload = _signed(hub, "POST", f"/api/projects/{pid}/files/{left}/upload", {"size": 11}).json()["upload"]
    assert httpx2.put(upload["url"], content=b"left behind", headers=upload["headers"]).status_code == 200
    _signed(hub, "POST", f"/api/projects/{pid}/files/{left}/upload", {"size": 11})  # handed out, never sent
    store = hub.state.store
    assert remove_abandoned_uploads(hub.state.db, store, time.time() - 3600) == 0  # too young to go
    assert remove_abandoned_uploads(hub.state.db, store, time.time() + 60) == 2
    assert _objects(hub, left) == [] and len(_objects(hub, kept)) == 1
    r = _signed(hub, "POST", f"/api/projects/{pid}/files/{left}/complete", {"label": None, "upload_id": upload["upload_id"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "upload_not_found"
    assert kc.load_text(uri) == "completed"  # not cached locally: downloaded from the store

    # Another project's copy of the same bytes stays when the first project removes its file.
    hub.sign_in("B", "b@example.org")
    assert kc.store_text("completed") == uri
    assert len(_objects(hub, kept)) == 2
    hub.use("A")
    a_copy = [k for k in _objects(hub, kept)]
    assert _signed(hub, "DELETE", f"/api/projects/{pid}/files/{kept}").json() == {"deleted": True}
    b_copy = _objects(hub, kept)
    assert len(b_copy) == 1
    # Bytes sent again to the removed copy's upload URL (still valid for its hour) are swept later.
    removed = [k for k in a_copy if k not in b_copy][0]
    store._s3.put_object(Bucket=store.bucket, Key=removed, Body=b"completed")  # type: ignore[attr-defined]
    assert remove_abandoned_uploads(hub.state.db, store, time.time() + 60) == 1
    assert _objects(hub, kept) == b_copy
    hub.use("B")
    assert kc.load_text(uri) == "completed"


def test_an_upload_id_completes_only_the_upload_it_was_handed_out_for(hub: Hub) -> None:
    import httpx2

    pid_a = hub.sign_in("A", "a@example.org")
    other = kc.create_project("second")
    data = b"bound to one project"
    sha1 = hashlib.sha1(data).hexdigest()
    upload = _signed(hub, "POST", f"/api/projects/{pid_a}/files/{sha1}/upload", {"size": len(data)}).json()["upload"]
    assert httpx2.put(upload["url"], content=data, headers=upload["headers"]).status_code == 200
    r = _signed(hub, "POST", f"/api/projects/{other}/files/{sha1}/complete", {"label": None, "upload_id": upload["upload_id"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "upload_not_found"
    done = _signed(hub, "POST", f"/api/projects/{pid_a}/files/{sha1}/complete", {"label": None, "upload_id": upload["upload_id"]})
    assert done.status_code == 200
    # Sent again (its answer was lost on the way): the same answer, and the project's copy left alone,
    # even with another label.
    objects = _objects(hub, sha1)
    again = _signed(hub, "POST", f"/api/projects/{pid_a}/files/{sha1}/complete", {"label": "x", "upload_id": upload["upload_id"]})
    assert again.status_code == 200 and again.json() == done.json(), again.text
    assert _objects(hub, sha1) == objects and len(objects) == 1
    # Only for the project that holds the file, and only for its writers.
    r = _signed(hub, "POST", f"/api/projects/{other}/files/{sha1}/complete", {"label": None, "upload_id": upload["upload_id"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "upload_not_found"
    hub.sign_in("B", "b@example.org")
    r = _signed(hub, "POST", f"/api/projects/{pid_a}/files/{sha1}/complete", {"label": None, "upload_id": upload["upload_id"]})
    assert r.status_code == 403 and sha1 not in r.text, r.text


def test_two_completions_of_one_upload_at_once_both_answer_its_record(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    """A completion sent again while the first one's check of the object still runs (a proxy timed it out)."""
    import threading

    import httpx2

    pid = hub.sign_in("A", "a@example.org")
    data = b"completed twice at once"
    sha1 = hashlib.sha1(data).hexdigest()
    path = f"/api/projects/{pid}/files/{sha1}"
    upload = _signed(hub, "POST", path + "/upload", {"size": len(data)}).json()["upload"]
    assert httpx2.put(upload["url"], content=data, headers=upload["headers"]).status_code == 200
    store = hub.state.store
    checking = threading.Barrier(2, timeout=30)
    staged_size = store.staged_size

    def both_checking(*args: object) -> int | None:
        checking.wait()  # neither records the file before both have checked the object
        return staged_size(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "staged_size", both_checking)
    answers: list[object] = []

    def complete() -> None:
        r = _signed(hub, "POST", path + "/complete", {"label": "twice.txt", "upload_id": upload["upload_id"]})
        answers.append((r.status_code, r.json()))

    threads = [threading.Thread(target=complete) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 2 and answers[0] == answers[1], answers
    status, record = answers[0]  # type: ignore[misc]
    assert status == 200 and record["sha1"] == sha1 and record["label"] == "twice.txt"
    assert len(_objects(hub, sha1)) == 1  # the project's copy was not discarded as redundant
    monkeypatch.setattr(store, "staged_size", staged_size)
    assert kc.load_text(f"sha1://{sha1}") == data.decode()


def test_a_changed_source_file_is_refused_by_the_store(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kachery_core import _remote

    hub.sign_in("A", "a@example.org")
    src = tmp_path / "f.bin"
    src.write_bytes(b"before")
    real = _remote._read_chunks

    def changing(path: Path, size: int, label: str):  # type: ignore[no-untyped-def]
        path.write_bytes(b"after!")
        yield from real(path, size, label)

    monkeypatch.setattr(_remote, "_read_chunks", changing)
    with pytest.raises(kc.FileChangedError):
        kc.store_file(str(src))


def test_s3_storage_urls_are_checked(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from hub_fixtures import S3_KEYS

    from kachery_hub import open_byte_store
    from kachery_hub.errors import ConfigurationError

    for name, value in S3_KEYS.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match="name a bucket"):
        open_byte_store("s3:///prefix")
    with pytest.raises(ConfigurationError, match="unknown parameters"):
        open_byte_store(f"s3://b?endpoint={s3_server}")
    with pytest.raises(ConfigurationError, match="no-such-bucket"):
        open_byte_store(f"s3://no-such-bucket?endpoint_url={s3_server}")
    _s3_client(s3_server).create_bucket(Bucket="checked")
    store = open_byte_store(f"s3://checked/some/prefix?endpoint_url={s3_server}")
    assert store.direct and store.key("ab" * 20).startswith("some/prefix/sha1/ab/ab/ab/")  # type: ignore[attr-defined]
    store.close()

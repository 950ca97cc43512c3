"""A file enters a project only with its bytes: nobody takes another project's file by its hash.

The attack: a signed-in user knows the sha1 of a file in someone else's private
project (sha1 URIs are what people paste into chats and papers) and asks the hub
to record that sha1 in their own project without sending the bytes. Every path
that records a file (the upload through the hub, the direct upload to an object
store and its completion) must make the client prove it holds the whole content,
and no answer may tell an outsider whether another project holds the hash.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hub_fixtures import *  # noqa: F403
from hub_fixtures import Hub, make_hub, signed_headers
from hub_process import HubProcess, real_hub  # noqa: F401

import kachery_core as kc
from kachery_core import _hub

SECRET = "the private recording of project B " * 4


def _signed(hub: Hub, method: str, path: str, payload: object | None = None, *, body: bytes | None = None,
            body_sha1: str | None = None) -> Any:
    keys = _hub._client_keys()[0]
    if body is None:
        body = json.dumps(payload).encode() if payload is not None else b""
    headers = {**signed_headers(keys, method, path, body, body_sha1=body_sha1), "Content-Type": "application/json"}
    return hub.http.request(method, path, content=body, headers=headers, follow_redirects=False)


def _victim_stores_a_private_file(hub: Hub) -> str:
    hub.sign_in("B", "b@example.org")
    return kc.parse_sha1_uri(kc.store_text(SECRET, label="secret.txt")).sha1


def test_a_hash_cannot_be_recorded_without_its_bytes(hub: Hub) -> None:
    sha1 = _victim_stores_a_private_file(hub)
    uri = f"sha1://{sha1}?label=secret.txt"
    pid = hub.sign_in("A", "a@example.org")
    base = f"/api/projects/{pid}/files/{sha1}"

    # The attack as found: complete a direct upload that never happened.
    r = _signed(hub, "POST", base + "/complete", {"label": "mine.txt"})
    assert r.status_code in (404, 422), r.text
    # With a made-up upload id, and with an id handed out for an upload that never came.
    r = _signed(hub, "POST", base + "/complete", {"label": "mine.txt", "upload_id": secrets.token_hex(16)})
    assert r.status_code == 404 and r.json()["error"]["code"] == "upload_not_found", r.text
    target = _signed(hub, "POST", base + "/upload", {"size": len(SECRET)}).json()
    assert target["present"] is False
    if target["upload"]["via_hub"] is False:
        r = _signed(hub, "POST", base + "/complete", {"label": "mine.txt", "upload_id": target["upload"]["upload_id"]})
        assert r.status_code == 404 and r.json()["error"]["code"] == "upload_not_found", r.text
    else:
        # Through the hub, bytes are the proof: a PUT whose body is not the content is refused.
        r = _signed(hub, "PUT", base, body=b"x" * len(SECRET), body_sha1=sha1)
        assert r.status_code in (400, 409), r.text
        r = _signed(hub, "PUT", base, body=b"", body_sha1=sha1)
        assert r.status_code in (400, 409), r.text

    assert _signed(hub, "GET", base).status_code == 404
    assert _signed(hub, "GET", f"/api/files/{sha1}/info").status_code == 404
    assert _signed(hub, "GET", f"/api/files/{sha1}").status_code == 404
    with pytest.raises(kc.KacheryFileNotFoundError):
        kc.load_text(uri)


def _normalized(response: Any, *names: str) -> tuple[int, str]:
    text = response.text
    for name in names:
        text = text.replace(name, "<SHA1>").replace(base64.b64encode(bytes.fromhex(name)).decode(), "<SHA1>")
    text = re.sub(r"[0-9a-f]{32}", "<ID>", text)  # upload ids
    text = re.sub(r"X-Amz-[A-Za-z-]+=[^&\"]*", "X-Amz", text)  # presigned signatures and dates
    return response.status_code, text


def test_no_answer_tells_whether_another_project_holds_a_hash(hub: Hub) -> None:
    held = _victim_stores_a_private_file(hub)
    fresh_text = SECRET.replace("B", "C")  # same size, held by nobody
    fresh = hashlib.sha1(fresh_text.encode()).hexdigest()
    pid = hub.sign_in("A", "a@example.org")

    def answers(sha1: str) -> list[tuple[int, str]]:
        base = f"/api/projects/{pid}/files/{sha1}"
        out = [_normalized(_signed(hub, "POST", base + "/complete", {"label": None}), sha1)]
        out.append(_normalized(_signed(hub, "POST", base + "/complete", {"label": None, "upload_id": "0" * 32}), sha1))
        target = _signed(hub, "POST", base + "/upload", {"size": len(SECRET)})
        out.append(_normalized(target, sha1))
        upload = target.json()["upload"]
        if not upload["via_hub"]:
            out.append(_normalized(_signed(hub, "POST", base + "/complete",
                                           {"label": None, "upload_id": upload["upload_id"]}), sha1))
        out.append(_normalized(_signed(hub, "GET", base), sha1))
        out.append(_normalized(_signed(hub, "GET", f"/api/files/{sha1}/info"), sha1))
        out.append(_normalized(_signed(hub, "GET", f"/api/files/{sha1}"), sha1))
        return out

    assert answers(held) == answers(fresh)


def test_sending_the_bytes_adds_them_and_each_project_keeps_its_own_record(hub: Hub) -> None:
    sha1 = _victim_stores_a_private_file(hub)
    pid_a = hub.sign_in("A", "a@example.org")
    # A really holds the content: storing it is an ordinary upload, with A's label.
    uri = kc.store_text(SECRET, label="mine.txt")
    assert kc.parse_sha1_uri(uri).sha1 == sha1
    assert _signed(hub, "GET", f"/api/projects/{pid_a}/files/{sha1}").json()["label"] == "mine.txt"
    r = _signed(hub, "DELETE", f"/api/projects/{pid_a}/files/{sha1}")
    assert r.status_code == 200 and r.json() == {"deleted": True}
    hub.use("B")
    assert kc.load_text(f"sha1://{sha1}") == SECRET


def _direct_upload(hub: Hub, pid: str, data: bytes) -> str:
    import httpx2

    sha1 = hashlib.sha1(data).hexdigest()
    base = f"/api/projects/{pid}/files/{sha1}"
    upload = _signed(hub, "POST", base + "/upload", {"size": len(data)}).json()["upload"]
    assert httpx2.put(upload["url"], content=data, headers=upload["headers"]).status_code == 200
    r = _signed(hub, "POST", base + "/complete", {"label": None, "upload_id": upload["upload_id"]})
    assert r.status_code == 200, r.text
    return str(upload["upload_id"])


@pytest.fixture
def s3_hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    yield from make_hub("s3", request, tmp_path, monkeypatch)


def test_a_download_does_not_tell_whose_upload_the_bytes_are(s3_hub: Hub) -> None:
    """With an object store the download is a redirect to a named object: the caller's own project's copy."""
    hub = s3_hub
    _victim_stores_a_private_file(hub)
    pid = hub.sign_in("A", "a@example.org")
    for text in (SECRET, SECRET.replace("B", "C")):  # held by B's project; held by nobody
        sha1 = hashlib.sha1(text.encode()).hexdigest()
        upload_id = _direct_upload(hub, pid, text.encode())
        location = _signed(hub, "GET", f"/api/files/{sha1}").headers["location"]
        assert f"/uploads/{sha1}/{upload_id}?" in location, (text[:20], location)
    store = hub.state.store
    listed = store._s3.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)  # type: ignore[attr-defined]
    held = hashlib.sha1(SECRET.encode()).hexdigest()
    assert len([o for o in listed.get("Contents", []) if held in o["Key"]]) == 2, "one copy per project"


def test_a_real_hub_refuses_the_claim(real_hub: HubProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx2

    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "B"))
    kc.init(hub_url=real_hub.url, token=real_hub.token("b@example.org"))
    uri = kc.store_text(SECRET)
    sha1 = kc.parse_sha1_uri(uri).sha1

    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "A"))
    pid = kc.init(hub_url=real_hub.url, token=real_hub.token("a@example.org"))["default_project_id"]
    path = f"/api/projects/{pid}/files/{sha1}/complete"
    for payload in ({"label": None}, {"label": None, "upload_id": secrets.token_hex(16)}):
        body = json.dumps(payload).encode()
        headers = signed_headers(_hub._client_keys()[0], "POST", path, body, host=f"127.0.0.1:{real_hub.port}")
        r = httpx2.post(real_hub.url + path, content=body, headers={**headers, "Content-Type": "application/json"})
        assert r.status_code in (404, 422), r.text
    with pytest.raises(kc.KacheryFileNotFoundError):
        kc.load_text(uri)

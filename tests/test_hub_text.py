"""Text the hub accepts, the same on SQLite and PostgreSQL.

Ids, keys, names, emails and labels hold no control characters; mutable values
are free text without NUL; paths and queries are strict percent-encoded UTF-8.
Anything else is a 400 ``invalid_input`` naming the field and the character,
and nothing is stored (PostgreSQL cannot store NUL: unchecked, it would be a 500).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hub_fixtures import *  # noqa: F403
from hub_fixtures import Hub, make_hub, new_keys, signed_headers
from hub_process import HubProcess, real_hub  # noqa: F401
from sqlalchemy import func, select

import kachery_core as kc
from kachery_core.errors import MutableValueError
from kachery_hub import _database as tables


@pytest.fixture(params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    yield from make_hub(request.param, request, tmp_path, monkeypatch)


def _register(hub: Hub, email: str) -> tuple[Any, str]:
    keys = new_keys()
    body = json.dumps({"token": hub.token(email)}).encode()
    r = hub.http.post("/api/clients", content=body, headers={
        **signed_headers(keys, "POST", "/api/clients", body), "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    return keys, str(r.json()["default_project_id"])


def _send(hub: Hub, keys: Any, method: str, path: str, body: bytes = b"", *, upload: bool = False) -> Any:
    if upload:  # an upload signs the file's sha1 in place of the body's
        headers = signed_headers(keys, method, path, body_sha1=hashlib.sha1(body).hexdigest())
    else:
        headers = {**signed_headers(keys, method, path, body), "Content-Type": "application/json"}
    return hub.http.request(method, path, content=body, headers=headers)


def _refused(r: Any, *words: str) -> str:
    """Assert ``r`` is the 400 ``invalid_input`` JSON error and its message holds ``words``."""
    body = r.json()
    assert (r.status_code, set(body)) == (400, {"error"}), (r.status_code, r.text)
    assert body["error"]["code"] == "invalid_input", body
    message = str(body["error"]["message"])
    for word in words:
        assert word in message, (word, message)
    return message


def _count(hub: Hub, table: Any) -> int:
    with hub.state.db.begin() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


_DATA = b"bytes whose upload names a label with a NUL"
_SHA1 = hashlib.sha1(_DATA).hexdigest()

# (method, path, body, field named in the message, upload?) with PID the caller's project.
_NUL_CASES: dict[str, tuple[str, str, bytes, str, bool]] = {
    "mutable value": ("PUT", "/api/projects/PID/mutables/k", b'{"value": "a\\u0000b"}', "value", False),
    "project name on create": ("POST", "/api/projects", b'{"name": "a\\u0000b"}', "name", False),
    "project rename": ("PATCH", "/api/projects/PID", b'{"name": "a\\u0000b"}', "name", False),
    "member email": ("PUT", "/api/projects/PID/members/b%00@example.org", b'{"role": "read"}', "path", False),
    "sign-in label": ("POST", "/api/sign-in-requests", b'{"label": "a\\u0000b"}', "label", False),
    "list prefix": ("GET", "/api/projects/PID/mutables?prefix=a%00b", b"", "prefix", False),
    "project id in the path": ("GET", "/api/projects/a%00b", b"", "path", False),
    "upload label": ("PUT", f"/api/projects/PID/files/{_SHA1}?label=a%00b", _DATA, "label", True),
}


def _nothing_stored(hub: Hub, keys: Any, pid: str) -> None:
    assert _send(hub, keys, "GET", f"/api/projects/{pid}/mutables").json()["mutables"] == []
    projects = _send(hub, keys, "GET", "/api/projects").json()["projects"]
    assert [(p["project_id"], p["name"]) for p in projects] == [(pid, "default")]
    members = _send(hub, keys, "GET", f"/api/projects/{pid}/members").json()["members"]
    assert [m["email"] for m in members] == ["a@example.org"]
    assert _count(hub, tables.users) == 1
    assert _count(hub, tables.sign_in_requests) == 0
    assert _count(hub, tables.files) == 0 and _count(hub, tables.blobs) == 0
    blobs = hub.state.settings.data_dir / "blobs"
    assert [p for p in blobs.rglob("*") if p.is_file()] == []  # no orphaned blob, no temp file


@pytest.mark.parametrize("case", list(_NUL_CASES))
def test_nul_is_the_same_400_on_every_backend_and_nothing_is_stored(hub: Hub, case: str) -> None:
    keys, pid = _register(hub, "a@example.org")
    method, path, body, field, upload = _NUL_CASES[case]
    r = _send(hub, keys, method, path.replace("PID", pid), body, upload=upload)
    _refused(r, field, "U+0000")
    _nothing_stored(hub, keys, pid)


@pytest.mark.parametrize("key", ["a%ffb", "a%feb", "a%C3b", "a%ED%A0%80b", "a%zzb", "a%fb"])
def test_a_key_that_is_not_percent_encoded_utf8_is_refused(hub: Hub, key: str) -> None:
    keys, pid = _register(hub, "a@example.org")
    r = _send(hub, keys, "PUT", f"/api/projects/{pid}/mutables/{key}", b'{"value": "v"}')
    _refused(r, "path")
    assert _send(hub, keys, "GET", f"/api/projects/{pid}/mutables").json()["mutables"] == []


def test_two_undecodable_keys_are_not_one_key(hub: Hub) -> None:
    # Decoded with replacement, both would be the key "a\ufffdb": each is refused on write and on read.
    keys, pid = _register(hub, "a@example.org")
    _refused(_send(hub, keys, "PUT", f"/api/projects/{pid}/mutables/a%ffb", b'{"value": "one"}'), "path")
    assert _send(hub, keys, "GET", f"/api/projects/{pid}/mutables").json()["mutables"] == []
    for key in ("a%ffb", "a%feb"):
        _refused(_send(hub, keys, "GET", f"/api/projects/{pid}/mutables/{key}"), "path")
    assert _send(hub, keys, "PUT", f"/api/projects/{pid}/mutables/a%EF%BF%BDb", b'{"value": "v"}').status_code == 200
    assert [m["key"] for m in _send(hub, keys, "GET", f"/api/projects/{pid}/mutables").json()["mutables"]] \
        == ["a\ufffdb"]  # the replacement character itself, sent as valid UTF-8, is an ordinary key
    _refused(_send(hub, keys, "GET", f"/api/projects/{pid}/mutables/a%feb"), "path")


def test_a_key_with_valid_escapes_still_works(hub: Hub) -> None:
    keys, pid = _register(hub, "a@example.org")
    path = f"/api/projects/{pid}/mutables/caf%C3%A9/%E2%9C%93%20x"
    assert _send(hub, keys, "PUT", path, b'{"value": "v"}').status_code == 200
    r = _send(hub, keys, "GET", path)
    assert r.status_code == 200 and r.json()["key"] == "café/✓ x" and r.json()["value"] == "v"
    listed = _send(hub, keys, "GET", f"/api/projects/{pid}/mutables?prefix=caf%C3%A9%2F").json()["mutables"]
    assert [m["key"] for m in listed] == ["café/✓ x"]


@pytest.mark.parametrize("escaped,name", [("%09", "U+0009"), ("%0A", "U+000A"), ("%1B", "U+001B"),
                                          ("%7F", "U+007F"), ("%C2%85", "U+0085")])
def test_control_characters_in_paths_and_queries_are_refused(hub: Hub, escaped: str, name: str) -> None:
    keys, pid = _register(hub, "a@example.org")
    _refused(_send(hub, keys, "PUT", f"/api/projects/{pid}/mutables/a{escaped}b", b'{"value": "v"}'), "path", name)
    _refused(_send(hub, keys, "GET", f"/api/projects/{pid}/mutables?prefix=a{escaped}"), "prefix", name)
    _refused(_send(hub, keys, "GET", f"/api/projects/{pid}/files?after={escaped}"), "after", name)


@pytest.mark.parametrize("method,path,body,field", [
    ("POST", "/api/projects", {"name": "two\nlines"}, "name"),
    ("PATCH", "/api/projects/PID", {"name": "tab\there"}, "name"),
    ("POST", "/api/sign-in-requests", {"label": "bell\x07"}, "label"),
    ("POST", "/api/clients", {"token": "khub_x\x00"}, "token"),
    ("POST", "/api/clients", {"token": "khub_x", "label": "pc\x1b[2J"}, "label"),
    ("POST", "/api/projects/PID/files/SHA1/complete", {"label": "x\x85"}, "label"),
    ("PUT", "/api/me/default-project", {"project_id": "p\x00"}, "project_id"),
])
def test_control_characters_in_names_and_labels_are_refused(hub: Hub, method: str, path: str,
                                                            body: dict[str, Any], field: str) -> None:
    keys, pid = _register(hub, "a@example.org")
    path = path.replace("PID", pid).replace("SHA1", _SHA1)
    _refused(_send(hub, keys, method, path, json.dumps(body).encode()), field, "U+")


def test_a_value_may_hold_newlines_and_tabs_but_not_nul(hub: Hub) -> None:
    keys, pid = _register(hub, "a@example.org")
    path = f"/api/projects/{pid}/mutables/doc"
    text = '{\n\t"uris": ["sha1://x",\r\n\t"sha1://y"]\n}\x1b'
    assert _send(hub, keys, "PUT", path, json.dumps({"value": text}).encode()).status_code == 200
    assert _send(hub, keys, "GET", path).json()["value"] == text
    _refused(_send(hub, keys, "PUT", path, json.dumps({"value": text + "\x00"}).encode()), "value", "U+0000")
    assert _send(hub, keys, "GET", path).json()["value"] == text


def test_a_lone_surrogate_in_a_value_names_the_field(hub: Hub) -> None:
    keys, pid = _register(hub, "a@example.org")
    _refused(_send(hub, keys, "PUT", f"/api/projects/{pid}/mutables/k", b'{"value": "a\\ud800"}'), "value")


def test_the_admin_api_refuses_control_characters_in_an_email(hub: Hub) -> None:
    keys = new_keys()
    body = json.dumps({"token": hub.token("root@example.org", admin=True)}).encode()
    assert _send(hub, keys, "POST", "/api/clients", body).status_code == 200
    r = _send(hub, keys, "POST", "/api/tokens", json.dumps({"email": "x\x00@example.org"}).encode())
    _refused(r, "email", "U+0000")
    assert _count(hub, tables.users) == 1


@pytest.mark.parametrize("setter", [
    lambda: kc.set_mutable_local("k", "a\x00b"),
    lambda: kc.set_mutable("k", "a\x00b"),
], ids=["local", "hub"])
def test_the_client_refuses_a_value_with_nul_before_any_request(hub: Hub, setter: Callable[[], None]) -> None:
    hub.sign_in("alice", "a@example.org")
    nonces = _count(hub, tables.nonces)
    with pytest.raises(MutableValueError, match="NUL"):
        setter()
    assert _count(hub, tables.nonces) == nonces  # no signed request was sent
    assert kc.get_mutable_local("k") is None


def test_a_real_hub_refuses_undecodable_and_control_escapes(real_hub: HubProcess) -> None:
    # uvicorn decodes the path itself (replacing what is not UTF-8); the hub must look at the raw one.
    keys = new_keys()
    host = real_hub.url.removeprefix("http://")
    with httpx2.Client(base_url=real_hub.url) as http:
        body = json.dumps({"token": real_hub.admin_token}).encode()
        r = http.post("/api/clients", content=body, headers={
            **signed_headers(keys, "POST", "/api/clients", body, host=host), "Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        pid = r.json()["default_project_id"]
        for key, words in (("a%ffb", ("path", "UTF-8")), ("a%00b", ("path", "U+0000"))):
            path = f"/api/projects/{pid}/mutables/{key}"
            value = b'{"value": "v"}'
            r = http.put(path, content=value, headers={
                **signed_headers(keys, "PUT", path, value, host=host), "Content-Type": "application/json"})
            assert r.status_code == 400, r.text
            _refused(r, *words)


@pytest.mark.parametrize("key", ["a\nb", "tab\there", "esc\x1b", "c1\x85"])
@pytest.mark.parametrize("where", ["local", "hub"])
def test_a_key_with_a_control_character_is_refused_locally_as_on_the_hub(hub: Hub, key: str, where: str) -> None:
    # The hub refuses such a key (400); the client refuses it first, and locally too, so both agree.
    from kachery_core.errors import InvalidMutableKeyError

    hub.sign_in("alice", "a@example.org")
    nonces = _count(hub, tables.nonces)
    with pytest.raises(InvalidMutableKeyError, match="control characters"):
        kc.set_mutable_local(key, "v") if where == "local" else kc.set_mutable(key, "v")
    assert _count(hub, tables.nonces) == nonces

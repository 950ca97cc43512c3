"""The hub's HTTP API: signed requests, JSON errors with stable codes, no 500 for bad input."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_fixtures import *  # noqa: F403
from hub_fixtures import Hub, make_hub, new_keys, signed_headers

from kachery_core import _signing


@pytest.fixture(params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """The API through the hub itself (uploads included), on both metadata engines; the
    object-store flow has its own tests in test_hub_s3.py."""
    yield from make_hub(request.param, request, tmp_path, monkeypatch)


def _h(*args, **kwargs) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Signature headers of a JSON request."""
    return {**signed_headers(*args, **kwargs), "Content-Type": "application/json"}


def _register(hub: Hub, email: str, *, admin: bool = False):  # type: ignore[no-untyped-def]
    keys = new_keys()
    body = json.dumps({"token": hub.token(email, admin=admin)}).encode()
    r = hub.http.post("/api/clients", content=body, headers={
        **signed_headers(keys, "POST", "/api/clients", body), "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    return keys, r.json()


def _get(hub: Hub, keys, path: str):  # type: ignore[no-untyped-def]
    return hub.http.get(path, headers=_h(keys, "GET", path))


def _error(r) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    body = r.json()
    assert set(body) == {"error"}, body
    return r.status_code, body["error"]["code"], body["error"]["message"]


def test_register_binds_the_key_to_the_token_user_with_a_default_project(hub: Hub) -> None:
    keys, info = _register(hub, "Alice@Example.org")
    assert info["client_id"] == keys.client_id
    assert info["user"]["email"] == "alice@example.org"
    me = _get(hub, keys, "/api/me").json()
    assert me["default_project_id"] == info["default_project_id"]
    projects = _get(hub, keys, "/api/projects").json()["projects"]
    assert [(p["project_id"], p["role"]) for p in projects] == [(info["default_project_id"], "admin")]


def test_two_clients_of_one_user_share_the_account_and_default_project(hub: Hub) -> None:
    _, one = _register(hub, "bob@example.org")
    _, two = _register(hub, "bob@example.org")
    assert one["user"]["id"] == two["user"]["id"]
    assert one["default_project_id"] == two["default_project_id"]


def test_unknown_token_is_refused(hub: Hub) -> None:
    keys = new_keys()
    body = b'{"token": "khub_not-a-token"}'
    r = hub.http.post("/api/clients", content=body, headers=_h(keys, "POST", "/api/clients", body))
    assert _error(r)[:2] == (401, "invalid_token")


def test_unregistered_client_is_told_to_sign_in(hub: Hub) -> None:
    status, code, message = _error(_get(hub, new_keys(), "/api/me"))
    assert (status, code) == (401, "client_not_registered")
    assert "token" in message


def test_replayed_request_is_refused(hub: Hub) -> None:
    keys, _ = _register(hub, "a@example.org")
    headers = signed_headers(keys, "GET", "/api/me")
    assert hub.http.get("/api/me", headers=headers).status_code == 200
    assert _error(hub.http.get("/api/me", headers=headers))[:2] == (401, "replayed_request")



def test_a_refused_request_cannot_be_replayed_once_it_would_succeed(hub: Hub) -> None:
    # The refusal rolls back the request's transaction; its nonce must be kept all the same.
    a, ia = _register(hub, "a@example.org")
    b, _ = _register(hub, "b@example.org")
    pid = ia["default_project_id"]
    path, body = f"/api/projects/{pid}/mutables/k", b'{"value": "from b"}'
    headers = _h(b, "PUT", path, body)
    assert _error(hub.http.put(path, content=body, headers=headers))[:2] == (403, "forbidden")
    member = f"/api/projects/{pid}/members/b@example.org"
    role = b'{"role": "write"}'
    assert hub.http.put(member, content=role, headers=_h(a, "PUT", member, role)).status_code == 200
    assert _error(hub.http.put(path, content=body, headers=headers))[:2] == (401, "replayed_request")
    assert _error(_get(hub, a, path))[:2] == (404, "mutable_not_found")

@pytest.mark.parametrize("offset_s", [-3600, 3600])
def test_clock_skew_refusal_states_the_skew(hub: Hub, offset_s: int) -> None:
    keys, _ = _register(hub, "a@example.org")
    headers = signed_headers(keys, "GET", "/api/me", time_ms=_signing.now_ms() + offset_s * 1000)
    r = hub.http.get("/api/me", headers=headers)
    status, code, message = _error(r)
    assert (status, code) == (401, "clock_skew")
    assert abs(r.json()["error"]["skew_seconds"] - offset_s) < 5
    assert ("ahead of" if offset_s > 0 else "behind") in message
    assert "3600." in message or "3599." in message


@pytest.mark.parametrize("tamper", ["path", "method", "body", "client", "signature", "host"])
def test_a_signature_covers_method_path_body_and_key(hub: Hub, tamper: str) -> None:
    keys, info = _register(hub, "a@example.org")
    pid = info["default_project_id"]
    path = f"/api/projects/{pid}/mutables/k"
    body = b'{"value": "v"}'
    headers = signed_headers(keys, "PUT", path, body)
    method, url, content = "PUT", path, body
    if tamper == "path":
        url = f"/api/projects/{pid}/mutables/other"
    elif tamper == "method":
        method = "DELETE"
    elif tamper == "body":
        content = b'{"value": "w"}'
    elif tamper == "client":
        headers[_signing.HEADER_CLIENT] = new_keys().client_id
    elif tamper == "host":  # a request signed for one hub, replayed to another
        headers = _h(keys, "PUT", path, body, host="other-hub.example:8555")
    else:
        headers[_signing.HEADER_SIGNATURE] = "0" * 128
    r = hub.http.request(method, url, content=content, headers=headers)
    assert _error(r)[:2] == (401, "bad_signature")
    r = hub.http.request("PUT", path, content=body, headers=_h(keys, "PUT", path, body))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("header,value", [
    (_signing.HEADER_TIME, "yesterday"), (_signing.HEADER_NONCE, "short"),
    (_signing.HEADER_CLIENT, "xyz"), (_signing.HEADER_BODY_SHA1, "00"),
])
def test_malformed_signature_headers_are_401_naming_the_header(hub: Hub, header: str, value: str) -> None:
    keys, _ = _register(hub, "a@example.org")
    headers = {**signed_headers(keys, "GET", "/api/me"), header: value}
    status, code, message = _error(hub.http.get("/api/me", headers=headers))
    assert (status, code) == (401, "bad_signature")
    assert header in message


def test_anonymous_requests_cannot_write(hub: Hub) -> None:
    _, info = _register(hub, "a@example.org")
    r = hub.http.put(f"/api/projects/{info['default_project_id']}/mutables/k", json={"value": "v"})
    assert _error(r)[:2] == (401, "unauthenticated")


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/api/projects", b"{not json"),
    ("POST", "/api/projects", b'{"name": 5}'),
    ("POST", "/api/projects", b'{"name": ""}'),
    ("POST", "/api/projects", b"[]"),
    ("PUT", "/api/projects/PID/members/someone%40example.org", b'{"role": "owner"}'),
    ("PUT", "/api/projects/PID/members/not-an-email", b'{"role": "read"}'),
    ("PUT", "/api/projects/PID/mutables/a/../b", b'{"value": "v"}'),
    ("PUT", "/api/projects/PID/mutables/@x", b'{"value": "v"}'),
    ("PUT", "/api/projects/PID/mutables/k", b'{"value": null}'),
    ("GET", "/api/projects/PID/files/XYZ", b""),
    ("GET", "/api/files/not-a-sha1", b""),
    ("GET", "/api/projects/PID/files?limit=-1", b""),
    ("GET", "/api/projects/PID/mutables?limit=abc", b""),
    ("GET", "/api/projects/nope", b""),
    ("PATCH", "/api/me", b""),
    ("GET", "/api/no/such/endpoint", b""),
    ("PUT", "/api/projects/PID/mutables/k", b'{"value": "\\ud800"}'),
    ("POST", "/api/projects", b'{"name": "\\udfff"}'),
    ("PATCH", "/api/projects/PID", b'{"name": "a\\ud800b"}'),
])
def test_bad_input_is_a_json_4xx_never_a_500(hub: Hub, method: str, path: str, body: bytes) -> None:
    keys, info = _register(hub, "a@example.org")
    path = path.replace("PID", info["default_project_id"])
    r = hub.http.request(method, path, content=body, headers=_h(keys, method, path, body))
    status, code, message = _error(r)
    assert 400 <= status < 500, (status, code, message)
    assert code and message


def test_oversized_mutable_is_413(hub: Hub) -> None:
    from kachery_core._constants import MAX_MUTABLE_VALUE_BYTES

    keys, info = _register(hub, "a@example.org")
    path = f"/api/projects/{info['default_project_id']}/mutables/big"
    body = json.dumps({"value": "x" * (MAX_MUTABLE_VALUE_BYTES + 1)}).encode()
    r = hub.http.put(path, content=body, headers=_h(keys, "PUT", path, body))
    assert _error(r)[:2] == (413, "payload_too_large")


def _upload(hub: Hub, keys, pid: str, data: bytes, sha1: str | None = None):  # type: ignore[no-untyped-def]
    sha1 = sha1 or hashlib.sha1(data).hexdigest()
    path = f"/api/projects/{pid}/files/{sha1}"
    return hub.http.put(path, content=data, headers=_h(keys, "PUT", path, body_sha1=sha1))


def test_tampered_upload_is_refused_and_nothing_becomes_visible(hub: Hub) -> None:
    keys, info = _register(hub, "a@example.org")
    pid = info["default_project_id"]
    claimed = hashlib.sha1(b"the real bytes").hexdigest()
    r = _upload(hub, keys, pid, b"other bytes!!!", sha1=claimed)
    assert _error(r)[:2] == (400, "hash_mismatch")
    assert _error(_get(hub, keys, f"/api/files/{claimed}"))[:2] == (404, "file_not_found")
    assert _get(hub, keys, f"/api/projects/{pid}/files").json()["files"] == []
    assert list((hub.state.settings.data_dir / "blobs" / ".tmp").iterdir()) == []


def test_upload_signature_must_name_the_file_sha1(hub: Hub) -> None:
    keys, info = _register(hub, "a@example.org")
    data = b"abc"
    sha1 = hashlib.sha1(data).hexdigest()
    path = f"/api/projects/{info['default_project_id']}/files/{sha1}"
    r = hub.http.put(path, content=data, headers=_h(keys, "PUT", path, data=None) if False else
                     signed_headers(keys, "PUT", path, body_sha1=hashlib.sha1(b"x").hexdigest()))
    assert _error(r)[:2] == (401, "bad_signature")


def test_download_supports_ranges(hub: Hub) -> None:
    keys, info = _register(hub, "a@example.org")
    data = bytes(range(256)) * 10
    assert _upload(hub, keys, info["default_project_id"], data).status_code == 200
    sha1 = hashlib.sha1(data).hexdigest()
    path = f"/api/files/{sha1}"
    r = hub.http.get(path, headers={**signed_headers(keys, "GET", path), "Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    r = hub.http.get(path, headers={**signed_headers(keys, "GET", path), "Range": "bytes=99999-"})
    assert r.status_code == 416 and r.json()["error"]["code"] == "range_not_satisfiable"
    r = hub.http.get(path, headers={**signed_headers(keys, "GET", path), "Range": "pages=1-2"})
    assert _error(r)[:2] == (400, "invalid_input")
    assert _get(hub, keys, path).content == data


def test_dedup_does_not_reveal_a_private_projects_hash(hub: Hub) -> None:
    a, ia = _register(hub, "a@example.org")
    b, ib = _register(hub, "b@example.org")
    secret = b"a private result"
    sha1 = hashlib.sha1(secret).hexdigest()
    assert _upload(hub, a, ia["default_project_id"], secret).status_code == 200
    # B cannot see it, and asking in B's own project says "not here", as for any unknown hash.
    unknown = hashlib.sha1(b"never stored").hexdigest()
    for h in (sha1, unknown):
        assert _error(_get(hub, b, f"/api/files/{h}"))[:2] == (404, "file_not_found")
        assert _error(_get(hub, b, f"/api/files/{h}/info"))[:2] == (404, "file_not_found")
        assert _error(_get(hub, b, f"/api/projects/{ib['default_project_id']}/files/{h}"))[:2] == (404, "file_not_found")
    # Storing the same bytes still requires sending them, and a wrong body is still refused.
    assert _error(_upload(hub, b, ib["default_project_id"], b"guess", sha1=sha1))[:2] == (400, "hash_mismatch")
    assert _upload(hub, b, ib["default_project_id"], secret).status_code == 200
    assert _get(hub, b, f"/api/files/{sha1}").content == secret


def test_members_and_roles(hub: Hub) -> None:
    a, ia = _register(hub, "a@example.org")
    b, _ = _register(hub, "b@example.org")
    pid = ia["default_project_id"]

    def put_member(keys, email: str, role: str):  # type: ignore[no-untyped-def]
        path = f"/api/projects/{pid}/members/{email}"
        body = json.dumps({"role": role}).encode()
        return hub.http.put(path, content=body, headers=_h(keys, "PUT", path, body))

    mpath = f"/api/projects/{pid}/mutables/k"
    body = b'{"value": "v"}'
    assert _error(_get(hub, b, mpath))[:2] == (403, "forbidden")
    assert _error(put_member(b, "b@example.org", "admin"))[:2] == (403, "forbidden")
    assert put_member(a, "b@example.org", "read").status_code == 200
    assert _error(_get(hub, b, mpath))[:2] == (404, "mutable_not_found")
    r = hub.http.put(mpath, content=body, headers=_h(b, "PUT", mpath, body))
    assert _error(r)[:2] == (403, "forbidden") and "needs write" in r.json()["error"]["message"]
    assert put_member(a, "b@example.org", "write").status_code == 200
    assert hub.http.put(mpath, content=body, headers=_h(b, "PUT", mpath, body)).status_code == 200
    # The last admin cannot step down.
    assert _error(put_member(a, "a@example.org", "read"))[:2] == (409, "conflict")
    members = _get(hub, a, f"/api/projects/{pid}/members").json()["members"]
    assert [(m["email"], m["role"]) for m in members] == [("a@example.org", "admin"), ("b@example.org", "write")]


def test_admin_api_creates_tokens_for_admins_only(hub: Hub) -> None:
    admin, _ = _register(hub, "root@example.org", admin=True)
    user, _ = _register(hub, "u@example.org")
    body = b'{"email": "new@example.org"}'
    r = hub.http.post("/api/tokens", content=body, headers=_h(user, "POST", "/api/tokens", body))
    assert _error(r)[:2] == (403, "forbidden")
    r = hub.http.post("/api/tokens", content=body, headers=_h(admin, "POST", "/api/tokens", body))
    assert r.status_code == 200 and r.json()["token"].startswith("khub_")


def test_openapi_document_lists_the_endpoints(hub: Hub) -> None:
    paths = hub.http.get("/openapi.json").json()["paths"]
    for p in ("/api/clients", "/api/me", "/api/projects", "/api/projects/{project_id}/members/{email}",
              "/api/projects/{project_id}/files/{sha1}", "/api/files/{sha1}", "/api/files/{sha1}/info",
              "/api/projects/{project_id}/mutables", "/api/projects/{project_id}/mutables/{key}"):
        assert p in paths, p


def test_signin_page_escapes_the_token(hub: Hub) -> None:
    r = hub.http.get("/", params={"token": "<script>alert(1)</script>"})
    assert r.status_code == 401
    assert "<script>" not in r.text and "not known to the hub" in r.text
    token = hub.token("a@example.org")
    r = hub.http.get("/", params={"token": token})
    assert r.status_code == 200 and f'token="{token}"' in r.text


def test_an_announced_oversized_json_body_is_refused_before_it_is_read(hub: Hub) -> None:
    keys, info = _register(hub, "a@example.org")
    limit = hub.state.settings.max_json_body_bytes
    path = f"/api/projects/{info['default_project_id']}/mutables/k"
    body = b'{"value": "' + b"x" * limit + b'"}'
    r = hub.http.put(path, content=body, headers=_h(keys, "PUT", path, body))
    status, code, message = _error(r)
    assert (status, code) == (413, "payload_too_large") and str(limit) in message


def test_openapi_documents_the_error_body_on_every_endpoint(hub: Hub) -> None:
    doc = hub.http.get("/openapi.json").json()
    assert set(doc["components"]["schemas"]["ErrorBody"]["properties"]) == {"error"}
    for path, methods in doc["paths"].items():
        if path == "/api/health":
            continue  # takes no input and cannot fail
        for method, op in methods.items():
            assert {"400", "401", "403", "404", "422"} <= set(op["responses"]), (method, path)


def test_every_endpoint_and_cli_command_is_documented_in_the_package(hub: Hub) -> None:
    import kachery_hub
    from kachery_hub._cli import build_parser

    doc = kachery_hub.__doc__ or ""
    for path, methods in hub.http.get("/openapi.json").json()["paths"].items():
        assert path in doc, path
        row = next(line for line in doc.splitlines() if f" {path} " in f" {line} ")
        for method in methods:
            assert method.upper() in row.split()[0].split(","), (method, path)
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():  # type: ignore[union-attr]
        assert f"kachery-hub {name}" in doc, name
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert flag in doc, (name, flag)


# The property-based fuzzing of every endpoint is in test_hub_fuzz.py.

"""Signed requests under attack: host binding, header parsing, and nonces of failed requests.

A hub refuses a request signed for another hub (its operator could otherwise
replay a multi-hub client's requests), parses numbers in headers as ASCII
digits only, and remembers the nonce of a request that failed, even with a 500.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_async

pytest.importorskip("fastapi")

import httpx2  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

import kachery_core as kc  # noqa: E402
from hub_fixtures import HUB_URL, Hub, hub, make_hub, new_keys, postgres_server, s3_server, signed_headers  # noqa: E402,F401
from hub_process import HubProcess, forget_hubs, free_port, real_hub  # noqa: E402,F401
from kachery_core import _hub, _signing  # noqa: E402
from kachery_core._identity import ClientKeys, load_client_keys  # noqa: E402
from kachery_hub import Settings, create_app  # noqa: E402
from kachery_hub import _auth, _mutables  # noqa: E402
from kachery_hub.errors import ConfigurationError  # noqa: E402


@pytest.fixture(params=["sqlite", "postgresql"])
def db_hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """An in-process hub on each database: nonces live there."""
    yield from make_hub(request.param, request, tmp_path, monkeypatch)


def _error(r: httpx2.Response) -> tuple[int, str, str]:
    assert "error" in r.json(), (r.status_code, r.text)
    err = r.json()["error"]
    return r.status_code, str(err["code"]), str(err["message"])


def _raw(hub: Hub, method: str, path: str, headers: dict[str, str | bytes], body: bytes = b"") -> httpx2.Response:
    """A request to the in-process hub with its header bytes as given.

    Over the network header bytes reach the hub as Latin-1 text, so b"\\xb2\\xb3"
    is "²³"; TestClient would send str headers as UTF-8, so the app is called directly.
    """
    async def send() -> httpx2.Response:
        transport = httpx2.ASGITransport(app=hub.http.app)
        async with httpx2.AsyncClient(transport=transport, base_url=HUB_URL) as client:
            response: httpx2.Response = await client.request(method, path, content=body, headers=headers)
            return response

    return run_async(send())


def _registered(hub: Hub, email: str) -> tuple[ClientKeys, str]:
    """A client key bound to ``email``; returns it and the user's default project."""
    keys = new_keys()
    body = json.dumps({"token": hub.token(email), "label": "t"}).encode()
    r = hub.http.post("/api/clients", content=body, headers={
        **signed_headers(keys, "POST", "/api/clients", body), "content-type": "application/json"})
    assert r.status_code == 200, r.text
    return keys, str(r.json()["default_project_id"])


# --- host binding ----------------------------------------------------------------------------


def test_a_request_signed_for_another_host_is_refused_as_meant_for_another_hub(hub: Hub) -> None:
    keys, _ = _registered(hub, "ada@example.org")
    r = hub.http.get("/api/me", headers={**signed_headers(keys, "GET", "/api/me", host="other-hub.example.org"),
                                         "host": "other-hub.example.org"})
    status, code, message = _error(r)
    assert (status, code) == (401, "wrong_hub")
    assert "other-hub.example.org" in message and "http://testserver" in message
    assert r.json()["error"]["signed_host"] == "other-hub.example.org"
    # Signed for this hub, the same client is welcome.
    assert hub.http.get("/api/me", headers=signed_headers(keys, "GET", "/api/me")).status_code == 200


def test_a_client_pointed_at_a_url_the_hub_does_not_know_gets_a_typed_error(hub: Hub) -> None:
    hub.use("laptop")
    with pytest.raises(kc.HubAuthError) as e:
        kc.init(hub_url="http://elsewhere.example.org:8555", token=hub.token("ada@example.org"), http_client=hub.http)
    assert e.value.code == "wrong_hub" and e.value.status == 401
    assert "elsewhere.example.org:8555" in str(e.value) and "--public-url" in str(e.value)
    _hub._injected.pop("http://elsewhere.example.org:8555", None)


def test_a_hub_without_public_urls_refuses_every_signed_request_and_says_why(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "hub"))
    with TestClient(app, raise_server_exceptions=False) as http:
        keys = new_keys()
        status, code, message = _error(http.get("/api/me", headers=signed_headers(keys, "GET", "/api/me")))
        assert (status, code) == (401, "wrong_hub")
        assert "testserver" in message and "public URL" in message
        assert http.get("/api/health").status_code == 200  # anonymous requests need no host binding


def test_public_urls_are_read_from_the_environment_and_checked() -> None:
    s = Settings.from_environ({"KACHERY_HUB_DATA": "/tmp/x",
                               "KACHERY_HUB_PUBLIC_URL": "https://Lab.Example.org/, http://[::1]:8555,http://h:80"})
    assert s.public_urls == ("https://lab.example.org", "http://[::1]:8555", "http://h")
    assert s.signed_hosts == ("lab.example.org", "[::1]:8555", "h")
    for bad in ("ftp://lab.example.org", "lab.example.org", "https://", "https://u:p@lab.example.org",
                "https://lab.example.org/?x=1", "https://lab.example.org:99999"):
        with pytest.raises(ConfigurationError, match="public URL"):
            Settings(data_dir=Path("/tmp/x"), public_urls=(bad,))


def test_default_public_urls_follow_the_listen_address() -> None:
    from kachery_hub._settings import default_public_urls

    assert default_public_urls("127.0.0.1", 8555) == ("http://127.0.0.1:8555", "http://localhost:8555")
    assert default_public_urls("::1", 9) == ("http://[::1]:9", "http://localhost:9")
    assert default_public_urls("10.1.2.3", 9) == ("http://10.1.2.3:9",)
    everywhere = default_public_urls("0.0.0.0", 9)
    assert everywhere[:2] == ("http://127.0.0.1:9", "http://localhost:9") and len(everywhere) >= 3


def test_behind_a_proxy_that_strips_a_path_prefix_the_signed_path_still_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(Settings(data_dir=tmp_path / "hub", public_urls=("https://lab.example.org/kachery/",)))
    with TestClient(app, raise_server_exceptions=False) as http:
        keys = new_keys()
        # The client signed /kachery/api/me for lab.example.org; the proxy sends /api/me with its own Host.
        headers = signed_headers(keys, "GET", "/kachery/api/me", host="lab.example.org")
        # The signature verifies: what is left to say is that this key has not signed in.
        assert _error(http.get("/api/me", headers=headers))[:2] == (401, "client_not_registered")
        r = http.get("/api/me", headers=signed_headers(keys, "GET", "/api/me", host="lab.example.org"))
        assert _error(r)[:2] == (401, "bad_signature")


def _multi_hub_client(tmp_path: Path, a: HubProcess, b: HubProcess) -> ClientKeys:
    """One client key registered on hubs ``a`` and ``b`` through the real client."""
    kc.init(hub_url=a.url, token=a.token("ada@example.org"))
    kc.init(hub_url=b.url, token=b.token("ada@example.org"))
    keys = load_client_keys(create=False)
    assert keys is not None
    return keys


@pytest.mark.slow
def test_a_request_signed_for_one_real_hub_is_refused_by_another(tmp_path: Path) -> None:
    a = HubProcess(tmp_path / "a", free_port())
    b = HubProcess(tmp_path / "b", free_port())
    a.start()
    try:
        b.start()
        try:
            keys = _multi_hub_client(tmp_path, a, b)
            a_host = a.url.removeprefix("http://")
            signed_for_a = signed_headers(keys, "DELETE", "/api/me", host=a_host)
            # Hub A's operator sees the request (here: A serves it) and replays it verbatim to hub B.
            assert httpx2.delete(a.url + "/api/me", headers=signed_for_a).status_code == 200
            replay = httpx2.delete(b.url + "/api/me", headers={**signed_for_a, "Host": a_host})
            status, code, message = _error(replay)
            assert (status, code) == (401, "wrong_hub")
            assert a_host in message and b.url in message
            # With B's Host header instead, the signature does not verify at all.
            replay = httpx2.delete(b.url + "/api/me", headers=signed_for_a)
            assert _error(replay)[:2] == (401, "bad_signature")
            # The client is still signed in to B.
            me = httpx2.get(b.url + "/api/me", headers=signed_headers(keys, "GET", "/api/me", host=b.url[7:]))
            assert me.status_code == 200 and me.json()["user"]["email"] == "ada@example.org"
        finally:
            b.stop()
    finally:
        a.stop()
        forget_hubs()


@pytest.mark.slow
def test_a_hub_behind_a_proxy_verifies_against_its_public_url_not_the_host_header(tmp_path: Path) -> None:
    lab = HubProcess(tmp_path / "lab", free_port(), public_url="https://lab.example.org/")
    lab.start()
    try:
        keys = new_keys()
        body = json.dumps({"token": lab.token("ada@example.org"), "label": "t"}).encode()
        # The proxy forwards to 127.0.0.1:PORT and rewrites Host to it; the client signed lab.example.org.
        r = httpx2.post(lab.url + "/api/clients", content=body, headers={
            **signed_headers(keys, "POST", "/api/clients", body, host="lab.example.org"),
            "content-type": "application/json"})
        assert r.status_code == 200, r.text
        r = httpx2.get(lab.url + "/api/me", headers=signed_headers(keys, "GET", "/api/me", host="lab.example.org"))
        assert r.status_code == 200 and r.json()["user"]["email"] == "ada@example.org"
        # A proxy that keeps the Host header works as well.
        r = httpx2.get(lab.url + "/api/me", headers={
            **signed_headers(keys, "GET", "/api/me", host="lab.example.org"), "Host": "lab.example.org"})
        assert r.status_code == 200
        # The listen address is not one of the public URLs configured: refused, naming both.
        listen = lab.url.removeprefix("http://")
        r = httpx2.get(lab.url + "/api/me", headers=signed_headers(keys, "GET", "/api/me", host=listen))
        status, code, message = _error(r)
        assert (status, code) == (401, "wrong_hub")
        assert listen in message and "https://lab.example.org" in message
    finally:
        lab.stop()


# --- numbers in headers ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["²³", "1²", "+1700000000000", "1_700_000_000_000", "1" * 5000])
def test_a_time_header_that_is_not_ascii_digits_is_a_401_not_a_500(hub: Hub, value: str) -> None:
    keys, _ = _registered(hub, "ada@example.org")
    headers: dict[str, str | bytes] = {**signed_headers(keys, "GET", "/api/me"),
                                       _signing.HEADER_TIME: value.encode("latin-1")}
    status, code, message = _error(_raw(hub, "GET", "/api/me", headers))
    assert (status, code) == (401, "bad_signature") and _signing.HEADER_TIME in message


@pytest.mark.slow
def test_a_time_header_of_unicode_digits_is_a_401_over_the_network(real_hub: HubProcess) -> None:
    headers: dict[str, str | bytes] = {**signed_headers(new_keys(), "GET", "/api/me", host=real_hub.url[7:]),
                                       _signing.HEADER_TIME: "²³".encode("latin-1")}
    r = httpx2.get(real_hub.url + "/api/me", headers=headers)
    assert _error(r)[:2] == (401, "bad_signature")


@pytest.mark.parametrize("length", ["²³", "1" * 5000])
def test_a_content_length_that_is_not_a_plain_number_is_a_400_not_a_500(hub: Hub, length: str) -> None:
    keys, pid = _registered(hub, "ada@example.org")
    body = b'{"value": "v"}'
    sha1 = hashlib.sha1(body).hexdigest()
    for path in (f"/api/projects/{pid}/mutables/k", f"/api/projects/{pid}/files/{sha1}"):
        headers: dict[str, str | bytes] = {**signed_headers(keys, "PUT", path, body), "content-type": "application/json",
                                           "content-length": length.encode("latin-1")}
        status, code, message = _error(_raw(hub, "PUT", path, headers, body))
        assert (status, code) == (400, "invalid_input") and "Content-Length" in message, (path, message)


# --- nonces of failed requests ---------------------------------------------------------------


def test_a_request_that_ended_in_a_500_cannot_be_replayed(db_hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    keys, pid = _registered(db_hub, "ada@example.org")
    path = f"/api/projects/{pid}/mutables/k"
    body = json.dumps({"value": "v"}).encode()
    headers = {**signed_headers(keys, "PUT", path, body), "content-type": "application/json"}

    def fail(*args: object) -> None:
        raise RuntimeError("the database went away")

    with monkeypatch.context() as m:
        m.setattr(_mutables, "_set", fail)
        assert _error(db_hub.http.put(path, content=body, headers=headers))[:2] == (500, "internal_error")
    # The fault is gone; the same signed request must still be refused.
    assert _error(db_hub.http.put(path, content=body, headers=headers))[:2] == (401, "replayed_request")
    assert db_hub.http.get(path, headers=signed_headers(keys, "GET", path)).status_code == 404


def test_a_request_whose_caller_lookup_failed_cannot_be_replayed(db_hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    keys, _ = _registered(db_hub, "ada@example.org")
    headers = signed_headers(keys, "DELETE", "/api/me")

    def fail(*args: object) -> None:
        raise RuntimeError("the database went away")

    with monkeypatch.context() as m:
        m.setattr(_auth, "_only_caller", fail)
        assert _error(db_hub.http.delete("/api/me", headers=headers))[:2] == (500, "internal_error")
    assert _error(db_hub.http.delete("/api/me", headers=headers))[:2] == (401, "replayed_request")
    assert db_hub.http.get("/api/me", headers=signed_headers(keys, "GET", "/api/me")).json()["user"] is not None

"""``GET /api/sign-in-methods``: what a sign-in panel may offer, told to anyone, and nothing more."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_fixtures import HUB_URL, Hub, make_hub, new_keys, signed_headers
from starlette.testclient import TestClient

import kachery_core as kc
from kachery_core import _hub, _signin
from kachery_hub import Settings, create_app
from kachery_hub._settings import GOOGLE_ISSUER

SECRET = "client-secret-that-must-stay-home"


@pytest.fixture
def hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    yield from make_hub("sqlite", request, tmp_path, monkeypatch)


def _oidc_app(tmp_path: Path, issuer: str) -> TestClient:
    settings = Settings(data_dir=tmp_path / "oidc-hub", oidc_issuer=issuer, oidc_client_id="client-id-4711",
                        oidc_client_secret=SECRET, admin_emails=("boss@example.org",), public_urls=(HUB_URL,))
    return TestClient(create_app(settings), raise_server_exceptions=False)


def test_a_hub_without_a_provider_offers_tokens(hub: Hub) -> None:
    answer = hub.http.get("/api/sign-in-methods")
    assert answer.status_code == 200
    assert answer.json() == {"oidc": None, "token": True}


def test_a_hub_with_google_names_it(tmp_path: Path) -> None:
    with _oidc_app(tmp_path, GOOGLE_ISSUER) as http:
        assert http.get("/api/sign-in-methods").json() == {"oidc": {"name": "Google"}, "token": True}


def test_what_an_outsider_learns(tmp_path: Path) -> None:
    """Anonymous, signed or not, any query: the same short answer, naming no secret, ID or path."""
    issuer = "https://login.example.org/realms/lab"
    with _oidc_app(tmp_path, issuer) as http:
        anonymous = http.get("/api/sign-in-methods")
        assert anonymous.json() == {"oidc": {"name": "login.example.org"}, "token": True}
        keys = new_keys()
        signed = http.get("/api/sign-in-methods", headers=signed_headers(keys, "GET", "/api/sign-in-methods"))
        queried = http.get("/api/sign-in-methods", params={"include": "all", "debug": "1", "oidc": "full"})
        for other in (signed, queried):
            assert (other.status_code, other.content) == (200, anonymous.content)
        text = anonymous.text
        for private in (SECRET, "client-id-4711", "boss@example.org", "/realms/lab", str(tmp_path)):
            assert private not in text
        assert anonymous.headers.get("set-cookie") is None


def test_malformed_and_oversized_requests_are_refused_as_json(hub: Hub) -> None:
    control = hub.http.get("/api/sign-in-methods?x=%01")
    assert control.status_code == 400 and control.json()["error"]["code"]
    big = b"x" * (5 * 1024 * 1024)
    # An anonymous body is refused before it is read; a signed-looking one over the limit as it is read.
    anonymous = hub.http.request("GET", "/api/sign-in-methods", content=big, headers={"Content-Type": "application/json"})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthenticated"
    signed_looking = {"X-Kachery-Client": "0" * 64, "X-Kachery-Signature": "x", "Content-Type": "application/json"}
    too_big = hub.http.request("GET", "/api/sign-in-methods", content=big, headers=signed_looking)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"
    for method in ("POST", "PUT", "DELETE"):
        wrong = hub.http.request(method, "/api/sign-in-methods")
        assert wrong.status_code == 405 and "error" in wrong.json()
    # A body on GET is not read: the answer does not depend on it.
    body = json.dumps({"oidc": {"name": "x"}})
    with_body = hub.http.request("GET", "/api/sign-in-methods", content=body, headers=signed_looking)
    assert with_body.json() == {"oidc": None, "token": True}


def test_the_client_asks_without_signing_in(hub: Hub) -> None:
    hub.use("kernel")
    kc.use_hub(hub.url, http_client=hub.http)
    assert _signin.sign_in_methods() == {"oidc": None, "token": True}
    assert not (hub.dirs["kernel"] / "private.pem").exists(), "asking made no key"
    _hub._chosen_url.clear()


def test_a_hub_without_the_endpoint_is_taken_to_offer_a_browser_sign_in() -> None:
    """An older hub answers 404: None, and the panel offers both the browser page and the token field."""
    from fastapi import FastAPI

    with TestClient(FastAPI(), base_url="http://older-hub") as http:
        _hub._injected["http://older-hub"] = http
        try:
            assert _signin.sign_in_methods("http://older-hub") is None
        finally:
            _hub._injected.pop("http://older-hub", None)

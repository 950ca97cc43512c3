"""Sign-in without a terminal: a notebook asks, a browser confirms, the notebook notices."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hub_fixtures import *  # noqa: F403
from hub_fixtures import Hub
from starlette.testclient import TestClient

from kachery_hub._signin import CSRF_COOKIE

import kachery_core as kc


@pytest.fixture
def browser(hub: Hub) -> Iterator[TestClient]:
    """A second HTTP client with its own cookie jar, standing for the user's browser."""
    with TestClient(hub.http.app, raise_server_exceptions=False) as b:
        yield b


def _notebook(hub: Hub, name: str = "N") -> dict[str, object]:
    hub.use(name)
    kc.use_hub(hub.url, http_client=hub.http)
    request = kc.start_sign_in()
    assert kc.get_sign_in_status(str(request["id"])) == "pending"
    assert kc.get_client_info()["signed_in"] is False
    return request


def _path(request: dict[str, object]) -> str:
    return str(request["url"]).removeprefix("http://testserver")


def decide(browser: TestClient, request: dict[str, object], data: dict[str, str], **kwargs: object) -> Any:
    """Post the sign-in form as a browser does: with the CSRF value of its cookie."""
    csrf = browser.get(_path(request)).cookies.get(CSRF_COOKIE) or browser.cookies.get(CSRF_COOKIE)
    if csrf is None:  # a page that offers no form (an expired link) sets none; a browser may still post
        csrf = "csrf-of-this-browser"
        browser.cookies.set(CSRF_COOKIE, csrf, domain="testserver.local")
    return browser.post(_path(request), data={**data, "csrf": csrf}, **kwargs)  # type: ignore[arg-type]


def test_a_browser_session_confirms_a_notebook_sign_in(hub: Hub, browser: TestClient) -> None:
    request = _notebook(hub)
    assert str(request["url"]).startswith(hub.url + "/sign-in/")
    assert browser.get("/", params={"token": hub.token("ada@example.org")}).status_code == 200
    page = browser.get(_path(request))
    assert page.status_code == 200 and "ada@example.org" in page.text and "Confirm" in page.text
    done = decide(browser, request, {"action": "confirm"})
    assert done.status_code == 200 and "confirmed" in done.text
    assert kc.get_sign_in_status(str(request["id"])) == "confirmed"
    info = kc.get_client_info()
    assert info["signed_in"] is True and info["user"]["email"] == "ada@example.org"
    uri = kc.store_text("stored after a browser sign-in")
    assert kc.load_text(uri) == "stored after a browser sign-in"
    # The link is used up.
    again = decide(browser, request, {"action": "refuse"})
    assert "confirmed" in again.text and kc.get_sign_in_status(str(request["id"])) == "confirmed"


def test_a_token_typed_on_the_page_confirms_without_a_session(hub: Hub, browser: TestClient) -> None:
    request = _notebook(hub)
    page = browser.get(_path(request))
    assert 'name="token"' in page.text
    assert decide(browser, request, {"action": "confirm"}).status_code == 401
    bad = decide(browser, request, {"action": "confirm", "token": "khub_wrong"})
    assert bad.status_code == 401 and "not known" in bad.text
    ok = decide(browser, request, {"action": "confirm", "token": hub.token("bo@example.org")})
    assert ok.status_code == 200
    assert kc.get_sign_in_status(str(request["id"])) == "confirmed"
    assert kc.get_client_info()["user"]["email"] == "bo@example.org"
    assert "bo@example.org" in browser.get("/").text  # the browser now has a session too


def test_refusing_leaves_the_notebook_signed_out(hub: Hub, browser: TestClient) -> None:
    request = _notebook(hub)
    browser.get("/", params={"token": hub.token("ada@example.org")})
    assert "refused" in decide(browser, request, {"action": "refuse"}).text
    assert kc.get_sign_in_status(str(request["id"])) == "refused"
    assert kc.get_client_info()["signed_in"] is False


def test_an_expired_link_cannot_be_confirmed(hub: Hub, browser: TestClient) -> None:
    from kachery_hub._database import sign_in_requests
    from sqlalchemy import update

    request = _notebook(hub)
    with hub.state.db.begin() as conn:
        conn.execute(update(sign_in_requests).values(expires_at=0.0))
    assert kc.get_sign_in_status(str(request["id"])) == "expired"
    browser.get("/", params={"token": hub.token("ada@example.org")})
    assert "expired" in browser.get(_path(request)).text
    assert "expired" in decide(browser, request, {"action": "confirm"}).text
    assert kc.get_client_info()["signed_in"] is False


def test_only_the_asking_client_sees_its_request_and_forms_must_come_from_the_hub(
    hub: Hub, browser: TestClient
) -> None:
    request = _notebook(hub, "N")
    hub.use("other")
    kc.use_hub(hub.url, http_client=hub.http)
    with pytest.raises(kc.HubNotFoundError):
        kc.get_sign_in_status(str(request["id"]))
    browser.get("/", params={"token": hub.token("ada@example.org")})
    r = decide(browser, request, {"action": "confirm"}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "own pages only" in r.text
    assert browser.get("/sign-in/not-a-request").status_code == 404
    hub.use("N")
    assert kc.get_sign_in_status(str(request["id"])) == "pending"


def test_pages_escape_what_they_show(hub: Hub, browser: TestClient) -> None:
    request = _notebook(hub)
    browser.get("/", params={"token": hub.token("<i>x</i>@example.org")})
    page = browser.get(_path(request)).text
    assert "<i>x</i>" not in page and "&lt;i&gt;x&lt;/i&gt;@example.org" in page


def test_sign_out_unbinds_the_key_and_signing_in_again_works(hub: Hub) -> None:
    hub.sign_in("A", "a@example.org")
    client_id = kc.get_client_id()
    kc.sign_out()
    info = kc.get_client_info()
    assert info["signed_in"] is False and info["hub_url"] == hub.url and info["client_id"] == client_id
    with pytest.raises(kc.HubAuthError, match="not registered"):
        kc.store_text("refused after sign-out")
    kc.init(hub_url=hub.url, token=hub.token("a@example.org"), http_client=hub.http)
    assert kc.get_client_info()["signed_in"] is True and kc.get_client_id() == client_id


def test_sign_in_request_api_is_in_the_openapi_document(hub: Hub) -> None:
    paths = hub.http.get("/openapi.json").json()["paths"]
    assert "/api/sign-in-requests" in paths and "/api/sign-in-requests/{rid}" in paths
    assert not any(re.match(r"^/sign-in/", p) for p in paths)  # HTML pages are not API


def test_init_without_a_token_prints_a_link_and_finishes_by_itself(
    hub: Hub, browser: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    import threading

    hub.use("headless")
    kc.use_hub(hub.url, http_client=hub.http)
    result: dict[str, Any] = {}

    def run_init() -> None:
        try:
            result["info"] = kc.init(hub_url=hub.url, wait=True)
        except Exception as e:  # reported below
            result["error"] = e

    worker = threading.Thread(target=run_init)
    worker.start()
    printed = ""
    for _ in range(200):
        printed += capsys.readouterr().out
        if "/sign-in/" in printed:
            break
        time.sleep(0.05)
    link = re.search(r"http://testserver(/sign-in/\S+)", printed)
    assert link, printed
    browser.get("/", params={"token": hub.token("ada@example.org")})
    decide(browser, {"url": "http://testserver" + link.group(1)}, {"action": "confirm"})
    worker.join(timeout=30)
    printed += capsys.readouterr().out
    assert "error" not in result, result
    assert result["info"]["user"]["email"] == "ada@example.org"
    assert "Signed in as ada@example.org." in printed


def test_init_without_a_token_and_without_waiting_says_how_to_sign_in(hub: Hub) -> None:
    hub.use("impatient")
    kc.use_hub(hub.url, http_client=hub.http)
    with pytest.raises(kc.HubAuthError, match="is not registered with this hub"):
        kc.init(hub_url=hub.url, wait=False)
    # unattended (no terminal, no notebook kernel, as here under pytest): no waiting by default
    with pytest.raises(kc.HubAuthError, match="is not registered with this hub"):
        kc.init(hub_url=hub.url)

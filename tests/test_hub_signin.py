"""Sign-in without a terminal: a notebook asks, a browser confirms, the notebook notices."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hub_fixtures import *  # noqa: F403
from hub_fixtures import Hub
from starlette.testclient import TestClient

from e2e.signin import confirm_token_link, confirm_token_link_in_chromium
from hub_process import HubProcess, real_hub  # noqa: F401  (a fixture)
from kachery_hub._signin import CSRF_COOKIE, SESSION_COOKIE

import kachery_core as kc

if TYPE_CHECKING:
    from playwright.sync_api import Page


@pytest.fixture
def web(hub: Hub) -> Iterator[TestClient]:
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


def decide(web: TestClient, request: dict[str, object], data: dict[str, str], **kwargs: object) -> Any:
    """Post the sign-in form as a browser does: with the CSRF value of its cookie."""
    csrf = web.get(_path(request)).cookies.get(CSRF_COOKIE) or web.cookies.get(CSRF_COOKIE)
    if csrf is None:  # a page that offers no form (an expired link) sets none; a browser may still post
        csrf = "csrf-of-this-browser"
        web.cookies.set(CSRF_COOKIE, csrf, domain="testserver.local")
    return web.post(_path(request), data={**data, "csrf": csrf}, **kwargs)  # type: ignore[arg-type]


def test_a_browser_session_confirms_a_notebook_sign_in(hub: Hub, web: TestClient) -> None:
    request = _notebook(hub)
    assert str(request["url"]).startswith(hub.url + "/sign-in/")
    assert confirm_token_link(web, hub.token("ada@example.org")).status_code == 200
    page = web.get(_path(request))
    assert page.status_code == 200 and "ada@example.org" in page.text and "Confirm" in page.text
    done = decide(web, request, {"action": "confirm"})
    assert done.status_code == 200 and "confirmed" in done.text
    assert kc.get_sign_in_status(str(request["id"])) == "confirmed"
    info = kc.get_client_info()
    assert info["signed_in"] is True and info["user"]["email"] == "ada@example.org"
    uri = kc.store_text("stored after a browser sign-in")
    assert kc.load_text(uri) == "stored after a browser sign-in"
    # The link is used up.
    again = decide(web, request, {"action": "refuse"})
    assert "confirmed" in again.text and kc.get_sign_in_status(str(request["id"])) == "confirmed"


def test_a_token_typed_on_the_page_confirms_without_a_session(hub: Hub, web: TestClient) -> None:
    request = _notebook(hub)
    page = web.get(_path(request))
    assert 'name="token"' in page.text
    assert decide(web, request, {"action": "confirm"}).status_code == 401
    bad = decide(web, request, {"action": "confirm", "token": "khub_wrong"})
    assert bad.status_code == 401 and "not known" in bad.text
    ok = decide(web, request, {"action": "confirm", "token": hub.token("bo@example.org")})
    assert ok.status_code == 200
    assert kc.get_sign_in_status(str(request["id"])) == "confirmed"
    assert kc.get_client_info()["user"]["email"] == "bo@example.org"
    assert "bo@example.org" in web.get("/").text  # the browser now has a session too


def test_refusing_leaves_the_notebook_signed_out(hub: Hub, web: TestClient) -> None:
    request = _notebook(hub)
    confirm_token_link(web, hub.token("ada@example.org"))
    assert "refused" in decide(web, request, {"action": "refuse"}).text
    assert kc.get_sign_in_status(str(request["id"])) == "refused"
    assert kc.get_client_info()["signed_in"] is False


def test_an_expired_link_cannot_be_confirmed(hub: Hub, web: TestClient) -> None:
    from kachery_hub._database import sign_in_requests
    from sqlalchemy import update

    request = _notebook(hub)
    with hub.state.db.begin() as conn:
        conn.execute(update(sign_in_requests).values(expires_at=0.0))
    assert kc.get_sign_in_status(str(request["id"])) == "expired"
    confirm_token_link(web, hub.token("ada@example.org"))
    assert "expired" in web.get(_path(request)).text
    assert "expired" in decide(web, request, {"action": "confirm"}).text
    assert kc.get_client_info()["signed_in"] is False


def test_only_the_asking_client_sees_its_request_and_forms_must_come_from_the_hub(
    hub: Hub, web: TestClient
) -> None:
    request = _notebook(hub, "N")
    hub.use("other")
    kc.use_hub(hub.url, http_client=hub.http)
    with pytest.raises(kc.HubNotFoundError):
        kc.get_sign_in_status(str(request["id"]))
    confirm_token_link(web, hub.token("ada@example.org"))
    r = decide(web, request, {"action": "confirm"}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "own pages only" in r.text
    assert web.get("/sign-in/not-a-request").status_code == 404
    hub.use("N")
    assert kc.get_sign_in_status(str(request["id"])) == "pending"


def test_pages_escape_what_they_show(hub: Hub, web: TestClient) -> None:
    request = _notebook(hub)
    confirm_token_link(web, hub.token("<i>x</i>@example.org"))
    page = web.get(_path(request)).text
    assert "<i>x</i>" not in page and "&lt;i&gt;x&lt;/i&gt;@example.org" in page



def test_a_label_cannot_reorder_the_confirm_page(hub: Hub, web: TestClient) -> None:
    hub.use("N")
    kc.use_hub(hub.url, http_client=hub.http)
    spoof = "Alice\u2019s laptop \u202egnp.tsil-ytirucses"  # right-to-left override
    request = kc.start_sign_in(label=spoof)
    confirm_token_link(web, hub.token("ada@example.org"))
    page = web.get(_path(request)).text
    assert f"<bdi>{spoof}</bdi>" in page


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
    hub: Hub, web: TestClient, capsys: pytest.CaptureFixture[str]
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
    confirm_token_link(web, hub.token("ada@example.org"))
    decide(web, {"url": "http://testserver" + link.group(1)}, {"action": "confirm"})
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


def _csrf_of(page_text: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page_text)
    assert found, page_text
    return found.group(1)


def test_opening_a_token_link_asks_before_it_signs_the_browser_in(hub: Hub, web: TestClient) -> None:
    token = hub.token("ada@example.org")
    page = web.get("/", params={"token": token})
    assert page.status_code == 200 and "Sign in to this hub as <b>ada@example.org</b>?" in page.text
    assert SESSION_COOKIE not in web.cookies and "signed in as" not in web.get("/").text
    # The form posts to "/" (the token travels in the body, not in another URL), and no page
    # sends its address (with the token) to the sites it links to.
    form = re.search(r'<form method="post" action="([^"]*)">(.*?)</form>', page.text, re.S)
    assert form and form.group(1) == "/" and f'name="token" value="{token}"' in form.group(2)
    assert page.headers["referrer-policy"] == "strict-origin"
    # Another site cannot post the form for this browser: it knows neither its CSRF value nor its origin.
    assert web.post("/", data={"token": token, "action": "confirm"}).status_code == 403
    evil = web.post("/", data={"token": token, "action": "confirm", "csrf": _csrf_of(page.text)},
                        headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403 and SESSION_COOKIE not in web.cookies
    assert "signed in as" not in web.get("/").text
    # The person presses "Sign in": a redirect to a URL without the token, and a session.
    done = web.post("/", data={"token": token, "action": "confirm", "csrf": _csrf_of(page.text)},
                        follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/"
    assert "This browser is signed in as <b>ada@example.org</b>" in web.get("/").text


def test_a_token_link_for_someone_else_says_who_is_signed_in_now(hub: Hub, web: TestClient) -> None:
    confirm_token_link(web, hub.token("admin@example.org", admin=True))
    page = web.get("/", params={"token": hub.token("bo@example.org")})
    assert "signed in as <b>admin@example.org</b>" in page.text and "as <b>bo@example.org</b>?" in page.text
    assert "admin@example.org" in web.get("/").text  # nothing changed until confirmed
    web.post("/", data={"token": hub.token("bo@example.org"), "action": "confirm", "csrf": _csrf_of(page.text)})
    assert "signed in as <b>bo@example.org</b>" in web.get("/").text


def test_not_you_signs_the_browser_out_and_comes_back_to_the_same_request(hub: Hub, web: TestClient) -> None:
    request = _notebook(hub)
    link = _path(request)
    confirm_token_link(web, hub.token("admin@example.org", admin=True))
    page = web.get(link)
    assert "asks to act as <b>admin@example.org</b>" in page.text
    assert 'action="/sign-out"' in page.text and "Not admin@example.org?" in page.text
    assert web.post("/sign-out", data={"next": link}).status_code == 403  # CSRF-protected too
    out = web.post("/sign-out", data={"next": link, "csrf": _csrf_of(page.text)}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == link + "?with=token"
    again = web.get(out.headers["location"])
    assert "act as" not in again.text and 'name="token"' in again.text
    assert "signed in as" not in web.get("/").text
    ok = decide(web, request, {"action": "confirm", "token": hub.token("bo@example.org")})
    assert ok.status_code == 200 and kc.get_sign_in_status(str(request["id"])) == "confirmed"
    assert kc.get_client_info()["user"]["email"] == "bo@example.org"


def test_signing_out_ends_the_session_on_the_hub_and_returns_only_to_its_own_pages(
    hub: Hub, web: TestClient
) -> None:
    confirm_token_link(web, hub.token("ada@example.org"))
    session = web.cookies[SESSION_COOKIE]
    page = web.get("/")
    assert 'action="/sign-out"' in page.text
    for target, expected in (("https://evil.example/", "/"), ("//evil.example", "/"), ("/sign-in/x", "/sign-in/x?with=token")):
        web.cookies.set(SESSION_COOKIE, session, domain="testserver.local")
        r = web.post("/sign-out", data={"next": target, "csrf": _csrf_of(page.text)}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == expected
    # the old cookie, kept by someone, is no longer a session
    web.cookies.set(SESSION_COOKIE, session, domain="testserver.local")
    assert "signed in as" not in web.get("/").text


def test_sign_in_forms_refuse_oversized_and_malformed_bodies(hub: Hub, web: TestClient) -> None:
    request = _notebook(hub)
    page = web.get("/", params={"token": hub.token("ada@example.org")})
    csrf = _csrf_of(page.text)
    for path in ("/", _path(request), "/sign-out"):
        big = web.post(path, content=b"csrf=" + b"x" * 100_000,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert big.status_code == 413, (path, big.status_code)
        bad = web.post(path, content=b"csrf=" + csrf.encode() + b"&token=\xff\xfe&action=confirm",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert bad.status_code == 400, (path, bad.status_code)
    nul = web.post("/", data={"csrf": csrf, "token": "khub_\x00", "action": "confirm"})
    assert nul.status_code == 401 and SESSION_COOKIE not in web.cookies
    assert web.get("/", params={"token": "x" * 10_000}).status_code == 401
    assert kc.get_sign_in_status(str(request["id"])) == "pending"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_in_chromium_the_printed_link_asks_first_and_not_you_lets_another_user_sign_in(
    page: Page, real_hub: HubProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import expect

    body = page.locator("body")
    confirm_token_link_in_chromium(page, real_hub.url, real_hub.admin_token)  # the link `serve` printed
    expect(body).to_contain_text("This browser is signed in as admin@localhost")
    assert page.url == real_hub.url + "/"  # the token is not left in the address bar
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "notebook"))
    kc.use_hub(real_hub.url)
    request = kc.start_sign_in(label="Jupyter on lab-pc")
    page.goto(str(request["url"]))
    expect(body).to_contain_text("asks to act as admin@localhost")
    page.get_by_role("button", name="Use another token or account").click()
    page.locator("input[name=token]").fill(real_hub.token("grace@example.org"))
    page.get_by_role("button", name="Confirm").click()
    expect(body).to_contain_text("This sign-in was confirmed")
    assert kc.get_sign_in_status(str(request["id"])) == "confirmed"
    assert kc.get_client_info()["user"]["email"] == "grace@example.org"


def test_the_access_log_keeps_sign_in_tokens_out(tmp_path: Path) -> None:
    import httpx2

    from hub_process import free_port

    hub = HubProcess(tmp_path / "hub-data", free_port(), "--log-level", "info")
    hub.start()
    rid = "a-sign-in-request-id-kept-secret"
    try:
        r = httpx2.get(f"{hub.url}/", params={"token": hub.admin_token, "x": "1"})
        assert r.status_code == 200 and "Sign in to this hub as" in r.text
        # The page reads ?%74oken= as ?token=, and a sign-in request's id is a one-time capability.
        r = httpx2.get(f"{hub.url}/?x=2&%74oken={hub.admin_token}")
        assert r.status_code == 200 and "Sign in to this hub as" in r.text
        httpx2.get(f"{hub.url}/sign-in/{rid}?x=3")
        httpx2.post(f"{hub.url}/sign-in/{rid}")
        httpx2.get(f"{hub.url}/api/sign-in-requests/{rid}")
    finally:
        hub.stop()  # everything it printed is then in hub.log
        log = "".join(hub.log)
    access = [line for line in log.splitlines() if ('"GET /' in line or '"POST /' in line) and "/api/health" not in line]
    assert len(access) == 5, log
    assert "GET /?token=(hidden)&x=1" in access[0], log
    assert "GET /?x=2&%74oken=(hidden) " in access[1], log
    assert "GET /sign-in/(hidden)?x=3" in access[2] and "POST /sign-in/(hidden)" in access[3], log
    assert "GET /api/sign-in-requests/(hidden)" in access[4], log
    assert not [line for line in access if hub.admin_token in line or rid in line], log


def test_sign_in_forms_are_accepted_from_the_public_url_behind_a_proxy(tmp_path: Path) -> None:
    """serve --public-url https://... behind a TLS proxy it does not trust: the browser's Origin is the public URL."""
    from kachery_hub import Settings, create_app
    from kachery_hub._accounts import create_token

    app = create_app(Settings(data_dir=tmp_path / "hub", public_urls=("https://lab.example.org", "http://127.0.0.1:8555")))
    try:
        with TestClient(app, raise_server_exceptions=False) as browser:
            token = create_token(app.state.hub.db, "ada@example.org")
            page = browser.get("/", params={"token": token})
            form = {"token": token, "action": "confirm", "csrf": _csrf_of(page.text)}
            evil = browser.post("/", data=form, headers={"Origin": "https://evil.example.org"})
            assert evil.status_code == 403 and SESSION_COOKIE not in browser.cookies
            done = browser.post("/", data=form, headers={"Origin": "https://lab.example.org"}, follow_redirects=False)
            assert done.status_code == 303, done.text
            assert "This browser is signed in as <b>ada@example.org</b>" in browser.get("/").text
    finally:
        app.state.hub.close()

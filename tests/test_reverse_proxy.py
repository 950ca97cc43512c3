"""The hub behind nginx terminating TLS under a path prefix: ``https://localhost:<port>/kachery/``.

One real ``kachery-hub serve`` process whose public URL is nginx's, trusting 127.0.0.1 as
its proxy; nginx (Debian's) in front with a certificate made for the test and the location
block docs/deploy.md shows (:mod:`nginx_fixtures`); the local OpenID provider (npm
``oidc-provider``) for the browser flow. Clients trust the test CA through ``SSL_CERT_FILE``.

Shown through nginx: a kachery_core client signs in with a token, stores and loads a file,
sets and gets a mutable, follows a feed (an event stream through nginx) and sends on a
WebSocket session; a replayed signed request is refused. The browser pages: every link and
form under the prefix, Secure cookies with the prefix as their path, redirects under it
(an open ``next`` refused), and sign-in through the OpenID provider with the callback URL
under the prefix. Hostile: forwarded headers sent to the hub directly by an untrusted
address change nothing.
"""

from __future__ import annotations

import hashlib
import html
import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest

pytest.importorskip("fastapi")

import httpx2  # noqa: E402

import kachery_core as kc  # noqa: E402
from e2e.servers import OIDC_DIR, OidcProvider, provider_form, start_oidc_provider  # noqa: E402
from feed_worker import Worker as FeedWorker  # noqa: E402
from hub_fixtures import signed_headers  # noqa: E402
from hub_process import HubProcess, forget_hubs, free_port, running  # noqa: E402
from kachery_core import _hub, _session  # noqa: E402
from kachery_hub._signin import CSRF_COOKIE, LOGIN_COOKIE, SESSION_COOKIE  # noqa: E402
from nginx_fixtures import PREFIX, Nginx, nginx_path, run_nginx  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ALICE, BOB, CAROL = "alice@example.org", "bob@example.org", "carol@example.org"


@dataclass
class Site:
    hub: HubProcess
    nginx: Nginx
    oidc: OidcProvider | None

    @property
    def origin(self) -> str:
        return f"https://localhost:{self.nginx.port}"

    def browser(self) -> httpx2.Client:
        """A browser at nginx: it keeps cookies, trusts the test CA and sends its Origin with forms."""
        return httpx2.Client(base_url=self.origin, verify=self.nginx.ssl_context(), headers={"Origin": self.origin},
                             timeout=30)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    nginx_path()  # skips when there is no nginx
    root = tmp_path_factory.mktemp("proxy")
    nginx_port, hub_port = free_port(), free_port()
    public = f"https://localhost:{nginx_port}{PREFIX}"
    env = {"KACHERY_HUB_TRUSTED_PROXIES": "127.0.0.1"}
    with ExitStack() as stack:
        provider = None
        if shutil.which("node") and (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
            provider = stack.enter_context(start_oidc_provider(root / "oidc", [public + "/auth/callback"]))
            env.update(KACHERY_HUB_OIDC_ISSUER=provider.issuer, KACHERY_HUB_OIDC_CLIENT_ID=provider.client.client_id,
                       KACHERY_HUB_OIDC_CLIENT_SECRET=provider.client.client_secret)
        hub = stack.enter_context(running(HubProcess(root / "hub", hub_port, public_url=public), env=env))
        nginx = stack.enter_context(run_nginx(root / "nginx", nginx_port, f"127.0.0.1:{hub_port}"))
        yield Site(hub, nginx, provider)


@pytest.fixture
def trusting(site: Site, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """This process and the workers it starts trust the test CA; the hubs it used are forgotten after."""
    monkeypatch.setenv("SSL_CERT_FILE", str(site.nginx.ca))
    forget_hubs()
    yield site
    _session.close_sessions()
    forget_hubs()


def _be(monkeypatch: pytest.MonkeyPatch, root: Path, name: str) -> None:
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(root / name))


_URL_ATTRIBUTE = re.compile(r'\b(?:href|action|src)="([^"]*)"')


def _page_urls(page: str) -> list[str]:
    return [html.unescape(u) for u in _URL_ATTRIBUTE.findall(page)]


def _assert_all_under_prefix(site: Site, page: str) -> None:
    urls = _page_urls(page)
    assert urls, page[:2000]
    outside = [u for u in urls if not (u.startswith(PREFIX + "/") or u.startswith(site.nginx.url + "/"))]
    assert not outside, f"links and forms outside {PREFIX}/: {outside}"


def _csrf(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, page[:2000]
    return html.unescape(m.group(1))


def _cookie_line(response: httpx2.Response, name: str) -> str:
    lines = [v for v in response.headers.get_list("set-cookie") if v.startswith(name + "=")]
    assert lines, f"no {name} cookie set: {response.headers.get_list('set-cookie')}"
    return lines[-1]


def _attributes(cookie: str) -> dict[str, str]:
    parts = [p.strip() for p in cookie.split(";")[1:]]
    return {p.split("=", 1)[0].lower(): (p.split("=", 1)[1] if "=" in p else "") for p in parts}


def _got(n: int, events: list[dict[str, Any]]) -> bool:
    return any(e["event"] == "msg" and e["n"] == n for e in events)


def _assert_prefixed_secure(cookie: str) -> None:
    attributes = _attributes(cookie)
    assert "secure" in attributes and attributes.get("path") == PREFIX and "httponly" in attributes, cookie


# ---------------------------------------------------------------- a client through nginx


def test_a_client_stores_loads_shares_follows_and_uses_a_session_through_nginx(
        trusting: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = trusting
    url = site.nginx.url
    _be(monkeypatch, tmp_path, "bob")
    bob_token = site.hub.token(BOB)
    kc.init(hub_url=url, token=bob_token)
    _be(monkeypatch, tmp_path, "alice")
    info = kc.init(hub_url=url, token=site.hub.token(ALICE))
    project = str(info["default_project_id"])
    kc.set_project_member(project, BOB, "write")

    data = hashlib.sha256(b"through nginx").digest() * 4000
    src = tmp_path / "data.bin"
    src.write_bytes(data)
    uri = kc.store_file(str(src), label="data.bin")
    kc.set_mutable("proxied/result", uri, project_id=project)

    # A WebSocket session through nginx: feed appends go on it.
    _session.close_sessions()
    feed = kc.create_feed(label="behind nginx")
    follower = FeedWorker(tmp_path, "bob-follows", "follow", "--hub", url, "--token", bob_token,
                          "--feed", feed.uri, "--total", "5")
    try:
        follower.wait_event("ready")
        for i in range(5):
            assert feed.append_message({"i": i}) == i
            follower.wait_for(partial(_got, i), 60, f"message {i}")  # live, through nginx's unbuffered event stream
        follower.wait_event("done")
        assert [(e["n"], e["m"]) for e in follower.of("msg")] == [(i, {"i": i}) for i in range(5)]
    finally:
        follower.kill()
    sessions = [s for (u, _), s in _session._sessions.items() if u == url]
    assert len(sessions) == 1 and sessions[0].alive, "the feed's appends did not go on a session through nginx"

    _be(monkeypatch, tmp_path, "bob")
    assert kc.get_mutable("proxied/result", project_id=project) == uri
    assert Path(kc.load_file(uri)).read_bytes() == data
    kc.set_mutable("proxied/result", "changed by bob", project_id=project)
    _be(monkeypatch, tmp_path, "alice")
    assert kc.get_mutable("proxied/result", project_id=project) == "changed by bob"


def test_a_signed_request_replayed_through_nginx_or_to_the_hub_is_refused(
        trusting: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = trusting
    kc.init(hub_url=site.nginx.url, token=site.hub.token(ALICE))
    keys = _hub._client_keys()[0]
    # As the client signs it: the host and path it sees, the prefix included.
    headers = signed_headers(keys, "GET", PREFIX + "/api/me", host=f"localhost:{site.nginx.port}")
    with site.browser() as http:
        first = http.get(PREFIX + "/api/me", headers=headers)
        assert first.status_code == 200 and first.json()["user"]["email"] == ALICE, first.text
        again = http.get(PREFIX + "/api/me", headers=headers)
        assert again.status_code == 401 and again.json()["error"]["code"] == "replayed_request", again.text
    direct = httpx2.get(site.hub.url + "/api/me", headers=headers)
    assert direct.status_code == 401 and direct.json()["error"]["code"] == "replayed_request", direct.text


# ---------------------------------------------------------------- the browser pages


def test_the_sign_in_pages_links_forms_cookies_and_redirects_stay_under_the_prefix(
        trusting: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = trusting
    token = site.hub.token(CAROL)
    kc.init(hub_url=site.nginx.url, token=token)  # a computer and a project of carol's for the home page
    with site.browser() as browser:
        page = browser.get(PREFIX + "/", params={"token": token})
        assert page.status_code == 200 and CAROL in page.text, page.text
        _assert_all_under_prefix(site, page.text)
        assert f'action="{PREFIX}/"' in page.text
        _assert_prefixed_secure(_cookie_line(page, CSRF_COOKIE))

        signed_in = browser.post(PREFIX + "/", data={"csrf": _csrf(page.text), "token": token, "action": "confirm"})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == PREFIX + "/", signed_in.text
        _assert_prefixed_secure(_cookie_line(signed_in, SESSION_COOKIE))

        home = browser.get(PREFIX + "/")
        assert f"signed in as <b>{CAROL}</b>" in home.text, home.text
        _assert_all_under_prefix(site, home.text)
        for action in ("/sign-out", "/computers/sign-out"):
            assert f'action="{PREFIX}{action}"' in home.text, action
        assert f"{site.nginx.url}/docs" in home.text  # the instructions name the hub's URL as clients use it
        project_link = re.search(rf'href="({PREFIX}/projects/[^"]+)"', home.text)
        assert project_link, home.text
        project = browser.get(html.unescape(project_link.group(1)))
        assert project.status_code == 200, project.text
        _assert_all_under_prefix(site, project.text)

        docs = browser.get(PREFIX + "/docs")
        assert docs.status_code == 200 and f"'{PREFIX}/openapi.json'" in docs.text, docs.text[:3000]
        assert browser.get(PREFIX + "/openapi.json").status_code == 200
        stylesheet = re.search(r'rel="stylesheet" href="([^"]+)"', home.text)
        assert stylesheet and browser.get(html.unescape(stylesheet.group(1))).status_code == 200

        out = browser.post(PREFIX + "/sign-out", data={"csrf": _csrf(home.text), "next": "/"})
        assert out.status_code == 303 and out.headers["location"] == PREFIX + "/", out.text
        gone = _attributes(_cookie_line(out, SESSION_COOKIE))
        assert gone.get("path") == PREFIX and gone.get("max-age") == "0", gone
        assert "This browser is not signed in" in browser.get(PREFIX + "/").text


@pytest.mark.parametrize("next_path", [
    "//evil.example/x", "https://evil.example/", "/\\evil.example", "/%2e%2e/elsewhere", "/%2E%2E/elsewhere",
    "/..%2Felsewhere", "/./../elsewhere", "/sign-in/../../elsewhere", "/.%2e/elsewhere",
])
def test_a_next_place_outside_the_prefix_is_refused(trusting: Site, next_path: str) -> None:
    site = trusting
    with site.browser() as browser:
        page = browser.get(PREFIX + "/")
        out = browser.post(PREFIX + "/sign-out", data={"csrf": _csrf(page.text), "next": next_path})
        assert out.status_code == 303 and out.headers["location"] == PREFIX + "/", (next_path, out.headers)


def test_a_sign_out_back_to_a_sign_in_page_stays_under_the_prefix(trusting: Site) -> None:
    site = trusting
    with site.browser() as browser:
        page = browser.get(PREFIX + "/")
        out = browser.post(PREFIX + "/sign-out", data={"csrf": _csrf(page.text), "next": "/sign-in/abc"})
        assert out.status_code == 303 and out.headers["location"] == PREFIX + "/sign-in/abc?with=token", out.headers


# ---------------------------------------------------------------- OpenID Connect through nginx


def _at_the_provider(browser: httpx2.Client, response: httpx2.Response, provider: OidcProvider,
                     email: str) -> httpx2.Response:
    """Log in and consent at the provider's forms, as a person would; the response the browser ends on."""
    for _ in range(4):
        if not str(response.url).startswith(provider.issuer + "/"):
            return response
        action, fields = provider_form(response.text, email)
        response = browser.post(urljoin(str(response.url), action), data=fields,
                                headers={"Origin": provider.issuer}, follow_redirects=True)
    raise AssertionError(f"still at the provider: {response.url}\n{response.text[:2000]}")


def test_a_notebook_signs_in_through_the_provider_and_nginx_under_the_prefix(
        trusting: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = trusting
    if site.oidc is None:
        pytest.skip(f"the OpenID provider is not installed (node and `npm ci` in {OIDC_DIR})")
    provider = site.oidc
    kc.use_hub(site.nginx.url)
    request = kc.start_sign_in(label="notebook behind nginx")
    link = str(request["url"])
    rid = str(request["id"])
    assert link == f"{site.nginx.url}/sign-in/{rid}", link
    callback = f"{site.nginx.url}/auth/callback"
    with site.browser() as browser:
        to_login = browser.get(link)
        assert to_login.status_code == 303, to_login.text
        assert to_login.headers["location"] == f"{PREFIX}/auth/login?next=/sign-in/{rid}"
        to_provider = browser.get(to_login.headers["location"])
        assert to_provider.status_code == 303, to_provider.text
        authorize = to_provider.headers["location"]
        assert authorize.startswith(provider.issuer + "/")
        assert parse_qs(urlsplit(authorize).query)["redirect_uri"] == [callback]
        _assert_prefixed_secure(_cookie_line(to_provider, LOGIN_COOKIE))

        landed = _at_the_provider(browser, browser.get(authorize, follow_redirects=True), provider, ALICE)
        assert str(landed.url) == link, (landed.url, landed.text[:2000])
        (back,) = [r for r in landed.history if str(r.url).startswith(callback + "?")]
        assert back.status_code == 303 and back.headers["location"] == f"{PREFIX}/sign-in/{rid}", back.text
        _assert_prefixed_secure(_cookie_line(back, SESSION_COOKIE))
        assert f"asks to act as <b>{ALICE}</b>" in landed.text, landed.text
        _assert_all_under_prefix(site, landed.text)
        done = browser.post(f"{PREFIX}/sign-in/{rid}", data={"action": "confirm", "csrf": _csrf(landed.text)})
        assert done.status_code == 200 and "confirmed" in done.text, done.text
    assert kc.get_sign_in_status(rid) == "confirmed"
    assert kc.get_client_info()["user"]["email"] == ALICE


# ---------------------------------------------------------------- hostile: forwarded headers from elsewhere

FORGED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Host": "evil.example",
          "X-Forwarded-Prefix": "/evil", "Forwarded": "proto=https;host=evil.example"}


def _direct(source: str) -> httpx2.Client:
    """A browser talking to the hub itself (not through nginx) from loopback address ``source``."""
    return httpx2.Client(transport=httpx2.HTTPTransport(local_address=source), timeout=30)


def test_forwarded_headers_from_an_untrusted_address_make_no_cookie_secure_and_move_no_url(trusting: Site) -> None:
    site = trusting
    token = site.hub.token(CAROL)
    hub = site.hub.url
    with _direct("127.0.0.2") as browser:  # not the trusted proxy (127.0.0.1)
        page = browser.get(hub + "/", params={"token": token}, headers=FORGED)
        assert page.status_code == 200, page.text
        csrf = _attributes(_cookie_line(page, CSRF_COOKIE))
        assert "secure" not in csrf and csrf.get("path") == "/", csrf
        assert "evil" not in page.text and "https://" not in page.text
        signed_in = browser.post(hub + "/", headers=FORGED,
                                 data={"csrf": _csrf(page.text), "token": token, "action": "confirm"})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/", signed_in.text
        assert "secure" not in _attributes(_cookie_line(signed_in, SESSION_COOKIE))
        if site.oidc is not None:
            login = browser.get(hub + "/auth/login", headers=FORGED)
            assert login.status_code == 303, login.text
            redirect_uri = parse_qs(urlsplit(login.headers["location"]).query)["redirect_uri"]
            assert redirect_uri == [f"{hub}/auth/callback"]
            assert "secure" not in _attributes(_cookie_line(login, LOGIN_COOKIE))
    with _direct("127.0.0.1") as proxy:  # the trusted proxy's address: its X-Forwarded-Proto counts
        page = proxy.get(hub + "/", params={"token": token}, headers={"X-Forwarded-Proto": "https"})
        assert "secure" in _attributes(_cookie_line(page, CSRF_COOKIE))

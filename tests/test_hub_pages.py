"""The hub's own pages: one stylesheet, labelled fields, the signed-in home, project pages, offline /docs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hub_fixtures import Hub, make_hub
from hub_fixtures import postgres_server  # noqa: F401  (a fixture)
from starlette.testclient import TestClient

from e2e.signin import confirm_token_link
from kachery_hub import Settings, create_app
from kachery_hub._accounts import list_clients
from kachery_hub._signin import CSRF_COOKIE

import kachery_core as kc

HOSTILE_EMAIL = "<img/src=x/onerror=alert(1)>@example.org"
HOSTILE_NAME = "<script>alert('p')</script> & co"


@pytest.fixture(params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """The pages read users, projects and computers from the metadata database: both kinds."""
    yield from make_hub(request.param, request, tmp_path, monkeypatch)


@pytest.fixture
def web(hub: Hub) -> Iterator[TestClient]:
    """A second HTTP client with its own cookie jar, standing for the user's browser."""
    with TestClient(hub.http.app, raise_server_exceptions=False) as b:
        yield b


class _Tags(HTMLParser):
    """Every start tag of a page with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def _tags(text: str) -> list[tuple[str, dict[str, str]]]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


def _csrf_of(text: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', text)
    assert found, text
    return found.group(1)


def _check_page(text: str) -> None:
    """The layout every page shares: the hub's stylesheet, no inline style, a label for every field."""
    tags = _tags(text)
    sheets = [a["href"] for t, a in tags if t == "link" and a.get("rel") == "stylesheet"]
    assert len(sheets) == 1 and sheets[0].startswith("/static/hub.css"), sheets
    assert not [a for _, a in tags if "style" in a] and "<style" not in text, "inline styles: the CSP allows none"
    labelled = {a.get("for") for t, a in tags if t == "label"}
    for tag, attrs in tags:
        if tag in ("input", "select", "textarea") and attrs.get("type") != "hidden":
            assert attrs.get("id") and attrs["id"] in labelled, (tag, attrs)


def _notebook_request(hub: Hub, name: str = "N") -> str:
    hub.use(name)
    kc.use_hub(hub.url, http_client=hub.http)
    return str(kc.start_sign_in(label="ada's laptop")["url"]).removeprefix("http://testserver")


def test_every_page_shares_the_stylesheet_and_labels_its_fields(hub: Hub, web: TestClient) -> None:
    token = hub.token("ada@example.org")
    sign_in = _notebook_request(hub)
    pages = {
        "home, signed out": web.get("/"),
        "confirm a token link": web.get("/", params={"token": token}),
        "a bad token link": web.get("/", params={"token": "khub_wrong"}),
        "sign-in request, signed out": web.get(sign_in + "?with=token"),
        "an unknown sign-in link": web.get("/sign-in/not-a-request"),
        "a form without its CSRF value": web.post("/", data={"token": token, "action": "confirm"}),
        "a project page, signed out": web.get("/projects/p-none"),
    }
    confirm_token_link(web, token)
    pages["home, signed in"] = web.get("/")
    pages["sign-in request, signed in"] = web.get(sign_in)
    pages["an unknown project"] = web.get("/projects/p-none")
    for what, page in pages.items():
        assert page.headers["content-type"].startswith("text/html"), what
        _check_page(page.text)
        csp = page.headers["content-security-policy"]
        assert "style-src 'self'" in csp and "unsafe-inline" not in csp, (what, csp)
    assert [p.status_code for p in pages.values()] == [200, 200, 401, 200, 404, 403, 401, 200, 200, 404]
    # The signed-out home offers a labelled token field posting to "/", with this browser's CSRF value.
    home = pages["home, signed out"].text
    assert '<label for="token">' in home and 'form method="post" action="/"' in home
    assert 'id="token" name="token" type="password"' in pages["sign-in request, signed out"].text


def test_the_stylesheet_is_served_by_the_hub_follows_the_system_theme_and_is_cached(hub: Hub, web: TestClient) -> None:
    href = next(a["href"] for t, a in _tags(web.get("/").text) if t == "link" and a.get("rel") == "stylesheet")
    css = web.get(href)
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "@media (prefers-color-scheme: dark)" in css.text and "color-scheme: light dark" in css.text
    assert "http://" not in css.text and "https://" not in css.text and "@import" not in css.text
    assert "max-age=" in css.headers["cache-control"] and "no-store" not in css.headers["cache-control"]
    again = web.get(href, headers={"If-None-Match": css.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    # The link names the content, so a changed stylesheet is a new URL, never a stale cached one.
    assert re.fullmatch(r"/static/hub\.css\?v=[0-9a-f]{12}", href)
    assert web.get("/static/nothing.css").status_code == 404


def test_signed_in_home_shows_the_user_projects_computers_and_how_to_connect(hub: Hub, web: TestClient) -> None:
    hub.sign_in("laptop", "ada@example.org")
    laptop = kc.get_client_id()
    shared = kc.create_project("shared analysis")
    hub.sign_in("bo-pc", "bo@example.org")
    bo_project = kc.create_project("bo's own")
    confirm_token_link(web, hub.token("ada@example.org"))
    page = web.get("/")
    assert "This browser is signed in as <b>ada@example.org</b>" in page.text
    assert f'<a href="/projects/{shared}">shared analysis</a>' in page.text and "default" in page.text
    assert bo_project not in page.text and "bo@example.org" not in page.text
    assert laptop[:16] in page.text and "bo-pc" not in page.text
    forms = re.findall(r'<form [^>]*action="/computers/sign-out">(.*?)</form>', page.text, re.S)
    assert len(forms) == 1 and f'name="client_id" value="{laptop}"' in forms[0]
    for line in ("%load_ext kachery_jupyter", f"%kc_login --hub {hub.url}", f'kc.init(hub_url="{hub.url}")'):
        assert line in page.text, line


def test_project_pages_list_members_and_files_escaped(hub: Hub, web: TestClient) -> None:
    hub.sign_in("laptop", HOSTILE_EMAIL)
    project = kc.create_project(HOSTILE_NAME)
    kc.set_project_member(project, "bo@example.org", "read")
    uri = kc.store_text("hello", label="<b>notes</b>.txt", project_id=project)
    confirm_token_link(web, hub.token(HOSTILE_EMAIL))
    home = web.get("/").text
    page = web.get(f"/projects/{project}")
    assert page.status_code == 200
    for text in (home, page.text):
        assert "<script>alert" not in text and "<img" not in text
        assert "&lt;script&gt;alert(&#x27;p&#x27;)&lt;/script&gt; &amp; co" in text
        assert "&lt;img/src=x/onerror=alert(1)&gt;@example.org" in text
    assert "<b>notes</b>" not in page.text and "&lt;b&gt;notes&lt;/b&gt;.txt" in page.text
    assert uri.split("?")[0] in page.text and "bo@example.org" in page.text and "read" in page.text
    assert "1 file" in page.text and "<form" not in page.text.split("</header>", 1)[1]  # read-only
    # Someone else's browser: a member sees it, a stranger is refused, a signed-out browser is asked to sign in.
    with TestClient(hub.http.app, raise_server_exceptions=False) as other:
        assert other.get(f"/projects/{project}").status_code == 401
        confirm_token_link(other, hub.token("bo@example.org"))
        assert "&lt;b&gt;notes&lt;/b&gt;.txt" in other.get(f"/projects/{project}").text
    with TestClient(hub.http.app, raise_server_exceptions=False) as stranger:
        confirm_token_link(stranger, hub.token("eve@example.org"))
        refused = stranger.get(f"/projects/{project}")
        assert refused.status_code == 403 and "notes" not in refused.text


def test_project_pages_show_the_first_page_of_files_and_link_the_next(hub: Hub, web: TestClient) -> None:
    from kachery_hub import _pages

    hub.sign_in("laptop", "ada@example.org")
    project = kc.create_project("many")
    uris = sorted(kc.store_text(f"file {i}", label=f"f{i}.txt", project_id=project) for i in range(_pages.FILES_PER_PAGE + 2))
    confirm_token_link(web, hub.token("ada@example.org"))
    first = web.get(f"/projects/{project}").text
    shown = [u for u in uris if u.split("?")[0] in first]
    assert len(shown) == _pages.FILES_PER_PAGE and f"{len(uris)} files" in first
    nxt = re.search(r'<a href="(/projects/[^"]+\?after=[0-9a-f]{40})"', first)
    assert nxt, first
    rest = web.get(nxt.group(1).replace("&amp;", "&")).text
    assert [u for u in uris if u.split("?")[0] in rest] == [u for u in uris if u not in shown]
    assert web.get(f"/projects/{project}?after=not-a-sha1").status_code == 400


def test_signing_out_a_computer_needs_the_csrf_token_and_its_owner(hub: Hub, web: TestClient) -> None:
    hub.sign_in("laptop", "ada@example.org")
    laptop = kc.get_client_id()
    confirm_token_link(web, hub.token("ada@example.org"))
    page = web.get("/").text
    csrf = _csrf_of(page)
    # Another site knows neither this browser's CSRF value nor its origin; another user's browser is not the owner.
    assert web.post("/computers/sign-out", data={"client_id": laptop}).status_code == 403
    assert web.post("/computers/sign-out", data={"client_id": laptop, "csrf": "guessed"}).status_code == 403
    evil = web.post("/computers/sign-out", data={"client_id": laptop, "csrf": csrf},
                    headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    with TestClient(hub.http.app, raise_server_exceptions=False) as bo:
        confirm_token_link(bo, hub.token("bo@example.org"))
        not_yours = bo.post("/computers/sign-out", data={"client_id": laptop, "csrf": _csrf_of(bo.get("/").text)})
        assert not_yours.status_code == 404
    with TestClient(hub.http.app, raise_server_exceptions=False) as anonymous:
        anonymous.get("/")
        no_session = anonymous.post("/computers/sign-out",
                                    data={"client_id": laptop, "csrf": anonymous.cookies[CSRF_COOKIE]})
        assert no_session.status_code == 401
    assert [c["client_id"] for c in list_clients(hub.state.db)] == [laptop]
    done = web.post("/computers/sign-out", data={"client_id": laptop, "csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/"
    assert list_clients(hub.state.db) == []  # its key is refused from now on (until it signs in again)
    assert laptop[:16] not in web.get("/").text and "This browser is signed in as" in web.get("/").text


@pytest.fixture
def docs_hub(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(data_dir=tmp_path / "hub")), raise_server_exceptions=False) as http:
        yield http


def test_docs_work_offline(docs_hub: TestClient) -> None:
    page = docs_hub.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    others = [u for u in re.findall(r"https?://[^\s\"'<>)]+", page.text) if urlsplit(u).hostname != "testserver"]
    assert not others, others
    assets = [a.get("src") or a.get("href") for t, a in _tags(page.text) if t in ("script", "link") and (a.get("src") or a.get("href"))]
    assets += re.findall(r"url: '([^']+)'", page.text)
    assert len(assets) >= 4, assets
    for url in assets:
        assert url is not None and url.startswith("/"), url
        r = docs_hub.get(url)
        assert r.status_code == 200 and r.content, url
        if url.endswith(".css"):
            assert not re.search(r"@import|url\(\s*['\"]?https?:", r.text), url
        if url.startswith("/static/"):
            assert "max-age=" in r.headers["cache-control"], url
    assert any(u.endswith(".js") for u in assets) and "/openapi.json" in assets
    assert '"validatorUrl": null' in page.text  # Swagger UI would otherwise load a badge from another host
    assert docs_hub.get("/redoc").status_code == 404  # it would load its script from a CDN

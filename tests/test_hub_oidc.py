"""Google-style sign-in on the hub against a real OpenID provider (npm oidc-provider, PKCE enforced).

The hub runs in process; the user's browser is headless Chromium for the pages of
the provider, and a cookie-keeping HTTP client for the hub's own pages (the hub's
in-process address is not reachable from Chromium, so the provider's redirect back
is caught in Chromium and handed to the hub by that client).
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hub_fixtures import Hub
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import update
from starlette.testclient import TestClient

import kachery_core as kc
from e2e.servers import OidcProvider
from e2e.signin import confirm_token_link, login_in_browser
from playwright.sync_api import Error as PlaywrightError
from kachery_hub import Settings, create_app
from kachery_hub._database import oidc_logins
from kachery_hub._oidc import OidcConfig, SignInFailed
from kachery_hub._oidc import OidcProvider as HubOidc
from kachery_hub._signin import CSRF_COOKIE, SESSION_COOKIE

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

HUB = "http://testserver"
CALLBACK = f"{HUB}/auth/callback"


@pytest.fixture
def oidc_hub(oidc_provider: OidcProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    client = oidc_provider.register_client([CALLBACK])
    settings = Settings(
        data_dir=tmp_path / "hub", oidc_issuer=oidc_provider.issuer, oidc_client_id=client.client_id,
        oidc_client_secret=client.client_secret, admin_emails=("bob@example.org",),
        public_urls=(HUB,),  # TestClient's requests say Host: testserver
    )
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as http:
        yield Hub(http=http, state=app.state.hub, root=tmp_path, monkeypatch=monkeypatch)
    from kachery_core import _hub

    _hub._injected.pop(HUB, None)
    _hub._chosen_url.clear()
    _hub._me_cache.clear()
    _hub.close_connections()


@pytest.fixture
def web(oidc_hub: Hub) -> Iterator[TestClient]:
    """The browser's view of the hub: its own cookie jar."""
    with TestClient(oidc_hub.http.app, raise_server_exceptions=False) as b:
        yield b


def provider_round_trip(
    web: TestClient, page: Page, provider: OidcProvider, email: str, next_path: str = "/", login: str | None = None
) -> str:
    """Start a login at the hub (at ``login``, else /auth/login?next=...), log in at the provider in
    Chromium; returns the callback path (not yet visited)."""
    start = web.get(login or f"/auth/login?next={next_path}", follow_redirects=False)
    assert start.status_code == 303
    authorize = start.headers["location"]
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["state"][0] and query["nonce"][0]
    # "Sign in with another account": the provider is asked to let the person choose
    # (this provider lists no prompt_values_supported and knows "login", not "select_account")
    assert query.get("prompt") == (["login"] if login and "account=choose" in login else None)
    caught: list[str] = []
    page.context.clear_cookies()  # no provider session left from an earlier login: log in as `email`
    # A page of its own: Chromium cannot reach the in-process hub, and the error page it then
    # loads must not land in the middle of the next round trip's navigation.
    tab = page.context.new_page()
    tab.on("request", lambda r: caught.append(r.url) if r.url.startswith(HUB + "/") else None)
    try:
        tab.goto(authorize)
        login_in_browser(tab, provider, email)
    except PlaywrightError as e:  # the URL the provider sent the browser to is what counts
        assert caught, f"the provider did not send the browser back to the hub: {e}"
    finally:
        tab.close()
    assert caught, "the provider did not send the browser back to the hub"
    return caught[-1].removeprefix(HUB)


def notebook_asks(hub: Hub, label: str = "Jupyter on lab-pc") -> dict[str, Any]:
    hub.use("notebook")
    kc.use_hub(hub.url, http_client=hub.http)
    return kc.start_sign_in(label=label)


def test_google_style_sign_in_confirms_a_notebook(
    oidc_hub: Hub, web: TestClient, page: Page, oidc_provider: OidcProvider
) -> None:
    request = notebook_asks(oidc_hub)
    link = str(request["url"]).removeprefix(HUB)
    to_provider = web.get(link, follow_redirects=False)
    assert to_provider.status_code == 303 and to_provider.headers["location"] == f"/auth/login?next={link}"
    callback = provider_round_trip(web, page, oidc_provider, "alice@example.org", link)
    back = web.get(callback, follow_redirects=False)
    assert back.status_code == 303 and back.headers["location"] == link
    cookie = back.headers["set-cookie"]
    assert SESSION_COOKIE in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    form = web.get(link)
    assert "Jupyter on lab-pc" in form.text and "alice@example.org" in form.text
    done = web.post(link, data={"action": "confirm", "csrf": web.cookies[CSRF_COOKIE]})
    assert done.status_code == 200 and "confirmed" in done.text
    assert kc.get_sign_in_status(str(request["id"])) == "confirmed"
    info = kc.get_client_info()
    assert info["user"]["email"] == "alice@example.org" and info["user"]["is_admin"] is False


def test_a_browser_signed_in_as_the_admin_lets_someone_else_sign_the_notebook_in(
    oidc_hub: Hub, web: TestClient, page: Page, oidc_provider: OidcProvider
) -> None:
    request = notebook_asks(oidc_hub)
    link = str(request["url"]).removeprefix(HUB)
    confirm_token_link(web, oidc_hub.token("root@example.org", admin=True))  # the admin's link, in this browser
    form = web.get(link)
    assert "asks to act as <b>root@example.org</b>" in form.text and "Not root@example.org?" in form.text
    out = web.post("/sign-out", data={"next": link, "csrf": web.cookies[CSRF_COOKIE]}, follow_redirects=False)
    assert out.status_code == 303
    choices = web.get(out.headers["location"])
    assert choices.status_code == 200 and 'name="token"' in choices.text and "act as" not in choices.text
    found = re.search(r'href="(/auth/login\?[^"]+)">sign in with ', choices.text)
    assert found, choices.text
    login = html.unescape(found.group(1))
    assert web.get(provider_round_trip(web, page, oidc_provider, "alice@example.org", login=login),
                   follow_redirects=False).headers["location"] == link  # back to the same request
    assert "asks to act as <b>alice@example.org</b>" in web.get(link).text
    done = web.post(link, data={"action": "confirm", "csrf": web.cookies[CSRF_COOKIE]})
    assert done.status_code == 200 and kc.get_sign_in_status(str(request["id"])) == "confirmed"
    assert kc.get_client_info()["user"]["email"] == "alice@example.org"


def test_token_user_and_provider_user_with_the_same_email_are_one_account(
    oidc_hub: Hub, web: TestClient, page: Page, oidc_provider: OidcProvider
) -> None:
    oidc_hub.sign_in("laptop", "bob@example.org")  # bob first comes with a token
    project = kc.create_project("bob's data")
    web.get(provider_round_trip(web, page, oidc_provider, "bob@example.org"))
    request = notebook_asks(oidc_hub)
    link = str(request["url"]).removeprefix(HUB)
    web.get(link)
    web.post(link, data={"action": "confirm", "csrf": web.cookies[CSRF_COOKIE]})
    assert kc.get_sign_in_status(str(request["id"])) == "confirmed"
    assert project in {p["project_id"] for p in kc.list_projects()}
    assert kc.get_client_info()["user"]["is_admin"] is True, "bob is in the configured admin emails"


def test_refusals(oidc_hub: Hub, web: TestClient, page: Page, oidc_provider: OidcProvider) -> None:
    # a state the hub never issued
    bogus = web.get("/auth/callback?state=forged&code=whatever")
    assert bogus.status_code == 400 and "state" in bogus.text

    # a login completed in one browser cannot be finished in another
    callback = provider_round_trip(web, page, oidc_provider, "alice@example.org")
    with TestClient(oidc_hub.http.app, raise_server_exceptions=False) as other_browser:
        assert "another browser" in other_browser.get(callback).text

    # the same attempt again: its state was used up
    callback = provider_round_trip(web, page, oidc_provider, "alice@example.org")
    assert web.get(callback, follow_redirects=False).status_code == 303
    again = web.get(callback)
    assert again.status_code == 400 and "already used" in again.text

    # a reused authorization code, brought with a fresh state: the provider refuses it
    code = parse_qs(urlsplit(callback).query)["code"][0]
    fresh = provider_round_trip(web, page, oidc_provider, "alice@example.org")
    fresh_state = parse_qs(urlsplit(fresh).query)["state"][0]
    reused = web.get(f"/auth/callback?state={fresh_state}&code={code}")
    assert reused.status_code == 400 and "refused the sign-in code: invalid_grant" in reused.text

    # a wrong PKCE verifier: the provider refuses the exchange
    callback = provider_round_trip(web, page, oidc_provider, "alice@example.org")
    with oidc_hub.state.db.begin() as conn:
        conn.execute(update(oidc_logins).values(code_verifier="x" * 64))
    wrong = web.get(callback)
    assert wrong.status_code == 400 and "invalid_grant" in wrong.text

    # an email the provider has not verified: no session
    web.cookies.clear()
    unverified = web.get(provider_round_trip(web, page, oidc_provider, "mallory@example.org"))
    assert unverified.status_code == 400 and "has not verified the email" in unverified.text
    assert SESSION_COOKIE not in web.cookies


def test_saying_no_at_the_provider_refuses_the_notebook(
    oidc_hub: Hub, web: TestClient, page: Page, oidc_provider: OidcProvider
) -> None:
    request = notebook_asks(oidc_hub)
    link = str(request["url"]).removeprefix(HUB)
    start = web.get(f"/auth/login?next={link}", follow_redirects=False)
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    # what the provider sends back when the user denies access
    denied = web.get(f"/auth/callback?state={state}&error=access_denied&error_description=the+user+said+no")
    assert denied.status_code == 403 and "the user said no" in denied.text
    assert kc.get_sign_in_status(str(request["id"])) == "refused"


def test_csrf_open_redirect_and_escaping(oidc_hub: Hub, web: TestClient) -> None:
    evil = "<img src=x onerror=alert(1)>"
    request = notebook_asks(oidc_hub, label=evil)
    link = str(request["url"]).removeprefix(HUB)
    confirm_token_link(web, oidc_hub.token("ada@example.org"))
    page_text = web.get(link).text
    assert evil not in page_text and "&lt;img src=x onerror=alert(1)&gt;" in page_text
    missing = web.post(link, data={"action": "confirm"})
    assert missing.status_code == 403 and "CSRF token is missing" in missing.text
    wrong = web.post(link, data={"action": "confirm", "csrf": "guessed"})
    assert wrong.status_code == 403
    assert kc.get_sign_in_status(str(request["id"])) == "pending"
    # a login may only return to this hub's own pages
    for target in ("https://evil.example/", "//evil.example/x"):
        web.get(f"/auth/login?next={target}", follow_redirects=False)
        with oidc_hub.state.db.begin() as conn:
            rows = conn.execute(oidc_logins.select()).fetchall()
        assert rows and all(r.next_path.startswith("/") and not r.next_path.startswith("//") for r in rows)


def test_expired_and_used_links(oidc_hub: Hub, web: TestClient) -> None:
    from kachery_hub._database import sign_in_requests

    request = notebook_asks(oidc_hub)
    link = str(request["url"]).removeprefix(HUB)
    with oidc_hub.state.db.begin() as conn:
        conn.execute(update(sign_in_requests).values(expires_at=0.0))
    expired = web.get(link)
    assert expired.status_code == 410 and "expired" in expired.text
    assert kc.get_sign_in_status(str(request["id"])) == "expired"


# ---------------------------------------------------------------- id_token checks, with a key this test holds


@pytest.fixture
def signer() -> tuple[HubOidc, RSAKey]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = RSAKey.import_key(private, {"kid": "test-key"})
    provider = HubOidc(OidcConfig("https://issuer.example", "hub-client", "secret"))
    provider._metadata, provider._metadata_at = {"issuer": "https://issuer.example"}, time.time()
    provider._keys = KeySet([RSAKey.import_key(key.as_dict(private=False))])
    return provider, key


def _id_token(key: RSAKey, **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": "https://issuer.example", "aud": "hub-client", "sub": "s-1", "iat": now, "exp": now + 300,
              "nonce": "n-1", "email": "Eve@Example.org", "email_verified": True, **overrides}
    return jwt.encode({"alg": "RS256", "kid": "test-key"}, claims, key)


def test_a_good_id_token_is_accepted(signer: tuple[HubOidc, RSAKey]) -> None:
    provider, key = signer
    identity = provider.verify_id_token(_id_token(key), "n-1")
    assert (identity.issuer, identity.subject, identity.email) == ("https://issuer.example", "s-1", "eve@example.org")


@pytest.mark.parametrize(
    ("overrides", "nonce", "why"),
    [
        ({"exp": int(time.time()) - 600}, "n-1", "exp"),
        ({"iss": "https://other.example"}, "n-1", "iss"),
        ({"aud": "another-client"}, "n-1", "aud"),
        ({}, "another-nonce", "nonce"),
        ({"email_verified": False}, "n-1", "has not verified"),
    ],
)
def test_bad_id_tokens_are_refused(signer: tuple[HubOidc, RSAKey], overrides: dict[str, Any], nonce: str, why: str) -> None:
    provider, key = signer
    with pytest.raises(SignInFailed, match=why):
        provider.verify_id_token(_id_token(key, **overrides), nonce)


def test_a_tampered_or_foreign_id_token_is_refused(signer: tuple[HubOidc, RSAKey]) -> None:
    provider, key = signer
    header, payload, signature = _id_token(key).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["email"] = "admin@example.org"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    with pytest.raises(SignInFailed, match="signature"):
        provider.verify_id_token(f"{header}.{forged}.{signature}", "n-1")
    other = RSAKey.import_key(rsa.generate_private_key(public_exponent=65537, key_size=2048), {"kid": "test-key"})
    with pytest.raises(SignInFailed, match="signature"):
        provider.verify_id_token(_id_token(other), "n-1")
    with pytest.raises(SignInFailed):
        provider.verify_id_token("not.a.jwt", "n-1")
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none","kid":"test-key"}').decode().rstrip("=")
    with pytest.raises(SignInFailed):
        provider.verify_id_token(f"{unsigned}.{payload}.", "n-1")

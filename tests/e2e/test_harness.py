"""The end-to-end harness works: a widget round trip in JupyterLab, a PKCE sign-in at the provider."""

from __future__ import annotations

import base64
import hashlib
import http.server
import secrets
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from playwright.sync_api import expect

from e2e.notebook import CellError, open_notebook, run_cell
from e2e.servers import DEFAULT_ACCOUNTS, JupyterLab, OidcProvider, screenshot
from e2e.signin import CONSENT_FORM, login_in_browser

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

COUNTER_CELL = '''
import anywidget, traitlets

class Counter(anywidget.AnyWidget):
    _esm = """
    export default {
      render({ model, el }) {
        const button = document.createElement("button");
        button.className = "test-counter";
        const show = () => { button.textContent = `count is ${model.get("value")}`; };
        button.addEventListener("click", () => {
          model.set("value", model.get("value") + 1);
          model.save_changes();
        });
        model.on("change:value", show);
        show();
        el.appendChild(button);
      },
    };
    """
    value = traitlets.Int(0).tag(sync=True)

counter = Counter()
counter
'''

READ_CELL = 'import os\nprint("value =", counter.value, "| dir =", os.environ["KACHERY_CLOUD_DIR"])'


def test_an_anywidget_click_reaches_python(jupyterlab: JupyterLab, page: Page) -> None:
    kachery_dir = str(jupyterlab.home / "kachery-from-kernelspec")
    kernel = jupyterlab.add_kernel({"KACHERY_CLOUD_DIR": kachery_dir})
    cells = [COUNTER_CELL, READ_CELL, "#md\nA failing cell:", "1 / 0"]
    jupyterlab.write_notebook("counter.ipynb", cells, kernel=kernel)

    open_notebook(page, jupyterlab, "counter.ipynb")
    run_cell(page, 0)
    button = page.locator("button.test-counter")
    expect(button).to_have_text("count is 0")
    for _ in range(3):
        button.click()
    expect(button).to_have_text("count is 3")
    screenshot(page.locator(".jp-NotebookPanel:visible .jp-Cell").first, "harness-anywidget-counter")

    assert run_cell(page, 1).strip() == f"value = 3 | dir = {kachery_dir}"
    with pytest.raises(CellError, match="ZeroDivisionError"):
        run_cell(page, 3)


# ---------------------------------------------------------------- OpenID Connect


@dataclass
class RedirectReceiver:
    """A throwaway relying-party callback that records the query of each redirect."""

    url: str
    received: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[RedirectReceiver]:
    got: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/callback":  # not the browser's /favicon.ico
                got.append(dict(urllib.parse.parse_qsl(url.query)))
            body = b"<html><body><p id='done'>received</p></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield RedirectReceiver(f"http://127.0.0.1:{server.server_address[1]}/callback", got)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(page: Page, provider: OidcProvider, client_id: str, redirect_uri: str, challenge: str) -> str:
    """Open the authorization endpoint with PKCE; returns the state it sent."""
    meta = provider.metadata()
    state = secrets.token_urlsafe(16)
    query = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid email profile",
            "state": state,
            "nonce": secrets.token_urlsafe(16),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    page.goto(f"{meta['authorization_endpoint']}?{query}")
    return state


def test_discovery_document_requires_pkce_s256(oidc_provider: OidcProvider) -> None:
    meta = oidc_provider.metadata()
    assert meta["issuer"] == oidc_provider.issuer
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "email" in meta["claims_supported"]  # type: ignore[operator]


def test_authorization_code_flow_with_pkce_in_chromium(
    oidc_provider: OidcProvider, page: Page, receiver: RedirectReceiver
) -> None:
    client = oidc_provider.register_client([receiver.url])
    meta = oidc_provider.metadata()
    user = DEFAULT_ACCOUNTS[0]

    verifier, challenge = pkce_pair()
    state = authorize(page, oidc_provider, client.client_id, receiver.url, challenge)
    landed = login_in_browser(page, oidc_provider, user.email)
    assert landed is not None and landed.startswith(receiver.url)
    expect(page.locator("#done")).to_have_text("received")
    (callback,) = receiver.received
    assert callback["state"] == state and callback["iss"] == oidc_provider.issuer

    def exchange(code: str, code_verifier: str) -> httpx.Response:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": receiver.url}
        form["code_verifier"] = code_verifier
        return httpx.post(str(meta["token_endpoint"]), data=form, auth=(client.client_id, client.client_secret))

    tokens = exchange(callback["code"], verifier)
    assert tokens.status_code == 200, tokens.text
    keys = KeySet.import_key_set(httpx.get(str(meta["jwks_uri"])).json())
    claims = jwt.decode(tokens.json()["id_token"], keys).claims
    assert (claims["iss"], claims["aud"], claims["sub"]) == (oidc_provider.issuer, client.client_id, user.sub)
    assert claims["email"] == user.email and claims["email_verified"] is True
    reused = exchange(callback["code"], verifier)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"

    # The reuse revoked the grant: the same browser, still signed in, is asked to consent again.
    _, challenge = pkce_pair()
    authorize(page, oidc_provider, client.client_id, receiver.url, challenge)
    expect(page.locator(CONSENT_FORM)).to_be_visible()
    login_in_browser(page, oidc_provider, user.email)
    expect(page.locator("#done")).to_have_text("received")
    assert len(receiver.received) == 2
    refused = exchange(receiver.received[1]["code"], pkce_pair()[0])  # a wrong verifier
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


def test_the_provider_refuses_an_unknown_login(
    oidc_provider: OidcProvider, page: Page, receiver: RedirectReceiver
) -> None:
    client = oidc_provider.register_client([receiver.url])
    state = authorize(page, oidc_provider, client.client_id, receiver.url, pkce_pair()[1])
    login_in_browser(page, oidc_provider, "stranger@example.org")
    (callback,) = receiver.received
    assert callback["error"] == "access_denied" and callback["state"] == state
    assert "code" not in callback

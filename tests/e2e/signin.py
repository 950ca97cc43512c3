"""Browser steps of signing in, as a person takes them.

At the local OpenID provider (Chromium): the provider's dev interactions show a login
form (any password) and then a consent form; a browser that already consented to the
same client skips the consent form.

At the hub (any cookie-keeping HTTP client): opening the ``/?token=...`` link that
``kachery-hub serve`` prints shows a confirmation page; the browser is signed in only
once its "Sign in" button posts the form.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from e2e.servers import OidcProvider

_CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


def confirm_token_link(browser: Any, token: str) -> Any:
    """Open the hub's ``/?token=...`` link in ``browser`` and press "Sign in"; returns the final answer.

    ``browser`` is a ``TestClient`` or an ``httpx2.Client`` with the hub as its ``base_url``.
    """
    page = browser.get("/", params={"token": token})
    csrf = _CSRF_FIELD.search(page.text)
    assert page.status_code == 200 and csrf, page.text
    return browser.post("/", data={"token": token, "csrf": csrf.group(1), "action": "confirm"})


def confirm_token_link_in_chromium(page: Page, hub_url: str, token: str) -> None:
    """The same in a real browser: open the link, read who it signs in as, press "Sign in"."""
    from playwright.sync_api import expect

    page.goto(f"{hub_url}/?token={token}")
    expect(page.locator("body")).to_contain_text("Sign in to this hub as")
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    expect(page.locator("body")).to_contain_text("This browser is signed in as")


LOGIN_FORM = "form:has(input[name='prompt'][value='login'])"
CONSENT_FORM = "form:has(input[name='prompt'][value='consent'])"


def login_in_browser(
    page: Page, provider: OidcProvider, email: str, password: str = "any password", timeout_ms: float = 30_000
) -> str | None:
    """Complete login and consent, whichever the provider asks for; returns where it sent the page.

    ``page`` must be on its way to the provider's login or consent form (e.g. a sign-in popup);
    a browser with a provider session only sees the consent form, or nothing. An unknown email
    or a wrong password ends at the redirect URI with ``error=access_denied``.
    Returns None when the page closed itself on the way (a popup that is done).
    """
    page.locator(f"{LOGIN_FORM}, {CONSENT_FORM}").first.wait_for(timeout=timeout_ms)
    if page.locator(LOGIN_FORM).count():
        page.locator(f"{LOGIN_FORM} input[name='login']").fill(email)
        page.locator(f"{LOGIN_FORM} input[name='password']").fill(password)
        _submit(page, LOGIN_FORM, timeout_ms)
    if not page.is_closed() and _at_provider(page, provider) and page.locator(CONSENT_FORM).count():
        _submit(page, CONSENT_FORM, timeout_ms)
    if page.is_closed():
        return None
    if _at_provider(page, provider):
        raise AssertionError(f"still at the OpenID provider ({page.url}):\n{page.locator('body').inner_text()}")
    return page.url


def _submit(page: Page, form: str, timeout_ms: float) -> None:
    """Click the form's button and wait for the page it leads to, through every redirect."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        with page.expect_navigation(timeout=timeout_ms):
            page.locator(f"{form} button[type='submit']").click()
    except PlaywrightError:
        if not page.is_closed():
            raise


def _at_provider(page: Page, provider: OidcProvider) -> bool:
    return page.url.startswith(provider.issuer + "/")

"""The sign-in panel in JupyterLab in headless Chromium, against a real hub process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from e2e.contrast import AA, contrasts, too_low
from e2e.notebook import open_notebook, run_cell
from e2e.servers import THEMES, JupyterLab, OidcProvider, screenshot
from e2e.signin import login_in_browser
from hub_process import HubProcess, free_port, real_hub  # noqa: F401  (a fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

INFO_CELL = (
    "import kachery_core as kc\n"
    "info = kc.get_client_info()\n"
    "print('signed in as', info['user']['email'] if info['signed_in'] else None)"
)




def _login_notebook(lab: JupyterLab, hub: HubProcess, tmp_path: Path, name: str) -> str:
    kernel = lab.add_kernel({"KACHERY_CLOUD_DIR": str(tmp_path / name), "KACHERY_HUB_URL": hub.url})
    lab.write_notebook(f"{name}.ipynb", ["%load_ext kachery_jupyter", "%kc_login", INFO_CELL], kernel=kernel)
    return f"{name}.ipynb"


def test_sign_in_with_the_token_field(jupyterlab: JupyterLab, page: Page, real_hub: HubProcess, tmp_path: Path) -> None:
    open_notebook(page, jupyterlab, _login_notebook(jupyterlab, real_hub, tmp_path, "token-field"))
    status = run_cell(page, 0)
    assert f"hub {real_hub.url}" in status and "not signed in" in status
    run_cell(page, 1)
    panel = page.locator(".kc-login")
    # This hub has no identity provider: the panel offers what it has, a token first.
    expect(panel.locator(".kc-hint")).to_contain_text("kachery-hub token create --user")
    expect(panel).not_to_contain_text("Google")
    screenshot(panel, "login-signed-out")

    panel.locator("input.kc-token").fill("khub_this-is-not-a-token")
    panel.get_by_role("button", name="Use token").click()
    expect(panel).to_contain_text("did not accept the token")
    screenshot(panel, "login-token-refused")

    panel.locator("input.kc-token").fill(real_hub.token("ada@example.org"))
    panel.get_by_role("button", name="Use token").click()
    expect(panel.locator(".kc-signed-in")).to_have_text("Signed in as ada@example.org")
    screenshot(panel, "login-signed-in")
    assert "signed in as ada@example.org" in run_cell(page, 2)


def test_sign_in_in_a_new_window(jupyterlab: JupyterLab, page: Page, real_hub: HubProcess, tmp_path: Path) -> None:
    open_notebook(page, jupyterlab, _login_notebook(jupyterlab, real_hub, tmp_path, "new-window"))
    run_cell(page, 0)
    run_cell(page, 1)
    panel = page.locator(".kc-login")
    with page.expect_popup() as popup_info:
        panel.get_by_role("button", name="Sign in in a browser window").click()
    popup = popup_info.value
    expect(panel).to_contain_text("Finish signing in in the new window")
    screenshot(panel, "login-waiting")
    popup.wait_for_url(f"{real_hub.url}/sign-in/**")
    popup.locator("input[name=token]").fill(real_hub.token("grace@example.org"))
    popup.get_by_role("button", name="Confirm").click()
    expect(popup.locator("body")).to_contain_text("This sign-in was confirmed")
    # The kernel notices by itself: nothing is run in the notebook meanwhile.
    expect(panel.locator(".kc-signed-in")).to_have_text("Signed in as grace@example.org", timeout=20_000)
    assert "signed in as grace@example.org" in run_cell(page, 2)


def test_popup_blocked_shows_a_plain_link(jupyterlab: JupyterLab, page: Page, real_hub: HubProcess, tmp_path: Path) -> None:
    page.add_init_script("window.open = () => null;")  # what a popup blocker does
    open_notebook(page, jupyterlab, _login_notebook(jupyterlab, real_hub, tmp_path, "blocked"))
    run_cell(page, 0)
    run_cell(page, 1)
    panel = page.locator(".kc-login")
    panel.get_by_role("button", name="Sign in in a browser window").click()
    expect(panel).to_contain_text("blocked the sign-in window")
    link = panel.locator("a.kc-link")
    assert (link.get_attribute("href") or "").startswith(f"{real_hub.url}/sign-in/")
    screenshot(panel, "login-popup-blocked")


EVIL_LABEL = "<img src=x onerror=alert(1)>"


@pytest.fixture
def google_hub(tmp_path: Path, oidc_provider: OidcProvider) -> Iterator[HubProcess]:
    """A hub process whose browser sign-in goes through the local OpenID provider (as it would to Google)."""
    port = free_port()
    client = oidc_provider.register_client([f"http://127.0.0.1:{port}/auth/callback"])
    # "--name=value": a generated secret may start with "-"
    hub = HubProcess(tmp_path / "hub-data", port, f"--oidc-issuer={oidc_provider.issuer}",
                     f"--oidc-client-id={client.client_id}", f"--oidc-client-secret={client.client_secret}")
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


def _sign_in_with(provider: OidcProvider) -> str:
    """The panel's button for a hub with this provider: named as the hub names it (by host, unless Google)."""
    return f"Sign in with {urlsplit(provider.issuer).hostname}"


def test_sign_in_with_google_from_the_panel(
    jupyterlab: JupyterLab, page: Page, google_hub: HubProcess, oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    kernel = jupyterlab.add_kernel({"KACHERY_CLOUD_DIR": str(tmp_path / "google"), "KACHERY_HUB_URL": google_hub.url})
    cells = [
        "%load_ext kachery_jupyter",
        f"from kachery_jupyter import LoginWidget\nLoginWidget(label={EVIL_LABEL!r})",
        INFO_CELL,
    ]
    jupyterlab.write_notebook("google.ipynb", cells, kernel=kernel)
    open_notebook(page, jupyterlab, "google.ipynb")
    run_cell(page, 0)
    run_cell(page, 1)
    panel = page.locator(".kc-login")
    expect(panel.locator(".kc-computer")).to_have_text(f"This computer: {EVIL_LABEL}")
    assert panel.locator("img").count() == 0
    with page.expect_popup() as popup_info:
        panel.get_by_role("button", name=_sign_in_with(oidc_provider)).click()
    popup = popup_info.value
    login_in_browser(popup, oidc_provider, "alice@example.org")
    popup.wait_for_url(f"{google_hub.url}/sign-in/**")
    expect(popup.locator("body")).to_contain_text("asks to act as alice@example.org")
    expect(popup.locator("body")).to_contain_text(EVIL_LABEL)  # shown as text...
    assert popup.locator("img").count() == 0  # ...never as markup
    screenshot(popup, "hub-confirm-page")
    popup.get_by_role("button", name="Confirm").click()
    expect(popup.locator("body")).to_contain_text("This sign-in was confirmed")
    expect(panel.locator(".kc-signed-in")).to_have_text("Signed in as alice@example.org", timeout=20_000)
    screenshot(panel, "login-signed-in-google")
    assert "signed in as alice@example.org" in run_cell(page, 2)


def test_sign_in_refused_at_the_provider(
    jupyterlab: JupyterLab, page: Page, google_hub: HubProcess, oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    kernel = jupyterlab.add_kernel({"KACHERY_CLOUD_DIR": str(tmp_path / "refused"), "KACHERY_HUB_URL": google_hub.url})
    jupyterlab.write_notebook("refused.ipynb", ["%load_ext kachery_jupyter", "%kc_login"], kernel=kernel)
    open_notebook(page, jupyterlab, "refused.ipynb")
    run_cell(page, 0)
    run_cell(page, 1)
    panel = page.locator(".kc-login")
    with page.expect_popup() as popup_info:
        panel.get_by_role("button", name=_sign_in_with(oidc_provider)).click()
    popup = popup_info.value
    login_in_browser(popup, oidc_provider, "nobody@example.org")  # the provider knows no such user
    expect(popup.locator("body")).to_contain_text("did not sign you in")
    expect(panel).to_contain_text("Sign-in was refused", timeout=20_000)
    screenshot(panel, "login-refused")


# ---------------------------------------------------------------- themes

def _readable(panel: Locator, what: str) -> None:
    """Every button, field, link and line of the panel at WCAG AA against what it is drawn on."""
    items = contrasts(panel)
    assert any(i["what"].startswith("button") for i in items), items
    low = too_low(panel)
    assert not low, f"{what}: text below {AA}:1 against its background: {low}"


@pytest.mark.parametrize("themed_lab", list(THEMES), indirect=True)
def test_the_panel_is_readable_in_jupyterlab_s_light_and_dark_themes(
    themed_lab: JupyterLab, page: Page, real_hub: HubProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    theme = request.node.callspec.params["themed_lab"]
    page.add_init_script("window.open = () => null;")  # the popup-blocked link is one of the states
    open_notebook(page, themed_lab, _login_notebook(themed_lab, real_hub, tmp_path, f"theme-{theme}"))
    light = page.evaluate("document.body.dataset.jpThemeLight")
    assert light == ("true" if theme == "light" else "false"), "JupyterLab did not take the theme"
    run_cell(page, 0)
    run_cell(page, 1)
    panel = page.locator(".kc-login")

    expect(panel.get_by_role("button", name="Use token")).to_be_visible()
    _readable(panel, f"{theme}, signed out")
    screenshot(panel, f"login-{theme}-signed-out")

    panel.get_by_role("button", name="Sign in in a browser window").click()
    expect(panel.locator("a.kc-link")).to_be_visible()
    _readable(panel, f"{theme}, popup blocked")
    link = panel.locator("a.kc-link")
    assert link.evaluate("a => getComputedStyle(a).textDecorationLine") == "underline"
    assert link.evaluate("a => getComputedStyle(a).color") != panel.evaluate("p => getComputedStyle(p).color")
    screenshot(panel, f"login-{theme}-popup-blocked")
    panel.get_by_role("button", name="Cancel").click()

    panel.locator("input.kc-token").fill(real_hub.token("ada@example.org"))
    panel.get_by_role("button", name="Use token").click()
    expect(panel.get_by_role("button", name="Sign out")).to_be_visible()
    _readable(panel, f"{theme}, signed in")
    screenshot(panel, f"login-{theme}-signed-in")


# A VS Code dark theme (Dark Modern) as its notebook outputs see it: --vscode-* variables, no --jp-*.
VSCODE_DARK = {
    "--vscode-font-family": "system-ui, sans-serif",
    "--vscode-editor-foreground": "#cccccc",
    "--vscode-editor-background": "#1f1f1f",
    "--vscode-descriptionForeground": "#9d9d9d",
    "--vscode-widget-border": "#313131",
    "--vscode-button-background": "#0078d4",
    "--vscode-button-foreground": "#ffffff",
    "--vscode-button-secondaryBackground": "#313131",
    "--vscode-button-secondaryForeground": "#cccccc",
    "--vscode-input-background": "#313131",
    "--vscode-input-foreground": "#cccccc",
    "--vscode-input-border": "#3c3c3c",
    "--vscode-textLink-foreground": "#4daafc",
}

_RENDER_JS = """async ([source, css, page_vars]) => {
  const { view } = await import(URL.createObjectURL(new Blob([source], { type: "text/javascript" })));
  const style = document.createElement("style");
  style.textContent = css;
  document.head.append(style);
  for (const [name, value] of Object.entries(page_vars)) document.body.style.setProperty(name, value);
  const base = { hub_url: "http://127.0.0.1:8555", client_label: "ada@vm, analysis.ipynb", message: "",
                 sign_in_methods: { oidc: null, token: true }, registration_url: "http://127.0.0.1:8555/sign-in/x",
                 email: "ada@example.org", default_project: "p1",
                 projects: [{ id: "p1", name: "default", owner: "ada@example.org" }] };
  for (const state of ["signed_out", "waiting", "signed_in"]) {
    const values = { ...base, state };
    const model = { get: (k) => values[k], on() {}, off() {}, send() {} };
    const opener = { openBlank: () => false, navigate: () => false, blocked: true };
    const el = document.createElement("div");
    el.id = state;
    el.append(view(model, { opener }));
    document.body.append(el);
  }
}"""


@pytest.mark.parametrize(("outside", "scheme", "page_vars"), [
    ("colab-light", "light", {}), ("colab-dark", "dark", {}),
    ("vscode-dark", "dark", VSCODE_DARK),
], ids=["colab-light", "colab-dark", "vscode-dark"])
def test_the_panel_is_readable_outside_jupyterlab(
    browser: Browser, outside: str, scheme: str, page_vars: dict[str, str]
) -> None:
    """Without JupyterLab's variables (Colab, VS Code) the panel follows the page's colour scheme."""
    from kachery_jupyter._assets import module, stylesheet

    context = browser.new_context(color_scheme=scheme)  # type: ignore[arg-type]
    try:
        page = context.new_page()
        page.set_content("<!doctype html><html><body></body></html>")
        page.evaluate(_RENDER_JS, [module("login.js"), stylesheet("login.css"), page_vars])
        for state in ("signed_out", "waiting", "signed_in"):
            panel = page.locator(f"#{state} .kc-login")
            _readable(panel, f"{outside}, {state}")
        background = page.locator("#signed_out .kc-login").evaluate("p => getComputedStyle(p).backgroundColor")
        assert (background in ("rgb(255, 255, 255)",)) == (scheme == "light" and not page_vars), background
        screenshot(page.locator("#signed_out .kc-login"), f"login-{outside}-signed-out")
    finally:
        context.close()


"""The sign-in panel's Python side against a real (in-process) hub: traits, polling, error states.

The front end is stood in for by calling the widget's message handler with the
messages js/login.js sends; the user's browser by a second HTTP client.
"""

from __future__ import annotations

import re
import socket
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hub_fixtures import Hub, make_hub
from starlette.testclient import TestClient

import kachery_core as kc
from e2e.signin import confirm_token_link
from kachery_hub._signin import CSRF_COOKIE
from kachery_jupyter import LoginWidget


@pytest.fixture
def hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    yield from make_hub("sqlite", request, tmp_path, monkeypatch)


@pytest.fixture
def notebook(hub: Hub) -> Hub:
    """A notebook's kernel that knows the hub but is not signed in."""
    hub.use("notebook")
    kc.use_hub(hub.url, http_client=hub.http)
    return hub


def browser_confirms(hub: Hub, url: str, email: str, action: str = "confirm") -> None:
    with TestClient(hub.http.app, raise_server_exceptions=False) as browser:
        assert confirm_token_link(browser, hub.token(email)).status_code == 200
        path = url.removeprefix(hub.url)
        csrf = browser.get(path).cookies[CSRF_COOKIE]
        assert browser.post(path, data={"action": action, "csrf": csrf}).status_code == 200


def send(widget: LoginWidget, **content: object) -> None:
    widget._on_msg(widget, content, None)


def fast(widget: LoginWidget) -> LoginWidget:
    widget.poll_interval = 0.05
    return widget


def test_no_hub_asks_for_one() -> None:
    w = LoginWidget()
    assert (w.state, w.hub_url) == ("no_hub", "")
    # Where the panel cannot render (VS Code, a saved notebook), its text says the same.
    assert w._repr_mimebundle_()[0]["text/plain"].startswith("kachery sign-in: no hub configured, no hub")


def test_unreachable_hub_says_so() -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w = LoginWidget(hub_url=f"http://127.0.0.1:{port}")
    assert w.state == "unreachable"
    assert "cannot reach the hub" in w.message


def test_connect_to_a_hub_from_the_panel(notebook: Hub) -> None:
    w = LoginWidget()
    assert w.state == "signed_out", "the hub chosen in this kernel is picked up"
    assert w.hub_url == notebook.url


def test_browser_confirmation_is_noticed_by_polling(notebook: Hub) -> None:
    w = fast(LoginWidget(hub_url=notebook.url))
    assert w.state == "signed_out"
    send(w, type="start")
    assert w.state == "waiting" and w.registration_url.startswith(notebook.url + "/sign-in/")
    browser_confirms(notebook, w.registration_url, "ada@example.org")
    assert w.wait(timeout=30)
    assert w.state == "signed_in" and w.email == "ada@example.org"
    info = kc.get_client_info()
    assert info["signed_in"] and info["user"]["email"] == "ada@example.org"
    assert w.default_project == info["default_project_id"]
    assert [p["id"] for p in w.projects] == [info["default_project_id"]]


def test_refused_and_expired_sign_ins(notebook: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    w = fast(LoginWidget(hub_url=notebook.url))
    send(w, type="start")
    browser_confirms(notebook, w.registration_url, "ada@example.org", action="refuse")
    assert w.wait(timeout=30) and w.state == "refused"
    assert kc.get_client_info()["signed_in"] is False

    import kachery_hub._signin as hub_signin

    monkeypatch.setattr(hub_signin, "REQUEST_SECONDS", -1)  # links are born expired
    send(w, type="start")
    assert w.wait(timeout=30) and w.state == "expired"


def test_cancel_stops_waiting(notebook: Hub) -> None:
    w = LoginWidget(hub_url=notebook.url)
    w.poll_interval = 0.2
    send(w, type="start")
    send(w, type="cancel")
    assert w.wait(timeout=30)
    assert w.state == "signed_out"


def test_token_field(notebook: Hub) -> None:
    w = LoginWidget(hub_url=notebook.url)
    send(w, type="token", token="khub_not-a-real-token")
    assert w.state == "refused" and "did not accept the token" in w.message
    send(w, type="token", token=notebook.token("grace@example.org"))
    assert w.state == "signed_in" and w.email == "grace@example.org"


def test_default_project_picker_and_sign_out(notebook: Hub) -> None:
    w = LoginWidget(hub_url=notebook.url)
    send(w, type="token", token=notebook.token("grace@example.org"))
    other = kc.create_project("second")
    send(w, type="retry")
    assert {p["id"] for p in w.projects} == {w.default_project, other}
    send(w, type="set_project", project_id=other)
    assert w.default_project == other and kc.get_client_info()["default_project_id"] == other
    send(w, type="sign_out")
    assert w.state == "signed_out" and w.email == "" and "Signed out" in w.message
    assert kc.get_client_info()["signed_in"] is False


def test_bad_project_choice_is_an_error_state(notebook: Hub) -> None:
    w = LoginWidget(hub_url=notebook.url)
    send(w, type="token", token=notebook.token("grace@example.org"))
    send(w, type="set_project", project_id="no-such-project")
    assert w.state == "error" and w.message


def test_colab_secret_signs_in_by_itself(notebook: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    # Colab is absent here: stand in for its secrets API only.
    token = notebook.token("colab@example.org")
    userdata = types.SimpleNamespace(get=lambda name: token if name == "KACHERY_HUB_TOKEN" else None)
    colab = types.ModuleType("google.colab")
    colab.userdata = userdata  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)  # type: ignore[arg-type]
    w = LoginWidget(hub_url=notebook.url)
    assert w.state == "signed_in" and w.email == "colab@example.org"


def test_kc_login_magic_shows_the_panel(notebook: Hub, ip: Any) -> None:
    from IPython.core.error import UsageError

    w = ip.run_line_magic("kc_login", f"--hub {notebook.url}")
    assert isinstance(w, LoginWidget) and w.state == "signed_out"
    with pytest.raises(UsageError, match="must start with http"):
        ip.run_line_magic("kc_login", "--hub ftp://example.org")


def test_the_panel_knows_what_the_hub_offers(notebook: Hub) -> None:
    w = LoginWidget(hub_url=notebook.url)
    assert w.state == "signed_out"
    assert w.sign_in_methods == {"oidc": None, "token": True}, "no identity provider: no 'Sign in with Google'"


def test_the_confirm_page_tells_two_kernels_apart(notebook: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    monkeypatch.setattr(getpass, "getuser", lambda: "ada")
    monkeypatch.setattr(socket, "gethostname", lambda: "vm")
    labels = []
    for path in ("analysis/spikes.ipynb", "Untitled1.ipynb"):
        monkeypatch.setenv("JPY_SESSION_NAME", path)  # what jupyter_server gives a notebook's kernel
        labels.append(LoginWidget(hub_url=notebook.url).client_label)
    assert labels == ["ada@vm, spikes.ipynb", "ada@vm, Untitled1.ipynb"]

    w = LoginWidget(hub_url=notebook.url)
    send(w, type="start")
    send(w, type="cancel")
    with TestClient(notebook.http.app, raise_server_exceptions=False) as browser:
        assert confirm_token_link(browser, notebook.token("ada@example.org")).status_code == 200
        page = browser.get(w.registration_url.removeprefix(notebook.url))
    assert "ada@vm, Untitled1.ipynb" in page.text and "Jupyter on" not in page.text

    monkeypatch.delenv("JPY_SESSION_NAME")
    assert LoginWidget(hub_url=notebook.url).client_label == "ada@vm"
    request = kc.start_sign_in()  # outside a notebook: user@host
    with TestClient(notebook.http.app, raise_server_exceptions=False) as browser:
        assert confirm_token_link(browser, notebook.token("ada@example.org")).status_code == 200
        text = browser.get(request["url"].removeprefix(notebook.url)).text
        assert ">ada@vm<" in text, text[text.find("<body"):]


def test_the_panel_s_stylesheet_starts_with_the_shared_theme() -> None:
    from kachery_jupyter._assets import asset

    css = LoginWidget._css
    assert isinstance(css, str)
    assert css.startswith(asset("theme.css").read_text()) and css.endswith(asset("login.css").read_text())
    # Every colour of the panel is a theme variable: none is written into login.css itself.
    own = asset("login.css").read_text()
    assert not re.search(r"#[0-9a-fA-F]{3,8}\b|rgba?\(", own)


def test_a_kernel_given_a_token_opens_the_panel_signed_in(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``bash dev.sh start`` gives JupyterLab's kernels: KACHERY_HUB_URL and the admin's token."""
    hub.use("dev-kernel")
    monkeypatch.setenv("KACHERY_HUB_URL", hub.url)
    monkeypatch.setenv("KACHERY_HUB_TOKEN", hub.token("admin@localhost", admin=True))
    kc.use_hub(hub.url, http_client=hub.http)
    w = LoginWidget()
    assert (w.state, w.email) == ("signed_in", "admin@localhost")

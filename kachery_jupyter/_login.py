"""The sign-in panel: one click instead of a terminal command.

The kernel drives everything: it asks the hub for a one-time registration
link, the front end opens it in a new window, and a background thread polls the
hub until the user has confirmed there. Nothing depends on the new window
talking back to the notebook, which is why it also works in Colab.

States (``state`` trait): ``no_hub`` → ``checking`` → ``signed_out`` →
``starting`` → ``waiting`` → ``signed_in``; and ``unreachable``, ``expired``,
``refused``, ``error`` with a ``message``.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import anywidget
import traitlets

import kachery_core as kc
from kachery_core import _signin

from ._assets import module, stylesheet

_COLAB_SECRET = "KACHERY_HUB_TOKEN"


def colab_secret_token() -> str | None:
    """The sign-in token saved as a Colab secret, when running in Colab and it is set."""
    if "google.colab" not in sys.modules:
        return None
    try:
        from google.colab import userdata

        value = userdata.get(_COLAB_SECRET)
    except Exception:  # no such secret, or the notebook was not granted access to it
        return None
    return str(value) if value else None


def check_hub(hub_url: str) -> str:
    """``hub_url`` normalized, once a kachery hub answers ``GET /api/health`` there; raises a
    :class:`kachery_core.HubError` saying what failed (nothing answers, or not as a hub does)."""
    import httpx2

    from kachery_core import _hub

    url = _hub.normalize_url(hub_url)
    not_a_hub = f"not a kachery hub: {url}/api/health did not answer as a hub does"
    try:
        # Unsigned, so that no sign-in (and no token) goes to a URL before it proves to be a hub;
        # over the HTTP client kachery_core uses for this URL (an injected one, in tests).
        response = _hub.anonymous_client(url).send("GET", "/api/health")
        body = response.json()
    except httpx2.InvalidURL as e:
        raise kc.InvalidArgumentError("hub_url", hub_url, str(e)) from None
    except kc.HubUnavailableError:
        raise
    except kc.HubError as e:
        raise kc.HubRequestError(url, f"not a kachery hub: {url}/api/health answered HTTP {e.status}",
                                 code="not_a_hub") from None
    except ValueError:
        raise kc.HubRequestError(url, not_a_hub, code="not_a_hub") from None
    if not isinstance(body, dict) or body.get("status") != "ok":
        raise kc.HubRequestError(url, not_a_hub, code="not_a_hub")
    return url


def notebook_name() -> str | None:
    """File name of the notebook this kernel runs, where the front end tells it."""
    path = os.environ.get("JPY_SESSION_NAME")  # set by jupyter_server for a notebook's kernel
    if not path and "IPython" in sys.modules:
        from IPython import get_ipython

        shell = get_ipython()
        path = shell.user_ns.get("__vsc_ipynb_file__") if shell is not None else None  # VS Code
    if not isinstance(path, str) or not path.strip():
        return None
    return os.path.basename(path.rstrip("/\\")) or None


def computer_label() -> str:
    """How the hub's confirm page names this kernel: ``user@host``, and the notebook where known."""
    label = _signin.default_label()
    name = notebook_name()
    return f"{label}, {name}"[:_signin.MAX_LABEL_LENGTH] if name else label


class LoginWidget(anywidget.AnyWidget):
    """Sign this computer in to a kachery hub from a notebook."""

    _esm = module("login.js")
    _css = stylesheet("login.css")

    state = traitlets.Unicode("checking").tag(sync=True)
    message = traitlets.Unicode("").tag(sync=True)
    hub_url = traitlets.Unicode("").tag(sync=True)
    registration_url = traitlets.Unicode("").tag(sync=True)
    email = traitlets.Unicode("").tag(sync=True)
    projects = traitlets.List(traitlets.Dict()).tag(sync=True)
    default_project = traitlets.Unicode("").tag(sync=True)
    #: how the hub's sign-in page names this computer
    client_label = traitlets.Unicode("").tag(sync=True)
    #: what the hub offers: ``{"oidc": {"name": ...} or None, "token": True}``; empty when it does not say
    sign_in_methods = traitlets.Dict().tag(sync=True)

    #: seconds between two questions to the hub while waiting for confirmation
    poll_interval = traitlets.Float(1.0)

    def __repr__(self) -> str:
        # The text a display falls back to where the panel cannot render (a saved notebook, VS Code).
        hub = self.hub_url or "no hub configured"
        if self.state == "signed_in" and self.email:
            return f"kachery sign-in: signed in to {hub} as {self.email}"
        return f"kachery sign-in: {hub}, {self.state.replace('_', ' ')}" + (f": {self.message}" if self.message else "")

    def __init__(self, hub_url: str | None = None, label: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client_label = label if label is not None else computer_label()
        self._cancel = threading.Event()
        self._poller: threading.Thread | None = None
        self.on_msg(self._on_msg)
        info = kc.get_client_info() if hub_url is None else None
        self.hub_url = hub_url or (info or {}).get("hub_url") or ""
        self.refresh()

    # -- state ---------------------------------------------------------------

    def refresh(self) -> None:
        """Ask the hub where this client stands and show it."""
        if not self.hub_url:
            self._show("no_hub")
            return
        self._show("checking")
        try:
            if self.hub_url != kc.get_hub_url():
                # A mistyped URL must not re-target the whole kernel: switch only once a hub answers there.
                self.hub_url = check_hub(self.hub_url)
            kc.use_hub(self.hub_url)
            info = kc.get_client_info()
            if info.get("hub_error"):
                self._show("unreachable", str(info["hub_error"]))
                return
            if info.get("signed_in"):
                self._show_signed_in(info)
                return
        except kc.KacheryError as e:  # also from a background thread: never let it escape
            self._show_error(e)
            return
        token = colab_secret_token()
        if token:
            self._use_token(token, source="the Colab secret KACHERY_HUB_TOKEN")
            return
        try:
            self.sign_in_methods = _signin.sign_in_methods(self.hub_url) or {}
        except kc.KacheryError:
            self.sign_in_methods = {}  # the panel then offers every way; the hub will say which works
        self._show("signed_out")

    def _show(self, state: str, message: str = "") -> None:
        with self.hold_sync():
            self.message = message
            self.state = state

    def _show_error(self, e: kc.KacheryError) -> None:
        self._show("unreachable" if isinstance(e, kc.HubUnavailableError) else "error", str(e))

    def _show_signed_in(self, info: dict[str, Any]) -> None:
        projects = [{"id": p["project_id"], "name": p.get("name", ""), "owner": p.get("owner_email", "")}
                    for p in kc.list_projects()]
        with self.hold_sync():
            self.email = (info.get("user") or {}).get("email", "")
            self.projects = projects
            self.default_project = info.get("default_project_id") or ""
            self.registration_url = ""
            self.message = ""
            self.state = "signed_in"

    # -- actions from the front end --------------------------------------------

    def _on_msg(self, _widget: Any, content: dict[str, Any], _buffers: Any) -> None:
        kind = content.get("type")
        try:
            if kind == "connect":
                self.hub_url = str(content.get("hub_url", "")).strip()
                self.refresh()
            elif kind == "retry":
                self.refresh()
            elif kind == "start":
                self.start_sign_in()
            elif kind == "cancel":
                self.cancel()
            elif kind == "token":
                self._use_token(str(content.get("token", "")), source="the token")
            elif kind == "sign_out":
                self.sign_out()
            elif kind == "set_project":
                kc.set_default_project(str(content.get("project_id", "")))
                self.refresh()
        except kc.KacheryError as e:
            self._show_error(e)

    def _use_token(self, token: str, *, source: str) -> None:
        try:
            kc.init(hub_url=self.hub_url, token=token)
        except kc.HubAuthError as e:
            self._show("refused", f"The hub did not accept {source}: {e}")
            return
        except kc.KacheryError as e:
            self._show_error(e)
            return
        self.refresh()

    def start_sign_in(self) -> None:
        """Get a registration link and wait in the background for its confirmation."""
        self.cancel()
        self._show("starting")
        request = kc.start_sign_in(hub_url=self.hub_url, label=self.client_label)
        with self.hold_sync():
            self.registration_url = request["url"]
            self.message = ""
            self.state = "waiting"
        self._cancel = threading.Event()
        self._poller = threading.Thread(
            target=self._poll, args=(request["id"], self._cancel), name="kachery-sign-in", daemon=True
        )
        self._poller.start()

    def _poll(self, registration_id: str, cancelled: threading.Event) -> None:
        while not cancelled.wait(self.poll_interval):
            try:
                status = kc.get_sign_in_status(registration_id, hub_url=self.hub_url)
            except kc.KacheryError as e:
                self._show_error(e)
                return
            if cancelled.is_set():
                return
            if status == "confirmed":
                self.refresh()
                return
            if status in ("expired", "refused"):
                self._show(status)
                return

    def cancel(self) -> None:
        """Stop waiting for a confirmation."""
        self._cancel.set()
        if self.state in ("starting", "waiting"):
            self._show("signed_out")

    def sign_out(self) -> None:
        kc.sign_out()
        with self.hold_sync():
            self.email = ""
            self.projects = []
            self.default_project = ""
            self.state = "signed_out"
            self.message = "Signed out. This computer's key is kept; sign in again at any time."

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background wait ends; returns whether it ended."""
        poller = self._poller
        if poller is None:
            return True
        poller.join(timeout)
        return not poller.is_alive()

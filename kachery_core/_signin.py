"""Signing in without a terminal: a notebook asks the hub, the user confirms in a browser.

:func:`start_sign_in` returns a one-time URL to open in any browser; the user
confirms there (with a browser session on the hub, or by entering a token) and
:func:`get_sign_in_status` turns ``"confirmed"``. Nothing needs the browser
window to talk back to the notebook, so it also works in Colab.
"""

from __future__ import annotations

import getpass
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote

from . import _hub
from .errors import HubAuthError, HubNotConfiguredError, HubNotFoundError, HubRequestError, InvalidArgumentError

if TYPE_CHECKING:
    import httpx2

SIGN_IN_STATUSES = ("pending", "confirmed", "refused", "expired")
#: the hub keeps at most this much of a sign-in request's label
MAX_LABEL_LENGTH = 200


def default_label() -> str:
    """``user@host``: how the hub's confirm page names this computer when nothing better is known."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        user = ""
    host = socket.gethostname() or "localhost"
    return f"{user}@{host}" if user else host


def use_hub(hub_url: str, *, http_client: httpx2.Client | None = None) -> str:
    """Use the hub at ``hub_url`` in this process without signing in; returns the normalized URL."""
    return _hub.choose(hub_url, None, http_client)


def sign_in_methods(hub_url: str | None = None) -> dict[str, Any] | None:
    """How the hub lets people sign in: ``{"oidc": {"name": "Google"} or None, "token": True}``.

    None from a hub too old to say. Asked unsigned: it needs no key, and no token goes with it.
    """
    url = _hub.normalize_url(hub_url) if hub_url else _hub.configured_url()
    if url is None:
        raise HubNotConfiguredError("asking how to sign in")
    client = _hub.anonymous_client(url)
    try:
        body = client.send("GET", "/api/sign-in-methods").json()
    except HubNotFoundError:
        return None
    except ValueError:
        raise HubRequestError(url, "the hub's answer to GET /api/sign-in-methods is not JSON") from None
    oidc = body.get("oidc") if isinstance(body, dict) else None
    name = oidc.get("name") if isinstance(oidc, dict) else None
    return {"oidc": {"name": name} if isinstance(name, str) and name else None,
            "token": bool(body.get("token", True)) if isinstance(body, dict) else True}


def _client(hub_url: str | None, what: str) -> _hub.HubClient:
    if hub_url:
        use_hub(hub_url)
    return _hub.connect_signed(what)


def start_sign_in(hub_url: str | None = None, label: str | None = None) -> dict[str, Any]:
    """Ask the hub for a sign-in link: ``{"id", "url", "expires_at"}``. Open ``url`` in a browser.

    ``label`` is how the sign-in page names this computer (default: ``user@host``).
    """
    if label is None:
        label = default_label()[:MAX_LABEL_LENGTH]
    if not isinstance(label, str) or len(label) > MAX_LABEL_LENGTH:
        raise InvalidArgumentError("label", label, f"expected text of at most {MAX_LABEL_LENGTH} characters")
    client = _client(hub_url, "signing in")
    request: dict[str, Any] = client.send("POST", "/api/sign-in-requests", json={"label": label}).json()
    return request


def get_sign_in_status(registration_id: str, hub_url: str | None = None) -> str:
    """``"pending"``, ``"confirmed"``, ``"refused"`` or ``"expired"``; once confirmed this client is signed in."""
    if not isinstance(registration_id, str) or not registration_id:
        raise InvalidArgumentError("registration_id", registration_id, "expected the id from start_sign_in()")
    client = _client(hub_url, "checking a sign-in")
    status = str(client.send("GET", f"/api/sign-in-requests/{quote(registration_id, safe='')}").json()["status"])
    if status == "confirmed":
        client.forget()
        _hub.save_url(client.url)
    return status


def wait_for_browser_sign_in(
    hub_url: str | None = None, *, label: str | None = None, poll_interval: float = 1.0, out: TextIO | None = None,
) -> None:
    """Print a sign-in link and return once it is confirmed in a browser (no Enter needed).

    Raises :class:`HubAuthError` when the sign-in is refused or the link expires.
    """
    stream = out if out is not None else sys.stdout
    request = start_sign_in(hub_url, label)
    print(f"To sign in this computer, open this link in a browser and confirm:\n    {request['url']}",
          file=stream, flush=True)
    while True:
        status = get_sign_in_status(str(request["id"]), hub_url)
        if status == "confirmed":
            info = _hub.get_client_info()
            print(f"Signed in as {info['user']['email']}.", file=stream, flush=True)
            return
        if status in ("refused", "expired"):
            raise HubAuthError(str(_hub.configured_url()), f"the sign-in was {status}; run init again for a new link",
                               code=f"sign_in_{status}")
        time.sleep(poll_interval)


def sign_out() -> None:
    """Unbind this computer's key from its user on the hub (the key itself is kept)."""
    client = _hub.connect_signed("signing out")
    try:
        client.send("DELETE", "/api/me")
    except HubAuthError as e:
        if e.code != "client_not_registered" and e.code not in _hub.TOKEN_REFUSALS:
            raise  # not signed in (a refused token signed nothing in): nothing to undo
    client.forget()
    _hub.forget_token()

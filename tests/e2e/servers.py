"""Real servers for end-to-end tests: JupyterLab, headless Chromium, a local OpenID provider.

Each runs as a real process on a free 127.0.0.1 port and is stopped by its PID when the
session ends. Import the fixtures you use into your test module::

    from e2e.servers import browser, jupyterlab, oidc_provider, page  # noqa: F401

Folder of one JupyterLab server (all Jupyter state stays inside it)::

    <tmp>/jupyterlab/
        root/        notebooks, the server's root_dir
        config/      JUPYTER_CONFIG_DIR (user settings: no news, no update checks, no windowing)
        data/        JUPYTER_DATA_DIR (kernelspecs made by JupyterLab.add_kernel)
        runtime/     JUPYTER_RUNTIME_DIR
        ipython/     IPYTHONDIR
        home/        HOME, so ~/.kachery-cloud of a kernel never is the real one
        server.log   stdout and stderr of the server and its kernels
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SCREENSHOTS = HERE / "screenshots"
OIDC_DIR = REPO / "tests" / "oidc"
CHROMIUM = Path(os.environ.get("KACHERY_TEST_CHROMIUM", "/usr/bin/chromium"))

# Flags measured to work for headless Chromium as root in a container.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Variables of the developer's own session that must never reach a test server or kernel.
_SCRUBBED_ENV_PREFIXES = ("KACHERY_", "JUPYTER", "IPYTHONDIR", "OIDC_TEST_")

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


# ---------------------------------------------------------------- processes


def free_port() -> int:
    """A loopback port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without kachery/Jupyter settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV_PREFIXES)}
    env.update(extra)
    return env


def _log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until_serving(
    url: str, proc: subprocess.Popen[bytes], log: Path, headers: Mapping[str, str] | None = None
) -> None:
    """Poll ``url`` until it answers 200; fail early with the log if the process died."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{_log_tail(log)}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=dict(headers or {})), timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {STARTUP_TIMEOUT_S:.0f} s:\n{_log_tail(log)}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process by PID, then SIGKILL what is left of its own process group.

    The group exists because every server here is started with ``start_new_session=True``;
    it catches kernels a server failed to shut down, and nothing else.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running(
    argv: Sequence[str], *, log: Path, env: Mapping[str, str], cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` with output to ``log``; stop it by PID on exit."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, start_new_session=True
        )
    try:
        yield proc
    finally:
        stop_process(proc)


# ---------------------------------------------------------------- JupyterLab


@dataclass(frozen=True)
class JupyterLab:
    """A running JupyterLab server. ``url`` ends with a slash."""

    url: str
    token: str
    root: Path
    data_dir: Path
    home: Path
    log: Path
    pid: int

    def lab_url(self, path: str) -> str:
        """URL opening ``path`` (relative to ``root``) in a fresh JupyterLab workspace."""
        # `reset` drops tabs restored from an earlier test's workspace.
        return f"{self.url}lab/tree/{path}?reset&token={self.token}"

    def set_theme(self, theme: str | None) -> None:
        """Make ``theme`` (e.g. "JupyterLab Dark") the theme of pages opened from now on; None: the default.

        Written to the user settings, as the Settings menu does; a page that is already open keeps its theme.
        """
        settings = self.root.parent / "config" / "lab" / "user-settings" / _THEME_SETTINGS
        if theme is None:
            settings.unlink(missing_ok=True)
        else:
            settings.parent.mkdir(parents=True, exist_ok=True)
            settings.write_text(json.dumps({"theme": theme}))

    def add_kernel(self, env: Mapping[str, str], name: str | None = None) -> str:
        """Make a Python kernelspec whose kernels get ``env``; returns its name.

        One server serves the whole session; this is how a test gives its kernels
        their own KACHERY_CLOUD_DIR, KACHERY_HUB_URL, and so on.
        """
        name = name or f"kachery-test-{secrets.token_hex(4)}"
        spec_dir = self.data_dir / "kernels" / name
        spec_dir.mkdir(parents=True, exist_ok=False)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": name,
            "language": "python",
            "env": dict(env),
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
        return name

    def write_notebook(self, path: str, cells: Sequence[str], kernel: str = "python3") -> Path:
        """Write a notebook of code cells (a cell starting with ``#md`` is markdown) under ``root``."""
        nb = {
            "cells": [_cell(source) for source in cells],
            "metadata": {
                "kernelspec": {"name": kernel, "display_name": kernel, "language": "python"},
                "language_info": {"name": "python"},
            },
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(nb, indent=1))
        return target


def _cell(source: str) -> dict[str, object]:
    cell_id = secrets.token_hex(4)
    if source.startswith("#md\n"):
        return {"cell_type": "markdown", "id": cell_id, "metadata": {}, "source": source.removeprefix("#md\n")}
    return {"cell_type": "code", "id": cell_id, "metadata": {}, "source": source, "outputs": [], "execution_count": None}


_THEME_SETTINGS = "@jupyterlab/apputils-extension/themes.jupyterlab-settings"

# User settings that keep JupyterLab quiet and deterministic in a test browser.
_LAB_SETTINGS: dict[str, dict[str, object]] = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    # Windowed notebooks drop off-screen cells from the DOM; tests address cells by index.
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def _prepare_lab_dirs(workdir: Path) -> dict[str, Path]:
    dirs = {name: workdir / name for name in ("root", "config", "data", "runtime", "ipython", "home")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    settings = dirs["config"] / "lab" / "user-settings"
    for rel, values in _LAB_SETTINGS.items():
        f = settings / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    return dirs


@contextlib.contextmanager
def start_jupyterlab(workdir: Path, env: Mapping[str, str] | None = None, *, app: str = "jupyterlab",
                     ) -> Iterator[JupyterLab]:
    """Run JupyterLab (or, with ``app="notebook"``, Notebook 7, built on the same components) with all its
    state in ``workdir``; ``env`` reaches the server and every kernel."""
    dirs = _prepare_lab_dirs(workdir)
    port, token = free_port(), secrets.token_hex(16)
    full_env = clean_env(
        HOME=str(dirs["home"]),
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        IPYTHONDIR=str(dirs["ipython"]),
        JUPYTER_PLATFORM_DIRS="1",
        **dict(env or {}),
    )
    lab = app == "jupyterlab"
    argv = [
        sys.executable, "-m", app,
        "--allow-root", "--no-browser",
        "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={dirs['root']}",
        *(["--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"] if lab else []),
        "--ServerApp.terminals_enabled=False",
        # window.jupyterapp lets helpers ask the notebook whether its kernel is connected.
        "--LabApp.expose_app_in_browser=True" if lab else "--JupyterNotebookApp.expose_app_in_browser=True",
    ]  # fmt: skip
    log = workdir / "server.log"
    with running(argv, log=log, env=full_env, cwd=dirs["root"]) as proc:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(f"{url}api/status", proc, log, headers={"Authorization": f"token {token}"})
        yield JupyterLab(url, token, dirs["root"], dirs["data"], dirs["home"], log, proc.pid)


@pytest.fixture(scope="session")
def jupyterlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    """One JupyterLab for the session; give kernels their own env with ``add_kernel``."""
    with start_jupyterlab(tmp_path_factory.mktemp("jupyterlab")) as lab:
        yield lab


#: The themes a widget is checked in, by the names JupyterLab's settings know them by.
THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}


@pytest.fixture
def themed_lab(jupyterlab: JupyterLab, request: pytest.FixtureRequest) -> Iterator[JupyterLab]:
    """The session's JupyterLab, pages opening in the theme of THEMES that the test's
    ``@pytest.mark.parametrize("themed_lab", list(THEMES), indirect=True)`` names."""
    jupyterlab.set_theme(THEMES[request.param])
    try:
        yield jupyterlab
    finally:
        jupyterlab.set_theme(None)  # the next test's pages open in the default theme


# ---------------------------------------------------------------- Chromium


def require_chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (bash dev.sh test installs it with apt-get as root)")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium through playwright's sync API, for the whole session."""
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(executable), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh browser context (own cookies, own storage) for one test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(target: Page | Locator, name: str) -> Path:
    """Save a PNG of a page or one element as ``tests/e2e/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    target.screenshot(path=str(path))
    return path



# ---------------------------------------------------------------- OpenID Connect provider


@dataclass(frozen=True)
class TestAccount:
    """A user the local provider knows; the dev login form accepts ``email`` or ``sub``."""

    __test__ = False  # not a pytest test class despite the name

    sub: str
    email: str
    email_verified: bool = True
    name: str = ""

    def as_json(self) -> dict[str, object]:
        d: dict[str, object] = {"sub": self.sub, "email": self.email, "email_verified": self.email_verified}
        if self.name:
            d["name"] = self.name
        return d


DEFAULT_ACCOUNTS = (
    TestAccount("alice-0001", "alice@example.org", name="Alice Example"),
    TestAccount("bob-0002", "bob@example.org", name="Bob Example"),
    # For tests of refusing an address the provider has not verified.
    TestAccount("mallory-0003", "mallory@example.org", email_verified=False),
)


@dataclass(frozen=True)
class OidcClient:
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    token_endpoint_auth_method: str


@dataclass(frozen=True)
class OidcProvider:
    """A running npm ``oidc-provider``: PKCE required, dev login + consent forms."""

    issuer: str
    client: OidcClient
    accounts: tuple[TestAccount, ...]
    log: Path
    pid: int

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def metadata(self) -> dict[str, object]:
        with urllib.request.urlopen(self.discovery_url, timeout=5) as r:
            return dict(json.load(r))

    def register_client(
        self, redirect_uris: Sequence[str], token_endpoint_auth_method: str = "client_secret_basic"
    ) -> OidcClient:
        """Add a client by dynamic registration (RFC 7591), for redirect URIs known only now."""
        body = {
            "redirect_uris": list(redirect_uris),
            "response_types": ["code"],
            "grant_types": ["authorization_code"],
            "token_endpoint_auth_method": token_endpoint_auth_method,
        }
        req = urllib.request.Request(
            f"{self.issuer}/reg", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            got = json.load(r)
        return OidcClient(
            got["client_id"], got.get("client_secret", ""), tuple(got["redirect_uris"]), token_endpoint_auth_method
        )


def provider_form(page: str, email: str) -> tuple[str, dict[str, str]]:
    """The action and fields of the provider's login or consent form on ``page``, filled in as a person
    would (``email``, any password): what a browser without scripts posts back."""
    import html
    import re

    form = re.search(r'<form\b[^>]*action="([^"]+)"[^>]*>(.*?)</form>', page, re.S)
    assert form, page[:3000]
    fields = {}
    for tag in re.findall(r"<input\b[^>]*>", form.group(2)):
        name = re.search(r'\bname="([^"]*)"', tag)
        value = re.search(r'\bvalue="([^"]*)"', tag)
        if name:
            fields[html.unescape(name.group(1))] = html.unescape(value.group(1)) if value else ""
    if fields.get("prompt") == "login":
        fields.update(login=email, password="any password")
    return html.unescape(form.group(1)), fields


def require_oidc_provider() -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH; the OpenID provider for sign-in tests runs on Node")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.skip(f"oidc-provider is not installed: run `npm ci` in {OIDC_DIR} (bash dev.sh test does)")


@contextlib.contextmanager
def start_oidc_provider(
    workdir: Path,
    redirect_uris: Sequence[str],
    *,
    accounts: Sequence[TestAccount] = DEFAULT_ACCOUNTS,
    client_id: str = "kachery-test-client",
    client_secret: str | None = None,
    token_endpoint_auth_method: str = "client_secret_basic",
    id_token_ttl_s: int = 3600,
) -> Iterator[OidcProvider]:
    """Run ``tests/oidc/provider.mjs`` with one static client registered for ``redirect_uris``."""
    require_oidc_provider()
    port = free_port()
    secret = client_secret if client_secret is not None else secrets.token_urlsafe(24)
    # "--name=value": a value may start with "-" (a random secret can), which node's parseArgs
    # would otherwise take for an option.
    options = {
        "port": str(port),
        "client-id": client_id,
        "client-secret": secret,
        "token-auth-method": token_endpoint_auth_method,
        "accounts": json.dumps([a.as_json() for a in accounts]),
        "id-token-ttl": str(id_token_ttl_s),
    }
    argv = ["node", str(OIDC_DIR / "provider.mjs"), *(f"--{k}={v}" for k, v in options.items())]
    argv += [f"--redirect-uri={uri}" for uri in redirect_uris]
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "oidc-provider.log"
    with running(argv, log=log, env=clean_env(), cwd=OIDC_DIR) as proc:
        issuer = f"http://127.0.0.1:{port}"
        wait_until_serving(f"{issuer}/.well-known/openid-configuration", proc, log)
        client = OidcClient(client_id, secret, tuple(redirect_uris), token_endpoint_auth_method)
        yield OidcProvider(issuer, client, tuple(accounts), log, proc.pid)


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """One provider for the session with the DEFAULT_ACCOUNTS.

    Its static client points at a placeholder redirect URI; a test that runs its own
    receiver (a hub, a small http.server) registers a client for it with ``register_client``.
    """
    placeholder = f"http://127.0.0.1:{free_port()}/callback"
    with start_oidc_provider(tmp_path_factory.mktemp("oidc"), [placeholder]) as provider:
        yield provider

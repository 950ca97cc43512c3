"""Signing in from a browser: sessions, and sign-in requests a notebook confirms there.

A browser gets a session by opening ``/?token=...`` (the URL ``kachery-hub
serve`` prints) and confirming there ("Sign in to this hub as X?": a form
posted to ``/``, so that a link alone never signs a browser in as someone
else), by entering a token on a sign-in page, or through OpenID Connect. A
session opened with a token ends when that token is revoked and lasts no
longer than the token. ``POST /sign-out`` ends the session; a sign-in page
shown to a signed-in browser offers it ("Not X?"), then comes back to the
same page to sign in with another token or account.

A notebook that cannot run a terminal asks the hub for a sign-in request
(``POST /api/sign-in-requests``, signed by its key), opens the returned URL in
a browser, and polls its status until the user confirms or refuses there. Confirming binds the notebook's key
to the browser's user, exactly as presenting a token would.

The request ID is an unguessable capability and only its hash is stored, like
tokens and sessions. Pages are HTML with every value escaped; forms are posted
same-origin, carry a CSRF token that must match a cookie of this browser (a
double-submit check) and an ``Origin`` of this hub when the browser sends one
(the origin it was reached at, or that of one of its public URLs: behind a TLS
proxy the hub's own base URL is http://...), with a body of at most :data:`MAX_FORM_BYTES`. The session cookie is
``HttpOnly``, ``SameSite=Lax`` (the browser comes back from the identity
provider by a top-level redirect) and ``Secure`` under https. Pages send only
their origin as ``Referer`` (``strict-origin``: the path and query of
``/?token=...`` travel nowhere, yet form posts keep a real ``Origin``, which
``no-referrer`` would turn into ``null``), are never cached and cannot be framed.

With an OpenID Connect provider configured (Google by default), a browser
without a session is sent there first (``/auth/login``), and comes back to
``/auth/callback``: the code is exchanged with its PKCE verifier and the
id_token verified (:mod:`._oidc`); the user is found by issuer + subject, or by
the verified email, so a token user and a Google user with the same email are
one account.

Under a path prefix (a reverse proxy serving the hub at
``https://lab.example.org/kachery/``) every form action, link, redirect, cookie
path and the callback URL carry the prefix (:func:`._pages.site_root`); a
``next`` place to return to is a path of the hub below it, so no redirect
leaves it. Cookies are ``Secure`` when the browser's scheme is https: the
hub's own, or ``X-Forwarded-Proto`` from a trusted proxy only (``serve
--trusted-proxies``), as is the scheme of the callback URL.
"""

from __future__ import annotations

import hashlib
import html
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field
from sqlalchemy import delete, insert, select, update
from starlette.concurrency import run_in_threadpool

from . import _database as tables
from ._accounts import TokenUse, bind_client, check_token, ensure_user, use_token
from ._auth import Caller, caller, read_body
from ._database import Database
from ._state import HubState, hub_state, state_of
from ._pages import (connect_notebook, error_page, home_sections, page, project_page, sign_out_computer,
                     site_root, site_url, user_computers, user_projects)
from ._text import Line
from ._oidc import LOGIN_SECONDS, LoginAttempt, OidcProvider, VerifiedIdentity
from ._settings import GOOGLE_ISSUER
from .errors import Forbidden, HubError, InvalidInput, InvalidToken, NotFound

SESSION_COOKIE = "kachery_hub_session"
CSRF_COOKIE = "kachery_hub_csrf"
LOGIN_COOKIE = "kachery_hub_login"
MAX_LABEL_LENGTH = 200
SESSION_SECONDS = 30 * 24 * 3600
REQUEST_SECONDS = 15 * 60
#: a sign-in form holds a CSRF value, a token and a button: far less than this
MAX_FORM_BYTES = 16 * 1024

router = APIRouter(tags=["sign-in"])


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


_page = page  # every page has the hub's layout and stylesheet (see ._pages)


@dataclass(frozen=True)
class Session:
    """A browser's live session: who, and the token that opened it (None after an OpenID sign-in)."""

    user_id: str
    email: str
    token_id: str | None


def _new_session(db: Database, user_id: str, token: TokenUse | None = None, previous: str | None = None) -> str:
    """A new session secret; the browser's ``previous`` session, if any, ends."""
    secret = secrets.token_urlsafe(32)
    now = time.time()
    expires_at = now + SESSION_SECONDS
    if token is not None and token.expires_at is not None:
        expires_at = min(expires_at, token.expires_at)  # no longer than the token that opened it
    with db.begin() as conn:
        conn.execute(delete(tables.sessions).where(tables.sessions.c.expires_at < now))
        if previous:
            conn.execute(delete(tables.sessions).where(tables.sessions.c.session_hash == _hash(previous)))
        conn.execute(insert(tables.sessions).values(
            session_hash=_hash(secret), user_id=user_id, created_at=now, expires_at=expires_at,
            token_id=token.token_id if token is not None else None))
    return secret


def _end_session(db: Database, secret: str) -> None:
    with db.begin() as conn:
        conn.execute(delete(tables.sessions).where(tables.sessions.c.session_hash == _hash(secret)))


def _session_user(db: Database, request: Request) -> Session | None:
    """The browser's session, if it has a live one."""
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        return None
    with db.begin() as conn:
        row = conn.execute(
            select(tables.users.c.id, tables.users.c.email, tables.sessions.c.token_id)
            .join(tables.sessions, tables.sessions.c.user_id == tables.users.c.id)
            .where(tables.sessions.c.session_hash == _hash(secret), tables.sessions.c.expires_at > time.time())
        ).first()
    return Session(str(row.id), str(row.email), row.token_id) if row is not None else None


def _token_user(db: Database, token: str, *, use: bool = False) -> tuple[TokenUse, str]:
    """What ``token`` signs in as and its user's email; ``use`` records that it was used."""
    with db.begin() as conn:
        found = use_token(conn, token) if use else check_token(conn, token)
        email = conn.execute(select(tables.users.c.email).where(tables.users.c.id == found.user_id)).scalar_one()
    return found, str(email)


def _set_cookie(response: HTMLResponse | RedirectResponse, request: Request, name: str, value: str,
                max_age: int) -> None:
    # The scheme is https only as the browser's own, or from a trusted proxy's X-Forwarded-Proto (serve).
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax",
                        secure=request.url.scheme == "https", path=_cookie_path(request))


def _cookie_path(request: Request) -> str:
    """Cookies belong to the hub's pages only: under a prefix, not to the other sites on its host."""
    return site_root(request) or "/"


def _redirect(request: Request, path: str) -> RedirectResponse:
    """A 303 to ``path`` (a path of the hub, checked by :func:`_safe_next` where it came from outside)."""
    return RedirectResponse(site_root(request) + path, status_code=303)


def _set_session(response: HTMLResponse | RedirectResponse, request: Request, secret: str) -> None:
    _set_cookie(response, request, SESSION_COOKIE, secret, SESSION_SECONDS)


def _csrf_field(request: Request) -> tuple[str, str]:
    """This browser's CSRF value (reused from its cookie, else new) and the hidden form field carrying it."""
    value = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    return value, f'<input type="hidden" name="csrf" value="{html.escape(value)}">'


def _check_csrf(request: Request, form: dict[str, list[str]]) -> None:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = form.get("csrf", [""])[0]
    if not cookie or not sent or not secrets.compare_digest(cookie.encode(), sent.encode()):
        raise Forbidden("the form's CSRF token is missing or does not match this browser; reload the page and try again")


def _origin(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}".lower()


def _own_origins(request: Request) -> set[str]:
    """Where this hub's pages are: as reached (``base_url``) and its public URLs (Settings normalized them)."""
    return {_origin(str(request.base_url)), *(_origin(u) for u in state_of(request).settings.public_urls)}


async def _read_form(request: Request) -> dict[str, list[str]]:
    """A posted form of this hub's pages, its CSRF value and origin checked; bytes counted as they arrive."""
    origin = request.headers.get("origin")
    if origin is not None and _origin(origin) not in _own_origins(request):
        raise Forbidden("this hub's forms are accepted from its own pages only")
    body = await read_body(request, MAX_FORM_BYTES, "a sign-in form")
    try:
        form = parse_qs(body.decode("ascii"), max_num_fields=20, errors="strict")
    except (UnicodeError, ValueError):
        raise InvalidInput("the form is not valid (expected a form of this hub's pages)") from None
    _check_csrf(request, form)
    return form


def _field(form: dict[str, list[str]], name: str) -> str:
    return form.get(name, [""])[0]


def _form_error(title: str, e: HubError, request: Request) -> HTMLResponse:
    return error_page(title, e.message, e.status, root=site_root(request))


# ---------------------------------------------------------------- sign-in requests


def _create_request(db: Database, client_id: str, label: str | None) -> tuple[str, float]:
    rid = secrets.token_urlsafe(24)
    now = time.time()
    with db.begin() as conn:
        # Finished or expired requests are kept a day, so a late poll still gets a clear answer.
        conn.execute(delete(tables.sign_in_requests).where(tables.sign_in_requests.c.expires_at < now - 86400))
        conn.execute(insert(tables.sign_in_requests).values(
            id_hash=_hash(rid), client_id=client_id, status="pending", user_id=None,
            created_at=now, expires_at=now + REQUEST_SECONDS, label=label))
    return rid, now + REQUEST_SECONDS


def _load_request(db: Database, rid: str) -> Any:
    with db.begin() as conn:
        row = conn.execute(select(tables.sign_in_requests).where(tables.sign_in_requests.c.id_hash == _hash(rid))).first()
    if row is None:
        raise NotFound("no such sign-in request")
    return row


def _status(row: Any) -> str:
    if row.status == "pending" and row.expires_at < time.time():
        return "expired"
    return str(row.status)


def _decide(db: Database, rid: str, user_id: str | None, confirm: bool, token_id: str | None = None) -> str:
    """Confirm or refuse a pending request; returns the resulting status."""
    with db.begin() as conn:
        row = conn.execute(select(tables.sign_in_requests).where(tables.sign_in_requests.c.id_hash == _hash(rid))).first()
        if row is None:
            raise NotFound("no such sign-in request")
        if _status(row) != "pending":
            return _status(row)
        status = "confirmed" if confirm else "refused"
        conn.execute(update(tables.sign_in_requests).where(tables.sign_in_requests.c.id_hash == _hash(rid))
                     .values(status=status, user_id=user_id))
        if confirm:
            assert user_id is not None
            bind_client(conn, row.client_id, user_id, row.label or "signed in from a browser", token_id)
    return status


class SignInRequestBody(BaseModel):
    label: Line | None = Field(None, max_length=MAX_LABEL_LENGTH,
                              description="how the sign-in page names this computer, e.g. 'ada@lab-pc, analysis.ipynb'")


@router.post("/api/sign-in-requests", summary="Start a browser sign-in for the signing client")
async def post_sign_in_request(request: Request, body: SignInRequestBody | None = None, who: Caller = Depends(caller),
                               hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    label = body.label if body is not None else None
    rid, expires_at = await run_in_threadpool(_create_request, hub.db, who.require_client(), label)
    return {"id": rid, "url": f"{site_url(request)}/sign-in/{rid}", "expires_at": expires_at}


@router.get("/api/sign-in-requests/{rid}", summary="Status of a sign-in request: pending, confirmed, refused or expired")
async def get_sign_in_request(rid: str, who: Caller = Depends(caller), hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    client_id = who.require_client()
    row = await run_in_threadpool(_load_request, hub.db, rid)
    if row.client_id != client_id:
        raise NotFound("no such sign-in request")  # the same answer as for an unknown ID
    return {"status": _status(row)}


# ---------------------------------------------------------------- pages


def _instructions(base: str, token: str) -> str:
    b, t = html.escape(base), html.escape(token or "<token>")
    return f"""<h2>Sign in a script or a terminal</h2>
<p>With a sign-in token, run this in Python on the computer:</p>
<pre>import kachery_core as kc
kc.init(hub_url="{b}", token="{t}")</pre>
<p>or set <code>KACHERY_HUB_URL={b}</code> and <code>KACHERY_HUB_TOKEN={t}</code>.
The API is described at <a href="{b}/docs">{b}/docs</a>.</p>"""


def _token_form(csrf_field: str, hub: HubState, root: str) -> str:
    """The signed-out home's way in: a token typed here (posted to "/", like a confirmed link), or the provider."""
    r = html.escape(root)
    other = ""
    if hub.oidc is not None:
        other = f'<p>Or <a href="{r}/auth/login?next=/">sign in with {html.escape(_provider_name(hub.oidc))}</a>.</p>'
    return f"""<p>This browser is not signed in.</p>
<form method="post" action="{r}/">{csrf_field}<label for="token">Sign-in token</label>
<input id="token" name="token" type="password" size="50" autocomplete="off">
<p class="muted">From <code>kachery-hub token create</code>, whoever runs this hub, or the link
<code>kachery-hub serve</code> printed.</p>
<button class="primary" name="action" value="confirm">Sign in</button></form>{other}"""


@router.get("/", include_in_schema=False)
async def home(request: Request, hub: HubState = Depends(hub_state)) -> HTMLResponse:
    base, root = site_url(request), site_root(request)
    token = request.query_params.get("token", "").strip()
    session = await run_in_threadpool(_session_user, hub.db, request)
    csrf, csrf_field = _csrf_field(request)
    if not token:
        if session is None:
            body = _token_form(csrf_field, hub, root) + connect_notebook(base) + _instructions(base, "")
        else:
            projects = await run_in_threadpool(user_projects, hub.db, session.user_id)
            computers = await run_in_threadpool(user_computers, hub.db, session.user_id)
            body = (f"<p>This browser is signed in as <b>{html.escape(session.email)}</b>.</p>"
                    + _sign_out_form(csrf_field, root, "/", "Sign out")
                    + home_sections(projects, computers, csrf_field, root) + connect_notebook(base)
                    + _instructions(base, ""))
        response = _page("kachery hub", body, root=root)
    else:
        try:
            _, email = await run_in_threadpool(_token_user, hub.db, token)
        except InvalidToken as e:
            return _page("kachery hub", f'<p class="error">{html.escape(e.message)}</p>' + _instructions(base, ""), e.status,
                         root=root)
        # Opening a link must not sign a browser in: someone else's link would make this browser
        # act as them (login CSRF). The person confirms with a same-origin form; the token goes in
        # its body, to "/", so that it is not written into one more URL.
        now = (f"<p>This browser is signed in as <b>{html.escape(session.email)}</b> now.</p>"
               if session is not None else "")
        confirm = f"""<p>Sign in to this hub as <b>{html.escape(email)}</b>?</p>{now}
<p>Only continue if you opened this link yourself, from the hub's own output or from someone you trust:
a link from anyone else would make this browser act as them.</p>
<form method="post" action="{html.escape(root)}/">{csrf_field}<input type="hidden" name="token" value="{html.escape(token)}">
<button class="primary" name="action" value="confirm">Sign in</button> <a href="{html.escape(root)}/">Cancel</a></form>"""
        response = _page("kachery hub", confirm + _instructions(base, token), root=root)
    _set_cookie(response, request, CSRF_COOKIE, csrf, REQUEST_SECONDS)
    return response


@router.post("/", include_in_schema=False, response_model=None)
async def home_sign_in(request: Request, hub: HubState = Depends(hub_state)) -> HTMLResponse | RedirectResponse:
    try:
        form = await _read_form(request)
        if _field(form, "action") != "confirm":
            raise InvalidInput("press Sign in to sign this browser in")
        found, _ = await run_in_threadpool(lambda: _token_user(hub.db, _field(form, "token").strip(), use=True))
        secret = await run_in_threadpool(_new_session, hub.db, found.user_id, found, request.cookies.get(SESSION_COOKIE))
    except HubError as e:
        return _form_error("kachery hub", e, request)
    response = _redirect(request, "/")  # the address bar and history keep no token
    _set_session(response, request, secret)
    return response


@router.post("/sign-out", include_in_schema=False, response_model=None)
async def sign_out(request: Request, hub: HubState = Depends(hub_state)) -> HTMLResponse | RedirectResponse:
    """End this browser's session, then go back where it was (a sign-in page: to choose who signs in)."""
    try:
        form = await _read_form(request)
    except HubError as e:
        return _form_error("Sign out", e, request)
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        await run_in_threadpool(_end_session, hub.db, secret)
    target = _safe_next(_field(form, "next") or "/")
    if target.startswith("/sign-in/"):
        target = target.split("?", 1)[0] + "?with=token"  # show the choices, not the provider straight away
    response = _redirect(request, target)
    response.delete_cookie(SESSION_COOKIE, path=_cookie_path(request))
    return response


@router.get("/projects/{project_id}", include_in_schema=False)
async def project(project_id: str, request: Request, hub: HubState = Depends(hub_state)) -> HTMLResponse:
    """A project's members and a page of its files, read-only, for this browser's user."""
    root = site_root(request)
    session = await run_in_threadpool(_session_user, hub.db, request)
    if session is None:
        return error_page("Project", "Sign this browser in first (on the hub's home page) to see projects.", 401,
                          root=root)
    who = Caller(user_id=session.user_id, email=session.email)
    after = request.query_params.get("after")
    try:
        title, body = await run_in_threadpool(project_page, hub.db, who, project_id, after, root)
    except HubError as e:
        return error_page("Project", e.message, e.status, root=root)
    return _page(title, body, root=root)


@router.post("/computers/sign-out", include_in_schema=False, response_model=None)
async def computer_sign_out(request: Request, hub: HubState = Depends(hub_state)) -> HTMLResponse | RedirectResponse:
    """Sign out one of this browser's user's computers (from the home page's list)."""
    try:
        form = await _read_form(request)
        session = await run_in_threadpool(_session_user, hub.db, request)
        if session is None:
            return error_page("Sign out a computer", "This browser is not signed in; sign in first.", 401,
                              root=site_root(request))
        await run_in_threadpool(sign_out_computer, hub.db, session.user_id, _field(form, "client_id"))
    except HubError as e:
        return _form_error("Sign out a computer", e, request)
    return _redirect(request, "/")


_STATUS_TEXT = {
    "confirmed": "This sign-in was confirmed. You can close this window and go back to your notebook.",
    "refused": "This sign-in was refused. Nothing was changed.",
    "expired": "This sign-in link has expired. Start again from your notebook.",
}


def _who_asks(row: Any) -> str:
    client = html.escape(row.client_id[:16])
    if row.label:
        # <bdi>: right-to-left override characters in a label cannot reorder the rest of the page.
        return f"<b><bdi>{html.escape(row.label)}</bdi></b> (client <code>{client}…</code>)"
    return f"a notebook (client <code>{client}…</code>)"


def _sign_out_form(csrf_field: str, root: str, next_path: str, button: str, before: str = "") -> str:
    """Sign out, then back to ``next_path`` (a path of the hub, below ``root``)."""
    return (f'<form method="post" action="{html.escape(root)}/sign-out">{csrf_field}'
            f'<input type="hidden" name="next" value="{html.escape(next_path)}">'
            f"<p>{before}<button>{html.escape(button)}</button></p></form>")


def _provider_name(provider: OidcProvider) -> str:
    """"Google", or the provider's host name: what a sign-in button shows, and no more of its URL."""
    if provider.config.issuer == GOOGLE_ISSUER:
        return "Google"
    return urlsplit(provider.config.issuer).hostname or "your identity provider"


@router.get("/api/sign-in-methods", summary="How one can sign in here: an identity provider (named), tokens")
async def get_sign_in_methods(hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    # Anonymous and the same for every caller: what the sign-in pages show anyway, so that a
    # notebook's panel offers "Sign in with Google" only where that works.
    oidc = {"name": _provider_name(hub.oidc)} if hub.oidc is not None else None
    return {"oidc": oidc, "token": True}


@router.get("/sign-in/{rid}", include_in_schema=False, response_model=None)
async def sign_in_page(rid: str, request: Request, hub: HubState = Depends(hub_state)) -> HTMLResponse | RedirectResponse:
    root = site_root(request)
    try:
        row = await run_in_threadpool(_load_request, hub.db, rid)
    except NotFound:
        return _page("Sign in", '<p class="error">This sign-in link is not valid.</p>', 404, root=root)
    status = _status(row)
    if status != "pending":
        return _page("Sign in", f"<p>{_STATUS_TEXT[status]}</p>", 200 if status == "confirmed" else 410, root=root)
    here = f"/sign-in/{quote(rid, safe='')}"  # a path of the hub: links and forms put it below root
    session = await run_in_threadpool(_session_user, hub.db, request)
    if session is None and hub.oidc is not None and request.query_params.get("with") != "token":
        return _redirect(request, f"/auth/login?next={here}")
    who = _who_asks(row)
    csrf, csrf_field = _csrf_field(request)
    other = ""
    if session is not None:
        email = html.escape(session.email)
        ask = f"<p>{who[0].upper() + who[1:]} asks to act as <b>{email}</b>.</p>"
        fields = ""
        # The browser may be signed in as someone else than the person at it (an admin's browser):
        # they sign it out and come back here to sign in with their own token or account.
        other = _sign_out_form(csrf_field, root, here, "Use another token or account", f"Not {email}? ")
    else:
        ask = (f"<p>{who[0].upper() + who[1:]} asks to sign in. "
               "Enter a sign-in token (from <code>kachery-hub token create</code> or whoever runs this hub):</p>")
        fields = ('<label for="token">Sign-in token</label>'
                  '<input id="token" name="token" type="password" size="50" autocomplete="off" autofocus>')
        if hub.oidc is not None:
            # account=choose: the provider asks which account, rather than reusing the one it knows.
            other = (f'<p>Or <a href="{html.escape(root)}/auth/login?next={html.escape(here)}&amp;account=choose">sign in with '
                     f"{html.escape(_provider_name(hub.oidc))}</a>.</p>")
    form = f"""<form method="post" action="{html.escape(root + here)}">{csrf_field}{fields}
<p>Only confirm if you started this sign-in yourself.</p>
<button class="primary" name="action" value="confirm">Confirm</button> <button name="action" value="refuse">Refuse</button></form>"""
    response = _page("Sign in", ask + form + other, root=root)
    _set_cookie(response, request, CSRF_COOKIE, csrf, REQUEST_SECONDS)
    return response


@router.post("/sign-in/{rid}", include_in_schema=False)
async def sign_in_decision(rid: str, request: Request, hub: HubState = Depends(hub_state)) -> HTMLResponse:
    root = site_root(request)
    new_session = None
    try:
        form = await _read_form(request)
        action = _field(form, "action")
        token = _field(form, "token").strip()
        if action not in ("confirm", "refuse"):
            return _page("Sign in", '<p class="error">Choose Confirm or Refuse.</p>', 400, root=root)
        token_id: str | None
        if token:
            found, _ = await run_in_threadpool(lambda: _token_user(hub.db, token, use=True))
            user_id, token_id = found.user_id, found.token_id
            new_session = await run_in_threadpool(
                _new_session, hub.db, found.user_id, found, request.cookies.get(SESSION_COOKIE))
        else:
            session = await run_in_threadpool(_session_user, hub.db, request)
            if session is None:
                return _page("Sign in", '<p class="error">Enter a sign-in token first.</p>', 401, root=root)
            user_id, token_id = session.user_id, session.token_id
        status = await run_in_threadpool(_decide, hub.db, rid, user_id, action == "confirm", token_id)
    except HubError as e:
        return _form_error("Sign in", e, request)
    response = _page("Sign in", f"<p>{_STATUS_TEXT[status]}</p>", root=root)
    if new_session is not None:
        _set_session(response, request, new_session)
    return response


# ---------------------------------------------------------------- OpenID Connect


def _safe_next(path: str) -> str:
    """Only this hub's own pages are places to return to (no open redirect): a path of the hub, which
    redirects put below its prefix. No ``//host``, backslash or control character, and no dot segment,
    percent-encoded or not: a browser resolves ``/kachery/%2e%2e/x`` to ``/x``, out of the prefix."""
    if (path.startswith("/") and not path.startswith("//") and "\\" not in path and path.isprintable()
            and not any(segment in (".", "..") for segment in unquote(urlsplit(path).path).split("/"))):
        return path
    return "/"


def _save_login(db: Database, attempt: LoginAttempt, browser: str, next_path: str) -> None:
    now = time.time()
    with db.begin() as conn:
        conn.execute(delete(tables.oidc_logins).where(tables.oidc_logins.c.expires_at < now))
        conn.execute(insert(tables.oidc_logins).values(
            state_hash=_hash(attempt.state), browser_hash=_hash(browser), nonce=attempt.nonce,
            code_verifier=attempt.code_verifier, next_path=next_path, created_at=now, expires_at=now + LOGIN_SECONDS))


def _take_login(db: Database, state: str) -> Any:
    """The login attempt of ``state``, removed so that it is used once; None if unknown or expired."""
    with db.begin() as conn:
        row = conn.execute(select(tables.oidc_logins).where(tables.oidc_logins.c.state_hash == _hash(state))).first()
        if row is not None:
            conn.execute(delete(tables.oidc_logins).where(tables.oidc_logins.c.state_hash == _hash(state)))
    if row is None or row.expires_at < time.time():
        return None
    return row


def _user_of_identity(db: Database, identity: VerifiedIdentity, admin_emails: tuple[str, ...]) -> str:
    """The user signed in through ``identity``; linked by verified email to an existing account."""
    with db.begin() as conn:
        row = conn.execute(select(tables.identities.c.user_id).where(
            tables.identities.c.provider == identity.issuer, tables.identities.c.subject == identity.subject)).first()
        if row is not None:
            user_id = str(row.user_id)
        else:
            user_id = ensure_user(conn, identity.email)
            conn.execute(insert(tables.identities).values(
                provider=identity.issuer, subject=identity.subject, user_id=user_id, created_at=time.time()))
        conn.execute(update(tables.users).where(tables.users.c.id == user_id).values(email_verified=True))
        if identity.email in admin_emails:
            conn.execute(update(tables.users).where(tables.users.c.id == user_id).values(is_admin=True))
    return user_id


def _refuse_sign_in_request(db: Database, next_path: str) -> None:
    """The user said no at the provider: a notebook waiting on this sign-in hears "refused"."""
    if next_path.startswith("/sign-in/"):
        try:
            _decide(db, next_path.removeprefix("/sign-in/"), None, confirm=False)
        except NotFound:
            pass


def _callback_url(request: Request) -> str:
    """Where the provider sends the browser back: https only as the browser's scheme (see :func:`_set_cookie`)."""
    return site_url(request) + "/auth/callback"


def _provider(hub: HubState) -> OidcProvider:
    if hub.oidc is None:
        raise NotFound("sign-in with an identity provider is not configured on this hub")
    return hub.oidc


@router.get("/auth/login", include_in_schema=False)
async def oidc_login(request: Request, hub: HubState = Depends(hub_state)) -> RedirectResponse:
    provider = _provider(hub)
    next_path = _safe_next(request.query_params.get("next", "/"))
    choose = request.query_params.get("account") == "choose"
    url, attempt = await run_in_threadpool(lambda: provider.begin(_callback_url(request), choose_account=choose))
    browser = secrets.token_urlsafe(24)
    await run_in_threadpool(_save_login, hub.db, attempt, browser, next_path)
    response = RedirectResponse(url, status_code=303)
    _set_cookie(response, request, LOGIN_COOKIE, browser, LOGIN_SECONDS)
    return response


@router.get("/auth/callback", include_in_schema=False, response_model=None)
async def oidc_callback(request: Request, hub: HubState = Depends(hub_state)) -> HTMLResponse | RedirectResponse:
    provider = _provider(hub)
    root = site_root(request)
    params = request.query_params
    login = await run_in_threadpool(_take_login, hub.db, params.get("state", ""))
    if login is None:
        return _page("Sign-in failed", "<p class=\"error\">This sign-in attempt is unknown, was already used, or has expired "
                     "(its <code>state</code> does not match). Start again from your notebook.</p>", 400, root=root)
    if not secrets.compare_digest(login.browser_hash, _hash(request.cookies.get(LOGIN_COOKIE, ""))):
        return _page("Sign-in failed", '<p class="error">This sign-in was started in another browser.</p>', 400,
                     root=root)
    if "error" in params:
        await run_in_threadpool(_refuse_sign_in_request, hub.db, login.next_path)
        reason = params.get("error_description") or params["error"]
        return _page("Sign-in refused", f"<p class=\"error\">The identity provider did not sign you in: {html.escape(reason)}.</p>", 403,
                     root=root)
    attempt = LoginAttempt(state=params["state"], nonce=login.nonce, code_verifier=login.code_verifier)
    try:
        identity = await run_in_threadpool(provider.finish, params.get("code", ""), attempt, _callback_url(request))
        user_id = await run_in_threadpool(_user_of_identity, hub.db, identity, hub.settings.admin_emails)
    except HubError as e:
        return error_page("Sign-in failed", e.message, e.status, root=root)
    response = _redirect(request, _safe_next(login.next_path))
    _set_session(response, request, await run_in_threadpool(
        _new_session, hub.db, user_id, None, request.cookies.get(SESSION_COOKIE)))
    response.delete_cookie(LOGIN_COOKIE, path=_cookie_path(request))
    return response

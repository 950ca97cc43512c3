"""Signing in from a browser: sessions, and sign-in requests a notebook confirms there.

A browser gets a session by opening ``/?token=...`` (the URL ``kachery-hub
serve`` prints) or by entering a token on a sign-in page; an OpenID Connect
sign-in will create the same kind of session. A notebook that cannot run a
terminal asks the hub for a sign-in request (``POST /api/sign-in-requests``,
signed by its key), opens the returned URL in a browser, and polls its status
until the user confirms or refuses there. Confirming binds the notebook's key
to the browser's user, exactly as presenting a token would.

The request ID is an unguessable capability and only its hash is stored, like
tokens and sessions. Pages are HTML with every value escaped; forms are posted
same-origin and the session cookie is ``SameSite=Strict``.
"""

from __future__ import annotations

import hashlib
import html
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import delete, insert, select, update
from starlette.concurrency import run_in_threadpool

from . import _database as tables
from ._accounts import bind_client, user_of_token
from ._auth import Caller, caller
from ._database import Database
from ._state import HubState, hub_state
from .errors import Forbidden, HubError, InvalidToken, NotFound

SESSION_COOKIE = "kachery_hub_session"
SESSION_SECONDS = 30 * 24 * 3600
REQUEST_SECONDS = 15 * 60

router = APIRouter(tags=["sign-in"])


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 46em; margin: 2em auto; padding: 0 1em">
<h1>{html.escape(title)}</h1>{body}</body></html>"""
    return HTMLResponse(doc, status_code=status,
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


def _new_session(db: Database, user_id: str) -> str:
    secret = secrets.token_urlsafe(32)
    now = time.time()
    with db.begin() as conn:
        conn.execute(delete(tables.sessions).where(tables.sessions.c.expires_at < now))
        conn.execute(insert(tables.sessions).values(
            session_hash=_hash(secret), user_id=user_id, created_at=now, expires_at=now + SESSION_SECONDS))
    return secret


def _session_user(db: Database, request: Request) -> tuple[str, str] | None:
    """(user id, email) of the browser's session, if it has a live one."""
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        return None
    with db.begin() as conn:
        row = conn.execute(
            select(tables.users.c.id, tables.users.c.email)
            .join(tables.sessions, tables.sessions.c.user_id == tables.users.c.id)
            .where(tables.sessions.c.session_hash == _hash(secret), tables.sessions.c.expires_at > time.time())
        ).first()
    return (str(row.id), str(row.email)) if row is not None else None


def _token_user(db: Database, token: str) -> tuple[str, str]:
    with db.begin() as conn:
        user_id = user_of_token(conn, token)
        email = conn.execute(select(tables.users.c.email).where(tables.users.c.id == user_id)).scalar_one()
    return user_id, str(email)


def _set_session(response: HTMLResponse, request: Request, secret: str) -> None:
    response.set_cookie(SESSION_COOKIE, secret, max_age=SESSION_SECONDS, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")


# ---------------------------------------------------------------- sign-in requests


def _create_request(db: Database, client_id: str) -> tuple[str, float]:
    rid = secrets.token_urlsafe(24)
    now = time.time()
    with db.begin() as conn:
        # Finished or expired requests are kept a day, so a late poll still gets a clear answer.
        conn.execute(delete(tables.sign_in_requests).where(tables.sign_in_requests.c.expires_at < now - 86400))
        conn.execute(insert(tables.sign_in_requests).values(
            id_hash=_hash(rid), client_id=client_id, status="pending", user_id=None,
            created_at=now, expires_at=now + REQUEST_SECONDS))
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


def _decide(db: Database, rid: str, user_id: str, confirm: bool) -> str:
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
            bind_client(conn, row.client_id, user_id, "signed in from a browser")
    return status


@router.post("/api/sign-in-requests", summary="Start a browser sign-in for the signing client")
async def post_sign_in_request(request: Request, who: Caller = Depends(caller),
                               hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    rid, expires_at = await run_in_threadpool(_create_request, hub.db, who.require_client())
    return {"id": rid, "url": f"{str(request.base_url).rstrip('/')}/sign-in/{rid}", "expires_at": expires_at}


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
    return f"""<p>To sign in a computer, run this in Python or a notebook on it:</p>
<pre>import kachery_core as kc
kc.init(hub_url="{b}", token="{t}")</pre>
<p>or set <code>KACHERY_HUB_URL={b}</code> and <code>KACHERY_HUB_TOKEN={t}</code>.
The API is described at <a href="{b}/docs">{b}/docs</a>.</p>"""


@router.get("/", include_in_schema=False)
async def home(request: Request, hub: HubState = Depends(hub_state)) -> HTMLResponse:
    base = str(request.base_url).rstrip("/")
    token = request.query_params.get("token", "")
    if token:
        try:
            user_id, email = await run_in_threadpool(_token_user, hub.db, token)
        except InvalidToken as e:
            return _page("kachery hub", f"<p>{html.escape(e.message)}</p>" + _instructions(base, ""), 401)
        response = _page("kachery hub", f"<p>This browser is signed in as <b>{html.escape(email)}</b>.</p>"
                         + _instructions(base, token))
        _set_session(response, request, await run_in_threadpool(_new_session, hub.db, user_id))
        return response
    session = await run_in_threadpool(_session_user, hub.db, request)
    who = f"<p>This browser is signed in as <b>{html.escape(session[1])}</b>.</p>" if session else ""
    return _page("kachery hub", who + _instructions(base, ""))


_STATUS_TEXT = {
    "confirmed": "This sign-in was confirmed. You can close this window and go back to your notebook.",
    "refused": "This sign-in was refused. Nothing was changed.",
    "expired": "This sign-in link has expired. Start again from your notebook.",
}


@router.get("/sign-in/{rid}", include_in_schema=False)
async def sign_in_page(rid: str, request: Request, hub: HubState = Depends(hub_state)) -> HTMLResponse:
    try:
        row = await run_in_threadpool(_load_request, hub.db, rid)
    except NotFound:
        return _page("Sign in", "<p>This sign-in link is not valid.</p>", 404)
    status = _status(row)
    if status != "pending":
        return _page("Sign in", f"<p>{_STATUS_TEXT[status]}</p>")
    session = await run_in_threadpool(_session_user, hub.db, request)
    client = html.escape(row.client_id[:16])
    if session is not None:
        ask = f"<p>A notebook (client <code>{client}…</code>) asks to act as <b>{html.escape(session[1])}</b>.</p>"
        fields = ""
    else:
        ask = (f"<p>A notebook (client <code>{client}…</code>) asks to sign in. "
               "Enter a sign-in token (from <code>kachery-hub token create</code> or whoever runs this hub):</p>")
        fields = '<p><input name="token" type="password" size="50" autocomplete="off" autofocus></p>'
    form = f"""<form method="post">{fields}
<p>Only confirm if you started this sign-in yourself.</p>
<button name="action" value="confirm">Confirm</button> <button name="action" value="refuse">Refuse</button></form>"""
    return _page("Sign in", ask + form)


@router.post("/sign-in/{rid}", include_in_schema=False)
async def sign_in_decision(rid: str, request: Request, hub: HubState = Depends(hub_state)) -> HTMLResponse:
    origin = request.headers.get("origin")
    if origin is not None and origin.rstrip("/") != str(request.base_url).rstrip("/"):
        raise Forbidden("sign-in forms are accepted from this hub's own pages only")
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    action = form.get("action", [""])[0]
    token = form.get("token", [""])[0].strip()
    if action not in ("confirm", "refuse"):
        return _page("Sign in", "<p>Choose Confirm or Refuse.</p>", 400)
    new_session = None
    try:
        if token:
            user_id, _ = await run_in_threadpool(_token_user, hub.db, token)
            new_session = await run_in_threadpool(_new_session, hub.db, user_id)
        else:
            session = await run_in_threadpool(_session_user, hub.db, request)
            if session is None:
                return _page("Sign in", "<p>Enter a sign-in token first.</p>", 401)
            user_id = session[0]
        status = await run_in_threadpool(_decide, hub.db, rid, user_id, action == "confirm")
    except HubError as e:
        return _page("Sign in", f"<p>{html.escape(e.message)}</p>", e.status)
    response = _page("Sign in", f"<p>{_STATUS_TEXT[status]}</p>")
    if new_session is not None:
        _set_session(response, request, new_session)
    return response

"""Users, sign-in tokens and clients.

A user is identified by a verified email address. Sign-in tokens (from
``kachery-hub token create`` or the admin API) and, later, OpenID Connect
sign-ins (an ``identities`` row per provider subject) both resolve to the user
with that email, so they meet in the same account. A client (a key pair on
one computer) is bound to a user once, by a signed request carrying a token.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from sqlalchemy import Connection, delete, insert, select, update
from starlette.concurrency import run_in_threadpool

from . import _database as tables
from . import _projects
from ._auth import Caller, caller
from ._database import Database, new_id
from ._state import HubState, hub_state
from .errors import Forbidden, InvalidInput, InvalidToken

TOKEN_PREFIX = "khub_"
_EMAIL_RE = re.compile(r"^[^@\s]{1,200}@[^@\s]{1,200}$")

router = APIRouter(tags=["accounts"])


def normalize_email(email: str) -> str:
    value = email.strip().lower()
    if not _EMAIL_RE.fullmatch(value):
        raise InvalidInput(f"{email!r} is not an email address")
    return value


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def ensure_user(conn: Connection, email: str, *, is_admin: bool = False) -> str:
    """The id of the user with ``email``, created if new; ``is_admin`` only ever grants."""
    email = normalize_email(email)
    row = conn.execute(select(tables.users.c.id, tables.users.c.is_admin).where(tables.users.c.email == email)).first()
    if row is not None:
        if is_admin and not row.is_admin:
            conn.execute(update(tables.users).where(tables.users.c.id == row.id).values(is_admin=True))
        return str(row.id)
    user_id = new_id("u")
    conn.execute(insert(tables.users).values(
        id=user_id, email=email, email_verified=False, display_name=None, is_admin=is_admin, created_at=time.time(),
    ))
    return user_id


def create_token(db: Database, email: str, *, is_admin: bool = False, label: str | None = None) -> str:
    """A new sign-in token for the user with ``email`` (created if new)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.begin() as conn:
        user_id = ensure_user(conn, email, is_admin=is_admin)
        conn.execute(insert(tables.tokens).values(
            token_hash=_token_hash(token), user_id=user_id, label=label, created_at=time.time(),
            expires_at=None, revoked=False,
        ))
    return token


def user_of_token(conn: Connection, token: str) -> str:
    row = conn.execute(
        select(tables.tokens.c.user_id, tables.tokens.c.expires_at, tables.tokens.c.revoked)
        .where(tables.tokens.c.token_hash == _token_hash(token))
    ).first()
    if row is None or row.revoked:
        raise InvalidToken("this sign-in token is not known to the hub (or was revoked)")
    if row.expires_at is not None and row.expires_at < time.time():
        raise InvalidToken("this sign-in token has expired; create a new one")
    return str(row.user_id)


def bind_client(conn: Connection, client_id: str, user_id: str, label: str | None) -> None:
    """Bind ``client_id`` to ``user_id`` and give it a default project."""
    existing = conn.execute(
        select(tables.clients.c.user_id).where(tables.clients.c.client_id == client_id)
    ).first()
    default_project = _projects.default_project_for_user(conn, user_id)
    if existing is None:
        conn.execute(insert(tables.clients).values(
            client_id=client_id, user_id=user_id, label=label, default_project_id=default_project,
            created_at=time.time(),
        ))
    elif existing.user_id != user_id:
        # The same computer signing in as someone else: it now acts for the new user only.
        conn.execute(update(tables.clients).where(tables.clients.c.client_id == client_id).values(
            user_id=user_id, label=label, default_project_id=default_project,
        ))


def register_client(db: Database, client_id: str, token: str, label: str | None) -> None:
    """Bind ``client_id`` to the token's user."""
    with db.begin() as conn:
        bind_client(conn, client_id, user_of_token(conn, token), label)


def unbind_client(db: Database, client_id: str) -> bool:
    with db.begin() as conn:
        return bool(conn.execute(delete(tables.clients).where(tables.clients.c.client_id == client_id)).rowcount)


def client_info(db: Database, client_id: str) -> dict[str, Any]:
    with db.begin() as conn:
        row = conn.execute(
            select(tables.clients, tables.users.c.email, tables.users.c.is_admin)
            .join(tables.users, tables.users.c.id == tables.clients.c.user_id)
            .where(tables.clients.c.client_id == client_id)
        ).first()
    assert row is not None
    return {
        "client_id": client_id,
        "label": row.label,
        "user": {"id": row.user_id, "email": row.email, "is_admin": bool(row.is_admin)},
        "default_project_id": row.default_project_id,
    }


class RegisterRequest(BaseModel):
    token: str = Field(min_length=1, max_length=500)
    label: str | None = Field(default=None, max_length=200)


class DefaultProjectRequest(BaseModel):
    project_id: str = Field(min_length=1, max_length=100)


class TokenRequest(BaseModel):
    email: str = Field(min_length=3, max_length=400)
    admin: bool = False
    label: str | None = Field(default=None, max_length=200)


@router.post("/api/clients", summary="Register the signing client with a sign-in token")
async def post_client(body: RegisterRequest, who: Caller = Depends(caller), hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    client_id = who.require_client()
    await run_in_threadpool(register_client, hub.db, client_id, body.token, body.label)
    return await run_in_threadpool(client_info, hub.db, client_id)


@router.get("/api/me", summary="The signing client, its user and default project")
async def get_me(who: Caller = Depends(caller), hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    who.require_user()
    assert who.client_id is not None
    return await run_in_threadpool(client_info, hub.db, who.client_id)


@router.delete("/api/me", summary="Sign the signing client out (its key stays; it can sign in again)")
async def delete_me(who: Caller = Depends(caller), hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    return {"signed_out": await run_in_threadpool(unbind_client, hub.db, who.require_client())}


def _set_default_project(db: Database, who: Caller, project_id: str) -> None:
    with db.begin() as conn:
        _projects.require_role(conn, who, project_id, "read")
        conn.execute(update(tables.clients).where(tables.clients.c.client_id == who.client_id)
                     .values(default_project_id=project_id))


@router.put("/api/me/default-project", summary="Set the signing client's default project")
async def put_default_project(body: DefaultProjectRequest, who: Caller = Depends(caller),
                              hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    who.require_user()
    assert who.client_id is not None
    await run_in_threadpool(_set_default_project, hub.db, who, body.project_id)
    return await run_in_threadpool(client_info, hub.db, who.client_id)


@router.post("/api/tokens", summary="Create a sign-in token for a user (hub admins only)")
async def post_token(body: TokenRequest, who: Caller = Depends(caller), hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    who.require_user()
    if not who.is_admin:
        raise Forbidden("only hub admins can create sign-in tokens")
    email = normalize_email(body.email)
    token = await run_in_threadpool(lambda: create_token(hub.db, email, is_admin=body.admin, label=body.label))
    return {"email": email, "token": token}

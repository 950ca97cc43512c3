"""Users, sign-in tokens and clients.

A user is identified by a verified email address. Sign-in tokens (from
``kachery-hub token create`` or the admin API) and OpenID Connect sign-ins (an
``identities`` row per provider subject) both resolve to the user with that
email, so they meet in the same account. A client (a key pair on one computer)
is bound to a user once, by a signed request carrying a token.

Tokens are stored as their sha256 only; each also has a public ID (``t`` + 16
hex) that lists show and revocation names. An invitation token expires after
:data:`DEFAULT_TOKEN_SECONDS` (7 days) unless made with another lifetime or
none. A revoked or expired token signs nothing in any more, and says which of
the two it is (``token_revoked``, ``token_expired``) to whoever presents it;
revoking also ends the browser sessions it opened, and optionally signs out the
clients it signed in. Hub admins list tokens and clients and revoke them
(``/api/tokens``, ``/api/clients``; ``kachery-hub token|client list|revoke``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field
from sqlalchemy import Connection, delete, insert, select, update
from starlette.concurrency import run_in_threadpool

from . import _database as tables
from . import _projects
from ._auth import Caller, caller
from ._database import Database, new_id
from ._state import HubState, hub_state
from ._text import Line
from .errors import Forbidden, InvalidInput, InvalidToken, NotFound

TOKEN_PREFIX = "khub_"
#: how long an invitation token lasts unless made with another lifetime
DEFAULT_TOKEN_SECONDS = 7 * 24 * 3600
MAX_TOKEN_SECONDS = 3650 * 24 * 3600
TOKEN_ID_PATTERN = r"^t[0-9a-f]{16}$"
CLIENT_ID_PATTERN = r"^[0-9a-f]{64}$"
# No whitespace or control characters: PostgreSQL refuses NUL in text, and no address has them.
_EMAIL_RE = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,200}@[^@\s\x00-\x1f\x7f]{1,200}$")
_TOKEN_TEXT_RE = re.compile(r"[\x21-\x7e]{1,500}")
_DURATION_RE = re.compile(r"^([0-9]{1,7})([smhdw]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

router = APIRouter(tags=["accounts"])


class TokenExpired(InvalidToken):
    code = "token_expired"


class TokenRevoked(InvalidToken):
    code = "token_revoked"


class TokenNotFound(NotFound):
    code = "token_not_found"


class ClientNotFound(NotFound):
    code = "client_not_found"


@dataclass(frozen=True)
class TokenUse:
    """What a presented token signs in as."""

    token_id: str
    user_id: str
    expires_at: float | None


@dataclass(frozen=True)
class IssuedToken:
    id: str
    token: str
    expires_at: float | None


def parse_duration(text: str) -> float | None:
    """Seconds in ``"90"``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"``; None for ``"never"``."""
    value = text.strip().lower()
    if value == "never":
        return None
    m = _DURATION_RE.fullmatch(value)
    if m is None:
        raise ValueError(f"{text!r} is not a duration such as 3600, 30m, 12h, 7d, 2w or never")
    seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if not 60 <= seconds <= MAX_TOKEN_SECONDS:
        raise ValueError(f"{text!r} is outside one minute to {MAX_TOKEN_SECONDS // 86400} days")
    return float(seconds)


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


def issue_token(db: Database, email: str, *, is_admin: bool = False, label: str | None = None,
                expires_in: float | None = DEFAULT_TOKEN_SECONDS) -> IssuedToken:
    """A new sign-in token for the user with ``email`` (created if new), valid ``expires_in`` seconds (None: always)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    issued = IssuedToken(new_id("t"), token, None if expires_in is None else now + expires_in)
    with db.begin() as conn:
        user_id = ensure_user(conn, email, is_admin=is_admin)
        conn.execute(insert(tables.tokens).values(
            token_hash=_token_hash(token), id=issued.id, user_id=user_id, label=label, created_at=now,
            expires_at=issued.expires_at, revoked=False,
        ))
    return issued


def create_token(db: Database, email: str, *, is_admin: bool = False, label: str | None = None,
                 expires_in: float | None = DEFAULT_TOKEN_SECONDS) -> str:
    """The secret of a new sign-in token (see :func:`issue_token`)."""
    return issue_token(db, email, is_admin=is_admin, label=label, expires_in=expires_in).token


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def check_token(conn: Connection, token: str) -> TokenUse:
    """What ``token`` signs in as; refused if unknown, revoked or expired (nothing is said of other tokens)."""
    if not _TOKEN_TEXT_RE.fullmatch(token):  # never a token; and PostgreSQL refuses NUL in text
        raise InvalidToken("this sign-in token is not known to the hub")
    row = conn.execute(
        select(tables.tokens.c.id, tables.tokens.c.user_id, tables.tokens.c.expires_at, tables.tokens.c.revoked)
        .where(tables.tokens.c.token_hash == _token_hash(token))
    ).first()
    if row is None:
        raise InvalidToken("this sign-in token is not known to the hub")
    if row.revoked:
        raise TokenRevoked("this sign-in token was revoked by a hub admin; ask them for a new one")
    if row.expires_at is not None and row.expires_at < time.time():
        raise TokenExpired(f"this sign-in token expired on {_when(row.expires_at)}; ask for a new one")
    return TokenUse(str(row.id), str(row.user_id), row.expires_at)


def use_token(conn: Connection, token: str) -> TokenUse:
    """:func:`check_token`, and remember that the token was used now."""
    use = check_token(conn, token)
    conn.execute(update(tables.tokens).where(tables.tokens.c.id == use.token_id).values(last_used_at=time.time()))
    return use


def token_is_usable(db: Database, token: str) -> bool:
    try:
        with db.begin() as conn:
            check_token(conn, token)
    except InvalidToken:
        return False
    return True


def bind_client(conn: Connection, client_id: str, user_id: str, label: str | None, token_id: str | None = None) -> None:
    """Bind ``client_id`` to ``user_id`` and give it a default project; ``token_id`` is what signed it in."""
    existing = conn.execute(
        select(tables.clients.c.user_id).where(tables.clients.c.client_id == client_id)
    ).first()
    default_project = _projects.default_project_for_user(conn, user_id)
    if existing is None:
        conn.execute(insert(tables.clients).values(
            client_id=client_id, user_id=user_id, label=label, default_project_id=default_project,
            created_at=time.time(), token_id=token_id,
        ))
    elif existing.user_id != user_id:
        # The same computer signing in as someone else acts for that user only.
        conn.execute(update(tables.clients).where(tables.clients.c.client_id == client_id).values(
            user_id=user_id, label=label, default_project_id=default_project, token_id=token_id,
        ))
    else:
        # The same user signing in again: the newest token is the one whose revocation signs it out
        # (also where token_id is NULL, as migration 5 leaves existing clients); the default project stays.
        changes: dict[str, Any] = {}
        if token_id is not None:
            changes["token_id"] = token_id
        if label is not None:
            changes["label"] = label
        if changes:
            conn.execute(update(tables.clients).where(tables.clients.c.client_id == client_id).values(**changes))


def register_client(db: Database, client_id: str, token: str, label: str | None) -> None:
    """Bind ``client_id`` to the token's user."""
    with db.begin() as conn:
        use = use_token(conn, token)
        bind_client(conn, client_id, use.user_id, label, use.token_id)


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
    token: Line = Field(min_length=1, max_length=500)
    label: Line | None = Field(default=None, max_length=200)


class DefaultProjectRequest(BaseModel):
    project_id: Line = Field(min_length=1, max_length=100)


class TokenRequest(BaseModel):
    email: Line = Field(min_length=3, max_length=400)
    admin: bool = False
    label: Line | None = Field(default=None, max_length=200)
    expires_in_seconds: int | None = Field(
        default=DEFAULT_TOKEN_SECONDS, ge=60, le=MAX_TOKEN_SECONDS,
        description="lifetime of the token (default 7 days); null: it never expires")


# ---------------------------------------------------------------- listing and revoking (hub admins)


def _token_status(row: Any, now: float) -> str:
    if row.revoked:
        return "revoked"
    if row.expires_at is not None and row.expires_at < now:
        return "expired"
    return "active"


def list_tokens(db: Database, email: str | None = None) -> list[dict[str, Any]]:
    """Every sign-in token (never its secret nor its hash), oldest first; of one user with ``email``."""
    query = (select(tables.tokens.c.id, tables.tokens.c.label, tables.tokens.c.created_at,
                    tables.tokens.c.expires_at, tables.tokens.c.last_used_at, tables.tokens.c.revoked,
                    tables.tokens.c.revoked_at, tables.users.c.email, tables.users.c.is_admin)
             .join(tables.users, tables.users.c.id == tables.tokens.c.user_id)
             .order_by(tables.tokens.c.created_at, tables.tokens.c.id))
    if email is not None:
        query = query.where(tables.users.c.email == normalize_email(email))
    now = time.time()
    with db.begin() as conn:
        rows = conn.execute(query).fetchall()
    return [{"id": r.id, "email": r.email, "user_is_admin": bool(r.is_admin), "label": r.label,
             "created_at": r.created_at, "expires_at": r.expires_at, "last_used_at": r.last_used_at,
             "revoked_at": r.revoked_at, "status": _token_status(r, now)} for r in rows]


def revoke_token(db: Database, token_id: str, *, sign_out_clients: bool = False) -> dict[str, Any]:
    """Revoke a token and end the browser sessions it opened; with ``sign_out_clients``, its clients too."""
    with db.begin() as conn:
        row = conn.execute(select(tables.tokens.c.revoked).where(tables.tokens.c.id == token_id)).first()
        if row is None:
            raise TokenNotFound(f"no sign-in token has the ID {token_id!r}")
        if not row.revoked:
            conn.execute(update(tables.tokens).where(tables.tokens.c.id == token_id)
                         .values(revoked=True, revoked_at=time.time()))
        sessions = conn.execute(delete(tables.sessions).where(tables.sessions.c.token_id == token_id)).rowcount
        clients = 0
        if sign_out_clients:
            clients = conn.execute(delete(tables.clients).where(tables.clients.c.token_id == token_id)).rowcount
    return {"id": token_id, "revoked": True, "sessions_ended": int(sessions), "clients_signed_out": int(clients)}


def list_clients(db: Database, email: str | None = None) -> list[dict[str, Any]]:
    """Every signed-in client (key), oldest first; of one user with ``email``."""
    query = (select(tables.clients, tables.users.c.email)
             .join(tables.users, tables.users.c.id == tables.clients.c.user_id)
             .order_by(tables.clients.c.created_at, tables.clients.c.client_id))
    if email is not None:
        query = query.where(tables.users.c.email == normalize_email(email))
    with db.begin() as conn:
        rows = conn.execute(query).fetchall()
    return [{"client_id": r.client_id, "email": r.email, "label": r.label, "created_at": r.created_at,
             "default_project_id": r.default_project_id, "token_id": r.token_id} for r in rows]


def revoke_client(db: Database, client_id: str) -> None:
    """Sign a client out (as ``DELETE /api/me`` does for itself)."""
    if not unbind_client(db, client_id):
        raise ClientNotFound(f"no client {client_id} is signed in to this hub")


def _require_hub_admin(who: Caller, what: str) -> None:
    # Checked before anything is looked up, so the refusal is the same whatever exists.
    who.require_user()
    if not who.is_admin:
        raise Forbidden(f"only hub admins can {what}")


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


_TOKEN_ID = Path(description="the token's public ID (from the list)", max_length=17, pattern=TOKEN_ID_PATTERN)
_CLIENT_ID = Path(description="the client's ID (its 64-hex public key)", max_length=64, pattern=CLIENT_ID_PATTERN)
_EMAIL = Query(None, description="only those of the user with this email", max_length=400)


@router.post("/api/tokens", summary="Create a sign-in token for a user (hub admins only)")
async def post_token(body: TokenRequest, who: Caller = Depends(caller), hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    _require_hub_admin(who, "create sign-in tokens")
    email = normalize_email(body.email)
    issued = await run_in_threadpool(lambda: issue_token(
        hub.db, email, is_admin=body.admin, label=body.label, expires_in=body.expires_in_seconds))
    return {"email": email, "token": issued.token, "id": issued.id, "expires_at": issued.expires_at}


@router.get("/api/tokens", summary="Sign-in tokens: ID, user, label, dates, status; never the secret (hub admins only)")
async def get_tokens(email: str | None = _EMAIL, who: Caller = Depends(caller),
                     hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    _require_hub_admin(who, "list sign-in tokens")
    return {"tokens": await run_in_threadpool(list_tokens, hub.db, email)}


@router.delete("/api/tokens/{token_id}", summary="Revoke a sign-in token and end its browser sessions (hub admins only)")
async def delete_token(token_id: str = _TOKEN_ID,
                       sign_out_clients: bool = Query(False, description="also sign out the clients it signed in"),
                       who: Caller = Depends(caller), hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    _require_hub_admin(who, "revoke sign-in tokens")
    return await run_in_threadpool(lambda: revoke_token(hub.db, token_id, sign_out_clients=sign_out_clients))


@router.get("/api/clients", summary="Signed-in clients: key, user, label, token (hub admins only)")
async def get_clients(email: str | None = _EMAIL, who: Caller = Depends(caller),
                      hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    _require_hub_admin(who, "list clients")
    return {"clients": await run_in_threadpool(list_clients, hub.db, email)}


@router.delete("/api/clients/{client_id}", summary="Sign a client out (hub admins only)")
async def delete_client(client_id: str = _CLIENT_ID, who: Caller = Depends(caller),
                        hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    _require_hub_admin(who, "sign clients out")
    await run_in_threadpool(revoke_client, hub.db, client_id)
    return {"client_id": client_id, "signed_out": True}

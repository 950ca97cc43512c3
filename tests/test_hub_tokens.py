"""Sign-in tokens expire and can be revoked; hub admins list them and sign clients out.

Every admin endpoint is tried by everyone else too (anonymous, a plain user, the admin of
a project who is not a hub admin), with malformed and oversized input, on SQLite and
PostgreSQL. What an outsider is told must not depend on which tokens or clients exist.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hub_fixtures import *  # noqa: F403
from hub_fixtures import Hub, _fresh_postgres_database, make_hub, new_keys, signed_headers
from sqlalchemy import text, update
from starlette.testclient import TestClient

from e2e.signin import confirm_token_link
from kachery_core._identity import ClientKeys
from kachery_hub import _accounts, _cli
from kachery_hub import _database as tables
from kachery_hub._database import Database
from kachery_hub._migrations import LEGACY_REVISIONS
from kachery_hub._signin import SESSION_COOKIE


@pytest.fixture(params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    yield from make_hub(request.param, request, tmp_path, monkeypatch)


def _send(hub: Hub, keys: ClientKeys | None, method: str, path: str, body: Any = None) -> Any:
    content = b"" if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if keys is not None:
        headers.update(signed_headers(keys, method, path, content))
    return hub.http.request(method, path, content=content, headers=headers)


def _register(hub: Hub, token: str, keys: ClientKeys | None = None) -> Any:
    return _send(hub, keys or new_keys(), "POST", "/api/clients", {"token": token})


def _client(hub: Hub, email: str, *, admin: bool = False) -> ClientKeys:
    keys = new_keys()
    r = _register(hub, hub.token(email, admin=admin), keys)
    assert r.status_code == 200, r.text
    return keys


def _error(r: Any) -> tuple[int, str, str]:
    body = r.json()
    assert set(body) == {"error"}, body
    return r.status_code, body["error"]["code"], body["error"]["message"]


def _token_id(hub: Hub, token: str) -> str:
    with hub.state.db.begin() as conn:
        row = conn.execute(tables.tokens.select().where(
            tables.tokens.c.token_hash == hashlib.sha256(token.encode()).hexdigest())).first()
    assert row is not None
    return str(row.id)


# ---------------------------------------------------------------- expiry


def test_invitation_tokens_expire_after_seven_days_by_default(hub: Hub) -> None:
    token = hub.token("ada@example.org")
    with hub.state.db.begin() as conn:
        row = conn.execute(tables.tokens.select()).first()
    assert row is not None and row.expires_at is not None
    assert abs(row.expires_at - row.created_at - 7 * 24 * 3600) < 1
    assert _accounts.DEFAULT_TOKEN_SECONDS == 7 * 24 * 3600
    assert _register(hub, token).status_code == 200


def test_an_expired_token_is_refused_with_its_own_code(hub: Hub) -> None:
    token = hub.token("ada@example.org")
    with hub.state.db.begin() as conn:
        conn.execute(update(tables.tokens).values(expires_at=time.time() - 1))
    status, code, message = _error(_register(hub, token))
    assert (status, code) == (401, "token_expired") and "expired" in message
    page = hub.http.get("/", params={"token": token})
    assert page.status_code == 401 and "expired" in page.text and "Sign in to this hub" not in page.text
    # an unknown token is "not known": nothing is said about any other token
    status, code, message = _error(_register(hub, "khub_" + "x" * 43))
    assert (status, code) == (401, "invalid_token") and "not known" in message


def test_the_admin_api_sets_an_expiry_or_none(hub: Hub) -> None:
    admin = _client(hub, "root@example.org", admin=True)
    short = _send(hub, admin, "POST", "/api/tokens", {"email": "ada@example.org", "expires_in_seconds": 3600})
    assert short.status_code == 200 and short.json()["expires_at"] - time.time() == pytest.approx(3600, abs=30)
    assert short.json()["id"].startswith("t")
    never = _send(hub, admin, "POST", "/api/tokens", {"email": "ada@example.org", "expires_in_seconds": None})
    assert never.status_code == 200 and never.json()["expires_at"] is None
    default = _send(hub, admin, "POST", "/api/tokens", {"email": "ada@example.org"})
    assert default.json()["expires_at"] - time.time() == pytest.approx(_accounts.DEFAULT_TOKEN_SECONDS, abs=30)
    for bad in (0, -5, 10**12, "soon", 1e308):
        r = _send(hub, admin, "POST", "/api/tokens", {"email": "ada@example.org", "expires_in_seconds": bad})
        assert r.status_code == 422, (bad, r.text)


# ---------------------------------------------------------------- list and revoke


def test_an_admin_lists_tokens_without_their_secrets_and_revokes_one(hub: Hub) -> None:
    admin = _client(hub, "root@example.org", admin=True)
    token = hub.token("ada@example.org")
    ada = new_keys()
    assert _register(hub, token, ada).status_code == 200
    listed = _send(hub, admin, "GET", "/api/tokens")
    assert listed.status_code == 200
    assert token not in listed.text and hashlib.sha256(token.encode()).hexdigest() not in listed.text
    mine = [t for t in listed.json()["tokens"] if t["email"] == "ada@example.org"]
    assert len(mine) == 1 and mine[0]["status"] == "active" and mine[0]["last_used_at"] is not None
    assert set(mine[0]) >= {"id", "email", "label", "created_at", "expires_at", "last_used_at", "status"}
    only = _send(hub, admin, "GET", "/api/tokens?email=ADA@example.org").json()["tokens"]
    assert [t["id"] for t in only] == [mine[0]["id"]]

    revoked = _send(hub, admin, "DELETE", f"/api/tokens/{mine[0]['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    status, code, message = _error(_register(hub, token))
    assert (status, code) == (401, "token_revoked") and "revoked" in message
    assert "revoked" in hub.http.get("/", params={"token": token}).text
    after = _send(hub, admin, "GET", "/api/tokens").json()["tokens"]
    assert [t["status"] for t in after if t["id"] == mine[0]["id"]] == ["revoked"]
    # what the token signed in before stays signed in (the admin signs clients out separately)
    assert _send(hub, ada, "GET", "/api/me").status_code == 200
    # revoking twice is not an error; an unknown id is
    assert _send(hub, admin, "DELETE", f"/api/tokens/{mine[0]['id']}").status_code == 200
    assert _error(_send(hub, admin, "DELETE", "/api/tokens/t0000000000000000"))[:2] == (404, "token_not_found")


def test_revoking_a_token_ends_the_browser_sessions_it_opened(hub: Hub) -> None:
    admin = _client(hub, "root@example.org", admin=True)
    token = hub.token("ada@example.org")
    with TestClient(hub.http.app, raise_server_exceptions=False) as browser:
        confirm_token_link(browser, token)
        assert SESSION_COOKIE in browser.cookies and "ada@example.org" in browser.get("/").text
        assert _send(hub, admin, "DELETE", f"/api/tokens/{_token_id(hub, token)}").status_code == 200
        assert "signed in as" not in browser.get("/").text


def test_a_browser_session_lasts_no_longer_than_the_token_that_opened_it(hub: Hub) -> None:
    token = _accounts.create_token(hub.state.db, "ada@example.org", expires_in=3600)
    with TestClient(hub.http.app, raise_server_exceptions=False) as browser:
        confirm_token_link(browser, token)
    with hub.state.db.begin() as conn:
        session = conn.execute(tables.sessions.select()).one()
        expires = conn.execute(tables.tokens.select()).one().expires_at
    assert session.expires_at <= expires and session.token_id == _token_id(hub, token)


def test_revoking_with_sign_out_also_signs_out_the_clients_it_signed_in(hub: Hub) -> None:
    admin = _client(hub, "root@example.org", admin=True)
    token = hub.token("ada@example.org")
    ada, other = new_keys(), _client(hub, "ada@example.org")
    assert _register(hub, token, ada).status_code == 200
    r = _send(hub, admin, "DELETE", f"/api/tokens/{_token_id(hub, token)}?sign_out_clients=true")
    assert r.status_code == 200 and r.json()["clients_signed_out"] == 1
    assert _error(_send(hub, ada, "GET", "/api/me"))[:2] == (401, "client_not_registered")
    assert _send(hub, other, "GET", "/api/me").status_code == 200  # the same user's other client stays


def test_signing_in_again_with_a_new_token_records_that_token(hub: Hub) -> None:
    admin = _client(hub, "root@example.org", admin=True)
    ada = new_keys()
    assert _register(hub, hub.token("ada@example.org"), ada).status_code == 200
    with hub.state.db.begin() as conn:  # as a client bound before tokens had IDs is
        conn.execute(update(tables.clients).where(tables.clients.c.client_id == ada.client_id).values(token_id=None))
    second = hub.token("ada@example.org")
    r = _send(hub, ada, "POST", "/api/clients", {"token": second, "label": "ada's new laptop"})
    assert r.status_code == 200 and r.json()["label"] == "ada's new laptop"
    row = next(c for c in _accounts.list_clients(hub.state.db) if c["client_id"] == ada.client_id)
    assert (row["token_id"], row["label"]) == (_token_id(hub, second), "ada's new laptop")
    r = _send(hub, admin, "DELETE", f"/api/tokens/{_token_id(hub, second)}?sign_out_clients=true")
    assert r.status_code == 200 and r.json()["clients_signed_out"] == 1
    assert _error(_send(hub, ada, "GET", "/api/me"))[:2] == (401, "client_not_registered")


def test_an_admin_lists_clients_and_signs_one_out(hub: Hub) -> None:
    admin = _client(hub, "root@example.org", admin=True)
    ada = _client(hub, "ada@example.org")
    clients = _send(hub, admin, "GET", "/api/clients").json()["clients"]
    row = next(c for c in clients if c["client_id"] == ada.client_id)
    assert row["email"] == "ada@example.org" and row["token_id"] is not None
    assert [c["client_id"] for c in _send(hub, admin, "GET", "/api/clients?email=ada@example.org").json()["clients"]] \
        == [ada.client_id]
    r = _send(hub, admin, "DELETE", f"/api/clients/{ada.client_id}")
    assert r.status_code == 200 and r.json() == {"client_id": ada.client_id, "signed_out": True}
    assert _error(_send(hub, ada, "GET", "/api/me"))[:2] == (401, "client_not_registered")
    assert _error(_send(hub, admin, "DELETE", f"/api/clients/{ada.client_id}"))[:2] == (404, "client_not_found")


# ---------------------------------------------------------------- who may, and what outsiders learn


def _outsiders(hub: Hub) -> dict[str, ClientKeys | None]:
    plain = _client(hub, "plain@example.org")
    project_admin = _client(hub, "owner@example.org")
    created = _send(hub, project_admin, "POST", "/api/projects", {"name": "mine"})
    assert created.status_code == 200, created.text
    return {"anonymous": None, "unregistered": new_keys(), "plain user": plain, "project admin": project_admin}


def test_only_hub_admins_may_use_the_token_and_client_endpoints(hub: Hub) -> None:
    outsiders = _outsiders(hub)
    admin = _client(hub, "root@example.org", admin=True)
    victim = _client(hub, "victim@example.org")
    victim_token = _token_id(hub, hub.token("victim@example.org"))
    calls = [
        ("GET", "/api/tokens", None),
        ("DELETE", f"/api/tokens/{victim_token}", None),
        ("DELETE", "/api/tokens/t0000000000000000", None),
        ("POST", "/api/tokens", {"email": "x@example.org", "admin": True}),
        ("GET", "/api/clients", None),
        ("DELETE", f"/api/clients/{victim.client_id}", None),
        ("DELETE", "/api/clients/" + "0" * 64, None),
    ]
    for who, keys in outsiders.items():
        for method, path, body in calls:
            status, code, _ = _error(_send(hub, keys, method, path, body))
            expected = 401 if who in ("anonymous", "unregistered") else 403
            assert status == expected, (who, method, path, status, code)
        # a refusal names what was refused, never whether the token or client exists
        if who not in ("anonymous", "unregistered"):
            revoke_answers = {_send(hub, keys, "DELETE", p).text for p in
                              (f"/api/tokens/{victim_token}", "/api/tokens/t0000000000000000")}
            assert len(revoke_answers) == 1, revoke_answers
            client_answers = {_send(hub, keys, "DELETE", p).text for p in
                              (f"/api/clients/{victim.client_id}", "/api/clients/" + "0" * 64)}
            assert len(client_answers) == 1, client_answers
    # nothing was revoked or signed out by them
    assert _send(hub, victim, "GET", "/api/me").status_code == 200
    tokens = _send(hub, admin, "GET", "/api/tokens").json()["tokens"]
    assert all(t["status"] == "active" for t in tokens)


def test_a_plain_user_gets_the_same_refusal_however_many_tokens_exist(hub: Hub) -> None:
    plain = _client(hub, "plain@example.org")
    before = _send(hub, plain, "GET", "/api/tokens")
    for i in range(3):
        hub.token(f"u{i}@example.org", admin=True)
    after = _send(hub, plain, "GET", "/api/tokens")
    assert before.status_code == after.status_code == 403 and before.text == after.text


def test_admin_endpoints_refuse_malformed_and_oversized_input(hub: Hub) -> None:
    admin = _client(hub, "root@example.org", admin=True)
    for path in ("/api/tokens/" + "t" * 500, "/api/tokens/t%00", "/api/tokens/%C3%A9t",
                 "/api/clients/" + "g" * 64, "/api/clients/abc", "/api/clients/" + "0" * 65):
        r = _send(hub, admin, "DELETE", path)
        assert r.status_code in (400, 422), (path, r.status_code, r.text)
        assert r.json()["error"]["code"] in ("invalid_request", "invalid_input"), r.text
    for query in ("email=" + "a" * 5000, "email=a%00b@example.org", "sign_out_clients=maybe"):
        path = "/api/tokens?" + query if "sign_out" not in query else "/api/tokens/t0000000000000000?" + query
        r = _send(hub, admin, "GET" if "sign_out" not in query else "DELETE", path)
        assert 400 <= r.status_code < 500, (query, r.status_code, r.text)
    for body in ({"email": "a\x00@example.org"}, {"email": "x@example.org", "label": "l" * 5000},
                 {"email": "x@example.org", "expires_in_seconds": [1]}):
        r = _send(hub, admin, "POST", "/api/tokens", body)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
    assert _send(hub, admin, "GET", "/api/tokens").status_code == 200


# ---------------------------------------------------------------- the command line


def _cli_run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = _cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_token_and_client_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "hub")
    code, token, _ = _cli_run(capsys, "token", "create", "--data", data, "--user", "ada@example.org",
                              "--expires-in", "2h", "--label", "for ada")
    assert code == 0 and token.strip().startswith("khub_")
    token = token.strip()
    _cli_run(capsys, "token", "create", "--data", data, "--user", "bo@example.org", "--expires-in", "never")
    code, listing, _ = _cli_run(capsys, "token", "list", "--data", data)
    assert code == 0 and token not in listing
    lines = listing.strip().splitlines()
    assert lines[0].split()[:3] == ["ID", "USER", "STATUS"] and len(lines) == 3
    ada = next(line for line in lines if "ada@example.org" in line)
    assert "active" in ada and "for ada" in ada and "never" in next(line for line in lines if "bo@" in line)
    token_id = ada.split()[0]

    db = Database(f"sqlite:///{tmp_path / 'hub' / 'hub.sqlite'}")
    try:
        with db.begin() as conn:
            row = conn.execute(tables.tokens.select().where(tables.tokens.c.id == token_id)).first()
            assert row is not None and row.expires_at - row.created_at == pytest.approx(7200, abs=1)
        keys = new_keys()
        _accounts.register_client(db, keys.client_id, token, "ada's laptop")
    finally:
        db.close()
    code, clients, _ = _cli_run(capsys, "client", "list", "--data", data)
    assert code == 0 and keys.client_id in clients and "ada's laptop" in clients and token_id in clients

    code, out, _ = _cli_run(capsys, "token", "revoke", "--data", data, token_id)
    assert code == 0 and "revoked" in out
    assert "revoked" in next(line for line in _cli_run(capsys, "token", "list", "--data", data)[1].splitlines()
                             if token_id in line)
    code, _, err = _cli_run(capsys, "token", "revoke", "--data", data, "t0000000000000000")
    assert code == 1 and err.startswith("error: ") and "no sign-in token" in err
    code, out, _ = _cli_run(capsys, "client", "revoke", "--data", data, keys.client_id)
    assert code == 0 and "signed out" in out
    code, _, err = _cli_run(capsys, "client", "revoke", "--data", data, keys.client_id)
    assert code == 1 and "no client" in err


@pytest.mark.parametrize("bad", ["soon", "0", "-1h", "5y", "1e9d", ""])
def test_token_create_refuses_a_bad_expiry(tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str) -> None:
    with pytest.raises(SystemExit) as stop:
        _cli.main(["token", "create", "--data", str(tmp_path), "--user", "a@example.org", "--expires-in", bad])
    assert stop.value.code == 2 and "argument --expires-in: " in capsys.readouterr().err


def test_the_serve_token_does_not_expire_and_is_replaced_once_revoked(tmp_path: Path) -> None:
    from kachery_hub import Settings
    from kachery_hub._state import HubState

    state = HubState.open(Settings(data_dir=tmp_path / "hub"))
    try:
        first = _cli._serve_token(state, "admin@localhost")
        assert _cli._serve_token(state, "admin@localhost") == first
        with state.db.begin() as conn:
            row = conn.execute(tables.tokens.select()).first()
            assert row is not None and row.expires_at is None
        _accounts.revoke_token(state.db, str(row.id))
        second = _cli._serve_token(state, "admin@localhost")
        assert second != first
        with state.db.begin() as conn:
            assert _accounts.use_token(conn, second).user_id == row.user_id
    finally:
        state.close()


# ---------------------------------------------------------------- upgrading a database in place


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_an_existing_database_upgrades_in_place(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path / 'old.sqlite'}" if engine == "sqlite"
           else _fresh_postgres_database(request.getfixturevalue("postgres_server")))
    from kachery_hub._migrations import migrate

    db = Database(url)
    try:
        before = [LEGACY_REVISIONS[v] for v in range(1, 5)]
        assert migrate(db.engine, before[-1]) == before
        token = "khub_an-old-token"
        now = time.time()
        with db.begin() as conn:
            conn.execute(text("INSERT INTO users (id, email, email_verified, is_admin, created_at) "
                              "VALUES ('u1', 'old@example.org', FALSE, FALSE, :t)"), {"t": now})
            conn.execute(text("INSERT INTO tokens (token_hash, user_id, label, created_at, expires_at, revoked) "
                              "VALUES (:h, 'u1', 'old', :t, NULL, FALSE)"),
                         {"h": hashlib.sha256(token.encode()).hexdigest(), "t": now})
            conn.execute(text("INSERT INTO sessions (session_hash, user_id, created_at, expires_at) "
                              "VALUES ('s', 'u1', :t, :e)"), {"t": now, "e": now + 3600})
        assert LEGACY_REVISIONS[5] in db.migrate()
        listed = _accounts.list_tokens(db)
        assert len(listed) == 1 and listed[0]["id"].startswith("t") and listed[0]["status"] == "active"
        assert listed[0]["expires_at"] is None  # tokens made before expiry existed keep working
        keys = new_keys()
        _accounts.register_client(db, keys.client_id, token, None)
        assert _accounts.list_clients(db)[0]["token_id"] == listed[0]["id"]
        _accounts.revoke_token(db, listed[0]["id"])
        with db.begin() as conn, pytest.raises(_accounts.TokenRevoked):
            _accounts.use_token(conn, token)
    finally:
        db.close()

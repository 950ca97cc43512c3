"""The ``kachery-hub`` command: run a hub; create, list and revoke sign-in tokens; list and sign out clients;
collect garbage (file bytes no project references)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote_plus

from . import _accounts
from ._database import Database
from ._gc import DEFAULT_GRACE_SECONDS
from ._settings import Settings, default_public_urls
from ._state import HubState
from .errors import HubError

DEFAULT_PORT = 8555
_SERVE_TOKEN_FILE = "serve-token"


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_environ(
        data_dir=Path(args.data) if args.data else None,
        database_url=getattr(args, "database", None),
        storage_url=getattr(args, "storage", None),
        oidc_issuer=getattr(args, "oidc_issuer", None),
        oidc_client_id=getattr(args, "oidc_client_id", None),
        oidc_client_secret=getattr(args, "oidc_client_secret", None),
        admin_emails=tuple(args.admin_emails.split(",")) if getattr(args, "admin_emails", None) else None,
        public_urls=tuple(u for v in args.public_url for u in v.split(",")) if getattr(args, "public_url", None) else None,
        trusted_proxies=tuple(args.trusted_proxies.split(",")) if getattr(args, "trusted_proxies", None) else None,
        log_format=getattr(args, "log_format", None),
    )


def _serve_token(state: HubState, email: str) -> str:
    """The admin token printed by ``serve``: made once per data folder and reused, as Jupyter reuses its token.

    It does not expire (whoever can read the data folder holds the hub anyway); once revoked
    (``kachery-hub token revoke``), the next ``serve`` makes a new one.
    """
    path = state.settings.data_dir / _SERVE_TOKEN_FILE
    try:
        lines = path.read_text().split()
        if len(lines) == 2 and lines[0] == email and _accounts.token_is_usable(state.db, lines[1]):
            return lines[1]
    except FileNotFoundError:
        pass
    token = _accounts.create_token(state.db, email, is_admin=True, label="kachery-hub serve", expires_in=None)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{email}\n{token}\n")
    return token


class _HideTokens(logging.Filter):
    """Keep secrets out of the access log: sign-in tokens and sign-in request ids (one-time capabilities)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) > 2 and isinstance(record.args[2], str):
            record.args = (*record.args[:2], hide_secrets(record.args[2]), *record.args[3:])
        return True


def hide_secrets(target: str) -> str:
    """``target`` (path and query) with the value of every ``token`` query parameter and a sign-in request id hidden.

    A parameter's name counts once decoded, as the page reads it (``%74oken=`` is ``token=``).
    """
    path, mark, query = target.partition("?")
    path = _SIGN_IN_REQUEST_ID.sub(r"\1(hidden)", path)
    if query:
        parts = []
        for part in query.split("&"):
            name, equals, value = part.partition("=")
            parts.append(f"{name}=(hidden)" if equals and unquote_plus(name) == "token" else part)
        query = "&".join(parts)
    return path + mark + query


_SIGN_IN_REQUEST_ID = re.compile(r"^(/sign-in/|/api/sign-in-requests/)[^/]+")


def _cmd_serve(args: argparse.Namespace) -> int:
    from . import _serve

    settings = _settings(args)
    if args.workers > 1 and settings.resolved_database_url.startswith("sqlite"):
        print("error: --workers needs a PostgreSQL database (--database postgresql+psycopg://...): the embedded "
              "SQLite database wakes feed and task followers in its own process only", file=sys.stderr)
        return 1
    state = HubState.open(settings)
    token = _serve_token(state, args.admin_email)
    # proto must be IPPROTO_TCP (not 0) or asyncio skips TCP_NODELAY and every response waits ~40 ms.
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    if not settings.public_urls:  # signatures are bound to the hub's URLs: by default, where it listens
        state.settings = settings = settings.with_overrides(public_urls=default_public_urls(args.host, port))
    url = settings.public_urls[0]
    print(f"kachery hub: data in {settings.data_dir}", flush=True)
    print(f"    To sign in as {args.admin_email} (hub admin), open:\n    {url}/?token={token}", flush=True)
    print(f"    or set KACHERY_HUB_URL={url} KACHERY_HUB_TOKEN={token}", flush=True)
    if state.oidc is not None:
        print(f"    Browser sign-in through {settings.oidc_issuer} is on.", flush=True)
    print(f"    Signed requests are accepted for {', '.join(settings.public_urls)} (set with --public-url)", flush=True)
    serving = state if args.workers <= 1 else None
    if serving is None:
        print(f"    {args.workers} worker processes", flush=True)
        state.close()  # each worker opens its own
    try:
        _serve.run(settings, sock, state=serving, log_level=args.log_level, workers=args.workers)
    finally:
        if serving is not None:
            serving.close()
    return 0


@contextmanager
def _metadata(args: argparse.Namespace) -> Iterator[Database]:
    """The hub's database, migrated; tokens and clients are metadata only, so no byte store is opened."""
    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    try:
        db.migrate()
        yield db
    finally:
        db.close()


def _date(t: float | None, none: str = "-") -> str:
    return none if t is None else time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(t))


def _table(header: Sequence[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [list(header), *rows]) for i in range(len(header) - 1)]
    for r in [list(header), *rows]:
        print("  ".join([*(v.ljust(w) for v, w in zip(r, widths)), r[-1]]).rstrip())


def _cmd_token_create(args: argparse.Namespace) -> int:
    with _metadata(args) as db:
        print(_accounts.create_token(db, args.user, is_admin=args.admin, label=args.label, expires_in=args.expires_in))
    return 0


def _cmd_token_list(args: argparse.Namespace) -> int:
    with _metadata(args) as db:
        tokens = _accounts.list_tokens(db, args.user)
    _table(["ID", "USER", "STATUS", "CREATED", "EXPIRES", "LAST-USED", "LABEL"],
           [[t["id"], t["email"], t["status"], _date(t["created_at"]), _date(t["expires_at"], "never"),
             _date(t["last_used_at"]), t["label"] or ""] for t in tokens])
    return 0


def _cmd_token_revoke(args: argparse.Namespace) -> int:
    with _metadata(args) as db:
        done = _accounts.revoke_token(db, args.id, sign_out_clients=args.sign_out_clients)
    print(f"revoked {done['id']}; {done['sessions_ended']} browser session(s) ended, "
          f"{done['clients_signed_out']} client(s) signed out")
    return 0


def _cmd_client_list(args: argparse.Namespace) -> int:
    with _metadata(args) as db:
        clients = _accounts.list_clients(db, args.user)
    _table(["CLIENT", "USER", "TOKEN", "CREATED", "LABEL"],
           [[c["client_id"], c["email"], c["token_id"] or "-", _date(c["created_at"]), c["label"] or ""]
            for c in clients])
    return 0


def _cmd_client_revoke(args: argparse.Namespace) -> int:
    with _metadata(args) as db:
        _accounts.revoke_client(db, args.client_id)
    print(f"signed out {args.client_id}")
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    from ._bytestore import open_byte_store
    from ._gc import collect_garbage

    settings = _settings(args)
    if settings.database_url is None and not settings.data_dir.is_dir():  # a mistyped --data: say so
        print(f"error: no hub data in {settings.data_dir}", file=sys.stderr)
        return 1
    with _metadata(args) as db:
        store = open_byte_store(settings.resolved_storage_url)
        try:  # a state of its own, not HubState.open: that would start serve's periodic run too
            report = collect_garbage(HubState(settings=settings, db=db, store=store), grace_seconds=args.grace,
                                     dry_run=args.dry_run)
        finally:
            store.close()
    print(report.summary())
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from . import _migrations

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    try:
        applied = [] if args.check else db.migrate()
        current, legacy = _migrations.current_revision(db.engine), _migrations.before_alembic(db.engine)
        head = _migrations.head_revision()
    finally:
        db.close()
    if applied:
        print(f"applied: {', '.join(applied)}")
    print(f"database: {current or '(empty)'}" + (f" (schema_version {legacy}, from before Alembic)" if legacy else ""))
    print(f"head: {head}")
    if current != head:
        print("behind: `kachery-hub migrate` (or the hub's next start) upgrades it")
        return 1
    return 0


def _grace(text: str) -> float:
    if text.strip() == "0":
        return 0.0  # nothing spared for its age: only for a hub with no uploads in progress
    seconds = _duration(text)
    if seconds is None:
        raise argparse.ArgumentTypeError("a grace period of 'never' would keep everything; give a duration")
    return seconds


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers from 1 to 64")
    return int(text)


def _duration(text: str) -> float | None:
    try:
        return _accounts.parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kachery-hub", description="Run a kachery hub and manage its sign-in tokens.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def storage_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", help="folder for the database and file bytes (default $KACHERY_HUB_DATA or ~/.kachery-hub)")
        p.add_argument("--database", help="SQLAlchemy database URL (default sqlite:///<data>/hub.sqlite)")
        p.add_argument("--storage", help="byte store URL (default file://<data>/blobs)")

    s = sub.add_parser("serve", help="Run the hub.", description="Run the hub and print a sign-in URL.")
    storage_args(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    s.add_argument("--admin-email", default="admin@localhost", help="the user the printed sign-in token is for")
    s.add_argument("--oidc-issuer", help="OpenID Connect issuer for browser sign-in "
                   "(default $KACHERY_HUB_OIDC_ISSUER or https://accounts.google.com)")
    s.add_argument("--oidc-client-id", help="the hub's OAuth client ID at the issuer (default $KACHERY_HUB_OIDC_CLIENT_ID); "
                   "without one, browser sign-in uses tokens only")
    s.add_argument("--oidc-client-secret", help="its client secret (default $KACHERY_HUB_OIDC_CLIENT_SECRET)")
    s.add_argument("--admin-emails", help="comma-separated emails that are hub admins (default $KACHERY_HUB_ADMIN_EMAILS)")
    s.add_argument("--public-url", action="append", metavar="URL",
                   help="a URL clients reach the hub at, e.g. behind a reverse proxy; repeat or comma-separate for "
                   "several; signed requests for any other host are refused (default $KACHERY_HUB_PUBLIC_URL, "
                   "else where the hub listens: http://127.0.0.1:PORT and http://localhost:PORT)")
    s.add_argument("--trusted-proxies", metavar="IPS",
                   help="comma-separated addresses or networks of reverse proxies whose X-Forwarded-For and "
                   "X-Forwarded-Proto are believed (default $KACHERY_HUB_TRUSTED_PROXIES, else none)")
    s.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--log-format", choices=["text", "json"], help="log records as text, or one JSON object a line "
                   "on stderr with the request ID (default $KACHERY_HUB_LOG_FORMAT or text)")
    s.add_argument("--workers", type=_workers, default=1, metavar="N",
                   help="serve with N processes on the one socket (default 1); more than 1 needs PostgreSQL")
    s.set_defaults(func=_cmd_serve)

    t = sub.add_parser("token", help="Manage sign-in tokens.", description="Manage sign-in tokens.")
    tsub = t.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    c = tsub.add_parser("create", help="Print a new sign-in token for a user (created if new).",
                        description="Print a new sign-in token for a user (created if new).")
    storage_args(c)
    c.add_argument("--user", required=True, help="the user's email address")
    c.add_argument("--admin", action="store_true", help="make the user a hub admin")
    c.add_argument("--label", help="a note to remember the token by")
    c.add_argument("--expires-in", type=_duration, default=float(_accounts.DEFAULT_TOKEN_SECONDS), metavar="DURATION",
                   help="how long the token signs in: 3600, 30m, 12h, 7d, 2w, or never (default 7d)")
    c.set_defaults(func=_cmd_token_create)
    ls = tsub.add_parser("list", help="List sign-in tokens (never their secrets).",
                         description="List sign-in tokens: ID, user, status (active, expired, revoked), dates, label.")
    storage_args(ls)
    ls.add_argument("--user", help="only the tokens of this email address")
    ls.set_defaults(func=_cmd_token_list)
    rv = tsub.add_parser("revoke", help="Revoke a sign-in token and end the browser sessions it opened.",
                         description="Revoke a sign-in token (by the ID `token list` shows) and end the browser "
                         "sessions it opened; clients it signed in stay signed in unless --sign-out-clients.")
    storage_args(rv)
    rv.add_argument("id", help="the token's ID, e.g. t0123456789abcdef")
    rv.add_argument("--sign-out-clients", action="store_true", help="also sign out the clients it signed in")
    rv.set_defaults(func=_cmd_token_revoke)

    k = sub.add_parser("client", help="List and sign out clients.", description="List and sign out clients (keys).")
    ksub = k.add_subparsers(dest="client_command", required=True, metavar="ACTION")
    kl = ksub.add_parser("list", help="List signed-in clients.", description="List signed-in clients: "
                         "client ID, user, the token that signed it in, date, label.")
    storage_args(kl)
    kl.add_argument("--user", help="only the clients of this email address")
    kl.set_defaults(func=_cmd_client_list)
    kr = ksub.add_parser("revoke", help="Sign a client out.", description="Sign a client out; its key can sign in again "
                         "with a new token.")
    storage_args(kr)
    kr.add_argument("client_id", help="the client's ID (64 hex)")
    kr.set_defaults(func=_cmd_client_revoke)

    g = sub.add_parser("gc", help="Remove file bytes no project references any more.",
                       description="Remove file bytes no project references any more, except those recorded or "
                       "written within the grace period or wanted by an upload in progress; safe while the hub runs.")
    storage_args(g)
    g.add_argument("--grace", type=_grace, default=DEFAULT_GRACE_SECONDS, metavar="DURATION",
                   help="spare bytes recorded or written this recently: 30m, 1h, 2d... (default 1h)")
    g.add_argument("--dry-run", action="store_true", help="only count what would be removed")
    g.set_defaults(func=_cmd_gc)

    m = sub.add_parser("migrate", help="Upgrade the database's schema now (the hub does on start); show its revision.",
                       description="Upgrade the database's schema to this release's newest revision (Alembic), as "
                       "the hub does on start, and print the database's revision and the newest.")
    storage_args(m)
    m.add_argument("--check", action="store_true",
                   help="change nothing: print both revisions; exit status 1 if the database is behind")
    m.set_defaults(func=_cmd_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The hub's data is private: everything it creates (database, WAL, blobs, uploads) is owner-only.
    umask = os.umask(0o077)
    try:
        code: int = args.func(args)
    except HubError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        os.umask(umask)
    return code


if __name__ == "__main__":
    sys.exit(main())

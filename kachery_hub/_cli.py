"""The ``kachery-hub`` command: run a hub, create sign-in tokens."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from . import _accounts
from ._database import Database
from ._settings import Settings
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
    )


def _serve_token(state: HubState, email: str) -> str:
    """The admin token printed by ``serve``: made once per data folder and reused, as Jupyter reuses its token."""
    path = state.settings.data_dir / _SERVE_TOKEN_FILE
    try:
        lines = path.read_text().split()
        if len(lines) == 2 and lines[0] == email:
            return lines[1]
    except FileNotFoundError:
        pass
    token = _accounts.create_token(state.db, email, is_admin=True, label="kachery-hub serve")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{email}\n{token}\n")
    return token


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ._app import create_app

    settings = _settings(args)
    state = HubState.open(settings)
    token = _serve_token(state, args.admin_email)
    app = create_app(settings, state=state)
    # proto must be IPPROTO_TCP (not 0) or asyncio skips TCP_NODELAY and every response waits ~40 ms.
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{port}"
    print(f"kachery hub: data in {settings.data_dir}", flush=True)
    print(f"    To sign in as {args.admin_email} (hub admin), open:\n    {url}/?token={token}", flush=True)
    print(f"    or set KACHERY_HUB_URL={url} KACHERY_HUB_TOKEN={token}", flush=True)
    if state.oidc is not None:
        print(f"    Browser sign-in through {settings.oidc_issuer} is on.", flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, lifespan="on")).run(sockets=[sock])
    finally:
        state.close()
    return 0


def _cmd_token_create(args: argparse.Namespace) -> int:
    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)  # tokens are metadata only: no byte store needed
    try:
        db.migrate()
        print(_accounts.create_token(db, args.user, is_admin=args.admin, label=args.label))
    finally:
        db.close()
    return 0


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
    s.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    s.set_defaults(func=_cmd_serve)

    t = sub.add_parser("token", help="Manage sign-in tokens.", description="Manage sign-in tokens.")
    tsub = t.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    c = tsub.add_parser("create", help="Print a new sign-in token for a user (created if new).",
                        description="Print a new sign-in token for a user (created if new).")
    storage_args(c)
    c.add_argument("--user", required=True, help="the user's email address")
    c.add_argument("--admin", action="store_true", help="make the user a hub admin")
    c.add_argument("--label", help="a note to remember the token by")
    c.set_defaults(func=_cmd_token_create)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except HubError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())

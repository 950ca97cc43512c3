"""The hub's pages: one layout and stylesheet, what a signed-in user sees, and ``/docs`` offline.

Every page (home, sign-in, confirm, a project, errors) is made by :func:`page`:
the same header, the hub's own stylesheet (``/static/hub.css?v=<hash>``: the
URL names its content, so browsers may cache it and a changed stylesheet is a
new URL) and no inline style or script, which the Content-Security-Policy
forbids. Colours follow the system's light or dark preference
(``prefers-color-scheme``); every field has a ``<label for>``; every value
shown is escaped.

A signed-in browser's home lists its user's projects (each linked to a
read-only page of members and files, paged by the hub), the computers signed
in as that user (each with a sign-out button) and how to connect a notebook.
The queries and the HTML are here; the routes that need the browser's session
and its CSRF-checked forms are in :mod:`._signin`.

Under a path prefix (``https://lab.example.org/kachery/``, a reverse proxy
stripping ``/kachery`` before the hub) every link, form action and redirect
carries the prefix: :func:`site_root` finds it in the public URL whose host
the request names (``Settings.public_urls``), so the same hub reached at its
own address (no such public URL) has none.

``/docs`` is Swagger UI with its script, stylesheet and icon served by the hub
from the ``fastapi-offline`` package (``/static/docs/...``): it works where the
hub has no Internet access, and the page names no other host (Swagger UI's
validator badge, which would load from one, is off).
"""

from __future__ import annotations

import hashlib
import html
import time
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select

from kachery_core._uris import format_sha1_uri

from . import _database as tables
from . import _files, _projects
from ._auth import Caller
from ._database import Database
from ._state import state_of
from .errors import Forbidden, NotFound

STYLESHEET = Path(__file__).parent / "static" / "hub.css"
#: files listed on one page of a project (the next page is a link)
FILES_PER_PAGE = 50
#: how long browsers keep the stylesheet and the docs' assets before asking again (they ask with an ETag)
ASSET_MAX_AGE = 24 * 3600
#: the Swagger UI files served from the fastapi-offline package, by their name there
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}
_DOCS_PREFIX = "/static/docs/"

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class _Asset:
    body: bytes
    etag: str


@cache
def _asset(path: Path) -> _Asset:
    body = path.read_bytes()
    return _Asset(body, '"' + hashlib.sha1(body).hexdigest()[:20] + '"')


def _public_base(request: Request) -> tuple[str, str] | None:
    """(host, path prefix) of the first public URL whose host (and port) is the request's Host, if one is."""
    host = request.headers.get("host", "").strip().lower()
    default_port = {"http": ":80", "https": ":443"}.get(request.url.scheme)
    if default_port and host.endswith(default_port):
        host = host.removesuffix(default_port)  # public URLs are normalized without it
    for public_host, prefix in state_of(request).settings.signing_bases:
        if public_host == host:
            return public_host, prefix
    return None


def site_root(request: Request) -> str:
    """The path prefix of this hub's pages as the browser sees them: "" or, behind a proxy, "/kachery".

    A proxy that serves the hub under a prefix strips it, so the request path does not say it: the
    prefix is that of the public URL whose host is the request's Host (a proxy passes the browser's on),
    and the hub reached at an address of its own has none. An ASGI ``root_path`` set by the server
    comes first. A Host naming a public URL only ever gives that URL's prefix, never another place.
    """
    root = str(request.scope.get("root_path", "")).rstrip("/")
    if root:
        return root
    public = _public_base(request)
    return public[1] if public is not None else ""


def site_url(request: Request) -> str:
    """This hub's URL as the browser reached it: its scheme (https from a trusted proxy only), host and prefix."""
    public = _public_base(request)
    host = public[0] if public is not None else request.url.netloc  # "host:443" as the public URL writes it
    return f"{request.url.scheme}://{host}{site_root(request)}"


def _stylesheet_url(root: str) -> str:
    return f"{root}/static/hub.css?v={_asset(STYLESHEET).etag.strip(chr(34))[:12]}"


def _serve(request: Request, asset: _Asset, media_type: str) -> Response:
    headers = {"Cache-Control": f"public, max-age={ASSET_MAX_AGE}", "ETag": asset.etag,
               "X-Content-Type-Options": "nosniff"}
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=media_type, headers=headers)


def page(title: str, body: str, status: int = 200, *, root: str = "") -> HTMLResponse:
    """A page of the hub: ``body`` is HTML whose values the caller escaped; ``root`` is :func:`site_root`."""
    r = html.escape(root)
    full_title = title if title == "kachery hub" else f"{title} · kachery hub"
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(full_title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<link rel="stylesheet" href="{html.escape(_stylesheet_url(root))}"></head>
<body><header><nav><a class="brand" href="{r}/">kachery hub</a> <a href="{r}/docs">API</a></nav></header>
<main><h1>{html.escape(title)}</h1>
{body}
</main></body></html>"""
    return HTMLResponse(doc, status_code=status, headers={
        "Cache-Control": "no-store", "Referrer-Policy": "strict-origin", "X-Frame-Options": "DENY",
        "Content-Security-Policy": "default-src 'self'; style-src 'self'; frame-ancestors 'none'"})


def error_page(title: str, message: str, status: int, *, root: str = "") -> HTMLResponse:
    back = f'<p><a href="{html.escape(root)}/">Back to the hub</a></p>'
    return page(title, f'<p class="error">{html.escape(message)}</p>{back}', status, root=root)


@router.get("/static/hub.css")
async def stylesheet(request: Request) -> Response:
    return _serve(request, _asset(STYLESHEET), "text/css; charset=utf-8")


def _docs_folder() -> Path | None:
    try:
        return Path(str(resources.files("fastapi_offline") / "static"))
    except ModuleNotFoundError:  # the hub still runs; /docs says what is missing
        return None


@router.get(_DOCS_PREFIX + "{name}")
async def docs_asset(name: str, request: Request) -> Response:
    folder = _docs_folder()
    if name not in DOCS_ASSETS or folder is None:
        raise NotFound(f"no such file: {_DOCS_PREFIX}{name}")
    return _serve(request, _asset(folder / name), DOCS_ASSETS[name])


@router.get("/docs")
async def docs(request: Request) -> HTMLResponse:
    root = site_root(request)
    if _docs_folder() is None:
        return page("API", "<p>Swagger UI's files are not installed here (<code>pip install fastapi-offline</code>). "
                    f'The API is described at <a href="{html.escape(root)}/openapi.json">/openapi.json</a>.</p>',
                    root=root)
    return get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json", title="kachery hub - API",
        swagger_js_url=f"{root}{_DOCS_PREFIX}swagger-ui-bundle.js",
        swagger_css_url=f"{root}{_DOCS_PREFIX}swagger-ui.css",
        swagger_favicon_url=f"{root}{_DOCS_PREFIX}favicon.png",
        oauth2_redirect_url=None,
        swagger_ui_parameters={"validatorUrl": None},
    )


# ---------------------------------------------------------------- what a signed-in user sees


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} bytes"
    value, unit = n / 1000, "KB"
    for bigger in ("MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{value:.1f} {unit}"


def _project_link(root: str, project_id: str, after: str | None = None) -> str:
    link = f"{root}/projects/{quote(project_id, safe='')}"
    return link + (f"?after={after}" if after else "")


_owner = tables.users.alias("owner")


def user_projects(db: Database, user_id: str) -> list[Any]:
    """The projects ``user_id`` is a member of, oldest first, with their role and owner."""
    with db.begin() as conn:
        return list(conn.execute(
            select(tables.projects.c.id, tables.projects.c.name, tables.projects.c.public_read,
                   tables.members.c.role, _owner.c.email.label("owner_email"))
            .join(tables.members, tables.members.c.project_id == tables.projects.c.id)
            .outerjoin(_owner, _owner.c.id == tables.projects.c.owner_user_id)
            .where(tables.members.c.user_id == user_id).order_by(tables.projects.c.created_at, tables.projects.c.id)
        ).all())


def user_computers(db: Database, user_id: str) -> list[Any]:
    """The clients (computers, notebooks) signed in as ``user_id``, oldest first."""
    with db.begin() as conn:
        return list(conn.execute(
            select(tables.clients.c.client_id, tables.clients.c.label, tables.clients.c.created_at)
            .where(tables.clients.c.user_id == user_id)
            .order_by(tables.clients.c.created_at, tables.clients.c.client_id)
        ).all())


def sign_out_computer(db: Database, user_id: str, client_id: str) -> None:
    """Sign out a computer of ``user_id``; anyone else's is "not found", like one that does not exist."""
    with db.begin() as conn:
        gone = conn.execute(tables.clients.delete().where(
            tables.clients.c.client_id == client_id, tables.clients.c.user_id == user_id)).rowcount
    if not gone:
        raise NotFound("no computer with this ID is signed in as you (it may be signed out already)")


def connect_notebook(base: str) -> str:
    b = html.escape(base)
    return f"""<h2>Connect a notebook</h2>
<p>In Jupyter, load the extension and sign in with one click:</p>
<pre>%load_ext kachery_jupyter
%kc_login --hub {b}</pre>
<p>Or from Python (in a notebook or a terminal it prints a sign-in link to open in this browser):</p>
<pre>import kachery_core as kc
kc.init(hub_url="{b}")</pre>"""


def home_sections(projects: list[Any], computers: list[Any], csrf_field: str, root: str = "") -> str:
    """The signed-in home's lists: projects, and computers each with a sign-out form."""
    rows = "".join(
        f'<tr><td><a href="{html.escape(_project_link(root, p.id))}">{html.escape(p.name)}</a></td>'
        f"<td>{html.escape(p.role)}</td><td>{'public' if p.public_read else 'private'}</td>"
        f"<td>{html.escape(p.owner_email or '')}</td></tr>" for p in projects)
    out = ["<h2>Your projects</h2>"]
    out.append(f"<table><thead><tr><th>Project</th><th>Your role</th><th>Access</th><th>Owner</th></tr></thead>"
               f"<tbody>{rows}</tbody></table>" if projects else
               '<p class="muted">None yet: a computer that signs in gets a project named "default".</p>')
    out.append("<h2>Your signed-in computers</h2>")
    if not computers:
        out.append('<p class="muted">None: no computer or notebook is signed in as you.</p>')
    else:
        rows = ""
        for c in computers:
            # <bdi>: right-to-left override characters in a label cannot reorder the rest of the page.
            label = f"<bdi>{html.escape(c.label)}</bdi>" if c.label else '<span class="muted">(no label)</span>'
            rows += (f"<tr><td>{label}</td><td><code>{html.escape(c.client_id[:16])}…</code></td>"
                     f"<td>{_when(c.created_at)}</td><td>"
                     f'<form class="inline" method="post" action="{html.escape(root)}/computers/sign-out">{csrf_field}'
                     f'<input type="hidden" name="client_id" value="{html.escape(c.client_id)}">'
                     "<button>Sign out</button></form></td></tr>")
        out.append("<table><thead><tr><th>Computer</th><th>Client</th><th>Signed in</th><th></th></tr></thead>"
                   f"<tbody>{rows}</tbody></table>"
                   '<p class="muted">A computer signed out here must sign in again to use this hub; one that keeps a '
                   "sign-in token (<code>KACHERY_HUB_TOKEN</code>) does so by itself, until the token is revoked.</p>")
    return "".join(out)


def project_page(db: Database, who: Caller, project_id: str, after: str | None, root: str = "") -> tuple[str, str]:
    """The title and body of a project's read-only page: members (to members), a page of files.

    Raises :class:`~.errors.ProjectNotFound`, :class:`~.errors.Forbidden`, or
    :class:`~.errors.InvalidInput` for an ``after`` that is not a sha1.
    """
    if after is not None:
        _files._check_sha1(after)
    with db.begin() as conn:
        project = _projects.require_role(conn, who, project_id, "read")
        files = _files._list_files(conn, who, project_id, FILES_PER_PAGE + 1, after)
        total = int(conn.execute(select(func.count()).select_from(tables.files)
                                 .where(tables.files.c.project_id == project_id)).scalar_one())
    try:
        members: list[dict[str, Any]] | None = _projects._members(db, who, project_id)
    except Forbidden:
        members = None  # public-read shares the data, not who the members are
    more = len(files) > FILES_PER_PAGE
    files = files[:FILES_PER_PAGE]
    role = html.escape(project.caller_role) if project.caller_role else "none (it is public)"
    out = [f"<p>Project <code>{html.escape(project_id)}</code> · "
           f"{'public' if project.public_read else 'private'} · your role: {role}</p>", "<h2>Members</h2>"]
    if members is None:
        out.append('<p class="muted">Only members see who the members are.</p>')
    else:
        rows = "".join(f"<tr><td>{html.escape(m['email'])}</td><td>{html.escape(m['role'])}</td></tr>" for m in members)
        out.append(f"<table><thead><tr><th>Email</th><th>Role</th></tr></thead><tbody>{rows}</tbody></table>")
    out.append(f"<h2>Files</h2><p>{total} file{'' if total == 1 else 's'}"
               + (", by sha1 from the one after <code>" + html.escape(after) + "</code>" if after else "") + ".</p>")
    if files:
        rows = "".join(
            f"<tr><td>{html.escape(f['label'] or '')}</td><td class=\"num\">{_size(int(f['size']))}</td>"
            f"<td>{_when(f['created_at'])}</td>"
            f"<td><code>{html.escape(format_sha1_uri(f['sha1'], label=f['label']))}</code></td></tr>" for f in files)
        out.append("<table><thead><tr><th>Label</th><th>Size</th><th>Stored</th><th>URI</th></tr></thead>"
                   f"<tbody>{rows}</tbody></table>")
    if more:
        out.append(f'<p><a href="{html.escape(_project_link(root, project_id, files[-1]["sha1"]))}">Next files</a></p>')
    out.append(f'<p><a href="{html.escape(root)}/">Back to your projects</a></p>')
    return f"Project {project.name}", "".join(out)

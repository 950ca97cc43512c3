"""Rich displays of what the magics return: a stored URI, the kernel's status.

Each object has a ``text/plain`` form (a terminal, a saved notebook's text, a log) and a
``text/html`` form for notebooks. Every value in the HTML is escaped (labels and project
names are anyone's text); the copy button is a few lines of plain JavaScript in its
``onclick`` (no script tag, no CDN), which a front end that does not run it simply ignores:
the URI stays visible and selectable.
"""

from __future__ import annotations

import html
from typing import Any

import kachery_core as kc

#: Colours and fonts follow the JupyterLab theme (light or dark), with plain fallbacks elsewhere.
_BOX = ("display:inline-block;max-width:100%;box-sizing:border-box;padding:6px 10px;border-radius:4px;"
        "border:1px solid var(--jp-border-color2,#c8c8c8);color:var(--jp-ui-font-color1,inherit);"
        "background:var(--jp-layout-color1,transparent);font-family:var(--jp-ui-font-family,sans-serif);"
        "font-size:var(--jp-ui-font-size1,13px);line-height:1.5")
_MUTED = "color:var(--jp-ui-font-color2,#666)"
_CODE = ("font-family:var(--jp-code-font-family,monospace);font-size:var(--jp-code-font-size,12px);"
         "user-select:all;overflow-wrap:anywhere")
_BUTTON = ("margin-left:8px;padding:1px 8px;cursor:pointer;border-radius:3px;font:inherit;"
           "border:1px solid var(--jp-border-color1,#999);background:var(--jp-layout-color2,#eee);"
           "color:var(--jp-ui-font-color1,inherit)")

# Copies the button's data-uri: the clipboard API where the page is a secure context (localhost,
# https), else a selected textarea and execCommand (an http page served from another host).
_COPY_JS = (
    "const b=this,u=b.dataset.uri;"
    "const done=()=>{b.textContent='Copied';setTimeout(()=>{b.textContent='Copy'},1500)};"
    "const old=()=>{const t=document.createElement('textarea');t.value=u;document.body.appendChild(t);"
    "t.select();try{document.execCommand('copy');done()}catch(e){}t.remove()};"
    "if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(u).then(done,old)}else{old()}"
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def format_size(size: int | None) -> str:
    """``size`` bytes for a person: ``512 B``, ``1.5 KiB``, ``600.0 MiB``."""
    if size is None:
        return "size unknown"
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


class StoredURI(str):
    """The ``sha1://`` URI ``%kc_store`` returns: a ``str`` (``uri = %kc_store x``, paste it, pass it
    to ``kc.load_npy``), shown in a notebook with its label, size, project and a copy button.

    Its ``text/plain`` form is the bare URI. Pickled, it is a plain ``str``.
    """

    label: str | None
    size: int | None
    project_id: str | None
    project_name: str | None
    hub_url: str | None

    def __new__(cls, uri: str, *, size: int | None = None, project_id: str | None = None,
                project_name: str | None = None, hub_url: str | None = None) -> StoredURI:
        self = super().__new__(cls, uri)
        self.label = kc.parse_sha1_uri(uri).label
        self.size = size
        self.project_id = project_id
        self.project_name = project_name
        self.hub_url = hub_url
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (str, (str(self),))  # a restricted unpickler (and kachery-cloud) knows str, not this class

    @property
    def where(self) -> str:
        """Where the content is: the hub project, or this computer only."""
        if self.hub_url is None:
            return "this computer only"
        project = f"{self.project_name} ({self.project_id})" if self.project_name else f"{self.project_id}"
        return f"project {project} on {self.hub_url}"

    def _repr_html_(self) -> str:
        uri = str(self)
        label = self.label if self.label is not None else "(no label)"
        return (
            f'<div class="kachery-uri" style="{_BOX}">'
            f'<div><b>{_e(label)}</b> <span style="{_MUTED}">· {_e(format_size(self.size))} · {_e(self.where)}</span></div>'
            f'<div><code style="{_CODE}">{_e(uri)}</code>'
            f'<button type="button" title="Copy the URI" data-uri="{_e(uri)}" style="{_BUTTON}" '
            f'onclick="{_e(_COPY_JS)}">Copy</button></div></div>'
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/plain": str(self), "text/html": self._repr_html_()}

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        # IPython's text/plain printer of str would win over the bundle's (with quotes): shown on
        # its own, the bare URI; inside a list or dict, quoted as any string there.
        p.text(str(self) if len(getattr(p, "stack", ())) <= 1 else str.__repr__(self))


class Status:
    """What ``%kc_status`` shows: named rows, as text and as an HTML table."""

    def __init__(self, rows: list[tuple[str, str]]) -> None:
        self.rows = rows

    def __getitem__(self, name: str) -> str:
        for key, value in self.rows:
            if key == name:
                return value
        raise KeyError(name)

    def __str__(self) -> str:
        width = max(len(key) for key, _ in self.rows)
        return "\n".join(f"{key + ':':<{width + 1}} {value}" for key, value in self.rows)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        body = "".join(
            f'<tr><th style="text-align:left;padding:1px 12px 1px 0;font-weight:600;{_MUTED}">{_e(key)}</th>'
            f'<td style="text-align:left;padding:1px 0;{_CODE.replace("user-select:all;", "")}">{_e(value)}</td></tr>'
            for key, value in self.rows
        )
        return f'<div class="kachery-status" style="{_BOX}"><table style="border-collapse:collapse">{body}</table></div>'

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/plain": str(self), "text/html": self._repr_html_()}


def _store_size(folder: str) -> tuple[int, int]:
    """Files and bytes in the local store (``sha1/``), leaving out its temp and bookkeeping folders."""
    import os

    count = total = 0
    for root, dirs, files in os.walk(os.path.join(folder, "sha1")):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            try:
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
            except OSError:
                continue  # removed meanwhile
            count += 1
    return count, total


def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _hub_api_version(url: str) -> str | None:
    from kachery_core import _hub

    try:
        body = _hub.anonymous_client(url).send("GET", "/api/health").json()
    except (kc.KacheryError, ValueError):
        return None
    version = body.get("api_version") if isinstance(body, dict) else None
    return str(version) if version is not None else None


def kernel_status() -> Status:
    """Hub, user, project, client, local store and versions, as ``%kc_status`` shows them."""
    import platform

    info = kc.get_client_info()
    hub = info.get("hub_url")
    rows: list[tuple[str, str]] = []
    if not hub:
        rows.append(("hub", "none: the local store only (sign in to a hub with %kc_login)"))
    elif info.get("hub_error"):
        rows.append(("hub", f"{hub}: cannot be reached ({info['hub_error']}); the local store still works"))
    else:
        api = _hub_api_version(hub)
        rows.append(("hub", f"{hub}" + (f" (API {api})" if api else "")))
    if hub and info.get("ephemeral"):
        rows.append(("user", "none: ephemeral, reads public projects only"))
    elif hub and info.get("signed_in"):
        rows.append(("user", str(info["user"].get("email") or info["user"].get("user_id", "?"))))
    elif hub:
        rows.append(("user", "not signed in: run %kc_login"))
    project_id = info.get("project_id")
    if project_id and info.get("signed_in"):
        try:
            name = kc.get_project(project_id).get("name")
        except kc.KacheryError as e:
            name = f"cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        rows.append(("project", f"{project_id} ({name})" if name else str(project_id)))
    elif project_id:
        rows.append(("project", str(project_id)))
    if info.get("client_id"):
        rows.append(("client", str(info["client_id"])))
    folder = str(kc.get_kachery_cloud_dir())
    count, total = _store_size(folder)
    rows.append(("local store", f"{folder} ({count} file{'s' if count != 1 else ''}, {format_size(total)})"))
    versions = [f"kachery-jupyter {kc.__version__}"]
    for distribution in ("anywidget", "ipywidgets", "tqdm", "ipython"):
        version = _version(distribution)
        versions.append(f"{distribution} {version}" if version else f"{distribution} not installed")
    versions.append(f"Python {platform.python_version()}")
    rows.append(("versions", ", ".join(versions)))
    return Status(rows)

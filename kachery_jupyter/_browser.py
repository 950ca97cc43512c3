"""The project browser: projects, files, mutables, feeds, tasks and members of a hub.

Everything the browser shows comes from the kernel through the signed client (no
second sign-in, and it works where the browser cannot reach the hub, as in Colab).
The front end (``js/browser.js``) asks with custom messages and the kernel answers
each one; nothing grows in a trait:

    front end → kernel  {"type": "request", "id": n, "op": "files", "project_id": p, "q": "", "after": null}
    kernel → front end  {"type": "response", "id": n, "ok": true, "result": {...}}
                        {"type": "response", "id": n, "ok": false, "error": "HubPermissionError: ..."}

Operations (``op``): ``projects``; ``files`` (``q`` a label substring, ``after`` the
last sha1 of the page before: search and paging are done by the hub, a page at a
time); ``preview`` (the first bytes of a file only, by an HTTP range: text, JSON,
npy header and first rows, PNG/JPEG as a data URL up to :data:`IMAGE_CAP`);
``load`` (assigns the object to a variable of the user's namespace); ``mutables``
and ``mutable``; ``feeds`` and ``tasks``; ``open_feed`` / ``open_tasks`` / ``close_opened``
(the live viewer or the task panel, as the ``opened`` child widget); ``members``,
``set_member`` and ``remove_member`` (admins).
"""

from __future__ import annotations

import base64
import html
import json
import keyword
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import anywidget
import traitlets
from ipywidgets import Widget, widget_serialization  # type: ignore[import-untyped]

import kachery_core as kc
from kachery_core import _hub

from . import _objects
from ._assets import module, stylesheet

PAGE = 200  # files in one page
PREVIEW_BYTES = 64 * 1024  # bytes fetched to preview text, JSON or an array's first rows
IMAGE_CAP = 2 * 1024 * 1024  # images larger than this are not previewed (the data URL would be as large)
MUTABLE_VALUE_CAP = 100_000  # characters of a mutable's value shown
NPY_SHOW = 10  # rows and columns of an array shown
NPY_MAGIC = b"\x93NUMPY"


def _error_text(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _str(value: Any, name: str, limit: int = 10_000) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise kc.InvalidArgumentError(name, value, "expected a string")
    return value


def _quoted(project_id: str) -> str:
    return quote(project_id, safe="")


# ---------------------------------------------------------------- files and previews


def list_files(project_id: str, *, q: str = "", after: str | None = None, limit: int = PAGE) -> dict[str, Any]:
    """One page of a project's files whose label holds ``q`` (any case), after sha1 ``after``:
    ``{"files": [...], "next": sha1 or None}``; the hub does the search and the paging."""
    params: dict[str, Any] = {"limit": limit + 1}  # one more tells whether a next page exists
    if q:
        params["q"] = q
    if after:
        params["after"] = after
    rows = _hub.connect("listing files").json("GET", f"/api/projects/{_quoted(project_id)}/files", params=params)["files"]
    files = [{
        "sha1": r["sha1"], "label": r.get("label") or "", "size": r["size"], "created_at": r.get("created_at"),
        "created_by": r.get("created_by") or "", "uri": kc.format_sha1_uri(r["sha1"], label=r.get("label") or None),
    } for r in rows[:limit]]
    return {"files": files, "next": files[-1]["sha1"] if len(rows) > limit else None}


def _npy_preview(uri: str, head: bytes, size: int) -> dict[str, Any]:
    """Shape, dtype and the first rows of an .npy file from its first bytes (and at most one more range)."""
    import io

    import numpy as np

    buf = io.BytesIO(head)
    version = np.lib.format.read_magic(buf)
    reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if reader is None:
        return {"kind": "binary", "note": f"npy format version {version} is not previewed"}
    shape, fortran, dtype = reader(buf)
    offset = buf.tell()
    info: dict[str, Any] = {"kind": "npy", "shape": list(shape), "dtype": str(dtype), "fortran_order": fortran,
                            "size": size}
    if dtype.hasobject:
        info["note"] = "an array of Python objects: not loaded (it would need pickle)"
        return info
    row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    if fortran or len(shape) == 0:
        count = min(int(np.prod(shape, dtype=np.int64)), NPY_SHOW * NPY_SHOW)
    else:
        rows = min(shape[0], NPY_SHOW, max(1, PREVIEW_BYTES // max(1, row * dtype.itemsize)))
        count = rows * row
    want = count * dtype.itemsize
    data = head[offset: offset + want]
    if len(data) < want:  # the head does not hold the first rows: one more range, of just those
        data = kc.load_bytes(uri, offset, offset + want)
    flat = np.frombuffer(data, dtype=dtype, count=count)
    if fortran or len(shape) == 0:
        shown: Any = flat
        info["slice"] = "first elements (in file order)"
    else:
        part = flat.reshape((count // row if row else 0, *shape[1:]))
        shown = part[(slice(None),) + (slice(0, NPY_SHOW),) * (len(shape) - 1)]
        info["slice"] = "[:{}{}]".format(part.shape[0], ", :%d" % NPY_SHOW * (len(shape) - 1))
    info["text"] = np.array2string(shown, threshold=NPY_SHOW * NPY_SHOW * 2, edgeitems=NPY_SHOW, max_line_width=120)
    return info


def preview(uri: str, size: int) -> dict[str, Any]:
    """What the browser shows of a file: only its first bytes are fetched (by a byte range)."""
    head = kc.load_bytes(uri, 0, min(size, PREVIEW_BYTES))
    whole = len(head) == size
    if head.startswith(NPY_MAGIC):
        return _npy_preview(uri, head, size)
    image = "image/png" if head.startswith(b"\x89PNG\r\n\x1a\n") else "image/jpeg" if head.startswith(b"\xff\xd8\xff") else None
    if image:
        if size > IMAGE_CAP:
            return {"kind": "binary", "note": f"a {image[6:].upper()} image of {size:,} bytes: too large to preview"}
        data = head if whole else kc.load_bytes(uri, 0, size)
        return {"kind": "image", "mime": image, "src": f"data:{image};base64,{base64.b64encode(data).decode()}"}
    try:
        text = head.decode("utf-8") if whole else head.decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        if whole or e.start < len(head) - 4:  # not a character cut at the end of the range
            return {"kind": "binary", "note": f"{size:,} bytes of binary data", "hex": head[:256].hex(" ")}
        text = head[: e.start].decode("utf-8")
    if whole and text.lstrip()[:1] in ("{", "["):
        try:
            return {"kind": "json", "value": json.loads(text)}
        except ValueError:
            pass
    return {"kind": "text", "text": text, "truncated": not whole, "size": size}


def valid_name(name: Any) -> str:
    """``name`` when it can be assigned in a notebook, else an error saying why."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise kc.InvalidArgumentError("name", name, "not a valid Python variable name")
    return name


# ---------------------------------------------------------------- the widget


class ProjectBrowser(anywidget.AnyWidget):
    """Browse what the signed-in user can see on the hub: ``ProjectBrowser()`` or ``ProjectBrowser("PROJECT")``."""

    _esm = module("browser.js")
    _css = stylesheet("browser.css")

    hub_url = traitlets.Unicode("").tag(sync=True)
    user = traitlets.Unicode("").tag(sync=True)
    #: the project shown first
    project_id = traitlets.Unicode("").tag(sync=True)
    #: the live feed viewer or the task panel opened from the browser, shown below it
    opened = traitlets.Instance(Widget, allow_none=True).tag(sync=True, **widget_serialization)
    page_size = traitlets.Int(PAGE).tag(sync=True)

    def __init__(self, project: str | None = None, *, user_ns: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # before anything can fail: a half-made widget fails again when collected
        self._user_ns = user_ns
        try:
            client = _hub.connect_signed("browsing the hub")
            self.projects = _projects()
            chosen = self._find(project) if project else kc.get_project_id()
        except BaseException:
            self.close()
            raise
        with self.hold_sync():
            self.hub_url = client.url
            me = kc.get_client_info().get("user")
            self.user = str((me.get("email") if isinstance(me, dict) else me) or "")
            self.project_id = chosen
        self.on_msg(self._on_msg)
        self._ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "projects": lambda m: _projects(), "files": self._files, "preview": self._preview, "load": self._load,
            "mutables": self._mutables, "mutable": self._mutable, "feeds": self._feeds, "tasks": self._tasks,
            "open_feed": self._open_feed, "open_tasks": self._open_tasks, "close_opened": self._close_opened,
            "members": self._members, "set_member": self._set_member, "remove_member": self._remove_member,
        }

    def _find(self, project: str) -> str:
        """A project by id or by name (a name two projects share is ambiguous)."""
        if any(p["project_id"] == project for p in self.projects):
            return project
        named = [p["project_id"] for p in self.projects if p["name"] == project]
        if len(named) == 1:
            return str(named[0])
        if named:
            raise kc.InvalidArgumentError("project", project, f"{len(named)} projects have this name; give the id")
        return str(kc.get_project(project)["project_id"])  # a public project the user is not a member of, or an error

    # -- requests from the front end -------------------------------------------

    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "request":
            self.send(self.answer(content))

    def answer(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The response to one request (also what tests call)."""
        reply: dict[str, Any] = {"type": "response", "id": request.get("id")}
        op = self._ops.get(str(request.get("op")))
        if op is None:
            return {**reply, "ok": False, "error": f"unknown operation {request.get('op')!r}"}
        try:
            return {**reply, "ok": True, "result": op(dict(request))}
        except (kc.KacheryError, ValueError, TypeError, KeyError, OSError) as e:
            return {**reply, "ok": False, "error": _error_text(e)}

    def _pid(self, m: dict[str, Any]) -> str:
        return _str(m.get("project_id") or self.project_id, "project_id", 200)

    def _files(self, m: dict[str, Any]) -> dict[str, Any]:
        after = m.get("after")
        return list_files(self._pid(m), q=_str(m.get("q") or "", "q", 1000),
                          after=_str(after, "after", 40) if after else None, limit=max(1, min(int(self.page_size), 1000)))

    def _uri(self, m: dict[str, Any]) -> str:
        return kc.format_sha1_uri(_str(m.get("sha1"), "sha1", 40), label=str(m.get("label") or "") or None)

    def _preview(self, m: dict[str, Any]) -> dict[str, Any]:
        size = m.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise kc.InvalidArgumentError("size", size, "expected the file's size in bytes")
        return preview(self._uri(m), size)

    def _load(self, m: dict[str, Any]) -> dict[str, Any]:
        name = valid_name(m.get("name"))  # refused before any download
        uri = self._uri(m)
        kind = None
        if _objects.kind_from_label(uri) == "file":  # no telling extension: an array is known by its first bytes
            kind = "npy" if kc.load_bytes(uri, 0, min(len(NPY_MAGIC), int(m.get("size") or 0))) == NPY_MAGIC else None
        value = _objects.load_object(uri, kind)
        ns = self._user_ns if self._user_ns is not None else _shell_namespace()
        ns[name] = value
        return {"name": name, "type": type(value).__name__}

    def _mutables(self, m: dict[str, Any]) -> dict[str, Any]:
        prefix = _str(m.get("prefix") or "", "prefix", 1000)
        params = {"prefix": prefix, "limit": 1001}
        rows = _hub.connect("listing mutables").json(
            "GET", f"/api/projects/{_quoted(self._pid(m))}/mutables", params=params)["mutables"]
        return {"mutables": [{"key": r["key"], "size": r.get("size"), "updated_at": r.get("updated_at")}
                             for r in rows[:1000]], "more": len(rows) > 1000}

    def _mutable(self, m: dict[str, Any]) -> dict[str, Any]:
        key = _str(m.get("key"), "key", 1000)
        value = kc.get_mutable(key, project_id=self._pid(m))
        text = "" if value is None else value
        return {"key": key, "value": text[:MUTABLE_VALUE_CAP], "truncated": len(text) > MUTABLE_VALUE_CAP,
                "exists": value is not None}

    def _feeds(self, m: dict[str, Any]) -> dict[str, Any]:
        feeds = kc.list_feeds(project_id=self._pid(m))
        return {"feeds": [{k: f.get(k) for k in ("feed_id", "uri", "label", "message_count", "last_append_at")}
                          for f in feeds[:1000]]}

    def _tasks(self, m: dict[str, Any]) -> dict[str, Any]:
        pid = self._pid(m)
        backends = kc.list_task_backends(pid)
        jobs = kc.list_task_jobs(pid, limit=1)
        return {"backends": len(backends), "has_jobs": bool(jobs)}

    def _open_feed(self, m: dict[str, Any]) -> dict[str, Any]:
        from ._feedviewer import FeedViewer

        self._close_opened(m)
        self.opened = FeedViewer(kc.load_feed(_str(m.get("uri"), "uri", 300)))
        return {"opened": "feed"}

    def _open_tasks(self, m: dict[str, Any]) -> dict[str, Any]:
        from ._taskpanel import TaskPanel

        self._close_opened(m)
        self.opened = TaskPanel(self._pid(m))
        return {"opened": "tasks"}

    def _close_opened(self, _m: dict[str, Any]) -> dict[str, Any]:
        old, self.opened = self.opened, None
        if old is not None:
            old.close()
        return {"opened": None}

    def _members(self, m: dict[str, Any]) -> dict[str, Any]:
        return {"members": kc.list_project_members(self._pid(m))}

    def _set_member(self, m: dict[str, Any]) -> dict[str, Any]:
        role = m.get("role")
        if role not in ("read", "write", "admin"):
            raise kc.InvalidArgumentError("role", role, "expected read, write or admin")
        kc.set_project_member(self._pid(m), _str(m.get("email"), "email", 320).strip(), role)
        return self._members(m)

    def _remove_member(self, m: dict[str, Any]) -> dict[str, Any]:
        kc.remove_project_member(self._pid(m), _str(m.get("email"), "email", 320))
        return self._members(m)

    # -- where widgets do not render ------------------------------------------

    def text(self) -> str:
        """The projects, as the text/plain copy of the widget."""
        lines = [f"kachery project browser: {self.hub_url}" + (f", signed in as {self.user}" if self.user else "")]
        for p in self.projects:
            mark = "*" if p["project_id"] == self.project_id else " "
            public = ", public" if p["public_read"] else ""
            lines.append(f" {mark} {p['name']} ({p['project_id']}): {p['role']}{public}")
        return "\n".join(lines)

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        widget = super()._repr_mimebundle_(**kwargs)
        data, metadata = widget if widget is not None else ({}, {})
        bundle = dict(data)
        bundle["text/plain"] = self.text()
        bundle["text/html"] = f"<pre>{html.escape(self.text())}</pre>"
        return bundle, dict(metadata)

    def close(self) -> None:
        """Close the browser and what it opened (a feed viewer's follower stops)."""
        opened, self.opened = self.opened, None
        if opened is not None:
            opened.close()
        super().close()


def _projects() -> list[dict[str, Any]]:
    return [{"project_id": p["project_id"], "name": p["name"], "role": p.get("role") or "",
             "public_read": bool(p.get("public_read")), "owner_email": p.get("owner_email") or ""}
            for p in kc.list_projects()]


def _shell_namespace() -> dict[str, Any]:
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise kc.InvalidArgumentError("name", None, "no IPython shell to assign the variable in")
    ns: dict[str, Any] = shell.user_ns
    return ns


def browse(project: str | None = None) -> ProjectBrowser:
    """The project browser, showing ``project`` (an id or a name; default: the default project)."""
    return ProjectBrowser(project)


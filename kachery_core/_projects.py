"""Projects on the hub: create, list, rename, members, public-read, default.

Which project an operation uses, first found wins: its ``project_id=``
argument, ``KACHERY_CLOUD_PROJECT``, then this client's default project on the
hub (set with :func:`set_default_project`; a new client gets its user's first
project).
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

from . import _constants, _hub
from .errors import HubRequestError, InvalidArgumentError

Role = Literal["read", "write", "admin"]
_ROLES = ("read", "write", "admin")


def _p(project_id: str) -> str:
    if not isinstance(project_id, str) or not project_id:
        raise InvalidArgumentError("project_id", project_id, "expected a non-empty string")
    return quote(project_id, safe="")


def get_project_id(project_id: str | None = None) -> str:
    """The project hub operations use (see the module docstring for the order)."""
    if project_id:
        return project_id
    env = _constants.project_id()
    if env:
        return env
    client = _hub.connect("finding the default project")
    if client.ephemeral:
        raise HubRequestError(client.url, "in ephemeral mode, name the project: project_id=... or KACHERY_CLOUD_PROJECT")
    default = client.me()["default_project_id"]
    if not default:
        raise HubRequestError(client.url, "this client has no default project; pass project_id=...")
    return str(default)


def create_project(name: str) -> str:
    """Create a project (you are its admin); returns its ID."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError("name", name, "expected a non-empty string")
    info = _hub.connect_signed("creating a project").json("POST", "/api/projects", json={"name": name})
    return str(info["project_id"])


def list_projects() -> list[dict[str, Any]]:
    """Projects you are a member of: ``project_id``, ``name``, ``owner_email``, ``role``, ``public_read``...

    Names repeat (each user's first project is "default"): ``owner_email`` tells them apart.
    """
    projects: list[dict[str, Any]] = _hub.connect_signed("listing projects").json("GET", "/api/projects")["projects"]
    return projects


def get_project(project_id: str | None = None) -> dict[str, Any]:
    """One project's record (``project_id``, ``name``, ``public_read``, your ``role``; ``owner_email`` for members)."""
    pid = get_project_id(project_id)
    info: dict[str, Any] = _hub.connect("reading a project").json("GET", f"/api/projects/{_p(pid)}")
    return info


def rename_project(project_id: str, name: str) -> None:
    """Give a project a new name (project admins)."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError("name", name, "expected a non-empty string")
    _hub.connect_signed("renaming a project").json("PATCH", f"/api/projects/{_p(project_id)}", json={"name": name})


def set_project_public(project_id: str, public_read: bool) -> None:
    """Let anyone (even ephemeral clients) read the project, or stop that (project admins)."""
    if not isinstance(public_read, bool):
        raise InvalidArgumentError("public_read", public_read, "expected True or False")
    _hub.connect_signed("changing a project").json(
        "PATCH", f"/api/projects/{_p(project_id)}", json={"public_read": public_read}
    )


def list_project_members(project_id: str | None = None) -> list[dict[str, Any]]:
    """Members of a project: ``email``, ``role``."""
    pid = get_project_id(project_id)
    members: list[dict[str, Any]] = _hub.connect_signed("listing members").json(
        "GET", f"/api/projects/{_p(pid)}/members")["members"]
    return members


def set_project_member(project_id: str, email: str, role: Role) -> None:
    """Add ``email`` to a project with ``role`` (read, write or admin), or change their role."""
    if role not in _ROLES:
        raise InvalidArgumentError("role", role, f"expected one of {', '.join(_ROLES)}")
    _hub.connect_signed("adding a member").json(
        "PUT", f"/api/projects/{_p(project_id)}/members/{quote(email, safe='@')}", json={"role": role}
    )


def remove_project_member(project_id: str, email: str) -> None:
    """Remove ``email`` from a project (a project keeps at least one admin)."""
    _hub.connect_signed("removing a member").json(
        "DELETE", f"/api/projects/{_p(project_id)}/members/{quote(email, safe='@')}")


def set_default_project(project_id: str) -> None:
    """Make ``project_id`` this client's default project on the hub."""
    client = _hub.connect_signed("setting the default project")
    client.json("PUT", "/api/me/default-project", json={"project_id": project_id})
    client.me(refresh=True)

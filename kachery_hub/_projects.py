"""Projects and their members.

A project is owned by a user and has members with a role: ``read`` < ``write``
< ``admin``. A public-read project can be read by anyone, even anonymous
(ephemeral) clients; writing always takes membership. Files and mutables belong
to a project.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from sqlalchemy import Connection, Row, delete, func, insert, select, update
from starlette.concurrency import run_in_threadpool

from . import _database as tables
from ._auth import Caller, caller
from ._database import Database, new_id
from ._state import HubState, hub_state
from ._text import Line
from .errors import Conflict, Forbidden, InvalidInput, ProjectNotFound, UserNotFound

Role = Literal["read", "write", "admin"]
_RANK = {"read": 1, "write": 2, "admin": 3}

router = APIRouter(tags=["projects"])


def _valid_name(name: str) -> str:
    value = name.strip()
    if not value:
        raise InvalidInput("a project name cannot be empty")
    return value


def create_project(conn: Connection, user_id: str, name: str) -> str:
    project_id = new_id("p")
    conn.execute(insert(tables.projects).values(
        id=project_id, name=_valid_name(name), owner_user_id=user_id, public_read=False, created_at=time.time(),
    ))
    conn.execute(insert(tables.members).values(project_id=project_id, user_id=user_id, role="admin"))
    return project_id


def default_project_for_user(conn: Connection, user_id: str) -> str:
    """The user's first own project, created (named "default") if they have none."""
    row = conn.execute(
        select(tables.projects.c.id).where(tables.projects.c.owner_user_id == user_id)
        .order_by(tables.projects.c.created_at, tables.projects.c.id).limit(1)
    ).first()
    return str(row.id) if row is not None else create_project(conn, user_id, "default")


def role_of(conn: Connection, project_id: str, user_id: str | None) -> str | None:
    if user_id is None:
        return None
    row = conn.execute(select(tables.members.c.role).where(
        tables.members.c.project_id == project_id, tables.members.c.user_id == user_id)).first()
    return str(row.role) if row is not None else None


# It runs on every project request: below SQLAlchemy (see _database.fetch_one). The project row
# plus the caller's membership.
_PROJECT_AND_ROLE = ("SELECT p.*, m.role AS caller_role FROM projects p LEFT OUTER JOIN members m "
                     "ON m.project_id = p.id AND m.user_id = :user_id WHERE p.id = :project_id")


def require_role(conn: Connection, who: Caller, project_id: str, needed: Role) -> Any:
    """The project row if ``who`` may act on it with role ``needed``; raises otherwise."""
    project = tables.fetch_one(conn, _PROJECT_AND_ROLE, {"user_id": who.user_id, "project_id": project_id})
    if project is None:
        raise ProjectNotFound(f"project {project_id!r} does not exist", project_id=project_id)
    if needed == "read" and project.public_read:
        return project
    if who.user_id is None:
        who.require_user()
    role = project.caller_role
    if role is None:
        raise Forbidden(f"{who.email} is not a member of project {project_id!r}; ask a project admin to add you",
                        project_id=project_id)
    if _RANK[role] < _RANK[needed]:
        raise Forbidden(f"{who.email} has {role} access to project {project_id!r}; this needs {needed}",
                        project_id=project_id)
    return project


def _project_json(row: Row[Any], role: str | None, owner_email: str | None = None) -> dict[str, Any]:
    info = {"project_id": row.id, "name": row.name, "owner_user_id": row.owner_user_id,
            "public_read": bool(row.public_read), "created_at": row.created_at, "role": role}
    if owner_email is not None:  # members only: public-read shares the data, not who owns it
        info["owner_email"] = owner_email
    return info


_owner = tables.users.alias("owner")


def _list_projects(db: Database, who: Caller) -> list[dict[str, Any]]:
    user_id = who.require_user()
    with db.begin() as conn:
        # The owner's email tells apart projects of the same name ("default" of each member).
        rows = conn.execute(
            select(tables.projects, tables.members.c.role, _owner.c.email.label("owner_email"))
            .join(tables.members, tables.members.c.project_id == tables.projects.c.id)
            .outerjoin(_owner, _owner.c.id == tables.projects.c.owner_user_id)
            .where(tables.members.c.user_id == user_id).order_by(tables.projects.c.created_at, tables.projects.c.id)
        ).all()
    return [_project_json(r, r.role, r.owner_email or "") for r in rows]


def _get_project(db: Database, who: Caller, project_id: str) -> dict[str, Any]:
    with db.begin() as conn:
        row = require_role(conn, who, project_id, "read")
        role = role_of(conn, project_id, who.user_id)
        owner = None
        if role is not None:
            owner = conn.execute(select(tables.users.c.email).where(
                tables.users.c.id == row.owner_user_id)).scalar_one_or_none() or ""
        return _project_json(row, role, owner)


def _create(db: Database, who: Caller, name: str) -> dict[str, Any]:
    user_id = who.require_user()
    with db.begin() as conn:
        project_id = create_project(conn, user_id, name)
    return _get_project(db, who, project_id)


def _update(db: Database, who: Caller, project_id: str, name: str | None, public_read: bool | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if name is not None:
        values["name"] = _valid_name(name)
    if public_read is not None:
        values["public_read"] = public_read
    with db.begin() as conn:
        require_role(conn, who, project_id, "admin")
        if values:
            conn.execute(update(tables.projects).where(tables.projects.c.id == project_id).values(**values))
    return _get_project(db, who, project_id)


def _members(db: Database, who: Caller, project_id: str) -> list[dict[str, Any]]:
    with db.begin() as conn:
        project = require_role(conn, who, project_id, "read")
        if project.caller_role is None:  # public-read shares the data, not the members' emails
            raise Forbidden(f"only members of project {project_id!r} can see who its members are",
                            project_id=project_id)
        rows = conn.execute(
            select(tables.users.c.email, tables.members.c.role, tables.members.c.user_id)
            .join(tables.users, tables.users.c.id == tables.members.c.user_id)
            .where(tables.members.c.project_id == project_id).order_by(tables.users.c.email)
        ).all()
    return [{"email": r.email, "user_id": r.user_id, "role": r.role} for r in rows]


def _admins_left(conn: Connection, project_id: str) -> int:
    return int(conn.execute(select(func.count()).select_from(tables.members).where(
        tables.members.c.project_id == project_id, tables.members.c.role == "admin")).scalar_one())


def _set_member(db: Database, who: Caller, project_id: str, email: str, role: Role | None) -> list[dict[str, Any]]:
    from ._accounts import ensure_user, normalize_email

    email = normalize_email(email)
    with db.begin() as conn:
        require_role(conn, who, project_id, "admin")
        if role is None:
            row = conn.execute(select(tables.users.c.id).where(tables.users.c.email == email)).first()
            if row is None or role_of(conn, project_id, row.id) is None:
                raise UserNotFound(f"{email} is not a member of project {project_id!r}")
            conn.execute(delete(tables.members).where(
                tables.members.c.project_id == project_id, tables.members.c.user_id == row.id))
        else:
            # Adding someone who never signed in creates their account, so they find it on first sign-in.
            user_id = ensure_user(conn, email)
            if role_of(conn, project_id, user_id) is None:
                conn.execute(insert(tables.members).values(project_id=project_id, user_id=user_id, role=role))
            else:
                conn.execute(update(tables.members).where(
                    tables.members.c.project_id == project_id, tables.members.c.user_id == user_id).values(role=role))
        if _admins_left(conn, project_id) == 0:
            raise Conflict(f"project {project_id!r} must keep at least one admin")
    return _members(db, who, project_id)


class CreateProject(BaseModel):
    name: Line = Field(min_length=1, max_length=200)


class UpdateProject(BaseModel):
    name: Line | None = Field(default=None, min_length=1, max_length=200)
    public_read: bool | None = None


class SetMember(BaseModel):
    role: Role


@router.post("/api/projects", summary="Create a project owned by the caller")
async def post_project(body: CreateProject, who: Caller = Depends(caller), hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    return await run_in_threadpool(_create, hub.db, who, body.name)


@router.get("/api/projects", summary="Projects the caller is a member of")
async def get_projects(who: Caller = Depends(caller), hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    return {"projects": await run_in_threadpool(_list_projects, hub.db, who)}


@router.get("/api/projects/{project_id}", summary="One project")
async def get_project(project_id: str, who: Caller = Depends(caller), hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    return await run_in_threadpool(_get_project, hub.db, who, project_id)


@router.patch("/api/projects/{project_id}", summary="Rename a project or set its public-read flag (admins)")
async def patch_project(project_id: str, body: UpdateProject, who: Caller = Depends(caller),
                        hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    return await run_in_threadpool(_update, hub.db, who, project_id, body.name, body.public_read)


@router.get("/api/projects/{project_id}/members", summary="Members of a project and their roles")
async def get_members(project_id: str, who: Caller = Depends(caller), hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    return {"members": await run_in_threadpool(_members, hub.db, who, project_id)}


@router.put("/api/projects/{project_id}/members/{email}", summary="Add a member or change their role (admins)")
async def put_member(project_id: str, email: str, body: SetMember, who: Caller = Depends(caller),
                     hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    return {"members": await run_in_threadpool(_set_member, hub.db, who, project_id, email, body.role)}


@router.delete("/api/projects/{project_id}/members/{email}", summary="Remove a member (admins)")
async def delete_member(project_id: str, email: str, who: Caller = Depends(caller),
                        hub: HubState = Depends(hub_state)) -> dict[str, Any]:
    return {"members": await run_in_threadpool(_set_member, hub.db, who, project_id, email, None)}

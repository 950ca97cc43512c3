"""The ``kachery-jupyter`` command line.

Named so it collides with neither ``kachery-cloud`` nor ``kachery`` commands.

``store`` and ``mutable`` behave as ``%kc_store`` and ``%kc_mutable`` do: on
the hub when one is configured (``KACHERY_HUB_URL`` or an earlier ``init``),
on this computer otherwise; ``--local`` keeps them on this computer, ``--hub``
insists on the hub. Every error is one line on standard error (``error: …``)
and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Sequence

from . import _hub, _identity, _mutables, _projects, _remote, _store
from ._fs import get_kachery_cloud_dir
from .errors import HubAuthError, HubNotConfiguredError, HubUnavailableError, KacheryError

_GET_A_HUB = "run `kachery-jupyter init --hub URL` or set KACHERY_HUB_URL"


class _Refused(Exception):
    """A command that cannot do what was asked; its message is the error line."""


def _need_hub(what: str) -> None:
    if _hub.configured_url() is None:
        raise _Refused(f"{what} needs a hub, and none is configured: {_GET_A_HUB}")


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _cmd_store(args: argparse.Namespace) -> int:
    if args.local and args.project:
        raise _Refused("--local stores on this computer only; --project names a project on the hub")
    label = args.label if args.label is not None else os.path.basename(args.file)
    if args.local or (_hub.configured_url() is None and not args.project):
        uri = _store.store_file_local(args.file, label=label)
        if not args.local:
            print("kachery-jupyter: no hub configured, so stored on this computer only "
                  f"(to share through a hub, {_GET_A_HUB})", file=sys.stderr)
        print(uri)
        return 0
    _need_hub("`kachery-jupyter store --project`")
    try:
        print(_remote.store_file(args.file, label=label, project_id=args.project, cache_locally=args.cache_locally))
    except HubUnavailableError as e:
        raise _Refused(f"{_line(e)}; add --local to store it on this computer only") from None
    return 0


def _cmd_store_local(args: argparse.Namespace) -> int:
    print(_store.store_file_local(args.file, label=args.label, reference=args.reference))
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    print(_store.load_file(args.uri, dest=args.dest))
    return 0


def _cmd_cat(args: argparse.Namespace) -> int:
    _store.cat_file(args.uri)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    print(json.dumps(_store.load_file_info(args.uri), indent=2))
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from ._hub import init

    info = init(hub_url=args.hub, token=args.token, wait=True)
    if info.get("signed_in"):
        print(f"kachery: {info['hub_url']}, signed in as {info['user']['email']}, "
              f"default project {info['default_project_id']}")
    else:
        print(f"kachery: {info['hub_url']} (ephemeral: reads public projects only)")
    return 0


def _cmd_client_id(args: argparse.Namespace) -> int:
    print(_identity.get_client_id())
    return 0


def _cmd_dir(args: argparse.Namespace) -> int:
    print(get_kachery_cloud_dir())
    return 0


def _mutables_on_hub(args: argparse.Namespace) -> bool:
    """Whether a ``mutable`` command uses the hub's mutables: as %kc_mutable, when a hub is configured."""
    if args.local:
        if args.hub or args.project:
            raise _Refused("--local means this computer's mutables; --hub and --project name a hub project's")
        return False
    if args.hub or args.project:
        _need_hub(f"`kachery-jupyter mutable {args.mutable_command} --hub`")
        return True
    return _hub.configured_url() is not None


def _cmd_mutable_get(args: argparse.Namespace) -> int:
    if _mutables_on_hub(args):
        value = _remote.get_mutable(args.key, project_id=args.project)
    else:
        value = _mutables.get_mutable_local(args.key)
    if value is None:
        raise _Refused(f"mutable {args.key!r} is not set")
    print(value)
    return 0


def _cmd_mutable_set(args: argparse.Namespace) -> int:
    if _mutables_on_hub(args):
        _remote.set_mutable(args.key, args.value, project_id=args.project)
    else:
        _mutables.set_mutable_local(args.key, args.value)
    return 0


def _cmd_mutable_delete(args: argparse.Namespace) -> int:
    if _mutables_on_hub(args):
        deleted = _remote.delete_mutable(args.key, project_id=args.project)
    else:
        deleted = _mutables.delete_mutable_local(args.key)
    if not deleted:
        raise _Refused(f"mutable {args.key!r} is not set")
    return 0


def _cmd_mutable_list(args: argparse.Namespace) -> int:
    if not _mutables_on_hub(args):
        raise _Refused("mutable list needs a hub (this computer's mutables are files under "
                       f"{os.path.join(get_kachery_cloud_dir(), 'mutables')})")
    for key in _remote.list_mutables(args.prefix, project_id=args.project):
        print(key)
    return 0


def _owner(project: dict[str, Any]) -> str:
    """Who owns ``project``: their email when the hub says it or they are still a member, else their user ID."""
    if project.get("owner_email"):
        return str(project["owner_email"])
    owner = str(project.get("owner_user_id", ""))
    for member in _projects.list_project_members(project["project_id"]):
        if member.get("user_id") == owner:
            return str(member["email"])
    return owner


def _cmd_projects(args: argparse.Namespace) -> int:
    _need_hub("`kachery-jupyter projects`")
    projects = [{**p, "owner": _owner(p)} for p in _projects.list_projects()]
    if args.json:
        print(json.dumps(projects, indent=2))
    else:
        _print_table(("ID", "NAME", "ROLE", "OWNER"),
                     [(p["project_id"], p["name"], str(p["role"]), p["owner"]) for p in projects])
    return 0


def _cmd_members(args: argparse.Namespace) -> int:
    _need_hub("`kachery-jupyter members`")
    members = _projects.list_project_members(args.project)
    if args.json:
        print(json.dumps(members, indent=2))
    else:
        _print_table(("EMAIL", "ROLE"), [(m["email"], m["role"]) for m in members])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kachery-jupyter",
        description="Store and load content-addressed files (sha1:// URIs) and mutables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("store", _cmd_store, "Store a file on the hub (this computer's store when no hub is configured) "
            "and print its URI.")
    p.add_argument("file", help="path of the file to store")
    p.add_argument("--label", help="label carried by the URI (default: the file's name)")
    p.add_argument("--project", help="the hub project (default: $KACHERY_CLOUD_PROJECT or your default project)")
    p.add_argument("--local", action="store_true", help="only this computer's store, even when a hub is configured")
    p.add_argument("--cache-locally", action="store_true", help="keep a copy in this computer's store too")
    p = add("store-local", _cmd_store_local, "Store a file in the local store and print its URI.")
    p.add_argument("file", help="path of the file to store")
    p.add_argument("--label", help="label carried by the URI (default: none)")
    p.add_argument(
        "--reference", action="store_true", help="do not copy; the URI points at the file where it is"
    )
    p = add("load", _cmd_load, "Print the local path of a URI's content (verified against its hash).")
    p.add_argument("uri")
    p.add_argument("--dest", help="copy the content to this path instead")
    p = add("cat", _cmd_cat, "Write the content of a URI to standard output.")
    p.add_argument("uri")
    p = add("info", _cmd_info, "Print what is known of a URI as JSON.")
    p.add_argument("uri")
    p = add("init", _cmd_init, "Sign this computer in to a hub: with a token, or by confirming a printed link "
            "in a browser (waits until confirmed).")
    p.add_argument("--hub", help="the hub's URL (default $KACHERY_HUB_URL or the hub signed in to before)")
    p.add_argument("--token", help="a sign-in token (default $KACHERY_HUB_TOKEN); without one, a link is printed")
    add("client-id", _cmd_client_id, "Print this computer's client ID (creates the key pair if needed).")
    add("dir", _cmd_dir, "Print the kachery directory in use.")

    p = add("projects", _cmd_projects, "List the hub projects you are a member of: ID, name, your role, owner.")
    p.add_argument("--json", action="store_true", help="print them as JSON")
    p = add("members", _cmd_members, "List the members of a hub project and their roles.")
    p.add_argument("project", nargs="?", help="the project ID (default: $KACHERY_CLOUD_PROJECT or your default project)")
    p.add_argument("--json", action="store_true", help="print them as JSON")

    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--local", action="store_true", help="this computer's mutables, even when a hub is configured")
    where.add_argument("--hub", action="store_true", help="the hub project's mutables (an error without a hub)")
    where.add_argument("--project", help="the hub project (default: $KACHERY_CLOUD_PROJECT or your default project)")
    what = ("Get, set, delete or list mutables (key → text): a hub project's when a hub is configured, "
            "else this computer's.")
    mp = sub.add_parser("mutable", help=what, description=what)
    msub = mp.add_subparsers(dest="mutable_command", required=True, metavar="ACTION")

    def action(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        a = msub.add_parser(name, help=help, description=help, parents=[where])
        a.set_defaults(func=func)
        return a

    action("get", _cmd_mutable_get, "Print the value of a mutable.").add_argument("key")
    a = action("set", _cmd_mutable_set, "Set a mutable to a value.")
    a.add_argument("key")
    a.add_argument("value", help="the value (quote it in the shell when it has spaces)")
    action("delete", _cmd_mutable_delete, "Delete a mutable.").add_argument("key")
    action("list", _cmd_mutable_list, "Print the keys of the hub project's mutables that start with a prefix.") \
        .add_argument("prefix", nargs="?", default="", help="only keys that start with this (default: all)")
    return parser


def _line(e: Exception) -> str:
    text = str(e)
    return text.splitlines()[0] if text else type(e).__name__


def _message(e: KacheryError) -> str:
    """``e`` as one line, naming the command that helps where there is one."""
    if isinstance(e, HubNotConfiguredError):
        return f"{e.what} needs a hub, and none is configured: {_GET_A_HUB}"
    if isinstance(e, HubAuthError) and e.code == "client_not_registered":
        return f"this computer is not signed in to the hub {e.hub_url}: run `kachery-jupyter init` to sign in"
    return _line(e)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KacheryError as e:
        print(f"error: {_message(e)}", file=sys.stderr)
        return 1
    except _Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `kachery-jupyter cat URI | head`
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())

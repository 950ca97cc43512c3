"""The ``kachery-jupyter`` command line.

Named so it collides with neither ``kachery-cloud`` nor ``kachery`` commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from . import _identity, _mutables, _store
from ._fs import get_kachery_cloud_dir
from .errors import KacheryError


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


def _cmd_mutable_get(args: argparse.Namespace) -> int:
    value = _mutables.get_mutable_local(args.key)
    if value is None:
        print(f"error: mutable {args.key!r} is not set", file=sys.stderr)
        return 1
    print(value)
    return 0


def _cmd_mutable_set(args: argparse.Namespace) -> int:
    _mutables.set_mutable_local(args.key, args.value)
    return 0


def _cmd_mutable_delete(args: argparse.Namespace) -> int:
    if not _mutables.delete_mutable_local(args.key):
        print(f"error: mutable {args.key!r} is not set", file=sys.stderr)
        return 1
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

    mp = sub.add_parser("mutable", help="Get, set or delete a local mutable.", description="Local mutables.")
    msub = mp.add_subparsers(dest="mutable_command", required=True, metavar="ACTION")
    g = msub.add_parser("get", help="Print the value of a mutable.", description="Print the value of a mutable.")
    g.add_argument("key")
    g.set_defaults(func=_cmd_mutable_get)
    s = msub.add_parser("set", help="Set a mutable to a value.", description="Set a mutable to a value.")
    s.add_argument("key")
    s.add_argument("value")
    s.set_defaults(func=_cmd_mutable_set)
    d = msub.add_parser("delete", help="Delete a mutable.", description="Delete a mutable.")
    d.add_argument("key")
    d.set_defaults(func=_cmd_mutable_delete)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KacheryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `kachery-jupyter cat URI | head`
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The ``%kc_*`` magics.

A magic line is split as a POSIX shell splits it: quotes group words and are
not kept (``--label "my meta.json"``), a backslash escapes the next character,
and options may come anywhere on the line. Mistakes (unknown option, missing
argument, unknown variable, bad URI, bad key, no hub, a refusal) become a
one-line ``UsageError``, never a traceback. ``%kc_store?`` (any magic, then ``?``)
shows its help with an example.
"""

from __future__ import annotations

import argparse
import keyword
import os
import shlex
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

import kachery_core as kc

from . import _display, _objects

_LOCAL_HINT = "add --local to store it on this computer only"


def _parse(magic: Any, line: str) -> argparse.Namespace:
    """``line`` split as a shell splits it, then parsed by the magic's arguments (options anywhere)."""
    name = ("%%" if magic.__name__ in _CELL_MAGICS else "%") + magic.__name__
    try:
        argv = shlex.split(line)
    except ValueError as e:  # "No closing quotation", "No escaped character"
        raise UsageError(f"{str(e)[:1].lower()}{str(e)[1:]} in: {line}") from None
    if any(word in ("-h", "--help") for word in argv[: argv.index("--") if "--" in argv else len(argv)]):
        raise UsageError(f"for help and an example, run {name}?")
    # IPython's own parse_argstring splits with shlex's posix=False, which keeps the quotes.
    try:
        args: argparse.Namespace = magic.parser.parse_intermixed_args(argv)
    except UsageError as e:  # argparse's words ("unrecognized arguments: --x"): say which magic
        raise UsageError(f"{name}: {str(e).strip().splitlines()[0]} (see {name}?)") from None
    return args


_CELL_MAGICS = frozenset({"kc_task"})


def _needs_hub(option: str) -> UsageError:
    return UsageError(f"{option} names a hub project, but no hub is configured: sign in with %kc_login "
                      f"(or leave out {option} to use this computer's store)")


def _usage(e: Exception, *, local_hint: bool = False) -> UsageError:
    """``e`` as one line, saying what to do where the next step is ours to name."""
    if isinstance(e, kc.HubAuthError) and e.code == "client_not_registered":
        text = f"this computer is not signed in to the hub {e.hub_url}: run %kc_login"
        return UsageError(text + (f" (or {_LOCAL_HINT})" if local_hint else ""))
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, kc.HubUnavailableError) and local_hint:
        text += f"; {_LOCAL_HINT}"
    return UsageError(text)


@magics_class
class KacheryMagics(Magics):
    def _user_ns(self) -> dict[str, Any]:
        assert self.shell is not None, "magics are registered with a shell"
        ns: dict[str, Any] = self.shell.user_ns
        return ns

    @magic_arguments()
    @argument("name", help="a variable name, or a file path with --file")
    @argument("--file", action="store_true", help="store the file at this path instead of a variable")
    @argument("--label", help="label carried by the URI (default: the name plus an extension)")
    @argument("--local", action="store_true", help="only the local store, even when a hub is configured")
    @argument("--project", help="the hub project (default: KACHERY_CLOUD_PROJECT or the default project)")
    @line_magic
    def kc_store(self, line: str) -> _display.StoredURI:
        """Store a variable (or a file) and return its sha1:// URI.

        Arrays are stored as npy, strings as text, JSON-able values as JSON and
        anything else as a restricted pickle. With a hub configured the content
        goes to the current project (or --project) and stays in the local store
        too; --local keeps it on this computer only. The URI is a str, shown
        with its label, size, project and a copy button::

            uri = %kc_store arr
            %kc_store meta --label "session 12.json" --project 5f0c2b7e9a1d
            %kc_store --file "results/table 2.csv"
        """
        args = _parse(self.kc_store, line)
        hub = kc.get_hub_url()
        if args.project is not None and args.local:
            raise UsageError("--project and --local disagree: --local stores on this computer only, outside any project")
        if args.project is not None and hub is None:
            raise _needs_hub("--project")
        local = args.local or hub is None
        kind = "file"
        try:
            if args.file:
                label = args.label or os.path.basename(args.name)
                if local:
                    uri = kc.store_file_local(args.name, label=label)
                else:
                    uri = kc.store_file(args.name, label=label, cache_locally=True, project_id=args.project)
            else:
                user_ns = self._user_ns()
                if args.name not in user_ns:
                    raise UsageError(f"no variable named {args.name!r} in this notebook")
                obj = user_ns[args.name]
                kind = _objects.kind_of(obj)
                label = args.label or _objects.default_label(args.name, obj, kind)
                uri = _objects.store_object(obj, label=label, local=local, project_id=args.project, kind=kind)
            stored = _objects.describe_stored(uri, hub_url=None if local else hub, project_id=args.project)
        except kc.KacheryError as e:
            raise _usage(e, local_hint=not local) from None
        if kind == "pkl" and _objects.json_but_for_nan(obj):
            print(f"{args.name} holds NaN or Infinity, which JSON cannot hold: stored as a pickle ({label}); "
                  "replace them with None to store it as JSON", file=sys.stderr)
        return stored

    @magic_arguments()
    @argument("uri", help="a sha1:// URI")
    @argument("-o", "--output", help="assign the loaded value to this variable too")
    @argument("--as", dest="kind", choices=_objects.LOAD_KINDS, help="how to read it (default: from the label)")
    @line_magic
    def kc_load(self, line: str) -> Any:
        """Load a URI: arrays, JSON, text and pickles by their label's extension, else the
        local path of the file (downloaded from the hub when it is not here yet).
        --as reads it as file, text, json, npy or pkl; -o NAME also assigns it to NAME::

            arr = %kc_load sha1://…?label=arr.npy
            %kc_load sha1://… --as json -o meta
        """
        args = _parse(self.kc_load, line)
        if args.output is not None and (not args.output.isidentifier() or keyword.iskeyword(args.output)):
            raise UsageError(f"-o {args.output!r}: not a valid variable name")  # said before any download
        try:
            value = _objects.load_object(args.uri, args.kind)
        except kc.KacheryError as e:
            raise _usage(e) from None
        if args.output:
            self._user_ns()[args.output] = value
        return value

    @magic_arguments()
    @argument("action", choices=("get", "set", "delete", "list"))
    @argument("key", help="the key (for list: a prefix, may be empty)", nargs="?", default="")
    @argument("value", nargs="*", help="the value, for set: the rest of the line (quote it to keep spacing)")
    @argument("--local", action="store_true", help="the local mutables, even when a hub is configured")
    @argument("--project", help="the hub project (default: KACHERY_CLOUD_PROJECT or the default project)")
    @line_magic
    def kc_mutable(self, line: str) -> Any:
        """Get, set, delete or list mutables (key → text): the hub project's when a hub is
        configured, else (or with --local) this computer's. set takes the rest of the line::

            %kc_mutable set experiments/M12/latest sha1://…
            %kc_mutable set experiments/M12/note first session, left probe
            %kc_mutable get experiments/M12/latest
            %kc_mutable list experiments/
            %kc_mutable delete experiments/M12/note --project 5f0c2b7e9a1d
        """
        args = _parse(self.kc_mutable, line)
        if args.project is not None and args.local:
            raise UsageError("--project and --local disagree: --local uses this computer's mutables, outside any project")
        if args.project is not None and kc.get_hub_url() is None:
            raise _needs_hub("--project")
        local = args.local or kc.get_hub_url() is None
        if args.action != "list" and not args.key:
            raise UsageError(f"%kc_mutable {args.action} needs a key")
        if args.action == "set" and not args.value:
            raise UsageError("%kc_mutable set needs a value: %kc_mutable set KEY VALUE")
        if args.action != "set" and args.value:
            raise UsageError(f"%kc_mutable {args.action} takes no value")
        if local and args.action == "list":
            raise UsageError("%kc_mutable list needs a hub (local mutables are files under mutables/)")
        # Words join as a shell's echo joins them; quotes keep the spacing exactly.
        value = " ".join(args.value)
        project = {} if local else {"project_id": args.project}
        try:
            if args.action == "set":
                (kc.set_mutable_local if local else kc.set_mutable)(args.key, value, **project)
                return None
            if args.action == "list":
                return kc.list_mutables(args.key, project_id=args.project)
            if args.action == "get":
                found = (kc.get_mutable_local if local else kc.get_mutable)(args.key, **project)
                if found is None:
                    raise UsageError(f"mutable {args.key!r} is not set")
                return found
            if not (kc.delete_mutable_local if local else kc.delete_mutable)(args.key, **project):
                raise UsageError(f"mutable {args.key!r} is not set")
            return None
        except kc.KacheryError as e:
            raise _usage(e) from None

    @magic_arguments()
    @line_magic
    def kc_status(self, line: str) -> _display.Status:
        """Where this kernel stands: the hub (and whether it answers), the signed-in user,
        the project, this computer's client ID, the local store (path, files, size) and the
        versions of kachery-jupyter, anywidget, tqdm, IPython and Python::

            %kc_status
            status = %kc_status
            status["user"]
        """
        _parse(self.kc_status, line)
        try:
            return _display.kernel_status()
        except kc.KacheryError as e:
            raise _usage(e) from None

    @magic_arguments()
    @argument("--hub", help="the hub's URL (default: KACHERY_HUB_URL or the hub signed in to before)")
    @line_magic
    def kc_login(self, line: str) -> Any:
        """Show the sign-in panel: one click opens the hub's sign-in page; the panel
        updates by itself when you have confirmed there.

            %kc_login
            %kc_login --hub http://127.0.0.1:8123
        """
        args = _parse(self.kc_login, line)
        if args.hub is not None and not args.hub.startswith(("http://", "https://")):
            raise UsageError(f"--hub {args.hub!r}: a hub URL must start with http:// or https://")
        try:
            from ._login import LoginWidget, check_hub
        except ImportError:
            raise UsageError('the sign-in panel needs anywidget: pip install "kachery-jupyter[jupyter]"') from None
        if args.hub is not None:
            # A mistyped URL must not re-target the whole kernel: switch only once a hub answers there.
            try:
                check_hub(args.hub)
            except kc.KacheryError as e:
                current = kc.get_hub_url()
                keeps = f"keeps using the hub {current}" if current else "still has no hub"
                reason = e.message if isinstance(e, kc.HubError) else str(e)
                raise UsageError(f"--hub {args.hub}: {reason}; this kernel {keeps}") from None
        try:
            return LoginWidget(hub_url=args.hub)
        except kc.KacheryError as e:
            raise _usage(e) from None

    @magic_arguments()
    @argument("project", nargs="?", default=None, help="a project id or name (default: the default project)")
    @line_magic
    def kc_browse(self, line: str) -> Any:
        """Browse the hub: your projects; a project's files (search by label, preview, copy the
        URI, load into a variable), mutables, feeds, tasks and, for admins, members.

            %kc_browse
            %kc_browse my-lab
        """
        args = _parse(self.kc_browse, line)
        try:
            from ._browser import ProjectBrowser
        except ImportError:
            raise UsageError('the project browser needs anywidget: pip install "kachery-jupyter[jupyter]"') from None
        try:
            return ProjectBrowser(args.project, user_ns=self._user_ns())
        except kc.KacheryError as e:
            raise _usage(e) from None

    @magic_arguments()
    @argument("feed", help="a kachery-feed:// URI or a feed ID")
    @argument("--start", type=int, default=0, help="the number of the first message to show (default 0)")
    @line_magic
    def kc_feed(self, line: str) -> Any:
        """Show a feed in a live viewer: messages appended anywhere appear as they come;
        filter, pause, newest or oldest first, and append a message when you may write.

            %kc_feed kachery-feed://5f0c2b7e9a1d4c3e
            %kc_feed 5f0c2b7e9a1d4c3e --start 1000
        """
        args = _parse(self.kc_feed, line)
        if args.start < 0:
            raise UsageError(f"--start {args.start}: a message number is 0 or more")
        try:
            from ._feedviewer import FeedViewer
        except ImportError:
            raise UsageError('the feed viewer needs anywidget: pip install "kachery-jupyter[jupyter]"') from None
        try:
            return FeedViewer(kc.load_feed(args.feed), start=args.start)
        except kc.KacheryError as e:
            raise _usage(e) from None

    @magic_arguments()
    @argument("name", help="the task's name: letters, digits, _ . - (the cell's function, unless --function)")
    @argument("--type", dest="task_type", choices=("calculation", "action"), default="calculation",
              help="calculation (cached by input; default) or action (runs every time)")
    @argument("--function", help="the function the cell defines, when NAME is not a Python name (e.g. mean_rate.2)")
    @argument("--project", help="the hub project (default: KACHERY_CLOUD_PROJECT or the default project)")
    @cell_magic
    def kc_task(self, line: str, cell: str) -> None:
        """Serve the function the cell defines as a task of the project, from this kernel, in the
        background (the kernel stays usable). Running the cell again replaces the handler.

            %%kc_task mean_rate
            def mean_rate(spike_times, duration):
                return len(spike_times) / duration

            %%kc_task notify --type action
            def notify(text):
                print(text)

        Request it from anywhere: ``kc.request_task(task_type="calculation", task_name="mean_rate",
        task_input={...}, progress=kachery_jupyter.task_progress)``.
        """
        from . import _taskmagic

        args = _parse(self.kc_task, line)
        function_name = args.function or args.name
        if not function_name.isidentifier():
            raise UsageError(f"{function_name!r} is not a Python function name: "
                             f"add --function NAME (the function the cell defines)")
        try:
            _taskmagic.check_task_name(args.name)
            function = _taskmagic.run_cell_for(self.shell, cell, function_name)
            backend, project, replaced = _taskmagic.kernel_tasks.serve(
                task_name=args.name, task_function=function, task_type=args.task_type, project_id=args.project)
        except _taskmagic.CellRaised as e:
            raise UsageError(f"the cell raised {e}: {args.name} is not served") from None
        except LookupError:
            raise UsageError(f"the cell does not define a function {function_name}: "
                             f"write def {function_name}(...) in it") from None
        except (kc.KacheryError, ValueError) as e:
            raise _usage(e) from None
        what = _taskmagic.describe_handler(args.task_type, args.name, function)
        print(f"{'replaced: now serving' if replaced else 'serving'} {what} for project {project} "
              f"from this kernel (backend {backend.backend_id})")

    @magic_arguments()
    @argument("project", nargs="?", default=None, help="the project (default: KACHERY_CLOUD_PROJECT or the default project)")
    @argument("--limit", type=int, default=100, help="most recent jobs listed (default 100)")
    @line_magic
    def kc_tasks(self, line: str) -> Any:
        """Show the task panel of a project: handlers online with their backends and last
        heartbeat, recent jobs with status, duration, requester and errors (click one for its
        traceback); it updates live.

            %kc_tasks
            %kc_tasks 5f0c2b7e9a1d --limit 500
        """
        args = _parse(self.kc_tasks, line)
        if args.limit < 1:
            raise UsageError(f"--limit {args.limit}: list at least 1 job")
        try:
            from ._taskpanel import TaskPanel
        except ImportError:
            raise UsageError('the task panel needs anywidget: pip install "kachery-jupyter[jupyter]"') from None
        try:
            return TaskPanel(args.project, limit=args.limit)
        except kc.KacheryError as e:
            raise _usage(e) from None


def status_line() -> str:
    """Where this kernel stands, in one line."""
    info = kc.get_client_info()
    hub = info.get("hub_url")
    if not hub:
        return f"kachery-jupyter: local store {kc.get_kachery_cloud_dir()}; no hub yet (sign in with %kc_login)"
    if info.get("hub_error"):
        return f"kachery-jupyter: hub {hub} cannot be reached ({info['hub_error']}); local store still works"
    if info.get("ephemeral"):
        return f"kachery-jupyter: hub {hub}, ephemeral (reads public projects only)"
    if not info.get("signed_in"):
        return f"kachery-jupyter: hub {hub}, not signed in: run %kc_login"
    return f"kachery-jupyter: hub {hub}, signed in as {info['user']['email']} (project {info['project_id']})"


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(KacheryMagics)
    print(status_line())

"""kachery_jupyter: ``%load_ext kachery_jupyter``, magics and widgets.

IPython and anywidget are imported only when a magic or widget needs them.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FeedViewer", "LoginWidget", "ProjectBrowser", "TaskPanel", "browse", "load_ipython_extension", "stop_serving_tasks",
    "task_progress",
]


def load_ipython_extension(ipython: Any) -> None:
    from ._magics import load_ipython_extension as _load

    _load(ipython)


def __getattr__(name: str) -> Any:
    # Widgets import anywidget, which %load_ext must not pay for.
    if name == "LoginWidget":
        from ._login import LoginWidget

        return LoginWidget
    if name == "FeedViewer":
        from ._feedviewer import FeedViewer

        return FeedViewer
    if name in ("ProjectBrowser", "browse"):
        from . import _browser

        return getattr(_browser, name)
    if name == "TaskPanel":
        from ._taskpanel import TaskPanel

        return TaskPanel
    if name in ("task_progress", "stop_serving_tasks"):
        from . import _taskmagic

        return getattr(_taskmagic, name)
    raise AttributeError(f"module 'kachery_jupyter' has no attribute {name!r}")

"""Where the widgets' front ends are: inside the wheel, or js/ in a checkout.

Every widget's stylesheet is ``theme.css`` (the shared ``--kc-*`` colours, taken from the
notebook's theme) followed by the widget's own: :func:`stylesheet` joins them, since a
widget's CSS reaches the page as one text, with nowhere for an ``@import`` to point.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

#: the shared theme every widget's stylesheet starts with
THEME = "theme.css"


def asset(name: str) -> Path:
    """Path of a front-end file, e.g. ``login.js``; the wheel ships them in ``static/``."""
    for folder in (_HERE / "static", _HERE.parent / "js"):
        path = folder / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"front-end file {name} is missing from {_HERE / 'static'}; reinstall kachery-jupyter")


def stylesheet(name: str) -> str:
    """The CSS of a widget: the shared theme, then ``name`` (e.g. ``login.css``)."""
    return "\n".join(asset(n).read_text(encoding="utf-8") for n in (THEME, name))

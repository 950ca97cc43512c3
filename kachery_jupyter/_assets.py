"""Where the widgets' front ends are: inside the wheel, or js/ in a checkout.

A widget's front end reaches the page as one module text, with nowhere for a relative import to
point: :func:`module` puts each ``import {...} from "./x.js";`` of a widget's source in place, as
``x.js``'s own code (its ``export`` keywords dropped), so widgets share ``common.js`` in js/ and in
the node tests, and each still arrives whole. Every widget's stylesheet is ``theme.css`` (the shared ``--kc-*`` colours, taken from the
notebook's theme) followed by the widget's own: :func:`stylesheet` joins them, since a
widget's CSS reaches the page as one text, with nowhere for an ``@import`` to point.
"""

from __future__ import annotations

import re
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


_IMPORT = re.compile(r'^import \{[^}]*\} from "\./([A-Za-z0-9_-]+\.js)";$', re.M)


def module(name: str) -> str:
    """The ES module text of a widget (e.g. ``feedviewer.js``), its relative imports put in place."""
    text = asset(name).read_text(encoding="utf-8")

    def inline(match: re.Match[str]) -> str:
        shared = asset(match.group(1)).read_text(encoding="utf-8")
        return re.sub(r"^export ", "", shared, flags=re.M)

    return _IMPORT.sub(inline, text)

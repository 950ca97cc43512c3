"""Where the widgets' front ends are: inside the wheel, or js/ in a checkout."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def asset(name: str) -> Path:
    """Path of a front-end file, e.g. ``login.js``; the wheel ships them in ``static/``."""
    for folder in (_HERE / "static", _HERE.parent / "js"):
        path = folder / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"front-end file {name} is missing from {_HERE / 'static'}; reinstall kachery-jupyter")

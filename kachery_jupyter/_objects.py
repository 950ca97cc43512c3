"""Choosing a serializer for a Python object, loading one back, and describing a stored one."""

from __future__ import annotations

import json
from typing import Any

import kachery_core as kc

from ._display import StoredURI


def kind_of(obj: Any) -> str:
    """The serializer a notebook value is stored with: npy, text, json or pkl."""
    if type(obj).__module__ == "numpy" and type(obj).__name__ == "ndarray" and obj.dtype != object:
        return "npy"
    if isinstance(obj, str):
        return "text"
    try:
        json.dumps(obj, sort_keys=True, allow_nan=False)  # as store_json writes it, separators aside
    except (TypeError, ValueError, RecursionError):  # not JSON, NaN or Infinity, a circular reference
        return "pkl"
    return "json"


def json_but_for_nan(obj: Any) -> bool:
    """Whether ``obj`` would be stored as JSON but for a NaN or an infinity in it (JSON has neither)."""
    try:
        json.dumps(obj, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        return False
    try:
        json.dumps(obj, sort_keys=True, allow_nan=False)
    except ValueError:
        return True
    return False


def store_object(obj: Any, *, label: str | None, local: bool, project_id: str | None = None,
                 kind: str | None = None) -> str:
    """Store ``obj`` (as ``kind``, default :func:`kind_of`) on the hub and cache it locally, or only locally."""
    kind = kind or kind_of(obj)
    store = {"npy": kc.store_npy, "text": kc.store_text, "json": kc.store_json, "pkl": kc.store_pkl}[kind]
    try:
        uri: str = store(obj, label=label, local=local, cache_locally=True, project_id=project_id)
    except kc.UnsafePickleError as e:
        if (e.module, e.name) != ("builtins", "str"):
            raise
        # A URI %kc_store returned (a str subclass) pickles as a call of str(): stored as the plain
        # string it is, it gives the same bytes (and URI) as the same text typed in.
        uri = store(_plain_strings(obj), label=label, local=local, cache_locally=True, project_id=project_id)
    return uri


def _plain_strings(obj: Any) -> Any:
    """``obj`` with every str subclass in its builtin containers made a plain str."""
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, dict):
        return {_plain_strings(k): _plain_strings(v) for k, v in obj.items()}
    if type(obj) in (list, tuple, set, frozenset):
        return type(obj)(_plain_strings(v) for v in obj)
    return obj


_EXTENSIONS = {"npy": "npy", "text": "txt", "json": "json", "pkl": "pkl"}
LOAD_KINDS = ("npy", "json", "text", "pkl", "file")


def kind_from_label(uri: str) -> str:
    """The serializer a URI's label names by its extension; "file" (a local path) otherwise."""
    label = kc.parse_sha1_uri(uri).label or ""
    for kind, ext in _EXTENSIONS.items():
        if label.endswith("." + ext):
            return kind
    return "file"


def load_object(uri: str, kind: str | None = None) -> Any:
    kind = kind or kind_from_label(uri)
    loaders = {"npy": kc.load_npy, "json": kc.load_json, "text": kc.load_text, "pkl": kc.load_pkl, "file": kc.load_file}
    return loaders[kind](uri)


def default_label(name: str, obj: Any, kind: str | None = None) -> str:
    return f"{name}.{_EXTENSIONS[kind or kind_of(obj)]}"


def describe_stored(uri: str, *, hub_url: str | None, project_id: str | None = None) -> StoredURI:
    """``uri``, just stored, with its size and where it went (``hub_url`` None: this computer only)."""
    from kachery_core import _store

    try:
        # The store file was just written: its size is a stat away (loading it would hash it again).
        size: int | None = _store.store_path(kc.parse_sha1_uri(uri).sha1).stat().st_size
    except OSError:
        size = None
    if hub_url is None:
        return StoredURI(uri, size=size)
    pid = kc.get_project_id(project_id)
    try:
        name = kc.get_project(pid).get("name")
    except kc.KacheryError:
        name = None  # the URI was stored: a project's name is not worth an error
    return StoredURI(uri, size=size, project_id=pid, project_name=name if isinstance(name, str) else None,
                     hub_url=hub_url)

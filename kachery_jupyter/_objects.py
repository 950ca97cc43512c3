"""Choosing a serializer for a Python object, and describing a stored one."""

from __future__ import annotations

from typing import Any

import kachery_core as kc


def kind_of(obj: Any) -> str:
    """The serializer a notebook value is stored with: npy, text, json or pkl."""
    if type(obj).__module__ == "numpy" and type(obj).__name__ == "ndarray" and obj.dtype != object:
        return "npy"
    if isinstance(obj, str):
        return "text"
    try:
        kc.sha1_of_dict(obj)  # raises for anything that is not plain JSON
    except (kc.SerializationError, TypeError):
        return "pkl"
    return "json"


def store_object(obj: Any, *, label: str | None, local: bool, project_id: str | None = None) -> str:
    """Store ``obj`` on the hub (and cache it locally), or only locally."""
    store = {"npy": kc.store_npy, "text": kc.store_text, "json": kc.store_json, "pkl": kc.store_pkl}[kind_of(obj)]
    uri: str = store(obj, label=label, local=local, cache_locally=True, project_id=project_id)
    return uri


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


def default_label(name: str, obj: Any) -> str:
    return f"{name}.{_EXTENSIONS[kind_of(obj)]}"

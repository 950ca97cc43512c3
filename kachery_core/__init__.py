"""kachery_core: content-addressed files, mutables, feeds and tasks.

API-compatible with kachery-cloud: point ``KACHERY_CLOUD_DIR`` at an existing
``~/.kachery-cloud`` and keep going.
"""

from __future__ import annotations

from ._fs import get_kachery_cloud_dir
from ._identity import get_client_id
from ._mutables import delete_mutable_local, get_mutable_local, set_mutable_local
from ._store import (
    cat_file,
    load_bytes,
    load_file,
    load_file_info,
    load_json,
    load_npy,
    load_pkl,
    load_text,
    sha1_of_dict,
    store_file_local,
    store_json_local,
    store_npy_local,
    store_pkl_local,
    store_text_local,
)
from ._uris import Sha1URI, format_sha1_uri, parse_sha1_uri
from .errors import (
    ByteRangeError,
    ConfigError,
    FileChangedError,
    HashMismatchError,
    IdentityError,
    InvalidMutableKeyError,
    InvalidURIError,
    KacheryError,
    KacheryFileNotFoundError,
    MutableValueError,
    SerializationError,
    UnknownURISchemeError,
    UnsafePickleError,
)

__version__ = "0.1.0"

__all__ = [
    "ByteRangeError",
    "ConfigError",
    "FileChangedError",
    "HashMismatchError",
    "IdentityError",
    "InvalidMutableKeyError",
    "InvalidURIError",
    "KacheryError",
    "KacheryFileNotFoundError",
    "MutableValueError",
    "SerializationError",
    "Sha1URI",
    "UnknownURISchemeError",
    "UnsafePickleError",
    "cat_file",
    "delete_mutable_local",
    "format_sha1_uri",
    "get_client_id",
    "get_kachery_cloud_dir",
    "get_mutable_local",
    "load_bytes",
    "load_file",
    "load_file_info",
    "load_json",
    "load_npy",
    "load_pkl",
    "load_text",
    "parse_sha1_uri",
    "set_mutable_local",
    "sha1_of_dict",
    "store_file_local",
    "store_json_local",
    "store_npy_local",
    "store_pkl_local",
    "store_text_local",
]

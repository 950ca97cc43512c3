"""kachery_core: content-addressed files, mutables, feeds and tasks.

API-compatible with kachery-cloud: point ``KACHERY_CLOUD_DIR`` at an existing
``~/.kachery-cloud`` and keep going.
"""

from __future__ import annotations

from ._fs import get_kachery_cloud_dir
from ._hub import get_client_info, init
from ._identity import get_client_id
from ._mutables import delete_mutable_local, get_mutable_local, set_mutable_local
from ._projects import (
    create_project,
    get_project,
    get_project_id,
    list_project_members,
    list_projects,
    remove_project_member,
    rename_project,
    set_default_project,
    set_project_member,
    set_project_public,
)
from ._remote import (
    delete_mutable,
    get_mutable,
    list_mutables,
    set_mutable,
    store_file,
    store_json,
    store_npy,
    store_pkl,
    store_text,
)
from ._signin import get_sign_in_status, sign_out, start_sign_in, use_hub
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
    ClockSkewError,
    ConfigError,
    FileChangedError,
    HashMismatchError,
    HubAuthError,
    HubError,
    HubNotConfiguredError,
    HubNotFoundError,
    HubPermissionError,
    HubRequestError,
    HubServerError,
    HubUnavailableError,
    IdentityError,
    InvalidArgumentError,
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

# Hub functions importable here but not yet in __all__ until the README documents them:
# create_project, get_client_info, get_project, get_project_id, list_mutables, list_project_members,
# list_projects, remove_project_member, rename_project, set_default_project, set_project_member,
# set_project_public; get_sign_in_status, sign_out, start_sign_in, use_hub.
__all__ = [
    "ByteRangeError",
    "ClockSkewError",
    "ConfigError",
    "FileChangedError",
    "HashMismatchError",
    "HubAuthError",
    "HubError",
    "HubNotConfiguredError",
    "HubNotFoundError",
    "HubPermissionError",
    "HubRequestError",
    "HubServerError",
    "HubUnavailableError",
    "IdentityError",
    "InvalidArgumentError",
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
    "delete_mutable",
    "delete_mutable_local",
    "format_sha1_uri",
    "get_client_id",
    "get_kachery_cloud_dir",
    "get_mutable",
    "get_mutable_local",
    "init",
    "load_bytes",
    "load_file",
    "load_file_info",
    "load_json",
    "load_npy",
    "load_pkl",
    "load_text",
    "parse_sha1_uri",
    "set_mutable",
    "set_mutable_local",
    "sha1_of_dict",
    "store_file",
    "store_file_local",
    "store_json",
    "store_json_local",
    "store_npy",
    "store_npy_local",
    "store_pkl",
    "store_pkl_local",
    "store_text",
    "store_text_local",
]

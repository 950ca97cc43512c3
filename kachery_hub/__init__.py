"""kachery_hub: the self-hostable hub that kachery clients share.

Run it with ``kachery-hub serve``; embed it with ``create_app(Settings(...))``.
Needs the ``hub`` extra (FastAPI, uvicorn, SQLAlchemy).
"""

from __future__ import annotations

from ._app import create_app
from ._bytestore import ByteStore, LocalFolderStore, open_byte_store
from ._settings import Settings
from .errors import HubError

__all__ = [
    "ByteStore",
    "HubError",
    "LocalFolderStore",
    "Settings",
    "create_app",
    "open_byte_store",
]

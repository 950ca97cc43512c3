"""What every request handler reaches: settings, database and byte store."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request

from ._bytestore import ByteStore, open_byte_store
from ._database import Database
from ._oidc import OidcConfig, OidcProvider
from ._settings import Settings


@dataclass
class HubState:
    settings: Settings
    db: Database
    store: ByteStore
    oidc: OidcProvider | None = field(default=None)

    @classmethod
    def open(cls, settings: Settings) -> HubState:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url)
        db.migrate()
        store = open_byte_store(settings.resolved_storage_url)
        store.cleanup()
        from ._files import ABANDONED_UPLOAD_SECONDS, remove_abandoned_uploads  # _files needs this module

        remove_abandoned_uploads(db, store, time.time() - ABANDONED_UPLOAD_SECONDS)
        oidc = None
        if settings.oidc_client_id and settings.oidc_client_secret:
            oidc = OidcProvider(OidcConfig(settings.oidc_issuer, settings.oidc_client_id, settings.oidc_client_secret))
        return cls(settings=settings, db=db, store=store, oidc=oidc)

    def close(self) -> None:
        self.db.close()
        self.store.close()


async def hub_state(request: Request) -> HubState:
    """Dependency; async so FastAPI does not send it to the thread pool."""
    state: HubState = request.app.state.hub
    return state


def state_of(request: Request) -> HubState:
    state: HubState = request.app.state.hub
    return state

"""Hub settings, read from the environment in one place and injectable.

``Settings.from_environ(environ, **overrides)`` is what the CLI uses; tests
build ``Settings(data_dir=...)`` directly.

==============================  ======================================================
``KACHERY_HUB_DATA``            folder for the embedded database and file bytes
``KACHERY_HUB_DATABASE_URL``    SQLAlchemy URL (default ``sqlite:///<data>/hub.sqlite``)
``KACHERY_HUB_STORAGE_URL``     byte store (default ``file://<data>/blobs``)
``KACHERY_HUB_MAX_CLOCK_SKEW``  seconds a signed request's time may differ (default 300)
``KACHERY_HUB_OIDC_ISSUER``     OpenID Connect issuer for browser sign-in (default Google's)
``KACHERY_HUB_OIDC_CLIENT_ID``  the hub's client ID at that issuer; sign-in with it is off without one
``KACHERY_HUB_OIDC_CLIENT_SECRET``  the matching client secret
``KACHERY_HUB_ADMIN_EMAILS``    comma-separated emails that are hub admins when they sign in
==============================  ======================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigurationError

ENV_DATA = "KACHERY_HUB_DATA"
ENV_DATABASE_URL = "KACHERY_HUB_DATABASE_URL"
ENV_STORAGE_URL = "KACHERY_HUB_STORAGE_URL"
ENV_MAX_CLOCK_SKEW = "KACHERY_HUB_MAX_CLOCK_SKEW"
ENV_OIDC_ISSUER = "KACHERY_HUB_OIDC_ISSUER"
ENV_OIDC_CLIENT_ID = "KACHERY_HUB_OIDC_CLIENT_ID"
ENV_OIDC_CLIENT_SECRET = "KACHERY_HUB_OIDC_CLIENT_SECRET"
ENV_ADMIN_EMAILS = "KACHERY_HUB_ADMIN_EMAILS"

GOOGLE_ISSUER = "https://accounts.google.com"

DEFAULT_DATA_DIR = "~/.kachery-hub"
#: Bodies of JSON requests (not file uploads) may not exceed this.
MAX_JSON_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str | None = None
    storage_url: str | None = None
    max_clock_skew_seconds: float = 300.0
    max_json_body_bytes: int = MAX_JSON_BODY_BYTES
    oidc_issuer: str = GOOGLE_ISSUER
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    admin_emails: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().absolute())
        object.__setattr__(self, "admin_emails", tuple(e.strip().lower() for e in self.admin_emails if e.strip()))
        if self.oidc_client_id and not self.oidc_client_secret:
            raise ConfigurationError(
                f"an OpenID Connect client ID is set but no client secret ({ENV_OIDC_CLIENT_SECRET} or --oidc-client-secret)"
            )
        if not self.oidc_issuer.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise ConfigurationError(f"the OpenID Connect issuer must be an https:// URL, not {self.oidc_issuer!r}")
        if not self.max_clock_skew_seconds > 0:
            raise ConfigurationError(f"max_clock_skew_seconds must be positive, not {self.max_clock_skew_seconds!r}")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'hub.sqlite'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.data_dir / "blobs").as_uri()

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        skew_text = env.get(ENV_MAX_CLOCK_SKEW)
        try:
            skew = float(skew_text) if skew_text else 300.0
        except ValueError:
            raise ConfigurationError(f"{ENV_MAX_CLOCK_SKEW}={skew_text!r} is not a number of seconds") from None
        base = cls(
            data_dir=Path(env.get(ENV_DATA) or DEFAULT_DATA_DIR),
            database_url=env.get(ENV_DATABASE_URL) or None,
            storage_url=env.get(ENV_STORAGE_URL) or None,
            max_clock_skew_seconds=skew,
            oidc_issuer=env.get(ENV_OIDC_ISSUER) or GOOGLE_ISSUER,
            oidc_client_id=env.get(ENV_OIDC_CLIENT_ID) or None,
            oidc_client_secret=env.get(ENV_OIDC_CLIENT_SECRET) or None,
            admin_emails=tuple((env.get(ENV_ADMIN_EMAILS) or "").split(",")),
        )
        return base.with_overrides(**overrides)

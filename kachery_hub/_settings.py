"""Hub settings, read from the environment in one place and injectable.

``Settings.from_environ(environ, **overrides)`` is what the CLI uses; tests
build ``Settings(data_dir=...)`` directly.

==============================  ======================================================
``KACHERY_HUB_DATA``            folder for the embedded database and file bytes
``KACHERY_HUB_DATABASE_URL``    SQLAlchemy URL (default ``sqlite:///<data>/hub.sqlite``)
``KACHERY_HUB_STORAGE_URL``     byte store (default ``file://<data>/blobs``)
``KACHERY_HUB_MAX_CLOCK_SKEW``  seconds a signed request's time may differ (default 300)
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().absolute())
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
        )
        return base.with_overrides(**overrides)

"""Every environment variable kachery_core reads, in one place.

Values are read when a function is called, never at import, so tests and
notebooks can change the environment at any time.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Where the store, keys, config and mutables live (default ``~/.kachery-cloud``).
ENV_DIR = "KACHERY_CLOUD_DIR"
#: Project used by hub operations when ``project_id=`` is not given.
ENV_PROJECT = "KACHERY_CLOUD_PROJECT"
#: Read-only use of public projects without registering a client.
ENV_EPHEMERAL = "KACHERY_CLOUD_EPHEMERAL"
#: Which hub to talk to.
ENV_HUB_URL = "KACHERY_HUB_URL"
#: A sign-in token for headless machines.
ENV_HUB_TOKEN = "KACHERY_HUB_TOKEN"
#: Progress bars: ``0`` never, ``1`` always, unset when someone watches (a kernel or a terminal).
ENV_PROGRESS = "KACHERY_PROGRESS"
#: ``0``: send every request over HTTP, never on a session (one WebSocket, see kachery_core._session).
ENV_HUB_SESSIONS = "KACHERY_HUB_SESSIONS"

#: Largest value a mutable may hold, in UTF-8 bytes.
MAX_MUTABLE_VALUE_BYTES = 1024 * 1024
#: A feed message: at most this many bytes of canonical JSON (sorted keys, compact, ASCII).
MAX_FEED_MESSAGE_BYTES = 1024 * 1024
#: One append: at most this many messages ...
MAX_FEED_BATCH_MESSAGES = 10_000
#: ... in a request body of at most this many bytes (the hub's JSON body limit).
MAX_FEED_BATCH_BYTES = 4 * 1024 * 1024
#: A task's input: a JSON object of at most this many bytes (canonical JSON).
MAX_TASK_INPUT_BYTES = 1024 * 1024
#: A task result of at most this many bytes of JSON is kept in the job; a larger one is stored as a file.
MAX_TASK_RESULT_INLINE_BYTES = 1024 * 1024
#: Content at least this big shows a progress bar while it is hashed, stored, uploaded or downloaded.
PROGRESS_THRESHOLD_BYTES = 64 * 1024 * 1024


def kachery_cloud_dir() -> Path:
    value = os.environ.get(ENV_DIR)
    if value:
        return Path(value).expanduser().absolute()
    return Path.home() / ".kachery-cloud"


def project_id() -> str | None:
    return os.environ.get(ENV_PROJECT) or None


def ephemeral() -> bool:
    return os.environ.get(ENV_EPHEMERAL, "").strip().lower() in ("1", "true", "yes", "on")


def hub_url() -> str | None:
    return os.environ.get(ENV_HUB_URL) or None


def hub_token() -> str | None:
    return os.environ.get(ENV_HUB_TOKEN) or None


def sessions_enabled() -> bool:
    return os.environ.get(ENV_HUB_SESSIONS, "").strip().lower() not in ("0", "false", "no", "off")


def progress_setting() -> bool | None:
    """``KACHERY_PROGRESS``: False to never draw bars, True to always, None (unset, ``auto``) to decide."""
    value = os.environ.get(ENV_PROGRESS, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return None

"""Every error kachery_core raises.

All inherit :class:`KacheryError` and the built-in exception a caller would
expect (``ValueError``, ``FileNotFoundError``, ``PermissionError`` ...), so
``except FileNotFoundError`` keeps working. The offending input is kept as an
attribute (``uri``, ``key``, ``path``) and named in the message.
"""

from __future__ import annotations

import pickle


class KacheryError(Exception):
    """Base class of every kachery error."""


class InvalidURIError(KacheryError, ValueError):
    """A URI that cannot be parsed."""

    def __init__(self, uri: str, reason: str) -> None:
        self.uri = uri
        self.reason = reason
        super().__init__(f"Invalid kachery URI {uri!r}: {reason}")


class UnknownURISchemeError(InvalidURIError):
    """A URI whose scheme is not one kachery understands."""

    def __init__(self, uri: str, scheme: str) -> None:
        self.scheme = scheme
        super().__init__(uri, f"unknown scheme {scheme!r} (expected sha1://)")


class KacheryFileNotFoundError(KacheryError, FileNotFoundError):
    """The content of a URI is not available where we looked."""

    def __init__(self, uri: str, where: str) -> None:
        self.uri = uri
        self.where = where
        super().__init__(f"File not found for {uri}: {where}")


class HashMismatchError(KacheryError, ValueError):
    """Bytes whose sha1 is not the one the URI names (corruption or tampering)."""

    def __init__(self, uri: str, expected: str, actual: str, path: str | None = None) -> None:
        self.uri = uri
        self.expected = expected
        self.actual = actual
        self.path = path
        where = f" at {path}" if path else ""
        super().__init__(
            f"Content of {uri}{where} does not match its hash: expected sha1 {expected}, got {actual}"
        )


class FileChangedError(KacheryError, RuntimeError):
    """The source file changed while it was being stored."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path} changed while it was being stored; nothing was stored, try again")


class ByteRangeError(KacheryError, ValueError):
    """A byte range outside the content."""

    def __init__(self, uri: str, start: int | None, end: int | None, size: int) -> None:
        self.uri = uri
        self.start = start
        self.end = end
        self.size = size
        super().__init__(f"Byte range [{start}, {end}) is outside the {size} bytes of {uri}")


class InvalidMutableKeyError(KacheryError, ValueError):
    """A mutable key that is not a safe relative path."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"Invalid mutable key {key!r}: {reason}")


class MutableValueError(KacheryError, ValueError):
    """A mutable value of the wrong type or over the size limit."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"Invalid value for mutable {key!r}: {reason}")


class SerializationError(KacheryError, ValueError):
    """An object that cannot be turned into deterministic bytes (or back)."""


class UnsafePickleError(SerializationError, pickle.UnpicklingError):
    """A pickle that refers to a class outside the allowed set, or uses an allowed one in a way
    no pickle of a plain value does (e.g. to allocate far more memory than its own size)."""

    def __init__(self, module: str, name: str, reason: str | None = None) -> None:
        self.module = module
        self.name = name
        self.reason = reason
        super().__init__(
            f"Refusing to unpickle {module}.{name}: "
            + (reason or "only builtin containers and numpy arrays/scalars are allowed "
                         "(a pickle may run arbitrary code when loaded)")
        )


class IdentityError(KacheryError, ValueError):
    """A key file that exists but cannot be read as an Ed25519 key."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"Cannot use client key {path}: {reason}")


class ConfigError(KacheryError, ValueError):
    """A config.yaml that cannot be used."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"Invalid kachery config {path}: {reason}")


class HubNotConfiguredError(KacheryError, RuntimeError):
    """An operation needs a hub and none is configured."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(
            f"{what} needs a kachery hub, and none is configured: call kachery_core.init(hub_url=..., token=...) "
            "or set KACHERY_HUB_URL (and KACHERY_HUB_TOKEN); to run one, `kachery-hub serve`"
        )


class HubError(KacheryError):
    """The hub refused a request or could not be reached; ``status`` and ``code`` say why."""

    def __init__(self, hub_url: str, message: str, *, status: int | None = None, code: str | None = None) -> None:
        self.hub_url = hub_url
        self.message = message
        self.status = status
        self.code = code
        detail = f"HTTP {status} {code}, " if status is not None else ""
        super().__init__(f"{message} ({detail}hub {hub_url})")


class HubUnavailableError(HubError, ConnectionError):
    """The hub did not answer."""


class HubAuthError(HubError, PermissionError):
    """The hub did not accept who this client is (not signed in, bad signature, replay, ephemeral)."""


class ClockSkewError(HubAuthError):
    """This computer's clock differs from the hub's by more than the hub accepts."""

    def __init__(self, hub_url: str, message: str, *, skew_seconds: float, status: int | None = None,
                 code: str | None = None) -> None:
        self.skew_seconds = skew_seconds
        super().__init__(hub_url, message, status=status, code=code)


class HubPermissionError(HubError, PermissionError):
    """The signed-in user may not do this in this project."""


class HubNotFoundError(HubError, LookupError):
    """The hub has no such project, user or mutable."""


class HubRequestError(HubError, ValueError):
    """The hub found the request invalid (bad input, too large)."""


class HubServerError(HubError, RuntimeError):
    """The hub failed (5xx)."""


class FeedNotFoundError(HubNotFoundError):
    """The hub has no such feed, or this client may not read it (the hub tells these apart to nobody)."""

    def __init__(self, hub_url: str, feed_id: str, message: str, *, status: int | None = 404,
                 code: str | None = "feed_not_found") -> None:
        self.feed_id = feed_id
        super().__init__(hub_url, message, status=status, code=code)


class FeedMessageError(KacheryError, ValueError):
    """A feed message that is not a JSON object of JSON values; ``path`` names the offending part."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"Invalid feed message at {path}: {reason}")


class FeedLimitError(KacheryError, ValueError):
    """An append over a feed's limits (messages per append, bytes per message or per append)."""


class InvalidTaskNameError(KacheryError, ValueError):
    """A task name that is not 1 to 200 letters, digits, '_', '.' or '-'."""

    def __init__(self, task_name: object) -> None:
        self.task_name = task_name
        super().__init__(f"Invalid task name {task_name!r}: expected 1 to 200 letters, digits, '_', '.' or '-'")


class TaskInputError(KacheryError, ValueError):
    """A task input (or result) that is not JSON; ``path`` names the offending part."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"Invalid task input at {path}: {reason}" if path.startswith("task_input")
                         else f"Invalid value at {path}: {reason}")


class TaskError(KacheryError, RuntimeError):
    """A task's handler raised: the remote exception's type, message and traceback."""

    def __init__(self, message: str, *, remote_type: str, remote_message: str = "", remote_traceback: str | None = None,
                 job_id: str | None = None, task_name: str | None = None) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.job_id = job_id
        self.task_name = task_name
        super().__init__(message)

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


class TaskCancelledError(KacheryError, RuntimeError):
    """The job was cancelled (raise it from a handler to stop as cancelled)."""


class TaskTimeoutError(KacheryError, TimeoutError):
    """A task did not finish in time; ``taken`` says whether any backend had started it."""

    def __init__(self, message: str, *, task_name: str, job_id: str, taken: bool) -> None:
        self.task_name = task_name
        self.job_id = job_id
        self.taken = taken
        super().__init__(message)


class InvalidArgumentError(KacheryError, ValueError):
    """An argument of the wrong type or value, named in the message."""

    def __init__(self, name: str, value: object, reason: str) -> None:
        self.name = name
        self.value = value
        super().__init__(f"Invalid {name}={value!r}: {reason}")

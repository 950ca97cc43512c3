"""Text the hub accepts, checked in one place for every endpoint.

- Ids, keys, emails, names, labels and tokens are one line of text: no control
  character (C0 with NUL, tab and newline; DEL; C1), no lone surrogate.
- Mutable values are free text (a JSON document or a list of URIs may hold
  newlines and tabs) without NUL, which PostgreSQL cannot store, and without
  lone surrogates, which have no UTF-8 encoding.
- The URL path and the query string are percent-encoded UTF-8, strictly: a
  malformed escape (``%zz``) or escapes that do not decode to UTF-8 (``%ff``)
  are refused rather than kept literally or replaced by U+FFFD, which made two
  different keys (``a%ffb``, ``a%feb``) one. Once decoded they are one line.

Anything else is a 400 ``invalid_input`` naming the field and the character,
the same on SQLite and PostgreSQL, before the request does any work.
:class:`CheckUrlText` (ASGI middleware) checks the path and the query of every
request before routing, so before a body is read; :data:`Line` and
:data:`Value` are the string types of the request models' text fields.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

from pydantic import AfterValidator, ValidationInfo

from .errors import HubError, send_error

_NOT_IN_A_LINE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NOT_IN_A_VALUE = re.compile("[\x00\ud800-\udfff]")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_NAMES = {0x00: "NUL", 0x09: "tab", 0x0A: "line feed", 0x0D: "carriage return", 0x1B: "escape", 0x7F: "DEL"}


class InvalidText(HubError):
    """``invalid_input`` for text the hub does not accept.

    Unlike ``errors.InvalidInput`` it is not a ValueError on purpose: pydantic
    turns a ValueError raised by a validator into a 422 validation error,
    whereas this one reaches the hub's error handler as it is, a 400.
    """

    status = 400
    code = "invalid_input"


def _problem(text: str, field: str, pattern: re.Pattern[str]) -> str | None:
    match = pattern.search(text)
    if match is None:
        return None
    ch = match.group()
    if "\ud800" <= ch <= "\udfff":
        kind = "a lone surrogate (not valid Unicode)"
    else:
        name = _NAMES.get(ord(ch))
        kind = f"a control character ({name})" if name else "a control character"
    return f"{field} contains U+{ord(ch):04X}, {kind}, at position {match.start()}"


def check_line(text: str, field: str) -> str:
    """``text`` if it is one line of text (see the module docstring); raises :class:`InvalidText`."""
    problem = _problem(text, field, _NOT_IN_A_LINE)
    if problem is not None:
        raise InvalidText(f"{problem}; it must be one line of text without control characters")
    return text


def check_value(text: str, field: str) -> str:
    """``text`` if it is free text without NUL or lone surrogates; raises :class:`InvalidText`."""
    problem = _problem(text, field, _NOT_IN_A_VALUE)
    if problem is not None:
        raise InvalidText(f"{problem}; a value may hold any text but NUL characters and lone surrogates")
    return text


def _field(info: ValidationInfo) -> str:
    return f"field {info.field_name!r}" if info.field_name else "a text parameter"


def _line(text: str, info: ValidationInfo) -> str:
    return check_line(text, _field(info))


def _value(text: str, info: ValidationInfo) -> str:
    return check_value(text, _field(info))


Line = Annotated[str, AfterValidator(_line)]
"""One line of text: an id, email, name, label or token."""

Value = Annotated[str, AfterValidator(_value)]
"""Free text without NUL: a mutable value."""


def _decode(raw: bytes, what: str, *, plus_is_space: bool = False) -> str:
    bad = _BAD_ESCAPE.search(raw)
    if bad is not None:
        escape = raw[bad.start():bad.start() + 3].decode("latin-1")
        raise InvalidText(f"{what} has a malformed percent-escape {escape!r} (a '%' must start %XX; "
                          "send a literal '%' as %25)")
    if plus_is_space:
        raw = raw.replace(b"+", b" ")
    data = unquote_to_bytes(raw)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidText(f"{what} is not UTF-8 once percent-decoded (byte 0x{data[e.start]:02x} at "
                          f"position {e.start} cannot start or continue a character)") from None
    return check_line(text, what)


def check_url(raw_path: bytes, query_string: bytes) -> None:
    """Refuse a path or query that is not strict percent-encoded UTF-8, or that holds a control character."""
    _decode(raw_path, "the URL path")
    for part in query_string.split(b"&"):
        raw_name, _, raw_value = part.partition(b"=")
        name = _decode(raw_name, "a query parameter name", plus_is_space=True)
        _decode(raw_value, f"query parameter {name[:100]!r}", plus_is_space=True)


class CheckUrlText:
    """ASGI middleware: every request's path and query pass :func:`check_url` before routing."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raw_path = scope.get("raw_path")
            try:
                if raw_path is None:  # no raw path from this server: the decoded one is all there is
                    check_line(scope["path"], "the URL path")
                    raw_path = b""
                check_url(raw_path, scope.get("query_string", b""))
            except InvalidText as e:
                await send_error(send, e.status, e.code, e.message)
                return
        await self.app(scope, receive, send)

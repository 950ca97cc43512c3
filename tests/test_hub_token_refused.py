"""A configured token the hub refuses (revoked, expired, unknown) does not break the client.

The first use of the hub tries the token once per process; the refusal is
remembered and the client goes on as an unregistered one, so public reads keep
working without a sign-in attempt before every request. A read that needs the
sign-in then says that the token was refused, and why.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hub_fixtures import *  # noqa: F403
from hub_fixtures import Hub

import kachery_core as kc
from kachery_core import _hub
from kachery_hub._accounts import issue_token, revoke_token


@pytest.fixture
def stored(hub: Hub) -> Iterator[tuple[str, str, str]]:
    """(two files in ada's public project, a file in a private one of hers)."""
    public = hub.sign_in("ada", "ada@example.org")
    kc.set_project_public(public, True)
    public_uri = kc.store_text("for everyone", label="public.txt")
    other_public_uri = kc.store_text("also for everyone", label="also.txt")
    private_uri = kc.store_text("ada's private notes", label="private.txt", project_id=kc.create_project("private"))
    yield public_uri, other_public_uri, private_uri


def _dead_token(hub: Hub, how: str) -> str:
    if how == "revoked":
        issued = issue_token(hub.state.db, "ada@example.org")
        revoke_token(hub.state.db, issued.id)
        return issued.token
    if how == "expired":
        issued = issue_token(hub.state.db, "ada@example.org", expires_in=-60.0)
        return issued.token
    return "khub_" + "x" * 43  # never issued


def _fresh_computer(hub: Hub, name: str, token: str) -> None:
    """A computer configured by KACHERY_HUB_URL + KACHERY_HUB_TOKEN only (the Colab-secret path)."""
    hub.use(name)
    hub.monkeypatch.setenv("KACHERY_HUB_URL", hub.url)
    hub.monkeypatch.setenv("KACHERY_HUB_TOKEN", token)
    hub.monkeypatch.setitem(_hub._injected, hub.url, hub.http)
    _hub._chosen_url.clear()
    _hub._chosen_token.clear()


def _count(hub: Hub) -> list[str]:
    """Every request the client sends to the hub, as "METHOD /path"."""
    seen: list[str] = []
    send: Callable[..., Any] = hub.http.send

    def counting(request: Any, **kwargs: Any) -> Any:
        seen.append(f"{request.method} {request.url.path}")
        return send(request, **kwargs)

    hub.monkeypatch.setattr(hub.http, "send", counting)
    return seen


@pytest.mark.parametrize("how", ["revoked", "expired", "unknown"])
def test_public_files_load_with_a_dead_token_and_it_is_tried_once(
    hub: Hub, stored: tuple[str, str, str], how: str
) -> None:
    public_uri, other_public_uri, _ = stored
    _fresh_computer(hub, f"colab-{how}", _dead_token(hub, how))
    seen = _count(hub)
    assert kc.load_text(public_uri) == "for everyone"
    assert kc.load_file_info(public_uri)["label"] == "public.txt"
    assert kc.load_bytes(public_uri, start=4, end=7) == b"eve"
    assert seen.count("POST /api/clients") == 1, seen  # the sign-in with the token: once per process
    assert seen.count("GET /api/me") == 1, seen
    seen.clear()
    kc.load_file_info(other_public_uri)  # not in the local store: asked of the hub, without signing in first
    assert seen == ["GET /api/files/" + kc.parse_sha1_uri(other_public_uri).sha1 + "/info"]


@pytest.mark.parametrize("how", ["revoked", "expired", "unknown"])
def test_a_private_load_says_the_token_was_refused(hub: Hub, stored: tuple[str, str, str], how: str) -> None:
    _, _, private_uri = stored
    _fresh_computer(hub, f"colab-{how}", _dead_token(hub, how))
    code = {"revoked": "token_revoked", "expired": "token_expired", "unknown": "invalid_token"}[how]
    why = {"revoked": "was revoked", "expired": "expired on", "unknown": "is not known"}[how]
    for load in (kc.load_text, kc.load_file_info):
        with pytest.raises(kc.HubAuthError, match=f"KACHERY_HUB_TOKEN was refused: this sign-in token {why}") as e:
            load(private_uri)
        assert e.value.code == code
    with pytest.raises(kc.HubAuthError, match="KACHERY_HUB_TOKEN was refused") as e:
        kc.set_mutable("k", "v")
    assert e.value.code == code


def test_a_new_token_is_tried_and_then_works(hub: Hub, stored: tuple[str, str, str]) -> None:
    _, _, private_uri = stored
    _fresh_computer(hub, "colab", _dead_token(hub, "revoked"))
    with pytest.raises(kc.HubAuthError, match="was refused"):
        kc.load_text(private_uri)
    hub.monkeypatch.setenv("KACHERY_HUB_TOKEN", hub.token("ada@example.org"))
    assert kc.load_text(private_uri) == "ada's private notes"


def test_threads_sign_in_once(hub: Hub, stored: tuple[str, str, str]) -> None:
    public_uri, other_public_uri, _ = stored
    _fresh_computer(hub, "colab-threads", _dead_token(hub, "revoked"))
    seen = _count(hub)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            assert kc.load_file_info(public_uri)["label"] == "public.txt"
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert seen.count("POST /api/clients") == 1, seen


def test_signing_out_with_a_refused_token_is_not_an_error(hub: Hub, stored: tuple[str, str, str]) -> None:
    _fresh_computer(hub, "colab-sign-out", _dead_token(hub, "expired"))
    assert kc.get_client_info()["signed_in"] is False
    kc.sign_out()


def test_unsigned_one_off_requests_use_the_anonymous_client(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    from kachery_core._signin import sign_in_methods
    from kachery_jupyter._login import check_hub

    hub.use("someone")
    monkeypatch.setitem(_hub._injected, hub.url, hub.http)
    made: list[str] = []
    anonymous_client = _hub.anonymous_client

    def counting(url: str) -> _hub.HubClient:
        made.append(url)
        client = anonymous_client(url)
        assert client.ephemeral and client.http is hub.http
        return client

    monkeypatch.setattr(_hub, "anonymous_client", counting)
    assert sign_in_methods(hub.url) is not None
    assert check_hub(hub.url) == hub.url
    assert made == [hub.url, hub.url]

"""Two projects of the same name are told apart by their owner, in lists and in the panel's picker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_fixtures import Hub, make_hub, postgres_server  # noqa: F401  (a fixture)

import kachery_core as kc
from kachery_jupyter import LoginWidget


@pytest.fixture(params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    yield from make_hub(request.param, request, tmp_path, monkeypatch)


def test_lists_name_the_owner_of_each_project(hub: Hub) -> None:
    ada_default = hub.sign_in("ada", "ada@example.org")
    kc.set_project_member(ada_default, "bob@example.org", "write")
    bob_default = hub.sign_in("bob", "bob@example.org")

    projects = {p["project_id"]: p for p in kc.list_projects()}
    assert set(projects) == {ada_default, bob_default}
    assert [projects[ada_default]["name"], projects[bob_default]["name"]] == ["default", "default"]
    assert projects[ada_default]["owner_email"] == "ada@example.org"
    assert projects[bob_default]["owner_email"] == "bob@example.org"
    assert kc.get_project(ada_default)["owner_email"] == "ada@example.org"

    panel = LoginWidget(hub_url=hub.url)
    assert panel.state == "signed_in"
    assert sorted((p["name"], p["owner"]) for p in panel.projects) == [
        ("default", "ada@example.org"), ("default", "bob@example.org")]


def test_a_public_project_does_not_show_its_owner_to_outsiders(hub: Hub) -> None:
    ada_default = hub.sign_in("ada", "ada@example.org")
    kc.set_project_public(ada_default, True)
    hub.sign_in("eve", "eve@example.org")
    seen = kc.get_project(ada_default)
    assert seen["public_read"] is True
    assert "ada@example.org" not in str(seen)

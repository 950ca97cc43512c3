"""The magics with a hub: %kc_store shares through it, %kc_mutable reads and writes the project."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hub_fixtures import Hub, make_hub
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import kachery_core as kc


@pytest.fixture
def hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    yield from make_hub("sqlite", request, tmp_path, monkeypatch)




def test_kc_store_shares_through_the_hub(hub: Hub, ip: InteractiveShell, tmp_path: Path) -> None:
    project = hub.sign_in("alice", "alice@example.org")
    ip.user_ns["arr"] = np.arange(10)
    uri = ip.run_line_magic("kc_store", "arr")
    table = tmp_path / "table.csv"
    table.write_text("a,b\n1,2\n")
    file_uri = ip.run_line_magic("kc_store", f"--file {table}")
    ip.user_ns["note"] = "only here"
    local_uri = ip.run_line_magic("kc_store", "note --local")
    kc.set_project_public(project, True)

    hub.ephemeral("stranger")  # another computer, no account
    np.testing.assert_array_equal(ip.run_line_magic("kc_load", uri), np.arange(10))
    assert Path(ip.run_line_magic("kc_load", file_uri)).read_text() == "a,b\n1,2\n"
    with pytest.raises(UsageError, match="not"):
        ip.run_line_magic("kc_load", local_uri)


def test_kc_mutable_on_the_hub(hub: Hub, ip: InteractiveShell) -> None:
    hub.sign_in("alice", "alice@example.org")
    ip.run_line_magic("kc_mutable", "set exp/M12/latest sha1://abc")
    ip.run_line_magic("kc_mutable", "set exp/M13/latest sha1://def")
    assert ip.run_line_magic("kc_mutable", "get exp/M12/latest") == "sha1://abc"
    assert kc.get_mutable("exp/M12/latest") == "sha1://abc"
    assert kc.get_mutable_local("exp/M12/latest") is None, "with a hub, mutables live in the project"
    assert ip.run_line_magic("kc_mutable", "list exp/") == ["exp/M12/latest", "exp/M13/latest"]
    ip.run_line_magic("kc_mutable", "delete exp/M12/latest")
    with pytest.raises(UsageError, match="is not set"):
        ip.run_line_magic("kc_mutable", "get exp/M12/latest")
    ip.run_line_magic("kc_mutable", "set here v --local")
    assert kc.get_mutable_local("here") == "v"
    with pytest.raises(UsageError, match="'..' segments"):
        ip.run_line_magic("kc_mutable", "set ../escape v")

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
from hub_process import HubProcess, free_port, real_hub  # noqa: F401  (a fixture)
from test_magics import shown


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


def test_store_when_not_signed_in_suggests_kc_login(hub: Hub, ip: InteractiveShell) -> None:
    hub.use("newcomer")
    kc.use_hub(hub.url, http_client=hub.http)
    ip.user_ns["t"] = "text"
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("kc_store", "t")
    message = str(info.value)
    assert "not signed in" in message and "%kc_login" in message and "--local" in message
    assert "kachery_core.init" not in message and "\n" not in message
    with pytest.raises(UsageError, match="%kc_login"):
        ip.run_line_magic("kc_mutable", "set k v")


@pytest.mark.slow
def test_kc_login_switches_hubs_only_once_the_new_one_answers(real_hub: HubProcess, ip: InteractiveShell) -> None:
    kc.use_hub(real_hub.url)
    typo = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("kc_login", f"--hub {typo}")
    message = str(info.value)
    assert typo in message and "cannot reach" in message and real_hub.url in message and "\n" not in message
    assert kc.get_hub_url() == real_hub.url, "the kernel keeps its hub"

    widget = ip.run_line_magic("kc_login", f"--hub {real_hub.url}/")
    assert widget.state == "signed_out" and kc.get_hub_url() == real_hub.url
    widget._on_msg(widget, {"type": "connect", "hub_url": typo}, None)  # a typo typed into the panel
    assert widget.state == "unreachable" and typo in widget.message
    assert kc.get_hub_url() == real_hub.url, "the panel does not re-target the kernel either"


@pytest.mark.slow
def test_kc_login_refuses_a_server_that_is_not_a_hub(real_hub: HubProcess, ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="not a kachery hub") as info:
        ip.run_line_magic("kc_login", f"--hub {real_hub.url}/docs")  # answers, but not /api/health
    assert f"{real_hub.url}/docs" in str(info.value)
    assert kc.get_hub_url() is None
    widget = ip.run_line_magic("kc_login", f"--hub {real_hub.url}")
    assert widget.state == "signed_out" and kc.get_hub_url() == real_hub.url


def test_kc_store_shows_the_project_it_went_to(hub: Hub, ip: InteractiveShell) -> None:
    project = hub.sign_in("alice", "alice@example.org")
    kc.rename_project(project, '<b onmouseover="alert(1)">lab</b>')
    ip.user_ns["arr"] = np.arange(10)
    uri = ip.run_line_magic("kc_store", "arr")
    assert uri.project_id == project and uri.hub_url == hub.url
    html = shown(ip, uri)["text/html"]
    assert f"project &lt;b onmouseover=&quot;alert(1)&quot;&gt;lab&lt;/b&gt; ({project}) on {hub.url}" in html
    assert "<b onmouseover" not in html
    assert shown(ip, uri)["text/plain"] == str(uri)
    local = ip.run_line_magic("kc_store", "arr --local")
    assert local == uri and local.hub_url is None and "this computer only" in local._repr_html_()


def test_kc_status_with_a_hub(hub: Hub, ip: InteractiveShell) -> None:
    project = hub.sign_in("alice", "alice@example.org")
    kc.rename_project(project, "alice's lab")
    status = ip.run_line_magic("kc_status", "")
    assert status["hub"] == f"{hub.url} (API 1)"
    assert status["user"] == "alice@example.org"
    assert status["project"] == f"{project} (alice's lab)"
    hub.use("newcomer")
    kc.use_hub(hub.url, http_client=hub.http)
    status = ip.run_line_magic("kc_status", "")
    assert status["user"] == "not signed in: run %kc_login"


def test_a_refusal_is_one_line(hub: Hub, ip: InteractiveShell) -> None:
    alices = hub.sign_in("alice", "alice@example.org")
    hub.sign_in("bob", "bob@example.org")
    ip.user_ns["t"] = "bob's text"
    for magic, line in (("kc_store", f"t --project {alices}"), ("kc_mutable", f"set k v --project {alices}"),
                        ("kc_mutable", f"list --project {alices}")):
        with pytest.raises(UsageError) as info:
            ip.run_line_magic(magic, line)
        assert alices in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_storing_a_big_array_shows_bars_named_by_its_label(
        hub: Hub, ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from kachery_core import _constants

    hub.sign_in("alice", "alice@example.org")
    monkeypatch.setattr(_constants, "PROGRESS_THRESHOLD_BYTES", 1024 * 1024)  # 3 MiB stands for 600 MB
    monkeypatch.setenv("KACHERY_PROGRESS", "1")
    ip.user_ns["spikes"] = np.zeros(3 * 1024 * 1024 // 8)
    capsys.readouterr()
    ip.run_line_magic("kc_store", "spikes")
    err = capsys.readouterr().err
    assert "hashing spikes.npy: 100%|" in err and "uploading spikes.npy: 100%|" in err

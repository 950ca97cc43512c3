"""kachery_core against an in-process hub: two users, projects, files, mutables, ephemeral mode."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hub_fixtures import *  # noqa: F403
from hub_fixtures import Hub
from conftest import count_hashed_bytes

import kachery_core as kc
from kachery_core import _hub, _signing
from kachery_core._store import store_path


def _hub_files(hub: Hub, project_id: str) -> list[str]:
    from kachery_hub._database import files
    from sqlalchemy import select

    with hub.state.db.begin() as conn:
        return [r.sha1 for r in conn.execute(select(files.c.sha1).where(files.c.project_id == project_id))]


def test_a_member_loads_what_another_user_stored_and_an_outsider_is_refused(hub: Hub, tmp_path: Path) -> None:
    pa = hub.sign_in("A", "a@example.org")
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(3 * 2**20))
    file_uri = kc.store_file(str(src), label="data.bin")
    arr_uri = kc.store_npy(np.arange(12).reshape(3, 4))
    kc.set_mutable("results/latest", file_uri)

    hub.sign_in("B", "b@example.org")
    with pytest.raises(kc.KacheryFileNotFoundError, match="not in any project you can read"):
        kc.load_file(file_uri)
    with pytest.raises(kc.HubPermissionError, match="not a member"):
        kc.get_mutable("results/latest", project_id=pa)

    hub.use("A")
    kc.set_project_member(pa, "b@example.org", "read")

    hub.use("B")
    assert kc.get_mutable("results/latest", project_id=pa) == file_uri
    path = kc.load_file(file_uri)
    assert Path(path).read_bytes() == src.read_bytes()
    assert path == str(store_path(kc.parse_sha1_uri(file_uri).sha1))  # kept in B's local store
    np.testing.assert_array_equal(kc.load_npy(arr_uri), np.arange(12).reshape(3, 4))
    # Served from the cache from now on: no hub needed.
    hub.monkeypatch.setitem(_hub._injected, hub.url, None)  # type: ignore[arg-type]
    assert kc.load_file(file_uri, local_only=True) == path
    assert kc.load_file(file_uri) == path


def test_store_uploads_to_the_default_project_with_its_label(hub: Hub) -> None:
    pa = hub.sign_in("A", "a@example.org")
    uri = kc.store_json({"x": 1}, label="x.json")
    sha1 = kc.parse_sha1_uri(uri).sha1
    assert _hub_files(hub, pa) == [sha1]
    from kachery_hub._database import files
    from sqlalchemy import select

    with hub.state.db.begin() as conn:
        assert conn.execute(select(files.c.label)).scalar_one() == "x.json"


def test_cache_locally_caches_and_local_stays_local(hub: Hub) -> None:
    pa = hub.sign_in("A", "a@example.org")
    plain = kc.store_text("uploaded only")
    with pytest.raises(kc.KacheryFileNotFoundError):
        kc.load_file(plain, local_only=True)
    cached = kc.store_text("uploaded and cached", cache_locally=True)
    assert kc.load_text(cached, local_only=True) == "uploaded and cached"
    local = kc.store_text("never leaves this computer", local=True)
    assert kc.load_text(local, local_only=True) == "never leaves this computer"
    uploaded = {kc.parse_sha1_uri(u).sha1 for u in (plain, cached)}
    assert set(_hub_files(hub, pa)) == uploaded


def test_cache_locally_for_store_file(hub: Hub, tmp_path: Path) -> None:
    hub.sign_in("A", "a@example.org")
    src = tmp_path / "f.txt"
    src.write_text("file content")
    uri = kc.store_file(str(src), cache_locally=True)
    assert Path(kc.load_file(uri, local_only=True)).read_text() == "file content"
    assert kc.store_file(str(src), local=True) == uri


def test_a_download_is_hashed_once_as_it_arrives(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.sign_in("A", "a@example.org")
    data = os.urandom(3_000_000)
    uri = kc.store_npy(np.frombuffer(data, dtype=np.uint8))
    hashed = count_hashed_bytes(monkeypatch)
    path = Path(kc.load_file(uri))
    assert path.stat().st_size > len(data) and sum(hashed) == path.stat().st_size  # not again once it is stored


def test_load_bytes_uses_a_range_and_does_not_download_everything(hub: Hub) -> None:
    pa = hub.sign_in("A", "a@example.org")
    data = bytes(range(256)) * 64
    uri = kc.store_pkl(data)
    hub.sign_in("B", "b@example.org")
    hub.use("A")
    kc.set_project_member(pa, "b@example.org", "read")
    hub.use("B")
    payload = kc.load_file_info(uri)
    assert payload["local_path"] is None and payload["project_id"] == pa
    part = kc.load_bytes(uri, 10, 30)
    assert len(part) == 20
    assert not store_path(kc.parse_sha1_uri(uri).sha1).exists()
    assert kc.load_bytes(uri, 5, 5) == b""
    with pytest.raises(kc.ByteRangeError):
        kc.load_bytes(uri, 0, payload["size"] + 1)
    assert kc.load_pkl(uri) == data
    assert kc.load_bytes(uri, 10, 30) == part


def test_a_download_that_does_not_match_its_hash_is_refused(hub: Hub) -> None:
    hub.sign_in("A", "a@example.org")
    uri = kc.store_text("original")
    sha1 = kc.parse_sha1_uri(uri).sha1
    hub.tamper(sha1, b"tampered")  # corruption (or a malicious hub) after the upload
    hub.use("C")
    kc.init(hub_url=hub.url, token=hub.token("a@example.org"), http_client=hub.http)
    with pytest.raises(kc.HashMismatchError) as err:
        kc.load_file(uri)
    assert isinstance(err.value, ValueError) and err.value.expected == sha1
    assert not store_path(sha1).exists()
    assert list((Path(kc.get_kachery_cloud_dir()) / "sha1" / ".tmp").iterdir()) == []



def test_a_disk_failure_during_a_download_is_raised_and_leaves_nothing(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.sign_in("A", "a@example.org")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(9 * 2**20))  # several hand-overs to the writer thread
    uri = kc.store_file(str(src))
    sha1 = kc.parse_sha1_uri(uri).sha1
    hub.use("C")
    kc.init(hub_url=hub.url, token=hub.token("a@example.org"), http_client=hub.http)

    class FullDisk:  # the downloaded file: the second batch does not fit, as on a full disk
        def __init__(self, path: Path, mode: str) -> None:
            self.f = open(path, mode)
            self.batches = 0

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def write(self, data: bytes) -> int:
            self.batches += 1
            if self.batches == 2:
                raise OSError(28, "No space left on device")
            return self.f.write(data)

    monkeypatch.setattr("kachery_core._remote.open", FullDisk, raising=False)
    with pytest.raises(OSError, match="No space left"):
        kc.load_file(uri)
    monkeypatch.delattr("kachery_core._remote.open")
    assert not store_path(sha1).exists()
    assert list((Path(kc.get_kachery_cloud_dir()) / "sha1" / ".tmp").iterdir()) == []
    assert Path(kc.load_file(uri)).read_bytes() == src.read_bytes()  # and the retry works

def test_ephemeral_clients_read_public_projects_only(hub: Hub) -> None:
    pa = hub.sign_in("A", "a@example.org")
    uri = kc.store_text("public data")
    kc.set_mutable("k", "v")
    hub.ephemeral("E")
    with pytest.raises(kc.KacheryFileNotFoundError, match="anonymous"):
        kc.load_text(uri)
    hub.monkeypatch.delenv("KACHERY_CLOUD_EPHEMERAL")
    hub.use("A")
    kc.set_project_public(pa, True)
    hub.ephemeral("E")
    assert kc.load_text(uri) == "public data"
    assert kc.get_mutable("k", project_id=pa) == "v"
    assert not (Path(kc.get_kachery_cloud_dir()) / "private.pem").exists()
    with pytest.raises(kc.HubAuthError, match="ephemeral"):
        kc.store_text("x", project_id=pa)
    with pytest.raises(kc.HubAuthError, match="ephemeral"):
        kc.set_mutable("k", "w", project_id=pa)
    assert kc.get_client_info()["ephemeral"] is True


def test_mutables_set_get_delete_and_list_by_prefix(hub: Hub) -> None:
    hub.sign_in("A", "a@example.org")
    assert kc.get_mutable("a/b") is None
    assert kc.get_mutable("a/b", "fallback") == "fallback"
    for key in ("a/b", "a/c/d", "ab", "z", "a%_/x"):
        kc.set_mutable(key, f"value of {key}")
    kc.set_mutable("a/b", "new ✓")
    assert kc.get_mutable("a/b") == "new ✓"
    assert kc.list_mutables("a/") == ["a/b", "a/c/d"]
    assert kc.list_mutables("a%_") == ["a%_/x"]
    assert kc.list_mutables() == ["a%_/x", "a/b", "a/c/d", "ab", "z"]
    assert kc.delete_mutable("a/b") is True
    assert kc.delete_mutable("a/b") is False
    assert kc.get_mutable("a/b") is None


def test_mutable_bad_input_is_refused_before_the_network(hub: Hub) -> None:
    hub.sign_in("A", "a@example.org")
    with pytest.raises(kc.InvalidMutableKeyError):
        kc.set_mutable("../x", "v")
    with pytest.raises(kc.MutableValueError, match="over the limit"):
        kc.set_mutable("big", "x" * (kc._constants.MAX_MUTABLE_VALUE_BYTES + 1))
    with pytest.raises(kc.MutableValueError):
        kc.set_mutable("k", 5)  # type: ignore[arg-type]
    limit_value = "x" * kc._constants.MAX_MUTABLE_VALUE_BYTES
    kc.set_mutable("at-limit", limit_value)
    assert kc.get_mutable("at-limit") == limit_value


def test_projects_create_list_rename_default_and_overrides(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    default = hub.sign_in("A", "a@example.org")
    other = kc.create_project("analysis")
    names = {p["project_id"]: p["name"] for p in kc.list_projects()}
    assert names == {default: "default", other: "analysis"}
    kc.rename_project(other, "analysis v2")
    assert kc.get_project(other)["name"] == "analysis v2"

    assert kc.get_project_id() == default
    kc.store_text("to other", project_id=other)
    kc.set_mutable("m", "in other", project_id=other)
    assert kc.get_mutable("m") is None
    monkeypatch.setenv("KACHERY_CLOUD_PROJECT", other)
    assert kc.get_project_id() == other and kc.get_mutable("m") == "in other"
    monkeypatch.delenv("KACHERY_CLOUD_PROJECT")
    kc.set_default_project(other)
    assert kc.get_project_id() == other and kc.get_client_info()["default_project_id"] == other


def test_members_list_and_remove(hub: Hub) -> None:
    pa = hub.sign_in("A", "a@example.org")
    kc.set_project_member(pa, "B@Example.org", "write")
    assert [(m["email"], m["role"]) for m in kc.list_project_members(pa)] == [
        ("a@example.org", "admin"), ("b@example.org", "write")]
    kc.remove_project_member(pa, "b@example.org")
    assert [m["email"] for m in kc.list_project_members(pa)] == ["a@example.org"]
    with pytest.raises(kc.HubNotFoundError):
        kc.remove_project_member(pa, "b@example.org")
    with pytest.raises(kc.InvalidArgumentError, match="role"):
        kc.set_project_member(pa, "c@example.org", "owner")  # type: ignore[arg-type]
    with pytest.raises(kc.HubRequestError, match="not an email"):
        kc.set_project_member(pa, "nobody", "read")
    with pytest.raises(kc.HubNotFoundError, match="does not exist"):
        kc.get_project("p-no-such-project")


def test_no_hub_configured_is_a_clear_error() -> None:
    with pytest.raises(kc.HubNotConfiguredError, match="KACHERY_HUB_URL") as err:
        kc.store_text("x")
    assert isinstance(err.value, RuntimeError)
    with pytest.raises(kc.HubNotConfiguredError):
        kc.get_mutable("k")
    uri = kc.store_text("x", local=True)
    assert kc.load_text(uri) == "x"  # loading local content needs no hub
    info = kc.get_client_info()
    assert info["hub_url"] is None and info["signed_in"] is False


def test_bad_hub_url_and_unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(kc.InvalidArgumentError, match="hub_url"):
        kc.init(hub_url="ftp://example.org", token="t")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    with pytest.raises(kc.HubUnavailableError) as err:
        kc.init(hub_url=f"http://127.0.0.1:{port}", token="t")
    assert isinstance(err.value, ConnectionError)
    info = kc.get_client_info()
    assert info["hub_url"] == f"http://127.0.0.1:{port}" and info["signed_in"] is False
    assert "cannot reach the hub" in info["hub_error"]


def test_init_without_a_token_says_how_to_sign_in(hub: Hub) -> None:
    hub.use("A")
    with pytest.raises(kc.HubAuthError, match="token") as err:
        kc.init(hub_url=hub.url, http_client=hub.http, wait=False)  # wait=True waits for a browser
    assert err.value.code == "client_not_registered"
    with pytest.raises(kc.HubAuthError, match="invalid_token"):
        kc.init(hub_url=hub.url, token="khub_wrong", http_client=hub.http)


def test_environment_sign_in_and_the_remembered_hub(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.use("A")
    monkeypatch.setitem(_hub._injected, hub.url, hub.http)
    monkeypatch.setenv("KACHERY_HUB_URL", hub.url + "/")
    monkeypatch.setenv("KACHERY_HUB_TOKEN", hub.token("env@example.org"))
    uri = kc.store_text("signed in from the environment")  # signs in on first use
    assert kc.get_client_info()["user"]["email"] == "env@example.org"
    kc.init()
    monkeypatch.delenv("KACHERY_HUB_URL")
    monkeypatch.delenv("KACHERY_HUB_TOKEN")
    _hub._chosen_url.clear()
    _hub._chosen_token.clear()
    assert _hub.configured_url() == hub.url  # from hub.yaml
    hub.use("B")
    assert _hub.configured_url() is None


def test_clock_skew_is_reported_with_its_size(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.sign_in("A", "a@example.org")
    real = _signing.now_ms
    monkeypatch.setattr(_signing, "now_ms", lambda: real() - 7200_000)
    with pytest.raises(kc.ClockSkewError, match="behind") as err:
        kc.set_mutable("k", "v")
    assert abs(err.value.skew_seconds + 7200) < 5
    assert isinstance(err.value, PermissionError)


def test_a_changed_source_file_is_not_stored(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kachery_core import _remote

    hub.sign_in("A", "a@example.org")
    src = tmp_path / "f.bin"
    src.write_bytes(b"before")
    real = _remote._read_chunks

    def changing(path: Path, size: int, label: str):  # type: ignore[no-untyped-def]
        path.write_bytes(b"after!")  # same size, other bytes, written after hashing
        yield from real(path, size, label)

    monkeypatch.setattr(_remote, "_read_chunks", changing)
    with pytest.raises(kc.FileChangedError):
        kc.store_file(str(src))


def test_environment_sign_in_on_a_first_upload_to_a_named_project(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    owner_project = hub.sign_in("A", "a@example.org")
    kc.set_project_member(owner_project, "env@example.org", "write")
    hub.use("B")
    monkeypatch.setitem(_hub._injected, hub.url, hub.http)
    monkeypatch.setenv("KACHERY_HUB_URL", hub.url)
    monkeypatch.setenv("KACHERY_HUB_TOKEN", hub.token("env@example.org"))
    monkeypatch.setenv("KACHERY_CLOUD_PROJECT", owner_project)
    uri = kc.store_text("first request is the upload")
    hub.use("A")
    assert kc.load_text(uri) == "first request is the upload"


def test_a_public_project_does_not_show_its_members_to_outsiders(hub: Hub) -> None:
    pa = hub.sign_in("A", "a@example.org")
    kc.set_project_public(pa, True)
    hub.sign_in("B", "b@example.org")
    assert kc.get_project(pa)["public_read"] is True
    with pytest.raises(kc.HubPermissionError, match="only members"):
        kc.list_project_members(pa)


def test_empty_content_and_unicode_keys_round_trip(hub: Hub) -> None:
    pa = hub.sign_in("A", "a@example.org")
    empty = kc.store_text("")
    kc.set_mutable("données/α β", empty)
    kc.set_project_member(pa, "b@example.org", "read")
    hub.sign_in("B", "b@example.org")
    assert kc.get_mutable("données/α β", project_id=pa) == empty
    assert kc.list_mutables("données/", project_id=pa) == ["données/α β"]
    assert kc.load_file_info(empty)["size"] == 0
    assert kc.load_bytes(empty, 0, 0) == b""
    assert kc.load_text(empty) == ""


def test_a_corrupt_local_copy_is_replaced_from_the_hub(hub: Hub) -> None:
    hub.sign_in("A", "a@example.org")
    uri = kc.store_text("good bytes", cache_locally=True)
    local = store_path(kc.parse_sha1_uri(uri).sha1)
    local.write_text("bad bytes!")
    assert kc.load_text(uri) == "good bytes"
    assert local.read_text() == "good bytes"
    local.write_text("bad again!")
    with pytest.raises(kc.HashMismatchError):
        kc.load_file(uri, local_only=True)

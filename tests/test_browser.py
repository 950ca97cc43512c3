"""The project browser: the hub's file listing (label search, paging, who stored a file) on SQLite
and PostgreSQL, and the widget's kernel side against a real hub process (the front end stood in for
by the requests js/browser.js sends)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import kachery_core as kc
from hub_fixtures import *  # noqa: F403
from hub_fixtures import Hub, make_hub
from hub_process import HubProcess, real_hub  # noqa: F401  (a fixture)
from kachery_core import _hub

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(params=["sqlite", "postgresql"])
def dbhub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    yield from make_hub(request.param, request, tmp_path, monkeypatch)


def _page(project: str, **params: Any) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = _hub.connect("test").json("GET", f"/api/projects/{project}/files", params=params)["files"]
    return files


# ---------------------------------------------------------------- the hub's listing


def test_the_hub_searches_labels_by_substring_in_any_case_with_keyset_paging(dbhub: Hub) -> None:
    project = dbhub.sign_in("A", "ada@example.org")
    labels = [f"Run_{i:02d}.json" for i in range(12)] + ["other.txt", "100%_done.txt", "x_y.txt", "xay.txt"]
    for label in labels:
        kc.store_text(label, label=label)
    assert len(_page(project)) == 16
    found = _page(project, q="RUN_")
    assert sorted(f["label"] for f in found) == [f"Run_{i:02d}.json" for i in range(12)]
    # % and _ are literal characters, not LIKE wildcards
    assert [f["label"] for f in _page(project, q="0%")] == ["100%_done.txt"]
    assert [f["label"] for f in _page(project, q="x_y")] == ["x_y.txt"]
    # pages of a search continue after the last sha1 and together give each match once
    seen: list[str] = []
    after: str | None = None
    while True:
        page = _page(project, q="run", limit=5, **({"after": after} if after else {}))
        seen += [f["sha1"] for f in page]
        if len(page) < 5:
            break
        after = page[-1]["sha1"]
    assert seen == sorted(seen) and sorted(seen) == sorted(f["sha1"] for f in found)
    assert _page(project, q="nothing like this") == []


def test_the_listing_says_who_stored_a_file_to_members_only(dbhub: Hub) -> None:
    project = dbhub.sign_in("A", "ada@example.org")
    kc.store_text("hello", label="hello.txt")
    assert [f["created_by"] for f in _page(project)] == ["ada@example.org"]
    kc.set_project_public(project, True)
    dbhub.ephemeral("E")  # public-read shares the data, not who stored it
    assert [("created_by" in f, f["label"]) for f in _page(project)] == [(False, "hello.txt")]


def test_a_search_too_long_is_refused_by_name(dbhub: Hub) -> None:
    project = dbhub.sign_in("A", "ada@example.org")
    with pytest.raises(kc.HubError, match="q"):
        _page(project, q="x" * 1001)


# ---------------------------------------------------------------- the widget against a real hub process


@pytest.fixture
def ada(real_hub: HubProcess) -> HubProcess:  # noqa: F811
    kc.init(hub_url=real_hub.url, token=real_hub.token("ada@example.org"))
    return real_hub


def _browser(**kwargs: Any) -> Any:
    from kachery_jupyter import ProjectBrowser

    return ProjectBrowser(**kwargs)


def ask(browser: Any, op: str, **args: Any) -> Any:
    answer = browser.answer({"type": "request", "id": 1, "op": op, **args})
    assert answer["type"] == "response" and answer["id"] == 1
    if not answer["ok"]:
        raise AssertionError(answer["error"])
    return answer["result"]


def refused(browser: Any, op: str, **args: Any) -> str:
    answer = browser.answer({"type": "request", "id": 2, "op": op, **args})
    assert answer["ok"] is False, answer
    return str(answer["error"])


def test_projects_files_search_and_pages_come_from_the_hub(ada: HubProcess) -> None:
    for i in range(7):
        kc.store_text(f"trial {i}", label=f"trial_{i}.txt")
    kc.store_json({"a": 1}, label="meta.json")
    b = _browser()
    b.page_size = 3
    [project] = ask(b, "projects")
    assert project["role"] == "admin" and project["public_read"] is False and b.project_id == project["project_id"]
    rows: list[dict[str, Any]] = []
    after = None
    while True:
        page = ask(b, "files", q="", after=after)
        rows += page["files"]
        assert len(page["files"]) <= 3
        if page["next"] is None:
            break
        after = page["next"]
    assert sorted(r["label"] for r in rows) == ["meta.json"] + [f"trial_{i}.txt" for i in range(7)]
    assert {r["created_by"] for r in rows} == {"ada@example.org"}
    assert all(r["uri"] == kc.format_sha1_uri(r["sha1"], label=r["label"]) for r in rows)
    assert [r["label"] for r in ask(b, "files", q="META")["files"]] == ["meta.json"]
    b.close()


def test_an_npy_preview_fetches_a_byte_range_never_the_whole_array(ada: HubProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    array = np.arange(1_000_000, dtype=np.int64).reshape(1000, 1000)  # 8 MB
    uri = kc.store_npy(array, label="big.npy")
    sha1 = kc.parse_sha1_uri(uri).sha1
    size = kc.load_file_info(uri)["size"]
    fetched: list[int] = []
    real = kc.load_bytes

    def counting(u: str, start: int | None, end: int | None) -> bytes:
        data = real(u, start, end)
        fetched.append(len(data))
        return data

    monkeypatch.setattr(kc, "load_bytes", counting)
    monkeypatch.setattr(kc, "load_file", lambda *a, **k: pytest.fail("the whole file was downloaded"))
    p = ask(_browser(), "preview", sha1=sha1, label="big.npy", size=size)
    assert p["kind"] == "npy" and p["shape"] == [1000, 1000] and p["dtype"] == "int64"
    assert p["text"].startswith("[[   0    1    2") and "[1000 1001" in p["text"] and "999999" not in p["text"]
    assert 0 < sum(fetched) <= 100_000 < size // 50, fetched


def test_previews_of_text_json_images_and_binary(ada: HubProcess) -> None:
    b = _browser()

    def preview(uri: str) -> dict[str, Any]:
        info = kc.load_file_info(uri)
        return ask(b, "preview", sha1=kc.parse_sha1_uri(uri).sha1, label="", size=info["size"])  # type: ignore[no-any-return]

    text = preview(kc.store_text("<b>hello</b>", label="x.txt"))
    assert text == {"kind": "text", "text": "<b>hello</b>", "truncated": False, "size": 12}
    long = preview(kc.store_text("é" * 100_000, label="long.txt"))  # a character cut by the range is dropped
    assert long["kind"] == "text" and long["truncated"] and long["text"] == "é" * (64 * 1024 // 2)
    assert preview(kc.store_json({"b": [1, {"c": None}]}, label="x.json")) == {"kind": "json", "value": {"b": [1, {"c": None}]}}
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    path = Path(kc.get_kachery_cloud_dir()) / "x.png"
    path.write_bytes(png)
    image = preview(kc.store_file(str(path), label="x.png"))
    assert image["kind"] == "image" and image["mime"] == "image/png"
    assert image["src"] == "data:image/png;base64," + __import__("base64").b64encode(png).decode()
    path.write_bytes(b"\xff\xd8\xff" + bytes(3 * 1024 * 1024))
    big = preview(kc.store_file(str(path), label="big.jpg"))
    assert big["kind"] == "binary" and "too large" in big["note"]
    path.write_bytes(bytes(range(256)) * 4)
    assert preview(kc.store_file(str(path), label="x.bin"))["kind"] == "binary"


def test_load_into_a_variable_assigns_in_the_namespace_and_refuses_bad_names(ada: HubProcess) -> None:
    uri = kc.store_npy(np.arange(6).reshape(2, 3), label="arr.npy")
    sha1 = kc.parse_sha1_uri(uri).sha1
    ns: dict[str, Any] = {}
    b = _browser(user_ns=ns)
    assert ask(b, "load", sha1=sha1, label="arr.npy", size=1, name="arr") == {"name": "arr", "type": "ndarray"}
    assert np.array_equal(ns["arr"], np.arange(6).reshape(2, 3))
    plain = kc.store_npy(np.ones(3), label="noext")  # known by its first bytes
    ask(b, "load", sha1=kc.parse_sha1_uri(plain).sha1, label="noext", size=kc.load_file_info(plain)["size"], name="ones")
    assert np.array_equal(ns["ones"], np.ones(3))
    for bad in ("2x", "class", "a b", "", "x;import os", None):
        assert "not a valid Python variable name" in refused(b, "load", sha1=sha1, label="arr.npy", size=1, name=bad)
    assert set(ns) == {"arr", "ones"}


def test_mutables_feeds_and_tasks(ada: HubProcess) -> None:
    kc.set_mutable("runs/a/uri", "sha1://x")
    kc.set_mutable("runs/b", "<script>")
    feed = kc.create_feed(label="acq")
    feed.append_message({"n": 1})
    b = _browser()
    assert [m["key"] for m in ask(b, "mutables")["mutables"]] == ["runs/a/uri", "runs/b"]
    assert ask(b, "mutable", key="runs/b")["value"] == "<script>"
    [f] = ask(b, "feeds")["feeds"]
    assert f["uri"] == feed.uri and f["label"] == "acq" and f["message_count"] == 1
    assert ask(b, "tasks") == {"backends": 0, "has_jobs": False}
    ask(b, "open_feed", uri=feed.uri)
    from kachery_jupyter import FeedViewer, TaskPanel

    assert isinstance(b.opened, FeedViewer) and b.opened.feed_uri == feed.uri
    ask(b, "open_tasks")
    assert isinstance(b.opened, TaskPanel)
    ask(b, "close_opened")
    assert b.opened is None
    b.close()


def test_an_admin_adds_changes_and_removes_members_and_a_non_admin_is_refused(
        ada: HubProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = _browser()
    pid = b.project_id
    kc.init(hub_url=ada.url, token=ada.token("bob@example.org"))  # bob exists on the hub once signed in
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "ada2"))
    _hub._me_cache.clear()
    kc.init(hub_url=ada.url, token=ada.token("ada@example.org"))
    members = ask(b, "set_member", project_id=pid, email="bob@example.org", role="read")["members"]
    assert {m["email"]: m["role"] for m in members} == {"ada@example.org": "admin", "bob@example.org": "read"}
    members = ask(b, "set_member", project_id=pid, email="bob@example.org", role="write")["members"]
    assert {m["email"]: m["role"] for m in members}["bob@example.org"] == "write"
    assert "role" in refused(b, "set_member", project_id=pid, email="bob@example.org", role="owner")

    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "bob"))
    _hub._me_cache.clear()
    kc.init(hub_url=ada.url, token=ada.token("bob@example.org"))
    as_bob = _browser(project=pid)
    error = refused(as_bob, "set_member", project_id=pid, email="eve@example.org", role="admin")
    assert error.startswith("HubPermissionError") and "admin" in error
    assert "admin" in refused(as_bob, "remove_member", project_id=pid, email="ada@example.org")

    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "ada2"))
    _hub._me_cache.clear()
    kc.init(hub_url=ada.url, token=ada.token("ada@example.org"))
    members = ask(b, "remove_member", project_id=pid, email="bob@example.org")["members"]
    assert [m["email"] for m in members] == ["ada@example.org"]


def test_the_text_copy_names_the_projects_escaped(ada: HubProcess) -> None:
    kc.rename_project(kc.get_project_id(), "<script>alert(1)</script>")
    data, _meta = _browser()._repr_mimebundle_()
    assert WIDGET_MIME in data
    assert "<script>alert(1)</script> (" in data["text/plain"] and "admin" in data["text/plain"]
    assert "<script>" not in data["text/html"] and "&lt;script&gt;" in data["text/html"]


def test_kc_browse_magic(ada: HubProcess, ip: InteractiveShell) -> None:
    from kachery_jupyter import ProjectBrowser

    pid = kc.get_project_id()
    b = ip.run_line_magic("kc_browse", "")
    assert isinstance(b, ProjectBrowser) and b.project_id == pid
    assert ip.run_line_magic("kc_browse", pid).project_id == pid
    with pytest.raises(UsageError) as e:
        ip.run_line_magic("kc_browse", "no-such-project")
    assert "\n" not in str(e.value) and "no-such-project" in str(e.value)
    uri = kc.store_text("hi", label="hi.txt")
    ask(b, "load", sha1=kc.parse_sha1_uri(uri).sha1, label="hi.txt", size=2, name="greeting")
    assert ip.user_ns["greeting"] == "hi"


@pytest.mark.parametrize(("line", "says"), [("", "hub"), ("a b", "unrecognized arguments: b")])
def test_kc_browse_mistakes_are_one_line(ip: InteractiveShell, line: str, says: str) -> None:
    with pytest.raises(UsageError) as e:
        ip.run_line_magic("kc_browse", line)
    assert says in str(e.value) and "\n" not in str(e.value).strip()

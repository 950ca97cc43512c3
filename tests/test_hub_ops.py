"""Operating a hub: metrics at /metrics, readiness at /api/ready, request IDs, JSON logs, serve --workers."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hub_fixtures import *  # noqa: F403
from hub_fixtures import PG_BIN, S3_KEYS, Hub, _s3_client, make_hub
from hub_process import HubProcess, free_port, running

import kachery_core as kc
from kachery_hub import Settings, create_app
from kachery_hub._metrics import RequestIdFilter
from kachery_hub.errors import ConfigurationError
from starlette.testclient import TestClient


@pytest.fixture(params=["sqlite", "postgresql"])
def dhub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    yield from make_hub(request.param, request, tmp_path, monkeypatch)


def _scrape(hub: Hub) -> str:
    return bytes(hub.http.app.state.metrics.render()).decode()  # type: ignore[attr-defined]


def _samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of the samples of metric ``name`` (labels as written, '' for none)."""
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(re.escape(name) + r"(\{.*\})? (\S+)", line)  # route templates hold braces
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def test_metrics_count_by_route_template_never_the_path_and_reveal_nothing_private(dhub: Hub) -> None:
    project = dhub.sign_in("A", "ada@example.org")
    data = secrets.token_bytes(1000)
    path = dhub.root / "f.bin"
    path.write_bytes(data)
    uri = kc.store_file(str(path), label="secret-label.bin")
    sha1 = uri.split("/")[2].split("?")[0]
    loaded = dhub.http.get(f"/api/files/{sha1}", headers=_signed_by(dhub, "GET", f"/api/files/{sha1}"))
    assert loaded.status_code == 200 and loaded.content == data
    kc.set_mutable("private/key", "value")
    # An outsider sprays distinct paths, methods and ids: none may become a label.
    for i in range(300):
        dhub.http.get(f"/api/projects/p{i:04d}/files/{i:040x}")
        dhub.http.get(f"/no/such/thing/{i}")
        dhub.http.request(f"X{i % 10}", "/api/health")
    text = _scrape(dhub)
    requests = _samples(text, "kachery_hub_http_requests_total")
    assert requests, text
    assert len(requests) < 40, sorted(requests)  # bounded: templates x methods x statuses, not 900 paths
    assert sum(v for k, v in requests.items() if 'GET",route="/api/projects/{project_id}/files/{sha1}"' in k) == 300
    assert requests['{method="GET",route="unmatched",status="404"}'] == 300
    assert sum(v for k, v in requests.items() if 'method="other"' in k) == 300
    assert requests['{method="GET",route="/api/files/{sha1}",status="200"}'] == 1
    for private in (project, "ada@example.org", sha1, "secret-label", "private/key", "p0001", "/no/such"):
        assert private not in text, private
    moved = _samples(text, "kachery_hub_file_bytes_total")
    via = "store" if dhub.kind == "s3" else "hub"
    assert moved[f'{{direction="upload",via="{via}"}}'] == len(data)
    assert moved[f'{{direction="download",via="{via}"}}'] == len(data)
    durations = _samples(text, "kachery_hub_http_request_duration_seconds_count")
    assert durations['{method="GET",route="/api/files/{sha1}"}'] == 1


def _signed_by(hub: Hub, method: str, path: str) -> dict[str, str]:
    """Headers that sign a request as the current client (its key from its kachery directory)."""
    from hub_fixtures import signed_headers

    from kachery_core import _identity

    keys = _identity.load_client_keys()
    assert keys is not None
    return signed_headers(keys, method, path)


def test_range_downloads_count_the_bytes_served(dhub: Hub) -> None:
    dhub.sign_in("A", "ada@example.org")
    path = dhub.root / "f.bin"
    path.write_bytes(b"x" * 5000)
    sha1 = kc.store_file(str(path)).split("/")[2].split("?")[0]
    headers = {**_signed_by(dhub, "GET", f"/api/files/{sha1}"), "Range": "bytes=100-199"}
    r = dhub.http.get(f"/api/files/{sha1}", headers=headers)
    assert r.status_code == 206 and len(r.content) == 100
    assert _samples(_scrape(dhub), "kachery_hub_file_bytes_total")['{direction="download",via="hub"}'] == 100


def test_queued_and_running_jobs_are_counted_at_each_scrape(dhub: Hub) -> None:
    dhub.sign_in("A", "ada@example.org")
    started, release = threading.Event(), threading.Event()

    def slow(i: int) -> int:
        started.set()
        release.wait(30)
        return i

    assert _samples(_scrape(dhub), "kachery_hub_task_jobs") == {'{status="pending"}': 0, '{status="started"}': 0}
    with kc.TaskBackend(num_workers=1) as backend:
        backend.register_task_handler(task_type="calculation", task_name="slow", task_function=slow)
        handles = [kc.submit_task(task_type="calculation", task_name="slow", task_input={"i": i}) for i in range(3)]
        assert started.wait(20)
        # One running and one claimed ahead (a backend takes as many again as it has workers); one queued.
        # The claim ahead may come a moment after the first job started.
        expected = {'{status="pending"}': 1, '{status="started"}': 2}
        deadline = time.monotonic() + 20
        while (counts := _samples(_scrape(dhub), "kachery_hub_task_jobs")) != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert counts == expected
        release.set()
        assert sorted(h.result(20) for h in handles) == [0, 1, 2]
    assert _samples(_scrape(dhub), "kachery_hub_task_jobs") == {'{status="pending"}': 0, '{status="started"}': 0}


@pytest.mark.parametrize(("mode", "client", "answered"), [
    ("local", ("127.0.0.1", 5000), True), ("local", ("::1", 5000), True), ("local", ("203.0.113.7", 5000), False),
    ("local", ("testclient", 5000), False), ("public", ("203.0.113.7", 5000), True), ("off", ("127.0.0.1", 5000), False),
])
def test_who_may_read_metrics(tmp_path: Path, mode: str, client: tuple[str, int], answered: bool) -> None:
    app = create_app(Settings(data_dir=tmp_path / "hub", metrics=mode))
    with TestClient(app, client=client) as http:
        r = http.get("/metrics")
        if answered:
            assert r.status_code == 200 and "kachery_hub_http_requests_total" in r.text
        else:  # the same answer as any unknown endpoint: nothing tells an outsider metrics exist
            assert r.status_code == 404 and r.json() == {"error": {"code": "not_found",
                                                                   "message": "no such endpoint: GET /metrics"}}
        if mode == "local" and answered:  # forwarded by a proxy on this machine: the client is elsewhere
            for header in ("X-Forwarded-For", "Forwarded"):
                assert http.get("/metrics", headers={header: "for=198.51.100.9"}).status_code == 404


def test_settings_refuse_unknown_metrics_and_log_formats(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="KACHERY_HUB_METRICS"):
        Settings.from_environ({"KACHERY_HUB_DATA": str(tmp_path), "KACHERY_HUB_METRICS": "everyone"})
    with pytest.raises(ConfigurationError, match="KACHERY_HUB_LOG_FORMAT"):
        Settings.from_environ({"KACHERY_HUB_DATA": str(tmp_path), "KACHERY_HUB_LOG_FORMAT": "xml"})
    s = Settings.from_environ({"KACHERY_HUB_DATA": str(tmp_path), "KACHERY_HUB_METRICS": "Public",
                               "KACHERY_HUB_LOG_FORMAT": "json"})
    assert (s.metrics, s.log_format) == ("public", "json")


# --- request IDs ---

def test_every_answer_carries_a_request_id_and_a_client_cannot_choose_it(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "hub"))
    with TestClient(app, client=("203.0.113.7", 5000)) as http:
        ids = {http.get(p).headers["x-request-id"] for p in ("/api/health", "/api/health", "/nope", "/api/me")}
        assert len(ids) == 4 and all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
        assert http.get("/api/health", headers={"X-Request-ID": "chosen-by-anyone"}).headers["x-request-id"] != \
            "chosen-by-anyone"


def test_a_trusted_proxy_passes_its_request_id_through_if_well_formed(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "hub", trusted_proxies=("10.0.0.0/8",)))
    with TestClient(app, client=("10.1.2.3", 5000)) as proxy, TestClient(app, client=("203.0.113.7", 5000)) as other:
        assert proxy.get("/api/health", headers={"X-Request-ID": "lb-1234.abc_Z"}).headers["x-request-id"] == \
            "lb-1234.abc_Z"
        for bad in (b"x" * 65, b"a b", b"a\xe9", b"semi;colon", b""):
            assert proxy.get("/api/health", headers={"X-Request-ID": bad}).headers["x-request-id"] != bad.decode("latin-1")
        assert other.get("/api/health", headers={"X-Request-ID": "lb-1234"}).headers["x-request-id"] != "lb-1234"


def test_log_records_made_while_handling_a_request_carry_its_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(Settings(data_dir=tmp_path / "hub"))
    caplog.handler.addFilter(RequestIdFilter())
    with TestClient(app) as http:
        shutil.rmtree(app.state.hub.store.root)  # the store is gone: the readiness check logs why
        with caplog.at_level("WARNING", logger="kachery_hub"):
            r = http.get("/api/ready")
    assert r.status_code == 503
    [record] = [rec for rec in caplog.records if "readiness" in rec.getMessage()]
    assert record.request_id == r.headers["x-request-id"]  # type: ignore[attr-defined]


# --- readiness ---

def test_ready_when_database_and_store_answer(hub: Hub) -> None:
    r = hub.http.get("/api/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready", "database": "ok", "store": "ok"}
    assert hub.http.get("/api/health").json()["status"] == "ok"


@contextmanager
def _own_postgres() -> Iterator[tuple[str, Path]]:
    """A PostgreSQL cluster of this test's own (it is stopped and started again): its URL and data folder."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}")
    root = Path(tempfile.mkdtemp(prefix="kachery-pg-ops-"))
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    port = free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                    "--no-sync", "--locale=C", "-E", "UTF8"], check=True, capture_output=True, timeout=120)

    def pg_ctl(*args: str) -> None:
        subprocess.run([*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", *args],
                       check=True, capture_output=True, timeout=120)

    start = ("-l", str(root / "log"), "-o", f"-p {port} -c listen_addresses=127.0.0.1 -k {data} -F", "start")
    pg_ctl(*start)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", data
    finally:
        subprocess.run([*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def test_ready_says_the_database_failed_when_postgresql_is_stopped(tmp_path: Path) -> None:
    with _own_postgres() as (url, data):
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        app = create_app(Settings(data_dir=tmp_path / "hub", database_url=url))
        with TestClient(app) as http:
            assert http.get("/api/ready").status_code == 200
            subprocess.run([*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-m", "immediate", "stop"],
                           check=True, capture_output=True, timeout=120)
            r = http.get("/api/ready")
            assert r.status_code == 503 and r.headers["retry-after"]
            body = r.json()
            assert body["database"] in ("failed", "timeout") and body["store"] == "ok" and body["status"] == "not_ready"
            assert body["error"]["code"] == "not_ready" and "database" in body["error"]["message"]
            assert "127.0.0.1" not in r.text and "postgres" not in r.text  # no internals to whoever asks
            assert http.get("/api/health").status_code == 200  # alive: only not ready


def test_ready_says_the_store_failed_when_its_bucket_is_gone(tmp_path: Path, s3_server: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in S3_KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bucket = "hub-" + secrets.token_hex(6)
    s3 = _s3_client(s3_server)
    s3.create_bucket(Bucket=bucket)
    app = create_app(Settings(data_dir=tmp_path / "hub", storage_url=f"s3://{bucket}/blobs?endpoint_url={s3_server}"))
    with TestClient(app) as http:
        assert http.get("/api/ready").json()["store"] == "ok"
        s3.delete_bucket(Bucket=bucket)
        r = http.get("/api/ready")
        assert r.status_code == 503 and r.json()["store"] in ("failed", "timeout") and r.json()["database"] == "ok"
        assert bucket not in r.text


def test_ready_says_the_store_failed_when_its_folder_is_gone(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "hub"))
    with TestClient(app) as http:
        shutil.rmtree(app.state.hub.store.root)
        r = http.get("/api/ready")
        assert r.status_code == 503 and r.json()["store"] == "failed" and r.json()["database"] == "ok"
        assert str(tmp_path) not in r.text


# --- a real serve: JSON logs, followers, workers ---

@pytest.mark.slow
def test_serve_json_logs_one_object_a_line_with_request_ids_and_no_tokens(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub-data", free_port(), "--log-level", "info", "--log-format", "json")
    with running(hub):
        r = httpx2.get(f"{hub.url}/api/projects/pr0ject/files", headers={"X-Request-ID": "not-trusted"})
        rid = r.headers["x-request-id"]
        assert r.status_code == 404 and rid != "not-trusted"
        httpx2.get(f"{hub.url}/", params={"token": hub.admin_token})
        httpx2.get(f"{hub.url}/sign-in/a-secret-sign-in-id")
        assert httpx2.get(f"{hub.url}/metrics").status_code == 200
    records = [json.loads(line) for line in hub.log if line.startswith("{")]
    lines = [line for line in hub.log if line.startswith("{")]
    assert len(records) == len(lines) and records
    access = [r for r in records if r["logger"] == "kachery_hub.access"]
    [mine] = [r for r in access if r["request_id"] == rid]
    assert mine["method"] == "GET" and mine["route"] == "/api/projects/{project_id}/files" and mine["status"] == 404
    assert isinstance(mine["duration_ms"], float) and mine["level"] == "info" and mine["time"].endswith("Z")
    assert {"time", "level", "logger", "message", "request_id"} <= set(records[0])
    text = "".join(lines)
    assert hub.admin_token not in text and "a-secret-sign-in-id" not in text and "pr0ject" not in text
    assert not [line for line in hub.log if "HTTP/1.1" in line]  # uvicorn's own access lines are off in JSON


@pytest.mark.slow
def test_live_followers_are_the_event_streams_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = HubProcess(tmp_path / "hub", free_port())
    with running(hub):
        monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "alice"))
        project = kc.init(hub_url=hub.url, token=hub.token("alice@example.org"))["default_project_id"]
        kc.set_project_public(project, True)
        feed = kc.create_feed()

        def followers() -> float:
            return _samples(httpx2.get(f"{hub.url}/metrics").text, "kachery_hub_live_followers")[""]

        assert followers() == 0
        with httpx2.Client(timeout=30) as http, \
                http.stream("GET", f"{hub.url}/api/feeds/{feed.feed_id}/events") as a, \
                http.stream("GET", f"{hub.url}/api/feeds/{feed.feed_id}/events") as b:
            assert a.status_code == b.status_code == 200
            assert followers() == 2
        assert _eventually(lambda: followers() == 0)


def _eventually(check: Any, tries: int = 100) -> bool:
    for _ in range(tries):
        if check():
            return True
        time.sleep(0.1)
    return False


def test_serve_refuses_workers_on_the_embedded_sqlite_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kachery_hub._cli import main

    assert main(["serve", "--data", str(tmp_path / "hub"), "--workers", "2", "--port", "0"]) == 1
    assert "--workers needs a PostgreSQL database" in capsys.readouterr().err
    assert not (tmp_path / "hub").exists()  # refused before anything was made


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


@pytest.mark.slow
def test_serve_with_two_workers_on_postgresql(tmp_path: Path, postgres_server: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from hub_fixtures import _fresh_postgres_database

    database = _fresh_postgres_database(postgres_server)
    hub = HubProcess(tmp_path / "hub", free_port(), "--workers", "2", "--database", database)
    with running(hub):
        hub.extra_args = ["--database", database]  # for `token create`
        assert hub.proc is not None
        workers = _eventually(lambda: len(_children(hub.proc.pid)) >= 2)  # type: ignore[union-attr]
        assert workers, _children(hub.proc.pid)
        pids = [p for p in _children(hub.proc.pid)]
        monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "alice"))
        kc.init(hub_url=hub.url, token=hub.token("alice@example.org"))
        uri = kc.store_text("shared through two workers")
        with httpx2.Client(timeout=30) as http:
            before = _samples(http.get(f"{hub.url}/metrics").text, "kachery_hub_http_requests_total")
            for _ in range(100):
                # A fresh connection each: the kernel spreads them over the workers' accept calls.
                assert httpx2.get(f"{hub.url}/api/ready").status_code == 200
            after = _samples(http.get(f"{hub.url}/metrics").text, "kachery_hub_http_requests_total")
        key = '{method="GET",route="/api/ready",status="200"}'
        assert after[key] - before.get(key, 0) == 100  # summed over both workers, whichever answered
        assert kc.load_text(uri) == "shared through two workers"
        follower = kc.load_feed(kc.create_feed().uri)
        got: list[Any] = []
        thread = threading.Thread(target=lambda: got.extend(follower.get_next_messages(timeout_sec=20)))
        thread.start()
        time.sleep(0.5)
        kc.load_feed(follower.uri).append_message({"n": 1})
        thread.join(30)
        assert got == [{"n": 1}]
    assert not [p for p in pids if Path(f"/proc/{p}").exists() and "zombie" not in _state(p)]  # all stopped


def _state(pid: int) -> str:
    try:
        return "zombie" if (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) == "Z" else "alive"
    except OSError:
        return "gone"



def test_a_served_hub_keeps_what_start_up_made_out_of_full_collections(tmp_path: Path) -> None:
    """``serve`` freezes the objects start-up made (gc.freeze): full collections walk only what came after."""
    import gc

    from kachery_hub._serve import GC_YOUNG_THRESHOLD, HubConfig

    gc.unfreeze()
    threshold = gc.get_threshold()
    try:
        app = HubConfig(Settings(data_dir=tmp_path / "hub")).load_app()
        assert gc.get_freeze_count() > 0
        # ... and collects young objects less often, so short-lived ones are not promoted.
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:]) and GC_YOUNG_THRESHOLD > threshold[0]
        with TestClient(app) as http:
            assert http.get("/api/health").status_code == 200
    finally:
        gc.unfreeze()  # this test process goes on collecting as before
        gc.set_threshold(*threshold)

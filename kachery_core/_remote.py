"""Files and mutables on the hub, seen from the client.

Storing uploads the bytes to the current project (:func:`get_project_id`)
unless that project already holds them; the hub verifies the sha1 before the
file becomes visible. A big file on a hub with an S3 store goes as a multipart
upload: part by part to presigned URLs, each part tried again on network errors,
and a later call after an interruption sends only the parts the store lacks.
Loading a URI that is not in the local store downloads
it from any project this client may read, verifies its hash while streaming,
and keeps it in the local store, so the next load is local. Transfers of big
content show a progress bar (:mod:`._progress`).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import _fs, _hashing, _hub, _mutables, _progress, _serializers, _store
from ._projects import get_project_id
from ._uris import Sha1URI, format_sha1_uri, parse_sha1_uri
from .errors import (
    ByteRangeError,
    FileChangedError,
    HashMismatchError,
    HubAuthError,
    HubNotFoundError,
    HubRequestError,
    HubUnavailableError,
    InvalidArgumentError,
    KacheryFileNotFoundError,
)

_CHUNK = 1024 * 1024
#: A part of a multipart upload is tried this many times in all (transport errors, 5xx), waiting
#: _PART_BACKOFF seconds after the first failure, twice as long after each next one.
_PART_ATTEMPTS = 5
_PART_BACKOFF = 0.5
#: The hub reads a multipart upload back to verify it: its completion may take this long a byte (50 MiB/s).
_VERIFY_SECONDS_PER_BYTE = 1 / (50 * 1024 * 1024)
#: Bigger files are announced first (is it there already? may we write?); smaller ones are sent at once.
_ASK_FIRST_BYTES = 1024 * 1024


def hub_configured() -> bool:
    return _hub.configured_url() is not None


# ---------------------------------------------------------------- storing


def _read_chunks(path: Path, size: int, label: str) -> Iterator[bytes]:
    done = 0
    with _progress.Progress(label, size) as progress, open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk
            done += len(chunk)
            progress(done)


def _slices(data: bytes, label: str) -> Iterator[bytes]:
    view = memoryview(data)
    with _progress.Progress(label, len(data)) as progress:
        for start in range(0, len(view), _CHUNK):
            yield bytes(view[start:start + _CHUNK])
            progress(min(start + _CHUNK, len(view)))


def _body(content: bytes | Path, size: int, label: str | None) -> bytes | Iterator[bytes]:
    """The request body; shown with a progress bar (named by the label), it goes in chunks."""
    name = f"uploading {label or (content.name if isinstance(content, Path) else 'content')}"
    if isinstance(content, Path):
        return _read_chunks(content, size, name)
    return _slices(content, name) if _progress.shows(size) else content


def _upload_direct(client: _hub.HubClient, pid: str, sha1: str, size: int, content: bytes | Path,
                   label: str | None, target: dict[str, Any]) -> None:
    """Send the bytes to the presigned URL the hub handed out, then have the hub record them."""
    import httpx2

    try:
        response = _hub.plain_client().request(
            target["method"], target["url"], content=_body(content, size, label),
            headers={**target["headers"], "Content-Length": str(size)},
        )
    except httpx2.TransportError as e:
        raise HubUnavailableError(client.url, f"cannot reach the hub's object store: {e}") from None
    if response.status_code >= 300:
        if "BadDigest" in response.text and isinstance(content, Path):
            raise FileChangedError(str(content))
        raise HubRequestError(client.url, f"the hub's object store refused the upload: HTTP {response.status_code} "
                                          f"{response.text[:200]!r}")
    client.json("POST", f"/api/projects/{pid}/files/{sha1}/complete",
                json={"label": label, "upload_id": target["upload_id"]})


def _part_chunks(content: bytes | Path, offset: int, length: int) -> Iterator[bytes]:
    """Bytes ``[offset, offset + length)`` of the content, a chunk at a time (a part may be big)."""
    if not isinstance(content, Path):
        view = memoryview(content)
        for start in range(offset, offset + length, _CHUNK):
            yield bytes(view[start:min(start + _CHUNK, offset + length)])
        return
    with open(content, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise FileChangedError(str(content))  # shorter than when it was hashed
            left -= len(chunk)
            yield chunk


def _send_part(client: _hub.HubClient, url: str, content: bytes | Path, offset: int, length: int) -> bool:
    """PUT one part to its presigned URL; False when the store refuses the URL (expired: ask for new ones).

    Transport errors and 5xx answers are tried again, :data:`_PART_ATTEMPTS` times in all, with backoff.
    """
    import httpx2

    delay = _PART_BACKOFF
    for attempt in range(1, _PART_ATTEMPTS + 1):
        try:
            response = _hub.plain_client().put(url, content=_part_chunks(content, offset, length),
                                               headers={"Content-Length": str(length)})
        except httpx2.TransportError as e:
            failure = f"{type(e).__name__}: {e}"
        else:
            if response.status_code < 300:
                return True
            if response.status_code == 403:
                return False
            if response.status_code < 500:
                raise HubRequestError(client.url, f"the hub's object store refused a part: HTTP "
                                                  f"{response.status_code} {response.text[:200]!r}")
            failure = f"HTTP {response.status_code}"
        if attempt == _PART_ATTEMPTS:
            raise HubUnavailableError(client.url, f"the hub's object store took no part after {attempt} "
                                                  f"attempts: {failure}")
        time.sleep(delay)
        delay *= 2
    return False  # (not reached)


def _upload_multipart(client: _hub.HubClient, pid: str, sha1: str, size: int, content: bytes | Path,
                      label: str | None, state: dict[str, Any]) -> None:
    """Send the parts the hub's multipart upload still lacks, a batch of URLs at a time, then complete.

    Asking the hub again gives the same upload with the parts it holds: a call after an
    interruption sends only the rest. One part's chunk in memory at a time.
    """
    name = label or (content.name if isinstance(content, Path) else "content")
    refused = 0
    with _progress.Progress(f"uploading {name}", size) as progress:
        while True:
            part = int(state["part_size"])
            done = sum(min(part, size - (n - 1) * part) for n in state["done"])
            progress(done)
            urls = state["urls"]
            if not urls:
                break
            for number, url in sorted(urls.items(), key=lambda item: int(item[0])):
                offset = (int(number) - 1) * part
                length = min(part, size - offset)
                if not _send_part(client, url, content, offset, length):
                    refused += 1
                    if refused > 2:
                        raise HubRequestError(client.url, "the hub's object store refuses its part URLs (HTTP 403)")
                    break  # URLs expired: ask for new ones
                done += length
                progress(done)
            answer = client.json("POST", f"/api/projects/{pid}/files/{sha1}/upload", json={"size": size})
            if answer["present"]:
                return  # completed meanwhile by another upload of the same bytes
            if not answer["upload"].get("multipart"):
                # A hub (replica) set with a higher threshold: one upload as it says.
                progress.close()
                _upload_direct(client, pid, sha1, size, content, label, answer["upload"])
                return
            state = answer["upload"]["multipart"]
    import httpx2

    seconds = max(600.0, size * _VERIFY_SECONDS_PER_BYTE)
    try:
        client.json("POST", f"/api/projects/{pid}/files/{sha1}/complete",
                    json={"label": label, "upload_id": state["upload_id"], "size": size},
                    timeout=httpx2.Timeout(connect=10.0, read=seconds, write=600.0, pool=60.0))
    except HubRequestError as e:
        if e.code == "hash_mismatch" and isinstance(content, Path):
            raise FileChangedError(str(content)) from None
        raise


def _upload(sha1: str, size: int, content: bytes | Path, label: str | None, project_id: str | None) -> None:
    client = _hub.connect_signed("storing a file on the hub")
    pid = quote(get_project_id(project_id), safe="")
    if client.direct_transfers() or size > _ASK_FIRST_BYTES:
        # Ask first: the project may have the bytes already, and a refusal (no write access)
        # comes before any byte is sent. The answer names where the bytes go.
        answer = client.json("POST", f"/api/projects/{pid}/files/{sha1}/upload", json={"size": size})
        if answer["present"]:
            return
        if answer["upload"].get("multipart"):
            _upload_multipart(client, pid, sha1, size, content, label, answer["upload"]["multipart"])
            return
        if not answer["upload"]["via_hub"]:
            _upload_direct(client, pid, sha1, size, content, label, answer["upload"])
            return

    def put() -> None:
        client.send(
            "PUT", f"/api/projects/{pid}/files/{sha1}", params={"label": label} if label is not None else None,
            content=_body(content, size, label), body_sha1=sha1, headers={"Content-Length": str(size)},
        ).close()

    try:
        try:
            put()
        except HubAuthError as e:
            if e.code != "client_not_registered" or not _hub.configured_token(client.url):
                raise
            client.register()  # first use of a token from the environment
            put()
    except HubRequestError as e:
        if e.code == "hash_mismatch" and isinstance(content, Path):
            raise FileChangedError(str(content)) from None
        raise


def store_file(
    filename: str | os.PathLike[str], *, label: str | None = None, cache_locally: bool = False,
    local: bool = False, project_id: str | None = None,
) -> str:
    """Store a file on the hub (in ``project_id`` or the current project); returns its URI.

    ``local=True`` only stores it in the local store; ``cache_locally=True``
    does both, so later loads on this computer need no download.
    """
    if local:
        return _store.store_file_local(filename, label=label)
    name = os.fspath(filename)
    if name.startswith("sha1://"):
        name = _store.load_file(name)
    path = Path(name).absolute()
    if not path.exists():
        raise KacheryFileNotFoundError(str(path), "no such file to store")
    if not path.is_file():
        raise KacheryFileNotFoundError(str(path), "not a regular file")
    if cache_locally:
        sha1 = parse_sha1_uri(_store.store_file_local(path)).sha1
        source = _store.store_path(sha1)
    else:
        sha1, source = _hashing.sha1_of_file(path), path
    _upload(sha1, source.stat().st_size, source, label, project_id)
    return format_sha1_uri(sha1, label=label)


def _store_bytes(data: bytes, label: str | None, cache_locally: bool, local: bool, project_id: str | None) -> str:
    if local or cache_locally:
        uri = _store.store_bytes_local(data, label=label)
        if local:
            return uri
        sha1 = parse_sha1_uri(uri).sha1  # hashed once: big content takes a while
    else:
        sha1 = _hashing.sha1_of_bytes(data, label or "content")
    _upload(sha1, len(data), data, label, project_id)
    return format_sha1_uri(sha1, label=label)


def store_text(text: str, *, label: str | None = None, cache_locally: bool = False, local: bool = False,
               project_id: str | None = None) -> str:
    return _store_bytes(_serializers.text_to_bytes(text), label, cache_locally, local, project_id)


def store_json(obj: Any, *, label: str | None = None, cache_locally: bool = False, local: bool = False,
               project_id: str | None = None) -> str:
    return _store_bytes(_serializers.json_to_bytes(obj), label, cache_locally, local, project_id)


def store_npy(array: Any, *, label: str | None = None, cache_locally: bool = False, local: bool = False,
              project_id: str | None = None) -> str:
    return _store_bytes(_serializers.npy_to_bytes(array), label, cache_locally, local, project_id)


def store_pkl(obj: Any, *, label: str | None = None, cache_locally: bool = False, local: bool = False,
              project_id: str | None = None) -> str:
    return _store_bytes(_serializers.pkl_to_bytes(obj), label, cache_locally, local, project_id)


# ---------------------------------------------------------------- loading


def _not_found(uri: str, client: _hub.HubClient, e: HubNotFoundError) -> KacheryFileNotFoundError:
    return KacheryFileNotFoundError(uri, f"not in the local store, and the hub {client.url} says: {e.message}")


#: The reader hands the writer thread this much at a time: one hand-over per 64 KiB socket read
#: costs more in thread switches than the hashing and writing it overlaps.
_HANDOVER_BYTES = 4 * 1024 * 1024


def _receive(response: Any, tmp: Path, label: str) -> str:
    """Write the body to ``tmp`` (created and owned by the caller) and return its sha1; hashing
    and writing run in a second thread while this one reads the socket (both release the GIL),
    in constant memory."""
    total = int(response.headers.get("content-length", "0") or 0)
    batches: queue.Queue[bytes | None] = queue.Queue(maxsize=2)
    h = hashlib.sha1()
    failure: list[BaseException] = []

    def sink() -> None:
        with open(tmp, "wb") as f:
            while (batch := batches.get()) is not None:
                if failure:
                    continue  # keep draining so the reader never blocks
                try:
                    h.update(batch)
                    f.write(batch)
                except BaseException as e:
                    failure.append(e)

    writer = threading.Thread(target=sink, daemon=True)
    writer.start()
    with _progress.Progress(label, total) as progress:
        done = 0
        pending: list[bytes] = []
        pending_bytes = 0
        try:
            for chunk in response.iter_raw():
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= _HANDOVER_BYTES:
                    batches.put(b"".join(pending))
                    done += pending_bytes
                    pending, pending_bytes = [], 0
                    progress(done)
            if pending:
                batches.put(b"".join(pending))
                progress(done + pending_bytes)
        finally:
            batches.put(None)
            writer.join()
    if failure:
        raise failure[0]
    return h.hexdigest()


def _follow(client: _hub.HubClient, response: Any, headers: dict[str, str], *, stream: bool) -> Any:
    """The object store's answer when the hub redirects there (a presigned URL), else ``response``."""
    if response.status_code not in (301, 302, 303, 307, 308):
        return response
    import httpx2

    location = response.headers["location"]
    response.close()
    plain = _hub.plain_client()
    try:
        answer = plain.send(plain.build_request("GET", location, headers=headers), stream=stream)
    except httpx2.TransportError as e:
        raise HubUnavailableError(client.url, f"cannot reach the hub's object store: {e}") from None
    if answer.status_code >= 300:
        answer.close()
        raise HubRequestError(client.url, f"the hub's object store answered HTTP {answer.status_code}")
    return answer


def download(parsed: Sha1URI, uri: str) -> Path:
    """Fetch the content of ``uri`` from the hub into the local store (verified); returns its path."""
    client = _hub.connect("loading a file from the hub")
    sha1 = parsed.sha1
    try:
        # identity: the bytes on the wire are the bytes hashed (iter_raw does not decompress).
        headers = {"Accept-Encoding": "identity"}
        response = client.send("GET", f"/api/files/{sha1}", stream=True, headers=headers)
    except HubNotFoundError as e:
        raise _not_found(uri, client, e) from None
    response = _follow(client, response, headers, stream=True)
    final = _store.store_path(sha1)
    try:
        # Owned (locked) while we write it, so a killed download's file is removed at once by the next process.
        tmp, owner = _fs.open_owned_tmp(_store._tmp_dir(), ".download.tmp")
    except BaseException:
        response.close()
        raise
    try:
        actual = _receive(response, tmp, f"downloading {parsed.label or sha1}")
        if actual != sha1:
            raise HashMismatchError(uri, sha1, actual, f"download from {client.url}")
        _fs.makedirs(final.parent)
        written = os.stat(tmp)
        _fs.finish_file(tmp, final)
        st = os.stat(final)
        if st.st_ino == written.st_ino and st.st_size == written.st_size:
            _hashing.record_sha1(str(final), st, sha1)  # hashed as it arrived: loading it now costs a stat
    finally:
        response.close()
        tmp.unlink(missing_ok=True)
        owner.close()
    return final


def file_info(uri: str) -> dict[str, Any]:
    """What the hub knows of ``uri`` (for a file not in the local store)."""
    parsed = parse_sha1_uri(uri)
    client = _hub.connect("asking the hub about a file")
    try:
        info = client.json("GET", f"/api/files/{parsed.sha1}/info")
    except HubNotFoundError as e:
        raise _not_found(uri, client, e) from None
    return {
        "uri": uri, "sha1": parsed.sha1, "label": parsed.label if parsed.label is not None else info["label"],
        "size": int(info["size"]), "local_path": None, "hub_url": client.url, "project_id": info["project_id"],
    }


def load_bytes(uri: str, start: int | None, end: int | None) -> bytes:
    """Bytes ``[start, end)`` of a file on the hub, fetched with an HTTP range request."""
    size = file_info(uri)["size"]
    lo = 0 if start is None else start
    hi = size if end is None else end
    if not (0 <= lo <= hi <= size):
        raise ByteRangeError(uri, start, end, size)
    if lo == hi:
        return b""
    client = _hub.connect("loading bytes from the hub")
    sha1 = parse_sha1_uri(uri).sha1
    headers = {"Range": f"bytes={lo}-{hi - 1}"}
    response = _follow(client, client.send("GET", f"/api/files/{sha1}", headers=headers, stream=True), headers,
                       stream=True)
    want = hi - lo
    # Read no more than the range (one byte more tells a server that sends too much), whatever is sent.
    skip = lo if response.status_code == 200 else 0  # a server that ignores ranges sends everything
    chunks: list[bytes] = []
    got = 0
    try:
        for chunk in response.iter_bytes():
            if skip:
                dropped = min(skip, len(chunk))
                chunk, skip = chunk[dropped:], skip - dropped
            chunks.append(chunk)
            got += len(chunk)
            if got > want or (response.status_code == 200 and got >= want):
                break
    finally:
        response.close()
    data = b"".join(chunks)
    if response.status_code == 200:
        data = data[:want]
    if len(data) != want:
        raise HubRequestError(client.url, f"asked for {want} bytes of {uri}, received {'more' if got > want else got}")
    return data


# ---------------------------------------------------------------- mutables


def _mutable_path(key: str, project_id: str | None) -> str:
    _mutables.validate_key(key)
    return f"/api/projects/{quote(get_project_id(project_id), safe='')}/mutables/{quote(key, safe='/')}"


def set_mutable(key: str, value: str, *, project_id: str | None = None) -> None:
    """Set mutable ``key`` of the project to ``value`` (text, at most 1 MiB of UTF-8)."""
    _mutables.validate_value(key, value)
    _hub.connect_signed("setting a mutable").json("PUT", _mutable_path(key, project_id), json={"value": value})


def get_mutable(key: str, default_value: str | None = None, *, project_id: str | None = None) -> str | None:
    """The value of mutable ``key`` in the project, or ``default_value`` when it is not set."""
    path = _mutable_path(key, project_id)
    try:
        value: str = _hub.connect("reading a mutable").json("GET", path)["value"]
    except HubNotFoundError as e:
        if e.code == "mutable_not_found":
            return default_value
        raise
    return value


def delete_mutable(key: str, *, project_id: str | None = None) -> bool:
    """Delete mutable ``key`` from the project; returns whether it was set."""
    deleted: bool = _hub.connect_signed("deleting a mutable").json("DELETE", _mutable_path(key, project_id))["deleted"]
    return deleted


def list_mutables(prefix: str = "", *, project_id: str | None = None) -> list[str]:
    """Keys of the project's mutables that start with ``prefix``, sorted."""
    if not isinstance(prefix, str):
        raise InvalidArgumentError("prefix", prefix, "expected a string")
    pid = quote(get_project_id(project_id), safe="")
    client = _hub.connect("listing mutables")
    keys: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"prefix": prefix, "limit": 1000}
        if after is not None:
            params["after"] = after
        page = client.json("GET", f"/api/projects/{pid}/mutables", params=params)["mutables"]
        keys.extend(m["key"] for m in page)
        if len(page) < 1000:
            return keys
        after = page[-1]["key"]

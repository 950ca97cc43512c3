"""File bytes in an S3-compatible object store; clients transfer them directly.

Storage URL: ``s3://<bucket>[/<prefix>]?endpoint_url=http://host:port&region=us-east-1``
(``endpoint_url`` is omitted for AWS itself). Credentials come from the usual
AWS sources (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, profiles...).
Objects::

    <prefix>uploads/<sha1>/<upload id>   one client's upload; once proved, its project's copy
    <prefix>sha1/ab/cd/ef/<sha1>         blobs recorded before upload ids existed (read only)

Every upload goes to a key of its own, named by a random upload id that only
the uploading client is told, presigned together with the header
``x-amz-checksum-sha1``: the store itself refuses bytes whose sha1 is not the
one they are sent under, and the client cannot drop or change that header.
Completing an upload asks the store for that object's recorded sha1
(``staged_size``), so a client proves it holds the whole content by having
sent it; an object the hub already holds under another key is no proof for
anyone. Each project reads the copy it uploaded (``files.storage_key``): a
presigned download URL names its object, so a shared copy would tell a client
that another project had uploaded the same bytes first, and when. Single PUTs are limited by the store (5 GiB on AWS).

Big files (over ``multipart_threshold`` bytes) go as a multipart upload on the
same staging key: the hub creates it (``CreateMultipartUpload``, marked with the
metadata ``kachery-multipart``) and hands out presigned ``UploadPart`` URLs, a
batch at a time; the store lists the parts that arrived (``ListParts``), so an
interrupted upload resumes with the parts still missing. S3 records no sha1 of
a multipart object (per-part checksums combine into a checksum of checksums),
so completing one (``CompleteMultipartUpload`` with the ETags the store lists,
never the client's) is followed by the hub reading the object back and hashing
it, in constant memory: a mismatch deletes the object. That costs one read of
the whole file by the hub (about as long as the upload took, on the same
network). Presigned URLs only ever name staging keys, and an ``UploadPart`` URL
is void once its upload is completed or aborted, so no client can write to an
object once it is verified. A multipart upload whose row is gone is aborted by
:meth:`S3ByteStore.cleanup` once it is :data:`STALE_MULTIPART_SECONDS` old.

AWS limits: a single PUT at most 5 GiB; parts from 5 MiB (the last one may be
smaller) to 5 GiB; at most 10,000 parts; an object at most 5 TiB. The part
size of an upload is the setting or ``ceil(size / 10000)``, whichever is larger
(a 5 TiB file needs parts of at least 525 MiB).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

from ._bytestore import IncomingBlob, StoredObject, UploadTarget
from .errors import ConfigurationError, DirectUploadRequired, HashMismatch, InvalidInput

URL_SECONDS = 3600
UPLOADS = "uploads/"
MiB = 1024 * 1024
#: AWS's bounds (most S3-compatible stores share them).
MAX_SINGLE_PUT = 5 * 1024 * MiB
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * 1024 * 1024 * MiB
#: Defaults of ``KACHERY_HUB_S3_MULTIPART_THRESHOLD`` and ``KACHERY_HUB_S3_PART_SIZE``.
MULTIPART_THRESHOLD = 100 * MiB
PART_SIZE = 64 * MiB
#: Part URLs handed out in one answer; a client asks again for more.
PART_URLS_PER_ANSWER = 100
#: A multipart upload this old is aborted by cleanup, recorded or not (a week: far longer than any upload).
STALE_MULTIPART_SECONDS = 7 * 24 * 3600.0
#: Metadata the hub gives the multipart uploads it creates (clients only ever get UploadPart URLs).
_MULTIPART_MARK = "kachery-multipart"
_READ_CHUNK = MiB
# The two kinds of keys this store writes (relative to its prefix); anything else in the bucket is not its own.
_OBJECT_KEY = re.compile(r"uploads/(?P<up_sha1>[0-9a-f]{40})/(?P<upload_id>[0-9a-f]{32})"
                         r"|sha1/[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{2}/(?P<sha1>[0-9a-f]{40})")


def staging_key(sha1: str, upload_id: str) -> str:
    return f"{UPLOADS}{sha1}/{upload_id}"


def _checksum(sha1: str) -> str:
    return base64.b64encode(bytes.fromhex(sha1)).decode("ascii")


class S3ByteStore:
    direct = True

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str = "us-east-1", client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if client is None:
            import boto3  # type: ignore[import-untyped]
            from botocore.config import Config  # type: ignore[import-untyped]

            client = boto3.client(
                "s3", endpoint_url=endpoint_url, region_name=region,
                config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
            )
        self._s3 = client
        self._check_bucket()

    @classmethod
    def from_url(cls, url: str) -> S3ByteStore:
        parsed = urlparse(url)
        if not parsed.netloc:
            raise ConfigurationError(f"storage URL {url!r}: name a bucket, as in s3://bucket/prefix")
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        unknown = set(query) - {"endpoint_url", "region"}
        if unknown:
            raise ConfigurationError(f"storage URL {url!r}: unknown parameters {sorted(unknown)}")
        return cls(parsed.netloc, parsed.path, endpoint_url=query.get("endpoint_url"),
                   region=query.get("region", "us-east-1"))

    def _check_bucket(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as e:
            raise ConfigurationError(f"cannot use S3 bucket {self.bucket!r}: {e}") from None

    def key(self, sha1: str) -> str:
        return f"{self.prefix}sha1/{sha1[0:2]}/{sha1[2:4]}/{sha1[4:6]}/{sha1}"

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            head: dict[str, Any] = self._s3.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return head

    def object_key(self, sha1: str, storage_key: str | None) -> str:
        """Where a blob's bytes are: its recorded key, or the sha1 path of blobs older than upload ids."""
        return self.prefix + storage_key if storage_key else self.key(sha1)

    def staged_size(self, sha1: str, upload_id: str) -> int | None:
        """The size of upload ``upload_id`` if the store holds it with that very sha1, else None.

        A multipart upload is completed here and its object read back and hashed: one whose
        bytes do not match is deleted (HashMismatch).
        """
        key = self.prefix + staging_key(sha1, upload_id)
        head = self._head(key)
        if head is not None:
            if head.get("ChecksumSHA1") == _checksum(sha1):
                return int(head["ContentLength"])
            if head.get("Metadata", {}).get(_MULTIPART_MARK) == "1":
                return self._verified(sha1, key)  # completed before, its check interrupted (a hub that stopped)
            return None
        s3_id = self._multipart_id(key)
        if s3_id is None:
            return None
        parts = self._parts(key, s3_id)
        numbers = [p["PartNumber"] for p in parts]
        sizes = {int(p["Size"]) for p in parts[:-1]}
        if not parts or numbers != list(range(1, len(parts) + 1)) or len(sizes) > 1 or (
                sizes and int(parts[-1]["Size"]) > min(sizes)):
            missing = sorted(set(range(1, max(numbers, default=1) + 1)) - set(numbers))
            raise InvalidInput(f"multipart upload {upload_id} of sha1://{sha1} is incomplete (parts missing: "
                               f"{missing[:20] or 'the first'}); send them, then complete")
        from botocore.exceptions import ClientError

        try:
            self._s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=s3_id,
                MultipartUpload={"Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]})
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code in ("NoSuchUpload", "404"):
                return None  # completed (or aborted) meanwhile by another request
            raise InvalidInput(f"the object store refused to complete multipart upload {upload_id} of "
                               f"sha1://{sha1}: {code}; complete it again") from None
        return self._verified(sha1, key)

    def _verified(self, sha1: str, key: str) -> int:
        """Read object ``key`` back and hash it (constant memory); deleted when it is not ``sha1``."""
        h = hashlib.sha1()
        size = 0
        body = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            for chunk in body.iter_chunks(_READ_CHUNK):
                h.update(chunk)
                size += len(chunk)
        finally:
            body.close()
        actual = h.hexdigest()
        if actual != sha1:
            self._s3.delete_object(Bucket=self.bucket, Key=key)
            raise HashMismatch(f"the uploaded parts make bytes with sha1 {actual}, not {sha1}; the upload was "
                               "removed, nothing was stored", expected=sha1, actual=actual)
        return size

    # ------------------------------------------------------------ multipart uploads

    @staticmethod
    def part_size_for(size: int, part_size: int) -> int:
        """The part size of an upload of ``size`` bytes: the setting, or more where 10,000 parts need it."""
        return max(part_size, -(-size // MAX_PARTS))

    def _multipart_id(self, key: str) -> str | None:
        """The store's UploadId of the multipart upload in progress on ``key``, if any."""
        answer = self._s3.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        ids = [str(u["UploadId"]) for u in answer.get("Uploads", []) if u["Key"] == key]
        return ids[-1] if ids else None

    def _parts(self, key: str, s3_id: str) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        pages = self._s3.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=key, UploadId=s3_id)
        for page in pages:
            parts.extend(page.get("Parts", []))
        return sorted(parts, key=lambda p: int(p["PartNumber"]))

    def begin_multipart(self, sha1: str, upload_id: str) -> None:
        """Start multipart upload ``upload_id`` (its row is recorded first, so a sweep finds it)."""
        self._s3.create_multipart_upload(Bucket=self.bucket, Key=self.prefix + staging_key(sha1, upload_id),
                                         Metadata={_MULTIPART_MARK: "1"})

    def multipart_state(self, sha1: str, upload_id: str, size: int, part_size: int) -> dict[str, Any] | None:
        """Where multipart upload ``upload_id`` stands, with URLs for the next parts still missing;
        None when no such upload is in progress (completed, aborted, never begun)."""
        key = self.prefix + staging_key(sha1, upload_id)
        s3_id = self._multipart_id(key)
        if s3_id is None:
            return None
        part = self.part_size_for(size, part_size)
        count = max(1, -(-size // part))
        done = [int(p["PartNumber"]) for p in self._parts(key, s3_id)
                if int(p["Size"]) == min(part, size - (int(p["PartNumber"]) - 1) * part)]
        have = set(done)
        wanted = [n for n in range(1, count + 1) if n not in have][:PART_URLS_PER_ANSWER]
        urls = {str(n): str(self._s3.generate_presigned_url(
            "upload_part", ExpiresIn=URL_SECONDS,
            Params={"Bucket": self.bucket, "Key": key, "UploadId": s3_id, "PartNumber": n})) for n in wanted}
        return {"upload_id": upload_id, "size": size, "part_size": part, "parts": count, "done": sorted(have),
                "urls": urls, "expires_in": URL_SECONDS}

    def _abort(self, key: str) -> int:
        aborted = 0
        answer = self._s3.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        for upload in answer.get("Uploads", []):
            if upload["Key"] == key:
                self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])
                aborted += 1
        return aborted

    def adopt(self, sha1: str, upload_id: str) -> str:
        return staging_key(sha1, upload_id)  # the staged object itself becomes the project's copy: no copy

    def discard(self, sha1: str, upload_id: str) -> None:
        key = self.prefix + staging_key(sha1, upload_id)
        self._abort(key)  # a multipart upload in progress: its parts go, its part URLs are void
        self._s3.delete_object(Bucket=self.bucket, Key=key)

    def remove(self, storage_key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self.prefix + storage_key)

    def begin_upload(self, max_size: int | None = None) -> IncomingBlob:
        raise DirectUploadRequired(
            "this hub keeps bytes in an object store: POST .../upload for a presigned URL, then .../complete")

    def local_path(self, sha1: str) -> None:
        return None

    def upload_target(self, sha1: str) -> UploadTarget:
        checksum = _checksum(sha1)
        upload_id = secrets.token_hex(16)
        url = self._s3.generate_presigned_url(
            "put_object", ExpiresIn=URL_SECONDS,
            Params={"Bucket": self.bucket, "Key": self.prefix + staging_key(sha1, upload_id), "ChecksumSHA1": checksum},
        )
        return UploadTarget(url=str(url), headers={"x-amz-checksum-sha1": checksum}, upload_id=upload_id)

    def download_url(self, sha1: str, storage_key: str | None) -> str:
        return str(self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.object_key(sha1, storage_key)},
            ExpiresIn=URL_SECONDS))

    def cleanup(self) -> int:
        """Abort multipart uploads older than :data:`STALE_MULTIPART_SECONDS`; returns how many.

        Abandoned uploads are known to the database (``_files.remove_abandoned_uploads``, which
        aborts theirs); this catches a multipart upload whose row went without it.
        """
        before = time.time() - STALE_MULTIPART_SECONDS
        aborted = 0
        pages = self._s3.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix + UPLOADS)
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < before:
                    self._s3.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    aborted += 1
        return aborted

    def objects(self) -> Iterator[StoredObject]:
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for item in page.get("Contents", []):
                key = str(item["Key"])[len(self.prefix):]
                m = _OBJECT_KEY.fullmatch(key)
                if m is None or (m["sha1"] and key != self.key(m["sha1"])[len(self.prefix):]):
                    continue
                yield StoredObject(key, m["up_sha1"] or m["sha1"], m["upload_id"], int(item["Size"]),
                                   item["LastModified"].timestamp())

    def close(self) -> None:
        self._s3.close()

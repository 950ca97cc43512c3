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
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

from ._bytestore import IncomingBlob, StoredObject, UploadTarget
from .errors import ConfigurationError, DirectUploadRequired

URL_SECONDS = 3600
UPLOADS = "uploads/"
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
        """The size of upload ``upload_id`` if the store holds it with that very sha1, else None."""
        head = self._head(self.prefix + staging_key(sha1, upload_id))
        if head is None or head.get("ChecksumSHA1") != _checksum(sha1):
            return None
        return int(head["ContentLength"])

    def adopt(self, sha1: str, upload_id: str) -> str:
        return staging_key(sha1, upload_id)  # the staged object itself becomes the project's copy: no copy

    def discard(self, sha1: str, upload_id: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self.prefix + staging_key(sha1, upload_id))

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
        return 0  # abandoned uploads are known to the database: see _files.remove_abandoned_uploads

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

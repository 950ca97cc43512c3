"""File bytes in an S3-compatible object store; clients transfer them directly.

Storage URL: ``s3://<bucket>[/<prefix>]?endpoint_url=http://host:port&region=us-east-1``
(``endpoint_url`` is omitted for AWS itself). Credentials come from the usual
AWS sources (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, profiles...).
Objects live at ``<prefix>sha1/ab/cd/ef/<sha1>``.

An upload URL is presigned together with the header ``x-amz-checksum-sha1``,
so the store itself refuses bytes whose sha1 is not the name they are sent
under, and the client cannot drop or change that header. Before a file
becomes visible in a project the hub asks the store for the object's recorded
sha1 (``verified_size``); an object without a matching checksum never counts.
Single PUTs are limited by the store (5 GiB on AWS).
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qs, urlparse

from ._bytestore import IncomingBlob, UploadTarget
from .errors import ConfigurationError, DirectUploadRequired

URL_SECONDS = 3600


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

    def _head(self, sha1: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            head: dict[str, Any] = self._s3.head_object(Bucket=self.bucket, Key=self.key(sha1), ChecksumMode="ENABLED")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return head

    def exists(self, sha1: str) -> bool:
        return self.verified_size(sha1) is not None

    def verified_size(self, sha1: str) -> int | None:
        head = self._head(sha1)
        if head is None or head.get("ChecksumSHA1") != _checksum(sha1):
            return None
        return int(head["ContentLength"])

    def begin_upload(self, max_size: int | None = None) -> IncomingBlob:
        raise DirectUploadRequired(
            "this hub keeps bytes in an object store: POST .../upload for a presigned URL, then .../complete")

    def local_path(self, sha1: str) -> None:
        return None

    def upload_target(self, sha1: str) -> UploadTarget:
        checksum = _checksum(sha1)
        url = self._s3.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": self.key(sha1), "ChecksumSHA1": checksum},
            ExpiresIn=URL_SECONDS,
        )
        return UploadTarget(url=str(url), headers={"x-amz-checksum-sha1": checksum})

    def download_url(self, sha1: str) -> str:
        return str(self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.key(sha1)}, ExpiresIn=URL_SECONDS))

    def cleanup(self) -> int:
        return 0  # nothing is staged: the store refuses bad bytes itself

    def close(self) -> None:
        self._s3.close()

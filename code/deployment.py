"""Deploying the digit classifier: which model, packed how, in which image, and how fast its endpoint answers.

Notebooks 06 and 07 call these; `make bench` measures the endpoint with `measure_latency` too.

- `choose_model`: the first model found, in the order a reader would want: a training job's artifact
  named by its S3 URI, the model notebook 04 downloaded, the one notebook 03 trained, else a small model
  trained now with train.py's own code;
- `pack_model`: `model.tar.gz` as SageMaker unpacks it into /opt/ml/model: `model.pt` at the root and,
  when asked, the serving code in `code/` (ModelBuilder repacks the code itself; a plain CreateModel
  request needs it inside);
- `inference_image`: SageMaker's PyTorch inference image for a region and instance type;
- `model_builder`: SDK 3's ModelBuilder for a real endpoint or a batch transform: that image, the model
  in S3, and code/ with inference.py as the entry point (the SDK repacks them into one model.tar.gz);
- `predictions` and `refusal`: one request to an endpoint, and what a refused one says;
- `measure_latency`: many requests at a given concurrency, their p50 and p99 latency and throughput.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import logging
import tarfile
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from botocore.exceptions import ClientError
from sagemaker.core import image_uris

from inference import in_process_spec
from mnist_model import MODEL_FILE
from sagemaker_job import download_model

CODE_DIR = Path(__file__).resolve().parent
# What the serving container needs beside the model: the handlers and the modules they import.
SERVING_FILES = ("inference.py", "mnist_data.py", "mnist_format.py", "mnist_model.py")
ENTRY_POINT = "inference.py"
# SageMaker's newest PyTorch inference image that SDK 3.27 knows; it runs the same state_dict as torch 2.14.
PYTORCH_VERSION, PYTHON_VERSION = "2.6", "py312"
JSON = "application/json"


@dataclass(frozen=True)
class ModelChoice:
    """The model to deploy: the folder holding its model.pt, and where it came from, in words."""

    model_dir: Path
    source: str

    @property
    def model_file(self) -> Path:
        return self.model_dir / MODEL_FILE


def choose_model(
    model_artifact: str,
    model_dirs: Mapping[str, Path],
    work_dir: Path,
    train_quick: Callable[[Path], Path],
) -> ModelChoice:
    """The model to deploy: `model_artifact` (an S3 URI, downloaded into work_dir/model) when given, else the
    first folder of `model_dirs` (description -> folder) holding a model.pt, else `train_quick(work_dir)`'s."""
    if model_artifact:
        model_dir = work_dir / "model"
        download_model(model_artifact, model_dir)
        if not (model_dir / MODEL_FILE).is_file():
            raise FileNotFoundError(f"{model_artifact} holds no {MODEL_FILE}: give the model.tar.gz of a training job "
                                    "that ran train.py (MODEL_ARTIFACT)")
        return ModelChoice(model_dir, model_artifact)
    for source, model_dir in model_dirs.items():
        if (Path(model_dir) / MODEL_FILE).is_file():
            return ModelChoice(Path(model_dir), source)
    return ModelChoice(train_quick(work_dir), "a quick training run")


def pack_model(model_dir: Path, archive: Path, with_code: bool = False) -> list[str]:
    """Write model.tar.gz: model.pt at the root and, with_code, the serving files under code/; return the names."""
    model_file = Path(model_dir) / MODEL_FILE
    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file} not found: the model folder must hold the {MODEL_FILE} train.py saves")
    names = [MODEL_FILE] + [f"code/{name}" for name in SERVING_FILES if with_code]
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(model_file, arcname=MODEL_FILE)
        for name in names[1:]:
            tar.add(CODE_DIR / name.removeprefix("code/"), arcname=name)
    return names


def inference_image(region: str, instance_type: str) -> str:
    """SageMaker's PyTorch inference image (CPU or GPU as the instance type says) in a region."""
    return image_uris.retrieve("pytorch", region, version=PYTORCH_VERSION, py_version=PYTHON_VERSION,
                               image_scope="inference", instance_type=instance_type)


def serving_sdk() -> types.SimpleNamespace:
    """SDK 3's ModelBuilder, SchemaBuilder and Mode, imported on first use, with Python's logging left as it was.

    Imported here, not at the top: it makes AWS clients on import, which needs a region. And it runs
    logging.basicConfig(level=INFO) (SDK 3.27's sagemaker.core.experiments does, on import), after which
    every AWS call of the SDK and botocore printed INFO lines under the notebook's cells: the root logger
    is put back to Python's default, warnings and errors only.
    """
    from sagemaker.serve.builder.schema_builder import SchemaBuilder
    from sagemaker.serve.mode.function_pointers import Mode
    from sagemaker.serve.model_builder import ModelBuilder

    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("sagemaker.config").setLevel(logging.WARNING)  # "Applied value from config key ..."
    return types.SimpleNamespace(ModelBuilder=ModelBuilder, SchemaBuilder=SchemaBuilder, Mode=Mode)


def schema() -> Any:
    """The SchemaBuilder: bytes of any format (JSON, .npy, PNG, JPEG) in, JSON predictions out."""
    sample_answer = {"predictions": [{"digit": 0, "probabilities": [0.1] * 10}]}
    return serving_sdk().SchemaBuilder(sample_input=json_body(torch.zeros(1, 28, 28)), sample_output=sample_answer)


def model_builder(model_data_url: str, instance_type: str, region: str) -> Any:
    """SDK 3's ModelBuilder for this model on a SageMaker endpoint or transform job (`build()` creates it)."""
    from sagemaker.core.training.configs import SourceCode

    serve = serving_sdk()
    return serve.ModelBuilder(
        s3_model_data_url=model_data_url,
        image_uri=inference_image(region, instance_type),
        source_code=SourceCode(source_dir=str(CODE_DIR), entry_script=ENTRY_POINT),  # repacked into model.tar.gz
        schema_builder=schema(),
        instance_type=instance_type,
        mode=serve.Mode.SAGEMAKER_ENDPOINT,
        log_level=logging.WARNING,  # the SDK's own INFO lines would bury the notebook's
    )


def in_process_check(model_dir: Path, body: bytes, log_path: Path) -> list[int]:
    """Serve the handlers in this process with ModelBuilder's IN_PROCESS mode, send one request, stop; the digits.

    The SDK's in-process server is a FastAPI app on 127.0.0.1:9007 that uvicorn runs with its own INFO
    log (start-up, one line per request): it goes to log_path, not under the notebook's cell.
    """
    serve = serving_sdk()
    builder = serve.ModelBuilder(inference_spec=in_process_spec(model_dir), schema_builder=schema(),
                                 mode=serve.Mode.IN_PROCESS, model_path=str(log_path.parent / "in-process"),
                                 log_level=logging.ERROR)
    builder.build()
    sdk_logger = logging.getLogger("sagemaker.serve")  # its notes on the in-process server go to the log too
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        handler = logging.StreamHandler(log)
        sdk_logger.addHandler(handler)
        sdk_logger.propagate = False
        try:
            endpoint = builder.deploy()  # uvicorn's log handlers take the streams of this moment
            try:
                return digits_of(endpoint.invoke(body=body, content_type=JSON).body)
            finally:
                endpoint.in_process_mode_obj.destroy_server()
        finally:
            sdk_logger.removeHandler(handler)
            sdk_logger.propagate = True


def predictions(endpoint: Any, body: bytes, content_type: str) -> list[dict[str, Any]]:
    """Send one request to an endpoint (SDK 3's Endpoint); its prediction for each image."""
    answer = endpoint.invoke(body=body, content_type=content_type, accept=JSON)
    return json.loads(answer.body.read())["predictions"]


def refusal(endpoint: Any, body: bytes, content_type: str) -> tuple[int, str]:
    """Send a request the handlers must refuse; the status and message the container answered with."""
    try:
        endpoint.invoke(body=body, content_type=content_type, accept=JSON)
    except ClientError as error:
        details = error.response
        if details.get("Error", {}).get("Code") != "ModelError":
            raise
        return int(details["OriginalStatusCode"]), str(details["OriginalMessage"])
    raise RuntimeError(f"the endpoint answered a request it should refuse ({len(body)} bytes of {content_type})")


def serving_environment(workers: int | None = None) -> dict[str, str]:
    """The container environment of a model packed with_code: the entry point in /opt/ml/model/code."""
    environment = {"SAGEMAKER_PROGRAM": ENTRY_POINT, "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"}
    if workers is not None:
        environment["SAGEMAKER_MODEL_SERVER_WORKERS"] = str(workers)
    return environment


def json_body(images: torch.Tensor) -> bytes:
    """Images (N, 28, 28) on the 0-255 scale as the JSON body inference.input_fn reads."""
    return json.dumps(images.tolist()).encode()


def npy_body(images: torch.Tensor | np.ndarray) -> bytes:
    """Images as the .npy body inference.input_fn reads."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(images))
    return buffer.getvalue()


def digits_of(answer: bytes | Mapping[str, Any]) -> list[int]:
    """The predicted digit of each image in an answer of inference.output_fn (bytes, or already parsed)."""
    parsed = json.loads(answer) if isinstance(answer, (bytes, bytearray, str)) else answer
    return [prediction["digit"] for prediction in parsed["predictions"]]


@dataclass(frozen=True)
class Latency:
    """How fast requests were answered: percentiles of single requests, and throughput at that concurrency."""

    requests: int
    concurrency: int
    p50_ms: float
    p99_ms: float
    requests_per_s: float
    errors: list[str]

    def __str__(self) -> str:
        return (f"{self.requests:,} requests at concurrency {self.concurrency}: p50 {self.p50_ms:.1f} ms, "
                f"p99 {self.p99_ms:.1f} ms, {self.requests_per_s:.0f} requests/s, {len(self.errors)} errors")


def measure_latency(send: Callable[[bytes], object], bodies: Sequence[bytes], concurrency: int = 1) -> Latency:
    """Send every body with `send` (which raises on a refused request), `concurrency` at a time; time each."""

    def timed(body: bytes) -> tuple[float, str | None]:
        start = time.perf_counter()
        try:
            send(body)
        except Exception as error:  # counted and named: the caller decides whether errors are acceptable
            return time.perf_counter() - start, f"{type(error).__name__}: {error}"
        return time.perf_counter() - start, None

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(timed, bodies))
    elapsed = time.perf_counter() - started
    seconds = np.array([duration for duration, _ in results])
    p50, p99 = np.percentile(seconds * 1e3, [50, 99])
    errors = [error for _, error in results if error is not None]
    return Latency(len(bodies), concurrency, float(p50), float(p99), len(bodies) / elapsed, errors)

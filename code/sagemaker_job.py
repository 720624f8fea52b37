"""Notebook 04's helpers around a SageMaker training job: what to upload, which metrics to read, what to fetch.

They run in the notebook (in SageMaker Studio, or offline against the local endpoint), never in the
training container: this module is not among the files uploaded with the job's source code.
"""

from __future__ import annotations

import logging
import sys
import tarfile
from pathlib import Path

import boto3
from botocore.client import BaseClient
from mnist_s3 import local_path_for_key, split_s3_uri
from rich.text import Text
from sagemaker.core.resources import TrainingJob
from sagemaker.core.shapes import ResourceConfigForUpdate
from sagemaker.core.training.configs import MetricDefinition, SourceCode

# What the training container needs: the entry script, the modules it imports and the extra packages.
CONTAINER_FILES = ("train.py", "mnist_data.py", "mnist_format.py", "mnist_model.py", "requirements.txt")
ENTRY_SCRIPT = "train.py"
REQUIREMENTS = "requirements.txt"
# train.py prints `name=value;` lines; each SageMaker metric is a regex whose first group is the value.
METRIC_LINES = {
    "train:loss": "train_loss",
    "validation:loss": "val_loss",
    "validation:accuracy": "val_acc",
    "test:accuracy": "test_acc",
}
RUNNING = ("InProgress", "Stopping")
# SDK 3 hands each line of a job's log (fetched from CloudWatch by `train(logs=True)`) to this logger.
JOB_LOG_LOGGER = "sagemaker.core.resources"


class JobLogHandler(logging.StreamHandler):
    """Print the SDK's job log records as plain lines on stdout (no stream-name line, no rich markup)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def format(self, record: logging.LogRecord) -> str:
        # A log line arrives as "<log stream name>:\n<line>"; status messages carry rich markup such as [bold].
        message = record.getMessage()
        return message.split("\n", 1)[1] if "\n" in message else Text.from_markup(message).plain


def show_job_logs() -> None:
    """Make `ModelTrainer.train(logs=True)` print the job's log: SDK 3 logs it at INFO, which prints nothing
    unless logging is set up. Safe to call twice."""
    sdk_logger = logging.getLogger(JOB_LOG_LOGGER)
    sdk_logger.setLevel(logging.INFO)
    sdk_logger.propagate = False  # printed here once, not again by a handler on the root logger
    if not any(isinstance(handler, JobLogHandler) for handler in sdk_logger.handlers):
        sdk_logger.addHandler(JobLogHandler())


def source_code(code_dir: Path) -> SourceCode:
    """The job's SourceCode: train.py as entry script, requirements.txt installed, only CONTAINER_FILES uploaded."""
    code_dir = Path(code_dir)
    missing = [name for name in CONTAINER_FILES if not (code_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{code_dir} lacks {', '.join(missing)}: the training container needs them")
    # ModelTrainer uploads source_dir minus ignore_patterns: everything else in the folder is ignored.
    ignored = sorted(path.name for path in code_dir.iterdir() if path.name not in CONTAINER_FILES)
    return SourceCode(
        source_dir=str(code_dir), entry_script=ENTRY_SCRIPT, requirements=REQUIREMENTS, ignore_patterns=ignored
    )


def metric_definitions() -> list[MetricDefinition]:
    """Regexes that read train.py's `name=value;` lines: training and validation loss, validation and test accuracy."""
    return [MetricDefinition(name=name, regex=rf"\b{key}=([-+0-9.eE]+);") for name, key in METRIC_LINES.items()]


def final_metrics(job: TrainingJob) -> dict[str, float]:
    """The last value of each metric, as SageMaker extracted them from the job's log."""
    return {metric.metric_name: metric.value for metric in job.final_metric_data_list or []}


def tensorboard_uri(job: TrainingJob) -> str:
    """Where SageMaker puts a job's TensorBoard logs: `<S3OutputPath>/<job name>/tensorboard-output/`."""
    return f"{job.tensor_board_output_config.s3_output_path.rstrip('/')}/{job.training_job_name}/tensorboard-output/"


def list_s3(uri: str, *, s3_client: BaseClient | None = None) -> list[str]:
    """The keys of every object under an S3 URI (a prefix), sorted."""
    bucket, prefix = split_s3_uri(uri)
    pages = (s3_client or boto3.client("s3")).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def download_prefix(uri: str, target_dir: Path, *, s3_client: BaseClient | None = None) -> list[Path]:
    """Download every object under an S3 prefix into target_dir, keeping their paths below the prefix."""
    bucket, prefix = split_s3_uri(uri)
    s3_client = s3_client or boto3.client("s3")
    files = []
    for key in list_s3(uri, s3_client=s3_client):
        if key.endswith("/"):  # a folder marker (as the S3 console creates), not a file
            continue
        path = local_path_for_key(target_dir, bucket, prefix, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        s3_client.download_file(bucket, key, str(path))
        files.append(path)
    return files


def latest_completed_job(base_job_name: str) -> TrainingJob | None:
    """The newest completed training job whose name contains base_job_name, or None when there is none."""
    jobs = TrainingJob.get_all(
        name_contains=base_job_name, status_equals="Completed", sort_by="CreationTime", sort_order="Descending"
    )
    return next(iter(jobs), None)


def download_model(model_data: str, target_dir: Path, *, s3_client: BaseClient | None = None) -> list[Path]:
    """Download a model.tar.gz from S3 and unpack it into target_dir; return the files it held.

    tarfile's "data" filter refuses members that would land outside target_dir (absolute paths, `..`,
    links pointing out), so an archive can never write elsewhere on this machine.
    """
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    archive = target_dir / Path(split_s3_uri(model_data)[1]).name
    (s3_client or boto3.client("s3")).download_file(*split_s3_uri(model_data), str(archive))
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(target_dir, filter="data")
        # The filter also rewrites names (an absolute "/x" lands at target_dir/x): report where files landed.
        members = [tarfile.data_filter(member, str(target_dir)) for member in tar.getmembers()]
    return [target_dir / member.name for member in members if member.isfile()]


def clean_up(job: TrainingJob) -> list[str]:
    """Stop what still bills for a job: the job itself if it runs, its warm pool if it kept one. Safe to repeat."""
    job.refresh()
    done = []
    if job.training_job_status == "InProgress":
        job.stop()
        done.append(f"stopped {job.training_job_name}")
    keep_alive = getattr(job.resource_config, "keep_alive_period_in_seconds", None)
    if isinstance(keep_alive, int) and keep_alive > 0 and job.training_job_status not in RUNNING:
        job.update(resource_config=ResourceConfigForUpdate(keep_alive_period_in_seconds=0))
        done.append(f"released the warm pool of {job.training_job_name}")
    return done

"""Notebook 04's helpers around a SageMaker training job: what to upload, which metrics to read, what to fetch.

They run in the notebook (in SageMaker Studio, or offline against the local endpoint), never in the
training container: this module is not among the files uploaded with the job's source code.
"""

from __future__ import annotations

import logging
import re
import sys
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import boto3
from botocore.client import BaseClient
from mnist_s3 import local_path_for_key, split_s3_uri
from rich.text import Text
from run_context import uses_local_endpoint
from sagemaker.core.resources import TrainingJob
from sagemaker.core.shapes import ResourceConfigForUpdate
from sagemaker.core.training.configs import MetricDefinition, SourceCode
from sagemaker.train import ModelTrainer

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
JOB_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
# The lines of a job's log worth reading in the notebook: train.py's metric lines, and what says why a job
# failed or stopped. The rest (the container's set-up, pip, the environment) stays in CloudWatch.
SHOWN_LOG_LINES = re.compile(r"(epoch=\d+;|test_loss=|ERROR|Stopped by SIGTERM|Traceback|\w+(Error|Exception): )")
FINAL_STATUS = "Final Resource Status:"


class JobLogHandler(logging.StreamHandler):
    """Print train.py's own lines of a job's log as plain text, then the job's status and where its whole log is."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream or sys.stdout)
        self.lines: dict[str, list[int]] = {}  # log stream -> [lines seen, lines shown], for the closing note

    def emit(self, record: logging.LogRecord) -> None:
        # The SDK logs a log line as "<log stream name>:\n<line>"; its status messages carry rich markup.
        stream_name, separator, line = record.getMessage().partition(":\n")
        if separator:
            counts = self.lines.setdefault(stream_name, [0, 0])
            counts[0] += 1
            if SHOWN_LOG_LINES.match(line):
                counts[1] += 1
                self.write(line)
            return
        message = Text.from_markup(record.getMessage()).plain
        if message.startswith(FINAL_STATUS):
            self.write(self.closing_note(message.removeprefix(FINAL_STATUS).strip()))
            self.lines.clear()

    def closing_note(self, status: str) -> str:
        """The job's status, how much of its log was shown, and where the whole log is."""
        seen = sum(counts[0] for counts in self.lines.values())
        shown = sum(counts[1] for counts in self.lines.values())
        streams = ", ".join(self.lines) or "(none yet)"
        return (
            f"Final status: {status}. {shown} of the log's {seen} lines are shown; all of them are in CloudWatch Logs,\n"
            f"  log group {JOB_LOG_GROUP}, stream {streams}"
        )

    def write(self, text: str) -> None:
        """Print one piece of text as a line."""
        self.stream.write(text + "\n")
        self.flush()


def show_job_logs() -> None:
    """Make `ModelTrainer.train(logs=True)` print train.py's lines of the job's log, and where the whole log is.

    SDK 3 logs the job's log at INFO, which prints nothing unless logging is set up. Safe to call twice.
    """
    sdk_logger = logging.getLogger(JOB_LOG_LOGGER)
    sdk_logger.setLevel(logging.INFO)
    sdk_logger.propagate = False  # printed here once, not again by a handler on the root logger
    if not any(isinstance(handler, JobLogHandler) for handler in sdk_logger.handlers):
        sdk_logger.addHandler(JobLogHandler())


def latest_job(trainer: ModelTrainer) -> TrainingJob:
    """The training job that `trainer.train(...)` started last, described afresh.

    SDK 3 keeps it in a private attribute and offers no public accessor; this is the one place that reads
    it, and tests/test_sagemaker_job.py fails if an SDK release renames it.
    """
    job = getattr(trainer, "_latest_training_job", None)
    if job is None:
        raise RuntimeError(f"{trainer.base_job_name or 'this ModelTrainer'} has not started a training job: run trainer.train(...) first")
    if not isinstance(job, TrainingJob):
        raise TypeError(f"ModelTrainer._latest_training_job is a {type(job).__name__}, not a TrainingJob: the SageMaker SDK changed")
    job.refresh()
    return job


def job_log(job: TrainingJob, *, logs_client: BaseClient | None = None) -> list[str]:
    """Every line of the job's CloudWatch log, stream by stream (one stream per instance), oldest first."""
    return [line for lines in job_log_streams(job, logs_client=logs_client).values() for line in lines]


def job_log_streams(job: TrainingJob, *, logs_client: BaseClient | None = None) -> dict[str, list[str]]:
    """The lines of each of the job's log streams (`<job>/algo-K-<timestamp>`: one per instance and attempt), by name."""
    logs_client = logs_client or boto3.client("logs")
    streams = logs_client.get_paginator("describe_log_streams").paginate(
        logGroupName=JOB_LOG_GROUP, logStreamNamePrefix=f"{job.training_job_name}/"
    )
    lines: dict[str, list[str]] = {}
    for stream in (stream for page in streams for stream in page["logStreams"]):
        name, token = stream["logStreamName"], {}
        lines[name] = []
        while True:
            page = logs_client.get_log_events(logGroupName=JOB_LOG_GROUP, logStreamName=name, startFromHead=True, **token)
            lines[name].extend(event["message"] for event in page["events"])
            if not page["events"]:
                break
            token = {"nextToken": page["nextForwardToken"]}
    return lines


def gpus_in_log(lines: list[str]) -> int | None:
    """How many GPUs the container saw: the SM_NUM_GPUS line of the SDK's environment report, if the log has one."""
    for line in lines:
        if line.startswith("SM_NUM_GPUS="):
            return int(line.removeprefix("SM_NUM_GPUS="))
    return None


def billing_statement(job: TrainingJob, environ: Mapping[str, str]) -> str:
    """What the job's training and billable seconds say, and what they cannot say offline."""
    training, billable = job.training_time_in_seconds, job.billable_time_in_seconds
    measured = f"Training took {training} s and SageMaker counts {billable} billable seconds"
    if uses_local_endpoint(environ):
        return f"{measured}. The local endpoint bills nothing and has no spot market, so no spot saving can show here."
    if not job.enable_managed_spot_training:
        return f"{measured}: on demand, every second of training is billed."
    if billable < training:
        return f"{measured}: managed spot capacity saved {round(100 * (1 - billable / training))} % of the on-demand bill."
    return f"{measured}: spot capacity saved nothing on this job."


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

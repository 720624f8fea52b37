"""sagemaker_job's helpers against the real SageMaker SDK 3, over moto in-process: the job a ModelTrainer
started, its log as the notebook shows it (train.py's lines, and where the whole log is), what it billed."""

from __future__ import annotations

import io
import json
import logging
import time
import types
from collections.abc import Iterator

import boto3
import moto
import pytest
import yaml

import local_aws
import sagemaker_job

BUCKET = "sagemaker-job-helpers-test"
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
CONTAINER_LOG = [
    "Installing requirements",
    "Requirement already satisfied: pytorch-lightning==2.6.6 in /usr/lib/python3/site-packages (2.6.6)",
    "SM_NUM_GPUS=0",
    "epoch=1; train_loss=0.81; val_loss=0.22; val_acc=0.9575;",
    "epoch=2; train_loss=0.57; val_loss=0.21; val_acc=0.9675;",
    "test_loss=0.208; test_acc=0.972;",
    "Training Container Execution Completed",
]


@pytest.fixture
def sagemaker_sdk(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto in this process, with the SDK configured as the local endpoint configures it (bucket, role, no telemetry)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "SAGEMAKER_VALIDATE_ROLE": "false",
        "SAGEMAKER_ADMIN_CONFIG_OVERRIDE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with moto.mock_aws():
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        role = boto3.client("iam").create_role(
            RoleName="ExecutionRole", AssumeRolePolicyDocument=json.dumps(local_aws.TRUST_POLICY)
        )["Role"]["Arn"]
        config = tmp_path / "sagemaker-config.yaml"
        config.write_text(yaml.safe_dump(local_aws.sagemaker_config(BUCKET, role)))
        monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(config))
        yield


def start_job() -> object:
    """A ModelTrainer that has started one job (plain moto stores it as Completed at once)."""
    from sagemaker.core.training.configs import Compute, InputData
    from sagemaker.train import ModelTrainer

    trainer = ModelTrainer(
        training_image="123456789012.dkr.ecr.us-east-1.amazonaws.com/training:1",
        compute=Compute(instance_type="ml.m5.large", instance_count=1),
        base_job_name="helpers-test",
    )
    trainer.train(input_data_config=[InputData(channel_name="train", data_source=f"s3://{BUCKET}/train/")], wait=False)
    return trainer


def write_container_log(job_name: str, lines: list[str]) -> str:
    """Put lines into the job's CloudWatch stream, as the container would; return the stream's name."""
    logs = boto3.client("logs")
    stream = f"{job_name}/algo-1-1796150000"
    logs.create_log_group(logGroupName=LOG_GROUP)
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    now_ms = int(time.time() * 1000)
    events = [{"timestamp": now_ms + index, "message": line} for index, line in enumerate(lines)]
    logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=events)
    return stream


def test_latest_job_is_the_one_the_trainer_started(sagemaker_sdk) -> None:
    trainer = start_job()

    job = sagemaker_job.latest_job(trainer)

    (listed,) = boto3.client("sagemaker").list_training_jobs()["TrainingJobSummaries"]
    assert job.training_job_name == listed["TrainingJobName"]
    assert job.training_job_name.startswith("helpers-test-")


def test_latest_job_of_a_trainer_that_started_nothing_says_so(sagemaker_sdk) -> None:
    from sagemaker.core.training.configs import Compute
    from sagemaker.train import ModelTrainer

    trainer = ModelTrainer(training_image="x:1", compute=Compute(instance_type="ml.m5.large", instance_count=1))

    with pytest.raises(RuntimeError, match=r"has not started a training job: run trainer.train\(\.\.\.\) first"):
        sagemaker_job.latest_job(trainer)


def test_the_notebook_shows_train_py_lines_of_the_log_and_where_the_whole_log_is(sagemaker_sdk) -> None:
    job = sagemaker_job.latest_job(start_job())
    stream = write_container_log(job.training_job_name, CONTAINER_LOG)
    printed = io.StringIO()
    handler = sagemaker_job.JobLogHandler(printed)
    sdk_logger = logging.getLogger(sagemaker_job.JOB_LOG_LOGGER)
    sdk_logger.addHandler(handler)
    level = sdk_logger.level
    sdk_logger.setLevel(logging.INFO)
    try:
        job.wait(logs=True, poll=1)  # the SDK's own loop: it reads CloudWatch and logs each line
    finally:
        sdk_logger.removeHandler(handler)
        sdk_logger.setLevel(level)

    assert printed.getvalue().splitlines() == [
        "epoch=1; train_loss=0.81; val_loss=0.22; val_acc=0.9575;",
        "epoch=2; train_loss=0.57; val_loss=0.21; val_acc=0.9675;",
        "test_loss=0.208; test_acc=0.972;",
        "Final status: Completed. 3 of the log's 7 lines are shown; all of them are in CloudWatch Logs,",
        f"  log group {LOG_GROUP}, stream {stream}",
    ]


def test_the_log_reads_back_whole_and_says_how_many_gpus_the_container_saw(sagemaker_sdk) -> None:
    job = sagemaker_job.latest_job(start_job())
    write_container_log(job.training_job_name, CONTAINER_LOG)

    lines = sagemaker_job.job_log(job)

    assert lines == CONTAINER_LOG
    assert sagemaker_job.gpus_in_log(lines) == 0
    assert sagemaker_job.gpus_in_log(["SM_NUM_GPUS=4"]) == 4
    assert sagemaker_job.gpus_in_log(["epoch=1;"]) is None


def test_a_failing_job_shows_the_lines_that_say_why() -> None:
    printed = io.StringIO()
    handler = sagemaker_job.JobLogHandler(printed)
    for line in ["Installing requirements", "Traceback (most recent call last):", '  File "train.py", line 9',
                 "ValueError: hyperparameter lr=5.0 is out of range", "ERROR: SM_CHANNEL_TRAIN=/opt/ml/input/data/train: missing"]:
        handler.emit(logging.LogRecord("sdk", logging.INFO, __file__, 1, f"job/algo-1-1:\n{line}", None, None))

    assert printed.getvalue().splitlines() == [
        "Traceback (most recent call last):",
        "ValueError: hyperparameter lr=5.0 is out of range",
        "ERROR: SM_CHANNEL_TRAIN=/opt/ml/input/data/train: missing",
    ]


def job_times(training: int, billable: int, spot: bool) -> types.SimpleNamespace:
    """The fields of a described TrainingJob that billing_statement reads."""
    return types.SimpleNamespace(
        training_time_in_seconds=training, billable_time_in_seconds=billable, enable_managed_spot_training=spot
    )


@pytest.mark.parametrize(
    ("times", "environ", "expected"),
    [
        (job_times(31, 31, True), {"AWS_ENDPOINT_URL": "http://127.0.0.1:5000"},
         "Training took 31 s and SageMaker counts 31 billable seconds. The local endpoint bills nothing and has no "
         "spot market, so no spot saving can show here."),
        (job_times(600, 200, True), {}, "Training took 600 s and SageMaker counts 200 billable seconds: managed spot "
         "capacity saved 67 % of the on-demand bill."),
        (job_times(600, 600, True), {}, "Training took 600 s and SageMaker counts 600 billable seconds: spot capacity "
         "saved nothing on this job."),
        (job_times(600, 600, False), {}, "Training took 600 s and SageMaker counts 600 billable seconds: on demand, "
         "every second of training is billed."),
    ],
)
def test_billing_statement_says_only_what_the_job_measured(times, environ, expected) -> None:
    assert sagemaker_job.billing_statement(times, environ) == expected

"""A job's log streams, metrics and failure reason (tools/local_sagemaker/job_logs.py), against moto in this process."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import boto3
import moto
import pytest
from botocore.client import BaseClient

import sagemaker_job
from local_sagemaker import job_logs
from support import TEST_CREDENTIALS

# What train.py prints at the end of an epoch and of the test.
EPOCH_LINE = "epoch=2; train_loss=0.1234; val_loss=0.0567; val_acc=0.9876;"
TEST_LINE = "test_acc=0.9912;"
DRIVER_FAILURE = (
    "Traceback (most recent call last):\n  File \"basic_script_driver.py\", line 48, in main\n"
    "subprocess.CalledProcessError: Command '['python', 'train.py']' returned non-zero exit status 1."
)


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[BaseClient]:
    """A CloudWatch Logs client of moto's in-process mock."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # a local endpoint's URL would bypass the mock
    with moto.mock_aws():
        yield boto3.session.Session(**TEST_CREDENTIALS).client("logs")


def workbook_metrics() -> list[job_logs.MetricRegex]:
    """Notebook 04's metric definitions (code/sagemaker_job.py), compiled."""
    definitions = [{"Name": metric.name, "Regex": metric.regex} for metric in sagemaker_job.metric_definitions()]
    return job_logs.compile_metric_definitions(definitions)


def stream_text(logs: BaseClient, stream: str) -> list[str]:
    """The messages of one stream of the training-job log group."""
    events = logs.get_log_events(logGroupName=job_logs.LOG_GROUP, logStreamName=stream, startFromHead=True)["events"]
    return [event["message"] for event in events]


def test_the_workbooks_metric_definitions_read_train_pys_lines() -> None:
    metrics = workbook_metrics()

    from_epoch = {name: job_logs.metric_value(regex, EPOCH_LINE) for name, regex in metrics}
    from_test = {name: job_logs.metric_value(regex, TEST_LINE) for name, regex in metrics}

    assert from_epoch == {"train:loss": 0.1234, "validation:loss": 0.0567, "validation:accuracy": 0.9876,
                          "test:accuracy": None}
    assert from_test == {"train:loss": None, "validation:loss": None, "validation:accuracy": None,
                         "test:accuracy": 0.9912}


@pytest.mark.parametrize(
    "regex, line",
    [
        pytest.param(r"loss=[0-9.]+", "loss=0.5", id="no group"),
        pytest.param(r"loss=(\S+);", "loss=nan-ish;", id="not a number"),
        pytest.param(r"loss=(?:([0-9.]+)|none);", "loss=none;", id="group that did not take part"),
        pytest.param(r"loss=([0-9.]+);", "val_acc=0.9;", id="no match"),
    ],
)
def test_a_line_without_a_number_in_the_first_group_gives_no_value(regex: str, line: str) -> None:
    assert job_logs.metric_value(re.compile(regex), line) is None


def test_a_bad_metric_regex_is_refused_naming_the_metric() -> None:
    with pytest.raises(ValueError, match=r"Metric definition 'train:loss': invalid regex: missing \)"):
        job_logs.compile_metric_definitions([{"Name": "train:loss", "Regex": "loss=([0-9.]+"}])


def test_each_attempt_gets_its_own_stream_and_metrics_keep_their_last_value(logs: BaseClient, tmp_path: Path) -> None:
    log = job_logs.JobLog(logs, "job-1", workbook_metrics())

    first = log.start_attempt(tmp_path / "attempt-1.log")
    for line in ("loading data", "", "epoch=1; train_loss=0.9; val_loss=0.8; val_acc=0.7;"):
        log.write(line)
    log.end_attempt()
    second = log.start_attempt(tmp_path / "attempt-2.log")
    for line in (EPOCH_LINE, TEST_LINE):
        log.write(line)
    log.end_attempt()

    assert re.fullmatch(r"job-1/algo-1-\d+", first) and re.fullmatch(r"job-1/algo-1-\d+", second)
    assert int(second.rsplit("-", 1)[1]) > int(first.rsplit("-", 1)[1])  # stream names sort in attempt order
    assert stream_text(logs, first) == ["loading data", "epoch=1; train_loss=0.9; val_loss=0.8; val_acc=0.7;"]
    assert stream_text(logs, second) == [EPOCH_LINE, TEST_LINE]
    copy = (tmp_path / "attempt-1.log").read_text()
    assert copy == "loading data\n\nepoch=1; train_loss=0.9; val_loss=0.8; val_acc=0.7;\n"  # the empty line too
    final = {metric["MetricName"]: metric["Value"] for metric in log.final_metric_data()}
    assert final == {"train:loss": 0.1234, "validation:loss": 0.0567, "validation:accuracy": 0.9876,
                     "test:accuracy": 0.9912}
    assert list(log.tail)[-2:] == [EPOCH_LINE, TEST_LINE]


def test_pump_forwards_a_pipes_lines_as_they_come(logs: BaseClient, tmp_path: Path) -> None:
    log = job_logs.JobLog(logs, "job-2", [])
    stream = log.start_attempt(tmp_path / "attempt.log")
    pipe = (tmp_path / "output").open("w+b")
    pipe.write(b"first\r\nsecond \xff\nthird")
    pipe.seek(0)

    log.pump(pipe)

    assert stream_text(logs, stream) == ["first", "second \ufffd", "third"]


def test_a_line_outside_an_attempt_is_an_error(logs: BaseClient) -> None:
    with pytest.raises(RuntimeError, match=r"training job job-3: a log line arrived outside an attempt: 'late'"):
        job_logs.JobLog(logs, "job-3", []).write("late")


def test_failure_reason_puts_the_scripts_error_before_the_drivers_traceback(tmp_path: Path) -> None:
    (tmp_path / "failure").write_text(DRIVER_FAILURE + "\n")
    tail = ["loading data", "Traceback (most recent call last):", '  File "train.py", line 3', "ValueError: no digits"]

    reason = job_logs.failure_reason(tmp_path / "failure", tail, returncode=1)

    assert reason == f"AlgorithmError: ValueError: no digits\n{DRIVER_FAILURE}"


def test_failure_reason_names_what_argparse_refused(tmp_path: Path) -> None:
    tail = ["usage: train.py [-h] [--epochs EPOCHS]", "train.py: error: hyperparameter label_smoothing=1.5 is out of range"]

    reason = job_logs.failure_reason(tmp_path / "failure", tail, returncode=2)

    assert reason == "AlgorithmError: train.py: error: hyperparameter label_smoothing=1.5 is out of range"


def test_failure_reason_does_not_repeat_an_error_that_output_failure_holds(tmp_path: Path) -> None:
    (tmp_path / "failure").write_text("ValueError: SM_CHANNEL_TRAIN /opt/ml/input/data/train holds no MNIST files")
    tail = ["ValueError: SM_CHANNEL_TRAIN /opt/ml/input/data/train holds no MNIST files"]

    reason = job_logs.failure_reason(tmp_path / "failure", tail, returncode=1)

    assert reason == "AlgorithmError: ValueError: SM_CHANNEL_TRAIN /opt/ml/input/data/train holds no MNIST files"


def test_failure_reason_without_file_or_exception_names_the_exit_status(tmp_path: Path) -> None:
    reason = job_logs.failure_reason(tmp_path / "failure", ["Killed"], returncode=3)

    assert reason == "AlgorithmError: the training process exited with status 3; see the job's log"


def test_failure_reason_is_cut_to_sagemakers_1024_characters(tmp_path: Path) -> None:
    (tmp_path / "failure").write_text("RuntimeError: " + "x" * 5000)

    reason = job_logs.failure_reason(tmp_path / "failure", [], returncode=1)

    assert len(reason) == job_logs.FAILURE_REASON_LIMIT == 1024
    assert reason.startswith("AlgorithmError: RuntimeError: xxx")

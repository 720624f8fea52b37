"""Training jobs of the local SageMaker (tools/local_sagemaker/training_jobs.py): status transitions, the races
between StopTrainingJob and the end of a job, and the Create/Stop/UpdateTrainingJob overrides run in this
process against moto's mock, with jobs small enough to take a second."""

from __future__ import annotations

import dataclasses
import json
import tarfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import moto
import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.responses import SageMakerResponse

from local_sagemaker import training_jobs
from local_sagemaker.training_jobs import Outcome, TrainingJobStatus
from support import TEST_CREDENTIALS, wait_for

REQUEST = {"AlgorithmSpecification": {"TrainingInputMode": "File"}, "Environment": {"A": "1"}}
COMPLETED = Outcome("Completed", "Completed", "Training job completed")
HOOK_TIMEOUT_S = 30  # only a broken test waits this long: every wait below ends on an event
BUCKET = "training-jobs-tests"
ENDED = ("Completed", "Failed", "Stopped")
OVERRIDDEN = ("create_training_job", "stop_training_job", "update_training_job")


class Job:
    """The fields of moto's FakeTrainingJob that TrainingJobStatus reads and writes."""

    def __init__(self) -> None:
        self.model_artifacts = {"S3ModelArtifacts": "s3://bucket/job/output/model.tar.gz"}


class PausingJob(Job):
    """A job whose field `watched`, when one chosen thread reads it, holds that thread until the test resumes it."""

    def __init__(self, watched: str) -> None:
        super().__init__()
        self.watched = watched
        self.paused_thread: threading.Thread | None = None
        self.reached, self.resume = threading.Event(), threading.Event()

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name == super().__getattribute__("watched") and threading.current_thread() is self.paused_thread:
            self.paused_thread = None  # only the first read pauses
            self.reached.set()
            if not self.resume.wait(HOOK_TIMEOUT_S):
                raise AssertionError("the test never resumed the paused thread")
        return value


class ObservedLock:
    """A lock that records when a thread has had to wait for it."""

    def __init__(self) -> None:
        self.lock, self.contended = threading.Lock(), threading.Event()

    def __enter__(self) -> None:
        if not self.lock.acquire(blocking=False):
            self.contended.set()
            self.lock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.lock.release()


class Caller(threading.Thread):
    """Calls a function in its own thread and keeps what it raised."""

    def __init__(self, function: Callable[..., object], *args: object) -> None:
        super().__init__(daemon=True)
        self.function, self.args = function, args
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.function(*self.args)
        except BaseException as error:  # kept for the test to assert on
            self.error = error


def started_status(job: Job) -> tuple[TrainingJobStatus, ObservedLock]:
    """A job started InProgress, its status behind an ObservedLock."""
    status = TrainingJobStatus(job)
    status.start(REQUEST)
    lock = status.lock = ObservedLock()
    return status, lock


def race(job: PausingJob, lock: ObservedLock, first: Caller, second: Caller) -> None:
    """Pause `first` at its read of the watched field, run `second` until it ends or waits for the lock, resume."""
    job.paused_thread = first
    first.start()
    assert job.reached.wait(HOOK_TIMEOUT_S), "the first call never read the watched field"
    second.start()
    wait_for(lambda: lock.contended.is_set() or not second.is_alive(), "the second call to end or wait", HOOK_TIMEOUT_S)
    job.resume.set()
    for caller in (first, second):
        caller.join(HOOK_TIMEOUT_S)
        assert not caller.is_alive()


def test_a_stop_checked_just_before_the_job_ends_leaves_the_job_ended() -> None:
    job = PausingJob(watched="training_job_status")
    status, lock = started_status(job)
    stop, finish = Caller(status.request_stop), Caller(status.finish, COMPLETED, [], 1.0)

    race(job, lock, stop, finish)  # the stop has seen InProgress when the job's end arrives

    assert stop.error is None and finish.error is None  # the stop came first: it was accepted
    assert job.training_job_status == "Completed"  # and the end is final: nobody waits on "Stopping" forever
    assert [transition["Status"] for transition in job.secondary_status_transitions] == [
        "Starting", "Stopping", "Completed"
    ]


def test_a_stop_after_the_end_is_rejected_as_sagemaker_rejects_it() -> None:
    job = Job()
    status, _ = started_status(job)
    status.finish(COMPLETED, [], 1.0)

    with pytest.raises(ValidationError, match=r"rejected because the training job is in status Completed"):
        status.request_stop()

    assert job.training_job_status == "Completed"
    assert [transition["Status"] for transition in job.secondary_status_transitions] == ["Starting", "Completed"]


def test_two_threads_moving_the_secondary_status_lose_no_transition() -> None:
    job = PausingJob(watched="secondary_status_transitions")
    status, lock = started_status(job)
    training = Caller(status.set_secondary, "Training", "Training in progress")
    stopping = Caller(status.request_stop)

    race(job, lock, training, stopping)  # the run thread has read the transitions when the stop arrives

    assert training.error is None and stopping.error is None
    assert [transition["Status"] for transition in job.secondary_status_transitions] == [
        "Starting", "Training", "Stopping"
    ]
    assert job.training_job_status == "Stopping"


def test_transitions_close_one_another_and_the_last_one_closes_itself() -> None:
    job = Job()
    status, _ = started_status(job)
    for name in ("Downloading", "Training", "Uploading"):
        status.set_secondary(name, f"{name} ...")
    status.training_started()
    started_at = job.training_start_time
    status.training_started()  # a retried attempt keeps the first start time

    status.finish(COMPLETED, [{"MetricName": "train:loss", "Value": 0.25}], container_seconds=2.4)

    transitions = job.secondary_status_transitions
    assert [transition["Status"] for transition in transitions] == [
        "Starting", "Downloading", "Training", "Uploading", "Completed"
    ]
    assert all(earlier["EndTime"] == later["StartTime"] for earlier, later in zip(transitions, transitions[1:]))
    assert transitions[-1]["EndTime"] == transitions[-1]["StartTime"]
    assert (job.training_job_status, job.secondary_status) == ("Completed", "Completed")
    assert job.training_start_time == started_at
    assert (job.training_time_in_seconds, job.billable_time_in_seconds) == (3, 3)
    assert job.final_metric_data_list == [{"MetricName": "train:loss", "Value": 0.25}]
    assert job.environment == {"A": "1"} and job.failure_reason is None


def test_a_failed_job_reports_its_reason_and_no_model() -> None:
    job = Job()
    status, _ = started_status(job)

    status.finish(Outcome("Failed", "Failed", "Training job failed", "AlgorithmError: ValueError: x"), [], 0.2)

    assert (job.training_job_status, job.failure_reason, job.model_artifacts) == (
        "Failed", "AlgorithmError: ValueError: x", None
    )
    assert job.training_time_in_seconds == 1  # SageMaker bills at least a second


# --- the overrides, in this process against moto's mock ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LocalSageMaker:
    """training_jobs installed over moto's in-process mock, with clients of it."""

    jobs: training_jobs.TrainingJobs
    sagemaker: BaseClient
    s3: BaseClient
    logs: BaseClient


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalSageMaker]:
    """Training jobs that run their entry script directly (no namespace), over moto's in-process mock."""
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # The job's own thread makes its clients from the environment, as the endpoint's jobs do.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_CREDENTIALS["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", TEST_CREDENTIALS["region_name"])
    with moto.mock_aws():
        jobs = training_jobs.install(tmp_path / "state", use_namespace=False)
        try:
            session = boto3.session.Session(**TEST_CREDENTIALS)
            clients = (session.client(service) for service in ("sagemaker", "s3", "logs"))
            local = LocalSageMaker(jobs, *clients)
            local.s3.create_bucket(Bucket=BUCKET)
            yield local
        finally:
            jobs.shutdown()  # no job thread may outlive the mock


def create_job(local: LocalSageMaker, name: str, script: str, metric_regex: str = r"loss=([0-9.]+);") -> None:
    """A job whose `code` channel holds fit.py (script) and whose `train` channel holds one file."""
    objects = {
        "data/train/digits.txt": "0123456789",
        "code/fit.py": script,
        "drivers/sourcecode.json": json.dumps({"entry_script": "fit.py"}),
    }
    for key, body in objects.items():
        local.s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())
    channels = {channel: f"s3://{BUCKET}/{prefix}" for channel, prefix in
                (("train", "data/train/"), ("code", "code/"), ("sm_drivers", "drivers/"))}
    local.sagemaker.create_training_job(
        TrainingJobName=name,
        AlgorithmSpecification={
            "TrainingImage": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch:2.14-cpu",
            "TrainingInputMode": "File",
            "ContainerEntrypoint": ["/bin/bash", "/opt/ml/input/data/sm_drivers/sm_train.sh"],
            "MetricDefinitions": [{"Name": "train:loss", "Regex": metric_regex}],
        },
        RoleArn="arn:aws:iam::123456789012:role/SageMakerExecutionRole",
        HyperParameters={"epochs": "2"},
        InputDataConfig=[
            {"ChannelName": channel, "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri}}}
            for channel, uri in channels.items()
        ],
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/output"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        StoppingCondition={"MaxRuntimeInSeconds": 600},
    )


def ended(local: LocalSageMaker, name: str) -> dict[str, Any]:
    """The job's description once it has ended."""
    def description() -> dict[str, Any] | None:
        job = local.sagemaker.describe_training_job(TrainingJobName=name)
        return job if job["TrainingJobStatus"] in ENDED else None

    return wait_for(description, f"training job {name} to end", timeout_s=120)


def log_lines(local: LocalSageMaker, name: str) -> list[str]:
    """Every message of the job's log streams, in order (none before the first job has created the log group)."""
    try:
        streams = local.logs.describe_log_streams(
            logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=f"{name}/"
        )
    except local.logs.exceptions.ResourceNotFoundException:
        return []
    return [
        event["message"]
        for stream in streams["logStreams"]
        for event in local.logs.get_log_events(
            logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream["logStreamName"], startFromHead=True
        )["events"]
    ]


FIT = textwrap.dedent("""
    import json, os, pathlib, sys
    print("channel", sorted(os.listdir(os.environ["SM_CHANNEL_TRAIN"])), "hosts", json.loads(os.environ["SM_HOSTS"]))
    print("arguments", " ".join(sys.argv[1:]))
    pathlib.Path(os.environ["SM_MODEL_DIR"], "model.pt").write_text("weights")
    print("loss=0.5;")
    print("loss=0.25;")
""")


def test_a_job_runs_its_entry_script_and_ends_completed_with_metrics_log_and_model(
    local: LocalSageMaker, tmp_path: Path
) -> None:
    create_job(local, "job-ok", FIT)

    job = ended(local, "job-ok")

    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert [transition["Status"] for transition in job["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Uploading", "Completed"
    ]
    assert [(metric["MetricName"], metric["Value"]) for metric in job["FinalMetricDataList"]] == [("train:loss", 0.25)]
    lines = log_lines(local, "job-ok")
    assert "channel ['digits.txt'] hosts ['algo-1']" in lines and "arguments --epochs 2" in lines
    local.s3.download_file(BUCKET, "output/job-ok/output/model.tar.gz", str(tmp_path / "model.tar.gz"))
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        assert tar.extractfile("model.pt").read() == b"weights"


def test_a_script_that_raises_fails_the_job_with_its_error(local: LocalSageMaker) -> None:
    create_job(local, "job-failing", 'print("loading")\nraise ValueError("no digits in the train channel")\n')

    job = ended(local, "job-failing")

    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"] == "AlgorithmError: ValueError: no digits in the train channel"
    assert "ModelArtifacts" not in job


def test_stop_sends_sigterm_to_the_script_and_a_later_stop_is_rejected(local: LocalSageMaker) -> None:
    waits_for_sigterm = textwrap.dedent("""
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: (print("saving a checkpoint", flush=True), sys.exit(143)))
        print("ready", flush=True)
        while True:
            time.sleep(1)
    """)
    create_job(local, "job-stopped", waits_for_sigterm)
    wait_for(lambda: "ready" in log_lines(local, "job-stopped"), "the script's SIGTERM handler", timeout_s=120)

    local.sagemaker.stop_training_job(TrainingJobName="job-stopped")
    job = ended(local, "job-stopped")

    assert job["TrainingJobStatus"] == "Stopped"
    assert [transition["Status"] for transition in job["SecondaryStatusTransitions"]][-3:] == [
        "Stopping", "Uploading", "Stopped"
    ]
    assert log_lines(local, "job-stopped")[-1] == "saving a checkpoint"
    with pytest.raises(ClientError, match=r"ValidationException.*in status Stopped"):
        local.sagemaker.stop_training_job(TrainingJobName="job-stopped")


def test_a_bad_metric_regex_refuses_the_request_and_runs_nothing(local: LocalSageMaker) -> None:
    with pytest.raises(ClientError, match=r"ValidationException.*'train:loss': invalid regex"):
        create_job(local, "job-bad-regex", FIT, metric_regex="loss=([0-9.]+;")

    assert local.jobs.runs == {}


def test_stopping_an_unknown_job_is_a_validation_error(local: LocalSageMaker) -> None:
    with pytest.raises(ClientError, match=r"ValidationException"):
        local.sagemaker.stop_training_job(TrainingJobName="never-created")


def test_update_records_a_warm_pools_keep_alive_period(local: LocalSageMaker) -> None:
    create_job(local, "job-warm", FIT)
    ended(local, "job-warm")

    local.sagemaker.update_training_job(TrainingJobName="job-warm", ResourceConfig={"KeepAlivePeriodInSeconds": 900})

    resource_config = local.sagemaker.describe_training_job(TrainingJobName="job-warm")["ResourceConfig"]
    assert resource_config["KeepAlivePeriodInSeconds"] == 900
    assert resource_config["InstanceType"] == "ml.m5.xlarge"


def test_shutdown_puts_moto_s_own_responses_back(tmp_path: Path) -> None:
    before = {name: vars(SageMakerResponse).get(name) for name in OVERRIDDEN}
    with moto.mock_aws():
        jobs = training_jobs.install(tmp_path, use_namespace=False)
        patched = {name: vars(SageMakerResponse).get(name) for name in OVERRIDDEN}
        jobs.shutdown()

    assert all(patched[name] is not None and patched[name] is not before[name] for name in OVERRIDDEN)
    assert {name: vars(SageMakerResponse).get(name) for name in OVERRIDDEN} == before

"""Training jobs of the local SageMaker (tools/local_sagemaker/training_jobs.py): status transitions, the races
between StopTrainingJob and the end of a job, and the Create/Stop/UpdateTrainingJob overrides run in this
process against moto's mock, with jobs small enough to take a second."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from moto.sagemaker.exceptions import ValidationError

from local_sagemaker.training_jobs import Outcome, TrainingJobStatus
from support import wait_for

REQUEST = {"AlgorithmSpecification": {"TrainingInputMode": "File"}, "Environment": {"A": "1"}}
COMPLETED = Outcome("Completed", "Completed", "Training job completed")
HOOK_TIMEOUT_S = 30  # only a broken test waits this long: every wait below ends on an event


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
    wait_for(lambda: lock.contended.is_set() or not second.is_alive(), "the second call to end or to wait", HOOK_TIMEOUT_S)
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

"""Training jobs behind the local AWS endpoint: they really run, fail, retry and stop as SageMaker's do.

Each test starts a job with SDK 3's ModelTrainer, as notebook 04 does, and checks what SageMaker would
show: the job's description, its CloudWatch log streams and the objects it left in S3. The jobs run
code/train.py on the mirror's real digits; sizes are small so that each job takes seconds.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import torch
from sagemaker.core.resources import TrainingJob
from sagemaker.core.training.configs import CheckpointConfig, Compute, InputData, RetryStrategy, SourceCode
from sagemaker.core.utils.exceptions import FailedStatusError
from sagemaker.train.model_trainer import ModelTrainer

import mnist_s3
import sagemaker_job
from local_aws import LocalAWS
from mnist_data import load_split
from mnist_model import load_model, predict
from support import aws_clients, epochs_in, wait_for

REPO = Path(__file__).resolve().parents[1]
# Never pulled: the local runner runs the job's command with this environment's Python.
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch:2.14-cpu-amzn2023-sagemaker"
TIMEOUT_S = 300
SIGTERM_CAUGHT = 1 << (signal.SIGTERM - 1)  # the SIGTERM bit of /proc/<pid>/status "SigCgt"


def clients(local_aws: LocalAWS) -> tuple:
    """S3 and CloudWatch Logs clients of the local endpoint."""
    return aws_clients(local_aws.endpoint_url, "s3", "logs")


@pytest.fixture(scope="module")
def channels(local_aws: LocalAWS, mirror_dir: Path) -> list[InputData]:
    """The mirror's digits in S3, as the `train` and `test` input channels of a job."""
    s3, _ = clients(local_aws)
    uris = mnist_s3.upload_mnist(mirror_dir, local_aws.bucket, "training-jobs/mnist", s3_client=s3, progress=False)
    return [InputData(channel_name=name, data_source=uri) for name, uri in uris.items()]


def train_py_without_requirements() -> SourceCode:
    """code/ as notebook 04 uploads it, minus the pip step (this environment already has the packages)."""
    return sagemaker_job.source_code(REPO / "code").model_copy(update={"requirements": None})


def model_trainer(base_job_name: str, source_code: SourceCode, hyperparameters: dict | None = None) -> ModelTrainer:
    """A CPU job as notebook 04 builds it: role, bucket and region come from the endpoint's SDK config."""
    return ModelTrainer(
        training_image=IMAGE,
        source_code=source_code,
        compute=Compute(instance_type="ml.m5.xlarge", instance_count=1),
        hyperparameters=hyperparameters or {},
        base_job_name=base_job_name,
    )


def log_streams(local_aws: LocalAWS, job_name: str) -> list[str]:
    """The text of each of the job's log streams: one stream per attempt, in order."""
    _, logs = clients(local_aws)
    streams = logs.describe_log_streams(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=f"{job_name}/", orderBy="LogStreamName"
    )["logStreams"]
    assert all(re.fullmatch(rf"{job_name}/algo-1-\d+", stream["logStreamName"]) for stream in streams), streams
    return [
        "\n".join(event["message"] for event in logs.get_log_events(
            logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream["logStreamName"], startFromHead=True
        )["events"])
        for stream in streams
    ]


def s3_keys(local_aws: LocalAWS, uri: str) -> list[str]:
    """Keys under an S3 URI, relative to it."""
    s3, _ = clients(local_aws)
    bucket, prefix = urlsplit(uri).netloc, urlsplit(uri).path.lstrip("/").rstrip("/") + "/"
    contents = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"][len(prefix):] for item in contents)


def training_process(job_name: str) -> psutil.Process | None:
    """The job's train.py process (found by the TRAINING_JOB_NAME the runner gives the container)."""
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "train.py" in (process.info["cmdline"] or []) and process.environ().get("TRAINING_JOB_NAME") == job_name:
                return process
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def catches_sigterm(process: psutil.Process) -> bool:
    """Whether the process has a SIGTERM handler: Lightning installs one when training starts."""
    try:
        status = Path(f"/proc/{process.pid}/status").read_text()
    except FileNotFoundError:
        return False
    return bool(int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, flags=re.MULTILINE).group(1), 16) & SIGTERM_CAUGHT)


def test_a_script_that_raises_fails_the_job_with_its_error(local_aws_env: LocalAWS, tmp_path: Path) -> None:
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    (source_dir / "broken.py").write_text('print("loading data")\nraise ValueError("no digits in the train channel")\n')
    trainer = model_trainer("test-failing", SourceCode(source_dir=str(source_dir), entry_script="broken.py"))

    with pytest.raises(FailedStatusError, match="ValueError: no digits in the train channel"):
        trainer.train(wait=True, logs=True)

    job = TrainingJob.get(trainer._latest_training_job.training_job_name)
    assert job.training_job_status == "Failed"
    assert job.failure_reason.startswith("AlgorithmError: ValueError: no digits in the train channel")
    assert job.secondary_status_transitions[-1].status == "Failed"
    (log,) = log_streams(local_aws_env, job.training_job_name)
    assert "loading data" in log and "Traceback" in log


def test_a_killed_attempt_is_retried_and_resumes_from_its_last_checkpoint(
    local_aws_env: LocalAWS, channels: list[InputData], mirror_dir: Path, tmp_path: Path
) -> None:
    epochs = 4
    trainer = model_trainer(
        "test-retry", train_py_without_requirements(), {"epochs": epochs, "max_train_images": 2000, "batch_size": 32}
    ).with_checkpoint_config(CheckpointConfig()).with_retry_strategy(RetryStrategy(maximum_retry_attempts=1))
    trainer.train(input_data_config=channels, wait=False)
    job = trainer._latest_training_job
    job.refresh()
    checkpoints = job.checkpoint_config.s3_uri

    # Once an epoch's checkpoint has reached S3, the instance "is lost": SIGKILL, no chance to save anything.
    wait_for(lambda: "last.ckpt" in s3_keys(local_aws_env, checkpoints), "the first checkpoint in S3", TIMEOUT_S)
    wait_for(lambda: training_process(job.training_job_name), "the training process", TIMEOUT_S).kill()
    job.wait(poll=1, timeout=TIMEOUT_S)

    assert job.training_job_status == "Completed"
    statuses = [transition.status for transition in job.secondary_status_transitions]
    assert statuses.count("Training") == 2 and "Restarting" in statuses
    first, second = log_streams(local_aws_env, job.training_job_name)
    assert epochs_in(first)[0] == 1
    resumed = epochs_in(second)
    assert 1 not in resumed and resumed == list(range(resumed[0], epochs + 1)), resumed  # continues, ends at 4
    assert "test_acc=" in second
    model_files = sagemaker_job.download_model(job.model_artifacts.s3_model_artifacts, tmp_path / "model")
    model = load_model(tmp_path / "model" / "model.pt")
    images, labels = load_split(mirror_dir, "test")
    assert [path.name for path in model_files] == ["model.pt"]
    assert (predict(model, images) == labels).float().mean() >= 0.8


def test_stop_sends_sigterm_and_the_job_saves_a_checkpoint(
    local_aws: LocalAWS, local_aws_env: LocalAWS, channels: list[InputData], tmp_path: Path
) -> None:
    trainer = model_trainer(
        "test-stop", train_py_without_requirements(), {"epochs": 20, "max_train_images": 4000, "batch_size": 32}
    ).with_checkpoint_config(CheckpointConfig())
    trainer.train(input_data_config=channels, wait=False)
    job = trainer._latest_training_job
    process = wait_for(lambda: training_process(job.training_job_name), "the training process", TIMEOUT_S)
    wait_for(lambda: catches_sigterm(process), "Lightning's SIGTERM handler", TIMEOUT_S)
    # While a job runs, the endpoint still listens on 127.0.0.1 only.
    (endpoint,) = [child for child in psutil.Process().children() if "serve" in child.cmdline()]
    listening = {conn.laddr.ip for conn in endpoint.net_connections("tcp") if conn.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}

    # The test decides the moment of the stop: the script is frozen (SIGSTOP) while the stop's SIGTERM
    # arrives and handles it once it runs again, so the epochs it finished are those of the log at that
    # point (and any line still on its way), however fast the machine.
    process.suspend()
    (log_at_stop,) = log_streams(local_aws_env, job.training_job_name)
    try:
        job.stop()
    finally:
        process.resume()
    job.wait(poll=1, timeout=TIMEOUT_S)

    assert job.training_job_status == "Stopped"
    assert "Stopping" in [transition.status for transition in job.secondary_status_transitions]
    (log,) = log_streams(local_aws_env, job.training_job_name)
    finished, finished_at_stop = epochs_in(log), epochs_in(log_at_stop)
    assert finished == list(range(1, len(finished) + 1)) and finished[: len(finished_at_stop)] == finished_at_stop
    assert "test_acc=" not in log and "Stopped by SIGTERM; the interrupted epoch is saved" in log
    assert "last.ckpt" in s3_keys(local_aws, job.checkpoint_config.s3_uri)
    s3, _ = clients(local_aws)
    checkpoints = urlsplit(job.checkpoint_config.s3_uri)
    s3.download_file(checkpoints.netloc, f"{checkpoints.path.strip('/')}/last.ckpt", str(tmp_path / "last.ckpt"))
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True, map_location="cpu")
    # The handler's save, the last write of last.ckpt before the final sync ("Stopped by SIGTERM" above): in the
    # epoch after the last finished one (0-based, len(finished)), or in that epoch itself when the signal came
    # during its end (its line printed, not yet counted as finished by Lightning).
    assert checkpoint["epoch"] in (len(finished), len(finished) - 1) and checkpoint["global_step"] > 0
    assert not process.is_running()  # it ended on SIGTERM, long before the grace period's SIGKILL

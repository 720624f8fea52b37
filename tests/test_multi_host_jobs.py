"""Training jobs on two instances behind the local AWS endpoint: hosts algo-1 and algo-2 on a network of their own.

Each job is started with SDK 3's ModelTrainer, as notebook 08 starts one: `Compute(instance_count=2)`, and for
train.py `distributed=Torchrun()` (one process per host: 2 ranks, gloo on the CPU). The checks are what
SageMaker would show: the job's description, one log stream per host, the objects it left in S3.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import signal
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import torch
from sagemaker.core.shapes import StoppingCondition
from sagemaker.core.training.configs import CheckpointConfig, Compute, InputData, RetryStrategy, SourceCode
from sagemaker.core.utils.exceptions import FailedStatusError
from sagemaker.train.distributed import Torchrun
from sagemaker.train.model_trainer import ModelTrainer

import sagemaker_job
from local_aws import LocalAWS
from local_sagemaker import processes
from mnist_data import load_split
from mnist_model import load_model, predict
from support import epochs_in, wait_for
# The one-host tests' image, channels fixture (the mirror's digits in S3), clients and source: the same jobs' pieces.
from test_training_jobs import IMAGE, channels, clients, train_py_without_requirements  # noqa: F401 - channels is a fixture

pytestmark = pytest.mark.skipif(not processes.namespace_permitted(), reason="hosts need namespaces (root and unshare)")

TIMEOUT_S = 300
HOSTS = ("algo-1", "algo-2")
IMAGES, BATCH = 2048, 64
STEPS_PER_EPOCH_ONE_HOST = IMAGES // BATCH  # a one-host run takes 32 steps per epoch; each of two hosts 16


def two_host_trainer(
    base_job_name: str, source_code: SourceCode, hyperparameters: dict, instance_count: int = len(HOSTS), **options: object
) -> ModelTrainer:
    """A CPU job on two instances (or instance_count), as notebook 08 builds it."""
    return ModelTrainer(
        training_image=IMAGE,
        source_code=source_code,
        compute=Compute(instance_type="ml.m5.xlarge", instance_count=instance_count),
        hyperparameters=hyperparameters,
        base_job_name=base_job_name,
        **options,
    )


def host_streams(local_aws: LocalAWS, job_name: str) -> list[tuple[str, list[tuple[int, str]]]]:
    """Each of the job's log streams, oldest first: its host, and its events as (timestamp in ms, message)."""
    _, logs = clients(local_aws)
    streams = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=f"{job_name}/")
    names = sorted((stream["logStreamName"] for stream in streams["logStreams"]), key=lambda name: (name.rsplit("-", 1)[1], name))
    result = []
    for name in names:
        match = re.fullmatch(rf"{re.escape(job_name)}/(algo-\d+)-\d+", name)
        assert match, f"{name} is not named <job>/algo-K-<timestamp>"
        events = logs.get_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=name, startFromHead=True)["events"]
        result.append((match.group(1), [(event["timestamp"], event["message"]) for event in events]))
    return result


def text(events: list[tuple[int, str]]) -> str:
    """A stream's messages as one text."""
    return "\n".join(message for _, message in events)


def s3_checkpoint(local_aws: LocalAWS, checkpoint_uri: str, tmp_path: Path) -> dict | None:
    """The job's last.ckpt from S3, loaded as train.py loads it; None while there is none."""
    s3, _ = clients(local_aws)
    bucket, prefix = urlsplit(checkpoint_uri).netloc, urlsplit(checkpoint_uri).path.strip("/")
    if s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/last.ckpt").get("KeyCount", 0) == 0:
        return None
    s3.download_file(bucket, f"{prefix}/last.ckpt", str(tmp_path / "last.ckpt"))
    return torch.load(tmp_path / "last.ckpt", weights_only=True, map_location="cpu")


def job_processes(job_name: str) -> list[psutil.Process]:
    """The processes that run for the job (the runner gives each container TRAINING_JOB_NAME)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("TRAINING_JOB_NAME") == job_name:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def host_process(job_name: str, host: str, program: str) -> psutil.Process | None:
    """A process of one host of the job whose command line names `program`."""
    for process in job_processes(job_name):
        try:
            if process.environ().get("SM_CURRENT_HOST") == host and any(program in part for part in process.cmdline()):
                return process
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return None


def mirror_accuracy(model_path: Path, mirror_dir: Path) -> float:
    """The accuracy of a model file on the mirror's 1,000 held-out real digits."""
    images, labels = load_split(mirror_dir, "test")
    return (predict(load_model(model_path), images) == labels).float().mean().item()


# --- a job on two hosts that completes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_host_job(local_aws: LocalAWS, channels: list[InputData], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """train.py on two hosts under Torchrun (one process each), two epochs of 2,048 digits; waited for."""
    with pytest.MonkeyPatch.context() as environment:
        for name, value in local_aws.env.items():  # the SDK finds the endpoint through these
            environment.setenv(name, value)
        trainer = two_host_trainer(
            "test-two-hosts", train_py_without_requirements(), {"epochs": 2, "max_train_images": IMAGES, "batch_size": BATCH},
            distributed=Torchrun(),
        ).with_checkpoint_config(CheckpointConfig())
        trainer.train(input_data_config=channels, wait=False)
        job = sagemaker_job.latest_job(trainer)
        job.wait(poll=1, timeout=TIMEOUT_S)
    work = tmp_path_factory.mktemp("two-hosts")
    return {"job": job, "streams": host_streams(local_aws, job.training_job_name), "work": work,
            "checkpoint": s3_checkpoint(local_aws, job.checkpoint_config.s3_uri, work)}


def test_a_two_host_job_completes_with_one_log_stream_per_host_holding_epoch_lines(two_host_job: dict) -> None:
    job, streams = two_host_job["job"], two_host_job["streams"]
    assert job.training_job_status == "Completed", job.failure_reason
    assert [host for host, _ in streams] == list(HOSTS)
    epoch_lines = [[line for _, line in events if line.startswith("epoch=")] for _, events in streams]
    assert [epochs_in("\n".join(lines)) for lines in epoch_lines] == [[1, 2], [1, 2]]
    assert epoch_lines[0] == epoch_lines[1]  # one training: the same metrics, reduced over both hosts


def test_the_two_host_model_loads_as_plain_weights_and_recognises_held_out_digits(
    local_aws_env: LocalAWS, two_host_job: dict, mirror_dir: Path
) -> None:
    work = two_host_job["work"]
    files = sagemaker_job.download_model(two_host_job["job"].model_artifacts.s3_model_artifacts, work / "model")

    assert [path.name for path in files] == ["model.pt"]  # written by rank 0 alone, though both hosts pack model/
    assert mirror_accuracy(work / "model" / "model.pt", mirror_dir) >= 0.90


def test_each_host_trains_half_the_steps_of_a_one_host_run(two_host_job: dict) -> None:
    # A one-host run of the same data and epochs takes 2 x 32 steps (tests/test_distributed.py runs one and
    # a two-process run side by side); each host here took half of them.
    assert two_host_job["checkpoint"]["global_step"] == 2 * STEPS_PER_EPOCH_ONE_HOST // 2


# --- torchrun on one host -------------------------------------------------------------------------------------

# Two processes on one host meet at torchrun's default rendezvous, 127.0.0.1:29500, then add up their ranks.
# Both ranks share the host's stdout, unbuffered as in SageMaker's images, where print() writes a line and its
# newline in two calls: each rank writes its line in one call, so that two lines printed at once stay two.
TWO_RANKS = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    dist.init_process_group("gloo")
    total = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(total)
    sys.stdout.write(f"rank {dist.get_rank()} of {dist.get_world_size()}: sum of ranks {total.item():g}\\n")
    dist.destroy_process_group()
""")


def test_a_one_host_torchrun_job_meets_on_its_loopback_and_completes(local_aws_env: LocalAWS, tmp_path: Path) -> None:
    (tmp_path / "two_ranks.py").write_text(TWO_RANKS)
    trainer = two_host_trainer(
        "test-one-host-torchrun", SourceCode(source_dir=str(tmp_path), entry_script="two_ranks.py"), {},
        instance_count=1, distributed=Torchrun(process_count_per_node=2),
    )
    trainer.train(wait=False)
    job = sagemaker_job.latest_job(trainer)
    job.wait(poll=1, timeout=TIMEOUT_S)

    assert job.training_job_status == "Completed", job.failure_reason
    ((host, events),) = host_streams(local_aws_env, job.training_job_name)
    assert host == "algo-1"
    assert sorted(line for _, line in events if line.startswith("rank ")) == [
        "rank 0 of 2: sum of ranks 1", "rank 1 of 2: sum of ranks 1"]


# --- what each host sees --------------------------------------------------------------------------------------

SHOW_HOST = textwrap.dedent("""
    import json, os, socket
    names = ("SM_HOSTS", "SM_CURRENT_HOST", "SM_HOST_COUNT", "SM_CURRENT_HOST_RANK")
    config = json.load(open("/opt/ml/input/config/resourceconfig.json"))
    print("HOST " + json.dumps({"env": {name: os.environ[name] for name in names}, "resourceconfig": config,
                                "hostname": socket.gethostname()}))
""")


def test_each_host_sees_its_own_host_values_in_sm_variables_and_resourceconfig(local_aws_env: LocalAWS, tmp_path: Path) -> None:
    (tmp_path / "show_host.py").write_text(SHOW_HOST)
    trainer = two_host_trainer("test-host-values", SourceCode(source_dir=str(tmp_path), entry_script="show_host.py"), {})
    trainer.train(wait=False)
    job = sagemaker_job.latest_job(trainer)
    job.wait(poll=1, timeout=TIMEOUT_S)

    assert job.training_job_status == "Completed", job.failure_reason
    shown = {}
    for host, events in host_streams(local_aws_env, job.training_job_name):
        (line,) = [message for _, message in events if message.startswith("HOST ")]
        shown[host] = json.loads(line.removeprefix("HOST "))
    for rank, host in enumerate(HOSTS):
        assert shown[host]["env"] == {"SM_HOSTS": json.dumps(list(HOSTS)), "SM_CURRENT_HOST": host, "SM_HOST_COUNT": "2",
                                      "SM_CURRENT_HOST_RANK": str(rank)}
        config = shown[host]["resourceconfig"]
        assert (config["current_host"], config["hosts"], config["current_instance_type"]) == (host, list(HOSTS), "ml.m5.xlarge")
        assert config["network_interface_name"] == "lo"  # the interface of the hosts' private network here
        assert shown[host]["hostname"] == host


# --- a host that fails ------------------------------------------------------------------------------------------

# Both hosts meet at torch's TCPStore on algo-1; algo-2 then raises, while algo-1 waits for a key that algo-2 would
# have set, for up to an hour: a peer that nothing but the end of the job can release.
FAIL_ON_ALGO_2 = textwrap.dedent("""
    import datetime, os, torch.distributed as dist
    rank = int(os.environ["SM_CURRENT_HOST_RANK"])
    store = dist.TCPStore("algo-1", 29400, world_size=2, is_master=rank == 0, timeout=datetime.timedelta(hours=1))
    print(f"joined as rank {rank}", flush=True)
    if rank == 1:
        raise ValueError("algo-2 cannot go on")
    store.wait(["algo-2 done"])
""")


def test_a_failing_host_fails_the_job_within_seconds_and_leaves_no_process(local_aws_env: LocalAWS, tmp_path: Path) -> None:
    (tmp_path / "fail_on_algo_2.py").write_text(FAIL_ON_ALGO_2)
    trainer = two_host_trainer(
        "test-failing-host", SourceCode(source_dir=str(tmp_path), entry_script="fail_on_algo_2.py"), {},
        stopping_condition=StoppingCondition(max_runtime_in_seconds=3600),
    )
    trainer.train(wait=False)
    job = sagemaker_job.latest_job(trainer)
    with pytest.raises(FailedStatusError, match="ValueError: algo-2 cannot go on"):
        job.wait(poll=1, timeout=TIMEOUT_S)

    assert job.training_job_status == "Failed"
    assert job.failure_reason.startswith("AlgorithmError: ValueError: algo-2 cannot go on"), job.failure_reason
    streams = dict(host_streams(local_aws_env, job.training_job_name))
    assert "joined as rank 0" in text(streams["algo-1"]) and "ValueError: algo-2 cannot go on" in text(streams["algo-2"])
    (raised_ms,) = [ms for ms, message in streams["algo-2"] if message.startswith("ValueError: algo-2 cannot go on")]
    ended = job.training_end_time
    ended_ms = (ended if ended.tzinfo else ended.replace(tzinfo=datetime.timezone.utc)).timestamp() * 1000
    failed_after_s = (ended_ms - raised_ms) / 1000
    print(f"\nalgo-2 raised; the job was Failed {failed_after_s:.2f} s later")
    assert 0 <= failed_after_s < 10  # algo-1, blocked in the barrier, was killed at once: not at MaxRuntime
    assert job_processes(job.training_job_name) == []


# --- a lost host, a retry, then StopTrainingJob ------------------------------------------------------------------


def freeze_training(job_name: str) -> list[psutil.Process]:
    """SIGSTOP every train.py process (torchrun and its workers) of the job: the test decides what happens next."""
    frozen = [process for process in job_processes(job_name) if "train.py" in " ".join(process.cmdline())]
    for process in frozen:
        process.suspend()
    return frozen


def thaw(frozen: list[psutil.Process]) -> None:
    """SIGCONT what is still there of the frozen processes."""
    for process in frozen:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.resume()


def test_a_lost_host_restarts_the_whole_job_from_s3_and_a_stop_then_ends_both_hosts_with_last_ckpt(
    local_aws_env: LocalAWS, channels: list[InputData], tmp_path: Path
) -> None:
    epochs = 8
    trainer = two_host_trainer(
        "test-lost-host", train_py_without_requirements(), {"epochs": epochs, "max_train_images": IMAGES, "batch_size": BATCH},
        distributed=Torchrun(),
    ).with_checkpoint_config(CheckpointConfig()).with_retry_strategy(RetryStrategy(maximum_retry_attempts=1))
    trainer.train(input_data_config=channels, wait=False)
    job = sagemaker_job.latest_job(trainer)
    name, steps_per_epoch = job.training_job_name, STEPS_PER_EPOCH_ONE_HOST // len(HOSTS)

    # Once an epoch's checkpoint is in S3, freeze the training, then lose algo-2: SIGKILL to its whole container.
    wait_for(lambda: s3_checkpoint(local_aws_env, job.checkpoint_config.s3_uri, tmp_path), "a checkpoint in S3", TIMEOUT_S)
    frozen = freeze_training(name)
    driver = wait_for(lambda: host_process(name, "algo-2", "torchrun_driver.py"), "algo-2's torchrun driver", TIMEOUT_S)
    os.killpg(os.getpgid(driver.pid), signal.SIGKILL)
    thaw(frozen)

    # The whole job restarts; once its algo-1 prints an epoch line, stop it (the ranks frozen meanwhile).
    def resumed_epoch() -> int | None:
        streams = [events for host, events in host_streams(local_aws_env, name) if host == "algo-1"]
        return epochs_in(text(streams[1]))[0] if len(streams) == 2 and epochs_in(text(streams[1])) else None

    first_resumed_epoch = wait_for(resumed_epoch, "an epoch line of the second attempt", TIMEOUT_S)
    frozen = freeze_training(name)
    try:
        job.stop()
    finally:
        thaw(frozen)
    job.wait(poll=1, timeout=TIMEOUT_S)

    statuses = [transition.status for transition in job.secondary_status_transitions]
    assert job.training_job_status == "Stopped" and statuses.count("Training") == 2 and "Restarting" in statuses
    streams = host_streams(local_aws_env, name)
    assert [host for host, _ in streams] == [*HOSTS, *HOSTS]  # each host, in each attempt
    (_, first), (_, second) = [stream for stream in streams if stream[0] == "algo-1"]
    assert epochs_in(text(first))[0] == 1 and first_resumed_epoch > 1  # resumed from the checkpoint in S3
    assert "Stopped by SIGTERM; the interrupted epoch is saved" in text(second) and "test_acc=" not in text(second)
    checkpoint = s3_checkpoint(local_aws_env, job.checkpoint_config.s3_uri, tmp_path)
    # The stop's save, in the second attempt: past the epochs the first attempt finished, before the last epoch's end.
    assert (first_resumed_epoch - 1) * steps_per_epoch < checkpoint["global_step"] < epochs * steps_per_epoch
    assert job_processes(name) == []

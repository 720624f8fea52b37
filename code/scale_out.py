"""Notebook 08's helpers: how DDP divides an epoch, what each host of a job logged, and how two jobs compare.

They run in the notebook (in SageMaker Studio, or offline against the local endpoint), never in the training
container: this module is not among sagemaker_job.CONTAINER_FILES.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import boto3
import torch
from botocore.client import BaseClient
from sagemaker.core.resources import TrainingJob

import sagemaker_job
from mnist_data import MNISTDataModule
from mnist_model import load_model, predict
from mnist_s3 import split_s3_uri
from train import LAST_CHECKPOINT, Hyperparameters

# SDK 3's torchrun driver logs the command it runs on each host.
TORCHRUN_COMMAND = re.compile(r"^Executing command: (torchrun .*)$")
STREAM_NAME = re.compile(r"^(?P<job>.+)/(?P<host>algo-\d+)-(?P<second>\d+)$")


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """How DDP divides one epoch: each of the world's processes trains on its shard, batch_size images per step."""

    train_images: int
    batch_size: int
    hosts: int = 1
    processes_per_host: int = 1

    @property
    def world_size(self) -> int:
        """Processes training one model together (torchrun's WORLD_SIZE)."""
        return self.hosts * self.processes_per_host

    @property
    def global_batch(self) -> int:
        """Images per optimiser step, all processes together: the gradients of each step are averaged over them."""
        return self.batch_size * self.world_size

    @property
    def images_per_process(self) -> int:
        """One process's shard of the epoch (DistributedSampler pads the shards to equal sizes)."""
        return math.ceil(self.train_images / self.world_size)

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch, the same on every process."""
        return math.ceil(self.images_per_process / self.batch_size)


def training_images(train_split: tuple[torch.Tensor, torch.Tensor], hp: Hyperparameters) -> int:
    """How many images train.py trains on per epoch for these hyperparameters (its own split, less validation)."""
    data = MNISTDataModule(
        train_split, val_fraction=hp.val_fraction, max_train_images=hp.max_train_images or None, seed=hp.seed
    )
    data.setup("fit")
    return len(data.splits["train"][1])


def epoch_plans_table(train_images: int, batch_size: int, layouts: dict[str, tuple[int, int]]) -> list[str]:
    """One line per layout (name → hosts, processes per host): processes, global batch, shard and steps per epoch."""
    width = max(len("layout"), *(len(name) for name in layouts))
    lines = [f"{'layout':{width}} {'processes':>9} {'global batch':>12} {'images each':>11} {'steps/epoch':>11}"]
    for name, (hosts, per_host) in layouts.items():
        plan = EpochPlan(train_images, batch_size, hosts, per_host)
        lines.append(f"{name:{width}} {plan.world_size:9} {plan.global_batch:12} {plan.images_per_process:11,} {plan.steps_per_epoch:11}")
    return lines


def host_logs(job: TrainingJob, *, logs_client: BaseClient | None = None) -> dict[str, list[str]]:
    """Each host's log (algo-1, algo-2, ...): the lines of its latest stream, that is of the job's last attempt."""
    latest: dict[str, tuple[int, list[str]]] = {}
    for name, lines in sagemaker_job.job_log_streams(job, logs_client=logs_client).items():
        match = STREAM_NAME.match(name)
        if match is None:
            raise ValueError(f"log stream {name!r} of {job.training_job_name} is not named <job>/algo-K-<seconds>")
        second = int(match["second"])
        if match["host"] not in latest or second > latest[match["host"]][0]:
            latest[match["host"]] = (second, lines)
    return {host: latest[host][1] for host in sorted(latest, key=lambda host: int(host.removeprefix("algo-")))}


def torchrun_command(lines: list[str]) -> str | None:
    """The torchrun command a host ran, as SDK 3's driver logged it; None for a job without Torchrun."""
    for line in lines:
        if match := TORCHRUN_COMMAND.match(line):
            return match[1]
    return None


def world_size(lines: list[str]) -> int:
    """Processes that trained the model: torchrun's --nnodes times --nproc_per_node, 1 without torchrun."""
    command = torchrun_command(lines)
    if command is None:
        return 1
    options = dict(re.findall(r"--(nnodes|nproc_per_node)=(\d+)", command))
    return int(options["nnodes"]) * int(options["nproc_per_node"])


def training_steps(job: TrainingJob, work_dir: Path, *, s3_client: BaseClient | None = None) -> int:
    """The optimiser steps the job took: the global step of the last checkpoint it left in S3."""
    bucket, prefix = split_s3_uri(job.checkpoint_config.s3_uri)
    path = Path(work_dir) / f"{job.training_job_name}-{LAST_CHECKPOINT}"
    path.parent.mkdir(parents=True, exist_ok=True)
    (s3_client or boto3.client("s3")).download_file(bucket, f"{prefix.rstrip('/')}/{LAST_CHECKPOINT}", str(path))
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


@dataclasses.dataclass(frozen=True)
class JobFigures:
    """What one training job took and gave: its layout, global batch, steps, seconds and test accuracy."""

    name: str
    instances: int
    processes: int
    global_batch: int
    steps: int
    training_seconds: int
    billable_instance_seconds: int  # BillableTimeInSeconds is per instance: SageMaker bills it on each
    test_accuracy: float


def job_figures(job: TrainingJob, test_images: torch.Tensor, test_labels: torch.Tensor, work_dir: Path) -> JobFigures:
    """Read a finished job's figures, and score its model on the test digits."""
    work_dir = Path(work_dir) / job.training_job_name
    sagemaker_job.download_model(job.model_artifacts.s3_model_artifacts, work_dir / "model")
    model = load_model(work_dir / "model" / "model.pt")
    processes = world_size(next(iter(host_logs(job).values())))
    batch_size = int(json.loads(job.hyper_parameters.get("batch_size", str(Hyperparameters.batch_size))))
    instances = job.resource_config.instance_count
    return JobFigures(
        name=job.training_job_name,
        instances=instances,
        processes=processes,
        global_batch=batch_size * processes,
        steps=training_steps(job, work_dir),
        training_seconds=job.training_time_in_seconds,
        billable_instance_seconds=job.billable_time_in_seconds * instances,
        test_accuracy=(predict(model, test_images) == test_labels).float().mean().item(),
    )


def comparison_table(figures: list[JobFigures]) -> list[str]:
    """The jobs side by side, one line each."""
    lines = [f"{'job':44} {'instances':>9} {'processes':>9} {'batch':>5} {'steps':>5} {'train s':>7} {'billed s':>8} {'test acc':>8}"]
    for job in figures:
        lines.append(
            f"{job.name:44} {job.instances:9} {job.processes:9} {job.global_batch:5} {job.steps:5} "
            f"{job.training_seconds:7} {job.billable_instance_seconds:8} {job.test_accuracy:8.2%}"
        )
    return lines


def job_cost_usd(job: TrainingJob, usd_per_instance_hour: float) -> float:
    """What the job costs at an hourly price: billable seconds on each of its instances."""
    return job.billable_time_in_seconds * job.resource_config.instance_count * usd_per_instance_hour / 3600


def ddp_benchmark(bench_json: Path) -> dict | None:
    """Section 7 of `make bench` (DDP against one process on this machine's CPUs), or None when bench.json lacks it."""
    path = Path(bench_json)
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    ddp = result.get("sections", {}).get("ddp")
    return None if ddp is None else {"date": result["date"], "machine": result["machine"], **ddp}

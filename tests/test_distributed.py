"""code/train.py under a bare torchrun on this machine (no SageMaker): two processes, one model, Lightning's DDP.

Each run uses the container's folder layout (tests/container_layout.py) and the mirror's real digits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
import torch.nn.functional as F

from container_layout import container_layout
from mnist_data import MNISTDataModule, load_split, normalise
from mnist_model import load_model
from support import epochs_in, free_port, wait_for
from torchrun_probe import image_digest

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "code" / "train.py"
PROBE_SCRIPT = REPO / "tests" / "torchrun_probe.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")
IMAGES, BATCH = 1280, 64  # 10 steps per epoch on each of two ranks: Lightning warns below its 10-step log interval
RUN = ["--epochs", "2", "--max_train_images", str(IMAGES), "--batch_size", str(BATCH)]
STEPS_PER_EPOCH = IMAGES // BATCH  # of one process; each of two ranks takes half
# Long enough that the test's SIGSTOP lands long before the last epoch: 4 epochs of 16 steps per rank.
LONG_RUN = ["--epochs", "4", "--max_train_images", "2048", "--batch_size", str(BATCH)]
LONG_RUN_STEPS_PER_EPOCH = 2048 // BATCH // 2
TIMEOUT_S = 300


def torchrun(processes: int, *command: str) -> list[str]:
    """A one-host torchrun of `processes` workers, meeting on 127.0.0.1 at a free port."""
    return [
        str(TORCHRUN), "--nnodes=1", f"--nproc_per_node={processes}",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", *command,
    ]


def run_environment(ml_dir: Path, mirror_dir: Path) -> dict[str, str]:
    """This process's environment plus the container's layout under ml_dir; gloo on the loopback interface."""
    # torchrun sets OMP_NUM_THREADS=1 itself (with a banner) when it is unset: one thread per process.
    return os.environ | container_layout(ml_dir, mirror_dir) | {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}


def run(command: list[str], environment: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a command to its end, output captured; stdout and stderr as one stream."""
    return subprocess.run(
        command, env=environment, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT_S
    )


def files_under(folder: Path) -> list[str]:
    """The files below a folder, as paths relative to it."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def checkpoint(path: Path) -> dict:
    """A Lightning checkpoint, loaded as train.py loads it (tensors and plain values only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def printed(output: str, name: str) -> list[float]:
    """Every value printed as `name=value;` in a run's output."""
    return [float(value) for value in re.findall(rf"\b{name}=([-+0-9.eE]+);", output)]


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished training run: its /opt/ml folder and its output."""

    ml_dir: Path
    output: str


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path) -> Run:
    """train.py as one process, as today."""
    root = tmp_path_factory.mktemp("one-process")
    completed = run([sys.executable, str(TRAIN_SCRIPT), *RUN], run_environment(root / "ml", mirror_dir), root)
    assert completed.returncode == 0, completed.stdout[-3000:]
    return Run(root / "ml", completed.stdout)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path) -> Run:
    """The same run under `torchrun --nproc_per_node 2`, each rank recording the images it trained on."""
    root = tmp_path_factory.mktemp("two-processes")
    (root / "records").mkdir()
    command = torchrun(2, str(PROBE_SCRIPT), str(root / "records"), *RUN)
    completed = run(command, run_environment(root / "ml", mirror_dir), root)
    assert completed.returncode == 0, completed.stdout[-3000:]
    return Run(root / "ml", completed.stdout)


def rank_records(run: Run) -> list[dict]:
    """What each rank's RecordBatches wrote, by global rank."""
    paths = sorted((run.ml_dir.parent / "records").glob("rank-*.json"))
    return [json.loads(path.read_text()) for path in paths]


def test_two_processes_write_one_model_that_recognises_real_digits(two_processes: Run, mirror_dir: Path) -> None:
    assert files_under(two_processes.ml_dir / "model") == ["model.pt"]
    images, labels = load_split(mirror_dir, "test")

    model = load_model(two_processes.ml_dir / "model" / "model.pt")

    accuracy = (model(normalise(images)).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.85


def test_each_rank_trains_half_the_steps_of_one_process(one_process: Run, two_processes: Run) -> None:
    records = rank_records(two_processes)
    one_steps = checkpoint(one_process.ml_dir / "checkpoints" / "last.ckpt")["global_step"]

    assert one_steps == 2 * STEPS_PER_EPOCH
    assert [record["world_size"] for record in records] == [2, 2]
    assert [record["global_step"] for record in records] == [one_steps // 2, one_steps // 2]
    assert checkpoint(two_processes.ml_dir / "checkpoints" / "last.ckpt")["global_step"] == one_steps // 2
    for record in records:
        assert [len(batches) for batches in record["epochs"].values()] == [STEPS_PER_EPOCH // 2] * 2


def test_ranks_train_on_disjoint_shards_of_the_training_set_reshuffled_each_epoch(two_processes: Run, mirror_dir: Path) -> None:
    data = MNISTDataModule(load_split(mirror_dir, "train"), max_train_images=IMAGES, batch_size=BATCH, seed=42)
    data.setup("fit")
    training_set = {image_digest(image) for image in data.splits["train"][0]}
    assert len(training_set) == IMAGES
    first, second = rank_records(two_processes)

    for epoch in ("1", "2"):
        shards = [[digest for batch in record["epochs"][epoch] for digest in batch] for record in (first, second)]
        assert [len(shard) for shard in shards] == [IMAGES // 2, IMAGES // 2]
        assert set(shards[0]).isdisjoint(shards[1])
        assert set(shards[0]) | set(shards[1]) == training_set
    for record in (first, second):
        epoch_1, epoch_2 = ([d for batch in record["epochs"][epoch] for d in batch] for epoch in ("1", "2"))
        assert epoch_1 != epoch_2  # a new order (and a new shard) each epoch


def test_metric_lines_are_printed_once_and_nothing_else(two_processes: Run) -> None:
    lines = two_processes.output.strip().splitlines()

    assert epochs_in(two_processes.output) == [1, 2]
    assert len(printed(two_processes.output, "test_acc")) == 1
    assert len(lines) == 3, lines  # no warning, no start-up note of Lightning or torchrun


def test_test_metrics_are_reduced_over_both_ranks(two_processes: Run, mirror_dir: Path) -> None:
    images, labels = load_split(mirror_dir, "test")
    model = load_model(two_processes.ml_dir / "model" / "model.pt")

    with torch.no_grad():
        logits = model(normalise(images))

    # Each rank tests half of the 1,000 test digits: only the reduction over both gives the whole set's figures.
    assert printed(two_processes.output, "test_acc") == [pytest.approx((logits.argmax(1) == labels).float().mean().item(), abs=1e-6)]
    assert printed(two_processes.output, "test_loss") == [pytest.approx(F.cross_entropy(logits, labels.long()).item(), rel=1e-4)]


def test_only_rank_0_writes_checkpoints_and_metrics(two_processes: Run) -> None:
    assert files_under(two_processes.ml_dir / "checkpoints") == ["best.ckpt", "last.ckpt"]
    metrics = json.loads((two_processes.ml_dir / "output" / "data" / "metrics.json").read_text())
    assert metrics["test_acc"] == pytest.approx(printed(two_processes.output, "test_acc")[0], rel=1e-5)


# --- SIGTERM to the torchrun group, as SageMaker stops a job, then a rerun that resumes ---------------------------


@dataclasses.dataclass(frozen=True)
class Stopped:
    """A two-process run sent SIGTERM after epoch 1: what it printed, and what it left under /opt/ml."""

    ml_dir: Path
    epochs_before_stop: list[int]
    completed: subprocess.CompletedProcess
    left: list[str]
    checkpoint: Path  # a copy of the last.ckpt that the stop left


def stop_after_epoch_1(root: Path, environment: dict[str, str], only_rank: str | None) -> Stopped:
    """Start a torchrun of two ranks; once epoch 1 is printed, SIGTERM to the torchrun group or to one rank.

    torchrun starts each worker in a session of its own: SIGTERM to torchrun's group reaches torchrun, which
    forwards it to every worker. The workers are frozen (SIGSTOP) while the signal is sent, so that the moment
    is the test's; they must all have ended when torchrun has.
    """
    process = subprocess.Popen(
        torchrun(2, str(TRAIN_SCRIPT), *LONG_RUN), env=environment, cwd=root,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    workers = []
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("epoch=1;"):
                break
        workers = psutil.Process(process.pid).children()
        for worker in workers:
            worker.send_signal(signal.SIGSTOP)
        if only_rank is None:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            (target,) = (worker for worker in workers if worker.environ().get("RANK") == only_rank)
            target.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.send_signal(signal.SIGCONT)
        rest, _ = process.communicate(timeout=TIMEOUT_S)
        wait_for(lambda: not any(worker.is_running() for worker in workers), "both workers to end", 60)
    finally:  # a failed test leaves no process behind
        for leftover in [process_of(process.pid), *workers]:
            if leftover is not None and leftover.is_running():
                leftover.kill()
    completed = subprocess.CompletedProcess(process.args, process.returncode, "".join(lines) + rest)
    stop_checkpoint = Path(shutil.copy(root / "ml" / "checkpoints" / "last.ckpt", root / "stop-last.ckpt"))
    return Stopped(root / "ml", epochs_in("".join(lines)), completed, files_under(root / "ml"), stop_checkpoint)


def process_of(pid: int) -> psutil.Process | None:
    """The process with this id, or None when it has ended."""
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


@dataclasses.dataclass(frozen=True)
class Interrupted:
    """A two-process run stopped by SIGTERM to the torchrun group early in epoch 2, then run again in its folder."""

    stop: Stopped
    resumed: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path) -> Interrupted:
    """SIGTERM to the torchrun group once epoch 1 is printed, as SageMaker stops a job; then the same run again."""
    root = tmp_path_factory.mktemp("interrupted")
    environment = run_environment(root / "ml", mirror_dir)
    stop = stop_after_epoch_1(root, environment, only_rank=None)
    return Interrupted(stop, run(torchrun(2, str(TRAIN_SCRIPT), *LONG_RUN), environment, root))


def assert_stopped_mid_epoch_2(stop: Stopped) -> None:
    """Every rank stopped, rank 0 saved last.ckpt with some of epoch 2's steps in it, and no model was written."""
    assert stop.epochs_before_stop == [1]
    assert stop.completed.returncode != 0
    assert stop.completed.stdout.count("Stopped by SIGTERM") == 1, stop.completed.stdout[-3000:]
    assert "checkpoints/last.ckpt" in stop.left
    assert "model/model.pt" not in stop.left
    # Saved by the interruption, not at the end of epoch 1: some steps of epoch 2 are in it.
    steps = checkpoint(stop.checkpoint)["global_step"]
    assert LONG_RUN_STEPS_PER_EPOCH < steps < 4 * LONG_RUN_STEPS_PER_EPOCH


def test_sigterm_to_the_torchrun_group_stops_every_rank_and_leaves_last_ckpt(interrupted: Interrupted) -> None:
    assert_stopped_mid_epoch_2(interrupted.stop)


def test_sigterm_to_one_rank_only_stops_every_rank_and_leaves_last_ckpt(tmp_path: Path, mirror_dir: Path) -> None:
    # Lightning's own handler leaves both ranks waiting in mismatched collectives here, until a timeout.
    assert_stopped_mid_epoch_2(stop_after_epoch_1(tmp_path, run_environment(tmp_path / "ml", mirror_dir), only_rank="1"))


def test_every_rank_resumes_from_the_stop_checkpoint(interrupted: Interrupted) -> None:
    assert interrupted.resumed.returncode == 0, interrupted.resumed.stdout[-3000:]
    stopped_in_epoch = checkpoint(interrupted.stop.checkpoint)["epoch"] + 1
    assert epochs_in(interrupted.resumed.stdout) == list(range(stopped_in_epoch, 5))
    final = checkpoint(interrupted.stop.ml_dir / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 4 * LONG_RUN_STEPS_PER_EPOCH
    assert files_under(interrupted.stop.ml_dir / "model") == ["model.pt"]


def test_ranks_that_find_different_checkpoints_refuse_to_train(
    interrupted: Interrupted, tmp_path: Path, mirror_dir: Path
) -> None:
    environment = run_environment(tmp_path / "ml", mirror_dir)
    # Each rank its own checkpoint folder, as on two hosts: rank 0 finds the stop's last.ckpt, rank 1 nothing.
    for rank in (0, 1):
        (tmp_path / f"checkpoints-{rank}").mkdir()
    shutil.copy(interrupted.stop.checkpoint, tmp_path / "checkpoints-0" / "last.ckpt")
    per_rank = f'CHECKPOINT_DIR={tmp_path}/checkpoints-$LOCAL_RANK exec "{sys.executable}" "$@"'
    command = torchrun(2, "--no-python", "/bin/sh", "-c", per_rank, "sh", str(TRAIN_SCRIPT), *LONG_RUN)

    completed = run(command, environment, tmp_path)

    assert completed.returncode != 0
    assert "the ranks resume from different checkpoints" in completed.stdout, completed.stdout[-3000:]
    assert "different checkpoints" in (tmp_path / "ml" / "output" / "failure").read_text()
    assert not (tmp_path / "ml" / "model" / "model.pt").exists()

"""What each side of the benchmark's section 7 runs: code/train.py with a clock, and under DDP an all-reduce timer.

    python tools/bench_ddp_worker.py RECORD.json [train.py arguments]                 # one process
    torchrun --nproc_per_node 2 tools/bench_ddp_worker.py RECORD.json [arguments]     # DDP over two

train.py runs as SageMaker runs it (its SM_* variables come from the caller). Rank 0 writes RECORD.json: the
training time from Lightning's `setup` hook to the end of the fit (as section 1 times it), the steps, images and
validation accuracy, the torch threads and ranks; under DDP also the time of one all-reduce of the model's
gradients (what DDP sends every step) and of one single-number collective (what each step adds to agree on a
SIGTERM: train.StopTogether's all-reduce and Lightning's broadcast), each the median of many, measured after the
fit on the same process group.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "code"))  # code/ is a folder of modules
import train  # noqa: E402

COLLECTIVE_REPEATS = 200


def median_seconds(operation: Callable[[], object], repeats: int = COLLECTIVE_REPEATS) -> float:
    """The median time of one call of a collective operation, after a few warm-up calls; every rank calls it."""
    for _ in range(5):
        operation()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        operation()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class FitRecord(pl.Callback):
    """Time the fit, then (under DDP) the collectives of one step; rank 0 writes what it measured."""

    def __init__(self, record: Path) -> None:
        self.record = record

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.start = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        train_s = time.perf_counter() - self.start
        record = {
            "train_s": train_s,
            "world_size": trainer.world_size,
            "torch_threads": torch.get_num_threads(),
            "steps": int(trainer.global_step),
            "images": len(trainer.train_dataloader.dataset) * trainer.current_epoch,
            "batch_size_per_process": trainer.train_dataloader.batch_size,
            "val_acc": float(trainer.callback_metrics["val_acc"]),
        }
        if trainer.world_size > 1:
            gradients = torch.zeros(sum(p.numel() for p in pl_module.parameters() if p.requires_grad))
            flag = torch.zeros(1)
            record |= {
                "gradient_values": gradients.numel(),
                "gradient_allreduce_s": median_seconds(lambda: dist.all_reduce(gradients)),
                "flag_allreduce_s": median_seconds(lambda: dist.all_reduce(flag)),
                "flag_broadcast_s": median_seconds(lambda: dist.broadcast(flag, src=0)),
            }
        if trainer.is_global_zero:
            self.record.write_text(json.dumps(record))


def main() -> int:
    """Run train.main with FitRecord among the Trainer's callbacks."""
    record, arguments = Path(sys.argv[1]), sys.argv[2:]
    return train.main(arguments, extra_callbacks=[FitRecord(record)])


if __name__ == "__main__":
    sys.exit(main())

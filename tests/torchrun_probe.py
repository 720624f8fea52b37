"""code/train.py with one callback more, which records the images each rank trained on: run it under torchrun.

    torchrun --nproc_per_node 2 tests/torchrun_probe.py RECORD_DIR --epochs 2 ...

Each rank writes RECORD_DIR/rank-<global rank>.json: per epoch, a digest of every training image of each
batch, in the order the rank saw them. The rest of the command line is train.py's own.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "code"))  # code/ is a folder of modules
import train  # noqa: E402


def image_digest(image: torch.Tensor) -> str:
    """A short digest of one normalised image's values: equal images, equal digests."""
    return hashlib.sha1(image.cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class RecordBatches(pl.Callback):
    """Write which images each training batch held, per epoch, into a file per rank when training ends."""

    def __init__(self, record_dir: Path) -> None:
        self.record_dir = record_dir
        self.epochs: dict[int, list[list[str]]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int) -> None:
        images, _ = batch
        self.epochs.setdefault(trainer.current_epoch + 1, []).append([image_digest(image) for image in images])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {"world_size": trainer.world_size, "global_step": trainer.global_step, "epochs": self.epochs}
        (self.record_dir / f"rank-{trainer.global_rank}.json").write_text(json.dumps(record))


def main() -> int:
    """Run train.main with RecordBatches among the Trainer's callbacks."""
    record_dir, arguments = Path(sys.argv[1]), sys.argv[2:]
    return train.main(arguments, extra_callbacks=[RecordBatches(record_dir)])


if __name__ == "__main__":
    sys.exit(main())

"""The digit classifier: a small convolutional network as a LightningModule, and how to save and load it."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from mnist_data import normalise
from mnist_format import NUM_CLASSES

# Lightning's start-up notes (hardware summary, tips) would drown what a run prints, in a notebook and in
# the job's log alike: they are turned off here, in the module every user of the model imports (train.py,
# the notebooks). Warnings still show. The pytree notice comes from inside Lightning itself.
logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
logging.getLogger("lightning_fabric").setLevel(logging.WARNING)  # "Initializing distributed: ..." on every rank
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

MODEL_FILE = "model.pt"


def conv_block(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Convolution, 2x2 max pooling (halves height and width), then batch normalisation and ReLU."""
    # Pooling straight after the convolution leaves batch norm and ReLU a quarter of the values to work on.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def build_network(width: int = 16, hidden: int = 128) -> nn.Sequential:
    """A small CNN: two convolution blocks (28x28 -> 14x14 -> 7x7), then two linear layers to 10 logits."""
    return nn.Sequential(
        conv_block(1, width, kernel_size=5),
        conv_block(width, 2 * width, kernel_size=3),
        nn.Flatten(),
        nn.Linear(2 * width * 7 * 7, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, NUM_CLASSES),
    )


class ResumeMismatchError(ValueError):
    """A checkpoint was made for a run planned with other settings than the run resuming it."""


class MNISTClassifier(pl.LightningModule):
    """Classifies 28x28 digits; trained with Adam and a one-cycle learning-rate schedule."""

    def __init__(
        self, width: int = 16, hidden: int = 128, lr: float = 1e-2, weight_decay: float = 1e-4, label_smoothing: float = 0.1
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # channels_last lets the CPU and GPU convolution kernels run about twice as fast on this network.
        self.network = build_network(width, hidden).to(memory_format=torch.channels_last)
        self.val_accuracy = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return logits (N, 10) for normalised images (N, 1, 28, 28)."""
        return self.network(images.contiguous(memory_format=torch.channels_last))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        # cross_entropy takes raw logits: it applies log-softmax itself. Label smoothing keeps the network
        # from growing over-confident; it also puts a floor under the loss (about 0.5 for 0.1).
        return F.cross_entropy(self(images), labels, label_smoothing=self.hparams.label_smoothing)

    def on_train_batch_end(self, outputs: dict[str, torch.Tensor], batch: object, batch_idx: int) -> None:
        # self.log costs about a millisecond, a tenth of a step here: log on the steps the logger writes
        # (every `log_every_n_steps`) and on each epoch's last batch, for the epoch's metric line.
        last = batch_idx + 1 == self.trainer.num_training_batches
        if last or self.global_step % self.trainer.log_every_n_steps == 0:
            self.log("train_loss", outputs["loss"], prog_bar=True, sync_dist=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        # Under DDP each rank sees a shard: sync_dist averages the losses over the ranks, and the accuracy
        # metrics add up their counts over the ranks when computed. With one process both change nothing.
        self.val_accuracy(logits, labels)
        self.log("val_loss", F.cross_entropy(logits, labels), prog_bar=True, sync_dist=True)
        self.log("val_acc", self.val_accuracy, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.test_accuracy(logits, labels)
        self.log("test_loss", F.cross_entropy(logits, labels), sync_dist=True)
        self.log("test_acc", self.test_accuracy)

    def on_train_start(self) -> None:
        """Refuse to resume a run whose one-cycle schedule was planned for a different number of steps."""
        schedule = self.lr_schedulers()
        # Lightning's learning-rate finder swaps in a schedule of its own, which plans no run to check.
        if not isinstance(schedule, torch.optim.lr_scheduler.OneCycleLR):
            return
        restored, planned = schedule.total_steps, int(self.trainer.estimated_stepping_batches)
        if restored != planned:
            raise ResumeMismatchError(
                f"the checkpoint being resumed was made for a run of {restored} steps, this run plans {planned}: "
                "resume with the same epochs, batch_size and max_train_images, or delete the checkpoints to start over"
            )

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@torch.no_grad()
def layer_shapes(network: nn.Sequential, images: torch.Tensor) -> list[tuple[str, tuple[int, ...], int]]:
    """Pass images through each top-level layer; return (layer, output shape, parameters) per layer."""
    rows = []
    for layer in network:
        images = layer(images)
        rows.append((layer.__class__.__name__, tuple(images.shape), count_parameters(layer)))
    return rows


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_model(model: MNISTClassifier, model_dir: Path) -> Path:
    """Save the weights (a state_dict) and hyperparameters as plain tensors and values: loadable without pickle."""
    path = Path(model_dir) / MODEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"hyperparameters": dict(model.hparams), "state_dict": state}, path)
    return path


def load_model(path: Path) -> MNISTClassifier:
    """Load a model saved by `save_model`; `weights_only=True` refuses anything but tensors and plain values."""
    saved = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = MNISTClassifier(**saved["hyperparameters"])
    model.load_state_dict(saved["state_dict"])
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """Predicted digits for uint8 images (N, 28, 28), computed in batches with the model in eval mode."""
    model.eval()
    batches = [model(normalise(chunk)).argmax(dim=1) for chunk in images.split(batch_size)]
    return torch.cat(batches)

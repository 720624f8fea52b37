"""Lightning's learning-rate finder (`Tuner.lr_find`) on the workbook's model and data, as notebook 03 runs it.

The finder trains a fresh model for a number of steps while it raises the learning rate exponentially,
records the loss at each step, and suggests the rate where the loss falls fastest. The model it trained
is thrown away: the finder restores the initial weights when it is done.
"""

from __future__ import annotations

import contextlib
import functools
from unittest import mock

import pytorch_lightning as pl
from pytorch_lightning.tuner import Tuner
from pytorch_lightning.tuner import lr_finder as lightning_lr_finder

from mnist_data import MNISTDataModule
from mnist_model import MNISTClassifier
from train import Hyperparameters, Paths, accelerator_settings


def find_learning_rate(
    hp: Hyperparameters, paths: Paths, *, min_lr: float, max_lr: float, steps: int, progress: bool
) -> lightning_lr_finder._LRFinder:
    """Run the finder for `steps` steps from min_lr to max_lr on train.py's model and training split; return it."""
    pl.seed_everything(hp.seed, verbose=False)
    train_split, _ = paths.load_channels()
    data = MNISTDataModule(
        train_split, batch_size=hp.batch_size, val_fraction=hp.val_fraction,
        max_train_images=hp.max_train_images or None, seed=hp.seed,
    )
    data.setup("fit")
    # The finder stops after `steps` batches but never runs past max_epochs: give it enough epochs.
    epochs = -(-steps // len(data.train_dataloader()))
    model = MNISTClassifier(
        width=hp.width, hidden=hp.hidden, lr=hp.lr, weight_decay=hp.weight_decay, label_smoothing=hp.label_smoothing
    )
    trainer = pl.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=progress,
        enable_model_summary=False, default_root_dir=paths.output, **accelerator_settings(0),
    )
    paths.output.mkdir(parents=True, exist_ok=True)  # the finder keeps the initial weights there while it runs
    # Lightning 2.6 draws the finder's own progress bar whatever the Trainer says (tuner/lr_finder.py builds
    # its callback with progress_bar_refresh_rate=1): without progress, it gets a tqdm that draws nothing.
    # patch.object fails loudly if a Lightning release renames that tqdm (tests/test_lr_finder.py).
    quiet_bar = mock.patch.object(lightning_lr_finder, "tqdm", functools.partial(lightning_lr_finder.tqdm, disable=True))
    with contextlib.nullcontext() if progress else quiet_bar:
        return Tuner(trainer).lr_find(
            model, datamodule=data, min_lr=min_lr, max_lr=max_lr, num_training=steps, update_attr=False
        )

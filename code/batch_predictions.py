"""Predictions for a whole test set: the images as .npy shards in S3, a transform job's answers read back.

A SageMaker batch transform job sends every object under an S3 prefix to the model's handlers and writes
each answer to `<object name>.out` under its output path. The test digits go up as shards of at most
inference.MAX_BATCH images (one request each); `read_predictions` reads the answers back in shard
order, so that prediction i is image i's. Notebook 06 saves its endpoint's digits (`save_digits`) for
notebook 07 to compare with the batch job's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import torch

from deployment import digits_of, npy_body
from inference import MAX_BATCH
from mnist_s3 import split_s3_uri

SHARD_NAME = "shard-{:05d}.npy"


def upload_shards(images: torch.Tensor, prefix_uri: str, shard_size: int = MAX_BATCH,
                  s3_client: Any | None = None) -> list[str]:
    """Upload images (N, 28, 28) as .npy shards of at most shard_size under an S3 prefix; return their URIs."""
    if not 0 < shard_size <= MAX_BATCH:
        raise ValueError(f"shard_size {shard_size}: a shard is one request, of 1 to {MAX_BATCH} images")
    s3 = s3_client or boto3.client("s3")
    bucket, prefix = split_s3_uri(prefix_uri)
    uris = []
    for number, start in enumerate(range(0, len(images), shard_size)):
        key = "/".join(part for part in (prefix.rstrip("/"), SHARD_NAME.format(number)) if part)
        s3.put_object(Bucket=bucket, Key=key, Body=npy_body(images[start:start + shard_size].numpy()))
        uris.append(f"s3://{bucket}/{key}")
    return uris


def read_predictions(shard_uris: list[str], output_uri: str, s3_client: Any | None = None) -> list[int]:
    """The digits a transform job predicted for the shards, in shard order, from `<output>/<shard>.out`."""
    s3 = s3_client or boto3.client("s3")
    bucket, prefix = split_s3_uri(output_uri)
    digits: list[int] = []
    for uri in shard_uris:
        key = "/".join(part for part in (prefix.rstrip("/"), uri.rsplit("/", 1)[1] + ".out") if part)
        try:
            answer = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey as error:
            raise FileNotFoundError(f"s3://{bucket}/{key} not found: did the transform job complete, and write to "
                                    f"{output_uri}?") from error
        digits += digits_of(answer)
    return digits


def save_digits(path: Path, digits: list[int], source: str) -> Path:
    """Save predicted digits with where they came from (JSON), for another notebook to compare."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"source": source, "digits": digits}))
    return path


def load_digits(path: Path) -> tuple[list[int], str]:
    """The digits save_digits wrote, and their source."""
    saved = json.loads(Path(path).read_text())
    return saved["digits"], saved["source"]

"""Tests of code/batch_predictions.py against the local S3: shards up, a transform job's answers back, in order."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

import batch_predictions
from local_aws import LocalAWS
from support import aws_clients


def test_images_go_up_as_shards_and_the_answers_come_back_in_image_order(local_aws: LocalAWS) -> None:
    (s3,) = aws_clients(local_aws.endpoint_url, "s3")
    prefix = f"s3://{local_aws.bucket}/batch-{uuid.uuid4().hex[:8]}"
    images = torch.randint(0, 256, (2500, 28, 28), dtype=torch.uint8)
    uris = batch_predictions.upload_shards(images, f"{prefix}/input/", shard_size=1000, s3_client=s3)
    assert uris == [f"{prefix}/input/shard-{number:05d}.npy" for number in range(3)]
    bucket = local_aws.bucket
    shards = [np.load(io.BytesIO(s3.get_object(Bucket=bucket, Key=uri.split(f"{bucket}/", 1)[1])["Body"].read()))
              for uri in uris]
    assert [len(shard) for shard in shards] == [1000, 1000, 500]
    assert np.array_equal(np.concatenate(shards), images.numpy())
    # A transform job writes <shard>.out under its output path: here, each image's digit is its index mod 10.
    for number, uri in enumerate(uris):
        digits = [(number * 1000 + index) % 10 for index in range(len(shards[number]))]
        answer = {"predictions": [{"digit": digit, "probabilities": []} for digit in digits]}
        key = f"{prefix}/output/{uri.rsplit('/', 1)[1]}.out".split(f"{bucket}/", 1)[1]
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(answer).encode())
    digits = batch_predictions.read_predictions(uris, f"{prefix}/output", s3_client=s3)
    assert digits == [index % 10 for index in range(2500)]


def test_a_missing_answer_names_the_object_and_the_shard_size_is_a_request(local_aws: LocalAWS) -> None:
    (s3,) = aws_clients(local_aws.endpoint_url, "s3")
    output = f"s3://{local_aws.bucket}/nothing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(FileNotFoundError, match=f"{output}/shard-00000.npy.out not found"):
        batch_predictions.read_predictions([f"s3://{local_aws.bucket}/in/shard-00000.npy"], output, s3_client=s3)
    with pytest.raises(ValueError, match="shard_size 1001: a shard is one request, of 1 to 1000 images"):
        batch_predictions.upload_shards(torch.zeros(1, 28, 28), output, shard_size=1001, s3_client=s3)


def test_saved_digits_load_back_with_their_source(tmp_path: Path) -> None:
    path = batch_predictions.save_digits(tmp_path / "deep" / "digits.json", [7, 2, 1], "endpoint mnist-1")
    assert batch_predictions.load_digits(path) == ([7, 2, 1], "endpoint mnist-1")

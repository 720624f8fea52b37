"""Tests of tools/local_sagemaker/transform_jobs.py: batch transform jobs that really run behind the local endpoint.

The workbook's model and handlers transform the mirror's 1,000 held-out digits stored in S3 as .npy
shards, driven by SDK 3's Transformer as notebook 07 drives it; JSON lines and CSV records go through
SplitType Line; a malformed object fails the job with a reason naming it; a stop is held by the test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from botocore.exceptions import ClientError

import deployment
import inference
from local_aws import LocalAWS
from mnist_data import load_split
from support import wait_for
from test_hosting import HELD_MODEL, archive, create_model, model_servers_of, upload
from test_hosting import aws as aws  # noqa: F401 - the fixture, shared
from test_hosting import workbook_model as workbook_model  # noqa: F401 - the fixture, shared
from test_model_server import TINY_REGRESSOR, tiny_network

TIMEOUT_S = 300


@pytest.fixture(scope="module")
def digits(mirror_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return load_split(mirror_dir, "test")


@pytest.fixture(scope="module")
def workbook_model_name(aws, workbook_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    packed = tmp_path_factory.mktemp("packed") / "model.tar.gz"
    deployment.pack_model(workbook_model, packed, with_code=True)
    name = create_model(aws, "transform-digits", packed.read_bytes(), deployment.serving_environment(workers=1))
    yield name
    aws["sagemaker"].delete_model(ModelName=name)


def expected_answers(workbook_model: Path, images: torch.Tensor) -> list[dict[str, Any]]:  # noqa: F811
    model = inference.model_fn(str(workbook_model))
    return json.loads(inference.output_fn(inference.predict_fn(images.float(), model), "application/json"))["predictions"]


def start_job(aws, name: str, model_name: str, input_prefix: str, content_type: str, **options: Any) -> str:
    """CreateTransformJob over the S3 prefix (boto3), output under transform/<name>/output/."""
    transform_input: dict[str, Any] = {
        "DataSource": {"S3DataSource": {"S3DataType": options.pop("data_type", "S3Prefix"),
                                        "S3Uri": f"s3://{aws['bucket']}/{input_prefix}"}},
        "ContentType": content_type,
        "SplitType": options.pop("split_type", "None"),
    }
    aws["sagemaker"].create_transform_job(
        TransformJobName=name, ModelName=model_name, TransformInput=transform_input,
        TransformOutput={"S3OutputPath": f"s3://{aws['bucket']}/transform/{name}/output",
                         "Accept": options.pop("accept", "application/json"),
                         "AssembleWith": options.pop("assemble_with", "None")},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1}, **options,
    )
    return name


def finished(aws, name: str) -> dict[str, Any]:
    def describe() -> dict[str, Any] | None:
        answer = aws["sagemaker"].describe_transform_job(TransformJobName=name)
        return answer if answer["TransformJobStatus"] in ("Completed", "Failed", "Stopped") else None

    return wait_for(describe, f"transform job {name} to end", timeout_s=TIMEOUT_S)


def objects(aws, prefix: str) -> dict[str, bytes]:
    listed = aws["s3"].list_objects_v2(Bucket=aws["bucket"], Prefix=prefix).get("Contents", [])
    return {item["Key"][len(prefix):]: aws["s3"].get_object(Bucket=aws["bucket"], Key=item["Key"])["Body"].read()
            for item in listed}


def test_sdk_3s_transformer_transforms_the_test_digits_as_the_endpoint_answers(
    aws, local_aws_env: LocalAWS, workbook_model_name: str, workbook_model, digits  # noqa: F811
) -> None:
    from sagemaker.core.transformer import Transformer

    images, labels = digits
    shards = {f"shard-{number:02d}.npy": images[start:start + 250] for number, start in enumerate(range(0, 1000, 250))}
    for key, shard in shards.items():
        upload(aws, f"transform/digits/input/{key}", deployment.npy_body(shard.numpy()))
    output = f"s3://{aws['bucket']}/transform/digits/output"
    transformer = Transformer(workbook_model_name, instance_count=1, instance_type="ml.m5.large", output_path=output,
                              accept="application/json", max_concurrent_transforms=2)
    transformer.transform(f"s3://{aws['bucket']}/transform/digits/input/", content_type="application/x-npy",
                          wait=False, logs=False)
    job = transformer.latest_transform_job
    job.wait(poll=1, logs=False)
    job.refresh()
    assert job.transform_job_status == "Completed"
    written = objects(aws, "transform/digits/output/")
    assert sorted(written) == [f"{key}.out" for key in sorted(shards)]  # one output per input object
    served = [p for key in sorted(shards) for p in json.loads(written[f"{key}.out"])["predictions"]]
    expected = expected_answers(workbook_model, images)
    assert [p["digit"] for p in served] == [p["digit"] for p in expected]
    np.testing.assert_allclose([p["probabilities"] for p in served], [p["probabilities"] for p in expected], atol=2e-6)
    served_accuracy = np.mean(np.array([p["digit"] for p in served]) == labels.numpy())
    assert served_accuracy == np.mean(np.array([p["digit"] for p in expected]) == labels.numpy())
    # Its log: the model server's output, and one data-log line per object.
    group = "/aws/sagemaker/TransformJobs"
    streams = {s["logStreamName"] for s in aws["logs"].describe_log_streams(
        logGroupName=group, logStreamNamePrefix=job.transform_job_name)["logStreams"]}
    (data_log,) = [stream for stream in streams if stream.endswith("/data-log")]
    lines = [e["message"] for e in aws["logs"].get_log_events(logGroupName=group, logStreamName=data_log)["events"]]
    assert sorted(lines) == [f"{aws['bucket']}/transform/digits/input/{key}: transformed in 1 request(s)"
                             for key in sorted(shards)]


def test_json_lines_split_by_line_give_one_answer_line_per_input_line(aws, workbook_model_name: str,
                                                                      workbook_model, digits) -> None:  # noqa: F811
    images = digits[0][:12]
    lines = b"".join(deployment.json_body(images[start:start + 3]) + b"\n" for start in range(0, 12, 3))
    upload(aws, "transform/lines/input/part-0.jsonl", lines)
    name = start_job(aws, "json-lines", workbook_model_name, "transform/lines/input/", "application/json",
                     split_type="Line", BatchStrategy="SingleRecord", assemble_with="Line")
    assert finished(aws, name)["TransformJobStatus"] == "Completed"
    (answer,) = objects(aws, f"transform/{name}/output/").values()
    answered = [deployment.digits_of(line) for line in answer.decode().splitlines()]
    expected = [p["digit"] for p in expected_answers(workbook_model, images)]
    assert answered == [expected[start:start + 3] for start in range(0, 12, 3)]


def test_a_foreign_script_gets_csv_records_batched_into_one_request(aws) -> None:
    import io

    weights = io.BytesIO()
    torch.save(tiny_network().state_dict(), weights)
    files = {"weights.pth": weights.getvalue(), "code/tiny_regressor.py": TINY_REGRESSOR.encode()}
    environment = {"SAGEMAKER_PROGRAM": "tiny_regressor.py", "OUTPUT_SCALE": "metres"}
    model_name = create_model(aws, "tiny-transform", archive(files), environment)
    rows = [[0.5, -1.0, 2.0], [3.0, 0.25, -0.75], [1.0, 1.0, 1.0]]
    upload(aws, "transform/csv/input/rows.csv", "\n".join(",".join(map(str, row)) for row in rows).encode())
    name = start_job(aws, "csv-rows", model_name, "transform/csv/input/", "text/csv", split_type="Line",
                     BatchStrategy="MultiRecord", accept="text/csv")
    assert finished(aws, name)["TransformJobStatus"] == "Completed"
    (answer,) = objects(aws, f"transform/{name}/output/").values()
    with torch.no_grad():
        expected = tiny_network()(torch.tensor(rows)).numpy()
    np.testing.assert_allclose(np.loadtxt(io.StringIO(answer.decode()), delimiter=","), expected, atol=1e-6)
    aws["sagemaker"].delete_model(ModelName=model_name)


def test_a_malformed_object_fails_the_job_with_a_reason_naming_it(aws, workbook_model_name: str, digits) -> None:
    upload(aws, "transform/bad/input/shard-00.npy", deployment.npy_body(digits[0][:10].numpy()))
    upload(aws, "transform/bad/input/shard-01.npy", b"\x93NUMPY this is not an array")
    name = start_job(aws, "malformed", workbook_model_name, "transform/bad/input/", "application/x-npy")
    described = finished(aws, name)
    assert described["TransformJobStatus"] == "Failed"
    reason = described["FailureReason"]
    assert reason.startswith(f"ClientError: the model answered 400 for s3://{aws['bucket']}/transform/bad/input/"
                             "shard-01.npy: request body is not a readable .npy array"), reason
    assert list(objects(aws, f"transform/{name}/output/")) == ["shard-00.npy.out"]  # written before the bad one


def test_what_the_local_runner_does_not_do_fails_the_job_saying_so(aws, workbook_model_name: str) -> None:
    name = start_job(aws, "manifest", workbook_model_name, "transform/digits/input/", "application/x-npy",
                     data_type="ManifestFile")
    described = finished(aws, name)
    assert described["TransformJobStatus"] == "Failed"
    assert "reads S3Prefix inputs only" in described["FailureReason"]


def test_stop_transform_job_stops_it_before_any_object(aws, digits, tmp_path: Path) -> None:
    release = tmp_path / "release"
    environment = {"SAGEMAKER_PROGRAM": "inference.py", "RELEASE": str(release), "ANSWER": "A"}
    model_name = create_model(aws, "held-transform", archive({"code/inference.py": HELD_MODEL}), environment)
    upload(aws, "transform/held/input/one.npy", deployment.npy_body(digits[0][:1].numpy()))
    name = start_job(aws, "held", model_name, "transform/held/input/", "application/x-npy")
    assert aws["sagemaker"].describe_transform_job(TransformJobName=name)["TransformJobStatus"] == "InProgress"
    aws["sagemaker"].stop_transform_job(TransformJobName=name)
    assert aws["sagemaker"].describe_transform_job(TransformJobName=name)["TransformJobStatus"] == "Stopping"
    release.touch()  # the model loads; the stop is seen before the first object
    assert finished(aws, name)["TransformJobStatus"] == "Stopped"
    assert objects(aws, f"transform/{name}/output/") == {}
    with pytest.raises(ClientError, match="only an InProgress job can be stopped"):
        aws["sagemaker"].stop_transform_job(TransformJobName=name)
    aws["sagemaker"].delete_model(ModelName=model_name)


def test_the_endpoint_going_away_stops_a_jobs_model_server_that_is_still_starting(tmp_path: Path, digits) -> None:
    # Its own local endpoint: the test ends it while the job's model is held in its model_fn.
    import psutil

    from local_aws import local_aws_endpoint
    from support import aws_clients

    with local_aws_endpoint(tmp_path / "aws") as endpoint:
        own = {"bucket": endpoint.bucket, **dict(zip(("sagemaker", "s3"),
                                                     aws_clients(endpoint.endpoint_url, "sagemaker", "s3")))}
        release = tmp_path / "never-written"
        environment = {"SAGEMAKER_PROGRAM": "inference.py", "RELEASE": str(release), "ANSWER": "A"}
        model_name = create_model(own, "held-forever", archive({"code/inference.py": HELD_MODEL}), environment)
        upload(own, "transform/forever/input/one.npy", deployment.npy_body(digits[0][:1].numpy()))
        start_job(own, "held-forever", model_name, "transform/forever/input/", "application/x-npy")
        wait_for(release.with_name(release.name + ".waiting").exists, "the job's model server to be in model_fn")
        endpoint_process = next(process for process in psutil.Process().children()
                                if str(tmp_path / "aws") in process.cmdline())  # not the session's endpoint
        starting = model_servers_of(endpoint_process)
        assert starting
    gone, alive = psutil.wait_procs(starting, timeout=30)
    assert [process.pid for process in alive] == []

"""Tests of tools/local_sagemaker/hosting.py: endpoints that really serve behind the local AWS endpoint.

Everything goes through the local endpoint's API with boto3, as a notebook's SDK calls do: CreateModel,
CreateEndpointConfig, CreateEndpoint, DescribeEndpoint, sagemaker-runtime InvokeEndpoint, UpdateEndpoint,
DeleteEndpoint, and CloudWatch Logs. The workbook's own model is served with code/inference.py and
answers as the handlers do in this process; scripts that are not the workbook's deploy too. Moments
(Creating, Updating) are held by the test itself: the models' model_fn waits for a file the test writes.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from botocore.exceptions import ClientError

import deployment
import endpoint_cleanup
import inference
import mnist_model
from local_aws import LocalAWS
from mnist_data import load_split
from support import aws_clients, wait_for
from test_inference import BAD_REQUESTS, REVIEWED_BAD_REQUESTS
from test_model_server import TINY_REGRESSOR, tiny_network

IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-cpu-py312"
ONE_MIB = 1024 * 1024
HOSTING_TIMEOUT_S = 300  # a model server starting on this shared 2-core machine (torch is imported by each worker)


@pytest.fixture(scope="module")
def aws(local_aws: LocalAWS) -> dict[str, Any]:
    """boto3 clients of the local endpoint, and its bucket."""
    names = ("sagemaker", "sagemaker-runtime", "s3", "logs")
    return {"bucket": local_aws.bucket, **dict(zip(names, aws_clients(local_aws.endpoint_url, *names)))}


def archive(files: dict[str, bytes | Path]) -> bytes:
    """A .tar.gz in memory of `files` (archive name -> bytes, or a file to add)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            if isinstance(content, Path):
                tar.add(content, arcname=name)
                continue
            member = tarfile.TarInfo(name)
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    return buffer.getvalue()


def upload(aws: dict[str, Any], key: str, data: bytes) -> str:
    aws["s3"].put_object(Bucket=aws["bucket"], Key=key, Body=data)
    return f"s3://{aws['bucket']}/{key}"


def create_model(aws: dict[str, Any], name: str, model_data: bytes | None, environment: dict[str, str],
                 image: str = IMAGE) -> str:
    container: dict[str, Any] = {"Image": image, "Environment": environment}
    if model_data is not None:
        container["ModelDataUrl"] = upload(aws, f"models/{name}/model.tar.gz", model_data)
    aws["sagemaker"].create_model(ModelName=name, PrimaryContainer=container,
                                  ExecutionRoleArn="arn:aws:iam::123456789012:role/SageMakerExecutionRole")
    return name


def create_config(aws: dict[str, Any], name: str, model_name: str, serverless: bool = False) -> str:
    variant: dict[str, Any] = {"VariantName": "AllTraffic", "ModelName": model_name}
    if serverless:
        variant["ServerlessConfig"] = {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
    else:
        variant.update(InstanceType="ml.m5.large", InitialInstanceCount=1, InitialVariantWeight=1.0)
    aws["sagemaker"].create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant])
    return name


def deploy(aws: dict[str, Any], name: str, model_data: bytes | None, environment: dict[str, str], **options: Any) -> str:
    """CreateModel, CreateEndpointConfig and CreateEndpoint, all named `name`; return the name (still Creating)."""
    serverless = options.pop("serverless", False)
    create_model(aws, name, model_data, environment, **options)
    create_config(aws, name, name, serverless)
    aws["sagemaker"].create_endpoint(EndpointName=name, EndpointConfigName=name)
    return name


def settled(aws: dict[str, Any], name: str) -> dict[str, Any]:
    """DescribeEndpoint once the endpoint is neither Creating nor Updating."""
    def describe() -> dict[str, Any] | None:
        answer = aws["sagemaker"].describe_endpoint(EndpointName=name)
        return None if answer["EndpointStatus"] in ("Creating", "Updating") else answer

    return wait_for(describe, f"endpoint {name} to be InService or Failed", timeout_s=HOSTING_TIMEOUT_S)


def invoke(aws: dict[str, Any], name: str, body: bytes, content_type: str, **options: str) -> dict[str, Any]:
    return aws["sagemaker-runtime"].invoke_endpoint(EndpointName=name, Body=body, ContentType=content_type, **options)


def log_lines(aws: dict[str, Any], name: str) -> dict[str, list[str]]:
    """Each log stream of the endpoint's CloudWatch group, and its lines."""
    group = f"/aws/sagemaker/Endpoints/{name}"
    streams = aws["logs"].describe_log_streams(logGroupName=group)["logStreams"]
    return {
        stream["logStreamName"]: [event["message"] for event in aws["logs"].get_log_events(
            logGroupName=group, logStreamName=stream["logStreamName"], startFromHead=True)["events"]]
        for stream in streams
    }


def nothing_listed(aws: dict[str, Any], name: str) -> bool:
    """No endpoint, endpoint configuration or model of that name in ListEndpoints, ListEndpointConfigs, ListModels."""
    sagemaker = aws["sagemaker"]
    listed = {item["EndpointName"] for item in sagemaker.list_endpoints()["Endpoints"]}
    listed |= {item["EndpointConfigName"] for item in sagemaker.list_endpoint_configs()["EndpointConfigs"]}
    listed |= {item["ModelName"] for item in sagemaker.list_models()["Models"]}
    return name not in listed


# --- The workbook's model and code/inference.py --------------------------------------------------


@pytest.fixture(scope="module")
def workbook_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained classifier (seeded), saved as train.py saves its model."""
    folder = tmp_path_factory.mktemp("workbook-model")
    torch.manual_seed(0)
    mnist_model.save_model(mnist_model.MNISTClassifier(), folder)
    return folder


@pytest.fixture(scope="module")
def workbook_endpoint(aws, workbook_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The workbook's model packed with its serving code, as a plain CreateModel request carries it; InService."""
    packed = tmp_path_factory.mktemp("packed") / "model.tar.gz"
    deployment.pack_model(workbook_model, packed, with_code=True)
    name = deploy(aws, "workbook-digits", packed.read_bytes(), deployment.serving_environment(workers=2))
    assert settled(aws, name)["EndpointStatus"] == "InService", settled(aws, name).get("FailureReason")
    yield name
    endpoint_cleanup.delete_deployment(name, aws["sagemaker"])


@pytest.fixture(scope="module")
def digits(mirror_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return load_split(mirror_dir, "test")


def test_the_workbook_model_answers_through_invoke_endpoint_as_its_handlers_do(aws, workbook_endpoint,
                                                                               workbook_model, digits) -> None:
    model = inference.model_fn(str(workbook_model))
    images = digits[0]
    served, expected = [], []
    for batch in images.split(250):
        answer = invoke(aws, workbook_endpoint, deployment.json_body(batch), "application/json",
                        Accept="application/json")
        assert (answer["ContentType"], answer["InvokedProductionVariant"]) == ("application/json", "AllTraffic")
        served += json.loads(answer["Body"].read())["predictions"]
        expected += json.loads(inference.output_fn(inference.predict_fn(batch.float(), model), "application/json"))[
            "predictions"]
    assert len(served) == len(images) == 1000
    assert [p["digit"] for p in served] == [p["digit"] for p in expected]
    np.testing.assert_allclose([p["probabilities"] for p in served], [p["probabilities"] for p in expected], atol=2e-6)
    npy = invoke(aws, workbook_endpoint, deployment.npy_body(images[:5].numpy()), "application/x-npy")
    assert deployment.digits_of(npy["Body"].read()) == [p["digit"] for p in expected[:5]]
    # SageMaker's answers, without moto's empty fields that SDK 3's resource classes refuse.
    described = aws["sagemaker"].describe_endpoint(EndpointName=workbook_endpoint)
    assert "DataCaptureConfig" not in described and described["ProductionVariants"][0]["CurrentInstanceCount"] == 1
    model_description = aws["sagemaker"].describe_model(ModelName=workbook_endpoint)
    assert "VpcConfig" not in model_description
    assert model_description["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"


ENDPOINT_LIMIT = {"body above the limit"}  # refused by SageMaker itself: InvokeEndpoint takes 6 MB at most


def test_every_bad_request_is_a_model_error_carrying_the_handlers_4xx_and_message(aws, workbook_endpoint,
                                                                                 digits) -> None:
    good = deployment.json_body(digits[0][:1])
    expected = invoke(aws, workbook_endpoint, good, "application/json")["Body"].read()
    cases = {**BAD_REQUESTS, **REVIEWED_BAD_REQUESTS}
    for name, (body, content_type, status, message) in cases.items():
        with pytest.raises(ClientError) as refused:
            answer = invoke(aws, workbook_endpoint, body, content_type)
            pytest.fail(f"{name}: answered {answer['Body'].read()[:200]!r}")
        error = refused.value.response
        if name in ENDPOINT_LIMIT:
            assert error["Error"]["Code"] == "ValidationError", name
            assert "exceeds the 6 MB limit" in error["Error"]["Message"], name
        else:
            assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == ("ModelError", 424), name
            assert error["OriginalStatusCode"] == status, f"{name}: {error['OriginalMessage']}"
            assert re.search(message.replace("[", r"\["), error["OriginalMessage"]), f"{name}: {error['OriginalMessage']}"
            assert f"Received client error ({status}) from primary with message" in error["Error"]["Message"]
            assert "/aws/sagemaker/Endpoints/workbook-digits" in error["Error"]["Message"]
        assert invoke(aws, workbook_endpoint, good, "application/json")["Body"].read() == expected, f"after {name}"


def test_1000_requests_at_concurrency_8_are_all_answered(aws, workbook_endpoint, digits, record_property) -> None:
    bodies = [deployment.json_body(image[None]) for image in digits[0]]
    answers: list[bytes] = []

    def send(body: bytes) -> None:
        answers.append(invoke(aws, workbook_endpoint, body, "application/json")["Body"].read())

    latency = deployment.measure_latency(send, bodies, concurrency=8)
    assert latency.errors == []
    assert len(answers) == 1000 and all(len(json.loads(answer)["predictions"]) == 1 for answer in answers)
    record_property("p50_ms", round(latency.p50_ms, 1))
    record_property("p99_ms", round(latency.p99_ms, 1))
    print(latency)  # shown with -s; measured, not asserted


def test_the_model_servers_output_goes_to_the_endpoints_cloudwatch_log(aws, workbook_endpoint) -> None:
    streams = log_lines(aws, workbook_endpoint)
    (stream,) = streams
    assert re.fullmatch(r"AllTraffic/i-[0-9a-f]{16}", stream)
    loaded = [line for line in streams[stream] if "loaded the model" in line]
    assert len(loaded) == 2, streams[stream]  # SAGEMAKER_MODEL_SERVER_WORKERS=2: each worker loads it once


# --- Endpoints that cannot serve -----------------------------------------------------------------

RAISING_MODEL_FN = b'''
def model_fn(model_dir):
    raise ValueError("weights.pth is missing from the model")
'''
NO_MODEL_FN = b'''
def predict_fn(data, model):
    return model(data)
'''


def cannot_serve_cases(workbook_model: Path) -> dict[str, tuple[bytes | None, dict[str, str], str, str]]:
    """name -> (model archive, environment, image, what the FailureReason must say)."""
    environment = deployment.serving_environment(workers=1)
    return {
        "a damaged archive": (b"\x1f\x8b this is no gzip data", environment, IMAGE, "is a valid tar.gz archive"),
        "a member escaping the folder": (archive({"../../escaped.py": b"print('out')"}), environment, IMAGE,
                                         "would land outside the model folder"),
        "a model_fn that raises": (archive({"code/inference.py": RAISING_MODEL_FN}), environment, IMAGE,
                                   "ValueError: weights.pth is missing from the model"),
        "no model_fn for a model that is not TorchScript": (
            archive({"model.pt": workbook_model / "model.pt", "code/inference.py": NO_MODEL_FN}), environment, IMAGE,
            "the default model_fn loads TorchScript only"),
        "an image that is not PyTorch's": (archive({"model.pt": workbook_model / "model.pt"}), environment,
                                           "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1",
                                           "serves SageMaker's PyTorch inference images only"),
    }


@pytest.mark.parametrize("case", ["a damaged archive", "a member escaping the folder", "a model_fn that raises",
                                  "no model_fn for a model that is not TorchScript", "an image that is not PyTorch's"])
def test_an_endpoint_whose_model_cannot_be_served_fails_with_the_reason(aws, workbook_model, case: str) -> None:
    model_data, environment, image, reason = cannot_serve_cases(workbook_model)[case]
    name = "cannot-serve-" + re.sub(r"[^a-z]+", "-", case).strip("-")
    deploy(aws, name, model_data, environment, image=image)
    described = settled(aws, name)
    assert described["EndpointStatus"] == "Failed"
    assert reason in described["FailureReason"]
    with pytest.raises(ClientError) as refused:
        invoke(aws, name, deployment.json_body(torch.zeros(1, 28, 28)), "application/json")
    assert refused.value.response["Error"]["Code"] == "ValidationError"
    assert f"Endpoint {name} of account" in refused.value.response["Error"]["Message"]
    assert "(it is Failed)" in refused.value.response["Error"]["Message"]
    assert len(endpoint_cleanup.delete_deployment(name, aws["sagemaker"])) == 3  # a Failed endpoint is deleted too
    assert nothing_listed(aws, name)
    assert not (Path("/tmp") / "escaped.py").exists()


# --- A script that is not the workbook's, its code in S3 (not repacked) ---------------------------


def test_a_script_that_is_not_the_workbooks_deploys_and_answers(aws) -> None:
    weights = io.BytesIO()
    torch.save(tiny_network().state_dict(), weights)
    source = upload(aws, "code/tiny/sourcedir.tar.gz", archive({"tiny_regressor.py": TINY_REGRESSOR.encode()}))
    environment = {"SAGEMAKER_PROGRAM": "tiny_regressor.py", "SAGEMAKER_SUBMIT_DIRECTORY": source,
                   "SAGEMAKER_MODEL_SERVER_WORKERS": "1", "OUTPUT_SCALE": "metres"}
    name = deploy(aws, "tiny-regressor", archive({"weights.pth": weights.getvalue()}), environment)
    try:
        assert settled(aws, name)["EndpointStatus"] == "InService"
        rows = [[0.5, -1.0, 2.0], [3.0, 0.25, -0.75]]
        with torch.no_grad():
            expected = tiny_network()(torch.tensor(rows)).tolist()
        csv = "\n".join(",".join(str(value) for value in row) for row in rows).encode()
        answer = invoke(aws, name, csv, "text/csv", Accept="application/json")
        assert answer["ContentType"] == "application/vnd.tiny+json"  # the type its output_fn returned
        body = json.loads(answer["Body"].read())
        assert body["scale"] == "metres"
        np.testing.assert_allclose(body["outputs"], expected, atol=1e-6)
        with pytest.raises(ClientError) as refused:
            invoke(aws, name, csv, "application/json")
        assert refused.value.response["OriginalStatusCode"] == 415
        assert refused.value.response["OriginalMessage"] == "this regressor reads text/csv, not application/json"
    finally:
        endpoint_cleanup.delete_deployment(name, aws["sagemaker"])


# --- Creating, Updating, Deleting, moments held by the test ---------------------------------------

HELD_MODEL = b'''
"""Answers with its ANSWER; its model_fn marks RELEASE.waiting, then waits until the file RELEASE exists."""
import os
import time
from pathlib import Path


def model_fn(model_dir):
    release = Path(os.environ["RELEASE"])
    release.with_name(release.name + ".waiting").touch()
    deadline = time.monotonic() + 600
    while not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} was never written")
        time.sleep(0.05)
    return os.environ["ANSWER"]


def transform_fn(model, body, content_type, accept):
    return model.encode(), "text/plain"
'''


def held_model(aws, name: str, answer: str, release: Path) -> str:
    environment = {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                   "RELEASE": str(release), "ANSWER": answer}
    return create_model(aws, name, archive({"code/inference.py": HELD_MODEL}), environment)


def test_an_endpoint_is_creating_until_its_model_is_loaded_and_delete_stops_its_server(aws, tmp_path: Path) -> None:
    release = tmp_path / "release"
    name = held_model(aws, "held", "A", release)
    create_config(aws, name, name)
    aws["sagemaker"].create_endpoint(EndpointName=name, EndpointConfigName=name)
    assert aws["sagemaker"].describe_endpoint(EndpointName=name)["EndpointStatus"] == "Creating"
    with pytest.raises(ClientError, match=r"not found\. \(it is Creating\)"):
        invoke(aws, name, b"x", "text/plain")
    release.touch()
    assert settled(aws, name)["EndpointStatus"] == "InService"
    assert invoke(aws, name, b"x", "text/plain")["Body"].read() == b"A"
    (lines,) = log_lines(aws, name).values()
    (url,) = {match.group(1) for line in lines if (match := re.search(r"serving \S+ on (http://\S+) with", line))}
    assert urllib.request.urlopen(f"{url}/ping", timeout=10).status == 200
    assert endpoint_cleanup.delete_deployment(name, aws["sagemaker"]) == [
        f"deleted endpoint {name}", f"deleted endpoint configuration {name}", f"deleted model {name}"]
    with pytest.raises(urllib.error.URLError):  # DeleteEndpoint stopped the model server
        urllib.request.urlopen(f"{url}/ping", timeout=10)
    assert nothing_listed(aws, name)
    assert endpoint_cleanup.delete_deployment(name, aws["sagemaker"]) == [
        f"endpoint {name}: already gone, nothing to delete"]


def test_update_endpoint_swaps_the_model_without_refusing_a_request(aws, tmp_path: Path) -> None:
    (tmp_path / "release-a").touch()
    name = held_model(aws, "swap-a", "A", tmp_path / "release-a")
    create_config(aws, name, name)
    aws["sagemaker"].create_endpoint(EndpointName="swap", EndpointConfigName=name)
    assert settled(aws, "swap")["EndpointStatus"] == "InService"
    create_config(aws, "swap-b", held_model(aws, "swap-b", "B", tmp_path / "release-b"))
    answers: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            try:
                answers.append(invoke(aws, "swap", b"x", "text/plain")["Body"].read().decode())
            except ClientError as error:
                errors.append(str(error))

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        aws["sagemaker"].update_endpoint(EndpointName="swap", EndpointConfigName="swap-b")
        assert aws["sagemaker"].describe_endpoint(EndpointName="swap")["EndpointStatus"] == "Updating"
        asked = len(answers)
        wait_for(lambda: len(answers) > asked + 5, "answers while the new model loads")
        assert set(answers) == {"A"}  # the old model serves while the new one is held in its model_fn
        (tmp_path / "release-b").touch()
        described = settled(aws, "swap")
        assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "swap-b")
        switched = len(answers)
        wait_for(lambda: len(answers) > switched + 5, "answers after the switch")
    finally:
        stop.set()
        asker.join()
    assert errors == []
    first_b = answers.index("B")
    assert set(answers[:first_b]) == {"A"} and set(answers[first_b:]) == {"B"}
    old_stream = [lines for stream, lines in log_lines(aws, "swap").items() if "Finished server process" in "".join(lines)]
    assert len(old_stream) == 1  # the old instance's server was stopped after the switch
    endpoint_cleanup.delete_deployment("swap", aws["sagemaker"])
    aws["sagemaker"].delete_endpoint_config(EndpointConfigName="swap-a")
    aws["sagemaker"].delete_model(ModelName="swap-a")
    assert nothing_listed(aws, "swap")


# --- Serverless ------------------------------------------------------------------------------------


def test_a_serverless_endpoint_is_served_too(aws, tmp_path: Path) -> None:
    (tmp_path / "release").touch()
    name = held_model(aws, "serverless", "S", tmp_path / "release")
    create_config(aws, name, name, serverless=True)
    aws["sagemaker"].create_endpoint(EndpointName=name, EndpointConfigName=name)
    described = settled(aws, name)
    assert described["EndpointStatus"] == "InService"
    assert described["ProductionVariants"][0]["CurrentServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
    assert invoke(aws, name, b"x", "text/plain")["Body"].read() == b"S"
    with pytest.raises(ClientError, match="exceeds the 4 MB limit of a serverless endpoint"):
        invoke(aws, name, b" " * (4 * ONE_MIB + 1), "text/plain")
    endpoint_cleanup.delete_deployment(name, aws["sagemaker"])
    assert nothing_listed(aws, name)


def model_servers_of(endpoint_process: Any) -> list[Any]:
    """The model server processes that a local endpoint's process started (psutil processes)."""
    import psutil

    found = []
    for process in endpoint_process.children(recursive=True):
        try:
            if "local_sagemaker.model_server" in " ".join(process.cmdline()):
                found.append(process)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):  # a short-lived helper, already ended
            continue
    return found


def test_the_endpoint_going_away_stops_a_model_server_that_is_still_starting(tmp_path: Path) -> None:
    # Its own local endpoint: the test ends it while an endpoint's model is held in its model_fn.
    import psutil

    from local_aws import local_aws_endpoint

    with local_aws_endpoint(tmp_path / "aws") as endpoint:
        own = {"bucket": endpoint.bucket, **dict(zip(("sagemaker", "s3"),
                                                     aws_clients(endpoint.endpoint_url, "sagemaker", "s3")))}
        name = held_model(own, "never-released", "A", tmp_path / "never-written")
        create_config(own, name, name)
        own["sagemaker"].create_endpoint(EndpointName=name, EndpointConfigName=name)
        endpoint_process = next(process for process in psutil.Process().children()
                                if str(tmp_path / "aws") in process.cmdline())  # not the session's endpoint

        wait_for((tmp_path / "never-written.waiting").exists, "the model server's worker to be in model_fn")
        starting = model_servers_of(endpoint_process)
        assert starting and own["sagemaker"].describe_endpoint(EndpointName=name)["EndpointStatus"] == "Creating"
    gone, alive = psutil.wait_procs(starting, timeout=30)
    assert [process.pid for process in alive] == []

"""Section 8 of tools/bench.py: serving the model through the local SageMaker, endpoint and batch transform.

Against the local AWS endpoint (tools/local_aws.py), the workbook's model with code/inference.py is
served as notebooks 06 and 07 serve it, through plain boto3 calls (CreateModel with the code packed into
model.tar.gz, CreateEndpointConfig, CreateEndpoint, InvokeEndpoint, CreateTransformJob):

- the endpoint: single-image JSON requests at concurrency 1 and 8, each timed from the client (boto3 ->
  the local endpoint -> the model server and its handlers -> back): p50, p99 and requests per second,
  and the throughput at 8 clients as a ratio of that at 1;
- batch transform: the test digits as .npy shards of 1,000 (one request each) through a transform job,
  timed from CreateTransformJob to Completed (the model server's start included), against predicting the
  same shards in this process with the same handlers (input_fn, predict_fn, output_fn): images per
  second of each, and their ratio.

The model is an untrained classifier (seeded): serving costs the same whatever the weights, and no
training is needed. Every request must be answered: an error fails the section.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import torch

import batch_predictions
import deployment
import endpoint_cleanup
import inference
import mnist_model
from local_aws import local_aws_endpoint

INSTANCE_TYPE = "ml.m5.large"  # names the instance only: the model server runs on this machine
NAME = "bench-serving"
POLL_S = 0.1
TIMEOUT_S = 600.0
CONCURRENCY = (1, 8)


def clients(endpoint: Any) -> dict[str, Any]:
    """boto3 clients of the local endpoint, with its own credentials."""
    env = endpoint.env
    session = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=env.get("AWS_SESSION_TOKEN"), region_name=env["AWS_REGION"],
    )
    return {name: session.client(name, endpoint_url=endpoint.endpoint_url)
            for name in ("s3", "sagemaker", "sagemaker-runtime")}


def wait_until(describe: Any, field: str, done: set[str], what: str) -> tuple[dict[str, Any], float]:
    """Poll a Describe call until `field` is one of `done`; the answer and the seconds it took."""
    start = time.perf_counter()
    while True:
        answer = describe()
        if answer[field] in done:
            return answer, time.perf_counter() - start
        if time.perf_counter() - start > TIMEOUT_S:
            raise RuntimeError(f"{what} is still {answer[field]} after {TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)


def serve_model(aws: dict[str, Any], bucket: str, work: Path) -> tuple[str, float]:
    """CreateModel (the code packed in), CreateEndpointConfig and CreateEndpoint; the model's name, seconds to InService."""
    torch.manual_seed(0)
    mnist_model.save_model(mnist_model.MNISTClassifier(), work / "model")
    deployment.pack_model(work / "model", work / "model.tar.gz", with_code=True)
    aws["s3"].upload_file(str(work / "model.tar.gz"), bucket, f"{NAME}/model.tar.gz")
    image = deployment.inference_image(aws["sagemaker"].meta.region_name, INSTANCE_TYPE)
    container = {"Image": image, "ModelDataUrl": f"s3://{bucket}/{NAME}/model.tar.gz",
                 "Environment": deployment.serving_environment()}
    aws["sagemaker"].create_model(ModelName=NAME, PrimaryContainer=container,
                                  ExecutionRoleArn="arn:aws:iam::000000000000:role/bench")
    variant = {"VariantName": "AllTraffic", "ModelName": NAME, "InstanceType": INSTANCE_TYPE, "InitialInstanceCount": 1}
    aws["sagemaker"].create_endpoint_config(EndpointConfigName=NAME, ProductionVariants=[variant])
    aws["sagemaker"].create_endpoint(EndpointName=NAME, EndpointConfigName=NAME)
    described, seconds = wait_until(lambda: aws["sagemaker"].describe_endpoint(EndpointName=NAME), "EndpointStatus",
                                    {"InService", "Failed"}, f"endpoint {NAME}")
    if described["EndpointStatus"] != "InService":
        raise RuntimeError(f"endpoint {NAME} failed: {described.get('FailureReason')}")
    return NAME, seconds


def endpoint_latency(aws: dict[str, Any], images: torch.Tensor) -> dict[str, Any]:
    """Single-image requests at each concurrency: their latency percentiles and throughput."""
    bodies = [deployment.json_body(image[None]) for image in images]

    def send(body: bytes) -> None:
        answer = aws["sagemaker-runtime"].invoke_endpoint(EndpointName=NAME, Body=body, ContentType="application/json")
        if len(deployment.digits_of(answer["Body"].read())) != 1:
            raise RuntimeError("the endpoint did not answer one prediction for one image")

    send(bodies[0])  # the first request of a fresh worker pays for its lazy set-up: not a served request's cost
    measured = {}
    for concurrency in CONCURRENCY:
        latency = deployment.measure_latency(send, bodies, concurrency)
        if latency.errors:
            raise RuntimeError(f"{len(latency.errors)} of {latency.requests} requests failed: {latency.errors[:3]}")
        measured[str(concurrency)] = {"requests": latency.requests, "p50_ms": latency.p50_ms, "p99_ms": latency.p99_ms,
                                      "requests_per_second": latency.requests_per_s}
    return measured


def transform(aws: dict[str, Any], bucket: str, images: torch.Tensor, workers: int) -> dict[str, Any]:
    """A transform job over the images as .npy shards; its time from creation to Completed, and its answers."""
    shards = batch_predictions.upload_shards(images, f"s3://{bucket}/{NAME}/input/", s3_client=aws["s3"])
    aws["sagemaker"].create_transform_job(
        TransformJobName=NAME, ModelName=NAME, MaxConcurrentTransforms=workers,
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/{NAME}/input/"}},
                        "ContentType": "application/x-npy"},
        TransformOutput={"S3OutputPath": f"s3://{bucket}/{NAME}/output", "Accept": "application/json"},
        TransformResources={"InstanceType": INSTANCE_TYPE, "InstanceCount": 1},
    )
    described, seconds = wait_until(lambda: aws["sagemaker"].describe_transform_job(TransformJobName=NAME),
                                    "TransformJobStatus", {"Completed", "Failed", "Stopped"}, f"transform job {NAME}")
    if described["TransformJobStatus"] != "Completed":
        raise RuntimeError(f"transform job {NAME} ended {described['TransformJobStatus']}: {described.get('FailureReason')}")
    digits = batch_predictions.read_predictions(shards, f"s3://{bucket}/{NAME}/output", s3_client=aws["s3"])
    return {"images": len(digits), "shards": len(shards), "max_concurrent_transforms": workers, "seconds": seconds,
            "images_per_second": len(digits) / seconds, "digits": digits}


def in_process(model_dir: Path, images: torch.Tensor) -> dict[str, Any]:
    """The same shards through the same handlers in this process: the time and the answers."""
    model = inference.model_fn(str(model_dir))
    bodies = [deployment.npy_body(shard.numpy()) for shard in images.split(inference.MAX_BATCH)]
    digits: list[int] = []
    start = time.perf_counter()
    for body in bodies:
        answer = inference.output_fn(inference.predict_fn(inference.input_fn(body, "application/x-npy"), model),
                                     "application/json")
        digits += deployment.digits_of(answer)
    seconds = time.perf_counter() - start
    return {"images": len(digits), "seconds": seconds, "images_per_second": len(digits) / seconds, "digits": digits}


def serving_section(requests: int, transform_images: int, images: np.ndarray, work: Path) -> dict[str, Any]:
    """Section 8: the endpoint's latency at concurrency 1 and 8, and batch transform against in-process handlers."""
    digits = torch.from_numpy(np.asarray(images))
    work.mkdir(parents=True, exist_ok=True)
    with local_aws_endpoint(work / "aws") as endpoint:
        aws = clients(endpoint)
        model, in_service_s = serve_model(aws, endpoint.bucket, work)
        try:
            endpoint_figures = endpoint_latency(aws, digits[:requests])
            batch = transform(aws, endpoint.bucket, digits[:transform_images], workers=2)
        finally:
            endpoint_cleanup.delete_deployment(model, aws["sagemaker"])
        here = in_process(work / "model", digits[:transform_images])
    if batch.pop("digits") != here.pop("digits"):
        raise RuntimeError("the transform job and the handlers in this process answered differently")
    one, eight = (endpoint_figures[str(concurrency)] for concurrency in CONCURRENCY)
    return {
        "instance_type": INSTANCE_TYPE,
        "seconds_to_in_service": in_service_s,
        "endpoint": endpoint_figures,
        "endpoint_throughput_ratio_8_to_1": eight["requests_per_second"] / one["requests_per_second"],
        "transform": batch,
        "in_process": here,
        "in_process_to_transform_ratio": here["images_per_second"] / batch["images_per_second"],
        "shards_expected": math.ceil(transform_images / inference.MAX_BATCH),
    }


def table_rows(section: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """The rows of section 8 in bench.py's table."""
    one, eight = section["endpoint"]["1"], section["endpoint"]["8"]
    batch, here = section["transform"], section["in_process"]

    def figures(measured: dict[str, Any], clients_count: int) -> str:
        return (f"{clients_count} client(s): p50 {measured['p50_ms']:.1f} ms, p99 {measured['p99_ms']:.1f} ms, "
                f"{measured['requests_per_second']:.0f} req/s")

    return [
        ("8 serving", f"endpoint, {one['requests']} single-image InvokeEndpoint requests; {figures(one, 1)}",
         "", "", ""),
        ("", f"  {figures(eight, 8)} (throughput at 8 / at 1)", f"{section['endpoint_throughput_ratio_8_to_1']:.2f}x",
         "", ""),
        ("", f"handlers in process {here['images_per_second']:.0f} img/s / transform job {batch['images_per_second']:.0f} "
             f"img/s ({batch['images']} digits, {batch['shards']} shards, {batch['seconds']:.1f} s with start-up)",
         f"{section['in_process_to_transform_ratio']:.1f}x", "", ""),
    ]

"""Batch transform jobs that really run behind the local AWS endpoint, the way SageMaker runs them.

moto 5.2.5 stores a CreateTransformJob request and reports the job `Completed` at once, having read
nothing and written nothing. `install()` overrides its responses in the endpoint's own process so that a
transform job:

1. reports `InProgress`; the job's model (CreateModel's container) is unpacked as /opt/ml/model and the
   PyTorch serving container's model server starts on 127.0.0.1, with the model's environment, the job's
   Environment and SageMaker's batch variables (SAGEMAKER_BATCH, SAGEMAKER_MAX_PAYLOAD_IN_MB, ...), and
   MaxConcurrentTransforms workers: the same handlers an endpoint of that model runs
   (serving_container.py, model_server.py);
2. reads every object under TransformInput's S3 prefix (S3DataType S3Prefix; CompressionType None or
   Gzip) and sends it to /invocations with the input's ContentType and the output's Accept: the whole
   object as one request (SplitType None), or its lines (SplitType Line), one per request
   (BatchStrategy SingleRecord) or as many as fit MaxPayloadInMB (MultiRecord), MaxConcurrentTransforms
   requests at a time;
3. writes one `<object>.out` per input object under S3OutputPath, keeping the object's path below the
   prefix: the answer itself, or the answers of its lines joined as AssembleWith says (Line: each
   followed by a newline; None: back to back);
4. ends `Completed`, or `Failed` at the first object the model refuses or cannot answer, with a
   FailureReason naming the object, the status and the model's message (ClientError for a 4xx, as
   SageMaker says, AlgorithmError for a 5xx); StopTransformJob ends it `Stopped` after the requests
   under way;
5. logs to CloudWatch Logs as SageMaker does, group /aws/sagemaker/TransformJobs: the model server's
   output in `<job>/<instance id>`, one line per object in `<job>/<instance id>/data-log`.

Where it differs: one instance, whatever InstanceCount says (the objects are not spread over instances);
no /execution-parameters call; DataProcessing (input and output filters, joins), ManifestFile inputs and
RecordIO or TFRecord splits are refused with a reason.
"""

from __future__ import annotations

import concurrent.futures
import copy
import gzip
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
import urllib3
from botocore.exceptions import ClientError

from . import serving_container
from .moto_patch import override_responses, utcnow
from .s3_io import split_s3_uri

from moto.core.responses import ActionResult, EmptyResult  # noqa: E402,I001 - after moto_patch's version check
from moto.sagemaker.exceptions import ValidationError  # noqa: E402
from moto.sagemaker.models import FakeTransformJob  # noqa: E402
from moto.sagemaker.responses import SageMakerResponse  # noqa: E402

logger = logging.getLogger("local_sagemaker.transform_jobs")

LOG_GROUP = "/aws/sagemaker/TransformJobs"
FAILURE_REASON_LIMIT = 1024
DEFAULT_MAX_PAYLOAD_MB = 6  # SageMaker's default MaxPayloadInMB
INVOCATION_TIMEOUT_S = 60.0  # ModelClientConfig's default InvocationsTimeoutInSeconds
SHUTDOWN_GRACE_S = 5.0  # how long model servers get to stop when the endpoint goes away
REQUEST_FIELDS = ("TransformJobName", "ModelName", "MaxConcurrentTransforms", "ModelClientConfig", "MaxPayloadInMB",
                  "BatchStrategy", "Environment", "TransformInput", "TransformOutput", "DataProcessing",
                  "TransformResources")


class TransformError(RuntimeError):
    """Why a transform job failed; the message is its FailureReason."""


@dataclass(frozen=True)
class Request:
    """One HTTP request of a job: its body and the object (and line range) it came from."""

    key: str
    index: int  # its place among the object's requests
    body: bytes


class TransformJobRun(threading.Thread):
    """One transform job: its model server, its requests, its outputs and its status."""

    def __init__(self, job: FakeTransformJob, request: dict[str, Any], model: Any, jobs_dir: Path,
                 servers: serving_container.Servers) -> None:
        super().__init__(name=f"transform-job {request['TransformJobName']}", daemon=True)
        self.job, self.request, self.model, self.servers = job, request, model, servers
        self.job_name = request["TransformJobName"]
        self.folder = jobs_dir / self.job_name
        self.stop_requested = threading.Event()
        self.lock = threading.Lock()
        self.server: Any = None
        session = boto3.session.Session()  # one per job: boto3's default session is not shared across threads
        self.s3, self.logs = session.client("s3"), session.client("logs")
        self.instance_id = f"i-{secrets.token_hex(8)}"
        self.set_status("InProgress", transform_start_time=utcnow(), transform_end_time=None)

    def set_status(self, status: str, failure_reason: str | None = None, **fields: Any) -> None:
        """Move the job to a status with its fields, in one step (a describe never sees half of it)."""
        with self.lock:
            for name, value in fields.items():
                setattr(self.job, name, value)
            self.job.failure_reason = failure_reason
            self.job.transform_job_status = status
            self.job.last_modified_time = utcnow()

    # --- the job -------------------------------------------------------------------------------------------

    def run(self) -> None:
        """The job's thread: start the model, transform every object, report the end."""
        try:
            count = self.transform()
        except (TransformError, serving_container.ServingError) as error:
            self.finish("Failed", str(error)[:FAILURE_REASON_LIMIT])
        except Exception as error:  # a fault of the runner itself fails the job loudly, as an internal error
            logger.exception("transform job %s: the local runner failed", self.job_name)
            self.finish("Failed", f"InternalServerError: local runner: {error!r}"[:FAILURE_REASON_LIMIT])
        else:
            self.finish("Stopped" if self.stop_requested.is_set() else "Completed")
            logger.info("transform job %s: %d objects transformed", self.job_name, count)

    def finish(self, status: str, failure_reason: str | None = None) -> None:
        """Stop the model server, then report the end (clients poll for the status)."""
        with self.lock:
            server, self.server = self.server, None
        if server is not None:
            server.stop()
        self.set_status(status, failure_reason, transform_end_time=utcnow())
        logger.info("transform job %s: %s %s", self.job_name, status, failure_reason or "")

    def transform(self) -> int:
        """Transform every input object; return how many."""
        source = self.request["TransformInput"]["DataSource"]["S3DataSource"]
        check_supported(self.request)
        server_log = serving_container.LogStream(self.logs, LOG_GROUP, f"{self.job_name}/{self.instance_id}")
        data_log = serving_container.LogStream(self.logs, LOG_GROUP, f"{self.job_name}/{self.instance_id}/data-log")
        container = serving_container.model_container(self.model)
        serving_container.check_image(container.image)
        environment = serving_container.unpack_model(self.s3, container, self.folder / "model")
        environment.update(self.batch_environment())
        environment.update(self.request.get("Environment") or {})
        server = serving_container.start_model_server(self.folder / "model", environment, self.concurrency(),
                                                      server_log, self.folder / "server.log", self.servers)
        with self.lock:
            self.server = server
        if self.stop_requested.is_set():
            return 0
        bucket, prefix = split_s3_uri(source["S3Uri"])
        keys = self.input_keys(bucket, prefix)
        if not keys:
            raise TransformError(f"ClientError: No S3 objects found under S3 URL \"{source['S3Uri']}\"")
        http = urllib3.PoolManager(maxsize=self.concurrency(), retries=False, timeout=self.invocation_timeout())
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.concurrency()) as pool:
            for key in keys:
                if self.stop_requested.is_set():
                    break
                answers = list(pool.map(lambda part: self.invoke(http, server.url, bucket, part),
                                        self.requests(bucket, key)))
                self.write_output(bucket, prefix, key, answers)
                data_log.write(f"{bucket}/{key}: transformed in {len(answers)} request(s)")
        return len(keys)

    # --- the requests --------------------------------------------------------------------------------------

    def concurrency(self) -> int:
        """MaxConcurrentTransforms: parallel requests to the instance, and so its model server's workers."""
        return int(self.request.get("MaxConcurrentTransforms") or 1)

    def max_payload_bytes(self) -> int:
        """MaxPayloadInMB in bytes."""
        return int(self.request.get("MaxPayloadInMB") or DEFAULT_MAX_PAYLOAD_MB) * 1024 * 1024

    def invocation_timeout(self) -> float:
        """ModelClientConfig.InvocationsTimeoutInSeconds, or SageMaker's default."""
        config = self.request.get("ModelClientConfig") or {}
        return float(config.get("InvocationsTimeoutInSeconds") or INVOCATION_TIMEOUT_S)

    def batch_environment(self) -> dict[str, str]:
        """The variables SageMaker gives a batch transform container."""
        return {
            "SAGEMAKER_BATCH": "true",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(self.max_payload_bytes() // (1024 * 1024)),
            "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": str(self.concurrency()),
            "SAGEMAKER_BATCH_STRATEGY": self.request.get("BatchStrategy") or "SingleRecord",
        }

    def input_keys(self, bucket: str, prefix: str) -> list[str]:
        """Every object under the prefix (folder markers aside), in key order."""
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", []) if not item["Key"].endswith("/")]
        return sorted(keys)

    def read_object(self, bucket: str, key: str) -> bytes:
        """An input object's bytes, decompressed when CompressionType is Gzip."""
        try:
            data = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as error:
            raise TransformError(f"ClientError: Could not read s3://{bucket}/{key}: {error}") from error
        if self.request["TransformInput"].get("CompressionType", "None") == "Gzip":
            try:
                return gzip.decompress(data)
            except (OSError, EOFError) as error:
                raise TransformError(f"ClientError: s3://{bucket}/{key} is not gzip data, as CompressionType Gzip "
                                     f"says ({error})") from error
        return data

    def requests(self, bucket: str, key: str) -> Iterator[Request]:
        """The HTTP requests of one object, as SplitType and BatchStrategy cut it."""
        data = self.read_object(bucket, key)
        limit = self.max_payload_bytes()
        if self.request["TransformInput"].get("SplitType", "None") == "None":
            if len(data) > limit:
                raise TransformError(f"ClientError: s3://{bucket}/{key} is {len(data):,} bytes, more than "
                                     f"MaxPayloadInMB ({limit // (1024 * 1024)} MB): split it, or use SplitType Line")
            yield Request(key, 0, data)
            return
        lines = [line + b"\n" for line in data.splitlines() if line.strip()]
        multi = self.request.get("BatchStrategy") == "MultiRecord"
        batch: list[bytes] = []
        index = 0
        for number, line in enumerate(lines, start=1):
            if len(line) > limit:
                raise TransformError(f"ClientError: line {number} of s3://{bucket}/{key} is {len(line):,} bytes, "
                                     f"more than MaxPayloadInMB ({limit // (1024 * 1024)} MB)")
            if batch and (not multi or sum(map(len, batch)) + len(line) > limit):
                yield Request(key, index, b"".join(batch))
                batch, index = [], index + 1
            batch.append(line)
        if batch:
            yield Request(key, index, b"".join(batch))

    def invoke(self, http: urllib3.PoolManager, url: str, bucket: str, request: Request) -> bytes:
        """One request to the model server; its answer, or a TransformError naming the object."""
        headers = {}
        if content_type := self.request["TransformInput"].get("ContentType"):
            headers["Content-Type"] = content_type
        if accept := (self.request.get("TransformOutput") or {}).get("Accept"):
            headers["Accept"] = accept
        where = f"s3://{bucket}/{request.key}" + (f" (request {request.index + 1})" if request.index else "")
        try:
            answer = http.request("POST", f"{url}/invocations", body=request.body, headers=headers)
        except urllib3.exceptions.HTTPError as error:
            raise TransformError(f"AlgorithmError: the model server did not answer for {where}: {error}") from error
        if answer.status >= 400:
            kind = "ClientError" if answer.status < 500 else "AlgorithmError"
            message = answer.data.decode("utf-8", errors="replace")
            raise TransformError(f"{kind}: the model answered {answer.status} for {where}: {message}")
        return answer.data

    def write_output(self, bucket: str, prefix: str, key: str, answers: list[bytes]) -> str:
        """Write `<key below the prefix>.out` under S3OutputPath; return its URI."""
        output = self.request["TransformOutput"]
        out_bucket, out_prefix = split_s3_uri(output["S3OutputPath"])
        relative = PurePosixPath(key).name if key == prefix else key[len(prefix):].lstrip("/")
        out_key = "/".join(part for part in (out_prefix.rstrip("/"), relative + ".out") if part)
        separator = b"\n" if output.get("AssembleWith") == "Line" else b""
        body = b"".join(answer + separator for answer in answers)
        self.s3.put_object(Bucket=out_bucket, Key=out_key, Body=body)
        return f"s3://{out_bucket}/{out_key}"

    def request_stop(self) -> None:
        """StopTransformJob: no new request starts; the job ends Stopped once those under way are answered."""
        with self.lock:
            if self.job.transform_job_status != "InProgress":
                raise ValidationError(f"The transform job {self.job_name} is {self.job.transform_job_status}: only an "
                                      "InProgress job can be stopped.")
            self.job.transform_job_status = "Stopping"
        self.stop_requested.set()


def check_supported(request: dict[str, Any]) -> None:
    """Refuse, with a reason, what the local runner does not do (SageMaker would do it)."""
    source = request["TransformInput"]["DataSource"].get("S3DataSource") or {}
    if source.get("S3DataType", "S3Prefix") != "S3Prefix":
        raise TransformError("ClientError: the local runner reads S3Prefix inputs only, not ManifestFile or "
                             "AugmentedManifestFile")
    if request["TransformInput"].get("SplitType", "None") not in ("None", "Line"):
        raise TransformError("ClientError: the local runner splits inputs by Line or not at all (SplitType None "
                             "or Line), not by RecordIO or TFRecord")
    if request["TransformInput"].get("CompressionType", "None") not in ("None", "Gzip"):
        raise TransformError("ClientError: CompressionType must be None or Gzip")
    processing = request.get("DataProcessing") or {}
    if any(processing.get(name) not in (None, "", "$", "None") for name in ("InputFilter", "OutputFilter",
                                                                             "JoinSource")):
        raise TransformError("ClientError: the local runner does not filter or join records (DataProcessing)")


class TransformJobs:
    """The transform jobs of this endpoint."""

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir
        self.runs: dict[str, TransformJobRun] = {}
        self.servers = serving_container.Servers()  # every job's model server, even one still loading
        self.restore: Callable[[], None] | None = None

    def shutdown(self) -> None:
        """Stop what still runs and put moto's responses back; the endpoint is going away."""
        for run in self.runs.values():
            run.stop_requested.set()
        self.servers.stop_all(SHUTDOWN_GRACE_S)
        for run in self.runs.values():
            run.join(timeout=60)
        if self.restore is not None:
            self.restore()


def install(state_dir: Path) -> TransformJobs:
    """Override moto's responses: CreateTransformJob runs the job, DescribeTransformJob reports it as SageMaker
    does, StopTransformJob stops it."""
    jobs = TransformJobs(state_dir / "transform-jobs")

    def create_transform_job(self: SageMakerResponse) -> ActionResult:
        """moto stores the job; then it runs here, InProgress."""
        request = {name: copy.deepcopy(self._get_param(name)) for name in REQUEST_FIELDS}
        model = self.sagemaker_backend._models.get(request["ModelName"])
        if model is None:
            raise ValidationError(f"Could not find model \"{request['ModelName']}\".")
        if request["TransformJobName"] in self.sagemaker_backend.transform_jobs:
            raise ValidationError(f"Job name must be unique within an AWS account and region, and a job with this "
                                  f"name already exists ({request['TransformJobName']})")
        result = patch.original("create_transform_job")(self)
        job = self.sagemaker_backend.transform_jobs[request["TransformJobName"]]
        definition = {"ModelName": model.model_name, "PrimaryContainer": model.primary_container,
                      "Containers": model.containers}
        run = TransformJobRun(job, request, definition, jobs.jobs_dir, jobs.servers)
        jobs.runs[run.job_name] = run
        run.start()
        return result

    def describe_transform_job(self: SageMakerResponse) -> ActionResult:
        """The job as SageMaker describes it: nothing empty (moto answers empty strings for absent fields)."""
        answer = self.sagemaker_backend.describe_transform_job(self._get_param("TransformJobName"))
        return ActionResult({name: value for name, value in answer.items() if value not in ("", {}, [])})

    def stop_transform_job(self: SageMakerResponse) -> EmptyResult:
        """No new request starts; Stopped once those under way are answered."""
        name = self._get_param("TransformJobName")
        self.sagemaker_backend.describe_transform_job(name)  # an unknown job is a ValidationException
        run = jobs.runs.get(name)
        if run is None:
            raise ValidationError(f"Transform job {name!r} was not started by this endpoint.")
        run.request_stop()
        return EmptyResult()

    patch = override_responses({
        "create_transform_job": create_transform_job,
        "describe_transform_job": describe_transform_job,
        "stop_transform_job": stop_transform_job,
    })
    jobs.restore = patch.restore
    logger.info("transform jobs run under %s", jobs.jobs_dir)
    return jobs

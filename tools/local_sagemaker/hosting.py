"""Real-time and serverless endpoints that really serve behind the local AWS endpoint, as SageMaker hosts them.

moto 5.2.5 stores models, endpoint configurations and endpoints, reports every endpoint `InService` at
once, and answers InvokeEndpoint with a fixed string. `install()` overrides its responses in the endpoint's
own process (`local_aws.py serve`) so that:

1. CreateModel keeps the whole container definition (image, ModelDataUrl, Environment: the
   SAGEMAKER_PROGRAM and SAGEMAKER_SUBMIT_DIRECTORY that the SDK sets); DescribeModel and
   DescribeEndpointConfig answer as SageMaker does, leaving out what the request did not give (moto
   answers an empty VpcConfig and DataCaptureConfig, which SDK 3's resource classes refuse).
2. CreateEndpoint answers `Creating`; then, for each production variant and each of its instances
   (InitialInstanceCount; one for a ServerlessConfig variant), the model's archive is unpacked into a
   folder laid out as /opt/ml/model and the PyTorch serving container's model server starts on
   127.0.0.1 (serving_container.py, model_server.py). The endpoint becomes `InService` when every
   instance answers /ping, or `Failed` with a FailureReason naming the cause (an archive that is
   damaged or whose members escape, an image that is not a PyTorch inference image, a model_fn that
   raises or is missing when no TorchScript model.pt exists).
3. Each instance's output goes to CloudWatch Logs, group `/aws/sagemaker/Endpoints/<endpoint>`, stream
   `<variant>/<instance id>`, as SageMaker sends a container's.
4. sagemaker-runtime InvokeEndpoint sends the body with its Content-Type, Accept and custom attributes
   to /invocations of one instance (variants by weight, or X-Amzn-SageMaker-Target-Variant; instances in
   turn) and answers with the container's body and Content-Type. A container's 4xx or 5xx becomes
   SageMaker's `ModelError` (HTTP 424) carrying the original status and message; an endpoint that is not
   InService, or unknown, is a `ValidationError`.
5. UpdateEndpoint (`Updating`) starts the new configuration's instances while the old ones go on
   answering, switches the traffic over, then stops the old ones: no request is refused. When the new
   configuration cannot be served, the endpoint rolls back to the old one, InService with the
   FailureReason, as SageMaker does.
6. DeleteEndpoint stops the endpoint's model servers (SIGTERM, then SIGKILL after a grace period) before
   moto forgets it.

Where it differs from SageMaker: instances are processes on this machine, not instances of their type
(no GPU, the instance type only names them); a serverless variant is one always-started instance, so
there are no cold starts and MaxConcurrency is not enforced; a model server's default worker count is
one per CPU of this machine (TorchServe's is one per vCPU of the instance); Deleting is not reported (the
servers are stopped before DeleteEndpoint answers).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import random
import secrets
import shutil
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import urllib3

from . import serving_container
from .moto_patch import override_responses, utcnow

from moto.core.responses import ActionResult, EmptyResult  # noqa: E402,I001 - after moto_patch's version check
from moto.sagemaker.exceptions import ValidationError  # noqa: E402
from moto.sagemaker.models import FakeEndpoint  # noqa: E402
from moto.sagemaker.responses import SageMakerResponse  # noqa: E402
from moto.sagemakerruntime.responses import SageMakerRuntimeResponse  # noqa: E402

if TYPE_CHECKING:
    from .model_server import ModelServer

logger = logging.getLogger("local_sagemaker.hosting")

LOG_GROUP_PREFIX = "/aws/sagemaker/Endpoints/"
INVOCATION_TIMEOUT_S = 60.0  # SageMaker waits 60 s for a container's answer
# The headers of InvokeEndpoint that reach the container, and those of its answer that come back.
FORWARDED_HEADERS = ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes")
TARGET_VARIANT_HEADER = "X-Amzn-SageMaker-Target-Variant"
WORKERS_VARIABLE = "SAGEMAKER_MODEL_SERVER_WORKERS"
# InvokeEndpoint's largest request body: 6 MB for a real-time endpoint, 4 MB for a serverless one.
MAX_BODY_BYTES = {False: 6 * 1024 * 1024, True: 4 * 1024 * 1024}
# How long the model servers get to stop when the endpoint goes away (local_aws.py gives it 10 s in all).
SHUTDOWN_GRACE_S = 5.0


@dataclass
class Instance:
    """One instance of a production variant: its id (as in the log stream's name) and its model server."""

    instance_id: str
    server: ModelServer


@dataclass
class Variant:
    """A production variant being served: its model, weight and instances (taking requests in turn)."""

    name: str
    model_name: str
    weight: float
    serverless: bool
    instances: list[Instance]
    turns: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.turns = itertools.cycle(self.instances)
        self.turn_lock = threading.Lock()

    def next_instance(self) -> Instance:
        """The instance whose turn it is."""
        with self.turn_lock:
            return next(self.turns)


@dataclass
class Deployment:
    """The variants of one endpoint configuration, running, and how many requests are on their way to them."""

    config_name: str
    variants: dict[str, Variant]
    in_flight: int = 0
    idle: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def begin_request(self) -> None:
        with self.idle:
            self.in_flight += 1

    def end_request(self) -> None:
        with self.idle:
            self.in_flight -= 1
            self.idle.notify_all()

    def wait_until_idle(self) -> None:
        """Wait until every request that was sent to this deployment has been answered."""
        with self.idle:
            self.idle.wait_for(lambda: self.in_flight == 0)

    def choose(self, target_variant: str | None) -> Variant:
        """The variant a request goes to: the one it names, else one drawn by the variants' weights."""
        if target_variant:
            if target_variant not in self.variants:
                raise KeyError(target_variant)
            return self.variants[target_variant]
        variants = list(self.variants.values())
        weights = [variant.weight for variant in variants]
        if not any(weights):  # SageMaker accepts all-zero weights and then routes nothing; here: equally
            weights = [1.0] * len(variants)
        return random.choices(variants, weights)[0]

    def stop(self) -> None:
        """Stop every instance's model server."""
        for variant in self.variants.values():
            for instance in variant.instances:
                instance.server.stop()


class HostedEndpoint:
    """One endpoint: its status as DescribeEndpoint reports it and the deployment serving it, under one lock."""

    def __init__(self, fake: FakeEndpoint) -> None:
        self.fake = fake
        self.lock = threading.Lock()
        self.deployment: Deployment | None = None
        self.deleted = False

    @property
    def name(self) -> str:
        return self.fake.endpoint_name

    def set_status(self, status: str, failure_reason: str | None = None, **fields: Any) -> None:
        """Move the endpoint to a status; the fields (FailureReason, ...) change with it, in one step."""
        with self.lock:
            self.fake.failure_reason = failure_reason
            for name, value in fields.items():
                setattr(self.fake, name, value)
            self.fake.endpoint_status = status
            self.fake.last_modified_time = utcnow()


class Hosting:
    """The models, endpoint configurations and endpoints of this local SageMaker, and their model servers."""

    def __init__(self, endpoints_dir: Path) -> None:
        self.endpoints_dir = endpoints_dir
        self.models: dict[str, dict[str, Any]] = {}  # CreateModel requests, whole
        self.configs: dict[str, dict[str, Any]] = {}  # CreateEndpointConfig requests, whole
        self.endpoints: dict[str, HostedEndpoint] = {}
        self.threads: list[threading.Thread] = []
        self.servers = serving_container.Servers()  # every model server started, even one still loading
        self.http = urllib3.PoolManager(maxsize=32, retries=False, timeout=INVOCATION_TIMEOUT_S)
        self.restore: list[Callable[[], None]] = []
        self.clients_lock = threading.Lock()
        self._clients: tuple[Any, Any, str] | None = None

    def clients(self) -> tuple[Any, Any, str]:
        """S3 and CloudWatch Logs clients of this endpoint, and its region; made at first use, once the
        endpoint's environment (its URL, region and credentials) is set."""
        with self.clients_lock:
            if self._clients is None:
                session = boto3.session.Session()  # its own: boto3's default session is not shared across threads
                self._clients = (session.client("s3"), session.client("logs"), session.region_name)
            return self._clients

    # --- starting configurations -------------------------------------------------------------------------

    def deploy(self, endpoint: HostedEndpoint, config_name: str) -> Deployment:
        """Start every instance of every production variant of a configuration; ServingError if one cannot serve."""
        config = self.configs[config_name]
        started: dict[str, Variant] = {}
        deployment = Deployment(config_name, started)
        try:
            for variant in config["ProductionVariants"]:
                started[variant["VariantName"]] = self.start_variant(endpoint.name, variant)
        except BaseException:
            deployment.stop()
            raise
        return deployment

    def start_variant(self, endpoint_name: str, variant: dict[str, Any]) -> Variant:
        """Start the instances of one production variant."""
        name = variant["VariantName"]
        model_request = self.models.get(variant["ModelName"])
        if model_request is None:
            raise serving_container.ServingError(f"ClientError: Could not find model \"{variant['ModelName']}\".")
        container = serving_container.model_container(model_request)
        serving_container.check_image(container.image)
        serverless = bool(variant.get("ServerlessConfig"))
        count = 1 if serverless else int(variant.get("InitialInstanceCount") or 1)
        # The model's SAGEMAKER_MODEL_SERVER_WORKERS, else one worker per CPU of this machine (one for serverless).
        workers = None if WORKERS_VARIABLE in container.environment else (1 if serverless else os.cpu_count() or 1)
        instances: list[Instance] = []
        try:
            for _ in range(count):
                instance_id = f"i-{secrets.token_hex(8)}"
                folder = self.endpoints_dir / endpoint_name / instance_id
                s3, logs, _ = self.clients()
                environment = serving_container.unpack_model(s3, container, folder / "model")
                log = serving_container.LogStream(logs, LOG_GROUP_PREFIX + endpoint_name, f"{name}/{instance_id}")
                try:
                    server = serving_container.start_model_server(folder / "model", environment, workers, log,
                                                                  folder / "server.log", self.servers)
                except serving_container.ServingError as error:
                    raise serving_container.ServingError(
                        f"{error}. The primary container for production variant {name} did not pass the ping "
                        f"health check: see CloudWatch Logs {LOG_GROUP_PREFIX}{endpoint_name}, stream {log.stream}"
                    ) from error
                instances.append(Instance(instance_id, server))
        except BaseException:
            for instance in instances:
                instance.server.stop()
            raise
        weight = float(variant.get("InitialVariantWeight", 1.0))
        return Variant(name, variant["ModelName"], weight, serverless, instances)

    def run_in_thread(self, target: Callable[[], None], name: str) -> None:
        """Run a creation or update in its own thread, as SageMaker answers before the endpoint is ready."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def create(self, endpoint: HostedEndpoint) -> None:
        """CreateEndpoint's work: Creating, then InService or Failed."""
        config_name = endpoint.fake.endpoint_config_name
        try:
            deployment = self.deploy(endpoint, config_name)
        except serving_container.ServingError as error:
            logger.info("endpoint %s failed: %s", endpoint.name, error)
            endpoint.set_status("Failed", str(error))
            return
        except Exception as error:  # a fault of the local SageMaker itself fails the endpoint loudly
            logger.exception("endpoint %s: the local hosting failed", endpoint.name)
            endpoint.set_status("Failed", f"InternalServerError: local hosting: {error!r}")
            return
        with endpoint.lock:
            if endpoint.deleted:  # DeleteEndpoint arrived while it was starting
                stale = deployment
            else:
                stale, endpoint.deployment = None, deployment
        if stale is not None:
            stale.stop()
            return
        endpoint.set_status("InService")
        logger.info("endpoint %s is InService (%s)", endpoint.name, config_name)

    def update(self, endpoint: HostedEndpoint, config_name: str, variants: list[dict[str, Any]]) -> None:
        """UpdateEndpoint's work: the new configuration starts, takes the traffic, then the old one stops."""
        try:
            deployment = self.deploy(endpoint, config_name)
        except serving_container.ServingError as error:
            # SageMaker rolls the endpoint back: it stays InService on the old configuration.
            logger.info("endpoint %s: update to %s failed: %s", endpoint.name, config_name, error)
            endpoint.set_status("InService", f"The update to endpoint configuration {config_name} failed and was "
                                             f"rolled back: {error}")
            return
        with endpoint.lock:
            old, endpoint.deployment = endpoint.deployment, deployment
            endpoint.fake.endpoint_config_name = config_name
            endpoint.fake.production_variants = endpoint.fake._process_production_variants(variants)
        if old is not None:  # after the switch, no new request reaches it: those on their way are answered first
            old.wait_until_idle()
            old.stop()
        endpoint.set_status("InService")
        logger.info("endpoint %s now serves %s", endpoint.name, config_name)

    def delete(self, name: str) -> None:
        """DeleteEndpoint's work: stop what serves the endpoint."""
        endpoint = self.endpoints.pop(name, None)
        if endpoint is None:
            return
        with endpoint.lock:
            endpoint.deleted = True
            deployment, endpoint.deployment = endpoint.deployment, None
        if deployment is not None:
            deployment.stop()
        shutil.rmtree(self.endpoints_dir / name, ignore_errors=True)

    def shutdown(self) -> None:
        """Stop every model server and put moto's responses back; the endpoint is going away."""
        for endpoint in list(self.endpoints.values()):
            with endpoint.lock:
                endpoint.deleted = True  # a creation or update under way stops what it started
        self.servers.stop_all(SHUTDOWN_GRACE_S)  # those still loading too: their creation then ends Failed
        for thread in self.threads:
            thread.join(timeout=30)
        for restore in self.restore:
            restore()

    # --- answering requests ----------------------------------------------------------------------------------

    def invoke(self, name: str, body: bytes, headers: Any) -> tuple[int, dict[str, str], bytes | str]:
        """InvokeEndpoint: the container's answer, or SageMaker's error for it."""
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            return runtime_error(400, "ValidationError", f"Endpoint {name} of account {endpoint_account(None)} not found.")
        with endpoint.lock:  # the deployment cannot be switched between choosing it and counting the request
            deployment = endpoint.deployment
            if deployment is not None:
                deployment.begin_request()
        if deployment is None:
            return runtime_error(400, "ValidationError", f"Endpoint {name} of account {endpoint_account(endpoint)} "
                                                         f"not found. (it is {endpoint.fake.endpoint_status})")
        try:
            return self.send(endpoint, deployment, body, headers)
        finally:
            deployment.end_request()

    def send(self, endpoint: HostedEndpoint, deployment: Deployment, body: bytes,
             headers: Any) -> tuple[int, dict[str, str], bytes | str]:
        """Send a request to one instance of the deployment's chosen variant; its answer as InvokeEndpoint's."""
        try:
            variant = deployment.choose(headers.get(TARGET_VARIANT_HEADER))
        except KeyError:
            return runtime_error(400, "ValidationError", f"Endpoint {endpoint.name} has no production variant "
                                                         f"{headers.get(TARGET_VARIANT_HEADER)!r}.")
        limit = MAX_BODY_BYTES[variant.serverless]
        if len(body) > limit:
            kind = "a serverless endpoint" if variant.serverless else "InvokeEndpoint for a real-time endpoint"
            return runtime_error(400, "ValidationError", f"The request body of {len(body):,} bytes exceeds the "
                                                         f"{limit // (1024 * 1024)} MB limit of {kind}.")
        instance = variant.next_instance()
        forwarded = {header: headers[header] for header in FORWARDED_HEADERS if headers.get(header)}
        try:
            answer = self.http.request("POST", f"{instance.server.url}/invocations", body=body, headers=forwarded)
        except urllib3.exceptions.TimeoutError:
            return self.model_error(endpoint, variant, instance, 0, f"Your invocation timed out while waiting for a "
                                    f"response from container primary of production variant {variant.name}.")
        except urllib3.exceptions.HTTPError as error:
            return self.model_error(endpoint, variant, instance, 0, f"the container could not be reached: {error}")
        if answer.status >= 400:
            return self.model_error(endpoint, variant, instance, answer.status, answer.data.decode(errors="replace"))
        response_headers = {"Content-Type": answer.headers.get("Content-Type", "application/octet-stream"),
                            "x-Amzn-Invoked-Production-Variant": variant.name}
        if custom := answer.headers.get("X-Amzn-SageMaker-Custom-Attributes"):
            response_headers["X-Amzn-SageMaker-Custom-Attributes"] = custom
        return 200, response_headers, answer.data

    def model_error(self, endpoint: HostedEndpoint, variant: Variant, instance: Instance, status: int,
                    message: str) -> tuple[int, dict[str, str], str]:
        """SageMaker's ModelError for a container's error answer, naming its status, message and log."""
        kind = "client" if 400 <= status < 500 else "server"
        region = self.clients()[2]
        group = LOG_GROUP_PREFIX + endpoint.name
        account = endpoint_account(endpoint)
        console = (f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
                   f"#logEventViewer:group={group}")
        text = (f"Received {kind} error ({status}) from primary with message \"{message}\". See {console} in account "
                f"{account} for more information.")
        stream_arn = f"arn:aws:logs:{region}:{account}:log-group:{group}:log-stream:{variant.name}/{instance.instance_id}"
        return runtime_error(424, "ModelError", text, OriginalStatusCode=status, OriginalMessage=message,
                             LogStreamArn=stream_arn)


def endpoint_account(endpoint: HostedEndpoint | None) -> str:
    """The account in an endpoint's ARN (arn:aws:sagemaker:<region>:<account>:endpoint/<name>)."""
    return endpoint.fake.arn.split(":")[4] if endpoint is not None else "123456789012"


def runtime_error(status: int, code: str, message: str, **fields: Any) -> tuple[int, dict[str, str], str]:
    """A sagemaker-runtime error response as botocore parses it (rest-json: code in x-amzn-ErrorType).

    moto's server takes a response's status from its "status" header.
    """
    headers = {"Content-Type": "application/json", "x-amzn-ErrorType": code, "status": str(status)}
    return status, headers, json.dumps({"message": message, **fields})


def described_model(request: dict[str, Any], arn: str, created: Any) -> dict[str, Any]:
    """DescribeModel as SageMaker answers it: what the request gave, nothing empty."""
    answer = {"ModelName": request["ModelName"], "ModelArn": arn, "CreationTime": created}
    for name in ("PrimaryContainer", "Containers", "InferenceExecutionConfig", "ExecutionRoleArn", "VpcConfig"):
        if request.get(name):
            answer[name] = request[name]
    answer["EnableNetworkIsolation"] = bool(request.get("EnableNetworkIsolation"))
    return answer


def described_endpoint_config(request: dict[str, Any], arn: str, created: Any) -> dict[str, Any]:
    """DescribeEndpointConfig as SageMaker answers it: what the request gave, nothing empty."""
    answer = {"EndpointConfigName": request["EndpointConfigName"], "EndpointConfigArn": arn, "CreationTime": created}
    for name in ("ProductionVariants", "DataCaptureConfig", "KmsKeyId", "AsyncInferenceConfig", "ExplainerConfig",
                 "ShadowProductionVariants", "ExecutionRoleArn", "VpcConfig", "EnableNetworkIsolation"):
        if request.get(name) not in (None, {}, []):
            answer[name] = request[name]
    return answer


CREATE_MODEL_FIELDS = ("ModelName", "PrimaryContainer", "Containers", "InferenceExecutionConfig", "ExecutionRoleArn",
                       "VpcConfig", "EnableNetworkIsolation", "Tags")
CREATE_ENDPOINT_CONFIG_FIELDS = ("EndpointConfigName", "ProductionVariants", "DataCaptureConfig", "KmsKeyId",
                                 "AsyncInferenceConfig", "ExplainerConfig", "ShadowProductionVariants",
                                 "ExecutionRoleArn", "VpcConfig", "EnableNetworkIsolation", "Tags")


def install(state_dir: Path) -> Hosting:
    """Override moto's responses for models, endpoint configurations, endpoints and InvokeEndpoint."""
    hosting = Hosting(state_dir / "endpoints")

    def request_of(response: SageMakerResponse, fields: tuple[str, ...]) -> dict[str, Any]:
        return {name: copy.deepcopy(response._get_param(name)) for name in fields if response._get_param(name) is not None}

    def create_model(self: SageMakerResponse) -> ActionResult:
        """moto stores the model; the whole request is kept for its container."""
        request = request_of(self, CREATE_MODEL_FIELDS)
        result = patch.original("create_model")(self)
        hosting.models[request["ModelName"]] = request
        return result

    def describe_model(self: SageMakerResponse) -> ActionResult:
        """The model as its request defined it."""
        name = self._get_param("ModelName")
        model = self.sagemaker_backend.describe_model(name)  # an unknown model is a ValidationException
        request = hosting.models.get(name) or {"ModelName": name, "PrimaryContainer": model.primary_container}
        return ActionResult(described_model(request, model.arn, model.creation_time))

    def delete_model(self: SageMakerResponse) -> EmptyResult:
        result = patch.original("delete_model")(self)
        hosting.models.pop(self._get_param("ModelName"), None)
        return result

    def create_endpoint_config(self: SageMakerResponse) -> ActionResult:
        """moto stores the configuration (and checks its models exist); the whole request is kept."""
        request = request_of(self, CREATE_ENDPOINT_CONFIG_FIELDS)
        result = patch.original("create_endpoint_config")(self)
        hosting.configs[request["EndpointConfigName"]] = request
        return result

    def describe_endpoint_config(self: SageMakerResponse) -> ActionResult:
        """The configuration as its request defined it."""
        name = self._get_param("EndpointConfigName")
        self.sagemaker_backend.describe_endpoint_config(name)  # an unknown one is a ValidationException
        config = self.sagemaker_backend.endpoint_configs[name]
        request = hosting.configs.get(name) or {"EndpointConfigName": name,
                                                "ProductionVariants": config.production_variants}
        return ActionResult(described_endpoint_config(request, config.endpoint_config_arn, config.creation_time))

    def delete_endpoint_config(self: SageMakerResponse) -> EmptyResult:
        result = patch.original("delete_endpoint_config")(self)
        hosting.configs.pop(self._get_param("EndpointConfigName"), None)
        return result

    def create_endpoint(self: SageMakerResponse) -> ActionResult:
        """moto stores the endpoint; it is Creating while its instances start."""
        name = self._get_param("EndpointName")
        if name in self.sagemaker_backend.endpoints:
            arn = self.sagemaker_backend.endpoints[name].arn
            raise ValidationError(f'Cannot create already existing endpoint "{arn}".')
        result = patch.original("create_endpoint")(self)
        endpoint = HostedEndpoint(self.sagemaker_backend.endpoints[name])
        endpoint.set_status("Creating")
        hosting.endpoints[name] = endpoint
        hosting.run_in_thread(lambda: hosting.create(endpoint), f"endpoint {name}")
        return result

    def describe_endpoint(self: SageMakerResponse) -> ActionResult:
        """The endpoint as SageMaker describes it: no empty DataCaptureConfig."""
        answer = self.sagemaker_backend.describe_endpoint(self._get_param("EndpointName"))
        if not answer.get("DataCaptureConfig"):
            answer.pop("DataCaptureConfig", None)
        return ActionResult(answer)

    def update_endpoint(self: SageMakerResponse) -> ActionResult:
        """Updating while the new configuration starts; the old one serves meanwhile."""
        name, config_name = self._get_param("EndpointName"), self._get_param("EndpointConfigName")
        self.sagemaker_backend.describe_endpoint(name)  # an unknown endpoint is a ValidationException
        config = self.sagemaker_backend.describe_endpoint_config(config_name)
        endpoint = hosting.endpoints.get(name)
        if endpoint is None or endpoint.fake.endpoint_status != "InService":
            status = endpoint.fake.endpoint_status if endpoint else "unknown"
            raise ValidationError(f"Cannot update in-progress endpoint \"{name}\": it is {status}, not InService.")
        endpoint.set_status("Updating")
        variants = config["ProductionVariants"]
        hosting.run_in_thread(lambda: hosting.update(endpoint, config_name, variants), f"endpoint {name} update")
        return ActionResult({"EndpointArn": endpoint.fake.arn})

    def delete_endpoint(self: SageMakerResponse) -> EmptyResult:
        """The endpoint's model servers stop, then moto forgets it."""
        name = self._get_param("EndpointName")
        self.sagemaker_backend.describe_endpoint(name)  # an unknown endpoint is a ValidationException
        hosting.delete(name)
        return patch.original("delete_endpoint")(self)

    def invoke_endpoint(self: SageMakerRuntimeResponse) -> tuple[int, dict[str, str], bytes | str]:
        """The request goes to one of the endpoint's model servers."""
        name = urllib.parse.unquote(self.path.split("/")[2])  # /endpoints/<name>/invocations
        return hosting.invoke(name, self.raw_body or b"", self.headers)

    patch = override_responses({
        "create_model": create_model,
        "describe_model": describe_model,
        "delete_model": delete_model,
        "create_endpoint_config": create_endpoint_config,
        "describe_endpoint_config": describe_endpoint_config,
        "delete_endpoint_config": delete_endpoint_config,
        "create_endpoint": create_endpoint,
        "describe_endpoint": describe_endpoint,
        "update_endpoint": update_endpoint,
        "delete_endpoint": delete_endpoint,
    })
    # Bodies are bytes (.npy, pictures): moto must not decode them as UTF-8 text or parse them as a query.
    runtime_patch = override_responses({"invoke_endpoint": invoke_endpoint, "use_raw_body": True},
                                       SageMakerRuntimeResponse)
    hosting.restore = [runtime_patch.restore, patch.restore]
    logger.info("endpoints are served under %s", hosting.endpoints_dir)
    return hosting

"""Delete what a deployment created: the endpoint, its endpoint configuration and its models.

`delete_models` deletes models that no endpoint serves, such as the one a batch transform job used.

A SageMaker endpoint bills by the hour until it is deleted. The clean-up starts from the endpoint that the
deploy call returned (not from a name computed earlier, which a re-run cell may have changed), reads its
endpoint configuration and models from SageMaker itself (DescribeEndpoint, DescribeEndpointConfig),
deletes all three, and checks with the List APIs that they are gone. A resource that is already gone is
reported as such, so running the clean-up twice is harmless; any other refusal raises a RuntimeError that
names the resource and what to do.

It uses boto3 rather than the SageMaker SDK's resource classes: SDK 3's classes refuse some describe
answers (an empty VpcConfig or DataCaptureConfig, as the local AWS endpoint gives them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
from botocore.exceptions import ClientError, WaiterError

# SageMaker answers every Describe or Delete of a missing resource with a ValidationException whose
# message starts like this ("Could not find endpoint ...", "... endpoint configuration ...", "... model ...").
NOT_FOUND_CODE, NOT_FOUND_MESSAGE = "ValidationException", "Could not find"


# SageMaker's API name of each resource (DescribeEndpointConfig, ListModels, ...) and how people say it.
KINDS = {"Endpoint": "endpoint", "EndpointConfig": "endpoint configuration", "Model": "model"}


@dataclass(frozen=True)
class Resource:
    """One SageMaker resource: its kind as SageMaker's API names it (Endpoint, EndpointConfig, Model) and its name."""

    api: str
    name: str

    def __str__(self) -> str:
        return f"{KINDS[self.api]} {self.name}"


def delete_deployment(endpoint: Any, sagemaker_client: Any | None = None) -> list[str]:
    """Delete a deployed endpoint, its endpoint configuration and its models; return one line per resource.

    `endpoint` is what the deploy call returned (SDK 3's `Endpoint`, or anything with an `endpoint_name`)
    or the endpoint's name. Raises RuntimeError when SageMaker refuses a call for any reason but "already
    gone", or when a List API still shows a deleted resource.
    """
    client = sagemaker_client or boto3.client("sagemaker")
    endpoint_name = endpoint if isinstance(endpoint, str) else getattr(endpoint, "endpoint_name", None)
    if not isinstance(endpoint_name, str) or not endpoint_name:
        raise TypeError(f"delete_deployment needs the endpoint the deploy call returned, or its name; got {endpoint!r}")
    resources = _deployed_resources(client, endpoint_name, getattr(endpoint, "endpoint_config_name", None))
    lines = [_delete(client, resource) for resource in resources]
    _check_listed_nowhere(client, resources)
    return lines


def delete_models(model_names: list[str], sagemaker_client: Any | None = None) -> list[str]:
    """Delete models that no endpoint serves (a batch transform's, say); one line per model; safe to repeat.

    Raises RuntimeError when SageMaker refuses a deletion for any reason but "already gone", or when
    ListModels still shows a deleted model.
    """
    client = sagemaker_client or boto3.client("sagemaker")
    models = [Resource("Model", name) for name in dict.fromkeys(model_names)]
    lines = [_delete(client, model) for model in models]
    _check_listed_nowhere(client, models)
    return lines


def _deployed_resources(client: Any, endpoint_name: str, known_config_name: Any) -> list[Resource]:
    """The endpoint, then its endpoint configuration and models, as SageMaker describes them."""
    endpoint = Resource("Endpoint", endpoint_name)
    described = _describe(client, endpoint)
    # After an interrupted clean-up the endpoint may be gone while its configuration is not: the deploy
    # call's object still knows the configuration's name.
    config_name = described["EndpointConfigName"] if described else known_config_name
    if not isinstance(config_name, str):
        return [endpoint]
    config = Resource("EndpointConfig", config_name)
    described_config = _describe(client, config) or {}
    variants = described_config.get("ProductionVariants", []) + described_config.get("ShadowProductionVariants", [])
    models = [Resource("Model", name) for name in dict.fromkeys(variant["ModelName"] for variant in variants)]
    return [endpoint, config, *models]


def _describe(client: Any, resource: Resource) -> dict[str, Any] | None:
    """The Describe answer for `resource`, or None when it does not exist."""
    try:
        return getattr(client, f"describe_{_snake(resource.api)}")(**{f"{resource.api}Name": resource.name})
    except ClientError as error:
        if _is_not_found(error):
            return None
        raise _refused(error, resource, "Describe") from error


def _delete(client: Any, resource: Resource) -> str:
    """Delete one resource (waiting until an endpoint is gone); say what happened in one line."""
    try:
        getattr(client, f"delete_{_snake(resource.api)}")(**{f"{resource.api}Name": resource.name})
    except ClientError as error:
        if _is_not_found(error):
            return f"{resource}: already gone, nothing to delete"
        raise _refused(error, resource, "Delete") from error
    if resource.api == "Endpoint":
        # DeleteEndpoint returns while the endpoint is still Deleting; it is billed until it is gone.
        try:
            client.get_waiter("endpoint_deleted").wait(EndpointName=resource.name)
        except WaiterError as error:
            raise RuntimeError(
                f"{resource} was asked to delete but is not gone ({error}): look at it in the SageMaker console "
                "(Inference > Endpoints) and run the clean-up again"
            ) from error
    return f"deleted {resource}"


def _check_listed_nowhere(client: Any, resources: list[Resource]) -> None:
    """Fail when ListEndpoints, ListEndpointConfigs or ListModels still shows one of `resources`."""
    for resource in resources:
        pages = client.get_paginator(f"list_{_snake(resource.api)}s").paginate(NameContains=resource.name)
        listed = {item[f"{resource.api}Name"] for page in pages for item in page[f"{resource.api}s"]}
        if resource.name in listed:
            raise RuntimeError(
                f"{resource} is still listed by List{resource.api}s after its deletion: delete it in the "
                f"SageMaker console or with `aws sagemaker delete-{_kebab(resource.api)} "
                f"--{_kebab(resource.api)}-name {resource.name}`"
            )


def _is_not_found(error: ClientError) -> bool:
    """True when SageMaker says the resource does not exist (already deleted, or never created)."""
    details = error.response.get("Error", {})
    return details.get("Code") == NOT_FOUND_CODE and details.get("Message", "").startswith(NOT_FOUND_MESSAGE)


def _refused(error: ClientError, resource: Resource, action: str) -> RuntimeError:
    """A RuntimeError naming the refused call, the resource, SageMaker's reason and what to do."""
    details = error.response.get("Error", {})
    reason = f"{details.get('Code', 'Error')}: {details.get('Message', error)}"
    return RuntimeError(
        f"SageMaker refused {action}{resource.api} for {resource} ({reason}). It may still exist and bill: "
        f"give the role sagemaker:{action}{resource.api} (or wait until the endpoint is InService or Failed) "
        "and run the clean-up again, or delete it in the SageMaker console"
    )


def _snake(api_name: str) -> str:
    """EndpointConfig -> endpoint_config: boto3's method names for SageMaker's operations."""
    return "".join(f"_{char.lower()}" if char.isupper() else char for char in api_name).lstrip("_")


def _kebab(api_name: str) -> str:
    """EndpointConfig -> endpoint-config: the AWS CLI's names for the same operations."""
    return _snake(api_name).replace("_", "-")

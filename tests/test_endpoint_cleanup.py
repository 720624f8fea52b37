"""Tests of code/endpoint_cleanup.py against the local AWS endpoint (moto keeps models, configs and endpoints).

The clean-up deletes what was deployed, whatever name a notebook variable holds by then, says what it
deleted, is harmless the second time, and fails loudly on any refusal but "already gone".
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.stub import Stubber
from sagemaker.core.resources import Endpoint

import endpoint_cleanup
from local_aws import LocalAWS
from support import aws_clients


@pytest.fixture
def sagemaker(local_aws: LocalAWS) -> Any:
    (client,) = aws_clients(local_aws.endpoint_url, "sagemaker")
    return client


@pytest.fixture
def name() -> str:
    """A name no other test uses (moto's state lives as long as the session's endpoint)."""
    return f"mnist-digits-{uuid.uuid4().hex[:8]}"


def deploy(client: Any, role_arn: str, name: str, models: int = 1) -> Endpoint:
    """Create `models` models, an endpoint configuration with one variant each, and the endpoint, as deploy() does.

    Returns SDK 3's Endpoint object, as `ModelBuilder.deploy` does.
    """
    model_names = [f"{name}-model-{index}" for index in range(models)]
    for model_name in model_names:
        client.create_model(
            ModelName=model_name,
            ExecutionRoleArn=role_arn,
            PrimaryContainer={"Image": "pytorch-inference:2.6-cpu-py312", "ModelDataUrl": "s3://bucket/model.tar.gz"},
        )
    variants = [
        {"VariantName": f"variant-{index}", "ModelName": model_name, "InitialInstanceCount": 1,
         "InstanceType": "ml.m5.large"}
        for index, model_name in enumerate(model_names)
    ]
    client.create_endpoint_config(EndpointConfigName=f"{name}-config", ProductionVariants=variants)
    client.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-config")
    return Endpoint(endpoint_name=name, endpoint_config_name=f"{name}-config")


def listed(client: Any, prefix: str) -> dict[str, list[str]]:
    """Every endpoint, endpoint configuration and model whose name starts with `prefix`, by kind."""
    endpoints = [item["EndpointName"] for item in client.list_endpoints()["Endpoints"]]
    configs = [item["EndpointConfigName"] for item in client.list_endpoint_configs()["EndpointConfigs"]]
    models = [item["ModelName"] for item in client.list_models()["Models"]]
    return {
        kind: sorted(name for name in names if name.startswith(prefix))
        for kind, names in (("endpoints", endpoints), ("configs", configs), ("models", models))
    }


NOTHING = {"endpoints": [], "configs": [], "models": []}


def test_it_deletes_the_endpoint_its_configuration_and_every_model_and_says_so(sagemaker, local_aws, name) -> None:
    endpoint = deploy(sagemaker, local_aws.role_arn, name, models=2)
    neighbour = deploy(sagemaker, local_aws.role_arn, f"{name}-2")  # a name that contains the first one

    lines = endpoint_cleanup.delete_deployment(endpoint, sagemaker)

    assert lines == [
        f"deleted endpoint {name}",
        f"deleted endpoint configuration {name}-config",
        f"deleted model {name}-model-0",
        f"deleted model {name}-model-1",
    ]
    assert listed(sagemaker, name) == {
        "endpoints": [f"{name}-2"], "configs": [f"{name}-2-config"], "models": [f"{name}-2-model-0"],
    }
    endpoint_cleanup.delete_deployment(neighbour, sagemaker)
    assert listed(sagemaker, name) == NOTHING


def test_a_second_run_says_nothing_was_left(sagemaker, local_aws, name) -> None:
    endpoint = deploy(sagemaker, local_aws.role_arn, name)
    endpoint_cleanup.delete_deployment(endpoint, sagemaker)

    assert endpoint_cleanup.delete_deployment(endpoint, sagemaker) == [
        f"endpoint {name}: already gone, nothing to delete",
        f"endpoint configuration {name}-config: already gone, nothing to delete",
    ]
    assert endpoint_cleanup.delete_deployment(name, sagemaker) == [f"endpoint {name}: already gone, nothing to delete"]
    assert listed(sagemaker, name) == NOTHING


def test_a_stale_endpoint_name_cannot_hide_the_deployed_endpoint(sagemaker, local_aws, name) -> None:
    """Notebook 06 re-runs the cell that computes `endpoint_name` after deploying: the name no longer matches."""
    endpoint = deploy(sagemaker, local_aws.role_arn, name)
    stale_name = f"{name}-recomputed"

    # Given the stale name, the clean-up says it found nothing, not that it cleaned up.
    assert endpoint_cleanup.delete_deployment(stale_name, sagemaker) == [
        f"endpoint {stale_name}: already gone, nothing to delete"
    ]
    assert listed(sagemaker, name)["endpoints"] == [name]
    # Given what deploy returned, it deletes what was deployed.
    assert endpoint_cleanup.delete_deployment(endpoint, sagemaker)[0] == f"deleted endpoint {name}"
    assert listed(sagemaker, name) == NOTHING


def test_after_an_interrupted_clean_up_the_configuration_and_models_are_still_found(sagemaker, local_aws, name) -> None:
    endpoint = deploy(sagemaker, local_aws.role_arn, name)
    sagemaker.delete_endpoint(EndpointName=name)  # the clean-up stopped after its first deletion

    assert endpoint_cleanup.delete_deployment(endpoint, sagemaker) == [
        f"endpoint {name}: already gone, nothing to delete",
        f"deleted endpoint configuration {name}-config",
        f"deleted model {name}-model-0",
    ]
    assert listed(sagemaker, name) == NOTHING


def test_the_default_client_is_the_one_the_environment_selects(local_aws_env, sagemaker, name) -> None:
    endpoint = deploy(sagemaker, local_aws_env.role_arn, name)
    assert endpoint_cleanup.delete_deployment(endpoint)[0] == f"deleted endpoint {name}"
    assert listed(sagemaker, name) == NOTHING


# --- Refusals other than "already gone", from a stubbed client -------------------------------------


@pytest.fixture
def stubbed(sagemaker) -> Iterator[tuple[Any, Stubber]]:
    """The client with botocore's Stubber: each call gets the answer a test queued, and nothing reaches the server."""
    with Stubber(sagemaker) as stubber:
        yield sagemaker, stubber
        stubber.assert_no_pending_responses()


def queue_descriptions(stubber: Stubber, name: str) -> None:
    """The DescribeEndpoint and DescribeEndpointConfig answers of a one-model deployment called `name`."""
    stubber.add_response(
        "describe_endpoint",
        {"EndpointName": name, "EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{name}",
         "EndpointConfigName": f"{name}-config", "EndpointStatus": "InService",
         "CreationTime": "2026-12-01T00:00:00Z", "LastModifiedTime": "2026-12-01T00:00:00Z"},
        {"EndpointName": name},
    )
    stubber.add_response(
        "describe_endpoint_config",
        {"EndpointConfigName": f"{name}-config",
         "EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/{name}-config",
         "ProductionVariants": [{"VariantName": "variant-0", "ModelName": f"{name}-model"}],
         "CreationTime": "2026-12-01T00:00:00Z"},
        {"EndpointConfigName": f"{name}-config"},
    )


def test_an_access_denied_deletion_stops_the_clean_up_naming_the_resource(stubbed, name) -> None:
    client, stubber = stubbed
    queue_descriptions(stubber, name)
    stubber.add_client_error(
        "delete_endpoint", "AccessDeniedException", "User is not authorized to perform: sagemaker:DeleteEndpoint",
        http_status_code=400, expected_params={"EndpointName": name},
    )
    with pytest.raises(RuntimeError) as error:
        endpoint_cleanup.delete_deployment(name, client)
    message = str(error.value)
    assert f"refused DeleteEndpoint for endpoint {name} (AccessDeniedException: User is not authorized" in message
    assert "may still exist and bill" in message and "give the role sagemaker:DeleteEndpoint" in message


def test_a_validation_error_that_is_not_not_found_is_a_failure(stubbed, name) -> None:
    """SageMaker refuses to delete an endpoint that is still Creating with a ValidationException too."""
    client, stubber = stubbed
    queue_descriptions(stubber, name)
    stubber.add_client_error(
        "delete_endpoint", "ValidationException", f"Cannot update in-progress endpoint \"{name}\".",
        expected_params={"EndpointName": name},
    )
    with pytest.raises(RuntimeError, match=f"refused DeleteEndpoint for endpoint {name} .*in-progress endpoint"):
        endpoint_cleanup.delete_deployment(name, client)


def test_a_refused_description_is_a_failure(stubbed, name) -> None:
    client, stubber = stubbed
    stubber.add_client_error("describe_endpoint", "AccessDeniedException", "not authorized", http_status_code=400)
    with pytest.raises(RuntimeError, match=f"refused DescribeEndpoint for endpoint {name} \\(AccessDeniedException"):
        endpoint_cleanup.delete_deployment(name, client)


def test_a_resource_still_listed_after_its_deletion_is_a_failure(stubbed, name) -> None:
    client, stubber = stubbed
    queue_descriptions(stubber, name)
    stubber.add_response("delete_endpoint", {}, {"EndpointName": name})
    # The waiter's DescribeEndpoint: gone.
    stubber.add_client_error("describe_endpoint", "ValidationException", f"Could not find endpoint \"{name}\".")
    stubber.add_response("delete_endpoint_config", {}, {"EndpointConfigName": f"{name}-config"})
    stubber.add_response("delete_model", {}, {"ModelName": f"{name}-model"})
    still_there = {"EndpointName": name, "EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{name}",
                   "CreationTime": "2026-12-01T00:00:00Z", "LastModifiedTime": "2026-12-01T00:00:00Z",
                   "EndpointStatus": "Deleting"}
    stubber.add_response("list_endpoints", {"Endpoints": [still_there]}, {"NameContains": name})
    with pytest.raises(RuntimeError, match=f"endpoint {name} is still listed by ListEndpoints after its deletion"):
        endpoint_cleanup.delete_deployment(name, client)


def test_models_without_an_endpoint_are_deleted_and_a_second_run_says_they_are_gone(sagemaker, local_aws, name) -> None:
    names = [f"{name}-batch-{index}" for index in range(2)]
    for model_name in names:
        sagemaker.create_model(ModelName=model_name, ExecutionRoleArn=local_aws.role_arn,
                               PrimaryContainer={"Image": "pytorch-inference:2.6-cpu-py312"})

    assert endpoint_cleanup.delete_models(names, sagemaker) == [f"deleted model {model_name}" for model_name in names]
    assert listed(sagemaker, name) == NOTHING
    assert endpoint_cleanup.delete_models(names, sagemaker) == [
        f"model {model_name}: already gone, nothing to delete" for model_name in names
    ]

"""The inference container's side of the local SageMaker (tools/local_sagemaker/serving_container.py): the
container of a CreateModel request, the images it serves, the model archive unpacked safely, the log stream
and the servers stopped together; against moto in this process, no model server started."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import boto3
import pytest
from botocore.client import BaseClient

from local_sagemaker import serving_container
from local_sagemaker.serving_container import ModelContainer, ServingError
from support import MOCK_BUCKET, TEST_CREDENTIALS

IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-cpu-py312"


def archive(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A .tar.gz of files (name: content) and symbolic links (name: target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def staged(s3: BaseClient, key: str, body: bytes) -> str:
    """Put body in the mock bucket; its S3 URI."""
    s3.put_object(Bucket=MOCK_BUCKET, Key=key, Body=body)
    return f"s3://{MOCK_BUCKET}/{key}"


def files_below(folder: Path) -> dict[str, bytes]:
    """Each file below folder (relative path) with its bytes."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# --- the container of a CreateModel request ---------------------------------------------------------------------


def test_the_primary_container_or_the_one_entry_of_containers_is_the_model() -> None:
    container = {"Image": IMAGE, "ModelDataUrl": "s3://b/model.tar.gz", "Environment": {"SAGEMAKER_PROGRAM": "inference.py"}}
    expected = ModelContainer(IMAGE, "s3://b/model.tar.gz", {"SAGEMAKER_PROGRAM": "inference.py"})

    assert serving_container.model_container({"ModelName": "m", "PrimaryContainer": container}) == expected
    assert serving_container.model_container({"ModelName": "m", "Containers": [container]}) == expected
    assert serving_container.model_container({"PrimaryContainer": {"Image": IMAGE}}) == ModelContainer(IMAGE, None, {})


@pytest.mark.parametrize(
    "request_, reason",
    [
        pytest.param({"ModelName": "pipeline", "Containers": [{"Image": IMAGE}, {"Image": IMAGE}]},
                     "model 'pipeline' has 2 containers", id="an inference pipeline"),
        pytest.param({"ModelName": "empty"}, "model 'empty' has 0 containers", id="no container"),
        pytest.param({"PrimaryContainer": {"Image": IMAGE, "ModelDataSource": {"S3DataSource": {}}}},
                     "not from ModelDataSource", id="ModelDataSource"),
    ],
)
def test_a_model_the_local_sagemaker_cannot_serve_is_refused_with_the_reason(request_: dict, reason: str) -> None:
    with pytest.raises(ServingError, match="^ClientError: ") as refused:
        serving_container.model_container(request_)
    assert reason in str(refused.value)


@pytest.mark.parametrize("image", [
    IMAGE,
    "123456789012.dkr.ecr.eu-west-1.amazonaws.com/pytorch-inference:2.5.1-gpu-py311-cu124",
    "localhost:5000/pytorch-inference-neuronx:1.13",
])
def test_sagemakers_pytorch_inference_images_are_served(image: str) -> None:
    serving_container.check_image(image)


@pytest.mark.parametrize("image", [
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6-cpu-py312",
    "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1",
    "",
    "pytorch-inference",
])
def test_any_other_image_is_refused_naming_it(image: str) -> None:
    with pytest.raises(ServingError, match="PyTorch inference images only") as refused:
        serving_container.check_image(image)
    assert repr(image) in str(refused.value)


# --- the model archive ------------------------------------------------------------------------------------------


def test_the_model_archive_is_unpacked_as_opt_ml_model_and_the_environment_kept(s3: BaseClient, tmp_path: Path) -> None:
    members = {"model.pt": b"weights", "code/inference.py": b"def model_fn(model_dir): ...\n"}
    container = ModelContainer(IMAGE, staged(s3, "job/model.tar.gz", archive(members)), {"SAGEMAKER_PROGRAM": "inference.py"})

    environment = serving_container.unpack_model(s3, container, tmp_path / "model")

    assert files_below(tmp_path / "model") == members
    assert environment == {"SAGEMAKER_PROGRAM": "inference.py"}
    assert container.environment == {"SAGEMAKER_PROGRAM": "inference.py"}  # the request's own copy is left alone


def test_source_code_left_in_s3_is_unpacked_into_the_models_code_folder(s3: BaseClient, tmp_path: Path) -> None:
    source = {"inference.py": b"def model_fn(model_dir): ...\n", "helpers/shape.py": b"SIZE = 28\n"}
    container = ModelContainer(IMAGE, staged(s3, "job/model.tar.gz", archive({"model.pt": b"weights"})), {
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": staged(s3, "job/source/sourcedir.tar.gz", archive(source)),
    })

    environment = serving_container.unpack_model(s3, container, tmp_path / "model")

    assert files_below(tmp_path / "model") == {"model.pt": b"weights", **{f"code/{name}": body for name, body in source.items()}}
    # As the PyTorch serving toolkit does: the handlers are found in the container's /opt/ml/model/code.
    assert environment == {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"}


@pytest.mark.parametrize(
    "members, links",
    [
        pytest.param({"../outside.txt": b"escaped"}, None, id="a member above the folder"),
        pytest.param({"model.pt": b"weights"}, {"code": "/etc"}, id="a link to an absolute path"),
        pytest.param({"model.pt": b"weights"}, {"code": "../../outside"}, id="a link out of the folder"),
    ],
)
def test_a_member_that_would_land_outside_the_model_folder_is_refused(
    s3: BaseClient, tmp_path: Path, members: dict[str, bytes], links: dict[str, str] | None
) -> None:
    uri = staged(s3, "job/model.tar.gz", archive(members, links))
    model_dir = tmp_path / "serving" / "model"

    with pytest.raises(ServingError, match="would land outside the model folder") as refused:
        serving_container.unpack_model(s3, ModelContainer(IMAGE, uri, {}), model_dir)

    assert uri in str(refused.value)
    assert sorted(path.name for path in (tmp_path / "serving").iterdir()) == ["model"]  # nothing beside the folder
    assert not (model_dir / "code").is_symlink()


@pytest.mark.parametrize(
    "body, key, reason",
    [
        pytest.param(b"not a tar.gz at all", "job/model.tar.gz", "ensure that the object located at the URL is a valid tar.gz",
                     id="not an archive"),
        pytest.param(archive({"model.pt": b"weights" * 1000})[:60], "job/model.tar.gz", "valid tar.gz archive",
                     id="cut short"),
        pytest.param(None, "job/missing.tar.gz", "Could not download the model data from", id="no such object"),
    ],
)
def test_a_damaged_or_missing_archive_fails_with_a_reason_naming_its_url(
    s3: BaseClient, tmp_path: Path, body: bytes | None, key: str, reason: str
) -> None:
    uri = staged(s3, key, body) if body is not None else f"s3://{MOCK_BUCKET}/{key}"

    with pytest.raises(ServingError, match="^ClientError: ") as refused:
        serving_container.unpack_model(s3, ModelContainer(IMAGE, uri, {}), tmp_path / "model")

    assert reason in str(refused.value) and uri in str(refused.value)


def test_a_model_url_that_is_not_an_s3_uri_is_refused(s3: BaseClient, tmp_path: Path) -> None:
    with pytest.raises(ServingError, match="the model data URL 'https://example.com/model.tar.gz' is not an S3 URI"):
        serving_container.unpack_model(s3, ModelContainer(IMAGE, "https://example.com/model.tar.gz", {}), tmp_path / "model")


# --- the log and the servers ------------------------------------------------------------------------------------


def test_log_streams_of_one_group_send_each_non_blank_line(s3: BaseClient) -> None:
    logs = boto3.session.Session(**TEST_CREDENTIALS).client("logs")  # inside the `s3` fixture's moto mock
    group = "/aws/sagemaker/Endpoints/digits"
    first = serving_container.LogStream(logs, group, "AllTraffic/i-1")
    second = serving_container.LogStream(logs, group, "AllTraffic/i-2")  # the group exists already: no error

    for line in ("model loaded", "", "   ", "ping ok"):
        first.write(line)
    second.write("model loaded")

    def messages(stream: str) -> list[str]:
        return [event["message"] for event in logs.get_log_events(logGroupName=group, logStreamName=stream)["events"]]

    assert messages("AllTraffic/i-1") == ["model loaded", "ping ok"]
    assert messages("AllTraffic/i-2") == ["model loaded"]
    assert [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]] == [group]


class StoppedServer:
    """Stands in for a model server: records the grace period it was stopped with."""

    def __init__(self) -> None:
        self.stops: list[float] = []

    def stop(self, grace_s: float) -> int:
        self.stops.append(grace_s)
        return 0


def test_every_server_recorded_is_stopped_with_the_grace_period() -> None:
    servers, started = serving_container.Servers(), [StoppedServer(), StoppedServer()]
    for server in started:
        servers.add(server)

    servers.stop_all(2.5)

    assert [server.stops for server in started] == [[2.5], [2.5]]

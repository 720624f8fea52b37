"""Tests of code/deployment.py: which model notebook 06 deploys, how it is packed, how latency is measured."""

from __future__ import annotations

import ast
import json
import re
import tarfile
from pathlib import Path

import pytest
import torch

import deployment
import inference
import mnist_model
from local_aws import LocalAWS
from support import aws_clients

CODE = Path(deployment.__file__).resolve().parent


def saved_model(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    mnist_model.save_model(mnist_model.MNISTClassifier(), folder)
    return folder


def local_imports(module: Path) -> set[str]:
    """The modules of code/ that a module of code/ imports at its top level or in its functions."""
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return {name for name in names if (CODE / f"{name}.py").is_file()}


def test_the_serving_files_are_the_handlers_and_every_module_of_code_they_import() -> None:
    needed, todo = set(), {deployment.ENTRY_POINT.removesuffix(".py")}
    while todo:
        name = todo.pop()
        needed.add(name)
        todo |= local_imports(CODE / f"{name}.py") - needed
    assert sorted(f"{name}.py" for name in needed) == sorted(deployment.SERVING_FILES)


def test_pack_model_writes_the_model_at_the_root_and_the_code_under_code(tmp_path: Path) -> None:
    model_dir = saved_model(tmp_path / "model")
    for with_code, expected in ((False, ["model.pt"]), (True, ["model.pt", *(f"code/{f}" for f in deployment.SERVING_FILES)])):
        packed = tmp_path / f"with-code-{with_code}" / "model.tar.gz"
        assert deployment.pack_model(model_dir, packed, with_code=with_code) == expected
        with tarfile.open(packed) as archive:
            assert archive.getnames() == expected
            archive.extractall(tmp_path / f"unpacked-{with_code}", filter="data")
        unpacked = tmp_path / f"unpacked-{with_code}"
        reloaded, original = inference.model_fn(str(unpacked)), mnist_model.load_model(model_dir / "model.pt")
        for name, tensor in original.state_dict().items():
            assert torch.equal(reloaded.state_dict()[name], tensor), name
        if with_code:
            assert (unpacked / "code" / "inference.py").read_bytes() == (CODE / "inference.py").read_bytes()


def test_pack_model_names_a_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'empty' / 'model.pt'} not found"):
        deployment.pack_model(tmp_path / "empty", tmp_path / "model.tar.gz")


def test_choose_model_takes_the_first_folder_holding_a_model_else_trains_one(tmp_path: Path) -> None:
    first, second = tmp_path / "first", saved_model(tmp_path / "second")
    trained: list[Path] = []

    def train_quick(work_dir: Path) -> Path:
        trained.append(work_dir)
        return saved_model(work_dir / "quick")

    choice = deployment.choose_model("", {"notebook 04's job": first, "notebook 03": second}, tmp_path / "w", train_quick)
    assert (choice.model_dir, choice.source, trained) == (second, "notebook 03", [])
    saved_model(first)
    assert deployment.choose_model("", {"notebook 04's job": first, "notebook 03": second}, tmp_path / "w",
                                   train_quick).source == "notebook 04's job"
    quick = deployment.choose_model("", {"nothing": tmp_path / "none"}, tmp_path / "w", train_quick)
    assert (quick.source, quick.model_file, trained) == ("a quick training run", tmp_path / "w/quick/model.pt",
                                                         [tmp_path / "w"])


def test_choose_model_downloads_a_named_artifact_first(tmp_path: Path, local_aws_env: LocalAWS) -> None:
    packed = tmp_path / "model.tar.gz"
    deployment.pack_model(saved_model(tmp_path / "job-model", seed=3), packed)
    (s3,) = aws_clients(local_aws_env.endpoint_url, "s3")
    s3.upload_file(str(packed), local_aws_env.bucket, "jobs/job-1/output/model.tar.gz")
    uri = f"s3://{local_aws_env.bucket}/jobs/job-1/output/model.tar.gz"
    choice = deployment.choose_model(uri, {"notebook 03": saved_model(tmp_path / "other")}, tmp_path / "work",
                                     lambda _: pytest.fail("must not train"))
    assert (choice.source, choice.model_file) == (uri, tmp_path / "work" / "model" / "model.pt")
    assert choice.model_file.read_bytes() == (tmp_path / "job-model" / "model.pt").read_bytes()


def test_the_serving_environment_points_the_container_at_the_packed_code() -> None:
    assert deployment.serving_environment() == {"SAGEMAKER_PROGRAM": "inference.py",
                                                "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"}
    assert deployment.serving_environment(workers=3)["SAGEMAKER_MODEL_SERVER_WORKERS"] == "3"


def test_the_inference_image_is_sagemakers_pytorch_inference_image_for_the_instance() -> None:
    cpu, gpu = (deployment.inference_image("us-east-1", kind) for kind in ("ml.m5.large", "ml.g5.xlarge"))
    assert cpu == "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-cpu-py312"
    assert gpu.startswith("763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-gpu-py312")


def test_bodies_and_answers_round_trip_through_the_handlers() -> None:
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    for body, content_type in ((deployment.json_body(images), "application/json"),
                               (deployment.npy_body(images.numpy()), "application/x-npy")):
        assert torch.equal(inference.input_fn(body, content_type), images.float())
    answer = json.dumps({"predictions": [{"digit": 4, "probabilities": []}, {"digit": 9, "probabilities": []}]})
    assert deployment.digits_of(answer.encode()) == deployment.digits_of(json.loads(answer)) == [4, 9]


def test_measure_latency_sends_every_body_and_names_each_refusal() -> None:
    sent: list[bytes] = []

    def send(body: bytes) -> None:
        sent.append(body)
        if body.startswith(b"bad"):
            raise ValueError(f"refused {body!r}")

    bodies = [b"good-%d" % number for number in range(30)] + [b"bad-1", b"bad-2"]
    latency = deployment.measure_latency(send, bodies, concurrency=4)
    assert sorted(sent) == sorted(bodies)
    assert (latency.requests, latency.concurrency) == (32, 4)
    assert sorted(latency.errors) == ["ValueError: refused b'bad-1'", "ValueError: refused b'bad-2'"]
    assert latency.p50_ms <= latency.p99_ms
    assert str(latency).startswith("32 requests at concurrency 4: p50 ") and str(latency).endswith(", 2 errors")


def test_the_in_process_check_answers_as_the_handlers_and_keeps_its_server_log_out_of_the_output(
    tmp_path: Path, local_aws_env: LocalAWS, capfd: pytest.CaptureFixture[str]
) -> None:
    model_dir = saved_model(tmp_path / "model", seed=5)
    images = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8)
    model = inference.model_fn(str(model_dir))
    expected = deployment.digits_of(inference.output_fn(inference.predict_fn(images.float(), model), "application/json"))
    capfd.readouterr()
    assert deployment.in_process_check(model_dir, deployment.json_body(images), tmp_path / "in-process.log") == expected
    printed = capfd.readouterr()
    assert (printed.out, printed.err) == ("", "")
    log = re.sub(r"\x1b\[[0-9;]*m", "", (tmp_path / "in-process.log").read_text())  # uvicorn colours its lines
    assert "Uvicorn running on http://127.0.0.1:9007" in log and '"POST /invoke HTTP/1.1" 200' in log

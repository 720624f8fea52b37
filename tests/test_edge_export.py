"""Tests of code/edge_export.py and code/edge_runner.py: each export computes the eager model's logits in a
Python that cannot import the model's code, one image at a time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import edge_export
import mnist_model
from mnist_data import load_split, normalise


@pytest.fixture(scope="module")
def model() -> mnist_model.MNISTClassifier:
    torch.manual_seed(0)
    return mnist_model.MNISTClassifier().eval()


@pytest.fixture(scope="module")
def images(mirror_dir: Path) -> torch.Tensor:
    return normalise(load_split(mirror_dir, "test")[0][:200])


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("edge")
    return {kind: edge_export.export(model, kind, folder) for kind in edge_export.FORMATS}


@pytest.mark.parametrize("kind", edge_export.FORMATS)
def test_each_export_computes_the_eager_logits_without_the_models_code(kind, model, images, exported) -> None:
    eager, eager_ms = edge_export.eager_timings(model, images)
    with torch.inference_mode():
        assert np.allclose(eager, model(images).numpy(), atol=1e-5)  # the plain network is the model's computation
    path, _ = exported[kind]
    result = edge_export.compare(kind, path, images, eager)
    assert result.max_abs_diff <= 1e-5
    assert result.size_bytes == path.stat().st_size > 100_000  # the weights are in the file (~200,000 parameters)
    assert result.median_ms > 0 and len(eager_ms) == len(images)
    assert str(result).startswith(f"{kind:<11} {path.name}")


def test_torchscript_says_it_is_deprecated_and_nothing_else_is_hidden(exported) -> None:
    assert exported["torchscript"][1] == "`torch.jit.trace` is deprecated. Please switch to `torch.compile` or `torch.export`."
    assert exported["onnx"][1] == exported["executorch"][1] == ""


def test_the_runner_cannot_import_the_models_code(exported) -> None:
    # The runner's interpreter is isolated (-I): even started inside code/, mnist_model is out of its reach.
    probe = subprocess.run([sys.executable, "-I", "-c", "import mnist_model"], cwd=edge_export.RUNNER.parent,
                           capture_output=True, text=True, check=False)
    assert probe.returncode == 1 and "No module named 'mnist_model'" in probe.stderr


def test_a_file_the_runner_cannot_load_is_an_error_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match=f"could not run {broken} \\(onnx\\)"):
        edge_export.run_exported("onnx", broken, torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="format 'tflite': use one of onnx, executorch, torchscript"):
        edge_export.export(torch.nn.Identity(), "tflite", tmp_path)

"""The digit classifier for edge devices: exported three ways, each checked in an interpreter without our code.

- ONNX, through `torch.export` (`torch.onnx.export(..., dynamo=True)`), run by onnxruntime: the format most
  runtimes and accelerators read;
- ExecuTorch, `torch.export` lowered to XNNPACK's CPU kernels and saved as a `.pte` program, run by
  ExecuTorch's runtime: PyTorch's own route to phones and microcontrollers;
- TorchScript (`torch.jit.trace`), the 2020 article's route: PyTorch 2.14 marks torch.jit deprecated in
  favour of torch.export; `export_torchscript` returns that notice so the notebook can show it once.

`run_exported` runs a file in a separate Python (`python -I code/edge_runner.py`) that cannot import
code/, one image at a time as a device does, and returns its logits and each image's time; `compare`
sets them beside the eager model's.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mnist_data import IMAGE_SIZE

RUNNER = Path(__file__).resolve().parent / "edge_runner.py"
FORMATS = ("onnx", "executorch", "torchscript")
FILE_NAMES = {"onnx": "mnist.onnx", "executorch": "mnist.pte", "torchscript": "mnist_torchscript.pt"}
# torch.jit's deprecation notice, raised on every torch.jit call in PyTorch 2.14.
TORCHSCRIPT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"
EXAMPLE = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)  # a device classifies one digit at a time


def plain_network(model: nn.Module) -> nn.Module:
    """The model's network in eval mode with contiguous (NCHW) weights, as exporters and XNNPACK expect.

    The classifier keeps its weights channels-last for speed; XNNPACK's lowering refuses such weights.
    """
    network = getattr(model, "network", model)
    return copy.deepcopy(network).to(memory_format=torch.contiguous_format).eval()


def export_onnx(model: nn.Module, path: Path) -> Path:
    """Export through torch.export to ONNX; return the file."""
    program = torch.onnx.export(plain_network(model), (EXAMPLE,), dynamo=True, verbose=False)
    program.save(str(path))
    return path


def export_executorch(model: nn.Module, path: Path) -> Path:
    """Export through torch.export, lower to XNNPACK's CPU kernels and save ExecuTorch's .pte program."""
    # ExecuTorch's import registers an Enum with torch's pytree, which logs a deprecation line for torch
    # developers on torch's own logger: not the reader's business.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    exported = torch.export.export(plain_network(model), (EXAMPLE,))
    with warnings.catch_warnings():
        # ExecuTorch 1.5 reads its own schema files with importlib.resources' legacy functions, on import and
        # on saving: a notice for ExecuTorch's developers, which says nothing about this export.
        legacy_resources = r"\w+ is deprecated\. Use files\(\) instead"
        warnings.filterwarnings("ignore", message=legacy_resources, category=DeprecationWarning)
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
        path.write_bytes(program.buffer)
    return path


def export_torchscript(model: nn.Module, path: Path) -> str:
    """Trace the network with TorchScript and save it; return PyTorch's deprecation notice for torch.jit."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", message=TORCHSCRIPT_DEPRECATION, category=FutureWarning)
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(plain_network(model), EXAMPLE), str(path))
    notices = [str(warning.message) for warning in caught if issubclass(warning.category, FutureWarning)]
    others = [warning for warning in caught if not issubclass(warning.category, FutureWarning)]
    for warning in others:  # anything else is not ours to hide
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return notices[0] if notices else ""


def export(model: nn.Module, kind: str, folder: Path) -> tuple[Path, str]:
    """Export the model in one of FORMATS into folder; the file and a notice to show (TorchScript's)."""
    if kind not in FORMATS:
        raise ValueError(f"format {kind!r}: use one of {', '.join(FORMATS)}")
    path = Path(folder) / FILE_NAMES[kind]
    if kind == "onnx":
        return export_onnx(model, path), ""
    if kind == "executorch":
        return export_executorch(model, path), ""
    return path, export_torchscript(model, path)


def run_exported(kind: str, model_file: Path, images: torch.Tensor) -> tuple[np.ndarray, list[float]]:
    """Run normalised images (N, 1, 28, 28) through an exported file in a Python that cannot import code/."""
    with tempfile.TemporaryDirectory(prefix="edge-") as scratch:
        inputs, logits, timings = (Path(scratch) / name for name in ("inputs.npy", "logits.npy", "timings.json"))
        np.save(inputs, images.float().contiguous().numpy())
        command = [sys.executable, "-I", str(RUNNER), kind, str(model_file), str(inputs), str(logits), str(timings)]
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
        if finished.returncode != 0:
            raise RuntimeError(f"{RUNNER.name} could not run {model_file} ({kind}), exit status {finished.returncode}:"
                               f"\n{finished.stderr[-2000:]}")
        return np.load(logits), json.loads(timings.read_text())


def eager_timings(model: nn.Module, images: torch.Tensor) -> tuple[np.ndarray, list[float]]:
    """The eager network's logits and each image's time, one image at a time, as the runner times a file."""
    network = plain_network(model)
    logits, timings_ms = [], []
    with torch.inference_mode():
        for image in images.float():
            start = time.perf_counter()
            logits.append(network(image[None]))
            timings_ms.append((time.perf_counter() - start) * 1000)
    return torch.cat(logits).numpy(), timings_ms


@dataclass(frozen=True)
class EdgeResult:
    """One exported file beside the eager model: its size, largest logit difference and time per image."""

    kind: str
    path: Path
    size_bytes: int
    max_abs_diff: float
    median_ms: float

    def __str__(self) -> str:
        return (f"{self.kind:<11} {self.path.name:<22} {self.size_bytes / 1e3:6.0f} kB  largest difference "
                f"{self.max_abs_diff:.1e}  {self.median_ms:.2f} ms per image")


def compare(kind: str, model_file: Path, images: torch.Tensor, eager_logits: np.ndarray) -> EdgeResult:
    """Run the file in a separate interpreter over the images and set its logits beside the eager ones."""
    logits, timings_ms = run_exported(kind, model_file, images)
    difference = float(np.abs(logits - eager_logits).max())
    return EdgeResult(kind, Path(model_file), Path(model_file).stat().st_size, difference,
                      statistics.median(timings_ms))

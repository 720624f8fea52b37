"""What an edge device runs: an exported digit classifier, loaded without the model's code, one image at a time.

    python -I edge_runner.py FORMAT MODEL_FILE INPUTS.npy LOGITS.npy TIMINGS.json

FORMAT is onnx (run by onnxruntime), executorch (a .pte run by ExecuTorch's runtime) or torchscript (run
by torch.jit). INPUTS.npy holds normalised images (N, 1, 28, 28) as float32; the logits (N, 10) go to
LOGITS.npy and each image's time in milliseconds to TIMINGS.json. `-I` (isolated mode) keeps this
interpreter away from code/, the current folder and PYTHONPATH, so the file must hold the whole
computation: nothing of mnist_model can be imported here.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import numpy as np


def onnx_runner(model_file: str) -> Callable[[np.ndarray], np.ndarray]:
    """One image through onnxruntime's CPU provider."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda image: session.run(None, {input_name: image})[0]


def executorch_runner(model_file: str) -> Callable[[np.ndarray], np.ndarray]:
    """One image through ExecuTorch's runtime (the XNNPACK delegate the file was lowered to)."""
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(model_file).load_method("forward")
    return lambda image: method.execute([torch.from_numpy(image)])[0].numpy()


def torchscript_runner(model_file: str) -> Callable[[np.ndarray], np.ndarray]:
    """One image through TorchScript (torch.jit), the article's route."""
    import torch

    torch.set_grad_enabled(False)
    module = torch.jit.load(model_file)
    return lambda image: module(torch.from_numpy(image)).numpy()


RUNNERS = {"onnx": onnx_runner, "executorch": executorch_runner, "torchscript": torchscript_runner}


def main(arguments: list[str]) -> None:
    """Run every image of INPUTS.npy through the exported model; write the logits and the timings."""
    if len(arguments) != 5 or arguments[0] not in RUNNERS:
        sys.exit(f"usage: edge_runner.py {{{','.join(RUNNERS)}}} MODEL_FILE INPUTS.npy LOGITS.npy TIMINGS.json")
    kind, model_file, inputs, logits_file, timings_file = arguments
    run = RUNNERS[kind](model_file)
    images = np.load(inputs)
    logits, timings_ms = [], []
    for image in images:
        start = time.perf_counter()
        logits.append(run(np.ascontiguousarray(image[None])))
        timings_ms.append((time.perf_counter() - start) * 1000)
    np.save(logits_file, np.concatenate(logits))
    with open(timings_file, "w") as file:
        json.dump(timings_ms, file)


if __name__ == "__main__":
    main(sys.argv[1:])

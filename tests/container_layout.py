"""SageMaker's training-container layout (/opt/ml) under a temporary folder, shared by the train.py tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from mnist_data import SPLIT_FILES

CONTAINER_FOLDERS = {
    "SM_CHANNEL_TRAIN": "input/data/train",
    "SM_CHANNEL_TEST": "input/data/test",
    "SM_MODEL_DIR": "model",
    "SM_OUTPUT_DIR": "output",
    "SM_OUTPUT_DATA_DIR": "output/data",
    "CHECKPOINT_DIR": "checkpoints",
}


def sm_environment(ml_dir: Path) -> dict[str, str]:
    """The variables a SageMaker training container sets, for the layout under `ml_dir` (/opt/ml), on a CPU."""
    return {name: str(ml_dir / folder) for name, folder in CONTAINER_FOLDERS.items()} | {"SM_NUM_GPUS": "0"}


def container_layout(ml_dir: Path, mirror_dir: Path) -> dict[str, str]:
    """Build /opt/ml's folders under `ml_dir`, with the mirror's files in the train and test channels."""
    environment = sm_environment(ml_dir)
    for name in CONTAINER_FOLDERS:
        Path(environment[name]).mkdir(parents=True, exist_ok=True)
    for variable, split in (("SM_CHANNEL_TRAIN", "train"), ("SM_CHANNEL_TEST", "test")):
        for name in SPLIT_FILES[split]:
            shutil.copy(mirror_dir / name, environment[variable])
    return environment

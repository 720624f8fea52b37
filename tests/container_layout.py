"""SageMaker's training-container layout (/opt/ml) under a temporary folder, shared by the train.py tests.

The layout and its variables come from the local SageMaker's description of the container contract
(tools/local_sagemaker/container.py), so that train.py is tested against what its jobs get.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from local_sagemaker.container import TrainingContainer, channel_config
from mnist_format import SPLIT_FILES


def training_container(ml_dir: Path) -> TrainingContainer:
    """A one-host CPU job with the `train` and `test` channels, its /opt/ml under `ml_dir`."""
    channels = {split: channel_config() for split in SPLIT_FILES}
    return TrainingContainer(root=ml_dir, instance_type="ml.m5.xlarge", channels=channels)


def sm_environment(ml_dir: Path) -> dict[str, str]:
    """The variables a SageMaker training container sets, for the layout under `ml_dir` (/opt/ml), on a CPU."""
    return training_container(ml_dir).sm_environment(num_gpus=0, checkpoint_dir=ml_dir / "checkpoints")


def container_layout(ml_dir: Path, mirror_dir: Path) -> dict[str, str]:
    """Build /opt/ml's folders and config files under `ml_dir`, the mirror's files in the train and test channels."""
    ml = training_container(ml_dir)
    ml.create()
    (ml_dir / "checkpoints").mkdir(exist_ok=True)
    for split, names in SPLIT_FILES.items():
        ml.channel_dir(split).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(mirror_dir / name, ml.channel_dir(split))
    return sm_environment(ml_dir)

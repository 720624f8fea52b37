"""The one moto version the local SageMaker patches, and how its modules override moto's SageMaker responses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from moto.sagemaker.responses import SageMakerResponse

from local_sagemaker import moto_patch

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def test_another_moto_version_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "moto").mkdir()
    (tmp_path / "moto" / "__init__.py").write_text('__version__ = "5.3.0"\n')

    completed = subprocess.run(
        [sys.executable, "-c", "import local_sagemaker.moto_patch"],
        env={"PYTHONPATH": f"{tmp_path}:{TOOLS}", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
    )

    assert completed.returncode == 1
    message = completed.stderr.strip().splitlines()[-1]
    assert message.startswith("RuntimeError: tools/local_sagemaker patches the SageMaker backend of moto 5.2.5")
    assert "but moto 5.3.0 is installed: install moto[server]==5.2.5 (environment.yml)" in message


def test_importing_the_shared_pieces_needs_no_moto(tmp_path: Path) -> None:
    # The tests of train.py and the benchmark use container.py: a broken moto must not stop them.
    (tmp_path / "moto").mkdir()
    (tmp_path / "moto" / "__init__.py").write_text('raise ImportError("no moto here")\n')
    program = "import local_sagemaker.container, local_sagemaker.processes; print('imported')"

    completed = subprocess.run(
        [sys.executable, "-c", program], env={"PYTHONPATH": f"{tmp_path}:{TOOLS}", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True,
    )

    assert (completed.returncode, completed.stdout.strip()) == (0, "imported"), completed.stderr


def test_overrides_replace_or_add_operations_and_restore_puts_moto_back() -> None:
    moto_create = vars(SageMakerResponse)["create_training_job"]
    assert "stop_training_job" not in vars(SageMakerResponse)  # moto 5.2.5 does not implement it

    def create(self: SageMakerResponse) -> str:
        return "ours"

    def stop(self: SageMakerResponse) -> str:
        return "stopped"

    patch = moto_patch.override_responses({"create_training_job": create, "stop_training_job": stop})
    try:
        assert (SageMakerResponse.create_training_job, SageMakerResponse.stop_training_job) == (create, stop)
        assert patch.original("create_training_job") is moto_create
        with pytest.raises(AttributeError, match=r"moto 5.2.5 has no SageMakerResponse.stop_training_job"):
            patch.original("stop_training_job")
    finally:
        patch.restore()

    assert vars(SageMakerResponse)["create_training_job"] is moto_create
    assert "stop_training_job" not in vars(SageMakerResponse)

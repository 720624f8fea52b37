"""local_sagemaker.install(): every resource module installed over moto, and shut down again."""

from __future__ import annotations

import logging
from pathlib import Path

import moto
import pytest
from moto.sagemaker.responses import SageMakerResponse

import local_sagemaker
from local_sagemaker import processes, training_jobs, tuning_jobs


def test_install_installs_each_resource_module_and_shutdown_undoes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Direct runs: with a namespace, install would make this test process the reaper of every orphan.
    monkeypatch.setattr(processes, "namespace_permitted", lambda: False)
    with moto.mock_aws(), caplog.at_level(logging.INFO):
        installed = local_sagemaker.install(tmp_path)
        patched = {name: name in vars(SageMakerResponse) for name in ("stop_training_job", "stop_hyper_parameter_tuning_job")}
        installed.shutdown()

    assert list(installed.resources) == list(local_sagemaker.RESOURCE_MODULES) == ["training_jobs", "tuning_jobs"]
    assert isinstance(installed.resources["training_jobs"], training_jobs.TrainingJobs)
    assert isinstance(installed.resources["tuning_jobs"], tuning_jobs.TuningJobs)
    assert patched == {"stop_training_job": True, "stop_hyper_parameter_tuning_job": True}
    assert "stop_training_job" not in vars(SageMakerResponse)
    assert "stop_hyper_parameter_tuning_job" not in vars(SageMakerResponse)
    assert f"training jobs run under {tmp_path / 'training-jobs'} (directly)" in caplog.text

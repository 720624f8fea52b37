"""local_sagemaker.install(): every resource module installed over moto, and shut down again."""

from __future__ import annotations

import logging
from pathlib import Path

import moto
import pytest
from moto.sagemaker.responses import SageMakerResponse
from moto.sagemakerruntime.responses import SageMakerRuntimeResponse

import local_sagemaker
from local_sagemaker import hosting, processes, training_jobs, transform_jobs, tuning_jobs


def test_install_installs_each_resource_module_and_shutdown_undoes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Direct runs: with a namespace, install would make this test process the reaper of every orphan.
    monkeypatch.setattr(processes, "namespace_permitted", lambda: False)
    with moto.mock_aws(), caplog.at_level(logging.INFO):
        installed = local_sagemaker.install(tmp_path)
        added = ("stop_training_job", "stop_hyper_parameter_tuning_job", "update_endpoint", "stop_transform_job")
        patched = {name: name in vars(SageMakerResponse) for name in added}
        runtime_patched = vars(SageMakerRuntimeResponse)["invoke_endpoint"]
        installed.shutdown()

    assert list(installed.resources) == list(local_sagemaker.RESOURCE_MODULES) == [
        "training_jobs", "tuning_jobs", "hosting", "transform_jobs"]
    assert isinstance(installed.resources["training_jobs"], training_jobs.TrainingJobs)
    assert isinstance(installed.resources["tuning_jobs"], tuning_jobs.TuningJobs)
    assert isinstance(installed.resources["hosting"], hosting.Hosting)
    assert isinstance(installed.resources["transform_jobs"], transform_jobs.TransformJobs)
    assert patched == dict.fromkeys(added, True)
    for name in added:
        assert name not in vars(SageMakerResponse), name
    # sagemaker-runtime's InvokeEndpoint was replaced, and moto's own is back.
    assert runtime_patched is not SageMakerRuntimeResponse.invoke_endpoint
    assert SageMakerRuntimeResponse.invoke_endpoint.__module__ == "moto.sagemakerruntime.responses"
    assert "use_raw_body" not in vars(SageMakerRuntimeResponse)
    assert f"training jobs run under {tmp_path / 'training-jobs'} (directly)" in caplog.text

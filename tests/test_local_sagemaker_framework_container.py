"""Jobs without ContainerEntrypoint (tools/local_sagemaker/framework_container.py): the framework container's launcher."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import tarfile
from pathlib import Path

import pytest
from botocore.client import BaseClient

from local_sagemaker import container, framework_container, processes
from support import MOCK_BUCKET

BUCKET = MOCK_BUCKET
SOURCE_URI = f"s3://{BUCKET}/tune/input/sourcedir/sourcedir.tar.gz"
HYPERPARAMETERS = {
    "epochs": "1",
    "lr": "0.01",
    "progress_bar": "true",
    "x": "3",
    "name": '"quoted"',
    "sizes": '{"b": 2, "a": 1}',
    "sagemaker_program": "show.py",
    "sagemaker_submit_directory": SOURCE_URI,
    "sagemaker_container_log_level": "10",
    "_tuning_objective_metric": "validation:accuracy",
}
# A script that is not the workbook's: it prints what it was given, as the framework container gives it.
SHOW = """\
import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(),
                  "env": {k: v for k, v in os.environ.items() if k.startswith(("SM_", "CHECKPOINT_DIR"))}}))
"""



def upload_source(s3: BaseClient, files: dict[str, str], uri: str = SOURCE_URI) -> None:
    """Pack files (name -> text) as sourcedir.tar.gz at uri, as SDK 3's tuner does."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())


def job_container(root: Path) -> container.TrainingContainer:
    """One host with a train channel, holding HYPERPARAMETERS."""
    return container.TrainingContainer(
        root=root, instance_type="ml.m5.xlarge", channels={"train": container.channel_config()}, hyperparameters=HYPERPARAMETERS
    )


def test_the_toolkit_keeps_its_own_hyperparameters_and_passes_the_rest_decoded_in_name_order() -> None:
    script = framework_container.framework_script(HYPERPARAMETERS)
    assert (script.program, script.submit_directory) == ("show.py", SOURCE_URI)
    assert set(script.hyperparameters) == {"epochs", "lr", "progress_bar", "x", "name", "sizes"}
    assert script.arguments() == [
        "--epochs", "1", "--lr", "0.01", "--name", "quoted", "--progress_bar", "True", "--sizes", "a=1,b=2", "-x", "3",
    ]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sagemaker_program": None}, r"needs the hyperparameter sagemaker_program naming a Python script.*not None"),
        ({"sagemaker_program": "run.sh"}, r"sagemaker_program .*not 'run.sh'"),
        ({"sagemaker_program": "../train.py"}, r"sagemaker_program .*not '../train.py'"),
        ({"sagemaker_submit_directory": None}, r"needs the hyperparameter sagemaker_submit_directory .*not None"),
        ({"sagemaker_submit_directory": "/local/code"}, r"sagemaker_submit_directory .*not '/local/code'"),
    ],
)
def test_a_job_without_entrypoint_or_script_is_refused_naming_the_hyperparameter(changes: dict, message: str) -> None:
    hyperparameters = {name: value for name, value in {**HYPERPARAMETERS, **changes}.items() if value is not None}
    with pytest.raises(ValueError, match=message):
        framework_container.framework_script(hyperparameters)


def test_the_variables_hold_the_scripts_hyperparameters_only() -> None:
    script = framework_container.framework_script(HYPERPARAMETERS)
    variables = framework_container.environment(job_container(Path("/opt/ml")), script, num_gpus=0)
    assert json.loads(variables["SM_HPS"]) == {
        "epochs": 1, "lr": 0.01, "progress_bar": True, "x": 3, "name": "quoted", "sizes": {"b": 2, "a": 1},
    }
    assert (variables["SM_HP_LR"], variables["SM_HP_PROGRESS_BAR"], variables["SM_HP_NAME"]) == ("0.01", "true", "quoted")
    assert not [name for name in variables if name.startswith(("SM_HP_SAGEMAKER", "SM_HP__TUNING"))]
    assert json.loads(variables["SM_USER_ARGS"]) == script.arguments()
    assert (variables["SM_USER_ENTRY_POINT"], variables["SM_MODULE_NAME"], variables["SM_MODULE_DIR"]) == (
        "show.py", "show", SOURCE_URI,
    )
    assert variables["SM_LOG_LEVEL"] == "10"
    assert (variables["SM_CHANNEL_TRAIN"], variables["SM_MODEL_DIR"]) == ("/opt/ml/input/data/train", "/opt/ml/model")


def test_without_a_namespace_the_script_runs_in_the_unpacked_source_with_the_variables(s3: BaseClient, tmp_path: Path) -> None:
    upload_source(s3, {"show.py": SHOW, "helpers/util.py": ""})
    ml = job_container(tmp_path / "attempt-1")
    ml.create()
    base = container.system_environment("us-east-1", {"TRAINING_JOB_NAME": "tune-001-0123abcd"})
    command, environment, cwd = framework_container.command(
        ml, s3, base, use_namespace=False, num_gpus=0, checkpoint_dir=tmp_path / "attempt-1" / "checkpoints"
    )
    assert cwd == ml.root / "code" and (cwd / "helpers" / "util.py").is_file()
    assert not list(tmp_path.rglob("*.tar.gz")), "the downloaded archive is removed once unpacked"
    finished = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=60, check=True)
    shown = json.loads(finished.stdout.splitlines()[-1])
    assert shown["argv"] == framework_container.framework_script(HYPERPARAMETERS).arguments()
    assert Path(shown["cwd"]) == cwd
    assert shown["env"]["SM_CHANNEL_TRAIN"] == str(ml.channel_dir("train"))
    assert shown["env"]["CHECKPOINT_DIR"] == str(tmp_path / "attempt-1" / "checkpoints")


# A script with no SIGTERM handler of its own: Python's default, ending at once.
WAITS = """\
import time
print("ready", flush=True)
time.sleep(600)
"""


def test_sigterm_ends_a_script_without_a_handler_in_its_hosts_pid_namespace(s3: BaseClient, tmp_path: Path) -> None:
    # The first process of a PID namespace ignores signals it has no handler for. In SageMaker's framework
    # container the toolkit is that process and the script its child; if the launcher became the script,
    # a StopTrainingJob would wait the whole grace period for SIGKILL.
    if not processes.namespace_permitted():
        pytest.skip("unshare is not permitted here (not root): a host's PID namespace cannot be made")
    upload_source(s3, {"show.py": WAITS})
    ml = job_container(tmp_path / "attempt-1")
    ml.create()
    command, environment, cwd = framework_container.command(
        ml, s3, container.system_environment("us-east-1", {}), use_namespace=False, num_gpus=0, checkpoint_dir=None
    )
    as_host = ["unshare", "--pid", "--fork", "--mount-proc", *command]  # the PID namespace hosts.JobNetwork gives
    group = processes.ProcessGroup(as_host, cwd, environment, grace_s=30)
    assert group.output.readline().decode().strip() == "ready"

    group.terminate()
    returncode = group.wait()

    assert not group.sigkill_sent, "the script ignored SIGTERM until the grace period ended"
    assert returncode == 128 + signal.SIGTERM


def test_requirements_are_installed_before_the_script_runs(s3: BaseClient, tmp_path: Path) -> None:
    # psutil is in this environment, and pip must not go out (PIP_NO_INDEX): the launcher's pip step succeeds.
    upload_source(s3, {"show.py": SHOW, "requirements.txt": "psutil\n"})
    ml = job_container(tmp_path / "attempt-1")
    ml.create()
    command, environment, cwd = framework_container.command(
        ml, s3, container.system_environment("us-east-1", {}), use_namespace=False, num_gpus=0, checkpoint_dir=None
    )
    finished = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=120, check=True)
    assert "Requirement already satisfied: psutil" in finished.stdout
    assert json.loads(finished.stdout.splitlines()[-1])["argv"][:2] == ["--epochs", "1"]


def test_in_a_namespace_the_container_sees_opt_ml(s3: BaseClient, tmp_path: Path) -> None:
    upload_source(s3, {"show.py": SHOW})
    ml = job_container(tmp_path / "attempt-1")
    ml.create()
    command, environment, cwd = framework_container.command(
        ml, s3, {}, use_namespace=True, num_gpus=0, checkpoint_dir=None
    )
    # processes.in_namespace's command: the mount namespace (the host's network comes from hosts.JobNetwork).
    assert command == processes.in_namespace(ml.root, command[command.index(str(ml.root)) + 1:])
    arguments = framework_container.framework_script(HYPERPARAMETERS).arguments()
    assert command[-(len(arguments) + 2):] == ["/opt/ml/code", "show.py", *arguments]
    assert cwd == ml.root and "CHECKPOINT_DIR" not in environment
    assert environment["SM_CHANNEL_TRAIN"] == "/opt/ml/input/data/train"


def test_a_source_without_the_program_or_escaping_its_folder_is_refused(s3: BaseClient, tmp_path: Path) -> None:
    ml = job_container(tmp_path / "attempt-1")
    ml.create()
    upload_source(s3, {"train.py": "print(1)"})
    with pytest.raises(ValueError, match=r"sagemaker_program='show.py' is not in s3://.*sourcedir.tar.gz \(it holds train.py\)"):
        framework_container.command(ml, s3, {}, use_namespace=False, num_gpus=0, checkpoint_dir=None)
    upload_source(s3, {"../escape.py": "print(1)", "show.py": SHOW})
    with pytest.raises(ValueError, match=r"sagemaker_submit_directory=s3://.*sourcedir.tar.gz: .*outside"):
        framework_container.command(ml, s3, {}, use_namespace=False, num_gpus=0, checkpoint_dir=None)
    assert not (tmp_path / "attempt-1" / "escape.py").exists()

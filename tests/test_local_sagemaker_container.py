"""The training-container contract (tools/local_sagemaker/container.py): the /opt/ml files and the SM_* variables.

The variables are compared with what SDK 3's own environment driver (the one that runs inside a real
SageMaker container) exports from the same three config files.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sagemaker.train.container_drivers

from local_sagemaker.container import TrainingContainer, channel_config

CHANNELS = {"train": channel_config(), "test": channel_config(content_type="application/x-idx")}
HYPERPARAMETERS = {"epochs": "3", "lr": "0.01", "optimizer": "adam", "max-train-images": "500"}
DRIVER_SCRIPTS = Path(sagemaker.train.container_drivers.__file__).parent / "scripts"


def training_container(
    root: Path, hosts: tuple[str, ...] = ("algo-1",), current_host: str = "algo-1"
) -> TrainingContainer:
    """A CPU host of a job with two channels and four hyperparameters."""
    return TrainingContainer(
        root=root, instance_type="ml.m5.xlarge", channels=CHANNELS, hyperparameters=HYPERPARAMETERS,
        hosts=hosts, current_host=current_host,
    )


def config_files(root: Path) -> dict[str, object]:
    """The three JSON files under input/config, parsed."""
    config = root / "input" / "config"
    return {name: json.loads((config / f"{name}.json").read_text())
            for name in ("hyperparameters", "inputdataconfig", "resourceconfig")}


def driver_environment(ml: TrainingContainer, tmp_path: Path) -> dict[str, str]:
    """What SDK 3's sm_drivers/scripts/environment.py exports for the config files that `ml` wrote."""
    files = config_files(ml.root)
    exports = tmp_path / "sm_training.env"
    program = (
        f"import json, sys; sys.path.insert(0, {str(DRIVER_SCRIPTS)!r}); import environment; "
        f"environment.set_env(*(json.loads(sys.argv[i]) for i in (1, 2, 3)), output_file={str(exports)!r})"
    )
    arguments = [json.dumps(files[name]) for name in ("resourceconfig", "inputdataconfig", "hyperparameters")]
    subprocess.run(
        [sys.executable, "-c", program, *arguments],
        check=True, capture_output=True, env={"TRAINING_JOB_NAME": "contract-test", "PATH": "/usr/bin:/bin"},
    )
    return dict(re.findall(r"^export (\w+)='(.*)'$", exports.read_text(), flags=re.MULTILINE))


def test_one_host_writes_the_three_config_files(tmp_path: Path) -> None:
    ml = training_container(tmp_path / "ml")

    ml.create()

    files = config_files(ml.root)
    assert files["hyperparameters"] == HYPERPARAMETERS
    assert files["inputdataconfig"] == {
        "train": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"},
        "test": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None",
                 "ContentType": "application/x-idx"},
    }
    assert files["resourceconfig"] == {
        "current_host": "algo-1",
        "current_instance_type": "ml.m5.xlarge",
        "current_group_name": "homogeneousCluster",
        "hosts": ["algo-1"],
        "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": "ml.m5.xlarge",
                             "hosts": ["algo-1"]}],
        "network_interface_name": "eth0",
    }
    assert sorted(str(path.relative_to(ml.root)) for path in ml.root.rglob("*") if path.is_dir()) == [
        "input", "input/config", "model", "output", "output/data"
    ]


def test_three_hosts_share_the_sorted_host_list_and_differ_in_current_host(tmp_path: Path) -> None:
    hosts = ("algo-3", "algo-1", "algo-2")
    configs = {}
    for host in hosts:
        ml = training_container(tmp_path / host, hosts=hosts, current_host=host)
        ml.create()
        configs[host] = config_files(ml.root)["resourceconfig"]

    assert {host: config["current_host"] for host, config in configs.items()} == {host: host for host in hosts}
    assert all(config["hosts"] == ["algo-1", "algo-2", "algo-3"] for config in configs.values())
    assert all(config["instance_groups"][0]["hosts"] == ["algo-1", "algo-2", "algo-3"] for config in configs.values())
    environment = training_container(tmp_path / "algo-3", hosts=hosts, current_host="algo-3").sm_environment(num_gpus=0)
    assert json.loads(environment["SM_HOSTS"]) == ["algo-1", "algo-2", "algo-3"]
    assert (environment["SM_CURRENT_HOST"], environment["SM_CURRENT_HOST_RANK"]) == ("algo-3", "2")
    assert (environment["SM_HOST_COUNT"], environment["SM_MASTER_ADDR"]) == ("3", "algo-1")


@pytest.mark.parametrize(
    "hosts, current_host",
    [(("algo-1",), "algo-1"), (("algo-2", "algo-3", "algo-1"), "algo-2")],
    ids=["1 host", "3 hosts"],
)
def test_sm_variables_are_what_sdk3s_driver_exports_from_the_same_files(
    tmp_path: Path, hosts: tuple[str, ...], current_host: str
) -> None:
    ml = training_container(tmp_path / "ml", hosts=hosts, current_host=current_host)
    ml.create()

    ours = ml.sm_environment(num_gpus=0)
    theirs = driver_environment(ml, tmp_path)

    # The driver runs inside the container, where root is /opt/ml; and it writes a few more variables.
    in_container = {name: value.replace(str(ml.root), "/opt/ml") for name, value in ours.items()}
    assert set(theirs) - set(ours) == {"SM_TRAINING_ENV"}  # the driver's summary of all the others
    assert {name: theirs[name] for name in ours} == in_container
    assert ours["SM_CHANNEL_TRAIN"] == str(ml.root / "input" / "data" / "train")
    assert (ours["SM_HP_MAX_TRAIN_IMAGES"], ours["SM_HP_OPTIMIZER"]) == ("500", "adam")
    assert json.loads(ours["SM_HPS"]) == {"epochs": 3, "lr": 0.01, "optimizer": "adam", "max-train-images": 500}


def test_checkpoint_dir_and_entry_script_add_the_variables_of_the_direct_run(tmp_path: Path) -> None:
    ml = training_container(tmp_path)

    environment = ml.sm_environment(
        num_gpus=2, num_cpus=8, checkpoint_dir=tmp_path / "checkpoints", entry_script="train.py"
    )

    assert environment["CHECKPOINT_DIR"] == str(tmp_path / "checkpoints")
    assert environment["SM_SOURCE_DIR"] == str(tmp_path / "input" / "data" / "code")
    assert environment["SM_ENTRY_SCRIPT"] == "train.py"
    assert (environment["SM_NUM_GPUS"], environment["SM_NUM_CPUS"]) == ("2", "8")
    assert "CHECKPOINT_DIR" not in ml.sm_environment(num_gpus=0)


def test_container_paths_map_under_root_and_others_are_refused(tmp_path: Path) -> None:
    ml = training_container(tmp_path)

    assert ml.local_path("/opt/ml/checkpoints") == tmp_path / "checkpoints"
    assert ml.local_path("/opt/ml/output/tensorboard") == tmp_path / "output" / "tensorboard"
    with pytest.raises(ValueError, match=r"'/tmp/checkpoints' is not under /opt/ml"):
        ml.local_path("/tmp/checkpoints")


def test_a_current_host_outside_the_hosts_is_refused(tmp_path: Path) -> None:
    refusal = r"current_host 'algo-4' is not one of the job's hosts \['algo-1', 'algo-2'\]"
    with pytest.raises(ValueError, match=refusal):
        training_container(tmp_path, hosts=("algo-1", "algo-2"), current_host="algo-4")

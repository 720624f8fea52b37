"""SageMaker's training-container contract in one place: the /opt/ml folders, their config files, the SM_* variables.

What a training script may rely on in a SageMaker training container, on each of its hosts:

    /opt/ml/input/config/hyperparameters.json   the job's HyperParameters (names and values are strings)
    /opt/ml/input/config/inputdataconfig.json   one entry per input channel (input mode, distribution, ...)
    /opt/ml/input/config/resourceconfig.json    current_host, the sorted hosts, the instance groups, ...
    /opt/ml/input/data/<channel>/               each channel's objects, downloaded before the script starts
    /opt/ml/model/                              what becomes model.tar.gz
    /opt/ml/output/data/                        what becomes output.tar.gz; output/failure: why it failed
    /opt/ml/checkpoints/, /opt/ml/output/tensorboard/   synced with S3 when the job asks for it

and the variables that SDK 3's drivers (sm_drivers/scripts/environment.py) export from those files before
they run the entry script: SM_MODEL_DIR, SM_CHANNEL_<NAME>, SM_HOSTS, SM_CURRENT_HOST, SM_NUM_GPUS, ...

The local runner writes these files for each job, its direct fallback (no mount namespace) exports these
variables itself, the tests of train.py build the same layout and the benchmark runs train.py with the same
variables: all of them from `TrainingContainer`, so that there is one description of the contract.
Outside a container the layout lives under any folder, which stands for /opt/ml.

Hosts are a parameter: one host, `algo-1`, is what a single-instance job has. A job on N instances has the
hosts algo-1..algo-N, and each host gets the same files but for its own `current_host`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

CONTAINER_ROOT = PurePosixPath("/opt/ml")
DEFAULT_CHECKPOINT_PATH = "/opt/ml/checkpoints"
DEFAULT_TENSORBOARD_PATH = "/opt/ml/output/tensorboard"
DEFAULT_HOSTS = ("algo-1",)
INSTANCE_GROUP = "homogeneousCluster"  # the one group of a job that names no instance groups
NETWORK_INTERFACE = "eth0"
MASTER_PORT = 7777  # where SDK 3's distributed drivers meet on the first host
LOG_LEVEL = 20  # SM_LOG_LEVEL: logging.INFO, the drivers' default
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def channel_config(
    input_mode: str = "File",
    distribution: str = "FullyReplicated",
    record_wrapper: str = "None",
    content_type: str | None = None,
) -> dict[str, str]:
    """A channel's entry in inputdataconfig.json (SageMaker's names and defaults)."""
    return {
        "TrainingInputMode": input_mode,
        "S3DistributionType": distribution,
        "RecordWrapperType": record_wrapper,
        **({"ContentType": content_type} if content_type is not None else {}),
    }


def json_or_text(value: str) -> object:
    """A hyperparameter as SDK 3's drivers read it: its JSON value when it is JSON, else the string itself."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def as_text(value: object) -> str:
    """A value as the drivers export it: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def gpu_count() -> int:
    """GPUs that `nvidia-smi` lists, as SDK 3's environment driver counts them."""
    try:
        listing = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def system_environment(region: str, extra: Mapping[str, str]) -> dict[str, str]:
    """A clean environment, as a container has: this Python first on PATH, pip offline, then `extra` (the job's)."""
    return {
        # The job's Python is this environment's interpreter, wherever its command says "python".
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), *SYSTEM_PATH]),
        "HOME": str(Path.home()),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",  # as in SageMaker's images: lines reach the log when printed
        "PYTHONDONTWRITEBYTECODE": "1",
        # Offline, requirements.txt must already be satisfied by this environment: pip never goes out.
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        **extra,
    }


@dataclasses.dataclass(frozen=True)
class TrainingContainer:
    """One host of a training job as its script sees it: /opt/ml (here `root`), its config files and SM_* variables."""

    root: Path
    instance_type: str
    channels: Mapping[str, Mapping[str, str]]  # inputdataconfig.json: each channel's channel_config()
    hyperparameters: Mapping[str, str] = dataclasses.field(default_factory=dict)
    hosts: tuple[str, ...] = DEFAULT_HOSTS
    current_host: str = DEFAULT_HOSTS[0]
    network_interface: str = NETWORK_INTERFACE  # the interface on which the hosts reach each other

    def __post_init__(self) -> None:
        if self.current_host not in self.hosts:
            raise ValueError(f"current_host {self.current_host!r} is not one of the job's hosts {list(self.hosts)}")

    @property
    def config_dir(self) -> Path:
        """input/config: the three JSON files."""
        return self.root / "input" / "config"

    @property
    def input_data_dir(self) -> Path:
        """input/data: one folder per channel."""
        return self.root / "input" / "data"

    @property
    def model_dir(self) -> Path:
        """model/: packed as model.tar.gz when the job ends."""
        return self.root / "model"

    @property
    def output_dir(self) -> Path:
        """output/: holds `failure` and data/."""
        return self.root / "output"

    @property
    def output_data_dir(self) -> Path:
        """output/data: packed as output.tar.gz when the job ends."""
        return self.output_dir / "data"

    @property
    def failure_file(self) -> Path:
        """output/failure: the script's own account of why it failed (DescribeTrainingJob's FailureReason)."""
        return self.output_dir / "failure"

    def channel_dir(self, name: str) -> Path:
        """input/data/<name>: where a channel's objects are downloaded."""
        return self.input_data_dir / name

    def local_path(self, container_path: str) -> Path:
        """The folder under root that stands for a path under /opt/ml in the container."""
        path = PurePosixPath(container_path)
        if not path.is_relative_to(CONTAINER_ROOT):
            raise ValueError(f"{container_path!r} is not under {CONTAINER_ROOT}: only paths there map to {self.root}")
        return self.root / path.relative_to(CONTAINER_ROOT)

    def input_data_config(self) -> dict[str, dict[str, str]]:
        """inputdataconfig.json: each channel's configuration."""
        return {name: dict(config) for name, config in self.channels.items()}

    def resource_config(self) -> dict[str, object]:
        """resourceconfig.json: this host, the sorted hosts and the one instance group they form."""
        hosts = sorted(self.hosts)
        return {
            "current_host": self.current_host,
            "current_instance_type": self.instance_type,
            "current_group_name": INSTANCE_GROUP,
            "hosts": hosts,
            "instance_groups": [
                {"instance_group_name": INSTANCE_GROUP, "instance_type": self.instance_type, "hosts": hosts}
            ],
            "network_interface_name": self.network_interface,
        }

    def create(self) -> None:
        """Make the folders SageMaker makes and write the three config files (channels are downloaded later)."""
        for folder in (self.config_dir, self.model_dir, self.output_data_dir):
            folder.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "hyperparameters.json").write_text(json.dumps(dict(self.hyperparameters)))
        (self.config_dir / "inputdataconfig.json").write_text(json.dumps(self.input_data_config()))
        (self.config_dir / "resourceconfig.json").write_text(json.dumps(self.resource_config()))

    def sm_environment(
        self,
        num_gpus: int,
        num_cpus: int | None = None,
        checkpoint_dir: Path | None = None,
        entry_script: str | None = None,
    ) -> dict[str, str]:
        """The SM_* variables SDK 3's drivers export from the config files, pointing into root instead of /opt/ml.

        checkpoint_dir sets CHECKPOINT_DIR, which train.py reads where /opt/ml/checkpoints does not exist;
        entry_script sets SM_ENTRY_SCRIPT and SM_SOURCE_DIR (the `code` channel), as SDK 3's SourceCode does.
        """
        hosts = sorted(self.hosts)
        channels = list(self.channels)
        # The drivers read each hyperparameter as JSON where it is JSON ("3" is 3, "adam" stays a string).
        hyperparameters = {name: json_or_text(value) for name, value in self.hyperparameters.items()}
        environment = {
            "SM_MODEL_DIR": str(self.model_dir),
            "SM_INPUT_DIR": str(self.root / "input"),
            "SM_INPUT_DATA_DIR": str(self.input_data_dir),
            "SM_INPUT_CONFIG_DIR": str(self.config_dir),
            "SM_OUTPUT_DIR": str(self.output_dir),
            "SM_OUTPUT_FAILURE": str(self.failure_file),
            "SM_OUTPUT_DATA_DIR": str(self.output_data_dir),
            "SM_CHANNELS": json.dumps(channels),
            **{f"SM_CHANNEL_{name.upper()}": str(self.channel_dir(name)) for name in channels},
            "SM_LOG_LEVEL": str(LOG_LEVEL),
            "SM_HPS": json.dumps(hyperparameters),
            **{f"SM_HP_{name.replace('-', '_').upper()}": as_text(value) for name, value in hyperparameters.items()},
            "SM_CURRENT_HOST": self.current_host,
            "SM_CURRENT_INSTANCE_TYPE": self.instance_type,
            "SM_HOSTS": json.dumps(hosts),
            "SM_HOST_COUNT": str(len(hosts)),
            "SM_CURRENT_HOST_RANK": str(hosts.index(self.current_host)),
            "SM_NETWORK_INTERFACE_NAME": self.network_interface,
            "SM_MASTER_ADDR": hosts[0],
            "SM_MASTER_PORT": str(MASTER_PORT),
            "SM_NUM_CPUS": str(num_cpus if num_cpus is not None else os.cpu_count()),
            "SM_NUM_GPUS": str(num_gpus),
            "SM_NUM_NEURONS": "0",  # no AWS Trainium or Inferentia chips here
            "SM_RESOURCE_CONFIG": json.dumps(self.resource_config()),
            "SM_INPUT_DATA_CONFIG": json.dumps(self.input_data_config()),
        }
        if checkpoint_dir is not None:
            environment["CHECKPOINT_DIR"] = str(checkpoint_dir)
        if entry_script is not None:
            environment["SM_SOURCE_DIR"] = str(self.channel_dir("code"))
            environment["SM_ENTRY_SCRIPT"] = entry_script
        return environment

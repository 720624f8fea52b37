"""Jobs that name no ContainerEntrypoint, run the way SageMaker's framework containers (PyTorch, ...) run a script.

A training job that a hyperparameter tuning job creates has no ContainerEntrypoint: the tuning API has no
place for one. SDK 3's HyperparameterTuner sets two hyperparameters instead, which SageMaker's framework
training images read through their launcher (the sagemaker-training-toolkit):

    sagemaker_program            the entry script, e.g. train.py
    sagemaker_submit_directory   the S3 URI of sourcedir.tar.gz, the packed source folder

The launcher then, inside the container:

1. downloads sagemaker_submit_directory and unpacks it into /opt/ml/code;
2. installs /opt/ml/code/requirements.txt with pip when it exists;
3. runs `python <program> --name value ...` in /opt/ml/code. The arguments are the job's hyperparameters
   less the toolkit's own (names beginning with `sagemaker_`, and `_tuning_objective_metric`, which
   SageMaker adds to every tuning trial), in name order, each value JSON-decoded first (so "0.1" stays
   0.1 and "true" becomes True), a one-letter name as `-x`;
4. with the SM_* variables of the training environment: the folders and channels (container.py), the
   hyperparameters as SM_HPS / SM_HP_<NAME> (the script's own only), SM_USER_ENTRY_POINT, SM_USER_ARGS,
   SM_MODULE_DIR, SM_MODULE_NAME, SM_LOG_LEVEL, SM_OUTPUT_INTERMEDIATE_DIR.

Here the runner unpacks the source before the container starts (the container has no network); steps 2
and 3 run in the container, as /bin/sh there. Only a Python script is run (the toolkit also runs modules
and shell commands): anything else is refused, naming the hyperparameter.
"""

from __future__ import annotations

import dataclasses
import json
import tarfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from . import container, processes, s3_io

PROGRAM = "sagemaker_program"
SUBMIT_DIRECTORY = "sagemaker_submit_directory"
TUNING_OBJECTIVE = "_tuning_objective_metric"
TOOLKIT_PREFIX = "sagemaker_"
CODE_PATH = "/opt/ml/code"
LOG_LEVEL = "20"  # the toolkit's default, logging.INFO, unless sagemaker_container_log_level says otherwise
# In the container: cd to the code, install its requirements when it has some, then run the script as a child.
# The launcher stays above it, as the toolkit does: the first process of a host's PID namespace ignores every
# signal it has no handler for, so a script in that place would sit through a stop's SIGTERM.
LAUNCHER = 'cd "$1" && shift && if [ -f requirements.txt ]; then python -m pip install -r requirements.txt || exit; fi; python "$@"'


@dataclasses.dataclass(frozen=True)
class FrameworkScript:
    """What the framework container runs: the entry script, where its source is, and the script's own hyperparameters."""

    program: str
    submit_directory: str
    hyperparameters: dict[str, str]  # without the toolkit's own

    @property
    def decoded(self) -> dict[str, Any]:
        """The script's hyperparameters JSON-decoded, as the toolkit reads hyperparameters.json."""
        return {name: decode(value) for name, value in self.hyperparameters.items()}

    def arguments(self) -> list[str]:
        """The command-line arguments the toolkit passes: `--name value`, in name order."""
        arguments = []
        for name, value in sorted(self.decoded.items()):
            arguments += [f"--{name}" if len(name) > 1 else f"-{name}", argument_text(value)]
        return arguments


def decode(value: str) -> Any:
    """A hyperparameter's value as the toolkit reads it: JSON when it parses, else the text itself."""
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def argument_text(value: Any) -> str:
    """How the toolkit writes a decoded value on the command line (a mapping as k=v,k=v)."""
    if isinstance(value, Mapping):
        return ",".join(f"{key}={item}" for key, item in sorted(value.items()))
    return str(value)


def is_toolkit_hyperparameter(name: str) -> bool:
    """Whether the launcher keeps this hyperparameter to itself rather than passing it to the script."""
    return name.startswith(TOOLKIT_PREFIX) or name == TUNING_OBJECTIVE


def framework_script(hyperparameters: Mapping[str, str]) -> FrameworkScript:
    """The script a job without ContainerEntrypoint runs, read from its hyperparameters; ValueError when it names none."""
    program = decode(hyperparameters.get(PROGRAM, ""))
    submit_directory = decode(hyperparameters.get(SUBMIT_DIRECTORY, ""))
    if not isinstance(program, str) or not program.endswith(".py") or PurePosixPath(program).name != program:
        raise ValueError(
            f"a job without ContainerEntrypoint needs the hyperparameter {PROGRAM} naming a Python script in its "
            f"source folder (e.g. train.py), not {hyperparameters.get(PROGRAM)!r}"
        )
    if not isinstance(submit_directory, str) or not submit_directory.startswith("s3://") or not submit_directory.endswith(".tar.gz"):
        raise ValueError(
            f"a job without ContainerEntrypoint needs the hyperparameter {SUBMIT_DIRECTORY} with the S3 URI of its "
            f"packed source (s3://.../sourcedir.tar.gz), not {hyperparameters.get(SUBMIT_DIRECTORY)!r}"
        )
    own = {name: value for name, value in hyperparameters.items() if not is_toolkit_hyperparameter(name)}
    return FrameworkScript(program, submit_directory, own)


def unpack_source(s3: Any, submit_directory: str, code_dir: Path) -> list[str]:
    """Download sourcedir.tar.gz and unpack it into code_dir; return its files. ValueError for a bad or escaping archive."""
    bucket, key = s3_io.split_s3_uri(submit_directory)
    code_dir.mkdir(parents=True, exist_ok=True)
    archive = code_dir.parent / f"{code_dir.name}-{PurePosixPath(key).name}"
    s3.download_file(bucket, key, str(archive))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(code_dir, filter="data")
            names = sorted(member.name for member in tar.getmembers() if member.isfile())
    except tarfile.TarError as error:  # not a gzipped tar, or a member that would land outside code_dir
        raise ValueError(f"{SUBMIT_DIRECTORY}={submit_directory}: {error}") from error
    finally:
        archive.unlink()
    return names


def environment(
    view: container.TrainingContainer, script: FrameworkScript, num_gpus: int, checkpoint_dir: Path | None = None
) -> dict[str, str]:
    """The SM_* variables the toolkit exports, for the container as `view` describes it (its root stands for /opt/ml)."""
    decoded = script.decoded
    variables = dataclasses.replace(view, hyperparameters=script.hyperparameters).sm_environment(
        num_gpus=num_gpus, checkpoint_dir=checkpoint_dir
    )
    variables.update({
        "SM_HPS": json.dumps(decoded),
        **{
            f"SM_HP_{name.replace('-', '_').upper()}": value if isinstance(value, str) else json.dumps(value)
            for name, value in decoded.items()
        },
        "SM_USER_ENTRY_POINT": script.program,
        "SM_MODULE_NAME": script.program.removesuffix(".py"),
        "SM_MODULE_DIR": script.submit_directory,
        "SM_USER_ARGS": json.dumps(script.arguments()),
        "SM_LOG_LEVEL": str(decode(view.hyperparameters.get("sagemaker_container_log_level", LOG_LEVEL))),
        "SM_OUTPUT_INTERMEDIATE_DIR": str(view.output_dir / "intermediate"),
    })
    return variables


def launch_command(code_dir: str, script: FrameworkScript) -> list[str]:
    """The launcher's steps 2 and 3 as one shell command: requirements (if any), then the script with its arguments."""
    return ["/bin/sh", "-c", LAUNCHER, "launcher", code_dir, script.program, *script.arguments()]


def command(
    ml: container.TrainingContainer,
    s3: Any,
    base_environment: Mapping[str, str],
    *,
    use_namespace: bool,
    num_gpus: int,
    checkpoint_dir: Path | None,
) -> tuple[list[str], dict[str, str], Path]:
    """The command, environment and working folder of a job without ContainerEntrypoint; its source is unpacked first.

    In a mount namespace the container sees its folder as /opt/ml; without one, the variables point into the
    job's folder and CHECKPOINT_DIR at its checkpoint folder, as for the direct runs of container.py.
    ValueError names what is missing (a hyperparameter, the script in the source).
    """
    script = framework_script(ml.hyperparameters)
    files = unpack_source(s3, script.submit_directory, ml.root / "code")
    if script.program not in files:
        raise ValueError(
            f"{PROGRAM}={script.program!r} is not in {script.submit_directory} (it holds {', '.join(files[:8]) or 'nothing'})"
        )
    if use_namespace:
        view = dataclasses.replace(ml, root=Path(container.CONTAINER_ROOT))
        variables = environment(view, script, num_gpus)
        return processes.in_namespace(ml.root, launch_command(CODE_PATH, script)), {**base_environment, **variables}, ml.root
    variables = environment(ml, script, num_gpus, checkpoint_dir=checkpoint_dir)
    code_dir = ml.root / "code"
    return launch_command(str(code_dir), script), {**base_environment, **variables}, code_dir

"""Tests of code/train.py as SageMaker runs it: a process in the container's folder layout, told where by SM_* variables."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

import sagemaker_job
import train
from container_layout import container_layout, sm_environment
from mnist_data import load_split
from mnist_format import SPLIT_FILES
from mnist_model import ResumeMismatchError, load_model, predict
from support import epochs_in

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "code" / "train.py"
SMALL_RUN = ["--max_train_images", "1000", "--batch_size", "32"]
TWO_EPOCHS = ["--epochs", "2", *SMALL_RUN]
# The metric definitions notebook 04 gives the job: SageMaker reads the job's log with these regexes.
METRIC_REGEXES = {definition.name: definition.regex for definition in sagemaker_job.metric_definitions()}
def run_train_script(arguments: list[str], environment: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Run code/train.py in a fresh Python process, as the container's entry point does."""
    return subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *arguments],
        cwd=cwd,
        env=os.environ | environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def files_under(folder: Path) -> list[Path]:
    """Every file below a folder."""
    return sorted(path for path in folder.rglob("*") if path.is_file())


def last_line(text: str) -> str:
    """The last non-empty line of a stream."""
    return text.strip().splitlines()[-1]


# --- a run stopped by SIGTERM, then resumed ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SpotRun:
    """A two-epoch run stopped by SIGTERM after epoch 1, as SageMaker stops a spot instance, then run again."""

    ml_dir: Path
    interrupted_output: str
    left_by_interruption: list[str]  # files under /opt/ml after the first process ended
    resumed: subprocess.CompletedProcess


def run_until_first_epoch_then_sigterm(arguments: list[str], environment: dict[str, str], cwd: Path) -> str:
    """Start train.py, send it SIGTERM as soon as it prints epoch 1's metric line, and return its output."""
    process = subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), *arguments],
        cwd=cwd, env=os.environ | environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("epoch=1;"):
            process.send_signal(signal.SIGTERM)
            break
    rest, _ = process.communicate(timeout=300)
    return "".join(lines) + rest


@pytest.fixture(scope="module")
def spot_run(tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path) -> SpotRun:
    """Two epochs on 1,000 real digits in a container layout, interrupted after epoch 1 and run again."""
    root = tmp_path_factory.mktemp("container")
    ml_dir = root / "opt" / "ml"
    environment = container_layout(ml_dir, mirror_dir)
    interrupted_output = run_until_first_epoch_then_sigterm(TWO_EPOCHS, environment, cwd=root)
    left = [str(path.relative_to(ml_dir)) for path in files_under(ml_dir) if "input" not in path.parts]
    resumed = run_train_script(TWO_EPOCHS, environment, cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return SpotRun(ml_dir, interrupted_output, left, resumed)


def printed_metric(run: SpotRun, name: str) -> float:
    """A metric's value in the resumed run's stdout, read with its SageMaker regex (e.g. "test:accuracy")."""
    return float(re.search(METRIC_REGEXES[name], run.resumed.stdout).group(1))


def test_interruption_leaves_the_last_checkpoint_and_no_model(spot_run: SpotRun) -> None:
    assert epochs_in(spot_run.interrupted_output) == [1]
    assert "checkpoints/last.ckpt" in spot_run.left_by_interruption
    assert "model/model.pt" not in spot_run.left_by_interruption


def test_rerun_resumes_from_the_checkpoint_instead_of_starting_over(spot_run: SpotRun) -> None:
    assert epochs_in(spot_run.resumed.stdout) == [2]


def test_run_saves_a_model_that_recognises_real_test_digits(spot_run: SpotRun, mirror_dir: Path) -> None:
    test_images, test_labels = load_split(mirror_dir, "test")

    model = load_model(spot_run.ml_dir / "model" / "model.pt")

    accuracy = (predict(model, test_images) == test_labels).float().mean().item()
    assert accuracy >= 0.80
    assert accuracy == pytest.approx(printed_metric(spot_run, "test:accuracy"), abs=2 / len(test_labels))


def test_run_prints_metric_lines_that_sagemaker_regexes_capture(spot_run: SpotRun) -> None:
    captured = {name: re.findall(regex, spot_run.resumed.stdout) for name, regex in METRIC_REGEXES.items()}
    metrics = json.loads((spot_run.ml_dir / "output" / "data" / "metrics.json").read_text())

    # The resumed run prints epoch 2's line and the test line: each metric once.
    assert {name: len(values) for name, values in captured.items()} == dict.fromkeys(sagemaker_job.METRIC_LINES, 1)
    for name, key in sagemaker_job.METRIC_LINES.items():  # what SageMaker reads is what the run measured
        assert float(captured[name][0]) == pytest.approx(metrics[key], rel=1e-5), name
    assert 0.8 <= float(captured["validation:accuracy"][0]) <= 1
    assert 0.8 <= float(captured["test:accuracy"][0]) <= 1
    assert 0 < float(captured["validation:loss"][0]) < 1.0  # guessing scores ln 10 = 2.3


def test_run_writes_metrics_json_with_the_printed_test_accuracy(spot_run: SpotRun) -> None:
    metrics = json.loads((spot_run.ml_dir / "output" / "data" / "metrics.json").read_text())

    assert metrics["test_acc"] == pytest.approx(printed_metric(spot_run, "test:accuracy"), rel=1e-5)


def test_metrics_json_keeps_the_final_validation_accuracy(spot_run: SpotRun) -> None:
    metrics = json.loads((spot_run.ml_dir / "output" / "data" / "metrics.json").read_text())

    assert metrics.get("val_acc") == pytest.approx(printed_metric(spot_run, "validation:accuracy"), rel=1e-5)


def test_run_writes_last_and_best_checkpoints(spot_run: SpotRun) -> None:
    names = {path.name for path in files_under(spot_run.ml_dir / "checkpoints")}

    assert {"last.ckpt", "best.ckpt"} <= names


def test_run_writes_tensorboard_scalars_under_output(spot_run: SpotRun) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_files = [path for path in files_under(spot_run.ml_dir / "output" / "tensorboard") if "tfevents" in path.name]
    assert event_files

    tags = set()
    for path in event_files:
        tags |= set(EventAccumulator(str(path)).Reload().Tags()["scalars"])
    assert {"train_loss", "val_acc", "test_acc"} <= tags


def test_successful_run_leaves_no_failure_file(spot_run: SpotRun) -> None:
    assert (spot_run.ml_dir / "model" / "model.pt").is_file()
    assert not (spot_run.ml_dir / "output" / "failure").exists()


def test_resuming_with_another_number_of_epochs_is_refused(spot_run: SpotRun, tmp_path: Path) -> None:
    ml_dir = Path(shutil.copytree(spot_run.ml_dir, tmp_path / "ml"))
    model_before = (ml_dir / "model" / "model.pt").read_bytes()

    status = train.main(["--epochs", "3", *SMALL_RUN], environ=sm_environment(ml_dir))

    assert status == 1
    assert "resume with the same epochs" in (ml_dir / "output" / "failure").read_text()
    assert (ml_dir / "model" / "model.pt").read_bytes() == model_before


def test_a_refused_resume_leaves_the_last_checkpoint_as_it_was(spot_run: SpotRun, tmp_path: Path) -> None:
    ml_dir = Path(shutil.copytree(spot_run.ml_dir, tmp_path / "ml"))
    last = ml_dir / "checkpoints" / "last.ckpt"
    checkpoint_before = last.read_bytes()

    assert train.main(["--epochs", "3", *SMALL_RUN], environ=sm_environment(ml_dir)) == 1

    assert last.read_bytes() == checkpoint_before  # a ResumeMismatchError is no interruption to save


class RecordingTrainer:
    """Stands in for pl.Trainer in SaveOnInterrupt: records the checkpoints it is asked to save."""

    def __init__(self) -> None:
        self.saved: list[Path] = []

    def save_checkpoint(self, path: Path) -> None:
        self.saved.append(path)


@pytest.mark.parametrize(("exception", "saves"), [
    pytest.param(SIGTERMException(), True, id="SIGTERM"),
    pytest.param(KeyboardInterrupt(), True, id="KeyboardInterrupt"),
    pytest.param(ResumeMismatchError("other steps"), False, id="ResumeMismatchError"),
    pytest.param(RuntimeError("CUDA out of memory"), False, id="RuntimeError"),
])
def test_only_an_interruption_saves_the_last_checkpoint(tmp_path: Path, exception: BaseException, saves: bool) -> None:
    trainer = RecordingTrainer()

    train.SaveOnInterrupt(tmp_path / "last.ckpt").on_exception(trainer, None, exception)

    assert trainer.saved == ([tmp_path / "last.ckpt"] if saves else [])


# --- failures a SageMaker user must be able to read ------------------------------------------------------------


def test_missing_train_channel_exits_1_naming_the_variable_and_folder(tmp_path: Path, mirror_dir: Path) -> None:
    environment = container_layout(tmp_path / "ml", mirror_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    environment["SM_CHANNEL_TRAIN"] = str(empty)

    completed = run_train_script(["--epochs", "1"], environment, cwd=tmp_path)

    assert completed.returncode == 1
    message = last_line(completed.stderr)
    assert "SM_CHANNEL_TRAIN" in message and str(empty) in message
    assert (tmp_path / "ml" / "output" / "failure").read_text().strip() == message
    assert not files_under(tmp_path / "ml" / "checkpoints") and not files_under(tmp_path / "ml" / "model")


def test_corrupt_train_file_fails_naming_the_file(tmp_path: Path, mirror_dir: Path, capsys) -> None:
    environment = container_layout(tmp_path / "ml", mirror_dir)
    corrupt = Path(environment["SM_CHANNEL_TRAIN"]) / SPLIT_FILES["train"][0]
    corrupt.write_bytes(b"<html>Access denied</html>")

    exit_code = train.main(["--epochs", "1"], environ=environment)

    assert exit_code == 1
    message = last_line(capsys.readouterr().err)
    assert "SM_CHANNEL_TRAIN" in message and str(corrupt) in message
    assert (tmp_path / "ml" / "output" / "failure").read_text().strip() == message


@pytest.mark.parametrize(
    "arguments, named",
    [
        pytest.param(["--lr", "-0.1"], "lr=-0.1", id="negative lr"),
        pytest.param(["--batch_size", "0"], "batch_size=0", id="zero batch_size"),
        pytest.param(["--foo", "1"], "--foo", id="unknown name"),
        pytest.param(["--epochs", "two"], "--epochs", id="wrong type"),
        pytest.param(["--progress_bar", "maybe"], "--progress_bar", id="not a boolean"),
    ],
)
def test_bad_hyperparameter_stops_before_anything_starts(
    tmp_path: Path, mirror_dir: Path, capsys, arguments: list[str], named: str
) -> None:
    environment = container_layout(tmp_path / "ml", mirror_dir)

    with pytest.raises(SystemExit) as stopped:
        train.main(arguments, environ=environment)

    assert stopped.value.code != 0
    assert named in last_line(capsys.readouterr().err)
    for folder in ("model", "checkpoints", "output"):
        assert not files_under(tmp_path / "ml" / folder)


# --- what the container is given ------------------------------------------------------------------------------


def imported_modules(path: Path) -> set[str]:
    """The top-level names of the modules a Python file imports (absolute imports)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_workbook_module_train_py_imports_is_uploaded_with_the_job() -> None:
    code_dir = REPO / "code"
    own_modules = {path.stem for path in code_dir.glob("*.py")}
    needed, to_read = set(), [sagemaker_job.ENTRY_SCRIPT]
    while to_read:  # follow the imports of each uploaded module too: mnist_data imports mnist_format
        name = to_read.pop()
        needed.add(name)
        to_read += [f"{module}.py" for module in imported_modules(code_dir / name) & own_modules
                    if f"{module}.py" not in needed]

    assert {"train.py", "mnist_data.py", "mnist_format.py", "mnist_model.py"} <= needed
    uploaded = set(sagemaker_job.CONTAINER_FILES)
    assert needed <= uploaded, f"sagemaker_job.CONTAINER_FILES lacks {sorted(needed - uploaded)}, which train.py needs"


# --- hyperparameters and folders -------------------------------------------------------------------------------


def test_parse_hyperparameters_reads_sagemaker_style_arguments() -> None:
    hp = train.parse_hyperparameters(["--batch_size", "64", "--lr", "0.01", "--epochs=3", "--max_train_images", "500"])

    assert (hp.batch_size, hp.lr, hp.epochs, hp.max_train_images) == (64, 0.01, 3, 500)
    assert isinstance(hp.batch_size, int) and isinstance(hp.lr, float)


def test_parse_hyperparameters_without_arguments_gives_the_defaults() -> None:
    assert train.parse_hyperparameters([]) == train.Hyperparameters()


@pytest.mark.parametrize(
    "spelling, expected", [("true", True), ("True", True), ("1", True), ("false", False), ("FALSE", False), ("0", False)]
)
def test_boolean_hyperparameter_spellings(spelling: str, expected: bool) -> None:
    assert train.parse_hyperparameters(["--progress_bar", spelling]).progress_bar is expected


def hyperparameters_with(kind: type, default: object) -> type[train.Hyperparameters]:
    """Hyperparameters plus a field `extra` whose annotation is the type itself, not a string."""
    return dataclasses.make_dataclass(
        "ExtendedHyperparameters", [("extra", kind, dataclasses.field(default=default))],
        bases=(train.Hyperparameters,), frozen=True,
    )


@pytest.mark.parametrize(("kind", "default", "argument", "parsed"), [
    (str, "mnist", "digits", "digits"), (int, 1, "5", 5), (float, 0.5, "0.25", 0.25), (bool, False, "yes", True),
])
def test_a_field_annotated_with_a_real_type_is_parsed_and_checked(
    monkeypatch: pytest.MonkeyPatch, kind: type, default: object, argument: str, parsed: object
) -> None:
    extended = hyperparameters_with(kind, default)
    monkeypatch.setattr(train, "Hyperparameters", extended)

    hp = train.parse_hyperparameters(["--extra", argument, "--epochs", "3"])

    assert (hp.extra, type(hp.extra), hp.epochs) == (parsed, kind, 3)
    with pytest.raises(ValueError, match=rf"^hyperparameter extra=\[1\]: expected {kind.__name__}$"):
        extended(extra=[1])


def test_a_field_of_a_type_sagemaker_cannot_pass_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train, "Hyperparameters", hyperparameters_with(tuple, ()))

    with pytest.raises(TypeError, match="hyperparameter extra: type tuple is not one of int, float, bool, str"):
        train.parse_hyperparameters([])


def test_a_numeric_hyperparameter_refuses_a_boolean() -> None:
    for name in ("epochs", "lr"):
        with pytest.raises(ValueError, match=f"hyperparameter {name}=True: expected"):
            train.Hyperparameters(**{name: True})


def test_paths_default_to_the_repository_build_and_data_folders(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(train, "CONTAINER_CHECKPOINT_DIR", tmp_path / "not-a-container")

    paths = train.Paths.from_env({})

    assert paths == train.Paths.under(REPO / "build" / "train", REPO / "data")
    assert paths.checkpoints == REPO / "build" / "train" / "checkpoints"


def test_paths_use_the_container_checkpoint_folder_when_it_exists(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(train, "CONTAINER_CHECKPOINT_DIR", tmp_path)

    assert train.Paths.from_env({}).checkpoints == tmp_path


def test_paths_follow_the_sagemaker_variables(tmp_path: Path) -> None:
    environment = sm_environment(tmp_path)

    paths = train.Paths.from_env(environment)

    for field, variable in (("train", "SM_CHANNEL_TRAIN"), ("test", "SM_CHANNEL_TEST"), ("model", "SM_MODEL_DIR"),
                            ("output", "SM_OUTPUT_DIR"), ("output_data", "SM_OUTPUT_DATA_DIR"),
                            ("checkpoints", "CHECKPOINT_DIR")):
        assert getattr(paths, field) == Path(environment[variable])
    assert paths.tensorboard == tmp_path / "output" / "tensorboard"


def test_output_data_defaults_to_data_inside_sm_output_dir(tmp_path: Path) -> None:
    assert train.Paths.from_env({"SM_OUTPUT_DIR": str(tmp_path)}).output_data == tmp_path / "data"


def test_paths_under_reproduce_the_container_layout(tmp_path: Path) -> None:
    paths = train.Paths.under(tmp_path / "run", tmp_path / "data")

    assert paths.train == paths.test == tmp_path / "data"
    assert paths.model == tmp_path / "run" / "model"
    assert paths.output_data == tmp_path / "run" / "output" / "data"
    assert paths.checkpoints == tmp_path / "run" / "checkpoints"
    assert paths.tensorboard == tmp_path / "run" / "output" / "tensorboard"


def test_a_cuda_device_gets_mixed_precision_and_a_cpu_plain_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train.accelerator_settings(1) == {"accelerator": "gpu", "devices": 1, "precision": "16-mixed"}
    assert train.accelerator_settings(0)["accelerator"] == "cpu"  # SM_NUM_GPUS=0 wins over what torch sees
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.accelerator_settings(1) == {"accelerator": "cpu", "devices": 1, "precision": "32-true"}

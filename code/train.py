"""Train the MNIST classifier: the same script on a laptop, in the tests and in a SageMaker container.

    python code/train.py --epochs 2 --batch_size 64

Hyperparameters arrive as `--key value` arguments (SageMaker passes its hyperparameters that way).
Folders come from the SageMaker container's environment variables, with local defaults when unset:

| variable            | in the container             | locally                     |
| ------------------- | ---------------------------- | --------------------------- |
| SM_CHANNEL_TRAIN    | /opt/ml/input/data/train     | data/                       |
| SM_CHANNEL_TEST     | /opt/ml/input/data/test      | data/                       |
| SM_MODEL_DIR        | /opt/ml/model                | build/train/model/          |
| SM_OUTPUT_DIR       | /opt/ml/output (TensorBoard in tensorboard/) | build/train/output/ |
| SM_OUTPUT_DATA_DIR  | /opt/ml/output/data          | build/train/output/data/    |
| SM_NUM_GPUS         | GPUs of the instance         | what torch sees             |
| CHECKPOINT_DIR      | /opt/ml/checkpoints          | build/train/checkpoints/    |

Metrics are printed as `name=value;` so SageMaker metric definitions can capture them with a regex.

Under torchrun (SageMaker's `Torchrun` distribution: `torchrun --nnodes <hosts> --nproc_per_node <n> train.py`)
the same script trains one model with Lightning's DDP over every process: each rank trains on its own
shard of the training set, each with `batch_size` images per step (the global batch is `batch_size` times
the number of processes); metrics are reduced over all ranks and printed by the first process of each
host; rank 0 alone writes checkpoints and the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import typing
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mnist_data import MNISTDataModule, load_split
from mnist_model import MNISTClassifier, ResumeMismatchError, save_model

# Under DDP, trainer.test() splits the test set over the ranks with a DistributedSampler, which would repeat up
# to (ranks - 1) images to even out a split that does not divide; the workbook's test sets divide by 2, 4 and 8.
warnings.filterwarnings("ignore", message=r"Using `DistributedSampler` with the dataloaders. During `trainer.test\(\)`")

REPO = Path(__file__).resolve().parent.parent
CONTAINER_CHECKPOINT_DIR = Path("/opt/ml/checkpoints")
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    """What a training run can be told; every field is also a `--name value` command-line argument."""

    epochs: int = 2
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    width: int = 16
    hidden: int = 128
    val_fraction: float = 0.1
    max_train_images: int = 0  # 0 trains on every image; tests pass a few thousand
    seed: int = 42
    progress_bar: bool = False

    def __post_init__(self) -> None:
        for name, kind in field_types(type(self)).items():
            value = getattr(self, name)
            accepted = (int, float) if kind is float else kind
            if not isinstance(value, accepted) or (kind in (int, float) and isinstance(value, bool)):
                raise ValueError(f"hyperparameter {name}={value!r}: expected {kind.__name__}")
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": 0 < self.lr <= 1,
            "weight_decay": self.weight_decay >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "width": self.width >= 1,
            "hidden": self.hidden >= 1,
            "val_fraction": 0 < self.val_fraction < 1,
            "max_train_images": self.max_train_images >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"hyperparameter {name}={getattr(self, name)!r} is out of range")


def field_types(cls: type) -> dict[str, type]:
    """The type of each field of a hyperparameters dataclass, resolved from its annotations (strings or not)."""
    hints = typing.get_type_hints(cls)
    types = {field.name: hints[field.name] for field in dataclasses.fields(cls)}
    for name, kind in types.items():
        if kind not in ARGUMENT_TYPES:
            raise TypeError(
                f"hyperparameter {name}: type {getattr(kind, '__name__', kind)} is not one of "
                f"{', '.join(known.__name__ for known in ARGUMENT_TYPES)}; SageMaker passes hyperparameters as text"
            )
    return types


def _to_bool(text: str) -> bool:
    """Parse the spellings of a boolean that SageMaker and people use."""
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


# How a `--name value` argument becomes each type a hyperparameter may have.
ARGUMENT_TYPES = {int: int, float: float, bool: _to_bool, str: str}


def parse_hyperparameters(argv: Sequence[str]) -> Hyperparameters:
    """Parse `--name value` arguments into validated Hyperparameters; unknown names are an error."""
    parser = argparse.ArgumentParser(description="Train the MNIST classifier.")
    defaults = {field.name: field.default for field in dataclasses.fields(Hyperparameters)}
    for name, kind in field_types(Hyperparameters).items():
        parser.add_argument(f"--{name}", type=ARGUMENT_TYPES[kind], default=defaults[name])
    try:
        return Hyperparameters(**vars(parser.parse_args(argv)))
    except ValueError as error:
        parser.error(str(error))


@dataclasses.dataclass(frozen=True)
class Paths:
    """The folders of one training run."""

    train: Path
    test: Path
    model: Path
    output: Path
    output_data: Path
    checkpoints: Path

    @property
    def tensorboard(self) -> Path:
        """SageMaker's TensorBoardOutputConfig syncs this folder to S3 while the job runs."""
        return self.output / "tensorboard"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Paths:
        """Folders from the SageMaker container's variables, or local defaults."""
        local = cls.under(REPO / "build" / "train", REPO / "data")
        checkpoints = CONTAINER_CHECKPOINT_DIR if CONTAINER_CHECKPOINT_DIR.is_dir() else local.checkpoints
        output = Path(environ.get("SM_OUTPUT_DIR", local.output))
        return cls(
            train=Path(environ.get("SM_CHANNEL_TRAIN", local.train)),
            test=Path(environ.get("SM_CHANNEL_TEST", local.test)),
            model=Path(environ.get("SM_MODEL_DIR", local.model)),
            output=output,
            output_data=Path(environ.get("SM_OUTPUT_DATA_DIR", output / "data")),
            checkpoints=Path(environ.get("CHECKPOINT_DIR", checkpoints)),
        )

    @classmethod
    def under(cls, run_dir: Path, data_dir: Path) -> Paths:
        """The container's layout under one local folder, reading both channels from `data_dir`."""
        run_dir = Path(run_dir)
        return cls(
            train=Path(data_dir),
            test=Path(data_dir),
            model=run_dir / "model",
            output=run_dir / "output",
            output_data=run_dir / "output" / "data",
            checkpoints=run_dir / "checkpoints",
        )

    def load_channels(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Load the train and test channels; a missing or malformed file names its variable and folder."""
        splits = []
        for variable, folder, split in (("SM_CHANNEL_TRAIN", self.train, "train"), ("SM_CHANNEL_TEST", self.test, "test")):
            try:
                splits.append(load_split(folder, split))
            except (FileNotFoundError, ValueError) as error:
                raise ChannelError(f"{variable}={folder}: {error}") from error
        return splits[0], splits[1]


class ChannelError(RuntimeError):
    """A data channel is missing or holds files that are not MNIST."""


class MetricLines(Callback):
    """Print metrics as `name=value;` lines, one per epoch: SageMaker metric definitions parse them."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.local_rank == 0:  # once per host, values reduced over all ranks
            print_metrics({"epoch": trainer.current_epoch + 1, **trainer.callback_metrics})


class SaveOnInterrupt(Callback):
    """Save `last.ckpt` when training is interrupted (SIGTERM, Ctrl-C), so that a new run resumes mid-epoch.

    SageMaker stops a job, or reclaims a spot instance, with SIGTERM; Lightning turns the signal into an
    exception at the next training step. (Lightning's OnExceptionCheckpoint deletes its file at teardown.)
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Only an interruption: after any other error (a refused resume, say) last.ckpt stays as it was.
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            trainer.save_checkpoint(self.path)


def print_metrics(metrics: Mapping[str, object]) -> None:
    """Print one `name=value;` line."""
    parts = [f"{name}={float(value):.6g};" for name, value in metrics.items()]
    print(" ".join(parts), flush=True)


@dataclasses.dataclass(frozen=True)
class Processes:
    """How many processes train one model together: per host (torchrun's --nproc_per_node) times hosts (--nnodes)."""

    per_host: int = 1
    hosts: int = 1

    @property
    def world_size(self) -> int:
        """The number of ranks."""
        return self.per_host * self.hosts

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Processes:
        """torchrun's LOCAL_WORLD_SIZE and WORLD_SIZE; one process when train.py was not started by torchrun."""
        if "LOCAL_WORLD_SIZE" not in environ:
            return cls()
        per_host, world_size = int(environ["LOCAL_WORLD_SIZE"]), int(environ["WORLD_SIZE"])
        if world_size % per_host:
            raise ValueError(
                f"WORLD_SIZE={world_size} is not a multiple of LOCAL_WORLD_SIZE={per_host}: "
                "start every host with the same torchrun --nproc_per_node"
            )
        return cls(per_host, world_size // per_host)


class StopTogether(Callback):
    """Under DDP: stop every rank after the same step when any of them receives SIGTERM; resume all from one step.

    Lightning's own SIGTERM handler broadcasts from inside the signal handler, where the broadcast pairs with
    whatever collective another rank runs at that moment (a gradient all-reduce, say) and can leave the ranks
    waiting for each other. Here the handler only notes the signal, and the ranks agree after each step with
    one all-reduce. Lightning installs its handler as each stage starts: this one takes its place again.
    """

    def __init__(self) -> None:
        self.received = False

    def _note(self, signum: int, frame: object) -> None:
        self.received = True

    def listen(self) -> None:
        """Note SIGTERM instead of acting on it at once."""
        signal.signal(signal.SIGTERM, self._note)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.listen()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.listen()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.listen()
        # Ranks that resumed from different steps would wait for each other's collectives until a timeout.
        step = torch.tensor(float(trainer.global_step), device=pl_module.device)
        lowest, highest = (int(trainer.strategy.reduce(step.clone(), reduce_op=op)) for op in ("min", "max"))
        if lowest != highest:
            raise ResumeMismatchError(
                f"the ranks resume from different checkpoints (steps {lowest} to {highest}): every host must find "
                "the same checkpoint folder (on SageMaker, CheckpointConfig's S3 URI fills each host's folder)"
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        if trainer.strategy.reduce_boolean_decision(self.received, all=False):
            raise SIGTERMException


def accelerator_settings(num_gpus: int, processes: Processes = Processes()) -> dict[str, object]:
    """Trainer settings for the hardware: mixed precision on a GPU, plain float32 on a CPU; DDP over several processes."""
    if num_gpus > 0 and torch.cuda.is_available():
        settings: dict[str, object] = {"accelerator": "gpu", "devices": 1, "precision": "16-mixed"}
    else:
        settings = {"accelerator": "cpu", "devices": 1, "precision": "32-true"}
    if processes.world_size > 1:
        # Lightning's DDP over torchrun's processes (gloo between CPUs, NCCL between GPUs): one device per process.
        settings.update(devices=processes.per_host, num_nodes=processes.hosts, strategy="ddp")
    return settings


def build_trainer(
    hp: Hyperparameters, paths: Paths, num_gpus: int, processes: Processes = Processes(), extra_callbacks: Sequence[Callback] = ()
) -> pl.Trainer:
    """The Lightning Trainer of every run: checkpoints each epoch, TensorBoard logs, no per-step overhead."""
    checkpoints = ModelCheckpoint(
        dirpath=paths.checkpoints,
        filename=Path(BEST_CHECKPOINT).stem,
        monitor="val_acc",
        mode="max",
        save_last=True,
        enable_version_counter=False,
    )
    callbacks = [checkpoints, SaveOnInterrupt(paths.checkpoints / LAST_CHECKPOINT), MetricLines()]
    if processes.world_size > 1:
        callbacks.append(StopTogether())
    callbacks.extend(extra_callbacks)  # a benchmark's clock, a test's probe
    return pl.Trainer(
        max_epochs=hp.epochs,
        logger=TensorBoardLogger(paths.tensorboard, name="mnist", default_hp_metric=False),
        callbacks=callbacks,
        enable_progress_bar=hp.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        **accelerator_settings(num_gpus, processes),
    )


def resume_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The checkpoint to resume from: `last.ckpt`, else `best.ckpt`, skipping (with a warning) unreadable ones."""
    for path in (checkpoint_dir / LAST_CHECKPOINT, checkpoint_dir / BEST_CHECKPOINT):
        if not path.is_file():
            continue
        try:
            # A process killed while writing leaves a truncated file: better to find out before fit() does.
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is skipped, and said so
            warnings.warn(f"checkpoint {path} is unreadable ({type(error).__name__}: {error}); not resuming from it")
            continue
        return path
    if any(checkpoint_dir.glob("*.ckpt")):
        warnings.warn(f"no readable checkpoint in {checkpoint_dir}: training starts from scratch")
    return None


@dataclasses.dataclass
class TrainingResult:
    """What a run produced: the trained model, its final metrics and where the model file is."""

    model: MNISTClassifier
    metrics: dict[str, float]
    model_path: Path | None  # None on every rank but 0: rank 0 alone writes the model
    trainer: pl.Trainer


def fit(
    hp: Hyperparameters,
    paths: Paths,
    num_gpus: int = 0,
    processes: Processes = Processes(),
    extra_callbacks: Sequence[Callback] = (),
) -> TrainingResult:
    """Train (resuming from the last checkpoint when there is one), test, and save the model."""
    pl.seed_everything(hp.seed, verbose=False)
    trainer = build_trainer(hp, paths, num_gpus, processes, extra_callbacks)
    train_split, test_split = paths.load_channels()
    data = MNISTDataModule(
        train_split,
        test_split,
        batch_size=hp.batch_size,
        val_fraction=hp.val_fraction,
        max_train_images=hp.max_train_images or None,
        seed=hp.seed,
        device=str(trainer.strategy.root_device),  # under DDP, this rank's own GPU
    )
    model = MNISTClassifier(
        width=hp.width, hidden=hp.hidden, lr=hp.lr, weight_decay=hp.weight_decay, label_smoothing=hp.label_smoothing
    )
    trainer.fit(model, datamodule=data, ckpt_path=resume_checkpoint(paths.checkpoints), weights_only=True)
    fit_metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    (test_metrics,) = trainer.test(model, datamodule=data, verbose=False)
    if trainer.local_rank == 0:
        print_metrics(test_metrics)
    metrics = {**fit_metrics, **test_metrics}
    model_path = None
    if trainer.is_global_zero:  # SageMaker packs every host's model folder into one model.tar.gz: one writer
        model_path = save_model(model, paths.model)
        paths.output_data.mkdir(parents=True, exist_ok=True)
        (paths.output_data / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return TrainingResult(model, metrics, model_path, trainer)


def main(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ, extra_callbacks: Sequence[Callback] = ()
) -> int:
    """Entry point: parse the hyperparameters and train; a bad channel is one clear error line."""
    hp = parse_hyperparameters(sys.argv[1:] if argv is None else argv)
    paths = Paths.from_env(environ)
    try:
        processes = Processes.from_env(environ)
        fit(hp, paths, int(environ.get("SM_NUM_GPUS", torch.cuda.device_count())), processes, extra_callbacks)
    except (ChannelError, ResumeMismatchError) as error:
        message = f"ERROR: {error}"
        print(message, file=sys.stderr)
        # SageMaker reports the content of this file as the job's FailureReason.
        if "SM_OUTPUT_DIR" in environ:
            paths.output.mkdir(parents=True, exist_ok=True)
            (paths.output / "failure").write_text(message)
        return 1
    except SIGTERMException:
        if environ.get("RANK", "0") == "0":  # rank 0 saved the checkpoint (torchrun's RANK; unset: one process)
            print(f"Stopped by SIGTERM; the interrupted epoch is saved in {paths.checkpoints / LAST_CHECKPOINT}.", flush=True)
        return 128 + signal.SIGTERM
    return 0


if __name__ == "__main__":
    sys.exit(main())

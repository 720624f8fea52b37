"""Notebook 09's helpers around a SageMaker hyperparameter tuning job: ranges, tuner, trials, best model, clean-up.

They run in the notebook (in SageMaker Studio, or offline against the local endpoint), never in the
training container: like sagemaker_job.py, this module is not uploaded with the job's source code.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from botocore.client import BaseClient
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter
from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter, ParameterRange
from sagemaker.core.resources import HyperParameterTuningJob, TrainingJob
from sagemaker.core.shapes import HyperParameterTrainingJobSummary
from sagemaker.train import ModelTrainer
from sagemaker.train.tuner import HyperparameterTuner

import sagemaker_job

OBJECTIVE = "validation:accuracy"  # one of sagemaker_job.metric_definitions(): train.py's val_acc
FINAL_STATES = ("Completed", "Failed", "Stopped")
RUNNING = ("InProgress", "Stopping")


def hyperparameter_ranges(
    lr: tuple[float, float] = (1e-3, 5e-2),
    width: tuple[int, int] = (8, 32),
    label_smoothing: tuple[float, float] = (0.0, 0.2),
    batch_sizes: Sequence[int] = (32, 64, 128),
) -> dict[str, ParameterRange]:
    """What the tuning job searches: the learning rate on a log scale, the network's width, label smoothing, batch size.

    The names are train.py's own hyperparameters (`--lr`, `--width`, ...), which each trial receives.
    """
    return {
        "lr": ContinuousParameter(*lr, scaling_type="Logarithmic"),
        "width": IntegerParameter(*width, scaling_type="Linear"),
        "label_smoothing": ContinuousParameter(*label_smoothing, scaling_type="Linear"),
        "batch_size": CategoricalParameter(list(batch_sizes)),
    }


def metric_definitions() -> list[dict[str, str]]:
    """notebook 04's metric definitions, in the form HyperparameterTuner takes (the tuning job reads them, not the trainer's)."""
    return [{"Name": definition.name, "Regex": definition.regex} for definition in sagemaker_job.metric_definitions()]


def make_tuner(
    trainer: ModelTrainer,
    ranges: Mapping[str, ParameterRange],
    *,
    max_jobs: int,
    max_parallel_jobs: int,
    base_name: str,
    strategy: str = "Bayesian",
    objective_type: str = "Maximize",
    seed: int | None = None,
) -> HyperparameterTuner:
    """A tuner over `trainer`: up to max_jobs trials, max_parallel_jobs at a time, chasing OBJECTIVE."""
    return HyperparameterTuner(
        trainer,
        OBJECTIVE,
        dict(ranges),
        metric_definitions=metric_definitions(),
        strategy=strategy,
        objective_type=objective_type,
        max_jobs=max_jobs,
        max_parallel_jobs=max_parallel_jobs,
        base_tuning_job_name=base_name,
        random_seed=seed,
    )


@dataclasses.dataclass(frozen=True)
class Trial:
    """One training job of a tuning job: what it was given, how it ended, what it scored and how long it trained."""

    name: str
    status: str
    objective: float | None
    hyperparameters: dict[str, str]
    seconds: float | None
    started: int  # 1 for the first trial the tuning job created, 2 for the next, ...


def _seconds(summary: HyperParameterTrainingJobSummary) -> float | None:
    """Training time from the summary's start and end, when both are known."""
    start, end = getattr(summary, "training_start_time", None), getattr(summary, "training_end_time", None)
    if not hasattr(start, "timestamp") or not hasattr(end, "timestamp"):
        return None
    return (end - start).total_seconds()


def _objective(summary: HyperParameterTrainingJobSummary) -> float | None:
    """The trial's final objective, when the tuning job evaluated one."""
    metric = getattr(summary, "final_hyper_parameter_tuning_job_objective_metric", None)
    value = getattr(metric, "value", None)
    return float(value) if isinstance(value, (int, float)) else None


def trials_from_summaries(summaries: Iterable[HyperParameterTrainingJobSummary], maximize: bool = True) -> list[Trial]:
    """The trials best first (by objective; trials without one last), numbered in the order they were created."""
    ordered = sorted(summaries, key=lambda summary: (summary.creation_time, summary.training_job_name))
    trials = [
        Trial(
            name=summary.training_job_name,
            status=summary.training_job_status,
            objective=_objective(summary),
            hyperparameters=dict(summary.tuned_hyper_parameters),
            seconds=_seconds(summary),
            started=number,
        )
        for number, summary in enumerate(ordered, start=1)
    ]
    sign = -1.0 if maximize else 1.0
    return sorted(trials, key=lambda trial: (trial.objective is None, sign * (trial.objective or 0.0), trial.started))


def _maximizes(job: HyperParameterTuningJob) -> bool:
    """Whether the tuning job's objective is maximised."""
    return job.hyper_parameter_tuning_job_config.hyper_parameter_tuning_job_objective.type == "Maximize"


def trials(job: HyperParameterTuningJob) -> list[Trial]:
    """The tuning job's trials, read through ListTrainingJobsForHyperParameterTuningJob, best first."""
    job.refresh()
    return trials_from_summaries(job.get_all_training_jobs(), maximize=_maximizes(job))


def trials_table(trials: Sequence[Trial], names: Sequence[str]) -> str:
    """A plain-text table: rank, trial number, the tuned hyperparameters `names`, objective, status, seconds."""
    header = ["rank", "trial", *names, OBJECTIVE, "status", "seconds"]
    rows = [
        [
            str(rank),
            str(trial.started),
            *(_short(trial.hyperparameters.get(name, "")) for name in names),
            "-" if trial.objective is None else f"{trial.objective:.4f}",
            trial.status,
            "-" if trial.seconds is None else f"{trial.seconds:.0f}",
        ]
        for rank, trial in enumerate(trials, start=1)
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in [header, *rows])


def _short(value: str) -> str:
    """A hyperparameter for the table: a float written with many digits (0.0123456789...) shortened to 4 significant."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if "." in value and len(value) > 7 else value


def plot_trials(trials: Sequence[Trial]) -> Figure:
    """The objective of each trial against its learning rate (log scale) and against the order the trials started."""
    scored = sorted((trial for trial in trials if trial.objective is not None), key=lambda trial: trial.started)
    if not scored:
        raise ValueError("no trial has an objective yet: wait for the tuning job (or look at its trials' failure reasons)")
    figure, (by_lr, by_order) = plt.subplots(1, 2, figsize=(10, 3.5))
    by_lr.scatter([float(trial.hyperparameters["lr"]) for trial in scored], [trial.objective for trial in scored])
    by_lr.set_xscale("log")
    by_lr.xaxis.set_minor_formatter(NullFormatter())  # labels at 2e-3, 3e-3, ... would overlap
    by_lr.set_xlabel("learning rate (lr)")
    by_lr.set_ylabel(OBJECTIVE)
    by_lr.set_title("Objective against learning rate")
    best_so_far = [max(trial.objective for trial in scored[: index + 1]) for index in range(len(scored))]
    by_order.plot([trial.started for trial in scored], [trial.objective for trial in scored], "o", label="trial")
    by_order.step([trial.started for trial in scored], best_so_far, where="post", label="best so far")
    by_order.set_xlabel("trial (in the order started)")
    by_order.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_order.set_ylabel(OBJECTIVE)
    by_order.set_title("Objective in trial order")
    by_order.legend()
    figure.tight_layout()
    return figure


def wait(
    job: HyperParameterTuningJob,
    poll_s: float = 5.0,
    timeout_s: float | None = None,
    say: Callable[[str], None] = print,
) -> str:
    """Wait for the tuning job to end, saying one line as each trial ends; return its final status."""
    reported: set[str] = set()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        job.refresh()
        for summary in job.get_all_training_jobs():
            if summary.training_job_status in FINAL_STATES and summary.training_job_name not in reported:
                reported.add(summary.training_job_name)
                objective = _objective(summary)
                score = "no objective" if objective is None else f"{OBJECTIVE}={objective:.4f}"
                say(f"{summary.training_job_name}: {summary.training_job_status}, {score}")
        status = job.hyper_parameter_tuning_job_status
        if status not in RUNNING:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(
                f"tuning job {job.hyper_parameter_tuning_job_name} still {status} after {timeout_s} s: "
                "wait longer, or stop it with clean_up()"
            )
        time.sleep(poll_s)


def best_model(job: HyperParameterTuningJob, target_dir: Path, *, s3_client: BaseClient | None = None) -> list[Path]:
    """Download and unpack the model.tar.gz of the tuning job's best training job into target_dir."""
    job.refresh()
    best = job.best_training_job
    if not hasattr(best, "training_job_name"):
        raise RuntimeError(
            f"tuning job {job.hyper_parameter_tuning_job_name} has no best training job yet "
            f"(status {job.hyper_parameter_tuning_job_status}): no trial has completed with an objective"
        )
    training_job = TrainingJob.get(training_job_name=best.training_job_name)
    return sagemaker_job.download_model(training_job.model_artifacts.s3_model_artifacts, target_dir, s3_client=s3_client)


def instance_seconds(trials: Iterable[Trial]) -> float:
    """The trials' training seconds added up: what a tuning job bills, instance by instance."""
    return sum(trial.seconds or 0.0 for trial in trials)


def clean_up(job: HyperParameterTuningJob, poll_s: float = 2.0, timeout_s: float = 300.0) -> list[str]:
    """Stop the tuning job if it runs and wait until none of its trials runs any more. Safe to repeat."""
    job.refresh()
    done = []
    if job.hyper_parameter_tuning_job_status == "InProgress":
        job.stop()
        done.append(f"stopped {job.hyper_parameter_tuning_job_name}")
    deadline = time.monotonic() + timeout_s
    while True:
        job.refresh()
        running = [summary.training_job_name for summary in job.get_all_training_jobs() if summary.training_job_status in RUNNING]
        if job.hyper_parameter_tuning_job_status not in RUNNING and not running:
            return done
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"tuning job {job.hyper_parameter_tuning_job_name} is {job.hyper_parameter_tuning_job_status} and "
                f"its trials {', '.join(running) or '(none)'} still run after {timeout_s} s: stop them in the console"
            )
        time.sleep(poll_s)

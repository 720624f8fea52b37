"""code/tuning.py, notebook 09's helpers: ranges, tuner settings, the trials' table and figure, waiting, clean-up."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from sagemaker.core.shapes import FinalHyperParameterTuningJobObjectiveMetric, HyperParameterTrainingJobSummary
from sagemaker.core.training.configs import Compute
from sagemaker.train import ModelTrainer

import sagemaker_job
import train
import tuning

REPO = Path(__file__).resolve().parents[1]
T0 = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)


def summary(
    number: int, status: str, objective: float | None, lr: str = "0.01", seconds: float | None = 30.0
) -> HyperParameterTrainingJobSummary:
    """A trial as ListTrainingJobsForHyperParameterTuningJob describes it; trial `number` was created number-th."""
    fields = {}
    if objective is not None:
        fields["final_hyper_parameter_tuning_job_objective_metric"] = FinalHyperParameterTuningJobObjectiveMetric(
            metric_name=tuning.OBJECTIVE, value=objective, type="Maximize"
        )
    if seconds is not None:
        fields["training_start_time"] = T0 + datetime.timedelta(minutes=number)
        fields["training_end_time"] = fields["training_start_time"] + datetime.timedelta(seconds=seconds)
    return HyperParameterTrainingJobSummary(
        training_job_name=f"tune-{number:03d}-0123abcd",
        training_job_arn=f"arn:aws:sagemaker:us-east-1:123456789012:training-job/tune-{number:03d}-0123abcd",
        creation_time=T0 + datetime.timedelta(minutes=number),
        training_job_status=status,
        tuned_hyper_parameters={"lr": lr, "width": str(8 + number)},
        **fields,
    )


def trainer() -> ModelTrainer:
    """notebook 04's kind of trainer: train.py from code/, a CPU instance, two static hyperparameters.

    ModelTrainer asks for a region and session when it is built: the tests that call this use local_aws_env.
    """
    return ModelTrainer(
        training_image="763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch:2.14-cpu-amzn2023-sagemaker",
        source_code=sagemaker_job.source_code(REPO / "code"),
        compute=Compute(instance_type="ml.m5.xlarge", instance_count=1),
        hyperparameters={"epochs": 1, "max_train_images": 500},
        base_job_name="mnist-tune",
        role="arn:aws:iam::123456789012:role/SageMakerExecutionRole",
    )


def test_ranges_are_train_py_hyperparameters_with_a_log_scaled_learning_rate(local_aws_env) -> None:
    tuner = tuning.make_tuner(trainer(), tuning.hyperparameter_ranges(), max_jobs=4, max_parallel_jobs=2, base_name="mnist-tune")
    ranges = tuner.hyperparameter_ranges()
    assert ranges["ContinuousParameterRanges"] == [
        {"name": "lr", "min_value": "0.001", "max_value": "0.05", "scaling_type": "Logarithmic"},
        {"name": "label_smoothing", "min_value": "0.0", "max_value": "0.2", "scaling_type": "Linear"},
    ]
    assert ranges["IntegerParameterRanges"] == [{"name": "width", "min_value": "8", "max_value": "32", "scaling_type": "Linear"}]
    assert ranges["CategoricalParameterRanges"] == [{"name": "batch_size", "values": ["32", "64", "128"]}]
    fields = {field.name for field in train.dataclasses.fields(train.Hyperparameters)}
    assert set(tuning.hyperparameter_ranges()) <= fields, "every tuned name must be a train.py hyperparameter"


def test_tuner_chases_validation_accuracy_with_notebook_04s_metric_definitions(local_aws_env) -> None:
    tuner = tuning.make_tuner(
        trainer(), tuning.hyperparameter_ranges(), max_jobs=4, max_parallel_jobs=2, base_name="mnist-tune",
        strategy="Random", seed=7,
    )
    assert (tuner.objective_metric_name, tuner.objective_type, tuner.strategy) == ("validation:accuracy", "Maximize", "Random")
    assert (tuner.max_jobs, tuner.max_parallel_jobs, tuner.random_seed, tuner.base_tuning_job_name) == (4, 2, 7, "mnist-tune")
    assert tuner.metric_definitions == [
        {"Name": definition.name, "Regex": definition.regex} for definition in sagemaker_job.metric_definitions()
    ]
    assert tuning.OBJECTIVE in {definition["Name"] for definition in tuner.metric_definitions}


def test_trials_are_best_first_numbered_in_creation_order() -> None:
    summaries = [summary(2, "Completed", 0.91), summary(1, "Completed", 0.95), summary(3, "Failed", None, seconds=None),
                 summary(4, "Stopped", 0.80)]
    trials = tuning.trials_from_summaries(summaries, maximize=True)
    assert [(trial.started, trial.objective) for trial in trials] == [(1, 0.95), (2, 0.91), (4, 0.80), (3, None)]
    assert trials[0].name == "tune-001-0123abcd" and trials[0].hyperparameters == {"lr": "0.01", "width": "9"}
    assert trials[0].seconds == 30.0 and trials[-1].seconds is None
    minimised = tuning.trials_from_summaries(summaries, maximize=False)
    assert [trial.started for trial in minimised] == [4, 2, 1, 3]
    assert tuning.instance_seconds(trials) == 90.0


def test_trials_table_shows_every_trial_with_short_numbers() -> None:
    trials = tuning.trials_from_summaries(
        [summary(1, "Completed", 0.9512, lr="0.0031622776601683794"), summary(2, "Failed", None, lr="0.05", seconds=None)]
    )
    lines = tuning.trials_table(trials, ["lr", "width"]).splitlines()
    assert lines[0].split() == ["rank", "trial", "lr", "width", "validation:accuracy", "status", "seconds"]
    assert lines[1].split() == ["1", "1", "0.003162", "9", "0.9512", "Completed", "30"]
    assert lines[2].split() == ["2", "2", "0.05", "10", "-", "Failed", "-"]
    assert len({len(line) for line in lines}) == 1, "columns are aligned"


def test_trial_figure_plots_objective_against_learning_rate_and_trial_order() -> None:
    trials = tuning.trials_from_summaries(
        [summary(1, "Completed", 0.90, lr="0.001"), summary(2, "Completed", 0.95, lr="0.01"), summary(3, "Failed", None)]
    )
    figure = tuning.plot_trials(trials)
    by_lr, by_order = figure.axes
    assert by_lr.get_xscale() == "log" and by_lr.get_xlabel() == "learning rate (lr)"
    assert by_lr.get_ylabel() == by_order.get_ylabel() == tuning.OBJECTIVE
    assert sorted(map(tuple, by_lr.collections[0].get_offsets().tolist())) == [(0.001, 0.90), (0.01, 0.95)]
    points, best_so_far = by_order.lines
    assert list(points.get_xdata()) == [1, 2] and list(best_so_far.get_ydata()) == [0.90, 0.95]
    with pytest.raises(ValueError, match="no trial has an objective yet"):
        tuning.plot_trials(tuning.trials_from_summaries([summary(1, "Failed", None)]))


class FakeTuningJob:
    """A tuning job whose describe answers follow a script: one (status, trial summaries) pair per refresh()."""

    def __init__(self, script: list[tuple[str, list[HyperParameterTrainingJobSummary]]]) -> None:
        self.hyper_parameter_tuning_job_name = "tune"
        self.script, self.refreshes, self.stops = script, 0, 0
        self.hyper_parameter_tuning_job_status, self.summaries = script[0]

    def refresh(self) -> FakeTuningJob:
        self.hyper_parameter_tuning_job_status, self.summaries = self.script[min(self.refreshes, len(self.script) - 1)]
        self.refreshes += 1
        return self

    def get_all_training_jobs(self) -> list[HyperParameterTrainingJobSummary]:
        return self.summaries

    def stop(self) -> None:
        self.stops += 1


def test_wait_says_each_trial_once_as_it_ends_and_returns_the_final_status() -> None:
    running = [summary(1, "InProgress", None, seconds=None), summary(2, "InProgress", None, seconds=None)]
    one_done = [summary(1, "Completed", 0.93), running[1]]
    both_done = [one_done[0], summary(2, "Failed", None)]
    job = FakeTuningJob([("InProgress", running), ("InProgress", one_done), ("InProgress", one_done), ("Completed", both_done)])
    said: list[str] = []
    assert tuning.wait(job, poll_s=0, say=said.append) == "Completed"
    assert said == ["tune-001-0123abcd: Completed, validation:accuracy=0.9300", "tune-002-0123abcd: Failed, no objective"]


def test_wait_gives_up_naming_the_job_after_its_timeout() -> None:
    job = FakeTuningJob([("InProgress", [])])
    with pytest.raises(TimeoutError, match="tuning job tune still InProgress after 0 s"):
        tuning.wait(job, poll_s=0, timeout_s=0, say=lambda line: None)


def test_clean_up_stops_a_running_job_waits_for_its_trials_and_is_safe_to_repeat() -> None:
    running = [summary(1, "InProgress", None, seconds=None)]
    stopped = [summary(1, "Stopped", None)]
    job = FakeTuningJob([("InProgress", running), ("Stopping", running), ("Stopped", running), ("Stopped", stopped)])
    assert tuning.clean_up(job, poll_s=0) == ["stopped tune"]
    assert job.stops == 1 and job.refreshes == 4  # it waited until no trial ran any more
    assert tuning.clean_up(job, poll_s=0) == [] and job.stops == 1

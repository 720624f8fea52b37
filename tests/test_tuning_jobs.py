"""Hyperparameter tuning jobs that really run behind the local endpoint (tools/local_sagemaker/tuning_jobs.py).

Each tuning job comes from SDK 3's HyperparameterTuner, as notebook 09 makes it, and each trial is an ordinary
training job without ContainerEntrypoint (the framework container's way). Two tuning jobs train the
workbook's train.py on a few hundred real digits; the others train a tiny script that is not the workbook's
(no torch: a trial takes a second or two), whose objective is the product of its `x_*` hyperparameters.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from botocore.exceptions import ClientError
from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter
from sagemaker.core.shapes import Tag
from sagemaker.core.training.configs import Compute, InputData, SourceCode, StoppingCondition
from sagemaker.train import ModelTrainer
from sagemaker.train.tuner import HyperparameterTuner

import local_aws
import mnist_model
import mnist_s3
import sagemaker_job
import tuning
from local_sagemaker import tuning_jobs, tuning_strategies
from support import aws_clients, epochs_in, wait_for

REPO = Path(__file__).resolve().parents[1]
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch:2.14-cpu-amzn2023-sagemaker"
TAGS = [{"Key": "project", "Value": "mnist-workbook"}]
# The tiny script: `epoch=N; val_acc=...; val_loss=...;` lines, the objective growing to the product of the
# x_* hyperparameters at the last epoch. epochs=0 runs until stopped; a final objective below run_forever_below
# also keeps it running (a trial that only early stopping or a stop can end); fail=yes fails it.
TOY = '''\
import sys, time
hp = dict(zip(sys.argv[1::2], sys.argv[2::2]))
hp = {name.lstrip("-"): value for name, value in hp.items()}
if hp.get("fail") == "yes":
    print("ValueError: asked to fail", flush=True)
    sys.exit(1)
target = 1.0
for name, value in hp.items():
    if name.startswith("x_"):
        target *= float(value)
epochs = int(hp.get("epochs", 1))
forever = epochs == 0 or target < float(hp.get("run_forever_below", "-inf"))
epoch = 0
while forever or epoch < epochs:
    epoch += 1
    share = 1.0 if forever else epoch / epochs
    print(f"epoch={epoch}; val_acc={target * share:.6g}; val_loss={1 / (target * share):.6g};", flush=True)
    time.sleep(float(hp.get("pause", 0)))
print(f"test_acc={target:.6g};", flush=True)
'''


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path) -> Iterator[dict[str, Any]]:
    """A local endpoint of this module's own (its state folder holds the tuning jobs' logs), with the digits in S3."""
    state_dir = tmp_path_factory.mktemp("tuning-aws")
    with local_aws.local_aws_endpoint(state_dir) as aws, pytest.MonkeyPatch.context() as patch:
        for name, value in aws.env.items():
            patch.setenv(name, value)
        channels = mnist_s3.upload_mnist(mirror_dir, aws.bucket, "mnist", progress=False)
        sagemaker, logs, s3 = aws_clients(aws.endpoint_url, "sagemaker", "logs", "s3")
        yield {"aws": aws, "state_dir": state_dir, "channels": channels, "sagemaker": sagemaker, "logs": logs, "s3": s3}


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The source folder of the tiny script."""
    folder = tmp_path_factory.mktemp("toy-source")
    (folder / "toy.py").write_text(TOY)
    return folder


def trainer(source_code: SourceCode, hyperparameters: dict[str, object], base_name: str) -> ModelTrainer:
    """notebook 04's kind of trainer, on a CPU instance."""
    return ModelTrainer(
        training_image=IMAGE,
        source_code=source_code,
        compute=Compute(instance_type="ml.m5.xlarge", instance_count=1),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=600),
        hyperparameters=hyperparameters,
        base_job_name=base_name,
        tags=[Tag(key=tag["Key"], value=tag["Value"]) for tag in TAGS],
    )


def start_tuning(endpoint: dict[str, Any], model_trainer: ModelTrainer, ranges: dict, *, inputs: bool = True, **settings: Any) -> str:
    """Create a tuning job through SDK 3's HyperparameterTuner (not waiting for it); return its name."""
    name = f"t-{secrets.token_hex(4)}"
    tuner = HyperparameterTuner(
        model_trainer, settings.pop("objective", tuning.OBJECTIVE), ranges, metric_definitions=tuning.metric_definitions(),
        **settings,
    )
    channels = [InputData(channel_name=channel, data_source=uri) for channel, uri in endpoint["channels"].items()]
    tuner.tune(inputs=channels if inputs else None, job_name=name, wait=False)
    return name


def describe(endpoint: dict[str, Any], name: str) -> dict[str, Any]:
    """DescribeHyperParameterTuningJob."""
    return endpoint["sagemaker"].describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)


def wait_until_ended(endpoint: dict[str, Any], name: str, timeout_s: float = 300) -> dict[str, Any]:
    """The description of the tuning job once it has ended."""
    return wait_for(
        lambda: (d := describe(endpoint, name))["HyperParameterTuningJobStatus"] in tuning_jobs.ENDED and d,
        f"tuning job {name} to end", timeout_s,
    )


def trial_summaries(endpoint: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """Every trial of the tuning job, through the paginated ListTrainingJobsForHyperParameterTuningJob, by name."""
    paginator = endpoint["sagemaker"].get_paginator("list_training_jobs_for_hyper_parameter_tuning_job")
    pages = paginator.paginate(HyperParameterTuningJobName=name, PaginationConfig={"PageSize": 2})
    return [summary for page in pages for summary in page["TrainingJobSummaries"]]


def trial_log(endpoint: dict[str, Any], trial: str) -> str:
    """The trial's CloudWatch log, all its streams, as one text."""
    logs = endpoint["logs"]
    streams = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=f"{trial}/")
    lines = []
    for stream in streams["logStreams"]:
        events = logs.get_log_events(
            logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream["logStreamName"], startFromHead=True
        )
        lines += [event["message"] for event in events["events"]]
    return "\n".join(lines)


def last_value(log: str, key: str) -> float:
    """The last `key=value;` of a log, as train.py and the tiny script print them."""
    return float(re.findall(rf"\b{key}=([-+0-9.eE]+);", log)[-1])


def processes_of(trials: list[str]) -> list[psutil.Process]:
    """Processes that belong to one of the trials (their environment names the job)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("TRAINING_JOB_NAME") in trials:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_random_search_runs_four_trials_two_at_a_time_and_names_the_best(endpoint: dict[str, Any], tmp_path: Path) -> None:
    ranges = tuning.hyperparameter_ranges(lr=(1e-3, 5e-2), width=(8, 16), label_smoothing=(0.0, 0.2), batch_sizes=(32, 64))
    static = {"epochs": 1, "max_train_images": 400}
    model_trainer = trainer(sagemaker_job.source_code(REPO / "code"), static, "tune-random")
    name = start_tuning(endpoint, model_trainer, ranges, strategy="Random", max_jobs=4, max_parallel_jobs=2, random_seed=7)
    sagemaker = endpoint["sagemaker"]
    most_in_progress = 0
    while (description := describe(endpoint, name))["HyperParameterTuningJobStatus"] == "InProgress":
        listed = sagemaker.list_training_jobs(NameContains=name, StatusEquals="InProgress")["TrainingJobSummaries"]
        most_in_progress = max(most_in_progress, len(listed), description["TrainingJobStatusCounters"]["InProgress"])
        time.sleep(0.5)
    assert description["HyperParameterTuningJobStatus"] == "Completed", description.get("FailureReason")
    assert most_in_progress <= 2
    assert description["TrainingJobStatusCounters"] == {
        "Completed": 4, "InProgress": 0, "RetryableError": 0, "NonRetryableError": 0, "Stopped": 0,
    }
    assert description["ObjectiveStatusCounters"] == {"Succeeded": 4, "Pending": 0, "Failed": 0}

    summaries = sorted(trial_summaries(endpoint, name), key=lambda summary: summary["TrainingJobName"])
    assert [summary["TrainingJobName"][: len(name) + 4] for summary in summaries] == [f"{name}-00{n}" for n in (1, 2, 3, 4)]
    assert all(re.fullmatch(rf"{name}-00[1-4]-[0-9a-f]{{8}}", summary["TrainingJobName"]) for summary in summaries)
    trials = {summary["TrainingJobName"]: sagemaker.describe_training_job(TrainingJobName=summary["TrainingJobName"])
              for summary in summaries}
    first, second = (trials[summary["TrainingJobName"]] for summary in summaries[:2])
    assert first["TrainingStartTime"] < second["TrainingEndTime"] and second["TrainingStartTime"] < first["TrainingEndTime"], \
        "the first two trials ran at the same time"

    # The best training job is the trial with the highest validation accuracy in its own log.
    own = {trial: last_value(trial_log(endpoint, trial), "val_acc") for trial in trials}
    best = max(own, key=own.get)
    assert description["BestTrainingJob"]["TrainingJobName"] == best
    assert description["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"] == {
        "Type": "Maximize", "MetricName": "validation:accuracy", "Value": pytest.approx(own[best]),
    }
    for summary in summaries:
        assert summary["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == pytest.approx(own[summary["TrainingJobName"]])

    # The values are the seeded Random strategy's draws (log-uniform for lr), inside their ranges.
    expected = tuning_strategies.make_strategy(
        "Random", tuning_strategies.parse_ranges(description["HyperParameterTuningJobConfig"]["ParameterRanges"]),
        max_jobs=4, max_parallel=2, objective_type="Maximize", seed=7,
    )
    assert [summary["TunedHyperParameters"] for summary in summaries] == [expected.suggest().hyperparameters for _ in range(4)]
    for summary in summaries:
        tuned = summary["TunedHyperParameters"]
        assert 1e-3 <= float(tuned["lr"]) <= 5e-2 and 8 <= int(tuned["width"]) <= 16
        assert 0.0 <= float(tuned["label_smoothing"]) <= 0.2 and tuned["batch_size"] in ("32", "64")

    # Each trial got the static hyperparameters unchanged, besides its own; train.py trained one epoch, and
    # the best model is as wide as its trial was told.
    for trial, job in trials.items():
        tuned = next(s["TunedHyperParameters"] for s in summaries if s["TrainingJobName"] == trial)
        assert job["HyperParameters"] == {
            **description["TrainingJobDefinition"]["StaticHyperParameters"], **tuned,
            "_tuning_objective_metric": "validation:accuracy",
        }
        assert job["HyperParameters"]["epochs"] == "1" and job["HyperParameters"]["max_train_images"] == "400"
        assert epochs_in(trial_log(endpoint, trial)) == [1]
        assert job["TuningJobArn"] == description["HyperParameterTuningJobArn"]
        assert TAGS[0] in sagemaker.list_tags(ResourceArn=job["TrainingJobArn"])["Tags"]
    files = sagemaker_job.download_model(trials[best]["ModelArtifacts"]["S3ModelArtifacts"], tmp_path, s3_client=endpoint["s3"])
    model = mnist_model.load_model(next(path for path in files if path.name == mnist_model.MODEL_FILE))
    assert model.hparams.width == int(trials[best]["HyperParameters"]["width"])


def test_a_trial_that_train_py_refuses_fails_and_the_others_complete(endpoint: dict[str, Any]) -> None:
    ranges = {"label_smoothing": CategoricalParameter(["0.05", "1.5"])}  # train.py refuses 1.5: out of range
    model_trainer = trainer(sagemaker_job.source_code(REPO / "code"), {"epochs": 1, "max_train_images": 300}, "tune-fail")
    name = start_tuning(endpoint, model_trainer, ranges, strategy="Grid", max_jobs=None, max_parallel_jobs=2)
    description = wait_until_ended(endpoint, name)
    assert description["HyperParameterTuningJobStatus"] == "Completed"
    assert description["TrainingJobStatusCounters"]["Completed"] == 1
    assert description["TrainingJobStatusCounters"]["NonRetryableError"] == 1
    assert description["ObjectiveStatusCounters"] == {"Succeeded": 1, "Pending": 0, "Failed": 1}
    summaries = {s["TunedHyperParameters"]["label_smoothing"]: s for s in trial_summaries(endpoint, name)}
    assert summaries["1.5"]["TrainingJobStatus"] == "Failed" and summaries["1.5"]["ObjectiveStatus"] == "Failed"
    assert summaries["1.5"]["FailureReason"].startswith("AlgorithmError:")
    assert "label_smoothing=1.5 is out of range" in summaries["1.5"]["FailureReason"]
    assert "label_smoothing=1.5 is out of range" in trial_log(endpoint, summaries["1.5"]["TrainingJobName"])
    assert description["BestTrainingJob"]["TrainingJobName"] == summaries["0.05"]["TrainingJobName"]


def toy_trainer(toy_dir: Path, hyperparameters: dict[str, object]) -> ModelTrainer:
    """A trainer of the tiny script."""
    return trainer(SourceCode(source_dir=str(toy_dir), entry_script="toy.py"), hyperparameters, "tune-toy")


def test_grid_runs_every_combination_once_capped_by_the_cores(endpoint: dict[str, Any], toy_dir: Path) -> None:
    ranges = {"x_a": CategoricalParameter(["1", "2", "3"]), "x_b": CategoricalParameter(["10", "20"])}
    name = start_tuning(endpoint, toy_trainer(toy_dir, {"epochs": 1}), ranges, inputs=False, strategy="Grid",
                        max_jobs=None, max_parallel_jobs=8)
    description = wait_until_ended(endpoint, name)
    assert description["HyperParameterTuningJobStatus"] == "Completed"
    combinations = sorted((s["TunedHyperParameters"]["x_a"], s["TunedHyperParameters"]["x_b"]) for s in trial_summaries(endpoint, name))
    assert combinations == sorted((a, b) for a in ("1", "2", "3") for b in ("10", "20"))
    assert description["BestTrainingJob"]["TunedHyperParameters"] == {"x_a": "3", "x_b": "20"}
    assert description["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == 60
    log = (endpoint["state_dir"] / "tuning-jobs" / f"{name}.log").read_text()
    cores = tuning_jobs.machine_cores()
    if cores < 8:
        assert f"MaxParallelTrainingJobs=8, capped at {cores}: this machine has {cores} cores" in log
    assert log.count(" started ") == 6 and log.rstrip().endswith("Completed")


def test_bayesian_search_repeats_itself_with_the_same_seed(endpoint: dict[str, Any], toy_dir: Path) -> None:
    ranges = {"x_lr": ContinuousParameter(0.001, 1.0, scaling_type="Logarithmic"), "x_w": IntegerParameter(1, 9)}

    def tuned(seed: int) -> list[dict[str, str]]:
        name = start_tuning(endpoint, toy_trainer(toy_dir, {"epochs": 1}), ranges, inputs=False, strategy="Bayesian",
                            max_jobs=3, max_parallel_jobs=1, random_seed=seed)
        assert wait_until_ended(endpoint, name)["HyperParameterTuningJobStatus"] == "Completed"
        summaries = sorted(trial_summaries(endpoint, name), key=lambda summary: summary["TrainingJobName"])
        return [summary["TunedHyperParameters"] for summary in summaries]

    first = tuned(seed=5)
    assert len(first) == 3
    assert tuned(seed=5) == first
    assert tuned(seed=6) != first


def test_minimize_names_the_trial_with_the_lowest_objective(endpoint: dict[str, Any], toy_dir: Path) -> None:
    ranges = {"x_a": CategoricalParameter(["4", "1", "2"])}
    name = start_tuning(endpoint, toy_trainer(toy_dir, {"epochs": 1}), ranges, inputs=False, strategy="Grid",
                        objective="validation:loss", objective_type="Minimize", max_jobs=None, max_parallel_jobs=2)
    description = wait_until_ended(endpoint, name)
    losses = {s["TunedHyperParameters"]["x_a"]: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
              for s in trial_summaries(endpoint, name)}
    assert losses == {"4": pytest.approx(0.25), "1": pytest.approx(1.0), "2": pytest.approx(0.5)}
    assert description["BestTrainingJob"]["TunedHyperParameters"] == {"x_a": "4"}
    assert description["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Type"] == "Minimize"


def test_early_stopping_stops_a_trial_below_the_median_of_the_completed_ones(endpoint: dict[str, Any], toy_dir: Path) -> None:
    # The first trial completes 3 epochs; the second would run forever unless the median rule stops it.
    ranges = {"x_q": CategoricalParameter(["0.9", "0.1"])}
    static = {"epochs": 3, "run_forever_below": 0.5, "pause": 0.2}
    name = start_tuning(endpoint, toy_trainer(toy_dir, static), ranges, inputs=False, strategy="Grid", max_jobs=None,
                        max_parallel_jobs=1, early_stopping_type="Auto")
    description = wait_until_ended(endpoint, name)
    summaries = {s["TunedHyperParameters"]["x_q"]: s for s in trial_summaries(endpoint, name)}
    assert summaries["0.9"]["TrainingJobStatus"] == "Completed"
    assert summaries["0.1"]["TrainingJobStatus"] == "Stopped"
    assert summaries["0.1"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == pytest.approx(0.1)
    assert description["HyperParameterTuningJobStatus"] == "Completed"
    assert description["TrainingJobStatusCounters"]["Stopped"] == 1
    log = (endpoint["state_dir"] / "tuning-jobs" / f"{name}.log").read_text()
    assert f"early stopping {summaries['0.1']['TrainingJobName']} after epoch" in log


def test_stop_ends_the_tuning_job_and_every_running_trial(endpoint: dict[str, Any], toy_dir: Path) -> None:
    ranges = {"x_a": CategoricalParameter(["1", "2", "3", "4"])}
    static = {"epochs": 0, "pause": 0.2}  # trials that run until stopped
    name = start_tuning(endpoint, toy_trainer(toy_dir, static), ranges, inputs=False, strategy="Grid", max_jobs=None,
                        max_parallel_jobs=2)

    def both_training() -> list[str]:
        running = [s["TrainingJobName"] for s in trial_summaries(endpoint, name) if s["TrainingJobStatus"] == "InProgress"]
        return running if len(running) == 2 and all(epochs_in(trial_log(endpoint, trial)) for trial in running) else []

    running = wait_for(both_training, "two trials printing epochs", timeout_s=120)
    endpoint["sagemaker"].stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    assert describe(endpoint, name)["HyperParameterTuningJobStatus"] in ("Stopping", "Stopped")
    description = wait_until_ended(endpoint, name)
    assert description["HyperParameterTuningJobStatus"] == "Stopped"
    summaries = trial_summaries(endpoint, name)
    assert sorted(s["TrainingJobName"] for s in summaries) == sorted(running), "no trial starts after the stop"
    assert [s["TrainingJobStatus"] for s in summaries] == ["Stopped", "Stopped"]
    assert description["TrainingJobStatusCounters"]["Stopped"] == 2
    assert processes_of(running) == []
    with pytest.raises(ClientError, match="is in status Stopped"):
        endpoint["sagemaker"].stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strategy": "Hyperband", "max_jobs": 2}, "offers Random, Grid, Bayesian"),
        ({"strategy": "Random", "max_jobs": 2, "objective": "validation:f1"}, "objective metric 'validation:f1' is not among"),
        ({"strategy": "Grid", "max_jobs": 5}, "MaxNumberOfTrainingJobs=5, but the grid has 2 combinations"),
    ],
)
def test_requests_sagemaker_refuses_are_refused_at_once(endpoint: dict[str, Any], toy_dir: Path, settings: dict, message: str) -> None:
    ranges = {"x_a": CategoricalParameter(["1", "2"])}
    with pytest.raises(ClientError, match=message) as refused:
        start_tuning(endpoint, toy_trainer(toy_dir, {"epochs": 1}), ranges, inputs=False, max_parallel_jobs=1, **settings)
    assert refused.value.response["Error"]["Code"] == "ValidationException"

"""Hyperparameter tuning jobs that really run behind the local AWS endpoint, the way SageMaker runs them.

moto 5.2.5 stores a CreateHyperParameterTuningJob request and reports the job `Completed` at once, with a
made-up best training job; it has no StopHyperParameterTuningJob and no
ListTrainingJobsForHyperParameterTuningJob. `install()` overrides those operations so that a tuning job:

1. is checked as SageMaker checks it (name, strategy, ranges, objective among the metric definitions,
   budget) and refused with a ValidationException naming what is wrong; what the local SageMaker does not
   model (warm start, several training-job definitions, Hyperband, autotune, completion criteria, a
   runtime limit) is refused too, rather than ignored;
2. reports `InProgress` and starts trials, each an ordinary training job created through the endpoint's
   own CreateTrainingJob (so training_jobs.py runs it like any other): the definition's static
   hyperparameters merged with the values its strategy chose (tuning_strategies.py) and
   `_tuning_objective_metric`, named `<tuning job>-<NNN>-<8 hex digits>` as SageMaker names trials, tagged
   with the tuning job's tags, and with the tuning job's ARN as TuningJobArn;
3. runs at most MaxParallelTrainingJobs trials at once, and never more than this machine has cores
   (trials on the same cores only slow each other down); the cap is said in the tuning job's log, a file
   `tuning-jobs/<name>.log` under the endpoint's state folder whose lines also go to the endpoint's log;
4. follows each trial through DescribeTrainingJob: its final objective is the last value of the objective
   metric in FinalMetricDataList; a failed trial counts as failed (RetryableError for SageMaker's internal
   errors, NonRetryableError otherwise) and the tuning goes on;
5. with TrainingJobEarlyStoppingType=Auto, reads each running trial's objective after every epoch from its
   CloudWatch log and stops the trial (StopTrainingJob) when SageMaker's median rule says so;
6. reports TrainingJobStatusCounters, ObjectiveStatusCounters, BestTrainingJob and ConsumedResources in
   DescribeHyperParameterTuningJob, and each trial's status, tuned hyperparameters and final objective in
   ListTrainingJobsForHyperParameterTuningJob;
7. ends `Completed` when the strategy has no trial left and none runs (`Failed` when every trial failed),
   or `Stopped` after StopHyperParameterTuningJob, which stops every running trial and waits for them.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3

from . import job_logs, tuning_strategies
from .moto_patch import override_responses, utcnow

from moto.core.responses import ActionResult, EmptyResult  # noqa: E402,I001 - after moto_patch's version check
from moto.sagemaker.exceptions import ResourceNotFound, ValidationError  # noqa: E402
from moto.sagemaker.models import HyperParameterTuningJob  # noqa: E402
from moto.sagemaker.responses import SageMakerResponse  # noqa: E402

logger = logging.getLogger("local_sagemaker.tuning_jobs")

POLL_S = 1.0
NAME_PATTERN = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}")  # SageMaker's HyperParameterTuningJobName
RUNNING = ("InProgress", "Stopping")
ENDED = ("Completed", "Failed", "Stopped")
# Request fields the local SageMaker does not model: refused rather than silently ignored.
UNSUPPORTED_REQUEST = ("TrainingJobDefinitions", "WarmStartConfig", "Autotune")
UNSUPPORTED_CONFIG = ("StrategyConfig", "TuningJobCompletionCriteria")
# What a trial's CreateTrainingJob takes from the tuning job's TrainingJobDefinition, unchanged.
DEFINITION_FIELDS = (
    "RoleArn",
    "InputDataConfig",
    "OutputDataConfig",
    "ResourceConfig",
    "StoppingCondition",
    "VpcConfig",
    "EnableNetworkIsolation",
    "EnableInterContainerTrafficEncryption",
    "EnableManagedSpotTraining",
    "CheckpointConfig",
    "RetryStrategy",
    "Environment",
)
ALL_FAILED = "All training jobs failed. Please take a look at the training jobs failures to get more details."


def machine_cores() -> int:
    """The cores this process may run on: the most trials that can usefully train at once."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class TuningConfig:
    """A checked CreateHyperParameterTuningJob request: what the runner needs from it."""

    name: str
    strategy_name: str
    objective_type: str
    metric_name: str
    objective_regex: re.Pattern[str]
    max_jobs: int | None
    max_parallel: int
    early_stopping: bool
    seed: int | None
    ranges: list[tuning_strategies.Range]
    definition: dict[str, Any]
    tags: list[dict[str, str]]

    @property
    def maximize(self) -> bool:
        """Whether a higher objective is better."""
        return self.objective_type == "Maximize"


def check_request(request: dict[str, Any]) -> TuningConfig:
    """The request as SageMaker would accept it, or a ValueError naming the field to change."""
    name = request.get("HyperParameterTuningJobName") or ""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"HyperParameterTuningJobName {name!r}: at most 32 letters, digits and hyphens, starting and ending with "
            "a letter or digit"
        )
    for field in UNSUPPORTED_REQUEST:
        if request.get(field):
            raise ValueError(f"{field}: the local SageMaker runs one TrainingJobDefinition, without {field}")
    config = request.get("HyperParameterTuningJobConfig") or {}
    for field in UNSUPPORTED_CONFIG:
        if config.get(field):
            raise ValueError(f"HyperParameterTuningJobConfig.{field} is not modelled by the local SageMaker")
    definition = request.get("TrainingJobDefinition")
    if not definition:
        raise ValueError("TrainingJobDefinition is required: the training jobs the tuning job launches")
    if not definition.get("ResourceConfig"):
        raise ValueError("TrainingJobDefinition.ResourceConfig is required (HyperParameterTuningResourceConfig is not modelled)")
    limits = config.get("ResourceLimits") or {}
    if limits.get("MaxRuntimeInSeconds"):
        raise ValueError("ResourceLimits.MaxRuntimeInSeconds is not modelled by the local SageMaker: leave it out")
    max_parallel = limits.get("MaxParallelTrainingJobs")
    if not isinstance(max_parallel, int) or max_parallel < 1:
        raise ValueError(f"ResourceLimits.MaxParallelTrainingJobs={max_parallel!r}: a number >= 1 is required")
    objective = config.get("HyperParameterTuningJobObjective") or {}
    metric_name = objective.get("MetricName")
    definitions = (definition.get("AlgorithmSpecification") or {}).get("MetricDefinitions") or []
    regexes = dict(job_logs.compile_metric_definitions(definitions))
    if metric_name not in regexes:
        raise ValueError(
            f"the objective metric {metric_name!r} is not among the metric definitions "
            f"({', '.join(regexes) or 'none'}): define it in TrainingJobDefinition.AlgorithmSpecification.MetricDefinitions"
        )
    static = definition.get("StaticHyperParameters") or {}
    ranges = tuning_strategies.parse_ranges(config.get("ParameterRanges"))
    if clash := sorted(item.name for item in ranges if item.name in static):
        raise ValueError(f"hyperparameters {', '.join(clash)} are both static and tuned: keep them in one place")
    tuning_config = TuningConfig(
        name=name,
        strategy_name=config.get("Strategy", ""),
        objective_type=objective.get("Type", ""),
        metric_name=metric_name,
        objective_regex=regexes[metric_name],
        max_jobs=limits.get("MaxNumberOfTrainingJobs"),
        max_parallel=max_parallel,
        early_stopping=config.get("TrainingJobEarlyStoppingType", "Off") == "Auto",
        seed=config.get("RandomSeed"),
        ranges=ranges,
        definition=definition,
        tags=list(request.get("Tags") or []),
    )
    make_strategy(tuning_config)  # the strategy's own checks (Grid's ranges and count, the budget)
    return tuning_config


def make_strategy(config: TuningConfig) -> tuning_strategies.SearchStrategy:
    """The search strategy of a checked request."""
    return tuning_strategies.make_strategy(
        config.strategy_name,
        config.ranges,
        max_jobs=config.max_jobs,
        max_parallel=config.max_parallel,
        objective_type=config.objective_type,
        seed=config.seed,
    )


@dataclasses.dataclass(frozen=True)
class Trial:
    """One training job of a tuning job, as ListTrainingJobsForHyperParameterTuningJob describes it."""

    number: int
    name: str
    arn: str
    tuned: dict[str, str]
    creation_time: datetime.datetime
    status: str = "InProgress"
    start_time: datetime.datetime | None = None
    end_time: datetime.datetime | None = None
    failure_reason: str | None = None
    objective: float | None = None
    early_stopped: bool = False

    @property
    def objective_status(self) -> str:
        """Pending while it runs; Succeeded when it ended with an objective; Failed otherwise."""
        if self.status in RUNNING:
            return "Pending"
        return "Succeeded" if self.objective is not None and self.status in ("Completed", "Stopped") else "Failed"

    def summary(self, config: TuningConfig) -> dict[str, Any]:
        """The HyperParameterTrainingJobSummary of this trial."""
        summary = {
            "TrainingJobName": self.name,
            "TrainingJobArn": self.arn,
            "TuningJobName": config.name,
            "CreationTime": self.creation_time,
            "TrainingStartTime": self.start_time,
            "TrainingEndTime": self.end_time,
            "TrainingJobStatus": self.status,
            "TunedHyperParameters": dict(self.tuned),
            "FailureReason": self.failure_reason,
            "ObjectiveStatus": self.objective_status,
        }
        if self.objective is not None:
            summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
                "Type": config.objective_type,
                "MetricName": config.metric_name,
                "Value": self.objective,
            }
        return {key: value for key, value in summary.items() if value is not None}


def status_counters(trials: list[Trial]) -> dict[str, int]:
    """TrainingJobStatusCounters: trials by status; failures split by whether SageMaker would call them retryable."""
    failed = [trial for trial in trials if trial.status == "Failed"]
    retryable = sum(1 for trial in failed if (trial.failure_reason or "").startswith("InternalServerError"))
    return {
        "Completed": sum(1 for trial in trials if trial.status == "Completed"),
        "InProgress": sum(1 for trial in trials if trial.status in RUNNING),
        "RetryableError": retryable,
        "NonRetryableError": len(failed) - retryable,
        "Stopped": sum(1 for trial in trials if trial.status == "Stopped"),
    }


def objective_counters(trials: list[Trial]) -> dict[str, int]:
    """ObjectiveStatusCounters: trials by the status of their objective."""
    return {state: sum(1 for trial in trials if trial.objective_status == state) for state in ("Succeeded", "Pending", "Failed")}


def best_trial(trials: list[Trial], maximize: bool) -> Trial | None:
    """The trial with the best objective among those whose objective succeeded; the earliest wins a tie."""
    scored = [trial for trial in trials if trial.objective_status == "Succeeded"]
    if not scored:
        return None
    sign = -1.0 if maximize else 1.0
    return min(scored, key=lambda trial: (sign * trial.objective, trial.number))


class TuningJobRun(threading.Thread):
    """One tuning job: its trials, started, followed and stopped through the endpoint's own SageMaker API."""

    def __init__(self, job: HyperParameterTuningJob, config: TuningConfig, backend: Any, log_dir: Path) -> None:
        super().__init__(name=f"tuning-job {config.name}", daemon=True)
        self.job, self.config, self.backend = job, config, backend
        self.strategy = make_strategy(config)
        self.parallel = min(config.max_parallel, machine_cores())
        self.lock = threading.Lock()  # guards the trials and the job's reported fields
        self.trials: dict[str, Trial] = {}
        self.stop_requested = threading.Event()
        self.shutting_down = threading.Event()
        self.started_monotonic = time.monotonic()
        self.curves: dict[str, list[float]] = {}  # each completed trial's objective after every epoch (early stopping)
        self.judged_epochs: dict[str, int] = {}  # how many epochs of each running trial the median rule has judged
        session = boto3.session.Session()  # one per run: boto3's default session is not shared across threads
        self.sagemaker, self.logs = session.client("sagemaker"), session.client("logs")
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = open(log_dir / f"{config.name}.log", "a")
        self.report_state("InProgress")

    # --- the log --------------------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        """One line of the tuning job's log: its file and the endpoint's log."""
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        self.log_file.write(f"{stamp} {message}\n")
        self.log_file.flush()
        logger.info("tuning job %s: %s", self.config.name, message)

    # --- what Describe and List report ----------------------------------------------------------------------

    def report_state(self, status: str | None = None, failure_reason: str | None = None) -> None:
        """Update the fields DescribeHyperParameterTuningJob reports from the trials, in one step under the lock."""
        with self.lock:
            trials = sorted(self.trials.values(), key=lambda trial: trial.number)
            job = self.job
            job.training_job_status_counters = status_counters(trials)
            job.objective_status_counters = objective_counters(trials)
            best = best_trial(trials, self.config.maximize)
            job.best_training_job = best.summary(self.config) if best else None
            job.consumed_resources = {"RuntimeInSeconds": int(time.monotonic() - self.started_monotonic)}
            if failure_reason is not None:
                job.failure_reason = failure_reason
            if status is not None:
                if status in ENDED:
                    job.hyper_parameter_tuning_end_time = utcnow()
                job.hyper_parameter_tuning_job_status = status
            job.last_modified_time = utcnow()

    def summaries(self) -> list[dict[str, Any]]:
        """Every trial's summary, in the order they were created."""
        with self.lock:
            return [trial.summary(self.config) for trial in sorted(self.trials.values(), key=lambda trial: trial.number)]

    def update_trial(self, trial: Trial, **changes: Any) -> Trial:
        """Replace a trial's record (records are immutable, so a concurrent List never sees half a change)."""
        with self.lock:
            updated = self.trials[trial.name] = dataclasses.replace(self.trials[trial.name], **changes)
        return updated

    # --- the tuning job -------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            try:
                status, reason = self.run_trials()
            except Exception as error:  # a fault of the runner itself fails the tuning job loudly
                logger.exception("tuning job %s: the local runner failed", self.config.name)
                status, reason = "Failed", f"InternalServerError: local tuning runner: {error!r}"
                try:
                    self.stop_running_trials()
                except Exception:  # the tuning job still ends Failed; its trials end with the endpoint
                    logger.exception("tuning job %s: could not stop its trials", self.config.name)
            if not self.shutting_down.is_set():
                self.report_state(status, reason)
                self.log(f"{status}{': ' + reason if reason else ''}")
        finally:
            self.log_file.close()

    def run_trials(self) -> tuple[str, str | None]:
        """Start trials as the strategy suggests them, at most `parallel` at once, until none is left or a stop."""
        config = self.config
        self.log(
            f"{config.strategy_name} search, {config.objective_type} {config.metric_name}: "
            f"{self.strategy.max_jobs} training jobs, {self.parallel} at a time"
            + (f" (MaxParallelTrainingJobs={config.max_parallel}, capped at {self.parallel}: this machine has "
               f"{machine_cores()} cores)" if self.parallel < config.max_parallel else "")
            + (", early stopping by the median rule" if config.early_stopping else "")
        )
        exhausted = False
        while not self.shutting_down.is_set():
            if self.stop_requested.is_set():
                self.stop_running_trials()
            while not exhausted and not self.stop_requested.is_set() and len(self.running()) < self.parallel:
                suggestion = self.strategy.suggest()
                if suggestion is None:
                    exhausted = True
                else:
                    self.start_trial(suggestion)
            self.follow_running_trials()
            if not self.running() and (exhausted or self.stop_requested.is_set()):
                break
            self.shutting_down.wait(POLL_S)
        if self.stop_requested.is_set():
            return "Stopped", None
        if not any(trial.objective_status == "Succeeded" for trial in self.trials.values()):
            return "Failed", ALL_FAILED
        return "Completed", None

    def running(self) -> list[Trial]:
        """The trials that still run (or are stopping)."""
        with self.lock:
            return [trial for trial in self.trials.values() if trial.status in RUNNING]

    def start_trial(self, suggestion: tuning_strategies.Suggestion) -> None:
        """Create the suggested trial as a training job, named and tagged as SageMaker does."""
        config = self.config
        number = suggestion.number + 1
        name = f"{config.name}-{number:03d}-{secrets.token_hex(4)}"
        definition = config.definition
        spec = definition["AlgorithmSpecification"]
        request = {
            "TrainingJobName": name,
            "HyperParameters": {
                **(definition.get("StaticHyperParameters") or {}),
                **suggestion.hyperparameters,
                "_tuning_objective_metric": config.metric_name,
            },
            "AlgorithmSpecification": {
                key: spec[key] for key in ("TrainingImage", "AlgorithmName", "TrainingInputMode", "MetricDefinitions") if key in spec
            },
            **{field: copy.deepcopy(definition[field]) for field in DEFINITION_FIELDS if field in definition},
            **({"Tags": config.tags} if config.tags else {}),
        }
        arn = f"{self.job.arn.rsplit(':', 1)[0]}:training-job/{name}"
        with self.lock:
            self.trials[name] = Trial(number, name, arn, dict(suggestion.hyperparameters), utcnow())
        try:
            arn = self.sagemaker.create_training_job(**request)["TrainingJobArn"]
        except self.sagemaker.exceptions.ClientError as error:
            self.end_trial(self.update_trial(self.trials[name], arn=arn), "Failed", None, f"ClientError: {error}")
            return
        self.backend.training_jobs[name].tuning_job_arn = self.job.arn  # DescribeTrainingJob's TuningJobArn
        self.update_trial(self.trials[name], arn=arn)
        tuned = ", ".join(f"{key}={value}" for key, value in suggestion.hyperparameters.items())
        self.log(f"started {name}: {tuned}")
        self.report_state()

    def follow_running_trials(self) -> None:
        """Read each running trial's description; record those that ended; apply early stopping to the others."""
        for trial in self.running():
            description = self.sagemaker.describe_training_job(TrainingJobName=trial.name)
            status = description["TrainingJobStatus"]
            trial = self.update_trial(
                trial, start_time=description.get("TrainingStartTime"), status=status if status in RUNNING else trial.status
            )
            if status in ENDED:
                final = {metric["MetricName"]: metric["Value"] for metric in description.get("FinalMetricDataList") or []}
                self.end_trial(trial, status, final.get(self.config.metric_name), description.get("FailureReason"),
                               description.get("TrainingEndTime"))
            elif status == "InProgress" and self.config.early_stopping and not trial.early_stopped:
                self.apply_median_rule(trial)

    def end_trial(
        self, trial: Trial, status: str, objective: float | None, failure_reason: str | None,
        end_time: datetime.datetime | None = None,
    ) -> None:
        """Record how a trial ended, tell the strategy, keep its curve for the median rule."""
        trial = self.update_trial(
            trial, status=status, objective=objective, failure_reason=failure_reason, end_time=end_time or utcnow()
        )
        self.strategy.report(trial.number - 1, trial.objective if trial.objective_status == "Succeeded" else None)
        if self.config.early_stopping and status == "Completed":
            self.curves[trial.name] = self.objective_curve(trial.name)
        score = "no objective" if objective is None else f"{self.config.metric_name}={objective:g}"
        self.log(f"{trial.name} {status}{' (early stopping)' if trial.early_stopped else ''}: {score}"
                 + (f"; {failure_reason}" if status == "Failed" and failure_reason else ""))
        self.report_state()

    def objective_curve(self, trial_name: str) -> list[float]:
        """The trial's objective after each epoch so far: every match of the objective regex in its log, in order."""
        streams = self.logs.describe_log_streams(
            logGroupName=job_logs.LOG_GROUP, logStreamNamePrefix=f"{trial_name}/"
        ).get("logStreams", [])
        values = []
        for stream in sorted(stream["logStreamName"] for stream in streams):
            token = None
            while True:
                page = self.logs.get_log_events(
                    logGroupName=job_logs.LOG_GROUP, logStreamName=stream, startFromHead=True,
                    **({"nextToken": token} if token else {}),
                )
                for event in page["events"]:
                    value = job_logs.metric_value(self.config.objective_regex, event["message"])
                    if value is not None:
                        values.append(value)
                if not page["events"] or page.get("nextForwardToken") in (None, token):
                    break
                token = page["nextForwardToken"]
        return values

    def apply_median_rule(self, trial: Trial) -> None:
        """Stop a running trial as soon as, after one of its epochs, its objective is worse than the completed trials' median.

        Every epoch the trial finished since the last look is judged in turn, as SageMaker judges each epoch
        when it ends: a trial that printed several epochs between two polls is not judged on the last one only.
        """
        if not self.curves:
            return
        curve = self.objective_curve(trial.name)
        completed = list(self.curves.values())
        for epoch in range(self.judged_epochs.get(trial.name, 0) + 1, len(curve) + 1):
            if tuning_strategies.median_rule_stops(curve[:epoch], completed, self.config.maximize):
                self.update_trial(trial, early_stopped=True)
                self.log(f"early stopping {trial.name} after epoch {epoch}: {self.config.metric_name}={curve[epoch - 1]:g} "
                         "is worse than the median of the completed trials' running averages")
                self.stop_trial(trial.name)
                return
        self.judged_epochs[trial.name] = len(curve)

    def stop_trial(self, name: str) -> None:
        """StopTrainingJob for one trial; a trial that has just ended is no longer stoppable, which is fine."""
        try:
            self.sagemaker.stop_training_job(TrainingJobName=name)
        except self.sagemaker.exceptions.ClientError as error:
            if "is in status" not in str(error):  # anything but "already ended" is the runner's fault
                raise

    def stop_running_trials(self) -> None:
        """Stop every trial still InProgress (those already Stopping are on their way)."""
        for trial in self.running():
            if trial.status == "InProgress":
                self.stop_trial(trial.name)
                self.update_trial(trial, status="Stopping")

    def request_stop(self) -> None:
        """StopHyperParameterTuningJob: an InProgress tuning job becomes Stopping; any other is refused."""
        with self.lock:
            status = self.job.hyper_parameter_tuning_job_status
            if status != "InProgress":
                raise ValidationError(f"The request was rejected because the hyperparameter tuning job is in status {status}.")
            self.job.hyper_parameter_tuning_job_status = "Stopping"
            self.job.last_modified_time = utcnow()
        self.stop_requested.set()
        self.log("StopHyperParameterTuningJob: stopping every running trial")


class TuningJobs:
    """The tuning jobs of this endpoint."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.runs: dict[str, TuningJobRun] = {}
        self.restore: Callable[[], None] | None = None

    def run_of(self, name: str) -> TuningJobRun:
        """The run of a tuning job of this endpoint; ResourceNotFound (as SageMaker answers) for any other."""
        run = self.runs.get(name)
        if run is None:
            raise ResourceNotFound(f"Amazon SageMaker can't find a tuning job with name {name}")
        return run

    def shutdown(self) -> None:
        """Let every run go (the training jobs module kills the trials' processes); put moto's responses back."""
        for run in self.runs.values():
            run.shutting_down.set()
        for run in self.runs.values():
            run.join(timeout=10)
        if self.restore is not None:
            self.restore()


def install(state_dir: Path) -> TuningJobs:
    """Override moto's tuning-job responses: Create runs the tuning job, Describe reports it, Stop stops it, and
    ListTrainingJobsForHyperParameterTuningJob lists its trials."""
    tuning = TuningJobs(state_dir / "tuning-jobs")

    def create_hyper_parameter_tuning_job(self: SageMakerResponse) -> ActionResult:
        fields = ("HyperParameterTuningJobName", "HyperParameterTuningJobConfig", "TrainingJobDefinition", "Tags",
                  *UNSUPPORTED_REQUEST)
        request = {field: copy.deepcopy(self._get_param(field)) for field in fields}
        try:
            config = check_request(request)
        except ValueError as error:
            raise ValidationError(str(error)) from error
        result = patch.original("create_hyper_parameter_tuning_job")(self)  # moto stores it (refusing a name in use)
        job = self.sagemaker_backend.hyper_parameter_tuning_jobs[config.name]
        job.tags = list(config.tags)  # moto keeps None, which ListTags cannot answer
        # moto's made-up results go; the run reports the real ones.
        job.OverallBestTrainingJob = None  # only warm-start tuning jobs have one
        job.tuning_job_completion_details = None
        job.hyper_parameter_tuning_end_time = None
        job.failure_reason = None
        run = tuning.runs[config.name] = TuningJobRun(job, config, self.sagemaker_backend, tuning.log_dir)
        run.start()
        return result

    def describe_hyper_parameter_tuning_job(self: SageMakerResponse) -> ActionResult:
        name = self._get_param("HyperParameterTuningJobName")
        run = tuning.runs.get(name)
        if run is None:  # moto answers for a job it does not know
            return patch.original("describe_hyper_parameter_tuning_job")(self)
        with run.lock:  # status, counters and best job from one moment
            return patch.original("describe_hyper_parameter_tuning_job")(self)

    def stop_hyper_parameter_tuning_job(self: SageMakerResponse) -> EmptyResult:
        tuning.run_of(self._get_param("HyperParameterTuningJobName")).request_stop()
        return EmptyResult()

    def list_training_jobs_for_hyper_parameter_tuning_job(self: SageMakerResponse) -> ActionResult:
        run = tuning.run_of(self._get_param("HyperParameterTuningJobName"))
        summaries = run.summaries()
        if status := self._get_param("StatusEquals"):
            summaries = [summary for summary in summaries if summary["TrainingJobStatus"] == status]
        sort_by = self._get_param("SortBy") or "Name"
        keys: dict[str, Callable[[dict[str, Any]], Any]] = {
            "Name": lambda summary: summary["TrainingJobName"],
            "CreationTime": lambda summary: summary["CreationTime"],
            "Status": lambda summary: summary["TrainingJobStatus"],
            "FinalObjectiveMetricValue": lambda summary: summary["FinalHyperParameterTuningJobObjectiveMetric"]["Value"],
        }
        if sort_by not in keys:
            raise ValidationError(f"SortBy {sort_by!r} is not one of {', '.join(keys)}")
        if sort_by == "FinalObjectiveMetricValue":  # as SageMaker: trials without an objective are not listed
            summaries = [summary for summary in summaries if "FinalHyperParameterTuningJobObjectiveMetric" in summary]
        summaries.sort(key=keys[sort_by], reverse=self._get_param("SortOrder") == "Descending")
        start = int(self._get_param("NextToken") or 0)
        size = int(self._get_param("MaxResults") or 10)
        page = summaries[start : start + size]
        more = start + size < len(summaries)
        return ActionResult({"TrainingJobSummaries": page, **({"NextToken": str(start + size)} if more else {})})

    patch = override_responses({
        "create_hyper_parameter_tuning_job": create_hyper_parameter_tuning_job,
        "describe_hyper_parameter_tuning_job": describe_hyper_parameter_tuning_job,
        "stop_hyper_parameter_tuning_job": stop_hyper_parameter_tuning_job,
        "list_training_jobs_for_hyper_parameter_tuning_job": list_training_jobs_for_hyper_parameter_tuning_job,
    })
    tuning.restore = patch.restore
    logger.info("tuning jobs log under %s", tuning.log_dir)
    return tuning

"""Training jobs that really run behind the local AWS endpoint, the way SageMaker runs them.

moto 5.2.5 stores a CreateTrainingJob request, reports the job `Completed` at once and drops parts of the
request (Environment, RetryStrategy, the metric definitions). `install()` overrides its responses in the
endpoint's own process (`local_aws.py serve`) so that a training job:

1. reports `InProgress` and gets, for each of its hosts algo-1 ... algo-N (ResourceConfig.InstanceCount,
   hosts.py), a folder with the layout SageMaker gives the container under /opt/ml (container.py): the config files, input/data/<channel>/ downloaded from S3 (SDK 3's `code` and
   `sm_drivers` channels included), model/, output/data/, and the checkpoint (filled from the
   CheckpointConfig S3 URI) and TensorBoard folders when the job asks for them (s3_io.py);
2. runs the job's own container command (ContainerEntrypoint + ContainerArguments; SDK 3's ModelTrainer
   starts sm_train.sh from the sm_drivers channel; a job without one, as a tuning job's trial, runs the
   way the framework images run sagemaker_program: framework_container.py), with root rights in a private
   mount namespace where that folder is bound onto /opt/ml (processes.py), as its host on the job's private
   network, where the names algo-1 ... algo-N resolve (hosts.py). Where unshare is not permitted,
   the job's log says so and the runner falls back to running the entry script directly, with the SM_*
   variables that the SDK's drivers would export pointing into the folder (and CHECKPOINT_DIR at its
   checkpoint folder). Either way the job's Python is this environment's interpreter: its folder comes
   first on PATH (and a job on several instances is refused: its hosts need the private network);
3. streams each host's output, line by line, to CloudWatch Logs (a stream per host) and evaluates the metric
   definitions over it (job_logs.py);
4. syncs the checkpoint and TensorBoard folders to S3 while it runs and once more at the end;
5. ends `Completed` when every host has exited 0 (every host's model/ together as model.tar.gz and output/data
   as output.tar.gz in S3), `Failed` when a host fails (FailureReason from its output/failure and its log's last
   error; the other hosts are killed at once) or `Stopped` (StopTrainingJob, or MaxRuntimeInSeconds: SIGTERM
   to every host's training process, SIGKILL to whatever is left after SageMaker's grace period of 120 s).
   An attempt in which a host was ended by SIGKILL from outside (what a lost or reclaimed instance looks like)
   is retried when the job has a RetryStrategy: the whole job, every host starting from the checkpoints that
   reached S3.

Every status change goes through `TrainingJobStatus`, under one lock: a StopTrainingJob that arrives as the
job ends either stops it or is refused, as SageMaker refuses a stop of a job that is no longer InProgress.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from . import container, framework_container, hosts, job_logs, processes, s3_io
from .moto_patch import override_responses, utcnow

from moto.core.responses import ActionResult, EmptyResult  # noqa: E402,I001 - after moto_patch's version check
from moto.sagemaker.exceptions import ValidationError  # noqa: E402
from moto.sagemaker.models import FakeTrainingJob  # noqa: E402
from moto.sagemaker.responses import SageMakerResponse  # noqa: E402

logger = logging.getLogger("local_sagemaker.training_jobs")

# The parts of the CreateTrainingJob request that the runner needs (moto keeps only some of them).
REQUEST_FIELDS = (
    "TrainingJobName",
    "AlgorithmSpecification",
    "HyperParameters",
    "InputDataConfig",
    "OutputDataConfig",
    "ResourceConfig",
    "StoppingCondition",
    "CheckpointConfig",
    "TensorBoardOutputConfig",
    "Environment",
    "RetryStrategy",
    "EnableManagedSpotTraining",
)


class JobError(RuntimeError):
    """A job that cannot run as requested; the message is its FailureReason, e.g. `ClientError: ...`."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How an attempt or a job ended: Completed, Failed, Stopped or Interrupted (retried when allowed)."""

    status: str
    secondary: str
    message: str
    reason: str | None = None


class TrainingJobStatus:
    """What DescribeTrainingJob reports about a job's progress; every change of it goes through here, under one lock.

    The run thread moves the job along while StopTrainingJob arrives on a request thread: a stop checks
    InProgress and sets Stopping in one step, so that a job that has ended in between stays ended (and the
    stop is refused), and two transitions at once both reach the list.
    """

    def __init__(self, job: FakeTrainingJob) -> None:
        self.job = job
        self.lock = threading.Lock()

    def start(self, request: dict[str, Any]) -> None:
        """Keep what moto dropped and start the job `InProgress`; every field exists before the first describe."""
        job = self.job
        with self.lock:
            job.algorithm_specification = request["AlgorithmSpecification"]  # moto replaced MetricDefinitions
            job.environment = request.get("Environment") or {}
            job.retry_strategy = request.get("RetryStrategy")
            job.failure_reason = None
            job.final_metric_data_list = None
            job.training_start_time = None
            job.training_end_time = None
            job.training_time_in_seconds = None
            job.billable_time_in_seconds = None
            job.secondary_status_transitions = []
            job.training_job_status = "InProgress"
            self._move_to("Starting", "Preparing the instances for training")

    def set_secondary(self, status: str, message: str) -> None:
        """Move the job to a new secondary status."""
        with self.lock:
            self._move_to(status, message)

    def training_started(self) -> None:
        """The first attempt's container starts: TrainingStartTime (a retry keeps the first one)."""
        with self.lock:
            if self.job.training_start_time is None:
                self.job.training_start_time = utcnow()

    def request_stop(self) -> None:
        """StopTrainingJob: an InProgress job becomes Stopping; any other is refused, as SageMaker refuses it."""
        with self.lock:
            if self.job.training_job_status != "InProgress":
                raise ValidationError(
                    f"The request was rejected because the training job is in status {self.job.training_job_status}."
                )
            self._move_to("Stopping", "Stopping the training job")
            self.job.training_job_status = "Stopping"

    def finish(self, outcome: Outcome, metrics: list[dict[str, Any]], container_seconds: float) -> None:
        """Report the end: metrics, times and reason first, the status last (clients poll for it)."""
        job = self.job
        with self.lock:
            job.final_metric_data_list = metrics
            seconds = max(1, math.ceil(container_seconds))
            job.training_time_in_seconds = seconds
            job.billable_time_in_seconds = seconds  # no spot discount is modelled: every second is billable
            job.training_end_time = utcnow()
            if outcome.status == "Failed":
                job.failure_reason = outcome.reason
                job.model_artifacts = None  # SageMaker reports no model for a failed job
            self._move_to(outcome.secondary, outcome.message, final=True)
            job.training_job_status = outcome.status

    def _move_to(self, status: str, message: str, final: bool = False) -> None:
        """The transition itself, with the lock held (new lists, so a concurrent describe never sees one change)."""
        now = utcnow()
        transitions = [dict(transition) for transition in self.job.secondary_status_transitions]
        if transitions:
            transitions[-1].setdefault("EndTime", now)
        transitions.append({"Status": status, "StartTime": now, "StatusMessage": message})
        if final:
            transitions[-1]["EndTime"] = now
        self.job.secondary_status_transitions = transitions
        self.job.secondary_status = status
        self.job.last_modified_time = now


class TrainingJobRun(threading.Thread):
    """One training job: its attempts, from downloading the channels to uploading the model."""

    def __init__(
        self,
        job: FakeTrainingJob,
        request: dict[str, Any],
        metric_regexes: list[job_logs.MetricRegex],
        jobs_dir: Path,
        use_namespace: bool,
    ) -> None:
        super().__init__(name=f"training-job {request['TrainingJobName']}", daemon=True)
        self.job, self.request, self.use_namespace = job, request, use_namespace
        self.job_name: str = request["TrainingJobName"]
        self.job_dir = jobs_dir / self.job_name
        self.stop_requested = threading.Event()
        self.running: hosts.RunningHosts | None = None
        self.running_lock = threading.Lock()  # the run thread starts the hosts; stop and shutdown signal them
        self.container_seconds = 0.0
        session = boto3.session.Session()  # one per job: boto3's default session is not shared across threads
        self.region = session.region_name
        self.s3 = session.client("s3")
        self.host_names = hosts.host_names(int(request["ResourceConfig"].get("InstanceCount", 1)))
        logs = session.client("logs")
        self.logs = {name: job_logs.JobLog(logs, self.job_name, metric_regexes, host=name) for name in self.host_names}
        self.status = TrainingJobStatus(job)
        self.status.start(request)

    # --- the job --------------------------------------------------------------------------------------------

    def run(self) -> None:
        """The job's thread: its attempts, then its end as DescribeTrainingJob reports it."""
        try:
            outcome = self.run_attempts()
        except JobError as error:
            outcome = Outcome("Failed", "Failed", "Training job failed", str(error))
        except Exception as error:  # a fault of the runner itself fails the job loudly, as an internal error
            logger.exception("training job %s: the local runner failed", self.job_name)
            reason = f"InternalServerError: local runner: {error!r}"
            outcome = Outcome("Failed", "Failed", "Training job failed", reason)
        self.status.finish(outcome, self.final_metric_data(), self.container_seconds)
        logger.info("training job %s: %s %s", self.job_name, outcome.status, outcome.reason or "")

    def run_attempts(self) -> Outcome:
        """Run attempts until one is not interrupted or the retry strategy allows no more."""
        retries = int((self.request.get("RetryStrategy") or {}).get("MaximumRetryAttempts", 0))
        for attempt in range(1, retries + 2):
            outcome = self.run_attempt(attempt)
            if outcome.status != "Interrupted":
                return outcome
            if attempt <= retries:
                self.status.set_secondary(
                    "Restarting", f"Attempt {attempt} was interrupted; restarting from S3 checkpoints"
                )
        return Outcome(
            "Failed", "Failed", "Training job failed",
            f"InternalServerError: the training instance was lost (SIGKILL) in each of {retries + 1} attempt(s)",
        )

    def final_metric_data(self) -> list[dict[str, Any]]:
        """FinalMetricDataList: the last value of each metric in any host's log (the hosts of train.py print the same)."""
        latest: dict[str, dict[str, Any]] = {}
        for log in self.logs.values():
            for metric in log.final_metric_data():
                if metric["MetricName"] not in latest or metric["Timestamp"] >= latest[metric["MetricName"]]["Timestamp"]:
                    latest[metric["MetricName"]] = metric
        return list(latest.values())

    def run_attempt(self, attempt: int) -> Outcome:
        """Build a fresh /opt/ml per host, run the hosts' container commands, and sync or upload what they produced."""
        if len(self.host_names) > 1 and not self.use_namespace:
            raise JobError(
                f"ClientError: a job on {len(self.host_names)} instances needs the hosts' private network, which takes "
                "namespaces (unshare as root); this endpoint runs jobs directly: use InstanceCount 1"
            )
        attempt_dir = self.job_dir / f"attempt-{attempt}"
        attempt_hosts = [hosts.Host(self.training_container(attempt_dir / name, name), self.logs[name]) for name in self.host_names]
        self.status.set_secondary("Downloading", "Downloading input data")
        for host in attempt_hosts:
            self.prepare(host.container)
            host.syncs = self.folder_syncs(host.container)
        if self.stop_requested.is_set():
            return Outcome("Stopped", "Stopped", "Training job stopped before it started")
        self.status.training_started()
        self.status.set_secondary("Training", "Training image download completed. Training in progress.")
        end = self.run_containers(attempt_dir, attempt_hosts)
        failed = end.first_failure
        if end.stopped_why is None and failed is not None and processes.killed_by_sigkill(failed.returncode):
            message = f"Attempt {attempt} was interrupted: {failed.name} was killed (exit status {failed.returncode})"
            return Outcome("Interrupted", "Interrupted", message)
        for host in attempt_hosts:
            for sync in host.syncs:
                sync.push(final=True)
        if end.stopped_why is None and failed is not None:
            reason = job_logs.failure_reason(failed.container.failure_file, failed.log.tail, failed.returncode)
            return Outcome("Failed", "Failed", "Training job failed", reason)
        self.status.set_secondary("Uploading", "Uploading generated training model")
        self.upload_outputs(attempt_dir, attempt_hosts)
        stopped_why = end.stopped_why
        if stopped_why == "MaxRuntimeExceeded":
            return Outcome("Stopped", "MaxRuntimeExceeded", "Training job stopped: it exceeded MaxRuntimeInSeconds")
        if stopped_why == "Stopped":
            return Outcome("Stopped", "Stopped", "Training job stopped by StopTrainingJob")
        return Outcome("Completed", "Completed", "Training job completed")

    def request_stop(self) -> None:
        """StopTrainingJob: SIGTERM to every host's training process now; SIGKILL follows after the grace period."""
        self.status.request_stop()
        self.stop_requested.set()
        with self.running_lock:
            if self.running is not None:
                self.running.terminate()

    def kill(self) -> None:
        """End every process of the job at once (the endpoint is shutting down)."""
        self.stop_requested.set()
        with self.running_lock:
            if self.running is not None:
                self.running.kill()

    # --- the container's folders ----------------------------------------------------------------------------

    def training_container(self, root: Path, host: str) -> container.TrainingContainer:
        """One host of the job, as its container sees it, with its /opt/ml under root."""
        default_mode = self.request["AlgorithmSpecification"]["TrainingInputMode"]
        channels = {}
        for channel in self.request.get("InputDataConfig") or []:
            source = channel["DataSource"].get("S3DataSource", {})
            channels[channel["ChannelName"]] = container.channel_config(
                input_mode=channel.get("InputMode") or default_mode,
                distribution=source.get("S3DataDistributionType", "FullyReplicated"),
                record_wrapper=channel.get("RecordWrapperType", "None"),
                content_type=channel.get("ContentType"),
            )
        return container.TrainingContainer(
            root=root,
            instance_type=self.request["ResourceConfig"]["InstanceType"],
            channels=channels,
            hyperparameters=self.request.get("HyperParameters") or {},
            hosts=self.host_names,
            current_host=host,
            # On the hosts' private network they reach each other over the loopback (hosts.py).
            network_interface=hosts.NETWORK_INTERFACE if self.use_namespace else container.NETWORK_INTERFACE,
        )

    def mapped_folder(self, ml: container.TrainingContainer, config_field: str, default: str) -> Path | None:
        """The folder under the job's /opt/ml for a config's LocalPath (checkpoints, TensorBoard), if it has one."""
        config = self.request.get(config_field)
        if not config:
            return None
        try:
            return ml.local_path(config.get("LocalPath") or default)
        except ValueError as error:
            raise JobError(f"ClientError: {config_field}.LocalPath: {error}") from error

    def checkpoint_dir(self, ml: container.TrainingContainer) -> Path | None:
        """Where the job's checkpoints are, when it has a CheckpointConfig."""
        return self.mapped_folder(ml, "CheckpointConfig", container.DEFAULT_CHECKPOINT_PATH)

    def tensorboard_dir(self, ml: container.TrainingContainer) -> Path | None:
        """Where the job's TensorBoard logs are, when it has a TensorBoardOutputConfig."""
        return self.mapped_folder(ml, "TensorBoardOutputConfig", container.DEFAULT_TENSORBOARD_PATH)

    def folder_syncs(self, ml: container.TrainingContainer) -> list[s3_io.FolderSync]:
        """Checkpoints go to their S3 URI; TensorBoard logs to `<S3OutputPath>/<job>/tensorboard-output/`."""
        syncs = []
        try:
            if checkpoints := self.checkpoint_dir(ml):
                syncs.append(s3_io.FolderSync(self.s3, checkpoints, self.request["CheckpointConfig"]["S3Uri"]))
            if tensorboard := self.tensorboard_dir(ml):
                base = self.request["TensorBoardOutputConfig"]["S3OutputPath"].rstrip("/")
                syncs.append(s3_io.FolderSync(self.s3, tensorboard, f"{base}/{self.job_name}/tensorboard-output/"))
        except ValueError as error:  # a malformed S3 URI in the request
            raise JobError(f"ClientError: {error}") from error
        return syncs

    def prepare(self, ml: container.TrainingContainer) -> None:
        """Write the config files and download the channels and the checkpoints, as SageMaker does before training."""
        ml.create()
        for channel in self.request.get("InputDataConfig") or []:
            self.download_channel(channel, ml.channel_dir(channel["ChannelName"]))
        if checkpoints := self.checkpoint_dir(ml):
            checkpoints.mkdir(parents=True, exist_ok=True)
            self.download(self.request["CheckpointConfig"]["S3Uri"], checkpoints)
        if tensorboard := self.tensorboard_dir(ml):
            tensorboard.mkdir(parents=True, exist_ok=True)

    def download_channel(self, channel: dict[str, Any], target: Path) -> None:
        """Download an S3Prefix channel in File mode; anything else is refused with SageMaker's kind of error."""
        source = channel["DataSource"].get("S3DataSource")
        name = channel["ChannelName"]
        if source is None or source.get("S3DataType") != "S3Prefix" or channel.get("CompressionType", "None") != "None":
            raise JobError(f"ClientError: channel {name!r}: the local runner reads only uncompressed S3Prefix channels")
        if source.get("S3DataDistributionType") == "ShardedByS3Key" and len(self.host_names) > 1:
            raise JobError(f"ClientError: channel {name!r}: the local runner gives every host all of a channel "
                           "(FullyReplicated); it does not shard channels by S3 key")
        target.mkdir(parents=True, exist_ok=True)
        if self.download(source["S3Uri"], target) == 0:
            raise JobError(f'ClientError: No S3 objects found under S3 URL "{source["S3Uri"]}" of the input channel')

    def download(self, uri: str, target: Path) -> int:
        """s3_io.download_prefix, its failures as the job's ClientError."""
        try:
            return s3_io.download_prefix(self.s3, uri, target)
        except ValueError as error:  # a malformed URI, or a key that would land outside the folder
            raise JobError(f"ClientError: {error}") from error
        except ClientError as error:
            raise JobError(f"ClientError: Data download failed: {uri}: {error}") from error

    def upload_outputs(self, attempt_dir: Path, attempt_hosts: list[hosts.Host]) -> None:
        """Every host's model/ together becomes model.tar.gz at ModelArtifacts; output/data output.tar.gz beside it."""
        if self.request["OutputDataConfig"].get("CompressionType", "GZIP") != "GZIP":
            raise JobError("ClientError: the local runner packs the model only as model.tar.gz (CompressionType GZIP)")
        merged = {}
        for kind in ("model", "output-data"):
            folders = {host.name: host.container.model_dir if kind == "model" else host.container.output_data_dir
                       for host in attempt_hosts}
            merged[kind] = attempt_dir / kind
            for clash in hosts.merge_folders(folders, merged[kind]):
                logger.warning("training job %s: %s in %s clashes with an earlier host's; the earlier one is kept",
                               self.job_name, clash, kind)
        model_uri = self.job.model_artifacts["S3ModelArtifacts"]
        s3_io.upload_outputs(self.s3, merged["model"], merged["output-data"], model_uri, work_dir=attempt_dir)

    # --- the container command ------------------------------------------------------------------------------

    def container_command(self, ml: container.TrainingContainer) -> tuple[list[str], dict[str, str], Path]:
        """The command, environment and working folder of the job's container."""
        spec = self.request["AlgorithmSpecification"]
        entrypoint, arguments = spec.get("ContainerEntrypoint"), spec.get("ContainerArguments") or []
        environment = container.system_environment(self.region, {
            "TRAINING_JOB_NAME": self.job_name,
            "TRAINING_JOB_ARN": self.job.arn,
            **(self.request.get("Environment") or {}),
        })
        if not entrypoint:  # a tuning job's trial: the framework container's launcher runs sagemaker_program
            try:
                return framework_container.command(
                    ml, self.s3, environment, use_namespace=self.use_namespace, num_gpus=container.gpu_count(),
                    checkpoint_dir=self.checkpoint_dir(ml),
                )
            except ValueError as error:
                raise JobError(f"ClientError: {error}") from error
        if self.use_namespace:
            return processes.in_namespace(ml.root, [*entrypoint, *arguments]), environment, ml.root
        return self.direct_command(ml, environment)

    def direct_command(
        self, ml: container.TrainingContainer, environment: dict[str, str]
    ) -> tuple[list[str], dict[str, str], Path]:
        """Without a namespace: run the entry script itself, with the SM_* variables SDK 3's drivers export."""
        source_code_file = ml.channel_dir("sm_drivers") / "sourcecode.json"
        source_code = json.loads(source_code_file.read_text()) if source_code_file.is_file() else {}
        entry_script = source_code.get("entry_script") or ""
        if not entry_script.endswith(".py"):
            raise JobError("ClientError: without a mount namespace the local runner runs only entry_script='*.py' jobs")
        # /opt/ml/checkpoints does not exist out here: CHECKPOINT_DIR points at the job's own folder.
        sm_environment = ml.sm_environment(
            num_gpus=container.gpu_count(), checkpoint_dir=self.checkpoint_dir(ml), entry_script=entry_script
        )
        arguments = [part for name, value in ml.hyperparameters.items() for part in (f"--{name}", value)]
        return [sys.executable, entry_script, *arguments], environment | sm_environment, ml.channel_dir("code")

    def run_containers(self, attempt_dir: Path, attempt_hosts: list[hosts.Host]) -> hosts.HostsEnd:
        """Run every host's container command, on the job's private network; how they ended, and why they were stopped."""
        with contextlib.ExitStack() as stack:
            network = stack.enter_context(hosts.JobNetwork(attempt_dir, self.host_names)) if self.use_namespace else None
            commands = {}
            for host in attempt_hosts:
                command, environment, cwd = self.container_command(host.container)
                commands[host.name] = (network.host_command(host.name, command) if network else command, environment, cwd)
            for host in attempt_hosts:
                host.log.start_attempt(host.container.root.with_suffix(".log"))
                stack.callback(host.log.end_attempt)
                if not self.use_namespace:
                    host.log.write("[local runner] no private mount namespace (unshare not permitted): running the "
                                   f"entry script directly with SM_* variables under {host.container.root}")
            runtime_limit = (self.request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
            started = time.monotonic()
            with self.running_lock:
                if self.stop_requested.is_set():
                    return hosts.HostsEnd(None, "Stopped")
                running = self.running = hosts.RunningHosts(attempt_hosts)
                try:
                    running.start(commands)
                except BaseException:
                    running.kill()  # the hosts started before the failure must not keep running
                    raise

            def should_stop() -> str | None:
                if self.stop_requested.is_set():
                    return "Stopped"
                if runtime_limit and time.monotonic() - started > runtime_limit:
                    return "MaxRuntimeExceeded"
                return None

            def sync() -> None:
                for host in attempt_hosts:
                    for folder_sync in host.syncs:
                        folder_sync.push()

            end = running.run(should_stop, sync)
            if end.stopped_why is None and self.stop_requested.is_set():  # a stop that arrived as the hosts ended
                end = dataclasses.replace(end, stopped_why="Stopped")
            self.container_seconds += time.monotonic() - started
            with self.running_lock:
                self.running = None
        return end


class TrainingJobs:
    """The jobs of this endpoint: where they run and how (mount namespace or directly)."""

    def __init__(self, jobs_dir: Path, use_namespace: bool) -> None:
        self.jobs_dir, self.use_namespace = jobs_dir, use_namespace
        self.runs: dict[str, TrainingJobRun] = {}
        self.restore: Callable[[], None] | None = None

    def start(self, job: FakeTrainingJob, request: dict[str, Any], metric_regexes: list[job_logs.MetricRegex]) -> None:
        """Start the job's run in its own thread; the job is `InProgress` when this returns."""
        run = TrainingJobRun(job, request, metric_regexes, self.jobs_dir, self.use_namespace)
        self.runs[run.job_name] = run
        run.start()

    def stop(self, name: str) -> None:
        """StopTrainingJob for a job of this endpoint."""
        run = self.runs.get(name)
        if run is None:
            raise ValidationError(f"Training job {name!r} was not started by this endpoint.")
        run.request_stop()

    def shutdown(self) -> None:
        """Kill what still runs and put moto's responses back; the endpoint is going away."""
        for run in self.runs.values():
            run.kill()
        for run in self.runs.values():
            run.join(timeout=10)
        if self.restore is not None:
            self.restore()


def install(state_dir: Path, use_namespace: bool | None = None) -> TrainingJobs:
    """Override moto's SageMaker responses: CreateTrainingJob runs the job, StopTrainingJob stops it,
    UpdateTrainingJob records a warm pool's keep-alive period.

    use_namespace: None asks the machine (root and unshare); False runs every job's entry script directly.
    """
    if use_namespace is None:
        use_namespace = processes.namespace_permitted()
    if use_namespace:
        processes.adopt_orphans()
    else:
        logger.warning("unshare is not permitted: training jobs run their entry script directly (training_jobs.py)")
    jobs = TrainingJobs(state_dir / "training-jobs", use_namespace)

    def create_training_job(self: SageMakerResponse) -> ActionResult:
        """moto stores the job; then it starts running here, InProgress."""
        request = {field: copy.deepcopy(self._get_param(field)) for field in REQUEST_FIELDS}
        definitions = request["AlgorithmSpecification"].get("MetricDefinitions") or []
        try:  # a bad regex refuses the request, as SageMaker does
            metric_regexes = job_logs.compile_metric_definitions(definitions)
        except ValueError as error:
            raise ValidationError(str(error)) from error
        result = patch.original("create_training_job")(self)  # moto stores the job and answers
        jobs.start(self.sagemaker_backend.training_jobs[request["TrainingJobName"]], request, metric_regexes)
        return result

    def stop_training_job(self: SageMakerResponse) -> EmptyResult:
        """SIGTERM to the job's script; a job that is not InProgress is a ValidationException."""
        name = self._get_param("TrainingJobName")
        self.sagemaker_backend.describe_training_job(name)  # an unknown job is a ValidationException
        jobs.stop(name)
        return EmptyResult()

    def update_training_job(self: SageMakerResponse) -> ActionResult:
        """Only what the workbook updates: a warm pool's KeepAlivePeriodInSeconds."""
        name = self._get_param("TrainingJobName")
        self.sagemaker_backend.describe_training_job(name)
        job = self.sagemaker_backend.training_jobs[name]
        keep_alive = (self._get_param("ResourceConfig") or {}).get("KeepAlivePeriodInSeconds")
        if keep_alive is not None:
            job.resource_config = {**job.resource_config, "KeepAlivePeriodInSeconds": keep_alive}
        return ActionResult({"TrainingJobArn": job.arn})

    patch = override_responses({
        "create_training_job": create_training_job,
        "stop_training_job": stop_training_job,
        "update_training_job": update_training_job,
    })
    jobs.restore = patch.restore
    logger.info("training jobs run under %s (%s)", jobs.jobs_dir, "mount namespace" if use_namespace else "directly")
    return jobs

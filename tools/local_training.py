"""Training jobs that really run behind the local AWS endpoint, the way SageMaker runs them.

moto 5.2.5 stores a CreateTrainingJob request, reports the job `Completed` at once and drops parts of the
request (Environment, RetryStrategy, the metric definitions). `install()` patches its SageMaker backend in
the endpoint's own process (`local_aws.py serve`) so that a training job:

1. reports `InProgress` and gets a folder with the layout SageMaker gives the container under /opt/ml:
   input/config/{hyperparameters,inputdataconfig,resourceconfig}.json, input/data/<channel>/ downloaded
   from S3 (SDK 3's `code` and `sm_drivers` channels included), model/, output/data/, and the checkpoint
   (filled from the CheckpointConfig S3 URI) and TensorBoard folders when the job asks for them;
2. runs the job's own container command (ContainerEntrypoint + ContainerArguments; SDK 3's ModelTrainer
   starts sm_train.sh from the sm_drivers channel). With root rights the command runs in a private mount
   namespace where that folder is bound onto /opt/ml (`unshare --mount --net`, so the job also has no
   network, as with network isolation). Where unshare is not permitted, the job's log says so and the
   runner falls back to running the entry script directly, with the SM_* variables that the SDK's
   drivers would export pointing into the folder (and CHECKPOINT_DIR at its checkpoint folder). Either
   way the job's Python is this environment's interpreter: its folder comes first on PATH;
3. streams the output, line by line, to CloudWatch Logs (group /aws/sagemaker/TrainingJobs, stream
   `<job>/algo-1-<timestamp>`, one per attempt) and evaluates the metric definitions over it;
4. syncs the checkpoint and TensorBoard folders to S3 while it runs and once more at the end;
5. ends `Completed` (model/ as model.tar.gz and output/data as output.tar.gz in S3), `Failed` (FailureReason
   from output/failure and the log's last error) or `Stopped` (StopTrainingJob, or MaxRuntimeInSeconds:
   SIGTERM to the training process, SIGKILL to whatever is left after SageMaker's grace period of 120 s).
   An attempt ended by SIGKILL from outside (what a lost or reclaimed instance looks like) is retried when
   the job has a RetryStrategy; the new attempt starts from the checkpoints that reached S3.

The mount namespace needs an empty /opt/ml to mount onto: the runner creates it once, as the images have it.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import ctypes
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path, PurePosixPath
from typing import IO, Any

import boto3
import moto
from botocore.exceptions import ClientError

MOTO_VERSION = "5.2.5"
if moto.__version__ != MOTO_VERSION:
    raise RuntimeError(
        f"tools/local_training.py patches the SageMaker backend of moto {MOTO_VERSION}, but moto "
        f"{moto.__version__} is installed: install moto[server]=={MOTO_VERSION} (environment.yml) or update the patch."
    )

from moto.core.responses import ActionResult, EmptyResult  # noqa: E402 - only for the version checked above
from moto.core.utils import utcnow  # noqa: E402
from moto.sagemaker.exceptions import ValidationError  # noqa: E402
from moto.sagemaker.models import FakeTrainingJob  # noqa: E402
from moto.sagemaker.responses import SageMakerResponse  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "code"))  # code/ is a folder of modules
import mnist_s3  # noqa: E402

logger = logging.getLogger("local_training")

CONTAINER_ROOT = PurePosixPath("/opt/ml")
DEFAULT_CHECKPOINT_PATH = "/opt/ml/checkpoints"
DEFAULT_TENSORBOARD_PATH = "/opt/ml/output/tensorboard"
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
HOST = "algo-1"
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
STOP_GRACE_S = 120.0  # SageMaker's time between SIGTERM and SIGKILL when a job is stopped
SYNC_INTERVAL_S = 1.0
FAILURE_REASON_LIMIT = 1024  # DescribeTrainingJob reports the first 1024 characters of output/failure
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
# A Python exception line, e.g. "ValueError: bad value" or "torch.OutOfMemoryError: CUDA out of memory".
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt)(?::.*)?$")


MetricRegex = tuple[str, re.Pattern[str]]  # a metric's name and the regex whose first group is its value


class JobError(RuntimeError):
    """A job that cannot run as requested; the message is its FailureReason, e.g. `ClientError: ...`."""


@dataclasses.dataclass(frozen=True)
class AttemptLog:
    """Where an attempt's output goes: its CloudWatch stream, and a copy beside the attempt's folder."""

    stream: str
    copy: IO[str]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How an attempt or a job ended: Completed, Failed, Stopped or Interrupted (retried when allowed)."""

    status: str
    secondary: str
    message: str
    reason: str | None = None


def split_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/key/prefix` into bucket and key prefix; a malformed URI fails the job."""
    try:
        return mnist_s3.split_s3_uri(uri)
    except ValueError as error:
        raise JobError(f"ClientError: {error}") from error


def killed_by_sigkill(returncode: int) -> bool:
    """Whether an attempt's exit status says that SIGKILL ended it, at whichever level it was sent.

    -9: the container's main process was killed; 137 (128 + 9): a shell's child was; 247 (256 - 9): the
    process under SDK 3's script driver was, which exits with the child's negative status.
    """
    return returncode in (-signal.SIGKILL, 128 + signal.SIGKILL, 256 - signal.SIGKILL)


def script_error(log_tail: list[str], failure_text: str) -> str | None:
    """The last exception line of the log that output/failure does not already contain.

    SDK 3's driver writes its own traceback (a CalledProcessError) to output/failure; the script's
    error, the one a reader needs, is the exception line printed before it.
    """
    for line in reversed(log_tail):
        line = line.strip()
        if EXCEPTION_LINE.match(line) and line not in failure_text:
            return line
    return None


def compile_metric_definitions(request: dict[str, Any]) -> list[MetricRegex]:
    """The job's metric definitions as compiled regexes (SageMaker takes each regex's first group)."""
    compiled = []
    for definition in request["AlgorithmSpecification"].get("MetricDefinitions") or []:
        try:
            compiled.append((definition["Name"], re.compile(definition["Regex"])))
        except re.error as error:
            raise ValidationError(f"Metric definition {definition['Name']!r}: invalid regex: {error}") from error
    return compiled


def namespace_permitted() -> bool:
    """Whether this process may give a job a private mount and network namespace (root, CAP_SYS_ADMIN).

    When it may, the empty mount point /opt/ml is created (once, as the images have it).
    """
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--net", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return False
    try:
        Path(CONTAINER_ROOT).mkdir(parents=True, exist_ok=True)
    except PermissionError:
        return False
    return True


def adopt_orphans() -> None:
    """Make this process the reaper of the jobs' orphaned processes, so that their end is seen at once.

    When a job's shell or driver ends before the processes it started (killed, or crashed), those are
    reparented; here to this process, which reaps them. A zombie left to another reaper would still count
    as a live process of the job until the grace period's SIGKILL.
    """
    if sys.platform != "linux":
        return
    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def gpu_count() -> int:
    """GPUs that `nvidia-smi` lists, as SDK 3's environment driver counts them."""
    try:
        listing = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


_log_group_lock = threading.Lock()


def signal_group(pgid: int, signum: int) -> None:
    """Send a signal to every process of a job's process group, if any is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def working_processes(pgid: int) -> list[int]:
    """The group's processes that have no child of their own: the ones doing the work below shells and drivers.

    SageMaker "sends the algorithm the SIGTERM signal": here the training script, not the shell and the
    SDK's driver above it, which end when it ends and keep forwarding its last lines to the log meanwhile.
    Read from /proc; elsewhere the group leader stands for the job (the direct fallback runs the script itself).
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return [pgid]
    parent_of = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # /proc/<pid>/stat: "pid (command) state ppid pgrp ..."; the command may contain spaces and brackets.
            state, ppid, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):  # the process ended while being read
            continue
        if int(group) == pgid and state != "Z":
            parent_of[int(entry.name)] = int(ppid)
    parents = set(parent_of.values())
    return [pid for pid in parent_of if pid not in parents]


def group_alive(pgid: int) -> bool:
    """Reap the group's exited orphans (adopted by this process), then say whether any process is left."""
    try:
        while os.waitpid(-pgid, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for_group(pgid: int, kill_at: float) -> None:
    """Wait until every process of the group has ended, sending SIGKILL to what is left at `kill_at`."""
    killed = False
    while group_alive(pgid):
        if not killed and time.monotonic() >= kill_at:
            signal_group(pgid, signal.SIGKILL)
            killed = True
        time.sleep(0.05)


class FolderSync:
    """Upload a folder's new and changed files to an S3 prefix, as SageMaker syncs checkpoints and TensorBoard logs."""

    def __init__(self, s3: Any, folder: Path, uri: str) -> None:
        self.s3, self.folder = s3, folder
        self.bucket, prefix = split_s3_uri(uri)
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        self.seen: dict[str, tuple[int, int]] = {}
        self.uploaded: dict[str, tuple[int, int]] = {}

    def push(self, final: bool = False) -> None:
        """Upload what changed; while the job runs, only files unchanged since the last push (never half-written)."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.rglob("*")):
            try:
                if not path.is_file():
                    continue
                stat = path.stat()
            except FileNotFoundError:  # replaced or removed by the job since the listing
                continue
            relative = path.relative_to(self.folder).as_posix()
            signature = (stat.st_size, stat.st_mtime_ns)
            if self.uploaded.get(relative) != signature and (final or self.seen.get(relative) == signature):
                self.s3.upload_file(str(path), self.bucket, self.prefix + relative)
                self.uploaded[relative] = signature
            self.seen[relative] = signature


class TrainingJobRun(threading.Thread):
    """One training job: its attempts, from downloading the channels to uploading the model."""

    def __init__(
        self,
        job: FakeTrainingJob,
        request: dict[str, Any],
        metric_regexes: list[MetricRegex],
        jobs_dir: Path,
        use_namespace: bool,
    ) -> None:
        super().__init__(name=f"training-job {request['TrainingJobName']}", daemon=True)
        self.job, self.request, self.use_namespace = job, request, use_namespace
        self.job_name: str = request["TrainingJobName"]
        self.job_dir = jobs_dir / self.job_name
        self.stop_requested = threading.Event()
        self.process: subprocess.Popen | None = None
        self.process_lock = threading.Lock()
        self.sigterm_sent_at: float | None = None
        self.metrics: dict[str, dict[str, Any]] = {}
        self.log_tail: collections.deque[str] = collections.deque(maxlen=200)
        self.container_seconds = 0.0
        self.last_stream_second = 0
        session = boto3.session.Session()  # one per job: boto3's default session is not shared across threads
        self.region = session.region_name
        self.s3, self.logs = session.client("s3"), session.client("logs")
        self.metric_regexes = metric_regexes
        self.record_request()

    # --- what DescribeTrainingJob reports ---------------------------------------------------------------------

    def record_request(self) -> None:
        """Keep what moto dropped and start the job `InProgress`; every field exists before the first describe."""
        job = self.job
        job.algorithm_specification = self.request["AlgorithmSpecification"]  # moto replaced MetricDefinitions
        job.environment = self.request.get("Environment") or {}
        job.retry_strategy = self.request.get("RetryStrategy")
        job.failure_reason = None
        job.final_metric_data_list = None
        job.training_start_time = None
        job.training_end_time = None
        job.training_time_in_seconds = None
        job.billable_time_in_seconds = None
        job.secondary_status_transitions = []
        job.training_job_status = "InProgress"
        self.set_secondary("Starting", "Preparing the instances for training")

    def set_secondary(self, status: str, message: str, final: bool = False) -> None:
        """Move the job to a new secondary status (new lists, so a concurrent describe never sees one change)."""
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

    # --- the job --------------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            outcome = self.run_attempts()
        except JobError as error:
            outcome = Outcome("Failed", "Failed", "Training job failed", str(error))
        except Exception as error:  # a fault of the runner itself fails the job loudly, as an internal error
            logger.exception("training job %s: the local runner failed", self.job_name)
            reason = f"InternalServerError: local runner: {error!r}"
            outcome = Outcome("Failed", "Failed", "Training job failed", reason)
        self.finish(outcome)

    def run_attempts(self) -> Outcome:
        """Run attempts until one is not interrupted or the retry strategy allows no more."""
        retries = int((self.request.get("RetryStrategy") or {}).get("MaximumRetryAttempts", 0))
        for attempt in range(1, retries + 2):
            outcome = self.run_attempt(attempt)
            if outcome.status != "Interrupted":
                return outcome
            if attempt <= retries:
                self.set_secondary("Restarting", f"Attempt {attempt} was interrupted; restarting from S3 checkpoints")
        return Outcome(
            "Failed", "Failed", "Training job failed",
            f"InternalServerError: the training instance was lost (SIGKILL) in each of {retries + 1} attempt(s)",
        )

    def run_attempt(self, attempt: int) -> Outcome:
        """Build a fresh /opt/ml, run the container command in it, and sync or upload what it produced."""
        ml_dir = self.job_dir / f"attempt-{attempt}"
        self.set_secondary("Downloading", "Downloading input data")
        self.prepare(ml_dir)
        if self.stop_requested.is_set():
            return Outcome("Stopped", "Stopped", "Training job stopped before it started")
        if self.job.training_start_time is None:
            self.job.training_start_time = utcnow()
        self.set_secondary("Training", "Training image download completed. Training in progress.")
        syncs = self.folder_syncs(ml_dir)
        returncode, stopped_why = self.run_container(ml_dir, syncs)
        if stopped_why is None and returncode != 0 and killed_by_sigkill(returncode):
            return Outcome("Interrupted", "Interrupted", f"Attempt {attempt} was killed (exit status {returncode})")
        for sync in syncs:
            sync.push(final=True)
        if stopped_why is None and returncode != 0:
            return Outcome("Failed", "Failed", "Training job failed", self.failure_reason(ml_dir, returncode))
        self.set_secondary("Uploading", "Uploading generated training model")
        self.upload_outputs(ml_dir)
        if stopped_why == "MaxRuntimeExceeded":
            return Outcome("Stopped", "MaxRuntimeExceeded", "Training job stopped: it exceeded MaxRuntimeInSeconds")
        if stopped_why == "Stopped":
            return Outcome("Stopped", "Stopped", "Training job stopped by StopTrainingJob")
        return Outcome("Completed", "Completed", "Training job completed")

    def finish(self, outcome: Outcome) -> None:
        """Report the end: metrics, times and reason first, the status last (clients poll for it)."""
        job = self.job
        job.final_metric_data_list = [{"MetricName": name, **value} for name, value in self.metrics.items()]
        seconds = max(1, math.ceil(self.container_seconds))
        job.training_time_in_seconds = seconds
        job.billable_time_in_seconds = seconds  # no spot discount is modelled: every second is billable
        job.training_end_time = utcnow()
        if outcome.status == "Failed":
            job.failure_reason = outcome.reason
            job.model_artifacts = None  # SageMaker reports no model for a failed job
        self.set_secondary(outcome.secondary, outcome.message, final=True)
        job.training_job_status = outcome.status
        logger.info("training job %s: %s %s", self.job_name, outcome.status, outcome.reason or "")

    def request_stop(self) -> None:
        """StopTrainingJob: SIGTERM to the training process now; the run loop sends SIGKILL after the grace period."""
        if self.job.training_job_status != "InProgress":
            raise ValidationError(
                f"The request was rejected because the training job is in status {self.job.training_job_status}."
            )
        self.set_secondary("Stopping", "Stopping the training job")
        self.job.training_job_status = "Stopping"
        self.stop_requested.set()
        self.terminate()

    def terminate(self) -> None:
        """Send SIGTERM, once per attempt, to the working processes of the running container."""
        with self.process_lock:
            if self.process is not None and self.sigterm_sent_at is None:
                for pid in working_processes(self.process.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                self.sigterm_sent_at = time.monotonic()

    def kill(self) -> None:
        """End every process of the job at once (the endpoint is shutting down)."""
        self.stop_requested.set()
        with self.process_lock:
            if self.process is not None:
                signal_group(self.process.pid, signal.SIGKILL)

    # --- the container's folders ----------------------------------------------------------------------------

    def local_path(self, ml_dir: Path, container_path: str) -> Path:
        """The folder under ml_dir that stands for a path under /opt/ml in the container."""
        path = PurePosixPath(container_path)
        if not path.is_relative_to(CONTAINER_ROOT):
            raise JobError(f"ClientError: {container_path!r}: the local runner maps only paths under {CONTAINER_ROOT}")
        return ml_dir / path.relative_to(CONTAINER_ROOT)

    def checkpoint_dir(self, ml_dir: Path) -> Path | None:
        config = self.request.get("CheckpointConfig")
        return self.local_path(ml_dir, config.get("LocalPath") or DEFAULT_CHECKPOINT_PATH) if config else None

    def tensorboard_dir(self, ml_dir: Path) -> Path | None:
        config = self.request.get("TensorBoardOutputConfig")
        return self.local_path(ml_dir, config.get("LocalPath") or DEFAULT_TENSORBOARD_PATH) if config else None

    def folder_syncs(self, ml_dir: Path) -> list[FolderSync]:
        """Checkpoints go to their S3 URI; TensorBoard logs to `<S3OutputPath>/<job>/tensorboard-output/`."""
        syncs = []
        if checkpoints := self.checkpoint_dir(ml_dir):
            syncs.append(FolderSync(self.s3, checkpoints, self.request["CheckpointConfig"]["S3Uri"]))
        if tensorboard := self.tensorboard_dir(ml_dir):
            base = self.request["TensorBoardOutputConfig"]["S3OutputPath"].rstrip("/")
            syncs.append(FolderSync(self.s3, tensorboard, f"{base}/{self.job_name}/tensorboard-output/"))
        return syncs

    def prepare(self, ml_dir: Path) -> None:
        """Write the config files and download the channels and the checkpoints, as SageMaker does before training."""
        config_dir = ml_dir / "input" / "config"
        for folder in (config_dir, ml_dir / "model", ml_dir / "output" / "data"):
            folder.mkdir(parents=True, exist_ok=True)
        channels = self.request.get("InputDataConfig") or []
        instance_type = self.request["ResourceConfig"]["InstanceType"]
        (config_dir / "hyperparameters.json").write_text(json.dumps(self.request.get("HyperParameters") or {}))
        (config_dir / "inputdataconfig.json").write_text(
            json.dumps({channel["ChannelName"]: self.channel_config(channel) for channel in channels})
        )
        (config_dir / "resourceconfig.json").write_text(json.dumps({
            "current_host": HOST,
            "current_instance_type": instance_type,
            "current_group_name": "homogeneousCluster",
            "hosts": [HOST],
            "instance_groups": [
                {"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": [HOST]}
            ],
            "network_interface_name": "eth0",
        }))
        for channel in channels:
            self.download_channel(channel, ml_dir / "input" / "data" / channel["ChannelName"])
        if checkpoints := self.checkpoint_dir(ml_dir):
            checkpoints.mkdir(parents=True, exist_ok=True)
            self.download_prefix(self.request["CheckpointConfig"]["S3Uri"], checkpoints)
        if tensorboard := self.tensorboard_dir(ml_dir):
            tensorboard.mkdir(parents=True, exist_ok=True)

    def channel_config(self, channel: dict[str, Any]) -> dict[str, str]:
        """A channel's entry in inputdataconfig.json."""
        source = channel["DataSource"].get("S3DataSource", {})
        default_mode = self.request["AlgorithmSpecification"]["TrainingInputMode"]
        return {
            "TrainingInputMode": channel.get("InputMode") or default_mode,
            "S3DistributionType": source.get("S3DataDistributionType", "FullyReplicated"),
            "RecordWrapperType": channel.get("RecordWrapperType", "None"),
            **({"ContentType": channel["ContentType"]} if "ContentType" in channel else {}),
        }

    def download_channel(self, channel: dict[str, Any], target: Path) -> None:
        """Download an S3Prefix channel in File mode; anything else is refused with SageMaker's kind of error."""
        source = channel["DataSource"].get("S3DataSource")
        if source is None or source.get("S3DataType") != "S3Prefix" or channel.get("CompressionType", "None") != "None":
            name = channel["ChannelName"]
            raise JobError(f"ClientError: channel {name!r}: the local runner reads only uncompressed S3Prefix channels")
        target.mkdir(parents=True, exist_ok=True)
        if self.download_prefix(source["S3Uri"], target) == 0:
            raise JobError(f'ClientError: No S3 objects found under S3 URL "{source["S3Uri"]}" of the input channel')

    def download_prefix(self, uri: str, target: Path) -> int:
        """Download every object under an S3 prefix into target (keys relative to the prefix); return the count."""
        bucket, prefix = split_s3_uri(uri)
        count = 0
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    if item["Key"].endswith("/"):
                        continue
                    relative = item["Key"][len(prefix):].lstrip("/") or PurePosixPath(item["Key"]).name
                    destination = (target / relative).resolve()
                    if not destination.is_relative_to(target.resolve()):
                        raise JobError(f"ClientError: S3 key {item['Key']!r} would land outside {target}")
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    self.s3.download_file(bucket, item["Key"], str(destination))
                    count += 1
        except ClientError as error:
            raise JobError(f"ClientError: Data download failed: {uri}: {error}") from error
        return count

    def upload_outputs(self, ml_dir: Path) -> None:
        """model/ becomes model.tar.gz at ModelArtifacts; output/data becomes output.tar.gz beside it."""
        if self.request["OutputDataConfig"].get("CompressionType", "GZIP") != "GZIP":
            raise JobError("ClientError: the local runner packs the model only as model.tar.gz (CompressionType GZIP)")
        model_uri = self.job.model_artifacts["S3ModelArtifacts"]
        output_uri = model_uri.removesuffix("model.tar.gz") + "output.tar.gz"
        for folder, uri in ((ml_dir / "model", model_uri), (ml_dir / "output" / "data", output_uri)):
            archive = ml_dir / PurePosixPath(uri).name
            with tarfile.open(archive, "w:gz") as tar:
                for child in sorted(folder.iterdir()):
                    tar.add(child, arcname=child.name)
            bucket, key = split_s3_uri(uri)
            self.s3.upload_file(str(archive), bucket, key)

    def failure_reason(self, ml_dir: Path, returncode: int) -> str:
        """`AlgorithmError:` with the script's error and output/failure, cut to SageMaker's 1024 characters."""
        failure_file = ml_dir / "output" / "failure"
        written = failure_file.read_text(errors="replace").strip() if failure_file.is_file() else ""
        parts = [part for part in (script_error(list(self.log_tail), written), written) if part]
        details = "\n".join(parts) or f"the training process exited with status {returncode}; see the job's log"
        return f"AlgorithmError: {details}"[:FAILURE_REASON_LIMIT]

    # --- the container command ------------------------------------------------------------------------------

    def container_environment(self) -> dict[str, str]:
        """A clean environment, as a container has: this Python first on PATH, pip offline, the job's Environment."""
        return {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), *SYSTEM_PATH]),
            "HOME": str(Path.home()),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",  # as in SageMaker's images: lines reach the log when printed
            "PYTHONDONTWRITEBYTECODE": "1",
            # Offline, requirements.txt must already be satisfied by this environment: pip never goes out.
            "PIP_NO_INDEX": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "TRAINING_JOB_NAME": self.job_name,
            "TRAINING_JOB_ARN": self.job.arn,
            **(self.request.get("Environment") or {}),
        }

    def container_command(self, ml_dir: Path) -> tuple[list[str], dict[str, str], Path]:
        """The command, environment and working folder of the job's container."""
        spec = self.request["AlgorithmSpecification"]
        entrypoint, arguments = spec.get("ContainerEntrypoint"), spec.get("ContainerArguments") or []
        if not entrypoint:
            raise JobError("ClientError: the local runner needs a ContainerEntrypoint (SourceCode jobs have one)")
        environment = self.container_environment()
        if self.use_namespace:
            bind = 'mount --bind "$1" /opt/ml && shift && exec "$@"'
            command = ["unshare", "--mount", "--net", "/bin/sh", "-c", bind, "sh", str(ml_dir), *entrypoint, *arguments]
            return command, environment, ml_dir
        return self.direct_command(ml_dir, environment)

    def direct_command(self, ml_dir: Path, environment: dict[str, str]) -> tuple[list[str], dict[str, str], Path]:
        """Without a namespace: run the entry script itself, with the SM_* variables SDK 3's drivers export."""
        source_code_file = ml_dir / "input" / "data" / "sm_drivers" / "sourcecode.json"
        source_code = json.loads(source_code_file.read_text()) if source_code_file.is_file() else {}
        entry_script = source_code.get("entry_script") or ""
        if not entry_script.endswith(".py"):
            raise JobError("ClientError: without a mount namespace the local runner runs only entry_script='*.py' jobs")
        code_dir = ml_dir / "input" / "data" / "code"
        channels = [channel["ChannelName"] for channel in self.request.get("InputDataConfig") or []]
        hyperparameters = self.request.get("HyperParameters") or {}
        environment.update({
            "SM_MODEL_DIR": str(ml_dir / "model"),
            "SM_INPUT_DIR": str(ml_dir / "input"),
            "SM_INPUT_DATA_DIR": str(ml_dir / "input" / "data"),
            "SM_INPUT_CONFIG_DIR": str(ml_dir / "input" / "config"),
            "SM_OUTPUT_DIR": str(ml_dir / "output"),
            "SM_OUTPUT_FAILURE": str(ml_dir / "output" / "failure"),
            "SM_OUTPUT_DATA_DIR": str(ml_dir / "output" / "data"),
            "SM_CHANNELS": json.dumps(channels),
            **{f"SM_CHANNEL_{name.upper()}": str(ml_dir / "input" / "data" / name) for name in channels},
            "SM_HPS": json.dumps(hyperparameters),
            **{f"SM_HP_{name.replace('-', '_').upper()}": value for name, value in hyperparameters.items()},
            "SM_CURRENT_HOST": HOST,
            "SM_HOSTS": json.dumps([HOST]),
            "SM_CURRENT_INSTANCE_TYPE": self.request["ResourceConfig"]["InstanceType"],
            "SM_NUM_CPUS": str(os.cpu_count()),
            "SM_NUM_GPUS": str(gpu_count()),
            "SM_SOURCE_DIR": str(code_dir),
            "SM_ENTRY_SCRIPT": entry_script,
        })
        if checkpoints := self.checkpoint_dir(ml_dir):
            environment["CHECKPOINT_DIR"] = str(checkpoints)  # /opt/ml/checkpoints does not exist out here
        arguments = [part for name, value in hyperparameters.items() for part in (f"--{name}", value)]
        return [sys.executable, entry_script, *arguments], environment, code_dir

    def run_container(self, ml_dir: Path, syncs: list[FolderSync]) -> tuple[int, str | None]:
        """Run the container command; return its exit status and why it was stopped (None when it was not)."""
        command, environment, cwd = self.container_command(ml_dir)
        attempt_log = self.open_log(ml_dir)
        if not self.use_namespace:
            self.log(attempt_log, "[local runner] no private mount namespace (unshare not permitted): running the "
                                  f"entry script directly with SM_* variables under {ml_dir}")
        runtime_limit = (self.request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
        started = time.monotonic()
        with self.process_lock:
            if self.stop_requested.is_set():
                attempt_log.copy.close()
                return 0, "Stopped"
            self.sigterm_sent_at = None
            self.process = subprocess.Popen(
                command, cwd=cwd, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,  # its own process group: the job's processes
            )
        process = self.process
        reader = threading.Thread(target=self.pump_output, args=(process.stdout, attempt_log), daemon=True)
        reader.start()
        stopped_why = None
        while process.poll() is None:
            for sync in syncs:
                sync.push()
            if stopped_why is None and self.stop_requested.is_set():
                stopped_why = "Stopped"
            elif stopped_why is None and runtime_limit and time.monotonic() - started > runtime_limit:
                stopped_why = "MaxRuntimeExceeded"
            if stopped_why:
                self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=SYNC_INTERVAL_S)
        if stopped_why is None and self.stop_requested.is_set():
            stopped_why = "Stopped"
        # The main process has ended. A stopped job's last processes get the rest of the grace period to save
        # a checkpoint; otherwise the container is gone and so is whatever it left running.
        kill_at = self.sigterm_sent_at + STOP_GRACE_S if stopped_why and self.sigterm_sent_at else time.monotonic()
        wait_for_group(process.pid, kill_at)
        reader.join()
        attempt_log.copy.close()
        self.container_seconds += time.monotonic() - started
        with self.process_lock:
            self.process = None
        return process.returncode, stopped_why

    # --- the log --------------------------------------------------------------------------------------------

    def open_log(self, ml_dir: Path) -> AttemptLog:
        """Create this attempt's stream `<job>/algo-1-<epoch seconds>` in /aws/sagemaker/TrainingJobs."""
        with _log_group_lock:
            try:
                self.logs.create_log_group(logGroupName=LOG_GROUP)
            except self.logs.exceptions.ResourceAlreadyExistsException:
                pass
        self.last_stream_second = max(int(time.time()), self.last_stream_second + 1)
        stream = f"{self.job_name}/{HOST}-{self.last_stream_second}"
        self.logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
        return AttemptLog(stream, open(ml_dir.with_suffix(".log"), "w"))

    def log(self, attempt_log: AttemptLog, line: str) -> None:
        """Send one line to the attempt's log stream (and its copy) and match it against the metric definitions."""
        attempt_log.copy.write(line + "\n")
        attempt_log.copy.flush()
        self.log_tail.append(line)
        timestamp_ms = int(time.time() * 1000)
        for name, regex in self.metric_regexes:
            match = regex.search(line)
            if match and match.groups():
                try:
                    value = float(match.group(1))
                except ValueError:
                    continue
                self.metrics[name] = {"Value": value, "Timestamp": utcnow()}
        if line.strip():  # CloudWatch refuses empty messages
            self.logs.put_log_events(
                logGroupName=LOG_GROUP,
                logStreamName=attempt_log.stream,
                logEvents=[{"timestamp": timestamp_ms, "message": line}],
            )

    def pump_output(self, pipe: IO[bytes], attempt_log: AttemptLog) -> None:
        """Forward the container's output to the log, line by line as it is printed."""
        with pipe:
            for raw in iter(pipe.readline, b""):
                self.log(attempt_log, raw.decode("utf-8", errors="replace").rstrip("\r\n"))


class TrainingJobs:
    """The jobs of this endpoint: where they run and how (mount namespace or directly)."""

    def __init__(self, jobs_dir: Path, use_namespace: bool) -> None:
        self.jobs_dir, self.use_namespace = jobs_dir, use_namespace
        self.runs: dict[str, TrainingJobRun] = {}

    def start(self, job: FakeTrainingJob, request: dict[str, Any], metric_regexes: list[MetricRegex]) -> None:
        """Start the job's run in its own thread; the job is `InProgress` when this returns."""
        run = TrainingJobRun(job, request, metric_regexes, self.jobs_dir, self.use_namespace)
        self.runs[run.job_name] = run
        run.start()

    def stop(self, name: str) -> None:
        run = self.runs.get(name)
        if run is None:
            raise ValidationError(f"Training job {name!r} was not started by this endpoint.")
        run.request_stop()

    def shutdown(self) -> None:
        """Kill what still runs; the endpoint is going away."""
        for run in self.runs.values():
            run.kill()
        for run in self.runs.values():
            run.join(timeout=10)


def install(state_dir: Path) -> TrainingJobs:
    """Patch moto's SageMaker responses: CreateTrainingJob runs the job, StopTrainingJob stops it, UpdateTrainingJob
    records a warm pool's keep-alive period."""
    use_namespace = namespace_permitted()
    if use_namespace:
        adopt_orphans()
    else:
        logger.warning("unshare is not permitted: training jobs run their entry script directly (local_training.py)")
    jobs = TrainingJobs(state_dir / "training-jobs", use_namespace)
    original_create = SageMakerResponse.create_training_job

    def create_training_job(self: SageMakerResponse) -> ActionResult:
        request = {field: copy.deepcopy(self._get_param(field)) for field in REQUEST_FIELDS}
        metric_regexes = compile_metric_definitions(request)  # a bad regex refuses the request, as SageMaker does
        result = original_create(self)
        jobs.start(self.sagemaker_backend.training_jobs[request["TrainingJobName"]], request, metric_regexes)
        return result

    def stop_training_job(self: SageMakerResponse) -> EmptyResult:
        name = self._get_param("TrainingJobName")
        self.sagemaker_backend.describe_training_job(name)  # an unknown job is a ValidationException
        jobs.stop(name)
        return EmptyResult()

    def update_training_job(self: SageMakerResponse) -> ActionResult:
        name = self._get_param("TrainingJobName")
        self.sagemaker_backend.describe_training_job(name)
        job = self.sagemaker_backend.training_jobs[name]
        keep_alive = (self._get_param("ResourceConfig") or {}).get("KeepAlivePeriodInSeconds")
        if keep_alive is not None:
            job.resource_config = {**job.resource_config, "KeepAlivePeriodInSeconds": keep_alive}
        return ActionResult({"TrainingJobArn": job.arn})

    SageMakerResponse.create_training_job = create_training_job
    SageMakerResponse.stop_training_job = stop_training_job
    SageMakerResponse.update_training_job = update_training_job
    logger.info("training jobs run under %s (%s)", jobs.jobs_dir, "mount namespace" if use_namespace else "directly")
    return jobs


"""What a job tells about itself through CloudWatch: its log streams, the metrics read from them, why it failed.

- Each attempt of a training job writes one stream in the group /aws/sagemaker/TrainingJobs, named
  `<job>/algo-1-<epoch seconds>` (one per host and attempt), line by line as the container prints;
  a copy of each stream is kept as a file beside the attempt's folder, for a reader of the job folder.
- The job's metric definitions are regexes evaluated over every line; the first group of a match is the
  value, and the last value of each metric is what DescribeTrainingJob reports (FinalMetricDataList).
- A failed job's FailureReason is `AlgorithmError: ` with the script's last exception line and what it
  wrote to output/failure, cut to SageMaker's 1024 characters.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from .moto_patch import utcnow

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
FAILURE_REASON_LIMIT = 1024  # DescribeTrainingJob reports the first 1024 characters of output/failure
TAIL_LINES = 200  # enough to find the script's exception below SDK 3's driver's own lines
# A Python exception line, e.g. "ValueError: bad value" or "torch.OutOfMemoryError: CUDA out of memory", or
# argparse refusing the command line, e.g. "train.py: error: hyperparameter lr=-1.0 is out of range".
EXCEPTION_LINE = re.compile(
    r"^(?:(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt)(?::.*)?|[\w.-]+: error: .+)$"
)

MetricRegex = tuple[str, re.Pattern[str]]  # a metric's name and the regex whose first group is its value

_log_group_lock = threading.Lock()  # jobs starting together create the group once


def compile_metric_definitions(definitions: Iterable[Mapping[str, str]]) -> list[MetricRegex]:
    """Metric definitions ({"Name", "Regex"}) as compiled regexes; a bad regex is a ValueError naming the metric."""
    compiled = []
    for definition in definitions:
        try:
            compiled.append((definition["Name"], re.compile(definition["Regex"])))
        except re.error as error:
            raise ValueError(f"Metric definition {definition['Name']!r}: invalid regex: {error}") from error
    return compiled


def metric_value(regex: re.Pattern[str], line: str) -> float | None:
    """The number that the regex's first group captures in the line, or None (no match, no group, not a number)."""
    match = regex.search(line)
    if match is None or not match.groups() or match.group(1) is None:
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


def script_error(log_tail: Iterable[str], failure_text: str) -> str | None:
    """The last exception line of the log that output/failure does not already contain.

    SDK 3's driver writes its own traceback (a CalledProcessError) to output/failure; the script's
    error, the one a reader needs, is the exception line printed before it.
    """
    for line in reversed(list(log_tail)):
        line = line.strip()
        if EXCEPTION_LINE.match(line) and line not in failure_text:
            return line
    return None


def failure_reason(failure_file: Path, log_tail: Iterable[str], returncode: int) -> str:
    """`AlgorithmError:` with the script's error and output/failure, cut to SageMaker's 1024 characters."""
    written = failure_file.read_text(errors="replace").strip() if failure_file.is_file() else ""
    parts = [part for part in (script_error(log_tail, written), written) if part]
    details = "\n".join(parts) or f"the training process exited with status {returncode}; see the job's log"
    return f"AlgorithmError: {details}"[:FAILURE_REASON_LIMIT]


class JobLog:
    """A job's log: one CloudWatch stream per attempt (and its copy in a file), metrics and the tail of every line."""

    def __init__(self, logs: Any, job_name: str, metric_regexes: list[MetricRegex], host: str = "algo-1") -> None:
        self.logs, self.job_name, self.host = logs, job_name, host
        self.metric_regexes = metric_regexes
        self.metrics: dict[str, dict[str, Any]] = {}
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.stream: str | None = None
        self.copy: IO[str] | None = None
        self.last_stream_second = 0

    def start_attempt(self, copy_path: Path) -> str:
        """Create this attempt's stream `<job>/<host>-<epoch seconds>` (a later second than the last one); return it."""
        with _log_group_lock:
            try:
                self.logs.create_log_group(logGroupName=LOG_GROUP)
            except self.logs.exceptions.ResourceAlreadyExistsException:
                pass
        self.last_stream_second = max(int(time.time()), self.last_stream_second + 1)
        self.stream = f"{self.job_name}/{self.host}-{self.last_stream_second}"
        self.logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=self.stream)
        self.copy = open(copy_path, "w")
        return self.stream

    def end_attempt(self) -> None:
        """Close the attempt's copy; its stream stays in CloudWatch."""
        if self.copy is not None:
            self.copy.close()
        self.copy = None

    def write(self, line: str) -> None:
        """Send one line to the attempt's stream (and its copy) and match it against the metric definitions."""
        if self.stream is None or self.copy is None:
            raise RuntimeError(f"training job {self.job_name}: a log line arrived outside an attempt: {line!r}")
        self.copy.write(line + "\n")
        self.copy.flush()
        self.tail.append(line)
        timestamp_ms = int(time.time() * 1000)
        for name, regex in self.metric_regexes:
            value = metric_value(regex, line)
            if value is not None:
                self.metrics[name] = {"Value": value, "Timestamp": utcnow()}
        if line.strip():  # CloudWatch refuses empty messages
            self.logs.put_log_events(
                logGroupName=LOG_GROUP,
                logStreamName=self.stream,
                logEvents=[{"timestamp": timestamp_ms, "message": line}],
            )

    def pump(self, pipe: IO[bytes]) -> None:
        """Forward a container's output to the log, line by line as it is printed, until the pipe closes."""
        with pipe:
            for raw in iter(pipe.readline, b""):
                self.write(raw.decode("utf-8", errors="replace").rstrip("\r\n"))

    def final_metric_data(self) -> list[dict[str, Any]]:
        """DescribeTrainingJob's FinalMetricDataList: the last value of each metric that appeared."""
        return [{"MetricName": name, **value} for name, value in self.metrics.items()]

"""How the local SageMaker runs a container's command and ends it, as SageMaker ends a container.

- A container's command runs as its own process group, so that everything it starts (a shell, SDK 3's
  driver, the script, the script's workers) can be signalled and waited for together.
- With root rights it runs in a private mount namespace where the job's folder is bound onto /opt/ml
  (`unshare --mount`), inside the host's own namespaces and the job's private network (hosts.py). The
  mount needs an empty /opt/ml to mount onto: it is created once, as the images have it.
- Stopping follows SageMaker: SIGTERM to the algorithm (the processes doing the work, not the shell and
  driver above them), then SIGKILL to whatever is left when the grace period (120 s) has passed.
- This process becomes the reaper of the groups' orphans, so that the end of a process is seen at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import psutil

CONTAINER_ROOT = Path("/opt/ml")
STOP_GRACE_S = 120.0  # SageMaker's time between SIGTERM and SIGKILL when a job is stopped
POLL_S = 0.05


def namespace_permitted() -> bool:
    """Whether this process may give containers private namespaces (root, CAP_SYS_ADMIN): mount, network, hostname
    and PID, as hosts.py gives each host of a job.

    When it may, the empty mount point /opt/ml is created (once, as the images have it).
    """
    if any(shutil.which(tool) is None for tool in ("unshare", "nsenter", "mount", "ip")):
        return False
    flags = ["--mount", "--net", "--uts", "--pid", "--fork", "--mount-proc"]
    probe = subprocess.run(["unshare", *flags, "ip", "link", "set", "lo", "up"], capture_output=True, check=False)
    if probe.returncode != 0:
        return False
    try:
        CONTAINER_ROOT.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        return False
    return True


def in_namespace(root: Path, command: Sequence[str]) -> list[str]:
    """The command that runs `command` in a private mount namespace, with root bound onto /opt/ml.

    Its network, hostname and PID namespace are the host's: hosts.JobNetwork.host_command wraps this command.
    """
    bind = f'mount --bind "$1" {CONTAINER_ROOT} && shift && exec "$@"'
    return ["unshare", "--mount", "/bin/sh", "-c", bind, "sh", str(root), *command]


def adopt_orphans() -> None:
    """Make this process the reaper of the containers' orphaned processes, so that their end is seen at once.

    When a container's shell or driver ends before the processes it started (killed, or crashed), those are
    reparented; here to this process, which reaps them. A zombie left to another reaper would still count
    as a live process of the group until the grace period's SIGKILL.
    """
    if sys.platform != "linux":
        return
    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def killed_by_sigkill(returncode: int) -> bool:
    """Whether an exit status says that SIGKILL ended the process, at whichever level it was sent.

    -9: the container's main process was killed; 137 (128 + 9): a shell's child was; 247 (256 - 9): the
    process under SDK 3's script driver was, which exits with the child's negative status.
    """
    return returncode in (-signal.SIGKILL, 128 + signal.SIGKILL, 256 - signal.SIGKILL)


def signal_group(pgid: int, signum: int) -> None:
    """Send a signal to every process of a process group, if any is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def working_processes(pgid: int) -> list[int]:
    """The group's live processes that have no child of their own: the ones doing the work below shells and drivers.

    SageMaker "sends the algorithm the SIGTERM signal": here the training script, not the shell and the
    SDK's driver above it, which end when it ends and keep forwarding its last lines to the log meanwhile.
    """
    parent_of = {}
    for process in psutil.process_iter(["ppid", "status"]):
        try:
            in_group = os.getpgid(process.pid) == pgid
        except ProcessLookupError:  # it ended since the listing
            continue
        if in_group and process.info["status"] != psutil.STATUS_ZOMBIE:
            parent_of[process.pid] = process.info["ppid"]
    parents = set(parent_of.values())
    return sorted(pid for pid in parent_of if pid not in parents)


def group_alive(pgid: int) -> bool:
    """Reap the group's exited processes (children, or orphans adopted by this process); say whether any is left."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-pgid, os.WNOHANG)[0] > 0:
            pass
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class ProcessGroup:
    """A container's command running as its own process group: started, stopped as SageMaker stops it, waited for.

    After `terminate` (SIGTERM) the group has `grace_s` to end; then SIGKILL goes to every process left in
    it, the main process included, even if it ignores SIGTERM.
    """

    def __init__(self, command: Sequence[str], cwd: Path, environment: dict[str, str], grace_s: float = STOP_GRACE_S):
        self.process = subprocess.Popen(
            list(command), cwd=cwd, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,  # its own process group: the container's processes
        )
        self.pgid = self.process.pid
        self.grace_s = grace_s
        self.sigterm_sent_at: float | None = None
        self.sigkill_sent = False

    @property
    def output(self) -> IO[bytes]:
        """The command's stdout and stderr, merged, as a container's log has them."""
        assert self.process.stdout is not None  # opened as a pipe in __init__
        return self.process.stdout

    def terminate(self) -> None:
        """Send SIGTERM to the working processes, once; SIGKILL follows when the grace period has passed."""
        if self.sigterm_sent_at is not None:
            return
        for pid in working_processes(self.pgid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self.sigterm_sent_at = time.monotonic()

    def kill(self) -> None:
        """SIGKILL to every process of the group at once."""
        signal_group(self.pgid, signal.SIGKILL)
        self.sigkill_sent = True

    def kill_if_overdue(self) -> None:
        """SIGKILL to the group when SIGTERM was sent more than the grace period ago."""
        if self.sigterm_sent_at is not None and not self.sigkill_sent:
            if time.monotonic() >= self.sigterm_sent_at + self.grace_s:
                self.kill()

    def poll(self, timeout_s: float) -> int | None:
        """Wait up to timeout_s for the main process to end; its exit status, or None while it runs."""
        self.kill_if_overdue()
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.process.wait(timeout=timeout_s)
        return None

    def wait(self) -> int:
        """Wait for the main process, then for the rest of the group; return the main process's exit status.

        After a SIGTERM the group's last processes get the rest of the grace period (to save a checkpoint);
        otherwise the container is gone with its main process, and so is whatever it left running.
        """
        while (returncode := self.poll(POLL_S)) is None:
            pass
        if self.sigterm_sent_at is None and group_alive(self.pgid):
            self.kill()
        while group_alive(self.pgid):
            self.kill_if_overdue()
            time.sleep(POLL_S)
        return returncode

"""Process supervision of the local SageMaker (tools/local_sagemaker/processes.py) with real tiny processes.

Each container command here says when it is ready (its SIGTERM handler installed) on its output; the
test acts only then. Which signal ends a process is decided by what the process does with SIGTERM
(handles it, ignores it), never by how long anything takes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from local_sagemaker import processes

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups and the subreaper are Linux's")

# A training script's SIGTERM handler: say so, and exit 143 as train.py does.
HANDLES_SIGTERM = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), sys.exit(143)))
    print("ready", flush=True)
    while True:
        time.sleep(1)
""")
IGNORES_SIGTERM = textwrap.dedent("""
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    while True:
        time.sleep(1)
""")


def start(command: list[str], tmp_path: Path, grace_s: float = processes.STOP_GRACE_S) -> processes.ProcessGroup:
    """A process group for the command, with the test's environment."""
    return processes.ProcessGroup(command, tmp_path, dict(os.environ), grace_s=grace_s)


def read_line(group: processes.ProcessGroup) -> str:
    """The next line the group's main process prints."""
    return group.output.readline().decode().strip()


def test_sigterm_reaches_the_handler_and_no_sigkill_follows(tmp_path: Path) -> None:
    group = start([sys.executable, "-c", HANDLES_SIGTERM], tmp_path)
    assert read_line(group) == "ready"

    group.terminate()
    returncode = group.wait()

    assert returncode == 143
    assert read_line(group) == "got SIGTERM"
    assert not group.sigkill_sent
    assert not processes.group_alive(group.pgid)


def test_a_process_that_ignores_sigterm_is_killed_when_the_grace_period_ends(tmp_path: Path) -> None:
    group = start([sys.executable, "-c", IGNORES_SIGTERM], tmp_path, grace_s=0.2)
    assert read_line(group) == "ready"

    group.terminate()
    returncode = group.wait()

    assert returncode == -signal.SIGKILL
    assert group.sigkill_sent
    assert processes.killed_by_sigkill(returncode)
    assert not processes.group_alive(group.pgid)


def test_sigterm_goes_to_the_working_process_not_the_shell_above_it(tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text(HANDLES_SIGTERM)
    shell = f'{sys.executable} script.py & wait $!; echo "the shell saw $?"; exit 7'
    group = start(["/bin/sh", "-c", shell], tmp_path)
    assert read_line(group) == "ready"
    (script,) = processes.working_processes(group.pgid)
    assert psutil.Process(script).cmdline()[-1] == "script.py"

    group.terminate()
    returncode = group.wait()

    # The shell was not signalled: it went on after its child's exit and chose its own status.
    assert (read_line(group), read_line(group), returncode) == ("got SIGTERM", "the shell saw 143", 7)
    assert not group.sigkill_sent


def test_what_the_main_process_leaves_running_is_killed_when_it_ends(tmp_path: Path) -> None:
    # In its own process, which adopts orphans as the endpoint does: the leftover is reparented to it.
    program = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(processes.__file__).parents[1])!r})
        from local_sagemaker import processes
        processes.adopt_orphans()
        group = processes.ProcessGroup(["/bin/sh", "-c", "sleep 1000 & echo $!"], {str(tmp_path)!r}, {{}})
        leftover = int(group.output.readline())
        returncode = group.wait()
        print(json.dumps({{"leftover": leftover, "returncode": returncode, "sigkill_sent": group.sigkill_sent,
                           "group_alive": processes.group_alive(group.pgid)}}))
    """)
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)

    result = json.loads(completed.stdout)
    assert (result["returncode"], result["sigkill_sent"], result["group_alive"]) == (0, True, False)
    assert not psutil.pid_exists(result["leftover"])


def test_terminate_signals_once(tmp_path: Path) -> None:
    group = start([sys.executable, "-c", HANDLES_SIGTERM], tmp_path)
    assert read_line(group) == "ready"

    group.terminate()
    first = group.sigterm_sent_at
    group.terminate()

    assert group.sigterm_sent_at == first
    assert group.wait() == 143


@pytest.mark.parametrize(
    "returncode, killed",
    [(-9, True), (137, True), (247, True), (-15, False), (143, False), (1, False), (0, False)],
)
def test_killed_by_sigkill_reads_each_level_of_the_exit_status(returncode: int, killed: bool) -> None:
    assert processes.killed_by_sigkill(returncode) is killed


def test_in_namespace_binds_the_folder_onto_opt_ml_and_runs_the_command(tmp_path: Path) -> None:
    command = processes.in_namespace(tmp_path, ["python", "train.py", "--epochs", "1"])

    # Only the mount namespace: the network (private to the job's hosts) is the host's, from hosts.JobNetwork,
    # whose isolation tests/test_local_sagemaker_hosts.py checks.
    assert command[:3] == ["unshare", "--mount", "/bin/sh"]
    assert command[-5:] == [str(tmp_path), "python", "train.py", "--epochs", "1"]
    if not processes.namespace_permitted():
        pytest.skip("unshare is not permitted here (not root): the command cannot run")
    (tmp_path / "input" / "config").mkdir(parents=True)
    listing = subprocess.run(
        processes.in_namespace(tmp_path, ["ls", "/opt/ml", "/opt/ml/input"]), capture_output=True, text=True, check=True
    )
    assert listing.stdout.split() == ["/opt/ml:", "input", "/opt/ml/input:", "config"]
    assert not any(Path("/opt/ml").iterdir())  # outside the namespace the mount point stays empty

"""The hosts of a training job (tools/local_sagemaker/hosts.py): their names, their private network, how they end.

The network tests run real commands as hosts (root and unshare are needed; skipped elsewhere). The tests of how
hosts end run tiny processes that say when they are ready; which host ends first is decided by what each
process does, never by how long anything takes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import boto3
import moto
import psutil
import pytest
from botocore.client import BaseClient

from local_sagemaker import container, hosts, job_logs, processes, s3_io
from support import TEST_CREDENTIALS, wait_for

needs_namespaces = pytest.mark.skipif(
    not (sys.platform == "linux" and processes.namespace_permitted()), reason="needs root and unshare (namespaces)"
)


def test_a_job_on_three_instances_has_hosts_algo_1_to_3() -> None:
    assert hosts.host_names(3) == ("algo-1", "algo-2", "algo-3")
    with pytest.raises(ValueError, match="InstanceCount=0"):
        hosts.host_names(0)


def test_the_hosts_file_names_each_host_at_its_own_address() -> None:
    lines = [line.split("\t") for line in hosts.hosts_file_text(("algo-1", "algo-2")).splitlines()]

    assert ["127.0.1.1", "algo-1"] in lines and ["::ffff:127.0.1.1", "algo-1"] in lines
    assert ["127.0.1.2", "algo-2"] in lines and ["::ffff:127.0.1.2", "algo-2"] in lines
    assert ["127.0.0.1", "localhost"] in lines


# --- the job's private network --------------------------------------------------------------------------------

# A host: says who it is and what the names resolve to; algo-1 serves one line, algo-2 fetches it; both then
# try the test's server on the machine's own loopback.
HOST_SCRIPT = textwrap.dedent("""
    import json, socket, sys, time
    me, outside_port = socket.gethostname(), int(sys.argv[1])
    report = {"hostname": me, "algo-1": socket.gethostbyname("algo-1"), "algo-2": socket.gethostbyname("algo-2")}
    if me == "algo-1":
        server = socket.create_server(("algo-1", 7000))
        print("listening", flush=True)
        connection, _ = server.accept()
        connection.sendall(b"hello from algo-1")
        connection.close()
    else:
        for _ in range(600):  # algo-1 may not listen yet: its "listening" line is the moment, a connection the check
            try:
                with socket.create_connection(("algo-1", 7000), timeout=5) as connection:
                    report["from algo-1"] = connection.recv(100).decode()
                break
            except ConnectionRefusedError:
                time.sleep(0.05)
    try:
        socket.create_connection(("127.0.0.1", outside_port), timeout=5).close()
        report["machine loopback"] = "reached"
    except OSError as error:
        report["machine loopback"] = type(error).__name__
    print(json.dumps(report), flush=True)
""")


@pytest.fixture
def outside_server() -> Iterator[int]:
    """A server on the machine's own 127.0.0.1 (outside any job), that a host must not reach; its port."""
    server = socket.create_server(("127.0.0.1", 0))
    yield server.getsockname()[1]
    server.close()


@needs_namespaces
def test_the_hosts_reach_each_other_by_name_and_nothing_outside(tmp_path: Path, outside_server: int) -> None:
    with hosts.JobNetwork(tmp_path, ("algo-1", "algo-2")) as network:
        script = tmp_path / "host.py"
        script.write_text(HOST_SCRIPT)
        started = {}
        for name in network.names:
            command = network.host_command(name, [sys.executable, str(script), str(outside_server)])
            started[name] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert started["algo-1"].stdout.readline().strip() == "listening"
        reports = {name: process.communicate(timeout=60)[0] for name, process in started.items()}
        holder = psutil.Process(network.holder.pid)

    assert [process.returncode for process in started.values()] == [0, 0], reports
    first, second = (json.loads(report.splitlines()[-1]) for report in reports.values())
    assert first == {"hostname": "algo-1", "algo-1": "127.0.1.1", "algo-2": "127.0.1.2", "machine loopback": "ConnectionRefusedError"}
    assert second == {"hostname": "algo-2", "algo-1": "127.0.1.1", "algo-2": "127.0.1.2", "from algo-1": "hello from algo-1",
                      "machine loopback": "ConnectionRefusedError"}
    assert not holder.is_running()  # closing the network ends the process that held it


@needs_namespaces
def test_a_host_leaves_no_process_behind_when_its_command_ends(tmp_path: Path) -> None:
    # The command starts a process in a session of its own (as torchrun starts its workers) and exits.
    marker = f"{600 + os.getpid() % 1000 / 1000:.3f}"  # a sleep of this test's own, to look for afterwards
    with hosts.JobNetwork(tmp_path, ("algo-1",)) as network:
        command = network.host_command("algo-1", ["/bin/sh", "-c", f"setsid sleep {marker} & echo started; exit 0"])
        completed = subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert completed.returncode == 0 and completed.stdout.split() == ["started"], completed.stderr
    assert [process.pid for process in psutil.process_iter(["cmdline"]) if process.info["cmdline"] == ["sleep", marker]] == []


# --- how an attempt's hosts end ---------------------------------------------------------------------------------

WAITS = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), sys.exit(143)))
    print("ready", flush=True)
    while True:
        time.sleep(1)
""")
FAILS = 'import sys; print("ValueError: algo-2 cannot go on", flush=True); sys.exit(1)'


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[BaseClient]:
    """A CloudWatch Logs client of moto's in-process mock."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # a local endpoint's URL would bypass the mock
    with moto.mock_aws():
        yield boto3.session.Session(**TEST_CREDENTIALS).client("logs")


def attempt_hosts(logs: BaseClient, tmp_path: Path, names: tuple[str, ...]) -> list[hosts.Host]:
    """Hosts of a job, each with its log stream started."""
    result = []
    for name in names:
        view = container.TrainingContainer(tmp_path / name, "ml.m5.xlarge", {}, hosts=names, current_host=name)
        log = job_logs.JobLog(logs, "job", [], host=name)
        log.start_attempt(tmp_path / f"{name}.log")
        result.append(hosts.Host(view, log))
    return result


def start(running: hosts.RunningHosts, scripts: dict[str, str], tmp_path: Path) -> None:
    """Start each host's Python script."""
    running.start({name: ([sys.executable, "-c", script], dict(os.environ), tmp_path) for name, script in scripts.items()})


def wait_until_ready(host: hosts.Host) -> None:
    """Wait until the host has printed `ready` (its SIGTERM handler is installed)."""
    wait_for(lambda: "ready" in host.log.tail, f"{host.name} to print ready", 60)


def test_a_failing_host_ends_the_others_at_once_and_is_the_one_reported(logs: BaseClient, tmp_path: Path) -> None:
    first, second = attempt_hosts(logs, tmp_path, ("algo-1", "algo-2"))
    running = hosts.RunningHosts([first, second])
    start(running, {"algo-1": WAITS, "algo-2": FAILS}, tmp_path)

    end = running.run(should_stop=lambda: None, sync=lambda: None)

    assert end.first_failure is second and end.stopped_why is None
    assert second.returncode == 1 and list(second.log.tail) == ["ValueError: algo-2 cannot go on"]
    # algo-1 is killed, not asked: a peer blocked in a collective would never run a SIGTERM handler.
    assert first.returncode == -signal.SIGKILL and "got SIGTERM" not in first.log.tail
    assert not any(psutil.pid_exists(host.group.pgid) for host in (first, second))


def test_a_host_killed_from_outside_is_the_first_failure_with_its_sigkill(logs: BaseClient, tmp_path: Path) -> None:
    first, second = attempt_hosts(logs, tmp_path, ("algo-1", "algo-2"))
    running = hosts.RunningHosts([first, second])
    start(running, {"algo-1": WAITS, "algo-2": WAITS}, tmp_path)
    wait_until_ready(second)

    os.killpg(second.group.pgid, signal.SIGKILL)  # the instance is lost
    end = running.run(should_stop=lambda: None, sync=lambda: None)

    assert end.first_failure is second and processes.killed_by_sigkill(second.returncode)
    assert first.returncode == -signal.SIGKILL


def test_a_stop_sends_sigterm_to_every_host_and_is_no_failure(logs: BaseClient, tmp_path: Path) -> None:
    first, second = attempt_hosts(logs, tmp_path, ("algo-1", "algo-2"))
    running = hosts.RunningHosts([first, second])
    start(running, {"algo-1": WAITS, "algo-2": WAITS}, tmp_path)
    for host in (first, second):
        wait_until_ready(host)
    syncs = []

    end = running.run(should_stop=lambda: "Stopped", sync=lambda: syncs.append("synced"))

    assert end.first_failure is None and end.stopped_why == "Stopped"
    assert [host.returncode for host in (first, second)] == [143, 143]
    assert all(host.log.tail[-1] == "got SIGTERM" for host in (first, second))
    assert syncs  # folders were synced while the hosts ran


# --- outputs and checkpoints of several hosts ------------------------------------------------------------------


def test_every_hosts_outputs_are_merged_and_a_clash_keeps_the_first_hosts_file(tmp_path: Path) -> None:
    for name, files in {"algo-1": {"model.pt": "rank 0", "a/x.txt": "x"}, "algo-2": {"model.pt": "rank 1", "a/y.txt": "y"}}.items():
        for relative, text in files.items():
            (tmp_path / name / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / relative).write_text(text)

    clashes = hosts.merge_folders({name: tmp_path / name for name in ("algo-1", "algo-2", "algo-3")}, tmp_path / "merged")

    assert clashes == ["algo-2: model.pt"]
    merged = {path.relative_to(tmp_path / "merged").as_posix(): path.read_text()
              for path in (tmp_path / "merged").rglob("*") if path.is_file()}
    assert merged == {"model.pt": "rank 0", "a/x.txt": "x", "a/y.txt": "y"}


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[BaseClient]:
    """An S3 client of moto's in-process mock, with one empty bucket."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        client = boto3.session.Session(**TEST_CREDENTIALS).client("s3")
        client.create_bucket(Bucket="hosts-tests")
        yield client


def test_a_checkpoint_sync_never_uploads_what_was_downloaded_into_its_folder(s3: BaseClient, tmp_path: Path) -> None:
    # algo-2 starts with the checkpoint of an earlier attempt; algo-1 (rank 0) writes a newer one meanwhile.
    s3.put_object(Bucket="hosts-tests", Key="checkpoints/last.ckpt", Body=b"epoch 1")
    folder = tmp_path / "algo-2" / "checkpoints"
    assert s3_io.download_prefix(s3, "s3://hosts-tests/checkpoints", folder) == 1
    sync = s3_io.FolderSync(s3, folder, "s3://hosts-tests/checkpoints")
    s3.put_object(Bucket="hosts-tests", Key="checkpoints/last.ckpt", Body=b"epoch 2")

    pushed = sync.push() + sync.push() + sync.push(final=True)

    assert pushed == []
    assert s3.get_object(Bucket="hosts-tests", Key="checkpoints/last.ckpt")["Body"].read() == b"epoch 2"
    (folder / "last.ckpt").write_bytes(b"epoch 3 on algo-2")
    assert sync.push(final=True) == ["checkpoints/last.ckpt"]  # what the host writes itself is synced

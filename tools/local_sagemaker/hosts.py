"""The hosts of a training job: algo-1 ... algo-N, each a container of its own, on a network that only they share.

A job with ResourceConfig.InstanceCount N runs on N instances, which SageMaker names algo-1 ... algo-N. Here
each attempt of a job gets:

- per host, a folder that stands for its /opt/ml, with its own resourceconfig.json (`current_host`, the
  sorted `hosts`), its own channels and checkpoint folder (downloaded from S3), and its own CloudWatch
  stream `<job>/algo-K-<timestamp>`;
- one network namespace that only the attempt's hosts share (`JobNetwork`), loopback up, in which algo-K
  resolves to 127.0.1.K: an /etc/hosts of the job is bound into each host's mount namespace, and each host
  has its own name as hostname (a UTS namespace), so that a library that binds to the address of its
  hostname (gloo does) binds to the host's own;
- per host, a PID namespace: when a host's container command ends, the kernel ends every process it left
  behind (torchrun starts its workers in sessions of their own, out of reach of a process group).

SageMaker's semantics over the hosts (`RunningHosts.run`): the attempt ends when every host has ended; when a host
ends with an error, or is lost (SIGKILL from outside), the others are killed at once, since a peer waiting
for it in a collective would otherwise wait until its timeout, and the job reports that first host's end;
a stop (StopTrainingJob, MaxRuntimeInSeconds) sends SIGTERM to every host. The outputs of all hosts are
aggregated into one archive each (`merge_folders`), as SageMaker aggregates every host's /opt/ml/model.

What this stand-in does not give: the hosts share one network stack, so a port that one host binds on every
address is taken for the others; and their interface is the loopback, which resourceconfig.json names
(`network_interface_name` "lo"; SageMaker's instances have eth0).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import container, job_logs, processes, s3_io

HOST_ADDRESS = "127.0.1.{}"  # algo-K's address on the job's network
NETWORK_INTERFACE = "lo"
POLL_S = 0.05
SYNC_INTERVAL_S = 1.0


def host_names(count: int) -> tuple[str, ...]:
    """algo-1 ... algo-N, as SageMaker names the hosts of a job on N instances."""
    if count < 1:
        raise ValueError(f"a training job runs on at least one instance, not InstanceCount={count}")
    return tuple(f"algo-{number}" for number in range(1, count + 1))


def hosts_file_text(names: Sequence[str]) -> str:
    """The /etc/hosts of a job's hosts: localhost, and each host's name at its address on the job's network."""
    # IPv4-mapped IPv6 forms too: torch's TCPStore listens on IPv6 and looks its peers up by those, and a name
    # that /etc/hosts lacks goes to DNS, which the private network cannot reach (a warning in every log).
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost", "::ffff:127.0.0.1\tlocalhost"]
    for number, name in enumerate(names, start=1):
        address = HOST_ADDRESS.format(number)
        lines += [f"{address}\t{name}", f"::ffff:{address}\t{name}"]
    return "\n".join(lines) + "\n"


class JobNetwork:
    """A network namespace that only the hosts of one attempt share; a process of its own holds it open.

    Use as a context manager: the namespace (and whatever the hosts left bound in it) goes when it closes.
    """

    def __init__(self, folder: Path, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.hosts_file = folder / "hosts"
        self.hosts_file.write_text(hosts_file_text(self.names))
        self.holder = subprocess.Popen(
            ["unshare", "--net", "/bin/sh", "-c", "ip link set lo up && echo up && exec sleep infinity"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        assert self.holder.stdout is not None  # a pipe, opened above
        ready = self.holder.stdout.readline()
        if ready.strip() != "up":
            self.close()
            raise RuntimeError(f"the job's network namespace did not come up (unshare --net, ip link set lo up): {ready!r}")

    def host_command(self, name: str, command: Sequence[str]) -> list[str]:
        """The command that runs `command` as host `name`: in the job's network, with its own mount, UTS and PID
        namespaces, the job's hosts file on /etc/hosts and its name as hostname."""
        if name not in self.names:
            raise ValueError(f"{name!r} is not one of the job's hosts {list(self.names)}")
        setup = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'
        return [
            "nsenter", f"--net=/proc/{self.holder.pid}/ns/net",
            "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
            "/bin/sh", "-c", setup, "sh", str(self.hosts_file), name, *command,
        ]

    def close(self) -> None:
        """End the process holding the namespace."""
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait()
        if self.holder.stdout is not None:
            self.holder.stdout.close()

    def __enter__(self) -> JobNetwork:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclasses.dataclass
class Host:
    """One host of an attempt: its view of /opt/ml, its log, its folder syncs, and its processes once started."""

    container: container.TrainingContainer
    log: job_logs.JobLog
    syncs: list[s3_io.FolderSync] = dataclasses.field(default_factory=list)
    group: processes.ProcessGroup | None = None
    reader: threading.Thread | None = None
    returncode: int | None = None

    @property
    def name(self) -> str:
        """algo-K."""
        return self.container.current_host


@dataclasses.dataclass(frozen=True)
class HostsEnd:
    """How an attempt's hosts ended: the first host to end with an error on its own, and why the job stopped them."""

    first_failure: Host | None
    stopped_why: str | None  # "Stopped" or "MaxRuntimeExceeded"; None when nothing stopped the hosts


class RunningHosts:
    """The container commands of an attempt's hosts, started together, stopped and killed together."""

    def __init__(self, hosts: Sequence[Host]) -> None:
        self.hosts = list(hosts)
        self.lock = threading.Lock()  # the run thread starts the groups; stop and shutdown signal them

    def start(self, commands: dict[str, tuple[list[str], dict[str, str], Path]]) -> None:
        """Start each host's command (name → command, environment, working folder) and forward its output to its log."""
        with self.lock:
            for host in self.hosts:
                command, environment, cwd = commands[host.name]
                host.group = processes.ProcessGroup(command, cwd, environment)
                host.reader = threading.Thread(target=host.log.pump, args=(host.group.output,), daemon=True)
                host.reader.start()

    def terminate(self) -> None:
        """SIGTERM to every host's working processes (once each); SIGKILL follows after the grace period."""
        with self.lock:
            for host in self.hosts:
                if host.group is not None:
                    host.group.terminate()

    def kill(self, except_host: Host | None = None) -> None:
        """SIGKILL to every process of every host (but one)."""
        with self.lock:
            for host in self.hosts:
                if host.group is not None and host is not except_host:
                    host.group.kill()

    def run(self, should_stop: Callable[[], str | None], sync: Callable[[], None]) -> HostsEnd:
        """Wait until every host has ended, syncing folders meanwhile; SageMaker's end of a job on several hosts.

        should_stop() names a reason to stop the hosts (SIGTERM to all), or None; sync() runs every second.
        A host that ends with a non-zero status while nothing stops the job ends the others at once.
        """
        first_failure, stopped_why, next_sync = None, None, 0.0
        running = [host for host in self.hosts if host.group is not None]
        while running:
            for host in list(running):
                assert host.group is not None  # started: in `running`
                returncode = host.group.poll(POLL_S / len(running))
                if returncode is None:
                    continue
                host.returncode = returncode
                running.remove(host)
                if returncode != 0 and stopped_why is None and first_failure is None:
                    first_failure = host
                    self.kill(except_host=host)
            if time.monotonic() >= next_sync:
                sync()
                next_sync = time.monotonic() + SYNC_INTERVAL_S
            if stopped_why is None and first_failure is None and (stopped_why := should_stop()):
                self.terminate()
        for host in self.hosts:
            if host.group is not None:
                host.returncode = host.group.wait()  # the rest of each host's processes, within its grace period
            if host.reader is not None:
                host.reader.join()
        return HostsEnd(first_failure, stopped_why)


def merge_folders(folders: dict[str, Path], target: Path) -> list[str]:
    """Copy each host's folder (host name → folder) into target, in host order; return the clashes.

    SageMaker aggregates every host's /opt/ml/model (and output/data) into one archive and asks that their
    names do not clash. Of a file that two hosts wrote, the first host's is kept; each clash is returned as
    `algo-K: relative/path`.
    """
    target.mkdir(parents=True, exist_ok=True)
    clashes = []
    for name, folder in folders.items():
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_dir():
                continue
            destination = target / path.relative_to(folder)
            if destination.exists():
                clashes.append(f"{name}: {path.relative_to(folder).as_posix()}")
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
    return clashes

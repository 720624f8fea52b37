"""Faults the other test files leave out: killed processes, damaged checkpoints, escaping archives, bound addresses.

- a download killed with SIGKILL mid-file, then run again; a mirror serving a file of the wrong size;
- truncated, empty and garbage checkpoints handed to `train.resume_checkpoint` and `train.fit`;
- train.py killed with SIGKILL at the start of epoch 2 (where it stopped itself), then started again, against an
  uninterrupted run;
- model.tar.gz archives and S3 keys that try to write outside the target folder;
- the loopback mirror listening on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import urllib.request
import uuid
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import psutil
import pytest
import torch
from botocore.client import BaseClient

import mnist_mirror
import sagemaker_job
import train
from local_aws import LocalAWS
from container_layout import container_layout
from mnist_download import MNIST_FILES, Digests, DownloadError, download_mnist, read_sha256sums, verify
from mnist_model import load_model
from support import epochs_in, killed_on_exit, pausing_handler, wait_for

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "code" / "train.py"
TIMEOUT_S = 300


# --- 1. download killed mid-file; a mirror serving a file of the wrong size -------------------------------------


@pytest.fixture(scope="module")
def digests(mirror_dir: Path) -> dict[str, Digests]:
    """The mirror's SHA-256 digests."""
    return read_sha256sums(mirror_dir / "SHA256SUMS")


def part_files(dest: Path) -> dict[str, int]:
    """The temporary `.part` files in `dest`, with their sizes."""
    return {path.name: path.stat().st_size for path in dest.iterdir() if path.name.endswith(".part")}


DOWNLOAD_IN_A_PROCESS = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import mnist_download
digests = mnist_download.read_sha256sums(Path(sys.argv[4]))
mnist_download.download_mnist(Path(sys.argv[2]), [sys.argv[3]], digests, attempts=1, timeout_s=300, progress=False)
"""


def test_download_killed_mid_file_leaves_nothing_under_the_final_name_and_a_rerun_completes(
    tmp_path: Path, mirror_dir: Path, mirror_url: str, digests: dict[str, Digests]
) -> None:
    dest = tmp_path / "raw"
    dest.mkdir()
    first = MNIST_FILES[0]
    half = (mirror_dir / first).stat().st_size // 2
    handler = pausing_handler(finish=False)
    with mnist_mirror.serve(mirror_dir, handler) as slow_url:
        process = subprocess.Popen(
            [sys.executable, "-c", DOWNLOAD_IN_A_PROCESS, str(REPO / "code"), str(dest), slow_url,
             str(mirror_dir / "SHA256SUMS")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            with killed_on_exit(process):
                wait_for(lambda: handler.half_sent.is_set() or process.poll() is not None, "the mirror to send half a file")
                assert process.poll() is None, process.communicate()[0]
                # Killed once the .part file holds data: at most the half the mirror sent, whenever it is killed.
                wait_for(lambda: any(part_files(dest).values()), f"data in a .part file in {dest}")
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=TIMEOUT_S)
        finally:
            handler.release.set()
    assert process.returncode == -signal.SIGKILL

    # The killed run left one partial .part file of the first file, and nothing under any final name.
    left = part_files(dest)
    assert sorted(path.name for path in dest.iterdir()) == sorted(left)
    [(name, size)] = left.items()
    assert name.startswith(f".{first}.") and 0 < size <= half

    paths = download_mnist(dest, [mirror_url], digests, progress=False)

    assert paths == [dest / name for name in MNIST_FILES]
    assert all(verify(path, digests[path.name]) for path in paths)
    assert [path.read_bytes() for path in paths] == [(mirror_dir / name).read_bytes() for name in MNIST_FILES]
    # The rerun removes the killed process's partial file and leaves none of its own.
    assert part_files(dest) == {}
    # Downloaded files are readable by everyone, not private like the temporary file they were written to.
    assert all(path.stat().st_mode & 0o777 == 0o644 for path in paths)


@pytest.fixture(scope="module")
def wrong_size_dirs(tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path) -> dict[str, Path]:
    """Mirror folders whose files have the right names but are shorter or longer than the real ones."""
    folders = {}
    for kind, change in (("shorter", lambda data: data[:-100]), ("longer", lambda data: data + data[:100])):
        folder = folders[kind] = tmp_path_factory.mktemp(kind)
        for name in MNIST_FILES:
            (folder / name).write_bytes(change((mirror_dir / name).read_bytes()))
    return folders


@pytest.mark.parametrize("kind", ["shorter", "longer"])
def test_a_wrong_size_file_is_rejected_and_the_next_mirror_used(
    tmp_path: Path, kind: str, wrong_size_dirs: dict[str, Path], mirror_dir: Path, mirror_url: str,
    digests: dict[str, Digests],
) -> None:
    t10k = MNIST_FILES[2:]
    requests: list[str] = []

    class Counting(mnist_mirror.QuietHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    with mnist_mirror.serve(wrong_size_dirs[kind], Counting) as wrong_url:
        # SimpleHTTPRequestHandler announces each file's true (wrong) size: the body arrives whole.
        with urllib.request.urlopen(wrong_url + t10k[0]) as response:
            served = response.read()
            assert int(response.headers["Content-Length"]) == len(served) != (mirror_dir / t10k[0]).stat().st_size
        requests.clear()

        paths = download_mnist(tmp_path / "fallback", [wrong_url, mirror_url], digests, files=t10k,
                               attempts=1, progress=False)
        assert [path.read_bytes() for path in paths] == [(mirror_dir / name).read_bytes() for name in t10k]
        assert requests == [f"/{name}" for name in t10k]
        assert sorted(path.name for path in (tmp_path / "fallback").iterdir()) == sorted(t10k)

        with pytest.raises(DownloadError) as caught:
            download_mnist(tmp_path / "alone", [wrong_url], digests, files=t10k[:1], attempts=1, progress=False)
    [line] = [line for line in str(caught.value).splitlines() if wrong_url + t10k[0] in line]
    assert "checksum mismatch" in line
    assert list((tmp_path / "alone").iterdir()) == []


# --- 2. corrupted checkpoints -----------------------------------------------------------------------------------

TINY = train.Hyperparameters(epochs=1, max_train_images=300, batch_size=64)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path) -> Path:
    """A finished one-epoch run on 300 digits: its folder holds model/, output/ and checkpoints/{last,best}.ckpt."""
    run_dir = tmp_path_factory.mktemp("tiny-run")
    train.fit(TINY, train.Paths.under(run_dir, mirror_dir))
    assert {"last.ckpt", "best.ckpt"} <= {path.name for path in (run_dir / "checkpoints").iterdir()}
    return run_dir


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run that a test may damage."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


DAMAGE = {
    "truncated to half": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "garbage": lambda data: os.urandom(len(data)),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_last_checkpoint_falls_back_to_best_with_a_warning(run_copy: Path, damage: str) -> None:
    checkpoints = run_copy / "checkpoints"
    last = checkpoints / "last.ckpt"
    last.write_bytes(DAMAGE[damage](last.read_bytes()))

    with pytest.warns(UserWarning) as caught:
        chosen = train.resume_checkpoint(checkpoints)

    assert chosen == checkpoints / "best.ckpt"
    [unreadable] = [str(warning.message) for warning in caught if "unreadable" in str(warning.message)]
    assert unreadable.startswith(f"checkpoint {last} is unreadable (") and unreadable.endswith("not resuming from it")
    assert not any("from scratch" in str(warning.message) for warning in caught)


def test_garbage_last_and_best_checkpoints_start_from_scratch_with_a_warning(
    run_copy: Path, tiny_run: Path, mirror_dir: Path
) -> None:
    checkpoints = run_copy / "checkpoints"
    for name in ("last.ckpt", "best.ckpt"):
        (checkpoints / name).write_bytes(b"\x80\x02 not a checkpoint " + os.urandom(1000))
    shutil.rmtree(run_copy / "model")

    with pytest.warns(UserWarning) as caught:
        chosen = train.resume_checkpoint(checkpoints)

    assert chosen is None
    messages = [str(warning.message) for warning in caught]
    assert sum(f"checkpoint {checkpoints / name} is unreadable" in message
               for message in messages for name in ("last.ckpt", "best.ckpt")) == 2
    assert f"no readable checkpoint in {checkpoints}: training starts from scratch" in messages

    with pytest.warns(UserWarning, match="training starts from scratch"):
        result = train.fit(TINY, train.Paths.under(run_copy, mirror_dir))

    assert result.model_path == run_copy / "model" / "model.pt"
    assert load_model(result.model_path).hparams["width"] == TINY.width
    # The same seed from scratch reproduces the original run: nothing was taken from the garbage.
    original = json.loads((tiny_run / "output" / "data" / "metrics.json").read_text())
    assert result.metrics["test_acc"] == pytest.approx(original["test_acc"], abs=0.02)
    assert json.loads((run_copy / "output" / "data" / "metrics.json").read_text()) == result.metrics
    for name in ("last.ckpt", "best.ckpt"):  # the garbage was replaced by real checkpoints
        assert torch.load(checkpoints / name, map_location="cpu", weights_only=True)["epoch"] == 0


def test_a_valid_checkpoint_is_returned_without_a_warning(run_copy: Path) -> None:
    checkpoints = run_copy / "checkpoints"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert train.resume_checkpoint(checkpoints) == checkpoints / "last.ckpt"
        (checkpoints / "last.ckpt").unlink()
        assert train.resume_checkpoint(checkpoints) == checkpoints / "best.ckpt"


# --- 3. train.py killed with SIGKILL during epoch 2, then started again -----------------------------------------

TWO_EPOCHS = ["--epochs", "2", "--max_train_images", "1000", "--batch_size", "64"]


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at `path`, loaded as train.py resumes it (tensors and plain values only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclasses.dataclass(frozen=True)
class KilledRun:
    """A two-epoch train.py killed with SIGKILL during epoch 2 and run again, beside an uninterrupted run."""

    ml_dir: Path
    killed_output: str
    killed_status: int
    checkpoint_at_kill: dict
    left_by_kill: list[str]
    resumed: subprocess.CompletedProcess
    baseline_dir: Path
    baseline_output: str


# train.py's own entry point, with one callback more: the process stops itself (SIGSTOP) as epoch 2's first
# batch begins, after epoch 1's checkpoints are written. The test kills it there, however fast the machine.
TRAIN_STOPPING_IN_EPOCH_2 = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import pytorch_lightning as pl
import train

class StopAtEpoch2(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGSTOP)

build_trainer = train.build_trainer
def build_trainer_stopping_in_epoch_2(*args, **kwargs):
    trainer = build_trainer(*args, **kwargs)
    trainer.callbacks.append(StopAtEpoch2())
    return trainer

train.build_trainer = build_trainer_stopping_in_epoch_2
sys.exit(train.main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path) -> KilledRun:
    """Two epochs on 1,000 digits: killed at the start of epoch 2 and restarted; and the same run uninterrupted."""
    root = tmp_path_factory.mktemp("sigkill")
    ml_dir = root / "opt" / "ml"
    environment = container_layout(ml_dir, mirror_dir)
    last = ml_dir / "checkpoints" / "last.ckpt"
    with open(root / "killed.out", "w+") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", TRAIN_STOPPING_IN_EPOCH_2, str(REPO / "code"), *TWO_EPOCHS],
            cwd=root, env=os.environ | environment, stdout=out, stderr=subprocess.STDOUT, text=True,
        )
        with killed_on_exit(process):
            stopped = psutil.Process(process.pid)
            wait_for(lambda: process.poll() is not None or stopped.status() == psutil.STATUS_STOPPED,
                     "train.py to stop itself at the start of epoch 2", timeout_s=TIMEOUT_S)
            assert process.poll() is None, f"train.py ended before epoch 2 with status {process.returncode}"
            checkpoint_at_kill = load_checkpoint(last)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=TIMEOUT_S)
        out.seek(0)
        killed_output = out.read()
    left = sorted(str(path.relative_to(ml_dir)) for path in ml_dir.rglob("*")
                  if path.is_file() and "input" not in path.parts)

    # The restart, in a new process as after a crash; meanwhile the uninterrupted run trains in this one
    # (the same entry point, train.main), while the restart spends its first seconds importing torch.
    baseline_dir = root / "baseline" / "opt" / "ml"
    baseline_environment = container_layout(baseline_dir, mirror_dir)
    with open(root / "resumed.out", "w+") as out, open(root / "resumed.err", "w+") as err:
        restart = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *TWO_EPOCHS],
                                   cwd=root, env=os.environ | environment, stdout=out, stderr=err, text=True)
        with killed_on_exit(restart):
            baseline_stdout = io.StringIO()
            with contextlib.redirect_stdout(baseline_stdout):
                assert train.main(TWO_EPOCHS, environ=baseline_environment) == 0
            restart.wait(timeout=TIMEOUT_S)
        out.seek(0)
        err.seek(0)
        resumed = subprocess.CompletedProcess(restart.args, restart.returncode, out.read(), err.read())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return KilledRun(ml_dir, killed_output, process.returncode, checkpoint_at_kill, left, resumed,
                     baseline_dir, baseline_stdout.getvalue())


def test_sigkill_during_epoch_2_leaves_the_epoch_1_checkpoint_and_no_model(killed_run: KilledRun) -> None:
    assert killed_run.killed_status == -signal.SIGKILL
    assert epochs_in(killed_run.killed_output) == [1]
    assert killed_run.checkpoint_at_kill["epoch"] == 0  # Lightning counts epochs from 0
    assert "checkpoints/last.ckpt" in killed_run.left_by_kill
    assert "model/model.pt" not in killed_run.left_by_kill


def test_restart_after_sigkill_resumes_at_epoch_2_and_matches_an_uninterrupted_run(killed_run: KilledRun) -> None:
    assert epochs_in(killed_run.resumed.stdout) == [2]
    assert epochs_in(killed_run.baseline_output) == [1, 2]
    resumed, baseline = (json.loads((ml / "output" / "data" / "metrics.json").read_text())
                         for ml in (killed_run.ml_dir, killed_run.baseline_dir))
    assert resumed["test_acc"] == pytest.approx(baseline["test_acc"], abs=0.05)
    assert resumed["test_acc"] > 0.8
    # Same number of epochs and optimiser steps recorded in the final checkpoints: epoch 1 was not trained twice.
    resumed_last, baseline_last = (load_checkpoint(ml / "checkpoints" / "last.ckpt")
                                   for ml in (killed_run.ml_dir, killed_run.baseline_dir))
    assert resumed_last["epoch"] == baseline_last["epoch"]
    assert resumed_last["global_step"] == baseline_last["global_step"]
    assert resumed_last["epoch"] == 1  # the second and last epoch, counted from 0
    assert (killed_run.ml_dir / "model" / "model.pt").is_file()


# --- 4. archives and S3 keys that try to write outside the target folder ----------------------------------------


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A .tar.gz holding the given members (file members with their bytes, links with b"")."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def file_member(name: str, data: bytes = b"planted by a model.tar.gz\n") -> tuple[tarfile.TarInfo, bytes]:
    """A regular-file member called `name`."""
    return tarfile.TarInfo(name), data


def symlink_member(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    """A symbolic-link member called `name`, pointing at `target`."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, b""


@dataclasses.dataclass(frozen=True)
class Layout:
    """A target folder to extract into, and an outside folder nothing may reach."""

    target: Path
    outside: Path

    def written_outside(self) -> list[Path]:
        """Files that appeared outside the target: in `outside`, or beside the target."""
        beside = [path for path in self.target.parent.iterdir() if path != self.target]
        return sorted(path for path in [*self.outside.rglob("*"), *beside] if path.exists() or path.is_symlink())


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """tmp_path/deep/target to extract into (not yet created) and tmp_path/outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "deep").mkdir()
    return Layout(target=tmp_path / "deep" / "target", outside=outside)


@pytest.fixture
def s3(local_aws_env: LocalAWS) -> BaseClient:
    """An S3 client of the local endpoint."""
    return boto3.client("s3")


def upload(s3: BaseClient, bucket: str, data: bytes) -> str:
    """Put a model.tar.gz under a fresh prefix; return its S3 URI."""
    key = f"faults/{uuid.uuid4().hex}/output/model.tar.gz"
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


ESCAPING_ARCHIVES = {
    "dot-dot file": lambda layout: [file_member("model.pt"), file_member("../evil.txt")],
    "symlink to an absolute outside folder": lambda layout: [
        symlink_member("link", str(layout.outside)), file_member("link/evil.txt")],
    "symlink climbing out with ..": lambda layout: [
        symlink_member("link", "../../outside"), file_member("link/evil.txt")],
}


@pytest.mark.parametrize("kind", list(ESCAPING_ARCHIVES))
def test_download_model_refuses_members_escaping_the_target(
    s3: BaseClient, local_aws_env: LocalAWS, layout: Layout, kind: str
) -> None:
    uri = upload(s3, local_aws_env.bucket, tar_gz(ESCAPING_ARCHIVES[kind](layout)))

    with pytest.raises(tarfile.FilterError, match="outside the destination|absolute") as caught:
        sagemaker_job.download_model(uri, layout.target)

    assert isinstance(caught.value, (tarfile.OutsideDestinationError, tarfile.AbsoluteLinkError,
                                     tarfile.LinkOutsideDestinationError))
    assert layout.written_outside() == []
    assert not (layout.target / "link").is_symlink()


@pytest.fixture
def absolute_archive(s3: BaseClient, local_aws_env: LocalAWS, layout: Layout) -> tuple[str, Path]:
    """A model.tar.gz with a member named by an absolute path inside `layout.outside`; its URI and that path."""
    planted = layout.outside / uuid.uuid4().hex / "evil.txt"
    return upload(s3, local_aws_env.bucket, tar_gz([file_member("model.pt"), file_member(str(planted))])), planted


def test_download_model_keeps_an_absolute_member_inside_the_target(
    absolute_archive: tuple[str, Path], layout: Layout
) -> None:
    uri, planted = absolute_archive

    sagemaker_job.download_model(uri, layout.target)

    # tarfile's "data" filter strips the leading "/" instead of refusing: the file lands below the target.
    assert not planted.exists()
    assert layout.written_outside() == []
    assert (layout.target / str(planted).lstrip("/")).read_bytes() == b"planted by a model.tar.gz\n"


def test_download_model_returns_only_paths_inside_the_target(
    absolute_archive: tuple[str, Path], layout: Layout
) -> None:
    uri, planted = absolute_archive

    files = sagemaker_job.download_model(uri, layout.target)

    target = layout.target.resolve()
    assert [path.resolve().is_relative_to(target) for path in files] == [True, True]
    assert all(path.is_file() for path in files)


def test_download_prefix_refuses_a_key_escaping_the_target(
    s3: BaseClient, local_aws_env: LocalAWS, layout: Layout
) -> None:
    prefix = f"faults/{uuid.uuid4().hex}/tensorboard"
    escaping = f"{prefix}/../../../evil.txt"
    for key in (escaping, f"{prefix}/events.out.tfevents.1"):
        s3.put_object(Bucket=local_aws_env.bucket, Key=key, Body=b"planted by an S3 key\n")
    listed = [item["Key"] for item in s3.list_objects_v2(Bucket=local_aws_env.bucket, Prefix=prefix)["Contents"]]
    assert escaping in listed  # moto 5.2.5, as S3, keeps a key's ".." segments: the refusal below is what stops it

    refusal = re.escape(f"s3://{local_aws_env.bucket}/{escaping} would be written outside {layout.target}")
    with pytest.raises(ValueError, match=refusal):
        sagemaker_job.download_prefix(f"s3://{local_aws_env.bucket}/{prefix}/", layout.target)

    assert layout.written_outside() == []
    assert not (layout.target / "../../../evil.txt").resolve().exists()


# --- 5. the loopback mirror listens on 127.0.0.1 only -----------------------------------------------------------


def non_loopback_ipv4_addresses() -> list[str]:
    """This machine's IPv4 addresses outside 127.0.0.0/8."""
    return sorted({address.address for addresses in psutil.net_if_addrs().values() for address in addresses
                   if address.family == socket.AF_INET and not address.address.startswith("127.")})


def test_loopback_mirror_listens_on_127_0_0_1_only(mirror_dir: Path) -> None:
    with mnist_mirror.serve(mirror_dir) as url:
        parts = urlsplit(url)
        assert (parts.scheme, parts.hostname) == ("http", "127.0.0.1")
        listening = {conn.laddr.ip for conn in psutil.Process().net_connections(kind="inet")
                     if conn.status == psutil.CONN_LISTEN and conn.laddr.port == parts.port}
        assert listening == {"127.0.0.1"}
        with urllib.request.urlopen(url + "SHA256SUMS", timeout=10) as response:
            assert response.read() == (mirror_dir / "SHA256SUMS").read_bytes()
        for address in non_loopback_ipv4_addresses():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((address, parts.port), timeout=5).close()
    with pytest.raises(ConnectionRefusedError):  # and it is stopped on leaving the block
        socket.create_connection(("127.0.0.1", parts.port), timeout=5).close()

"""S3 I/O of the local SageMaker (tools/local_sagemaker/s3_io.py) and the one path-traversal guard it shares with
code/sagemaker_job.py (mnist_s3.local_path_for_key), against moto in this process."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from botocore.client import BaseClient

import sagemaker_job
from local_sagemaker import s3_io
from mnist_s3 import local_path_for_key
from support import MOCK_BUCKET

BUCKET = MOCK_BUCKET



def put(s3: BaseClient, *keys: str) -> None:
    """Objects whose body names their key."""
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=f"object {key}".encode())


def files_below(folder: Path) -> dict[str, str]:
    """Each file below folder (relative path) with its text."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return {path.relative_to(folder).as_posix(): path.read_text() for path in files}


# --- the guard ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix, key, expected",
    [
        pytest.param("data/train/", "data/train/a.gz", "a.gz", id="prefix with slash"),
        pytest.param("data/train", "data/train/a.gz", "a.gz", id="prefix without slash"),
        pytest.param("data/train", "data/train/sub/a.gz", "sub/a.gz", id="nested key"),
        pytest.param("data/train", "data/train//etc/passwd", "etc/passwd", id="absolute-looking rest stays inside"),
        pytest.param("data/train", "data/train/sub/../b.gz", "b.gz", id="dot-dot that stays inside"),
        pytest.param("out/model.tar.gz", "out/model.tar.gz", "model.tar.gz", id="key is the prefix: its own name"),
        pytest.param("", "a/b.gz", "a/b.gz", id="whole bucket"),
    ],
)
def test_a_key_lands_at_its_path_below_the_prefix(tmp_path: Path, prefix: str, key: str, expected: str) -> None:
    assert local_path_for_key(tmp_path / "target", BUCKET, prefix, key) == (tmp_path / "target" / expected).resolve()


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("data/train/../evil.txt", id="parent"),
        pytest.param("data/train/../../../etc/passwd", id="far up"),
        pytest.param("data/train/sub/../../evil.txt", id="down then up"),
        pytest.param("data/train/.", id="the target itself"),
        pytest.param("data/train/..", id="the parent itself"),
    ],
)
def test_a_key_escaping_the_target_is_refused(tmp_path: Path, key: str) -> None:
    target = tmp_path / "target"
    with pytest.raises(ValueError, match=rf"s3://{BUCKET}/{key} would be written outside {target}"):
        local_path_for_key(target, BUCKET, "data/train", key)


def test_a_symlink_in_the_target_cannot_lead_outside(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "target" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(ValueError, match=r"would be written outside .*outside/x"):
        local_path_for_key(tmp_path / "target", BUCKET, "p", "p/link/x")


def test_a_key_not_under_the_prefix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"s3://{BUCKET}/other/a is not under the prefix s3://{BUCKET}/data/"):
        local_path_for_key(tmp_path, BUCKET, "data/", "other/a")


# --- both downloaders use it ----------------------------------------------------------------------------------------


def test_both_downloaders_place_the_same_files(s3: BaseClient, tmp_path: Path) -> None:
    put(s3, "job/tb/events.1", "job/tb/sub/events.2", "job/tb/folder/", "job/other")
    uri = f"s3://{BUCKET}/job/tb/"

    count = s3_io.download_prefix(s3, uri, tmp_path / "runner")
    paths = sagemaker_job.download_prefix(uri, tmp_path / "notebook", s3_client=s3)

    expected = {"events.1": "object job/tb/events.1", "sub/events.2": "object job/tb/sub/events.2"}
    assert files_below(tmp_path / "runner") == files_below(tmp_path / "notebook") == expected
    assert count == len(paths) == 2  # the folder marker is no file


def test_both_downloaders_refuse_an_escaping_key_and_write_nothing_outside(s3: BaseClient, tmp_path: Path) -> None:
    put(s3, "job/tb/../../evil.txt")
    uri = f"s3://{BUCKET}/job/tb/"
    target = tmp_path / "deep" / "down"

    with pytest.raises(ValueError, match=rf"s3://{BUCKET}/job/tb/../../evil.txt would be written outside {target}"):
        s3_io.download_prefix(s3, uri, target)
    with pytest.raises(ValueError, match=rf"s3://{BUCKET}/job/tb/../../evil.txt would be written outside {target}"):
        sagemaker_job.download_prefix(uri, target, s3_client=s3)

    assert files_below(tmp_path) == {}


# --- folder sync ------------------------------------------------------------------------------------------------


def synced(s3: BaseClient, prefix: str) -> dict[str, bytes]:
    """The objects under a prefix, with their bodies."""
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]
    return {key: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in keys}


def test_folder_sync_uploads_a_file_only_once_it_is_unchanged_between_pushes(s3: BaseClient, tmp_path: Path) -> None:
    sync = s3_io.FolderSync(s3, tmp_path, f"s3://{BUCKET}/checkpoints")
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"epoch 1, first half")

    assert sync.push() == []  # first seen: it may still be being written
    checkpoint.write_bytes(b"epoch 1, first half and the rest")
    assert sync.push() == []  # it changed since the last push
    assert sync.push() == ["checkpoints/last.ckpt"]  # unchanged since the last push: complete
    assert sync.push() == []  # already uploaded as it is

    assert synced(s3, "checkpoints/") == {"checkpoints/last.ckpt": b"epoch 1, first half and the rest"}


def test_folder_sync_final_push_uploads_every_change_at_once(s3: BaseClient, tmp_path: Path) -> None:
    sync = s3_io.FolderSync(s3, tmp_path, f"s3://{BUCKET}/job/tensorboard-output/")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "events.1").write_bytes(b"scalars")
    sync.push()
    sync.push()
    (tmp_path / "run" / "events.1").write_bytes(b"scalars, and more")
    (tmp_path / "hparams.yaml").write_bytes(b"lr: 0.01")

    pushed = sync.push(final=True)

    assert pushed == ["job/tensorboard-output/hparams.yaml", "job/tensorboard-output/run/events.1"]
    assert synced(s3, "job/") == {
        "job/tensorboard-output/hparams.yaml": b"lr: 0.01",
        "job/tensorboard-output/run/events.1": b"scalars, and more",
    }


def test_folder_sync_of_a_missing_folder_uploads_nothing(s3: BaseClient, tmp_path: Path) -> None:
    assert s3_io.FolderSync(s3, tmp_path / "never-made", f"s3://{BUCKET}/x/").push(final=True) == []
    assert synced(s3, "") == {}


# --- packing ------------------------------------------------------------------------------------------------------


def test_pack_folder_packs_the_contents_at_the_top_of_the_archive(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    (model / "model.pt").write_bytes(b"weights")
    (model / "code" / "inference.py").write_text("def model_fn(): ...\n")

    names = s3_io.pack_folder(model, tmp_path / "model.tar.gz")

    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        members = sorted(member.name for member in tar.getmembers())
        weights = tar.extractfile("model.pt").read()
    assert names == ["code", "model.pt"]
    assert members == ["code", "code/inference.py", "model.pt"]
    assert weights == b"weights"


def test_upload_outputs_puts_model_and_output_archives_side_by_side(s3: BaseClient, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.pt").write_bytes(b"weights")
    (tmp_path / "output" / "data").mkdir(parents=True)
    (tmp_path / "output" / "data" / "metrics.json").write_text('{"test_acc": 0.99}')
    model_uri = f"s3://{BUCKET}/jobs/job-1/output/model.tar.gz"

    uploaded = s3_io.upload_outputs(s3, tmp_path / "model", tmp_path / "output" / "data", model_uri, tmp_path)

    assert uploaded == {"model.tar.gz": model_uri, "output.tar.gz": f"s3://{BUCKET}/jobs/job-1/output/output.tar.gz"}
    assert sorted(synced(s3, "jobs/")) == ["jobs/job-1/output/model.tar.gz", "jobs/job-1/output/output.tar.gz"]
    s3.download_file(BUCKET, "jobs/job-1/output/output.tar.gz", str(tmp_path / "downloaded.tar.gz"))
    with tarfile.open(tmp_path / "downloaded.tar.gz") as tar:
        assert tar.extractfile("metrics.json").read() == b'{"test_acc": 0.99}'


def test_upload_outputs_refuses_a_model_uri_that_is_no_model_tar_gz(s3: BaseClient, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"'s3://{BUCKET}/jobs/model.zip': a training job's model artifact"):
        s3_io.upload_outputs(s3, tmp_path, tmp_path, f"s3://{BUCKET}/jobs/model.zip", tmp_path)

"""Execute the notebooks end to end with papermill, offline, and check what each one produced.

The notebooks run in order, as a reader runs them, against the loopback MNIST mirror (real digits)
and the local AWS endpoint. Executed copies are kept under build/test-notebooks for reading failures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

import mnist_data
import mnist_model
import run_notebooks
from local_aws import LocalAWS

REPO = Path(__file__).resolve().parents[1]
EXECUTED = REPO / "build" / "test-notebooks"


@pytest.fixture(scope="module")
def workbook(
    tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path, mirror_url: str, local_aws: LocalAWS
) -> Iterator[dict[str, object]]:
    """Run every notebook once with small parameters; yield their runs and the folders they used."""
    work = tmp_path_factory.mktemp("workbook")
    data_dir, run_dir = work / "data", work / "run"
    common = {"DATA_DIR": str(data_dir), "PROGRESS": False}
    parameters = {
        "01_download_and_explore": {**common, "S3_PREFIX": "mnist"},
        "02_build_the_model": {**common, "OVERFIT_EPOCHS": 30},
        "03_train_locally": {**common, "RUN_DIR": str(run_dir), "EPOCHS": 2},
    }
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            **local_aws.env,
            "MNIST_MIRRORS": mirror_url,
            "MNIST_SHA256SUMS": str(mirror_dir / "SHA256SUMS"),
        }.items():
            patch.setenv(name, value)
        for path in run_notebooks.select_notebooks([]):
            runs[path.stem] = run_notebooks.execute_notebook(path, EXECUTED, parameters.get(path.stem, common))
    yield {"runs": runs, "data_dir": data_dir, "run_dir": run_dir}


def run_of(workbook: dict[str, object], name: str) -> run_notebooks.NotebookRun:
    """The run of one notebook, which must have succeeded."""
    run = workbook["runs"][name]
    assert run.status == "ok", f"{name} failed: {run.error}; see {EXECUTED / (name + '.ipynb')}"
    assert (EXECUTED.parent / "test-notebooks" / "html" / f"{name}.html").is_file()
    return run


def test_01_downloads_the_real_digits_and_stages_both_channels_in_s3(workbook, local_aws: LocalAWS) -> None:
    results = run_of(workbook, "01_download_and_explore").results
    assert results["train_images"] == 4000 and results["test_images"] == 1000
    assert results["s3_uri"] == f"s3://{local_aws.bucket}/mnist"
    s3 = boto3.client("s3", endpoint_url=local_aws.endpoint_url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = sorted(item["Key"] for item in s3.list_objects_v2(Bucket=local_aws.bucket, Prefix="mnist/")["Contents"])
    assert keys == [
        "mnist/test/t10k-images-idx3-ubyte.gz",
        "mnist/test/t10k-labels-idx1-ubyte.gz",
        "mnist/train/train-images-idx3-ubyte.gz",
        "mnist/train/train-labels-idx1-ubyte.gz",
    ]
    for key in keys:
        local = workbook["data_dir"] / Path(key).name
        assert s3.get_object(Bucket=local_aws.bucket, Key=key)["Body"].read() == local.read_bytes()


def test_02_checks_the_model_before_training(workbook) -> None:
    results = run_of(workbook, "02_build_the_model").results
    assert 150_000 <= results["parameters"] <= 250_000
    assert 1.5 < results["initial_loss"] < 3.5
    assert results["overfit_loss"] < 0.1


def test_03_trains_a_model_that_recognises_held_out_real_digits(workbook, mirror_dir: Path) -> None:
    results = run_of(workbook, "03_train_locally").results
    assert results["test_accuracy"] >= 0.90
    assert results["images_per_second"] > 0
    # Check the saved model independently of what the notebook reported.
    run_dir = workbook["run_dir"]
    model = mnist_model.load_model(run_dir / "model" / "model.pt")
    images, labels = mnist_data.load_split(mirror_dir, "test")
    accuracy = (mnist_model.predict(model, images) == labels).float().mean().item()
    assert accuracy >= 0.90
    assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-6)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert list((run_dir / "output" / "tensorboard").rglob("events.out.tfevents.*"))

"""Execute the notebooks end to end with papermill, offline, and check what each one produced.

The notebooks run in order, as a reader runs them, against the loopback MNIST mirror (real digits)
and the local AWS endpoint. Executed copies are kept under build/test-notebooks for reading failures.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest
import torch

import batch_predictions
import edge_export
import endpoint_cleanup
import mnist_data
import mnist_model
import plots
import run_context
import run_notebooks
import sagemaker_job
import scale_out
import tb_logs
import train
from code_listing import LISTING_MIME_TYPE
from local_aws import LocalAWS
from notebook_outputs import offenders
from support import aws_clients, free_port, wait_for

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
        "04_train_on_sagemaker": {**common, "S3_PREFIX": "mnist", "MODEL_DIR": str(work / "job-model"), "EPOCHS": 2},
        "05_review_tensorboard_logs": {**common, "LOCAL_RUN_DIR": str(run_dir), "JOB_LOGS_DIR": str(work / "job-logs")},
        "06_deploy_and_predict": {
            **common,
            "SAGEMAKER_MODEL_DIR": str(work / "job-model"),
            "LOCAL_MODEL_DIR": str(run_dir / "model"),
            "DEPLOY_DIR": str(work / "deploy"),
            "LATENCY_REQUESTS": 20,
        },
        "07_batch_and_edge": {
            **common,
            "SAGEMAKER_MODEL_DIR": str(work / "job-model"),
            "LOCAL_MODEL_DIR": str(run_dir / "model"),
            "DEPLOY_DIR": str(work / "deploy"),
            "BATCH_DIR": str(work / "batch"),
        },
        "08_scale_out": {
            **common, "S3_PREFIX": "mnist", "EPOCHS": 2, "WORK_DIR": str(work / "scale-out"),
            "BENCH_JSON": str(work / "no-bench.json"),  # the cell that reads `make bench`'s figures says where they are
        },
        "09_tune_hyperparameters": {
            **common,
            "S3_PREFIX": "mnist",
            **run_notebooks.LOCAL_AWS_PARAMETERS["09_tune_hyperparameters"],  # 4 trials of 1 epoch, 2 at a time
            "MODEL_DIR": str(work / "tuning-best-model"),
            "BASELINE_MODEL_DIR": str(work / "tuning-baseline-model"),
        },
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
    yield {"runs": runs, "data_dir": data_dir, "run_dir": run_dir, "job_logs": work / "job-logs"}


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
    (s3,) = aws_clients(local_aws.endpoint_url, "s3")
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
    # The throughput is of the images trained on: the mirror's training digits less the validation share, twice.
    train_digits = len(mnist_data.load_split(mirror_dir, "train")[1])
    trained = (train_digits - round(train_digits * train.Hyperparameters().val_fraction)) * 2
    assert results["images_per_second"] * results["train_seconds"] == pytest.approx(trained, rel=0.02)
    # Check the saved model independently of what the notebook reported.
    run_dir = workbook["run_dir"]
    model = mnist_model.load_model(run_dir / "model" / "model.pt")
    images, labels = mnist_data.load_split(mirror_dir, "test")
    accuracy = (mnist_model.predict(model, images) == labels).float().mean().item()
    assert accuracy >= 0.90
    assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-6)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert list((run_dir / "output" / "tensorboard").rglob("events.out.tfevents.*"))


def deployed_model_file(workbook: dict[str, object], results: dict[str, object]) -> Path:
    """The model notebook 06 deployed: notebook 04's job's if that notebook ran, else notebook 03's."""
    model_file = Path(results["model_file"])
    candidates = {workbook["run_dir"].parent / "job-model" / "model.pt", workbook["run_dir"] / "model" / "model.pt"}
    assert model_file in candidates, f"notebook 06 deployed {model_file}, not a model of notebook 03 or 04"
    return model_file


def listed_names(sagemaker: Any) -> set[str]:
    """Every endpoint, endpoint configuration and model the SageMaker API lists."""
    names = {item["EndpointName"] for item in sagemaker.list_endpoints()["Endpoints"]}
    names |= {item["EndpointConfigName"] for item in sagemaker.list_endpoint_configs()["EndpointConfigs"]}
    return names | {item["ModelName"] for item in sagemaker.list_models()["Models"]}


def test_06_deploys_to_an_endpoint_that_answers_as_the_model_does_here_and_cleans_up(
    workbook, mirror_dir: Path, local_aws: LocalAWS
) -> None:
    results = run_of(workbook, "06_deploy_and_predict").results
    assert results["predict_accuracy"] >= 0.90
    # Through InvokeEndpoint, the endpoint answered exactly as the deployed model does in this process.
    model = mnist_model.load_model(deployed_model_file(workbook, results))
    images, labels = mnist_data.load_split(mirror_dir, "test")
    accuracy = (mnist_model.predict(model, images) == labels).float().mean().item()
    assert results["predict_accuracy"] == pytest.approx(accuracy, abs=1e-6) == results["local_accuracy"]
    assert results["disagreements"] == 0
    saved, source = batch_predictions.load_digits(workbook["run_dir"].parent / "deploy" / "endpoint_digits.json")
    assert saved == mnist_model.predict(model, images).tolist() and source == f"endpoint {results['endpoints'][0]}"
    assert results["hand_drawn_digit"] == 7
    assert results["bad_request_statuses"] == [400, 400, 415]  # each a ModelError carrying the handler's status
    assert 0 < results["latency_p50_ms"] <= results["latency_p99_ms"] and results["latency_errors"] == 0
    # The clean-up left no endpoint, configuration or model (real-time and serverless), as the API lists them...
    (sagemaker,) = aws_clients(local_aws.endpoint_url, "sagemaker")
    deployed = set(results["endpoints"]) | set(results["models"])
    assert len(deployed) == 4 and deployed & listed_names(sagemaker) == set()
    # ... and running it again is harmless: everything is already gone.
    for name in results["endpoints"]:
        assert endpoint_cleanup.delete_deployment(name, sagemaker) == [f"endpoint {name}: already gone, nothing to delete"]


def test_06_exercise_solutions(workbook) -> None:
    results = run_of(workbook, "06_deploy_and_predict").results
    assert results["exercise_1_digit"] == 1  # the drawn vertical stroke
    real_time_usd, serverless_usd = results["exercise_2_usd"]
    assert real_time_usd == pytest.approx(730 * 0.12) and 0 < serverless_usd < real_time_usd
    assert results["exercise_3_wrong"] == round((1 - results["predict_accuracy"]) * 1000)


def test_07_batch_transform_answers_every_digit_as_the_endpoint_did(workbook, mirror_dir: Path,
                                                                    local_aws: LocalAWS) -> None:
    results = run_of(workbook, "07_batch_and_edge").results
    model = mnist_model.load_model(deployed_model_file(workbook, results))
    images, labels = mnist_data.load_split(mirror_dir, "test")
    accuracy = (mnist_model.predict(model, images) == labels).float().mean().item()
    assert results["batch_images"] == len(images) == 1000  # the subset notebook 01 staged offline
    assert results["batch_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    endpoint = run_of(workbook, "06_deploy_and_predict").results["endpoints"][0]
    assert results["batch_reference"] == f"endpoint {endpoint}" and results["batch_disagreements"] == 0
    (sagemaker,) = aws_clients(local_aws.endpoint_url, "sagemaker")
    job = sagemaker.describe_transform_job(TransformJobName=results["transform_job"])
    assert job["TransformJobStatus"] == "Completed" and job["TransformInput"]["ContentType"] == "application/x-npy"
    assert set(results["models"]) & listed_names(sagemaker) == set()  # the clean-up deleted the job's model


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # PyTorch 2.14 points to torch.export instead
def test_07_edge_exports_compute_what_the_eager_model_computes(workbook, mirror_dir: Path) -> None:
    results = run_of(workbook, "07_batch_and_edge").results
    for kind in edge_export.FORMATS:
        assert 0 <= results[f"{kind}_max_abs_diff"] <= 1e-5, kind
        assert results[f"{kind}_kb"] > 100 and results[f"{kind}_ms"] > 0, kind
    # Check the exported files independently of what the notebook reported.
    model = mnist_model.load_model(deployed_model_file(workbook, results))
    images = mnist_data.normalise(mnist_data.load_split(mirror_dir, "test")[0])
    with torch.inference_mode():
        eager = model(images)
    batch_dir = workbook["run_dir"].parent / "batch"
    scripted = torch.jit.load(batch_dir / edge_export.FILE_NAMES["torchscript"])
    with torch.inference_mode():
        assert (scripted(images) - eager).abs().max().item() <= 1e-5
    for kind in ("onnx", "executorch"):
        logits, _ = edge_export.run_exported(kind, batch_dir / edge_export.FILE_NAMES[kind], images)
        assert np.abs(logits - eager.numpy()).max() <= 1e-5, kind


def test_07_exercise_solutions(workbook) -> None:
    results = run_of(workbook, "07_batch_and_edge").results
    assert results["exercise_1_max_abs_diff"] <= 1e-5
    assert results["exercise_2_minutes"] == pytest.approx(results["batch_seconds"] / 1000 * 70_000 / 60, rel=0.01)
    fastest = min(edge_export.FORMATS, key=lambda kind: results[f"{kind}_ms"])
    assert results["exercise_3_fastest"] == fastest
    assert results["exercise_3_speed_up"] == pytest.approx(results["eager_ms"] / results[f"{fastest}_ms"], rel=0.05)


def test_04_runs_a_training_job_whose_model_recognises_held_out_real_digits(
    workbook, local_aws: LocalAWS, mirror_dir: Path, tmp_path: Path
) -> None:
    import tarfile

    results = run_of(workbook, "04_train_on_sagemaker").results
    s3, logs, sagemaker = aws_clients(local_aws.endpoint_url, "s3", "logs", "sagemaker")
    job_name = results["model_data"].split("/")[-3]  # s3://<bucket>/<base job name>/<job>/output/model.tar.gz
    job = sagemaker.describe_training_job(TrainingJobName=job_name)
    assert job["TrainingJobStatus"] == results["job_status"] == "Completed"
    assert job["BillableTimeInSeconds"] == results["billable_seconds"] > 0
    # SageMaker read the validation accuracy from the job's log with the notebook's metric definitions.
    final_metrics = {metric["MetricName"]: metric["Value"] for metric in job["FinalMetricDataList"]}
    assert final_metrics["validation:accuracy"] == pytest.approx(results["val_accuracy"])
    assert results["val_accuracy"] > 0.9
    # The model in S3, checked independently of the notebook: it loads with weights_only=True and scores.
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == results["model_data"]
    bucket, key = results["model_data"].removeprefix("s3://").split("/", 1)
    s3.download_file(bucket, key, str(tmp_path / "model.tar.gz"))
    with tarfile.open(tmp_path / "model.tar.gz") as archive:
        assert archive.getnames() == ["model.pt"]
        archive.extractall(tmp_path, filter="data")
    model = mnist_model.load_model(tmp_path / "model.pt")
    images, labels = mnist_data.load_split(mirror_dir, "test")
    accuracy = (mnist_model.predict(model, images) == labels).float().mean().item()
    assert accuracy >= 0.90 and accuracy == pytest.approx(results["test_accuracy"], abs=1e-6)
    # The job's CloudWatch log holds train.py's metric lines: one per epoch, then the test metrics.
    group = "/aws/sagemaker/TrainingJobs"
    (stream,) = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{job_name}/")["logStreams"]
    events = logs.get_log_events(logGroupName=group, logStreamName=stream["logStreamName"], startFromHead=True)
    lines = [event["message"] for event in events["events"]]
    assert [line.split(";")[0] for line in lines if line.startswith("epoch=")] == ["epoch=1", "epoch=2"]
    assert any(line.startswith("test_loss=") and "test_acc=" in line for line in lines)
    # TensorBoard event files and checkpoints reached S3, where SageMaker puts them.
    tensorboard = f"{job['TensorBoardOutputConfig']['S3OutputPath']}/{job_name}/tensorboard-output/"
    for uri, expected in ((tensorboard, "events.out.tfevents."), (job["CheckpointConfig"]["S3Uri"], "last.ckpt")):
        prefix = uri.removeprefix(f"s3://{bucket}/")
        keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
        assert any(expected in key for key in keys), f"no {expected} under {uri}: {keys}"


@contextlib.contextmanager
def tensorboard_server(logdir: Path) -> Iterator[str]:
    """The real TensorBoard server on 127.0.0.1, serving `logdir`; yields its base URL and stops it."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(logdir), "--host", "127.0.0.1",
               "--port", str(port), "--reload_interval", "0"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            urllib.request.urlopen(f"{url}/data/plugin/scalars/tags", timeout=2).close()
            return True
        except OSError:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            return False

    try:
        wait_for(answers, f"TensorBoard to answer at {url}", timeout_s=60)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_05_reads_the_local_and_the_sagemaker_runs(workbook) -> None:
    results = run_of(workbook, "05_review_tensorboard_logs").results
    assert results["runs"] == 2  # notebook 03's local run and notebook 04's job
    local = tb_logs.read_scalars(workbook["run_dir"] / "output" / "tensorboard")
    job = tb_logs.read_scalars(workbook["job_logs"])
    assert results["scalar_points"] == sum(len(points) for scalars in (local, job) for points in scalars.values())
    assert len(job["val_acc"]) == 2 and job["val_acc"][-1][1] > 0.9  # two epochs, as notebook 04 was told


def test_05_tensorboard_serves_the_values_the_notebook_plotted(workbook) -> None:
    run_of(workbook, "05_review_tensorboard_logs")
    logdir = workbook["job_logs"]
    plotted = tb_logs.read_scalars(logdir)
    with tensorboard_server(logdir) as url:
        tags = json.load(urllib.request.urlopen(f"{url}/data/plugin/scalars/tags", timeout=10))
        (run,) = [run for run, run_tags in tags.items() if "val_acc" in run_tags]
        query = urllib.parse.urlencode({"run": run, "tag": "val_acc"})
        served = json.load(urllib.request.urlopen(f"{url}/data/plugin/scalars/scalars?{query}", timeout=10))
    assert [step for _, step, _ in served] == [step for step, _ in plotted["val_acc"]]
    assert [value for _, _, value in served] == pytest.approx([value for _, value in plotted["val_acc"]])


def executed(name: str) -> nbformat.NotebookNode:
    """The executed copy of a notebook, as the workbook fixture saved it."""
    return nbformat.read(EXECUTED / "notebooks" / f"{name}.ipynb", as_version=4)


def printed(notebook: nbformat.NotebookNode) -> str:
    """Everything the notebook's cells printed to stdout."""
    return "".join(output.text for cell in notebook.cells for output in cell.get("outputs", [])
                   if output.output_type == "stream" and output.name == "stdout")


def test_no_executed_notebook_shows_a_warning_a_start_up_log_a_stack_trace_or_a_long_output(workbook) -> None:
    # Every notebook that exists, whoever writes it: the list names each offending cell and why.
    found = []
    for name in workbook["runs"]:
        path = EXECUTED / "notebooks" / f"{name}.ipynb"
        found.extend(offenders(executed(name), name) if path.is_file() else [f"{name}: no executed copy at {path}"])

    assert found == []


def test_every_listing_in_the_executed_workbook_is_its_file_as_it_is(workbook) -> None:
    listed: dict[str, set[str]] = {}
    for name in workbook["runs"]:
        for cell in executed(name).cells:
            for output in cell.get("outputs", []):
                note = output.get("data", {}).get(LISTING_MIME_TYPE)
                if note is None:
                    continue
                lines = (REPO / note["file"]).read_text().splitlines(keepends=True)
                header = f"# {note['file']}, lines {note['first_line']}–{note['last_line']}\n"
                assert output.data["text/plain"] == header + "".join(lines[note["first_line"] - 1 : note["last_line"]])
                listed.setdefault(name, set()).add(note["object"])

    assert {"mnist_model.MNISTClassifier.training_step", "mnist_model.MNISTClassifier.configure_optimizers",
            "mnist_data.MNISTDataModule.setup"} <= listed["02_build_the_model"]
    assert {"train.build_trainer", "train.fit"} <= listed["03_train_locally"]


def test_01_states_the_data_it_loaded_its_count_and_its_source(workbook, mirror_dir: Path, mirror_url: str) -> None:
    results = run_of(workbook, "01_download_and_explore").results
    data_dir = workbook["data_dir"]
    train_images, _ = mnist_data.load_split(data_dir, "train")
    test_images, _ = mnist_data.load_split(data_dir, "test")
    # The files it loaded are the mirror's, byte for byte: the source it names is where they came from.
    assert {path.name: path.read_bytes() for path in data_dir.glob("*.gz")} == {
        path.name: path.read_bytes() for path in mirror_dir.glob("*.gz")}

    expected = run_context.DataStatement(len(train_images), len(test_images), (mirror_url,), full_mnist=False)
    assert results["data"] == str(expected) and results["full_mnist"] is False
    assert results["data"].startswith(f"{len(train_images):,} training and {len(test_images):,} test digits from {mirror_url}")
    assert results["data"] + "\n" in printed(executed("01_download_and_explore"))


def test_01_exercise_solutions(workbook) -> None:
    results = run_of(workbook, "01_download_and_explore").results
    images, labels = mnist_data.load_split(workbook["data_dir"], "train")
    brightest = images.float().mean(dim=(1, 2)).argsort(descending=True)[:32]
    first, whole = (torch.bincount(part.long(), minlength=10) / len(part) for part in (labels[:1000], labels))

    assert results["exercise_1_fetched"] == ["t10k-labels-idx1-ubyte.gz"]
    assert results["exercise_2_most_common_digit"] == int(torch.bincount(labels[brightest].long(), minlength=10).argmax())
    assert results["exercise_3_largest_gap_points"] == pytest.approx((first - whole).abs().max().item() * 100, abs=0.01)


def test_02_exercise_solutions(workbook) -> None:
    results = run_of(workbook, "02_build_the_model").results

    assert results["exercise_1_parameters"] == mnist_model.count_parameters(mnist_model.MNISTClassifier(width=8))
    # With a softmax before cross_entropy, the loss cannot go below log(e + 9) - 1: what the solution says.
    assert results["exercise_2_softmax_loss"] >= math.log(math.e + 9) - 1 - 1e-4
    assert results["exercise_2_softmax_loss"] > 100 * results["overfit_loss"]
    assert results["exercise_3_loss"] > 0.5 > 100 * results["overfit_loss"]  # lr 1.0 does not fit the batch


def test_03_records_the_learning_rate_finders_suggestion_inside_its_search_range(workbook) -> None:
    results = run_of(workbook, "03_train_locally").results
    low, high = results["lr_finder_range"]

    assert (low, high) == (1e-5, 1.0)
    assert isinstance(results["lr_suggestion"], float) and low <= results["lr_suggestion"] <= high


def test_03_exercise_solutions(workbook, mirror_dir: Path) -> None:
    results = run_of(workbook, "03_train_locally").results
    images, labels = mnist_data.load_split(mirror_dir, "test")
    work = workbook["run_dir"].parent

    for key, folder in (("exercise_1_test_accuracy", "one-epoch"), ("exercise_2_test_accuracy", "suggested-lr")):
        model = mnist_model.load_model(work / folder / "model" / "model.pt")
        assert results[key] == pytest.approx((mnist_model.predict(model, images) == labels).float().mean().item(), abs=1e-6)
    assert results["exercise_1_test_accuracy"] >= 0.85
    trained_with = tb_logs.read_hyperparameters(work / "suggested-lr" / "output" / "tensorboard")
    assert trained_with["lr"] == pytest.approx(results["lr_suggestion"])
    checkpoint = torch.load(workbook["run_dir"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert results["exercise_3_checkpoint_epoch"] == checkpoint["epoch"] == 1  # EPOCHS = 2, counted from 0


def test_08_trains_one_model_on_two_hosts_in_half_the_steps_of_notebook_04(workbook, mirror_dir: Path) -> None:
    scaled, reference = run_of(workbook, "08_scale_out").results, run_of(workbook, "04_train_on_sagemaker").results
    images = scale_out.training_images(mnist_data.load_split(mirror_dir, "train"), train.Hyperparameters())
    batch = train.Hyperparameters().batch_size

    assert (scaled["job_status"], scaled["instances"], scaled["processes"]) == ("Completed", 2, 2)
    # Notebook 04's job: one process, every image; each of the two ranks here: half of each epoch.
    assert scaled["reference_steps"] == 2 * math.ceil(images / batch)
    assert scaled["steps"] == 2 * math.ceil(math.ceil(images / 2) / batch)
    assert scaled["reference_test_accuracy"] == pytest.approx(reference["test_accuracy"])
    assert scaled["test_accuracy"] > 0.9


def test_08_exercise_solutions(workbook) -> None:
    results = run_of(workbook, "08_scale_out").results

    assert results["exercise_1_steps_per_epoch"] == math.ceil(math.ceil(54_000 / 16) / train.Hyperparameters().batch_size)
    assert results["exercise_2_files"] == ["model.pt"]  # rank 0's alone, though both hosts packed model/
    assert results["exercise_3_instance_seconds"] == 2 * results["training_seconds"]  # offline, every second is billable


def test_04_exercise_solutions(workbook, local_aws: LocalAWS) -> None:
    results = run_of(workbook, "04_train_on_sagemaker").results
    logs, sagemaker = aws_clients(local_aws.endpoint_url, "logs", "sagemaker")
    job_name = results["model_data"].split("/")[-3]
    group = "/aws/sagemaker/TrainingJobs"
    (stream,) = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{job_name}/")["logStreams"]
    lines = [event["message"] for event in logs.get_log_events(
        logGroupName=group, logStreamName=stream["logStreamName"], startFromHead=True)["events"]]
    (test_line,) = [line for line in lines if line.startswith("test_loss=")]
    billable = sagemaker.describe_training_job(TrainingJobName=job_name)["BillableTimeInSeconds"]

    assert results["exercise_1_test_loss"] == float(test_line.split(";")[0].removeprefix("test_loss="))
    assert results["exercise_2_cost_usd"] == {
        "ml.m5.xlarge": round(billable / 3600 * 0.23, 4), "ml.g4dn.xlarge": round(billable / 3600 * 0.74, 4)}
    assert results["exercise_3_largest_difference"] < 1e-5  # the log's lines carry what metrics.json holds


def test_05_exercise_solutions(workbook) -> None:
    results = run_of(workbook, "05_review_tensorboard_logs").results
    local = tb_logs.read_scalars(workbook["run_dir"] / "output" / "tensorboard")
    job = tb_logs.read_scalars(workbook["job_logs"])
    smoothed = local["train_loss"][0][1]
    for _, value in local["train_loss"][1:]:
        smoothed = 0.6 * smoothed + 0.4 * value

    assert results["exercise_1_last_smoothed"] == pytest.approx(smoothed)
    assert results["exercise_2_peak_lr"] == pytest.approx(1e-2, rel=0.01)  # the one-cycle peak is train.py's lr
    assert results["exercise_2_last_lr"] < results["exercise_2_peak_lr"] / 10  # and it anneals
    rises = {name: any(b > a for (_, a), (_, b) in zip(s["val_loss"], s["val_loss"][1:])) for name, s in
             (("local", local), ("sagemaker", job))}
    assert results["exercise_3_overfits"] == rises
    assert results["curve_gap"] == plots.curve_gap({"local": local, "sagemaker": job})  # what the figure's title says


def test_09_tunes_four_trials_two_at_a_time_and_scores_the_best_model_beside_notebook_04s(
    workbook, local_aws: LocalAWS, mirror_dir: Path, tmp_path: Path
) -> None:
    results = run_of(workbook, "09_tune_hyperparameters").results
    (sagemaker,) = aws_clients(local_aws.endpoint_url, "sagemaker")
    (summary,) = sagemaker.list_hyper_parameter_tuning_jobs(NameContains="mnist-tune")["HyperParameterTuningJobSummaries"]
    name = summary["HyperParameterTuningJobName"]
    tuning_job = sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    assert tuning_job["HyperParameterTuningJobStatus"] == results["tuning_job_status"] == "Completed"
    assert tuning_job["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxParallelTrainingJobs"] == 2
    assert tuning_job["TrainingJobStatusCounters"]["Completed"] == results["trials"] == 4
    best = tuning_job["BestTrainingJob"]
    assert best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == results["best_objective"]
    trials = sagemaker.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    assert max(t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for t in trials["TrainingJobSummaries"]) \
        == results["best_objective"]
    # The best model, checked independently of the notebook: it loads with weights_only=True and scores as said.
    job = sagemaker.describe_training_job(TrainingJobName=best["TrainingJobName"])
    model_files = sagemaker_job.download_model(job["ModelArtifacts"]["S3ModelArtifacts"], tmp_path,
                                               s3_client=aws_clients(local_aws.endpoint_url, "s3")[0])
    model = mnist_model.load_model(next(path for path in model_files if path.name == mnist_model.MODEL_FILE))
    images, labels = mnist_data.load_split(mirror_dir, "test")
    accuracy = (mnist_model.predict(model, images) == labels).float().mean().item()
    assert accuracy >= 0.90 and accuracy == pytest.approx(results["best_test_accuracy"], abs=1e-6)
    assert model.hparams.width == int(best["TunedHyperParameters"]["width"])
    # Beside it, notebook 04's job scored on the same digits.
    assert results["baseline_test_accuracy"] == pytest.approx(run_of(workbook, "04_train_on_sagemaker").results["test_accuracy"])
    assert results["trial_seconds"] == pytest.approx(
        sum((t["TrainingEndTime"] - t["TrainingStartTime"]).total_seconds() for t in trials["TrainingJobSummaries"]), abs=0.5)


def test_09_exercise_solutions(workbook, local_aws: LocalAWS) -> None:
    results = run_of(workbook, "09_tune_hyperparameters").results
    (sagemaker,) = aws_clients(local_aws.endpoint_url, "sagemaker")
    (summary,) = sagemaker.list_hyper_parameter_tuning_jobs(NameContains="mnist-tune")["HyperParameterTuningJobSummaries"]
    best = sagemaker.describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=summary["HyperParameterTuningJobName"])["BestTrainingJob"]
    assert results["exercise_1_decades"] == round(math.log10(float(best["TunedHyperParameters"]["lr"]) / train.Hyperparameters().lr), 3)
    rng = np.random.default_rng(0)
    linear, logarithmic = rng.uniform(0.001, 0.05, 12), 10 ** rng.uniform(math.log10(0.001), math.log10(0.05), 12)
    expected = {"linear": int((linear < 0.01).sum()), "logarithmic": int((logarithmic < 0.01).sum())}
    assert results["exercise_2_below_0_01"] == expected
    assert results["exercise_2_below_0_01"]["logarithmic"] > results["exercise_2_below_0_01"]["linear"]
    # MAX_JOBS=4 trials of the average length: the 4 trials' seconds, at $0.23 an hour, 70% off.
    assert results["exercise_3_spot_usd"] == pytest.approx(results["trial_seconds"] / 3600 * 0.23 * 0.3, abs=1e-4)

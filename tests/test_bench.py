"""tools/bench.py --quick: every section runs and bench.json holds every figure. Timings are measured, never asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "tools" / "bench.py"
NOTEBOOK_TIMES = {"01_download_and_explore.ipynb": 12.5, "02_build_the_model.ipynb": 7.25}
QUICK_PNG_UPLOADS = 40  # bench.QUICK.upload_pngs


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path) -> dict[str, object]:
    """Run `bench.py --quick` once, with the mirror's 1,000 held-out digits as its test set and a made-up summary."""
    work = tmp_path_factory.mktemp("bench")
    summary = work / "summary.json"
    runs = [{"name": name, "status": "ok", "duration_s": seconds, "results": {}} for name, seconds in NOTEBOOK_TIMES.items()]
    summary.write_text(json.dumps({"aws": "local", "notebooks": runs}))
    output = work / "bench.json"
    command = [sys.executable, str(BENCH), "--quick", "--output", str(output), "--mnist-test-dir", str(mirror_dir), "--summary", str(summary)]
    # Generous: about a minute on 2 idle cores, and these machines are shared.
    completed = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, f"bench.py failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    return {"result": json.loads(output.read_text()), "stdout": completed.stdout}


def is_positive(value: object) -> bool:
    """A finite number above zero."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def is_fraction(value: object) -> bool:
    """A number in [0, 1], as accuracies are."""
    return isinstance(value, float) and 0.0 <= value <= 1.0


def test_bench_json_has_every_headline_figure_with_sane_values(quick_run: dict) -> None:
    result = quick_run["result"]
    assert result["mode"] == "quick"
    assert is_fraction(result["tta_accuracy"])
    for name in ("tta_train_seconds", "lightning_overhead_ratio", "pipeline_speedup", "peak_rss_mb",
                 "lightning_fit_seconds", "plain_loop_seconds", "pipeline_ours_epoch_seconds",
                 "pipeline_article_epoch_seconds", "model_speedup", "ours_images_per_second", "examples_images_per_second"):
        assert is_positive(result[name]), f"{name}={result[name]!r}"
    assert is_fraction(result["examples_test_accuracy_same_budget"])
    assert result["date"][:4].isdigit() and "T" in result["date"]
    assert isinstance(result["torch_version"], str) and result["torch_version"]
    machine = result["machine"]
    assert isinstance(machine["cpu_model"], str) and machine["cpu_model"]
    assert isinstance(machine["cores"], int) and machine["cores"] >= 1
    assert set(result["goals"]) == {"tta_accuracy", "tta_train_seconds", "lightning_overhead_ratio", "pipeline_speedup"}
    assert all(goal["met"] in (True, False) for goal in result["goals"].values())


def test_each_ratio_is_its_absolute_figures_divided(quick_run: dict) -> None:
    result = quick_run["result"]
    assert result["lightning_overhead_ratio"] == pytest.approx(result["lightning_fit_seconds"] / result["plain_loop_seconds"])
    assert result["pipeline_speedup"] == pytest.approx(
        result["pipeline_article_epoch_seconds"] / result["pipeline_ours_epoch_seconds"]
    )
    assert result["model_speedup"] == pytest.approx(result["ours_images_per_second"] / result["examples_images_per_second"])
    assert result["tta_train_seconds"] == result["lightning_fit_seconds"]


def test_lightning_and_plain_loop_do_the_same_training(quick_run: dict) -> None:
    sections = quick_run["result"]["sections"]
    tta, overhead = sections["time_to_accuracy"], sections["lightning_overhead"]
    assert tta["recipe"]["max_train_images"] == tta["train_images"] == 600
    (lightning,), (plain,) = tta["runs"], overhead["plain_runs"]
    assert lightning["steps"] == plain["steps"] > 0
    # Same seed, data order, model and optimiser: the two loops end at (nearly) the same validation accuracy.
    assert lightning["val_acc"] == pytest.approx(plain["val_acc"], abs=0.02)


def test_s3_layouts_are_counted_and_uploaded(quick_run: dict) -> None:
    pipeline = quick_run["result"]["sections"]["data_pipeline"]
    assert pipeline["s3_objects_full_mnist"] == {"ours": 4, "article": 70_000}
    upload = pipeline["upload"]
    assert upload["idx_objects"] == 4 and upload["idx_digits"] == 5_000
    assert upload["png_objects"] == upload["png_digits"] == QUICK_PNG_UPLOADS
    assert is_positive(upload["idx_seconds"]) and is_positive(upload["png_seconds"])


def test_workbook_times_come_from_the_summary_and_memory_from_train_py(quick_run: dict) -> None:
    sections = quick_run["result"]["sections"]
    assert sections["workbook"]["notebooks"] == NOTEBOOK_TIMES
    memory = sections["memory"]
    assert memory["command"].startswith("code/train.py")
    assert is_fraction(memory["test_accuracy"])
    assert memory["peak_rss_mb"] == quick_run["result"]["peak_rss_mb"]


def test_the_table_names_every_section(quick_run: dict) -> None:
    table = quick_run["stdout"]
    for label in ("1 time to accuracy", "2 Lightning overhead", "3 data pipeline", "4 model choice", "5 workbook", "6 memory"):
        assert label in table

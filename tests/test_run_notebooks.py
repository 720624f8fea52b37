"""The notebook runner behind `make tutorial`: results, summary.json, index page, exit status."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

import run_notebooks


def write_notebook(path: Path, *sources: str) -> None:
    """A notebook whose first cell is the parameters cell."""
    cells = [new_code_cell(source) for source in sources]
    cells[0].metadata["tags"] = ["parameters"]
    notebook = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(notebook, path)


RECORD = "import sys; sys.path.insert(0, {code!r}); import workbook".format(code=str(run_notebooks.REPO / "code"))


def notebooks_folder(folder: Path, monkeypatch: pytest.MonkeyPatch, notebooks: dict[str, tuple[str, ...]]) -> Path:
    """Write each named notebook's cells into `folder` and make it the runner's notebooks folder."""
    folder.mkdir()
    for name, sources in notebooks.items():
        write_notebook(folder / f"{name}.ipynb", *sources)
    monkeypatch.setattr(run_notebooks, "NOTEBOOKS", folder)
    return folder


@pytest.fixture
def two_notebooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A notebooks folder holding one notebook that records results and one that fails."""
    return notebooks_folder(tmp_path / "notebooks", monkeypatch, {
        "01_records": ("SIZE = 3", RECORD, "workbook.record(size=SIZE * 2, name='ok')"),
        "02_fails": ("X = 1", "raise RuntimeError('the notebook broke')"),
    })


def test_main_writes_results_summary_and_index_and_fails_when_a_notebook_fails(two_notebooks: Path, tmp_path: Path) -> None:
    output = tmp_path / "build"
    start = time.perf_counter()
    status = run_notebooks.main(["--aws", "real", "--output", str(output), "-p", "SIZE=5"])
    elapsed_s = time.perf_counter() - start

    assert status == 1
    summary = json.loads((output / "summary.json").read_text())
    assert summary["aws"] == "real"
    first, second = summary["notebooks"]
    assert first["name"] == "01_records" and first["status"] == "ok"
    # Seconds, within the run (a kernel starts in each): not milliseconds, not a time of day.
    assert 0 < first["duration_s"] and first["duration_s"] + second["duration_s"] <= elapsed_s
    assert first["results"] == {"size": 10, "name": "ok"}  # the injected SIZE=5 took effect
    assert second["status"] == "failed" and "the notebook broke" in second["error"]
    assert (output / "notebooks" / "02_fails.ipynb").is_file() and (output / "html" / "02_fails.html").is_file()
    index = (output / "html" / "index.html").read_text()
    assert index.index('href="01_records.html"') < index.index('href="02_fails.html"')
    assert '<tr class="failed"><td><a href="02_fails.html">' in index


@pytest.fixture
def broken_notebooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Notebooks whose run breaks in ways papermill does not report as a cell error, between two good ones."""
    return notebooks_folder(tmp_path / "notebooks", monkeypatch, {
        "01_before": ("X = 1", RECORD, "workbook.record(before=X)"),
        # Blocks until the runner's cell timeout interrupts it: no pause decides the outcome.
        "02_times_out": ("X = 1", "import threading; threading.Event().wait()"),
        "03_kernel_dies": ("X = 1", "import os; os._exit(1)"),
        "04_after": ("X = 1", RECORD, "workbook.record(after=X)"),
    })


def test_a_cell_timeout_or_a_dead_kernel_is_recorded_and_the_run_goes_on(broken_notebooks: Path, tmp_path: Path) -> None:
    output = tmp_path / "build"
    status = run_notebooks.main(["--aws", "real", "--output", str(output), "--timeout", "5"])

    assert status == 1
    runs = json.loads((output / "summary.json").read_text())["notebooks"]
    assert [(run["name"], run["status"]) for run in runs] == [
        ("01_before", "ok"), ("02_times_out", "failed"), ("03_kernel_dies", "failed"), ("04_after", "ok")]
    assert runs[0]["results"] == {"before": 1} and runs[3]["results"] == {"after": 1}
    assert runs[1]["error"].startswith("CellTimeoutError: ") and "5 seconds" in runs[1]["error"]
    assert runs[2]["error"].startswith("DeadKernelError: ")
    index = (output / "html" / "index.html").read_text()
    for run in runs:
        assert f'<tr class="{run["status"]}"><td><a href="{run["name"]}.html">' in index
        assert (output / "html" / f'{run["name"]}.html').is_file()  # every link of the index leads somewhere


def test_selecting_notebooks_by_prefix(two_notebooks: Path) -> None:
    assert [path.name for path in run_notebooks.select_notebooks(["02"])] == ["02_fails.ipynb"]
    with pytest.raises(SystemExit, match="no notebook"):
        run_notebooks.select_notebooks(["99"])


@pytest.mark.parametrize(("text", "expected"), [("EPOCHS=1", ("EPOCHS", 1)), ("PROGRESS=false", ("PROGRESS", False)),
                                                ("DATA_DIR=/tmp/x", ("DATA_DIR", "/tmp/x"))])
def test_parameters_are_read_as_json_when_they_can_be(text: str, expected: tuple[str, object]) -> None:
    assert run_notebooks.parse_parameter(text) == expected


def test_a_parameter_without_a_name_is_refused() -> None:
    with pytest.raises(Exception, match="NAME=VALUE"):
        run_notebooks.parse_parameter("=3")


README_TABLE = """\
# A workbook

| notebook | what it does |
| --- | --- |
| [01 · Get the data](notebooks/01_data.ipynb) | fetches the digits and says which ones it got |
| [02 · Train](notebooks/02_train.ipynb) | trains with `train.py` and tests the model |
"""


@pytest.fixture
def described_notebooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two notebooks that record results, and a README whose table describes them."""
    readme = tmp_path / "README.md"
    readme.write_text(README_TABLE)
    monkeypatch.setattr(run_notebooks, "README", readme)
    return notebooks_folder(tmp_path / "notebooks", monkeypatch, {
        "01_data": ("X = 1", RECORD, "workbook.record(data='4,000 training and 1,000 test digits from http://127.0.0.1:1/', "
                    "train_images=4000, exercise_1_answer=7)"),
        "02_train": ("X = 1", RECORD, "workbook.record(test_accuracy=0.980400025844574, train_seconds=2.4123, "
                     "images_per_second=2940, job_status='Completed')"),
    })


def test_index_says_what_each_notebook_does_with_which_aws_and_data_and_rounds_its_results(
    described_notebooks: Path, tmp_path: Path
) -> None:
    output = tmp_path / "build"
    assert run_notebooks.main(["--aws", "real", "--output", str(output)]) == 0

    index = (output / "html" / "index.html").read_text()
    readme_link = os.path.relpath(run_notebooks.README, output / "html")
    assert f'<a href="{readme_link}">README</a>' in index
    assert "AWS: AWS itself, with the credentials of this machine: what the notebooks started was billed to that account." in index
    assert "Data: 4,000 training and 1,000 test digits from http://127.0.0.1:1/" in index
    assert '<a href="01_data.html">01 · Get the data</a></td><td>fetches the digits and says which ones it got</td>' in index
    assert "trains with <code>train.py</code> and tests the model" in index
    assert "test accuracy 98.04 %" in index and "0.9804" not in index  # rounded, labelled, no raw float
    assert "train seconds 2.41" in index and "images per second 2,940" in index and "job status Completed" in index
    assert "train images 4,000" in index
    assert "exercise" not in index  # the exercises' answers stay in the notebooks


def test_a_notebook_missing_from_the_readme_table_says_so(described_notebooks: Path, tmp_path: Path) -> None:
    write_notebook(described_notebooks / "03_new.ipynb", "X = 1")
    output = tmp_path / "build"
    run_notebooks.main(["--aws", "real", "--output", str(output), "03"])

    index = (output / "html" / "index.html").read_text()
    assert '<a href="03_new.html">03_new</a></td><td>(not in the notebook table of README.md)</td>' in index
    assert "Data: (notebook 01 did not run)" in index


def test_the_runner_starts_kernels_with_transport_encryption_so_they_print_no_warning(
    two_notebooks: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run_notebooks.main(["--aws", "real", "--output", str(tmp_path / "build"), "01"])

    captured = capfd.readouterr()
    assert "without encryption" not in captured.err + captured.out
    assert captured.err == ""


def test_loopback_mnist_points_the_kernels_at_a_mirror_of_real_digits_for_the_run_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebooks_folder(tmp_path / "notebooks", monkeypatch, {
        "01_mirror": ("X = 1", RECORD, "import os, urllib.request\n"
                      "sums = open(os.environ['MNIST_SHA256SUMS']).read().split()[1::2]\n"
                      "served = [len(urllib.request.urlopen(os.environ['MNIST_MIRRORS'] + name).read()) for name in sums]\n"
                      "workbook.record(mirror=os.environ['MNIST_MIRRORS'], files=sums, sizes=served)"),
    })
    monkeypatch.delenv("MNIST_MIRRORS", raising=False)
    output = tmp_path / "build"

    assert run_notebooks.main(["--aws", "real", "--loopback-mnist", "--output", str(output)]) == 0

    (run,) = json.loads((output / "summary.json").read_text())["notebooks"]
    assert run["results"]["mirror"].startswith("http://127.0.0.1:")
    assert sorted(run["results"]["files"]) == sorted(
        ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
    mirror_dir = output / "mirror"
    assert run["results"]["sizes"] == [(mirror_dir / name).stat().st_size for name in run["results"]["files"]]
    assert "MNIST_MIRRORS" not in os.environ  # the runner's own environment is restored


def test_the_html_page_folds_the_code_of_collapsed_cells_only() -> None:
    shown, solution = new_code_cell("print('shown')"), new_code_cell("# Solution 1: folded\nanswer = 42")
    solution.metadata["jupyter"] = {"source_hidden": True}
    notebook = new_notebook(cells=[shown, solution], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})

    page = run_notebooks.html_page(notebook)

    folded = page[page.index("<details"):page.index("</details>")]
    assert page.count("<details") == 1 and "<summary>Show the code</summary>" in folded
    assert "folded" in folded and "shown" not in folded
    assert "shown" in page[:page.index("<details")]


def test_offline_notebook_09_tunes_four_short_trials_unless_told_otherwise() -> None:
    offline = run_notebooks.notebook_parameters("09_tune_hyperparameters", "local", {})
    told = run_notebooks.notebook_parameters("09_tune_hyperparameters", "local", {"MAX_JOBS": 6, "SEED": 1})

    assert offline == {"MAX_JOBS": 4, "MAX_PARALLEL_JOBS": 2, "EPOCHS": 1}
    assert told == {"MAX_JOBS": 6, "MAX_PARALLEL_JOBS": 2, "EPOCHS": 1, "SEED": 1}
    assert run_notebooks.notebook_parameters("09_tune_hyperparameters", "real", {"SEED": 1}) == {"SEED": 1}
    assert run_notebooks.notebook_parameters("04_train_on_sagemaker", "local", {"SEED": 1}) == {"SEED": 1}


def test_a_local_run_gives_notebook_09_its_offline_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebooks_folder(tmp_path / "notebooks", monkeypatch, {
        "09_tune_hyperparameters": ("MAX_JOBS = 12\nMAX_PARALLEL_JOBS = 3\nEPOCHS = 2", RECORD,
                                    "workbook.record(max_jobs=MAX_JOBS, parallel=MAX_PARALLEL_JOBS, epochs=EPOCHS)"),
    })
    output = tmp_path / "build"

    assert run_notebooks.main(["--aws", "local", "--output", str(output), "-p", "EPOCHS=3"]) == 0

    summary = json.loads((output / "summary.json").read_text())
    assert summary["notebooks"][0]["results"] == {"max_jobs": 4, "parallel": 2, "epochs": 3}

"""The notebook runner behind `make tutorial`: results, summary.json, index page, exit status."""

from __future__ import annotations

import json
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
    status = run_notebooks.main(["--aws", "real", "--output", str(output), "-p", "SIZE=5"])

    assert status == 1
    summary = json.loads((output / "summary.json").read_text())
    assert summary["aws"] == "real"
    first, second = summary["notebooks"]
    assert first["name"] == "01_records" and first["status"] == "ok" and first["duration_s"] > 0
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

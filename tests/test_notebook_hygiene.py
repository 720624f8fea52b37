"""Hygiene of the committed notebooks: clean, parameterisable by papermill, structured for a reader, free of secrets."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REQUIRED_SECTIONS = ("What you will learn", "Prerequisites", "Time and cost", "Summary", "Exercises")
SECRETS = {
    "AWS account id": re.compile(r"(?<!\d)\d{12}(?!\d)"),
    "ARN": re.compile(r"arn:aws:"),
    "access key id": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
}


def read(path: Path) -> nbformat.NotebookNode:
    """A notebook as nbformat version 4."""
    return nbformat.read(path, as_version=4)


def markdown_sources(notebook: nbformat.NotebookNode) -> list[str]:
    """The text of every markdown cell, in order."""
    return [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]


def parameter_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """The cells papermill injects its parameters after."""
    return [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]


def is_literal(node: ast.expr) -> bool:
    """A constant, or a negated constant (-1, -0.5)."""
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, (ast.USub, ast.UAdd)) and isinstance(node.operand, ast.Constant)
    return isinstance(node, ast.Constant)


def non_literal_assignments(source: str) -> list[str]:
    """Statements of a parameters cell that are not `NAME = literal`."""
    return [
        ast.unparse(statement)
        for statement in ast.parse(source).body
        if not (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
            and is_literal(statement.value)
        )
    ]


def successive_pairs() -> list[tuple[Path, Path]]:
    """(notebook, the notebook numbered next) for every notebook that has a successor."""
    number = {path: int(path.name[:2]) for path in NOTEBOOKS}
    return [(path, after) for path in NOTEBOOKS for after in NOTEBOOKS if number[after] == number[path] + 1]


each_notebook = pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)


def test_the_workbook_has_numbered_notebooks() -> None:
    assert NOTEBOOKS, "no notebooks/NN_*.ipynb found"
    assert {path.name for path in (REPO / "notebooks").glob("*.ipynb")} == {path.name for path in NOTEBOOKS}


@each_notebook
def test_notebook_is_valid_nbformat(path: Path) -> None:
    nbformat.validate(read(path))


@each_notebook
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    code_cells = [cell for cell in read(path).cells if cell.cell_type == "code"]

    assert code_cells
    assert [(cell.outputs, cell.execution_count) for cell in code_cells] == [([], None)] * len(code_cells)


@each_notebook
def test_notebook_has_one_parameters_cell_of_literal_assignments(path: Path) -> None:
    cells = parameter_cells(read(path))

    assert len(cells) == 1
    assert cells[0].cell_type == "code"
    assert ast.parse(cells[0].source).body, "the parameters cell is empty"
    assert non_literal_assignments(cells[0].source) == []


def test_literal_check_rejects_expressions_and_accepts_negative_numbers() -> None:
    source = 'A = 1\nB = -0.5\nC = "text"\nD = None\nE = Path("x")\nF = 2 * 3\nimport os\nG = H = 1\n'

    assert non_literal_assignments(source) == ["E = Path('x')", "F = 2 * 3", "import os", "G = H = 1"]


@each_notebook
def test_notebook_runs_on_the_python3_kernel(path: Path) -> None:
    assert read(path).metadata.kernelspec.name == "python3"


@each_notebook
def test_notebook_opens_with_a_markdown_title(path: Path) -> None:
    first = read(path).cells[0]

    assert first.cell_type == "markdown"
    assert first.source.startswith("# ")


@each_notebook
def test_notebook_has_the_sections_every_lesson_has(path: Path) -> None:
    markdown = markdown_sources(read(path))

    missing = [section for section in REQUIRED_SECTIONS if not any(section in source for source in markdown)]

    assert missing == []


@each_notebook
def test_notebook_holds_no_account_ids_arns_or_access_keys(path: Path) -> None:
    sources = "\n".join(cell.source for cell in read(path).cells)

    found = {kind: pattern.findall(sources) for kind, pattern in SECRETS.items()}

    assert found == {kind: [] for kind in SECRETS}


def test_secret_patterns_catch_what_they_are_for() -> None:
    leaky = "role = 'arn:aws:iam::123456789012:role/Exec'\nkey = '" + "AKIA" + "ABCDEFGHIJKLMNOP'\n"

    assert {kind: bool(pattern.search(leaky)) for kind, pattern in SECRETS.items()} == dict.fromkeys(SECRETS, True)


@pytest.mark.parametrize(
    "path, after", successive_pairs(), ids=lambda value: value.name if isinstance(value, Path) else value
)
def test_last_markdown_cell_links_to_the_next_notebook(path: Path, after: Path) -> None:
    last = markdown_sources(read(path))[-1]

    assert f"]({after.name})" in last

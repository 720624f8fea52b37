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
def test_no_markdown_cell_holds_a_dollar_sign(path: Path) -> None:
    # JupyterLab typesets the text between two dollar signs as maths: prices are written in USD.
    dollars = [source.splitlines()[0] for source in markdown_sources(read(path)) if "$" in source]

    assert dollars == []


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


NOTEBOOK_LINK = re.compile(r"\[([^\]]+)\]\((?:notebooks/)?(\d\d_[\w-]+\.ipynb)\)")


def notebook_links(text: str) -> list[tuple[str, str]]:
    """Every markdown link to a notebook of the workbook in a text: (link text as rendered, file name)."""
    return [(" ".join(label.split()), name) for label, name in NOTEBOOK_LINK.findall(text)]


def title(path: Path) -> str:
    """A notebook's title, its first heading without the `# `."""
    return read(path).cells[0].source.splitlines()[0].removeprefix("# ")


@pytest.mark.parametrize("path", [*NOTEBOOKS, REPO / "README.md"], ids=lambda path: path.name)
def test_every_link_to_a_notebook_calls_it_by_its_title(path: Path) -> None:
    text = "\n".join(cell.source for cell in read(path).cells) if path.suffix == ".ipynb" else path.read_text()
    titles = {notebook.name: title(notebook) for notebook in NOTEBOOKS}

    links = notebook_links(text)
    misnamed = [(label, name) for label, name in links if not titles[name].startswith(label)]

    assert links and misnamed == []


def test_notebook_links_are_found_in_the_readme_and_the_notebooks_way() -> None:
    text = "see [01 · Download](notebooks/01_download.ipynb) and [06 ·\nDeploy](06_deploy_and_predict.ipynb) or [x](a.md)"

    assert notebook_links(text) == [("01 · Download", "01_download.ipynb"), ("06 · Deploy", "06_deploy_and_predict.ipynb")]


# --- code listings and exercises ----------------------------------------------------------------------------


def listing_targets(notebook: nbformat.NotebookNode) -> list[str]:
    """The dotted names a notebook's code cells pass to show_source, e.g. "mnist_model.MNISTClassifier.forward"."""
    from IPython.core.inputtransformer2 import TransformerManager

    targets = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        # IPython's own transformation first: a cell may hold %magics, which are not Python.
        for node in ast.walk(ast.parse(TransformerManager().transform_cell(cell.source))):
            called = getattr(node, "func", None)
            if isinstance(node, ast.Call) and getattr(called, "id", getattr(called, "attr", None)) == "show_source":
                (argument,) = node.args
                targets.append(ast.unparse(argument))
    return targets


def resolve(dotted: str) -> object:
    """The object a dotted name of code/ names: a module of code/, then attributes."""
    import importlib

    module, *attributes = dotted.split(".")
    obj = importlib.import_module(module)
    for attribute in attributes:
        obj = getattr(obj, attribute)
    return obj


@each_notebook
def test_every_listing_a_notebook_shows_names_code_that_exists_in_code(path: Path) -> None:
    import code_listing

    for dotted in listing_targets(read(path)):
        shown = code_listing.listing(resolve(dotted))  # raises for a renamed object or one outside code/
        assert shown["object"] == dotted, f"{path.name} lists {dotted}, which is defined as {shown['object']}"


def test_the_chapters_that_teach_code_list_it_from_code() -> None:
    listed = {path.name[:2]: set(listing_targets(read(path))) for path in NOTEBOOKS}

    assert {
        "mnist_model.build_network", "mnist_model.MNISTClassifier.forward", "mnist_model.MNISTClassifier.training_step",
        "mnist_model.MNISTClassifier.validation_step", "mnist_model.MNISTClassifier.test_step",
        "mnist_model.MNISTClassifier.configure_optimizers", "mnist_data.MNISTDataModule.setup",
        "mnist_data.MNISTDataModule.train_dataloader",
    } <= listed["02"]
    assert {"train.build_trainer", "train.fit", "lr_finder.find_learning_rate"} <= listed["03"]


def test_listing_targets_are_found_however_show_source_is_called() -> None:
    cell = nbformat.v4.new_code_cell("show_source(a.B.c)\ncode_listing.show_source(d)\nprint(show)")

    assert listing_targets(nbformat.v4.new_notebook(cells=[cell])) == ["a.B.c", "d"]


def exercises(notebook: nbformat.NotebookNode) -> list[str]:
    """The numbered items of the notebook's Exercises section (each item with its continuation lines)."""
    (section,) = [source.split("## Exercises", 1)[1] for source in markdown_sources(notebook) if "## Exercises" in source]
    section = section.split("\n#", 1)[0]  # up to the next heading
    return re.findall(r"^\d+\. .*?(?=^\d+\. |\Z)", section, flags=re.MULTILINE | re.DOTALL)


def solution_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """The code cells tagged `solution`."""
    return [cell for cell in notebook.cells if "solution" in cell.metadata.get("tags", [])]


@each_notebook
def test_every_exercise_has_a_hint_and_a_collapsed_solution_that_the_run_executes(path: Path) -> None:
    notebook = read(path)
    items, solutions = exercises(notebook), solution_cells(notebook)

    assert 2 <= len(items) <= 3, f"{path.name}: {len(items)} exercises"
    assert [item.split(".")[0] for item in items if "*Hint:*" not in item] == []
    assert len(solutions) == len(items)
    for number, cell in enumerate(solutions, start=1):
        assert cell.cell_type == "code", "a solution is code that the notebook's run executes (and the tests check)"
        assert cell.metadata.get("jupyter", {}).get("source_hidden") is True
        assert cell.source.startswith(f"# Solution {number}:")
    exercises_at = next(index for index, cell in enumerate(notebook.cells) if "## Exercises" in cell.source)
    assert all(notebook.cells.index(cell) > exercises_at for cell in solutions)

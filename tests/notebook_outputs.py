"""What an executed notebook shows a reader, cell by cell: lines of output, warnings, libraries' log lines.

The rule the executed workbook is held to (issue 10): no cell shows a warning, a library's start-up or log
line, or a stack trace, and none prints more than MAX_LINES lines. Money is written "USD 0.18", as in the
prose, and never rounded to nothing ("USD 0.00" for a run that cost a third of a cent). Figures count as
no lines. A code listing (code_listing.show_source) is the code a chapter teaches, not output:
tests/test_notebooks.py checks listings against their files instead.
"""

from __future__ import annotations

import re

import nbformat

from code_listing import LISTING_MIME_TYPE

MAX_LINES = 15
# stderr is where warnings and logging go; nothing a quiet notebook shows is written there.
# The patterns catch warnings and log records printed to stdout or shown as a value.
NOISE = re.compile(
    r"""
    \b\w*Warning:                                   # warnings.warn's format: path:line: UserWarning: ...
    | ^\[?(DEBUG|INFO|WARN|WARNING|ERROR|CRITICAL)\b[\]:| ]  # logging's levels: "INFO: ...", "[WARNING] ..."
    | ^\[\w+\]\s(DEBUG|INFO|WARNING|ERROR)\b        # "[IPKernelApp] WARNING | ..."
    | ^\d{4}-\d\d-\d\d[ T][\d:,.]+\s.*\b(DEBUG|INFO|WARNING|ERROR)\b  # timestamped log records
    | ^(GPU|TPU|HPU)\ available:                   # Lightning's hardware summary
    | 💡\ Tip:                                      # Lightning's adverts
    | ^(Uvicorn\ running|Started\ server\ process|Waiting\ for\ application|Application\ startup|Shutting\ down)
    """,
    re.VERBOSE | re.MULTILINE,
)


# "$0.18" (the prose writes USD, since JupyterLab typesets $...$ as maths) or an amount shown as zero.
MONEY = re.compile(r"\$\s?\d|\bUSD\s?0(\.0+)?(?![.\d])")


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # terminal colours, as uvicorn and IPython's tracebacks carry them


def output_text(output: nbformat.NotebookNode) -> str:
    """The text a reader sees of one output: a stream, a value or display's plain text, or a traceback."""
    if output.output_type == "stream":
        return ANSI_ESCAPE.sub("", output.text)
    if output.output_type == "error":
        return ANSI_ESCAPE.sub("", "\n".join(output.traceback))
    data = output.get("data", {})
    if any(kind.startswith("image/") for kind in data):
        return ""  # a figure; its text/plain is "<Figure size ...>", which no reader sees
    return data.get("text/plain", "")


def line_count(text: str) -> int:
    """Lines a text takes on screen (a trailing newline adds none)."""
    return len(text.rstrip("\n").splitlines()) if text.strip() else 0


def cell_lines(cell: nbformat.NotebookNode) -> int:
    """Lines of output a code cell shows, code listings left out."""
    return sum(line_count(output_text(output)) for output in cell.get("outputs", [])
               if LISTING_MIME_TYPE not in output.get("data", {}))


def offenders(notebook: nbformat.NotebookNode, name: str) -> list[str]:
    """Every cell of an executed notebook that breaks the rule, each as "name, cell N (first line): why"."""
    found = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        where = f"{name}, cell {index} ({cell.source.splitlines()[0] if cell.source else ''!s:.60})"
        for output in cell.get("outputs", []):
            if LISTING_MIME_TYPE in output.get("data", {}):
                continue
            text = output_text(output)
            if output.output_type == "error":
                found.append(f"{where}: a stack trace ({output.ename}: {output.evalue})")
            elif output.output_type == "stream" and output.name == "stderr":
                found.append(f"{where}: writes to stderr: {text.strip().splitlines()[0][:120] if text.strip() else '(blank)'}")
            elif match := NOISE.search(text):
                line = text[text.rfind("\n", 0, match.start()) + 1:].splitlines()[0]
                found.append(f"{where}: a warning or log line: {line[:120]}")
            elif match := MONEY.search(text):
                line = text[text.rfind("\n", 0, match.start()) + 1:].splitlines()[0]
                found.append(f"{where}: money written as $ or rounded to zero: {line[:120]}")
        if (lines := cell_lines(cell)) > MAX_LINES:
            found.append(f"{where}: {lines} lines of output, more than {MAX_LINES}")
    return found


def longest_output(notebook: nbformat.NotebookNode) -> int:
    """The most lines of output any one code cell of the notebook shows (code listings left out)."""
    return max((cell_lines(cell) for cell in notebook.cells if cell.cell_type == "code"), default=0)

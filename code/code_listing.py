"""Show a function, class or method of the workbook's code/ modules in a notebook, highlighted, read from its file.

The notebooks teach the code that runs: a cell calls `show_source(mnist_model.MNISTClassifier.forward)` and
the reader sees those lines of code/mnist_model.py as they are on disk, never a copy that could drift.
Each listing also carries a JSON note (which object, which file, which lines) under the workbook's own
MIME type, so a test can check that every listing in an executed notebook still matches its file.
"""

from __future__ import annotations

import html
import inspect
from pathlib import Path

from IPython.display import display
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

CODE_DIR = Path(__file__).resolve().parent
LISTING_MIME_TYPE = "application/vnd.mnist-workbook.listing+json"


def qualified_name(obj: object) -> str:
    """`module.Class.method` for a function, class or method."""
    return f"{obj.__module__}.{obj.__qualname__}"


def listing(obj: object) -> dict[str, object]:
    """Where `obj` is defined in code/ and its source lines: file (relative to the repository), first and last line."""
    target = inspect.unwrap(obj)
    try:
        path = Path(inspect.getsourcefile(target)).resolve()
        lines, first = inspect.getsourcelines(target)
    except TypeError as error:
        raise TypeError(f"show_source takes a function, class or method of code/, not {obj!r}") from error
    if path.parent != CODE_DIR:
        raise ValueError(f"{qualified_name(target)} is defined in {path}, not in {CODE_DIR}: only code/ is listed")
    return {
        "object": qualified_name(target),
        "file": f"{CODE_DIR.name}/{path.name}",
        "first_line": first,
        "last_line": first + len(lines) - 1,
        "source": "".join(lines),
    }


def show_source(obj: object) -> None:
    """Display the source of a function, class or method of code/, highlighted, under its file name and lines."""
    shown = listing(obj)
    where = f"{shown['file']}, lines {shown['first_line']}–{shown['last_line']}"
    code = highlight(shown["source"], PythonLexer(), HtmlFormatter(noclasses=True, nobackground=True))
    bundle = {
        "text/plain": f"# {where}\n{shown['source']}",
        "text/html": f"<div><small><code>{html.escape(where)}</code></small>{code}</div>",
        LISTING_MIME_TYPE: {key: value for key, value in shown.items() if key != "source"},
    }
    display(bundle, raw=True)

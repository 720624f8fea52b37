"""Record a notebook's key results in the notebook itself, where `make tutorial` and the tests read them.

A result is shown as an ordinary output (readable in JupyterLab and SageMaker Studio) that also carries
a JSON copy under the workbook's own MIME type, so nothing is written outside the executed notebook.
"""

from __future__ import annotations

import json

from IPython.display import display

RESULTS_MIME_TYPE = "application/vnd.mnist-workbook.results+json"


def record(**results: object) -> None:
    """Show and record named results (numbers, strings, lists) of the running notebook."""
    json.dumps(results)  # fail here, in the notebook, if a value cannot be stored as JSON
    text = "Recorded: " + ", ".join(f"{name}={value!r}" for name, value in results.items())
    display({"text/plain": text, RESULTS_MIME_TYPE: results}, raw=True)

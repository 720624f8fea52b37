"""The checker behind the executed-workbook test: it finds warnings, log lines, stack traces and long outputs."""

from __future__ import annotations

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from code_listing import LISTING_MIME_TYPE
from notebook_outputs import MAX_LINES, longest_output, offenders


def notebook(*outputs: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """An executed notebook of one code cell per output."""
    return new_notebook(cells=[new_code_cell(f"cell_{index}()", outputs=[output]) for index, output in enumerate(outputs)])


def stdout(text: str) -> nbformat.NotebookNode:
    """What print() leaves in a cell."""
    return new_output("stream", name="stdout", text=text)


def test_a_quiet_notebook_has_no_offenders() -> None:
    quiet = notebook(
        stdout("epoch=1; train_loss=0.81; val_loss=0.22; val_acc=0.9575;\n"),
        stdout("4 trials: about USD 0.0038 on demand; 1 instance x USD 0.23/h = USD 0.18; USD 0.05\n"),
        new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 640x480 with 1 Axes>"}),
        new_output("execute_result", data={"text/plain": "{'train': 's3://b/mnist/train/'}"}, execution_count=1),
        stdout("".join(f"line {number}\n" for number in range(MAX_LINES))),
        new_output("display_data", data={LISTING_MIME_TYPE: {}, "text/plain": "def f():\n" + "    pass\n" * 40}),
    )

    assert offenders(quiet, "quiet") == []
    assert longest_output(quiet) == MAX_LINES  # the listing is not output; the figure counts as no lines


@pytest.mark.parametrize(
    ("output", "why"),
    [
        (new_output("stream", name="stderr", text="Loading `train_dataloader` to estimate number of stepping batches.\n"),
         "writes to stderr: Loading `train_dataloader`"),
        (stdout("/x/_pytree.py:21: FutureWarning: `isinstance(treespec, LeafSpec)` is deprecated\n"),
         "a warning or log line: /x/_pytree.py:21: FutureWarning"),
        (stdout("ok\n[IPKernelApp] WARNING | Kernel is running over TCP without encryption.\n"),
         "a warning or log line: [IPKernelApp] WARNING | Kernel is running"),
        (stdout("GPU available: False, used: False\n"), "a warning or log line: GPU available"),
        (stdout("💡 Tip: For seamless cloud logging, try installing litlogger\n"), "a warning or log line: 💡 Tip"),
        (stdout("INFO:     Started server process [4242]\n"), "a warning or log line: INFO:     Started server"),
        (stdout("INFO:     Uvicorn running on http://127.0.0.1:8080\n"), "a warning or log line: INFO:     Uvicorn running"),
        (stdout("\x1b[32mINFO\x1b[0m:     Application startup complete.\n"), "a warning or log line: INFO:     Application"),
        (stdout("2026-12-01 20:11:05,123 sagemaker INFO Creating training_job resource.\n"),
         "a warning or log line: 2026-12-01 20:11:05,123 sagemaker INFO"),
        (stdout("4 trials x ml.m5.xlarge: 1.0 instance-minutes, about $0.00 on demand\n"),
         "money written as $ or rounded to zero: 4 trials x ml.m5.xlarge"),
        (stdout("about USD 0.00 on demand\n"), "money written as $ or rounded to zero: about USD 0.00"),
        (stdout("spot: USD 0\n"), "money written as $ or rounded to zero: spot: USD 0"),
        (new_output("error", ename="ValueError", evalue="bad", traceback=["Traceback", "ValueError: bad"]),
         "a stack trace (ValueError: bad)"),
        (stdout("".join(f"Requirement already satisfied: package{number}\n" for number in range(MAX_LINES + 1))),
         f"{MAX_LINES + 1} lines of output, more than {MAX_LINES}"),
    ],
)
def test_noise_and_long_outputs_are_named_with_their_cell(output: nbformat.NotebookNode, why: str) -> None:
    found = offenders(notebook(stdout("fine\n"), output), "02_build")

    assert len(found) == 1
    assert found[0].startswith("02_build, cell 1 (cell_1()): ")
    assert why in found[0]

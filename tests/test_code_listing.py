"""code_listing shows code/'s functions, classes and methods from their files, and refuses anything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import code_listing
import mnist_data
import mnist_model
import train

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "obj", [mnist_model.MNISTClassifier.training_step, mnist_model.build_network, mnist_data.MNISTDataModule, train.fit]
)
def test_listing_is_the_objects_lines_of_its_file_in_code(obj: object) -> None:
    shown = code_listing.listing(obj)

    lines = (REPO / shown["file"]).read_text().splitlines(keepends=True)
    assert shown["file"].startswith("code/")
    assert shown["source"] == "".join(lines[shown["first_line"] - 1 : shown["last_line"]])
    assert shown["object"] == f"{obj.__module__}.{obj.__qualname__}"
    assert shown["source"].lstrip().startswith(("def ", "class ", "@"))


def test_show_source_displays_the_file_lines_highlighted_with_where_they_come_from(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = []
    monkeypatch.setattr(code_listing, "display", lambda bundle, raw: shown.append((bundle, raw)))

    code_listing.show_source(mnist_model.MNISTClassifier.forward)

    ((bundle, raw),) = shown
    expected = code_listing.listing(mnist_model.MNISTClassifier.forward)
    where = f"code/mnist_model.py, lines {expected['first_line']}–{expected['last_line']}"
    assert raw is True
    assert bundle["text/plain"] == f"# {where}\n{expected['source']}"
    assert where in bundle["text/html"] and "<span" in bundle["text/html"]  # pygments' highlighting
    assert "def</span>" in bundle["text/html"] and "forward" in bundle["text/html"]
    note = bundle[code_listing.LISTING_MIME_TYPE]
    assert note == {key: value for key, value in expected.items() if key != "source"}
    json.dumps(note)  # stored in the notebook as JSON


def test_objects_outside_code_are_refused_with_their_file() -> None:
    with pytest.raises(ValueError, match=r"json.*not in .*code: only code/ is listed"):
        code_listing.listing(json.dumps)


def test_things_without_source_are_refused() -> None:
    with pytest.raises(TypeError, match="function, class or method of code/, not 3"):
        code_listing.listing(3)

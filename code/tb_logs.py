"""Read TensorBoard logs with TensorBoard's own event reader: scalar curves and the run's hyperparameters."""

from __future__ import annotations

from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# Lightning writes hparams.yaml next to the event files of each run version.
HPARAMS_FILE = "hparams.yaml"


def event_dirs(logdir: Path) -> list[Path]:
    """Every folder under `logdir` (itself included) holding TensorBoard event files, sorted."""
    return sorted({path.parent for path in Path(logdir).rglob("events.out.tfevents.*")})


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar under `logdir` as tag -> [(step, value), ...], sorted by step."""
    folders = event_dirs(logdir)
    if not folders:
        raise FileNotFoundError(f"no TensorBoard event files under {logdir}")
    scalars: dict[str, list[tuple[int, float]]] = {}
    for folder in folders:
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()  # 0 keeps every point
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((event.step, event.value) for event in events.Scalars(tag))
    return {tag: sorted(points) for tag, points in sorted(scalars.items())}


def read_hyperparameters(logdir: Path) -> dict[str, object]:
    """The hyperparameters Lightning logged with the run (the newest hparams.yaml under `logdir`)."""
    files = sorted(Path(logdir).rglob(HPARAMS_FILE), key=lambda path: path.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no {HPARAMS_FILE} under {logdir}")
    return yaml.safe_load(files[-1].read_text()) or {}

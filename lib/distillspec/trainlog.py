"""A training run's log, train_log.jsonl: its file name, its line format, reading it back, and the collapse rule
that reads it. Plain Python and pandas, no TRL, so the study and the analysis can read logs without the trainer."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TRAIN_LOG = "train_log.jsonl"  # in distill()'s output directory, beside student/ and the checkpoints
COLLAPSE_ENTROPY, COLLAPSE_PATIENCE = 1e-3, 3  # nats; logged steps in a row


@dataclass
class DistillResult:
    """What a training run returns (a draft's `distill` or a head's `train_head`): where the student was saved, the
    run's directory and log, and the checkpoint it resumed from (None: a fresh start)."""

    student_dir: Path
    output_dir: Path
    log_path: Path
    resumed_from: str | None


def append_log_line(path: str | os.PathLike, step: int, logs: dict) -> None:
    """One logged step as a JSON line (a resumed run may repeat steps; read_log keeps the last)."""
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, **logs}) + "\n")


def selection_line(step: int | None, value: float | None) -> dict:
    """The log line naming the checkpoint a run kept by its validation (select_checkpoint 'validation')."""
    return {"selected_step": step, "selected_alpha_pos": value}


def line_kind(line: dict) -> str:
    """What a log line records: the trained batches ('train'), a validation ('validation': eval_* keys), the
    checkpoint kept ('selection') or the run's summary ('summary'). A step may have one line of each kind."""
    if "train_runtime" in line:
        return "summary"
    if "selected_step" in line:
        return "selection"
    return "validation" if any(str(k).startswith("eval_") for k in line) else "train"


def read_log(path: str | os.PathLike):
    """Training log as a DataFrame, one row per logged step and kind of line (line_kind; the last entry wins after
    a resume)."""
    import pandas as pd

    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as err:
                from .errors import DistillSpecError

                raise DistillSpecError(f"{path}:{number} is damaged (not a JSON log line: {err}); restore the log, "
                                       "or train the draft again.") from err
    kinds = [line_kind(row) for row in rows]
    df = pd.DataFrame(rows)
    return df[~pd.DataFrame({"step": df["step"], "kind": kinds}).duplicated(keep="last").to_numpy()] if rows else df


def collapse_span(log: Iterable[tuple[int, float]], threshold: float = COLLAPSE_ENTROPY,
                  patience: int = COLLAPSE_PATIENCE) -> tuple[int, int] | None:
    """(first, last) step of the first `patience` logged steps in a row whose own-rollout entropy is below
    `threshold` nats, or None: the sign of a collapsed draft (a warning during training, named by the analysis
    afterwards)."""
    low: list[int] = []
    for step, entropy in log:
        low = low + [int(step)] if entropy < threshold else []  # NaN resets too
        if len(low) >= patience:
            return low[0], low[-1]
    return None


__all__ = ["COLLAPSE_ENTROPY", "COLLAPSE_PATIENCE", "TRAIN_LOG", "DistillResult", "append_log_line", "collapse_span",
           "line_kind", "read_log", "selection_line"]

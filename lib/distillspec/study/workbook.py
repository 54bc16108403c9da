"""What each workbook notebook does first: keep library noise out of its outputs, then open the study named in
its parameters cell (the config, and the run directory the notebooks share)."""

from __future__ import annotations

from pathlib import Path

from .preset import StudyConfig
from ..quiet import quiet_library_output


def open_study(config_path: str | Path, run_dir: str | Path) -> tuple[StudyConfig, Path]:
    """The notebook's parameters -> (config, run directory). Relative paths are relative to the notebook's own
    folder here; the pipeline passes absolute ones, resolved where its command was typed."""
    quiet_library_output()
    return StudyConfig.from_yaml(config_path), Path(run_dir)

"""What each workbook notebook does first: keep library noise out of its outputs, then open the study named in
its parameters cell (the config, and the run directory the notebooks share)."""

from __future__ import annotations

from pathlib import Path

from ..config import Config


def quiet_library_output() -> None:
    """Turn off third-party progress bars that say nothing about the study (transformers' "Loading weights" and
    "Writing model shards", datasets' map/filter bars); distillspec's own bars (drafts, SD batches) stay."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def open_study(config_path: str | Path, run_dir: str | Path) -> tuple[Config, Path]:
    """The notebook's parameters -> (config, run directory). Relative paths are relative to the notebook's own
    folder here; the pipeline passes absolute ones, resolved where its command was typed."""
    quiet_library_output()
    return Config.from_yaml(config_path), Path(run_dir)

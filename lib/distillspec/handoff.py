"""Finished drafts' results, carried between sessions: a study too long for one working session on a fresh machine
runs a subset of its drafts per session (`run --drafts`), publishes each finished draft's records, and a later
session imports them (`run --results-from`) instead of retraining that draft. Imports are refused unless the
recorded fingerprint (config and prompt sets) matches the run's, so results of different setups never mix.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from .config import Config
from .errors import DistillSpecError, require
from .steps import RunPaths

# Config keys that name places rather than the experiment: they may differ between machines.
_LOCATION_KEYS = ("data_source", "run_dir")


# Keys added to Config after results were published, with the value that means what runs did before the key
# existed: at that value a key stays out of the fingerprint, so published records remain importable; any other
# value is a different experiment. micro_batch_size replaced gradient_accumulation_steps, which was 1 (no
# accumulation) in every run made before; micro_batch_size None is that setting.
_LATER_KEYS = {"precision": "auto", "micro_batch_size": None}
_RETIRED_KEYS = {"gradient_accumulation_steps": 1}


def _experiment_settings(cfg: Config) -> dict:
    """The config as fingerprinted: paths left out, later keys at their earlier meaning in their earlier form."""
    settings = {k: v for k, v in cfg.to_dict().items()
                if k not in _LOCATION_KEYS and not (k in _LATER_KEYS and v == _LATER_KEYS[k])}
    if "micro_batch_size" not in settings:
        settings.update(_RETIRED_KEYS)
    return settings


def fingerprint(cfg: Config, run_dir: str | Path) -> str:
    """sha256 of the experiment's config (paths left out) and both prompt sets of the run (01's output)."""
    paths = RunPaths(Path(run_dir))
    settings = _experiment_settings(cfg)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for prompts in (paths.train_prompts, paths.eval_prompts):
        require(prompts.is_file(), f"{prompts} is missing: run 01_data (or the pipeline) first.")
        digest.update(prompts.read_bytes())
    return digest.hexdigest()


def _bundle(paths: RunPaths, name: str) -> dict[str, Path]:
    """A finished draft's files in a run directory, by their names in a published records folder; the speed row
    comes last because 03 writes it last: its presence marks the draft as finished."""
    return {f"{name}_tokens.parquet": paths.tokens(name), f"{name}_steps.parquet": paths.steps(name),
            f"{name}_train_log.jsonl": paths.draft_dir(name) / "train_log.jsonl",  # none for the baseline
            f"{name}_speed.json": paths.speed_row(name)}


def export_results(run_dir: str | Path, dest: str | Path, names: list[str]) -> list[Path]:
    """Copy each evaluated draft's records (per-token, per-step, speed row, training log) into dest."""
    paths, dest = RunPaths(Path(run_dir)), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in names:
        if paths.speed_row(name).is_file():  # written last by 03: the draft is finished
            copied += [Path(shutil.copy2(src, dest / fname)) for fname, src in _bundle(paths, name).items()
                       if src.is_file()]
    return copied


def import_results(cfg: Config, run_dir: str | Path, source: str | Path, names: list[str]) -> list[str]:
    """Copy finished drafts' records from source into the run (drafts this run has already trained or evaluated
    are left alone); return the names imported. Raises when a record was made with another config or prompt set."""
    paths, source = RunPaths(Path(run_dir)), Path(source)
    require(source.is_dir(), f"--results-from {source}: no such directory (a published records folder, e.g. "
                             f"figures/{cfg.name}/records).")
    expected = fingerprint(cfg, run_dir)
    imported = []
    for name in names:
        row_file = source / f"{name}_speed.json"
        if not row_file.is_file() or paths.speed_row(name).is_file() or paths.student(name).is_dir():
            continue
        recorded = json.loads(row_file.read_text()).get("fingerprint")
        if recorded != expected:
            raise DistillSpecError(
                f"{row_file} was made with another config or prompt set (fingerprint {str(recorded)[:12]} vs this "
                f"run's {expected[:12]}); its results cannot be mixed with this run's. Use the config that made it, "
                f"or rerun that draft here (leave out --results-from).")
        for fname, dst in _bundle(paths, name).items():
            if (source / fname).is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source / fname, dst)
        imported.append(name)
    return imported


__all__ = ["export_results", "fingerprint", "import_results"]

"""A training run's own settings, kept beside its output (config.yaml) from its first step: a later call that would
resume or reuse that output with other settings is refused, naming the keys, instead of leaving weights that the
file does not describe. One comparison for every loop (distill, feature heads, warm starts) and for a study's run
directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from .errors import DistillSpecError
from .trainlog import TRAIN_LOG

SETTINGS_FILE = "config.yaml"
CHECKPOINT = "checkpoint.pt"  # the plain loop's single checkpoint (offline_loop); TRL's are checkpoint-<step>/
# Keys that say where or when files are written, not what is trained or measured: they may differ between calls.
WHERE_NOT_WHAT = ("data_source", "run_dir", "save_minutes")
# What a training run leaves in its output directory (besides SETTINGS_FILE): removed by clear_training_output.
TRAINING_OUTPUT = ("student", ".student.partial", TRAIN_LOG, CHECKPOINT, "retrained")
_ABSENT = "(absent)"
RETRAIN_FIX = ("Train it again from scratch (resume=False replaces its checkpoints, log and student) or give another "
               "output directory.")


def as_written(settings: dict) -> dict:
    """settings as they read back from SETTINGS_FILE (tuples become lists, numbers stay numbers)."""
    return yaml.safe_load(yaml.safe_dump(settings, sort_keys=False)) or {}


def differences(saved: dict, wanted: dict, ignore: tuple[str, ...] = WHERE_NOT_WHAT,
                added: dict | None = None) -> list[str]:
    """'key: saved -> wanted' for every key whose value differs (a key only one side has differs too). added: keys
    introduced after `saved` may have been written, with their defaults: absent from saved, a key reads as its
    default (what the run did before the key existed); config.ADDED_KEYS unless given."""
    from .config import ADDED_KEYS

    saved = {**{k: v for k, v in (ADDED_KEYS if added is None else added).items() if k in wanted}, **saved}
    saved, wanted = as_written(saved), as_written(wanted)
    keys = [k for k in (*saved, *(k for k in wanted if k not in saved)) if k not in ignore]
    return [f"{k}: {saved.get(k, _ABSENT)!r} -> {wanted.get(k, _ABSENT)!r}" for k in keys
            if saved.get(k, _ABSENT) != wanted.get(k, _ABSENT)]


def portable(settings: dict, folder: str | os.PathLike) -> dict:
    """settings with each absolute path that lies beside folder (in its parent, as a study's drafts share drafts/)
    written relative to folder: a run directory moved or copied as a whole still matches its drafts' settings."""
    parent = Path(folder).resolve().parent
    out = {}
    for key, value in settings.items():
        if isinstance(value, str) and os.path.isabs(value) and Path(value).resolve().is_relative_to(parent):
            value = os.path.relpath(Path(value).resolve(), Path(folder).resolve())
        out[key] = value
    return out


def read_settings(folder: str | os.PathLike) -> dict | None:
    """The settings recorded in folder/config.yaml, or None when there are none."""
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DistillSpecError(f"{path} is damaged (not YAML: {err}); restore it, or train again from scratch.") \
            from err
    if not isinstance(data, dict):
        raise DistillSpecError(f"{path} is damaged (not a mapping of settings); restore it, or train again.")
    return data


def has_training_output(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return any((folder / name).exists() for name in TRAINING_OUTPUT) or any(folder.glob("checkpoint-*"))


def check_settings(folder: str | os.PathLike, settings: dict, fix: str, added: dict | None = None) -> None:
    """Refuse `settings` when folder already holds a training run made with others (or with none recorded);
    fix: what the user can do instead (train again from scratch, or another folder); added: as for differences."""
    saved, settings = read_settings(folder), portable(settings, folder)
    if saved is None:
        if has_training_output(folder):
            raise DistillSpecError(f"{folder} holds training output but no {SETTINGS_FILE} saying how it was "
                                   f"trained, so it cannot be resumed or reused as these settings. {fix}")
        return
    diff = differences(saved, settings, added=added)
    if diff:
        raise DistillSpecError(f"{folder} holds a training run with other settings ({'; '.join(diff)}); resuming or "
                               f"reusing it would give weights that these settings do not describe. {fix}")


def claim(folder: str | os.PathLike, settings: dict, fix: str, *, write: bool = True) -> None:
    """check_settings, then record the settings in folder/config.yaml when they are not there yet (write=False on
    every process but the main one)."""
    check_settings(folder, settings, fix)
    path = Path(folder) / SETTINGS_FILE
    if write and not path.is_file():
        from .atomic import write_text

        write_text(yaml.safe_dump(portable(settings, folder), sort_keys=False), path)


def clear_training_output(folder: str | os.PathLike) -> None:
    """Remove a training run's output and settings from folder (a fresh start; other files stay)."""
    folder = Path(folder)
    for path in [*(folder / n for n in (*TRAINING_OUTPUT, SETTINGS_FILE)), *folder.glob("checkpoint-*")]:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


__all__ = ["CHECKPOINT", "RETRAIN_FIX", "SETTINGS_FILE", "WHERE_NOT_WHAT", "check_settings", "claim",
           "clear_training_output", "differences", "portable", "read_settings"]

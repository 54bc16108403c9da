"""Finished drafts' results carried to another machine: a study run in parts runs a subset of its
drafts at a time (`run --drafts`), publishes each finished draft's records, and a later run elsewhere imports them
(`run --results-from`) instead of retraining that draft. Imports are refused unless the recorded fingerprint
(config and prompt sets) matches the run's, so results of different setups never mix. A run directory is bound to
one preset (`bind_config`), which may gain runs: the records it holds keep their drafts' fingerprints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .preset import StudyConfig
from ..drafts import saved_draft
from ..errors import DistillSpecError, require
from .manifest import folder_damage, run_damage, seal
from ..atomic import write_json
from ..training_settings import WHERE_NOT_WHAT, differences, read_settings
from .rundir import (ADDED_SINCE_V3, BASELINE, REFERENCE, RUN_LISTS, RunPaths, draft_names, fingerprint, made_from,
                     published_records)


def bind_config(cfg: StudyConfig, run_dir: str | Path, *, replace: bool = False) -> None:
    """A run directory holds the work of one preset: its config.yaml is written when the directory is new, and a
    preset with other settings is refused, naming the keys (what the directory holds would not be what the preset
    says), unless replace (run --force), which empties the directory first. A preset whose runs alone differ (more
    runs, or fewer or other ones without work here) takes the directory over: every draft there is still described
    by its settings."""
    paths = RunPaths(Path(run_dir))
    saved = read_settings(paths.root)
    diff = differences(saved, cfg.to_dict(), added=ADDED_SINCE_V3) if saved is not None else []
    if diff and not replace and (before := runs_alone_differ(saved, cfg)) is not None:
        changed = runs_changed_here(before, cfg, paths)
        require(not changed, f"{paths.root} holds work of runs this preset drops or changes ({', '.join(changed)}): "
                "the preset may gain runs, and drop or change only runs with no work here. Delete their "
                f"folders under {paths.root / 'drafts'} and their files in {paths.records}, use a new --run-dir, "
                "or put those runs back.")
        carry_fingerprints(before, cfg, paths)
        cfg.to_yaml(paths.config)
        return
    if diff and replace:
        for child in paths.root.iterdir():
            if child != paths.lock:  # held by this command
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    elif diff:
        raise DistillSpecError(
            f"{paths.root} holds a run of other settings than this preset's ({'; '.join(diff)}): its drafts, records "
            "and results would be described by settings that did not make them. Use a new --run-dir for the "
            "changed preset, run it again from scratch with --force (every draft is trained and evaluated again), "
            "or put the preset back.")
    if saved is None or diff:
        cfg.to_yaml(paths.config)


def runs_alone_differ(saved: dict, cfg: StudyConfig) -> StudyConfig | None:
    """The study that saved settings (a run directory's or a published folder's config.yaml) describe, where it
    differs from cfg in its lists of runs alone; None where other settings differ too, or where the settings no longer
    make a study (keys of an older version). Paths are taken from cfg: they say where, not what."""
    diff = differences(saved, cfg.to_dict(), added=ADDED_SINCE_V3)
    if not {d.split(":")[0] for d in diff} <= set(RUN_LISTS):
        return None
    try:
        return StudyConfig.from_dict({**saved, **{k: getattr(cfg, k) for k in WHERE_NOT_WHAT if k in saved}})
    except (DistillSpecError, TypeError):
        return None


def carry_fingerprints(before: StudyConfig, cfg: StudyConfig, paths: RunPaths) -> list[str]:
    """Finished, intact drafts of the run directory whose speed rows carry the whole-study fingerprint (version 3) of
    `before`, a study with other runs alone, get their own (version 4) under cfg and their manifests written again:
    what made them did not change (runs_changed_here), so their records stay importable once published."""
    if not paths.records.is_dir() or not paths.train_prompts.is_file():
        return []
    whole, carried = fingerprint(before, paths.root), []
    for manifest in sorted(paths.records.glob("*_manifest.json")):
        name = manifest.name[: -len("_manifest.json")]
        row = json.loads(paths.speed_row(name).read_text()) if paths.speed_row(name).is_file() else {}
        if row.get("fingerprint") == whole and not run_damage(paths, name):
            write_json({**row, "fingerprint": fingerprint(cfg, paths.root, name)}, paths.speed_row(name))
            seal(paths, name)
            carried.append(name)
    return carried


def runs_changed_here(saved: StudyConfig, cfg: StudyConfig, paths: RunPaths) -> list[str]:
    """The drafts with work in the run directory (a training folder or records) that cfg drops or makes from other
    settings than `saved` did (`made_from`)."""
    here = {p.name for p in (paths.root / "drafts").glob("*") if p.is_dir()}
    here |= {p.name[: -len("_manifest.json")] for p in paths.records.glob("*_manifest.json")}
    names = set(draft_names(cfg)) | {REFERENCE}
    return sorted(n for n in here if n not in names or made_from(saved, n) != made_from(cfg, n))


def publish_records(run_dir: str | Path, dest: str | Path, names: list[str]) -> list[Path]:
    """Copy each evaluated draft's records (per-token, per-step, speed row, training log) into dest."""
    paths, dest = RunPaths(Path(run_dir)), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in names:
        if paths.manifest(name).is_file():  # written last by the evaluation: the draft is finished (publish checks it)
            copied += [Path(shutil.copy2(src, dest / fname)) for fname, src in published_records(paths, name).items()
                       if src.is_file()]
    return copied


def import_records(cfg: StudyConfig, run_dir: str | Path, source: str | Path, names: list[str]) -> list[str]:
    """Copy finished drafts' records from source into the run (drafts this run has trained, or holds finished and
    intact, are left alone; a damaged copy is replaced); return the names imported. Raises when a record was made
    with another config or prompt set. A warm study's baseline is imported too: stages.warm_start trains its model
    again beside the records."""
    paths, source = RunPaths(Path(run_dir)), Path(source)
    require(source.is_dir(), f"--results-from {source}: no such directory (a published records folder, e.g. "
                             f"figures/{cfg.name}/records).")
    study_wide = fingerprint(cfg, run_dir)  # version 3 records: the whole config
    published = read_settings(source.parent)  # the preset the folder was published with, where it is beside it
    before = runs_alone_differ(published, cfg) if published is not None else None  # other runs alone
    imported = []
    for name in names:
        row_file = source / paths.speed_row(name).name
        here = paths.manifest(name).is_file() and not run_damage(paths, name)  # finished and intact in this run
        trained = paths.student(name).is_dir() or name == BASELINE and saved_draft(
            paths.warm_retrain / "student") is not None  # a warm draft trained again, its imported records deleted
        if not row_file.is_file() or here or trained:
            continue
        damaged = folder_damage(source, paths, name)
        require(not damaged, f"--results-from {source}: draft '{name}' cannot be imported: {'; '.join(damaged)}. "
                "Publish it again from the run that made it, or leave it out and evaluate it here.")
        recorded, expected = json.loads(row_file.read_text()).get("fingerprint"), fingerprint(cfg, run_dir, name)
        accepted = {expected, study_wide}  # its own (version 4), or the whole preset's (version 3)
        if before is not None and made_from(before, name) == made_from(cfg, name):
            accepted.add(fingerprint(before, run_dir))  # the publishing preset's, which had other runs alone
        if recorded not in accepted:
            raise DistillSpecError(
                f"{row_file} was made with another config or prompt set (fingerprint {str(recorded)[:12]} vs this "
                f"run's {expected[:12]}); its results cannot be mixed with this run's. Use the config that made it, "
                f"or rerun that draft here (leave out --results-from).")
        for fname, dst in published_records(paths, name).items():
            if (source / fname).is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source / fname, dst)
        imported.append(name)
    return imported


def _schedule_or_text_differs(ours, theirs) -> str | None:
    """Where two warm starts' logs (indexed by step) part: other logged steps, learning rates or teacher entropies."""
    if list(ours.index) != list(theirs.index):
        return f"it logged steps {list(ours.index)[:3]}... against {list(theirs.index)[:3]}..."
    for column, tolerance in (("learning_rate", 1e-9), ("teacher_entropy", 1e-3)):
        off = (ours[column] - theirs[column]).abs() > tolerance * theirs[column].abs().clip(lower=1e-12)
        if off.any():
            step = off.idxmax()
            return f"at step {step} its {column} is {ours.loc[step, column]:.6g} against {theirs.loc[step, column]:.6g}"
    return None


def check_retrained_warm_start(records_log: str | Path, retrained_log: str | Path,
                               loss_tolerance: float = 0.05) -> str:
    """A warm draft trained again here stands for the one the imported baseline records describe when its training
    saw the same text in the same order under the same schedule (each logged step's teacher entropy and learning
    rate) and its losses agree on average within loss_tolerance (relative; two CPUs differ by 0.2% on average, 1% at
    most, in float rounding). Returns a line saying how close it came; raises otherwise."""
    from ..trainlog import read_log

    ours, theirs = (read_log(p).set_index("step") for p in (retrained_log, records_log))
    ours, theirs = ours[ours["loss"].notna()], theirs[theirs["loss"].notna()]
    problem = _schedule_or_text_differs(ours, theirs)
    if problem is None:
        relative = (ours["loss"] - theirs["loss"]).abs() / theirs["loss"].abs()
        if relative.mean() > loss_tolerance:
            problem = f"its loss differs by {relative.mean():.1%} on average (tolerance {loss_tolerance:.0%})"
    if problem is not None:
        raise DistillSpecError(
            f"The warm draft trained here ({retrained_log}) is not the one the imported baseline records describe "
            f"({records_log}): {problem}. Drafts trained from it would be compared with another draft's results. "
            f"Run with the code and preset that made the records, or evaluate this warm draft as the baseline: "
            f"delete the run's records/baseline_* files and run again (its training is kept; the baseline is then "
            f"not imported).")
    return (f"warm draft trained again: it matches the baseline's records (loss within {relative.mean():.2%} on "
            f"average, {relative.max():.2%} at most, over {len(relative)} logged steps)")


__all__ = ["bind_config", "carry_fingerprints", "check_retrained_warm_start", "fingerprint", "import_records",
           "publish_records", "runs_alone_differ", "runs_changed_here"]

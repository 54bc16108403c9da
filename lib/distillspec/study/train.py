"""The study's training stage: one draft at a time, by its kind's loop (drafts/), resumable with the settings it
started with; a warm-started baseline first where the preset has `warm_start`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..data import render_prompts
from ..drafts import TrainingInputs, kind_named, saved_draft
from ..errors import require
from ..pair import load_target
from ..trainlog import TRAIN_LOG, DistillResult
from ..training_settings import check_settings, clear_training_output
from .handoff import check_retrained_warm_start
from .preset import StudyConfig
from .rundir import ADDED_SINCE_V3, BASELINE, RunPaths, known_drafts, load_prompt_file, published_records, run_names
from .vocabulary import draft_vocab


def _retrain_fix(cfg: StudyConfig, name: str) -> str:
    return (f"Train '{name}' again from scratch (python -m distillspec train --config <{cfg.name} preset> --draft "
            f"{name} --retrain), or use a new --run-dir.")


def forget_draft(cfg: StudyConfig, run_dir: str | Path, name: str) -> None:
    """Remove a draft's training output, settings and records (and the analysis table, made with them): the next train
    starts it from scratch and the next run evaluates it again. A warm-started baseline is refused: every other
    draft of the run started from it."""
    paths = RunPaths(Path(run_dir))
    known_drafts(cfg, [name])
    require(not (name == BASELINE and cfg.warm_start is not None),
            f"The warm-started baseline of {paths.root} is where every other draft of the run started: training it "
            "again would leave them describing another start. Use a new --run-dir (or run --force).")
    clear_training_output(paths.draft_dir(name))
    for record in published_records(paths, name).values():
        if record.parent == paths.records:
            record.unlink(missing_ok=True)
    paths.results.unlink(missing_ok=True)


def train_draft(cfg: StudyConfig, run_dir: str | Path, name: str, *, retrain: bool = False, **overrides):
    """Training stage: distil one draft of the study (its overrides from the config, then any given here); resumable
    with the same settings (a draft trained with others is refused, naming the keys); retrain: train it again from
    scratch (forget_draft first). With a `warm_start`, the baseline is trained too (warm_start.py) and every other run
    starts from it."""
    paths = RunPaths(Path(run_dir))
    if retrain:
        forget_draft(cfg, run_dir, name)
    if name == BASELINE and cfg.warm_start is not None:
        return warm_start(cfg, run_dir, **overrides)
    require(name in run_names(cfg), f"Unknown training run '{name}'; this study's runs are {list(run_names(cfg))}"
            + (" (and the baseline, trained by its warm_start)." if cfg.warm_start is not None else "."))
    run_cfg = cfg.run_config(name, **overrides)
    if cfg.warm_start is not None:
        require(saved_draft(paths.student(BASELINE)) is not None,
                f"Run '{name}' starts from the study's warm-started baseline, which is not trained yet: train it with "
                f"run_name='{BASELINE}' first (the pipeline does), or import nothing and run the study again.")
        run_cfg = run_cfg.replace(student=str(paths.student(BASELINE)))
    check_settings(paths.draft_dir(name), run_cfg.to_dict(), _retrain_fix(cfg, name), added=ADDED_SINCE_V3)
    inputs = TrainingInputs(load_prompt_file(paths.train_prompts), paths.teacher_text,
                            lambda target, tok: _vocab_ids(cfg, run_dir, target, tok))
    return kind_named(run_cfg.draft_kind).train(run_cfg, paths.draft_dir(name), inputs)


def _vocab_ids(cfg: StudyConfig, run_dir: str | Path, target, tok) -> list[int] | None:
    vocab = draft_vocab(cfg, run_dir, target, tok)
    return None if vocab is None else vocab["ids"]


def warm_start(cfg: StudyConfig, run_dir: str | Path, **overrides):
    """The training stage for the baseline of a study with `warm_start`: the derived draft trained on the teacher's
    text, with its curve (alpha_pos on held-out prompts every eval_every steps) in its train log; resumable. When the
    baseline's records were imported (a study in parts: a model cannot be published), the draft is trained again in
    retrained/ for the runs to start from, checked against the records' log, which stays the baseline's."""
    paths = RunPaths(Path(run_dir))
    imported = paths.manifest(BASELINE).is_file()
    again = paths.warm_retrain
    if not imported and not again.is_dir():
        return _train_warm_start(cfg, paths, paths.draft_dir(BASELINE), overrides)
    finished = saved_draft(again / "student") is not None  # trained before a refused check: kept, not trained again
    result = (DistillResult(again / "student", again, again / TRAIN_LOG, None) if finished
              else _train_warm_start(cfg, paths, again, overrides))
    if imported:
        print(check_retrained_warm_start(paths.train_log(BASELINE), result.log_path))
        os.replace(result.student_dir, paths.student(BASELINE))  # retrained/ stays: the records are not its own
        return DistillResult(paths.student(BASELINE), again, result.log_path, result.resumed_from)
    # the imported records were deleted to evaluate this draft instead: its log becomes the baseline's
    os.replace(result.log_path, paths.train_log(BASELINE))
    os.replace(result.student_dir, paths.student(BASELINE))
    shutil.rmtree(again)
    return DistillResult(paths.student(BASELINE), paths.draft_dir(BASELINE), paths.train_log(BASELINE),
                         result.resumed_from)


def _train_warm_start(cfg: StudyConfig, paths: RunPaths, out: Path, overrides: dict):
    from ..warm_start import WarmStart, train_warm_start

    from ..warm_start import warm_settings

    run_cfg = cfg.run_config(**overrides)
    warm = WarmStart.of(cfg.warm_start)
    check_settings(out, warm_settings(run_cfg, warm), _retrain_fix(cfg, BASELINE), added=ADDED_SINCE_V3)
    target, tok = load_target(run_cfg)
    vocab = draft_vocab(cfg, paths.root, target, tok)
    return train_warm_start(run_cfg, warm, out, target=target, tokenizer=tok,
                            prompts=render_prompts(tok, load_prompt_file(paths.train_prompts)),
                            eval_prompts=render_prompts(tok, load_prompt_file(paths.eval_prompts)), gamma=cfg.gamma,
                            draft_vocab_ids=None if vocab is None else vocab["ids"],
                            text_path=paths.teacher_text(warm.text_tokens))


def run_settings(cfg: StudyConfig, name: str) -> dict:
    """What training run `name` changes from the base recipe (the baseline of a warm-started study: its warm
    start's settings), for the workbook to show."""
    if name == BASELINE and cfg.warm_start is not None:
        return {**cfg.warm_start, "rollout": "teacher text (warm start)"}
    require(name in run_names(cfg), f"Unknown training run '{name}'; this study's runs are {list(run_names(cfg))}.")
    return cfg.run_overrides()[name]


__all__ = ["forget_draft", "run_settings", "train_draft", "warm_start"]

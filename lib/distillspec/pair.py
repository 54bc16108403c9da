"""The (target, draft) pair of a study, decided in one place for every caller: the trainer, 03, the command line
and the benchmarks. The baseline draft is `student` when the config names one, else a draft derived from the
teacher's first layers; a trained draft is loaded from its directory.
"""

from __future__ import annotations

import os

from .config import Config
from .errors import require
from .models import check_compatible, draft_from_teacher, load_model
from .runtime import check_8bit_teacher, check_engine, compute_dtype


def load_pair(cfg: Config, draft: str | os.PathLike | None = None, *, training: bool = False):
    """(teacher, draft, tokenizer) on this process's device. draft: a saved draft directory, or None for the
    study's baseline draft. training=True keeps the draft's weights in fp32 (the optimiser's master weights;
    bf16 compute comes from autocast), while the frozen teacher stays in the compute dtype."""
    check_engine()
    if cfg.teacher_8bit:
        check_8bit_teacher()
    dtype = compute_dtype(cfg.precision)
    teacher, tokenizer = load_model(cfg.teacher, dtype=dtype, load_in_8bit=cfg.teacher_8bit)
    source = draft if draft is not None else cfg.student
    if source is None:
        require(not cfg.teacher_8bit, "An 8-bit teacher cannot seed a derived draft; set `student` to a model.")
        model, draft_tok = draft_from_teacher(teacher, cfg.student_keep_layers, cfg.student_layer_strategy), tokenizer
    else:
        model, draft_tok = load_model(source, dtype=dtype)
    if training:
        model.float()
    check_compatible(tokenizer, draft_tok, teacher, model)
    teacher.eval().requires_grad_(False)
    return teacher, model, tokenizer


def pair_config(config: str | os.PathLike | None = None, *, teacher: str | None = None,
                keep_layers: int | None = None) -> Config:
    """The config whose pair a command-line tool evaluates: a preset (`--config`), or the teacher and derived-draft
    depth given as flags (the defaults of Config otherwise)."""
    if config is not None:
        return Config.from_yaml(config)
    given = {k: v for k, v in (("teacher", teacher), ("student_keep_layers", keep_layers)) if v is not None}
    return Config(**given)


__all__ = ["load_pair", "pair_config"]

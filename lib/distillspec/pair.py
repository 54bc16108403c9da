"""The (target, draft) pair of a study, decided in one place for every caller: the trainer, 03, the command line
and the benchmarks. The baseline draft is `student` when the config names one, else a draft derived from the
teacher's first layers; a trained draft is loaded from its directory.
"""

from __future__ import annotations

import os

from .config import Config
from .eagle import is_head_dir, load_head
from .errors import require
from .models import check_compatible, draft_from_teacher, load_model
from .runtime import check_8bit_teacher, check_engine, compute_dtype, warn_if_emulated_bf16


def load_target(cfg: Config):
    """(teacher, tokenizer): frozen, in the compute dtype of `precision` (or 8-bit), on this process's device."""
    check_engine(lora=bool(cfg.lora))
    if cfg.teacher_8bit:  # both refusals before any weights load
        check_8bit_teacher()
        require(cfg.student is not None, "An 8-bit teacher cannot seed a derived draft; set `student` to a model.")
    warn_if_emulated_bf16(cfg.precision, "The precision the models run in (`precision`; `eval_precision` in 03)")
    teacher, tokenizer = load_model(cfg.teacher, dtype=compute_dtype(cfg.precision), load_in_8bit=cfg.teacher_8bit)
    return teacher.eval().requires_grad_(False), tokenizer


def load_draft(cfg: Config, teacher, tokenizer, draft: str | os.PathLike | None = None, *, training: bool = False):
    """A draft for `teacher`: a saved draft or feature head directory, or None for the study's baseline draft
    (`student`, or derived from the teacher). training=True keeps
    its weights in fp32 (the optimiser's master weights; bf16 compute comes from autocast)."""
    source = draft if draft is not None else cfg.student
    if source is not None and is_head_dir(source):  # a feature head drafts from this teacher's hidden states
        head = load_head(source, teacher)
        return head.float() if training else head
    if source is None:
        model, draft_tok = draft_from_teacher(teacher, cfg.student_keep_layers, cfg.student_layer_strategy), tokenizer
    else:
        model, draft_tok = load_model(source, dtype=compute_dtype(cfg.precision))
    check_compatible(tokenizer, draft_tok, teacher, model)
    return model.float() if training else model


def load_pair(cfg: Config, draft: str | os.PathLike | None = None, *, training: bool = False):
    """(teacher, draft, tokenizer) on this process's device (see load_target and load_draft)."""
    teacher, tokenizer = load_target(cfg)
    return teacher, load_draft(cfg, teacher, tokenizer, draft, training=training), tokenizer


__all__ = ["load_draft", "load_pair", "load_target"]

"""The target of a study and its standalone drafts, loaded the same way for every caller: the target frozen in the
compute dtype of `precision`; the baseline draft `student` when the config names one, else derived from the
teacher's first layers. A draft of any kind, and the (target, draft) pair: drafts.load_draft, drafts.load_pair.
"""

from __future__ import annotations

import os

from .config import Config
from .errors import require
from .models import check_compatible, draft_from_teacher, load_model
from .runtime import check_8bit_teacher, check_engine, compute_dtype, warn_if_emulated_bf16


def load_target(cfg: Config):
    """(teacher, tokenizer): frozen, in the compute dtype of `precision` (or 8-bit), on this process's device."""
    check_engine(lora=bool(cfg.lora))
    if cfg.teacher_8bit:  # both refusals before any weights load
        check_8bit_teacher()
        require(cfg.student is not None, "An 8-bit teacher cannot seed a derived draft; set `student` to a model.")
    warn_if_emulated_bf16(cfg.precision, "The precision the models run in (`precision`; `eval_precision` in the "
                          "evaluation)")
    teacher, tokenizer = load_model(cfg.teacher, dtype=compute_dtype(cfg.precision), load_in_8bit=cfg.teacher_8bit)
    return teacher.eval().requires_grad_(False), tokenizer


def standalone_draft(cfg: Config, teacher, tokenizer, source: str | os.PathLike | None = None, *,
                     training: bool = False):
    """A standalone model as draft for `teacher`: loaded from source (a folder, hub id or alias), or the study's
    baseline when source is None (`student`, else derived from the teacher's first layers). training=True keeps its
    weights in fp32 (the optimiser's master weights; bf16 compute comes from autocast)."""
    source = source if source is not None else cfg.student
    if source is None:
        model, draft_tok = draft_from_teacher(teacher, cfg.student_keep_layers, cfg.student_layer_strategy), tokenizer
    else:
        model, draft_tok = load_model(source, dtype=compute_dtype(cfg.precision))
    check_compatible(tokenizer, draft_tok, teacher, model)
    return model.float() if training else model


__all__ = ["load_target", "standalone_draft"]

"""Kinds of draft behind one interface: what a kind is (a standalone model, a feature head over the target, prompt
lookup, a hybrid of lookup and a trained draft) is decided here and nowhere else. Each kind (one module: model.py,
head.py, lookup.py, hybrid.py) says how a saved draft of it is known on
disk, loaded, cut to a reduced vocabulary and trained, and what the decoder and the evaluation stage need to know
of it (kind.py: DraftKind). Callers ask `kind_named` (a config's draft_kind), `kind_of` (a loaded draft) or
`kind_at` (a saved folder) and never which kind it is. Adding a kind: one module and its entry in KINDS."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DistillSpecError
from ..pair import load_target, standalone_draft
from .head import HEAD
from .hybrid import HYBRID
from .kind import DraftKind, TrainingInputs
from .lookup import LOOKUP
from .model import MODEL

# kind_of asks them in this order (the model kind last: it takes any model)
KINDS: dict[str, DraftKind] = {kind.name: kind for kind in (HEAD, LOOKUP, HYBRID, MODEL)}


def kind_named(name: str) -> DraftKind:
    """The kind a config's draft_kind names."""
    if name not in KINDS:
        raise DistillSpecError(f"draft_kind='{name}' must be one of {tuple(KINDS)}.")
    return KINDS[name]


def kind_of(draft) -> DraftKind:
    """The kind of a loaded draft (the first kind in KINDS that claims it; the model kind takes any model)."""
    for kind in KINDS.values():
        if kind.is_instance(draft):
            return kind
    raise DistillSpecError(f"{type(draft).__name__} is no draft distillspec knows: load one with load_draft.")


def saved_draft(folder: str | os.PathLike) -> Path | None:
    """The file a saved draft in folder is known by (its kind's marker; its time says when it was saved), or None
    when the folder holds no finished draft."""
    for kind in KINDS.values():
        if kind.marker is not None and (Path(folder) / kind.marker).is_file():
            return Path(folder) / kind.marker
    return None


def kind_at(folder: str | os.PathLike) -> DraftKind | None:
    """The kind of the draft saved in folder, or None when it holds none."""
    marker = saved_draft(folder)
    return None if marker is None else next(k for k in KINDS.values() if k.marker == marker.name)


def load_draft(cfg, teacher, tokenizer, draft: str | os.PathLike | None = None, *, training: bool = False):
    """A draft for `teacher`, of whatever kind is saved at `draft` (a hub id or alias: a standalone model); for None,
    a draft of a kind that saves nothing (cfg.draft_kind: prompt lookup), else the study's baseline (`student`, or
    derived from the teacher). training=True keeps its weights in fp32."""
    kind = kind_named(cfg.draft_kind)
    if kind.marker is None:
        return kind.load(draft, cfg, teacher, tokenizer, training=training)
    if draft is None:
        return standalone_draft(cfg, teacher, tokenizer, training=training)
    return (kind_at(draft) or MODEL).load(draft, cfg, teacher, tokenizer, training=training)


def load_pair(cfg, draft: str | os.PathLike | None = None, *, training: bool = False):
    """(teacher, draft, tokenizer) on this process's device (pair.load_target, then load_draft)."""
    teacher, tokenizer = load_target(cfg)
    return teacher, load_draft(cfg, teacher, tokenizer, draft, training=training), tokenizer


__all__ = ["DraftKind", "KINDS", "TrainingInputs", "kind_at", "kind_named", "kind_of", "load_draft", "load_pair",
           "saved_draft"]

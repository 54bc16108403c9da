"""The interface every kind of draft implements (DraftKind) and what a study hands its training loop."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class TrainingInputs:
    """What a study gives a kind's training loop: its training prompts (chat messages, a datasets.Dataset), where
    the teacher's text of a given length is kept (shared by the drafts that train on it), and the study's reduced
    draft vocabulary (None: full heads), chosen with the target once it is loaded."""

    prompts: Any
    text_path: Callable[[int], Path]
    draft_vocab: Callable[[Any, Any], list[int] | None]  # (target, tokenizer) -> kept token ids


class DraftKind(Protocol):
    """A kind of draft: a standalone model, a feature head over the target; kinds without weights (a copy of the
    context) set marker None and train to nothing."""

    name: str  # the config's draft_kind
    marker: str | None  # the file a saved draft of this kind is known by (None: nothing is saved)
    standalone: bool  # writes text without the target: own-sample acceptance, transformers' assisted generation
    reads_target_features: bool  # drafts from the target's hidden states, which the decoder hands over
    copies_context: bool  # proposes from each row's own text: its acceptance swings from prompt to prompt, so the
    # speed pilot that picks its block reads more prompts (speed_copy_pilot_prompts)
    export_refusal: str | None  # why `export` cannot hand it to other engines (None: it can)
    export_layout: str | None  # what `export` writes: 'checkpoint' (a Hugging Face model), 'speculators' (eagle3)

    def is_instance(self, draft) -> bool:
        """Whether a loaded draft is of this kind."""

    def load(self, path: str | os.PathLike, cfg, target, tokenizer, *, training: bool = False):
        """The draft saved at path, for this target (fp32 weights when training)."""

    def cut_vocab(self, draft, ids: list[int], eos_token_id):
        """The draft scoring only these token ids (q = 0 elsewhere: decoding stays lossless)."""

    def parameters(self, draft) -> int:
        """How many parameters the draft runs when it drafts (0: none, prompt lookup)."""

    def train(self, cfg, out_dir: Path, inputs: TrainingInputs):
        """Train a draft of this kind with config cfg into out_dir (resumable); a DistillResult."""


__all__ = ["DraftKind", "TrainingInputs"]

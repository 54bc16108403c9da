"""A hybrid draft (lookup.Hybrid): prompt lookup where a row's text has a match, a trained draft (a standalone model
or a feature head) elsewhere, chosen per row and step. It is made from a saved draft of one of those two kinds;
what it saves, cuts and exports is that draft's. In a study it is a run of its own (`draft_kind: hybrid`,
`hybrid_of: <run>`): nothing is trained for it, and the evaluation loads the named run's trained draft."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ..errors import DistillSpecError
from ..lookup import Hybrid, PromptLookup
from .head import HEAD
from .model import MODEL


class HybridDraft:
    name = "hybrid"
    marker = None  # nothing of its own is saved: its trained draft is
    standalone = False  # prompt lookup writes no text of its own
    reads_target_features = False  # (its draft's, when a feature head: the decoder asks the loaded hybrid)
    copies_context = True  # (where a row's text has a match)
    export_refusal = ("a hybrid is prompt lookup plus a trained draft: export the trained draft, and give the serving "
                      "engine its own n-gram proposer.")
    export_layout = None

    def is_instance(self, draft) -> bool:
        return isinstance(draft, Hybrid)

    def load(self, path: str | os.PathLike | None, cfg, target, tokenizer, *, training: bool = False):
        """The hybrid over the draft saved at path (any kind that saves one), matching n-grams up to lookup_ngram
        (after their most recent occurrence with lookup_recent)."""
        if path is None:
            raise DistillSpecError("A hybrid draft needs the trained draft it falls back to: give its folder (in a "
                                   "study, name its run with hybrid_of).")
        inner = HEAD if (Path(path) / HEAD.marker).is_file() else MODEL
        return Hybrid(inner.load(path, cfg, target, tokenizer, training=training),
                      PromptLookup(cfg.lookup_ngram, cfg.lookup_recent))

    def cut_vocab(self, draft, ids: list[int], eos_token_id):
        inner = HEAD if HEAD.is_instance(draft.draft) else MODEL
        return dataclasses.replace(draft, draft=inner.cut_vocab(draft.draft, ids, eos_token_id))

    def parameters(self, draft) -> int:
        return (HEAD if HEAD.is_instance(draft.draft) else MODEL).parameters(draft.draft)  # its trained draft's

    def train(self, cfg, out_dir: Path, inputs):
        raise DistillSpecError("A hybrid (draft_kind: hybrid) trains nothing of its own: train its draft as a run "
                               "of its own kind.")


HYBRID = HybridDraft()

__all__ = ["HYBRID", "HybridDraft"]

"""Prompt lookup as a draft (lookup.py): no weights, nothing saved, nothing trained; it copies from each row's own
text. A study selects it with `draft_kind: lookup` in a run; the evaluation stage decodes and times it like any
draft."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DistillSpecError
from ..lookup import PromptLookup


class LookupDraft:
    name = "lookup"
    marker = None  # nothing is saved: the draft is its settings
    standalone = False  # it writes no text of its own
    reads_target_features = False
    copies_context = True  # its acceptance is how much a row's text repeats
    export_refusal = ("prompt lookup has no weights to export: serving engines have their own (vLLM's n-gram "
                      "proposer, speculative_config method 'ngram', with prompt_lookup_max as the n-gram size).")
    export_layout = None

    def is_instance(self, draft) -> bool:
        return isinstance(draft, PromptLookup)

    def load(self, path: str | os.PathLike | None, cfg, target, tokenizer, *, training: bool = False):
        return PromptLookup(cfg.lookup_ngram, cfg.lookup_recent)

    def cut_vocab(self, draft, ids: list[int], eos_token_id):
        return draft  # it proposes token ids from the text itself: a reduced vocabulary changes nothing

    def parameters(self, draft) -> int:
        return 0

    def train(self, cfg, out_dir: Path, inputs):
        raise DistillSpecError("A prompt-lookup draft (draft_kind: lookup) has nothing to train: the evaluation "
                               "stage decodes with it directly (`python -m distillspec run`).")


LOOKUP = LookupDraft()

__all__ = ["LOOKUP", "LookupDraft"]

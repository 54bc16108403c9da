"""A standalone small language model as draft (derived from the teacher, or any compatible model), trained by
on-policy distillation (distillation.py) and saved as a Hugging Face checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from transformers.utils import CONFIG_NAME

from ..pair import standalone_draft


class ModelDraft:
    name = "model"
    marker = CONFIG_NAME  # transformers' config.json
    standalone = True
    reads_target_features = False
    copies_context = False
    export_refusal = None
    export_layout = "checkpoint"

    def is_instance(self, draft) -> bool:
        """Any model no other kind claims (a transformers causal LM, a peft-wrapped one in training)."""
        import torch

        return isinstance(draft, torch.nn.Module)

    def load(self, path: str | os.PathLike, cfg, target, tokenizer, *, training: bool = False):
        return standalone_draft(cfg, target, tokenizer, path, training=training)

    def cut_vocab(self, draft, ids: list[int], eos_token_id):
        from ..models import reduce_draft_vocab

        return reduce_draft_vocab(draft, ids, eos_token_id)

    def parameters(self, draft) -> int:
        from ..models import count_parameters

        return count_parameters(draft)

    def train(self, cfg, out_dir: Path, inputs):
        from ..distillation import distill  # TRL: only training pays for importing it

        return distill(cfg, out_dir, dataset=inputs.prompts, draft_vocab=inputs.draft_vocab)


MODEL = ModelDraft()

__all__ = ["MODEL", "ModelDraft"]

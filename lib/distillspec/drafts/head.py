"""An EAGLE-style feature head as draft (eagle.py): one layer over the target's top hidden state, trained on the
teacher's text (head_training.py), saved as its own small file set beside which the target's checksum is kept."""

from __future__ import annotations

import os
from pathlib import Path

from ..eagle import HEAD_FILE, EagleHead, load_head
from ..pair import load_target


class FeatureHead:
    name = "eagle"
    marker = HEAD_FILE
    standalone = False
    reads_target_features = True
    copies_context = False
    export_refusal = None  # a fused head: speculators' eagle3 layout (export_head.py); a top-state head is refused
    export_layout = "speculators"

    def is_instance(self, draft) -> bool:
        return isinstance(draft, EagleHead)

    def load(self, path: str | os.PathLike, cfg, target, tokenizer, *, training: bool = False):
        head = load_head(path, target)
        return head.float() if training else head

    def cut_vocab(self, draft, ids: list[int], eos_token_id):
        return draft.reduce_vocab(ids)

    def parameters(self, draft) -> int:
        from ..models import count_parameters

        return count_parameters(draft)  # its own layer: the target's embedding and LM head it reads are not counted

    def train(self, cfg, out_dir: Path, inputs):
        from ..data import render_prompts
        from ..head_training import train_head

        target, tok = load_target(cfg)
        return train_head(cfg, out_dir, target=target, tokenizer=tok, prompts=render_prompts(tok, inputs.prompts),
                          draft_vocab_ids=inputs.draft_vocab(target, tok),
                          text_path=inputs.text_path(cfg.train_max_new_tokens))


HEAD = FeatureHead()

__all__ = ["HEAD", "FeatureHead"]

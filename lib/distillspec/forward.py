"""What every loop and the decoder share of a causal LM's forward: the numbering of positions in a left-padded,
ragged batch (real tokens only) and the final hidden states (post-norm, what the LM head reads) without the
vocabulary projection."""

from __future__ import annotations

import torch


def position_ids(mask: torch.Tensor, before: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] position of each slot: real slots (mask 1) numbered on from `before` [B] real tokens already in the
    cache (default none); a hole takes its left neighbour's number (it is masked out)."""
    start = 0 if before is None else before[:, None]
    return (start + mask.long().cumsum(1) - 1).clamp_min(0)


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor | None = None,
                 past_key_values=None, use_cache: bool = False) -> torch.Tensor:
    """[B, T, H] the model's post-norm top hidden states (its decoder's output; a peft wrapper's base model's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    return decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                   past_key_values=past_key_values, use_cache=use_cache).last_hidden_state


__all__ = ["final_hidden", "position_ids"]

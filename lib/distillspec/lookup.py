"""Prompt lookup: a draft with no weights that copies from each row's own text. Where the last n tokens (n from
`max_ngram` down to 1) occurred earlier in the prompt or the output so far, it proposes the tokens that followed
their first occurrence, as transformers' prompt-lookup decoding does; a row without a match proposes nothing that
step (the verification is then a plain decoding step for it). Its proposals are deterministic (q one-hot), so the
acceptance rules keep the target's distribution exactly as for any draft."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import require


@dataclass(frozen=True)
class PromptLookup:
    """The draft: its one setting. The block length is the decoder's gamma (at most that many tokens per step)."""

    max_ngram: int = 3  # longest suffix of the text matched against its earlier tokens

    reads_target_features = False

    def __post_init__(self):
        require(isinstance(self.max_ngram, int) and self.max_ngram >= 1,
                f"lookup max_ngram={self.max_ngram} must be an int >= 1 (the longest n-gram matched).")

    def drafter(self, width: int, timed: bool, eos: set[int]):
        from .specdec import LookupDrafter

        return LookupDrafter(self, eos)


@dataclass(frozen=True, eq=False)
class Hybrid:
    """Prompt lookup where a row's text has a match, the trained draft (a standalone model or a feature head)
    elsewhere, chosen per row and step. The draft's cache stays current through the lookup steps: the text they
    accepted waits in its pending slots and goes through the cache with its next block."""

    draft: object  # a loaded draft (its kind's load)
    lookup: PromptLookup = PromptLookup()

    @property
    def reads_target_features(self) -> bool:
        return getattr(self.draft, "reads_target_features", False)

    @property
    def target(self):  # a feature head's target (the decoder checks it is the one it verifies with)
        return self.draft.target

    def drafter(self, width: int, timed: bool, eos: set[int]):
        from .specdec import HybridDrafter

        return HybridDrafter(self, width, timed, eos)


SOURCES = {"draft": 0, "lookup": 1}  # the per-step `source` of a hybrid's records


def continuation(text: np.ndarray, max_ngram: int, length: int, eos: set[int] = frozenset()) -> list[int]:
    """Up to `length` tokens that followed the first earlier occurrence of text's longest matching suffix (n-grams
    from max_ngram down to 1), cut before any EOS (the first match decides, as in transformers: one whose
    continuation starts with EOS proposes nothing); [] without a match. text: [L] token ids, prompt then output."""
    n_tokens = len(text)
    for n in range(min(max_ngram, n_tokens - 1), 0, -1):
        windows = np.lib.stride_tricks.sliding_window_view(text[:-1], n)  # starts 0..L-1-n: a token follows each
        hits = np.flatnonzero((windows == text[-n:]).all(1))
        if hits.size:
            start = int(hits[0]) + n
            found = text[start: start + length].tolist()
            return found[: next((i for i, t in enumerate(found) if t in eos), len(found))]  # may be [] at EOS
    return []


def one_hot_proposal(found: list[list[int]], width: int, pad: int, device):
    """Deterministic proposals (a list per row, possibly empty) as tensors: tokens [B, k] (pad beyond each row's
    own), their q one-hot [B, k, V], logits whose softmax is that q, and the count per row [B]; k = the longest."""
    block = max(len(f) for f in found)
    tokens = torch.full((len(found), block), pad, dtype=torch.long)
    for b, f in enumerate(found):
        tokens[b, : len(f)] = torch.tensor(f, dtype=torch.long)
    tokens = tokens.to(device)
    q = torch.nn.functional.one_hot(tokens, width).float()  # [B, k, V]
    logits = torch.where(q > 0, 0.0, float("-inf"))
    limit = torch.tensor([len(f) for f in found], device=device)
    return tokens, q, logits, limit


__all__ = ["Hybrid", "PromptLookup", "SOURCES", "continuation", "one_hot_proposal"]

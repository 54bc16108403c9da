"""Prompt lookup: a draft with no weights that copies from each row's own text. Where the last n tokens (n from
`max_ngram` down to 1) occurred earlier in the prompt or the output so far, it proposes the tokens that followed
their first occurrence, as transformers' prompt-lookup decoding does; a row without a match proposes nothing that
step (the verification is then a plain decoding step for it). Its proposals are deterministic (q one-hot), so the
acceptance rules keep the target's distribution exactly as for any draft. With `tree_nodes` it proposes the
continuations of every earlier occurrence at once, merged into a draft tree (draft_tree.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .draft_tree import as_tree, merge_candidates
from .errors import require
from .sampling import SamplingConfig
from .specdec import RaggedKV, _Proposal, _Rows, _Verdict, drafter_for


@dataclass(frozen=True)
class PromptLookup:
    """The draft: its one setting. The block length is the decoder's gamma (at most that many tokens per step)."""

    max_ngram: int = 3  # longest suffix of the text matched against its earlier tokens
    recent: bool = False  # copy after the suffix's most recent earlier occurrence (False: its first, as transformers)
    tree_nodes: int = 0  # > 0: the continuations of every earlier occurrence (gamma tokens each, `recent` decides
    # which first) merged into a draft tree of at most this many nodes, verified in one pass (draft_tree.py)

    reads_target_features = False

    def __post_init__(self):
        require(isinstance(self.max_ngram, int) and self.max_ngram >= 1,
                f"lookup max_ngram={self.max_ngram} must be an int >= 1 (the longest n-gram matched).")
        require(isinstance(self.recent, bool), f"lookup recent={self.recent!r} must be True or False (copy after the "
                "most recent earlier occurrence, or after the first).")
        require(isinstance(self.tree_nodes, int) and self.tree_nodes >= 0,
                f"lookup tree_nodes={self.tree_nodes} must be an int >= 0 (0: one continuation, a chain).")

    def drafter(self, width: int, timed: bool, eos: set[int]):
        return LookupDrafter(self, eos)


@dataclass(frozen=True, eq=False)
class Hybrid:
    """Prompt lookup where a row's text has a match, the trained draft (a standalone model or a feature head)
    elsewhere, chosen per row and step. The draft's cache stays current through the lookup steps: the text they
    accepted waits in its pending slots and goes through the cache with its next block."""

    draft: object  # a loaded draft (its kind's load)
    lookup: PromptLookup = PromptLookup()
    lookup_block: int | None = None  # most tokens copied per step (None: the decoder's gamma; 0: never copy)
    draft_block: int | None = None  # the trained draft's block (None: gamma; 0: rows without a match decode plainly)

    def with_blocks(self, lookup_block: int, draft_block: int) -> Hybrid:
        """This hybrid with each side's block capped (the cost model's choice: StepCosts.best_hybrid_blocks)."""
        return dataclasses.replace(self, lookup_block=lookup_block, draft_block=draft_block)

    def __post_init__(self):
        for key in ("lookup_block", "draft_block"):
            value = getattr(self, key)
            require(value is None or (isinstance(value, int) and value >= 0),
                    f"Hybrid {key}={value} must be an int >= 0 (or None: the decoder's gamma).")

    @property
    def reads_target_features(self) -> bool:
        return getattr(self.draft, "reads_target_features", False)

    @property
    def target(self):  # a feature head's target (the decoder checks it is the one it verifies with)
        return self.draft.target

    def drafter(self, width: int, timed: bool, eos: set[int]):
        return HybridDrafter(self, width, timed, eos)


SOURCES = {"draft": 0, "lookup": 1}  # the per-step `source` of a hybrid's records


def continuation(text: np.ndarray, max_ngram: int, length: int, eos: set[int] = frozenset(),
                 recent: bool = False) -> list[int]:
    """Up to `length` tokens that followed the first earlier occurrence of text's longest matching suffix (n-grams
    from max_ngram down to 1; recent=True: its most recent occurrence), cut before any EOS (that occurrence decides,
    as in transformers: one whose continuation starts with EOS proposes nothing); [] without a match. text: [L] token
    ids, prompt then output."""
    n, hits = longest_match(text, max_ngram)
    if not n:
        return []
    start = int(hits[-1 if recent else 0]) + n
    found = text[start: start + length].tolist()
    return found[: next((i for i, t in enumerate(found) if t in eos), len(found))]  # may be [] at EOS


def lookup_candidates(text: np.ndarray, max_ngram: int, length: int, eos: set[int], recent: bool) -> list[list[int]]:
    """Prompt lookup's candidates, best first: the continuations (up to `length` tokens, cut before EOS) of every
    earlier occurrence of the longest suffix of text that occurs earlier, the first occurrence first (recent=False)
    or the most recent; duplicates and empty ones dropped."""
    n, hits = longest_match(text, max_ngram)
    found, seen = [], set()
    for hit in hits[::-1] if recent else hits:
        cont = text[hit + n: hit + n + length].tolist()
        cont = cont[: next((i for i, t in enumerate(cont) if t in eos), len(cont))]
        if cont and tuple(cont) not in seen:
            seen.add(tuple(cont))
            found.append(cont)
    return found


def longest_match(text: np.ndarray, max_ngram: int) -> tuple[int, np.ndarray]:
    """(n, where): the longest suffix of text, n tokens from max_ngram down to 1, that occurred earlier, and the start
    of each earlier occurrence in order; (0, []) without one."""
    for n in range(min(max_ngram, len(text) - 1), 0, -1):
        windows = np.lib.stride_tricks.sliding_window_view(text[:-1], n)  # starts 0..L-1-n: a token follows each
        hits = np.flatnonzero((windows == text[-n:]).all(1))
        if hits.size:
            return n, hits
    return 0, np.zeros(0, dtype=np.int64)


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


class LookupDrafter:
    """Prompt lookup's side of the decoder (lookup.py): each row's text is its prompt and its output so far; each
    step proposes, per row, what followed the first earlier occurrence of the text's longest matching suffix."""

    reads_target_features = False
    ragged = True  # a row without a match proposes nothing: the step needs the bonus token to advance
    kv = None  # no model, no cache: the metrics count no draft forwards and no draft cost

    def __init__(self, lookup, eos: set[int]):
        self.lookup, self.eos, self.prompts = lookup, eos, None

    @property
    def proposes_trees(self) -> bool:
        return self.lookup.tree_nodes > 0

    def prefill(self, tgt: RaggedKV, rows: _Rows, prefix_ids, prefix_valid, prompts, pad: int) -> None:
        self.prompts, self.pad = [np.asarray(p, dtype=np.int64) for p in prompts], pad

    def matches(self, rows: _Rows, gamma: int) -> list[list[int]]:
        """Each row's proposal: up to gamma tokens after the first (or most recent) earlier occurrence of its text's
        longest suffix; with tree_nodes, the trie of every occurrence's continuation as (tokens, parents) nodes."""
        texts = [np.concatenate([self.prompts[r], np.asarray(rows.outputs[r], dtype=np.int64)])
                 for r in rows.index.tolist()]
        lookup = self.lookup
        if lookup.tree_nodes:
            return [merge_candidates(lookup_candidates(text, lookup.max_ngram, gamma, self.eos, lookup.recent),
                                     lookup.tree_nodes) for text in texts]
        return [continuation(text, lookup.max_ngram, gamma, self.eos, lookup.recent) for text in texts]

    def propose(self, rows: _Rows, gamma: int, sampling: SamplingConfig, generator, width: int,
                confidence: float | None, found: list | None = None) -> _Proposal:
        found = self.matches(rows, gamma) if found is None else found
        if not self.lookup.tree_nodes:
            tokens, q, logits, limit = one_hot_proposal(found, width, self.pad, rows.index.device)
            return _Proposal(tokens, q, logits, None, limit)
        tokens, q, logits, limit = one_hot_proposal([t for t, _ in found], width, self.pad, rows.index.device)
        if tokens.shape[1] == 0:  # no row has a match: a plain decoding step
            return _Proposal(tokens, q, logits, None, limit)
        parents = torch.full(tokens.shape, -1, dtype=torch.long)
        for b, (_, up) in enumerate(found):
            parents[b, : len(up)] = torch.tensor(up, dtype=torch.long)
        return _Proposal(tokens, q, logits, None, limit, parents=parents.to(tokens.device))

    def advance(self, tgt, rows, proposal, verdict, *, gamma: int, bonus: bool, pad: int) -> None:
        """Nothing to bring in line: the next proposals read the rows' outputs."""

    def select_rows(self, idx: torch.Tensor) -> None:
        """Rows are looked up by their prompt index: nothing to drop."""

    def compact(self, fraction: float) -> None:
        """No cache."""


class HybridDrafter:
    """A hybrid's side of the decoder (lookup.Hybrid): per row and step, prompt lookup's block where the row's text
    has a match, the trained draft's elsewhere; the draft runs only in steps where some row needs it, and its cache
    catches up on the text the lookup steps accepted (its drafter's advance with `drafted` / `ran`)."""

    ragged = True

    def __init__(self, hybrid, width: int, timed: bool, eos: set[int]):
        self.inner = drafter_for(hybrid.draft, width, timed)
        self.lookup = LookupDrafter(hybrid.lookup, eos)
        self.blocks = hybrid.lookup_block, hybrid.draft_block
        self.kv, self.reads_target_features = self.inner.kv, self.inner.reads_target_features
        self.feature_layers = getattr(self.inner, "feature_layers", ())
        self.uses_draft = hybrid.draft_block != 0  # else the trained draft never runs: no prefill, no catching up

    @property
    def proposes_trees(self) -> bool:
        return self.lookup.proposes_trees or self.inner.proposes_trees

    def prefill(self, tgt: RaggedKV, rows: _Rows, prefix_ids, prefix_valid, prompts, pad: int) -> None:
        if self.uses_draft:
            self.inner.prefill(tgt, rows, prefix_ids, prefix_valid, prompts, pad)
        self.lookup.prefill(tgt, rows, prefix_ids, prefix_valid, prompts, pad)

    def propose(self, rows: _Rows, gamma: int, sampling: SamplingConfig, generator, width: int,
                confidence: float | None) -> _Proposal:
        copy_block, own_block = (min(gamma, b) if b is not None else gamma for b in self.blocks)
        found = self.lookup.matches(rows, copy_block) if copy_block else None
        if found is None:
            found = [([], []) if self.lookup.proposes_trees else [] for _ in range(len(rows.index))]
        has = [bool(f[0]) if self.lookup.proposes_trees else bool(f) for f in found]
        self.copied = torch.tensor(has, device=rows.index.device)  # [B] lookup's rows
        copy = self.lookup.propose(rows, gamma, sampling, generator, width, confidence, found)
        copy.source = torch.where(self.copied, SOURCES["lookup"], SOURCES["draft"])
        self.ran = own_block > 0 and not bool(self.copied.all())
        if not self.ran:  # rows without a match (if any) propose nothing: a plain decoding step
            return copy
        own = self.inner.propose(rows, own_block, sampling, generator, width, confidence)
        block = max(own.tokens.shape[1], copy.tokens.shape[1])
        own_t1, copy_t1 = (_pad_block(x.q_t1(width), block) for x in (own, copy))  # [B, block, V]
        pick = self.copied[:, None]
        parents = None
        if copy.parents is not None or own.parents is not None:  # a tree on either side: both as trees
            parents = torch.where(pick, *(_pad_block(as_tree(x.tokens, x.parents), block, -1)
                                          for x in (copy, own)))
        return _Proposal(
            tokens=torch.where(pick, _pad_block(copy.tokens, block), _pad_block(own.tokens, block)),
            q=torch.where(pick[..., None], _pad_block(copy.q, block), _pad_block(own.q, block)),
            logits=torch.where(pick[..., None], copy_t1, own_t1).log(),  # softmax gives back q at T=1
            vocab_ids=None, limit=torch.where(self.copied, copy.limit, own.limit),
            source=copy.source, parents=parents)

    def advance(self, tgt: RaggedKV, rows: _Rows, proposal: _Proposal, verdict: _Verdict, *, gamma: int,
                bonus: bool, pad: int) -> None:
        if self.uses_draft:
            self.inner.advance(tgt, rows, proposal, verdict, gamma=gamma, bonus=bonus, pad=pad,
                               drafted=~self.copied, ran=self.ran)

    def select_rows(self, idx: torch.Tensor) -> None:
        if self.uses_draft:
            self.inner.select_rows(idx)

    def compact(self, fraction: float) -> None:
        if self.uses_draft:
            self.inner.compact(fraction)


def _pad_block(x: torch.Tensor, block: int, value=0) -> torch.Tensor:
    """x [B, k, ...] with `value` appended along dim 1 up to `block` (tokens beyond a row's limit are never used)."""
    if x.shape[1] == block:
        return x
    return torch.cat([x, x.new_full((x.shape[0], block - x.shape[1], *x.shape[2:]), value)], 1)


__all__ = ["Hybrid", "HybridDrafter", "LookupDrafter", "PromptLookup", "SOURCES", "continuation", "longest_match",
           "lookup_candidates", "one_hot_proposal"]

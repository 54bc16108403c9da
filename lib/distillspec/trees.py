"""Draft trees, replayed: how many tokens a chain or a small tree of drafts keeps per step under greedy decoding,
read off the target's own greedy text instead of decoding again.

Under greedy acceptance a step keeps the longest run of drafts that spell the target's argmax continuation, so what a
step keeps depends only on that continuation and on whether each true token was among the draft's proposals: for a
chain, its first choice at every depth; for a tree (EAGLE's static trees: children are a node's top-ranked tokens),
whether the ranks of the true tokens along the way form one of the tree's paths. A tree is a set of rank paths,
closed under prefixes: (0,) is the draft's first choice at depth 1, (1, 0) its second choice there followed by its
first choice after it. Its nodes are verified in one target pass (tree attention); it costs a verification of
nodes + 1 tokens and one draft forward per depth.

The ranks come from one replay of the draft along the true text, as the decoder would run it there: a standalone
draft teacher-forced (along the true path its context is the true text at every depth), a feature head unrolled on
its own features from every position (as HeadDrafter drafts), and prompt lookup's candidates (every earlier
occurrence of the matched suffix). In fp32 the decoder's greedy output is the target's greedy text, so a chain's
or a tree's replay keeps, step for step, what the decoder kept (tests/test_trees.py).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from .draft_tree import Tree, chain, depth, merge_candidates, walk_kept
from .lookup import PromptLookup, continuation, longest_match, lookup_candidates
from .specdec import HeadDrafter, RaggedKV, _Rows, left_pad

MISSED = 10**6  # the rank of a true token a draft cannot propose (outside its reduced vocabulary, or past the text)


def _ranks_of(logits: torch.Tensor, true: torch.Tensor, vocab_ids: torch.Tensor | None) -> np.ndarray:
    """Rank of each true token id under logits [n, N] (0: the draft's argmax); MISSED where the draft's reduced
    vocabulary lacks it."""
    if vocab_ids is None:
        columns, present = true, torch.ones_like(true, dtype=torch.bool)
    else:
        lookup = torch.full((int(max(vocab_ids.max(), true.max())) + 1,), -1, dtype=torch.long)
        lookup[vocab_ids.cpu()] = torch.arange(len(vocab_ids))
        columns = lookup[true.cpu()].to(logits.device)
        present = columns >= 0
    chosen = logits.gather(1, columns.clamp(min=0)[:, None])  # [n, 1]
    ranks = (logits > chosen).sum(1)  # columns strictly above it: a tie ranks the true token first
    return torch.where(present, ranks, MISSED).cpu().numpy()


@torch.inference_mode()
def model_ranks(draft, prompt: list[int], out: list[int], max_depth: int) -> np.ndarray:
    """[T, max_depth] rank of out[j + d] under a standalone draft at depth d + 1 of the step that starts at out[j]:
    one teacher-forced pass, since along the true path every depth's context is the true text."""
    ids = torch.tensor([prompt + out], device=next(draft.parameters()).device)
    logits = draft(input_ids=ids).logits[0, len(prompt) - 1: len(prompt) + len(out) - 1].float()  # [T, N]
    ranks = _ranks_of(logits, torch.tensor(out, device=ids.device), getattr(draft, "draft_vocab_ids", None))
    return _by_depth(ranks, max_depth)


def _by_depth(ranks: np.ndarray, max_depth: int) -> np.ndarray:
    """ranks [T] of each true token given the true prefix -> [T, max_depth]: entry (j, d) = ranks[j + d]."""
    padded = np.concatenate([ranks, np.full(max_depth, MISSED)])
    return np.stack([padded[d: d + len(ranks)] for d in range(max_depth)], 1)


@torch.inference_mode()
def head_ranks(head, target, prompt: list[int], out: list[int], max_depth: int) -> np.ndarray:
    """[T, max_depth] rank of out[j + d] under a feature head at depth d + 1 of the step that starts at out[j]: the
    head's cache holds the true text beside the target's features, as after a verification; from each position it
    drafts on from its own features along the true tokens, and those slots leave its cache again."""
    device = next(target.parameters()).device
    width = target.config.vocab_size
    text = prompt + out
    tgt = RaggedKV(target, width, features=True, feature_layers=head.feature_layers)
    ids = torch.tensor([text], device=device)
    tgt.forward(ids, torch.ones_like(ids, dtype=torch.bool), prefill=True)  # features [1, L, F] of the true text
    features = tgt.hidden
    drafter = HeadDrafter(head, width, timed=False)
    rows = _Rows.start([prompt], 0, device)
    prefix_ids, prefix_valid = left_pad([prompt[:-1]], 0, device)
    tgt.hidden = features[:, : len(prompt) - 1]  # what the prefill's target forward would hand over
    drafter.prefill(tgt, rows, prefix_ids, prefix_valid, [prompt], 0)
    kv, vocab_ids = drafter.kv, getattr(head, "draft_vocab_ids", None)
    ranks = np.full((len(out), max_depth), MISSED)
    one = torch.ones(1, 1, dtype=torch.bool, device=device)
    for j in range(len(out)):
        token, feature = rows.pending, rows.pending_features  # (the step's last true token, its feature)
        for d in range(min(max_depth, len(out) - j)):
            logits = kv.forward(token, one, features=feature)[:, -1]  # [1, N]
            ranks[j, d] = _ranks_of(logits, torch.tensor([out[j + d]], device=device), vocab_ids)[0]
            token, feature = torch.tensor([[out[j + d]]], device=device), kv.hidden[:, -1:]
        kv.drop_tail(min(max_depth, len(out) - j) - 1, torch.zeros(1, dtype=torch.long, device=device))
        position = len(prompt) - 1 + j  # the target's feature after out[j - 1] (or the prompt's last token)
        rows.pending = torch.tensor([[out[j]]], device=device)
        rows.pending_features = features[:, position: position + 1]
    return ranks


def kept(ranks: np.ndarray, tree: Tree) -> int:
    """Drafts a step keeps: the longest prefix of the true tokens' ranks [max_depth] that is a path of the tree."""
    n = 0
    while n < len(ranks) and tuple(int(r) for r in ranks[: n + 1]) in tree:
        n += 1
    return n


def replay_steps(ranks: np.ndarray, tree: Tree) -> np.ndarray:
    """Drafts kept by each step of greedy decoding over one output (ranks [T, max_depth]): a step starting at out[j]
    keeps k drafts and adds the target's token, so the next starts at out[j + k + 1]."""
    j, steps = 0, []
    while j < len(ranks):
        k = min(kept(ranks[j], tree), len(ranks) - j - 1)
        steps.append(k)
        j += k + 1
    return np.asarray(steps)


def best_tree(ranks: list[np.ndarray], nodes: int) -> Tree:
    """The tree of `nodes` rank paths that keeps the most drafts per step on these replays (ranks [T, max_depth]
    each): a step keeps one draft for every tree path its true ranks begin with, so the best tree holds the paths
    that occur most often from every starting position (a path occurs no less often than its extensions, so the
    set is closed under prefixes; ties go to the shorter path)."""
    counts = Counter()
    for r in ranks:
        for row in r:
            for d in range(len(row)):
                if row[d] >= nodes:
                    break
                counts[tuple(int(x) for x in row[: d + 1])] += 1
    ordered = sorted(counts, key=lambda path: (-counts[path], len(path), path))
    return frozenset(ordered[:nodes])


def _size(trie: tuple[list[int], list[int]]) -> int:
    return len(trie[0])


def _walk(trie: tuple[list[int], list[int]], out: list[int], j: int) -> int:
    """Drafts a token trie keeps for the step that starts at out[j] (the step's last token is always the target's)."""
    return walk_kept(*trie, out[j: len(out) - 1])


def lookup_replay(prompt: list[int], out: list[int], lookup: PromptLookup, *, nodes: int, length: int, eos: set[int],
                  tree: bool) -> tuple[np.ndarray, np.ndarray]:
    """Prompt lookup replayed over one output: (drafts kept, nodes proposed) per step. tree=False is the decoder's
    chain (the continuation of the occurrence lookup.recent picks, `nodes` tokens at most); tree=True merges every
    occurrence's continuation (`length` tokens each at most, lookup.recent's first) into a tree of `nodes`."""
    text = np.asarray(prompt + out, dtype=np.int64)
    j, steps, sizes = 0, [], []
    while j < len(out):
        seen = text[: len(prompt) + j]
        found = (lookup_candidates(seen, lookup.max_ngram, length, eos, lookup.recent) if tree
                 else [continuation(seen, lookup.max_ngram, nodes, eos, lookup.recent)])
        node = merge_candidates([f for f in found if f], nodes)
        steps.append(_walk(node, out, j))
        sizes.append(_size(node))
        j += steps[-1] + 1
    return np.asarray(steps), np.asarray(sizes)


def hybrid_replay(prompt: list[int], out: list[int], lookup: PromptLookup, ranks: np.ndarray, *, copy_block: int,
                  own_block: int, eos: set[int], min_match: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A hybrid replayed over one output: (drafts kept, nodes proposed, draft forwards) per step. Lookup's chain (up
    to copy_block tokens) where the text's longest recurring suffix is at least min_match tokens long and has a
    continuation, as the decoder's Hybrid does with min_match 1; elsewhere the trained draft's chain of own_block
    (its ranks [T, max_depth]; 0: a plain decoding step)."""
    text = np.asarray(prompt + out, dtype=np.int64)
    j, steps, sizes, forwards = 0, [], [], []
    while j < len(out):
        seen = text[: len(prompt) + j]
        found = continuation(seen, lookup.max_ngram, copy_block, eos, lookup.recent) if copy_block else []
        if found and (min_match == 1 or longest_match(seen, lookup.max_ngram)[0] >= min_match):
            k, size, ran = _walk(merge_candidates([found], len(found)), out, j), len(found), 0
        else:
            k = min(kept(ranks[j], chain(own_block)), len(out) - j - 1) if own_block else 0
            size, ran = own_block, own_block
        steps.append(k)
        sizes.append(size)
        forwards.append(ran)
        j += k + 1
    return np.asarray(steps), np.asarray(sizes), np.asarray(forwards)


__all__ = ["MISSED", "Tree", "best_tree", "chain", "depth", "head_ranks", "hybrid_replay", "kept", "lookup_candidates",
           "lookup_replay", "model_ranks", "replay_steps"]

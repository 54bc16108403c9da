"""Draft trees in the decoder: a drafter proposes several continuations at once, as a tree of tokens, and the target
verifies every node in one pass (tree attention: a node sees the row's text, the token before the tree and its own
ancestors, nothing else). Drafts with weights follow a static shape of rank paths (EAGLE's static trees: a node's
children are the draft's top-ranked tokens after it); prompt lookup merges the continuations of every earlier
occurrence of the matched suffix into a trie.

Acceptance walks each row's tree from its root: at every node the target's token is drawn from the target's (warped)
distribution there, and the walk moves on to the child that spells it, if one does; the first drawn token that no
child spells ends the step (the correction, or after a leaf the bonus token). Every emitted token is a draw from the
target given the text before it, so the output follows the target exactly whatever the tree holds (under greedy
decoding, the target's argmax). The candidates are deterministic; the lossy rules, which weigh p against q, do not
apply to trees.

Layout of a tree proposal: nodes [B, n], each with its parent's index (-1: a child of the root, the row's last
accepted token) and a parent index below its own; a row's first `limit` nodes are real, the rest pad.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .errors import DistillSpecError, require
from .sampling import sample

Tree = frozenset  # of rank paths (tuples of ints), closed under prefixes: (0,) the first choice at depth 1, (1, 0)


def chain(length: int) -> Tree:
    """The decoder's chain of `length` drafts as a tree: the first choice at every depth."""
    return frozenset((0,) * d for d in range(1, length + 1))


def depth(tree: Tree) -> int:
    return max((len(path) for path in tree), default=0)


def parse_tree(text: str) -> Tree:
    """'0|1|0.0' -> {(0,), (1,), (0, 0)}: rank paths separated by '|', depths by '.' (the command line's form)."""
    try:
        tree = frozenset(tuple(int(r) for r in path.split(".")) for path in text.split("|"))
    except ValueError:
        raise DistillSpecError(f"Draft tree {text!r}: write rank paths separated by '|', depths by '.', e.g. "
                               "'0|1|0.0' (the first two choices, then the first choice after the first).") from None
    TreeShape.of(tree)  # refuses a broken shape with its reason
    return tree


@dataclass(frozen=True)
class TreeShape:
    """A static tree of rank paths in the order its nodes are drafted and verified: by depth, then by rank."""

    paths: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, tree) -> TreeShape:
        paths = sorted({tuple(path) for path in tree}, key=lambda path: (len(path), path))
        require(len(paths) > 0 and all(len(p) > 0 and all(isinstance(r, int) and r >= 0 for r in p) for p in paths),
                f"draft_tree={tree!r} must be a non-empty set of rank paths: tuples of ints >= 0, e.g. "
                "{(0,), (1,), (0, 0)} (the draft's first and second choice, then the first after the first).")
        missing = next((p for p in paths if len(p) > 1 and p[:-1] not in paths), None)
        require(missing is None, f"draft_tree is not closed under prefixes: {missing} has no parent "
                f"{(missing or (0,))[:-1]}. Add every prefix of each path.")
        return cls(tuple(paths))

    @cached_property
    def parents(self) -> list[int]:
        index = {path: i for i, path in enumerate(self.paths)}
        return [index.get(path[:-1], -1) for path in self.paths]

    @property
    def depth(self) -> int:
        return len(self.paths[-1])


def merge_candidates(candidates: list[list[int]], nodes: int) -> tuple[list[int], list[int]]:
    """Candidate continuations, best first, merged into a trie of at most `nodes` nodes: (tokens, parents), a parent
    before its children. A later candidate adds only the tokens where it leaves the earlier ones, as far as the
    budget goes."""
    tokens, parents, child = [], [], {}  # child[(parent, token)] -> node
    for cand in candidates:
        node = -1
        for token in cand:
            if (node, token) not in child:
                if len(tokens) == nodes:
                    return tokens, parents
                child[(node, token)] = len(tokens)
                tokens.append(int(token))
                parents.append(node)
            node = child[(node, token)]
    return tokens, parents


def walk_kept(tokens: list[int], parents: list[int], text: list[int]) -> int:
    """How many nodes of a trie the greedy walk keeps along `text` (the target's tokens from the step's start)."""
    node, kept = -1, 0
    for token in text:
        nxt = next((i for i, (t, p) in enumerate(zip(tokens, parents)) if p == node and t == token), None)
        if nxt is None:
            break
        node, kept = nxt, kept + 1
    return kept


def ancestry(parents: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """parents [B, n] -> (attend [B, n, n] bool: node i sees node j when j is i or one of its ancestors; a pad node
    sees itself only, depth [B, n] long: 1 for a child of the root)."""
    batch, n = parents.shape
    attend = torch.eye(n, dtype=torch.bool, device=parents.device).expand(batch, n, n).clone()
    node = parents.clone()
    for _ in range(n):  # climb one generation per pass
        up = node >= 0
        if not bool(up.any()):
            break
        attend.scatter_(2, node.clamp(min=0)[..., None], up[..., None] | attend.gather(2, node.clamp(min=0)[..., None]))
        node = torch.where(up, parents.gather(1, node.clamp(min=0)), -1)
    attend &= valid[:, :, None] | torch.eye(n, dtype=torch.bool, device=parents.device)
    return attend, attend.sum(-1)


def verification_layout(parents: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's pass over [its unconsumed token, the nodes]: (attend [B, n+1, n+1], position offsets [B, n+1]:
    0 for that token, a node's depth for a node)."""
    attend, node_depth = ancestry(parents, valid)
    batch, n = parents.shape
    full = torch.zeros(batch, n + 1, n + 1, dtype=torch.bool, device=parents.device)
    full[:, :, 0] = True
    full[:, 1:, 1:] = attend
    return full, torch.cat([node_depth.new_zeros(batch, 1), node_depth], 1)


@dataclass
class TreeWalk:
    """Where each row's walk went: path [B, D] node indices (-1 beyond its n_acc), n_acc [B], the next token [B]
    (the correction or the bonus) and, for the records, rejected [B]: the first child of the node where the walk
    stopped (the draft's best candidate there; -1 at a leaf)."""

    path: torch.Tensor
    n_acc: torch.Tensor
    next_token: torch.Tensor
    rejected: torch.Tensor


def walk(p: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor, valid: torch.Tensor, generator) -> TreeWalk:
    """p [B, n+1, V]: the target's warped distributions at its unconsumed token (slot 0) and after each node."""
    batch, n = tokens.shape
    rows = torch.arange(batch, device=p.device)
    node = torch.full((batch,), -1, dtype=torch.long, device=p.device)  # -1: the root
    alive = torch.ones(batch, dtype=torch.bool, device=p.device)
    n_acc = torch.zeros(batch, dtype=torch.long, device=p.device)
    next_token = torch.zeros(batch, dtype=torch.long, device=p.device)
    path = []
    for _ in range(n + 1):
        drawn = sample(p[rows, node + 1], generator)  # [B] the target's token after the current node
        next_token = torch.where(alive, drawn, next_token)
        children = valid & (parents == node[:, None])  # [B, n]
        match = children & (tokens == drawn[:, None])
        moved = alive & match.any(1)
        if not bool(moved.any()):
            break
        step_to = match.long().argmax(1)
        path.append(torch.where(moved, step_to, -1))
        node, n_acc, alive = torch.where(moved, step_to, node), n_acc + moved.long(), moved
    children = valid & (parents == node[:, None])
    rejected = torch.where(children.any(1), children.long().argmax(1), -1)
    path = torch.stack(path, 1) if path else node.new_full((batch, 0), -1)
    return TreeWalk(path, n_acc, next_token, rejected)


def chain_nodes(result: TreeWalk) -> tuple[torch.Tensor, torch.Tensor]:
    """The walk as a chain for the records and the hand-over: node indices [B, k] (the path, then the rejected first
    child; -1 beyond) and how many are real per row (the path's length, plus one where a child was rejected)."""
    batch = result.n_acc.shape[0]
    extended = torch.cat([result.path, result.path.new_full((batch, 1), -1)], 1)  # [B, D+1]
    slots = torch.arange(extended.shape[1], device=extended.device)[None, :]
    nodes = torch.where(slots == result.n_acc[:, None], result.rejected[:, None], extended)
    return nodes, result.n_acc + (result.rejected >= 0).long()


def draft_tree_forward(kv, shape: TreeShape, first_logits: torch.Tensor, first_hidden: torch.Tensor | None):
    """A drafter with weights drafts a static tree from its pending slots' forward (first_logits [B, N] and, for a
    feature head, its feature there [B, 1, H]): the nodes of each depth are the top-ranked tokens after their
    parents, and the nodes with children go through its cache in one tree-attention forward per depth. Returns the
    nodes' columns of the draft's vocabulary [B, n], the draft logits each was ranked from [B, n, N] and the number
    of tree slots now in its cache (the drafter drops them after the verification)."""
    parents, n = shape.parents, len(shape.paths)
    sees, _ = ancestry(torch.tensor([parents]), torch.ones(1, n, dtype=torch.bool))  # [1, n, n]
    logits_of = {-1: first_logits}  # node -> its draft logits [B, N] (-1: the root)
    hidden_of = {-1: first_hidden}
    top_of = {}  # node -> its children's columns [B, widest rank + 1], one topk per parent
    columns, ranked_from = [None] * n, [None] * n
    fed, fed_nodes, base = 0, [], kv.n_real.clone()
    vocab_ids = getattr(kv.model, "draft_vocab_ids", None)
    for level in range(1, shape.depth + 1):
        nodes = [i for i, path in enumerate(shape.paths) if len(path) == level]
        for i in nodes:
            up, scores = parents[i], logits_of[parents[i]]
            if up not in top_of:
                widest = max(shape.paths[j][-1] for j in nodes if parents[j] == up) + 1
                top_of[up] = scores.topk(min(widest, scores.shape[-1]), -1).indices
            columns[i] = top_of[up][:, min(shape.paths[i][-1], top_of[up].shape[1] - 1)]
            ranked_from[i] = scores
        feed = [i for i in nodes if i in parents]  # nodes with children
        if not feed or level == shape.depth:
            break
        ids = torch.stack([columns[i] for i in feed], 1)  # [B, m] columns
        ids = ids if vocab_ids is None else vocab_ids[ids]
        every = fed_nodes + feed
        attend = sees[0][feed][:, every].to(ids.device)[None].expand(ids.shape[0], -1, -1)  # [B, m, fed + m]
        positions = base[:, None] + level - 1 + torch.zeros_like(ids)
        features = None if first_hidden is None else torch.cat([hidden_of[parents[i]] for i in feed], 1)
        out = kv.forward(ids, torch.ones_like(ids, dtype=torch.bool), features=features, tree=(attend, positions))
        for k, i in enumerate(feed):
            logits_of[i] = out[:, k]
            if first_hidden is not None:
                hidden_of[i] = kv.hidden[:, k: k + 1]
        fed, fed_nodes = fed + len(feed), every
    return torch.stack(columns, 1), torch.stack(ranked_from, 1), fed


def as_tree(tokens: torch.Tensor, parents: torch.Tensor | None) -> torch.Tensor:
    """A proposal's parents [B, n]: its own, or a chain's (each node the child of the one before)."""
    if parents is not None:
        return parents
    chain_parents = torch.arange(tokens.shape[1], device=tokens.device) - 1
    return chain_parents[None, :].expand(tokens.shape[0], -1).clone()


__all__ = ["Tree", "TreeShape", "TreeWalk", "ancestry", "as_tree", "chain", "chain_nodes", "depth",
           "draft_tree_forward", "merge_candidates", "parse_tree", "verification_layout", "walk", "walk_kept"]

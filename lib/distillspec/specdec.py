"""Batched speculative decoding with KV caches, ragged acceptance and per-token records.

Design (one cache per model, stock transformers DynamicCache):
- All rows of a model's cache share one length L. A 2-D attention mask [B, L] marks real tokens; rejected draft
  slots and left padding stay in the cache as holes (mask 0). position_ids count each row's real tokens only, so
  a hole never shifts positions. Nothing is ever recomputed: every forward after the prefill feeds at most
  gamma + 1 new slots per row.
- The target always has exactly one unconsumed token per row (the last emitted one); the draft has one or two
  (two after a fully accepted block: the last draft token and the bonus token), fed right-aligned, and only one
  slot per row in a step where no row has two (a hole would cost a 2-token forward and widen the cache).
- When compaction would shorten a cache by more than `compact_fraction`, it is compacted by a per-row gather; finished rows (EOS or
  length) leave the batch via batch_select_indices.
- The acceptance rule is pluggable (`acceptance.py`): lossless rejection sampling, DistillSpec's lossy variants,
  or SKD's top-k rule. Greedy decoding is rejection sampling over one-hot distributions.
- Each step reads as gpt-fast's loop does: propose (draft, gamma tokens) -> verify (target, one pass) -> accept
  (the rule, then the correction or bonus token) -> advance (emit, trim both caches, drop finished rows).
- The draft's side of each step (its prefill, proposals and hand-over after a verification) is its drafter's:
  ModelDrafter for a standalone model, HeadDrafter for a feature head that reads the target's features, and the
  one a draft without weights brings (lookup.py: prompt lookup, a one-hot block whose length varies per row and
  step, none where the row's text has no match; the hybrid of lookup and a trained draft).
- A drafter may propose a tree instead of a chain (draft_tree.py: `draft_tree=` for drafts with weights, prompt
  lookup's `tree_nodes`): the target verifies every node in one pass with tree attention (a 4-D mask), the walk
  through the tree draws the target's token at each node, and the accepted path is handed on as a chain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import DynamicCache

from .acceptance import ACCEPTANCE_RULES, RejectionSampling
from .atomic import write_json
from .draft_tree import TreeShape, chain_nodes, draft_tree_forward, verification_layout, walk
from .eagle import target_features
from .forward import position_ids
from .errors import DistillSpecError, require
from .metrics import SpecDecMetrics, compute_metrics
from .models import check_compatible, model_context_length
from .records import SpecDecRecords
from .sampling import SamplingConfig, as_sampling, sample


@dataclass
class RaggedKV:
    """One model's KV cache over a ragged batch, with its hole mask, per-row real-token counts and (when `timed`)
    the wall time of each forward."""

    model: torch.nn.Module
    width: int  # logits columns to keep (shared vocabulary)
    timed: bool = False  # time each forward: on a GPU that waits for the device before and after every forward
    features: bool = False  # a target that hands its top hidden states to a feature head, or the head itself
    feature_layers: tuple = ()  # a target's, for a fused head: the layers whose inputs it hands over (eagle.py)
    cache: DynamicCache = None
    mask: torch.Tensor = None  # [B, L] long, 1 = real token
    n_real: torch.Tensor = None  # [B] long
    forward_s: list = field(default_factory=list)  # wall seconds of each decode forward (prefill excluded; timed)
    forwards: int = 0  # decode forwards (prefill excluded)
    max_new_per_row: int = 0  # widest decode forward: most slots one forward fed a row (prefill excluded)
    prefill_s: float = 0.0  # timed only
    hidden: torch.Tensor = None  # [B, k, H] features of the last forward (feature roles only)

    def forward(self, ids: torch.Tensor, valid: torch.Tensor, prefill: bool = False,
                features: torch.Tensor | None = None, tree: tuple | None = None) -> torch.Tensor:
        """Feed ids [B, k] (valid [B, k] bool marks real slots; callers never feed an all-hole column, so k is the
        most real slots of a row) and, for a feature head, the features [B, k, H] paired with them; return float
        logits [B, k, width] (the last slot's only after a prefill). No host sync unless `timed`. A draft tree's
        slots (draft_tree.py) come with tree=(attend [B, k, T + k] bool over the step's T tree slots already in the
        cache and these, positions [B, k]): they see the text before the tree and what `attend` allows."""
        valid = valid.long()
        if self.cache is None:
            self.cache = DynamicCache(config=self.model.config)
            self.mask = valid.new_zeros(ids.shape[0], 0)
            self.n_real = valid.new_zeros(ids.shape[0])
        mask = torch.cat([self.mask, valid], dim=1)
        attention = mask
        if tree is None:
            positions = position_ids(valid, self.n_real)
        else:
            attend, positions = tree
            before = self.mask.shape[1] - (attend.shape[-1] - ids.shape[1])  # slots before the tree
            seen = self.mask[:, None, :before].bool().expand(-1, ids.shape[1], -1)  # [B, k, before]
            attention = torch.cat([seen, attend], -1)[:, None]  # [B, 1, k, L + k]
        start = _now(ids.device) if self.timed else 0.0
        keep = 1 if prefill else 0  # the prefill's logits are never used: skip most of the vocab projection
        if features is not None:  # a feature head: each token beside its feature
            out = self.model(ids, features, attention_mask=attention, position_ids=positions,
                             past_key_values=self.cache, use_cache=True, logits_to_keep=keep)
            logits, self.hidden = out.logits, out.hidden
        elif self.features:
            logits, self.hidden = target_features(self.model, ids, attention, positions, self.cache, True, keep,
                                                  self.feature_layers)
        else:
            logits = self.model(input_ids=ids, attention_mask=attention, position_ids=positions,
                                past_key_values=self.cache, use_cache=True, logits_to_keep=keep).logits
        if self.timed:
            elapsed = _now(ids.device) - start
            if prefill:
                self.prefill_s += elapsed
            else:
                self.forward_s.append(elapsed)
        if not prefill:
            self.forwards += 1
            self.max_new_per_row = max(self.max_new_per_row, ids.shape[1])
        self.mask, self.n_real = mask, self.n_real + valid.sum(1)
        return logits[..., : self.width].float()

    def drop_tail(self, k: int, keep: torch.Tensor) -> None:
        """Turn the last k slots into holes beyond each row's first keep[b] of them (rejected drafts); where every
        row keeps as many (always at batch 1), cut them off the cache instead: no hole is left to attend over."""
        if k == 0:
            return
        if bool((keep == keep[0]).all()):
            cut = k - int(keep[0])
            if cut:
                self.cache.crop(-cut)
                self.n_real -= self.mask[:, -cut:].sum(1)
                self.mask = self.mask[:, :-cut]
            return
        kept = (torch.arange(k, device=keep.device)[None, :] < keep[:, None]).long()  # [B, k]
        self.n_real -= self.mask[:, -k:].sum(1) - kept.sum(1)
        self.mask[:, -k:] = kept

    def keep_tree(self, kept: torch.Tensor) -> None:
        """A verified tree's slots (the last k) keep only kept [B, k] (the token before the tree and the accepted
        path): those move to the front of the k slots, in order, and the rest leave as rejected drafts do."""
        k = kept.shape[1]
        order = torch.argsort((~kept).long(), dim=1, stable=True)  # [B, k] kept slots first
        for layer in self.cache.layers:
            index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys[:, :, -k:] = layer.keys[:, :, -k:].gather(2, index)
            layer.values[:, :, -k:] = layer.values[:, :, -k:].gather(2, index)
        self.mask[:, -k:] = self.mask[:, -k:].gather(1, order)
        self.drop_tail(k, kept.sum(1))

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (finished rows leave)."""
        self.cache.batch_select_indices(rows)
        self.mask, self.n_real = self.mask[rows], self.n_real[rows]

    def compact(self, fraction: float) -> bool:
        """Gather each row's real slots to the right (left-padded) when that shortens the cache by > fraction."""
        length, new_length = self.mask.shape[1], int(self.mask.sum(1).max())
        if length - new_length <= fraction * length:
            return False
        order = torch.argsort(self.mask, dim=1, stable=True)  # holes first, real slots after, in order
        keep_from = length - new_length
        order = order[:, keep_from:]  # [B, L']
        for layer in self.cache.layers:
            index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)
        self.mask = self.mask.gather(1, order)
        return True


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class SpecDecResult:
    """Generated ids per prompt (new tokens only, EOS included if hit), records and summary metrics."""

    sequences: list[list[int]]
    records: SpecDecRecords
    metrics: SpecDecMetrics
    gamma: int

    def tokens_df(self):
        return self.records.tokens_df()

    def steps_df(self):
        return self.records.steps_df()

    def save(self, directory, prefix: str = "") -> dict:
        """Write <prefix>tokens.parquet, <prefix>steps.parquet and <prefix>metrics.json atomically."""
        paths = self.records.save(directory, prefix)
        paths["metrics"] = write_json(self.metrics.as_dict(), Path(directory) / f"{prefix}metrics.json")
        return paths


def _validate(prompts, gamma, max_new_tokens, target, draft, target_tokenizer, draft_tokenizer):
    require(isinstance(gamma, int) and gamma >= 1, f"gamma={gamma} must be an int >= 1 (draft tokens per step).")
    require(
        isinstance(max_new_tokens, int) and max_new_tokens >= 1,
        f"max_new_tokens={max_new_tokens} must be an int >= 1.",
    )
    require(len(prompts) > 0, "The prompt list is empty: pass at least one prompt (a list of token ids).")
    for i, prompt in enumerate(prompts):
        require(len(prompt) > 0, f"Prompt {i} is empty: every prompt needs at least one token.")
    if target_tokenizer is not None or draft_tokenizer is not None:
        require(
            target_tokenizer is not None and draft_tokenizer is not None,
            "Pass both target_tokenizer and draft_tokenizer (or neither) to check compatibility.",
        )
        width = check_compatible(target_tokenizer, draft_tokenizer, target,
                                 draft if isinstance(draft, torch.nn.Module) else None)
    elif not isinstance(draft, torch.nn.Module):  # a draft without weights copies the target's own token ids
        width = target.config.vocab_size
    else:
        vt, vd = target.config.vocab_size, draft.config.vocab_size
        require(
            vt == vd,
            f"Target vocabulary size {vt} differs from the draft's {vd}: the models cannot share token ids. "
            "Pass target_tokenizer/draft_tokenizer to allow padding-only differences.",
        )
        width = vt
    vocab_ids = getattr(draft, "draft_vocab_ids", None)
    if vocab_ids is not None and int(vocab_ids.max()) >= width:
        raise DistillSpecError(f"The draft's reduced vocabulary maps to token ids up to {int(vocab_ids.max())}, beyond "
                               f"the {width} ids the target scores: draft and target do not share this id map.")
    for who, model in (("target", target), ("draft", draft)):
        if not isinstance(model, torch.nn.Module):
            continue
        context = model_context_length(model)
        for i, prompt in enumerate(prompts):
            need = len(prompt) + max_new_tokens + gamma + 1
            require(
                need <= context,
                f"Prompt {i} has {len(prompt)} tokens; with max_new_tokens={max_new_tokens} and gamma={gamma} it "
                f"needs {need} positions, more than the {who}'s context of {context}. Shorten or drop it.",
            )
    return width


def left_pad(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    valid = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            valid[i, width - len(r) :] = True
    return ids.to(device), valid.to(device)


def _eos_set(eos_token_id, target) -> set[int]:
    if eos_token_id is None:
        eos_token_id = getattr(target.generation_config, "eos_token_id", None)
    if eos_token_id is None:
        return set()
    return {int(eos_token_id)} if isinstance(eos_token_id, int) else {int(e) for e in eos_token_id}


@dataclass
class _Rows:
    """The decoding state of the active rows (finished rows leave): which prompt each is, the token the target has
    not consumed yet, the slots the draft has not (right-aligned, valid marks real ones: one or two tokens for a
    standalone draft; for a feature head, the pairs (token, target feature) of the last verification), and the
    outputs."""

    index: torch.Tensor  # [B] prompt index of each active row
    last_target: torch.Tensor  # [B]
    pending: torch.Tensor  # [B, w] token ids
    pending_valid: torch.Tensor  # [B, w] bool
    outputs: list[list[int]]  # per prompt: the new tokens so far
    pending_features: torch.Tensor | None = None  # [B, w, H] a feature head's features paired with `pending`

    @classmethod
    def start(cls, prompts, pad: int, device) -> _Rows:
        last = torch.tensor([p[-1] for p in prompts], device=device)
        return cls(torch.arange(len(prompts), device=device), last, *_only(last, pad), [[] for _ in prompts])

    def keep(self, idx: torch.Tensor) -> None:
        self.index, self.last_target = self.index[idx], self.last_target[idx]
        self.pending, self.pending_valid = self.pending[idx], self.pending_valid[idx]
        if self.pending_features is not None:
            self.pending_features = self.pending_features[idx]


def _only(token: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pending slots holding just this token (right-aligned, a hole before it)."""
    ids = torch.stack([torch.full_like(token, pad), token], 1)  # [B, 2]
    return ids, torch.tensor([[False, True]], device=token.device).expand(len(token), 2).clone()


@dataclass
class _Proposal:
    tokens: torch.Tensor  # [B, gamma] drafted token ids
    q: torch.Tensor  # [B, gamma, V] warped draft distributions they were sampled from
    logits: torch.Tensor  # [B, gamma, N] raw draft logits (N = V, or the draft's reduced vocabulary)
    vocab_ids: torch.Tensor | None  # [N] token id of each draft logit column (a reduced vocabulary), or None
    limit: torch.Tensor  # [B] drafts each row proposes (fewer than the block where the draft stopped early)
    source: torch.Tensor | None = None  # [B] which draft proposed each row's block (a hybrid's SOURCES), or None
    parents: torch.Tensor | None = None  # [B, gamma] a draft tree's parent of each node (draft_tree.py); None: a chain

    def q_t1(self, width: int) -> torch.Tensor:
        """[B, gamma, V] the draft's distributions at T=1 (for the records)."""
        return _to_token_ids(torch.softmax(self.logits, -1), self.vocab_ids, width)


def _to_token_ids(probs: torch.Tensor, vocab_ids: torch.Tensor | None, width: int) -> torch.Tensor:
    """Probabilities over a draft's reduced vocabulary [..., N] -> over all token ids [..., V] (0 elsewhere)."""
    if vocab_ids is None:
        return probs
    return probs.new_zeros(*probs.shape[:-1], width).index_copy(-1, vocab_ids, probs)


@dataclass
class _Verdict:
    accept: torch.Tensor  # [B, gamma] bool: the rule's decision per drafted token
    n_acc: torch.Tensor  # [B] accepted prefix length
    next_token: torch.Tensor  # [B] the correction (first rejection) or the bonus token
    p: torch.Tensor  # [B, gamma+1, V] warped target distributions


def _propose(drf: RaggedKV, rows: _Rows, gamma: int, sampling: SamplingConfig, generator, width: int,
             confidence: float | None = None) -> _Proposal:
    """The draft proposes up to gamma tokens autoregressively, starting from its pending token(s). A draft with a
    reduced vocabulary samples a column of its head, mapped to a token id; its q is 0 on every other id. With a
    `confidence` threshold a row stops after a draft whose probability under the draft (at T=1) is below it, and
    the block ends early once every row has stopped."""
    vocab_ids = getattr(drf.model, "draft_vocab_ids", None)  # [N] or None
    tokens, qs, logits_seen = [], [], []
    ids, valid, features = rows.pending, rows.pending_valid, rows.pending_features
    if features is None and not bool(valid[:, 0].any()):  # no row has two pending tokens: feed one slot
        ids, valid = ids[:, 1:], valid[:, 1:]
    limit = torch.full((len(rows.index),), gamma, device=ids.device)  # [B]
    for i in range(gamma):
        logits = drf.forward(ids, valid, features=features)[:, -1]  # [B, N]
        if features is not None:  # a head drafts on from its own feature
            features = drf.hidden[:, -1:]
        q = sampling.probs(logits)  # [B, N]
        column = sample(q, generator)  # [B]
        token = column if vocab_ids is None else vocab_ids[column]
        tokens.append(token)
        qs.append(_to_token_ids(q, vocab_ids, width))  # [B, V]
        logits_seen.append(logits)
        ids, valid = token[:, None], torch.ones_like(token[:, None], dtype=torch.bool)
        if confidence is not None and i < gamma - 1:
            unsure = torch.softmax(logits, -1).gather(1, column[:, None]).squeeze(1) < confidence  # [B]
            limit = torch.where(unsure & (limit == gamma), i + 1, limit)
            if bool((limit < gamma).all()):  # every row has stopped: a shorter block
                break
    return _Proposal(torch.stack(tokens, 1), torch.stack(qs, 1), torch.stack(logits_seen, 1), vocab_ids,
                     limit.clamp(max=len(tokens)))


def _propose_tree(drf: RaggedKV, rows: _Rows, shape: TreeShape, width: int) -> tuple[_Proposal, int]:
    """A drafter with weights proposes a static draft tree (draft_tree.py): its pending slots first, then one
    tree-attention forward per depth for the nodes with children. Returns the proposal (q one-hot: the candidates
    are deterministic) and the tree slots left in its cache."""
    ids, valid, features = rows.pending, rows.pending_valid, rows.pending_features
    if features is None and not bool(valid[:, 0].any()):
        ids, valid = ids[:, 1:], valid[:, 1:]
    first = drf.forward(ids, valid, features=features)[:, -1]  # [B, N]
    hidden = drf.hidden[:, -1:] if features is not None else None
    columns, ranked_from, fed = draft_tree_forward(drf, shape, first, hidden)
    vocab_ids = getattr(drf.model, "draft_vocab_ids", None)
    tokens = columns if vocab_ids is None else vocab_ids[columns]  # [B, n]
    q = torch.nn.functional.one_hot(tokens, width).float()  # [B, n, V]
    limit = torch.full((tokens.shape[0],), tokens.shape[1], device=tokens.device)
    parents = torch.tensor(shape.parents, device=tokens.device)[None, :].expand(tokens.shape[0], -1)
    return _Proposal(tokens, q, ranked_from, vocab_ids, limit, parents=parents), fed


def _verify_tree(tgt: RaggedKV, rows: _Rows, proposal: _Proposal, sampling: SamplingConfig, generator
                 ) -> tuple[_Proposal, _Verdict, torch.Tensor]:
    """The target scores its unconsumed token and every node of a draft tree in one pass (tree attention) and walks
    each row's tree (draft_tree.walk); its cache keeps that token and the accepted path. Returns the walk as a chain
    (the path, then the rejected first child), its verdict and the target's logits along it [B, k+1, V], so the
    records, the output and the drafter's hand-over read it as any chain."""
    tokens, parents = proposal.tokens, proposal.parents
    batch, n = tokens.shape
    slots = torch.arange(n, device=tokens.device)[None, :]
    valid = slots < proposal.limit[:, None]  # [B, n]
    attend, offsets = verification_layout(parents, valid)
    ids = torch.cat([rows.last_target[:, None], tokens], 1)  # [B, n+1]
    before = tgt.n_real if tgt.n_real is not None else offsets.new_zeros(batch)  # no cache yet: one-token prompts
    p_logits = tgt.forward(ids, torch.cat([valid.new_ones(batch, 1), valid], 1),
                           tree=(attend, before[:, None] + offsets))  # [B, n+1, V]
    p = sampling.probs(p_logits)
    result = walk(p, tokens, parents, valid, generator)
    nodes, limit = chain_nodes(result)  # [B, k], [B]
    at = nodes.clamp(min=0)
    path_slots = (result.path + 1).clamp(min=0)  # [B, D] each accepted node's slot (0 beyond the path)
    zero = nodes.new_zeros(batch, 1)
    judged_at = torch.cat([zero, path_slots, zero], 1)  # [B, k+1] the slot each chain token was judged after
    kept = torch.zeros(batch, n + 1, dtype=torch.bool, device=tokens.device)
    kept[:, 0] = True
    kept.scatter_(1, path_slots, (result.path >= 0) | kept.gather(1, path_slots))
    if tgt.hidden is not None:  # a feature head reads the target's features along the accepted text
        tgt.hidden = tgt.hidden.gather(1, judged_at[..., None].expand(-1, -1, tgt.hidden.shape[-1]))
    tgt.keep_tree(kept)
    rows_ = torch.arange(batch, device=tokens.device)[:, None]
    chain = _Proposal(tokens.gather(1, at), proposal.q[rows_, at], proposal.logits[rows_, at], proposal.vocab_ids,
                      limit, proposal.source)
    accept = torch.arange(nodes.shape[1], device=tokens.device)[None, :] < result.n_acc[:, None]
    verdict = _Verdict(accept, result.n_acc, result.next_token, p[rows_, judged_at])
    return chain, verdict, p_logits[rows_, judged_at]


def _verify(tgt: RaggedKV, rows: _Rows, proposal: _Proposal) -> torch.Tensor:
    """The target scores its unconsumed token and every draft in one pass: logits of p_1..p_{gamma+1}."""
    ids = torch.cat([rows.last_target[:, None], proposal.tokens], 1)  # [B, gamma+1]
    return tgt.forward(ids, torch.ones_like(ids, dtype=torch.bool))  # [B, gamma+1, V]


def _accept(rule, sampling: SamplingConfig, proposal: _Proposal, p_logits: torch.Tensor, generator) -> _Verdict:
    """The rule keeps a prefix of each row's drafts; sample the correction at the first rejection, or the bonus
    token from p after the row's last draft when every one it proposed was kept."""
    batch, gamma = proposal.tokens.shape
    p = sampling.probs(p_logits)  # [B, gamma+1, V]
    vocab = p.shape[-1]
    u = torch.rand(batch, gamma, device=p.device, generator=generator)
    accept, residual = rule(proposal.tokens.reshape(-1), p[:, :gamma].reshape(-1, vocab),
                            proposal.q.reshape(-1, vocab), u.reshape(-1))
    accept, residual = accept.view(batch, gamma), residual.view(batch, gamma, vocab)
    accept = accept & (torch.arange(gamma, device=p.device)[None, :] < proposal.limit[:, None])  # proposed only
    n_acc = accept.long().cumprod(1).sum(1)  # [B]
    rows = torch.arange(batch, device=p.device)
    first_rejected = residual[rows, n_acc.clamp(max=gamma - 1)] if gamma else p[:, 0]  # [B, V]
    next_dist = torch.where((n_acc == proposal.limit)[:, None], p[rows, n_acc], first_rejected)
    return _Verdict(accept, n_acc, sample(next_dist, generator), p)


def _emit(rows: _Rows, proposal: _Proposal, verdict: _Verdict, *, gamma: int, bonus: bool, eos: set[int],
          max_new_tokens: int) -> tuple[list[int], list[bool]]:
    """Append each row's accepted drafts and its correction / bonus token; a row finishes at EOS or length.
    Returns the tokens emitted per row and which rows finished."""
    drafted, next_tokens, n_acc = proposal.tokens.tolist(), verdict.next_token.tolist(), verdict.n_acc.tolist()
    emitted, finished = [], []
    for b, row in enumerate(rows.index.tolist()):
        out, before, done = rows.outputs[row], len(rows.outputs[row]), False
        tail = [] if (n_acc[b] == gamma and not bonus) else [next_tokens[b]]
        for token in drafted[b][: n_acc[b]] + tail:
            out.append(token)
            if token in eos or len(out) >= max_new_tokens:
                done = True
                break
        emitted.append(len(out) - before)
        finished.append(done)
    return emitted, finished


def _advance(tgt: RaggedKV, drafter, rows: _Rows, proposal: _Proposal, verdict: _Verdict, finished, *,
             gamma: int, bonus: bool, pad: int, compact_fraction: float, tree: bool = False) -> None:
    """Bring the target's cache and the drafter's state in line with the accepted prefix, set what the target
    consumes next, drop finished rows and compact the caches when that pays. (After a tree the target's cache
    already holds just the accepted path: _verify_tree.)"""
    n_acc, full = verdict.n_acc, verdict.n_acc == gamma
    held = full & (not bonus)  # a full block without a bonus ends on d_gamma, which the target has not consumed
    if not tree:
        tgt.drop_tail(gamma + 1, 1 + n_acc - held.long())  # keeps the consumed token + the accepted drafts
    if bool(held.any()):  # (never with bonus; a block of 0 drafts has no d_gamma)
        rows.last_target = torch.where(held, proposal.tokens[:, -1], verdict.next_token)
    else:
        rows.last_target = verdict.next_token
    drafter.advance(tgt, rows, proposal, verdict, gamma=gamma, bonus=bonus, pad=pad)
    keep = torch.tensor([not f for f in finished], device=n_acc.device)
    if not bool(keep.all()):
        idx = keep.nonzero().squeeze(1)
        rows.keep(idx)
        if rows.index.numel() > 0:
            tgt.select_rows(idx)
            drafter.select_rows(idx)
    if rows.index.numel() > 0:
        tgt.compact(compact_fraction)
        drafter.compact(compact_fraction)


def _accepted_text(proposal: _Proposal, verdict: _Verdict, bonus: bool, pad: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The text a verification accepted, per row: its accepted drafts, then the correction or bonus token (none after
    a full block without a bonus): tokens [B, k+1] (pad beyond) and their count [B]."""
    n_acc, block = verdict.n_acc, proposal.tokens.shape[1]
    count = n_acc + 1 - ((n_acc == block) & (not bonus)).long()  # [B]
    slots = torch.arange(block + 1, device=n_acc.device)[None, :]  # [1, k+1]
    tokens = torch.cat([proposal.tokens, proposal.tokens.new_full((len(n_acc), 1), pad)], 1)  # [B, k+1]
    return torch.where(slots == n_acc[:, None], verdict.next_token[:, None], tokens), count


def _catch_up(rows: _Rows, text: torch.Tensor, count: torch.Tensor, *, start: torch.Tensor, consumed: bool,
              features: torch.Tensor | None = None) -> None:
    """A cached draft's pending slots := text[start:count] per row (with the features paired with it), behind the
    pending slots it has not consumed (consumed=False), right-aligned, no all-hole column."""
    slots = torch.arange(text.shape[1], device=text.device)[None, :]
    ids, valid = text, (slots >= start[:, None]) & (slots < count[:, None])  # [B, k+1]
    feats = None if features is None else features[:, : text.shape[1]]
    if not consumed:
        ids, valid = torch.cat([rows.pending, ids], 1), torch.cat([rows.pending_valid, valid], 1)
        feats = None if feats is None else torch.cat([rows.pending_features, feats], 1)
    order = torch.argsort(valid.long(), dim=1, stable=True)[:, -int(valid.sum(1).max()):]  # holes first, then real
    rows.pending, rows.pending_valid = ids.gather(1, order), valid.gather(1, order)
    if feats is not None:
        rows.pending_features = feats.gather(1, order[..., None].expand(-1, -1, feats.shape[-1]))


class _CachedDrafter:
    """What the drafters with a KV cache (`kv`) share: they propose autoregressively through it (or a static draft
    tree, `tree`), finished rows leave it, and it is compacted with the target's."""

    kv: RaggedKV
    ragged = False  # proposes the whole block in every row unless draft_confidence stops a row early
    tree: TreeShape | None = None  # set by speculative_generate(draft_tree=...)
    fed_tree = False  # the last proposal's slots in the cache are a tree's: none of them stays

    @property
    def proposes_trees(self) -> bool:
        return self.tree is not None

    def propose(self, rows: _Rows, gamma: int, sampling: SamplingConfig, generator, width: int,
                confidence: float | None) -> _Proposal:
        self.fed_tree = self.tree is not None
        if self.fed_tree:
            proposal, self.fed = _propose_tree(self.kv, rows, self.tree, width)
            return proposal
        proposal = _propose(self.kv, rows, gamma, sampling, generator, width, confidence)
        self.fed = proposal.tokens.shape[1] - 1  # d_1..d_{k-1} went through the cache one at a time; d_k did not
        return proposal

    def select_rows(self, idx: torch.Tensor) -> None:
        self.kv.select_rows(idx)

    def compact(self, fraction: float) -> None:
        self.kv.compact(fraction)


class ModelDrafter(_CachedDrafter):
    """A standalone draft's side of the decoder: its own KV cache over the same text as the target's. It consumes
    the one or two tokens accepted since its last block (right-aligned pending slots), then drafts autoregressively."""

    reads_target_features = False

    def __init__(self, draft, width: int, timed: bool):
        self.kv = RaggedKV(draft, width, timed)

    def prefill(self, tgt: RaggedKV, rows: _Rows, prefix_ids: torch.Tensor, prefix_valid: torch.Tensor, prompts,
                pad: int) -> None:
        """Take all but each prompt's last token (the target has just taken them too)."""
        if prefix_ids.shape[1] > 0:
            self.kv.forward(prefix_ids, prefix_valid, prefill=True)

    def advance(self, tgt: RaggedKV, rows: _Rows, proposal: _Proposal, verdict: _Verdict, *, gamma: int,
                bonus: bool, pad: int, drafted: torch.Tensor | None = None, ran: bool = True) -> None:
        """Drop the rejected drafts from the cache and set the pending tokens: the accepted text it has not consumed
        (the next token alone, or after a full block d_gamma and the bonus token). In a hybrid, `drafted` marks the
        rows whose block it proposed (its drafts in the other rows leave the cache) and ran=False a step it sat out
        (its pending tokens wait, the step's text joins them)."""
        fed = self.fed if ran else 0
        keep = verdict.n_acc.clamp(max=fed)  # [B] its accepted drafts already in the cache
        if self.fed_tree and ran:  # a tree's slots: the accepted path goes through the cache again
            keep = torch.zeros_like(keep)
        if drafted is not None:
            keep = torch.where(drafted, keep, 0)
        self.kv.drop_tail(fed, keep)
        _catch_up(rows, *_accepted_text(proposal, verdict, bonus, pad), start=keep, consumed=ran)


class HeadDrafter(_CachedDrafter):
    """A feature head's side of the decoder (eagle.py): its cache holds pairs (token t+1, the target's feature f_t);
    after each verification it takes the accepted tokens beside the target's features from that pass."""

    reads_target_features = True

    def __init__(self, draft, width: int, timed: bool):
        self.kv = RaggedKV(draft, width, timed, features=True)
        self.feature_layers = draft.feature_layers  # what the target hands over: its top state, or fused layers'

    def prefill(self, tgt: RaggedKV, rows: _Rows, prefix_ids: torch.Tensor, prefix_valid: torch.Tensor, prompts,
                pad: int) -> None:
        """Each prompt token t+1 beside the target's feature f_t; the last pair (the prompt's last token, the
        feature before it) stays pending: the first draft comes from it. A one-token prompt has no feature yet:
        zeros stand in (a weaker first guess, never a wrong output)."""
        device = prefix_ids.device
        if prefix_ids.shape[1] == 0:
            features = torch.zeros(len(prompts), 1, self.kv.model.feature_width, device=device,
                                   dtype=self.kv.model.dtype)
        else:
            pairs, _ = left_pad([list(p[1:]) for p in prompts], pad, device)  # token t+1 in the slot of token t
            if prefix_ids.shape[1] > 1:
                self.kv.forward(pairs[:, :-1], prefix_valid[:, :-1], prefill=True, features=tgt.hidden[:, :-1])
            features = tgt.hidden[:, -1:] * prefix_valid[:, -1:, None]  # [B, 1, H]; zeros for a one-token prompt
        rows.pending = rows.last_target[:, None]
        rows.pending_valid = torch.ones_like(rows.last_target[:, None], dtype=torch.bool)
        rows.pending_features = features

    def advance(self, tgt: RaggedKV, rows: _Rows, proposal: _Proposal, verdict: _Verdict, *, gamma: int,
                bonus: bool, pad: int, drafted: torch.Tensor | None = None, ran: bool = True) -> None:
        """The blocks it drafted on its own features leave its cache (drafted: every row's), and it will consume the
        accepted drafts and the next token, each beside the target's feature one position earlier (from the
        verification just run), right-aligned per row; after a step it sat out (ran=False) behind its pending pairs."""
        none_kept = torch.zeros_like(verdict.n_acc)
        self.kv.drop_tail(self.fed if ran else 0, none_kept)
        # tgt.hidden [B, k+1, H]: the target's feature after each input of the verification, paired with the text
        _catch_up(rows, *_accepted_text(proposal, verdict, bonus, pad), start=none_kept, consumed=ran,
                  features=tgt.hidden)


def drafter_for(draft, width: int, timed: bool, eos: set[int] = frozenset()):
    """The draft's side of the decoder: the one a draft without weights brings (`drafter`, e.g. prompt lookup), a
    feature head's (it reads the target's features) or a standalone model's."""
    if hasattr(draft, "drafter"):
        return draft.drafter(width, timed, eos)
    return (HeadDrafter if getattr(draft, "reads_target_features", False) else ModelDrafter)(draft, width, timed)


@torch.inference_mode()
def speculative_generate(
    target,
    draft,
    prompts: list[list[int]],
    *,
    gamma: int = 5,
    max_new_tokens: int = 128,
    sampling: SamplingConfig | str | dict = "greedy",
    acceptance=None,
    eos_token_id: int | list[int] | None = None,
    record: bool = True,
    seed: int = 0,
    target_tokenizer=None,
    draft_tokenizer=None,
    compact_fraction: float = 0.3,
    pad_token_id: int = 0,
    bonus: bool = True,
    timed: bool = False,
    draft_confidence: float | None = None,
    draft_tree=None,
) -> SpecDecResult:
    """Speculative decoding of a ragged batch of token-id prompts; see the module docstring for the design.

    sampling: 'greedy' or temperature/top-p/top-k (applied identically to p and q). acceptance: the rule from
    `acceptance.py`; None is lossless rejection sampling, `RejectionSampling('lin', eps)` and the like are
    DistillSpec's lossy rules, `TopKAcceptance(k)` is SKD's. eos_token_id: default the target's generation_config
    EOS. Pass the tokenizers to check compatibility. bonus=False skips the target's bonus token after a fully
    accepted block (SKD rollouts: every token is then a draft proposal or a target correction). timed=True times
    every model forward (the metrics' cost_ratio_c, forward_s and overhead; NaN otherwise): on a GPU that syncs the
    host with the device twice per forward, so leave it off when the decoding itself is what is measured.
    draft_tree: a static tree of rank paths (draft_tree.py; e.g. {(0,), (1,)}: the draft's first two choices) that
    a standalone draft or a feature head (alone or inside a hybrid) drafts instead of its chain of gamma tokens;
    prompt lookup's tree is its own setting (PromptLookup(tree_nodes=...)). Trees take lossless acceptance only.
    """
    sampling = as_sampling(sampling)
    rule = RejectionSampling() if acceptance is None else acceptance
    require(draft_confidence is None or 0 < draft_confidence < 1,
            f"draft_confidence={draft_confidence} must be in (0, 1) (or None: always draft gamma tokens).")
    require(draft_confidence is None or bonus, "draft_confidence needs bonus=True: a row that stops early ends its "
            "block with a token from the target, as after a fully accepted block.")
    require(isinstance(rule, ACCEPTANCE_RULES), f"acceptance={acceptance!r}: pass None (lossless) or a rule from "
            "distillspec.acceptance, e.g. RejectionSampling('lin', 0.5) or TopKAcceptance(25).")
    if getattr(draft, "reads_target_features", False):
        require(draft.target is target, "This feature head is attached to another model than the target passed: "
                "it drafts from its target's hidden states. Attach it with head.attach(target) or load it with "
                "distillspec.eagle.load_head(path, target).")
    shape = None if draft_tree is None else TreeShape.of(draft_tree)
    width = _validate(prompts, max(gamma, 0 if shape is None else shape.depth), max_new_tokens, target,
                      getattr(draft, "draft", draft), target_tokenizer,
                      draft_tokenizer)  # a hybrid's trained draft, checked as any draft
    eos = _eos_set(eos_token_id, target)
    device = next(target.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    records = SpecDecRecords(enabled=record)
    started = _now(device)

    drafter = drafter_for(draft, width, timed, eos)  # the draft's side of the loop: its cache, proposals, hand-over
    if shape is not None:
        inner = getattr(drafter, "inner", drafter)  # a hybrid's trained draft
        require(hasattr(inner, "tree"), "draft_tree is for a draft with weights (a standalone draft or a feature "
                "head, alone or in a hybrid); prompt lookup merges its candidates with PromptLookup(tree_nodes=...).")
        inner.tree = shape
    if drafter.proposes_trees:
        lossless = isinstance(rule, RejectionSampling) and (rule.lenience is None or rule.eps == 1)
        require(lossless, f"acceptance={acceptance!r} with a draft tree: a tree's candidates are deterministic and "
                "are verified losslessly only (pass acceptance=None), or decode with a chain.")
        require(bonus and draft_confidence is None, "A draft tree needs bonus=True and no draft_confidence: each "
                "step ends with the target's own token, and the tree's shape fixes what is drafted.")
    require(bonus or not drafter.ragged, "This draft proposes nothing in a step where a row's text has no match: "
            "it needs bonus=True, so that the target's token advances the row.")
    tgt = RaggedKV(target, width, timed, features=drafter.reads_target_features,
                   feature_layers=getattr(drafter, "feature_layers", ()))
    rows = _Rows.start(prompts, pad_token_id, device)
    prefix_ids, prefix_valid = left_pad([list(p[:-1]) for p in prompts], pad_token_id, device)
    if prefix_ids.shape[1] > 0:  # all but each prompt's last token, which comes with step 0
        tgt.forward(prefix_ids, prefix_valid, prefill=True)
    drafter.prefill(tgt, rows, prefix_ids, prefix_valid, prompts, pad_token_id)
    step = 0
    while rows.index.numel() > 0:
        proposal = drafter.propose(rows, gamma, sampling, generator, width, draft_confidence)
        proposed = proposal.limit  # [B] drafts (a tree's nodes) the target verifies for each row
        tree = proposal.parents is not None
        if tree:  # the walk through the tree, as a chain
            proposal, verdict, p_logits = _verify_tree(tgt, rows, proposal, sampling, generator)
        else:
            p_logits = _verify(tgt, rows, proposal)
            verdict = _accept(rule, sampling, proposal, p_logits, generator)
        block = proposal.tokens.shape[1]  # gamma, or fewer where every row's draft stopped early
        if record:  # every verified position: the accepted drafts and the first rejected one
            slots = torch.arange(block, device=device)[None, :]
            verified = (slots <= verdict.n_acc[:, None]) & (slots < proposal.limit[:, None])  # [B, block]
            records.add_tokens(rows=rows.index, step=step, verified=verified, drafted=proposal.tokens,
                               accepted=verdict.accept & verified, p=verdict.p[:, :block], q=proposal.q,
                               p_t1=torch.softmax(p_logits[:, :block], -1), q_t1=proposal.q_t1(width))
        emitted, finished = _emit(rows, proposal, verdict, gamma=block, bonus=bonus, eos=eos,
                                  max_new_tokens=max_new_tokens)
        records.add_steps(rows=rows.index, step=step, gamma=proposed, n_acc=verdict.n_acc, emitted=emitted,
                          source=proposal.source)
        _advance(tgt, drafter, rows, proposal, verdict, finished, gamma=block, bonus=bonus, pad=pad_token_id,
                 compact_fraction=compact_fraction, tree=tree)
        step += 1

    metrics = compute_metrics(records=records, sequences=rows.outputs, gamma=gamma, wall_s=_now(device) - started,
                              target_kv=tgt, draft_kv=drafter.kv, steps=step)
    return SpecDecResult(sequences=rows.outputs, records=records, metrics=metrics, gamma=gamma)


__all__ = ["HeadDrafter", "ModelDrafter", "RaggedKV", "SpecDecResult", "drafter_for",
           "speculative_generate"]

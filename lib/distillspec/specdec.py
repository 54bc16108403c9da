"""Batched speculative decoding with KV caches, ragged acceptance and per-token records.

Design (one cache per model, stock transformers DynamicCache):
- All rows of a model's cache share one length L. A 2-D attention mask [B, L] marks real tokens; rejected draft
  slots and left padding stay in the cache as holes (mask 0). position_ids count each row's real tokens only, so
  a hole never shifts positions. Nothing is ever recomputed: every forward after the prefill feeds at most
  gamma + 1 new slots per row.
- The target always has exactly one unconsumed token per row (the last emitted one); the draft has one or two
  (two after a fully accepted block: the last draft token and the bonus token), fed right-aligned.
- When compaction would shorten a cache by more than `compact_fraction`, it is compacted by a per-row gather; finished rows (EOS or
  length) leave the batch via batch_select_indices.
- The acceptance rule is pluggable (`acceptance.py`): lossless rejection sampling, DistillSpec's lossy variants,
  or SKD's top-k rule. Greedy decoding is rejection sampling over one-hot distributions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import DynamicCache

from .acceptance import make_rule
from .atomic import write_json
from .errors import require
from .metrics import SpecDecMetrics, compute_metrics
from .models import check_compatible, model_context_length
from .records import SpecDecRecords
from .sampling import SamplingConfig, as_sampling, sample


@dataclass
class RaggedKV:
    """One model's KV cache over a ragged batch, with its hole mask, per-row real-token counts and timings."""

    model: torch.nn.Module
    width: int  # logits columns to keep (shared vocabulary)
    cache: DynamicCache = None
    mask: torch.Tensor = None  # [B, L] long, 1 = real token
    n_real: torch.Tensor = None  # [B] long
    forward_s: list = field(default_factory=list)  # wall seconds of each decode forward (prefill excluded)
    max_new_per_row: int = 0  # most slots fed to one row by one decode forward
    prefill_s: float = 0.0

    def forward(self, ids: torch.Tensor, valid: torch.Tensor, prefill: bool = False) -> torch.Tensor:
        """Feed ids [B, k] (valid [B, k] bool marks real slots); return float logits [B, k, width]."""
        valid = valid.long()
        if self.cache is None:
            self.cache = DynamicCache(config=self.model.config)
            self.mask = valid.new_zeros(ids.shape[0], 0)
            self.n_real = valid.new_zeros(ids.shape[0])
        mask = torch.cat([self.mask, valid], dim=1)
        positions = (self.n_real[:, None] + valid.cumsum(1) - 1).clamp_min(0)
        start = _now(ids.device)
        logits = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=self.cache, use_cache=True,
            logits_to_keep=1 if prefill else 0,  # the prefill's logits are never used: skip the vocab projection
        ).logits
        elapsed = _now(ids.device) - start
        if prefill:
            self.prefill_s += elapsed
        else:
            self.forward_s.append(elapsed)
            self.max_new_per_row = max(self.max_new_per_row, int(valid.sum(1).max()))
        self.mask, self.n_real = mask, self.n_real + valid.sum(1)
        return logits[..., : self.width].float()

    def drop_tail(self, k: int, keep: torch.Tensor) -> None:
        """Turn the last k slots into holes beyond each row's first keep[b] of them (rejected drafts)."""
        if k == 0:
            return
        kept = (torch.arange(k, device=keep.device)[None, :] < keep[:, None]).long()  # [B, k]
        self.n_real -= self.mask[:, -k:].sum(1) - kept.sum(1)
        self.mask[:, -k:] = kept

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
        width = check_compatible(target_tokenizer, draft_tokenizer, target, draft)
    else:
        vt, vd = target.config.vocab_size, draft.config.vocab_size
        require(
            vt == vd,
            f"Target vocabulary size {vt} differs from the draft's {vd}: the models cannot share token ids. "
            "Pass target_tokenizer/draft_tokenizer to allow padding-only differences.",
        )
        width = vt
    for who, model in (("target", target), ("draft", draft)):
        context = model_context_length(model)
        for i, prompt in enumerate(prompts):
            need = len(prompt) + max_new_tokens + gamma + 1
            require(
                need <= context,
                f"Prompt {i} has {len(prompt)} tokens; with max_new_tokens={max_new_tokens} and gamma={gamma} it "
                f"needs {need} positions, more than the {who}'s context of {context}. Shorten or drop it.",
            )
    return width


def _left_pad(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
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


@torch.inference_mode()
def speculative_generate(
    target,
    draft,
    prompts: list[list[int]],
    *,
    gamma: int = 5,
    max_new_tokens: int = 128,
    sampling: SamplingConfig | str | dict = "greedy",
    lenience: str | tuple | None = None,
    eps: float = 1.0,
    acceptance=None,
    eos_token_id: int | list[int] | None = None,
    record: bool = True,
    seed: int = 0,
    target_tokenizer=None,
    draft_tokenizer=None,
    compact_fraction: float = 0.3,
    pad_token_id: int = 0,
    bonus: bool = True,
) -> SpecDecResult:
    """Speculative decoding of a ragged batch of token-id prompts; see the module docstring for the design.

    sampling: 'greedy' or temperature/top-p/top-k (applied identically to p and q). lenience/eps: DistillSpec's
    lossy acceptance (None = lossless). acceptance: any rule from `acceptance.py` (overrides lenience).
    eos_token_id: default the target's generation_config EOS. Pass the tokenizers to check compatibility.
    bonus=False skips the target's bonus token after a fully accepted block (SKD rollouts: every token is then a
    draft proposal or a target correction).
    """
    sampling = as_sampling(sampling)
    rule = acceptance if acceptance is not None else make_rule(lenience, eps)
    width = _validate(prompts, gamma, max_new_tokens, target, draft, target_tokenizer, draft_tokenizer)
    eos = _eos_set(eos_token_id, target)
    device = next(target.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    records = SpecDecRecords(enabled=record)
    started = _now(device)

    tgt, drf = RaggedKV(target, width), RaggedKV(draft, width)
    prefix_ids, prefix_valid = _left_pad([list(p[:-1]) for p in prompts], pad_token_id, device)
    if prefix_ids.shape[1] > 0:  # all but each prompt's last token; that one is fed with the first step
        tgt.forward(prefix_ids, prefix_valid, prefill=True)
        drf.forward(prefix_ids, prefix_valid, prefill=True)

    n_rows = len(prompts)
    rows = torch.arange(n_rows, device=device)  # original prompt index of each active batch row
    last_tgt = torch.tensor([p[-1] for p in prompts], device=device)  # [B] token the target has not consumed
    pend_ids = torch.stack([torch.full_like(last_tgt, pad_token_id), last_tgt], 1)  # [B, 2] draft's unconsumed
    pend_valid = torch.tensor([[False, True]], device=device).expand(n_rows, 2).clone()
    outputs: list[list[int]] = [[] for _ in range(n_rows)]
    step = 0
    arange_g = torch.arange(gamma, device=device)

    while rows.numel() > 0:
        batch = rows.numel()
        # 1. Draft proposes gamma tokens autoregressively.
        draft_tokens, draft_logits, draft_probs = [], [], []
        ids, valid = pend_ids, pend_valid
        for _ in range(gamma):
            logits = drf.forward(ids, valid)[:, -1]  # [B, V]
            probs = sampling.probs(logits)  # [B, V]
            token = sample(probs, generator)  # [B]
            draft_tokens.append(token)
            draft_logits.append(logits)
            draft_probs.append(probs)
            ids, valid = token[:, None], torch.ones(batch, 1, dtype=torch.bool, device=device)
        drafted = torch.stack(draft_tokens, 1)  # [B, gamma]
        q = torch.stack(draft_probs, 1)  # [B, gamma, V]

        # 2. Target scores the unconsumed token and all drafts in one pass: p_1..p_{gamma+1}.
        t_ids = torch.cat([last_tgt[:, None], drafted], 1)  # [B, gamma+1]
        p_logits = tgt.forward(t_ids, torch.ones_like(t_ids, dtype=torch.bool))  # [B, gamma+1, V]

        # 3. Accept a prefix, then sample the correction (first rejection) or bonus token.
        p = sampling.probs(p_logits)  # [B, gamma+1, V]
        u = torch.rand(batch, gamma, device=device, generator=generator)
        vocab = p.shape[-1]
        accept, residual = rule(
            drafted.reshape(-1), p[:, :gamma].reshape(-1, vocab), q.reshape(-1, vocab), u.reshape(-1)
        )
        accept, residual = accept.view(batch, gamma), residual.view(batch, gamma, vocab)
        n_acc = accept.long().cumprod(1).sum(1)  # [B] accepted prefix length
        full = n_acc == gamma
        at = n_acc.clamp(max=gamma - 1)
        next_dist = torch.where(
            full[:, None], p[:, gamma], residual[torch.arange(batch, device=device), at]
        )  # [B, V]
        next_token = sample(next_dist, generator)  # [B]

        # 4. Records of every verified position (accepted ones + the first rejected one).
        if record:
            verified = arange_g[None, :] <= n_acc[:, None]  # [B, gamma]
            verified &= arange_g[None, :] < gamma
            p_t1 = torch.softmax(p_logits[:, :gamma], -1)
            records.add_tokens(
                rows=rows, step=step, verified=verified, drafted=drafted, accepted=accept & verified,
                p=p[:, :gamma], q=q, p_t1=p_t1, q_t1=torch.softmax(torch.stack(draft_logits, 1), -1),
            )

        # 5. Emit accepted drafts + the correction/bonus token per row; stop rows at EOS or length.
        drafted_list, next_list, n_list = drafted.tolist(), next_token.tolist(), n_acc.tolist()
        finished, emitted_counts = [], []
        for b, row in enumerate(rows.tolist()):
            out, before = outputs[row], len(outputs[row])
            done = False
            tail = [] if (n_list[b] == gamma and not bonus) else [next_list[b]]
            for tok in drafted_list[b][: n_list[b]] + tail:
                out.append(tok)
                if tok in eos or len(out) >= max_new_tokens:
                    done = True
                    break
            emitted_counts.append(len(out) - before)
            finished.append(done)
        records.add_steps(rows=rows, step=step, gamma=gamma, n_acc=n_acc, emitted=emitted_counts)

        # 6. Bring both caches in line with the accepted prefix.
        drf.drop_tail(gamma - 1, n_acc.clamp(max=gamma - 1))  # drafts d_1..d_{gamma-1} fed one at a time
        if bonus:
            tgt.drop_tail(gamma + 1, 1 + n_acc)  # keeps the consumed token + accepted drafts
            last_tgt = next_token
            pend_ids = torch.stack([torch.where(full, drafted[:, -1], pad_token_id), next_token], 1)
            pend_valid = torch.stack([full, torch.ones_like(full)], 1)
        else:  # a full block ends on d_gamma, which neither model has consumed as context yet
            tgt.drop_tail(gamma + 1, 1 + n_acc - full.long())
            last_tgt = torch.where(full, drafted[:, -1], next_token)
            pend_ids = torch.stack([torch.full_like(last_tgt, pad_token_id), last_tgt], 1)
            pend_valid = torch.tensor([[False, True]], device=device).expand(batch, 2).clone()

        keep = torch.tensor([not f for f in finished], device=device)
        if not bool(keep.all()):
            idx = keep.nonzero().squeeze(1)
            rows, last_tgt, pend_ids, pend_valid = rows[idx], last_tgt[idx], pend_ids[idx], pend_valid[idx]
            if rows.numel() > 0:
                tgt.select_rows(idx)
                drf.select_rows(idx)
        if rows.numel() > 0:
            tgt.compact(compact_fraction)
            drf.compact(compact_fraction)
        step += 1

    wall = _now(device) - started
    metrics = compute_metrics(
        records=records, sequences=outputs, gamma=gamma, wall_s=wall, target_kv=tgt, draft_kv=drf, steps=step
    )
    return SpecDecResult(sequences=outputs, records=records, metrics=metrics, gamma=gamma)


__all__ = ["RaggedKV", "SpecDecResult", "speculative_generate"]

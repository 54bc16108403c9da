"""Decoding speed on this machine: a measured cost model of one SD step, the draft length it recommends, and timings
of SD against target-only `generate` on the same prompts.

Leviathan et al. assume verifying gamma + 1 tokens costs one decoding step; on a CPU it need not (in fp32 a 5-token
forward of SmolLM2-135M costs 1.3 steps, a 3-token one 2.0: small-matrix GEMM kernels; in bf16 1.0-1.1), so the
prediction here uses the measured cost of each verification size, and, when sampling, what turning logits into
tokens costs each side (transformers' `generate` sorts the whole vocabulary for top-p at every token, 3.3 ms here
against a 25 ms forward; the decoder finds the nucleus among the top candidates once per step, 0.2-0.9 ms):

    speedup(alpha, gamma) = E[tokens per step] * (T_target(1) + S_generate)
                            / (gamma * (T_draft(1) + S_draft) + T_target(gamma + 1) + S_verify(gamma + 1))
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from transformers import DynamicCache, LogitsProcessorList

from .errors import require
from .evaluate import sample_completions
from .forward import position_ids
from .lookup import SOURCES
from .metrics import expected_tokens_per_step
from .records import SOURCE_COLUMN
from .runtime import BUSY_SHARE, OtherLoad
from .sampling import SamplingConfig, sample
from .specdec import speculative_generate

MAX_GAMMA = 16  # longest draft block the cost model measures (a verification of 17 tokens)


def median_seconds_each(fns: dict, reps: int) -> dict:
    """Median seconds of each callable, timed in rounds that run every one once (in a rotating order), so a slow
    spell of the machine lands on all of them alike instead of on whichever was being timed at the moment."""
    for fn in fns.values():
        fn()  # warm-up
    keys = list(fns)
    times = {key: [] for key in keys}
    for rep in range(reps):
        shift = rep % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            fns[key]()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(seconds) for key, seconds in times.items()}


def median_seconds(fn, reps: int) -> float:
    return median_seconds_each({0: fn}, reps)[0]


def forward_steps(model, *, batch_size: int, context: int, new_tokens: list[int], body_only: bool = False,
                  left_pad: list[int] | None = None) -> dict:
    """One callable per entry of `new_tokens`: a forward feeding that many tokens per row after a KV cache of
    `context` tokens per row; each returns its output. They share one cache, cropped back after each call, so every
    call sees the same state. body_only: skip the LM head. left_pad: per row, how many of its `context` slots are
    padding (masked, positions counting real tokens only), as in the ragged batch that `generate` and SD decode;
    None keeps every slot real, an all-ones mask, which transformers drops for a one-token query, so attention can
    take another path (benchmarks/mask_path_costs.py). Call them under torch.inference_mode()."""
    device = next(model.parameters()).device
    ids = torch.randint(100, 1000, (batch_size, context + max(new_tokens)), device=device)
    real = torch.ones(batch_size, context, dtype=torch.long, device=device)  # [B, context] 1 = real slot
    if left_pad is not None:
        require(len(left_pad) == batch_size and all(0 <= n < context for n in left_pad),
                f"left_pad={left_pad}: give one count per row ({batch_size}), each in [0, {context}).")
        real = (torch.arange(context, device=device)[None] >= torch.tensor(left_pad, device=device)[:, None]).long()
    cache = DynamicCache(config=model.config)
    if getattr(model, "reads_target_features", False):  # a feature head reads a feature beside each token: any
        # vector of the right width times it
        features = torch.randn(batch_size, context + max(new_tokens), model.config.hidden_size, device=device,
                               dtype=model.dtype)
        net = lambda input_ids, **kw: model(input_ids, features[:, -input_ids.shape[1]:], **kw)  # noqa: E731
    else:
        net = model.model if body_only else model
    net(input_ids=ids[:, :context], attention_mask=real, position_ids=position_ids(real),
        past_key_values=cache, use_cache=True, **({} if body_only else {"logits_to_keep": 1}))

    def step_of(k: int):
        mask = torch.cat([real, real.new_ones(batch_size, k)], 1)
        positions = real.sum(1, keepdim=True) + torch.arange(k, device=device)[None]  # [B, k]

        def step():
            out = net(input_ids=ids[:, context : context + k], attention_mask=mask, position_ids=positions,
                      past_key_values=cache, use_cache=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            cache.crop(-k)
            return out

        return step

    return {k: step_of(k) for k in new_tokens}


@torch.inference_mode()
def forward_seconds(model, *, batch_size: int, context: int, new_tokens: int, reps: int = 10,
                    body_only: bool = False) -> float:
    """Median seconds of one forward feeding `new_tokens` per row after a KV cache of `context` tokens per row."""
    steps = forward_steps(model, batch_size=batch_size, context=context, new_tokens=[new_tokens],
                          body_only=body_only)
    return median_seconds(steps[new_tokens], reps)


@dataclass(frozen=True)
class BlockAcceptance:
    """What a pilot decoding measured of a draft whose blocks vary in length: the acceptance at each depth given
    that the depths before it were accepted, and the share of row-steps that could propose each block length (for
    prompt lookup, the match's length up to the pilot's block; 0: no match). The cost model's input for such drafts
    in place of one alpha."""

    accept: tuple[float, ...]  # [depth 1, 2, ...] P(accepted | proposed, every earlier draft accepted)
    offered: dict[int, float]  # block length on offer -> share of row-steps

    @classmethod
    def from_steps(cls, proposed, accepted) -> BlockAcceptance:
        """From per-row-step counts (a pilot's step records: drafts proposed and accepted)."""
        proposed, accepted = np.asarray(proposed), np.asarray(accepted)
        require(len(proposed) > 0, "The pilot decoded no steps: it measured nothing.")
        depth = int(proposed.max(initial=0))
        reached = [((proposed >= j) & (accepted >= j - 1)).sum() for j in range(1, depth + 1)]
        accept = tuple(float((accepted >= j).sum() / r) if r else 0.0 for j, r in zip(range(1, depth + 1), reached))
        lengths, counts = np.unique(proposed, return_counts=True)
        return cls(accept, {int(m): float(c / len(proposed)) for m, c in zip(lengths, counts)})

    def as_dict(self) -> dict:
        return {"accept": list(self.accept), "offered": dict(self.offered)}

    @classmethod
    def from_dict(cls, data: dict) -> BlockAcceptance:
        return cls(tuple(data["accept"]), {int(k): v for k, v in data["offered"].items()})

    def expected_tokens(self, n: int) -> float:
        """Tokens a step that proposes n drafts emits on average: the accepted prefix and one from the target."""
        tokens, reach = 1.0, 1.0
        for a in self.accept[:n]:
            reach *= a
            tokens += reach
        return tokens


@dataclass(frozen=True)
class SourceAcceptance:
    """What a pilot measured of a draft that mixes sources per row and step (a hybrid's records say which proposed
    each block): each source's acceptance per depth and block lengths on offer, and the share of row-steps prompt
    lookup proposed in. The cost model's input for choosing each side's block (StepCosts.best_hybrid_blocks)."""

    lookup: BlockAcceptance
    draft: BlockAcceptance
    lookup_share: float

    @classmethod
    def from_steps(cls, proposed, accepted, copied) -> SourceAcceptance:
        proposed, accepted, copied = (np.asarray(x) for x in (proposed, accepted, copied))

        def side(rows) -> BlockAcceptance:  # a side that never proposed: blocks of 0 (plain steps)
            return BlockAcceptance.from_steps(proposed[rows], accepted[rows]) if rows.any() else BlockAcceptance(
                (), {0: 1.0})

        return cls(side(copied), side(~copied), float(copied.mean()))

    def as_dict(self) -> dict:
        return {"lookup": self.lookup.as_dict(), "draft": self.draft.as_dict(), "lookup_share": self.lookup_share}

    @classmethod
    def from_dict(cls, data: dict) -> SourceAcceptance:
        return cls(BlockAcceptance.from_dict(data["lookup"]), BlockAcceptance.from_dict(data["draft"]),
                   data["lookup_share"])


@dataclass
class StepCosts:
    """Measured seconds of one forward at one batch size and context: the target with k new tokens per row
    (k = 1 is a target-only decoding step, k = gamma + 1 a verification) and the draft with one; and, where a
    sampling was measured (`measure_step_costs(sampling=...)`), the seconds each side spends turning logits into
    tokens (0 where not measured: the forwards alone, as records made before these fields were)."""

    target_s: dict[int, float]
    draft_s: float
    batch_size: int
    context: int
    left_pad: list[int] | None = None  # the ragged batch's padding per row the forwards ran with (None: none)
    sample_s: dict[int, float] = field(default_factory=dict)  # the decoder: distributions and draws of k target
    # positions per row (a verification of k - 1 drafts), per step
    draft_sample_s: float = 0.0  # the decoder: the draft's distribution and draw of one drafted token
    generate_sample_s: float = 0.0  # target-only `generate`: its logits processors and draw, per token

    @property
    def token_s(self) -> float:
        """Seconds per token of target-only decoding: its forward and its sampling."""
        return self.target_s[1] + self.generate_sample_s

    def verify_s(self, k: int) -> float:
        """Seconds of the decoder's target step over k tokens per row: the forward and its sampling."""
        return self.target_s[k] + self.sample_s.get(k, 0.0)

    @property
    def c(self) -> float:
        """Cost ratio: one draft step / one target decoding step."""
        return self.draft_s / self.target_s[1]

    @property
    def max_gamma(self) -> int:
        return max(self.target_s) - 1

    def verify_ratio(self, gamma: int) -> float:
        """A verification of gamma + 1 tokens in target decoding steps (Leviathan et al. assume 1; gamma 0: one step).
        """
        return self.target_s[gamma + 1] / self.target_s[1]

    def speedup(self, alpha: float | BlockAcceptance, gamma: int) -> float:
        """Predicted SD tokens/s over target-only tokens/s (gamma 0: the target alone, 1.0) at per-position
        acceptance alpha, or, for a draft whose blocks are cut short (prompt lookup: as long as the match), at the
        acceptance per depth and the block lengths on offer that a pilot measured (BlockAcceptance)."""
        require(0 <= gamma <= self.max_gamma, f"gamma={gamma}: the cost model measured 1..{self.max_gamma}.")
        if gamma == 0:
            return 1.0
        tokens, seconds = self.per_step(alpha, gamma)
        return tokens * self.token_s / seconds

    def per_step(self, alpha: float | BlockAcceptance, gamma: int, draft_s: float | None = None
                 ) -> tuple[float, float]:
        """(tokens emitted, seconds) of an average step of the decoder at this acceptance and block length, each
        drafted token at draft_s (default: this draft's forward and draw; 0 for prompt lookup's copies); gamma 0: a
        step of one target token."""
        draft_s = self.draft_s + self.draft_sample_s if draft_s is None else draft_s
        if gamma == 0:
            return 1.0, self.verify_s(1)
        if isinstance(alpha, BlockAcceptance):
            tokens = seconds = 0.0
            for offered, share in alpha.offered.items():  # a step that could propose `offered` proposes n
                n = min(gamma, offered)
                tokens += share * alpha.expected_tokens(n)
                seconds += share * (n * draft_s + self.verify_s(n + 1))
            return tokens, seconds
        return expected_tokens_per_step(alpha, gamma), gamma * draft_s + self.verify_s(gamma + 1)

    def hybrid_speedup(self, lookup: BlockAcceptance, draft: float | BlockAcceptance, lookup_share: float,
                       lookup_block: int, draft_block: int) -> float:
        """Predicted speedup of a hybrid whose rows copy (prompt lookup, blocks up to lookup_block, no draft cost) in
        the share lookup_share of steps where their text matches, and use the trained draft (blocks of draft_block;
        0: a target-only step) in the others."""
        require(0 <= min(lookup_block, draft_block) and max(lookup_block, draft_block) <= self.max_gamma,
                f"blocks ({lookup_block}, {draft_block}): the cost model measured 1..{self.max_gamma}.")
        copy_tokens, copy_s = self.per_step(lookup, lookup_block, draft_s=0.0)
        own_tokens, own_s = self.per_step(draft, draft_block)
        tokens = lookup_share * copy_tokens + (1 - lookup_share) * own_tokens
        return tokens * self.token_s / (lookup_share * copy_s + (1 - lookup_share) * own_s)

    def best_hybrid_blocks(self, lookup: BlockAcceptance, draft: float | BlockAcceptance,
                           lookup_share: float) -> tuple[int, int]:
        """The (lookup block, draft block) with the highest predicted hybrid speedup (0: that side does not draft)."""
        blocks = [(k_l, k_d) for k_l in range(self.max_gamma + 1) for k_d in range(self.max_gamma + 1)]
        return max(blocks, key=lambda b: self.hybrid_speedup(lookup, draft, lookup_share, *b))

    def best_gamma(self, alpha: float | BlockAcceptance) -> int:
        """The draft length with the highest predicted speedup at this acceptance; 0 (decode with the target alone)
        when no draft length is predicted to pay."""
        return max(range(0, self.max_gamma + 1), key=lambda g: self.speedup(alpha, g))

    def needed_alpha(self, goal: float) -> tuple[float, int]:
        """Smallest acceptance (0.01 grid) at which some draft length (gamma >= 1) reaches `goal` speedup, with it."""
        for a in range(0, 100):
            gamma = max(range(1, self.max_gamma + 1), key=lambda g: self.speedup(a / 100, g))
            if self.speedup(a / 100, gamma) >= goal:
                return a / 100, gamma
        return float("nan"), 0

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StepCosts:
        return cls(**{**data, "target_s": {int(k): v for k, v in data["target_s"].items()},
                      "sample_s": {int(k): v for k, v in data.get("sample_s", {}).items()}})


def decoding_shape(prompts: list[list[int]], batch_size: int, max_new_tokens: int) -> tuple[int, list[int]]:
    """The KV cache that decoding these prompts batch_size at a time runs its steps on, for the cost model to time:
    (context, left_pad). context: the cache's width half-way through decoding (longest prompt of a batch plus half
    the new tokens); left_pad: per row, the padding of a ragged batch (rows sorted by it). Both are means over the
    batches `time_decoding` splits the prompts into; a single batch of one prompt has no padding at all."""
    require(len(prompts) > 0 and batch_size >= 1, f"Need prompts and batch_size >= 1 (got {len(prompts)} prompts, "
            f"batch_size={batch_size}).")
    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    full = [b for b in batches if len(b) == batch_size] or [(prompts * batch_size)[:batch_size]]
    widths = [max(map(len, b)) for b in full]
    pads = [sorted((w - len(p) for p in b), reverse=True) for w, b in zip(widths, full)]  # [batches][batch_size]
    context = round(sum(widths) / len(widths)) + max_new_tokens // 2
    return context, [min(round(sum(col) / len(col)), context - 1) for col in zip(*pads)]


@torch.inference_mode()
def measure_step_costs(target, draft, *, batch_size: int, context: int, max_gamma: int, reps: int = 10,
                       left_pad: list[int] | None = None, sampling: SamplingConfig | None = None,
                       logits: torch.Tensor | None = None) -> StepCosts:
    """Time the target's forward for 1..max_gamma+1 new tokens per row and the draft's one-token step (its whole
    forward: body and, possibly reduced, LM head; none for prompt lookup) on this machine, interleaved
    (`median_seconds_each`): the ratios between them, which choose gamma, are what must not drift. left_pad: the ragged
    batch's padding per row (`decoding_shape`), so the forwards take the attention path that decoding takes
    (`forward_steps`). sampling: also time what each side does with the logits under it (`sampling_steps`), on
    `logits` [N, V], the target's logits on real text (`text_logits`; how wide a nucleus is decides the cost), or
    None: the forwards' own, on random tokens."""
    require(1 <= max_gamma <= MAX_GAMMA, f"max_gamma={max_gamma} must be in [1, {MAX_GAMMA}].")
    require(batch_size >= 1 and context >= 1, f"batch_size={batch_size} and context={context} must be >= 1.")
    steps = forward_steps(target, batch_size=batch_size, context=context, new_tokens=list(range(1, max_gamma + 2)),
                          left_pad=left_pad)
    model = getattr(draft, "draft", draft)  # a hybrid's trained draft; prompt lookup runs no model (cost 0)
    draft_vocab = 0
    if isinstance(model, torch.nn.Module):
        steps["draft"] = forward_steps(model, batch_size=batch_size, context=context, new_tokens=[1],
                                       left_pad=left_pad)[1]
        draft_vocab = steps["draft"]().logits.shape[-1]
    if sampling is not None:
        logits = steps[max_gamma + 1]().logits[0].float() if logits is None else logits.float()
        steps.update(sampling_steps(sampling, logits, batch_size=batch_size, max_k=max_gamma + 1,
                                    draft_vocab=draft_vocab))
    seconds = median_seconds_each(steps, reps)
    draft_s = seconds.pop("draft", 0.0)
    sampled = sampling_costs(seconds)  # takes the sampling steps' seconds out: the target's forwards remain
    return StepCosts(seconds, draft_s, batch_size, context, None if left_pad is None else list(left_pad), **sampled)


def sampling_costs(seconds: dict) -> dict:
    """The StepCosts fields of sampling from the timed seconds of `sampling_steps`' callables (removed from seconds;
    absent ones cost 0)."""
    return {"generate_sample_s": seconds.pop("generate", 0.0), "draft_sample_s": seconds.pop("draft_draw", 0.0),
            "sample_s": {int(k[len("draw"):]): seconds.pop(k) for k in list(seconds) if str(k).startswith("draw")}}


def sampling_steps(sampling: SamplingConfig, logits: torch.Tensor, *, batch_size: int, max_k: int,
                   draft_vocab: int = 0) -> dict:
    """Callables, each doing once what a step does with logits under this sampling, batch_size rows at a time on
    logits [N, V] (rows taken in turn, so each call sees other distributions): 'generate', target-only `generate`'s
    per token (its logits processors in float32, softmax, multinomial; greedy: argmax); 'draw<k>', the decoder's over
    k target positions per row (SamplingConfig.probs and a draw each); 'draft_draw', its draft's over one position of
    draft_vocab ids (absent when 0: no model drafts)."""
    require(logits.dim() == 2 and len(logits) >= 1, f"logits of shape {tuple(logits.shape)}: give [N, V].")
    processors = LogitsProcessorList(sampling.warpers())
    ids = torch.zeros(batch_size, 1, dtype=torch.long, device=logits.device)
    turn = itertools.count()

    def rows(n: int, width: int | None = None) -> torch.Tensor:  # the next n rows of logits, cycling
        start = next(turn) * n % len(logits)
        picked = logits[(torch.arange(n, device=logits.device) + start) % len(logits)]
        return picked[:, :width] if width else picked

    def generate_draw():
        x = rows(batch_size)
        if sampling.greedy:
            return x.argmax(-1)
        return torch.multinomial(torch.softmax(processors(ids, x), dim=-1), 1)

    def draw(k: int, width: int | None = None):
        return lambda: sample(sampling.probs(rows(batch_size * k, width)))

    steps = {"generate": generate_draw, **{f"draw{k}": draw(k) for k in range(1, max_k + 1)}}
    if draft_vocab:
        steps["draft_draw"] = draw(1, draft_vocab)
    return steps


@torch.inference_mode()
def text_logits(target, prompts: list[list[int]], positions: int = 64) -> torch.Tensor:
    """The target's logits [N, V] (float32) at the last `positions` positions of each prompt: distributions of real
    text for timing what sampling costs (`measure_step_costs`)."""
    require(len(prompts) > 0, "No prompts to take the target's logits from.")
    device = next(target.parameters()).device
    out = [target(input_ids=torch.tensor([p], device=device), logits_to_keep=positions).logits[0].float()
           for p in prompts]
    return torch.cat(out)


def target_decode(target, tokenizer, prompts: list[list[int]], *, sampling: SamplingConfig, max_new_tokens: int,
                  seed: int = 0, generate_kwargs: dict | None = None) -> tuple[float, list[list[int]]]:
    """Target-only `generate` (KV cache) of one batch of prompts: its wall seconds and each row's new tokens, up to
    and with EOS. The one way this project times the target alone (generate_kwargs: transformers' own speed-ups,
    such as its prompt lookup, timed the same way)."""
    began = time.perf_counter()
    (_, out, new), = sample_completions(target, tokenizer, prompts, sampling=sampling, max_new_tokens=max_new_tokens,
                                        batch_size=len(prompts), seed=seed, generate_kwargs=generate_kwargs)
    seconds = time.perf_counter() - began
    width = out.shape[1] - new.shape[1]
    return seconds, [row[: int(n)] for row, n in zip(out[:, width:].tolist(), new.sum(1).tolist())]


def target_tokens_per_s(target, tokenizer, prompts: list[list[int]], *, batch_size: int, max_new_tokens: int,
                        sampling: SamplingConfig, seed: int = 0) -> float:
    """Target-only decoding throughput on prompts in chunks of batch_size (target_decode, seeded per chunk)."""
    seconds = tokens = 0
    for start in range(0, len(prompts), batch_size):
        took, outputs = target_decode(target, tokenizer, prompts[start : start + batch_size], sampling=sampling,
                                      max_new_tokens=max_new_tokens, seed=seed + start)
        seconds, tokens = seconds + took, tokens + sum(map(len, outputs))
    return tokens / seconds


SPEED_COLUMNS = ("sd_tokens", "sd_s", "target_tokens", "target_s")  # timing rows, in speed_ratio's order


def speed_ratio(sd_tokens, sd_s, target_tokens, target_s):
    """The speedup: SD tokens/s over target-only tokens/s."""
    return (sd_tokens / sd_s) / (target_tokens / target_s)


def pilot_acceptance(result) -> float | BlockAcceptance | SourceAcceptance:
    """What a pilot SD run (speculative_generate's result) tells the cost model: one alpha (alpha_pos) for a draft
    that proposed its whole block in every step, the acceptance per depth and the block lengths on offer for one
    whose blocks were cut short (prompt lookup), and those of each source for a draft that mixes them (a hybrid)."""
    steps = result.records.step_arrays()
    if SOURCE_COLUMN in steps:
        return SourceAcceptance.from_steps(steps["proposed"], steps["accepted"],
                                           steps[SOURCE_COLUMN] == SOURCES["lookup"])
    if (steps["proposed"] == result.gamma).all():
        return result.metrics.alpha_pos
    return BlockAcceptance.from_steps(steps["proposed"], steps["accepted"])


def never_slower_gamma(target, draft, tokenizer, costs: StepCosts, alpha: float | BlockAcceptance | None,
                       trial_prompts: list[list[int]], *, sampling: SamplingConfig, batch_size: int,
                       max_new_tokens: int, seed: int = 0, gamma: int | None = None) -> tuple[int, float | None]:
    """The cost model's best draft length for acceptance alpha (or a BlockAcceptance; or `gamma` when chosen
    already), kept only when SD with it beats the target alone timed on trial_prompts at this batch size, else 0
    (decode with the target alone). Returns (gamma, the trial's speedup; None when the cost model chose 0)."""
    gamma = costs.best_gamma(alpha) if gamma is None else gamma
    if gamma == 0:
        return 0, None
    trial = time_decoding(target, draft, tokenizer, trial_prompts, gamma=gamma, sampling=sampling,
                          batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed)
    speedup = float(speed_ratio(*(trial[k].sum() for k in SPEED_COLUMNS)))
    return (gamma if speedup > 1.0 else 0), speedup


def time_decoding(target, draft, tokenizer, prompts: list[list[int]], *, gamma: int, sampling: SamplingConfig,
                  batch_size: int, max_new_tokens: int, seed: int = 0, progress: str | None = None,
                  acceptance=None, generate_kwargs: dict | None = None) -> pd.DataFrame:
    """Wall time of target-only `generate` (KV cache) and of SD (no per-token records) on the same prompts,
    batch_size at a time, alternating which goes first so slow drift of the machine hits both alike. One row per
    batch: seconds and new tokens of each, SD's steps and acceptance counts, (greedy) whether SD's text was identical
    to the target's, and how busy the machine was (`other_load`: other processes' share of the CPU while the batch
    was timed; `busy`: above BUSY_SHARE, so the row's times are not the decoder's alone). gamma 0 (the never-slower
    policy chose not to draft): the decoder is that same target-only call, so it runs once and SD's seconds are its
    seconds, a speedup of exactly 1 rather than the machine's noise between two runs of one call. progress: show a
    bar with this label. acceptance: the decoder's rule (None: lossless; a lenient one for the quality-latency study).
    generate_kwargs: time transformers' own `generate` with these settings (its prompt lookup) in place of SD, draft
    None; its steps and acceptance are not known (NaN)."""
    from tqdm.auto import tqdm

    require(len(prompts) > 0, "No prompts to time decoding on.")
    eos = tokenizer.eos_token_id
    rows = []
    for i, start in enumerate(tqdm(range(0, len(prompts), batch_size), desc=progress, disable=progress is None)):
        chunk = prompts[start : start + batch_size]

        def run_target():
            return target_decode(target, tokenizer, chunk, sampling=sampling, max_new_tokens=max_new_tokens,
                                 seed=seed + start)

        def run_sd() -> tuple[dict, list[list[int]]]:
            if generate_kwargs is not None:  # transformers' own assisted generation: only its time and text
                seconds, out = target_decode(target, tokenizer, chunk, sampling=sampling, max_new_tokens=max_new_tokens,
                                             seed=seed + start, generate_kwargs=generate_kwargs)
                return {"sd_s": seconds, "sd_tokens": sum(map(len, out)), **dict.fromkeys(
                    ("steps", "target_calls", "accepted", "verified", "proposed"), float("nan"))}, out
            m = speculative_generate(target, draft, chunk, gamma=gamma, max_new_tokens=max_new_tokens,
                                     sampling=sampling, eos_token_id=eos, record=False, seed=seed + start,
                                     acceptance=acceptance)
            return {"sd_s": m.metrics.wall_s, "sd_tokens": m.metrics.new_tokens, "steps": m.metrics.steps,
                    "target_calls": m.metrics.target_calls, "accepted": m.metrics.accepted,
                    "verified": m.metrics.verified, "proposed": m.metrics.proposed}, m.sequences

        with OtherLoad() as load:
            if gamma == 0:  # the decoder is the target alone: one call stands for both
                target_s, target_out = run_target()
                sd, sd_out = {"sd_s": target_s, "sd_tokens": sum(map(len, target_out)), "steps": 0,
                              "target_calls": 0, "accepted": 0, "verified": 0, "proposed": 0}, target_out
            elif i % 2 == 0:
                target_s, target_out = run_target()
                sd, sd_out = run_sd()
            else:
                sd, sd_out = run_sd()
                target_s, target_out = run_target()
        rows.append({"batch": i, "prompts": len(chunk), "gamma": gamma, "target_s": target_s,
                     "target_tokens": sum(map(len, target_out)), **sd,
                     "identical": sd_out == target_out if sampling.greedy else None,
                     "other_load": load.share, "busy": load.share is not None and load.share > BUSY_SHARE})
    return pd.DataFrame(rows)


# transformers' prompt lookup settings searched for a study's reference row: prompt_lookup_num_tokens x
# max_matching_ngram_size
LOOKUP_GRID = tuple((k, n) for k in (2, 3, 5, 10) for n in (2, 3))


def best_transformers_lookup(target, tokenizer, prompts: list[list[int]], *, sampling: SamplingConfig,
                             max_new_tokens: int, seed: int = 0, grid=LOOKUP_GRID) -> tuple[tuple[int, int], dict]:
    """The fastest (prompt_lookup_num_tokens, max_matching_ngram_size) of transformers' prompt lookup on these
    prompts (batch 1: its assisted generation takes no larger batch), with each setting's tokens/s."""
    from tqdm.auto import tqdm

    require(len(prompts) > 0, "No prompts to choose transformers' prompt lookup settings on.")
    speed = {}
    for k, n in tqdm(grid, desc="transformers' prompt lookup settings"):
        seconds = tokens = 0
        for i, prompt in enumerate(prompts):
            took, out = target_decode(target, tokenizer, [prompt], sampling=sampling, max_new_tokens=max_new_tokens,
                                      seed=seed + i, generate_kwargs={"prompt_lookup_num_tokens": k,
                                                                      "max_matching_ngram_size": n})
            seconds, tokens = seconds + took, tokens + len(out[0])
        speed[f"{k},{n}"] = tokens / seconds
    best = max(speed, key=speed.get)
    return tuple(int(x) for x in best.split(",")), speed


def busy_note(frame: pd.DataFrame, what: str) -> str | None:
    """A line naming the timing rows of `what` timed on a busy machine (None: all quiet)."""
    busy = frame[frame["busy"]]
    if busy.empty:
        return None
    return (f"{what}: {len(busy)} of {len(frame)} timed batches ran while other processes used more than "
            f"{BUSY_SHARE:.0%} of the CPU (up to {busy['other_load'].max():.0%}); their speedups are not the "
            "decoder's alone. Pause other jobs and time again (python -m distillspec retime).")


__all__ = ["BlockAcceptance", "LOOKUP_GRID", "MAX_GAMMA", "SPEED_COLUMNS", "SourceAcceptance", "StepCosts",
           "best_transformers_lookup", "busy_note", "decoding_shape", "forward_seconds", "forward_steps",
           "measure_step_costs", "never_slower_gamma", "pilot_acceptance", "sampling_costs", "sampling_steps",
           "speed_ratio", "target_decode", "target_tokens_per_s", "text_logits", "time_decoding"]

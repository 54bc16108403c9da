"""Speculative-decoding summary metrics and the Leviathan et al. (2023) predictions."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def expected_tokens_per_step(alpha: float, gamma: int) -> float:
    """Leviathan et al. eq. 1: E[tokens per target call] = (1 - alpha^(gamma+1)) / (1 - alpha)."""
    if alpha >= 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def ideal_speedup(alpha: float, gamma: int, c: float) -> float:
    """Leviathan et al. Thm 3.8: walltime improvement (1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + 1))."""
    return expected_tokens_per_step(alpha, gamma) / (gamma * c + 1.0)


@dataclass
class SpecDecMetrics:
    """Summary of one speculative-decoding run. Per-row counts are summed over rows and steps.

    alpha_tok: accepted draft tokens / proposed draft tokens (gamma per row-step).
    alpha_pos: accepted / verified positions (accepted + the first rejected one per row-step): the empirical
        per-position acceptance, which the reference study's entropy plots call alpha_seq.
    tau (block efficiency): emitted tokens / target calls, a target call being one row's verification step.
    full_block_rate: share of the row-steps that proposed drafts in which all of them were accepted.
    drafted_share: share of row-steps that proposed at least one draft (below 1 for a draft that proposes nothing
        where it has no match, such as prompt lookup, or the hybrid where it chose plain decoding).
    tokens_per_s: emitted tokens / wall seconds of the whole call (prefill included).
    cost_ratio_c: mean wall time of one draft decode forward / one target verify forward (batched calls).
    predicted_tau: Leviathan et al.'s expected tokens per step at alpha = alpha_pos and this gamma.
    ideal_speedup: Leviathan et al.'s walltime improvement at alpha_pos, gamma and c.
    overhead: wall seconds / seconds spent inside model forwards (prefill included); 1.0 = no decoder overhead.
    forward_s, cost_ratio_c, ideal_speedup and overhead need per-forward timings (speculative_generate(timed=True));
    they are NaN without them.
    """

    gamma: int
    rows: int
    new_tokens: int
    steps: int
    target_calls: int
    draft_calls: int
    target_forwards: int
    draft_forwards: int
    proposed: int
    accepted: int
    verified: int
    alpha_tok: float
    alpha_pos: float
    tau: float
    full_block_rate: float
    drafted_share: float
    wall_s: float
    forward_s: float
    tokens_per_s: float
    cost_ratio_c: float
    predicted_tau: float
    ideal_speedup: float
    overhead: float
    max_new_per_forward_target: int
    max_new_per_forward_draft: int

    def as_dict(self) -> dict:
        return asdict(self)


def verified_positions(accepted, proposed):
    """Positions the target verified in a row-step: the accepted drafts and the first rejected one (none after a
    fully accepted block). Works on ints and on numpy / pandas arrays."""
    return np.minimum(accepted + 1, proposed)


@dataclass(frozen=True)
class _NoDraftCache:
    """The draft side's counters for a draft without a model (prompt lookup): no forwards, no cost."""

    timed: bool = True
    forward_s: tuple = ()
    prefill_s: float = 0.0
    forwards: int = 0
    max_new_per_row: int = 0


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def compute_metrics(*, records, sequences, gamma, wall_s, target_kv, draft_kv, steps) -> SpecDecMetrics:
    draft_kv = _NoDraftCache() if draft_kv is None else draft_kv
    s = records.step_arrays()
    row_steps = int(len(s["step"]))
    proposed = int(s["proposed"].sum())
    accepted = int(s["accepted"].sum())
    verified = int(verified_positions(s["accepted"], s["proposed"]).sum())
    emitted = int(s["emitted"].sum())
    alpha_pos = _ratio(accepted, verified)
    timed = target_kv.timed and draft_kv.timed  # per-forward timings were taken (speculative_generate(timed=True))
    t_fw, d_fw = np.array(target_kv.forward_s), np.array(draft_kv.forward_s)
    c = _ratio(d_fw.mean() if d_fw.size else 0.0, t_fw.mean() if t_fw.size else 0.0) if timed else float("nan")
    forward_s = float(t_fw.sum() + d_fw.sum() + target_kv.prefill_s + draft_kv.prefill_s) if timed else float("nan")
    predicted = expected_tokens_per_step(alpha_pos, gamma) if row_steps else float("nan")
    return SpecDecMetrics(
        gamma=gamma,
        rows=len(sequences),
        new_tokens=sum(len(x) for x in sequences),
        steps=steps,
        target_calls=row_steps,
        draft_calls=proposed,
        target_forwards=target_kv.forwards,
        draft_forwards=draft_kv.forwards,
        proposed=proposed,
        accepted=accepted,
        verified=verified,
        alpha_tok=_ratio(accepted, proposed),
        alpha_pos=alpha_pos,
        tau=_ratio(emitted, row_steps),
        full_block_rate=_ratio(int(((s["accepted"] == s["proposed"]) & (s["proposed"] > 0)).sum()),
                               int((s["proposed"] > 0).sum())),
        drafted_share=_ratio(int((s["proposed"] > 0).sum()), row_steps),
        wall_s=wall_s,
        forward_s=forward_s,
        tokens_per_s=_ratio(emitted, wall_s),
        cost_ratio_c=c,
        predicted_tau=predicted,
        ideal_speedup=ideal_speedup(alpha_pos, gamma, c) if row_steps and c == c else float("nan"),
        overhead=_ratio(wall_s, forward_s) if timed else float("nan"),
        max_new_per_forward_target=target_kv.max_new_per_row,
        max_new_per_forward_draft=draft_kv.max_new_per_row,
    )

"""Served acceptance measured while a draft trains: the draft decodes validation prompts against its teacher in the
evaluation's speculative decoding (its gamma, sampling and reduced vocabulary), and the log records alpha_pos.

Why not the training log's expected acceptance: it is measured on the batches being trained, and with GKD's mixing
(`lmbda` < 1) half of them are the draft's own samples. A draft that writes easy, low-entropy text scores high on
it and serves poorly on the target's text; on CNN/DM that ranks drafts backwards (docs/results.md, "Does the
training curve predict served acceptance?"). Decoding against the teacher puts the draft where it serves.

Validation prompts come from the training split after the first `n_train` (the ones training uses), so they are
disjoint from the evaluation's held-out prompts, and from the trained ones where the split has more rows.
"""

from __future__ import annotations

import copy

import torch

from .sampling import SamplingConfig
from .specdec import speculative_generate

VALIDATION_METRIC = "alpha_pos"  # the served acceptance a run with select_checkpoint 'validation' keeps the best of
VALIDATION_SEED = 0  # every validation draws the same random numbers, so checkpoints differ only by their weights


@torch.no_grad()
def served_sums(target, student, prompts: list[list[int]], *, gamma: int, sampling: SamplingConfig,
                max_new_tokens: int, eos_token_id, draft_vocab_ids: list[int] | None = None,
                seed: int = VALIDATION_SEED, batch_size: int = 16) -> torch.Tensor:
    """`student` drafting for `target` on `prompts` (rendered ids): accepted, verified and proposed drafts, the sum
    of the expected acceptance sum(min(p, q)) over the drafted positions and their number (float64 [5], to add up
    over processes; `summary` reads it). With draft_vocab_ids a copy of the student (a standalone model) is cut to
    them, as the evaluation decodes; a feature head is cut by its caller (head_training), in place."""
    draft = student.eval()
    if draft_vocab_ids is not None:
        from .models import reduce_draft_vocab

        draft = reduce_draft_vocab(copy.deepcopy(student).eval(), draft_vocab_ids, eos_token_id)
    sums = torch.zeros(5, dtype=torch.float64)
    for start in range(0, len(prompts), batch_size):
        res = speculative_generate(target, draft, prompts[start : start + batch_size], gamma=gamma,
                                   max_new_tokens=max_new_tokens, sampling=sampling, eos_token_id=eos_token_id,
                                   record=True, seed=seed + start)
        m, expected = res.metrics, res.records.token_arrays()["expected_accept"]
        sums += torch.tensor([m.accepted, m.verified, m.proposed, float(expected.sum()), len(expected)],
                             dtype=torch.float64)
    return sums


def served_acceptance(target, student, prompts: list[list[int]], **settings) -> dict:
    """alpha_pos, alpha_tok and served_expected_accept (the mean sum(min(p, q)) over drafted positions at the
    decoding temperature: a smoother estimate of alpha) of `student` drafting for `target` (served_sums' settings)."""
    return summary(served_sums(target, student, prompts, **settings))


def summary(sums: torch.Tensor) -> dict:
    """alpha_pos, alpha_tok and served_expected_accept from served_acceptance's sums (one process's or added up)."""
    accepted, verified, proposed, expected, positions = sums.tolist()
    return {"alpha_pos": accepted / max(1.0, verified), "alpha_tok": accepted / max(1.0, proposed),
            "served_expected_accept": expected / max(1.0, positions)}


__all__ = ["VALIDATION_METRIC", "VALIDATION_SEED", "served_acceptance", "served_sums", "summary"]

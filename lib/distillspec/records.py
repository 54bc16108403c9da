"""Per-token and per-step records of speculative decoding, as pandas DataFrames and atomically written Parquet."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import write_parquet
from .sampling import entropy

# One row per verified draft position: every accepted one plus the first rejected one of each step.
TOKEN_COLUMNS = {
    "row": "prompt index",
    "step": "decoding step (shared by all rows)",
    "pos": "index of the draft token in its block (0-based)",
    "token": "draft token id",
    "accepted": "whether the target accepted it",
    "p": "target probability of the token, warped (the distribution SD samples from)",
    "q": "draft probability of the token, warped",
    "p_t1": "target probability at temperature 1",
    "q_t1": "draft probability at temperature 1",
    "target_entropy": "H(p) in nats at temperature 1",
    "target_entropy_warped": "H(p) in nats after temperature/top-k/top-p (0 for greedy)",
    "draft_entropy": "H(q) in nats at temperature 1",
    "expected_accept": "1 - TV(p, q) = sum min(p, q), warped: the acceptance probability of this position",
    "expected_accept_t1": "1 - TV(p, q) at temperature 1",
}
STEP_COLUMNS = ("row", "step", "proposed", "accepted", "emitted")
SOURCE_COLUMN = "source"  # a hybrid's steps only: which draft proposed the row's block (lookup.SOURCES)


@dataclass
class SpecDecRecords:
    """Step counts are always kept (metrics need them); token records only when enabled."""

    enabled: bool = True
    _tokens: dict = field(default_factory=lambda: {k: [] for k in TOKEN_COLUMNS})
    _steps: dict = field(default_factory=lambda: {k: [] for k in STEP_COLUMNS})

    def add_tokens(self, *, rows, step, verified, drafted, accepted, p, q, p_t1, q_t1):
        """All tensors are [B, gamma] (or [B, gamma, V] for distributions); only verified positions are kept."""
        if not self.enabled:
            return
        sel = verified
        batch, gamma = verified.shape
        cols = {
            "row": rows[:, None].expand(batch, gamma),
            "step": torch.full_like(drafted, step),
            "pos": torch.arange(gamma, device=drafted.device)[None, :].expand(batch, gamma),
            "token": drafted,
            "accepted": accepted,
            "p": p.gather(-1, drafted[..., None]).squeeze(-1),
            "q": q.gather(-1, drafted[..., None]).squeeze(-1),
            "p_t1": p_t1.gather(-1, drafted[..., None]).squeeze(-1),
            "q_t1": q_t1.gather(-1, drafted[..., None]).squeeze(-1),
            "target_entropy": entropy(p_t1),
            "target_entropy_warped": entropy(p),
            "draft_entropy": entropy(q_t1),
            "expected_accept": torch.minimum(p, q).sum(-1),
            "expected_accept_t1": torch.minimum(p_t1, q_t1).sum(-1),
        }
        for name, values in cols.items():
            self._tokens[name].append(values[sel].cpu())

    def add_steps(self, *, rows, step, gamma, n_acc, emitted, source=None):
        self._steps["row"].append(rows.cpu())
        self._steps["step"].append(torch.full((rows.numel(),), step))
        proposed = gamma.cpu() if torch.is_tensor(gamma) else torch.full((rows.numel(),), gamma)  # [B] per row
        self._steps["proposed"].append(proposed)
        self._steps["accepted"].append(n_acc.cpu())
        self._steps["emitted"].append(torch.tensor(emitted, dtype=torch.long))
        if source is not None:
            self._steps.setdefault(SOURCE_COLUMN, []).append(source.cpu())

    @staticmethod
    def _arrays(store: dict) -> dict[str, np.ndarray]:
        return {k: (torch.cat(v).numpy() if v else np.zeros(0)) for k, v in store.items()}

    def token_arrays(self) -> dict[str, np.ndarray]:
        return self._arrays(self._tokens)

    def step_arrays(self) -> dict[str, np.ndarray]:
        return self._arrays(self._steps)

    def tokens_df(self):
        import pandas as pd

        if not self.enabled:
            raise ValueError("Token records were not kept: run speculative_generate(..., record=True).")
        return pd.DataFrame(self.token_arrays())

    def steps_df(self):
        import pandas as pd

        return pd.DataFrame(self.step_arrays())

    def save(self, directory: str | os.PathLike, prefix: str = "") -> dict[str, Path]:
        """Write tokens.parquet and steps.parquet (optionally prefixed) atomically; return their paths."""
        directory = Path(directory)
        out = {"steps": write_parquet(self.steps_df(), directory / f"{prefix}steps.parquet")}
        if self.enabled:
            out["tokens"] = write_parquet(self.tokens_df(), directory / f"{prefix}tokens.parquet")
        return out

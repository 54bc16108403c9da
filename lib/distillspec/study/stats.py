"""The statistics both results tables use: percentile bootstraps over prompts (and, with seeds, over training seeds),
Wilson intervals, and the per-prompt sums behind alpha_tok, alpha_pos and tau.

Every seed of every recipe is evaluated on the same held-out prompts, so seeds and prompts are crossed factors. The
crossed bootstrap resamples both: each replicate draws the prompts once (shared by every seed and recipe, which keeps
comparisons paired by prompt) and, independently per recipe, its seeds; a recipe's value is the mean over its drawn
seeds of the ratio over the drawn prompts. With one seed it is the plain prompt bootstrap (the same draws).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import require
from ..metrics import verified_positions

Combine = Callable[..., np.ndarray]  # summed arrays, each [B, S] -> per-seed statistic [B, S]


def crossed_bootstrap(statistic, n_seeds: Sequence[int], n_units: int, *, n_boot: int = 2000, level: float = 0.95,
                      seed: int = 0):
    """statistic(units [B, U], seeds: one [B, S_g] index array per group) -> [B] values; returns the estimate (all
    units, all seeds) and its percentile bootstrap CI. Units (prompts) are drawn first, one draw shared by every
    group, then each group's seeds."""
    require(n_units > 0, "bootstrap needs at least one unit (prompt).")
    require(all(s > 0 for s in n_seeds), "bootstrap needs at least one seed per group.")
    rng = np.random.default_rng(seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = float(statistic(np.arange(n_units)[None], [np.arange(s)[None] for s in n_seeds])[0])
        units = rng.integers(0, n_units, size=(n_boot, n_units))
        seeds = [rng.integers(0, s, size=(n_boot, s)) if s > 1 else np.zeros((n_boot, 1), int) for s in n_seeds]
        stats = np.asarray(statistic(units, seeds), dtype=float)
    stats = stats[np.isfinite(stats)]
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(stats, [tail, 100 - tail]) if len(stats) else (float("nan"), float("nan"))
    return estimate, float(lo), float(hi)


def bootstrap(statistic, n_units: int, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """statistic(index) on all units and its percentile bootstrap CI, resampling units (prompts) with replacement;
    statistic takes an index array [n_boot, n] (or [n]) of units and returns one value per row."""
    return crossed_bootstrap(lambda units, _: statistic(units), [], n_units, n_boot=n_boot, level=level, seed=seed)


def ratio_bootstrap(num, den, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """sum(num)/sum(den) with a percentile bootstrap CI, resampling units (prompts) with replacement."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    require(len(num) == len(den) and len(num) > 0, "bootstrap needs one numerator and denominator per unit.")
    return bootstrap(lambda i: num[i].sum(-1) / den[i].sum(-1), len(num), n_boot=n_boot, level=level, seed=seed)


def wilson_interval(successes: np.ndarray, n: np.ndarray, z: float = 1.96):
    """Wilson score interval for binomial proportions (vectorised)."""
    successes, n = np.asarray(successes, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = successes / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def seed_mean(arrays: Sequence[np.ndarray], combine: Combine, units: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Per replicate: each array ([S, U]: seeds x units) summed over the drawn units of each drawn seed, combined
    into a per-seed statistic (e.g. accepted / proposed), averaged over the drawn seeds. -> [B]"""
    sums = [np.asarray(a, float)[seeds[:, :, None], units[:, None, :]].sum(-1) for a in arrays]  # each [B, S]
    return combine(*sums).mean(-1)


def ratio(num, den):
    return num / den


def unit_matrix(frames: Sequence[pd.DataFrame], columns: Sequence[str], unit: str, what: str
                ) -> dict[str, np.ndarray]:
    """Per-unit sums of `columns` for each seed's frame, as [S, U] arrays on a shared unit axis (a prompt's row, or
    a timed batch). The seeds must cover the same units: they were evaluated on the same prompts."""
    sums = [f.groupby(unit)[list(columns)].sum() for f in frames]
    index = sums[0].index
    require(all(s.index.equals(index) for s in sums),
            f"{what}: the seeds were evaluated on different prompts (or batches); a recipe's seeds must share the "
            "study's held-out prompts. Evaluate all of them again with the same config.")
    return {c: np.stack([s[c].to_numpy(float) for s in sums]) for c in columns}


STEP_METRICS = {  # name -> (columns of the per-prompt sums, combine)
    "alpha_tok": (("accepted", "proposed"), ratio),
    "alpha_pos": (("accepted", "verified"), ratio),
    "tau": (("emitted", "calls"), ratio),
}


def prompt_sums(steps: pd.DataFrame) -> pd.DataFrame:
    """Per-step records with the columns the metrics sum: verified positions and target calls."""
    return steps.assign(verified=verified_positions(steps["accepted"], steps["proposed"]), calls=1)


def metric_arrays(steps: dict[str, pd.DataFrame], drafts: list[str], metric: str, what: str) -> list[np.ndarray]:
    """The per-prompt sums a metric divides ([S, U] each: the drafts as seeds, prompts), from per-step records."""
    columns, _ = STEP_METRICS[metric]
    m = unit_matrix([prompt_sums(steps[d]) for d in drafts], columns, "row", what)
    return [m[c] for c in columns]


def group_metric(steps: dict[str, pd.DataFrame], groups: dict[str, list[str]], metric: str, *, n_boot: int = 2000,
                 seed: int = 0) -> pd.DataFrame:
    """One row per group (a recipe's seeds, or one draft): the metric's mean over seeds with its crossed-bootstrap
    95% CI, each seed's value, and the number of prompts."""
    _, combine = STEP_METRICS[metric]
    rows = []
    for group, drafts in groups.items():
        arrays = metric_arrays(steps, drafts, metric, f"recipe '{group}'")
        est, lo, hi = crossed_bootstrap(lambda u, s: seed_mean(arrays, combine, u, s[0]), [len(drafts)],
                                        arrays[0].shape[1], n_boot=n_boot, seed=seed)
        per_seed = combine(*[a.sum(1) for a in arrays])
        rows.append({"group": group, "metric": metric, "mean": est, "lo": lo, "hi": hi, "n_seeds": len(drafts),
                     "per_seed": [float(x) for x in per_seed], "seed_sd": float(np.std(per_seed, ddof=1))
                     if len(drafts) > 1 else float("nan"), "n_prompts": arrays[0].shape[1]})
    return pd.DataFrame(rows)


def format_interval(value: float, lo: float, hi: float, *, scale: float = 1, digits: int = 2, signed: bool = False,
                    unit: str = "") -> str:
    """'value [lo, hi]': how every results table shows an estimate with its CI, all three scaled and rounded alike
    (scale=100 for percent; signed for differences; unit follows the value, e.g. 'x' for a speedup)."""
    spec = f"{'+' if signed else ''}.{digits}f"
    return f"{scale * value:{spec}}{unit} [{scale * lo:{spec}}, {scale * hi:{spec}}]"


__all__ = ["STEP_METRICS", "bootstrap", "crossed_bootstrap", "format_interval", "group_metric",
           "metric_arrays", "prompt_sums", "ratio", "ratio_bootstrap", "seed_mean", "unit_matrix",
           "wilson_interval"]

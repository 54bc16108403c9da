"""Results over training seeds: a recipe (say RKL) trained with several seeds is one row of the headline table, its
mean over seeds with a CI that holds seed-to-seed variance as well as the prompts' (stats.crossed_bootstrap); which
differences between recipes those CIs separate; speed over seeds; where along the entropy axis a recipe differs.
With 3 seeds the seed draw has few distinct outcomes: the CI is coarse, and honest about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from ..errors import require
from .stats import (STEP_METRICS, crossed_bootstrap, format_interval, metric_arrays, ratio, seed_mean, unit_matrix)
from ..speed import SPEED_COLUMNS, speed_ratio


def pairwise_differences(steps: dict[str, pd.DataFrame], groups: dict[str, list[str]], metric: str = "alpha_tok",
                         *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Every pair of groups: difference of the metric's seed means (first minus second; the first is the one with
    the higher mean) with a 95% CI from the crossed bootstrap (prompts shared, seeds drawn per group); `separated`
    when the CI excludes 0."""
    _, combine = STEP_METRICS[metric]
    data = {group: metric_arrays(steps, drafts, metric, f"recipe '{group}'") for group, drafts in groups.items()}
    means = {g: float(np.mean(combine(*[a.sum(1) for a in arrays]))) for g, arrays in data.items()}
    n_units = {a[0].shape[1] for a in data.values()}
    require(len(n_units) == 1, "Every recipe must be evaluated on the same held-out prompts to be compared.")
    rows = []
    for a, b in combinations(groups, 2):
        a, b = (a, b) if means[a] >= means[b] else (b, a)

        def diff(u, s, a=a, b=b):
            return seed_mean(data[a], combine, u, s[0]) - seed_mean(data[b], combine, u, s[1])

        est, lo, hi = crossed_bootstrap(diff, [len(groups[a]), len(groups[b])], next(iter(n_units)), n_boot=n_boot,
                                        seed=seed)
        rows.append({"metric": metric, "higher": a, "lower": b, "difference": est, "lo": lo, "hi": hi,
                     "separated": bool(lo > 0 or hi < 0)})
    return pd.DataFrame(rows)


def format_differences(differences: pd.DataFrame) -> str:
    lines = ["| higher | lower | difference, points [95% CI] | separated |", "|---|---|---|---|"]
    for r in differences.itertuples():
        lines.append(f"| {r.higher} | {r.lower} | {format_interval(r.difference, r.lo, r.hi, scale=100)} | "
                     f"{'yes' if r.separated else 'no'} |")
    return "\n".join(lines) + "\n"


def speed_over_seeds(timing: dict[str, pd.DataFrame], groups: dict[str, list[str]], predicted: pd.DataFrame, *,
                     n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per group and speed setting (metric 'speedup'): the measured speedup's mean over seeds with a crossed-bootstrap
    95% CI (timed batches shared, seeds drawn), each seed's value and gamma, and the cost model's prediction (mean
    over seeds; predicted: tables.speed_summary's rows, one per draft and setting)."""
    rows = []
    cols = SPEED_COLUMNS
    for group, drafts in groups.items():
        have = [d for d in drafts if d in timing]
        if not have:
            continue
        require(len(have) == len(drafts), f"recipe '{group}': timings exist for {have} only; time every seed.")
        for setting in timing[have[0]]["setting"].unique():
            frames = [timing[d][timing[d]["setting"] == setting] for d in have]
            m = unit_matrix(frames, cols, "batch", f"recipe '{group}', {setting}")
            arrays = [m[c] for c in cols]
            est, lo, hi = crossed_bootstrap(lambda u, s: seed_mean(arrays, speed_ratio, u, s[0]), [len(have)],
                                            arrays[0].shape[1], n_boot=n_boot, seed=seed)
            pred = predicted[(predicted["draft"].isin(have)) & (predicted["setting"] == setting)]
            rows.append({"group": group, "metric": "speedup", "setting": setting, "mean": est, "lo": lo, "hi": hi,
                         "n_seeds": len(have), "per_seed": [float(x) for x in speed_ratio(*[a.sum(1) for a in arrays])],
                         "gammas": [int(f["gamma"].iloc[0]) for f in frames],
                         "predicted_speedup": float(pred["predicted_speedup"].mean())})
    return pd.DataFrame(rows)


def format_headline(metrics: pd.DataFrame) -> str:
    """Markdown: per recipe, alpha_tok / alpha_pos / tau (mean over seeds [95% CI], alpha_tok per seed) and, per
    speed setting (metric 'speedup' rows), the measured speedup [95% CI] with the chosen gammas and the cost model's
    prediction."""
    speed = metrics[metrics["metric"] == "speedup"]
    settings = list(dict.fromkeys(speed["setting"]))
    head = ["draft", "seeds", "alpha_tok % [95% CI]", "alpha_tok % per seed", "alpha_pos % [95% CI]", "tau [95% CI]",
            *[f"speedup, {s} [95% CI] (gamma; predicted)" for s in settings]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {(r.group, r.metric): r for r in metrics[metrics["metric"] != "speedup"].itertuples()}
    for group in dict.fromkeys(metrics["group"]):
        tok, pos, tau = by[group, "alpha_tok"], by[group, "alpha_pos"], by[group, "tau"]
        cells = [group, str(tok.n_seeds), format_interval(tok.mean, tok.lo, tok.hi, scale=100),
                 " / ".join(f"{100 * x:.2f}" for x in tok.per_seed),
                 format_interval(pos.mean, pos.lo, pos.hi, scale=100),
                 format_interval(tau.mean, tau.lo, tau.hi, digits=3)]
        for s in settings:
            r = speed[(speed["group"] == group) & (speed["setting"] == s)]
            if r.empty:
                cells.append("n/a")
                continue
            r = r.iloc[0]
            cells.append(f"{format_interval(r['mean'], r['lo'], r['hi'], unit='x')} "
                         f"({'/'.join(map(str, r['gammas']))}; {r['predicted_speedup']:.2f}x)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_wall_times(groups: dict[str, list[str]], logs: dict[str, pd.DataFrame], rows: dict[str, dict]) -> str:
    """Markdown: per recipe, each seed's training time (the trainer's train_runtime; after a resume, the resumed
    part only) and evaluation time (eval_s), in minutes; '-' where there was no training, n/a where a record
    predates the measurement."""
    def trained(draft):
        log = logs.get(draft)
        if log is None:
            return "-"
        runtime = log["train_runtime"].dropna() if "train_runtime" in log else pd.Series(dtype=float)
        return f"{runtime.iloc[-1] / 60:.1f}" if len(runtime) else "n/a"

    def evaluated(draft):
        seconds = rows[draft].get("eval_s")
        return f"{seconds / 60:.1f}" if seconds is not None else "n/a"

    lines = ["| draft | training (02), min | evaluation (03), min |", "|---|---|---|"]
    for group, drafts in groups.items():
        lines.append(f"| {group} | {' / '.join(map(trained, drafts))} | {' / '.join(map(evaluated, drafts))} |")
    return "\n".join(lines) + "\n"


def bins_over_seeds(bins: pd.DataFrame, groups: dict[str, list[str]]) -> pd.DataFrame:
    """Per-draft entropy bins (tables.acceptance_by_entropy, shared edges) pooled per group: tokens, acceptance
    over all seeds, and the seed spread (lowest and highest seed's rate) where every seed has the bin."""
    rows = []
    for group, drafts in groups.items():
        d = bins[bins["draft"].isin(drafts)]
        for b, per in d.groupby("bin"):
            if len(per) < len(drafts):  # a seed with too few tokens here: no honest spread
                continue
            first = per.iloc[0]
            rows.append({"draft": group, "bin": b, "lo": first["lo"], "hi": first["hi"], "center": first["center"],
                         "n": int(per["n"].sum()), "k": int(per["k"].sum()),
                         "accept_rate": per["k"].sum() / per["n"].sum(), "seed_lo": per["accept_rate"].min(),
                         "seed_hi": per["accept_rate"].max(), "n_seeds": len(per),
                         "expected_accept": float((per["expected_accept"] * per["n"]).sum() / per["n"].sum())})
    return pd.DataFrame(rows)


def region_differences(tokens: dict[str, pd.DataFrame], groups: dict[str, list[str]], subject: str,
                       regions: Sequence[tuple[float, float]], *, entropy_col: str = "target_entropy",
                       n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """alpha_pos of `subject` minus each other trained group's, within teacher-entropy regions [lo, hi) (nats at
    T=1), with crossed-bootstrap 95% CIs (prompts shared, seeds per group): where along the entropy axis a recipe
    (e.g. the entropy-adaptive one) gains or loses acceptance."""
    require(subject in groups, f"'{subject}' is not one of this study's drafts ({', '.join(groups)}).")

    def region_arrays(group, lo, hi):
        frames = []
        for d in groups[group]:
            t = tokens[d]
            inside = (t[entropy_col] >= lo) & (t[entropy_col] < hi)
            frames.append(pd.DataFrame({"row": t["row"], "k": t["accepted"] * inside, "n": inside.astype(int)}))
        m = unit_matrix(frames, ("k", "n"), "row", f"recipe '{group}'")
        return [m["k"], m["n"]]

    rows = []
    for lo, hi in regions:
        mine = region_arrays(subject, lo, hi)
        for other in groups:
            if other == subject:
                continue
            theirs = region_arrays(other, lo, hi)

            def diff(u, s, mine=mine, theirs=theirs):
                return seed_mean(mine, ratio, u, s[0]) - seed_mean(theirs, ratio, u, s[1])

            est, c_lo, c_hi = crossed_bootstrap(diff, [len(groups[subject]), len(groups[other])], mine[0].shape[1],
                                                n_boot=n_boot, seed=seed)
            rows.append({"subject": subject, "other": other, "entropy_lo": lo, "entropy_hi": hi,
                         "tokens": int(mine[1].sum()), "difference": est, "lo": c_lo, "hi": c_hi,
                         "separated": bool(c_lo > 0 or c_hi < 0)})
    return pd.DataFrame(rows)


def region_gains(tokens: dict[str, pd.DataFrame], groups: dict[str, list[str]], reference: str,
                 regions: Sequence[tuple[float, float]], **kwargs) -> pd.DataFrame:
    """alpha_pos of each other group minus `reference`'s (e.g. the undistilled draft) within teacher-entropy regions:
    region_differences with the reference as subject, turned round (difference and CI negated; `tokens` stays the
    reference's verified tokens)."""
    d = region_differences(tokens, groups, reference, regions, **kwargs)
    return d.assign(subject=d["other"], other=reference, difference=-d["difference"], lo=-d["hi"], hi=-d["lo"])


def format_region_differences(diffs: pd.DataFrame, rows: str = "other") -> str:
    """A region_differences table, a row per other group (one subject minus each), or with rows="subject" a
    region_gains table, a row per subject (each minus one reference)."""
    regions = list(dict.fromkeys(zip(diffs["entropy_lo"], diffs["entropy_hi"])))
    fixed = "subject" if rows == "other" else "other"
    one = diffs[fixed].iloc[0]
    label = [f"H in [{lo:g}, {hi:g}) nats" if np.isfinite(hi) else f"H >= {lo:g} nats" for lo, hi in regions]
    head = f"{one} minus" if rows == "other" else f"minus {one}"
    lines = [f"| {head} | " + " | ".join(label) + " |", "|---|" + "---|" * len(regions)]
    for other in dict.fromkeys(diffs[rows]):
        cells = []
        for lo, hi in regions:
            r = diffs[(diffs[rows] == other) & (diffs["entropy_lo"] == lo) & (diffs["entropy_hi"] == hi)].iloc[0]
            if not np.isfinite(r["difference"]):
                cells.append("n/a (no verified tokens)")
                continue
            mark = "" if not r["separated"] else (" (higher)" if r["difference"] > 0 else " (lower)")
            cells.append(format_interval(r["difference"], r["lo"], r["hi"], scale=100, signed=True) + mark)
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    tokens = [int(diffs[(diffs["entropy_lo"] == lo) & (diffs["entropy_hi"] == hi)]["tokens"].iloc[0])
              for lo, hi in regions]
    # tokens: the subject's of region_differences, the reference's of region_gains: `one` either way
    lines.append(f"| ({one}'s verified tokens) | " + " | ".join(f"{n:,}" for n in tokens) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["bins_over_seeds", "format_differences", "format_headline", "format_region_differences",
           "format_wall_times", "pairwise_differences", "region_differences", "speed_over_seeds"]

"""The study's tables as DataFrames: Table 1 (SD metrics with bootstrap CIs per draft), the timed speed per draft
and setting with the cost model's prediction, and acceptance per teacher-entropy bin."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import require
from ..lookup import SOURCES
from ..metrics import expected_tokens_per_step, verified_positions
from ..records import SOURCE_COLUMN
from ..speed import SPEED_COLUMNS, BlockAcceptance, SourceAcceptance, StepCosts, speed_ratio
from .stats import STEP_METRICS, bootstrap, group_metric, prompt_sums, wilson_interval


def speed_summary(timing: dict[str, pd.DataFrame], timed: dict[str, list[dict]], seed: int = 0,
                  reference: str | None = None) -> pd.DataFrame:
    """Per draft and speed setting: SD tokens/s over target-only tokens/s on the same prompts (95% bootstrap CI over
    batches, i.e. prompts at batch 1), the cost model's prediction at the run's own acceptance, and how gamma was
    chosen. timing: the evaluation's timing rows per draft; timed: its `timed` entries (gamma, pilot alpha, step costs).
    reference: the timing of this name (transformers' prompt lookup) is also the yardstick of every other draft timed
    on the same prompts at that setting: `vs_reference`, the draft's speedup over the reference's, paired by prompt.
    """
    rows = []
    for draft, frame in timing.items():
        chosen = {t["setting"]: t for t in timed.get(draft, [])}
        for setting, f in frame.groupby("setting", sort=False):
            cols = _speed_columns(f)
            measured, lo, hi = bootstrap(lambda i: _speedup(cols, i), len(f), seed=seed)
            paired = _against(f, timing.get(reference), setting, seed) if draft != reference else (np.nan,) * 3
            alpha = f["accepted"].sum() / f["verified"].sum() if f["verified"].sum() else float("nan")
            info = chosen.get(setting, {})
            costs = StepCosts.from_dict(info["costs"]) if "costs" in info else None
            gamma = int(f["gamma"].iloc[0])
            rows.append({
                "draft": draft, "setting": setting, "gamma": gamma, "pilot_alpha": info.get("pilot_alpha"),
                "alpha_pos": alpha, "tau": f["sd_tokens"].sum() / f["target_calls"].sum() if f["target_calls"].sum() else float("nan"),
                "c": costs.c if costs else float("nan"),
                "verify_steps": costs.verify_ratio(gamma) if costs else float("nan"),
                "predicted_speedup": _predicted(costs, info, alpha, gamma),
                "speedup": measured, "speedup_lo": lo, "speedup_hi": hi,
                "target_tokens_per_s": cols["target_tokens"].sum() / cols["target_s"].sum(),
                "sd_tokens_per_s": cols["sd_tokens"].sum() / cols["sd_s"].sum(),
                "identical": f["identical"].mean() if f["identical"].notna().all() else float("nan"),
                "n_prompts": int(f["prompts"].sum()),
                "busy_batches": int(f["busy"].sum()) if "busy" in f else 0,  # timed beside other work (speed.py)
                **dict(zip(("vs_reference", "vs_reference_lo", "vs_reference_hi"), paired)),
            })
    return pd.DataFrame(rows)


def _against(frame: pd.DataFrame, reference: pd.DataFrame | None, setting: str, seed: int) -> tuple[float, ...]:
    """A draft's speedup over the reference's on the same prompts, with a 95% CI from resampling prompts (each
    batch of the draft paired with the reference's batch in the same place: both time the same prompts in order);
    NaN where the reference was not timed at this setting or on other batches."""
    other = None if reference is None else reference[reference["setting"] == setting]
    if other is None or len(other) != len(frame) or (other["prompts"].to_numpy() != frame["prompts"].to_numpy()).any():
        return (np.nan,) * 3
    mine, theirs = _speed_columns(frame), _speed_columns(other)
    return bootstrap(lambda i: _speedup(mine, i) / _speedup(theirs, i), len(frame), seed=seed)


def _speed_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {k: frame[k].to_numpy(float) for k in SPEED_COLUMNS}


def _speedup(cols: dict[str, np.ndarray], i) -> np.ndarray:
    """SD tokens/s over target tokens/s on the batches indexed by i ([n] or [n_boot, n])."""
    return speed_ratio(*(cols[k][i].sum(-1) for k in SPEED_COLUMNS))


def _predicted(costs: StepCosts | None, info: dict, alpha: float, gamma: int) -> float:
    """The cost model's speedup for a timed setting: at the run's own alpha; for a draft with cut blocks (lookup) at
    its pilot's acceptance per depth; for one that mixes sources (a hybrid) each side's at its own block."""
    if costs is None:
        return float("nan")
    if "pilot_sources" in info and gamma:
        sources = SourceAcceptance.from_dict(info["pilot_sources"])
        return costs.hybrid_speedup(sources.lookup, sources.draft, sources.lookup_share, *info["blocks"])
    return costs.speedup(BlockAcceptance.from_dict(info["pilot_blocks"]) if "pilot_blocks" in info else alpha, gamma)


def summary_table(steps: dict[str, pd.DataFrame], tokens: dict[str, pd.DataFrame], gamma: int,
                  speed: dict[str, dict] | None = None, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The reference study's Table 1 per draft: alpha_tok and alpha_pos (95% bootstrap CIs over prompts),
    tau, the Leviathan prediction, n prompts and tokens, and measured speed when given."""
    metrics = {m: group_metric(steps, {d: [d] for d in steps}, m, n_boot=n_boot, seed=seed).set_index("group")
               for m in STEP_METRICS}  # each draft its own group: the prompt bootstrap
    rows = []
    for draft, st in steps.items():
        row = {"draft": draft}
        for m, table in metrics.items():
            row.update({m: table.at[draft, "mean"], f"{m}_lo": table.at[draft, "lo"], f"{m}_hi": table.at[draft, "hi"]})
        sums = prompt_sums(st)
        row.update({
            "predicted_tau": expected_tokens_per_step(row["alpha_pos"], gamma),
            "mean_expected_accept": float(tokens[draft]["expected_accept"].mean()) if draft in tokens else np.nan,
            "n_prompts": int(metrics["tau"].at[draft, "n_prompts"]), "n_tokens": int(sums["emitted"].sum()),
            "n_verified": int(sums["verified"].sum()),
        })
        if speed and draft in speed:
            row.update(speed[draft])
        rows.append(row)
    return pd.DataFrame(rows)


def entropy_bin_edges(entropy: np.ndarray, n_bins: int, floor: float = 1e-3) -> np.ndarray:
    """Log-spaced bin edges covering [max(min entropy, floor), max entropy]; entropies below floor go in bin 0."""
    entropy = np.asarray(entropy, float)
    require(len(entropy) > 0, "No records to bin.")
    require(n_bins >= 1, f"n_bins={n_bins} must be >= 1.")
    lo = max(float(entropy.min()), floor)
    hi = max(float(entropy.max()), lo * 1.0001)
    return np.geomspace(lo, hi, n_bins + 1)


def assign_bins(entropy: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index per value; values below the first edge join bin 0, the top edge is inclusive."""
    return np.clip(np.searchsorted(edges, np.asarray(entropy, float), side="right") - 1, 0, len(edges) - 2)


def acceptance_by_entropy(tokens: dict[str, pd.DataFrame], n_bins: int = 12, min_count: int = 200,
                          entropy_col: str = "target_entropy", edges: np.ndarray | None = None) -> pd.DataFrame:
    """Per draft and teacher-entropy bin: verified positions, acceptance rate (alpha_pos) with a Wilson 95% CI.
    Bins with fewer than min_count positions are dropped (the reference study used 2,000)."""
    require(len(tokens) > 0, "No token records given.")
    if edges is None:
        edges = entropy_bin_edges(np.concatenate([t[entropy_col].to_numpy() for t in tokens.values()]), n_bins)
    frames = []
    for draft, t in tokens.items():
        b = assign_bins(t[entropy_col].to_numpy(), edges)
        g = pd.DataFrame({"bin": b, "accepted": t["accepted"].to_numpy(),
                          "expected": t["expected_accept"].to_numpy()}).groupby("bin")
        agg = g.agg(n=("accepted", "size"), k=("accepted", "sum"), expected_accept=("expected", "mean"))
        agg = agg.reset_index()
        agg["draft"] = draft
        frames.append(agg)
    out = pd.concat(frames, ignore_index=True)
    out["accept_rate"] = out["k"] / out["n"]
    out["ci_lo"], out["ci_hi"] = wilson_interval(out["k"], out["n"])
    out["lo"], out["hi"] = edges[out["bin"]], edges[out["bin"] + 1]
    out["center"] = np.sqrt(out["lo"] * out["hi"])
    out = out[out["n"] >= min_count].reset_index(drop=True)
    return out[["draft", "bin", "lo", "hi", "center", "n", "k", "accept_rate", "ci_lo", "ci_hi", "expected_accept"]]


_SOURCE_NAMES = {code: name for name, code in SOURCES.items()}  # a hybrid's step records: code -> source


def tokens_by_source(tokens: dict[str, pd.DataFrame], steps: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The token records of the drafts whose steps say which source proposed each block (a hybrid: prompt lookup or
    its trained draft), split by it: '<draft> (lookup)', '<draft> (draft)'. Empty when no draft mixes sources."""
    out = {}
    for draft, s in steps.items():
        if SOURCE_COLUMN not in s:
            continue
        t = tokens[draft].merge(s[["row", "step", SOURCE_COLUMN]], on=["row", "step"], how="left")
        for code, part in t.groupby(SOURCE_COLUMN):
            out[f"{draft} ({_SOURCE_NAMES[int(code)]})"] = part.drop(columns=SOURCE_COLUMN)
    return out


def source_summary(steps: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per draft that mixes sources and per source: its share of the row-steps, the mean block it proposed, and
    alpha_pos / alpha_tok over its steps."""
    rows = []
    for draft, s in steps.items():
        if SOURCE_COLUMN not in s:
            continue
        for code, part in s.groupby(SOURCE_COLUMN):
            accepted, proposed = part["accepted"].to_numpy(), part["proposed"].to_numpy()
            verified = verified_positions(accepted, proposed).sum()
            rows.append({"draft": draft, "source": _SOURCE_NAMES[int(code)], "step_share": len(part) / len(s),
                         "mean_block": float(proposed.mean()),
                         "alpha_pos": accepted.sum() / verified if verified else float("nan"),
                         "alpha_tok": accepted.sum() / proposed.sum() if proposed.sum() else float("nan")})
    return pd.DataFrame(rows, columns=["draft", "source", "step_share", "mean_block", "alpha_pos", "alpha_tok"])


__all__ = ["acceptance_by_entropy", "assign_bins", "entropy_bin_edges", "source_summary", "speed_summary",
           "summary_table", "tokens_by_source"]

"""Does the training curve predict serving? Over every published draft, the last `expected_accept` its training log
recorded (Σ min(p, q) at T=1 on the positions trained in the last logging window; every file checked against its
draft's manifest first) against the alpha_pos the evaluation measured
when it decoded held-out prompts, with Spearman's rho and a bootstrap CI over drafts: pooled, and within each study
(one task, one setting, recipes and seeds side by side), which is the comparison a user makes when choosing a recipe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..atomic import read_parquet
from ..errors import require
from ..metrics import verified_positions
from ..trainlog import TRAIN_LOG, read_log
from .manifest import folder_damage
from .rundir import RunPaths
from .stats import bootstrap

LOG_SUFFIX = f"_{TRAIN_LOG}"


def collect(published: str | Path) -> pd.DataFrame:
    """One row per published draft with a training log: study, task, draft, kind (draft, head, warm start),
    last_expected_accept, late_expected_accept (the mean over the last fifth of the logged steps), alpha_pos
    (held-out SD), n_positions. A draft published by two studies (one imported it) counts once, in the larger."""
    rows, seen = [], set()
    configs = sorted(Path(published).glob("*/config.yaml"), key=lambda c: (-len(list(c.parent.glob(
        f"records/*{LOG_SUFFIX}"))), c.parent.name))
    for config in configs:
        study = yaml.safe_load(config.read_text())
        records = config.parent / "records"
        for log_path in sorted(records.glob(f"*{LOG_SUFFIX}")):
            draft = log_path.name[: -len(LOG_SUFFIX)]
            damaged = folder_damage(records, RunPaths(config.parent), draft)
            require(not damaged, f"{records}: draft '{draft}' does not match its manifest ({'; '.join(damaged)}); "
                    "its training log or records changed since they were published. Publish the study again from "
                    "its run (python -m distillspec run --config ... --publish figures), or restore the files.")
            steps_path = records / f"{draft}_steps.parquet"
            log = read_log(log_path)
            if not steps_path.is_file() or "expected_accept" not in log:
                continue
            trained = log.dropna(subset=["expected_accept"])
            curve = (study["task"], tuple(trained["expected_accept"].round(6)))  # the same training run, imported
            if curve in seen:
                continue
            seen.add(curve)
            steps = read_parquet(steps_path, columns=["accepted", "proposed"])
            verified = int(verified_positions(steps["accepted"], steps["proposed"]).sum())
            kind = "warm start" if draft == "baseline" else "head" if "feature_loss" in log else "draft"
            rows.append({"study": study["name"], "task": study["task"], "draft": draft, "kind": kind,
                         "last_expected_accept": float(trained["expected_accept"].iloc[-1]),
                         "late_expected_accept": float(trained["expected_accept"].iloc[-max(1, len(trained) // 5):]
                                                       .mean()),
                         "alpha_pos": float(steps["accepted"].sum()) / max(1, verified), "n_positions": verified})
    require(rows, f"No published drafts with training logs and step records under {published} (figures/<study>/"
                  "records/, as `python -m distillspec run --publish figures` writes them).")
    return pd.DataFrame(rows)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank)."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def spearman(x, y, *, n_boot: int = 5000, seed: int = 0) -> tuple[float, float, float]:
    """Spearman's rho of paired values and its 95% percentile bootstrap CI, resampling the pairs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    require(len(x) == len(y) and len(x) >= 3, "Spearman's rho needs at least 3 pairs.")

    def rho(index: np.ndarray) -> np.ndarray:
        index = np.atleast_2d(index)
        rx, ry = _ranks(x[index]), _ranks(y[index])
        rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (rx * ry).sum(-1) / np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1))

    return bootstrap(rho, len(x), n_boot=n_boot, seed=seed)


def correlations(table: pd.DataFrame, *, min_drafts: int = 5, seed: int = 0) -> pd.DataFrame:
    """rho with its CI over all drafts, per task, and within each study with >= min_drafts drafts, for the last
    logged expected acceptance and for its mean over the last fifth of the log."""
    groups = {"all": table, **{f"task {t}": g for t, g in table.groupby("task")}}
    groups.update({f"study {s}": g for s, g in table.groupby("study") if len(g) >= min_drafts})
    out = []
    for name, g in groups.items():
        for signal in ("last_expected_accept", "late_expected_accept"):
            rho, lo, hi = spearman(g[signal], g["alpha_pos"], seed=seed)
            out.append({"set": name, "signal": signal, "n": len(g), "rho": rho, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(out)


def plot(table: pd.DataFrame, path=None):
    """Scatter of the training log's last expected acceptance against served alpha_pos, one colour per study."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), layout="constrained", sharey=True)
    for ax, (task, rows) in zip(axes, table.groupby("task")):
        for study, g in rows.groupby("study"):
            marker = {"draft": "o", "head": "^", "warm start": "*"}
            for kind, k in g.groupby("kind"):
                ax.scatter(k["last_expected_accept"], k["alpha_pos"], marker=marker[kind], s=40 if kind != "warm start"
                           else 160, label=f"{study} ({kind})", alpha=0.8)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(task)
        ax.set_xlabel("training log: last expected acceptance Σ min(p, q), T=1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("served alpha_pos (evaluation, held-out prompts)")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def write_report(published: str | Path, out: str | Path) -> pd.DataFrame:
    """training_signal.csv (per draft), training_signal_rho.csv and training_signal.png into out."""
    import matplotlib.pyplot as plt

    from ..atomic import write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = collect(published)
    rho = correlations(table)
    write_text(table.to_csv(index=False), out / "training_signal.csv")
    write_text(rho.to_csv(index=False), out / "training_signal_rho.csv")
    plt.close(plot(table, out / "training_signal.png"))
    return rho


__all__ = ["collect", "correlations", "plot", "spearman", "write_report"]

"""Does the training curve predict serving? Over every published draft, signals from its training log (every file
checked against its draft's manifest first) against the alpha_pos the evaluation measured when it decoded held-out
prompts, with Spearman's rho and a bootstrap CI over drafts: pooled, and within each study (one task, one setting,
recipes and seeds side by side), which is the comparison a user makes when choosing a recipe.

The signals (SIGNALS): the log's last `expected_accept` (Σ min(p, q) at T=1 on the positions trained in the last
logging window) and its mean over the last fifth; that value split by whose text was trained on (GKD's `lmbda` < 1
mixes the draft's own samples and the teacher's: a least-squares fit over the late logging windows of expected
acceptance against their share of teacher-text steps, read at share 1 and 0); the served acceptance on validation
prompts decoded during training (validation.py), where the log has it; and, as a diagnostic that is not a training
signal, the evaluation's own Σ min(p, q) at T=1 on its drafted positions (does the temperature explain a gap?).
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
            tokens_path = records / f"{draft}_tokens.parquet"
            served_t1 = (float(read_parquet(tokens_path, columns=["expected_accept_t1"])["expected_accept_t1"].mean())
                         if tokens_path.is_file() else float("nan"))
            rows.append({"study": study["name"], "task": study["task"], "draft": draft, "kind": kind,
                         "last_expected_accept": float(trained["expected_accept"].iloc[-1]),
                         "late_expected_accept": float(trained["expected_accept"].iloc[-max(1, len(trained) // 5):]
                                                       .mean()),
                         **by_text(trained), **validation_signal(log),
                         "served_expected_accept_t1": served_t1,
                         "alpha_pos": float(steps["accepted"].sum()) / max(1, verified), "n_positions": verified})
    require(rows, f"No published drafts with training logs and step records under {published} (figures/<study>/"
                  "records/, as `python -m distillspec run --publish figures` writes them).")
    return pd.DataFrame(rows)


def by_text(trained: pd.DataFrame) -> dict:
    """The logged expected acceptance on the teacher's text and on the draft's own, from the later half of the
    logging windows: the means of the values logged per text (`expected_accept_teacher_text`, `..._own_text`)
    where the log has them, else least squares of each window's value against its share of teacher-text steps
    (`teacher_rollout`), read at share 1 and 0. NaN where the log has neither or the share never varies."""
    late = trained.iloc[len(trained) // 2 :]
    if "expected_accept_teacher_text" in late and late["expected_accept_teacher_text"].notna().any():
        return {f"{text}_expected_accept": float(late[f"expected_accept_{text}"].mean())
                if f"expected_accept_{text}" in late else float("nan") for text in ("teacher_text", "own_text")}
    share = late["teacher_rollout"].to_numpy(float) if "teacher_rollout" in late else np.zeros(0)
    if len(share) < 3 or np.isnan(share).any() or np.ptp(share) == 0:
        return {"teacher_text_expected_accept": float("nan"), "own_text_expected_accept": float("nan")}
    slope, own = np.polyfit(share, late["expected_accept"].to_numpy(float), 1)
    return {"teacher_text_expected_accept": float(own + slope), "own_text_expected_accept": float(own)}


def validation_signal(log: pd.DataFrame) -> dict:
    """Served acceptance on validation prompts (validation.py) of the draft the run kept: at the checkpoint it
    selected by it, else at the last validation. NaN where the run was not validated."""
    out = {"validation_alpha_pos": float("nan"), "validation_expected_accept": float("nan")}
    if "eval_alpha_pos" not in log:
        return out
    validated = log.dropna(subset=["eval_alpha_pos"])
    chosen = log.dropna(subset=["selected_step"]) if "selected_step" in log else validated.iloc[:0]
    at = validated[validated["step"] == int(chosen["selected_step"].iloc[-1])] if len(chosen) else validated
    if len(at):
        out["validation_alpha_pos"] = float(at["eval_alpha_pos"].iloc[-1])
        out["validation_expected_accept"] = float(at.get("eval_served_expected_accept", pd.Series([np.nan])).iloc[-1])
    return out


# the signals the report sets against served alpha_pos; the last is the evaluation's own diagnostic
SIGNALS = ("last_expected_accept", "late_expected_accept", "teacher_text_expected_accept", "own_text_expected_accept",
           "validation_alpha_pos", "validation_expected_accept", "served_expected_accept_t1")


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
    """rho with its CI over all drafts, per task, and within each study with >= min_drafts drafts, for each of
    SIGNALS over the drafts that have it (at least 3; min_drafts within a study)."""
    groups = {"all": table, **{f"task {t}": g for t, g in table.groupby("task")}}
    groups.update({f"study {s}": g for s, g in table.groupby("study") if len(g) >= min_drafts})
    out = []
    for name, g in groups.items():
        for signal in SIGNALS:
            have = g.dropna(subset=[signal]) if signal in g else g.iloc[:0]
            if len(have) < (min_drafts if name.startswith("study") else 3):
                continue
            rho, lo, hi = spearman(have[signal], have["alpha_pos"], seed=seed)
            out.append({"set": name, "signal": signal, "n": len(have), "rho": rho, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(out)


PLOTTED = {"last_expected_accept": "training log: last expected acceptance Σ min(p, q), T=1",
           "teacher_text_expected_accept": "training log, on the teacher's text (fit over late windows)",
           "validation_alpha_pos": "validation while training: served alpha_pos"}


def plot(table: pd.DataFrame, path=None):
    """Scatter of each training signal that some drafts have (a row per signal, a column per task) against served
    alpha_pos, one colour per study."""
    import matplotlib.pyplot as plt

    signals = [s for s in PLOTTED if s in table and table[s].notna().any()]
    tasks = sorted(table["task"].unique())
    fig, axes = plt.subplots(len(signals), len(tasks), figsize=(6 * len(tasks), 4.5 * len(signals)),
                             layout="constrained", sharey=True, squeeze=False)
    marker = {"draft": "o", "head": "^", "warm start": "*"}
    palette = plt.get_cmap("tab10")
    colour = {study: palette(i % 10) for i, study in enumerate(sorted(table["study"].unique()))}  # same in every panel
    for row, signal in zip(axes, signals):
        for ax, task in zip(row, tasks):
            rows = table[(table["task"] == task) & table[signal].notna()]
            for study, g in rows.groupby("study"):
                for kind, k in g.groupby("kind"):
                    ax.scatter(k[signal], k["alpha_pos"], marker=marker[kind], s=40 if kind != "warm start" else 160,
                               color=colour[study], label=f"{study} ({kind})", alpha=0.8)
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(task)
            ax.set_xlabel(PLOTTED[signal])
            ax.grid(alpha=0.3)
            if len(rows):
                ax.legend(fontsize=7, loc="upper left")
        row[0].set_ylabel("served alpha_pos (evaluation, held-out prompts)")
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


__all__ = ["SIGNALS", "by_text", "collect", "correlations", "plot", "spearman", "validation_signal", "write_report"]

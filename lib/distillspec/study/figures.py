"""The study's figures (matplotlib): acceptance against teacher entropy, training curves, the warm start's curve,
expected acceptance and speed per draft."""

from __future__ import annotations

import numpy as np
import pandas as pd


CANONICAL_DRAFTS = ("baseline", "fkl", "rkl", "jsd", "tvd", "lk_alpha", "skd")


def draft_colors(names) -> dict[str, str]:
    """One matplotlib colour per draft, the same in every figure: the usual runs keep fixed colours, other names
    take the remaining ones in order."""
    palette = [f"C{i}" for i in range(10)]
    colors = {n: palette[CANONICAL_DRAFTS.index(n)] for n in names if n in CANONICAL_DRAFTS}
    free = palette[len(CANONICAL_DRAFTS):]  # never reuse a canonical run's colour
    for i, n in enumerate(n for n in names if n not in colors):
        colors[n] = free[i % len(free)]
    return colors


def plot_acceptance_vs_entropy(bins: pd.DataFrame, title: str, path=None):
    """Figure 1: acceptance vs teacher entropy (log x), one line per draft, bubble area = tokens in the bin; the band
    is the Wilson 95% CI, or with seeds (seeds.bins_over_seeds) the range from the lowest to the highest seed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    biggest = max(bins["n"].max(), 1) if len(bins) else 1
    colors = draft_colors(bins["draft"].unique())
    band = ("seed_lo", "seed_hi") if "seed_lo" in bins else ("ci_lo", "ci_hi")
    for draft, d in bins.groupby("draft", sort=False):
        ax.plot(d["center"], d["accept_rate"], label=draft, color=colors[draft])
        ax.scatter(d["center"], d["accept_rate"], s=20 + 400 * d["n"] / biggest, alpha=0.5, color=colors[draft])
        ax.fill_between(d["center"], d[band[0]], d[band[1]], alpha=0.12, color=colors[draft])
    ax.set_xscale("log")
    ax.set_xlabel("teacher entropy H(p) at T=1 (nats, log scale)")
    ax.set_ylabel("acceptance rate of verified draft tokens (alpha_pos)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title="draft\n(bubble area =\ntokens in bin)", loc="upper left", bbox_to_anchor=(1.01, 1))
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_training_curves(logs: dict[str, pd.DataFrame], title: str, path=None,
                         groups: dict[str, list[str]] | None = None):
    """Loss and expected acceptance (teacher-scored, on the positions trained that step) per logging step; with
    groups (recipe -> its seeds' runs), one colour and one legend entry per recipe, one line per seed."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    recipe = {run: group for group, runs in (groups or {n: [n] for n in logs}).items() for run in runs}
    colors = draft_colors(list(dict.fromkeys(recipe[n] for n in logs)))
    labelled = set()
    for name, log in logs.items():
        log = log.dropna(subset=["loss"])
        group = recipe[name]
        label = None if group in labelled else group
        labelled.add(group)
        ax1.plot(log["step"], log["loss"], label=label, color=colors[group])
        if "expected_accept" in log:
            ax2.plot(log["step"], log["expected_accept"], label=label, color=colors[group])
    ax1.set_xlabel("training step")
    ax1.set_ylabel("distillation loss (per token)")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("expected acceptance Σ min(p, q), T=1\n(positions trained in the logging window)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.legend(*ax1.get_legend_handles_labels(), title="draft", loc="outside right upper")
    fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_warm_curve(log: pd.DataFrame, title: str, path=None):
    """A warm start's curve: alpha_pos and alpha_tok of the draft decoding held-out prompts against the teacher at
    each evaluation, beside the expected acceptance on the teacher's text it trained on."""
    import matplotlib.pyplot as plt

    from ..warm_start import warm_curve

    curve, trained = warm_curve(log), log.dropna(subset=["loss"])
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    ax.plot(curve["step"], curve["alpha_pos"], "o-", label="alpha_pos, held-out SD")
    ax.plot(curve["step"], curve["alpha_tok"], "s--", label="alpha_tok, held-out SD")
    if "expected_accept" in trained:
        ax.plot(trained["step"], trained["expected_accept"], alpha=0.5,
                label="Σ min(p, q) at T=1 on the teacher's text (training batches)")
    ax.set_xlabel("warm-start step")
    ax.set_ylabel("acceptance")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_expected_acceptance(speed: pd.DataFrame, title: str, path=None):
    """The evaluation's bars: teacher-scored expected acceptance (T=1) of each draft on SD output vs on its own samples.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5), layout="constrained")
    speed.plot.bar(x="draft", y=["sd_expected_accept_t1", "own_sample_expected_accept"], ax=ax, rot=0, legend=False)
    ax.set_ylabel("mean sum min(p, q) at T=1")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.legend(ax.get_legend_handles_labels()[0], ["on SD (target-distributed) text", "on the draft's own samples"],
               loc="outside lower center", ncols=2)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_speed(speed: pd.DataFrame, title: str, path=None):
    """The evaluation's speed chart: measured speedup over target-only decoding (95% CI) and the cost model's
    prediction, per draft and setting; the line at 1.0x is the target alone."""
    import matplotlib.pyplot as plt

    labels = [f"{r.draft}\n{r.setting}\ngamma {r.gamma}" for r in speed.itertuples()]
    x = np.arange(len(speed))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(speed)), 3.8), layout="constrained")
    err = np.vstack([speed["speedup"] - speed["speedup_lo"], speed["speedup_hi"] - speed["speedup"]])
    ax.bar(x, speed["speedup"], yerr=err, capsize=4, color="tab:blue", label="measured (95% CI)")
    ax.scatter(x, speed["predicted_speedup"], marker="D", color="tab:orange", zorder=3, label="cost model")
    ax.axhline(1.0, color="black", lw=1, ls="--")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("tokens/s over target alone")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.legend(loc="outside lower center", ncols=2)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


__all__ = ["CANONICAL_DRAFTS", "draft_colors", "plot_acceptance_vs_entropy", "plot_expected_acceptance", "plot_speed",
           "plot_training_curves", "plot_warm_curve"]

"""The quality-latency study's numbers: per (draft, acceptance setting) the task's score, the target's NLL per token
and the share of tokens outside its nucleus, each with a bootstrap CI over prompts, beside the batch-1 speedup; the
table in Markdown and the figure of quality against speedup (benchmarks/quality_latency.py runs the study)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import require
from ..quality import score_column
from ..speed import SPEED_COLUMNS, speed_ratio
from .stats import bootstrap, format_interval, ratio_bootstrap

SCORE_NAMES = {"cnndm": "ROUGE-L", "gsm8k": "exact match"}


def quality_summary(judged: pd.DataFrame, task: str, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Means over prompts with 95% bootstrap CIs (prompts resampled), as (estimate, lo, hi): the task's score, and
    the target's NLL per output token and the share of output tokens outside its nucleus, pooled over tokens."""
    require(len(judged) > 0, "No judged outputs to summarise.")
    score = judged[score_column(task)].to_numpy(dtype=float)
    return {"score": bootstrap(lambda i: score[i].mean(-1), len(score), n_boot=n_boot, seed=seed),
            "nll_per_token": ratio_bootstrap(judged["nll_sum"], judged["tokens"], n_boot=n_boot, seed=seed),
            "outside_nucleus": ratio_bootstrap(judged["outside_nucleus"], judged["tokens"], n_boot=n_boot,
                                               seed=seed)}


def speedup_summary(timing: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """The speedup over target-only `generate` of time_decoding's rows (one per prompt at batch 1), with its
    bootstrap CI over prompts."""
    require(len(timing) > 0, "No timing rows to summarise.")
    sd_tokens, sd_s, target_tokens, target_s = (timing[c].to_numpy(dtype=float) for c in SPEED_COLUMNS)
    return bootstrap(lambda i: speed_ratio(sd_tokens[i].sum(-1), sd_s[i].sum(-1), target_tokens[i].sum(-1),
                                           target_s[i].sum(-1)), len(timing), n_boot=n_boot, seed=seed)


def quality_table(rows: list[dict], task: str) -> str:
    """The study's table in Markdown: one row per (draft, setting) in the order given; each row a dict with draft,
    setting, alpha_tok, speedup and the quality_summary keys, each an (estimate, lo, hi) where a CI applies."""
    name = SCORE_NAMES[task]
    lines = [f"| draft | setting | alpha_tok | speedup (batch 1) | {name} | target NLL / token | outside top-p 0.95 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = "1 (reference)" if r.get("speedup") is None else format_interval(*r["speedup"], unit="x")
        alpha = "" if r.get("alpha_tok") is None else f"{100 * r['alpha_tok']:.1f}%"
        lines.append(f"| {r['draft']} | {r['setting']} | {alpha} | {speed} | "
                     f"{format_interval(*r['score'], scale=100, digits=1)} | "
                     f"{format_interval(*r['nll_per_token'], digits=3)} | "
                     f"{format_interval(*r['outside_nucleus'], scale=100, digits=1)}% |")
    return "\n".join(lines) + "\n"


RULE_STYLES = {"lin": "-", "exp": "--", "greedy": ":"}  # one line per draft and rule family


def _curve(rows: list[dict], draft: str, family: str) -> list[dict]:
    """A draft's timed rows along one rule family, from strict to lenient: lossless first for 'lin' and 'exp' (eps
    = 1 is lossless), then eps or l falling; greedy lenience starts at l = 1, which is not lossless."""
    mine = [r for r in rows if r["draft"] == draft and r.get("speedup") is not None]
    lenient = sorted((r for r in mine if r["setting"].partition(":")[0] == family),
                     key=lambda r: -float(r["setting"].partition(":")[2]))
    lossless = [r for r in mine if r["setting"] == "lossless"] if family != "greedy" else []
    return lossless + lenient


def plot_quality_latency(rows: list[dict], task: str, path=None):
    """Quality against batch-1 speedup: a colour per draft, a line per rule family (solid lin, dashed exp, dotted
    greedy lenience) from lossless (a star) to the most lenient setting, each point labelled with its eps or l; 95%
    CIs as bars; the target alone as a grey dashed line."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    drafts = list(dict.fromkeys(r["draft"] for r in rows if r.get("speedup") is not None))
    colours = {d: f"C{i}" for i, d in enumerate(drafts)}
    for ax, key, label, scale in [(axes[0], "score", SCORE_NAMES[task], 100),
                                  (axes[1], "nll_per_token", "target NLL per output token (nats)", 1)]:
        for r in rows:
            if r.get("speedup") is None:
                ax.axhline(r[key][0] * scale, ls="--", color="grey", label=f"{r['draft']} ({r['setting']})")
        for draft in drafts:
            for family, style in RULE_STYLES.items():
                curve = _curve(rows, draft, family)
                if not curve:
                    continue
                x = np.array([r["speedup"][0] for r in curve])
                y = np.array([r[key][0] for r in curve]) * scale
                yerr = np.abs(np.array([[r[key][1], r[key][2]] for r in curve]).T * scale - y)
                xerr = np.abs(np.array([[r["speedup"][1], r["speedup"][2]] for r in curve]).T - x)
                ax.errorbar(x, y, xerr=xerr, yerr=yerr, ls=style, marker="o", ms=4, capsize=2, alpha=0.75,
                            color=colours[draft], label=f"{draft}, {family}")
                for r, xi, yi in zip(curve, x, y):
                    if r["setting"] == "lossless":
                        ax.plot([xi], [yi], marker="*", ms=12, color=colours[draft], ls="none")
                    else:
                        ax.annotate(r["setting"].partition(":")[2], (xi, yi), fontsize=6, xytext=(3, 2),
                                    textcoords="offset points", color=colours[draft])
        ax.set_xlabel("speedup over the target alone (batch 1)")
        ax.set_ylabel(label + (" (%)" if scale == 100 else ""))
    axes[1].legend(fontsize=7, ncol=2, loc="upper left")
    fig.suptitle(f"{task}: quality against speed per draft and acceptance rule (star: lossless; labels: eps or l)")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig

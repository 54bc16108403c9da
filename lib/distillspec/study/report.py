"""Acceptance analysis: Table 1 with bootstrap CIs, acceptance vs teacher entropy (Figure 1), the bin inspector."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import require
from ..metrics import expected_tokens_per_step
from ..runtime import BUSY_SHARE
from ..speed import StepCosts
from .stats import (SPEED_COLUMNS, STEP_METRICS, bootstrap, format_interval, group_metric, prompt_sums, speed_ratio,
                    wilson_interval)


def speed_summary(timing: dict[str, pd.DataFrame], timed: dict[str, list[dict]], seed: int = 0) -> pd.DataFrame:
    """Per draft and speed setting: SD tokens/s over target-only tokens/s on the same prompts (95% bootstrap CI
    over batches, i.e. prompts at batch 1), the cost model's prediction at the run's own acceptance, and how gamma
    was chosen. timing: 03's timing rows per draft; timed: its `timed` entries (gamma, pilot alpha, step costs)."""
    rows = []
    for draft, frame in timing.items():
        chosen = {t["setting"]: t for t in timed.get(draft, [])}
        for setting, f in frame.groupby("setting", sort=False):
            cols = {k: f[k].to_numpy(float) for k in SPEED_COLUMNS}
            measured, lo, hi = bootstrap(lambda i: speed_ratio(*(cols[k][i].sum(-1) for k in SPEED_COLUMNS)), len(f),
                                         seed=seed)
            alpha = f["accepted"].sum() / f["verified"].sum() if f["verified"].sum() else float("nan")
            info = chosen.get(setting, {})
            costs = StepCosts.from_dict(info["costs"]) if "costs" in info else None
            gamma = int(f["gamma"].iloc[0])
            rows.append({
                "draft": draft, "setting": setting, "gamma": gamma, "pilot_alpha": info.get("pilot_alpha"),
                "alpha_pos": alpha, "tau": f["sd_tokens"].sum() / f["target_calls"].sum() if f["target_calls"].sum() else float("nan"),
                "c": costs.c if costs else float("nan"),
                "verify_steps": costs.verify_ratio(gamma) if costs else float("nan"),
                "predicted_speedup": costs.speedup(alpha, gamma) if costs else float("nan"),
                "speedup": measured, "speedup_lo": lo, "speedup_hi": hi,
                "target_tokens_per_s": cols["target_tokens"].sum() / cols["target_s"].sum(),
                "sd_tokens_per_s": cols["sd_tokens"].sum() / cols["sd_s"].sum(),
                "identical": f["identical"].mean() if f["identical"].notna().all() else float("nan"),
                "n_prompts": int(f["prompts"].sum()),
                "busy_batches": int(f["busy"].sum()) if "busy" in f else 0,  # timed beside other work (speed.py)
            })
    return pd.DataFrame(rows)


def format_speed_table(speed: pd.DataFrame) -> str:
    """Markdown: measured speedup with its CI next to the cost model's prediction, per draft and setting (gamma 0:
    the never-slower check found drafting slower at that setting, so the decoder ran the target alone)."""
    lines = ["| draft | setting | gamma | alpha_pos % | c | verify / step | predicted | speedup [95% CI] | "
             "target tok/s | SD tok/s | same text as target | prompts |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in speed.iterrows():
        same = f"{100 * r['identical']:.0f}%" if pd.notna(r["identical"]) else "n/a (sampled)"
        gamma = "0 (target alone)" if r["gamma"] == 0 else r["gamma"]  # the never-slower policy did not draft
        alpha = "–" if pd.isna(r["alpha_pos"]) else f"{100 * r['alpha_pos']:.1f}"
        lines.append(
            f"| {r['draft']} | {r['setting']} | {gamma} | {alpha} | {r['c']:.3f} | "
            f"{r['verify_steps']:.2f} | {r['predicted_speedup']:.2f}x | "
            f"{format_interval(r['speedup'], r['speedup_lo'], r['speedup_hi'], unit='x')} | "
            f"{r['target_tokens_per_s']:.1f} | {r['sd_tokens_per_s']:.1f} | {same} | "
            f"{r['n_prompts']} |")
    busy = [f"{r['draft']} ({r['setting']}): {r['busy_batches']} batches" for _, r in speed.iterrows()
            if r.get("busy_batches", 0)]
    if busy:
        lines += ["", f"**Timed on a busy machine** (other processes used more than {BUSY_SHARE:.0%} of the CPU): "
                      f"{'; '.join(busy)}. Those speedups are not the decoder's alone; time them again on a quiet "
                      "machine (`python -m distillspec retime`)."]
    return "\n".join(lines) + "\n"


def timing_machines(rows: dict[str, dict]) -> dict[tuple[str, str], list[str]]:
    """Timed drafts grouped by where their speed was timed: (machine, target-only tok/s of their 03 run). The
    machine is the one the timing recorded (`timed_on` after a retime, else `machine`); rows that name none ("not
    recorded") are told apart by the target-only tok/s their 03 run measured, which the drafts of one run share."""
    groups: dict[tuple[str, str], list[str]] = {}
    for draft, row in rows.items():
        if not row.get("timed"):
            continue
        where = row.get("timed_on") or row.get("machine") or "not recorded"
        tps = "-" if row.get("timed_on") else f"{row['target_tokens_per_s']:.1f}"
        groups.setdefault((where, tps), []).append(draft)
    return groups


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


def format_table(table: pd.DataFrame, eval_speed: bool = True) -> str:
    """Markdown: estimates in percent with their 95% CIs, as the README shows them. eval_speed: add 03's SD
    throughput over the target's at the evaluation settings (fixed gamma, per-token records); a preset with a
    `speed` table leaves it out, since that table times each draft at its best gamma against the target alone."""
    def line(cells: list) -> str:
        return "| " + " | ".join(map(str, cells)) + " |"

    def ci(r, col, scale, digits):
        return format_interval(r[col], r[col + "_lo"], r[col + "_hi"], scale=scale, digits=digits)

    speed_head = ["speedup vs target"] if eval_speed else []
    head = ["draft", "alpha_tok % [95% CI]", "alpha_pos % [95% CI]", "tau [95% CI]", *speed_head, "prompts", "tokens"]
    lines = [line(head), "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        speed = [f"{r['speedup']:.2f}x" if pd.notna(r.get("speedup")) else "n/a"] if eval_speed else []
        lines.append(line([r["draft"], ci(r, "alpha_tok", 100, 2), ci(r, "alpha_pos", 100, 2), ci(r, "tau", 1, 3),
                           *speed, r["n_prompts"], r["n_tokens"]]))
    return "\n".join(lines) + "\n"


def format_expected_acceptance(table: pd.DataFrame) -> str:
    """Markdown: teacher-scored expected acceptance sum_x min(p, q) at T=1, on SD output (target-distributed
    text) and on the draft's own samples, with the draft's entropy there; a collapsed draft scores high on its
    own samples only, which is why both are shown."""
    lines = ["| draft | expected acceptance on SD output % | on the draft's own samples % | "
             "draft entropy on own samples (nats) |", "|---|---|---|---|"]
    def cell(r, col, scale, digits):  # n/a where a draft was not scored
        return f"{scale * r[col]:.{digits}f}" if pd.notna(r[col]) else "n/a"

    for _, r in table.iterrows():
        lines.append(f"| {r['draft']} | {cell(r, 'sd_expected_accept_t1', 100, 2)} | "
                     f"{cell(r, 'own_sample_expected_accept', 100, 2)} | {cell(r, 'own_sample_draft_entropy', 1, 3)} |")
    return "\n".join(lines) + "\n"


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
    """03's bars: teacher-scored expected acceptance (T=1) of each draft on SD output vs on its own samples."""
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
    """03's speed chart: measured speedup over target-only decoding (95% CI) and the cost model's prediction, per
    draft and setting; the line at 1.0x is the target alone."""
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


def bin_examples(tokens: dict[str, pd.DataFrame], bins: pd.DataFrame, draft: str, bin_index: int,
                 tokenizer=None, k: int = 8, entropy_col: str = "target_entropy") -> pd.DataFrame:
    """Up to k verified positions of one draft in one entropy bin. With a tokenizer, `text` is the token's text
    quoted repr-style, so whitespace shows (' (' keeps its space, a newline reads '\\n')."""
    edges = bins[bins["bin"] == bin_index]
    if edges.empty:
        return pd.DataFrame()
    lo, hi = float(edges["lo"].iloc[0]), float(edges["hi"].iloc[0])
    t = tokens[draft]
    inside = t[(t[entropy_col] >= lo) & (t[entropy_col] <= hi)].head(k).copy()
    if tokenizer is not None:
        inside["text"] = [repr(tokenizer.decode([int(x)])) for x in inside["token"]]
    return inside[[c for c in ("row", "step", "token", "text", "accepted", "p", "q", entropy_col) if c in inside]]


def entropy_range_label(lo: float, hi: float) -> str:
    return f"{lo:.3g}\u2013{hi:.3g} nats"


def _lab_html(body: str) -> str:
    """HTML in JupyterLab's own rendered-output style (tables look like the notebook's DataFrames)."""
    return f'<div class="jp-RenderedHTMLCommon">{body}</div>'


# The panel works without a kernel, so ipywidgets' "disconnected" chain icon (shown on widgets restored from a saved
# notebook) would only mislead there.
_INSPECTOR_CLASS = "distillspec-inspector"
_INSPECTOR_STYLE = (f"<style>.{_INSPECTOR_CLASS}.jupyter-widgets-disconnected::before, "
                    f".{_INSPECTOR_CLASS} .jupyter-widgets-disconnected::before {{ display: none; }}</style>")


def _bin_summary_html(bins: pd.DataFrame, bin_index: int, drafts: list[str]) -> str:
    b = bins[bins["bin"] == bin_index]
    head = (f"<p><b>teacher entropy {entropy_range_label(b['lo'].iloc[0], b['hi'].iloc[0])}</b>: acceptance of "
            "verified draft tokens (alpha_pos) with its Wilson 95% CI, and the teacher-scored expected acceptance</p>")
    table = b[["draft", "n", "accept_rate", "ci_lo", "ci_hi", "expected_accept"]].rename(columns={
        "n": "verified tokens", "accept_rate": "alpha_pos", "ci_lo": "CI low", "ci_hi": "CI high",
        "expected_accept": "expected acceptance"}).to_html(index=False, border=0, float_format="%.3f")
    thin = [d for d in drafts if d not in set(b["draft"])]
    note = f"<p>Too few tokens in this bin to show: {', '.join(thin)}.</p>" if thin else ""
    return _lab_html(head + table + note)


def _examples_html(tokens, bins, draft: str, bin_index: int, tokenizer, k: int) -> str:
    examples = bin_examples(tokens, bins, draft, bin_index, tokenizer, k)
    if examples.empty:
        return _lab_html(f"<p>No verified tokens of <b>{draft}</b> in this bin.</p>")
    return _lab_html(f"<p>Examples from <b>{draft}</b> (first {len(examples)} in this bin):</p>"
                     + examples.to_html(index=False, border=0, float_format="%.4g"))


def bin_inspector(tokens: dict[str, pd.DataFrame], bins: pd.DataFrame, tokenizer=None, k: int = 8):
    """An ipywidgets panel: a slider over the teacher-entropy bins (labelled by their range in nats) and a draft
    dropdown; shows every draft's acceptance in the bin with its CI, and k example tokens of the chosen draft.

    Every (bin, draft) view is rendered up front and the controls switch between them in the browser (jslink),
    so the panel also works in a saved, trusted notebook with no kernel running."""
    import ipywidgets as widgets

    bin_ids = sorted(bins["bin"].unique().tolist())
    require(len(bin_ids) > 0, "No entropy bin has enough tokens to inspect; lower min_bin_count.")
    drafts = list(tokens)
    ranges = bins.drop_duplicates("bin").set_index("bin")
    slider = widgets.SelectionSlider(
        options=[(entropy_range_label(ranges.at[b, "lo"], ranges.at[b, "hi"]), b) for b in bin_ids],
        description="teacher entropy", style={"description_width": "initial"}, layout={"width": "460px"})
    dropdown = widgets.Dropdown(options=drafts, description="draft")
    summary = widgets.Stack([widgets.HTML(_bin_summary_html(bins, b, drafts)) for b in bin_ids], selected_index=0)
    examples = widgets.Stack([  # [draft][bin]
        widgets.Stack([widgets.HTML(_examples_html(tokens, bins, d, b, tokenizer, k)) for b in bin_ids],
                      selected_index=0) for d in drafts], selected_index=0)
    widgets.jslink((slider, "index"), (summary, "selected_index"))
    widgets.jslink((dropdown, "index"), (examples, "selected_index"))
    for per_bin in examples.children:
        widgets.jslink((slider, "index"), (per_bin, "selected_index"))
    panel = widgets.VBox([widgets.HBox([slider, dropdown]), widgets.HTML(_INSPECTOR_STYLE), summary, examples])
    panel.add_class(_INSPECTOR_CLASS)
    return panel

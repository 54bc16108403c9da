"""The study's tables as Markdown, as results.md prints them."""

from __future__ import annotations

import pandas as pd

from ..runtime import BUSY_SHARE
from .rundir import REFERENCE
from .stats import format_interval


def _known(value, spec: str, unit: str = "") -> str:
    """A number of the timing table, or '–' where it is not known (the reference row has no cost model)."""
    return "–" if pd.isna(value) else f"{value:{spec}}{unit}"


def format_speed_table(speed: pd.DataFrame) -> str:
    """Markdown: measured speedup with its CI next to the cost model's prediction, per draft and setting (gamma 0:
    the never-slower check found drafting slower at that setting, so the decoder ran the target alone)."""
    lines = ["| draft | setting | gamma | alpha_pos % | c | verify / step | predicted | speedup [95% CI] | "
             "target tok/s | SD tok/s | same text as target | prompts |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in speed.iterrows():
        same = f"{100 * r['identical']:.0f}%" if pd.notna(r["identical"]) else "n/a (sampled)"
        gamma = "0 (target alone)" if r["gamma"] == 0 else r["gamma"]  # the never-slower policy did not draft
        alpha = _known(r["alpha_pos"] * 100, ".1f")
        lines.append(
            f"| {r['draft']} | {r['setting']} | {gamma} | {alpha} | {_known(r['c'], '.3f')} | "
            f"{_known(r['verify_steps'], '.2f')} | {_known(r['predicted_speedup'], '.2f', 'x')} | "
            f"{format_interval(r['speedup'], r['speedup_lo'], r['speedup_hi'], unit='x')} | "
            f"{r['target_tokens_per_s']:.1f} | {r['sd_tokens_per_s']:.1f} | {same} | "
            f"{r['n_prompts']} |")
    if (speed["draft"] == REFERENCE).any():
        lines += ["", f"{REFERENCE}: transformers' own prompt lookup (`generate` with prompt_lookup_num_tokens = "
                      "gamma, batch 1 only), its settings the fastest on training prompts (records/"
                      f"{REFERENCE}_speed.json); it reports no acceptance and has no cost model."]
        paired = [f"{r['draft']} ({r['setting']}) "
                  f"{format_interval(r['vs_reference'], r['vs_reference_lo'], r['vs_reference_hi'], unit='x')}"
                  for _, r in speed.iterrows() if pd.notna(r.get("vs_reference"))]
        if paired:
            lines += ["", f"Each draft against {REFERENCE} on the same prompts (its speedup over {REFERENCE}'s, 95% CI "
                          f"resampling prompts, paired): {'; '.join(paired)}."]
    busy = [f"{r['draft']} ({r['setting']}): {r['busy_batches']} batches" for _, r in speed.iterrows()
            if r.get("busy_batches", 0)]
    if busy:
        lines += ["", f"**Timed on a busy machine** (other processes used more than {BUSY_SHARE:.0%} of the CPU): "
                      f"{'; '.join(busy)}. Those speedups are not the decoder's alone; time them again on a quiet "
                      "machine (`python -m distillspec retime`)."]
    return "\n".join(lines) + "\n"


def timing_machines(rows: dict[str, dict]) -> dict[tuple[str, str], list[str]]:
    """Timed drafts grouped by where their speed was timed: (machine, target-only tok/s of their evaluation run). The
    machine is the one the timing recorded (`timed_on` after a retime, else `machine`); rows that name none ("not
    recorded") are told apart by the target-only tok/s their evaluation run measured, which the drafts of one run share.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for draft, row in rows.items():
        if not row.get("timed"):
            continue
        where = row.get("timed_on") or row.get("machine") or "not recorded"
        tps = "-" if row.get("timed_on") else f"{row['target_tokens_per_s']:.1f}"
        groups.setdefault((where, tps), []).append(draft)
    return groups


def format_table(table: pd.DataFrame, eval_speed: bool = True) -> str:
    """Markdown: estimates in percent with their 95% CIs, as the README shows them. eval_speed: add the evaluation's SD
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


def format_sources(summary: pd.DataFrame) -> str:
    """Markdown: per hybrid draft and source (prompt lookup, its trained draft), the share of steps, the mean block
    and the acceptance; empty when no draft mixes sources (results.md then reads as before)."""
    if summary.empty:
        return ""
    lines = ["", "### Acceptance by source (hybrid drafts)", "",
             "| draft | source | share of steps | mean block | alpha_pos | alpha_tok |", "|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.draft} | {r.source} | {r.step_share:.1%} | {r.mean_block:.2f} | {r.alpha_pos:.2%} | "
                     f"{r.alpha_tok:.2%} |")
    return "\n".join(lines) + "\n"


__all__ = ["format_expected_acceptance", "format_sources", "format_speed_table", "format_table", "timing_machines"]

"""results.md in words: the header, the sentences around each table, the ranking the CIs support, the seeds that
collapsed and where each speedup was timed. The tables are formatted by markdown.py and seeds.py and the statistics
computed there and in stats.py; seeded_lead calls them for a study with seeds and writes what it states to CSV
(seed_summary.csv, differences.csv, entropy_regions.csv) beside results.md."""

from __future__ import annotations

import pandas as pd

from ..atomic import write_text
from ..losses import AdaptiveBeta
from ..trainlog import COLLAPSE_ENTROPY, COLLAPSE_PATIENCE, collapse_span
from .preset import StudyConfig
from .markdown import format_expected_acceptance, format_speed_table, format_table, timing_machines
from .rundir import BASELINE, RunPaths
from .seeds import (format_differences, format_headline, format_region_differences, format_wall_times,
                    pairwise_differences, region_differences, region_gains, speed_over_seeds)
from .stats import STEP_METRICS, group_metric


def schedule_regions(schedule: AdaptiveBeta) -> list[tuple[float, float]]:
    """The three teacher-entropy regions of an entropy-adaptive schedule: confident, between, uncertain (nats)."""
    return [(0.0, schedule.h_low), (schedule.h_low, schedule.h_high), (schedule.h_high, float("inf"))]


# where each recipe gains over the baseline: the default schedule's regions, so that table and the blend's line up
ENTROPY_REGIONS = schedule_regions(AdaptiveBeta())


def results_markdown(cfg: StudyConfig, table: pd.DataFrame, speed_rows: pd.DataFrame, rows: dict[str, dict],
                     seeded: str | None = None, warm_log: pd.DataFrame | None = None) -> str:
    """results.md: the header with the study's settings, the per-draft table (after the seeded lead, when the
    study has seeds), the teacher-scored expected acceptance and the speed table with where it was timed."""
    header = (f"Results for `{cfg.name}` ({cfg.task}, teacher `{cfg.teacher}`, gamma={cfg.gamma}, "
              f"T={cfg.temperature}, top_p={cfg.top_p}, {cfg.max_new_tokens} new tokens, "
              f"{int(table['n_prompts'].iloc[0])} held-out prompts).\n\n")
    if warm_log is not None:
        header += format_warm_start(cfg, warm_log)
    expected = ("\nTeacher-scored expected acceptance at T=1 (mean over positions; the prompts and settings above):"
                "\n\n" + format_expected_acceptance(table))
    speed_md = ""
    if len(speed_rows):
        speed_md = (f"\nDecoding speed against target-only `generate` on the first {cfg.speed_prompts} held-out "
                    f"prompts ({cfg.max_new_tokens} new tokens; speedup = SD tokens/s over target tokens/s, 95% "
                    "bootstrap CI over batches; predicted = the measured cost model at the run's alpha_pos; c = "
                    "draft step / target step; verify / step = a verification of gamma + 1 tokens in target "
                    "steps):\n\n" + format_speed_table(speed_rows)
                    + format_timing_machines(rows))
    drafts = format_table(table, eval_speed=not cfg.speed)
    if seeded is None:
        return header + drafts + expected + speed_md
    return (header + seeded + "\nEach draft (every seed), with 95% bootstrap CIs over prompts:\n\n" + drafts
            + expected + speed_md)


def format_warm_start(cfg: StudyConfig, log: pd.DataFrame) -> str:
    """The warm start in words: what trained the baseline, and its curve's first and last points."""
    from ..warm_start import warm_curve

    warm, curve = cfg.warm_start, warm_curve(log)
    points = ", ".join(f"{int(r.step)}: {r.alpha_pos:.3f}" for r in curve.itertuples())
    return (f"Warm start: every draft starts from the baseline, a draft derived from the teacher "
            f"({cfg.student_keep_layers} of its layers) and trained {warm['steps']} steps ({warm['batch_size']} "
            f"sequences each, lr {warm['learning_rate']:g}, {warm['lr_scheduler']}) on the teacher's answers to "
            f"{warm['text_prompts']} training prompts ({warm['text_tokens']} new tokens, T={cfg.temperature}) with "
            f"{warm['divergence'].upper()} over full next-token distributions. Its alpha_pos decoding the first "
            f"{warm['eval_prompts']} held-out prompts (gamma={cfg.gamma}, T={cfg.temperature}, training precision) "
            f"by step: {points}.\n\n")


def seeded_lead(cfg: StudyConfig, paths: RunPaths | None, groups: dict[str, list[str]], steps, tokens, timing,
                speed_rows: pd.DataFrame, rows: dict[str, dict], logs: dict[str, pd.DataFrame], seed: int) -> str:
    """results.md's lead for a study with seeds: the headline table (means over seeds, crossed-bootstrap CIs,
    speed), the ranking its CIs support, and, for an entropy-adaptive recipe, where along the entropy axis it
    differs from the others. Writes seed_summary.csv, differences.csv and entropy_regions.csv into the run (paths;
    None: nothing written, as for interim.md)."""

    def save(frame: pd.DataFrame, name: str) -> None:
        if paths is not None:
            write_text(frame.to_csv(index=False), getattr(paths, name))

    metrics = [group_metric(steps, groups, m, seed=seed) for m in STEP_METRICS]
    if len(speed_rows):
        metrics.append(speed_over_seeds(timing, groups, speed_rows, seed=seed))
    metrics = pd.concat(metrics, ignore_index=True)
    save(metrics, "seed_summary")
    differences = pairwise_differences(steps, groups, "alpha_tok", seed=seed)
    save(differences, "differences")
    n_seeds = " or ".join(map(str, sorted({len(r) for g, r in groups.items() if g != BASELINE})))
    md = (f"Each recipe trained with seeds {cfg.seeds} (the seed sets the rollouts and the data order; every seed is "
          "evaluated on the same prompts with the same decoding seed). Mean over seeds with a 95% CI from a crossed "
          f"bootstrap (prompts resampled once per replicate, seeds resampled per recipe; {n_seeds} seeds, so the "
          "seed part of the CI is coarse); speedup over target-only `generate` as in the speed table below, with "
          "each seed's gamma and the cost model's prediction (mean over seeds):\n\n"
          + format_headline(metrics))
    if len(timing_machines(rows)) > 1:
        md += ("\nThese speedups were timed on more than one machine or run; which drafts were timed where is listed "
               "under the speed table below.\n")
    md += ("\nRanking by alpha_tok, stated only where the 95% CI of the difference (same crossed bootstrap, prompts "
           "paired) excludes 0:\n\n" + ranking_text(metrics[metrics["metric"] == "alpha_tok"], differences)
           + "\n" + format_differences(differences))
    others = {g: r for g, r in groups.items() if g != BASELINE}
    regions = []  # entropy_regions.csv: every region table of results.md
    if BASELINE in groups and others:
        regions.append(region_gains(tokens, groups, BASELINE, ENTROPY_REGIONS, seed=seed))
        md += ("\nEach recipe against the baseline within three regions of teacher entropy at T=1 (those of the "
               "entropy-adaptive recipe's default schedule): alpha_pos difference in points, 95% crossed-bootstrap "
               "CI; (higher) / (lower) where the CI excludes 0:\n\n"
               + format_region_differences(regions[-1], rows="subject"))
    collapses = collapse_text(groups, logs)
    md += f"\n{collapses}" if collapses else ""
    md += ("\nWall time per draft (minutes, each seed, on the machine that ran the stage: drafts imported with "
           "--results-from keep their own; the speed table's target tok/s tells machines apart):\n\n"
           + format_wall_times(groups, logs, rows))
    recipes = cfg.run_groups()
    adaptive = [g for g, runs in recipes.items() if g in groups and any(o.get("adaptive_beta") for o in runs.values())]
    for group in adaptive:
        schedule = AdaptiveBeta(**next(iter(recipes[group].values()))["adaptive_beta"])
        diffs = region_differences(tokens, others, group, schedule_regions(schedule), seed=seed)
        regions.append(diffs)
        md += (f"\nThe entropy-adaptive recipe `{group}` ({schedule.low.upper()} below {schedule.h_low:g} nats of "
               f"teacher entropy, {schedule.high.upper()} above {schedule.h_high:g}, blended between) against each "
               "other trained recipe: alpha_pos difference in points within each region of its schedule (teacher "
               "entropy at T=1), 95% crossed-bootstrap CI; (higher) / (lower) where the CI excludes 0:\n\n"
               + format_region_differences(diffs))
    if regions:
        save(pd.concat(regions, ignore_index=True), "entropy_regions")
    return md


def ranking_text(means: pd.DataFrame, differences: pd.DataFrame, metric: str = "alpha_tok") -> str:
    """The ranking the CIs support, in words: the recipes by mean, then which differences are separated (95% CI of
    the difference excludes 0) and which are within noise."""
    order = means.sort_values("mean", ascending=False)["group"].tolist()
    sep = differences[differences["separated"]]
    noise = differences[~differences["separated"]]
    lines = [f"By mean {metric} over seeds: {' > '.join(order)} (an order of means, not a ranking)."]
    if len(sep):
        lines.append("Separated (the 95% CI of the difference excludes 0): " + "; ".join(
            f"{r.higher} > {r.lower} by {100 * r.difference:.2f} points" for r in sep.itertuples()) + ".")
    if len(noise):
        lines.append("Within noise (the CI includes 0): " + "; ".join(
            f"{r.higher} vs {r.lower} ({100 * r.difference:+.2f} points)" for r in noise.itertuples()) + ".")
    return "\n\n".join(lines) + "\n"


def collapse_text(groups: dict[str, list[str]], logs: dict[str, pd.DataFrame]) -> str:
    """In words: which seeds' drafts collapsed during training (distill.collapse_span on their logs), so that a low
    per-seed value reads as what it is; their values stay in the means and CIs (a collapse is one outcome of a seed)."""
    spans = {}
    for draft in (d for drafts in groups.values() for d in drafts):
        log = logs.get(draft)
        if log is not None and "entropy" in log:
            rows = log.dropna(subset=["entropy"])
            spans[draft] = collapse_span(zip(rows["step"], rows["entropy"]))
    if not spans:
        return ""
    rule = f"own-rollout entropy below {COLLAPSE_ENTROPY:g} nats for {COLLAPSE_PATIENCE} logged steps in a row"
    collapsed = {d: span for d, span in spans.items() if span}
    if not collapsed:
        return f"No trained draft collapsed ({rule}).\n"
    return (f"Collapsed during training ({rule}; such a draft emits one deterministic text and accepts near or below "
            "the baseline; its value stays in its recipe's mean and CI): "
            + "; ".join(f"{d} from step {span[0]}" for d, span in collapsed.items()) + ".\n")


def format_timing_machines(rows: dict[str, dict]) -> str:
    """Markdown: which drafts were timed where, when more than one machine (or run) timed them; empty otherwise.
    A speedup is SD against the target alone on one machine, but the ratio itself moves with the machine, so
    speedups compare only within one line of this table."""
    groups = timing_machines(rows)
    if len(groups) < 2:
        return ""
    lines = ["| timed on | target-only tok/s in its 03 run | drafts |", "|---|---|---|"]
    lines += [f"| {where} | {tps} | {', '.join(drafts)} |" for (where, tps), drafts in groups.items()]
    return ("\nThe speedups were timed on more than one machine or run (the machine as the timing recorded it, "
            "'not recorded' where a record names none; the target-only tok/s of each 03 run tells runs apart). Each "
            "is SD against the target alone on the same machine, but the ratio moves with the machine, so compare "
            "speedups within one line:\n\n" + "\n".join(lines) + "\n")

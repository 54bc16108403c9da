"""The study's analysis stage: Table 1 with bootstrap CIs, acceptance per teacher-entropy bin, results.md (interim.md
while a study in parts waits for drafts) and the figures, from the evaluation stage's records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import read_parquet, write_text
from ..errors import require
from ..trainlog import read_log
from .evaluation import decoding_speed, load_timing, read_speed_rows, speed_table
from .preset import StudyConfig
from .figures import plot_acceptance_vs_entropy, plot_training_curves, plot_warm_curve
from .results import results_markdown, seeded_lead
from .markdown import format_sources
from .tables import acceptance_by_entropy, entropy_bin_edges, source_summary, summary_table, tokens_by_source
from .manifest import run_damage
from .rundir import BASELINE, REFERENCE, RunPaths, draft_groups, draft_names, figure_paths, run_names
from .seeds import bins_over_seeds


def load_records(run_dir: str | Path, names: list[str]) -> tuple[dict, dict]:
    paths = RunPaths(Path(run_dir))
    tokens, steps = {}, {}
    for n in names:
        require(paths.tokens(n).is_file(), f"No records for draft '{n}' in {paths.root}: evaluate them first.")
        tokens[n], steps[n] = read_parquet(paths.tokens(n)), read_parquet(paths.steps(n))
    return tokens, steps


def _results(cfg: StudyConfig, paths: RunPaths, rows: dict[str, dict], groups: dict[str, list[str]],
             logs: dict[str, pd.DataFrame], warm_log: pd.DataFrame | None, seed: int, csv: bool):
    """results.md over the drafts with speed rows (rows), the recipes' seeds in groups and the runs' training logs,
    returned with Table 1, the per-token records and the speed summary it was made from; csv: also write
    summary.csv, speed_summary.csv and the seeded lead's CSVs into the run, as the analysis stage does."""
    names = list(rows)
    speed = speed_table(cfg, paths.root, rows)
    tokens, steps = load_records(paths.root, names)
    speed_by = {r["draft"]: {k: r[k] for k in speed.columns if k != "draft"} for _, r in speed.iterrows()}
    table = summary_table(steps, tokens, cfg.gamma, speed=speed_by, seed=seed)
    timing = load_timing(paths.root, names)
    reference = _reference(cfg, paths)  # transformers' prompt lookup, a row of the timing table beside the drafts
    speed_rows = decoding_speed(cfg, paths.root, [*names, *reference], {**timing, **load_timing(paths.root, reference)},
                                {**rows, **reference})
    if csv:
        write_text(table.to_csv(index=False), paths.summary)
        if len(speed_rows):
            write_text(speed_rows.to_csv(index=False), paths.speed_summary)
    lead = None
    if cfg.seeds is not None:
        lead = seeded_lead(cfg, paths if csv else None, groups, steps, tokens, timing, speed_rows, rows, logs, seed)
    results_md = results_markdown(cfg, table, speed_rows, rows, lead, warm_log) + format_sources(source_summary(steps))
    return table, tokens, steps, speed_rows, results_md


def _reference(cfg: StudyConfig, paths: RunPaths) -> dict[str, dict]:
    """The reference row's speed row (transformers' prompt lookup), where the study has one and it is finished and
    intact; a damaged one is named and left out."""
    if not cfg.reference_lookup or not paths.manifest(REFERENCE).is_file():
        return {}
    damaged = run_damage(paths, REFERENCE)
    if damaged:
        print(f"{REFERENCE}: its records are damaged ({'; '.join(damaged)}); left out of the timing table (the "
              "evaluation times it again)")
        return {}
    return {REFERENCE: json.loads(paths.speed_row(REFERENCE).read_text())}


def _train_logs(cfg: StudyConfig, paths: RunPaths, names: list[str]) -> dict[str, pd.DataFrame]:
    """The training logs of those of these runs that train a draft of their own (prompt lookup and a hybrid have
    no log)."""
    return {n: read_log(paths.train_log(n)) for n in names if cfg.trains(n)}


def _warm_log(cfg: StudyConfig, paths: RunPaths) -> pd.DataFrame | None:
    """The warm start's training log (its curve heads results.md), for a study with `warm_start`."""
    return read_log(paths.train_log(BASELINE)) if cfg.warm_start is not None else None


def interim_results(cfg: StudyConfig, run_dir: str | Path, seed: int = 0) -> str:
    """Where a study run in parts stands before every draft is in: results.md as the analysis would write it over the
    drafts evaluated so far (each recipe's mean over the seeds it has), under a line naming the drafts still to come.
    Written to interim.md (published beside the records until the analysis's results.md replaces it)."""
    paths = RunPaths(Path(run_dir))
    rows = read_speed_rows(cfg, run_dir)
    require(bool(rows), f"No evaluated drafts in {paths.root}: run the study (or a part of it, with --drafts) first.")
    missing = [n for n in draft_names(cfg) if n not in rows]
    every = draft_groups(cfg)
    groups = {g: have for g, runs in every.items() if (have := [d for d in runs if d in rows])}
    logs = _train_logs(cfg, paths, [n for n in run_names(cfg) if n in rows])
    *_, results_md = _results(cfg, paths, rows, groups, logs, _warm_log(cfg, paths), seed, csv=False)
    partial = [f"{g} ({len(have)} of {len(every[g])})" for g, have in groups.items() if len(have) < len(every[g])]
    note = (f"**Interim**: {len(rows)} of {len(rows) + len(missing)} drafts evaluated; still to come: "
            f"{', '.join(missing) or 'none (run 04 for results.md)'}. "
            + (f"Recipes with some of their seeds so far: {', '.join(partial)}; their means and CIs are over those "
               "seeds only. " if partial else "")
            + "04 replaces this file with results.md once every draft is in.\n\n")
    text = note + results_md
    write_text(text, paths.interim)
    return text


@dataclass
class Analysis:
    """The analysis results: Table 1, acceptance per teacher-entropy bin, the per-token records, and the figures."""

    table: pd.DataFrame
    results_md: str  # results.md: the table with its settings, as published
    bins: pd.DataFrame
    tokens: dict[str, pd.DataFrame]
    figures: dict  # kind -> matplotlib Figure, saved under figures/
    speed: pd.DataFrame  # decoding speed per draft and setting (empty without `speed` settings)
    bins_by_source: pd.DataFrame  # a hybrid's acceptance per entropy bin, per source (empty without hybrids)


def analyze(cfg: StudyConfig, run_dir: str | Path, seed: int = 0) -> Analysis:
    """Analysis stage: Table 1 (with bootstrap CIs) as summary.csv and results.md, the per-bin acceptance table, and
    both figures (acceptance vs teacher entropy, training curves) under figures/. With `seeds`, results.md leads with
    each recipe's mean over seeds (seeds.py) and states which differences its CIs separate."""
    import matplotlib.pyplot as plt

    paths = RunPaths(Path(run_dir))
    rows = read_speed_rows(cfg, run_dir)
    require(bool(rows), f"No evaluated drafts in {paths.root}: evaluate them first.")
    names = list(rows)
    groups = {g: runs for g, runs in draft_groups(cfg).items() if set(runs) <= set(names)}
    logs = _train_logs(cfg, paths, list(run_names(cfg)))
    warm_log = _warm_log(cfg, paths)
    table, tokens, steps, speed_rows, results_md = _results(cfg, paths, rows, groups, logs, warm_log, seed, csv=True)
    edges = entropy_bin_edges(np.concatenate([t["target_entropy"].to_numpy() for t in tokens.values()]), cfg.n_bins)
    bins = acceptance_by_entropy(tokens, min_count=cfg.min_bin_count, edges=edges)
    write_text(bins.to_csv(index=False), paths.entropy_bins)
    by_source = tokens_by_source(tokens, steps)  # a hybrid's lookup and trained draft, in the same bins
    bins_by_source = (acceptance_by_entropy(by_source, min_count=cfg.min_bin_count, edges=edges) if by_source
                      else pd.DataFrame())
    if by_source:
        write_text(bins_by_source.to_csv(index=False), paths.entropy_bins_by_source)
    figure_bins = bins if cfg.seeds is None else bins_over_seeds(bins, groups)
    write_text(results_md, paths.results)
    paths.interim.unlink(missing_ok=True)  # results.md over every draft replaces it
    figs = figure_paths(cfg, run_dir)
    figs["entropy"].parent.mkdir(parents=True, exist_ok=True)
    band = "the lowest to the highest seed" if cfg.seeds is not None else "Wilson 95% CI"
    figures = {
        "entropy": plot_acceptance_vs_entropy(
            figure_bins, f"{cfg.task}: acceptance vs teacher entropy (bins with >= {cfg.min_bin_count} tokens"
                         f"{' per seed' if cfg.seeds is not None else ''}; band: {band})", path=figs["entropy"]),
        "training": plot_training_curves(
            logs, f"{cfg.task}: distilling the draft (lmbda={cfg.lmbda}: share of steps on its own samples)",
            path=figs["training"], groups={g: r for g, r in groups.items() if g != BASELINE}),
    }
    if warm_log is not None:
        figures["warm"] = plot_warm_curve(warm_log, f"{cfg.task}: warm start of the baseline draft (gamma={cfg.gamma}, "
                                                    f"T={cfg.temperature})", path=figs["warm"])
    for fig in figures.values():
        plt.close(fig)  # shown where the caller displays it (the analysis notebook), not again by the inline backend
    return Analysis(table, results_md, bins, tokens, figures, speed_rows, bins_by_source)


__all__ = ["Analysis", "analyze", "interim_results", "load_records"]

"""The study's steps, one function per notebook, so notebooks stay thin and everything here is testable.

A run directory holds: data/ (prompt sets), drafts/<name>/ (trainer output, student/), records/ (per-token and
per-step Parquet per draft), summary.csv, results.md, figures/*.png.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import datasets
import pandas as pd
from tqdm.auto import tqdm

from .analysis import acceptance_by_entropy, format_expected_acceptance, format_table, summary_table
from .atomic import write_json, write_parquet, write_text
from .config import Config
from .data import load_prompts, load_raw, render_prompts, task_spec, token_lengths
from .errors import require
from .evaluate import expected_acceptance, target_tokens_per_s
from .models import count_parameters, load_tokenizer
from .pair import load_draft, load_target
from .sampling import SamplingConfig
from .specdec import speculative_generate

BASELINE = "baseline"
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def train_prompts(self) -> Path:
        return self.root / "data" / "train_prompts.jsonl"

    @property
    def eval_prompts(self) -> Path:
        return self.root / "data" / "eval_prompts.jsonl"

    @property
    def data_summary(self) -> Path:
        return self.root / "data" / "summary.json"

    def draft_dir(self, name: str) -> Path:
        return self.root / "drafts" / name

    def student(self, name: str) -> Path:
        return self.draft_dir(name) / "student"

    def tokens(self, name: str) -> Path:
        return self.root / "records" / f"{name}_tokens.parquet"

    def steps(self, name: str) -> Path:
        return self.root / "records" / f"{name}_steps.parquet"

    def speed_row(self, name: str) -> Path:
        return self.root / "records" / f"{name}_speed.json"

    @property
    def target_speed(self) -> Path:
        return self.root / "records" / "target_speed.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.csv"

    @property
    def results(self) -> Path:
        return self.root / "results.md"

    @property
    def figures(self) -> Path:
        return self.root / "figures"


def run_names(cfg: Config) -> dict[str, dict]:
    """Training runs of the study by name -> the config keys each overrides (one per divergence, plus extra_runs)."""
    return cfg.run_overrides()


def default_run_dir(cfg: Config) -> Path:
    """runs/<config name> under the repository (or the config's run_dir when absolute)."""
    return (REPO / cfg.run_dir / cfg.name).resolve()


def _save_prompts(ds: datasets.Dataset, path: Path) -> None:
    write_text("".join(json.dumps(r) + "\n" for r in ds.to_list()), path)


def load_prompt_file(path: Path) -> datasets.Dataset:
    require(path.is_file(), f"{path} is missing: run 01_data (or the pipeline) first.")
    return datasets.Dataset.from_list([json.loads(x) for x in path.read_text().splitlines() if x.strip()])


def prepare_data(cfg: Config, run_dir: str | Path) -> dict:
    """01: the training and held-out evaluation prompt sets (disjoint splits) and their statistics."""
    paths = RunPaths(Path(run_dir))
    tok = load_tokenizer(cfg.teacher)
    train = load_prompts(cfg.task, cfg.train_split, cfg.n_train, source=cfg.data_source, seed=cfg.data_seed,
                         tokenizer=tok, max_article_tokens=cfg.max_article_tokens)
    held_out = load_prompts(cfg.task, cfg.eval_split, cfg.n_eval, source=cfg.data_source, seed=cfg.data_seed,
                            tokenizer=tok, max_article_tokens=cfg.max_article_tokens)
    _save_prompts(train, paths.train_prompts)
    _save_prompts(held_out, paths.eval_prompts)
    summary = {
        "task": cfg.task, "train_split": cfg.train_split, "eval_split": cfg.eval_split,
        "n_train": len(train), "n_eval": len(held_out),
        "train_prompt_tokens": [len(x) for x in render_prompts(tok, train)],
        "eval_prompt_tokens": [len(x) for x in render_prompts(tok, held_out)],
        "example_prompt": tok.decode(render_prompts(tok, held_out.select([0]))[0]),
    }
    if cfg.task == "cnndm":  # the length filter's effect on the evaluation split
        raw = load_raw(cfg.task, cfg.eval_split, cfg.data_source)
        lengths = token_lengths(tok, raw[task_spec(cfg.task).text_field])
        summary["article_tokens_before_filter"] = lengths
        summary["kept_by_filter"] = int(sum(n <= cfg.max_article_tokens for n in lengths))
    write_json(summary, paths.data_summary)
    return summary


def train_draft(cfg: Config, run_dir: str | Path, name: str, **overrides):
    """02: distil one draft of the study (its overrides from the config, then any given here); resumable."""
    from .distill import distill

    require(name in run_names(cfg), f"Unknown training run '{name}'; this study's runs are {list(run_names(cfg))}.")
    paths = RunPaths(Path(run_dir))
    run_cfg = cfg.replace(**{**run_names(cfg)[name], **overrides})
    return distill(run_cfg, paths.draft_dir(name), dataset=load_prompt_file(paths.train_prompts))


def _evaluated(paths: RunPaths, name: str, student: Path | None) -> bool:
    """This draft's records are complete and newer than its student (a retrained draft is evaluated again)."""
    files = (paths.speed_row(name), paths.tokens(name), paths.steps(name))
    if not all(p.is_file() for p in files):
        return False
    if student is None or not (student / "config.json").is_file():  # baseline, or results imported (handoff)
        return True
    return paths.speed_row(name).stat().st_mtime >= (student / "config.json").stat().st_mtime


def draft_names(cfg: Config) -> list[str]:
    """Every draft the study evaluates, in table order: the undistilled baseline, then each training run."""
    return [BASELINE, *run_names(cfg)]


def finished_drafts(cfg: Config, run_dir: str | Path) -> list[str]:
    """The study's drafts whose evaluation is complete (03 writes the speed row last), in table order."""
    paths = RunPaths(Path(run_dir))
    return [n for n in draft_names(cfg) if paths.speed_row(n).is_file()]


def evaluate_drafts(cfg: Config, run_dir: str | Path, names: list[str] | None = None) -> pd.DataFrame:
    """03: batched SD of each draft (default: the undistilled baseline and every distilled draft) against the
    target on the held-out prompts; writes per-token/per-step records and a speed row per draft, then
    speed.parquet with one row per finished draft. A finished draft is not evaluated again, so an interrupted
    evaluation resumes at the next draft."""
    from .handoff import fingerprint

    paths = RunPaths(Path(run_dir))
    names = draft_names(cfg) if names is None else list(names)
    unknown = sorted(set(names) - set(draft_names(cfg)))
    require(not unknown, f"Unknown drafts {unknown}; this study's drafts are {draft_names(cfg)}.")
    drafts = {n: None if n == BASELINE else paths.student(n) for n in names}
    todo = [n for n, path in drafts.items() if not _evaluated(paths, n, path)]
    for name in todo:
        path = drafts[name]
        require(path is None or path.is_dir(), f"Draft '{name}' has no trained student at {path}: run 02 first.")
    target, tok = load_target(cfg)
    prompts = render_prompts(tok, load_prompt_file(paths.eval_prompts))
    sampling = SamplingConfig(temperature=cfg.task_temperature, top_p=cfg.top_p)
    max_new, batch = cfg.task_max_new_tokens, cfg.eval_batch_size
    if todo and paths.target_speed.is_file():
        target_tps = json.loads(paths.target_speed.read_text())["tokens_per_s"]
    elif todo:  # measured once per run directory (i.e. per machine and session), only when something is evaluated
        target_tps = target_tokens_per_s(target, tok, prompts, batch_size=batch, max_new_tokens=max_new,
                                         sampling=sampling, seed=cfg.seed)
        write_json({"tokens_per_s": target_tps, "n_prompts": len(prompts), "batch_size": batch}, paths.target_speed)
    for name in tqdm(todo, desc="drafts"):
        path = drafts[name]
        draft = load_draft(cfg, target, tok, path)  # path None: the baseline (`student`, or derived)
        token_frames, step_frames, wall, new_tokens = [], [], 0.0, 0
        for start in tqdm(range(0, len(prompts), batch), desc=f"SD {name}"):
            res = speculative_generate(target, draft, prompts[start : start + batch], gamma=cfg.gamma,
                                       max_new_tokens=max_new, sampling=sampling, eos_token_id=tok.eos_token_id,
                                       seed=cfg.seed + start, target_tokenizer=tok, draft_tokenizer=tok)
            t, s = res.tokens_df(), res.steps_df()
            t["row"] += start
            s["row"] += start
            token_frames.append(t)
            step_frames.append(s)
            wall += res.metrics.wall_s
            new_tokens += res.metrics.new_tokens
        token_df = pd.concat(token_frames, ignore_index=True)
        write_parquet(token_df, paths.tokens(name))
        write_parquet(pd.concat(step_frames, ignore_index=True), paths.steps(name))
        report = expected_acceptance(target, draft, tok, prompts, max_new_tokens=max_new,
                                     temperature=cfg.task_temperature, top_p=cfg.top_p, seed=cfg.seed,
                                     batch_size=batch, progress=False)
        row = {"draft": name, "draft_params": count_parameters(draft), "sd_tokens_per_s": new_tokens / wall,
               "target_tokens_per_s": target_tps,
               "speedup": new_tokens / wall / target_tps, "own_sample_expected_accept": report.expected_accept,
               "own_sample_draft_entropy": report.draft_entropy,
               "sd_expected_accept_t1": float(token_df["expected_accept_t1"].mean()),
               "fingerprint": fingerprint(cfg, run_dir)}  # config + prompt sets: checked when results are imported
        write_json(row, paths.speed_row(name))  # written last: marks this draft as done
    speed = speed_table(cfg, run_dir)
    write_parquet(speed, paths.root / "speed.parquet")
    return speed


def speed_table(cfg: Config, run_dir: str | Path) -> pd.DataFrame:
    """One row per finished draft (its speed row: tokens/s, speedup, own-sample acceptance), in table order."""
    paths = RunPaths(Path(run_dir))
    rows = [json.loads(paths.speed_row(n).read_text()) for n in finished_drafts(cfg, run_dir)]
    return pd.DataFrame(rows).drop(columns="fingerprint", errors="ignore")


def load_records(run_dir: str | Path, names: list[str]) -> tuple[dict, dict]:
    paths = RunPaths(Path(run_dir))
    tokens, steps = {}, {}
    for n in names:
        require(paths.tokens(n).is_file(), f"No records for draft '{n}' in {paths.root}: run 03 first.")
        tokens[n], steps[n] = pd.read_parquet(paths.tokens(n)), pd.read_parquet(paths.steps(n))
    return tokens, steps


def analyze(cfg: Config, run_dir: str | Path, seed: int = 0):
    """04: Table 1 (with bootstrap CIs) as summary.csv and results.md, and the per-bin acceptance table."""
    paths = RunPaths(Path(run_dir))
    speed = speed_table(cfg, run_dir)
    require(len(speed), f"No evaluated drafts in {paths.root}: run 03 first.")
    names = speed["draft"].tolist()
    tokens, steps = load_records(run_dir, names)
    speed_by = {r["draft"]: {k: r[k] for k in speed.columns if k != "draft"} for _, r in speed.iterrows()}
    table = summary_table(steps, tokens, cfg.gamma, speed=speed_by, seed=seed)
    write_text(table.to_csv(index=False), paths.summary)
    bins = acceptance_by_entropy(tokens, n_bins=cfg.n_bins, min_count=cfg.min_bin_count)
    write_text(bins.to_csv(index=False), paths.root / "entropy_bins.csv")
    header = (f"Results for `{cfg.name}` ({cfg.task}, teacher `{cfg.teacher}`, gamma={cfg.gamma}, "
              f"T={cfg.task_temperature}, top_p={cfg.top_p}, {cfg.task_max_new_tokens} new tokens, "
              f"{int(table['n_prompts'].iloc[0])} held-out prompts).\n\n")
    expected = ("\nTeacher-scored expected acceptance at T=1 (mean over positions; the prompts and settings above):"
                "\n\n" + format_expected_acceptance(table))
    write_text(header + format_table(table) + expected, paths.results)
    return table, bins, tokens


def figure_paths(cfg: Config, run_dir: str | Path) -> dict[str, Path]:
    figs = RunPaths(Path(run_dir)).figures
    return {"entropy": figs / f"acceptance_vs_entropy_{cfg.task}.png",
            "training": figs / f"training_curves_{cfg.task}.png"}


__all__ = ["BASELINE", "RunPaths", "analyze", "draft_names", "evaluate_drafts", "figure_paths", "finished_drafts",
           "load_prompt_file", "load_records", "prepare_data", "run_names", "speed_table", "train_draft"]

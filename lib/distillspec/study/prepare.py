"""The study's first stage: the training and held-out evaluation prompt sets, written to the run directory."""

from __future__ import annotations

from pathlib import Path

from ..atomic import write_json
from ..data import load_raw, render_prompts, task_spec, token_lengths
from ..models import load_tokenizer
from .preset import StudyConfig
from .rundir import RunPaths, save_prompts


def prepare_data(cfg: StudyConfig, run_dir: str | Path) -> dict:
    """Prepare stage: the training and held-out evaluation prompt sets (disjoint splits) and their statistics."""
    paths = RunPaths(Path(run_dir))
    tok = load_tokenizer(cfg.teacher)
    train, held_out = cfg.train_prompts(tok), cfg.eval_prompts(tok)
    save_prompts(train, paths.train_prompts)
    save_prompts(held_out, paths.eval_prompts)
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


__all__ = ["prepare_data"]

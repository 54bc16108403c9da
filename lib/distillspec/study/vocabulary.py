"""A study's reduced draft vocabulary (its `draft_vocab` key): chosen once from the teacher's text, shared by the
training stage (heads and warm starts score only these ids) and the evaluation stage (drafts cut to them)."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_json
from ..data import render_prompts
from ..draft_vocab import check_draft_vocab, choose_draft_vocab, teacher_token_counts
from ..models import load_tokenizer
from ..pair import load_target
from .preset import StudyConfig
from .rundir import RunPaths, load_prompt_file


def draft_vocab(cfg: StudyConfig, run_dir: str | Path, target=None, tok=None) -> dict | None:
    """The reduced draft vocabulary of this run (config draft_vocab), chosen on first use and kept in
    data/draft_vocab.json: the ids the teacher writes most in its answers to the first `draft_vocab_prompts`
    training prompts (study sampling), with how many it saw and the share of its tokens they cover. Checked against
    the tokenizer and the held-out prompts (EOS and the chat template's markers must be kept). None: full heads."""
    if cfg.draft_vocab is None:
        return None
    paths = RunPaths(Path(run_dir))
    if not paths.draft_vocab.is_file():
        if target is None:
            target, tok = load_target(cfg.for_decoding())
        train = load_prompt_file(paths.train_prompts)
        prompts = render_prompts(tok, train.select(range(min(cfg.draft_vocab_prompts, len(train)))))
        counts = teacher_token_counts(target, tok, prompts, sampling=cfg.sampling(),
                                      max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size,
                                      seed=cfg.data_seed)
        ids = choose_draft_vocab(counts, tok, cfg.draft_vocab)
        kept, total = set(ids), sum(counts.values())
        write_json({"size": len(ids), "requested": cfg.draft_vocab, "n_prompts": len(prompts),
                    "distinct_ids_seen": len(counts), "teacher_tokens": total,
                    "coverage": sum(n for i, n in counts.items() if i in kept) / max(1, total), "ids": ids},
                   paths.draft_vocab)
    vocab = json.loads(paths.draft_vocab.read_text())
    tok = tok if tok is not None else load_tokenizer(cfg.teacher)
    check_draft_vocab(vocab["ids"], tok, render_prompts(tok, load_prompt_file(paths.eval_prompts)))
    return vocab


__all__ = ["draft_vocab"]
